//! The issue, end to end: a callee's "yes, I can pay by Friday" through the default local
//! engines (espeak-ng's voices and the piper voice, G.711 mu-law both ways, pocketsphinx with
//! the stage's phrases) into the flow brain. A mishearing may ask again; it may never record
//! the opposite of what was said.

mod common;

use agent::flow::{choose_route, FlowOptions};
use agent::{EspeakNg, PocketSphinx, PocketSphinxConfig, SpeechToText, TextToSpeech};
use common::voice::heard_on_the_phone;
use domain::agent::{AgentConfig, Stage};
use media::g711::{ulaw_decode_slice, ulaw_encode_slice};
use media::sinc_resample::resample;
use serde_json::json;

fn stage() -> Stage {
    let v = json!({
      "name": "collections",
      "stages": [
        { "id": "stage_ask", "say": "Can you pay it by Friday?",
          "routes": [
            { "when_any": ["yes", "sure", "okay"], "set": { "intent": "payment_promise" }, "end": true },
            { "when_any": ["no", "cannot", "can't"], "set": { "intent": "refused" }, "end": true }
          ],
          "otherwise": { "say": "Sorry, could you say that again?", "repeat": 1, "then_end": true } }
      ]
    });
    AgentConfig::from_json(v.as_object().unwrap())
        .unwrap()
        .stages[0]
        .clone()
}

/// 16 kHz speech as the agent hears it over a G.711 mu-law line.
fn over_ulaw(audio: &[i16]) -> Vec<i16> {
    let mut codes = Vec::new();
    ulaw_encode_slice(&resample(audio, 16_000, 8_000), &mut codes);
    let mut line = Vec::new();
    ulaw_decode_slice(&codes, &mut line);
    let mut heard = resample(&line, 8_000, 16_000);
    heard.extend(std::iter::repeat_n(0, 8000));
    heard
}

fn phrases(stage: &Stage) -> Vec<String> {
    stage
        .routes
        .iter()
        .flat_map(|r| r.when_any.iter().cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yes_over_the_phone_is_never_recorded_as_a_refusal() {
    let stage = stage();
    let stt = PocketSphinx::new(PocketSphinxConfig {
        sidecars: 1,
        ..Default::default()
    });
    let espeak = EspeakNg::default();
    let options = FlowOptions::default();
    // The voices and two more: espeak-ng is what pocketsphinx hears worst. A yes is
    // never recorded as refused (route 1), nor a no as a promise (route 0).
    let cases = [
        ("yes, I can pay by Friday", 1, "a yes recorded as refused"),
        ("no, I cannot pay", 0, "a no recorded as a promise"),
    ];
    for (sentence, opposite, harm) in cases {
        for voice in ["en-us", "en+m3", "en-gb", "en+f2"] {
            let said = espeak.synthesize(sentence, Some(voice)).await.unwrap();
            let heard = stt
                .transcribe(&over_ulaw(&said), &phrases(&stage))
                .await
                .unwrap();
            let route = choose_route(&stage, &heard, &options);
            eprintln!("{voice}: {heard:?} -> {route:?}");
            assert_ne!(route, Ok(opposite), "{voice}: {harm}: {heard:?}");
        }
    }
    // Natural speech is understood, not just kept safe.
    let dir = tempfile::tempdir().unwrap();
    let mut natural = heard_on_the_phone("Yes, I can pay by Friday.", dir.path());
    natural.extend(std::iter::repeat_n(0, 8000));
    let heard = stt.transcribe(&natural, &phrases(&stage)).await.unwrap();
    assert_eq!(choose_route(&stage, &heard, &options), Ok(0), "{heard:?}");
}
