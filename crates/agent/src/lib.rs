//! The agent's conversation: listen (earshot VAD and a sans-IO turn taker), decide (a brain:
//! the deterministic `flow` stage machine), speak (text-to-speech), with speech-to-text and
//! text-to-speech engines behind traits so offline engines are the default and cloud ones plug
//! in. [`converse`] runs one answered call.

pub mod brain;
pub mod conversation;
pub mod deepgram;
pub mod engines;
pub mod flow;
pub mod llm;
pub mod opt_out;
pub mod piper;
mod sidecar;
pub mod stt;
pub mod template;
pub mod tts;
pub mod turn;
pub mod vad;
pub mod whisper;

pub use brain::{Brain, BrainError, Reply};
pub use conversation::{
    converse, ConversationOutcome, EndedBy, Opening, Session, Timing, TurnTiming,
};
pub use deepgram::{Deepgram, DeepgramConfig};
pub use engines::{
    brain_for, engines_for, EngineKind, EngineRegistry, LlmEngine, PythonEngine, PYTHON_ENGINES,
};
pub use flow::{FlowBrain, FlowOptions};
pub use llm::{LlmBrain, LlmOptions};
pub use piper::{Piper, PiperConfig};
pub use sidecar::SidecarConfig;
pub use stt::{
    Feed, PocketSphinx, PocketSphinxConfig, SpeechToText, StreamFeed, SttError, SttStream,
    Transcript,
};
pub use template::render;
pub use tts::{EspeakNg, TextToSpeech, TtsError};
pub use turn::{TurnConfig, TurnEvent, TurnTaker};
pub use whisper::{Whisper, WhisperConfig};

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
