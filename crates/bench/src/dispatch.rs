//! Dispatch at scale: a million calls pending far ahead, a stream of calls coming due at a set
//! rate, and the lag between `scheduled_for` and the moment `initiated` became durable.

use anyhow::{Context, Result};
use async_trait::async_trait;
use dispatch::{DispatchConfig, Dispatcher, SystemClock};
use domain::dispatch::CountryZones;
use domain::store::Store;
use domain::telephony::{
    CallControl, CallEnd, CallEvent, DialError, DialRequest, LiveCall, Telephony,
};
use domain::{CallStatus, Millis};
use serde_json::json;
use sqlx::Connection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{SqlStore, StoreOptions};
use tokio::sync::{mpsc, watch};

#[derive(clap::Args)]
pub struct Args {
    /// `sqlite` or a `postgres://` server URL (a throw-away database is created on it).
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// Dispatcher nodes (each with its own connection pool).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Calls pending far in the future while the test runs.
    #[arg(long, default_value_t = 1_000_000)]
    pending: u64,
    /// Calls coming due per second during the measurement.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of calls coming due.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The tenant's `max_concurrent_calls` (0: none). With a cap, every dial counts the
    /// tenant's live calls first, among all of its pending ones.
    #[arg(long, default_value_t = 0)]
    tenant_max_concurrent: u32,
}

/// Ends every call at once as completed: the bench measures dispatch, not telephony.
struct InstantAnswer(AtomicU64);

#[async_trait]
impl Telephony for InstantAnswer {
    async fn dial(&self, _req: DialRequest) -> Result<LiveCall, DialError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(1);
        let (control, _control_rx) = mpsc::channel::<CallControl>(1);
        let now = Millis::now();
        let _ = tx.try_send(CallEvent::Ended(CallEnd {
            status: CallStatus::Completed,
            failure_reason: None,
            answered_at: Some(now),
            ended_at: now,
            recording: None,
            retry_after: None,
        }));
        Ok(LiveCall {
            events: rx,
            control,
        })
    }
}

/// Bulk rows straight into `calls`: setup only, values generated here (no user input).
async fn bulk_insert(
    store: &SqlStore,
    url: &str,
    tenant: i64,
    agent: i64,
    from: u64,
    n: u64,
    due_at: impl Fn(u64) -> i64,
) -> Result<()> {
    let _ = store;
    let mut conn = sqlx::AnyConnection::connect(url).await?;
    let chunk = 500;
    let mut i = from;
    let now = Millis::now().0;
    while i < from + n {
        let end = (i + chunk).min(from + n);
        let values: Vec<String> = (i..end)
            .map(|k| {
                let id = uuid::Uuid::new_v4();
                let phone = format!("+9198{:08}", k % 100_000_000);
                let due = due_at(k);
                format!(
                    "('{id}_1', '{id}', 1, {tenant}, {agent}, 'scheduled', 0, '{phone}', '+918035739222', \
                     '[{{\"name\":\"customer_phone\",\"value\":\"{phone}\"}}]', {due}, {due}, '{}', '{{}}', {now})",
                    uuid::Uuid::new_v4()
                )
            })
            .collect();
        let mut tx = conn.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO calls (id, chain_id, attempt, tenant_id, agent_id, status, immediate, customer_phone, from_phone, \
             parameters, scheduled_for, due_at, trace_id, results, created_at) VALUES {}",
            values.join(", ")
        ))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        i = end;
    }
    conn.close().await?;
    Ok(())
}

