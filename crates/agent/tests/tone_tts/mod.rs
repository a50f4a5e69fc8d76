//! A stand-in voice for runtime tests that are about timing, not sound.

use agent::{TextToSpeech, TtsError};
use async_trait::async_trait;

/// 150 ms of a 300 Hz tone per word: long lines take long to play, like real speech.
pub struct ToneTts;

#[async_trait]
impl TextToSpeech for ToneTts {
    async fn synthesize(&self, text: &str, _voice: Option<&str>) -> Result<Vec<i16>, TtsError> {
        let n = text.split_whitespace().count() * 2400;
        Ok((0..n)
            .map(|i| ((i as f64 * 300.0 * std::f64::consts::TAU / 16_000.0).sin() * 8000.0) as i16)
            .collect())
    }
}
