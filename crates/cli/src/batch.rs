//! `outdial batch create|watch`: operator commands for batch calls. Unlike `tenants` and `keys`
//! they never open the database: they talk to a running service over its HTTP API, so they work
//! from any machine that can reach it, with the same checks and errors an API client gets.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Upload chunk size: small enough that the progress bar moves smoothly, large enough that the
/// syscalls are noise next to the network.
const CHUNK: usize = 256 * 1024;
/// The rate (and so the ETA) is measured over this much recent history: long enough to smooth
/// out dial bursts, short enough to follow a pause or a change of pace.
const RATE_WINDOW: Duration = Duration::from_secs(30);
/// How long `watch` keeps trying while the service cannot be reached (a restart, a deploy).
const UNREACHABLE_GRACE: Duration = Duration::from_secs(60);

#[derive(Args)]
pub struct BatchArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: BatchCommand,
}

#[derive(Args)]
struct ApiArgs {
    /// Base URL of the running service.
    #[arg(
        long,
        env = "OUTDIAL_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// API key of the tenant (`od_...`), as printed by `outdial tenants create`.
    #[arg(long, env = "OUTDIAL_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
}

#[derive(Subcommand)]
enum BatchCommand {
    /// Upload a CSV of recipients (a `customer_phone` column, E.164); prints the new batch as
    /// JSON on stdout.
    Create {
        /// The agent that makes the calls.
        #[arg(long)]
        agent: i64,
        /// The batch's name.
        #[arg(long)]
        name: String,
        /// Start later: RFC 3339, as `POST /v1/call` takes it.
        #[arg(long)]
        scheduled_for: Option<String>,
        /// No upload progress bar on stderr.
        #[arg(long)]
        json: bool,
        /// The CSV file; it is streamed, never read into memory whole.
        file: PathBuf,
    },
    /// Follow a batch until it is completed or canceled: a progress bar on stderr (processed /
    /// total, counts per status, rate, ETA), then the final metrics on stdout.
    Watch {
        batch_id: i64,
        /// One JSON object per line on stdout instead: `{"event":"progress",...}` per poll, then
        /// `{"event":"final","batch":...,"metrics":...}`.
        #[arg(long)]
        json: bool,
        /// How often to read the batch.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
}

pub async fn run(args: BatchArgs) -> Result<()> {
    let client = Client::new(&args.api)?;
    match args.command {
        BatchCommand::Create {
            agent,
            name,
            scheduled_for,
            json,
            file,
        } => {
            let created = client
                .create(agent, &name, scheduled_for.as_deref(), &file, !json)
                .await?;
            println!("{created}");
            Ok(())
        }
        BatchCommand::Watch {
            batch_id,
            json,
            interval_ms,
        } => {
            watch(
                &client,
                batch_id,
                json,
                Duration::from_millis(interval_ms.max(50)),
            )
            .await
        }
    }
}

/// An error the API answered with, shown with the contract's message first.
#[derive(Debug)]
struct ApiError {
    status: u16,
    kind: String,
    message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} {})", self.message, self.status, self.kind)
    }
}

impl std::error::Error for ApiError {}

struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    fn new(args: &ApiArgs) -> Result<Self> {
        let key = args
            .api_key
            .clone()
            .filter(|k| !k.trim().is_empty())
            .context("an API key is needed: --api-key or OUTDIAL_API_KEY")?;
        let base = args.url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--url must start with http:// or https://, got {base}");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { http, base, key })
    }

    /// The `data` of a 2xx answer, or the API's error.
    async fn answer(r: reqwest::Response) -> Result<Value> {
        let status = r.status();
        let body = r.bytes().await.context("reading the answer")?;
        let value: Value = serde_json::from_slice(&body).with_context(|| {
            format!(
                "the service answered {status} with no JSON: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )
        })?;
        if status.is_success() {
            return Ok(value.get("data").cloned().unwrap_or(value));
        }
        let error = &value["error"];
        Err(ApiError {
            status: status.as_u16(),
            kind: error["type"].as_str().unwrap_or("error").to_string(),
            message: error["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string()),
        }
        .into())
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("cannot reach the service at {}", self.base))?;
        Self::answer(r).await
    }

    async fn create(
        &self,
        agent: i64,
        name: &str,
        scheduled_for: Option<&str>,
        path: &Path,
        show_progress: bool,
    ) -> Result<Value> {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let size = file.metadata().await?.len();
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "recipients.csv".into());
        let bar = if show_progress {
            ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "uploading [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
            )?
            .progress_chars("=> "),
        );
        // The file goes out chunk by chunk as the socket takes it; the service parses it as it
        // arrives, so neither side ever holds it whole.
        let counted = bar.clone();
        let chunks = futures::stream::try_unfold(file, move |mut file| {
            let counted = counted.clone();
            async move {
                let mut buf = vec![0u8; CHUNK];
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(None);
                }
                buf.truncate(n);
                counted.inc(n as u64);
                Ok(Some((buf, file)))
            }
        });
        let part =
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(chunks), size)
                .file_name(file_name)
                .mime_str("text/csv")?;
        let mut form = reqwest::multipart::Form::new()
            .text("agent_id", agent.to_string())
            .text("name", name.to_string());
        if let Some(at) = scheduled_for {
            form = form.text("scheduled_for", at.to_string());
        }
        // The file part last: the service reads the form in order and checks the file while it
        // streams, so the small fields must already be there.
        form = form.part("file", part);
        let sent = self
            .http
            .post(format!("{}/v1/batch-call", self.base))
            .bearer_auth(&self.key)
            .multipart(form)
            .send();
        let spinner_bar = bar.clone();
        let done_uploading = async move {
            // Once the last byte is out the service is still writing every recipient; say so
            // rather than sit on a full bar.
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if spinner_bar.position() >= size {
                    spinner_bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    spinner_bar.set_message(format!(
                        "uploaded {size} bytes; the service is checking and writing the recipients"
                    ));
                    spinner_bar.enable_steady_tick(Duration::from_millis(120));
                    std::future::pending::<()>().await;
                }
            }
        };
        let r = tokio::select! {
            r = sent => r,
            _ = done_uploading => unreachable!("pending forever"),
        };
        bar.finish_and_clear();
        let r = r.with_context(|| format!("uploading to {}", self.base))?;
        Self::answer(r).await
    }
}

