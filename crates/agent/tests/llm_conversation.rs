//! A whole conversation run by the llm brain that `brain_for` picks for a `"type": "llm"` agent,
//! against the recorded chat completions server on loopback, in real time (the HTTP exchange is
//! real, so tokio's paused clock cannot be used): the caller's speech (espeak-ng) is heard by
//! the real VAD, the transcription is scripted, the agent's voice is a tone per word.

mod caller;
mod llm_server;
mod tone_tts;

use agent::{
    brain_for, converse, EndedBy, EspeakNg, LlmEngine, Opening, Session, SpeechToText, SttError,
    TextToSpeech, Timing, Transcript,
};
use async_trait::async_trait;
use domain::agent::AgentConfig;
use domain::call::Parameter;
use domain::telephony::{CallControl, MediaStream};
use llm_server::{fixture, serve, Answer};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tone_tts::ToneTts;

struct ScriptedStt(&'static str);

#[async_trait]
impl SpeechToText for ScriptedStt {
    async fn transcribe(
        &self,
        _audio: &[i16],
        _phrases: &[String],
    ) -> Result<Transcript, SttError> {
        Ok(self.0.into())
    }
}

/// What the telephony side saw of one llm call.
struct Call {
    outcome: agent::ConversationOutcome,
    hung_up: bool,
    /// The longest the adapter waited to hand over an inbound frame: the conversation not
    /// taking its audio.
    longest_stall: Duration,
    requests: Vec<llm_server::Request>,
}

async fn llm_call(answer: Answer) -> Call {
    let server = serve(vec![answer]).await;
    let cfg = AgentConfig::from_json(
        json!({
          "name": "collections",
          "brain": { "type": "llm", "base_url": server.base_url, "model": "gpt-4o-mini", "api_key": "sk-test-conversation" },
          "stages": [ { "id": "stage_ask", "say": "Can you pay invoice {{invoice_id}} by Friday?" } ],
          "results": [ { "name": "intent" } ]
        })
        .as_object()
        .unwrap(),
    )
    .unwrap();
    let params = vec![Parameter {
        name: "invoice_id".into(),
        value: "INV-7".into(),
    }];
    let caller = EspeakNg::default()
        .synthesize("yes, I can pay by Friday", Some("en-us"))
        .await
        .expect("espeak-ng must be installed");
    let opening = "Hello Rahul.";
    let session = Session {
        trace_id: "llm-test".into(),
        brain: brain_for(
            &cfg,
            &params,
            None,
            &LlmEngine::new(agent::LlmOptions {
                endpoints: webhooks::ModelEndpointPolicy::parse("127.0.0.1").unwrap(),
                ..Default::default()
            }),
        ),
        tts: Arc::new(ToneTts),
        stt: Arc::new(ScriptedStt("yes i can pay by friday")),
        voice: None,
        disclosure: None,
        opening: Some(Opening {
            text: opening.into(),
            audio: ToneTts.synthesize(opening, None).await.unwrap(),
        }),
        answered_at: tokio::time::Instant::now(),
        answered_at_ms: 1_000_000,
        timing: Timing::for_agent(&cfg),
        voicemail: None,
        transfer: None,
    };
    let (in_tx, inbound) = mpsc::channel(50);
    let (outbound, mut out_rx) = mpsc::channel::<Vec<i16>>(500);
    let (control, mut ctl_rx) = mpsc::channel(8);
    // The telephony side: a frame in and a frame out every 20 ms; the caller answers after the
    // question (opening 0.3 s + question 1.05 s) and the call gives up after 12 s.
    let adapter = tokio::spawn(async move {
        let start = 2000 / 20;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut longest = Duration::ZERO;
        for n in 0..600usize {
            tick.tick().await;
            while let Ok(c) = ctl_rx.try_recv() {
                if c == CallControl::Hangup {
                    return (true, longest);
                }
            }
            let _ = out_rx.try_recv();
            let frame = caller::frame_at(&caller, n, start);
            let sent = std::time::Instant::now();
            if in_tx.send(frame).await.is_err() {
                break;
            }
            longest = longest.max(sent.elapsed());
        }
        (false, longest)
    });
    let outcome = converse(session, MediaStream::new(inbound, outbound).0, control).await;
    let (hung_up, longest_stall) = adapter.await.unwrap();
    Call {
        outcome,
        hung_up,
        longest_stall,
        requests: server.requests(),
    }
}

#[tokio::test]
async fn an_llm_agent_answers_records_the_result_and_hangs_up() {
    let Call {
        outcome,
        hung_up,
        requests: reqs,
        ..
    } = llm_call(Answer::Stream(fixture("promise_and_end.sse"))).await;
    assert!(hung_up, "the agent hung up");
    assert_eq!(outcome.ended_by, EndedBy::AgentEnded);
    let lines: Vec<(String, String)> = outcome
        .transcript
        .iter()
        .map(|t| (t.role.as_str().to_string(), t.message.clone()))
        .collect();
    assert_eq!(
        lines,
        vec![
            ("agent".into(), "Hello Rahul.".into()),
            (
                "agent".into(),
                "Can you pay invoice INV-7 by Friday?".into()
            ),
            ("human".into(), "yes i can pay by friday".into()),
            ("agent".into(), "Thank you, we will note that.".into()),
            ("agent".into(), "Goodbye.".into()),
        ]
    );
    assert_eq!(outcome.results["intent"], "payment_promise");
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].body["messages"].as_array().unwrap().last().unwrap()["content"],
        "yes i can pay by friday"
    );
}

/// A model that pauses 3 s after its first sentence: the agent says that sentence without
/// waiting for the rest, and the conversation keeps taking the line's audio meanwhile (the
/// model is asked off the audio path).
#[tokio::test]
async fn the_first_sentence_is_spoken_while_the_model_is_still_answering() {
    let body = fixture("promise_and_end.sse");
    // Just after the delta that follows "that.": the first sentence is then known complete.
    let marker = br#""content":" Goodbye""#;
    let at = body
        .windows(marker.len())
        .position(|w| w == marker)
        .and_then(|i| {
            body[i..]
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|j| i + j + 2)
        })
        .unwrap();
    let pause = Duration::from_secs(3);
    let call = llm_call(Answer::Paused(body, at, pause)).await;
    assert!(call.hung_up, "the agent hung up");
    let outcome = &call.outcome;
    assert_eq!(outcome.results["intent"], "payment_promise");
    let said: Vec<&str> = outcome
        .transcript
        .iter()
        .filter(|t| t.role.as_str() == "agent")
        .map(|t| t.message.as_str())
        .collect();
    assert_eq!(
        said[2..],
        ["Thank you, we will note that.", "Goodbye."],
        "{said:?}"
    );
    // The reply's first audio came before the model's pause was over.
    let v2v = outcome.turns[0].voice_to_voice_ms;
    assert!(
        v2v < (pause.as_millis() as u64),
        "first audio {v2v} ms after the caller stopped"
    );
    // The inbound queue holds 50 frames (1 s): a conversation waiting on the model would have
    // left the adapter blocked for about 2 s of the pause.
    assert!(
        call.longest_stall < Duration::from_millis(900),
        "the line's audio waited {:?}",
        call.longest_stall
    );
}
