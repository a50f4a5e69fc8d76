//! Dispatch against the real store (SQLite files; PostgreSQL for the multi-node test) with a
//! telephony double at the trait boundary that counts every dial. The SIP adapter's own tests
//! cover the wire.

use super::*;
use async_trait::async_trait;
use domain::call::{NewCall, Parameter};
use domain::dispatch::DispatchStore;
use domain::telephony::{CallControl, CallEnd, CallEvent, DialError, DialRequest, LiveCall};
use domain::{AgentId, TenantId, TraceId, E164};
use serde_json::json;
use std::sync::atomic::{AtomicI64, Ordering};
use store::{SqlStore, StoreOptions};
use tokio::sync::mpsc;

struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        Millis(self.0.load(Ordering::SeqCst))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Script {
    Answer,
    Busy,
    /// Never ends: the node "dies" with the call up.
    Hang,
    /// The trunk answers `503 Service Unavailable` with `Retry-After: 3`.
    Unavailable,
}

/// Counts dials per destination and plays a script.
struct Phone {
    dials: Mutex<Vec<String>>,
    script: Script,
    clock: Arc<dyn Clock>,
}

#[async_trait]
impl Telephony for Phone {
    async fn dial(&self, req: DialRequest) -> Result<LiveCall, DialError> {
        self.dials.lock().unwrap().push(req.to.to_string());
        let (tx, rx) = mpsc::channel(8);
        let (control, mut control_rx) = mpsc::channel::<CallControl>(8);
        let script = self.script;
        let now = self.clock.now();
        tokio::spawn(async move {
            let _ = tx.send(CallEvent::Ringing).await;
            match script {
                Script::Busy => {
                    let _ = tx
                        .send(CallEvent::Ended(CallEnd {
                            status: CallStatus::Busy,
                            failure_reason: Some("486 Busy Here".into()),
                            answered_at: None,
                            ended_at: now,
                            recording: None,
                            retry_after: None,
                        }))
                        .await;
                }
                Script::Answer => {
                    let (_in_tx, inbound) = mpsc::channel(1);
                    let (outbound, _out_rx) = mpsc::channel(1);
                    let media = domain::telephony::MediaStream::new(inbound, outbound).0;
                    let _ = tx.send(CallEvent::Answered { at: now, media }).await;
                    let _ = tx
                        .send(CallEvent::Ended(CallEnd {
                            status: CallStatus::Completed,
                            failure_reason: None,
                            answered_at: Some(now),
                            ended_at: Millis(now.0 + 42_000),
                            recording: None,
                            retry_after: None,
                        }))
                        .await;
                }
                Script::Unavailable => {
                    let _ = tx
                        .send(CallEvent::Ended(CallEnd {
                            status: CallStatus::TelephonyFailed,
                            failure_reason: Some("503 Service Unavailable".into()),
                            answered_at: None,
                            ended_at: now,
                            recording: None,
                            retry_after: Some(Duration::from_secs(3)),
                        }))
                        .await;
                }
                Script::Hang => {
                    let _ = control_rx.recv().await;
                    std::future::pending::<()>().await;
                }
            }
        });
        Ok(LiveCall {
            events: rx,
            control,
        })
    }
}

impl Phone {
    fn new(script: Script, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            dials: Mutex::new(Vec::new()),
            script,
            clock,
        })
    }
    fn count(&self) -> usize {
        self.dials.lock().unwrap().len()
    }
}

const T0: i64 = 1_775_000_000_000;

/// A dispatcher with the local engines and no known time zones.
fn dispatcher(
    store: Arc<dyn Store>,
    phone: Arc<dyn Telephony>,
    clock: Arc<dyn Clock>,
    config: DispatchConfig,
) -> Arc<Dispatcher> {
    Dispatcher::new(store, phone, tts(), CountryZones::default(), clock, config)
}

fn tts() -> Engines {
    Engines {
        tts: Arc::new(agent::EspeakNg::default()),
        stt: Arc::new(agent::PocketSphinx::default()),
        llm: Default::default(),
    }
}

async fn setup(url: &str, agent: serde_json::Value) -> (Arc<SqlStore>, TenantId, AgentId) {
    setup_with_trunk_cap(url, agent, None).await
}

