//! Speech-to-text engines.

use async_trait::async_trait;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum SttError {
    #[error("speech-to-text engine failed to start: {0}")]
    Spawn(String),
    #[error("speech-to-text engine failed: {0}")]
    Engine(String),
    #[error("speech-to-text engine refused the audio: {0}")]
    Rejected(String),
    #[error("speech-to-text took longer than {0:?}")]
    Timeout(Duration),
}

#[async_trait]
pub trait SpeechToText: Send + Sync + 'static {
    /// The words in `audio` (16 kHz mono). `phrases` are what the caller is expected to say
    /// now; an engine may use them to constrain or bias recognition.
    async fn transcribe(&self, audio: &[i16], phrases: &[String]) -> Result<String, SttError>;
}

/// The sidecar's source, shipped inside the binary and run with `python3 -c`, so no file has to
/// be installed next to it.
const SIDECAR: &str = include_str!("../sidecar/pocketsphinx_stt.py");

struct Sidecar {
    // Held so the process is killed when the sidecar is dropped or replaced.
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// pocketsphinx (PyPI `pocketsphinx==5.1.1`, en-us model inside) in a supervised Python
/// process: no maintained Rust binding ships its model. One decode at a time per sidecar; a
/// sidecar that dies or times out is replaced on the next request, so one bad utterance never
/// takes transcription down for the node.
pub struct PocketSphinx {
    python: String,
    timeout: Duration,
    sidecar: Mutex<Option<Sidecar>>,
}

#[derive(serde::Deserialize)]
struct Response {
    #[serde(default)]
    text: String,
    #[serde(default)]
    error: Option<String>,
}

impl PocketSphinx {
    pub fn new(python: impl Into<String>, timeout: Duration) -> Self {
        Self {
            python: python.into(),
            timeout,
            sidecar: Mutex::new(None),
        }
    }

    /// Starts the sidecar now (model load takes ~0.5-2 s) rather than on the first utterance.
    pub async fn warm_up(&self) -> Result<(), SttError> {
        let mut guard = self.sidecar.lock().await;
        if guard.is_none() {
            *guard = Some(self.spawn().await?);
        }
        Ok(())
    }

    async fn spawn(&self) -> Result<Sidecar, SttError> {
        let mut child = Command::new(&self.python)
            .args(["-u", "-c", SIDECAR])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SttError::Spawn(format!("{}: {e}", self.python)))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| SttError::Spawn("no stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| SttError::Spawn("no stdout".into()))?;
        let mut sidecar = Sidecar {
            _child: child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let mut line = String::new();
        let ready =
            tokio::time::timeout(Duration::from_secs(30), sidecar.stdout.read_line(&mut line))
                .await
                .map_err(|_| SttError::Spawn("model did not load within 30 s".into()))?
                .map_err(|e| SttError::Spawn(e.to_string()))?;
        if ready == 0 || line.trim() != "ready" {
            return Err(SttError::Spawn(
                "sidecar exited before it was ready (is `pip install pocketsphinx==5.1.1` done?)"
                    .into(),
            ));
        }
        tracing::info!("pocketsphinx sidecar started");
        Ok(sidecar)
    }

    async fn exchange(
        sidecar: &mut Sidecar,
        audio: &[i16],
        phrases: &[String],
    ) -> Result<String, SttError> {
        let io = |e: std::io::Error| SttError::Engine(e.to_string());
        let header = serde_json::json!({ "samples": audio.len(), "phrases": phrases });
        let mut request = header.to_string().into_bytes();
        request.push(b'\n');
        request.reserve(audio.len() * 2);
        for s in audio {
            request.extend_from_slice(&s.to_le_bytes());
        }
        sidecar.stdin.write_all(&request).await.map_err(io)?;
        sidecar.stdin.flush().await.map_err(io)?;
        let mut line = String::new();
        if sidecar.stdout.read_line(&mut line).await.map_err(io)? == 0 {
            return Err(SttError::Engine("sidecar exited".into()));
        }
        let response: Response =
            serde_json::from_str(&line).map_err(|e| SttError::Engine(format!("bad reply: {e}")))?;
        match response.error {
            Some(e) => Err(SttError::Rejected(e)),
            None => Ok(response.text),
        }
    }
}

impl Default for PocketSphinx {
    fn default() -> Self {
        Self::new("python3", Duration::from_secs(10))
    }
}

#[async_trait]
impl SpeechToText for PocketSphinx {
    async fn transcribe(&self, audio: &[i16], phrases: &[String]) -> Result<String, SttError> {
        let mut guard = self.sidecar.lock().await;
        let mut last = SttError::Engine("not attempted".into());
        // One retry on a fresh process: the first failure may be a sidecar that died earlier.
        for attempt in 0..2 {
            let mut sidecar = match guard.take() {
                Some(s) => s,
                None => self.spawn().await?,
            };
            match tokio::time::timeout(self.timeout, Self::exchange(&mut sidecar, audio, phrases))
                .await
            {
                Ok(Ok(text)) => {
                    *guard = Some(sidecar);
                    return Ok(text);
                }
                // The engine refused this audio but the process is sound: keep it, no retry.
                Ok(Err(e @ SttError::Rejected(_))) => {
                    *guard = Some(sidecar);
                    return Err(e);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, attempt, "pocketsphinx sidecar failed; restarting it");
                    last = e;
                }
                Err(_) => {
                    tracing::warn!(attempt, "pocketsphinx sidecar timed out; restarting it");
                    last = SttError::Timeout(self.timeout);
                }
            }
        }
        Err(last)
    }
}
