//! Settling many calls in one transaction (`finish_attempts`) writes exactly what settling them
//! one by one (`finish_attempt`) writes, on both backends. The same story runs on two fresh
//! databases; one settles the calls one at a time, the other in one batch, and then every row a
//! settlement touches is compared: the calls (retries included), their history, the webhook
//! events and deliveries, the batch's counters, the do-not-call list and the post-call jobs.

mod common;

use common::{backends, new_call, Backend};
use domain::batch::{parse_recipients, NewBatch};
use domain::dispatch::{
    BeginDial, DialLimits, DialStart, DispatchStore, FinishAttempt, Progress, Settled,
};
use domain::store::Store;
use domain::transcription::PostCallJob;
use domain::webhooks::NewWebhookTarget;
use domain::{CallStatus, ConversationId, Millis, TraceId};
use sqlx::{Connection, Row};

const T0: Millis = Millis(1_775_000_000_000);
const LEASE_MS: i64 = 30_000;
const URL: &str = "http://127.0.0.1:8080";

/// The calls of the story, by what is done to them.
struct Story {
    /// Held by n1, answered and talked on; the callee opted out and a transcript job is asked.
    completed: ConversationId,
    /// Held by n1, ends busy: the agent's policy retries it.
    busy: ConversationId,
    /// Dialled by n2, whose lease is live: not n1's to settle.
    other_node: ConversationId,
    /// Held by n1 and settled before the batch (a report sent twice).
    settled_already: ConversationId,
    /// The batch's two recipients, held by n1: one completed, one not answered (not retried),
    /// which finishes the batch.
    recipients: [ConversationId; 2],
    /// Claimed by n1 but never dialled (its trunk vanished): settled `failed` from `queued`.
    refused: ConversationId,
}

fn target() -> NewWebhookTarget {
    NewWebhookTarget {
        name: "all".into(),
        url: "http://127.0.0.1:9/hook".into(),
        secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into(),
        events: [
            "call.completed",
            "call.busy",
            "call.no_answer",
            "call.failed",
        ]
        .iter()
        .map(|e| e.to_string())
        .collect(),
        include_transcript: true,
        include_recording_url: true,
        active: true,
    }
}

/// Everything up to the settlements, the same on every database.
async fn story(store: &dyn Store) -> Story {
    let policy = serde_json::json!({"retry_policy": {"on": ["busy"], "max_attempts": 2, "delay_seconds": 60}});
    let (t, agent) =
        testkit::dialling_agent(store, "acme", "+918035739222", None, policy, T0).await;
    store
        .create_webhook_target(t, agent, &target(), T0)
        .await
        .unwrap();
    let lease = Millis(T0.0 + LEASE_MS);
    let create = |phone: &'static str, at: Millis| async move {
        store
            .create_call(new_call(t, agent, phone, at))
            .await
            .unwrap()
            .conversation_id
    };
    // Due first, so n2's claim of one call takes it.
    let other_node = create("+919876500003", Millis(T0.0 - 1_000)).await;
    let taken = store.claim_due("n2", T0, lease, 1).await.unwrap();
    assert_eq!(taken.iter().map(|c| c.id).collect::<Vec<_>>(), [other_node]);
    let started = store
        .begin_dial(other_node, "n2", T0, lease, None, &DialLimits::default())
        .await
        .unwrap();
    assert_eq!(started, BeginDial::Started);

    let completed = create("+919876500001", T0).await;
    let busy = create("+919876500002", T0).await;
    let settled_already = create("+919876500004", T0).await;
    let refused = create("+919876500005", T0).await;
    let csv = "customer_phone\n+919876500006\n+919876500007\n";
    let batch = store
        .create_batch(NewBatch {
            tenant: t,
            agent,
            name: "b".into(),
            scheduled_for: None,
            recipients: parse_recipients(csv.as_bytes(), 1_000).unwrap(),
            trace_id: TraceId::new(),
            now: T0,
        })
        .await
        .unwrap();
    let claimed = store.claim_due("n1", T0, lease, 100).await.unwrap();
    assert_eq!(claimed.len(), 6);
    let mut recipients = Vec::new();
    let mut starts = Vec::new();
    for call in &claimed {
        if call.id == refused {
            continue;
        }
        let phone = call.customer_phone.as_str();
        if phone == "+919876500006" || phone == "+919876500007" {
            recipients.push((phone.to_string(), call.id));
        }
        starts.push(DialStart {
            id: call.id,
            trunk: None,
            limits: DialLimits::default(),
        });
    }
    let outcomes = store.begin_dials("n1", T0, lease, &starts).await.unwrap();
    assert!(outcomes.iter().all(|o| *o == BeginDial::Started));
    recipients.sort_by(|a, b| a.0.cmp(&b.0));
    let recipients = [recipients[0].1, recipients[1].1];
    let answered = Millis(T0.0 + 2_000);
    for id in [completed, recipients[0]] {
        assert!(store
            .mark_progress(id, "n1", CallStatus::InProgress, answered)
            .await
            .unwrap());
    }
    let before = Millis(T0.0 + 5_000);
    let first = FinishAttempt {
        failure_reason: Some("480".into()),
        public_url: URL.into(),
        ..FinishAttempt::bare(settled_already, "n1", CallStatus::Failed, before)
    };
    assert!(store.finish_attempt(first, before).await.unwrap().is_some());
    assert_eq!(batch.total_recipients, 2);
    Story {
        completed,
        busy,
        other_node,
        settled_already,
        recipients,
        refused,
    }
}

