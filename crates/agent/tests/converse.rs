//! `converse` driven through in-memory media channels on tokio's paused clock: fake STT and TTS
//! (instant, scripted), real earshot VAD on espeak-ng speech as the caller.

mod caller;
#[path = "common/detector.rs"]
mod detector;
mod tone_tts;

use agent::{
    converse, ConversationOutcome, EndedBy, EspeakNg, FlowBrain, Opening, Session, SpeechToText,
    SttError, TextToSpeech, Timing, Transcript, VoicemailPlan,
};
use async_trait::async_trait;
use domain::agent::AgentConfig;
use domain::call::{AnsweredBy, Parameter};
use domain::telephony::{CallControl, MediaStream};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tone_tts::ToneTts;

/// Hears what the script says, and records the phrases it was offered.
struct ScriptedStt {
    text: String,
    phrases: Mutex<Vec<Vec<String>>>,
}

#[async_trait]
impl SpeechToText for ScriptedStt {
    async fn transcribe(&self, _audio: &[i16], phrases: &[String]) -> Result<Transcript, SttError> {
        if let Ok(mut p) = self.phrases.lock() {
            p.push(phrases.to_vec());
        }
        Ok(self.text.clone().into())
    }
}

fn agent() -> AgentConfig {
    let v = json!({
      "name": "collections",
      "stages": [
        { "id": "stage_ask", "say": "Can you pay it by Friday?",
          "routes": [
            { "when_any": ["yes", "sure", "okay"], "set": { "intent": "payment_promise" },
              "say": "Thank you, we will note that. Goodbye.", "end": true }
          ],
          "otherwise": { "say": "Sorry, could you say that again?", "repeat": 1, "then_end": true } }
      ]
    });
    AgentConfig::from_json(v.as_object().unwrap()).unwrap()
}

async fn caller_voice() -> Vec<i16> {
    EspeakNg::default()
        .synthesize("yes, I can pay by Friday", Some("en-us"))
        .await
        .expect("espeak-ng must be installed")
}

struct Run {
    outcome: ConversationOutcome,
    controls: Vec<(Duration, CallControl)>,
    /// When each non-silent agent frame was played, from the answer.
    agent_audio: Vec<Duration>,
}

/// Plays `caller` (16 kHz) starting `caller_at` after the answer, silence around it, for at
/// most `call_for`; the callee hangs up then (if the agent has not).
async fn run(
    opening: &str,
    caller: Vec<i16>,
    caller_at: Duration,
    call_for: Duration,
    heard: &str,
) -> Run {
    run_with(opening, caller, caller_at, call_for, heard, None).await
}

/// `run` with answering-machine detection as `voicemail` says.
async fn run_with(
    opening: &str,
    caller: Vec<i16>,
    caller_at: Duration,
    call_for: Duration,
    heard: &str,
    voicemail: Option<VoicemailPlan>,
) -> Run {
    let line = Line {
        voicemail,
        ..Line::default()
    };
    run_on(opening, caller, caller_at, call_for, heard, line).await
}

/// What the line does beside the caller's audio.
#[derive(Default)]
struct Line {
    voicemail: Option<VoicemailPlan>,
    /// The callee holds the call from the first to the second moment (from the answer).
    hold: Option<(Duration, Duration)>,
    /// The call's time limit, if not `Timing::default()`'s.
    max_duration: Option<Duration>,
}

