//! `POST /v1/call` on a node that is never idle: the real `outdial serve` (a process) dials
//! every accepted call into a loopback SIPp answering 486, while another tenant uploads a large
//! batch. Prints what a user of such a node sees: accepted/s beside the machine's SQLite
//! durable-commit rate measured in the same run, API p50/p99 overall and during the upload,
//! dials/s, the upload's time, every 5xx, and how long SIGTERM takes to end the process.

use crate::calls::{commit_rate, percentile, scattered, CallPoster};
use anyhow::{bail, Context, Result};
use domain::Millis;
use hyper::header::HeaderValue;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{SqlStore, StoreOptions};

#[derive(clap::Args)]
pub struct Args {
    /// Concurrent HTTP clients posting calls (each one keep-alive connection).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds of `POST /v1/call` load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rows of the batch the other tenant uploads at the start of the load.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u32,
    /// Seconds of the raw commit-rate measurement.
    #[arg(long, default_value_t = 5)]
    commit_seconds: u64,
    /// Where the database goes (default: a temp dir on the same disk as /tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The `outdial` binary (default: beside this one).
    #[arg(long)]
    outdial: Option<PathBuf>,
    /// The sink rings each call for 0.5 s (`180 Ringing`) before it answers 486, as carriers
    /// do: each call is then also marked `ringing`.
    #[arg(long)]
    ringing: bool,
    /// The trunk's `max_calls_per_second` (a carrier's pace); none by default.
    #[arg(long)]
    trunk_cps: Option<u32>,
}

/// The 486 callee of the tests (crates/cli/tests/scenarios).
const BUSY_XML: &str = include_str!("../../cli/tests/scenarios/busy.xml");
/// The same callee, ringing for 0.5 s first.
const RINGING_BUSY_XML: &str = include_str!("../scenarios/ringing_busy.xml");