/// The counters of a batch as `GET /v1/batch-calls/{id}` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    total: i64,
    processed: i64,
    pending: i64,
    in_progress: i64,
    pending_retry: i64,
    completed: i64,
    busy: i64,
    no_answer: i64,
    failed: i64,
    unreachable: i64,
    socket_failure: i64,
    canceled: i64,
}

impl Counts {
    fn of(batch: &Value) -> Self {
        let n = |k: &str| batch[k].as_i64().unwrap_or(0);
        Self {
            total: n("total_recipients"),
            processed: n("total_processed"),
            pending: n("pending_count"),
            in_progress: n("in_progress_count"),
            pending_retry: n("pending_retry_count"),
            completed: n("completed_count"),
            busy: n("busy_count"),
            no_answer: n("no_answer_count"),
            failed: n("failed_count"),
            unreachable: n("unreachable_count"),
            socket_failure: n("socket_failure_count"),
            canceled: n("canceled_count"),
        }
    }

    /// One line for the bar: what is still moving, then where recipients ended up; zero
    /// outcome counts are left out so the line fits a terminal.
    fn summary(&self) -> String {
        let mut s = format!(
            "in progress {} · retry {} · pending {}",
            self.in_progress, self.pending_retry, self.pending
        );
        let outcomes = [
            ("completed", self.completed),
            ("busy", self.busy),
            ("no answer", self.no_answer),
            ("failed", self.failed),
            ("unreachable", self.unreachable),
            ("socket failure", self.socket_failure),
            ("canceled", self.canceled),
        ];
        let shown: Vec<String> = outcomes
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if !shown.is_empty() {
            s.push_str(" | ");
            s.push_str(&shown.join(" · "));
        }
        s
    }
}

/// Recipients processed per second over the recent past, and the time the rest would take.
#[derive(Default)]
struct Pace {
    samples: VecDeque<(Instant, i64)>,
}

