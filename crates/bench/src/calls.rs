use anyhow::{Context, Result};
use bytes::Bytes;
use domain::store::Store;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::StoreOptions;

#[derive(clap::Args)]
pub struct Args {
    /// Concurrent HTTP clients (each one keep-alive connection, one request at a time).
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

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One INSERT + COMMIT per row, WAL, synchronous=FULL, in a tight loop on one connection with
/// prepared statements: the most a write path without group commit could do on this disk.
pub(crate) fn commit_rate(dir: &std::path::Path, seconds: u64) -> Result<f64> {
    let conn = rusqlite::Connection::open(dir.join("commit-rate.db"))?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
    conn.execute_batch(
        "PRAGMA synchronous = FULL; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
    )?;
    let mut begin = conn.prepare("BEGIN")?;
    let mut insert = conn.prepare("INSERT INTO t (v) VALUES (?1)")?;
    let mut commit = conn.prepare("COMMIT")?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        begin.execute([])?;
        insert.execute(["a row about the size of a call"])?;
        commit.execute([])?;
        n += 1;
    }
    let rows: u64 = conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?;
    anyhow::ensure!(rows == n, "commit-rate table holds {rows} rows, not {n}");
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// What one client saw: latencies of its 200s, the conversation ids they named, other answers.
#[derive(Default)]
struct ClientRun {
    latencies: Vec<Duration>,
    conversations: Vec<String>,
    errors: u64,
}

/// A keep-alive HTTP/1.1 connection (hyper, no pooling layer) that posts `POST /v1/call`
/// bodies one at a time, as a client of the API does; the benches' load generators.
pub struct CallPoster {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    uri: hyper::Uri,
    auth: HeaderValue,
}

impl CallPoster {
    pub async fn connect(addr: SocketAddr, auth: HeaderValue) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let uri = format!("http://{addr}/v1/call").parse()?;
        Ok(Self { sender, uri, auth })
    }

    /// Posts one call of `agent_id` to the `i`-th number of `+9198xxxxxxxx` ([`scattered`]),
    /// with `customer_name` as well when `named`; the response's head and whole body, and the
    /// time to them.
    pub async fn post(
        &mut self,
        agent_id: i64,
        i: u64,
        named: bool,
    ) -> Result<(hyper::http::response::Parts, Bytes, Duration)> {
        let name = if named {
            r#",{"name":"customer_name","value":"Rahul"}"#
        } else {
            ""
        };
        let body = format!(
            r#"{{"agent_id":{agent_id},"parameters":[{{"name":"customer_phone","value":"+9198{:08}"}}{name}]}}"#,
            scattered(i)
        );
        let mut req = hyper::Request::post(self.uri.clone()).body(Full::new(Bytes::from(body)))?;
        req.headers_mut().insert(AUTHORIZATION, self.auth.clone());
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let t = Instant::now();
        self.sender.ready().await?;
        let (head, body) = self.sender.send_request(req).await?.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok((head, body, t.elapsed()))
    }
}

/// The `i`-th number of a run, spread over the 10^8 numbers (a bijection: 48,271 is prime to
/// 10^8): a user's callees are not called in the order of their numbers, and numbers taken in
/// order would make every index keyed by the number grow at one end, which real load does not.
pub(crate) fn scattered(i: u64) -> u64 {
    (i % 100_000_000) * 48_271 % 100_000_000
}

