//! Supervised Python sidecars for engines whose models ship in PyPI packages and have no Rust
//! binding (piper, faster-whisper). Each process loads its model once and then serves one
//! request at a time over stdin/stdout:
//!
//! - start-up: the process prints one JSON line `{"ready": true, ...}` once its model is loaded;
//! - request: one JSON line, then the raw bytes the line announces (if any);
//! - answer: one JSON line; if it has `"samples": N`, N little-endian int16 samples follow.
//!
//! A process that dies, answers garbage or overruns the timeout is killed and replaced, and the
//! request is retried once on the fresh process, so one bad request never takes the engine down.

use serde_json::Value;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Mutex, MutexGuard};

/// What an operator tunes of an engine's sidecars.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub python: String,
    /// One request.
    pub timeout: Duration,
    /// Model load at start-up.
    pub start_timeout: Duration,
    /// Processes, each holding the model; requests are spread over them.
    pub processes: usize,
}

impl SidecarConfig {
    /// One process on `python3` with a minute to load its model, `timeout` a request.
    pub fn new(timeout: Duration) -> Self {
        Self {
            python: "python3".into(),
            timeout,
            start_timeout: Duration::from_secs(60),
            processes: 1,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// For logs: "piper", "whisper".
    pub name: &'static str,
    pub script: &'static str,
    pub env: Vec<(&'static str, String)>,
    pub config: SidecarConfig,
    /// What to install when the process cannot start, for the error message.
    pub install: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SidecarError {
    #[error("{0}")]
    Spawn(String),
    #[error("{0}")]
    Broken(String),
    #[error("took longer than {0:?}")]
    Timeout(Duration),
}

impl From<SidecarError> for crate::stt::SttError {
    fn from(e: SidecarError) -> Self {
        match e {
            SidecarError::Spawn(m) => Self::Spawn(m),
            SidecarError::Broken(m) => Self::Engine(m),
            SidecarError::Timeout(d) => Self::Timeout(d),
        }
    }
}

struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// The most samples an answer may announce: 10 minutes at 22.05 kHz.
const MAX_SAMPLES: usize = 22_050 * 600;

pub(crate) struct Pool {
    spec: Spec,
    slots: Vec<Mutex<Option<Process>>>,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(spec: Spec) -> Self {
        let slots = (0..spec.config.processes.max(1))
            .map(|_| Mutex::new(None))
            .collect();
        Self {
            spec,
            slots,
            next: AtomicUsize::new(0),
        }
    }

    pub async fn warm_up(&self) -> Result<(), SidecarError> {
        for slot in &self.slots {
            let mut guard = slot.lock().await;
            if guard.is_none() {
                *guard = Some(self.spawn().await?);
            }
        }
        Ok(())
    }

    pub async fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for slot in &self.slots {
            if let Some(id) = slot.lock().await.as_ref().and_then(|p| p.child.id()) {
                pids.push(id);
            }
        }
        pids
    }

    async fn spawn(&self) -> Result<Process, SidecarError> {
        let mut cmd = Command::new(&self.spec.config.python);
        cmd.args(["-u", "-c", self.spec.script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| SidecarError::Spawn(format!("{}: {e}", self.spec.config.python)))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(SidecarError::Spawn("no pipes to the process".into()));
        };
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let limit = self.spec.config.start_timeout;
        let n = tokio::time::timeout(limit, stdout.read_line(&mut line))
            .await
            .map_err(|_| SidecarError::Spawn(format!("the model did not load within {limit:?}")))?
            .map_err(|e| SidecarError::Spawn(e.to_string()))?;
        let ready = serde_json::from_str::<Value>(&line)
            .ok()
            .is_some_and(|v| v["ready"] == true);
        if n == 0 || !ready {
            return Err(SidecarError::Spawn(format!(
                "the {} sidecar exited before it was ready (is `{}` done?)",
                self.spec.name, self.spec.install
            )));
        }
        tracing::info!(pid = child.id(), engine = self.spec.name, "sidecar started");
        Ok(Process {
            child,
            stdin,
            stdout,
        })
    }

    async fn exchange(p: &mut Process, request: &[u8]) -> Result<(Value, Vec<i16>), SidecarError> {
        let io = |e: std::io::Error| SidecarError::Broken(e.to_string());
        p.stdin.write_all(request).await.map_err(io)?;
        p.stdin.flush().await.map_err(io)?;
        let mut line = String::new();
        if p.stdout.read_line(&mut line).await.map_err(io)? == 0 {
            return Err(SidecarError::Broken("the process exited".into()));
        }
        let answer: Value = serde_json::from_str(&line)
            .map_err(|e| SidecarError::Broken(format!("unreadable answer: {e}")))?;
        let samples = match answer.get("samples") {
            None => Vec::new(),
            Some(n) => {
                let n = n
                    .as_u64()
                    .map(|n| n as usize)
                    .filter(|n| *n <= MAX_SAMPLES)
                    .ok_or_else(|| SidecarError::Broken(format!("bad sample count {n}")))?;
                let mut bytes = vec![0u8; n * 2];
                p.stdout.read_exact(&mut bytes).await.map_err(io)?;
                bytes
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect()
            }
        };
        Ok((answer, samples))
    }

    /// A free process if there is one, otherwise the next in turn.
    async fn slot(&self) -> MutexGuard<'_, Option<Process>> {
        for slot in &self.slots {
            if let Ok(guard) = slot.try_lock() {
                return guard;
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slots[i].lock().await
    }

    /// One request: the JSON `line`, then `payload`. The answer's JSON (an `"error"` in it is
    /// the engine refusing this request, the process being sound) and its samples.
    pub async fn call(
        &self,
        line: &Value,
        payload: &[u8],
    ) -> Result<(Value, Vec<i16>), SidecarError> {
        let mut request = line.to_string().into_bytes();
        request.push(b'\n');
        request.extend_from_slice(payload);
        let mut guard = self.slot().await;
        let mut last = SidecarError::Broken("not attempted".into());
        // One retry on a fresh process: the first failure may be a process that died earlier.
        for attempt in 0..2 {
            let mut p = match guard.take() {
                Some(p) => p,
                None => self.spawn().await?,
            };
            match tokio::time::timeout(self.spec.config.timeout, Self::exchange(&mut p, &request))
                .await
            {
                Ok(Ok(answer)) => {
                    *guard = Some(p);
                    return Ok(answer);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, attempt, engine = self.spec.name, "sidecar failed; restarting it");
                    last = e;
                }
                Err(_) => {
                    tracing::warn!(
                        attempt,
                        engine = self.spec.name,
                        "sidecar timed out; restarting it"
                    );
                    last = SidecarError::Timeout(self.spec.config.timeout);
                }
            }
            // Dropping `p` kills the process (kill_on_drop).
        }
        Err(last)
    }
}