pub async fn run(args: Args) -> Result<()> {
    sqlx::any::install_default_drivers();
    let tmp = tempfile::tempdir()?;
    let (url, pg_name, admin) = if args.backend == "sqlite" {
        (
            format!("sqlite://{}/outdial.db", tmp.path().display()),
            None,
            None,
        )
    } else {
        let admin = args.backend.clone();
        let name = format!("outdial_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        let (base, _) = admin.rsplit_once('/').context("postgres url")?;
        (format!("{base}/{name}"), Some(name), Some(admin))
    };
    let store = Arc::new(SqlStore::connect(&url, StoreOptions::default()).await?);
    let (tenant, agent) = crate::server::dialling_agent(&store).await?;
    if args.tenant_max_concurrent > 0 {
        let mut limits = store.get_tenant(tenant).await?.context("tenant")?.limits;
        limits.max_concurrent_calls = Some(args.tenant_max_concurrent);
        store.update_tenant_limits(tenant, &limits).await?;
    }

    let rss_before = crate::server::proc_status_mb("VmRSS");
    let far = Millis::now().0 + 20 * 24 * 3600 * 1000;
    let insert_start = Instant::now();
    bulk_insert(&store, &url, tenant.0, agent.0, 0, args.pending, |k| {
        far + k as i64
    })
    .await?;
    let insert_s = insert_start.elapsed().as_secs_f64();

    let phone = Arc::new(InstantAnswer(AtomicU64::new(0)));
    let (stop_tx, stop) = watch::channel(false);
    let mut runners = Vec::new();
    for i in 0..args.nodes {
        let node_store = Arc::new(SqlStore::connect(&url, StoreOptions::default()).await?);
        let d = Dispatcher::new(
            node_store,
            phone.clone(),
            dispatch::Engines {
                tts: Arc::new(agent::EspeakNg::default()),
                stt: Arc::new(agent::PocketSphinx::default()),
                llm: Default::default(),
            },
            CountryZones::default(),
            Arc::new(SystemClock),
            DispatchConfig {
                node_id: format!("bench-{i}"),
                claim_batch: 256,
                ..Default::default()
            },
        );
        runners.push(tokio::spawn(d.run(stop.clone())));
    }
    // Let the dispatchers settle on the far-future backlog, then measure what an idle node holds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle_with_backlog = crate::server::proc_status_mb("VmRSS");

    let due_n = args.rate * args.seconds;
    let start = Millis::now().0 + 3_000;
    let step_us = 1_000_000 / args.rate.max(1);
    bulk_insert(&store, &url, tenant.0, agent.0, args.pending, due_n, |k| {
        start + ((k - args.pending) * step_us / 1000) as i64
    })
    .await?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds + 30);
    while phone.0.load(Ordering::Relaxed) < due_n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss_after = crate::server::proc_status_mb("VmRSS");
    stop_tx.send(true)?;
    for r in runners {
        let _ = r.await;
    }
    let mut conn = sqlx::AnyConnection::connect(&url).await?;
    let rows = sqlx::query("SELECT started_at - scheduled_for AS lag FROM calls WHERE started_at IS NOT NULL ORDER BY lag")
        .fetch_all(&mut conn)
        .await?;
    let lags: Vec<i64> = rows
        .iter()
        .map(|r| sqlx::Row::try_get::<i64, _>(r, "lag"))
        .collect::<Result<_, _>>()?;
    let pct = |p: f64| {
        lags.get(((lags.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let first = sqlx::query(
        "SELECT MIN(started_at) AS a, MAX(started_at) AS b FROM calls WHERE started_at IS NOT NULL",
    )
    .fetch_one(&mut conn)
    .await?;
    let (a, b): (Option<i64>, Option<i64>) = (
        sqlx::Row::try_get(&first, "a")?,
        sqlx::Row::try_get(&first, "b")?,
    );
    conn.close().await?;
    let span_s = (b.unwrap_or(0) - a.unwrap_or(0)) as f64 / 1000.0;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "backend": if pg_name.is_some() { "postgres" } else { "sqlite" },
            "nodes": args.nodes,
            "tenant_max_concurrent_calls": args.tenant_max_concurrent,
            "pending": args.pending,
            "bulk_insert_seconds": (insert_s * 10.0).round() / 10.0,
            "due_calls": due_n,
            "dialled": phone.0.load(Ordering::Relaxed),
            "target_rate_per_s": args.rate,
            "achieved_attempts_per_s": if span_s > 0.0 { (lags.len() as f64 / span_s).round() } else { 0.0 },
            "lag_p50_ms": pct(0.5),
            "lag_p99_ms": pct(0.99),
            "lag_max_ms": lags.last().copied().unwrap_or(0),
            "rss_mb_before_backlog": rss_before.round(),
            "rss_mb_idle_with_backlog": rss_idle_with_backlog.round(),
            "rss_mb_after_run": rss_after.round(),
        }))?
    );
    store.close().await;
    if let (Some(name), Some(admin)) = (pg_name, admin) {
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await?;
    }
    Ok(())
}
