//! The speech engines as the binary configures, installs and checks them: which interpreter the
//! Python sidecars run on (the project's virtual environment by default, never whatever
//! `python3` is first on PATH), which engines the configured agents need, `outdial setup`, and the
//! periodic check behind `/readyz` and `outdial_engine_ready`.

use agent::engines::{PIPER, POCKETSPHINX, WHISPER};
use agent::{EngineKind, EngineRegistry, PythonEngine, TextToSpeech};
use anyhow::{bail, Context, Result};
use api::readiness::{EngineState, Readiness};
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use store::{LiveAgent, SqlStore};

/// Where the local speech engines live, shared by `serve`, `setup` and `doctor` so all three
/// mean the same interpreter.
#[derive(Args, Clone, Debug)]
pub struct EngineArgs {
    /// The virtual environment `outdial setup` installs the local speech engines into; their
    /// sidecars run on its `bin/python3`.
    #[arg(long, env = "OUTDIAL_VENV", default_value = ".venv")]
    pub venv: PathBuf,
    /// An interpreter you manage yourself for the engine sidecars (instead of `--venv`), e.g.
    /// `/opt/speech/bin/python3`; it needs the engines' pip packages (`outdial doctor` lists them).
    #[arg(long, env = "OUTDIAL_PYTHON")]
    pub python: Option<PathBuf>,
    /// Engines whose absence leaves the node ready (calls go on without them, degraded):
    /// engine names (pocketsphinx, espeak-ng, piper, whisper, deepgram) or kinds (stt, tts),
    /// comma-separated.
    #[arg(long, env = "OUTDIAL_OPTIONAL_ENGINES", value_delimiter = ',',
        value_parser = parse_optional)]
    pub optional_engines: Vec<Optional>,
    /// piper processes (each holds the voice, ~150-200 MB).
    #[arg(long, env = "OUTDIAL_PIPER_PROCESSES", default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(1..=16))]
    pub piper_processes: u8,
    /// faster-whisper processes (each holds the model, ~150 MB).
    #[arg(long, env = "OUTDIAL_WHISPER_PROCESSES", default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(1..=16))]
    pub whisper_processes: u8,
    /// The recogniser of agents whose `transcriber.engine` is `local` (the default): whisper
    /// (chosen by `outdial-bench understand`: twice the replies understood and no opposite
    /// intent where pocketsphinx recorded some) or pocketsphinx (lighter, and faster per turn).
    #[arg(long, env = "OUTDIAL_LOCAL_TRANSCRIBER", value_enum, default_value_t = LocalTranscriber::Whisper)]
    pub local_transcriber: LocalTranscriber,
    /// Deepgram's API key; with it agents may use `transcriber.engine: "deepgram"`. A
    /// credential: give it in the environment or the config file, not on a command line
    /// others can read.
    #[arg(long, env = "OUTDIAL_DEEPGRAM_API_KEY", hide_env_values = true)]
    pub deepgram_api_key: Option<String>,
    /// Deepgram's streaming endpoint, or a compatible server's.
    #[arg(long, env = "OUTDIAL_DEEPGRAM_URL", default_value = agent::deepgram::DEFAULT_URL)]
    pub deepgram_url: String,
    /// Deepgram's model.
    #[arg(long, env = "OUTDIAL_DEEPGRAM_MODEL", default_value = agent::deepgram::DEFAULT_MODEL)]
    pub deepgram_model: String,
}

/// The engines `transcriber.engine: "local"` may mean.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalTranscriber {
    Whisper,
    Pocketsphinx,
}

impl LocalTranscriber {
    pub fn engine(self) -> Engine {
        match self {
            Self::Whisper => Engine::Whisper,
            Self::Pocketsphinx => Engine::Pocketsphinx,
        }
    }

