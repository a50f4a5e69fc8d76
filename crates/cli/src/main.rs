//! `outdial`: the single binary. `serve` runs the service; `tenants` and `keys` manage who may
//! use it, straight against the database.

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use domain::store::Store;
use domain::tenant::TenantLimits;
use domain::{ApiKeyId, Millis, TenantId};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::{SqlStore, StoreOptions};
use tracing_subscriber::EnvFilter;

mod batch;
mod config;
mod doctor;
mod engines;
mod trunks;

#[derive(Parser)]
#[command(
    name = "outdial",
    version,
    about = "Outbound voice-agent calls, self-hosted"
)]
struct Cli {
    #[command(flatten)]
    db: DbArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct DbArgs {
    /// A TOML file of settings: any flag of `serve` or these global ones, by its long name with
    /// `_` for `-` (`listen = "0.0.0.0:8080"`). Its values come before the `OUTDIAL_*`
    /// variables and the flags; `outdial config show` prints what applies.
    #[arg(long, env = "OUTDIAL_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// What is logged, as a tracing filter (`info`, `warn,dispatch=debug`); default: `info`
    /// (`warn` for `doctor` and `setup`).
    #[arg(long, env = "OUTDIAL_LOG", global = true)]
    log: Option<String>,
    /// Log lines as `text` or `json`.
    #[arg(long, env = "OUTDIAL_LOG_FORMAT", global = true, default_value = "text",
        value_parser = ["text", "json"])]
    log_format: String,
    /// Where the embedded database and recordings live.
    #[arg(
        long,
        env = "OUTDIAL_DATA_DIR",
        default_value = "./outdial-data",
        global = true
    )]
    data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; default: SQLite in the data dir.
    #[arg(long, env = "OUTDIAL_DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// Seals trunk passwords, webhook secrets and llm api keys in the database: 32 random bytes
    /// in base64 (`openssl rand -base64 32`). Without it they are stored as given.
    #[arg(
        long,
        env = "OUTDIAL_SECRET_KEY",
        global = true,
        hide_env_values = true
    )]
    secret_key: Option<String>,
    /// Earlier secret keys, comma-separated: they only open what they sealed, until
    /// `outdial secrets rotate` has re-sealed it with the current key.
    #[arg(
        long,
        env = "OUTDIAL_SECRET_KEY_PREVIOUS",
        global = true,
        hide_env_values = true,
        value_delimiter = ','
    )]
    secret_key_previous: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve(Box<ServeArgs>),
    /// Manage tenants.
    #[command(subcommand)]
    Tenants(TenantCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeyCommand),
    /// Batch calls on a running service, over its HTTP API: create, watch.
    Batch(batch::BatchArgs),
    /// Stored credentials.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// The service's settings.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Install the local speech engines into the virtual environment the service uses
    /// (`--venv`, default ./.venv): those the node's default agent and the configured agents
    /// need, or `--all`. Quick when they are installed already.
    Setup(engines::SetupArgs),
    /// Check what the service and its configured agents need on this machine (speech engines,
    /// SIP port, database, data dir, tz data); prints the fix for what is missing and exits
    /// non-zero if something required is.
    Doctor(doctor::DoctorArgs),
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// What `serve` would run with: every setting, its value (secrets masked) and where it
    /// comes from (default, file, env, flag).
    Show,
    /// Every setting as a Markdown table (docs/configuration.md).
    Reference,
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Re-seal every stored credential with the current `OUTDIAL_SECRET_KEY` (after changing
    /// the key, with the old one in `OUTDIAL_SECRET_KEY_PREVIOUS`; or to seal what was stored
    /// before a key was set). Prints how many were rewritten.
    Rotate,
}

