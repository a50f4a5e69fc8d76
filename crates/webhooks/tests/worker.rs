//! The delivery worker end to end: the real store (SQLite and PostgreSQL), the real worker, real
//! HTTP receivers on loopback that verify every signature independently.

#[path = "../../store/tests/common/mod.rs"]
mod db;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use db::backends;
use domain::store::{Page, Store};
use domain::webhooks::{
    DeliveryFilter, DeliveryStatus, NewWebhookTarget, OutboxEvent, WebhookStore, WebhookTarget,
};
use domain::{AgentId, Millis, TenantId};
use serde_json::{json, Map, Value};
use store::SqlStore;
use support::receiver::Receiver;
use webhooks::event::{CallData, CallParameters, CallRetry, EventData, RetryContext};
use webhooks::{
    ClientConfig, Envelope, EventId, EventType, RetrySchedule, UrlPolicy, Worker, WorkerConfig,
};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

async fn tenant_with_agent(store: &dyn Store) -> (TenantId, AgentId) {
    db::tenant_with_agent(store, "acme", "+918035739222").await
}

async fn add_target(
    store: &SqlStore,
    (t, agent): (TenantId, AgentId),
    name: &str,
    url: &str,
    transcript: bool,
) -> WebhookTarget {
    store
        .create_webhook_target(
            t,
            agent,
            &NewWebhookTarget {
                name: name.into(),
                url: url.into(),
                secret: SECRET.into(),
                events: vec!["call.completed".into()],
                include_transcript: transcript,
                include_recording_url: false,
                active: true,
            },
            Millis::now(),
        )
        .await
        .unwrap()
}

/// A `call.completed` envelope with a transcript and a recording URL filled in.
fn event((t, agent): (TenantId, AgentId), chain: &str, attempt: u32) -> OutboxEvent {
    let id = EventId::generate();
    let now = chrono::Utc::now();
    let mut params = Map::new();
    params.insert("customer_name".into(), json!("Rahul"));
    params.insert("customer_phone".into(), json!("+917014675791"));
    let conversation = format!("{chain}_{attempt}");
    let envelope = Envelope {
        event_id: id.clone(),
        event_type: EventType::CallCompleted,
        timestamp: now,
        data: EventData {
            call: CallData {
                agent_id: agent.0,
                call_parameters: CallParameters::new(params),
                conversation_id: conversation.clone(),
                duration_seconds: Some(142),
                started_at: Some(now),
                ended_at: Some(now),
                failure_reason: None,
                from_phone: "+918065177389".into(),
                to_phone: "+917014675791".into(),
                recording_url: Some(format!(
                    "http://x/v1/conversations/{conversation}/recording"
                )),
                status: "completed".into(),
                trace_id: "a1b2c3d4-e5f6-7890-abcd-ef1234567890".into(),
                metadata: None,
                batch_id: None,
                answered_by: None,
            },
            results: Map::new(),
            retry: CallRetry {
                attempt_number: attempt,
                is_final_attempt: true,
                max_attempts: 1,
                next_retry_at: None,
            },
            retry_context: RetryContext::default(),
            transcript: Some("BOT: Hello Rahul\nHUMAN: Yes".into()),
        },
    };
    OutboxEvent {
        event_id: id.as_str().into(),
        event_type: "call.completed".into(),
        tenant: t,
        agent,
        conversation_id: Some(conversation),
        chain_id: chain.into(),
        payload: serde_json::to_value(&envelope).unwrap(),
        created_at: Millis::now(),
    }
}

fn config(owner: &str) -> WorkerConfig {
    let mut c = WorkerConfig::new(
        "1,1,1".parse::<RetrySchedule>().unwrap(),
        ClientConfig {
            policy: UrlPolicy::ALLOW_PRIVATE,
            ..ClientConfig::default()
        },
    );
    c.owner = owner.into();
    c.idle_poll = Duration::from_millis(200);
    c.lease_for = Duration::from_secs(3);
    c.per_target = 8;
    c.concurrency = 32;
    c
}