async fn setup_with_trunk_cap(
    url: &str,
    agent: serde_json::Value,
    trunk_cap: Option<u32>,
) -> (Arc<SqlStore>, TenantId, AgentId) {
    let store = Arc::new(
        SqlStore::connect(url, StoreOptions::default())
            .await
            .unwrap(),
    );
    let mut cfg = json!({"first_message": "Hello {{customer_name}}"});
    cfg.as_object_mut()
        .unwrap()
        .extend(agent.as_object().unwrap().clone());
    let (t, a) = testkit::dialling_agent(
        store.as_ref(),
        "acme",
        "+918035739222",
        trunk_cap,
        cfg,
        Millis(T0),
    )
    .await;
    (store, t, a)
}

fn call(t: TenantId, a: AgentId, phone: &str, now: i64, at: Option<i64>) -> NewCall {
    NewCall {
        tenant: t,
        agent: a,
        customer_phone: E164::parse(phone).unwrap(),
        parameters: vec![
            Parameter {
                name: "customer_phone".into(),
                value: phone.into(),
            },
            Parameter {
                name: "customer_name".into(),
                value: "Rahul".into(),
            },
        ],
        continues: None,
        idempotency_key: None,
        metadata: None,
        retry_context: None,
        scheduled_for: at.map(Millis),
        trace_id: TraceId::new(),
        now: Millis(now),
    }
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/outdial.db", dir.path().display())
}

async fn settle_tasks() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_answered_call_completes_with_its_opening_line_and_duration() {
    let dir = tempfile::tempdir().unwrap();
    let (store, t, a) = setup(&sqlite_url(&dir), json!({})).await;
    let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
    let phone = Phone::new(Script::Answer, clock.clone());
    let d = dispatcher(
        store.clone(),
        phone.clone(),
        clock.clone(),
        DispatchConfig::default(),
    );
    let accepted = store
        .create_call(call(t, a, "+919876500001", T0, None))
        .await
        .unwrap();
    assert_eq!(d.tick().await.unwrap(), 1);
    settle_tasks().await;
    assert_eq!(phone.count(), 1);
    let c = store
        .get_conversation(t, accepted.conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.status, CallStatus::Completed);
    assert_eq!(c.duration_seconds, Some(42));
    assert_eq!(c.started_at, Some(Millis(T0)));
    assert_eq!(c.failure_reason, None);
    // Nothing more to dial.
    assert_eq!(d.tick().await.unwrap(), 0);
    assert_eq!(phone.count(), 1);
}

