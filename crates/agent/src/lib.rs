//! The agent's voice. Today: text-to-speech behind a trait, with espeak-ng (Debian) as the
//! offline default, and playback of a line onto a call's outbound audio. The listening side
//! (VAD, speech-to-text, turn taking) and the brains grow here next.

pub mod tts;

pub use tts::{EspeakNg, TextToSpeech, TtsError};

use domain::telephony::{AudioFrame, FRAME_SAMPLES};
use tokio::sync::mpsc;

/// Queues `audio` (16 kHz) onto a call's outbound stream in 20 ms frames; the telephony
/// adapter paces them. Returns when the last frame is queued, or `false` if the call went away.
pub async fn play(audio: &[i16], outbound: &mpsc::Sender<AudioFrame>) -> bool {
    for chunk in audio.chunks(FRAME_SAMPLES) {
        let mut frame = chunk.to_vec();
        frame.resize(FRAME_SAMPLES, 0);
        if outbound.send(frame).await.is_err() {
            return false;
        }
    }
    true
}
