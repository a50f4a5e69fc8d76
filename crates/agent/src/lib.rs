//! The agent's conversation: listen (earshot VAD and a sans-IO turn taker), decide (a brain:
//! the deterministic `flow` stage machine), speak (text-to-speech), with speech-to-text and
//! text-to-speech engines behind traits so offline engines are the default and cloud ones plug
//! in. [`converse`] runs one answered call.

pub mod amd;
pub mod brain;
pub mod conversation;
pub mod deepgram;
pub mod engines;
pub mod flow;
pub mod llm;
mod numerals;
pub mod opt_out;
pub mod piper;
mod sidecar;
pub mod stt;
pub mod template;
pub mod tts;
pub mod turn;
pub mod vad;
pub mod whisper;
pub mod whisper_jobs;

pub use amd::AmdConfig;
pub use brain::{Brain, BrainError, Reply};
pub use conversation::{
    converse, ConversationOutcome, EndedBy, Opening, Session, Timing, TransferPlan, TurnTiming,
    VoicemailPlan, TRANSFER_FAILED_LINE,
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
    Feed, Listening, PocketSphinx, PocketSphinxConfig, SpeechToText, StreamFeed, SttError,
    SttStream, Transcript,
};
pub use template::render;
pub use tts::{EspeakNg, TextToSpeech, TtsError};
pub use turn::{TurnConfig, TurnEvent, TurnTaker};
pub use whisper::{Whisper, WhisperConfig};
pub use whisper_jobs::{WhisperJobs, WhisperJobsConfig};

use domain::telephony::{AudioFrame, FRAME_SAMPLES};

/// The opening line, rendered: a retry context's own opening, else (for a call that continues
/// an earlier one) the agent's `retry_message`, else its `first_message`. The templates see the
/// call's parameters and, after them, the retry context's collected data. `None` when blank.
pub fn opening_line(
    agent: &domain::AgentConfig,
    parameters: &[domain::call::Parameter],
    retry: Option<&domain::call::RetryContext>,
) -> Option<String> {
    let template = match retry {
        Some(r) => r
            .retry_initial_message
            .clone()
            .or_else(|| agent.retry_message.clone())
            .or_else(|| agent.first_message.clone()),
        None => agent.first_message.clone(),
    }?;
    let collected = retry.and_then(|r| r.collected_data.as_ref());
    let (line, missing) = domain::template::render_call(&template, parameters, collected);
    for parameter in missing {
        tracing::warn!(%parameter, "template names a parameter the call does not have");
    }
    Some(line).filter(|t| !t.trim().is_empty())
}
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

#[cfg(test)]
mod tests {
    use super::*;
    use domain::call::{Parameter, RetryContext};

    #[test]
    fn a_continued_call_opens_with_its_own_line_else_the_retry_message() {
        let agent = domain::AgentConfig::from_json(
            serde_json::json!({"name": "a", "first_message": "Hello {{customer_name}}.",
                "retry_message": "Hi {{customer_name}}, about {{invoice}} again."})
            .as_object()
            .unwrap(),
        )
        .unwrap();
        let params = [Parameter {
            name: "customer_name".into(),
            value: "Rahul".into(),
        }];
        assert_eq!(
            opening_line(&agent, &params, None).as_deref(),
            Some("Hello Rahul.")
        );
        let mut retry = RetryContext {
            collected_data: serde_json::json!({"invoice": "INV-7"}).as_object().cloned(),
            ..Default::default()
        };
        assert_eq!(
            opening_line(&agent, &params, Some(&retry)).as_deref(),
            Some("Hi Rahul, about INV-7 again.")
        );
        retry.retry_initial_message = Some("Good morning {{customer_name}}.".into());
        assert_eq!(
            opening_line(&agent, &params, Some(&retry)).as_deref(),
            Some("Good morning Rahul.")
        );
    }
}
