//! Transcription jobs through the real binary: files spoken by espeak-ng, encoded by sox and
//! lame as users' files are, posted over HTTP, transcribed by the jobs' recogniser (Whisper
//! base in the project's venv: `outdial setup --all`), polled until done.

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Api, Db, Service};

fn start(dir: &Path, db: &Db, extra: &[(&str, &str)]) -> (Service, Api) {
    let key = Service::create_tenant_in(dir, db);
    let model = support::transcription_model_dir();
    let mut env = vec![
        ("OUTDIAL_TRANSCRIPTION_MODEL_DIR", model.as_str()),
        ("OUTDIAL_TRANSCRIPTION_WORKERS", "1"),
    ];
    env.extend_from_slice(extra);
    let s = Service::start_with(dir, db, &env);
    let api = Api::new(&s.base, &key);
    (s, api)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `text` spoken by espeak-ng's `voice`, as a 16 kHz mono WAV (what a phone recording sounds
/// like once widened).
fn speak(dir: &Path, name: &str, voice: &str, text: &str) -> PathBuf {
    let raw = dir.join(format!("{name}.espeak.wav"));
    run(Command::new("espeak-ng")
        .args(["-v", voice, "-s", "150", "-w"])
        .arg(&raw)
        .arg(text));
    let wav = dir.join(format!("{name}.wav"));
    run(Command::new("sox")
        .arg(&raw)
        .args(["-r", "16000", "-c", "1", "-b", "16"])
        .arg(&wav));
    wav
}

/// `wav` as another container: FLAC and OGG (Vorbis) by sox, MP3 by lame.
fn encode(wav: &Path, ext: &str) -> PathBuf {
    let out = wav.with_extension(ext);
    if ext == "mp3" {
        run(Command::new("lame")
            .args(["--quiet", "-b", "64"])
            .arg(wav)
            .arg(&out));
    } else {
        run(Command::new("sox").arg(wav).arg(&out));
    }
    out
}

/// A job's form: `file` as the `audio` field (if any), then `fields`.
async fn post_form(api: &Api, file: Option<&Path>, fields: &[(&str, &str)]) -> reqwest::Response {
    let mut form = reqwest::multipart::Form::new();
    if let Some(file) = file {
        let bytes = std::fs::read(file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        form = form.part(
            "audio",
            reqwest::multipart::Part::bytes(bytes).file_name(name),
        );
    }
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    api.http
        .post(format!("{}/v1/transcription/jobs", api.base))
        .bearer_auth(&api.key)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Posts `file` and returns the job's id, checking the contract's answer (no `data` wrapper).
async fn start_job(api: &Api, file: &Path, fields: &[(&str, &str)]) -> String {
    let r = post_form(api, Some(file), fields).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "pending", "{v}");
    assert_eq!(v["engine"], "whisper-base", "{v}");
    assert!(v.get("data").is_none(), "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert!(
        id.len() == 16
            && id.starts_with("job_")
            && id[4..]
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "{id}"
    );
    id
}

async fn wait_done(api: &Api, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = api.get_json(&format!("/v1/transcription/jobs/{id}")).await;
        if v["status"] == "completed" || v["status"] == "failed" {
            return v;
        }
        assert!(Instant::now() < deadline, "job not done in {within:?}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn words(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn english_in_every_container_is_transcribed_and_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, api) = start(dir.path(), &Db::sqlite(), &[]);
    let wav = speak(
        dir.path(),
        "payment",
        "en-us",
        "I will pay the full amount on Friday morning.",
    );
    for file in [
        wav.clone(),
        encode(&wav, "flac"),
        encode(&wav, "mp3"),
        encode(&wav, "ogg"),
    ] {
        let id = start_job(&api, &file, &[("languages", "unknown")]).await;
        let v = wait_done(&api, &id, Duration::from_secs(120)).await;
        let name = file.display();
        assert_eq!(v["status"], "completed", "{name}: {v}");
        assert_eq!(v["language"], "en-IN", "{name}: {v}");
        let text = words(v["text"].as_str().unwrap());
        for word in ["pay", "amount", "friday"] {
            assert!(text.contains(word), "{name}: {word:?} not in {text:?}");
        }
        let utterances = v["utterances"].as_array().unwrap();
        assert!(!utterances.is_empty(), "{v}");
        for u in utterances {
            assert_eq!(u["speaker"], "speaker_0", "{v}");
            let (start, end) = (u["start"].as_f64().unwrap(), u["end"].as_f64().unwrap());
            assert!(0.0 <= start && start < end && end < 5.0, "{v}");
        }
        assert!(v.get("error").is_none(), "{v}");
    }
}

/// Hindi in the voice the recogniser's settings were chosen on (espeak-ng's `hi`) and in one
/// they were not (its female variant, slower).
#[tokio::test(flavor = "multi_thread")]
async fn unknown_detects_hindi() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, api) = start(dir.path(), &Db::sqlite(), &[]);
    for (name, voice) in [("hindi", "hi"), ("hindi-f", "hi+f2")] {
        let wav = speak(
            dir.path(),
            name,
            voice,
            "नमस्ते, मैं शुक्रवार को पूरा भुगतान कर दूँगा।",
        );
        let id = start_job(&api, &encode(&wav, "flac"), &[("languages", "unknown")]).await;
        let v = wait_done(&api, &id, Duration::from_secs(120)).await;
        assert_eq!(v["status"], "completed", "{voice}: {v}");
        assert_eq!(v["language"], "hi-IN", "{voice}: {v}");
        // Hindi is written in Devanagari, not in the Latin or Urdu script.
        let text = v["text"].as_str().unwrap();
        assert!(
            text.chars().any(|c| ('\u{0900}'..='\u{097F}').contains(&c)),
            "{voice}: {text:?}"
        );
    }
}

/// Two people on two channels, as outdial's own call recordings are: two speakers, each with
/// the time they spoke.
#[tokio::test(flavor = "multi_thread")]
async fn a_stereo_file_is_two_speakers_with_their_times() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, api) = start(dir.path(), &Db::sqlite(), &[]);
    let agent = speak(
        dir.path(),
        "agent",
        "en-us",
        "Hello, this is Asha calling about your loan payment.",
    );
    let customer = speak(
        dir.path(),
        "customer",
        "en-gb",
        "Yes, I will pay the amount tomorrow.",
    );
    // Left: the agent from 0 s; right: the customer from 5 s; each silent while the other talks.
    let left = dir.path().join("left.wav");
    let right = dir.path().join("right.wav");
    run(Command::new("sox")
        .arg(&agent)
        .arg(&left)
        .args(["pad", "0", "6"]));
    run(Command::new("sox")
        .arg(&customer)
        .arg(&right)
        .args(["pad", "5", "2"]));
    let stereo = dir.path().join("call.wav");
    run(Command::new("sox")
        .args(["-M"])
        .arg(&left)
        .arg(&right)
        .arg(&stereo));
    let agent_len = duration(&agent);
    let id = start_job(
        &api,
        &stereo,
        &[("diarize", "true"), ("languages", "en-IN")],
    )
    .await;
    let v = wait_done(&api, &id, Duration::from_secs(120)).await;
    assert_eq!(v["status"], "completed", "{v}");
    assert!(v.get("note").is_none(), "{v}");
    let utterances = v["utterances"].as_array().unwrap();
    let of = |speaker: &str| -> Vec<&Value> {
        utterances
            .iter()
            .filter(|u| u["speaker"] == speaker)
            .collect()
    };
    let (first, second) = (of("speaker_0"), of("speaker_1"));
    assert!(!first.is_empty() && !second.is_empty(), "{v}");
    assert_eq!(first.len() + second.len(), utterances.len(), "{v}");
    let span = |us: &[&Value]| {
        (
            us.iter()
                .map(|u| u["start"].as_f64().unwrap())
                .fold(f64::MAX, f64::min),
            us.iter()
                .map(|u| u["end"].as_f64().unwrap())
                .fold(0.0, f64::max),
        )
    };
    let (a0, a1) = span(&first);
    let (c0, c1) = span(&second);
    assert!(
        a0 < 1.0 && (a1 - agent_len).abs() < 1.5 && a1 < 5.5,
        "agent {a0}-{a1}: {v}"
    );
    assert!(
        (c0 - 5.0).abs() < 1.0 && c1 > c0 + 1.0,
        "customer {c0}-{c1}: {v}"
    );
    let text = |us: &[&Value]| {
        words(
            &us.iter()
                .map(|u| u["text"].as_str().unwrap())
                .collect::<Vec<_>>()
                .join(" "),
        )
    };
    assert!(text(&first).contains("loan"), "{v}");
    assert!(text(&second).contains("tomorrow"), "{v}");
    // In time order: the agent's words come first in the text.
    let all = words(v["text"].as_str().unwrap());
    assert!(all.find("loan") < all.find("tomorrow"), "{all}");

    // The same speech mixed down to one channel: one speaker, and the answer says why.
    let mono = dir.path().join("mono.wav");
    run(Command::new("sox")
        .arg(&stereo)
        .arg(&mono)
        .args(["remix", "1,2"]));
    let id = start_job(&api, &mono, &[("diarize", "true"), ("languages", "en-IN")]).await;
    let v = wait_done(&api, &id, Duration::from_secs(120)).await;
    assert_eq!(v["status"], "completed", "{v}");
    let speakers: std::collections::BTreeSet<&str> = v["utterances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["speaker"].as_str().unwrap())
        .collect();
    assert_eq!(
        speakers.into_iter().collect::<Vec<_>>(),
        ["speaker_0"],
        "{v}"
    );
    assert!(v["note"].as_str().unwrap().contains("one channel"), "{v}");
}

