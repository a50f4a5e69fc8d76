//! `outdial doctor`: everything `serve` and its configured agents need on this machine, each found
//! or missing, with the command that fixes what is missing. Exits non-zero when something
//! required is missing, so it can gate a deployment.

use crate::engines::{self, needs, Engine, EngineArgs, EngineConfig, Problem};
use crate::DbArgs;
use agent::EngineKind;
use anyhow::Result;
use clap::Args;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use store::{LiveAgent, StoreOptions};

#[derive(Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub engines: EngineArgs,
    /// The SIP address `serve` will bind (same flag and default as `serve`).
    #[arg(long, env = "OUTDIAL_SIP_LISTEN", default_value = "127.0.0.1:5060")]
    pub sip_listen: SocketAddr,
    /// The tz database's zone.tab (same flag and default as `serve`).
    #[arg(
        long,
        env = "OUTDIAL_ZONE_TAB",
        default_value = "/usr/share/zoneinfo/zone.tab"
    )]
    pub zone_tab: PathBuf,
    /// Transcription jobs `serve` transcribes at once (same flag and default as `serve`); 0
    /// leaves the transcription engine unchecked (this node transcribes nothing).
    #[arg(long, env = "OUTDIAL_TRANSCRIPTION_WORKERS", default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(0..=16))]
    pub transcription_workers: u8,
    /// Where `serve` puts the transcription model together (same flag and default as `serve`).
    #[arg(long, env = "OUTDIAL_TRANSCRIPTION_MODEL_DIR")]
    pub transcription_model_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    /// Required and missing: the exit status says so.
    Missing,
    /// Missing, but the operator declared it optional.
    Optional,
    /// Works, but not as well as it should.
    Warn,
    /// Not needed by this node's configuration.
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Missing => "MISSING",
            Self::Optional => "optional",
            Self::Warn => "warn",
            Self::Skip => "skip",
        }
    }
}

#[derive(Default)]
struct Report {
    missing: usize,
}

impl Report {
    fn line(&mut self, status: Status, subject: &str, detail: &str, fix: Option<&str>) {
        if status == Status::Missing {
            self.missing += 1;
        }
        println!("{:<9}{subject:<14}{detail}", status.label());
        if let Some(fix) =
            fix.filter(|_| matches!(status, Status::Missing | Status::Optional | Status::Warn))
        {
            println!("{:<9}{:<14}fix: {fix}", "", "");
        }
    }
}

/// Runs every check and prints one line each; `Ok(false)` when something required is missing.
pub async fn run(db: &DbArgs, args: DoctorArgs) -> Result<bool> {
    let config = args.engines.resolve()?;
    let mut report = Report::default();
    let data_dir_exists = data_dir(&mut report, &db.data_dir);
    let agents = database(&mut report, db, data_dir_exists).await;
    tz_data(&mut report, &args.zone_tab);
    sip_port(&mut report, args.sip_listen);
    speech_engines(&mut report, &config, &agents).await;
    let model_dir = args
        .transcription_model_dir
        .clone()
        .unwrap_or_else(|| db.data_dir.join("models").join("whisper-base"));
    let model_dir = data_dir_exists.then_some(model_dir);
    transcription(
        &mut report,
        &config,
        args.transcription_workers,
        model_dir,
        &agents,
    )
    .await;
    if report.missing == 0 {
        println!("everything the configured agents need is here");
    } else {
        println!(
            "{} required thing{} missing: run the fix above, then `{} doctor` again",
            report.missing,
            if report.missing == 1 { " is" } else { "s are" },
            engines::program()
        );
    }
    Ok(report.missing == 0)
}