fn worker(store: &Arc<SqlStore>, owner: &str) -> Arc<Worker<SqlStore>> {
    Arc::new(Worker::new(store.clone(), config(owner)).unwrap())
}

/// Runs the worker loop in the background until the returned sender fires (or is dropped).
fn spawn_loop(
    w: Arc<Worker<SqlStore>>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        w.run(async {
            let _ = stopped.await;
        })
        .await
    });
    (stop, task)
}

async fn deliveries(store: &SqlStore, t: TenantId) -> Vec<domain::webhooks::DeliveryRecord> {
    store
        .list_deliveries(
            t,
            &DeliveryFilter::default(),
            Page {
                limit: 100,
                offset: 0,
            },
        )
        .await
        .unwrap()
        .items
}

async fn wait_settled(store: &SqlStore, t: TenantId, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let all = deliveries(store, t).await;
        if all.iter().all(|d| d.status != DeliveryStatus::Pending) {
            return;
        }
        assert!(Instant::now() < deadline, "still pending: {all:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn story_signed_and_opted_out(store: Arc<SqlStore>) {
    let ta = tenant_with_agent(store.as_ref()).await;
    let plain = Receiver::start(&[], 200).await;
    let full = Receiver::start(&[], 200).await;
    plain.expect_secrets(&[SECRET]);
    full.expect_secrets(&[SECRET]);
    add_target(&store, ta, "plain", &plain.url(), false).await;
    add_target(&store, ta, "full", &full.url(), true).await;
    let e = event(ta, "chain", 1);
    store.enqueue_event(&e).await.unwrap();
    assert_eq!(worker(&store, "w").run_once().await.unwrap(), 2);
    let p = &plain.seen()[0];
    let f = &full.seen()[0];
    assert!(p.verified && f.verified);
    assert_eq!(
        (p.webhook_id.as_str(), p.event_type.as_str()),
        (e.event_id.as_str(), "call.completed")
    );
    assert_eq!(p.body["data"]["transcript"], Value::Null);
    assert_eq!(p.body["data"]["call"]["recording_url"], Value::Null);
    assert_eq!(f.body["data"]["transcript"], "BOT: Hello Rahul\nHUMAN: Yes");
    assert!(f.body["data"]["call"]["call_parameters"]
        .get("customer_phone")
        .is_none());
    let all = deliveries(&store, ta.0).await;
    assert!(all
        .iter()
        .all(|d| d.status == DeliveryStatus::Delivered && d.attempts.len() == 1));
    assert_eq!(store.outbox_stats().await.unwrap().depth, 0);
}

async fn story_400_is_not_retried(store: Arc<SqlStore>) {
    let ta = tenant_with_agent(store.as_ref()).await;
    let rx = Receiver::start(&[], 400).await;
    rx.expect_secrets(&[SECRET]);
    add_target(&store, ta, "t", &rx.url(), false).await;
    store.enqueue_event(&event(ta, "c", 1)).await.unwrap();
    let w = worker(&store, "w");
    let (stop, task) = spawn_loop(w);
    wait_settled(&store, ta.0, Duration::from_secs(10)).await;
    // Longer than the whole 1,1,1 schedule: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stop.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(rx.seen().len(), 1);
    let d = &deliveries(&store, ta.0).await[0];
    assert_eq!(
        (d.status, d.attempts.len(), d.last_status),
        (DeliveryStatus::Failed, 1, Some(400))
    );
}

async fn story_500_500_200(store: Arc<SqlStore>) {
    let ta = tenant_with_agent(store.as_ref()).await;
    let rx = Receiver::start(&[500, 500], 200).await;
    rx.expect_secrets(&[SECRET]);
    add_target(&store, ta, "t", &rx.url(), false).await;
    let e = event(ta, "c", 1);
    store.enqueue_event(&e).await.unwrap();
    let (stop, task) = spawn_loop(worker(&store, "w"));
    wait_settled(&store, ta.0, Duration::from_secs(10)).await;
    stop.send(()).unwrap();
    task.await.unwrap();
    let seen = rx.seen();
    assert_eq!(
        seen.iter()
            .map(|r| (r.webhook_id.as_str(), r.replied, r.verified))
            .collect::<Vec<_>>(),
        vec![
            (e.event_id.as_str(), 500, true),
            (e.event_id.as_str(), 500, true),
            (e.event_id.as_str(), 200, true)
        ]
    );
    // Never before the schedule's second (jitter only adds; 50 ms for where the receiver
    // stamps arrivals); the upper bound only catches a retry that waited for something else,
    // not scheduling noise.
    for pair in seen.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(950) && gap < Duration::from_secs(5),
            "{gap:?}"
        );
    }
    let d = &deliveries(&store, ta.0).await[0];
    assert_eq!(d.status, DeliveryStatus::Delivered);
    assert_eq!(
        d.attempts.iter().map(|a| a.http_status).collect::<Vec<_>>(),
        vec![Some(500), Some(500), Some(200)]
    );
}