#[derive(Args)]
struct ServeArgs {
    /// HTTP listen address (port 0 = any free port).
    #[arg(long, env = "OUTDIAL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// SIP listen address (port 0 = any free port).
    #[arg(long, env = "OUTDIAL_SIP_LISTEN", default_value = "127.0.0.1:5060")]
    sip_listen: SocketAddr,
    /// API requests per key per minute (0 = no limit).
    #[arg(
        long,
        env = "OUTDIAL_API_RATE_LIMIT_PER_MINUTE",
        default_value_t = 6000
    )]
    api_rate_limit_per_minute: u32,
    /// Webhook targets may be on private and loopback addresses (a receiver on the LAN or on
    /// this machine): `true` or `false`. Every delivery checks the addresses again.
    #[arg(
        long,
        env = "OUTDIAL_WEBHOOK_ALLOW_PRIVATE",
        default_value = "false",
        value_parser = |v: &str| webhooks::UrlPolicy::from_env_value(Some(v)),
        action = clap::ArgAction::Set
    )]
    webhook_allow_private: webhooks::UrlPolicy,
    /// Seconds between webhook delivery attempts, e.g. `5,30,120` (default: the contract's
    /// schedule).
    #[arg(
        long,
        env = "OUTDIAL_WEBHOOK_RETRY_SCHEDULE",
        default_value_t = webhooks::RetrySchedule::default(),
        value_parser = |v: &str| v.parse::<webhooks::RetrySchedule>()
    )]
    webhook_retry_schedule: webhooks::RetrySchedule,
    /// llm agents' model server: milliseconds to connect (TCP and TLS).
    #[arg(long, env = "OUTDIAL_LLM_CONNECT_TIMEOUT_MS",
        default_value_t = millis(agent::LlmOptions::default().connect_timeout),
        value_parser = clap::value_parser!(u64).range(1..=600_000))]
    llm_connect_timeout_ms: u64,
    /// llm agents' model server: milliseconds from the request to the response's headers.
    #[arg(long, env = "OUTDIAL_LLM_RESPONSE_TIMEOUT_MS",
        default_value_t = millis(agent::LlmOptions::default().response_timeout),
        value_parser = clap::value_parser!(u64).range(1..=600_000))]
    llm_response_timeout_ms: u64,
    /// llm agents' model server: milliseconds between two reads of a streamed answer.
    #[arg(long, env = "OUTDIAL_LLM_IDLE_TIMEOUT_MS",
        default_value_t = millis(agent::LlmOptions::default().idle_timeout),
        value_parser = clap::value_parser!(u64).range(1..=600_000))]
    llm_idle_timeout_ms: u64,
    /// llm agents' model server: milliseconds for a whole turn, tool rounds included.
    #[arg(long, env = "OUTDIAL_LLM_TURN_TIMEOUT_MS",
        default_value_t = millis(agent::LlmOptions::default().turn_timeout),
        value_parser = clap::value_parser!(u64).range(1..=600_000))]
    llm_turn_timeout_ms: u64,
    /// Base URL clients use to reach this service (for recording URLs); default: http://<listen>.
    #[arg(long, env = "OUTDIAL_PUBLIC_URL")]
    public_url: Option<String>,
    /// Database connections (readers on SQLite).
    #[arg(long, env = "OUTDIAL_DB_MAX_CONNECTIONS", default_value_t = 8)]
    db_max_connections: u32,
    /// Calls one SQLite commit may carry (group commit).
    #[arg(long, env = "OUTDIAL_DB_MAX_WRITE_BATCH", default_value_t = 128)]
    db_max_write_batch: usize,
    /// PostgreSQL: connections of the background pool (dispatch, webhooks, batch uploads), apart
    /// from --db-max-connections, so background work cannot starve API requests.
    #[arg(long, env = "OUTDIAL_DB_BACKGROUND_CONNECTIONS", default_value_t = StoreOptions::default().background_connections,
        value_parser = clap::value_parser!(u32).range(1..=1000))]
    db_background_connections: u32,
    /// SQLite: how long (ms) a background write lets waiting `POST /v1/call` requests go first
    /// before it takes its turn anyway.
    #[arg(long, env = "OUTDIAL_DB_BACKGROUND_WAIT_MS",
        default_value_t = millis(StoreOptions::default().background_wait),
        value_parser = clap::value_parser!(u64).range(0..=10_000))]
    db_background_wait_ms: u64,
    /// SQLite: the most of the single writer's time (percent) that dial starts, progress marks
    /// and settlements take while `POST /v1/call` requests wait (all they need when none wait).
    /// Higher dials faster under API load and accepts fewer calls.
    #[arg(long, env = "OUTDIAL_DB_BACKGROUND_SHARE",
        default_value_t = StoreOptions::default().background_share,
        value_parser = clap::value_parser!(u8).range(1..=100))]
    db_background_share: u8,
    /// SQLite: how often (ms) a thread of its own copies the write-ahead log back into the
    /// database, so that the checkpoint a commit runs when the log passes 1,000 pages finds
    /// little left to copy. 0: off.
    #[arg(long, env = "OUTDIAL_DB_CHECKPOINT_MS",
        default_value_t = millis(StoreOptions::default().checkpoint_every),
        value_parser = clap::value_parser!(u64).range(0..=60_000))]
    db_checkpoint_ms: u64,
    /// Batch uploads this node writes at once; more wait --batch-upload-wait-ms for a turn, then
    /// get 429 with Retry-After.
    #[arg(long, env = "OUTDIAL_BATCH_MAX_UPLOADS", default_value_t = 2,
        value_parser = clap::value_parser!(u64).range(1..=1000))]
    batch_max_uploads: u64,
    /// How long (ms) an upload over --batch-max-uploads waits for a turn before its 429.
    #[arg(long, env = "OUTDIAL_BATCH_UPLOAD_WAIT_MS", default_value_t = 2000,
        value_parser = clap::value_parser!(u64).range(0..=60_000))]
    batch_upload_wait_ms: u64,
    /// Recipients a batch upload writes per transaction: each holds SQLite's writer (about
    /// 5 ms for 250 under API load), and `POST /v1/call` may wait behind one.
    #[arg(long, env = "OUTDIAL_BATCH_UPLOAD_CHUNK_ROWS",
        default_value_t = StoreOptions::default().upload_chunk_rows as u64,
        value_parser = clap::value_parser!(u64).range(1..=100_000))]
    batch_upload_chunk_rows: u64,
    /// A batch upload that wrote nothing for this long is taken for dead and its half-written
    /// batch removed (SQLite also removes them all at start).
    #[arg(long, env = "OUTDIAL_BATCH_UPLOAD_LEASE_SECONDS", default_value_t = 120,
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    batch_upload_lease_seconds: u64,
    /// Deep pages of GET /v1/conversations: a background pass marks every this many
    /// conversations, so a page at any offset walks at most this many rows.
    #[arg(long, env = "OUTDIAL_PAGE_MARK_ROWS", default_value_t = 256,
        value_parser = clap::value_parser!(u64).range(16..=100_000))]
    page_mark_rows: u64,
    /// Conversations newer than this are not marked yet: more than any write transaction lasts
    /// and any two nodes' clocks differ.
    #[arg(long, env = "OUTDIAL_PAGE_MARK_HORIZON_SECONDS", default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    page_mark_horizon_seconds: u64,
    /// How often the marking pass runs.
    #[arg(long, env = "OUTDIAL_PAGE_MARK_SECONDS", default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=3_600))]
    page_mark_seconds: u64,
    /// How long a verified API key is trusted without a database read; a revoked key stops
    /// working on every node within this time (0 = read on every request).
    #[arg(long, env = "OUTDIAL_KEY_CACHE_MS", default_value_t = 2000)]
    key_cache_ms: u64,
    /// Address put in SIP Contact/Via and SDP when behind NAT or listening on a wildcard.
    #[arg(long, env = "OUTDIAL_SIP_PUBLIC_IP")]
    sip_public_ip: Option<std::net::IpAddr>,
    /// RTP port range, `first-last`.
    #[arg(long, env = "OUTDIAL_RTP_PORTS", default_value = "10000-20000")]
    rtp_ports: String,
    /// An answered call with no RTP for this long ends as socket_failure.
    #[arg(long, env = "OUTDIAL_NO_RTP_TIMEOUT_SECONDS", default_value_t = 5)]
    no_rtp_timeout_seconds: u64,
    /// A transfer whose SIP REFER brings no final 2xx NOTIFY within this long is bridged
    /// instead: outdial dials the target on the same trunk and joins the two legs.
    #[arg(long, env = "OUTDIAL_TRANSFER_TIMEOUT_SECONDS", default_value_t = 15)]
    transfer_timeout_seconds: u64,
    /// PEM file of the certificate authorities a TLS trunk's certificate must chain to
    /// (a private CA); unset: the system's bundle, /etc/ssl/certs/ca-certificates.crt.
    #[arg(long, env = "OUTDIAL_SIP_TLS_CA")]
    sip_tls_ca: Option<PathBuf>,
    /// How often the trunks are read again for their upkeep (registration, probes): a new or
    /// changed trunk is taken up within this long.
    #[arg(long, env = "OUTDIAL_TRUNK_REFRESH_SECONDS", default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    trunk_refresh_seconds: u64,
    /// How often every trunk is probed with OPTIONS (shown by `GET /v1/trunks/{id}`); 0: never
    /// (the default: a carrier may not welcome probes it was not told of).
    #[arg(long, env = "OUTDIAL_TRUNK_PROBE_SECONDS", default_value_t = 0)]
    trunk_probe_seconds: u64,
    /// The binding a trunk with `register` is asked for; it is renewed at three quarters of
    /// what the registrar grants.
    #[arg(long, env = "OUTDIAL_REGISTER_EXPIRES_SECONDS", default_value_t = 3600,
        value_parser = clap::value_parser!(u64).range(1..=86400))]
    register_expires_seconds: u64,
    /// Transcription jobs this node transcribes at once (0: none; jobs are still accepted,
    /// for other nodes). Each holds the multilingual model (~300 MB).
    #[arg(long, env = "OUTDIAL_TRANSCRIPTION_WORKERS", default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(0..=16))]
    transcription_workers: u8,
    /// Decoder threads of each transcription worker.
    #[arg(long, env = "OUTDIAL_TRANSCRIPTION_THREADS", default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=64))]
    transcription_threads: u32,
    /// How much lower the transcription workers' CPU priority is than the node's (nice), so
    /// live calls get the CPU first.
    #[arg(long, env = "OUTDIAL_TRANSCRIPTION_NICE", default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(0..=19))]
    transcription_nice: u32,
    /// The largest audio file a transcription job takes, in bytes.
    #[arg(long, env = "OUTDIAL_TRANSCRIPTION_MAX_BYTES", default_value_t = 100 * 1024 * 1024,
        value_parser = clap::value_parser!(u64).range(1..))]
    transcription_max_bytes: u64,
    /// How long a transcription job is held without renewal before another worker may take it
    /// up (the time a job waits after its node dies).
    #[arg(long, env = "OUTDIAL_TRANSCRIPTION_LEASE_SECONDS", default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(3..=3600))]
    transcription_lease_seconds: u64,
    /// Where the transcription model is put together from its packages' parts on first start
    /// (about 150 MB); default: `<data-dir>/models/whisper-base`.
    #[arg(long, env = "OUTDIAL_TRANSCRIPTION_MODEL_DIR")]
    transcription_model_dir: Option<PathBuf>,
    /// The longest one file may take to transcribe before its job fails (a free core does an
    /// hour of audio in about 5 minutes, several times that while calls take the CPU).
    #[arg(long, env = "OUTDIAL_TRANSCRIPTION_TIMEOUT_SECONDS", default_value_t = 7200,
        value_parser = clap::value_parser!(u64).range(1..))]
    transcription_timeout_seconds: u64,
    /// How long a node holds a claimed or live call without renewing (crash detection time).
    #[arg(long, env = "OUTDIAL_DISPATCH_LEASE_SECONDS", default_value_t = 30)]
    dispatch_lease_seconds: u64,
    /// Longest dispatcher sleep when nothing is due.
    #[arg(long, env = "OUTDIAL_DISPATCH_IDLE_WAIT_MS", default_value_t = 5000)]
    dispatch_idle_wait_ms: u64,
    /// Due calls claimed (and started in one transaction) per dispatch round.
    #[arg(long, env = "OUTDIAL_DISPATCH_CLAIM_BATCH",
        default_value_t = dispatch::DispatchConfig::default().claim_batch,
        value_parser = clap::value_parser!(u32).range(1..=10_000))]
    dispatch_claim_batch: u32,
    /// Calls a second this node dials while its API is serving requests (0: no limit). Dials
    /// are background work: on a busy node they take the CPU the API needs. While no request
    /// is being served the node dials as fast as it can.
    #[arg(long, env = "OUTDIAL_DISPATCH_BUSY_DIAL_RATE", default_value_t = 1000)]
    dispatch_busy_dial_rate: u32,
    /// Most ended calls settled in one transaction: calls that end while a settlement is being
    /// written are settled together in the next. Progress marks (`ringing`, `in_progress`) are
    /// gathered the same way, with the same limits.
    #[arg(long, env = "OUTDIAL_DISPATCH_SETTLE_BATCH",
        default_value_t = dispatch::SettleBatching::default().max_calls as u64,
        value_parser = clap::value_parser!(u64).range(1..=10_000))]
    dispatch_settle_batch: u64,
    /// How long (ms) a settlement waits for more calls to end before it is written, while it
    /// has fewer than --dispatch-settle-batch (0: at once).
    #[arg(long, env = "OUTDIAL_DISPATCH_SETTLE_GATHER_MS",
        default_value_t = millis(dispatch::SettleBatching::default().gather),
        value_parser = clap::value_parser!(u64).range(0..=1_000))]
    dispatch_settle_gather_ms: u64,
    /// On SIGTERM or SIGINT, how long live calls get to end on their own; then the rest are
    /// hung up and settled `failed` / `interrupted`. A second signal exits at once (status 143
    /// after SIGTERM, 130 after SIGINT).
    #[arg(long, env = "OUTDIAL_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    shutdown_grace_seconds: u64,
    /// This node's name in leases (default: a fresh random one per process).
    #[arg(long, env = "OUTDIAL_NODE_ID")]
    node_id: Option<String>,
    /// pocketsphinx sidecar processes: utterances recognised at once (default: 4 per core).
    #[arg(long, env = "OUTDIAL_STT_SIDECARS")]
    stt_sidecars: Option<usize>,
    /// The tz database's zone.tab, mapping countries to time zones for calling windows.
    #[arg(
        long,
        env = "OUTDIAL_ZONE_TAB",
        default_value = "/usr/share/zoneinfo/zone.tab"
    )]
    zone_tab: PathBuf,
    /// When agents without a calling window of their own may call, in the callee's local
    /// time: `HH:MM-HH:MM` (every day), `HH:MM-HH:MM mon,tue,...`, or `always` (no window).
    #[arg(long, env = "OUTDIAL_DEFAULT_CALLING_WINDOW", default_value = "09:00-21:00 mon,tue,wed,thu,fri,sat",
        value_parser = calling_hours)]
    default_calling_window: domain::agent::CallingHours,
    /// Spoken before every agent's first message on a human-answered call (templated with the
    /// call's parameters); an agent's own `disclosure` follows it, it cannot remove it.
    #[arg(long, env = "OUTDIAL_DISCLOSURE")]
    disclosure: Option<String>,
    /// Answering machines: a first utterance this long (ms, mostly speech) is a recorded
    /// greeting. Longer takes fewer people for machines and finds machines later.
    #[arg(long, env = "OUTDIAL_AMD_GREETING_MS", default_value_t = agent::AmdConfig::default().greeting_ms,
        value_parser = clap::value_parser!(u64).range(500..=10_000))]
    amd_greeting_ms: u64,
    /// Answering machines: silence (ms) after a shorter first utterance that makes it a person
    /// waiting for an answer.
    #[arg(long, env = "OUTDIAL_AMD_HUMAN_SILENCE_MS", default_value_t = agent::AmdConfig::default().human_silence_ms,
        value_parser = clap::value_parser!(u64).range(200..=3_000))]
    amd_human_silence_ms: u64,
    /// Answering machines: no verdict this long (ms) after the answer is `unknown` (the call
    /// goes on as with a person).
    #[arg(long, env = "OUTDIAL_AMD_MAX_MS", default_value_t = agent::AmdConfig::default().max_ms,
        value_parser = clap::value_parser!(u64).range(1_000..=30_000))]
    amd_max_ms: u64,
    /// Answering machines: a first utterance that has lasted this share (%) of
    /// `amd-greeting-ms` without a pause of `amd-continuous-gap-ms` is taken for a recorded
    /// greeting read in one breath, early: the agent goes quiet, and the verdict is sure once
    /// the utterance runs to `amd-greeting-ms` (see `amd-stopped-silence-ms`). 0 turns the
    /// rule off.
    #[arg(long, env = "OUTDIAL_AMD_CONTINUOUS_PERCENT", default_value_t = agent::AmdConfig::default().continuous_percent,
        value_parser = clap::value_parser!(u64).range(0..=100))]
    amd_continuous_percent: u64,
    /// Answering machines: a pause (ms) this long inside the first utterance is a person's
    /// breath, not a recording reading on (see `amd-continuous-percent`).
    #[arg(long, env = "OUTDIAL_AMD_CONTINUOUS_GAP_MS", default_value_t = agent::AmdConfig::default().continuous_gap_ms,
        value_parser = clap::value_parser!(u64).range(20..=3_000))]
    amd_continuous_gap_ms: u64,
    /// Answering machines: how long (ms) the tone detector must hear a tone, beyond its own
    /// 100 ms, for it to be a machine's beep.
    #[arg(long, env = "OUTDIAL_AMD_MIN_BEEP_MS", default_value_t = agent::AmdConfig::default().min_beep_ms,
        value_parser = clap::value_parser!(u64).range(20..=2_000))]
    amd_min_beep_ms: u64,
    /// Answering machines: after a greeting taken for one by `amd-continuous-percent`, silence
    /// (ms) this long before `amd-greeting-ms` makes it a person whose first sentence was long.
    #[arg(long, env = "OUTDIAL_AMD_STOPPED_SILENCE_MS", default_value_t = agent::AmdConfig::default().stopped_silence_ms,
        value_parser = clap::value_parser!(u64).range(100..=5_000))]
    amd_stopped_silence_ms: u64,
    /// Answering machines: a first utterance taken for a person ("Hello?" and a wait) that
    /// resumes and runs on to this span (ms from its first word), with no pause of
    /// `amd-resumed-gap-ms`, is a recorded greeting played in pieces (a phone system's prompts)
    /// after all. 0 turns the rule off.
    #[arg(long, env = "OUTDIAL_AMD_RESUMED_GREETING_MS", default_value_t = agent::AmdConfig::default().resumed_greeting_ms,
        value_parser = clap::value_parser!(u64).range(0..=30_000))]
    amd_resumed_greeting_ms: u64,
    /// Answering machines: a pause (ms) this long after a first utterance taken for a person
    /// keeps them a person, whatever they say next (see `amd-resumed-greeting-ms`).
    #[arg(long, env = "OUTDIAL_AMD_RESUMED_GAP_MS", default_value_t = agent::AmdConfig::default().resumed_gap_ms,
        value_parser = clap::value_parser!(u64).range(100..=5_000))]
    amd_resumed_gap_ms: u64,
    /// Largest CSV file `POST /v1/batch-call` accepts, in bytes (default 50 MiB).
    #[arg(long, env = "OUTDIAL_BATCH_MAX_BYTES", default_value_t = domain::batch::BatchLimits::default().max_bytes,
        value_parser = clap::value_parser!(u64).range(1..))]
    batch_max_bytes: u64,
    /// A request's headers must arrive within this many seconds; also how long an idle
    /// keep-alive connection stays open.
    #[arg(long, env = "OUTDIAL_HTTP_HEADER_TIMEOUT_SECONDS", default_value_t = 20,
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    http_header_timeout_seconds: u64,
    /// Longest pause, in seconds, between two pieces of a request body (uploads included).
    #[arg(long, env = "OUTDIAL_HTTP_BODY_IDLE_TIMEOUT_SECONDS", default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    http_body_idle_timeout_seconds: u64,
    /// A JSON request body (at most 64 KiB) must arrive whole within this many seconds.
    #[arg(long, env = "OUTDIAL_HTTP_BODY_TIMEOUT_SECONDS", default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    http_body_timeout_seconds: u64,
    /// Open HTTP connections served at once; past it new ones get 503 (default: three quarters
    /// of the process's open-file limit, at most 16384).
    #[arg(long, env = "OUTDIAL_HTTP_MAX_CONNECTIONS",
        value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    http_max_connections: Option<u64>,
    /// Open HTTP connections from one client address (0 = no per-address cap; behind a
    /// reverse proxy every connection comes from its address).
    #[arg(
        long,
        env = "OUTDIAL_HTTP_MAX_CONNECTIONS_PER_IP",
        default_value_t = 256
    )]
    http_max_connections_per_ip: usize,
    /// Requests without a valid key one client address may make per minute before it is
    /// answered 429 without a database read (0 = no budget).
    #[arg(
        long,
        env = "OUTDIAL_FAILED_AUTH_PER_IP_PER_MINUTE",
        default_value_t = 120
    )]
    failed_auth_per_ip_per_minute: u32,
    /// Non-public networks agents' model servers (the llm brain's `base_url`) may be in, as a
    /// comma-separated CIDR list (e.g. `127.0.0.1/32,10.0.0.0/8`); public addresses are always
    /// allowed and link-local (cloud metadata) addresses never.
    #[arg(long, env = "OUTDIAL_LLM_ALLOWED_NETWORKS", default_value = "",
        value_parser = |s: &str| webhooks::ModelEndpointPolicy::parse(s))]
    llm_allowed_networks: webhooks::ModelEndpointPolicy,
    /// Most recipients (data rows) in one batch file.
    #[arg(long, env = "OUTDIAL_BATCH_MAX_ROWS", default_value_t = domain::batch::BatchLimits::default().max_rows,
        value_parser = parse_max_rows)]
    batch_max_rows: usize,
    #[command(flatten)]
    engines: engines::ServeEngineArgs,
}