/// The ends n1 reports at `now`, in the order they are settled.
fn ends(s: &Story, job: &PostCallJob, now: Millis) -> Vec<FinishAttempt> {
    let talked = |id: ConversationId| FinishAttempt {
        duration_seconds: Some(13),
        recording_path: Some(format!("/srv/outdial/recordings/{id}.wav").into()),
        transcript: vec![domain::call::TranscriptItem {
            role: domain::call::Speaker::Agent,
            message: "Hello".into(),
            at_ms: Some(100),
        }],
        results: serde_json::json!({"interested": true})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        answered_by: Some(domain::call::AnsweredBy::Human),
        stage_id: Some("close".into()),
        public_url: URL.into(),
        ..FinishAttempt::bare(id, "n1", CallStatus::Completed, Millis(now.0 - 100))
    };
    let unanswered = |id, status, reason: &str| FinishAttempt {
        failure_reason: Some(reason.into()),
        public_url: URL.into(),
        ..FinishAttempt::bare(id, "n1", status, Millis(now.0 - 100))
    };
    vec![
        FinishAttempt {
            opted_out: true,
            post_call: Some(job.clone()),
            ..talked(s.completed)
        },
        unanswered(s.busy, CallStatus::Busy, "486 Busy Here"),
        unanswered(s.other_node, CallStatus::Completed, "lost lease"),
        unanswered(s.settled_already, CallStatus::Failed, "480 again"),
        talked(s.recipients[0]),
        unanswered(s.recipients[1], CallStatus::NoAnswer, "ring timeout"),
        unanswered(s.refused, CallStatus::Failed, "no trunk carries the number"),
    ]
}

/// A row's columns as text, whatever their SQL types on either backend.
fn cells(row: &sqlx::any::AnyRow) -> Vec<String> {
    (0..row.len())
        .map(|i| {
            if let Ok(v) = row.try_get::<Option<String>, _>(i) {
                format!("{v:?}")
            } else if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
                format!("{v:?}")
            } else if let Ok(v) = row.try_get::<Option<i32>, _>(i) {
                format!("{v:?}")
            } else if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
                format!("{v:?}")
            } else {
                let v = row.try_get::<Option<f64>, _>(i);
                format!("{v:?}")
            }
        })
        .collect()
}

