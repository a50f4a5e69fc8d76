//! A 2,000-recipient batch through the real dispatcher and the real SQLite store, with a
//! telephony double at the trait boundary that counts every dial: each recipient is dialled
//! exactly once per attempt, the counters add up at every moment, pause stops new dials and
//! resume continues, and retries pass through `pending_retry` into the outcome counts.

use async_trait::async_trait;
use dispatch::{DispatchConfig, Dispatcher, Engines, SystemClock};
use domain::batch::{parse_recipients, BatchAction, BatchStatus, BatchStore, NewBatch};
use domain::dispatch::CountryZones;
use domain::store::Store;
use domain::telephony::{
    CallControl, CallEnd, CallEvent, DialError, DialRequest, LiveCall, Telephony,
};
use domain::tenant::TenantLimits;
use domain::{CallStatus, Millis, TraceId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{SqlStore, StoreOptions};
use tokio::sync::mpsc;

const ROWS: u32 = 2000;

fn number(i: u32) -> String {
    format!("+9198{:08}", i)
}

/// The outcome a number always gets: a quarter each busy (retried once), no answer,
/// unreachable and telephony failure.
fn outcome(to: &str) -> CallStatus {
    let i: u32 = to[5..].parse().unwrap();
    match i % 4 {
        0 => CallStatus::Busy,
        1 => CallStatus::NoAnswer,
        2 => CallStatus::Unreachable,
        _ => CallStatus::TelephonyFailed,
    }
}

#[derive(Default)]
struct CountingPhone {
    dials: Mutex<HashMap<String, u32>>,
}

impl CountingPhone {
    fn total(&self) -> u32 {
        self.dials.lock().unwrap().values().sum()
    }
}

#[async_trait]
impl Telephony for CountingPhone {
    async fn dial(&self, req: DialRequest) -> Result<LiveCall, DialError> {
        let to = req.to.to_string();
        *self.dials.lock().unwrap().entry(to.clone()).or_default() += 1;
        let (tx, rx) = mpsc::channel(4);
        let (control, _control_rx) = mpsc::channel::<CallControl>(4);
        tokio::spawn(async move {
            // A little ring time, so calls are seen in progress.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx
                .send(CallEvent::Ended(CallEnd {
                    status: outcome(&to),
                    failure_reason: Some("scripted".into()),
                    answered_at: None,
                    ended_at: Millis::now(),
                    recording: None,
                    retry_after: None,
                }))
                .await;
        });
        Ok(LiveCall {
            events: rx,
            control,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2000_row_batch_dials_each_recipient_once_per_attempt_and_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/outdial.db", dir.path().display());
    let store = Arc::new(
        SqlStore::connect(&url, StoreOptions::default())
            .await
            .unwrap(),
    );
    let now = Millis::now();
    let retries = serde_json::json!({
        "retry_policy": {"on": ["busy"], "max_attempts": 2, "delay_seconds": 1}
    });
    let (t, agent_id) =
        testkit::dialling_agent(store.as_ref(), "acme", "+918035739222", None, retries, now).await;
    // The retry of a busy number comes a second later; the default one call per number per
    // minute would hold it back for the rest of that minute.
    store
        .update_tenant_limits(
            t,
            &TenantLimits {
                max_concurrent_calls: None,
                per_number_calls: 10,
                per_number_window_seconds: 60,
            },
        )
        .await
        .unwrap();

    let mut csv = String::from("customer_phone,customer_name\n");
    for i in 0..ROWS {
        csv.push_str(&format!("{},Name {i}\n", number(i)));
    }
    let recipients = parse_recipients(csv.as_bytes(), 1_000_000).unwrap();
    let batch = store
        .create_batch(NewBatch {
            tenant: t,
            agent: agent_id,
            name: "load".into(),
            scheduled_for: None,
            recipients,
            trace_id: TraceId::new(),
            now: Millis::now(),
        })
        .await
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Pending);
    assert_eq!(batch.counts.pending, i64::from(ROWS));

    let phone = Arc::new(CountingPhone::default());
    let dispatcher = Dispatcher::new(
        store.clone(),
        phone.clone(),
        // No call is answered here, so the engines are never used.
        Engines {
            tts: Arc::new(agent::EspeakNg::default()),
            stt: Arc::new(agent::PocketSphinx::default()),
            llm: Default::default(),
        },
        CountryZones::default(),
        Arc::new(SystemClock),
        DispatchConfig {
            idle_wait: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(dispatcher.clone().run(stop_rx));

    let mut paused_once = false;
    let mut saw_retry_pending = false;
    let start = Instant::now();
    loop {
        let b = store.get_batch(t, batch.id).await.unwrap().unwrap();
        let c = b.counts;
        assert!(
            c.pending >= 0 && c.in_progress >= 0 && c.pending_retry >= 0,
            "{c:?}"
        );
        assert_eq!(
            c.processed() + c.in_progress + c.pending_retry + c.pending,
            b.total_recipients,
            "counters must add up at every moment: {c:?}"
        );
        saw_retry_pending |= c.pending_retry > 0;
        if !paused_once && c.processed() > 300 {
            paused_once = true;
            store
                .change_batch(t, batch.id, BatchAction::Pause, Millis::now())
                .await
                .unwrap();
            // Calls claimed before the pause may still start; within a second nothing new does.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let settled = phone.total();
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(phone.total(), settled, "a paused batch must not dial");
            let b = store.get_batch(t, batch.id).await.unwrap().unwrap();
            assert_eq!(b.status, BatchStatus::Paused);
            assert!(b.counts.pending > 0, "the test must pause mid-batch");
            store
                .change_batch(t, batch.id, BatchAction::Resume, Millis::now())
                .await
                .unwrap();
            dispatcher.waker().notify_one();
        }
        if b.status == BatchStatus::Completed {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "batch did not finish: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = stop_tx.send(true);
    let _ = run.await;

    let b = store.get_batch(t, batch.id).await.unwrap().unwrap();
    let q = i64::from(ROWS / 4);
    assert_eq!(
        (
            b.counts.busy,
            b.counts.no_answer,
            b.counts.unreachable,
            b.counts.failed
        ),
        (q, q, q, q),
        "{:?}",
        b.counts
    );
    assert_eq!(
        (
            b.counts.pending,
            b.counts.in_progress,
            b.counts.pending_retry
        ),
        (0, 0, 0)
    );
    assert!(paused_once && saw_retry_pending);
    let dials = phone.dials.lock().unwrap();
    assert_eq!(dials.len(), ROWS as usize, "every recipient dialled");
    for (to, n) in dials.iter() {
        let want = if outcome(to) == CallStatus::Busy {
            2
        } else {
            1
        };
        assert_eq!(*n, want, "{to} dialled {n} times");
    }
}