fn parse_max_rows(s: &str) -> Result<usize> {
    let n: usize = s.trim().parse()?;
    if n == 0 {
        bail!("must be at least 1");
    }
    Ok(n)
}

/// Raises the open-file limit to its hard maximum (a server holds a descriptor per connection,
/// call leg and database connection) and returns the limit in force.
fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

fn rtp_range(s: &str) -> Result<std::ops::RangeInclusive<u16>> {
    let (a, b) = s
        .split_once('-')
        .context("OUTDIAL_RTP_PORTS must be first-last")?;
    let (a, b): (u16, u16) = (a.trim().parse()?, b.trim().parse()?);
    if a == 0 || a >= b {
        bail!("OUTDIAL_RTP_PORTS must be an increasing range of non-zero ports");
    }
    Ok(a..=b)
}

fn calling_hours(s: &str) -> std::result::Result<domain::agent::CallingHours, String> {
    domain::agent::CallingHours::parse_setting(s).ok_or_else(|| {
        "must be `always`, `HH:MM-HH:MM` or `HH:MM-HH:MM mon,tue,...` (days: mon..sun)".into()
    })
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and its first API key; prints {"tenant_id", "name", "api_key"}.
    Create {
        name: String,
        #[arg(long)]
        max_concurrent_calls: Option<u32>,
    },
    /// Change a tenant's limits.
    Update {
        tenant_id: i64,
        /// Simultaneous immediate calls; 0 removes the limit.
        #[arg(long)]
        max_concurrent_calls: Option<u32>,
        /// Calls to one destination per window.
        #[arg(long)]
        per_number_calls: Option<u32>,
        #[arg(long)]
        per_number_window_seconds: Option<u32>,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a key; it is printed once and stored only as a hash.
    Create {
        #[arg(long)]
        tenant: i64,
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// List a tenant's keys (never the secrets).
    List {
        #[arg(long)]
        tenant: i64,
    },
    /// Revoke a key; requests with it are refused from now on.
    Revoke {
        #[arg(long)]
        tenant: i64,
        key_id: i64,
    },
}

fn database_url(db: &DbArgs) -> Result<String> {
    if let Some(url) = &db.database_url {
        return Ok(url.clone());
    }
    std::fs::create_dir_all(&db.data_dir)
        .with_context(|| format!("creating data dir {}", db.data_dir.display()))?;
    private_data_dir(&db.data_dir)?;
    Ok(format!("sqlite://{}/outdial.db", db.data_dir.display()))
}

/// The data dir holds credentials (trunk passwords, webhook secrets, llm keys) and recordings
/// of people: only the service's user may read it. New files are private by the umask set in
/// `main`; this also closes up a dir and database made by an older version.
fn private_data_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))?;
    for name in ["outdial.db", "outdial.db-wal", "outdial.db-shm"] {
        let file = dir.join(name);
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private", file.display()))?;
        }
    }
    Ok(())
}

