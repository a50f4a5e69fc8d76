//! The lifecycle table held against the store on both backends: random sequences of what nodes,
//! the API and the sweep do to a batch's calls (claims, dials, rings, answers, ends with
//! retries, cancels, defers, duplicates of each, two nodes racing, a node dying) never move a
//! call in a way `domain::lifecycle` does not allow, never out of a terminal status, give each
//! settled attempt exactly one terminal webhook event whose `retry` block says what the
//! settlement did (a next attempt exists exactly when the event says one is due), and keep the
//! batch's counters adding up to its recipients after every step and equal to what its calls
//! say at the end.

mod common;

use common::{backends, Backend};
use domain::batch::{parse_recipients, NewBatch};
use domain::dispatch::{DialLimits, FinishAttempt};
use domain::lifecycle::WAITING;
use domain::store::Store;
use domain::{CallStatus, ConversationId, Millis, TenantId, TraceId};
use sqlx::{Connection, Row};
use std::collections::HashMap;

const RECIPIENTS: u32 = 8;
const STEPS: usize = 400;
const LEASE_MS: i64 = 30_000;
const NODES: [&str; 2] = ["n1", "n2"];
const ENDS: [CallStatus; 7] = [
    CallStatus::Completed,
    CallStatus::Failed,
    CallStatus::Busy,
    CallStatus::NoAnswer,
    CallStatus::Unreachable,
    CallStatus::TelephonyFailed,
    CallStatus::SocketFailure,
];

