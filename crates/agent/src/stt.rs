//! Speech-to-text engines.
//!
//! Two ways in: [`SpeechToText::transcribe`] for a whole utterance, and
//! [`SpeechToText::stream`] for an utterance fed while the caller speaks, so that at the end of
//! the turn only finalisation is left. The conversation runtime streams when the engine can and
//! buffers the utterance for `transcribe` when it cannot.

use async_trait::async_trait;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::Instrument;

#[derive(Debug, Clone, thiserror::Error)]
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

/// What a recogniser heard in one utterance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transcript {
    pub text: String,
    /// The engine's own estimate, 0.0-1.0, that `text` is what was said; `None` when the engine
    /// gives none. Engines differ in what they measure (documented on each), so a threshold is
    /// per engine, and the understanding benchmark is what tunes it.
    pub confidence: Option<f32>,
}

impl Transcript {
    pub fn new(text: impl Into<String>, confidence: Option<f32>) -> Self {
        Self {
            text: text.into(),
            confidence,
        }
    }
}

/// Words without a confidence: scripted recognisers in tests, and engines that give none.
impl From<&str> for Transcript {
    fn from(text: &str) -> Self {
        Self::new(text, None)
    }
}

impl From<String> for Transcript {
    fn from(text: String) -> Self {
        Self::new(text, None)
    }
}

/// What a reply is expected to answer: the agent's last words before it and the phrases the
/// brain listens for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listening {
    /// The line the agent spoke last ("Can you pay it by Friday?"); empty before it has spoken.
    pub asked: String,
    pub phrases: Vec<String>,
}

#[async_trait]
pub trait SpeechToText: Send + Sync + 'static {
    /// The words in `audio` (16 kHz mono). `phrases` are what the caller is expected to say
    /// now; an engine may use them to constrain or bias recognition.
    async fn transcribe(&self, audio: &[i16], phrases: &[String]) -> Result<Transcript, SttError>;

    /// The words of a reply to `listening.asked`. An engine that conditions on the conversation
    /// (Whisper) hears a reply better after the question it answers; the others hear
    /// `listening.phrases` as in [`SpeechToText::transcribe`].
    async fn transcribe_reply(
        &self,
        audio: &[i16],
        listening: &Listening,
    ) -> Result<Transcript, SttError> {
        self.transcribe(audio, &listening.phrases).await
    }

    /// Starts recognising one utterance that will be fed as it is heard. `None`: this engine
    /// only takes whole utterances.
    fn stream(&self, _phrases: &[String]) -> Option<SttStream> {
        None
    }
}

/// What the runtime sends down a stream.
#[derive(Debug)]
pub enum Feed {
    Audio(Vec<i16>),
    /// The utterance is over: finalise and answer.
    End,
}

/// The runtime's end of a streaming recognition. Pushing never blocks (the engine queues);
/// dropping the stream without [`SttStream::finish`] cancels it.
#[derive(Debug)]
pub struct SttStream {
    feed: mpsc::UnboundedSender<Feed>,
    result: oneshot::Receiver<Result<Transcript, SttError>>,
}

/// The engine's end of a streaming recognition: audio arrives on `feed`; `None` from it before
/// [`Feed::End`] means the utterance was cancelled. The answer goes to `result`.
pub struct StreamFeed {
    pub feed: mpsc::UnboundedReceiver<Feed>,
    pub result: oneshot::Sender<Result<Transcript, SttError>>,
}

impl SttStream {
    pub fn channel() -> (SttStream, StreamFeed) {
        let (feed_tx, feed_rx) = mpsc::unbounded_channel();
        let (result_tx, result_rx) = oneshot::channel();
        (
            SttStream {
                feed: feed_tx,
                result: result_rx,
            },
            StreamFeed {
                feed: feed_rx,
                result: result_tx,
            },
        )
    }

    pub fn push(&self, audio: &[i16]) {
        // A send fails only once the engine gave up on the stream; `finish` reports why.
        let _ = self.feed.send(Feed::Audio(audio.to_vec()));
    }

