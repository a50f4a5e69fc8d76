//! The Deepgram adapter against a recorded `/v1/listen` exchange replayed by a real WebSocket
//! server on loopback. The server checks what a real one would (the Authorization header, the
//! audio description in the query, binary audio, `CloseStream`) and answers with the recorded
//! messages (`tests/fixtures/deepgram/*.jsonl`): each `Results` message once it has received
//! the audio the message covers (`start + duration`), flushed ones (`from_finalize`) and the
//! `Metadata` after `CloseStream`, then a normal close.

// tungstenite's handshake callback returns its own (large) error response type.
#![allow(clippy::result_large_err)]

use agent::{Deepgram, DeepgramConfig, SpeechToText, SttError};
use domain::telephony::SAMPLE_RATE;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "dg-test-4f1a9c7e2b8d";

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/deepgram/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[derive(Clone)]
enum Mode {
    Replay(Vec<Value>),
    /// Refuse the handshake as Deepgram does a bad key.
    Unauthorized,
    /// Close with 1011 after this many audio bytes, as on a server-side failure.
    FailAfter(usize),
}

#[derive(Default, Debug, Clone)]
struct Seen {
    uri: String,
    authorization: Option<String>,
    audio_bytes: usize,
    binary_frames: usize,
    texts: Vec<String>,
}

async fn serve(mode: Mode) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let all = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let mode = mode.clone();
            let all = all.clone();
            tokio::spawn(async move {
                let mut s = Seen::default();
                let reject = matches!(mode, Mode::Unauthorized);
                let head = Arc::new(Mutex::new((String::new(), None)));
                let h = head.clone();
                let accepted = tokio_tungstenite::accept_hdr_async(
                    sock,
                    move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        *h.lock().unwrap() = (req.uri().to_string(), auth);
                        if reject {
                            let mut e = ErrorResponse::new(Some(fixture("error_401.json")));
                            *e.status_mut() = StatusCode::UNAUTHORIZED;
                            e.headers_mut()
                                .insert("dg-error", "Invalid credentials.".parse().unwrap());
                            return Err(e);
                        }
                        Ok(resp)
                    },
                )
                .await;
                (s.uri, s.authorization) = head.lock().unwrap().clone();
                let Ok(mut ws) = accepted else {
                    all.lock().unwrap().push(s);
                    return;
                };
                let mut pending: Vec<Value> = match &mode {
                    Mode::Replay(m) => m.clone(),
                    _ => Vec::new(),
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Binary(b) => {
                            s.audio_bytes += b.len();
                            s.binary_frames += 1;
                            if let Mode::FailAfter(n) = mode {
                                if s.audio_bytes >= n {
                                    let _ = ws
                                        .close(Some(CloseFrame {
                                            code: CloseCode::Error,
                                            reason: "NET-0001".into(),
                                        }))
                                        .await;
                                    break;
                                }
                            }
                            // Results go out once the audio they cover has arrived.
                            let heard = s.audio_bytes as f64 / (2.0 * f64::from(SAMPLE_RATE));
                            while let Some(m) = pending.first() {
                                let due = m["type"] == "Results"
                                    && m["from_finalize"] != true
                                    && m["start"].as_f64().unwrap()
                                        + m["duration"].as_f64().unwrap()
                                        <= heard + 1e-9;
                                if !due {
                                    break;
                                }
                                let m = pending.remove(0);
                                ws.send(Message::Text(m.to_string().into())).await.unwrap();
                            }
                        }
                        Message::Text(t) => {
                            s.texts.push(t.to_string());
                            if t.as_str() == r#"{"type":"CloseStream"}"# {
                                for m in pending.drain(..) {
                                    ws.send(Message::Text(m.to_string().into())).await.unwrap();
                                }
                                let _ = ws.close(None).await;
                            }
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                all.lock().unwrap().push(s);
            });
        }
    });
    (format!("ws://{addr}/v1/listen"), seen)
}

