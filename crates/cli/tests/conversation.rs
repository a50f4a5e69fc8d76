//! A spoken conversation through the real binary: `outdial serve`, a call placed through the
//! HTTP API, a SIPp callee on loopback that answers and, after the agent's question, says "yes,
//! I can pay by Friday" (a recording made at test time with the piper voice, streamed by SIPp
//! as G.711 RTP). No echo: the callee plays its recording and nothing else, as a person on a
//! phone with echo cancelling would. The agent hears it (earshot, the node's local whisper), the
//! flow sets `intent`, says goodbye and hangs up; the API shows it all.

mod support;
#[path = "../../agent/tests/common/voice.rs"]
mod voice;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Api, Db, Service, Sipp, GOODBYE, OPENING, QUESTION};

fn agent() -> Value {
    support::payment_flow()
}

fn scenario() -> PathBuf {
    support::callee_speaks_scenario()
}

/// `name`.ul in `dir`: `sentence` as SIPp's `rtp_stream` plays it.
fn record(sentence: &str, dir: &Path, name: &str) {
    let wav = dir.join(format!("{name}.wav"));
    voice::speak(sentence, &wav);
    voice::to_mulaw(&wav, &dir.join(format!("{name}.ul")));
}

struct Talked {
    conversation: Value,
    sipp_exit: Option<i32>,
}

/// One call to a callee who starts speaking `speak_after_ms` after answering.
async fn talk(db: Db, speak_after_ms: u32) -> Talked {
    let dir = tempfile::tempdir().unwrap();
    talk_in(db, &scenario(), speak_after_ms, dir.path()).await
}

/// One call to a callee playing `scenario` in `dir` (where other recordings it plays may be).
async fn talk_in(db: Db, scenario: &Path, speak_after_ms: u32, dir: &Path) -> Talked {
    record("Yes, I can pay by Friday.", dir, "caller");
    call_callee(db, scenario, speak_after_ms, dir, agent()).await
}