/// Returns whether the data dir exists.
fn data_dir(report: &mut Report, dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let subject = "data dir";
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            report.line(
                Status::Missing,
                subject,
                &format!("{shown} is not a directory"),
                Some("point --data-dir / OUTDIAL_DATA_DIR at a directory"),
            );
            false
        }
        Ok(meta) => {
            // Writing is what serve does (database, recordings): try it rather than read bits.
            let probe = dir.join(format!(".outdial-doctor-{}", std::process::id()));
            let writable = std::fs::write(&probe, b"").is_ok();
            let _ = std::fs::remove_file(&probe);
            let mode = meta.permissions().mode() & 0o777;
            if !writable {
                report.line(
                    Status::Missing,
                    subject,
                    &format!("{shown} is not writable by this user"),
                    Some(&format!("chown -R \"$(id -un)\" {shown}")),
                );
            } else if mode & 0o077 != 0 {
                report.line(
                    Status::Warn,
                    subject,
                    &format!(
                        "{shown} is mode {mode:o}: others may read credentials and recordings \
                         (serve makes it 700 at start)"
                    ),
                    None,
                );
            } else {
                report.line(
                    Status::Ok,
                    subject,
                    &format!("{shown} (mode {mode:o}, writable)"),
                    None,
                );
            }
            true
        }
        Err(_) => {
            let parent = dir
                .ancestors()
                .skip(1)
                .find(|p| p.as_os_str().is_empty() || p.exists())
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        p
                    }
                })
                .unwrap_or(Path::new("/"));
            if writable(parent) {
                report.line(
                    Status::Ok,
                    subject,
                    &format!("{shown} does not exist yet; serve creates it (mode 700)"),
                    None,
                );
            } else {
                report.line(
                    Status::Missing,
                    subject,
                    &format!(
                        "{shown} does not exist and {} is not writable",
                        parent.display()
                    ),
                    Some(&format!("sudo install -d -m 700 -o \"$(id -un)\" {shown}")),
                );
            }
            false
        }
    }
}

fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access only reads the NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// The database, and the agents it holds (what the engines must serve).
async fn database(report: &mut Report, db: &DbArgs, data_dir_exists: bool) -> Vec<LiveAgent> {
    let subject = "database";
    if db.database_url.is_none() && !data_dir_exists {
        report.line(
            Status::Ok,
            subject,
            "SQLite in the data dir, created at first start (no agents yet)",
            None,
        );
        return Vec::new();
    }
    let fix = if db
        .database_url
        .as_deref()
        .is_some_and(|u| u.starts_with("postgres"))
    {
        "check OUTDIAL_DATABASE_URL and that PostgreSQL runs \
         (pg_ctlcluster --skip-systemctl-redirect <version> main start)"
    } else {
        "check --data-dir / OUTDIAL_DATA_DIR (the SQLite file is outdial.db in it)"
    };
    let store = match crate::open_store(db, StoreOptions::default()).await {
        Ok(s) => s,
        Err(e) => {
            report.line(
                Status::Missing,
                subject,
                &format!("cannot open: {e:#}"),
                Some(fix),
            );
            return Vec::new();
        }
    };
    let agents = store.live_agents().await;
    let backend = match store.backend() {
        store::Backend::Sqlite => "SQLite",
        store::Backend::Postgres => "PostgreSQL",
    };
    store.close().await;
    match agents {
        Ok(agents) => {
            report.line(
                Status::Ok,
                subject,
                &format!(
                    "{backend}, reachable ({} live agent{})",
                    agents.len(),
                    if agents.len() == 1 { "" } else { "s" }
                ),
                None,
            );
            agents
        }
        Err(e) => {
            report.line(
                Status::Missing,
                subject,
                &format!("{backend} opened but unreadable: {e}"),
                Some(fix),
            );
            Vec::new()
        }
    }
}

fn tz_data(report: &mut Report, zone_tab: &Path) {
    let countries = std::fs::read_to_string(zone_tab)
        .map(|t| {
            t.lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .count()
        })
        .unwrap_or(0);
    if countries > 0 {
        report.line(
            Status::Ok,
            "tz data",
            &format!(
                "{} ({countries} zones; calling windows use it)",
                zone_tab.display()
            ),
            None,
        );
    } else {
        report.line(
            Status::Missing,
            "tz data",
            &format!(
                "{} is missing or empty: calls under a calling window would fail",
                zone_tab.display()
            ),
            Some("apt-get install -y tzdata"),
        );
    }
}

