//! A 1,000,000-row batch: upload time, the process's peak memory, and the metrics endpoint's
//! latency on that batch.

use anyhow::{ensure, Result};
use std::time::{Duration, Instant};
use store::StoreOptions;

#[derive(clap::Args)]
pub struct Args {
    /// Recipients in the CSV.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// GETs of the metrics endpoint to time.
    #[arg(long, default_value_t = 1000)]
    metrics_requests: u32,
}

pub async fn run(args: Args) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = crate::server::Server::start(tmp.path(), StoreOptions::default(), 4).await?;
    // Valid, distinct Indian mobile numbers and one extra column, as a CRM export would have.
    let mut csv = String::with_capacity(args.rows as usize * 40);
    csv.push_str("customer_phone,customer_name\n");
    for i in 0..args.rows {
        csv.push_str(&format!("+9198{:08},Customer {i}\n", i));
    }
    let csv_mb = csv.len() as f64 / 1_048_576.0;
    let rss_before = crate::server::proc_status_mb("VmHWM");
    let started = Instant::now();
    let r = server.upload_batch("bench", csv).await?;
    let status = r.status();
    let body: serde_json::Value = r.json().await?;
    let upload_s = started.elapsed().as_secs_f64();
    ensure!(status == 200, "upload refused: {body}");
    let id = body["data"]["id"].clone();
    let peak = crate::server::proc_status_mb("VmHWM");

    let url = format!("{}/v1/batch-calls/{id}/metrics", server.base);
    let mut latencies = Vec::with_capacity(args.metrics_requests as usize);
    for _ in 0..args.metrics_requests {
        let t = Instant::now();
        let r = server
            .client
            .get(&url)
            .bearer_auth(&server.key)
            .send()
            .await?;
        ensure!(r.status() == 200, "metrics: {}", r.status());
        r.bytes().await?;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    // The parser alone, in this process, to tell its share of the upload from the insert's; run
    // after the peak memory was read, on the CSV made again.
    let mut again = String::with_capacity(args.rows as usize * 40);
    again.push_str("customer_phone,customer_name\n");
    for i in 0..args.rows {
        again.push_str(&format!("+9198{:08},Customer {i}\n", i));
    }
    let t = Instant::now();
    let parsed = domain::batch::parse_recipients(again.as_bytes(), usize::MAX)?.len();
    let parse_s = t.elapsed().as_secs_f64();
    ensure!(parsed as u64 == args.rows, "parsed {parsed} rows");
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "rows": args.rows,
            "csv_mb": (csv_mb * 10.0).round() / 10.0,
            "total_recipients": body["data"]["total_recipients"],
            "upload_seconds": (upload_s * 100.0).round() / 100.0,
            "parse_only_seconds": (parse_s * 100.0).round() / 100.0,
            "peak_rss_mb_process": peak.round(),
            "peak_rss_mb_before_upload": rss_before.round(),
            "metrics_p50_ms": ms(pct(0.5)),
            "metrics_p99_ms": ms(pct(0.99)),
        }))?
    );
    Ok(())
}