    /// The node's default ears, from `registry` (the instance the engine watch warms).
    pub fn recogniser(self, registry: &EngineRegistry) -> Arc<dyn agent::SpeechToText> {
        match self {
            Self::Whisper => registry.whisper(),
            Self::Pocketsphinx => registry.pocketsphinx(),
        }
    }
}

/// `serve`'s engine settings: [`EngineArgs`] and how often the missing ones are tried again.
#[derive(Args, Clone, Debug)]
pub struct ServeEngineArgs {
    #[command(flatten)]
    pub engines: EngineArgs,
    /// Seconds between checks of the engines the agents need that are not ready yet (installing
    /// one makes the node ready without a restart).
    #[arg(long, env = "OUTDIAL_ENGINE_CHECK_SECONDS", default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub engine_check_seconds: u64,
}

/// An engine, or a kind of engine, the operator declared optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Optional {
    Kind(EngineKind),
    Engine(Engine),
    /// Whatever `transcriber.engine: "local"` means on the node (`--local-transcriber`).
    Local,
}

fn parse_optional(s: &str) -> Result<Optional, String> {
    let s = s.trim();
    for kind in [EngineKind::SpeechToText, EngineKind::TextToSpeech] {
        if s == kind.short() {
            return Ok(Optional::Kind(kind));
        }
    }
    if s == "local" {
        return Ok(Optional::Local);
    }
    Engine::from_name(s).map(Optional::Engine).ok_or_else(|| {
        format!("`{s}`: one of stt, tts, local, pocketsphinx, espeak-ng, piper, whisper, deepgram")
    })
}

/// Every engine an agent can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Engine {
    Pocketsphinx,
    EspeakNg,
    Piper,
    Whisper,
    Deepgram,
}

impl Engine {
    pub const ALL: [Engine; 5] = [
        Engine::Pocketsphinx,
        Engine::EspeakNg,
        Engine::Piper,
        Engine::Whisper,
        Engine::Deepgram,
    ];

    /// The node's defaults: every agent that names no other engine hears with `local` and
    /// speaks with espeak-ng.
    pub fn defaults(local: Engine) -> [Engine; 2] {
        [local, Engine::EspeakNg]
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pocketsphinx => POCKETSPHINX.name,
            Self::EspeakNg => "espeak-ng",
            Self::Piper => PIPER.name,
            Self::Whisper => WHISPER.name,
            Self::Deepgram => "deepgram",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == s)
    }

    pub fn kind(self) -> EngineKind {
        match self {
            Self::Pocketsphinx | Self::Whisper | Self::Deepgram => EngineKind::SpeechToText,
            Self::EspeakNg | Self::Piper => EngineKind::TextToSpeech,
        }
    }

    pub fn python(self) -> Option<PythonEngine> {
        match self {
            Self::Pocketsphinx => Some(POCKETSPHINX),
            Self::Piper => Some(PIPER),
            Self::Whisper => Some(WHISPER),
            Self::EspeakNg | Self::Deepgram => None,
        }
    }

    /// The engines one agent's configuration uses (its voice and its ears); `local` is what
    /// `transcriber.engine: "local"` means on this node.
    pub fn of_agent(config: &domain::AgentConfig, local: Engine) -> [Engine; 2] {
        let ears = Engine::from_name(&config.transcriber.engine).unwrap_or(local);
        let voice = Engine::from_name(&config.voice.engine).unwrap_or(Engine::EspeakNg);
        [ears, voice]
    }
}

/// The engines the node needs, each with the live agents that use it (the defaults are needed
/// with or without agents: an agent created later uses them).
pub fn needs(agents: &[LiveAgent], local: Engine) -> BTreeMap<Engine, Vec<&LiveAgent>> {
    let mut needs: BTreeMap<Engine, Vec<&LiveAgent>> = Engine::defaults(local)
        .into_iter()
        .map(|e| (e, Vec::new()))
        .collect();
    for agent in agents {
        for engine in Engine::of_agent(&agent.config, local) {
            needs.entry(engine).or_default().push(agent);
        }
    }
    needs
}