fn recorded() -> Vec<Value> {
    fixture("yes_friday.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn config(url: &str) -> DeepgramConfig {
    DeepgramConfig {
        url: url.into(),
        language: Some("en-IN".into()),
        ..DeepgramConfig::new(KEY)
    }
}

/// 2.24 s of audio, the length of the recorded utterance (its content is not re-recognised).
fn utterance() -> Vec<i16> {
    (0..(2.24 * f64::from(SAMPLE_RATE)) as usize)
        .map(|i| ((i as f64 * 0.07).sin() * 6000.0) as i16)
        .collect()
}

async fn wait_seen(seen: &Arc<Mutex<Vec<Seen>>>) -> Seen {
    for _ in 0..100 {
        if let Some(s) = seen.lock().unwrap().first().cloned() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the server saw no stream");
}

#[tokio::test]
async fn an_utterance_is_streamed_and_its_final_results_joined() {
    let (url, seen) = serve(Mode::Replay(recorded())).await;
    let dg = Deepgram::new(config(&url));
    let audio = utterance();
    let text = dg
        .transcribe(&audio, &["yes".into(), "next week".into()])
        .await
        .unwrap();
    // Interim results ("yes i", "pay by") are not the answer; the finals are, in order, with
    // the lower of their confidences.
    assert_eq!(text.text, "Yes, I can pay by Friday.");
    assert_eq!(text.confidence, Some(0.9741));

    let s = wait_seen(&seen).await;
    assert_eq!(
        s.authorization.as_deref(),
        Some(format!("Token {KEY}").as_str())
    );
    assert!(s.uri.starts_with("/v1/listen?"), "{}", s.uri);
    let url = reqwest::Url::parse(&format!("ws://x{}", s.uri)).unwrap();
    let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let has = |k: &str, v: &str| q.iter().any(|(a, b)| a == k && b == v);
    assert!(has("encoding", "linear16") && has("sample_rate", "16000") && has("channels", "1"));
    assert!(has("model", "nova-3") && has("language", "en-IN"));
    assert!(
        has("keyterm", "yes") && has("keyterm", "next week"),
        "{q:?}"
    );
    assert_eq!(s.audio_bytes, audio.len() * 2, "every sample went up");
    assert!(
        s.binary_frames >= 20,
        "in 100 ms frames: {}",
        s.binary_frames
    );
    assert_eq!(s.texts, vec![r#"{"type":"CloseStream"}"#]);
}

#[tokio::test]
async fn a_stream_fed_while_the_caller_speaks_gives_the_same_words() {
    let (url, seen) = serve(Mode::Replay(recorded())).await;
    let dg = Deepgram::new(config(&url));
    let stream = dg.stream(&[]).expect("deepgram streams");
    let audio = utterance();
    for frame in audio.chunks(320) {
        stream.push(frame);
    }
    assert_eq!(
        stream.finish().await.unwrap().text,
        "Yes, I can pay by Friday."
    );
    let s = wait_seen(&seen).await;
    assert_eq!(s.audio_bytes, audio.len() * 2);
    assert_eq!(s.binary_frames, audio.len().div_ceil(320));
}

#[tokio::test]
async fn a_refused_key_is_a_clear_error_without_the_key() {
    let (url, _) = serve(Mode::Unauthorized).await;
    let err = Deepgram::new(config(&url))
        .transcribe(&utterance(), &[])
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SttError::Rejected(_)), "{err:?}");
    assert!(
        msg.contains("401") && msg.contains("Invalid credentials."),
        "{msg}"
    );
    assert!(!msg.contains(KEY));
}

#[tokio::test]
async fn a_server_that_fails_mid_stream_is_an_error() {
    let (url, _) = serve(Mode::FailAfter(16_000)).await;
    let err = Deepgram::new(config(&url))
        .transcribe(&utterance(), &[])
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("closed the stream: 1011 NET-0001"), "{msg}");
    assert!(matches!(err, SttError::Engine(_)), "{err:?}");
}