/// xorshift64*: reproducible from the seed printed on failure, with no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Debug, Clone)]
enum Step {
    Claim(&'static str),
    Dial(&'static str, ConversationId),
    Mark(&'static str, ConversationId, CallStatus),
    /// An attempt's end, reported by a node; `true`: the callee asked not to be called again.
    End(&'static str, ConversationId, CallStatus, bool),
    Defer(&'static str, ConversationId),
    Cancel(ConversationId),
    /// The clock passes every lease, as when a node dies, and the sweep settles what it held.
    Sweep,
}

impl Step {
    fn names(&self, call: &str) -> bool {
        match self {
            Step::Dial(_, id)
            | Step::Mark(_, id, _)
            | Step::End(_, id, _, _)
            | Step::Defer(_, id)
            | Step::Cancel(id) => id.to_string() == call,
            Step::Claim(_) | Step::Sweep => false,
        }
    }
}

/// The agent's retry policy decides retries (in the settlement): some outcomes are retried,
/// others not, three attempts at most.
fn agent_config() -> serde_json::Value {
    serde_json::json!({"retry_policy": {
        "on": ["busy", "no_answer", "failed", "unreachable"],
        "max_attempts": 3,
        "delay_seconds": 1,
    }})
}

async fn run(store: &dyn Store, seed: u64) -> (TenantId, Vec<Step>) {
    let t0 = Millis(1_775_000_000_000);
    let (tenant, agent) =
        testkit::dialling_agent(store, "acme", "+918035739222", None, agent_config(), t0).await;
    let csv: String = (0..RECIPIENTS).fold("customer_phone\n".into(), |csv, i| {
        csv + &format!("+9198{i:08}\n")
    });
    let mut now = t0;
    let created = store
        .create_batch(NewBatch {
            tenant,
            agent,
            name: "b".into(),
            scheduled_for: None,
            recipients: parse_recipients(csv.as_bytes(), 1_000).unwrap(),
            trace_id: TraceId::new(),
            now,
        })
        .await
        .unwrap();
    let limits = DialLimits {
        trunk: None,
        agent: None,
        tenant: None,
        per_number: None,
        pace: None,
    };
    let mut rng = Rng(seed);
    let batch_id = created.id;
    let mut known: Vec<ConversationId> = Vec::new();
    let mut done: Vec<Step> = Vec::new();
    for _ in 0..STEPS {
        now = Millis(now.0 + rng.below(3_000) as i64);
        let node = NODES[rng.below(NODES.len())];
        let step = match (rng.below(10), known.is_empty()) {
            // A duplicate of an earlier step, as a retried request or a redelivered event.
            (0, _) if !done.is_empty() => done[rng.below(done.len())].clone(),
            (1 | 2, _) | (_, true) => Step::Claim(node),
            (9, _) if rng.below(4) == 0 => Step::Sweep,
            (n, false) => {
                let id = known[rng.below(known.len())];
                match n {
                    3 => Step::Dial(node, id),
                    4 => Step::Mark(node, id, CallStatus::Ringing),
                    5 => Step::Mark(node, id, CallStatus::InProgress),
                    6 | 7 => Step::End(node, id, ENDS[rng.below(ENDS.len())], rng.below(3) == 0),
                    8 => Step::Defer(node, id),
                    _ => Step::Cancel(id),
                }
            }
        };
        match &step {
            Step::Claim(node) => {
                let lease = Millis(now.0 + LEASE_MS);
                for due in store.claim_due(node, now, lease, 3).await.unwrap() {
                    if !known.contains(&due.id) {
                        known.push(due.id);
                    }
                }
            }
            Step::Dial(node, id) => {
                let lease = Millis(now.0 + LEASE_MS);
                store
                    .begin_dial(*id, node, now, lease, None, &limits)
                    .await
                    .unwrap();
            }
            Step::Mark(node, id, status) => {
                store.mark_progress(*id, node, *status, now).await.unwrap();
            }
            Step::End(node, id, status, opted_out) => {
                let f = FinishAttempt {
                    // Only an answered callee can ask; `completed` stands for that here.
                    opted_out: *opted_out && *status == CallStatus::Completed,
                    ..finish(id, node, *status, now)
                };
                store.finish_attempt(f, now).await.unwrap();
            }
            Step::Defer(node, id) => {
                store
                    .defer_call(*id, node, Millis(now.0 + 500), "cap full")
                    .await
                    .unwrap();
            }
            Step::Cancel(id) => {
                store.cancel_call(tenant, *id, now).await.unwrap();
            }
            Step::Sweep => {
                now = Millis(now.0 + LEASE_MS + 1);
                for o in store.orphaned_calls(now, 100).await.unwrap() {
                    let url = "http://127.0.0.1:8080";
                    let f = FinishAttempt::interrupted(o.id, "sweeper", url, now);
                    store.finish_attempt(f, now).await.unwrap();
                }
            }
        }
        // Every settlement moves one recipient between counters: the total never changes.
        let counts = store
            .get_batch(tenant, batch_id)
            .await
            .unwrap()
            .unwrap()
            .counts;
        assert_eq!(
            counts.total(),
            i64::from(RECIPIENTS),
            "seed {seed}, after {step:?}: {counts:?}"
        );
        done.push(step);
    }
    (tenant, done)
}

fn finish(id: &ConversationId, node: &str, status: CallStatus, now: Millis) -> FinishAttempt {
    FinishAttempt {
        failure_reason: (status != CallStatus::Completed).then(|| "test".into()),
        duration_seconds: Some(3),
        public_url: "http://127.0.0.1:8080".into(),
        ..FinishAttempt::bare(*id, node, status, now)
    }
}

/// What the database says happened, checked against the table.
async fn check(
    store: &dyn Store,
    url: &str,
    tenant: TenantId,
    seed: u64,
    steps: &[Step],
) -> CallStatusTally {
    // The seed and the steps that named the call: enough to replay and read a failure.
    let ctx = |id: &str| {
        let named: Vec<&Step> = steps.iter().filter(|s| s.names(id)).collect();
        format!("seed {seed}, its steps {named:?}")
    };
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let calls = sqlx::query("SELECT id, chain_id, attempt, status, batch_id FROM calls")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let mut latest: HashMap<String, (i64, CallStatus)> = HashMap::new();
    // Each attempt's id, and when it was due: what a settlement's retry wrote.
    let due: HashMap<String, i64> =
        sqlx::query("SELECT id, scheduled_for FROM calls WHERE attempt > 1")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("id"), r.get("scheduled_for")))
            .collect();
    let mut tally = CallStatusTally::default();
    let mut batch = 0i64;
    for row in &calls {
        let id: String = row.get("id");
        let status = CallStatus::parse(&row.get::<String, _>("status")).unwrap();
        batch = row.get("batch_id");
        let history: Vec<CallStatus> =
            sqlx::query("SELECT status FROM call_events WHERE call_id = $1 ORDER BY id")
                .bind(&id)
                .fetch_all(&mut conn)
                .await
                .unwrap()
                .iter()
                .map(|r| CallStatus::parse(&r.get::<String, _>("status")).unwrap())
                .collect();
        assert!(
            WAITING.contains(&history[0]),
            "{id} began {history:?}; {}",
            ctx(&id)
        );
        for pair in history.windows(2) {
            assert!(
                pair[0].can_become(pair[1]),
                "{id}: {} -> {} is not in the table ({history:?}); {}",
                pair[0],
                pair[1],
                ctx(&id)
            );
        }
        assert_eq!(history.last(), Some(&status), "{id}; {}", ctx(&id));
        let outbox =
            sqlx::query("SELECT event_type, payload FROM outbox_events WHERE conversation_id = $1")
                .bind(&id)
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let events: Vec<String> = outbox.iter().map(|r| r.get("event_type")).collect();
        // The event says a next attempt is due exactly when the settlement wrote one, and when.
        let chain: String = row.get("chain_id");
        let attempt: i64 = row.get("attempt");
        let next = due.get(&format!("{chain}_{}", attempt + 1));
        for r in &outbox {
            let payload: serde_json::Value =
                serde_json::from_str(&r.get::<String, _>("payload")).unwrap();
            let retry = &payload["data"]["retry"];
            assert_eq!(
                retry["is_final_attempt"],
                next.is_none(),
                "{id}; {}",
                ctx(&id)
            );
            let at = next.map(|ms| Millis(*ms).to_rfc3339_millis());
            assert_eq!(retry["next_retry_at"].as_str(), at.as_deref(), "{id}");
            assert!(attempt < 3 || next.is_none(), "{id}: past max_attempts");
        }
        let expected = if status.is_terminal() {
            vec![format!("call.{status}")]
        } else {
            Vec::new()
        };
        assert_eq!(events, expected, "{id} ({history:?}); {}", ctx(&id));
        let e = latest.entry(chain).or_insert((attempt, status));
        if attempt >= e.0 {
            *e = (attempt, status);
        }
        tally.add(status);
    }
    // The counters count each recipient once, by its latest attempt.
    let mut want = domain::batch::BatchCounts::default();
    for (attempt, status) in latest.values() {
        let counter = match status {
            s if WAITING.contains(s) && *attempt == 1 => &mut want.pending,
            s if WAITING.contains(s) => &mut want.pending_retry,
            s if !s.is_terminal() => &mut want.in_progress,
            CallStatus::Completed => &mut want.completed,
            CallStatus::Busy => &mut want.busy,
            CallStatus::NoAnswer => &mut want.no_answer,
            CallStatus::Unreachable => &mut want.unreachable,
            CallStatus::SocketFailure => &mut want.socket_failure,
            CallStatus::Canceled => &mut want.canceled,
            _ => &mut want.failed,
        };
        *counter += 1;
    }
    let got = store.get_batch(tenant, batch).await.unwrap().unwrap();
    want.completed_duration_seconds = got.counts.completed_duration_seconds;
    assert_eq!(got.counts, want, "seed {seed}");
    assert_eq!(
        got.counts.unfinished() + got.counts.processed(),
        i64::from(RECIPIENTS)
    );
    tally
}

/// How many calls ended where, over all seeds: the sequences must reach the statuses they are
/// meant to test, or the run proves little.
#[derive(Default)]
struct CallStatusTally(HashMap<CallStatus, usize>);

impl CallStatusTally {
    fn add(&mut self, s: CallStatus) {
        *self.0.entry(s).or_default() += 1;
    }
    fn merge(&mut self, other: CallStatusTally) {
        for (s, n) in other.0 {
            *self.0.entry(s).or_default() += n;
        }
    }
}

async fn seeds_on(backend: Backend) {
    let mut tally = CallStatusTally::default();
    for seed in 1..=6u64 {
        let db = backend.open().await;
        let (tenant, steps) = run(db.store().as_ref(), seed * 0x9e37_79b9).await;
        tally.merge(check(db.store().as_ref(), &db.url, tenant, seed, &steps).await);
        db.finish().await;
    }
    for s in [
        CallStatus::Completed,
        CallStatus::Canceled,
        CallStatus::Failed,
        CallStatus::Busy,
    ] {
        assert!(
            tally.0.get(&s).copied().unwrap_or(0) > 0,
            "{backend:?}: no call ended {s}"
        );
    }
    assert!(
        tally.0.values().sum::<usize>() > 6 * RECIPIENTS as usize,
        "{backend:?}: no retries were made"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_event_sequences_follow_the_lifecycle_table_on_every_backend() {
    for backend in backends() {
        seeds_on(backend).await;
    }
}