/// The interpreter the sidecars run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interpreter {
    /// The project's virtual environment (absolute), which `outdial setup` fills.
    Venv(PathBuf),
    /// One the operator manages.
    Own(PathBuf),
}

impl Interpreter {
    pub fn python(&self) -> PathBuf {
        match self {
            Self::Venv(dir) => dir.join("bin").join("python3"),
            Self::Own(p) => p.clone(),
        }
    }

    /// The command that installs `engine` for this interpreter.
    pub fn fix(&self, engine: PythonEngine) -> String {
        match self {
            Self::Venv(dir) => format!("{} setup --venv {}", program(), dir.display()),
            Self::Own(python) => format!(
                "{} -m pip install {}",
                python.display(),
                engine.packages.join(" ")
            ),
        }
    }
}

/// This binary as it was invoked (`outdial`, or `target/release/outdial` under cargo), so a
/// printed fix can be pasted as it is.
pub fn program() -> String {
    std::env::args()
        .next()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "outdial".into())
}

/// [`EngineArgs`] checked and resolved at start.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub interpreter: Interpreter,
    /// The interpreter as the sidecar configuration takes it.
    pub python: String,
    pub optional: Vec<Optional>,
    pub piper_processes: usize,
    pub whisper_processes: usize,
    /// What `transcriber.engine: "local"` means here.
    pub local: LocalTranscriber,
    pub deepgram: Option<agent::DeepgramConfig>,
}

impl EngineArgs {
    pub fn resolve(&self) -> Result<EngineConfig> {
        let interpreter = match &self.python {
            Some(p) => Interpreter::Own(p.clone()),
            None => Interpreter::Venv(
                std::path::absolute(&self.venv)
                    .with_context(|| format!("--venv {}", self.venv.display()))?,
            ),
        };
        let python = interpreter
            .python()
            .to_str()
            .context("the engines' interpreter path must be UTF-8 (--venv / --python)")?
            .to_string();
        Ok(EngineConfig {
            interpreter,
            python,
            optional: self.optional_engines.clone(),
            piper_processes: usize::from(self.piper_processes),
            whisper_processes: usize::from(self.whisper_processes),
            local: self.local_transcriber,
            deepgram: self
                .deepgram_api_key
                .as_deref()
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|key| agent::DeepgramConfig {
                    url: self.deepgram_url.trim().to_string(),
                    model: self.deepgram_model.trim().to_string(),
                    ..agent::DeepgramConfig::new(key)
                }),
        })
    }
}

impl EngineConfig {
    pub fn is_optional(&self, engine: Engine) -> bool {
        self.optional.iter().any(|o| match o {
            Optional::Kind(k) => *k == engine.kind(),
            Optional::Engine(e) => *e == engine,
            Optional::Local => self.local.engine() == engine,
        })
    }

    /// The node's registry of agent-selectable engines, on this interpreter.
    pub fn registry(&self) -> EngineRegistry {
        let sidecar = |base: agent::SidecarConfig, processes: usize| agent::SidecarConfig {
            python: self.python.clone(),
            processes,
            ..base
        };
        EngineRegistry::new(
            sidecar(agent::Piper::config(), self.piper_processes),
            sidecar(agent::Whisper::config(), self.whisper_processes),
            self.deepgram.clone(),
        )
    }
}

/// Why an engine is not usable, and what to run about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

/// Whether `engine`'s modules import on `python`: quick, and quiet (a sidecar that cannot
/// import would print a traceback for every process of the pool).
pub async fn imports(python: &str, engine: PythonEngine) -> Result<(), String> {
    let run = tokio::process::Command::new(python)
        .args(["-c", &format!("import {}", engine.imports)])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(120), run).await {
        Err(_) => return Err(format!("importing {} took over 2 minutes", engine.imports)),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("no interpreter at {python}"))
        }
        Ok(Err(e)) => return Err(format!("{python}: {e}")),
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
    Err(format!(
        "{python} cannot import {}: {}",
        engine.imports,
        last.unwrap_or("it exited with an error").trim()
    ))
}