fn sip_port(report: &mut Report, addr: SocketAddr) {
    match std::net::UdpSocket::bind(addr) {
        Ok(_) => report.line(
            Status::Ok,
            "SIP port",
            &format!("{addr}/udp can be bound"),
            None,
        ),
        // The doctor is also run beside a live node, whose own socket this is; only the
        // operator knows whether it is.
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => report.line(
            Status::Warn,
            "SIP port",
            &format!(
                "{addr}/udp is in use: fine if this node's `outdial serve` holds it; otherwise \
                 stop what does or choose another --sip-listen / OUTDIAL_SIP_LISTEN"
            ),
            None,
        ),
        Err(e) => report.line(
            Status::Missing,
            "SIP port",
            &format!("{addr}/udp: {e}"),
            Some(
                "stop what holds it (another `outdial serve`?) or choose another with \
                 --sip-listen / OUTDIAL_SIP_LISTEN",
            ),
        ),
    }
}

/// Which languages and agents use `engine`, for its line.
fn users(engine: Engine, local: Engine, agents: &[&LiveAgent]) -> String {
    let default = Engine::defaults(local).contains(&engine);
    let kind = engine.kind().describe();
    if agents.is_empty() {
        return format!("{kind}, the node's default (no agent uses it yet)");
    }
    let mut languages: Vec<&str> = agents.iter().map(|a| a.config.language.as_str()).collect();
    languages.sort_unstable();
    languages.dedup();
    let ids: Vec<String> = agents.iter().map(|a| a.id.0.to_string()).collect();
    format!(
        "{kind}{} for {}: agent{} {}",
        if default { ", the node's default," } else { "" },
        languages.join(", "),
        if ids.len() == 1 { "" } else { "s" },
        ids.join(", ")
    )
}

async fn check_engine(config: &EngineConfig, engine: Engine) -> Result<(), Problem> {
    let failed = |what: String, fix: &str| Problem {
        what,
        fix: fix.to_string(),
    };
    if let Some(py) = engine.python() {
        let fix = config.interpreter.fix(py);
        engines::imports(&config.python, py)
            .await
            .map_err(|what| failed(what, &fix))?;
        // Importing is not loading: start one real sidecar, as serve would.
        let started = match engine {
            Engine::Pocketsphinx => agent::PocketSphinx::new(agent::PocketSphinxConfig {
                python: config.python.clone(),
                sidecars: 1,
                ..Default::default()
            })
            .warm_up()
            .await
            .map_err(|e| e.to_string()),
            Engine::Piper => config
                .registry()
                .piper()
                .warm_up()
                .await
                .map_err(|e| e.to_string()),
            _ => config
                .registry()
                .whisper()
                .warm_up()
                .await
                .map_err(|e| e.to_string()),
        };
        return started.map_err(|e| failed(format!("installed but does not start: {e}"), &fix));
    }
    match engine {
        Engine::EspeakNg => engines::espeak_speaks(&agent::EspeakNg::default()).await,
        _ => engines::deepgram_configured(config.deepgram.is_some()),
    }
}

