//! Answering machines through the real binary: `outdial serve`, a call placed through the HTTP
//! API, a SIPp callee on loopback that plays a recorded voicemail greeting (the piper voice, which
//! the detector was not tuned on) and its beep, or a person who answers "Hello?" and waits.
//! A phone system's greeting in a recorded human voice (Asterisk's prompts) is played too.
//! The API, the recording and the webhook show who answered and what the agent did.

#[path = "../../agent/tests/common/detector.rs"]
mod detector;
mod support;
#[path = "../../agent/tests/common/voice.rs"]
mod voice;

use media::tone::{ToneConfig, ToneDetector, ToneEvent};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{Api, Db, Receiver, Service, Sipp};

const OPENING: &str = "Hello Rahul, this is Asha from Acme about your invoice.";
const GREETING: &str = "Hi, you've reached Priya. I can't take your call right now. Please leave your name and number after the tone.";
const MESSAGE: &str =
    "Hi Rahul, this is Acme about your invoice. Please call us back on our helpline.";

fn agent() -> Value {
    json!({
      "first_message": OPENING,
      "stages": [
        { "id": "stage_ask", "say": "Can you pay it by Friday?",
          "routes": [
            { "when_any": ["yes", "yeah", "sure", "okay"], "set": { "intent": "payment_promise" },
              "say": "Thank you. Goodbye.", "end": true }
          ],
          "otherwise": { "say": "Sorry, could you say that again?", "repeat": 1, "then_end": true } }
      ],
      "voicemail": { "detect": true, "action": "leave_message",
                     "message": "Hi {{customer_name}}, this is Acme about your invoice. Please call us back on our helpline." }
    })
}

/// The agent crate's scenario: answer, wait `-d` ms, play `./caller.ul`, wait for our BYE.
fn scenario() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/scenarios/callee_speaks.xml")
}

/// A path as a sox argument.
fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn sox(args: &[&str]) {
    let st = Command::new("sox").args(args).status().expect("sox");
    assert!(st.success(), "sox {args:?}");
}

/// `text` in the piper voice, then (`beep`) 0.6 s of quiet and a 0.5 s 1 kHz beep, as SIPp's
/// `caller.ul` in `dir`. Returns the audio's length in seconds.
fn record(dir: &Path, text: &str, beep: bool) -> f64 {
    let speech = dir.join("speech.wav");
    voice::speak(text, &speech);
    let all = dir.join("caller.wav");
    if beep {
        let (gap, tone) = (dir.join("gap.wav"), dir.join("beep.wav"));
        let fmt = ["-r", "22050", "-c", "1", "-b", "16"];
        sox(&[&["-n"][..], &fmt, &[&s(&gap), "trim", "0", "0.6"]].concat());
        sox(&[
            &["-n"][..],
            &fmt,
            &[&s(&tone), "synth", "0.5", "sine", "1000", "vol", "0.3"],
        ]
        .concat());
        sox(&[&s(&speech), &s(&gap), &s(&tone), &s(&all)]);
    } else {
        std::fs::copy(&speech, &all).unwrap();
    }
    voice::to_mulaw(&all, &dir.join("caller.ul"));
    std::fs::metadata(dir.join("caller.ul")).unwrap().len() as f64 / 8000.0
}

struct Answered {
    conversation: Value,
    recording: Option<media::wav::Wav>,
    webhook: Value,
}

async fn call(
    db: Db,
    greeting: &str,
    beep: bool,
    speak_after_ms: u32,
    extra: Value,
    env: &[(&str, &str)],
) -> Answered {
    let dir = tempfile::tempdir().unwrap();
    record(dir.path(), greeting, beep);
    call_playing(db, dir, speak_after_ms, extra, env).await
}