#[tokio::test]
async fn retry_chains_follow_the_policy_with_its_delays() {
    let dir = tempfile::tempdir().unwrap();
    let (store, t, a) = setup(
        &sqlite_url(&dir),
        json!({"retry_policy": {"on": ["busy"], "max_attempts": 3, "delay_seconds": 60}}),
    )
    .await;
    let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
    let phone = Phone::new(Script::Busy, clock.clone());
    let d = dispatcher(
        store.clone(),
        phone.clone(),
        clock.clone(),
        DispatchConfig::default(),
    );
    let first = store
        .create_call(call(t, a, "+919876500001", T0, None))
        .await
        .unwrap()
        .conversation_id;
    d.tick().await.unwrap();
    settle_tasks().await;
    for attempt in 2..=3u32 {
        let id = ConversationId {
            chain: first.chain,
            attempt,
        };
        let c = store
            .get_conversation(t, id)
            .await
            .unwrap()
            .expect("next attempt scheduled");
        assert_eq!(c.status, CallStatus::Scheduled);
        let due = clock.now().0 + 60_000;
        assert_eq!(c.scheduled_for, Some(Millis(due)));
        clock.0.store(due - 1, Ordering::SeqCst);
        assert_eq!(d.tick().await.unwrap(), 0, "not before its delay");
        clock.0.store(due, Ordering::SeqCst);
        assert_eq!(d.tick().await.unwrap(), 1);
        settle_tasks().await;
        assert_eq!(phone.count() as u32, attempt);
    }
    let last = ConversationId {
        chain: first.chain,
        attempt: 3,
    };
    assert_eq!(
        store
            .get_conversation(t, last)
            .await
            .unwrap()
            .unwrap()
            .status,
        CallStatus::Busy
    );
    assert!(
        store
            .get_conversation(t, last.next_attempt())
            .await
            .unwrap()
            .is_none(),
        "max_attempts reached"
    );
    for attempt in 1..=3 {
        let c = store
            .get_conversation(
                t,
                ConversationId {
                    chain: first.chain,
                    attempt,
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.failure_reason.as_deref(), Some("486 Busy Here"));
    }
}

/// Calls that end together are settled by the settler in several batches (the burst is larger
/// than one): each is settled once, with its own outcome, its own next attempt by the policy
/// and one webhook event, and none is dialled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_ended_calls_is_settled_in_batches_each_once_with_its_retry() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let (store, t, a) = setup(
        &url,
        json!({"retry_policy": {"on": ["busy"], "max_attempts": 2, "delay_seconds": 60}}),
    )
    .await;
    let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
    let phone = Phone::new(Script::Busy, clock.clone());
    let config = DispatchConfig {
        settle: SettleBatching {
            max_calls: 4,
            gather: Duration::from_millis(1),
        },
        // The whole burst in one round, so its calls end together.
        claim_batch: 20,
        ..DispatchConfig::default()
    };
    let d = dispatcher(store.clone(), phone.clone(), clock.clone(), config);
    let mut ids = Vec::new();
    for i in 0..20 {
        let phone_no = format!("+9198765{i:05}");
        let accepted = store
            .create_call(call(t, a, &phone_no, T0, None))
            .await
            .unwrap();
        ids.push(accepted.conversation_id);
    }
    assert_eq!(d.tick().await.unwrap(), 20);
    // Until every call task has its answer (a condition; the bound only turns a hang into a
    // failure).
    let ended = async {
        while d.live_calls() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), ended)
        .await
        .expect("every call task got its settlement's answer");
    assert_eq!(phone.count(), 20);
    for id in &ids {
        let c = store.get_conversation(t, *id).await.unwrap().unwrap();
        assert_eq!(c.status, CallStatus::Busy, "{id}");
        assert_eq!(c.failure_reason.as_deref(), Some("486 Busy Here"));
        let next = store
            .get_conversation(t, id.next_attempt())
            .await
            .unwrap()
            .expect("the policy's next attempt");
        assert_eq!(next.status, CallStatus::Scheduled);
        assert_eq!(next.scheduled_for, Some(Millis(T0 + 60_000)));
    }
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let events: Vec<(String, String)> =
        sqlx::query_as("SELECT conversation_id, event_type FROM outbox_events")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let mut want: Vec<(String, String)> = ids
        .iter()
        .map(|id| (id.to_string(), "call.busy".to_string()))
        .collect();
    let mut got = events;
    want.sort();
    got.sort();
    assert_eq!(got, want);
    // Nothing is due before the retries' delay.
    assert_eq!(d.tick().await.unwrap(), 0);
    assert_eq!(phone.count(), 20);
}

#[tokio::test]
async fn calls_outside_the_window_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, t, a) = setup(
        &sqlite_url(&dir),
        json!({"calling_window": {"start": "09:00", "end": "21:00"}}),
    )
    .await;
    // 2026-04-01T00:00Z is 05:30 in Kolkata: the window opens at 03:30Z.
    let now = Millis::from_datetime(
        chrono::DateTime::parse_from_rfc3339("2026-04-01T00:00:00Z")
            .unwrap()
            .into(),
    );
    let clock = Arc::new(ManualClock(AtomicI64::new(now.0)));
    let phone = Phone::new(Script::Answer, clock.clone());
    let zones = CountryZones::parse("IN\t+2232+08822\tAsia/Kolkata\n");
    let d = Dispatcher::new(
        store.clone(),
        phone.clone(),
        tts(),
        zones,
        clock.clone(),
        DispatchConfig::default(),
    );
    let id = store
        .create_call(call(t, a, "+919876500001", now.0, None))
        .await
        .unwrap()
        .conversation_id;
    d.tick().await.unwrap();
    settle_tasks().await;
    assert_eq!(phone.count(), 0);
    let opening = now.0 + 3 * 3_600_000 + 1_800_000;
    assert_eq!(
        store.next_due_at(Millis(now.0)).await.unwrap(),
        Some(Millis(opening))
    );
    assert_eq!(
        store.get_conversation(t, id).await.unwrap().unwrap().status,
        CallStatus::Queued
    );
    clock.0.store(opening, Ordering::SeqCst);
    d.tick().await.unwrap();
    settle_tasks().await;
    assert_eq!(phone.count(), 1);
    // A number whose country has no known zone is never called at a guessed hour.
    let uk = store
        .create_call(call(t, a, "+442079460958", opening, None))
        .await
        .unwrap()
        .conversation_id;
    d.tick().await.unwrap();
    let c = store.get_conversation(t, uk).await.unwrap().unwrap();
    assert_eq!(c.status, CallStatus::Failed);
    assert!(c.failure_reason.unwrap().starts_with("calling window"));
    assert_eq!(phone.count(), 1);
}