    /// Ends the utterance and waits for its words.
    pub async fn finish(self) -> Result<Transcript, SttError> {
        let _ = self.feed.send(Feed::End);
        self.result
            .await
            .unwrap_or_else(|_| Err(SttError::Engine("the recogniser dropped the stream".into())))
    }
}

/// What `outdial setup` installs for pocketsphinx (the model ships inside the wheel).
pub const PIP_PACKAGES: &[&str] = &["pocketsphinx==5.1.1"];

/// The sidecar's source, shipped inside the binary and run with `python3 -c`, so no file has to
/// be installed next to it.
const SIDECAR: &str = include_str!("../sidecar/pocketsphinx_stt.py");

struct Sidecar {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

#[derive(serde::Deserialize)]
struct Response {
    #[serde(default)]
    text: String,
    #[serde(default)]
    confidence: Option<f32>,
    #[serde(default)]
    error: Option<String>,
}

fn io_err(e: std::io::Error) -> SttError {
    SttError::Engine(e.to_string())
}

impl Sidecar {
    async fn send_line(&mut self, v: serde_json::Value) -> Result<(), SttError> {
        let mut line = v.to_string().into_bytes();
        line.push(b'\n');
        self.stdin.write_all(&line).await.map_err(io_err)
    }

    async fn send_audio(&mut self, audio: &[i16]) -> Result<(), SttError> {
        let mut msg = serde_json::json!({ "op": "audio", "samples": audio.len() })
            .to_string()
            .into_bytes();
        msg.push(b'\n');
        msg.reserve(audio.len() * 2);
        for s in audio {
            msg.extend_from_slice(&s.to_le_bytes());
        }
        self.stdin.write_all(&msg).await.map_err(io_err)
    }