fn duration(wav: &Path) -> f64 {
    let out = Command::new("soxi").arg("-D").arg(wav).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn error_of(v: &Value) -> (&str, &str) {
    (
        v["error"]["type"].as_str().unwrap_or(""),
        v["error"]["message"].as_str().unwrap_or(""),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_jobs_are_refused_with_the_contracts_errors_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite();
    let (s, api) = start(
        dir.path(),
        &db,
        &[
            ("OUTDIAL_TRANSCRIPTION_MAX_BYTES", "1000000"),
            // Nothing is transcribed here: the refusals are the point.
            ("OUTDIAL_TRANSCRIPTION_WORKERS", "0"),
        ],
    );
    let wav = speak(dir.path(), "ok", "en-us", "Hello.");
    let text = dir.path().join("notes.wav");
    std::fs::write(&text, "customer_phone\n+919876543210\n").unwrap();
    // (the file, the other fields, the refusal)
    type Case<'a> = (Option<&'a Path>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (None, vec![("languages", "hi-IN")], "audio is required"),
        (Some(&text), vec![], "unsupported audio format"),
        (Some(&wav), vec![("languages", "hi")], "invalid languages"),
        (
            Some(&wav),
            vec![("languages", "en-US")],
            "invalid languages",
        ),
        (
            Some(&wav),
            vec![("languages", "hi-IN,hi-IN")],
            "invalid languages",
        ),
        (Some(&wav), vec![("format", "verbatim")], "invalid format"),
        (Some(&wav), vec![("diarize", "maybe")], "invalid diarize"),
        (Some(&wav), vec![("language", "hi-IN")], "invalid language"),
    ];
    for (file, fields, message) in cases {
        let r = post_form(&api, file, &fields).await;
        assert_eq!(r.status(), 400, "{message}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(error_of(&v), ("invalid_request", message), "{v}");
    }
    // Over the size limit, declared: refused before a byte of the body is sent.
    let answer = declared_upload(&s.base, &api.key, 2_000_000);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains(r#"{"error":{"message":"file too large","type":"invalid_request"}}"#),
        "{answer}"
    );
    assert_eq!(
        db.scalar(&s.data, "SELECT COUNT(*) FROM transcription_jobs"),
        "0"
    );

    // Undeclared (chunked): the server stops at the limit, not at the end of the file.
    let sent = chunked_upload(&s.base, &api.key, 50 * 1024 * 1024);
    assert!(sent.0 < 40 * 1024 * 1024, "read {} bytes", sent.0);
    assert!(sent.1.starts_with("HTTP/1.1 413"), "{}", sent.1);
    assert!(sent.1.contains("file too large"), "{}", sent.1);
    assert_eq!(
        db.scalar(&s.data, "SELECT COUNT(*) FROM transcription_jobs"),
        "0"
    );

    // Ids: another tenant's job and ids that cannot exist are not found.
    let id = start_job(&api, &wav, &[]).await;
    let stranger = Api::new(&s.base, &Service::create_tenant_in(dir.path(), &db));
    for (who, path) in [
        (&stranger, format!("/v1/transcription/jobs/{id}")),
        (&api, "/v1/transcription/jobs/job_000000000000".to_string()),
        (&api, "/v1/transcription/jobs/job_ABC".to_string()),
    ] {
        let r = who.get(&path).await;
        assert_eq!(r.status(), 404, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(error_of(&v), ("not_found", "job not found"), "{v}");
    }
    let mine = api.get_json(&format!("/v1/transcription/jobs/{id}")).await;
    assert_eq!(
        (&mine["status"], &mine["text"], &mine["language"]),
        (&Value::from("pending"), &Value::Null, &Value::Null)
    );
    assert_eq!(mine["utterances"], serde_json::json!([]));
}

/// Headers declaring a `length`-byte upload, and no body: the answer.
fn declared_upload(base: &str, key: &str, length: usize) -> String {
    let mut c = TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "POST /v1/transcription/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {length}\r\n\r\n"
    );
    c.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A WAV header then `total` bytes of silence, chunked (no declared length); returns what was
/// sent before the server stopped reading, and its answer.
fn chunked_upload(base: &str, key: &str, total: usize) -> (usize, String) {
    let addr = base.trim_start_matches("http://");
    let boundary = "bOuNdArY";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"a.wav\"\r\n\r\nRIFF\x24\0\0\0WAVEfmt "
    );
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = c.try_clone().unwrap();
    let answer = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    let request = format!(
        "POST /v1/transcription/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{head}\r\n",
        head.len()
    );
    c.write_all(request.as_bytes()).unwrap();
    let zeros = vec![0u8; 64 * 1024];
    let chunk = [
        format!("{:x}\r\n", zeros.len()).into_bytes(),
        zeros,
        b"\r\n".to_vec(),
    ]
    .concat();
    let mut sent = 0;
    while sent < total {
        match c.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    drop(c);
    (sent, answer.join().unwrap())
}

/// SIGKILL while a job is being transcribed, then a restart: the job is taken up again once
/// its lease runs out and completes exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_killed_mid_transcription_completes_once_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, _guard) = Db::postgres();
    let (mut s, api) = start(
        dir.path(),
        &pg,
        &[("OUTDIAL_TRANSCRIPTION_LEASE_SECONDS", "3")],
    );
    // About a minute of speech: long enough to be killed in the middle of it.
    let sentence = "The customer said that the payment of twenty nine thousand rupees will be made on Friday. ";
    let wav = speak(dir.path(), "long", "en-us", &sentence.repeat(10));
    let id = start_job(&api, &encode(&wav, "mp3"), &[("languages", "en-IN")]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = api.get_json(&format!("/v1/transcription/jobs/{id}")).await;
        if v["status"] == "processing" {
            break;
        }
        assert_eq!(
            v["status"], "pending",
            "done before it could be killed: {v}"
        );
        assert!(Instant::now() < deadline, "never started: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Into the transcription itself (the model is loaded by now).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.kill();
    let attempts = pg.scalar(
        dir.path(),
        &format!("SELECT attempts || status FROM transcription_jobs WHERE id = '{id}'"),
    );
    assert_eq!(
        attempts, "1processing",
        "killed while it was being worked on"
    );
    s.restart();
    let v = wait_done(&api, &id, Duration::from_secs(240)).await;
    assert_eq!(v["status"], "completed", "{v}");
    assert!(words(v["text"].as_str().unwrap()).contains("friday"), "{v}");
    assert_eq!(
        pg.scalar(
            dir.path(),
            &format!("SELECT attempts FROM transcription_jobs WHERE id = '{id}'")
        ),
        "2",
        "taken up once more after the kill, and only once"
    );
    assert_eq!(
        pg.scalar(
            dir.path(),
            &format!("SELECT COUNT(*) FROM transcription_audio WHERE job_id = '{id}'")
        ),
        "0",
        "the file is dropped once the job is done"
    );
}