async fn speech_engines(report: &mut Report, config: &EngineConfig, agents: &[LiveAgent]) {
    let needed = needs(agents, config.local.engine());
    for engine in Engine::ALL {
        let subject = engine.name();
        let Some(users_of) = needed.get(&engine) else {
            report.line(
                Status::Skip,
                subject,
                &format!("{}: no agent uses it", engine.kind().describe()),
                None,
            );
            continue;
        };
        let detail = users(engine, config.local.engine(), users_of);
        match check_engine(config, engine).await {
            Ok(()) => report.line(Status::Ok, subject, &detail, None),
            Err(p) => {
                let status = if config.is_optional(engine) {
                    Status::Optional
                } else {
                    Status::Missing
                };
                report.line(
                    status,
                    subject,
                    &format!("{detail}: {}", p.what),
                    Some(&p.fix),
                );
            }
        }
        // A model for one language does not hear or speak another.
        if let Some(py) = engine.python() {
            for agent in users_of {
                let lang = agent.config.language.to_ascii_lowercase();
                let served = py
                    .languages
                    .iter()
                    .any(|l| lang == *l || lang.starts_with(&format!("{l}-")));
                if !served {
                    let verb = match engine.kind() {
                        EngineKind::SpeechToText => "hears",
                        EngineKind::TextToSpeech => "speaks",
                    };
                    report.line(
                        Status::Warn,
                        subject,
                        &format!(
                            "agent {} speaks {}, but {subject}'s model {verb} only {}",
                            agent.id.0,
                            agent.config.language,
                            py.languages
                                .iter()
                                .map(|l| format!("{l}-*"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        None,
                    );
                }
            }
        }
    }
}

/// The transcription jobs' recogniser (Whisper base, multilingual): `POST /v1/transcription/jobs`
/// and the post-call transcripts of agents that ask for them (`post_call_transcript`). Required
/// when an agent asks for post-call transcripts; otherwise only the jobs API needs it, and its
/// absence is a warning (jobs would fail, calls would not). `model_dir`: where serve puts the
/// model together; `None` when the data dir does not exist yet (then only the packages are
/// checked, so the doctor does not create the data dir).
async fn transcription(
    report: &mut Report,
    config: &EngineConfig,
    workers: u8,
    model_dir: Option<PathBuf>,
    agents: &[LiveAgent],
) {
    let subject = "transcription";
    let engine = agent::engines::WHISPER_JOBS;
    let asking: Vec<String> = agents
        .iter()
        .filter(|a| a.config.post_call_transcript)
        .map(|a| a.id.0.to_string())
        .collect();
    let uses = if asking.is_empty() {
        "transcription jobs (no agent asks for post-call transcripts)".to_string()
    } else {
        format!(
            "transcription jobs and the post-call transcripts of agent{} {}",
            if asking.len() == 1 { "" } else { "s" },
            asking.join(", ")
        )
    };
    if workers == 0 {
        report.line(
            Status::Skip,
            subject,
            &format!(
                "{}: this node transcribes none (--transcription-workers 0)",
                engine.name
            ),
            None,
        );
        return;
    }
    // Without an agent that needs it, `setup` installs it only when asked for everything.
    let fix = match (&config.interpreter, asking.is_empty()) {
        (engines::Interpreter::Venv(dir), true) => format!(
            "{} setup --all --venv {}",
            engines::program(),
            dir.display()
        ),
        (interpreter, _) => interpreter.fix(engine),
    };
    let status = if asking.is_empty() {
        Status::Warn
    } else {
        Status::Missing
    };
    if let Err(what) = engines::imports(&config.python, engine).await {
        report.line(
            status,
            subject,
            &format!("{} for {uses}: {what}", engine.name),
            Some(&fix),
        );
        return;
    }
    let Some(model_dir) = model_dir else {
        report.line(
            Status::Ok,
            subject,
            &format!(
                "{} for {uses}: installed (serve puts the model together at its first start)",
                engine.name
            ),
            None,
        );
        return;
    };
    // Importing is not loading: put the model together and load it, as serve does.
    let recogniser = agent::WhisperJobs::new(agent::WhisperJobsConfig {
        sidecar: agent::SidecarConfig {
            python: config.python.clone(),
            processes: 1,
            ..agent::WhisperJobsConfig::default().sidecar
        },
        model_dir: Some(model_dir.clone()),
        ..Default::default()
    });
    match recogniser.warm_up().await {
        Ok(()) => report.line(
            Status::Ok,
            subject,
            &format!(
                "{} for {uses} (model in {})",
                engine.name,
                model_dir.display()
            ),
            None,
        ),
        Err(e) => report.line(
            status,
            subject,
            &format!(
                "{} for {uses}: installed but does not start: {e}",
                engine.name
            ),
            Some(&fix),
        ),
    }
}