/// One call from `agent` to a callee playing `scenario` with the recordings already in `dir`.
async fn call_callee(
    db: Db,
    scenario: &Path,
    speak_after_ms: u32,
    dir: &Path,
    agent: Value,
) -> Talked {
    let key = Service::create_tenant_in(dir, &db);
    // The callee is silent until it speaks: no RTP for seconds is not a dead line here.
    let svc = Service::start_with(dir, &db, &[("OUTDIAL_NO_RTP_TIMEOUT_SECONDS", "30")]);
    let mut sipp = Sipp::run(scenario, false, 1, speak_after_ms, dir);
    let api = Api::new(&svc.base, &key);
    let agent = api.setup_agent(sipp.port, agent).await;
    let location = api.call(agent, "+919876543210").await;
    let conversation = api.wait_terminal(&location, Duration::from_secs(60)).await;
    let mut sipp_exit = None;
    for _ in 0..100 {
        if let Ok(Some(st)) = sipp.child.try_wait() {
            sipp_exit = st.code();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Talked {
        conversation,
        sipp_exit,
    }
}

use support::transcript_lines as lines;

fn assert_heard_the_human(line: &(String, String)) {
    assert_eq!(line.0, "human");
    let words = line.1.to_lowercase();
    // A recogniser on the phone path may hear piper's "yes" as "yeah"; the agent's route takes
    // either, and the day must come through.
    assert!(
        words.starts_with("yes") || words.starts_with("yeah"),
        "{words:?}"
    );
    assert!(words.contains("friday"), "{words:?}");
}

async fn the_callee_answers_the_question(db: Db) {
    // The opening (~3.5 s) and the question (~1.5 s) are over by then.
    let t = talk(db, 6500).await;
    let c = &t.conversation;
    assert_eq!(c["status"], "completed", "{c}");
    assert_eq!(t.sipp_exit, Some(0), "SIPp saw our BYE: {c}");
    let l = lines(c);
    assert_eq!(l.len(), 4, "{l:?}");
    assert_eq!(l[0], ("agent".into(), OPENING.into()));
    assert_eq!(l[1], ("agent".into(), QUESTION.into()));
    assert_heard_the_human(&l[2]);
    assert_eq!(l[3], ("agent".into(), GOODBYE.into()));
    assert_eq!(c["results"]["intent"], "payment_promise");
    // The agent's latency is stored with the conversation.
    let latency = &c["latency"];
    assert_eq!(latency["turns"], 1, "{latency}");
    let v2v = latency["voice_to_voice_p50_ms"].as_u64().unwrap();
    assert_eq!(latency["turns_ms"][0].as_u64(), Some(v2v));
    assert_eq!(latency["voice_to_voice_p95_ms"].as_u64(), Some(v2v));
    // At least the end-of-turn silence of the agent's turn_taking.
    assert!(v2v >= 500, "{latency}");
    assert!(latency["answer_to_first_word_ms"].is_u64(), "{latency}");
    eprintln!("latency through the binary: {latency}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callee_says_yes_and_the_conversation_completes_with_the_intent() {
    the_callee_answers_the_question(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callee_says_yes_and_the_conversation_completes_with_the_intent_on_postgres() {
    let (db, _pg) = Db::postgres();
    the_callee_answers_the_question(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callee_talks_over_the_opening_and_the_agent_stops_and_listens() {
    // Speaks 1 s into the ~3.5 s opening.
    let t = talk(Db::sqlite(), 1000).await;
    let c = &t.conversation;
    assert_eq!(c["status"], "completed", "{c}");
    assert_eq!(t.sipp_exit, Some(0), "SIPp saw our BYE: {c}");
    let l = lines(c);
    // The opening was cut: only its first words are in the transcript, with the cut marker,
    // and the question queued after it was never played.
    assert_eq!(l[0].0, "agent", "{l:?}");
    assert!(
        l[0].1.ends_with('…') && OPENING.starts_with(l[0].1.trim_end_matches('…')),
        "{l:?}"
    );
    assert!(l[0].1.len() < OPENING.len(), "{l:?}");
    assert!(!l.iter().any(|(_, m)| m == QUESTION), "{l:?}");
    assert_heard_the_human(&l[1]);
    assert_eq!(l[2], ("agent".into(), GOODBYE.into()));
    assert_eq!(l.len(), 3, "{l:?}");
    assert_eq!(c["results"]["intent"], "payment_promise");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_waits_while_the_callee_holds_and_says_its_line_again_after() {
    let dir = tempfile::tempdir().unwrap();
    // What comes down the held line would be a refusal if the agent took it for an answer.
    record("No, I cannot pay it.", dir.path(), "hold");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/callee_holds.xml");
    // Held 1 s into the opening, back 5 s later; the answer comes once the opening and the
    // question have been said again.
    let t = talk_in(Db::sqlite(), &scenario, 6500, dir.path()).await;
    let c = &t.conversation;
    assert_eq!(c["status"], "completed", "{c}");
    // SIPp checked our answers to the hold (recvonly) and the resume (sendrecv), and saw our BYE.
    assert_eq!(t.sipp_exit, Some(0), "{c}");
    let l = lines(c);
    assert_eq!(l.len(), 5, "{l:?}");
    // The opening, cut where the hold began, then said whole once the callee was back.
    assert_eq!(l[0].0, "agent", "{l:?}");
    assert!(
        l[0].1.ends_with('…') && OPENING.starts_with(l[0].1.trim_end_matches('…')),
        "{l:?}"
    );
    assert_eq!(l[1], ("agent".into(), OPENING.into()));
    assert_eq!(l[2], ("agent".into(), QUESTION.into()));
    assert_heard_the_human(&l[3]);
    assert_eq!(l[4], ("agent".into(), GOODBYE.into()));
    assert_eq!(c["results"]["intent"], "payment_promise", "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negated_yes_takes_the_no_route_and_never_the_yes_route() {
    let dir = tempfile::tempdir().unwrap();
    // "okay" is a yes-phrase of the flow; here it is negated, and "no" says what is meant.
    record("No, I am not okay with that.", dir.path(), "caller");
    let t = call_callee(Db::sqlite(), &scenario(), 6500, dir.path(), agent()).await;
    let c = &t.conversation;
    assert_eq!(c["status"], "completed", "{c}");
    let l = lines(c);
    assert_eq!(l[0], ("agent".into(), OPENING.into()), "{l:?}");
    assert_eq!(l[1], ("agent".into(), QUESTION.into()), "{l:?}");
    assert_eq!(l[2].0, "human", "{l:?}");
    assert!(l[2].1.contains("not"), "the negation was heard: {l:?}");
    assert_eq!(c["results"]["intent"], "refused", "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indian_english_agent_completes_with_the_callers_answer() {
    let dir = tempfile::tempdir().unwrap();
    record("Yes, I can pay by Friday.", dir.path(), "caller");
    let mut en_in = agent();
    en_in["language"] = "en-IN".into();
    let t = call_callee(Db::sqlite(), &scenario(), 6500, dir.path(), en_in).await;
    let c = &t.conversation;
    assert_eq!(c["status"], "completed", "{c}");
    let l = lines(c);
    assert_eq!(l.len(), 4, "{l:?}");
    assert_eq!(l[1], ("agent".into(), QUESTION.into()));
    assert_heard_the_human(&l[2]);
    assert_eq!(l[3], ("agent".into(), GOODBYE.into()));
    assert_eq!(c["results"]["intent"], "payment_promise", "{c}");
}