#[tokio::test]
async fn a_dead_nodes_live_call_is_settled_interrupted_and_not_redialled() {
    let dir = tempfile::tempdir().unwrap();
    let (store, t, a) = setup(&sqlite_url(&dir), json!({})).await;
    let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
    let dead_phone = Phone::new(Script::Hang, clock.clone());
    let cfg = |n: &str| DispatchConfig {
        node_id: n.into(),
        lease: Duration::from_secs(10),
        ..Default::default()
    };
    let dead = dispatcher(
        store.clone(),
        dead_phone.clone(),
        clock.clone(),
        cfg("dead"),
    );
    let id = store
        .create_call(call(t, a, "+919876500001", T0, None))
        .await
        .unwrap()
        .conversation_id;
    dead.tick().await.unwrap();
    settle_tasks().await;
    assert_eq!(dead_phone.count(), 1);
    // The node dies: nobody renews its lease. Another node takes over after the lease.
    let phone = Phone::new(Script::Answer, clock.clone());
    let live = dispatcher(store.clone(), phone.clone(), clock.clone(), cfg("live"));
    assert_eq!(live.sweep_orphans().await.unwrap(), 0, "lease still valid");
    clock.0.store(T0 + 10_001, Ordering::SeqCst);
    assert_eq!(live.sweep_orphans().await.unwrap(), 1);
    live.tick().await.unwrap();
    settle_tasks().await;
    let c = store.get_conversation(t, id).await.unwrap().unwrap();
    assert_eq!(
        (c.status, c.failure_reason.as_deref()),
        (CallStatus::Failed, Some("interrupted"))
    );
    assert_eq!(dead_phone.count() + phone.count(), 1, "never dialled twice");
}

#[tokio::test]
async fn a_full_trunk_queues_calls_and_cancel_stops_undialled_ones() {
    full_cap_queues_calls(json!({}), Some(1), "the trunk's").await;
}

#[tokio::test]
async fn a_full_agent_queues_calls_and_cancel_stops_undialled_ones() {
    full_cap_queues_calls(json!({"max_concurrent_calls": 1}), None, "the agent's").await;
}