async fn open_store(db: &DbArgs, opts: StoreOptions) -> Result<SqlStore> {
    let url = database_url(db)?;
    let secrets = store::secrets::SecretBox::new(db.secret_key.as_deref(), &db.secret_key_previous)
        .context("OUTDIAL_SECRET_KEY / OUTDIAL_SECRET_KEY_PREVIOUS")?;
    let opts = StoreOptions {
        secrets: Arc::new(secrets),
        ..opts
    };
    SqlStore::connect(&url, opts)
        .await
        .context("opening the database")
}

fn print(value: serde_json::Value) {
    println!("{value}");
}

#[tokio::main]
async fn main() -> Result<()> {
    // Everything the service writes (database, recordings) is readable by its user only.
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
    let (cli, command, config_file) = match config::parse::<Cli>(
        Cli::command(),
        std::env::args_os().collect(),
        std::env::var_os(config::CONFIG_ENV),
    ) {
        Ok(parsed) => parsed,
        Err(e) => e.exit(),
    };
    // `doctor` and `setup` print their own report; engine start-up chatter would only hide it.
    let default_level = match cli.command {
        Command::Doctor(_) | Command::Setup(_) => "warn",
        _ => "info",
    };
    let filter = match &cli.db.log {
        Some(f) => EnvFilter::try_new(f).with_context(|| format!("--log / OUTDIAL_LOG `{f}`"))?,
        None => EnvFilter::new(default_level),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.db.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    match cli.command {
        Command::Serve(args) => serve(&cli.db, *args).await,
        Command::Tenants(cmd) => tenants(&cli.db, cmd).await,
        Command::Keys(cmd) => keys(&cli.db, cmd).await,
        Command::Batch(args) => batch::run(args).await,
        Command::Secrets(SecretsCommand::Rotate) => {
            if cli.db.secret_key.is_none() {
                bail!("OUTDIAL_SECRET_KEY is not set: there is no key to seal with");
            }
            let store = open_store(&cli.db, StoreOptions::default()).await?;
            let rewritten = store.reseal_secrets().await?;
            store.close().await;
            print(json!({"resealed": rewritten}));
            Ok(())
        }
        Command::Config(ConfigCommand::Show) => {
            let keys = match &config_file {
                Some(path) => config::file_keys(path)?,
                None => Vec::new(),
            };
            print!("{}", config::show(&command, config_file.as_deref(), &keys)?);
            Ok(())
        }
        Command::Config(ConfigCommand::Reference) => {
            print!("{}", config::reference(&command)?);
            Ok(())
        }
        Command::Setup(args) => setup(&cli.db, args).await,
        Command::Doctor(args) => {
            if !doctor::run(&cli.db, args).await? {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

async fn setup(db: &DbArgs, args: engines::SetupArgs) -> Result<()> {
    let config = args.engines.resolve()?;
    let wanted: Vec<agent::PythonEngine> = if args.all {
        agent::PYTHON_ENGINES.to_vec()
    } else {
        // What the node's default and the agents configured so far use; a database that cannot
        // be read leaves the default.
        let agents = match open_store(db, StoreOptions::default()).await {
            Ok(store) => {
                let agents = store.live_agents().await;
                store.close().await;
                agents.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot list agents; installing the default engine");
                    Vec::new()
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the database; installing the default engine");
                Vec::new()
            }
        };
        let mut wanted: Vec<agent::PythonEngine> = engines::needs(&agents, config.local.engine())
            .keys()
            .filter_map(|e| e.python())
            .collect();
        // An agent's post-call transcripts are made by the transcription jobs' recogniser.
        if agents.iter().any(|a| a.config.post_call_transcript) {
            wanted.push(agent::engines::WHISPER_JOBS);
        }
        wanted
    };
    engines::setup(&wanted, &config, &args.base_python).await
}

async fn serve(db: &DbArgs, args: ServeArgs) -> Result<()> {
    let store = open_store(
        db,
        StoreOptions {
            max_connections: args.db_max_connections,
            max_write_batch: args.db_max_write_batch,
            background_connections: args.db_background_connections,
            background_wait: std::time::Duration::from_millis(args.db_background_wait_ms),
            background_share: args.db_background_share,
            checkpoint_every: std::time::Duration::from_millis(args.db_checkpoint_ms),
            upload_chunk_rows: usize::try_from(args.batch_upload_chunk_rows).unwrap_or(usize::MAX),
            upload_lease: std::time::Duration::from_secs(args.batch_upload_lease_seconds),
            page_marks: store::PageMarks {
                every: args.page_mark_rows,
                horizon: std::time::Duration::from_secs(args.page_mark_horizon_seconds),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await?;
    let store = Arc::new(store);
    // Before the API serves: a half-written batch of an upload that died is never shown.
    store
        .remove_abandoned_uploads(true)
        .await
        .context("removing the half-written batches of uploads that died")?;
    let open_files = raise_open_files();
    // A quarter of the descriptors stay for call legs, the database and files.
    let max_connections = args
        .http_max_connections
        .unwrap_or_else(|| (open_files / 4 * 3).clamp(64, 16_384));
    let http_limits = api::server::HttpLimits {
        header_read_timeout: std::time::Duration::from_secs(args.http_header_timeout_seconds),
        body_idle_timeout: std::time::Duration::from_secs(args.http_body_idle_timeout_seconds),
        body_read_timeout: std::time::Duration::from_secs(args.http_body_timeout_seconds),
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        max_connections_per_ip: args.http_max_connections_per_ip,
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let data_dir = db.data_dir.clone();
    std::fs::create_dir_all(data_dir.join("recordings"))?;
    let telephony = sip::SipTelephony::bind(sip::SipConfig {
        listen: args.sip_listen,
        public_ip: args.sip_public_ip,
        rtp_ports: rtp_range(&args.rtp_ports)?,
        recording_dir: Some(data_dir.join("recordings")),
        no_rtp_timeout: std::time::Duration::from_secs(args.no_rtp_timeout_seconds),
        transfer_timeout: std::time::Duration::from_secs(args.transfer_timeout_seconds),
        tls_ca: args.sip_tls_ca.clone(),
        ..Default::default()
    })
    .await
    .with_context(|| format!("binding SIP on {}", args.sip_listen))?;
    let sip_addr = telephony.local_addr();
    let zones = match std::fs::read_to_string(&args.zone_tab) {
        Ok(text) => domain::dispatch::CountryZones::parse(&text),
        Err(e) => {
            // Without it, agents with a calling window cannot be dialled (never at a guessed hour).
            tracing::warn!(path = %args.zone_tab.display(), error = %e, "no zone.tab: calls under a calling window will fail");
            domain::dispatch::CountryZones::default()
        }
    };
    let node_id = args
        .node_id
        .clone()
        .unwrap_or_else(|| format!("node-{}-{}", std::process::id(), domain::TraceId::new()));
    let url_policy = args.webhook_allow_private;
    let webhook_worker = webhooks::Worker::new(
        store.clone(),
        webhooks::WorkerConfig::new(
            args.webhook_retry_schedule.clone(),
            webhooks::ClientConfig {
                policy: url_policy,
                ..Default::default()
            },
        ),
    )?;
    let engine_config = args.engines.engines.resolve()?;
    let python = engine_config.python.clone();
    let languages = domain::language::LanguageSupport {
        deepgram: engine_config.deepgram.is_some(),
    };
    let tts = Arc::new(agent::EspeakNg::default());
    let registry = engine_config
        .registry()
        .with_pocketsphinx(agent::PocketSphinxConfig {
            python: engine_config.python.clone(),
            sidecars: args
                .stt_sidecars
                .unwrap_or_else(agent::stt::default_sidecars)
                .clamp(1, 64),
            ..Default::default()
        });
    if registry.install_global().is_err() {
        bail!("the engine registry was in use before its configuration");
    }
    let stt = engine_config
        .local
        .recogniser(agent::EngineRegistry::global());
    let readiness = Arc::new(api::readiness::Readiness::new());
    let engine_watch = Arc::new(engines::Watch::new(
        store.clone(),
        readiness.clone(),
        engine_config,
        tts.clone(),
        agent::EngineRegistry::global(),
    ));
    // Before listening, so /readyz is true from its first answer; this also starts the
    // recognisers, keeping their model load off the first call's first turn.
    engine_watch.check().await;
    let llm = agent::LlmOptions {
        endpoints: args.llm_allowed_networks.clone(),
        connect_timeout: Duration::from_millis(args.llm_connect_timeout_ms),
        response_timeout: Duration::from_millis(args.llm_response_timeout_ms),
        idle_timeout: Duration::from_millis(args.llm_idle_timeout_ms),
        turn_timeout: Duration::from_millis(args.llm_turn_timeout_ms),
        ..agent::LlmOptions::default()
    };
    let engines = dispatch::Engines {
        tts,
        stt,
        llm: agent::LlmEngine::new(llm),
    };
    let recogniser = Arc::new(agent::WhisperJobs::new(agent::WhisperJobsConfig {
        sidecar: agent::SidecarConfig {
            python,
            processes: usize::from(args.transcription_workers).max(1),
            ..agent::SidecarConfig::new(Duration::from_secs(args.transcription_timeout_seconds))
        },
        threads: args.transcription_threads,
        nice: args.transcription_nice,
        model_dir: Some(
            args.transcription_model_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("models").join("whisper-base")),
        ),
    }));
    let transcription_worker = Arc::new(transcription::Worker::new(
        store.clone(),
        recogniser.clone(),
        transcription::WorkerConfig {
            workers: usize::from(args.transcription_workers),
            lease: Duration::from_secs(args.transcription_lease_seconds),
            ..Default::default()
        },
    ));
    let telephony = Arc::new(telephony);
    let trunk_upkeep = Arc::new(trunks::TrunkUpkeep::default());
    let in_flight = Arc::new(api::InFlight::default());
    let dispatcher = dispatch::Dispatcher::new(
        store.clone(),
        telephony.clone(),
        engines,
        zones,
        Arc::new(dispatch::SystemClock),
        dispatch::DispatchConfig {
            node_id,
            lease: std::time::Duration::from_secs(args.dispatch_lease_seconds.max(1)),
            idle_wait: std::time::Duration::from_millis(args.dispatch_idle_wait_ms.max(10)),
            default_window: args.default_calling_window.clone(),
            disclosure: args.disclosure.clone().filter(|d| !d.trim().is_empty()),
            public_url: public_url.clone(),
            events_written: Some(webhook_worker.waker()),
            post_call_written: Some(transcription_worker.waker()),
            shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace_seconds),
            claim_batch: args.dispatch_claim_batch,
            busy_dial_rate: args.dispatch_busy_dial_rate,
            foreground: Some(in_flight.clone()),
            settle: dispatch::SettleBatching {
                max_calls: usize::try_from(args.dispatch_settle_batch).unwrap_or(usize::MAX),
                gather: std::time::Duration::from_millis(args.dispatch_settle_gather_ms),
            },
            amd: agent::AmdConfig {
                greeting_ms: args.amd_greeting_ms,
                human_silence_ms: args.amd_human_silence_ms,
                max_ms: args.amd_max_ms,
                continuous_percent: args.amd_continuous_percent,
                continuous_gap_ms: args.amd_continuous_gap_ms,
                min_beep_ms: args.amd_min_beep_ms,
                stopped_silence_ms: args.amd_stopped_silence_ms,
                resumed_greeting_ms: args.amd_resumed_greeting_ms,
                resumed_gap_ms: args.amd_resumed_gap_ms,
                ..Default::default()
            },
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = Signals::new().context("listening for SIGTERM and SIGINT")?;
    tokio::spawn(signals.run(stop_tx, readiness.clone()));
    let watch_task = tokio::spawn(engine_watch.run(
        std::time::Duration::from_secs(args.engines.engine_check_seconds),
        stop_rx.clone(),
    ));
    let dispatch_task = tokio::spawn(dispatcher.clone().run(stop_rx.clone()));
    let transcription_wake = transcription_worker.waker();
    let transcription_task = tokio::spawn(transcription_worker.run(stop_rx.clone()));
    if args.transcription_workers > 0 {
        // The model is put together (first start) and loaded off the request path.
        tokio::spawn(async move {
            if let Err(e) = recogniser.warm_up().await {
                tracing::warn!(error = %e, "the transcription engine did not start; jobs will fail until it can");
            }
        });
    }
    tokio::spawn(mark_conversations(
        store.clone(),
        std::time::Duration::from_secs(args.page_mark_seconds),
        stop_rx.clone(),
    ));
    tokio::spawn(sweep_uploads(
        store.clone(),
        std::time::Duration::from_secs(args.batch_upload_lease_seconds),
        stop_rx.clone(),
    ));
    let config = api::ApiConfig {
        api_rate_limit_per_minute: args.api_rate_limit_per_minute,
        public_url,
        webhook_allow_private: url_policy.allow_private,
        webhook_wake: webhook_worker.waker(),
        batch_limits: domain::batch::BatchLimits {
            max_bytes: args.batch_max_bytes,
            max_rows: args.batch_max_rows,
        },
        batch_uploads: usize::try_from(args.batch_max_uploads).unwrap_or(usize::MAX),
        batch_upload_wait: std::time::Duration::from_millis(args.batch_upload_wait_ms),
        key_cache_ttl: std::time::Duration::from_millis(args.key_cache_ms),
        failed_auth_per_ip_per_minute: args.failed_auth_per_ip_per_minute,
        llm_endpoints: args.llm_allowed_networks.clone(),
        http: http_limits.clone(),
        languages,
        transcription: api::TranscriptionSettings {
            max_bytes: args.transcription_max_bytes,
            engine: agent::whisper_jobs::ENGINE.into(),
        },
    };
    let (stop_webhooks, webhooks_stopped) = tokio::sync::oneshot::channel::<()>();
    let webhook_task = tokio::spawn(async move {
        webhook_worker
            .run(async {
                let _ = webhooks_stopped.await;
            })
            .await
    });
    let upkeep_task = tokio::spawn(trunk_upkeep.clone().run(
        store.clone(),
        telephony,
        trunks::UpkeepConfig {
            refresh: Duration::from_secs(args.trunk_refresh_seconds),
            probe_every: Duration::from_secs(args.trunk_probe_seconds),
            register_expires: Duration::from_secs(args.register_expires_seconds),
        },
        stop_rx.clone(),
    ));
    let app = api::router(
        api::AppState::new(store.clone(), config)
            .with_dispatch_wake(dispatcher.waker())
            .with_in_flight(in_flight)
            .with_transcription_wake(transcription_wake)
            .with_trunk_health(trunk_upkeep)
            .with_readiness(readiness),
    );
    tracing::info!(%addr, sip = %sip_addr, backend = ?store.backend(), max_connections, "outdial listening");
    // The dispatcher saw the same stop: it stopped claiming and winds its live calls down
    // while the listener lets in-flight requests finish.
    let mut stopped = stop_rx;
    api::server::serve(listener, app, http_limits, async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    })
    .await
    .context("serving")?;
    let _ = dispatch_task.await;
    let _ = transcription_task.await;
    let _ = upkeep_task.await;
    let _ = watch_task.await;
    // After the calls are settled, so their webhooks are among what the flush sends; the
    // worker records what it sent before the database closes.
    let _ = stop_webhooks.send(());
    if let Err(err) = webhook_task.await {
        tracing::error!(error = %err, "webhook worker task failed");
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Keeps the marks deep conversation pages start from (store `pages`) up to date.
async fn mark_conversations(
    store: Arc<SqlStore>,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match store.mark_conversations(domain::Millis::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(marks = n, "conversation pages marked"),
            Err(e) => tracing::warn!(error = %e, "marking conversation pages"),
        }
    }
}

/// Removes, once a lease, the half-written batches of uploads that died on other nodes (or on
/// this one, had it lost its lease).
async fn sweep_uploads(
    store: Arc<SqlStore>,
    lease: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(lease) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = store.remove_abandoned_uploads(false).await {
            tracing::warn!(error = %e, "sweeping abandoned batch uploads");
        }
    }
}

/// SIGTERM and SIGINT, listened for from start-up (a signal before the first listen would
/// otherwise kill the process outright).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's number.
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.int.recv() => libc::SIGINT,
        }
    }

    /// The first signal starts the graceful stop: `/readyz` answers 503 at once and `stop`
    /// turns true. The second ends the process there and then, with the shell's status for
    /// death by that signal (128 + its number).
    async fn run(
        mut self,
        stop: tokio::sync::watch::Sender<bool>,
        readiness: Arc<api::readiness::Readiness>,
    ) {
        let first = self.next().await;
        readiness.begin_stop();
        let _ = stop.send(true);
        tracing::info!(signal = first, "stopping: no new connections or calls; finishing in-flight requests and live calls (a second signal exits at once)");
        let second = self.next().await;
        tracing::warn!(signal = second, "second signal: exiting at once");
        std::process::exit(128 + second);
    }
}

async fn tenants(db: &DbArgs, cmd: TenantCommand) -> Result<()> {
    let store = open_store(db, StoreOptions::default()).await?;
    match cmd {
        TenantCommand::Create {
            name,
            max_concurrent_calls,
        } => {
            if name.trim().is_empty() {
                bail!("a tenant needs a name");
            }
            let now = Millis::now();
            let tenant = store.create_tenant(&name, now).await?;
            if let Some(max) = max_concurrent_calls.filter(|m| *m > 0) {
                let limits = TenantLimits {
                    max_concurrent_calls: Some(max),
                    ..tenant.limits.clone()
                };
                store.update_tenant_limits(tenant.id, &limits).await?;
            }
            let key = api::auth::generate_key();
            store
                .create_api_key(tenant.id, "default", &key.lookup, &key.hash, now)
                .await?;
            print(json!({"tenant_id": tenant.id.0, "name": tenant.name, "api_key": key.key}));
        }
        TenantCommand::Update {
            tenant_id,
            max_concurrent_calls,
            per_number_calls,
            per_number_window_seconds,
        } => {
            let tenant = store
                .get_tenant(TenantId(tenant_id))
                .await?
                .with_context(|| format!("no tenant {tenant_id}"))?;
            let mut limits = tenant.limits.clone();
            if let Some(max) = max_concurrent_calls {
                limits.max_concurrent_calls = (max > 0).then_some(max);
            }
            if let Some(n) = per_number_calls {
                limits.per_number_calls = n;
            }
            if let Some(s) = per_number_window_seconds {
                limits.per_number_window_seconds = s;
            }
            store.update_tenant_limits(tenant.id, &limits).await?;
            print(json!({
                "tenant_id": tenant.id.0,
                "name": tenant.name,
                "max_concurrent_calls": limits.max_concurrent_calls,
                "per_number_calls": limits.per_number_calls,
                "per_number_window_seconds": limits.per_number_window_seconds,
            }));
        }
    }
    store.close().await;
    Ok(())
}

async fn keys(db: &DbArgs, cmd: KeyCommand) -> Result<()> {
    let store = open_store(db, StoreOptions::default()).await?;
    let ensure_tenant = |id: i64| {
        let store = &store;
        async move {
            store
                .get_tenant(TenantId(id))
                .await?
                .with_context(|| format!("no tenant {id}"))
        }
    };
    match cmd {
        KeyCommand::Create { tenant, name } => {
            let tenant = ensure_tenant(tenant).await?;
            let key = api::auth::generate_key();
            let info = store
                .create_api_key(tenant.id, &name, &key.lookup, &key.hash, Millis::now())
                .await?;
            print(
                json!({"key_id": info.id.0, "tenant_id": tenant.id.0, "name": info.name, "api_key": key.key}),
            );
        }
        KeyCommand::List { tenant } => {
            let tenant = ensure_tenant(tenant).await?;
            let keys: Vec<_> = store
                .list_api_keys(tenant.id)
                .await?
                .into_iter()
                .map(|k| {
                    json!({
                        "key_id": k.id.0,
                        "name": k.name,
                        "prefix": format!("od_{}_", k.lookup),
                        "created_at": k.created_at.to_rfc3339_millis(),
                        "revoked_at": k.revoked_at.map(|t| t.to_rfc3339_millis()),
                    })
                })
                .collect();
            print(json!({"data": keys}));
        }
        KeyCommand::Revoke { tenant, key_id } => {
            let tenant = ensure_tenant(tenant).await?;
            if !store
                .revoke_api_key(tenant.id, ApiKeyId(key_id), Millis::now())
                .await?
            {
                bail!("no active key {key_id} for tenant {}", tenant.id);
            }
            print(json!({"key_id": key_id, "revoked": true}));
        }
    }
    store.close().await;
    Ok(())
}
