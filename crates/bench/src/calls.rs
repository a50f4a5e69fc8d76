use anyhow::Result;
use domain::store::Store;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::StoreOptions;

#[derive(clap::Args)]
pub struct Args {
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of the raw commit-rate measurement.
    #[arg(long, default_value_t = 5)]
    commit_seconds: u64,
    /// Where the databases go (default: a temp dir on the same disk as /tmp).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Calls one SQLite commit may carry (1 = no group commit).
    #[arg(long, default_value_t = 128)]
    max_write_batch: usize,
    /// Reader connections (each a thread on SQLite).
    #[arg(long, default_value_t = StoreOptions::default().max_connections)]
    db_max_connections: u32,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One INSERT + COMMIT per row, WAL, synchronous=FULL: what a naive durable write path can do.
async fn commit_rate(dir: &std::path::Path, seconds: u64) -> Result<f64> {
    let mut conn = SqliteConnectOptions::new()
        .filename(dir.join("commit-rate.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .connect()
        .await?;
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .execute(&mut conn)
        .await?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        let mut tx = conn.begin().await?;
        sqlx::query("INSERT INTO t (v) VALUES ($1)")
            .bind("a row about the size of a call")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        n += 1;
    }
    conn.close().await?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub async fn run(args: Args) -> Result<()> {
    let tmp = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let commits_per_s = commit_rate(tmp.path(), args.commit_seconds).await?;

    let server = crate::server::Server::start(
        tmp.path(),
        StoreOptions {
            max_write_batch: args.max_write_batch,
            max_connections: args.db_max_connections,
        },
        args.clients,
    )
    .await?;
    let (store, tenant, key, base, client, agent_id) = (
        server.store.clone(),
        server.tenant,
        server.key.clone(),
        server.base.clone(),
        server.client.clone(),
        server.agent_id,
    );

    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let start = Instant::now();
    let workers = (0..args.clients).map(|_| {
        let client = client.clone();
        let counter = counter.clone();
        let url = format!("{base}/v1/call");
        let auth = key.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let body = json!({"agent_id": agent_id, "parameters": [
                    {"name": "customer_phone", "value": format!("+9198{:08}", i % 100_000_000)},
                    {"name": "customer_name", "value": "Rahul"}]});
                let t = Instant::now();
                match client
                    .post(&url)
                    .bearer_auth(&auth)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => latencies.push(t.elapsed()),
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        })
    });
    let mut latencies = Vec::new();
    let mut errors = 0;
    for w in futures::future::join_all(workers).await {
        let (l, e) = w?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let accepted = latencies.len() as f64 / elapsed;
    let stored = store.count_calls(tenant).await?;
    let report = json!({
        "clients": args.clients,
        "seconds": elapsed,
        "accepted": latencies.len(),
        "stored": stored,
        "errors": errors,
        "accepted_per_s": accepted.round(),
        "p50_ms": percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        "p99_ms": percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        "max_ms": latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        "sqlite_durable_commits_per_s": commits_per_s.round(),
        "ratio_to_commit_rate": (accepted / commits_per_s * 100.0).round() / 100.0,
        "max_write_batch": args.max_write_batch,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    anyhow::ensure!(
        stored as usize == latencies.len(),
        "every 200 must be a stored call"
    );
    Ok(())
}
