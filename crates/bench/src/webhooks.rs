//! Webhook delivery throughput and latency: a burst of events enqueued in one transaction on the
//! embedded SQLite store, delivered by the real worker to a receiver on loopback; once with one
//! healthy target, once with a second target that answers 500 to everything.
//!
//! Latency runs from the return of the enqueue's commit (the state change is durable) to the
//! moment the receiver holds the whole request. The receiver then checks the FormantAI signature
//! over the bytes it got, as a real one would, off the timed path; a delivery that does not
//! verify fails the run.

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use domain::webhooks::{NewWebhookTarget, OutboxEvent, WebhookStore};
use domain::{AgentId, Millis, TenantId};
use serde_json::{json, Map};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{SqlStore, StoreOptions};
use webhooks::event::{CallData, CallParameters, CallRetry, EventData, RetryContext};
use webhooks::{
    ClientConfig, Envelope, EventId, EventType, RetrySchedule, UrlPolicy, Worker, WorkerConfig,
};

#[derive(clap::Args)]
pub struct Args {
    /// Events in the burst.
    #[arg(long, default_value_t = 1000)]
    events: usize,
    /// Attempts in flight at once (worker concurrency).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Attempts in flight at once per target.
    #[arg(long, default_value_t = 64)]
    per_target: u32,
    /// Leases held at once per target (in flight, queued, or awaiting their write).
    #[arg(long, default_value_t = 1024)]
    per_target_leased: u32,
    /// Times to run both scenarios.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Where the databases go (default: a temp dir on the same disk as /tmp).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Deliveries the failing target already has waiting for a retry (an hour away) when the
    /// burst comes: a dead endpoint's backlog.
    #[arg(long, default_value_t = 0)]
    backlog: usize,
}

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

#[derive(Clone)]
struct Healthy {
    arrivals: Arrivals,
    secret: Arc<webhooks::WebhookSecret>,
    forged: Arc<AtomicUsize>,
}

async fn healthy(State(rx): State<Healthy>, headers: HeaderMap, body: Bytes) -> StatusCode {
    // The extractors have read the whole request: it has arrived.
    let at = Instant::now();
    let signed = webhooks::sign::formantai_signature(&rx.secret, &body).ok();
    let header = headers
        .get("x-formantai-signature")
        .and_then(|v| v.to_str().ok());
    if signed.is_none() || signed.as_deref() != header {
        rx.forged.fetch_add(1, Ordering::Relaxed);
        return StatusCode::BAD_REQUEST;
    }
    if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
        if let Ok(mut seen) = rx.arrivals.lock() {
            seen.entry(id.to_owned()).or_insert(at);
        }
    }
    StatusCode::OK
}

async fn failing() -> StatusCode {
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn serve(app: Router) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/hook"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn event(tenant: TenantId, agent: AgentId, i: usize) -> Result<OutboxEvent> {
    event_of(EventType::CallCompleted, tenant, agent, i)
}

fn event_of(
    event_type: EventType,
    tenant: TenantId,
    agent: AgentId,
    i: usize,
) -> Result<OutboxEvent> {
    let id = EventId::generate();
    let now = chrono::Utc::now();
    let conversation = format!("{}_1", uuid_like(i));
    let mut params = Map::new();
    params.insert("customer_name".into(), json!("Rahul"));
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
                from_phone: "+918035739222".into(),
                to_phone: "+917014675791".into(),
                recording_url: None,
                status: "completed".into(),
                trace_id: "a1b2c3d4-e5f6-7890-abcd-ef1234567890".into(),
                metadata: None,
                batch_id: None,
                answered_by: None,
            },
            results: Map::new(),
            retry: CallRetry {
                attempt_number: 1,
                is_final_attempt: true,
                max_attempts: 1,
                next_retry_at: None,
            },
            retry_context: RetryContext::default(),
            transcript: Some("BOT: Hello Rahul\nHUMAN: Yes, I can talk.".into()),
        },
    };
    Ok(OutboxEvent {
        event_id: id.as_str().to_owned(),
        event_type: event_type.as_str().to_owned(),
        tenant,
        agent,
        conversation_id: Some(conversation.clone()),
        chain_id: conversation,
        payload: serde_json::to_value(&envelope)?,
        created_at: Millis::now(),
    })
}