/// A call to a callee that plays the `caller.ul` already in `dir`.
async fn call_playing(
    db: Db,
    dir: tempfile::TempDir,
    speak_after_ms: u32,
    extra: Value,
    env: &[(&str, &str)],
) -> Answered {
    let key = Service::create_tenant_in(dir.path(), &db);
    let mut env = env.to_vec();
    env.push(("OUTDIAL_NO_RTP_TIMEOUT_SECONDS", "30"));
    let svc = Service::start_with(dir.path(), &db, &env);
    let _sipp = Sipp::run(&scenario(), false, 1, speak_after_ms, dir.path());
    let api = Api::new(&svc.base, &key);
    let mut config = agent();
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    let agent = api.setup_agent(_sipp.port, config).await;
    let receiver = Receiver::start().await;
    let target = api
        .post(
            &format!("/v1/agents/{agent}/webhook-targets"),
            json!({"name": "crm", "url": receiver.url}),
        )
        .await;
    assert_eq!(target.status(), 200);
    // `Api::call` names the callee Rahul, as the message's template expects.
    let location = api.call(agent, "+919876543210").await;
    let conversation = api.wait_terminal(&location, Duration::from_secs(60)).await;
    let recording = match conversation["recording_url"].as_str() {
        Some(url) => {
            let wav = api
                .http
                .get(url)
                .bearer_auth(&api.key)
                .send()
                .await
                .unwrap();
            assert_eq!(wav.status(), 200);
            Some(media::wav::read(&wav.bytes().await.unwrap()).unwrap())
        }
        None => None,
    };
    let got = receiver.wait_for(1, Duration::from_secs(15)).await;
    let webhook = serde_json::from_slice(&got.first().expect("a webhook").1).unwrap();
    Answered {
        conversation,
        recording,
        webhook,
    }
}

/// Where the recording's beep ends, and where sound starts again after it (seconds).
fn beep_then_sound(wav: &media::wav::Wav) -> (f64, Option<f64>) {
    let rate = wav.sample_rate as usize;
    let frame = rate / 50;
    let mut tone = ToneDetector::new(ToneConfig::default(), wav.sample_rate, 20);
    let frames: Vec<&[i16]> = wav.samples.chunks_exact(frame).collect();
    // A beep lasts; a held vowel of a recorded voice the tone detector reports is shorter.
    let end = frames
        .iter()
        .position(|f| matches!(tone.frame(f), Some(ToneEvent::Ended { ms, .. }) if ms >= 300))
        .expect("the beep is in the recording, clear of the agent's message");
    let loud = |f: &&[i16]| {
        (f.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / f.len() as f64).sqrt() > 300.0
    };
    let after = frames[end..].iter().position(loud).map(|i| end + i);
    (end as f64 * 0.02, after.map(|i| i as f64 * 0.02))
}

async fn a_machine_gets_the_message_after_its_beep(db: Db) {
    // The greeting starts 0.3 s after the answer, over the agent's opening.
    let a = call(db, GREETING, true, 300, json!({}), &[]).await;
    the_message_came_after_the_beep(&a);
}