fn free_port(udp: bool) -> Result<u16> {
    Ok(if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}

/// A child process killed when dropped (a run that fails half-way leaves nothing behind).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sipp_busy(dir: &Path, ringing: bool) -> Result<(Proc, u16)> {
    let scenario = dir.join("busy.xml");
    std::fs::write(&scenario, if ringing { RINGING_BUSY_XML } else { BUSY_XML })?;
    let port = free_port(true)?;
    let child = Command::new("sipp")
        .arg("-sf")
        .arg(&scenario)
        .args([
            "-i",
            "127.0.0.1",
            "-mi",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(["-mp", &free_port(true)?.to_string(), "-m", "100000000"])
        .args(["-nostdin", "-timeout", "3600s"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("sipp (Debian package sip-tester) must be installed")?;
    let sipp = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        if Instant::now() > deadline {
            bail!("sipp did not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((sipp, port))
}

/// Two tenants with keys, made in the database before the service opens it; no concurrency or
/// per-number cap, which is not what is measured.
async fn tenants(dir: &Path) -> Result<[String; 2]> {
    let url = format!("sqlite://{}/outdial.db", dir.display());
    let store = SqlStore::connect(&url, StoreOptions::default()).await?;
    let mut keys = Vec::new();
    for name in ["caller", "uploader"] {
        keys.push(crate::server::tenant(&store, name).await?.1);
    }
    store.close().await;
    Ok([keys[0].clone(), keys[1].clone()])
}

async fn agent(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    sipp: u16,
    trunk_cps: Option<u32>,
) -> Result<i64> {
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let mut sink = json!({"name": "sink", "uri": format!("sip:127.0.0.1:{sipp}")});
    if let Some(cps) = trunk_cps {
        sink["max_calls_per_second"] = json!(cps);
    }
    let trunk: Value = post("/v1/trunks", sink).await?.json().await?;
    post(
        "/v1/phone-numbers",
        json!({"number": "+918035739222", "trunk_id": trunk["data"]["trunk_id"]}),
    )
    .await?;
    let agent: Value = post(
        "/v1/agents",
        json!({"name": "a", "phone_number": "+918035739222", "first_message": ""}),
    )
    .await?
    .json()
    .await?;
    agent["data"]["agent_id"].as_i64().context("agent")
}

/// One request as a client saw it: when it was sent (from the start of the load), how long
/// its answer took, and the status.
struct Sample {
    sent: Duration,
    took: Duration,
    status: u16,
}

/// One client sending calls one at a time until `deadline`.
async fn client(
    addr: SocketAddr,
    auth: HeaderValue,
    agent_id: i64,
    counter: Arc<AtomicU64>,
    start: Instant,
    deadline: Instant,
) -> Result<Vec<Sample>> {
    let mut poster = CallPoster::connect(addr, auth).await?;
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        let i = counter.fetch_add(1, Ordering::Relaxed);
        let sent = start.elapsed();
        let (head, _, took) = poster.post(agent_id, i, false).await?;
        samples.push(Sample {
            sent,
            took,
            status: head.status.as_u16(),
        });
    }
    Ok(samples)
}

fn batch_csv(rows: u32) -> Vec<u8> {
    let mut csv = String::with_capacity(rows as usize * 16 + 32);
    csv.push_str("customer_phone\n");
    for i in 0..rows {
        csv.push_str(&format!("+9197{:08}\n", scattered(u64::from(i))));
    }
    csv.into_bytes()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(args: Args) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("outdial-mixed")
        .tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let dir = tmp.path();
    let outdial = match args.outdial {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("bench binary has no directory")?
            .join("outdial"),
    };
    let commits = commit_rate(dir, args.commit_seconds)?;
    let keys = tenants(dir).await?;
    let (_sipp, sipp_port) = sipp_busy(dir, args.ringing)?;
    let http_port = free_port(false)?;
    let addr: SocketAddr = format!("127.0.0.1:{http_port}").parse()?;
    let base = format!("http://{addr}");
    let mut node = Proc(
        Command::new(&outdial)
            .arg("serve")
            .env("OUTDIAL_DATA_DIR", dir)
            .env("OUTDIAL_LISTEN", addr.to_string())
            .env(
                "OUTDIAL_SIP_LISTEN",
                format!("127.0.0.1:{}", free_port(true)?),
            )
            .env("OUTDIAL_RTP_PORTS", "30000-39999")
            .env("OUTDIAL_DEFAULT_CALLING_WINDOW", "always")
            .env("OUTDIAL_API_RATE_LIMIT_PER_MINUTE", "0")
            .env("OUTDIAL_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", outdial.display()))?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("outdial did not listen on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = reqwest::Client::new();
    let caller_agent = agent(&http, &base, &keys[0], sipp_port, args.trunk_cps).await?;
    let uploader_agent = agent(&http, &base, &keys[1], sipp_port, args.trunk_cps).await?;
    let csv = batch_csv(args.rows);

    let start = Instant::now();
    let load_end = start + Duration::from_secs(args.seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let auth = HeaderValue::from_str(&format!("Bearer {}", keys[0]))?;
    let clients: Vec<_> = (0..args.clients)
        .map(|_| {
            tokio::spawn(client(
                addr,
                auth.clone(),
                caller_agent,
                counter.clone(),
                start,
                load_end,
            ))
        })
        .collect();
    let upload = {
        let (http, base, key) = (http.clone(), base.clone(), keys[1].clone());
        tokio::spawn(async move {
            let form = reqwest::multipart::Form::new()
                .text("agent_id", uploader_agent.to_string())
                .text("name", "mixed")
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(csv).file_name("mixed.csv"),
                );
            let t = Instant::now();
            let r = http
                .post(format!("{base}/v1/batch-call"))
                .bearer_auth(key)
                .multipart(form)
                .send()
                .await;
            let took = t.elapsed();
            let status = match r {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            (t - start, took, status)
        })
    };
    let mut samples = Vec::new();
    for c in clients {
        samples.extend(c.await??);
    }
    let load_secs = start.elapsed().as_secs_f64();
    let (upload_sent, upload_took, upload_status) = upload.await?;
    let all_end = start.elapsed();

    // Dials, from the database: calls whose INVITE went out while the API was loaded (the
    // figure the issue sets), and over the whole run, which goes on while the upload ends.
    // With `--trunk-cps`, each tenant's trunk has that pace: the API's calls and the batch's
    // are also counted apart.
    let (dials_loaded, batch_dials_loaded, dials) = {
        let db = rusqlite::Connection::open(dir.join("outdial.db"))?;
        let started = Millis::now().0 - i64::try_from(all_end.as_millis())?;
        let loaded_until = started + i64::try_from((load_end - start).as_millis())?;
        let count = |from: i64, to: i64, of: &str| -> Result<f64> {
            let n: i64 = db.query_row(
                &format!(
                    "SELECT COUNT(*) FROM calls WHERE started_at >= ?1 AND started_at < ?2 {of}"
                ),
                [from, to],
                |r| r.get(0),
            )?;
            Ok(n as f64)
        };
        (
            count(started, loaded_until, "")? / load_secs,
            count(started, loaded_until, "AND batch_id IS NOT NULL")? / load_secs,
            count(started, i64::MAX, "")? / all_end.as_secs_f64(),
        )
    };

    // What the single writer spent its time on, from the node's own metrics.
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;

    let wal_mb = std::fs::metadata(dir.join("outdial.db-wal")).map_or(0, |m| m.len()) / 1_000_000;

    let t = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &node.0.id().to_string()])
        .status()?;
    anyhow::ensure!(killed.success(), "kill -TERM failed");
    let exit = node.0.wait()?;
    let stop = t.elapsed();

    let mut ok: Vec<Duration> = samples
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.took)
        .collect();
    ok.sort_unstable();
    let upload_window = upload_sent..upload_sent + upload_took;
    let mut during: Vec<Duration> = samples
        .iter()
        .filter(|s| s.status == 200 && upload_window.contains(&s.sent))
        .map(|s| s.took)
        .collect();
    during.sort_unstable();
    let mut outside: Vec<Duration> = samples
        .iter()
        .filter(|s| s.status == 200 && !upload_window.contains(&s.sent))
        .map(|s| s.took)
        .collect();
    outside.sort_unstable();
    let server_errors =
        samples.iter().filter(|s| s.status >= 500).count() + usize::from(upload_status >= 500);
    let other = samples
        .iter()
        .filter(|s| s.status != 200 && s.status < 500)
        .count();
    let accepted = ok.len() as f64 / load_secs;
    println!("clients                     {}", args.clients);
    println!("load                        {load_secs:.1} s");
    println!(
        "accepted                    {accepted:.0}/s ({} calls)",
        ok.len()
    );
    println!("durable commits (same run)  {commits:.0}/s");
    println!("accepted / commit rate      {:.2}", accepted / commits);
    println!(
        "API latency                 p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&ok, 0.50)),
        ms(percentile(&ok, 0.99))
    );
    println!(
        "during the upload           p99 {:.1} ms over {} calls",
        ms(percentile(&during, 0.99)),
        during.len()
    );
    if !outside.is_empty() {
        println!(
            "outside the upload          p99 {:.1} ms over {} calls",
            ms(percentile(&outside, 0.99)),
            outside.len()
        );
    }
    println!(
        "dials while the API is loaded {dials_loaded:.0}/s (the API's calls {:.0}/s, the batch's {batch_dials_loaded:.0}/s)",
        dials_loaded - batch_dials_loaded
    );
    println!("dials over the run          {dials:.0}/s");
    println!(
        "batch upload                {} rows in {:.1} s (status {upload_status})",
        args.rows,
        upload_took.as_secs_f64()
    );
    println!("5xx                         {server_errors}");
    println!("other non-200               {other}");
    println!(
        "SIGTERM to exit             {:.0} ms ({exit}; write-ahead log {wal_mb} MB at the signal)",
        ms(stop)
    );
    for (name, what) in WRITER_METRICS {
        for (labels, count, sum) in histograms(&metrics, name) {
            println!(
                "{:<27} {count:.0} x, mean {:.2} ms, {:.0} % of the run",
                format!("{what} {labels}").trim_end(),
                1000.0 * sum / count.max(1.0),
                100.0 * sum / all_end.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// The single writer's time as the node measures it (store::gate, store::sqlite_writer).
const WRITER_METRICS: [(&str, &str); 4] = [
    (
        "outdial_db_call_writer_wait_seconds",
        "calls' wait for the writer",
    ),
    (
        "outdial_db_call_writer_commit_seconds",
        "calls' transactions",
    ),
    (
        "outdial_db_background_wait_seconds",
        "background wait at the gate",
    ),
    (
        "outdial_db_background_hold_seconds",
        "background transactions",
    ),
];

/// Every series of a histogram in Prometheus text: its labels (`work="settle"`, or empty),
/// count and sum.
fn histograms(text: &str, name: &str) -> Vec<(String, f64, f64)> {
    let value = |suffix: &str, labels: &str| {
        let key = match labels {
            "" => format!("{name}{suffix} "),
            l => format!("{name}{suffix}{{{l}}} "),
        };
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let sums = format!("{name}_sum");
    text.lines()
        .filter_map(|l| l.strip_prefix(&sums))
        .map(|rest| {
            let labels = rest
                .strip_prefix('{')
                .and_then(|r| r.split_once('}'))
                .map_or("", |(l, _)| l);
            (
                labels.to_string(),
                value("_count", labels),
                value("_sum", labels),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::histograms;

    /// The writer's figures `mixed` prints come from this parse of the node's `/metrics`.
    #[test]
    fn every_series_of_a_histogram_with_its_count_and_sum() {
        let text = "\
# TYPE outdial_db_background_hold_seconds histogram
outdial_db_background_hold_seconds_bucket{work=\"settle\",le=\"0.001\"} 3
outdial_db_background_hold_seconds_sum{work=\"settle\"} 0.0125
outdial_db_background_hold_seconds_count{work=\"settle\"} 5
outdial_db_background_hold_seconds_sum{work=\"dispatch\"} 0.5
outdial_db_background_hold_seconds_count{work=\"dispatch\"} 100
outdial_db_call_writer_wait_seconds_sum 2.25
outdial_db_call_writer_wait_seconds_count 900
";
        assert_eq!(
            histograms(text, "outdial_db_background_hold_seconds"),
            vec![
                ("work=\"settle\"".to_string(), 5.0, 0.0125),
                ("work=\"dispatch\"".to_string(), 100.0, 0.5),
            ]
        );
        assert_eq!(
            histograms(text, "outdial_db_call_writer_wait_seconds"),
            vec![(String::new(), 900.0, 2.25)]
        );
        assert!(histograms(text, "outdial_db_call_writer_commit_seconds").is_empty());
    }
}