fn uuid_like(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

struct Figures {
    per_second: f64,
    first: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
    awaiting_retry: u64,
}

async fn scenario(args: &Args, dir: &std::path::Path, with_failing: bool) -> Result<Figures> {
    let url = format!("sqlite://{}/webhooks-{with_failing}.db", dir.display());
    let store = Arc::new(SqlStore::connect(&url, StoreOptions::default()).await?);
    let (tenant, agent) = crate::server::dialling_agent(&store).await?;
    let arrivals = Arrivals::default();
    let secret = webhooks::WebhookSecret::generate();
    let forged = Arc::new(AtomicUsize::new(0));
    let healthy_url = serve(
        Router::new()
            .route("/hook", post(healthy))
            .with_state(Healthy {
                arrivals: arrivals.clone(),
                secret: Arc::new(secret.clone()),
                forged: forged.clone(),
            }),
    )
    .await?;
    let mut targets = vec![("healthy", healthy_url, secret)];
    if with_failing {
        targets.push((
            "failing",
            serve(Router::new().route("/hook", post(failing))).await?,
            webhooks::WebhookSecret::generate(),
        ));
    }
    // Only the failing target takes `call.failed`: the backlog is its alone.
    let mut failing_target = None;
    for (name, url, secret) in targets {
        let mut events = vec![EventType::CallCompleted.as_str().to_owned()];
        if name == "failing" {
            events.push(EventType::CallFailed.as_str().to_owned());
        }
        let target = store
            .create_webhook_target(
                tenant,
                agent,
                &NewWebhookTarget {
                    name: name.into(),
                    url,
                    secret: secret.expose().to_owned(),
                    events,
                    include_transcript: true,
                    include_recording_url: false,
                    active: true,
                },
                Millis::now(),
            )
            .await?;
        if name == "failing" {
            failing_target = Some(target.id);
        }
    }
    if let (Some(target), true) = (failing_target, args.backlog > 0) {
        let backlog = (0..args.backlog)
            .map(|i| event_of(EventType::CallFailed, tenant, agent, args.events + i))
            .collect::<Result<Vec<_>>>()?;
        store.enqueue_events(&backlog).await?;
        // Attempted before and waiting for their next try, as a dead endpoint's deliveries are.
        let db = rusqlite::Connection::open(dir.join("webhooks-true.db"))?;
        db.busy_timeout(Duration::from_secs(10))?;
        db.execute(
            "UPDATE webhook_deliveries SET attempts = 3, next_attempt_at = ?1 WHERE target_id = ?2",
            rusqlite::params![Millis::now().0 + 3_600_000, target.0],
        )?;
    }
    let mut config = WorkerConfig::new(
        RetrySchedule::default(),
        ClientConfig {
            policy: UrlPolicy::ALLOW_PRIVATE,
            ..ClientConfig::default()
        },
    );
    config.concurrency = args.concurrency;
    config.per_target = args.per_target;
    config.per_target_leased = args.per_target_leased;
    let worker = Arc::new(Worker::new(store.clone(), config)?);
    let wake = worker.waker();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let worker = worker.clone();
        tokio::spawn(async move {
            worker
                .run(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let events = (0..args.events)
        .map(|i| event(tenant, agent, i))
        .collect::<Result<Vec<_>>>()?;
    // Let the worker settle into its idle wait, so the burst meets a sleeping worker.
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.enqueue_events(&events).await?;
    let committed = Instant::now();
    wake.notify_one();
    let deadline = committed + Duration::from_secs(120);
    loop {
        let n = arrivals.lock().map(|a| a.len()).unwrap_or(0);
        if n >= events.len() {
            break;
        }
        anyhow::ensure!(
            forged.load(Ordering::Relaxed) == 0,
            "a delivery did not verify"
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {n} of {} delivered",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut latencies: Vec<Duration> = arrivals
        .lock()
        .map_err(|_| anyhow::anyhow!("receiver lock poisoned"))?
        .values()
        .map(|at| at.saturating_duration_since(committed))
        .collect();
    latencies.sort();
    let last = latencies.last().copied().unwrap_or_default();
    let _ = stop.send(());
    running.await?;
    let awaiting = awaiting_retry(&store, tenant).await?;
    store.close().await;
    Ok(Figures {
        per_second: events.len() as f64 / last.as_secs_f64().max(1e-9),
        first: latencies.first().copied().unwrap_or_default(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: last,
        awaiting_retry: awaiting,
    })
}

/// Deliveries waiting for a retry: the failing target's, which were attempted meanwhile.
async fn awaiting_retry(store: &SqlStore, tenant: TenantId) -> Result<u64> {
    let listed = store
        .list_deliveries(
            tenant,
            &domain::webhooks::DeliveryFilter {
                status: Some(domain::webhooks::DeliveryStatus::Pending),
                ..Default::default()
            },
            domain::store::Page {
                limit: 1,
                offset: 0,
            },
        )
        .await?;
    Ok(listed.total)
}

pub async fn run(args: Args) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    for run in 0..args.runs {
        for with_failing in [false, true] {
            let run_dir = dir.join(format!("run-{run}"));
            std::fs::create_dir_all(&run_dir)?;
            let f = scenario(&args, &run_dir, with_failing).await?;
            println!(
                "{}",
                json!({
                    "scenario": if with_failing { "healthy + failing (500) target" } else { "one healthy target" },
                    "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
                    "events": args.events,
                    "delivered_per_second": (f.per_second * 10.0).round() / 10.0,
                    "enqueue_to_received_ms": {
                        "first": f.first.as_secs_f64() * 1000.0,
                        "p50": f.p50.as_secs_f64() * 1000.0,
                        "p99": f.p99.as_secs_f64() * 1000.0,
                        "max": f.max.as_secs_f64() * 1000.0,
                    },
                    "deliveries_awaiting_retry": f.awaiting_retry,
                })
            );
        }
    }
    Ok(())
}
