//! Deepgram streaming speech-to-text (`/v1/listen` over a WebSocket), a cloud adapter behind
//! [`SpeechToText`]. The protocol: the query string describes the audio (`linear16`, 16 kHz,
//! mono) and the model; audio goes up as binary frames; the server answers with `Results`
//! messages (interim, then `is_final`, with `speech_final` at an end of speech); the text message
//! `{"type":"CloseStream"}` asks it to flush, send its last results and a `Metadata` message, and
//! close. The API key travels only in the `Authorization: Token <key>` header and is never
//! logged or put in an error.

use crate::stt::{Feed, SpeechToText, StreamFeed, SttError, SttStream, Transcript};
use async_trait::async_trait;
use domain::telephony::SAMPLE_RATE;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::Instrument;

pub const DEFAULT_URL: &str = "wss://api.deepgram.com/v1/listen";
pub const DEFAULT_MODEL: &str = "nova-3";

#[derive(Clone)]
pub struct DeepgramConfig {
    /// `wss://api.deepgram.com/v1/listen`, or a compatible server (tests: a loopback `ws://`).
    pub url: String,
    pub api_key: String,
    pub model: String,
    /// BCP 47, e.g. `en-IN`; `None` leaves it to the model's default.
    pub language: Option<String>,
    /// Connect and WebSocket handshake.
    pub connect_timeout: Duration,
    /// Last audio sent -> the server's final results and close.
    pub finish_timeout: Duration,
}

// The key must not end up in logs through a `{:?}`.
impl std::fmt::Debug for DeepgramConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeepgramConfig")
            .field("url", &self.url)
            .field("api_key", &"<redacted>")
            .field("model", &self.model)
            .field("language", &self.language)
            .finish()
    }
}

impl DeepgramConfig {
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            url: DEFAULT_URL.into(),
            api_key: api_key.into(),
            model: DEFAULT_MODEL.into(),
            language: None,
            connect_timeout: Duration::from_secs(5),
            finish_timeout: Duration::from_secs(5),
        }
    }
}

pub struct Deepgram {
    config: DeepgramConfig,
}

/// One message from the server, as far as a conversation cares.
#[derive(Debug, Clone, PartialEq)]
pub enum DeepgramEvent {
    Transcript {
        text: String,
        /// The alternative's `confidence` (0-1), when the server gives one.
        confidence: Option<f32>,
        is_final: bool,
        speech_final: bool,
    },
    SpeechStarted,
    UtteranceEnd,
    /// Sent once the stream is closed; the session is over.
    Metadata,
}

#[derive(Deserialize)]
struct ServerMessage {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    is_final: bool,
    #[serde(default)]
    speech_final: bool,
    #[serde(default)]
    channel: Option<Channel>,
    // Error messages (a `type` of "Error") carry these.
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    err_msg: Option<String>,
}

#[derive(Deserialize)]
struct Channel {
    #[serde(default)]
    alternatives: Vec<Alternative>,
}

#[derive(Deserialize)]
struct Alternative {
    #[serde(default)]
    transcript: String,
    #[serde(default)]
    confidence: Option<f32>,
}

/// Parses one text message from the server.
pub fn parse_message(text: &str) -> Result<Option<DeepgramEvent>, SttError> {
    let m: ServerMessage = serde_json::from_str(text)
        .map_err(|e| SttError::Engine(format!("deepgram sent unreadable JSON: {e}")))?;
    Ok(match m.kind.as_str() {
        "Results" => {
            let best = m.channel.and_then(|c| c.alternatives.into_iter().next());
            Some(DeepgramEvent::Transcript {
                confidence: best.as_ref().and_then(|a| a.confidence),
                text: best.map(|a| a.transcript).unwrap_or_default(),
                is_final: m.is_final,
                speech_final: m.speech_final,
            })
        }
        "SpeechStarted" => Some(DeepgramEvent::SpeechStarted),
        "UtteranceEnd" => Some(DeepgramEvent::UtteranceEnd),
        "Metadata" => Some(DeepgramEvent::Metadata),
        "Error" => {
            return Err(SttError::Engine(format!(
                "deepgram: {}",
                m.description
                    .or(m.err_msg)
                    .unwrap_or_else(|| "error".into())
            )))
        }
        _ => None,
    })
}