/// The engines serve's calls use, checked at start and then every `interval`: an engine the
/// agents need that is not ready yet is tried again (so installing it later makes the node ready
/// without a restart); one that is ready stays ready (a sidecar that dies is replaced on demand).
pub struct Watch {
    pub store: Arc<SqlStore>,
    pub readiness: Arc<Readiness>,
    pub config: EngineConfig,
    pub tts: Arc<agent::EspeakNg>,
    pub registry: &'static EngineRegistry,
    /// The last problem logged per engine, so a failing engine is logged when it changes, not
    /// at every check.
    logged: std::sync::Mutex<BTreeMap<Engine, String>>,
}

impl Watch {
    pub fn new(
        store: Arc<SqlStore>,
        readiness: Arc<Readiness>,
        config: EngineConfig,
        tts: Arc<agent::EspeakNg>,
        registry: &'static EngineRegistry,
    ) -> Self {
        Self {
            store,
            readiness,
            config,
            tts,
            registry,
            logged: Default::default(),
        }
    }

    async fn start(&self, engine: Engine) -> Result<(), Problem> {
        if let Some(py) = engine.python() {
            imports(&self.config.python, py)
                .await
                .map_err(|what| Problem {
                    what,
                    fix: self.config.interpreter.fix(py),
                })?;
        }
        let failed = |what: String| Problem {
            what,
            fix: "see the log above; `outdial doctor` checks the whole machine".into(),
        };
        match engine {
            // Starting the pools now also keeps model loads off the first call's first turn.
            Engine::Pocketsphinx => self
                .registry
                .pocketsphinx()
                .warm_up()
                .await
                .map_err(|e| failed(e.to_string())),
            Engine::Piper => self
                .registry
                .piper()
                .warm_up()
                .await
                .map_err(|e| failed(e.to_string())),
            Engine::Whisper => self
                .registry
                .whisper()
                .warm_up()
                .await
                .map_err(|e| failed(e.to_string())),
            Engine::EspeakNg => espeak_speaks(&self.tts).await,
            Engine::Deepgram => deepgram_configured(self.config.deepgram.is_some()),
        }
    }

    /// One round: which engines the live agents need, and a start of each needed one that is
    /// not ready.
    pub async fn check(&self) {
        let agents = match self.store.live_agents().await {
            Ok(a) => a,
            Err(e) => {
                // The defaults are still checked; the database's own state is /readyz's too.
                tracing::warn!(error = %e, "engine check: cannot list agents");
                Vec::new()
            }
        };
        let needed = needs(&agents, self.config.local.engine());
        for engine in Engine::ALL {
            let required = needed.contains_key(&engine);
            let was_ready = self.readiness.get(engine.name()).is_some_and(|s| s.ready);
            let ready = if was_ready || !required {
                was_ready
            } else {
                match self.start(engine).await {
                    Ok(()) => {
                        if self.logged_problem(engine, None) {
                            tracing::info!(engine = engine.name(), "engine ready");
                        }
                        true
                    }
                    Err(p) => {
                        if self.logged_problem(engine, Some(&p.what)) {
                            tracing::warn!(
                                engine = engine.name(),
                                kind = engine.kind().describe(),
                                problem = %p.what,
                                fix = %p.fix,
                                optional = self.config.is_optional(engine),
                                "a speech engine the agents need cannot start"
                            );
                        }
                        false
                    }
                }
            };
            self.readiness.set(
                engine.name(),
                EngineState {
                    kind: engine.kind().describe(),
                    required,
                    optional: self.config.is_optional(engine),
                    ready,
                },
            );
        }
    }