/// One client sending calls until the deadline. A 200 counts only with the contract's
/// `initiated` body and a `Location` naming the stored conversation.
async fn client(
    addr: SocketAddr,
    auth: HeaderValue,
    agent_id: i64,
    counter: Arc<AtomicU64>,
    deadline: Instant,
) -> Result<ClientRun> {
    let mut poster = CallPoster::connect(addr, auth).await?;
    let mut run = ClientRun::default();
    while Instant::now() < deadline {
        let i = counter.fetch_add(1, Ordering::Relaxed);
        let (head, body, elapsed) = poster.post(agent_id, i, true).await?;
        let location = head
            .headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("/v1/conversations/"))
            .map(str::to_string);
        let initiated = body
            .windows(br#""status":"initiated""#.len())
            .any(|w| w == br#""status":"initiated""#);
        match location {
            Some(id) if head.status == 200 && initiated => {
                run.latencies.push(elapsed);
                run.conversations.push(id);
            }
            _ => run.errors += 1,
        }
    }
    Ok(run)
}

/// CPU seconds by thread group between two `thread_cpu_seconds` readings.
fn cpu_split(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<&'static str, f64> {
    let mut groups = BTreeMap::new();
    for (name, secs) in after {
        let used = secs - before.get(name).copied().unwrap_or(0.0);
        let group = if name.starts_with("bench-client") {
            "clients"
        } else if name.starts_with("tokio-r") || name == "outdial-bench" {
            "server (tokio workers)"
        } else if name.starts_with("outdial-call-wr") {
            "call writer thread"
        } else if name.starts_with("sqlx-sqlite") {
            "sqlx sqlite threads"
        } else {
            "other"
        };
        *groups.entry(group).or_insert(0.0) += used;
    }
    groups
}

pub async fn run(args: Args) -> Result<()> {
    let tmp = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let commit_dir = tmp.path().to_path_buf();
    let commit_seconds = args.commit_seconds;
    let commits_per_s =
        tokio::task::spawn_blocking(move || commit_rate(&commit_dir, commit_seconds)).await??;

    let server = crate::server::Server::start(
        tmp.path(),
        StoreOptions {
            max_write_batch: args.max_write_batch,
            max_connections: args.db_max_connections,
            ..Default::default()
        },
        args.clients,
    )
    .await?;
    let addr: SocketAddr = server
        .base
        .strip_prefix("http://")
        .context("server address")?
        .parse()?;
    let auth = HeaderValue::from_str(&format!("Bearer {}", server.key))?;
    let agent_id = server.agent_id;

    // The clients get a single-threaded runtime on a thread of their own, so that their CPU
    // can be told apart from the server's; they still share the machine's cores with it.
    let counter = Arc::new(AtomicU64::new(0));
    let clients = args.clients;
    let seconds = args.seconds;
    let cpu_before = crate::server::thread_cpu_seconds();
    let start = Instant::now();
    let load = std::thread::Builder::new()
        .name("bench-client".into())
        .spawn(
            move || -> Result<(Vec<ClientRun>, f64, BTreeMap<String, f64>)> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let deadline = Instant::now() + Duration::from_secs(seconds);
                    let tasks: Vec<_> = (0..clients)
                        .map(|_| {
                            tokio::spawn(client(
                                addr,
                                auth.clone(),
                                agent_id,
                                counter.clone(),
                                deadline,
                            ))
                        })
                        .collect();
                    let mut runs = Vec::with_capacity(tasks.len());
                    for t in tasks {
                        runs.push(t.await??);
                    }
                    let elapsed = start.elapsed().as_secs_f64();
                    // Read while this thread is still alive, or its CPU time goes with it.
                    Ok((runs, elapsed, crate::server::thread_cpu_seconds()))
                })
            },
        )?;
    let (runs, elapsed, cpu_after) = tokio::task::spawn_blocking(move || load.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))??;

    let mut latencies = Vec::new();
    let mut conversations = HashSet::new();
    let mut errors = 0;
    for r in runs {
        latencies.extend(r.latencies);
        conversations.extend(r.conversations);
        errors += r.errors;
    }
    latencies.sort();
    let accepted = latencies.len() as f64 / elapsed;
    let stored = server.store.count_calls(server.tenant).await?;
    let split = cpu_split(&cpu_before, &cpu_after);
    let cpu_total: f64 = split.values().sum();
    let per_call_us = |s: f64| (s / latencies.len().max(1) as f64 * 1e7).round() / 10.0;
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
        "cpu_seconds": split.iter().map(|(k, v)| (k.to_string(), json!((v * 100.0).round() / 100.0))).collect::<serde_json::Map<_, _>>(),
        "cpu_us_per_accepted_call": split.iter().map(|(k, v)| (k.to_string(), json!(per_call_us(*v)))).chain(std::iter::once(("total".to_string(), json!(per_call_us(cpu_total))))).collect::<serde_json::Map<_, _>>(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    anyhow::ensure!(
        stored as usize == latencies.len(),
        "every 200 must be a stored call ({stored} stored, {} accepted)",
        latencies.len()
    );
    anyhow::ensure!(
        conversations.len() == latencies.len(),
        "every 200 must name its own conversation"
    );
    // And each one is there, as the 200 said.
    use futures::StreamExt;
    let missing = futures::stream::iter(conversations)
        .map(|id| {
            let store = server.store.clone();
            let tenant = server.tenant;
            async move {
                let parsed = id.parse::<domain::ConversationId>().ok()?;
                store.get_conversation(tenant, parsed).await.ok().flatten()
            }
        })
        .buffer_unordered(8)
        .filter(|found| std::future::ready(found.is_none()))
        .count()
        .await;
    anyhow::ensure!(
        missing == 0,
        "{missing} accepted conversations are not stored"
    );
    Ok(())
}