impl Deepgram {
    pub fn new(config: DeepgramConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &DeepgramConfig {
        &self.config
    }

    /// The listen URL for a stream; `phrases` become key terms (nova-3) or keywords (older
    /// models) so expected answers are favoured, not forced.
    pub fn url(&self, phrases: &[String]) -> Result<reqwest::Url, SttError> {
        listen_url(&self.config, phrases)
    }
}

fn listen_url(config: &DeepgramConfig, phrases: &[String]) -> Result<reqwest::Url, SttError> {
    let mut url = reqwest::Url::parse(&config.url)
        .map_err(|e| SttError::Spawn(format!("deepgram URL: {e}")))?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(SttError::Spawn(
            "deepgram URL must be ws:// or wss://".into(),
        ));
    }
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("encoding", "linear16")
            .append_pair("sample_rate", &SAMPLE_RATE.to_string())
            .append_pair("channels", "1")
            .append_pair("model", &config.model)
            .append_pair("punctuate", "true")
            .append_pair("interim_results", "true");
        if let Some(lang) = &config.language {
            q.append_pair("language", lang);
        }
        let keyterms = config.model.starts_with("nova-3");
        let mut seen = std::collections::BTreeSet::new();
        for p in phrases.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            if seen.len() >= 50 || !seen.insert(p.to_lowercase()) {
                continue;
            }
            q.append_pair(if keyterms { "keyterm" } else { "keywords" }, p);
        }
    }
    Ok(url)
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(config: &DeepgramConfig, phrases: &[String]) -> Result<Socket, SttError> {
    let url = listen_url(config, phrases)?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| SttError::Spawn(format!("deepgram request: {e}")))?;
    let auth = HeaderValue::from_str(&format!("Token {}", config.api_key))
        .map_err(|_| SttError::Spawn("the deepgram key is not a valid header value".into()))?;
    request.headers_mut().insert("Authorization", auth);
    let limit = config.connect_timeout;
    let (socket, _) = tokio::time::timeout(limit, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| SttError::Timeout(limit))?
        .map_err(handshake_error)?;
    Ok(socket)
}

/// A refused handshake is an HTTP answer; Deepgram puts its reason in `dg-error` and the body.
fn handshake_error(e: WsError) -> SttError {
    match e {
        WsError::Http(resp) => {
            let status = resp.status().as_u16();
            let reason = resp
                .headers()
                .get("dg-error")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| {
                    resp.body()
                        .as_ref()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                        .and_then(|v| {
                            v.get("err_msg")
                                .and_then(|m| m.as_str())
                                .map(str::to_string)
                        })
                })
                .unwrap_or_default();
            SttError::Rejected(
                format!("deepgram refused the stream ({status}) {reason}")
                    .trim()
                    .to_string(),
            )
        }
        other => SttError::Engine(format!("deepgram connection: {other}")),
    }
}

fn send_err(e: WsError) -> SttError {
    SttError::Engine(format!("deepgram send: {e}"))
}

const CLOSE_STREAM: &str = r#"{"type":"CloseStream"}"#;

/// Deepgram closes a stream that gets no data for 10 s; a caller silent that long is normal.
const KEEP_ALIVE: Duration = Duration::from_secs(4);