/// Everything a settlement writes, with each database's random ids (conversations, chains,
/// traces, webhook events) replaced by names both databases share.
async fn snapshot(url: &str) -> Vec<(&'static str, Vec<Vec<String>>)> {
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let tables: [(&str, &str); 7] = [
        (
            "calls",
            "SELECT id, chain_id, attempt, tenant_id, agent_id, status, customer_phone, failure_reason, \
             ended_at, duration_seconds, recording_path, transcript, results, latency, stage_id, answered_by, \
             transfer, lease_owner, lease_until, due_at, scheduled_for, batch_id, started_at, answered_at, \
             trunk_lane, created_at, retry_context FROM calls ORDER BY customer_phone, attempt",
        ),
        (
            "call_events",
            "SELECT call_id, tenant_id, at, status, detail FROM call_events ORDER BY id",
        ),
        (
            "outbox_events",
            "SELECT event_id, tenant_id, agent_id, conversation_id, chain_id, event_type, payload, created_at \
             FROM outbox_events ORDER BY id",
        ),
        (
            "webhook_deliveries",
            "SELECT event_id, target_id, chain_id, conversation_id, status, attempts, next_attempt_at, \
             created_at FROM webhook_deliveries ORDER BY id",
        ),
        (
            "batches",
            "SELECT id, status, pending_count, in_progress_count, pending_retry_count, completed_count, \
             busy_count, no_answer_count, failed_count, socket_failure_count, unreachable_count, \
             canceled_count, completed_duration_seconds, started_at, updated_at FROM batches ORDER BY id",
        ),
        (
            "do_not_call",
            "SELECT tenant_id, number, reason, source, created_at FROM do_not_call ORDER BY number",
        ),
        (
            "transcription_jobs",
            "SELECT id, tenant_id, engine, status, audio_bytes, conversation_id, call_language, created_at \
             FROM transcription_jobs ORDER BY id",
        ),
    ];
    // Longest first: a conversation's id is its chain's followed by the attempt. A batch's
    // calls share its trace id, named after the first of them: in a fixed order, since
    // PostgreSQL returns unordered rows as they lie after the updates, which differ between
    // the two databases now and then.
    let mut names: Vec<(String, String)> = Vec::new();
    for row in sqlx::query(
        "SELECT id, chain_id, trace_id, customer_phone, attempt FROM calls \
         ORDER BY customer_phone, attempt",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    {
        let phone: String = row.get("customer_phone");
        let attempt: i64 = row.get("attempt");
        names.push((row.get("id"), format!("<{phone} #{attempt}>")));
        names.push((row.get("chain_id"), format!("<chain {phone}>")));
        names.push((row.get("trace_id"), format!("<trace {phone}>")));
    }
    for (n, row) in sqlx::query("SELECT event_id FROM outbox_events ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .enumerate()
    {
        names.push((row.get("event_id"), format!("<event {n}>")));
    }
    names.sort_by_key(|(id, _)| std::cmp::Reverse(id.len()));
    let mut out = Vec::new();
    for (table, sql) in tables {
        let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap();
        let mut rows = rows
            .iter()
            .map(|r| {
                cells(r)
                    .into_iter()
                    .map(|mut c| {
                        for (id, name) in &names {
                            c = c.replace(id.as_str(), name);
                        }
                        c
                    })
                    .collect()
            })
            .collect::<Vec<Vec<String>>>();
        // The order of calls that fell due at the same time is the database's (their ids are
        // random), so the history is compared call by call, in each call's own order.
        if table == "call_events" {
            rows.sort_by(|a, b| a[0].cmp(&b[0]));
        }
        out.push((table, rows));
    }
    out
}

async fn one_by_one_and_batched_agree(backend: Backend) {
    let job = common::post_call_job();
    let now = Millis(T0.0 + 20_000);
    let single = backend.open().await;
    let s = story(single.store().as_ref()).await;
    let mut one_by_one = Vec::new();
    for f in ends(&s, &job, now) {
        one_by_one.push(single.store.finish_attempt(f, now).await.unwrap());
    }
    let batched_db = backend.open().await;
    let b = story(batched_db.store().as_ref()).await;
    let batched: Vec<Option<Settled>> = batched_db
        .store
        .finish_attempts(ends(&b, &job, now), now)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();

    // What n1 is told: settled, with the busy call's retry due after the policy's delay; the
    // call n2 holds and the one settled before answer `None`, alone.
    let settled = Some(Settled { retry_at: None });
    let retried = Some(Settled {
        retry_at: Some(Millis(now.0 + 60_000)),
    });
    let want = vec![settled, retried, None, None, settled, settled, settled];
    assert_eq!(one_by_one, want, "{backend:?}: one by one");
    assert_eq!(batched, want, "{backend:?}: batched");

    let (a, b) = (snapshot(&single.url).await, snapshot(&batched_db.url).await);
    for ((table, rows_a), (_, rows_b)) in a.iter().zip(&b) {
        assert!(!rows_a.is_empty(), "{backend:?}: {table} has no rows");
        assert_eq!(rows_a.len(), rows_b.len(), "{backend:?}: {table}'s rows");
        for (n, (ra, rb)) in rows_a.iter().zip(rows_b).enumerate() {
            for (c, (ca, cb)) in ra.iter().zip(rb).enumerate() {
                assert_eq!(ca, cb, "{backend:?}: {table}, row {n}, column {c}");
            }
        }
    }
    // The comparison is of the rows the story is about: the retry, the listing, the job, the
    // finished batch and an event per settled call are there.
    let rows = |t: &str| &a.iter().find(|(n, _)| *n == t).unwrap().1;
    assert_eq!(
        rows("calls").len(),
        8,
        "seven calls and the busy one's retry"
    );
    let retry = rows("calls")
        .iter()
        .find(|r| r[6] == "Some(\"+919876500002\")" && r[2] == "Some(2)")
        .expect("the busy call's retry");
    assert_eq!(retry[5], "Some(\"scheduled\")");
    assert_eq!(rows("do_not_call").len(), 1);
    assert_eq!(rows("transcription_jobs").len(), 1);
    assert_eq!(rows("batches")[0][1], "Some(\"completed\")");
    let types: Vec<&str> = rows("outbox_events")
        .iter()
        .map(|r| r[5].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "Some(\"call.failed\")",
            "Some(\"call.completed\")",
            "Some(\"call.busy\")",
            "Some(\"call.completed\")",
            "Some(\"call.no_answer\")",
            "Some(\"call.failed\")",
        ]
    );
    single.finish().await;
    batched_db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_settles_exactly_as_one_by_one_on_every_backend() {
    for backend in backends() {
        one_by_one_and_batched_agree(backend).await;
    }
}

/// A batch that one call breaks (its stored row cannot be read back) is settled again one call
/// per transaction: the others are settled, and the broken one fails alone, still live under
/// its lease for the orphan sweep.
async fn a_broken_call_fails_alone(backend: Backend) {
    let db = backend.open().await;
    let store = db.store();
    let (t, agent) = common::tenant_with_agent(store.as_ref(), "acme", "+918035739222").await;
    let mut ids = Vec::new();
    for phone in ["+919876500001", "+919876500002", "+919876500003"] {
        let call = store
            .create_call(new_call(t, agent, phone, T0))
            .await
            .unwrap();
        ids.push(call.conversation_id);
    }
    let lease = Millis(T0.0 + LEASE_MS);
    assert_eq!(store.claim_due("n1", T0, lease, 10).await.unwrap().len(), 3);
    let starts: Vec<DialStart> = ids
        .iter()
        .map(|id| DialStart {
            id: *id,
            trunk: None,
            limits: DialLimits::default(),
        })
        .collect();
    let outcomes = store.begin_dials("n1", T0, lease, &starts).await.unwrap();
    assert!(outcomes.iter().all(|o| *o == BeginDial::Started));
    let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE calls SET parameters = 'not json' WHERE id = $1")
        .bind(ids[1].to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    let now = Millis(T0.0 + 10_000);
    let ends = ids
        .iter()
        .map(|id| FinishAttempt {
            failure_reason: Some("486 Busy Here".into()),
            public_url: URL.into(),
            ..FinishAttempt::bare(*id, "n1", CallStatus::Busy, now)
        })
        .collect();
    let answers = db.store.finish_attempts(ends, now).await;
    assert!(
        matches!(answers[0], Ok(Some(_))),
        "{backend:?}: {answers:?}"
    );
    assert!(answers[1].is_err(), "{backend:?}: {answers:?}");
    assert!(
        matches!(answers[2], Ok(Some(_))),
        "{backend:?}: {answers:?}"
    );
    let mut state = Vec::new();
    for id in &ids {
        let row = sqlx::query("SELECT status, lease_owner FROM calls WHERE id = $1")
            .bind(id.to_string())
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let events: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM outbox_events WHERE conversation_id = $1")
                .bind(id.to_string())
                .fetch_one(&mut conn)
                .await
                .unwrap()
                .get("n");
        let status: String = row.get("status");
        let owner: Option<String> = row.get("lease_owner");
        state.push((status, owner, events));
    }
    assert_eq!(
        state,
        [
            ("busy".to_string(), None, 1),
            ("initiated".to_string(), Some("n1".to_string()), 0),
            ("busy".to_string(), None, 1),
        ],
        "{backend:?}"
    );
    drop(conn);
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_batch_settles_its_other_calls_on_every_backend() {
    for backend in backends() {
        a_broken_call_fails_alone(backend).await;
    }
}

/// Progress marks written together (`mark_progresses`) answer each call in the marks' order and
/// write only what the node may: its own dialled calls, forward in the lifecycle, each with its
/// event and an answered call with its answer time.
async fn marks_together(backend: Backend) {
    let db = backend.open().await;
    let store = db.store();
    let (t, agent) = testkit::dialling_agent(
        store.as_ref(),
        "acme",
        "+918035739222",
        None,
        serde_json::json!({}),
        T0,
    )
    .await;
    let lease = Millis(T0.0 + LEASE_MS);
    let mut dialled = Vec::new();
    for (phone, node) in [
        ("+919876500001", "n1"),
        ("+919876500002", "n2"),
        ("+919876500003", "n1"),
    ] {
        let id = store
            .create_call(new_call(t, agent, phone, T0))
            .await
            .unwrap()
            .conversation_id;
        assert_eq!(store.claim_due(node, T0, lease, 1).await.unwrap().len(), 1);
        let started = store
            .begin_dial(id, node, T0, lease, None, &DialLimits::default())
            .await
            .unwrap();
        assert_eq!(started, BeginDial::Started);
        dialled.push(id);
    }
    let [ringing, other_node, answered] = [dialled[0], dialled[1], dialled[2]];
    let at = Millis(T0.0 + 2_000);
    let mark = |id, status| Progress { id, status, at };
    let marked = store
        .mark_progresses(
            "n1",
            &[
                mark(ringing, CallStatus::Ringing),
                mark(other_node, CallStatus::InProgress),
                mark(answered, CallStatus::InProgress),
            ],
        )
        .await;
    let marked: Vec<bool> = marked.into_iter().map(Result::unwrap).collect();
    assert_eq!(marked, [true, false, true], "{backend:?}");
    // Backwards is refused: an answered call does not ring again.
    let again = store
        .mark_progresses("n1", &[mark(answered, CallStatus::Ringing)])
        .await;
    let again: Vec<bool> = again.into_iter().map(Result::unwrap).collect();
    assert_eq!(again, [false], "{backend:?}");

    let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    let mut state = Vec::new();
    for id in [ringing, other_node, answered] {
        let row = sqlx::query(
            "SELECT status, answered_at, (SELECT COUNT(*) FROM call_events e \
             WHERE e.call_id = c.id AND e.status IN ('ringing', 'in_progress')) AS marks \
             FROM calls c WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_one(&mut conn)
        .await
        .unwrap();
        state.push((
            row.get::<String, _>("status"),
            row.get::<Option<i64>, _>("answered_at"),
            row.get::<i64, _>("marks"),
        ));
    }
    assert_eq!(
        state,
        [
            ("ringing".to_string(), None, 1),
            ("initiated".to_string(), None, 0),
            ("in_progress".to_string(), Some(at.0), 1),
        ],
        "{backend:?}"
    );
    drop(conn);
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn progress_marks_written_together_answer_each_call_on_every_backend() {
    for backend in backends() {
        marks_together(backend).await;
    }
}