async fn run_on(
    opening: &str,
    caller: Vec<i16>,
    caller_at: Duration,
    call_for: Duration,
    heard: &str,
    line: Line,
) -> Run {
    let Line {
        voicemail,
        hold,
        max_duration,
    } = line;
    tokio::time::pause();
    let (in_tx, inbound) = mpsc::channel(50);
    let (outbound, mut out_rx) = mpsc::channel::<Vec<i16>>(500);
    let (control, mut ctl_rx) = mpsc::channel(8);
    let answered = Instant::now();
    let opening_audio = ToneTts.synthesize(opening, None).await.unwrap();
    let cfg = agent();
    let session = Session {
        trace_id: "test".into(),
        brain: Box::new(FlowBrain::new(&cfg, &Vec::<Parameter>::new(), None)),
        tts: Arc::new(ToneTts),
        stt: Arc::new(ScriptedStt {
            text: heard.into(),
            phrases: Mutex::new(Vec::new()),
        }),
        voice: None,
        disclosure: None,
        opening: Some(Opening {
            text: opening.into(),
            audio: opening_audio,
        }),
        answered_at: answered,
        answered_at_ms: 1_000_000,
        timing: Timing {
            max_duration: max_duration.unwrap_or(Timing::default().max_duration),
            ..Timing::default()
        },
        voicemail,
        transfer: None,
    };
    let (media, held) = MediaStream::new(inbound, outbound);
    // The telephony adapter: one frame in and one frame out per 20 ms tick; FlushAudio drops
    // what is queued; Hangup ends the call.
    let adapter = tokio::spawn(async move {
        let mut controls = Vec::new();
        let mut agent_audio = Vec::new();
        let start_frame = (caller_at.as_millis() / 20) as usize;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for n in 0..(call_for.as_millis() / 20) as usize {
            tick.tick().await;
            // As the SIP adapter does: the hold is known before the frames that follow it, and
            // what the agent queues meanwhile is taken off the queue and not sent.
            if let Some((from, to)) = hold {
                let t = answered.elapsed();
                held.send_replace(t >= from && t < to);
            }
            while let Ok(c) = ctl_rx.try_recv() {
                if c == CallControl::FlushAudio {
                    while out_rx.try_recv().is_ok() {}
                }
                let hangup = c == CallControl::Hangup;
                controls.push((answered.elapsed(), c));
                if hangup {
                    return (controls, agent_audio);
                }
            }
            if let Ok(f) = out_rx.try_recv() {
                if f.iter().any(|s| s.unsigned_abs() > 300) {
                    agent_audio.push(answered.elapsed());
                }
            }
            let frame = caller::frame_at(&caller, n, start_frame);
            if in_tx.send(frame).await.is_err() {
                break;
            }
        }
        (controls, agent_audio)
    });
    let outcome = converse(session, media, control).await;
    let (controls, agent_audio) = adapter.await.unwrap();
    Run {
        outcome,
        controls,
        agent_audio,
    }
}

fn lines(o: &ConversationOutcome) -> Vec<(String, String)> {
    o.transcript
        .iter()
        .map(|t| (t.role.as_str().to_string(), t.message.clone()))
        .collect()
}

#[tokio::test]
async fn a_yes_after_the_question_completes_the_call() {
    let voice = caller_voice().await;
    // Opening 0.3 s + question 0.9 s; the caller answers at 1.6 s.
    let r = run(
        "Hello Rahul.",
        voice,
        Duration::from_millis(1600),
        Duration::from_secs(10),
        "yes i can pay by friday",
    )
    .await;
    assert_eq!(r.outcome.ended_by, EndedBy::AgentEnded);
    assert_eq!(
        lines(&r.outcome),
        vec![
            ("agent".into(), "Hello Rahul.".into()),
            ("agent".into(), "Can you pay it by Friday?".into()),
            ("human".into(), "yes i can pay by friday".into()),
            (
                "agent".into(),
                "Thank you, we will note that. Goodbye.".into()
            ),
        ]
    );
    assert_eq!(r.outcome.results["intent"], "payment_promise");
    assert_eq!(r.controls.last().map(|c| &c.1), Some(&CallControl::Hangup));
    assert!(!r.controls.iter().any(|c| c.1 == CallControl::FlushAudio));
    // The goodbye (7 words, 1.05 s) was played whole before the hang-up.
    let hangup_at = r.controls.last().unwrap().0;
    let goodbye_frames = r
        .agent_audio
        .iter()
        .filter(|t| **t > Duration::from_millis(2000))
        .count();
    assert!(
        goodbye_frames >= 52,
        "{goodbye_frames} frames of goodbye before hang-up at {hangup_at:?}"
    );
    assert_eq!(r.outcome.answer_to_first_word_ms, Some(0));
    let t = r.outcome.turns[0];
    // Paused clock: model time is zero, so voice-to-voice is the end-of-turn silence plus our
    // pipeline, and what we add is under a frame.
    assert!((500..=560).contains(&t.voice_to_voice_ms), "{t:?}");
    assert!(t.added_us < 20_000, "{t:?}");
    // Timestamps follow the answer's wall clock.
    assert_eq!(r.outcome.transcript[0].at_ms, Some(1_000_000));
}