/// A machine's call: the agent's opening cut short, then its message whole after the beep.
fn the_message_came_after_the_beep(a: &Answered) {
    let c = &a.conversation;
    assert_eq!(c["status"], "completed", "{c}");
    assert_eq!(c["answered_by"], "machine", "{c}");
    assert_eq!(c["results"]["voicemail"], "left", "{c}");
    let lines = support::transcript_lines(c);
    // The opening was cut as the greeting was recognised; the message, rendered, came last.
    assert!(lines[0].1.ends_with('…'), "{lines:?}");
    assert_eq!(
        lines.last(),
        Some(&("agent".into(), MESSAGE.into())),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.1.contains("Friday")), "{lines:?}");
    // In the recording, the agent's message begins once the beep is over, not on top of it.
    let wav = a.recording.as_ref().expect("a recording");
    let (beep_end, next) = beep_then_sound(wav);
    let next = next.expect("the message is in the recording after the beep");
    assert!(
        next >= beep_end && next < beep_end + 0.5,
        "beep ended at {beep_end} s, the message started at {next} s"
    );
    let seconds = wav.samples.len() as f64 / f64::from(wav.sample_rate);
    // The message (~5 s) was played whole before the hang-up.
    assert!(
        seconds > next + 4.0,
        "{seconds} s recorded, message at {next} s"
    );
    assert_eq!(a.webhook["event_type"], "call.completed", "{}", a.webhook);
    assert_eq!(a.webhook["data"]["call"]["answered_by"], "machine");
    assert_eq!(a.webhook["data"]["results"]["voicemail"], "left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_greeting_with_a_beep_gets_the_message_after_the_beep() {
    a_machine_gets_the_message_after_its_beep(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_greeting_with_a_beep_gets_the_message_after_the_beep_on_postgres() {
    let (db, _pg) = Db::postgres();
    a_machine_gets_the_message_after_its_beep(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_who_answers_hello_is_a_person_and_hears_the_agent_out() {
    // "Hello?" half a second in, over the opening, then silence until the call's time is up.
    let a = call(
        Db::sqlite(),
        "Hello?",
        false,
        500,
        json!({"max_duration_seconds": 10}),
        &[],
    )
    .await;
    let c = &a.conversation;
    assert_eq!(c["status"], "completed", "{c}");
    assert_eq!(c["answered_by"], "human", "{c}");
    assert!(c["results"].get("voicemail").is_none(), "{c}");
    let lines = support::transcript_lines(c);
    // The agent went on talking to them (its question, or asking again): a person is never
    // left a voicemail.
    let agent_lines: Vec<&str> = lines
        .iter()
        .filter(|l| l.0 == "agent")
        .map(|l| l.1.as_str())
        .collect();
    assert!(agent_lines.iter().any(|l| l.contains('?')), "{lines:?}");
    assert!(!agent_lines.contains(&MESSAGE), "{lines:?}");
    assert_eq!(a.webhook["data"]["call"]["answered_by"], "human");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_whose_first_sentence_runs_on_like_a_greeting_is_a_person_and_is_answered() {
    const ANSWER: &str = "Hello, yes, I can pay it by Friday.";
    let speak_after_ms = 500;
    // The detector alone, on what the line carries, takes it for a greeting read in one breath
    // at first and for a person once they stop and wait.
    let dir = tempfile::tempdir().unwrap();
    let heard = voice::heard_on_the_phone(ANSWER, dir.path());
    assert_eq!(
        detector::verdicts(&heard, speak_after_ms.into()),
        [
            (
                domain::call::AnsweredBy::Machine,
                agent::amd::Cue::Continuous
            ),
            (domain::call::AnsweredBy::Human, agent::amd::Cue::Stopped)
        ],
        "the caller must be one the detector takes for a machine at first"
    );
    let a = call(
        Db::sqlite(),
        ANSWER,
        false,
        speak_after_ms,
        json!({"max_duration_seconds": 15}),
        &[],
    )
    .await;
    let c = &a.conversation;
    assert_eq!(c["status"], "completed", "{c}");
    assert_eq!(c["answered_by"], "human", "{c}");
    assert!(c["results"].get("voicemail").is_none(), "{c}");
    // Not left a voicemail nor hung up on: what they said was answered.
    assert_eq!(c["results"]["intent"], "payment_promise", "{c}");
    let lines = support::transcript_lines(c);
    assert!(!lines.iter().any(|l| l.1 == MESSAGE), "{lines:?}");
    assert_eq!(
        lines.last(),
        Some(&("agent".into(), "Thank you. Goodbye.".into())),
        "{lines:?}"
    );
    assert_eq!(a.webhook["data"]["call"]["answered_by"], "human");
}

/// Where Debian's `asterisk-core-sounds-en-wav` puts Allison's prompts: a phone system's
/// voicemail read by a person, 8 kHz.
const ALLISON: &str = "/usr/share/asterisk/sounds/en_US_f_Allison";

/// A phone system's voicemail greeting as it plays its `prompts`, `pause_s` between two; as
/// `caller.wav` in `dir`.
fn recorded_greeting(dir: &Path, prompts: &[&str], pause_s: &str) -> PathBuf {
    assert!(
        Path::new(ALLISON).is_dir(),
        "{ALLISON}: apt-get install asterisk-core-sounds-en-wav"
    );
    let gap = dir.join("gap.wav");
    sox(&[
        "-n",
        "-r",
        "8000",
        "-c",
        "1",
        "-b",
        "16",
        &s(&gap),
        "trim",
        "0",
        pause_s,
    ]);
    let mut parts = Vec::new();
    for prompt in prompts {
        if !parts.is_empty() {
            parts.push(s(&gap));
        }
        parts.push(format!("{ALLISON}/{prompt}.wav"));
    }
    let all = dir.join("caller.wav");
    parts.push(s(&all));
    let args: Vec<&str> = parts.iter().map(String::as_str).collect();
    sox(&args);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greeting_played_in_pieces_is_a_machine_though_its_first_piece_passes_for_a_hello() {
    let speak_after_ms = 300;
    let dir = tempfile::tempdir().unwrap();
    // "The person at extension" "2" "0" "4" "is unavailable", no beep.
    let prompts = [
        "vm-theperson",
        "digits/2",
        "digits/0",
        "digits/4",
        "vm-isunavail",
    ];
    let greeting = recorded_greeting(dir.path(), &prompts, "0.25");
    // The detector alone, on what the line carries: its first piece and the pause after it
    // pass for a person's "Hello?" and wait, and only the pieces that follow give it away.
    let heard = voice::on_the_phone(&greeting, dir.path());
    let without = agent::AmdConfig {
        resumed_greeting_ms: 0,
        ..Default::default()
    };
    use agent::amd::Cue;
    use domain::call::AnsweredBy;
    let before = detector::verdicts_with(&heard, speak_after_ms.into(), without);
    assert!(
        matches!(before.last(), Some((AnsweredBy::Human, _))),
        "the greeting must be one the detector takes for a person without the rule: {before:?}"
    );
    assert_eq!(
        detector::verdicts(&heard, speak_after_ms.into()).last(),
        Some(&(AnsweredBy::Machine, Cue::Resumed))
    );
    voice::to_mulaw(&greeting, &dir.path().join("caller.ul"));
    let a = call_playing(Db::sqlite(), dir, speak_after_ms, json!({}), &[]).await;
    let c = &a.conversation;
    assert_eq!(c["status"], "completed", "{c}");
    assert_eq!(c["answered_by"], "machine", "{c}");
    assert_eq!(c["results"]["voicemail"], "left", "{c}");
    let lines = support::transcript_lines(c);
    assert_eq!(
        lines.last(),
        Some(&("agent".into(), MESSAGE.into())),
        "{lines:?}"
    );
    assert_eq!(a.webhook["data"]["call"]["answered_by"], "machine");
    assert_eq!(a.webhook["data"]["results"]["voicemail"], "left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_greeting_gets_the_message_after_its_beep_not_in_its_middle() {
    // "Nobody is available to take your call at the moment. Please leave your message after
    // the tone. When done, hang up or press the pound key." and the beep, as Asterisk plays
    // them, in a phone line's band (300-3400 Hz): a person's voice holds a pitch here and
    // there, as a beep does for a moment (here in "key", a second before the beep ends).
    let dir = tempfile::tempdir().unwrap();
    let prompts = ["vm-nobodyavail", "vm-intro", "beep"];
    let greeting = recorded_greeting(dir.path(), &prompts, "0.1");
    let banded = dir.path().join("banded.wav");
    sox(&[&s(&greeting), &s(&banded), "sinc", "300-3400"]);
    voice::to_mulaw(&banded, &dir.path().join("caller.ul"));
    let a = call_playing(Db::sqlite(), dir, 300, json!({}), &[]).await;
    the_message_came_after_the_beep(&a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn how_long_a_greeting_must_be_is_the_operators_setting() {
    // The same greeting, with no beep to give it away: a machine by its length by default...
    let a = call(Db::sqlite(), GREETING, false, 300, json!({}), &[]).await;
    assert_eq!(
        a.conversation["answered_by"], "machine",
        "{}",
        a.conversation
    );
    assert_eq!(a.conversation["results"]["voicemail"], "left");
    // ...and never a machine when the service wants 10 s of it: still talking when the
    // detector's 6 s are up, it is `unknown`, and the agent carries on as with a person.
    let a = call(
        Db::sqlite(),
        GREETING,
        false,
        300,
        json!({"max_duration_seconds": 12}),
        &[("OUTDIAL_AMD_GREETING_MS", "10000")],
    )
    .await;
    assert_eq!(
        a.conversation["answered_by"], "unknown",
        "{}",
        a.conversation
    );
    assert!(a.conversation["results"].get("voicemail").is_none());
}