    /// Records `problem` as the last one logged for `engine`; true when it differs from the
    /// one before (so it is worth a log line).
    fn logged_problem(&self, engine: Engine, problem: Option<&str>) -> bool {
        let Ok(mut logged) = self.logged.lock() else {
            return true;
        };
        let before = match problem {
            Some(p) => logged.insert(engine, p.to_string()),
            None => logged.remove(&engine),
        };
        before.as_deref() != problem
    }

    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => self.check().await,
                _ = stop.changed() => return,
            }
        }
    }
}

pub async fn espeak_speaks(tts: &agent::EspeakNg) -> Result<(), Problem> {
    match tts.synthesize("Ready.", None).await {
        Ok(audio) if !audio.is_empty() => Ok(()),
        Ok(_) => Err(Problem {
            what: format!("{} produced no audio", tts.program),
            fix: "apt-get install -y espeak-ng".into(),
        }),
        Err(e) => Err(Problem {
            what: e.to_string(),
            fix: "apt-get install -y espeak-ng".into(),
        }),
    }
}

pub fn deepgram_configured(configured: bool) -> Result<(), Problem> {
    if configured {
        Ok(())
    } else {
        Err(Problem {
            what: "OUTDIAL_DEEPGRAM_API_KEY is not set (its agents hear with pocketsphinx)".into(),
            fix: "export OUTDIAL_DEEPGRAM_API_KEY=<your key>".into(),
        })
    }
}

/// `outdial setup`: the local speech engines, into the virtual environment (or the operator's
/// interpreter).
#[derive(Args)]
pub struct SetupArgs {
    #[command(flatten)]
    pub engines: EngineArgs,
    /// Every local engine (pocketsphinx, piper, whisper), not only those the node's default and
    /// the configured agents need.
    #[arg(long)]
    pub all: bool,
    /// The interpreter that creates the virtual environment.
    #[arg(long, env = "OUTDIAL_BASE_PYTHON", default_value = "python3")]
    pub base_python: PathBuf,
}