async fn story_receiver_down_then_up(store: Arc<SqlStore>) {
    let ta = tenant_with_agent(store.as_ref()).await;
    let addr = Receiver::vacant_addr().await;
    add_target(&store, ta, "t", &format!("http://{addr}/hook"), false).await;
    let e = event(ta, "c", 1);
    store.enqueue_event(&e).await.unwrap();
    let (stop, task) = spawn_loop(worker(&store, "w"));
    // The first attempt is refused (nothing listens); then the receiver comes up.
    let deadline = Instant::now() + Duration::from_secs(5);
    while deliveries(&store, ta.0).await[0].attempts.is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rx = Receiver::start_with(addr, &[], 200, Duration::ZERO).await;
    rx.expect_secrets(&[SECRET]);
    wait_settled(&store, ta.0, Duration::from_secs(10)).await;
    stop.send(()).unwrap();
    task.await.unwrap();
    let d = &deliveries(&store, ta.0).await[0];
    assert_eq!(d.status, DeliveryStatus::Delivered);
    assert!(d.attempts.len() >= 2);
    assert_eq!(d.attempts[0].http_status, None);
    assert!(d.attempts[0].error.is_some());
    let seen = rx.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].verified && seen[0].webhook_id == e.event_id);
}

async fn story_worker_killed_mid_flight(store: Arc<SqlStore>) {
    let ta = tenant_with_agent(store.as_ref()).await;
    let rx = Receiver::start_with(
        "127.0.0.1:0".parse().unwrap(),
        &[],
        200,
        Duration::from_millis(300),
    )
    .await;
    rx.expect_secrets(&[SECRET]);
    add_target(&store, ta, "t", &rx.url(), false).await;
    let events: Vec<OutboxEvent> = (0..40).map(|i| event(ta, &format!("c{i}"), 1)).collect();
    store.enqueue_events(&events).await.unwrap();
    let (_stop, first) = spawn_loop(worker(&store, "first"));
    rx.wait_for(1, Duration::from_secs(5)).await;
    // Killed with attempts in flight: nothing is recorded, the leases stay until they lapse.
    first.abort();
    let _ = first.await;
    assert!(deliveries(&store, ta.0)
        .await
        .iter()
        .any(|d| d.status == DeliveryStatus::Pending));
    let (stop, second) = spawn_loop(worker(&store, "second"));
    wait_settled(&store, ta.0, Duration::from_secs(20)).await;
    stop.send(()).unwrap();
    second.await.unwrap();
    let all = deliveries(&store, ta.0).await;
    assert_eq!(all.len(), 40);
    assert!(all.iter().all(|d| d.status == DeliveryStatus::Delivered));
    let seen = rx.seen();
    assert!(seen.iter().all(|r| r.verified));
    let ids: std::collections::HashSet<&str> = seen.iter().map(|r| r.webhook_id.as_str()).collect();
    let expected: std::collections::HashSet<&str> =
        events.iter().map(|e| e.event_id.as_str()).collect();
    // Every event arrived; a duplicate (sent by the killed worker, then again) has the same id.
    assert_eq!(ids, expected);
    assert!(seen.len() >= 40);
}