    async fn read_reply(&mut self, timeout: Duration) -> Result<Response, SttError> {
        self.stdin.flush().await.map_err(io_err)?;
        let mut line = String::new();
        let n = tokio::time::timeout(timeout, self.stdout.read_line(&mut line))
            .await
            .map_err(|_| SttError::Timeout(timeout))?
            .map_err(io_err)?;
        if n == 0 {
            return Err(SttError::Engine("sidecar exited".into()));
        }
        serde_json::from_str(&line).map_err(|e| SttError::Engine(format!("bad reply: {e}")))
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

#[derive(Debug, Clone)]
pub struct PocketSphinxConfig {
    pub python: String,
    /// How long finalising an utterance may take before the sidecar counts as stuck.
    pub timeout: Duration,
    /// Sidecars per node: utterances recognised at the same time. A sidecar is held for the
    /// whole utterance (real time) but uses ~3 % of a core meanwhile, so the pool is sized by
    /// utterances in flight, not by cores; each costs ~90 MB.
    pub sidecars: usize,
}

impl Default for PocketSphinxConfig {
    fn default() -> Self {
        Self {
            python: "python3".into(),
            timeout: Duration::from_secs(10),
            sidecars: default_sidecars(),
        }
    }
}

/// Four per core: `outdial-bench voice` on 2 cores kept voice-to-voice at ~600 ms up to 16
/// calls with 2 sidecars and fell to seconds at 32 (utterances queued for a sidecar), while the
/// CPU was far from full.
pub fn default_sidecars() -> usize {
    4 * std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

struct Pool {
    cfg: PocketSphinxConfig,
    /// One permit per sidecar slot: an utterance holds one from its first frame to its words.
    slots: Semaphore,
    idle: Mutex<Vec<Sidecar>>,
}

/// pocketsphinx (PyPI `pocketsphinx==5.1.1`, en-us model inside) in a pool of supervised Python
/// processes, since no maintained Rust binding ships its model. Each utterance is streamed to a
/// sidecar of its own while the caller speaks. A sidecar that dies, stalls past the timeout or
/// answers out of step is killed and replaced, and the utterance is replayed once on another,
/// so one bad process never takes transcription down for the node. When every sidecar is busy
/// the utterance's audio waits in memory and is caught up (faster than real time) once one is
/// free.
#[derive(Clone)]
pub struct PocketSphinx {
    pool: Arc<Pool>,
}

impl PocketSphinx {
    pub fn new(cfg: PocketSphinxConfig) -> Self {
        let size = cfg.sidecars.max(1);
        Self {
            pool: Arc::new(Pool {
                slots: Semaphore::new(size),
                idle: Mutex::new(Vec::with_capacity(size)),
                cfg,
            }),
        }
    }

    pub fn sidecars(&self) -> usize {
        self.pool.cfg.sidecars.max(1)
    }

    /// Starts every sidecar now (model load takes ~0.5-2 s each, in parallel) rather than on
    /// the first utterances.
    pub async fn warm_up(&self) -> Result<(), SttError> {
        let missing = self.sidecars().saturating_sub(self.pool.idle_count());
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..missing {
            let pool = self.pool.clone();
            set.spawn(async move { pool.spawn().await });
        }
        let mut first_error = None;
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(s)) => self.pool.put_back(s),
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(e) => first_error = first_error.or(Some(SttError::Spawn(e.to_string()))),
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Process ids of the idle sidecars (for tests that kill one).
    pub fn idle_pids(&self) -> Vec<u32> {
        self.pool
            .idle
            .lock()
            .map(|v| v.iter().filter_map(|s| s.child.id()).collect())
            .unwrap_or_default()
    }
}

impl Default for PocketSphinx {
    fn default() -> Self {
        Self::new(PocketSphinxConfig::default())
    }
}

impl Pool {
    fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    fn put_back(&self, s: Sidecar) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.cfg.sidecars.max(1) {
                idle.push(s);
            }
        }
    }

    async fn spawn(&self) -> Result<Sidecar, SttError> {
        let mut child = Command::new(&self.cfg.python)
            .args(["-u", "-c", SIDECAR])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SttError::Spawn(format!("{}: {e}", self.cfg.python)))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| SttError::Spawn("no stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| SttError::Spawn("no stdout".into()))?;
        let mut sidecar = Sidecar {
            child,
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
        tracing::info!(pid = sidecar.child.id(), "pocketsphinx sidecar started");
        Ok(sidecar)
    }

    /// A live idle sidecar, or a new one.
    async fn checkout(&self) -> Result<Sidecar, SttError> {
        loop {
            let next = self.idle.lock().ok().and_then(|mut v| v.pop());
            match next {
                Some(mut s) => {
                    if s.alive() {
                        return Ok(s);
                    }
                    tracing::warn!("a pocketsphinx sidecar had died; replacing it");
                }
                None => return self.spawn().await,
            }
        }
    }

    /// Replaces a sidecar that failed, off the caller's path, so the next utterance finds one
    /// ready instead of paying for a model load.
    fn replace(self: &Arc<Self>) {
        let pool = self.clone();
        tokio::spawn(async move {
            match pool.spawn().await {
                Ok(s) => pool.put_back(s),
                Err(e) => tracing::error!(error = %e, "could not replace a pocketsphinx sidecar"),
            }
        });
    }

    /// Feeds one utterance to a sidecar as it arrives; answers with its words.
    async fn run_stream(self: Arc<Self>, phrases: Vec<String>, mut feed: StreamFeed) {
        let mut heard: Vec<i16> = Vec::new();
        let Ok(_slot) = self.slots.acquire().await else {
            return;
        };
        let start = serde_json::json!({ "op": "start", "phrases": phrases });
        let mut sidecar = match self.checkout().await {
            Ok(mut s) => match s.send_line(start.clone()).await {
                Ok(()) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "pocketsphinx sidecar failed at start");
                    self.replace();
                    None
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "no pocketsphinx sidecar");
                None
            }
        };
        let mut batch = Vec::new();
        loop {
            let Some(msg) = feed.feed.recv().await else {
                // Cancelled: the caller's sound was not a turn.
                if let Some(mut s) = sidecar.take() {
                    let ok = s
                        .send_line(serde_json::json!({"op": "cancel"}))
                        .await
                        .is_ok()
                        && s.read_reply(self.cfg.timeout).await.is_ok();
                    if ok {
                        self.put_back(s);
                    } else {
                        self.replace();
                    }
                }
                return;
            };
            let mut end = false;
            batch.clear();
            match msg {
                Feed::Audio(a) => batch.extend_from_slice(&a),
                Feed::End => end = true,
            }
            // Whatever else is queued goes in the same write.
            while !end {
                match feed.feed.try_recv() {
                    Ok(Feed::Audio(a)) => batch.extend_from_slice(&a),
                    Ok(Feed::End) => end = true,
                    Err(_) => break,
                }
            }
            heard.extend_from_slice(&batch);
            if let (Some(s), false) = (sidecar.as_mut(), batch.is_empty()) {
                // A sidecar that stops reading would block the write for ever once the pipe
                // is full: the same timeout as for its answers.
                let sent = tokio::time::timeout(self.cfg.timeout, s.send_audio(&batch))
                    .await
                    .unwrap_or(Err(SttError::Timeout(self.cfg.timeout)));
                if let Err(e) = sent {
                    tracing::warn!(error = %e, "pocketsphinx sidecar failed mid-utterance");
                    sidecar = None;
                    self.replace();
                }
            }
            if end {
                break;
            }
        }
        let result = match sidecar.take() {
            Some(mut s) => match self.finish(&mut s).await {
                Ok(heard) => {
                    self.put_back(s);
                    Ok(heard)
                }
                Err(e @ SttError::Rejected(_)) => {
                    self.put_back(s);
                    Err(e)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pocketsphinx sidecar failed; replaying the utterance on a fresh one");
                    drop(s);
                    self.replace();
                    self.replay(&start, &heard).await
                }
            },
            None => self.replay(&start, &heard).await,
        };
        let _ = feed.result.send(result);
    }