/// Creates the virtual environment if it is missing, then pip-installs the engines that do not
/// import yet. An engine already installed costs one import check, so a second run is quick.
/// pip's own settings apply (`PIP_INDEX_URL`, `PIP_FIND_LINKS`, `PIP_NO_INDEX` for an offline
/// wheel directory).
pub async fn setup(
    engines: &[PythonEngine],
    config: &EngineConfig,
    base_python: &Path,
) -> Result<()> {
    if let Interpreter::Venv(dir) = &config.interpreter {
        if !config.interpreter.python().exists() {
            eprintln!("creating the virtual environment {}", dir.display());
            let out = tokio::process::Command::new(base_python)
                .arg("-m")
                .arg("venv")
                .arg(dir)
                .output()
                .await
                .with_context(|| format!("running {}", base_python.display()))?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                // Debian's python3 keeps venv's pip bootstrap in a separate package.
                let hint = if stderr.contains("ensurepip") {
                    "\nfix: apt-get install -y python3-venv"
                } else {
                    ""
                };
                bail!(
                    "{} -m venv {} failed:\n{}{hint}",
                    base_python.display(),
                    dir.display(),
                    stderr.trim()
                );
            }
        }
    }
    let mut packages = Vec::new();
    for engine in engines {
        match imports(&config.python, *engine).await {
            Ok(()) => eprintln!("ok       {} (installed)", engine.name),
            Err(_) => {
                eprintln!("install  {}: {}", engine.name, engine.packages.join(" "));
                packages.extend_from_slice(engine.packages);
            }
        }
    }
    if packages.is_empty() {
        return Ok(());
    }
    let status = tokio::process::Command::new(&config.python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
        .args(&packages)
        .status()
        .await
        .with_context(|| format!("running {} -m pip", config.python))?;
    if !status.success() {
        bail!(
            "{} -m pip install {} failed",
            config.python,
            packages.join(" ")
        );
    }
    for engine in engines {
        // An install that "succeeded" but cannot be imported fails here, not as a deaf agent.
        imports(&config.python, *engine)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    eprintln!("the speech engines are installed for {}", config.python);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn live(id: i64, config: serde_json::Value) -> LiveAgent {
        LiveAgent {
            tenant: domain::TenantId(1),
            id: domain::AgentId(id),
            config: domain::AgentConfig::from_json(config.as_object().unwrap()).unwrap(),
        }
    }

    #[test]
    fn the_defaults_are_needed_without_agents_and_others_only_when_named() {
        let none = needs(&[], Engine::Whisper);
        assert_eq!(
            none.keys().copied().collect::<Vec<_>>(),
            [Engine::EspeakNg, Engine::Whisper]
        );
        // With pocketsphinx as `local`, an agent of the defaults needs it, not whisper.
        let plain = [live(1, json!({"name": "a"}))];
        let pocketsphinx = needs(&plain, Engine::Pocketsphinx);
        assert_eq!(
            pocketsphinx.keys().copied().collect::<Vec<_>>(),
            [Engine::Pocketsphinx, Engine::EspeakNg]
        );
        let agents = [
            live(1, json!({"name": "a"})),
            live(
                2,
                json!({"name": "b", "voice": {"engine": "piper"},
                "transcriber": {"engine": "whisper"}}),
            ),
        ];
        let some = needs(&agents, Engine::Whisper);
        assert_eq!(
            some.keys().copied().collect::<Vec<_>>(),
            [Engine::EspeakNg, Engine::Piper, Engine::Whisper]
        );
        // The agent of the defaults and the one that names whisper.
        assert_eq!(some[&Engine::Whisper].len(), 2);
        assert_eq!(some[&Engine::Piper][0].id, domain::AgentId(2));
    }

    #[test]
    fn optional_engines_by_name_or_kind() {
        assert_eq!(
            parse_optional("stt"),
            Ok(Optional::Kind(EngineKind::SpeechToText))
        );
        assert_eq!(parse_optional("local"), Ok(Optional::Local));
        assert!(parse_optional("ears").is_err());
        let args = EngineArgs {
            venv: ".venv".into(),
            python: None,
            optional_engines: vec![Optional::Kind(EngineKind::SpeechToText)],
            piper_processes: 1,
            whisper_processes: 1,
            local_transcriber: LocalTranscriber::Pocketsphinx,
            deepgram_api_key: Some(" dg-key ".into()),
            deepgram_url: agent::deepgram::DEFAULT_URL.into(),
            deepgram_model: "nova-2".into(),
        };
        let config = args.resolve().unwrap();
        let deepgram = config.deepgram.as_ref().unwrap();
        assert_eq!(
            (deepgram.api_key.as_str(), deepgram.model.as_str()),
            ("dg-key", "nova-2")
        );
        assert!(config.is_optional(Engine::Whisper));
        assert!(!config.is_optional(Engine::EspeakNg));
        let local_only = EngineConfig {
            optional: vec![Optional::Local],
            ..config.clone()
        };
        assert!(local_only.is_optional(Engine::Pocketsphinx));
        assert!(!local_only.is_optional(Engine::Whisper));
        // The venv is made absolute at start, so the fix names it wherever it is pasted.
        let Interpreter::Venv(dir) = &config.interpreter else {
            panic!("{:?}", config.interpreter)
        };
        assert!(dir.is_absolute() && dir.ends_with(".venv"));
        assert!(config.python.ends_with(".venv/bin/python3"));
        assert!(config
            .interpreter
            .fix(POCKETSPHINX)
            .ends_with(&format!("setup --venv {}", dir.display())));
        let own = Interpreter::Own("/opt/py/bin/python3".into());
        assert_eq!(
            own.fix(POCKETSPHINX),
            "/opt/py/bin/python3 -m pip install pocketsphinx==5.1.1"
        );
    }
}