async fn story_rotation_signs_twice(store: Arc<SqlStore>) {
    let ta = tenant_with_agent(store.as_ref()).await;
    let rx = Receiver::start(&[], 200).await;
    let target = add_target(&store, ta, "t", &rx.url(), false).await;
    let new_secret = "a-customer-chosen-secret-2026";
    store
        .rotate_webhook_secret(ta.0, ta.1, target.id, new_secret, Millis::now())
        .await
        .unwrap();
    rx.expect_secrets(&[new_secret, SECRET]);
    store.enqueue_event(&event(ta, "c", 1)).await.unwrap();
    worker(&store, "w").run_once().await.unwrap();
    let seen = rx.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].signatures, 2);
    assert!(
        seen[0].verified,
        "both signatures verify, FormantAI's with the new secret"
    );
}

async fn story_gone_deactivates(store: Arc<SqlStore>) {
    let ta = tenant_with_agent(store.as_ref()).await;
    let rx = Receiver::start(&[], 410).await;
    rx.expect_secrets(&[SECRET]);
    let target = add_target(&store, ta, "t", &rx.url(), false).await;
    // Same chain: the second waits behind the first and fails with the target.
    store
        .enqueue_events(&[event(ta, "c", 1), event(ta, "c", 2)])
        .await
        .unwrap();
    worker(&store, "w").run_once().await.unwrap();
    assert_eq!(rx.seen().len(), 1);
    let t = store
        .get_webhook_target(ta.0, ta.1, target.id)
        .await
        .unwrap()
        .unwrap();
    assert!(!t.active);
    let all = deliveries(&store, ta.0).await;
    assert!(
        all.iter().all(|d| d.status == DeliveryStatus::Failed),
        "{all:?}"
    );
}

async fn story_chain_order(store: Arc<SqlStore>) {
    let ta = tenant_with_agent(store.as_ref()).await;
    // The first event fails once; the second of its chain must still arrive after it.
    let rx = Receiver::start(&[500], 200).await;
    rx.expect_secrets(&[SECRET]);
    add_target(&store, ta, "t", &rx.url(), false).await;
    let (a, b) = (event(ta, "c", 1), event(ta, "c", 2));
    store.enqueue_events(&[a.clone(), b.clone()]).await.unwrap();
    let (stop, task) = spawn_loop(worker(&store, "w"));
    wait_settled(&store, ta.0, Duration::from_secs(10)).await;
    stop.send(()).unwrap();
    task.await.unwrap();
    let order: Vec<String> = rx.seen().into_iter().map(|r| r.webhook_id).collect();
    assert_eq!(order, vec![a.event_id.clone(), a.event_id, b.event_id]);
}

