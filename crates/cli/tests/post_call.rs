//! Post-call transcripts through the real binary: `outdial serve` calls a SIPp callee that
//! answers and, after the agent's question, says "Yes, I can pay by Friday." (piper's voice,
//! streamed as G.711). When the agent asks for it (`post_call_transcript: true`) the call's
//! recording (stereo: the agent on the left, the callee on the right) is transcribed after the
//! call by the transcription jobs' recogniser (Whisper base in the project's venv: `outdial setup
//! --all`) and shown beside the live transcript; an agent that does not ask gets none. Also
//! `outdial doctor` on the engine that makes them.

mod support;
#[path = "../../agent/tests/common/voice.rs"]
mod voice;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use support::{Api, Db, Service, Sipp, OPENING};

fn agent(post_call_transcript: bool) -> Value {
    let mut agent = support::payment_flow();
    agent["first_message"] = json!(OPENING);
    agent["post_call_transcript"] = json!(post_call_transcript);
    agent
}

fn scenario() -> PathBuf {
    support::callee_speaks_scenario()
}

fn words(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect()
}

/// The conversation once its post-call transcript is done (completed or failed).
async fn wait_post_call(api: &Api, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let c = api.get_json(&format!("/v1/conversations/{id}")).await["data"].clone();
        let status = c["post_call_transcript"]["status"].as_str().unwrap_or("");
        if status == "completed" || status == "failed" {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "post-call transcript not done in {within:?}: {c}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The words of one speaker's utterances.
fn said_by(transcript: &Value, speaker: &str) -> String {
    words(
        &transcript["utterances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["speaker"] == speaker)
            .map(|u| u["text"].as_str().unwrap())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

async fn transcribed_after_the_call_only_when_the_agent_asks(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("caller.wav");
    voice::speak("Yes, I can pay by Friday.", &wav);
    voice::to_mulaw(&wav, &dir.path().join("caller.ul"));
    let key = Service::create_tenant_in(dir.path(), &db);
    let model = support::transcription_model_dir();
    let svc = Service::start_with(
        dir.path(),
        &db,
        &[
            // The callee is silent until it speaks: no RTP for seconds is not a dead line here.
            ("OUTDIAL_NO_RTP_TIMEOUT_SECONDS", "30"),
            ("OUTDIAL_TRANSCRIPTION_WORKERS", "1"),
            ("OUTDIAL_TRANSCRIPTION_MODEL_DIR", &model),
        ],
    );
    let api = Api::new(&svc.base, &key);
    // Two calls, one after the other; the callee speaks once the opening and question are over.
    let mut sipp = Sipp::run(&scenario(), false, 2, 6500, dir.path());
    let agent_id = api.setup_agent(sipp.port, agent(false)).await;
    let stored = api.get_json(&format!("/v1/agents/{agent_id}")).await;
    assert_eq!(stored["data"]["post_call_transcript"], false, "{stored}");

    // Without the setting: the call has no post-call transcript, and no job was written.
    let location = api.call(agent_id, "+919876543210").await;
    let plain = api.wait_terminal(&location, Duration::from_secs(60)).await;
    assert_eq!(plain["status"], "completed", "{plain}");
    assert!(plain["recording_url"].is_string(), "{plain}");
    assert_eq!(plain["post_call_transcript"], Value::Null, "{plain}");

    // The same agent asking for it (PATCH) on the next call.
    let r = api
        .http
        .patch(format!("{}/v1/agents/{agent_id}", api.base))
        .bearer_auth(&api.key)
        .json(&json!({"post_call_transcript": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let patched: Value = r.json().await.unwrap();
    assert_eq!(patched["data"]["post_call_transcript"], true, "{patched}");
    let location = api.call(agent_id, "+919876543211").await;
    let asked = api.wait_terminal(&location, Duration::from_secs(60)).await;
    assert_eq!(asked["status"], "completed", "{asked}");
    assert_eq!(asked["results"]["intent"], "payment_promise", "{asked}");
    let id = asked["conversation_id"].as_str().unwrap().to_string();

    // The recording keeps the two sides apart: the agent on the left, the callee on the right.
    let wav = api
        .http
        .get(asked["recording_url"].as_str().unwrap())
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let wav = media::wav::read(&wav).unwrap();
    assert_eq!(wav.channels.len(), 2, "a stereo recording");

    let c = wait_post_call(&api, &id, Duration::from_secs(240)).await;
    let t = &c["post_call_transcript"];
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["engine"], "whisper-base", "{t}");
    // The agent's language, as the call spoke it.
    assert_eq!(t["language"], "en-US", "{t}");
    assert!(t.get("error").is_none(), "{t}");
    let agent_said = said_by(t, "agent");
    let human_said = said_by(t, "human");
    // Each on their own side: the opening is the agent's, the answer the callee's.
    assert!(agent_said.contains("invoice"), "agent: {t}");
    assert!(agent_said.contains("thank"), "agent: {t}");
    assert!(
        human_said.contains("pay") && human_said.contains("friday"),
        "human: {t}"
    );
    assert!(!human_said.contains("invoice"), "human: {t}");
    assert!(!agent_said.contains("yes"), "agent: {t}");
    let utterances = t["utterances"].as_array().unwrap();
    let speakers: std::collections::BTreeSet<&str> = utterances
        .iter()
        .map(|u| u["speaker"].as_str().unwrap())
        .collect();
    assert_eq!(speakers.into_iter().collect::<Vec<_>>(), ["agent", "human"]);
    // In time order, the callee answering after the agent opened.
    let starts: Vec<f64> = utterances
        .iter()
        .map(|u| u["start"].as_f64().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{t}");
    assert_eq!(utterances[0]["speaker"], "agent", "{t}");
    assert!(words(t["text"].as_str().unwrap()).contains("friday"), "{t}");
    // The live transcript and the call's own outcome are as the call left them.
    assert_eq!(c["status"], "completed");
    assert_eq!(c["transcript"], asked["transcript"]);
    assert_eq!(c["results"], asked["results"]);

    // One job in all, for the call that asked; none for the other.
    let plain_id = plain["conversation_id"].as_str().unwrap();
    assert_eq!(
        db.scalar(
            &svc.data,
            &format!(
                "SELECT COUNT(*) FROM transcription_jobs WHERE conversation_id = '{plain_id}'"
            )
        ),
        "0"
    );
    assert_eq!(
        db.scalar(&svc.data, "SELECT COUNT(*) FROM transcription_jobs"),
        "1"
    );
    assert_eq!(
        db.scalar(&svc.data, "SELECT COUNT(*) FROM transcription_audio"),
        "0",
        "the recording is referenced, never copied into the jobs' table"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while sipp.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "SIPp did not end after its two calls"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_transcribed_again_after_it_ends_when_its_agent_asks() {
    transcribed_after_the_call_only_when_the_agent_asks(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_transcribed_again_after_it_ends_when_its_agent_asks_on_postgres() {
    let (db, _pg) = Db::postgres();
    transcribed_after_the_call_only_when_the_agent_asks(db).await;
}

/// The job outlives the node that wrote it (it is in the settling transaction, not in memory),
/// and a job that cannot be done shows why without touching the call: the node that settled the
/// call transcribes nothing (`--transcription-workers 0`), is killed, the recording is lost, and
/// the node that comes back fails the job, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_call_transcript_that_cannot_be_made_fails_on_its_own_and_the_call_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("caller.wav");
    voice::speak("Yes, I can pay by Friday.", &wav);
    voice::to_mulaw(&wav, &dir.path().join("caller.ul"));
    let db = Db::sqlite();
    let key = Service::create_tenant_in(dir.path(), &db);
    let model = support::transcription_model_dir();
    let mut svc = Service::start_with(
        dir.path(),
        &db,
        &[
            ("OUTDIAL_NO_RTP_TIMEOUT_SECONDS", "30"),
            ("OUTDIAL_TRANSCRIPTION_MODEL_DIR", &model),
        ],
    );
    let api = Api::new(&svc.base, &key);
    let sipp = Sipp::run(&scenario(), false, 1, 6500, dir.path());
    let agent_id = api.setup_agent(sipp.port, agent(true)).await;
    let location = api.call(agent_id, "+919876543210").await;
    let call = api.wait_terminal(&location, Duration::from_secs(60)).await;
    assert_eq!(call["status"], "completed", "{call}");
    let id = call["conversation_id"].as_str().unwrap().to_string();
    // Written with the settlement, waiting for a node that transcribes.
    assert_eq!(call["post_call_transcript"]["status"], "pending", "{call}");
    assert_eq!(call["post_call_transcript"]["utterances"], json!([]));
    assert_eq!(call["post_call_transcript"]["text"], Value::Null);

    svc.kill();
    let recording = svc.data.join("recordings").join(format!("{id}.wav"));
    std::fs::remove_file(&recording).unwrap();
    svc.env
        .push(("OUTDIAL_TRANSCRIPTION_WORKERS".into(), "1".into()));
    svc.restart();
    let c = wait_post_call(&api, &id, Duration::from_secs(120)).await;
    let t = &c["post_call_transcript"];
    assert_eq!(t["status"], "failed", "{t}");
    let error = t["error"].as_str().unwrap();
    assert!(
        error.contains("recording cannot be read") && error.contains(&format!("{id}.wav")),
        "{error}"
    );
    assert!(t["completed_at"].is_i64(), "{t}");
    // The call is as it ended.
    for field in [
        "status",
        "results",
        "transcript",
        "duration_seconds",
        "end_timestamp",
    ] {
        assert_eq!(c[field], call[field], "{field}");
    }
}

fn doctor(data: &Path, python: &str) -> (Output, String) {
    let model = support::transcription_model_dir();
    let out = Service::outdial(data)
        .arg("doctor")
        .env("OUTDIAL_PYTHON", python)
        .env("OUTDIAL_TRANSCRIPTION_MODEL_DIR", &model)
        .env(
            "OUTDIAL_SIP_LISTEN",
            format!("127.0.0.1:{}", support::free_udp_port()),
        )
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, report)
}

/// The line about `subject`, and the fix printed under it (if any).
fn line_of<'a>(report: &'a str, subject: &str) -> (&'a str, Option<&'a str>) {
    let lines: Vec<&str> = report.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.split_whitespace().nth(1) == Some(subject))
        .unwrap_or_else(|| panic!("no {subject} line: {report}"));
    let fix = lines
        .get(i + 1)
        .map(|l| l.trim_start())
        .filter(|l| l.starts_with("fix: "));
    (lines[i], fix)
}

/// The doctor names the recogniser post-call transcripts need: found, or missing with the
/// command that installs it, for the agent that asks for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_checks_the_transcription_engine_the_agents_need() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let key = Service::create_tenant(data);
    let svc = Service::start(data);
    let api = Api::new(&svc.base, &key);
    let quiet = api.setup_agent(5060, json!({})).await;
    assert!(quiet > 0);
    drop(svc);

    // With the engines' interpreter (scripts/test's venv first on PATH): found, and started.
    let (out, report) = doctor(data, "python3");
    let (line, _) = line_of(&report, "transcription");
    assert!(line.starts_with("ok"), "{report}");
    assert!(line.contains("whisper-base"), "{line}");
    assert!(line.contains("no agent asks"), "{line}");
    assert!(out.status.success(), "{report}");

    // An interpreter without it: a warning while no agent needs it ...
    let bare = "/usr/bin/python3";
    let (_, report) = doctor(data, bare);
    let (line, fix) = line_of(&report, "transcription");
    assert!(line.starts_with("warn"), "{report}");
    assert!(line.contains("cannot import faster_whisper"), "{line}");
    assert!(
        fix.is_some_and(|f| f.contains("pip install faster-whisper==")),
        "{report}"
    );

    // ... and missing, naming the agent, once one asks for post-call transcripts.
    let svc = Service::start(data);
    let asks = api_for(&svc, &key)
        .post(
            "/v1/agents",
            json!({"name": "transcribed", "phone_number": "+918035739222",
                "post_call_transcript": true}),
        )
        .await;
    assert_eq!(asks.status(), 200);
    let asks: Value = asks.json().await.unwrap();
    let asks = asks["data"]["agent_id"].as_i64().unwrap();
    drop(svc);
    let (out, report) = doctor(data, bare);
    let (line, fix) = line_of(&report, "transcription");
    assert!(line.starts_with("MISSING"), "{report}");
    assert!(
        line.contains(&format!("post-call transcripts of agent {asks}")),
        "{line}"
    );
    assert!(
        fix.is_some_and(|f| f.contains("pip install faster-whisper==")),
        "{report}"
    );
    assert_eq!(out.status.code(), Some(1), "{report}");
    let (out, report) = doctor(data, "python3");
    let (line, _) = line_of(&report, "transcription");
    assert!(line.starts_with("ok"), "{report}");
    assert!(out.status.success(), "{report}");
}

fn api_for(svc: &Service, key: &str) -> Api {
    Api::new(&svc.base, key)
}