    async fn finish(&self, s: &mut Sidecar) -> Result<Transcript, SttError> {
        s.send_line(serde_json::json!({"op": "end"})).await?;
        let r = s.read_reply(self.cfg.timeout).await?;
        match r.error {
            Some(e) => Err(SttError::Rejected(e)),
            None => Ok(Transcript::new(r.text, r.confidence)),
        }
    }

    /// The whole utterance at once on another sidecar: the one it was streamed to failed.
    async fn replay(
        &self,
        start: &serde_json::Value,
        audio: &[i16],
    ) -> Result<Transcript, SttError> {
        let mut s = self.checkout().await?;
        let attempt = async {
            s.send_line(start.clone()).await?;
            if !audio.is_empty() {
                s.send_audio(audio).await?;
            }
            self.finish(&mut s).await
        };
        let out = attempt.await;
        match &out {
            Ok(_) | Err(SttError::Rejected(_)) => self.put_back(s),
            Err(e) => tracing::error!(error = %e, "pocketsphinx failed twice on one utterance"),
        }
        out
    }
}

#[async_trait]
impl SpeechToText for PocketSphinx {
    /// The confidence is the share of the utterance's word time that went to words other than
    /// the word loop's fillers ("a", "it", "on", "the", "uh", "um"; see the sidecar): audio the
    /// loop cannot match comes out as runs of them ("the i on it i"). pocketsphinx's own
    /// posterior needs the lattice pass the sidecar skips for latency.
    async fn transcribe(&self, audio: &[i16], phrases: &[String]) -> Result<Transcript, SttError> {
        let Some(stream) = self.stream(phrases) else {
            return Err(SttError::Engine("no stream".into()));
        };
        stream.push(audio);
        stream.finish().await
    }

    fn stream(&self, phrases: &[String]) -> Option<SttStream> {
        let (stream, feed) = SttStream::channel();
        tokio::spawn(
            self.pool
                .clone()
                .run_stream(phrases.to_vec(), feed)
                .in_current_span(),
        );
        Some(stream)
    }
}