impl Pace {
    fn add(&mut self, at: Instant, processed: i64) {
        self.samples.push_back((at, processed));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| at.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    fn per_second(&self) -> Option<f64> {
        let (t0, p0) = *self.samples.front()?;
        let (t1, p1) = *self.samples.back()?;
        let secs = t1.duration_since(t0).as_secs_f64();
        (secs >= 0.5).then(|| (p1 - p0).max(0) as f64 / secs)
    }

    fn eta(&self, remaining: i64) -> Option<Duration> {
        if remaining <= 0 {
            return Some(Duration::ZERO);
        }
        let rate = self.per_second().filter(|r| *r > 0.0)?;
        Some(Duration::from_secs_f64(remaining as f64 / rate))
    }
}

fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn finished(status: &str) -> bool {
    matches!(status, "completed" | "canceled")
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Whether an error is the service being away (worth waiting out) rather than an answer.
fn unreachable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<reqwest::Error>()
        .is_some_and(|e| e.is_connect() || e.is_timeout() || e.is_request())
}

async fn watch(client: &Client, id: i64, json_lines: bool, interval: Duration) -> Result<()> {
    let path = format!("/v1/batch-calls/{id}");
    let bar = if json_lines {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>11} [{bar:30}] {pos}/{len} {msg}")?
            .progress_chars("=> "),
    );
    // Without a terminal the bar draws nothing; an operator tailing a log still gets a line now
    // and then.
    let plain_lines = !json_lines && !std::io::stderr().is_terminal();
    let mut last_plain: Option<Instant> = None;
    let mut pace = Pace::default();
    let mut away_since: Option<Instant> = None;
    let batch = loop {
        let batch = match client.get(&path).await {
            Ok(b) => {
                away_since = None;
                b
            }
            Err(e) if unreachable(&e) => {
                let since = *away_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNREACHABLE_GRACE {
                    return Err(e);
                }
                bar.set_message(format!("service unreachable, retrying: {e:#}"));
                tokio::time::sleep(interval).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        let counts = Counts::of(&batch);
        let status = batch["status"].as_str().unwrap_or("").to_string();
        pace.add(now, counts.processed);
        let rate = pace.per_second();
        let eta = pace.eta(counts.total - counts.processed);
        if json_lines {
            println!(
                "{}",
                json!({
                    "event": "progress",
                    "batch": batch,
                    "rate_per_second": rate.map(round2),
                    "eta_seconds": eta.map(|d| d.as_secs()),
                })
            );
        } else {
            bar.set_length(counts.total.max(0) as u64);
            bar.set_position(counts.processed.max(0) as u64);
            bar.set_prefix(status.clone());
            let pace_text = match (rate, eta) {
                (Some(r), Some(eta)) if !finished(&status) => {
                    format!(" | {r:.1}/s, ETA {}", short_duration(eta))
                }
                (Some(r), _) => format!(" | {r:.1}/s"),
                _ => String::new(),
            };
            bar.set_message(format!("{}{pace_text}", counts.summary()));
            if plain_lines && last_plain.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                last_plain = Some(now);
                eprintln!(
                    "batch {id} {status}: {}/{} {}{pace_text}",
                    counts.processed,
                    counts.total,
                    counts.summary()
                );
            }
        }
        if finished(&status) {
            break batch;
        }
        tokio::time::sleep(interval).await;
    };
    let metrics = client.get(&format!("{path}/metrics")).await?;
    if json_lines {
        println!(
            "{}",
            json!({"event": "final", "batch": batch, "metrics": metrics})
        );
    } else {
        bar.finish();
        print_metrics(&batch, &metrics);
    }
    Ok(())
}

/// The final metrics as an aligned table, in the contract's order, ours last.
fn print_metrics(batch: &Value, metrics: &Value) {
    println!(
        "batch {} {:?}: {}, {} recipients",
        batch["id"],
        batch["name"].as_str().unwrap_or(""),
        batch["status"].as_str().unwrap_or(""),
        batch["total_recipients"]
    );
    let empty = Map::new();
    let m = metrics.as_object().unwrap_or(&empty);
    let order = [
        "total_processed",
        "success_count",
        "success_rate",
        "avg_duration_seconds",
        "completed_count",
        "busy_count",
        "no_answer_count",
        "failed_count",
        "unreachable_count",
        "socket_failure_count",
        "in_progress_count",
        "pending_retry_count",
        "pending_count",
        "canceled_count",
    ];
    let mut keys: Vec<&str> = order
        .iter()
        .copied()
        .filter(|k| m.contains_key(*k))
        .collect();
    keys.extend(m.keys().map(String::as_str).filter(|k| !order.contains(k)));
    for k in keys {
        println!("  {k:<22} {}", m[k]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_measures_recent_progress_and_estimates_the_rest() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        p.add(t0, 100);
        assert_eq!(p.per_second(), None, "one sample has no rate");
        p.add(t0 + Duration::from_secs(2), 120);
        assert_eq!(p.per_second(), Some(10.0));
        assert_eq!(p.eta(50), Some(Duration::from_secs(5)));
        assert_eq!(p.eta(0), Some(Duration::ZERO));
        // Old history falls out of the window: a batch that stalled shows a rate of zero and
        // no ETA, not its average since the start.
        p.add(t0 + Duration::from_secs(40), 120);
        p.add(t0 + Duration::from_secs(45), 120);
        assert_eq!(p.per_second(), Some(0.0));
        assert_eq!(p.eta(10), None);
    }

    #[test]
    fn summary_shows_what_moves_and_the_outcomes_reached() {
        let c = Counts {
            total: 10,
            processed: 5,
            pending: 3,
            in_progress: 1,
            pending_retry: 1,
            completed: 4,
            busy: 1,
            ..Default::default()
        };
        assert_eq!(
            c.summary(),
            "in progress 1 · retry 1 · pending 3 | completed 4 · busy 1"
        );
        assert_eq!(short_duration(Duration::from_secs(75)), "1m15s");
        assert_eq!(short_duration(Duration::from_secs(7300)), "2h01m");
    }
}