/// A cap of one (the trunk's or the agent's) holds the second call `queued`; a cancelled
/// queued call is never dialled.
async fn full_cap_queues_calls(agent: serde_json::Value, trunk_cap: Option<u32>, whose: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (store, t, a) = setup_with_trunk_cap(&sqlite_url(&dir), agent, trunk_cap).await;
    let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
    let phone = Phone::new(Script::Hang, clock.clone());
    let d = dispatcher(
        store.clone(),
        phone.clone(),
        clock.clone(),
        DispatchConfig::default(),
    );
    store
        .create_call(call(t, a, "+919876500001", T0, None))
        .await
        .unwrap();
    // A millisecond later: calls due at the same instant are taken in no particular order.
    let second = store
        .create_call(call(t, a, "+919876500002", T0 + 1, None))
        .await
        .unwrap()
        .conversation_id;
    clock.0.store(T0 + 1, Ordering::SeqCst);
    d.tick().await.unwrap();
    settle_tasks().await;
    assert_eq!(phone.count(), 1, "{whose} cap of 1 holds the second call");
    let c = store.get_conversation(t, second).await.unwrap().unwrap();
    assert_eq!(c.status, CallStatus::Queued);
    match store.cancel_call(t, second, clock.now()).await.unwrap() {
        domain::dispatch::CancelOutcome::Canceled(c) => assert_eq!(c.status, CallStatus::Canceled),
        other => panic!("{other:?}"),
    }
    clock.0.store(T0 + 5_000, Ordering::SeqCst);
    d.tick().await.unwrap();
    settle_tasks().await;
    assert_eq!(phone.count(), 1, "a cancelled call is never dialled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_calls_fire_within_a_second_in_real_time() {
    let dir = tempfile::tempdir().unwrap();
    scheduled_calls_fire_on(&sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_calls_fire_within_a_second_in_real_time_on_postgres() {
    let Some(pg) = postgres_db() else {
        return;
    };
    let url = pg.url.clone();
    scheduled_calls_fire_on(&url).await;
}

async fn scheduled_calls_fire_on(url: &str) {
    let (store, t, a) = setup(url, json!({})).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let phone = Phone::new(Script::Answer, clock.clone());
    let d = dispatcher(
        store.clone(),
        phone.clone(),
        clock.clone(),
        DispatchConfig::default(),
    );
    let (stop_tx, stop) = watch::channel(false);
    let runner = tokio::spawn(d.clone().run(stop));
    let now = Millis::now().0;
    let mut ids = Vec::new();
    for i in 0..5 {
        let at = now + 1_500 + i * 300;
        ids.push((
            store
                .create_call(call(t, a, &format!("+9198765000{i:02}"), now, Some(at)))
                .await
                .unwrap()
                .conversation_id,
            at,
        ));
    }
    // As the API does after accepting a call.
    d.waker().notify_one();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while phone.count() < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(true).unwrap();
    runner.await.unwrap();
    assert_eq!(phone.count(), 5);
    for (id, at) in ids {
        let c = store.get_conversation(t, id).await.unwrap().unwrap();
        let started = c.started_at.unwrap().0;
        // Never early; and well inside the 5 s idle wake-up, so the dispatcher slept until
        // each due time rather than finding the call on its next poll. (How late a due call
        // starts is a benchmark's figure: `outdial-bench dispatch`.)
        assert!(
            started >= at && started - at < 2_500,
            "started {} ms after scheduled_for",
            started - at
        );
    }
}

/// A throw-away PostgreSQL database, unless PostgreSQL is skipped knowingly (never in CI).
fn postgres_db() -> Option<testkit::PgDatabase> {
    (!testkit::skip_postgres()).then(testkit::PgDatabase::create)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_on_postgres_with_one_killed_dial_every_destination_exactly_once() {
    let Some(pg) = postgres_db() else {
        return;
    };
    let url = pg.url.clone();
    let (store, t, a) = setup(&url, json!({})).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let cfg = |n: &str| DispatchConfig {
        node_id: n.into(),
        lease: Duration::from_secs(2),
        claim_batch: 8,
        idle_wait: Duration::from_millis(500),
        ..Default::default()
    };
    let victim_phone = Phone::new(Script::Hang, clock.clone());
    let phones = [
        victim_phone.clone(),
        Phone::new(Script::Answer, clock.clone()),
        Phone::new(Script::Answer, clock.clone()),
    ];
    let mut nodes = Vec::new();
    let mut runners = Vec::new();
    let (stop_tx, stop) = watch::channel(false);
    for (i, phone) in phones.iter().enumerate() {
        let node_store = Arc::new(
            SqlStore::connect(&url, StoreOptions::default())
                .await
                .unwrap(),
        );
        let d = dispatcher(
            node_store,
            phone.clone(),
            clock.clone(),
            cfg(&format!("node-{i}")),
        );
        nodes.push(d);
    }
    let total = 60;
    let mut ids = Vec::new();
    for i in 0..total {
        ids.push(
            store
                .create_call(call(
                    t,
                    a,
                    &format!("+91987650{i:04}"),
                    Millis::now().0,
                    None,
                ))
                .await
                .unwrap()
                .conversation_id,
        );
    }
    // Node 0 starts first so that it surely holds live calls when it is killed; the other two
    // join while it runs, then node 0's run loop (claims, lease renewal) stops.
    runners.push(tokio::spawn(nodes[0].clone().run(stop.clone())));
    nodes[0].waker().notify_one();
    for _ in 0..1000 {
        if victim_phone.count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(victim_phone.count() > 0, "node 0 dialled nothing");
    for n in &nodes[1..] {
        runners.push(tokio::spawn(n.clone().run(stop.clone())));
        n.waker().notify_one();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    runners[0].abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut open = 0;
        for id in &ids {
            if !store
                .get_conversation(t, *id)
                .await
                .unwrap()
                .unwrap()
                .status
                .is_terminal()
            {
                open += 1;
            }
        }
        if open == 0 || std::time::Instant::now() > deadline {
            assert_eq!(open, 0, "calls left unsettled");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_tx.send(true).unwrap();
    let mut dialled: Vec<String> = phones
        .iter()
        .flat_map(|p| p.dials.lock().unwrap().clone())
        .collect();
    dialled.sort();
    let before = dialled.len();
    dialled.dedup();
    assert_eq!(before, dialled.len(), "a destination was dialled twice");
    let interrupted =
        futures::future::join_all(ids.iter().map(|id| store.get_conversation(t, *id)))
            .await
            .into_iter()
            .filter(|c| {
                c.as_ref()
                    .unwrap()
                    .as_ref()
                    .unwrap()
                    .failure_reason
                    .as_deref()
                    == Some("interrupted")
            })
            .count();
    assert!(victim_phone.count() >= 1);
    // The killed node may die after a claim made a call `initiated` and before its INVITE left:
    // such a call is settled `interrupted` undialled (never redialled blindly, by design).
    // Every other destination was dialled exactly once.
    assert!(
        interrupted >= victim_phone.count(),
        "the dead node's live calls were settled, not redialled: {interrupted} interrupted, {} dialled by it",
        victim_phone.count()
    );
    assert_eq!(
        dialled.len() + (interrupted - victim_phone.count()),
        total,
        "every destination dialled once, or settled interrupted by the dead node"
    );
    store.close().await;
}

/// Two tenants, each with an agent on a trunk of its own: `paced` on one at `rate` calls per
/// second (unpaced when `None`), `open` on an unpaced one.
async fn two_trunks(
    url: &str,
    rate: Option<f64>,
) -> (Arc<SqlStore>, (TenantId, AgentId), (TenantId, AgentId)) {
    use domain::tenant::NewTrunk;
    let store = Arc::new(
        SqlStore::connect(url, StoreOptions::default())
            .await
            .unwrap(),
    );
    let paced = NewTrunk {
        max_calls_per_second: rate.map(|r| domain::pacing::CallsPerSecond::new(r).unwrap()),
        ..NewTrunk::new("carrier", "sip:127.0.0.1:5080")
    };
    let agent = json!({"first_message": "Hello {{customer_name}}"});
    let at = Millis(T0);
    let p = testkit::dialling_agent_on(
        store.as_ref(),
        "paced",
        "+918035739222",
        &paced,
        agent.clone(),
        at,
    )
    .await;
    let open = NewTrunk::new("pbx", "sip:127.0.0.1:5081");
    let o =
        testkit::dialling_agent_on(store.as_ref(), "open", "+918035739223", &open, agent, at).await;
    (store, p, o)
}

/// What the run loop does on a wake-up: rounds while they come back full.
async fn rounds(d: &Arc<Dispatcher>) {
    while d.tick().await.unwrap() >= d.config.claim_batch as usize {}
    settle_tasks().await;
}

#[tokio::test]
async fn a_paced_trunk_dials_one_call_per_token_in_due_order_and_holds_up_no_other_trunk() {
    let dir = tempfile::tempdir().unwrap();
    let (store, (tp, ap), (to, ao)) = two_trunks(&sqlite_url(&dir), Some(2.0)).await;
    let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
    let phone = Phone::new(Script::Busy, clock.clone());
    let config = DispatchConfig {
        claim_batch: 4,
        ..Default::default()
    };
    let d = dispatcher(store.clone(), phone.clone(), clock.clone(), config);
    // Ten calls on the paced trunk, due before three on the other trunk.
    let mut paced = Vec::new();
    for i in 0..10 {
        let c = call(tp, ap, &format!("+9198765000{i:02}"), T0 + i, None);
        paced.push(store.create_call(c).await.unwrap().conversation_id);
    }
    for i in 0..3 {
        let c = call(to, ao, &format!("+9198765100{i:02}"), T0 + 20 + i, None);
        store.create_call(c).await.unwrap();
    }
    let start = T0 + 100;
    clock.0.store(start, Ordering::SeqCst);
    rounds(&d).await;
    let mut dialled = phone.dials.lock().unwrap().clone();
    dialled.sort();
    assert_eq!(
        dialled,
        [
            "+919876500000",
            "+919876510000",
            "+919876510001",
            "+919876510002"
        ],
        "the paced trunk's first call and every call of the other trunk at once"
    );
    let waiting = store.get_conversation(tp, paced[1]).await.unwrap().unwrap();
    assert_eq!(waiting.status, CallStatus::Queued);
    // Then one call per token (every 500 ms), oldest first: booked by a round less than
    // `BOOK_AHEAD` before its token (the line is due half of that before), and started at
    // the token, never early.
    let ahead = domain::pacing::BOOK_AHEAD.as_millis() as i64;
    for (k, id) in paced.iter().enumerate().skip(1) {
        let token = start + 500 * k as i64;
        assert_eq!(
            store.next_due_at(clock.now()).await.unwrap(),
            Some(Millis(token - ahead / 2))
        );
        clock.0.store(token - ahead, Ordering::SeqCst);
        rounds(&d).await;
        assert_eq!(phone.count(), 3 + k, "not booked before its token is near");
        clock.0.store(token - ahead / 2, Ordering::SeqCst);
        rounds(&d).await;
        assert_eq!(phone.count(), 4 + k);
        let c = store.get_conversation(tp, *id).await.unwrap().unwrap();
        assert_eq!(
            (c.status, c.started_at),
            (CallStatus::Busy, Some(Millis(token)))
        );
    }
    let last = phone.dials.lock().unwrap().last().cloned();
    assert_eq!(last.as_deref(), Some("+919876500009"));
    assert_eq!(store.next_due_at(clock.now()).await.unwrap(), None);
}

#[tokio::test]
async fn a_503_with_retry_after_holds_that_trunk_only_and_its_calls_wait() {
    let dir = tempfile::tempdir().unwrap();
    let (store, (th, ah), (to, ao)) = two_trunks(&sqlite_url(&dir), None).await;
    let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
    let phone = Phone::new(Script::Unavailable, clock.clone());
    let d = dispatcher(
        store.clone(),
        phone.clone(),
        clock.clone(),
        DispatchConfig::default(),
    );
    let first = store
        .create_call(call(th, ah, "+919876500001", T0, None))
        .await
        .unwrap()
        .conversation_id;
    rounds(&d).await;
    let c = store.get_conversation(th, first).await.unwrap().unwrap();
    assert_eq!(
        (c.status, c.failure_reason.as_deref()),
        (CallStatus::TelephonyFailed, Some("503 Service Unavailable")),
        "the call itself settles as any 503"
    );
    let now = T0 + 10;
    clock.0.store(now, Ordering::SeqCst);
    let mut held = Vec::new();
    for i in 2..4 {
        let c = call(th, ah, &format!("+91987650000{i}"), now, None);
        held.push(store.create_call(c).await.unwrap().conversation_id);
    }
    store
        .create_call(call(to, ao, "+919876510001", now, None))
        .await
        .unwrap();
    rounds(&d).await;
    assert_eq!(
        *phone.dials.lock().unwrap(),
        ["+919876500001", "+919876510001"],
        "the held trunk dials nothing new; the other trunk is not held"
    );
    for id in &held {
        let c = store.get_conversation(th, *id).await.unwrap().unwrap();
        assert_eq!(c.status, CallStatus::Queued);
    }
    // The hold ends 3 s after the 503 (settled at T0).
    assert_eq!(
        store.next_due_at(clock.now()).await.unwrap(),
        Some(Millis(T0 + 3_000))
    );
    clock.0.store(T0 + 2_999, Ordering::SeqCst);
    rounds(&d).await;
    assert_eq!(phone.count(), 2);
    clock.0.store(T0 + 3_000, Ordering::SeqCst);
    rounds(&d).await;
    assert_eq!(
        phone.count(),
        4,
        "an unpaced trunk's waiting calls all go when the hold ends"
    );
}

/// Two nodes share a paced trunk's bucket through the database: together they keep its pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_on_postgres_keep_one_trunks_pace_between_them() {
    let Some(pg) = postgres_db() else {
        return;
    };
    let url = pg.url.clone();
    let (store, (tp, ap), _) = two_trunks(&url, Some(10.0)).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let phones = [
        Phone::new(Script::Busy, clock.clone()),
        Phone::new(Script::Busy, clock.clone()),
    ];
    let (stop_tx, stop) = watch::channel(false);
    let mut runners = Vec::new();
    let mut nodes = Vec::new();
    for (i, phone) in phones.iter().enumerate() {
        let node_store = Arc::new(
            SqlStore::connect(&url, StoreOptions::default())
                .await
                .unwrap(),
        );
        let config = DispatchConfig {
            node_id: format!("node-{i}"),
            claim_batch: 4,
            ..Default::default()
        };
        let d = dispatcher(node_store, phone.clone(), clock.clone(), config);
        runners.push(tokio::spawn(d.clone().run(stop.clone())));
        nodes.push(d);
    }
    let total = 16;
    let mut ids = Vec::new();
    for i in 0..total {
        let c = call(tp, ap, &format!("+9198765000{i:02}"), Millis::now().0, None);
        ids.push(store.create_call(c).await.unwrap().conversation_id);
    }
    for n in &nodes {
        n.waker().notify_one();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while phones.iter().map(|p| p.count()).sum::<usize>() < total
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(true).unwrap();
    for r in runners {
        r.await.unwrap();
    }
    let mut dialled: Vec<String> = phones
        .iter()
        .flat_map(|p| p.dials.lock().unwrap().clone())
        .collect();
    dialled.sort();
    dialled.dedup();
    assert_eq!(dialled.len(), total, "every call dialled, once");
    let mut started = Vec::new();
    for id in &ids {
        let c = store.get_conversation(tp, *id).await.unwrap().unwrap();
        started.push(c.started_at.expect("dialled").0);
    }
    started.sort();
    for pair in started.windows(2) {
        assert!(
            pair[1] - pair[0] >= 100,
            "two calls {} ms apart at 10/s: {started:?}",
            pair[1] - pair[0]
        );
    }
    store.close().await;
}

/// The API's side of `Foreground`, switched by the test.
#[derive(Debug, Default)]
struct Api(std::sync::atomic::AtomicBool);

impl Foreground for Api {
    fn busy(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_busy_api_slows_the_dials_to_the_busy_rate_and_an_idle_one_lets_them_all_go() {
    let dir = tempfile::tempdir().unwrap();
    let (store, t, a) = setup(&sqlite_url(&dir), json!({})).await;
    let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
    let phone = Phone::new(Script::Busy, clock.clone());
    let api = Arc::new(Api::default());
    let config = DispatchConfig {
        claim_batch: 8,
        busy_dial_rate: 100,
        foreground: Some(api.clone()),
        ..Default::default()
    };
    let d = dispatcher(store.clone(), phone.clone(), clock.clone(), config);
    for i in 0..40 {
        let c = call(t, a, &format!("+9198765000{i:02}"), T0, None);
        store.create_call(c).await.unwrap();
    }
    api.0.store(true, Ordering::SeqCst);
    clock.0.store(T0 + 100, Ordering::SeqCst);
    rounds(&d).await;
    assert_eq!(
        phone.count(),
        8,
        "a busy node's first round: the bucket's burst"
    );
    // Two calls' worth later (20 ms at 100/s), not a round per call.
    assert_eq!(d.slowed_until(clock.now()), Some(Millis(T0 + 120)));
    clock.0.store(T0 + 150, Ordering::SeqCst);
    rounds(&d).await;
    assert_eq!(phone.count(), 13, "50 ms at 100 calls a second");
    // The API goes quiet: every call still due goes in the rounds that follow.
    api.0.store(false, Ordering::SeqCst);
    assert_eq!(d.slowed_until(clock.now()), None);
    rounds(&d).await;
    assert_eq!(phone.count(), 40);
    let mut dialled = phone.dials.lock().unwrap().clone();
    dialled.sort();
    dialled.dedup();
    assert_eq!(dialled.len(), 40, "each call dialled once");
}

#[tokio::test]
async fn a_busy_apis_budget_goes_to_dials_not_to_calls_joining_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let (store, (tp, ap), _) = two_trunks(&sqlite_url(&dir), Some(40.0)).await;
    let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
    let phone = Phone::new(Script::Busy, clock.clone());
    let api = Arc::new(Api(true.into()));
    let config = DispatchConfig {
        claim_batch: 8,
        busy_dial_rate: 100,
        foreground: Some(api),
        ..Default::default()
    };
    let d = dispatcher(store.clone(), phone.clone(), clock.clone(), config);
    let mut paced = Vec::new();
    for i in 0..20 {
        let c = call(tp, ap, &format!("+9198765000{i:02}"), T0, None);
        paced.push(store.create_call(c).await.unwrap().conversation_id);
    }
    clock.0.store(T0 + 100, Ordering::SeqCst);
    rounds(&d).await;
    // Claimed from the due calls, all 20 joined the paced trunk's line without spending the
    // budget; the line then booked the 8 tokens the budget let through (the trunk's next
    // 250 ms hold 10).
    let mut started = 0;
    for id in &paced {
        let c = store.get_conversation(tp, *id).await.unwrap().unwrap();
        started += usize::from(c.started_at.is_some());
    }
    assert_eq!(started, 8);
}
