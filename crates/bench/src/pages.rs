//! Deep pages of `GET /v1/conversations`: the first page against pages deep into a tenant's
//! 1,000,000 conversations, before the marking pass has run (what every page cost before it
//! existed: an `OFFSET` walk and a full count) and after, and what the pass itself costs.

use anyhow::{ensure, Result};
use std::time::{Duration, Instant};
use store::StoreOptions;

#[derive(clap::Args)]
pub struct Args {
    /// Conversations of the tenant (one batch upload).
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// GETs timed at each depth.
    #[arg(long, default_value_t = 50)]
    requests: u32,
}

pub async fn run(args: Args) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = crate::server::Server::start(tmp.path(), StoreOptions::default(), 4).await?;
    let mut csv = String::with_capacity(args.rows as usize * 20);
    csv.push_str("customer_phone\n");
    for i in 0..args.rows {
        csv.push_str(&format!("+9198{i:08}\n"));
    }
    // This in-process server runs no dispatcher: the calls stay as uploaded.
    let r = server.upload_batch("history", csv).await?;
    ensure!(r.status() == 200, "upload refused: {}", r.text().await?);

    let mut depths = vec![
        0,
        1_000,
        10_000,
        100_000,
        args.rows / 2,
        args.rows.saturating_sub(20),
    ];
    depths.retain(|&d| d + 20 <= args.rows);
    depths.sort_unstable();
    depths.dedup();
    let before = measure(&server, &depths, args.requests).await?;
    // As the node's pass does, once the rows are older than the horizon.
    let t = Instant::now();
    let future = domain::Millis(domain::Millis::now().0 + 3_600_000);
    let marks = server.store.mark_conversations(future).await?;
    let marking_s = t.elapsed().as_secs_f64();
    let after = measure(&server, &depths, args.requests).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "rows": args.rows,
            "marks_written": marks,
            "marking_seconds": (marking_s * 100.0).round() / 100.0,
            "before_marks": before,
            "after_marks": after,
        }))?
    );
    Ok(())
}

/// p50 and p99 in ms of `limit=20` pages at each offset, for the tenant and for its agent.
async fn measure(
    server: &crate::server::Server,
    depths: &[u64],
    requests: u32,
) -> Result<serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (scope, filter) in [
        ("tenant", String::new()),
        ("agent", format!("&agent_id={}", server.agent_id)),
    ] {
        for &offset in depths {
            let url = format!(
                "{}/v1/conversations?limit=20&offset={offset}{filter}",
                server.base
            );
            let mut took = Vec::with_capacity(requests as usize);
            for _ in 0..requests {
                let t = Instant::now();
                let r = server
                    .client
                    .get(&url)
                    .bearer_auth(&server.key)
                    .send()
                    .await?;
                ensure!(r.status() == 200, "{url}: {}", r.status());
                let body: serde_json::Value = r.json().await?;
                took.push(t.elapsed());
                ensure!(
                    body["data"].as_array().map_or(0, Vec::len) == 20,
                    "{url}: not a full page"
                );
            }
            took.sort();
            let pct = |p: f64| took[((took.len() - 1) as f64 * p).round() as usize];
            let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
            out.insert(
                format!("{scope} offset {offset}"),
                serde_json::json!({"p50_ms": ms(pct(0.5)), "p99_ms": ms(pct(0.99))}),
            );
        }
    }
    Ok(out.into())
}