async fn story_failing_target_does_not_delay_healthy(store: Arc<SqlStore>) {
    let ta = tenant_with_agent(store.as_ref()).await;
    let healthy = Receiver::start(&[], 200).await;
    healthy.expect_secrets(&[SECRET]);
    // Slow and failing: each attempt holds a connection for 3 s, then 500.
    let bad = Receiver::start_with(
        "127.0.0.1:0".parse().unwrap(),
        &[],
        500,
        Duration::from_secs(3),
    )
    .await;
    add_target(&store, ta, "healthy", &healthy.url(), false).await;
    add_target(&store, ta, "bad", &bad.url(), false).await;
    let w = worker(&store, "w");
    let (stop, task) = spawn_loop(w.clone());
    let wake = w.waker();
    let mut latencies = Vec::new();
    for i in 0..30 {
        let e = event(ta, &format!("c{i}"), 1);
        let start = Instant::now();
        store.enqueue_event(&e).await.unwrap();
        wake.notify_one();
        let seen = healthy.wait_for(i + 1, Duration::from_secs(5)).await;
        assert_eq!(seen[i].webhook_id, e.event_id);
        latencies.push(seen[i].at - start);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    task.await.unwrap();
    latencies.sort();
    let worst = *latencies.last().unwrap();
    // Four attempts at once until it first answers, then one at a time: it was being
    // attempted all along.
    assert!(
        bad.seen().len() >= 4,
        "the bad target was being attempted meanwhile: {}",
        bad.seen().len()
    );
    // Waiting behind a bad attempt would cost its 3 s; the bound is half that, generous for a
    // loaded machine and still the behaviour, not a speed figure.
    assert!(
        worst < Duration::from_millis(1_500),
        "healthy latencies {latencies:?}"
    );
}

/// With slots scarce, a target that answers 500 to everything is set aside after its first
/// failures: every free slot goes to the healthy target until that one has nothing left, and
/// only then does the failing one get its (one at a time) attempts. Asserted on the order of
/// arrivals, not on their times.
async fn story_failing_target_yields_its_slots(store: Arc<SqlStore>) {
    let ta = tenant_with_agent(store.as_ref()).await;
    let healthy = Receiver::start(&[], 200).await;
    healthy.expect_secrets(&[SECRET]);
    let failing = Receiver::start(&[], 500).await;
    failing.expect_secrets(&[SECRET]);
    add_target(&store, ta, "healthy", &healthy.url(), false).await;
    add_target(&store, ta, "failing", &failing.url(), false).await;
    let n = 40;
    let events: Vec<OutboxEvent> = (0..n).map(|i| event(ta, &format!("c{i}"), 1)).collect();
    store.enqueue_events(&events).await.unwrap();
    let mut c = config("w");
    c.concurrency = 2;
    c.per_target = 2;
    let w = Arc::new(Worker::new(store.clone(), c).unwrap());
    let started = Instant::now();
    let (stop, task) = spawn_loop(w);
    let got = healthy.wait_for(n, Duration::from_secs(20)).await;
    // Not starved: every event reaches the failing target too.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ids: std::collections::HashSet<String> =
            failing.seen().into_iter().map(|r| r.webhook_id).collect();
        if ids.len() == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failing target saw {} events",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(got.iter().all(|r| r.verified));
    let ids: std::collections::HashSet<&str> = got.iter().map(|r| r.webhook_id.as_str()).collect();
    assert_eq!(ids.len(), n);
    // When the healthy target's third-last event arrived, its last one had not started (both
    // slots were taken), so the failing target had only its attempts from before its first
    // answer (at most one per slot, plus one more starting as the first 500 came back) and its
    // probes, one a second.
    let mark = got[n - 3].at;
    let before = failing.seen().iter().filter(|r| r.at < mark).count();
    let probes = usize::try_from((mark - started).as_secs()).unwrap() + 1;
    assert!(
        before <= 3 + probes,
        "the failing target took {before} slots while healthy deliveries waited ({probes} probes allowed)"
    );
}

macro_rules! on_both {
    ($name:ident, $story:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            for backend in backends() {
                let db = backend.open().await;
                $story(db.store.clone()).await;
                db.finish().await;
            }
        }
    };
}

on_both!(
    signed_deliveries_verify_and_honour_opt_outs,
    story_signed_and_opted_out
);
on_both!(a_400_gets_exactly_one_attempt, story_400_is_not_retried);
on_both!(
    a_500_500_200_receiver_gets_the_same_id_three_times,
    story_500_500_200
);
on_both!(
    a_receiver_that_was_down_gets_the_event_when_up,
    story_receiver_down_then_up
);
on_both!(
    a_killed_worker_loses_nothing,
    story_worker_killed_mid_flight
);
on_both!(
    rotation_sends_two_signatures_that_verify,
    story_rotation_signs_twice
);
on_both!(gone_deactivates_the_target, story_gone_deactivates);
on_both!(a_chain_is_delivered_in_order, story_chain_order);
on_both!(
    a_failing_target_does_not_delay_a_healthy_one,
    story_failing_target_does_not_delay_healthy
);
on_both!(
    a_failing_target_yields_its_slots_to_a_healthy_one,
    story_failing_target_yields_its_slots
);