#[tokio::test]
async fn talking_over_the_agent_for_half_a_second_stops_it_at_once() {
    let voice = caller_voice().await;
    let long = "This is a long opening line that goes on and on about the invoice and the many ways you could pay it";
    let r = run(
        long,
        voice,
        Duration::from_millis(500),
        Duration::from_secs(12),
        "yes i can pay by friday",
    )
    .await;
    let flush = r
        .controls
        .iter()
        .find(|c| c.1 == CallControl::FlushAudio)
        .expect("barge-in flushes")
        .0;
    // 0.5 s of detected speech after the caller starts at 0.5 s (plus the VAD's onset).
    assert!(
        (Duration::from_millis(1000)..Duration::from_millis(1300)).contains(&flush),
        "{flush:?}"
    );
    // Nothing of the agent is heard after the flush until its reply to the caller's turn.
    let next = r.agent_audio.iter().find(|t| **t > flush).copied();
    assert!(
        next.is_none_or(|n| n > flush + Duration::from_millis(400)),
        "{next:?} after {flush:?}"
    );
    let l = lines(&r.outcome);
    assert!(
        l[0].1.ends_with('…') && l[0].1.starts_with("This is a"),
        "{l:?}"
    );
    assert!(l[0].1.len() < long.len() / 2, "{l:?}");
    // The barge-in was the caller's turn: the flow took it and ended the call.
    assert_eq!(l[1], ("human".into(), "yes i can pay by friday".into()));
    assert_eq!(r.outcome.results["intent"], "payment_promise");
    assert_eq!(r.outcome.ended_by, EndedBy::AgentEnded);
}

#[tokio::test]
async fn a_short_mhm_does_not_cut_the_agent_off() {
    let voice = caller_voice().await;
    // The first 0.3 s of the caller's speech (after espeak's own leading silence).
    let onset = voice.iter().position(|s| s.unsigned_abs() > 300).unwrap();
    let mhm = voice[onset..onset + 4800].to_vec();
    let opening = "This is a long opening line that goes on about the invoice";
    let r = run(
        opening,
        mhm,
        Duration::from_millis(500),
        Duration::from_secs(4),
        "mhm",
    )
    .await;
    assert!(
        !r.controls.iter().any(|c| c.1 == CallControl::FlushAudio),
        "{:?}",
        r.controls
    );
    let l = lines(&r.outcome);
    assert_eq!(l[0], ("agent".into(), opening.into()));
    assert!(!l.iter().any(|(role, _)| role == "human"), "{l:?}");
    // Nobody answered the question: the callee hung up at 4 s.
    assert_eq!(r.outcome.ended_by, EndedBy::CalleeHungUp);
}

#[tokio::test]
async fn the_callee_hanging_up_mid_line_ends_at_once_with_what_was_played() {
    let opening = "This is a long opening line that goes on and on about the invoice and the many ways you could pay it";
    let started = Instant::now();
    let r = run(
        opening,
        Vec::new(),
        Duration::ZERO,
        Duration::from_millis(1000),
        "",
    )
    .await;
    assert!(started.elapsed() < Duration::from_millis(1100));
    assert_eq!(r.outcome.ended_by, EndedBy::CalleeHungUp);
    let l = lines(&r.outcome);
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(
        l[0].1.starts_with("This is a long") && l[0].1.ends_with('…'),
        "{l:?}"
    );
    assert!(r.controls.is_empty());
}

const GREETING: &str = "Hi, you have reached Priya. I cannot take your call right now. Please leave your name and number after the tone.";
const MESSAGE: &str = "Hi Rahul, this is Acme about your invoice. Please call us back.";