/// One utterance on one stream: audio from `feed` goes up as it comes (the handshake overlaps
/// the caller's first words), final results are gathered as they arrive, and at [`Feed::End`]
/// `CloseStream` flushes the rest. The answer is the final transcripts, joined, with the lowest
/// of their confidences: one doubtful part makes the whole reply doubtful.
async fn session(
    config: DeepgramConfig,
    phrases: Vec<String>,
    mut feed: mpsc::UnboundedReceiver<Feed>,
) -> Result<Transcript, SttError> {
    let socket = connect(&config, &phrases).await?;
    let (mut sink, mut source) = socket.split();
    let mut parts: Vec<String> = Vec::new();
    let mut confidence: Option<f32> = None;
    let mut closing: Option<Instant> = None;
    let mut keep_alive = tokio::time::interval_at(Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    loop {
        let deadline = closing.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            // What the server says first: a close or an error must win over more audio.
            biased;
            msg = source.next() => {
                let Some(msg) = msg else { break };
                match msg.map_err(|e| SttError::Engine(format!("deepgram stream: {e}")))? {
                    Message::Text(text) => match parse_message(text.as_str())? {
                        Some(DeepgramEvent::Transcript { text, confidence: c, is_final: true, .. })
                            if !text.trim().is_empty() =>
                        {
                            parts.push(text.trim().to_string());
                            if let Some(c) = c {
                                confidence = Some(confidence.map_or(c, |m| m.min(c)));
                            }
                        }
                        Some(DeepgramEvent::Metadata) if closing.is_some() => break,
                        _ => {}
                    },
                    Message::Close(Some(f)) if f.code != CloseCode::Normal => {
                        return Err(SttError::Engine(format!(
                            "deepgram closed the stream: {} {}",
                            u16::from(f.code),
                            f.reason
                        )));
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            item = feed.recv(), if closing.is_none() => match item {
                Some(Feed::Audio(samples)) => {
                    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
                    sink.send(Message::Binary(bytes.into())).await.map_err(send_err)?;
                    keep_alive.reset();
                }
                Some(Feed::End) => {
                    sink.send(Message::Text(CLOSE_STREAM.into())).await.map_err(send_err)?;
                    closing = Some(Instant::now() + config.finish_timeout);
                }
                None => {
                    // Cancelled: nobody wants the words; let the server stop at once.
                    let _ = sink.send(Message::Text(CLOSE_STREAM.into())).await;
                    return Err(SttError::Engine("the utterance was cancelled".into()));
                }
            },
            _ = keep_alive.tick(), if closing.is_none() => {
                sink.send(Message::Text(r#"{"type":"KeepAlive"}"#.into()))
                    .await
                    .map_err(send_err)?;
            }
            _ = tokio::time::sleep_until(deadline), if closing.is_some() => {
                return Err(SttError::Timeout(config.finish_timeout));
            }
        }
    }
    if closing.is_none() {
        return Err(SttError::Engine(
            "deepgram closed the stream before the utterance ended".into(),
        ));
    }
    // Everything is in; close our side without waiting on the server for long.
    let _ = tokio::time::timeout(Duration::from_millis(200), sink.close()).await;
    Ok(Transcript::new(parts.join(" "), confidence))
}

#[async_trait]
impl SpeechToText for Deepgram {
    /// A whole utterance: a fresh stream fed in 100 ms frames, then closed.
    async fn transcribe(&self, audio: &[i16], phrases: &[String]) -> Result<Transcript, SttError> {
        let (tx, rx) = mpsc::unbounded_channel();
        for frame in audio.chunks(SAMPLE_RATE as usize / 10) {
            let _ = tx.send(Feed::Audio(frame.to_vec()));
        }
        let _ = tx.send(Feed::End);
        session(self.config.clone(), phrases.to_vec(), rx).await
    }

    /// Streaming: the stream opens now and audio goes up while the caller speaks, so at the
    /// end of the turn only the flush is left.
    fn stream(&self, phrases: &[String]) -> Option<SttStream> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (stream, StreamFeed { feed, result }) = SttStream::channel();
        let config = self.config.clone();
        let phrases = phrases.to_vec();
        handle.spawn(
            async move {
                let r = session(config, phrases, feed).await;
                if let Err(e) = &r {
                    tracing::debug!(error = %e, "deepgram stream ended without words");
                }
                let _ = result.send(r);
            }
            .in_current_span(),
        );
        Some(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_stays_out_of_debug_output() {
        let cfg = DeepgramConfig::new("dg-secret-123");
        assert_eq!(cfg.url, DEFAULT_URL);
        assert!(!format!("{cfg:?}").contains("dg-secret-123"));
    }

    #[test]
    fn the_url_describes_the_audio_and_carries_phrases() {
        let mut cfg = DeepgramConfig::new("k");
        cfg.language = Some("en-IN".into());
        let dg = Deepgram::new(cfg.clone());
        let url = dg
            .url(&["yes".into(), "can't".into(), "Yes".into(), " ".into()])
            .unwrap();
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let get = |k: &str| -> Vec<&str> {
            pairs
                .iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(url.host_str(), Some("api.deepgram.com"));
        assert_eq!(get("encoding"), vec!["linear16"]);
        assert_eq!(get("sample_rate"), vec!["16000"]);
        assert_eq!(get("language"), vec!["en-IN"]);
        assert_eq!(get("keyterm"), vec!["yes", "can't"]);
        cfg.model = "nova-2".into();
        let url = Deepgram::new(cfg).url(&["yes".into()]).unwrap();
        assert!(url
            .query_pairs()
            .any(|(k, v)| k == "keywords" && v == "yes"));
        let mut bad = DeepgramConfig::new("k");
        bad.url = "https://api.deepgram.com/v1/listen".into();
        assert!(Deepgram::new(bad).url(&[]).is_err());
    }

    #[test]
    fn server_messages_parse() {
        let r = parse_message(r#"{"type":"Results","is_final":true,"speech_final":false,"channel":{"alternatives":[{"transcript":"hello","confidence":0.9,"words":[]}]}}"#).unwrap();
        assert_eq!(
            r,
            Some(DeepgramEvent::Transcript {
                text: "hello".into(),
                confidence: Some(0.9),
                is_final: true,
                speech_final: false
            })
        );
        assert_eq!(
            parse_message(r#"{"type":"Metadata","request_id":"x"}"#).unwrap(),
            Some(DeepgramEvent::Metadata)
        );
        assert_eq!(parse_message(r#"{"type":"Whatever"}"#).unwrap(), None);
        assert!(parse_message("not json").is_err());
        assert!(parse_message(r#"{"type":"Error","description":"bad audio"}"#).is_err());
    }
}
