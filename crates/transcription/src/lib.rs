//! The workers of transcription jobs. Each takes the oldest open job the store will lease it,
//! keeps the lease alive while its recogniser works, and writes the answer only while it still
//! holds the lease: a worker that stalls past its lease loses the job to another, and its late
//! answer is dropped, so a job is finished once. Jobs run beside live calls, never ahead of
//! them: few workers (one by default), and a recogniser that runs at a lower CPU priority.
//! A post-call transcript's job reads the call's recording from where the call says it is:
//! a node can do such a job only where it can read the recordings (one node, or shared
//! storage); one that cannot fails the job saying so.

use async_trait::async_trait;
use domain::transcription::{
    outcome, ClaimedJob, EngineRequest, FileTranscript, JobAudio, JobFormat, JobOutcome,
    TranscriptionStore,
};
use domain::Millis;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tracing::Instrument;

/// A recogniser of whole files.
#[async_trait]
pub trait Recogniser: Send + Sync {
    /// The name jobs report as `engine`.
    fn engine(&self) -> &str;
    /// `Err` is the job's `error`, as a user reads it.
    async fn transcribe(
        &self,
        file: &[u8],
        request: &EngineRequest,
    ) -> Result<FileTranscript, String>;
}

#[async_trait]
impl Recogniser for agent::WhisperJobs {
    fn engine(&self) -> &str {
        agent::whisper_jobs::ENGINE
    }

    async fn transcribe(
        &self,
        file: &[u8],
        request: &EngineRequest,
    ) -> Result<FileTranscript, String> {
        agent::WhisperJobs::transcribe(self, file, request)
            .await
            .map_err(|e| match e {
                // The sidecar's own words: the file could not be decoded, and why.
                agent::SttError::Rejected(m) => m,
                agent::SttError::Spawn(m) => {
                    format!("the transcription engine is unavailable: {m}")
                }
                other => format!("transcription failed: {other}"),
            })
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs this node transcribes at once; 0 leaves them to other nodes.
    pub workers: usize,
    /// How long a job is held without a renewal before another worker may take it.
    pub lease: Duration,
    /// How long an idle worker waits before it looks again (a job accepted by this node wakes
    /// it at once).
    pub idle_wait: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            lease: Duration::from_secs(60),
            idle_wait: Duration::from_secs(2),
        }
    }
}

pub struct Worker {
    store: Arc<dyn TranscriptionStore>,
    recogniser: Arc<dyn Recogniser>,
    config: WorkerConfig,
    wake: Arc<Notify>,
}

impl Worker {
    pub fn new(
        store: Arc<dyn TranscriptionStore>,
        recogniser: Arc<dyn Recogniser>,
        config: WorkerConfig,
    ) -> Self {
        Self {
            store,
            recogniser,
            config,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Poked after a job is accepted, so an idle worker of this node takes it at once.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs the workers until `stop` turns true. A job being transcribed then is let go at
    /// once (its lease ends now), for a restart or another node to do again.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let loops: Vec<_> = (0..self.config.workers)
            .map(|_| tokio::spawn(self.clone().work_loop(stop.clone())))
            .collect();
        for l in loops {
            let _ = l.await;
        }
    }

    async fn work_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let stopping = *stop.borrow();
            if stopping {
                return;
            }
            match self.store.claim_job(Millis::now(), self.config.lease).await {
                Ok(Some(job)) => {
                    let span = tracing::info_span!(
                        "transcription_job",
                        job_id = %job.job.id,
                        attempt = job.job.attempts
                    );
                    self.work(job, &mut stop).instrument(span).await
                }
                Ok(None) => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(self.config.idle_wait) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming a transcription job");
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.idle_wait) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                }
            }
        }
    }

    async fn work(&self, claimed: ClaimedJob, stop: &mut watch::Receiver<bool>) {
        let id = claimed.job.id.clone();
        let lease = claimed.lease.clone();
        let request = EngineRequest {
            languages: claimed.job.languages.candidates(),
            code_mixed: claimed.job.format == JobFormat::CodeMixed,
            split_channels: claimed.job.diarize,
        };
        let started = Instant::now();
        let keep = self.keep_lease(&claimed);
        let heard = tokio::select! {
            heard = self.transcribe(&claimed, &request) => Some(heard),
            () = keep => {
                tracing::warn!("transcription job lease lost; another worker has it");
                return;
            }
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(heard) = heard else {
            // Stopping: let it go now rather than when the lease would have run out.
            if let Err(e) = self.store.renew_job(&id, &lease, Millis::now()).await {
                tracing::warn!(error = %e, "letting a transcription job go");
            }
            return;
        };
        let outcome = match heard {
            Ok(heard) => {
                let seconds = started.elapsed().as_secs_f64();
                metrics::histogram!("outdial_transcription_seconds").record(seconds);
                tracing::info!(
                    audio_seconds = heard.duration,
                    real_time_factor = seconds / heard.duration.max(0.001),
                    "transcribed"
                );
                outcome(&claimed.job, &heard)
            }
            Err(error) => JobOutcome::Failed { error },
        };
        metrics::counter!("outdial_transcription_jobs_total", "status" => outcome.status().as_str())
            .increment(1);
        match self
            .store
            .finish_job(&id, &lease, &outcome, Millis::now())
            .await
        {
            Ok(true) => {
                tracing::info!(status = outcome.status().as_str(), "transcription job done")
            }
            Ok(false) => tracing::warn!(
                "transcription job finished after its lease was taken over; answer dropped"
            ),
            Err(e) => tracing::error!(error = %e, "writing a transcription job's answer"),
        }
    }

    /// The job's audio (the uploaded file, or the call's recording read now), transcribed.
    async fn transcribe(
        &self,
        claimed: &ClaimedJob,
        request: &EngineRequest,
    ) -> Result<FileTranscript, String> {
        match &claimed.audio {
            JobAudio::Stored { bytes, .. } => self.recogniser.transcribe(bytes, request).await,
            JobAudio::Recording { path: None } => Err("the call has no recording".into()),
            JobAudio::Recording { path: Some(path) } => {
                let file = tokio::fs::read(path).await.map_err(|e| {
                    format!("the call's recording cannot be read on this node ({path}): {e}")
                })?;
                self.recogniser.transcribe(&file, request).await
            }
        }
    }

    /// Renews the lease every third of it; returns when it could not (the job was taken over
    /// or ended elsewhere). A renewal that fails on the database is tried again at the next
    /// turn: the lease still has two thirds to run.
    async fn keep_lease(&self, claimed: &ClaimedJob) {
        let every = self.config.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            let until = Millis::now().after(self.config.lease);
            match self
                .store
                .renew_job(&claimed.job.id, &claimed.lease, until)
                .await
            {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::warn!(error = %e, "renewing a transcription job's lease"),
            }
        }
    }
}