/// A voicemail greeting in espeak-ng's voice, then `beep_after` of quiet and a 1 kHz beep of
/// 0.5 s (none when `None`); and where the beep ends (or the greeting's last word).
async fn machine(beep_after: Option<Duration>) -> (Vec<i16>, Duration) {
    let mut audio = EspeakNg::default()
        .synthesize(GREETING, Some("en-gb"))
        .await
        .expect("espeak-ng must be installed");
    if let Some(gap) = beep_after {
        audio.extend(vec![0i16; (gap.as_millis() * 16) as usize]);
        audio.extend((0..8000).map(|i| {
            let t = f64::from(i) / 16_000.0;
            (9000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16
        }));
    }
    // The last sound, not espeak-ng's trailing silence.
    let last = audio
        .iter()
        .rposition(|s| s.unsigned_abs() > 300)
        .unwrap_or(audio.len());
    (audio, Duration::from_millis(last as u64 / 16))
}

fn leave(message: Option<&str>) -> Option<VoicemailPlan> {
    Some(VoicemailPlan {
        message: message.map(str::to_string),
        ..Default::default()
    })
}

#[tokio::test]
async fn a_machine_greeting_stops_the_agent_and_the_message_plays_after_the_beep() {
    let caller_at = Duration::from_millis(400);
    let (greeting, beep_end) = machine(Some(Duration::from_millis(600))).await;
    let long =
        "Hello Rahul, this is Asha calling from Acme about the invoice you received last week";
    let r = run_with(
        long,
        greeting,
        caller_at,
        Duration::from_secs(30),
        "hi you have reached priya",
        leave(Some(MESSAGE)),
    )
    .await;
    let o = &r.outcome;
    assert_eq!(o.answered_by, AnsweredBy::Machine);
    assert_eq!(o.results["voicemail"], "left", "{:?}", o.results);
    assert_eq!(o.ended_by, EndedBy::AgentEnded);
    // The opening was stopped as soon as the greeting was recognised as one...
    let flush = r
        .controls
        .iter()
        .find(|c| c.1 == CallControl::FlushAudio)
        .expect("the agent stops talking")
        .0;
    assert!(flush < caller_at + Duration::from_secs(3), "{flush:?}");
    let l = lines(o);
    assert!(l[0].1.ends_with('…'), "{l:?}");
    // ...nothing was answered to it, and the message is the last line, whole.
    assert_eq!(l.last(), Some(&("agent".into(), MESSAGE.into())), "{l:?}");
    assert!(!l.iter().any(|(_, m)| m.contains("Friday")), "{l:?}");
    // The message started after the beep had ended, within a few frames of it.
    let beep_end = caller_at + beep_end;
    let message_start = r
        .agent_audio
        .iter()
        .copied()
        .find(|t| *t > flush + Duration::from_millis(100))
        .expect("the message was played");
    assert!(
        message_start >= beep_end && message_start < beep_end + Duration::from_millis(200),
        "message at {message_start:?}, beep ended at {beep_end:?}"
    );
    assert_eq!(r.controls.last().map(|c| &c.1), Some(&CallControl::Hangup));
}

#[tokio::test]
async fn a_machine_without_a_beep_gets_the_message_once_its_greeting_is_quiet() {
    let caller_at = Duration::from_millis(300);
    let (greeting, end) = machine(None).await;
    let r = run_with(
        "Hello Rahul.",
        greeting,
        caller_at,
        Duration::from_secs(30),
        "hi",
        leave(Some(MESSAGE)),
    )
    .await;
    assert_eq!(r.outcome.answered_by, AnsweredBy::Machine);
    assert_eq!(r.outcome.results["voicemail"], "left");
    let end = caller_at + end;
    let message_start = r
        .agent_audio
        .iter()
        .copied()
        .find(|t| *t > end)
        .expect("the message was played");
    // 1.5 s of quiet after the greeting's last word.
    assert!(
        message_start >= end + Duration::from_millis(1400)
            && message_start < end + Duration::from_millis(2000),
        "message at {message_start:?}, greeting ended at {end:?}"
    );
}

#[tokio::test]
async fn a_machine_with_no_message_to_leave_is_hung_up_on_at_once() {
    let caller_at = Duration::from_millis(300);
    let (greeting, end) = machine(Some(Duration::from_millis(500))).await;
    let r = run_with(
        "Hello Rahul.",
        greeting,
        caller_at,
        Duration::from_secs(30),
        "hi",
        leave(None),
    )
    .await;
    assert_eq!(r.outcome.answered_by, AnsweredBy::Machine);
    assert_eq!(r.outcome.results["voicemail"], "hung_up");
    let hangup = r.controls.last().expect("hung up");
    assert_eq!(hangup.1, CallControl::Hangup);
    // Two seconds or so into the greeting, long before it ends.
    assert!(hangup.0 < caller_at + Duration::from_secs(3), "{hangup:?}");
    assert!(hangup.0 < caller_at + end, "{hangup:?}");
}

#[tokio::test]
async fn a_person_who_says_yes_after_the_question_is_a_person_and_the_call_goes_on() {
    let voice = caller_voice().await;
    let r = run_with(
        "Hello Rahul.",
        voice,
        Duration::from_millis(1600),
        Duration::from_secs(10),
        "yes i can pay by friday",
        leave(Some(MESSAGE)),
    )
    .await;
    assert_eq!(r.outcome.answered_by, AnsweredBy::Human);
    assert_eq!(r.outcome.results["intent"], "payment_promise");
    assert!(r.outcome.results.get("voicemail").is_none());
    assert!(!lines(&r.outcome).iter().any(|(_, m)| m == MESSAGE));
}

#[tokio::test]
async fn a_person_whose_first_sentence_runs_on_like_a_greeting_is_not_hung_up_on() {
    // "Hello, yes, I can pay it by Friday" in one breath runs as long as a recording's first
    // sentence: taken for a machine at first, then, as they stop and wait, for a person.
    let voice = EspeakNg::default()
        .synthesize("Hello, yes, I can pay it by Friday", Some("en-us"))
        .await
        .expect("espeak-ng must be installed");
    let caller_at = Duration::from_millis(300);
    assert_eq!(
        detector::verdicts(&voice, caller_at.as_millis() as u64),
        [
            (AnsweredBy::Machine, agent::amd::Cue::Continuous),
            (AnsweredBy::Human, agent::amd::Cue::Stopped)
        ],
        "the caller must be one the detector takes for a machine at first"
    );
    let r = run_with(
        "Hello Rahul, this is Asha calling from Acme about the invoice you received last week",
        voice,
        caller_at,
        Duration::from_secs(12),
        "hello yes i can pay it by friday",
        leave(None),
    )
    .await;
    let o = &r.outcome;
    // Not hung up on as a machine: what they said was answered, and the call went on to its end.
    assert_eq!(o.answered_by, AnsweredBy::Human);
    assert!(o.results.get("voicemail").is_none(), "{:?}", o.results);
    assert_eq!(o.results["intent"], "payment_promise", "{:?}", o.results);
    assert_eq!(o.ended_by, EndedBy::AgentEnded);
    let l = lines(o);
    assert!(
        l.contains(&("human".into(), "hello yes i can pay it by friday".into())),
        "{l:?}"
    );
    assert_eq!(
        l.last(),
        Some(&(
            "agent".into(),
            "Thank you, we will note that. Goodbye.".into()
        )),
        "{l:?}"
    );
}

#[tokio::test]
async fn on_hold_the_agent_waits_and_says_its_line_again_when_the_callee_is_back() {
    let voice = caller_voice().await;
    let opening =
        "This is a long opening line that goes on and on about the invoice and the ways to pay it";
    let (held_at, back_at) = (Duration::from_millis(1000), Duration::from_millis(5000));
    // The callee holds 1 s into the ~3 s opening; what comes down the held line at 2 s (here a
    // voice saying yes, as hold music with a voice over would) is no answer.
    let r = run_on(
        opening,
        voice,
        Duration::from_millis(2000),
        Duration::from_secs(12),
        "yes i can pay by friday",
        Line {
            hold: Some((held_at, back_at)),
            ..Line::default()
        },
    )
    .await;
    // Nothing of the agent while held: one tick for the hold to be seen, then silence.
    let on_hold: Vec<_> = r
        .agent_audio
        .iter()
        .filter(|t| **t > held_at + Duration::from_millis(20) && **t < back_at)
        .collect();
    assert_eq!(on_hold, Vec::<&Duration>::new());
    let back = r.agent_audio.iter().find(|t| **t >= back_at).copied();
    assert!(
        back.is_some_and(|b| b < back_at + Duration::from_millis(100)),
        "{back:?}"
    );
    let l = lines(&r.outcome);
    assert_eq!(l.len(), 3, "{l:?}");
    assert!(
        l[0].1.ends_with('…')
            && l[0].1.starts_with("This is a")
            && l[0].1.len() < opening.len() / 2,
        "{l:?}"
    );
    assert_eq!(l[1], ("agent".into(), opening.into()));
    assert_eq!(l[2], ("agent".into(), "Can you pay it by Friday?".into()));
    assert_eq!(r.outcome.results.get("intent"), None);
    assert_eq!(r.outcome.ended_by, EndedBy::CalleeHungUp);
}

#[tokio::test]
async fn the_time_limit_runs_on_while_the_call_is_held() {
    let r = run_on(
        "Hello Rahul.",
        Vec::new(),
        Duration::from_secs(60),
        Duration::from_secs(30),
        "",
        Line {
            hold: Some((Duration::from_millis(500), Duration::from_secs(30))),
            max_duration: Some(Duration::from_secs(4)),
            ..Line::default()
        },
    )
    .await;
    assert_eq!(r.outcome.ended_by, EndedBy::MaxDuration);
    let (at, last) = r.controls.last().unwrap();
    assert_eq!(last, &CallControl::Hangup);
    assert!(
        (Duration::from_secs(4)..Duration::from_millis(4100)).contains(at),
        "{at:?}"
    );
}
