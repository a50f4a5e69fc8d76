//! The delivery worker: leases due deliveries from the outbox, sends them, records each attempt
//! and the delivery's next state.
//!
//! Works through the [`WebhookStore`] port only, so any number of workers on any number of nodes
//! share one outbox: a lease that lapses (the worker died) makes its deliveries leasable again,
//! and they are re-sent with the same `webhook-id`, which receivers de-duplicate on.
//!
//! Deliveries flow instead of moving in rounds. Three things run side by side, none waiting for
//! another: leasing (large batches, into one queue per target, whenever there is room), sending
//! (an attempt starts the moment a slot frees, within the overall and the per-target cap), and
//! recording (everything that finished while the previous write was in flight, in one
//! transaction: group commit). A delivery's lease is only settled by that write, so a worker
//! that dies at any point loses nothing.
//!
//! A slow or dead target cannot hold up the others: every attempt has the client's timeout, a
//! target's queue is bounded, a failed attempt goes back to the outbox with a future due time,
//! and a target whose attempts keep failing is sent to one attempt at a time, and only when no
//! healthy target is waiting for a slot; its first success restores its share. The worker
//! sleeps until the nearest due time, a write finishing, a poke on [`Worker::waker`] or, at the
//! latest, `idle_poll` (other nodes cannot poke it).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use domain::store::StoreError;
use domain::webhooks::{
    AttemptRecord, AttemptResult, DeliveryId, LeaseRequest, LeasedDelivery, NextState,
    WebhookStore, WebhookTargetId,
};
use domain::Millis;
use rand::Rng;
use tokio::sync::Notify;
use tokio::task::{self, JoinSet};
use tracing::Instrument;

use crate::client::{AttemptOutcome, ClientBuildError, ClientConfig, Delivery, DeliveryClient};
use crate::event::{Envelope, EventId, EventType, PayloadOptions};
use crate::pipeline::{Finished, Pipeline};
use crate::schedule::RetrySchedule;
use crate::secret::{SecretSet, WebhookSecret, ROTATION_OVERLAP};
use crate::Verdict;

/// How often the outbox gauges are refreshed while the worker runs.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// Pause after a store error before the next lease, so a database outage is not hammered.
const STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Whether this job should also refresh the outbox gauges: at most once per [`STATS_EVERY`].
fn stats_turn(last: &mut Option<Instant>) -> bool {
    let due = last.is_none_or(|at| at.elapsed() >= STATS_EVERY);
    if due {
        *last = Some(Instant::now());
    }
    due
}

/// Settings of a [`Worker`].
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Lease owner id; unique per worker (two workers sharing one would settle each other's
    /// attempts).
    pub owner: String,
    /// Attempts in flight at once, over all targets.
    pub concurrency: usize,
    /// Attempts in flight at once per target on this worker.
    pub per_target: u32,
    /// Leases held at once per target, over all workers sharing the database (in flight,
    /// queued, or finished and not yet recorded); this also bounds a target's attempts in flight
    /// over all workers.
    pub per_target_leased: u32,
    /// Leases held by this worker at once, over all targets.
    pub max_leased: usize,
    /// How long a lease lasts. An attempt only starts in the first half of its lease, so the
    /// half must exceed the client's timeout, or a slow attempt could be leased and sent again
    /// by another worker while it is still in flight.
    pub lease_for: Duration,
    /// Longest sleep between leases when nothing local says otherwise.
    pub idle_poll: Duration,
    /// Gaps between attempts.
    pub schedule: RetrySchedule,
    /// The HTTP client's address policy and timeout.
    pub client: ClientConfig,
    /// Once [`Worker::run`] is told to stop, how long it goes on delivering what is due; it
    /// stops sooner when nothing is. Attempts still in flight then are cut short and sent
    /// again later (same `webhook-id`), so a stopping node exits on time.
    pub stop_flush: Duration,
}

impl WorkerConfig {
    /// Defaults around a schedule and address policy read from the environment by the caller.
    pub fn new(schedule: RetrySchedule, client: ClientConfig) -> Self {
        Self {
            owner: format!(
                "webhooks-{}-{:08x}",
                std::process::id(),
                rand::thread_rng().gen::<u32>()
            ),
            concurrency: 256,
            per_target: 64,
            per_target_leased: 1024,
            max_leased: 2048,
            lease_for: Duration::from_secs(60),
            idle_poll: Duration::from_secs(2),
            schedule,
            client,
            stop_flush: Duration::from_secs(2),
        }
    }
}

/// Why the worker could not start or finish a round.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    /// The outbox could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Delivers the outbox. Construct with [`Worker::new`], then either [`Worker::run`] until a stop
/// signal or [`Worker::run_once`] for one deterministic round (tests).
pub struct Worker<S: WebhookStore + ?Sized> {
    store: Arc<S>,
    client: DeliveryClient,
    schedule: Arc<RetrySchedule>,
    config: WorkerConfig,
    wake: Arc<Notify>,
}

type Job<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a lease job brings back.
struct Leased {
    deliveries: Vec<LeasedDelivery>,
    /// When to look again if nothing else happens first; `None` means at once.
    next_look: Option<Duration>,
}

impl<S: WebhookStore + ?Sized> Worker<S> {
    /// A worker over `store`.
    pub fn new(store: Arc<S>, config: WorkerConfig) -> Result<Self, WorkerError> {
        Ok(Self {
            store,
            client: DeliveryClient::new(config.client)?,
            schedule: Arc::new(config.schedule.clone()),
            config,
            wake: Arc::new(Notify::new()),
        })
    }

    /// Poke this after committing an enqueue or a retry so the worker looks at once instead of
    /// at its next due time.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// This worker's lease owner id.
    pub fn owner(&self) -> &str {
        &self.config.owner
    }

    fn per_target(&self) -> usize {
        usize::try_from(self.config.per_target.max(1)).unwrap_or(usize::MAX)
    }

    fn spawn(&self, set: &mut JoinSet<Finished>, delivery: LeasedDelivery) -> task::Id {
        let client = self.client.clone();
        let schedule = self.schedule.clone();
        set.spawn(attempt(client, schedule, delivery)).id()
    }

    /// One round: leases what is due (up to the concurrency, at most `per_target` per target),
    /// attempts it all concurrently, records the results; returns how many deliveries were
    /// attempted.
    pub async fn run_once(&self) -> Result<usize, WorkerError> {
        let leased = self
            .store
            .lease_due(LeaseRequest {
                owner: &self.config.owner,
                now: Millis::now(),
                lease_for: self.config.lease_for,
                limit: u32::try_from(self.config.concurrency).unwrap_or(u32::MAX),
                per_target: self.config.per_target,
            })
            .await?;
        let count = leased.len();
        let mut set = JoinSet::new();
        for delivery in leased {
            self.spawn(&mut set, delivery);
        }
        let mut results = Vec::with_capacity(count);
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(finished) => results.push(finished.result),
                Err(err) => tracing::error!(error = %err, "webhook attempt task failed"),
            }
        }
        self.store
            .record_attempts(&self.config.owner, &results)
            .await?;
        Ok(count)
    }

    /// Leases up to `limit` deliveries, within `caps` for the targets named there; when fewer
    /// come back, also finds out when to look again.
    async fn lease_job(
        &self,
        limit: usize,
        caps: Vec<(WebhookTargetId, u32)>,
        stats: bool,
    ) -> Leased {
        let leased = self
            .store
            .lease_due_capped(
                LeaseRequest {
                    owner: &self.config.owner,
                    now: Millis::now(),
                    lease_for: self.config.lease_for,
                    limit: u32::try_from(limit).unwrap_or(u32::MAX),
                    per_target: self.config.per_target_leased.max(1),
                },
                &caps,
            )
            .await;
        match leased {
            Ok(deliveries) => {
                let next_look = if deliveries.len() >= limit {
                    // More may be due: look again as soon as there is room.
                    None
                } else if !deliveries.is_empty() {
                    // Their writes will make the loop look again; reading the next due time
                    // now would only hold these back.
                    Some(self.config.idle_poll)
                } else {
                    if stats {
                        self.publish_stats().await;
                    }
                    Some(self.until_next_due().await)
                };
                Leased {
                    deliveries,
                    next_look,
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot lease webhook deliveries");
                Leased {
                    deliveries: Vec::new(),
                    next_look: Some(STORE_ERROR_PAUSE),
                }
            }
        }
    }

    /// Writes finished attempts in one transaction and gives back leases that could not be
    /// used; returns how many leases this settles locally.
    async fn record_job(
        &self,
        results: Vec<AttemptResult>,
        release: Vec<DeliveryId>,
        stats: bool,
    ) -> usize {
        if !results.is_empty() {
            // On failure the leases lapse and the deliveries are attempted again (same
            // webhook-id): at least once, never lost.
            if let Err(err) = self
                .store
                .record_attempts(&self.config.owner, &results)
                .await
            {
                tracing::error!(error = %err, count = results.len(), "cannot record webhook attempts; they will be retried after their leases end");
            }
        }
        if !release.is_empty() {
            if let Err(err) = self
                .store
                .release_leases(&self.config.owner, &release)
                .await
            {
                tracing::warn!(error = %err, count = release.len(), "cannot give back webhook leases; they will lapse");
            }
        }
        if stats {
            self.publish_stats().await;
        }
        results.len()
    }

    /// Delivers until `stop` resolves, then for [`WorkerConfig::stop_flush`] at most: until
    /// nothing due is left, or past that time, cuts short what is still in flight. Then gives
    /// back what it has not started and records what finished.
    pub async fn run(&self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let cap = self.per_target();
        let mut pipe = Pipeline::default();
        let mut attempts: JoinSet<Finished> = JoinSet::new();
        let mut leasing: Option<Job<'_, Leased>> = None;
        let mut recording: Option<Job<'_, usize>> = None;
        let mut cursor = None;
        // Look at once on start; afterwards after every write (it may free a chain's next event
        // or a target's cap), every poke and every timer.
        let mut look = true;
        let mut look_at: Option<Instant> = None;
        let mut stats_at: Option<Instant> = None;
        let mut stopping = false;
        // Set when told to stop: deliver what is due until then.
        let mut flush_until: Option<Instant> = None;
        // The latest lease found nothing to deliver.
        let mut dry = false;
        tracing::info!(owner = %self.config.owner, "webhook worker started");
        loop {
            if !stopping {
                while pipe.inflight < self.config.concurrency {
                    let Some(queued) = pipe.next_start(&mut cursor, Instant::now()) else {
                        break;
                    };
                    let attempt = (queued.delivery.target, queued.delivery.id);
                    let id = self.spawn(&mut attempts, queued.delivery);
                    pipe.tasks.insert(id, attempt);
                }
            }
            if recording.is_none() && (!pipe.unrecorded.is_empty() || !pipe.release.is_empty()) {
                let results = std::mem::take(&mut pipe.unrecorded);
                let release = std::mem::take(&mut pipe.release);
                let stats = stats_turn(&mut stats_at);
                recording = Some(Box::pin(self.record_job(results, release, stats)));
            }
            if leasing.is_none() && look && !stopping {
                let room = self.config.max_leased.saturating_sub(pipe.held);
                if room > 0 {
                    look = false;
                    look_at = None;
                    // Published after the write or, when idle, after a lease that found
                    // nothing: never between a lease and the attempts it feeds.
                    let stats = stats_turn(&mut stats_at);
                    // Idle, a first bite the size of the send slots: a lease costs about its
                    // row count, and the attempts can start while the next, full-size lease
                    // runs.
                    let bite = if pipe.idle() {
                        room.min(self.config.concurrency.max(1))
                    } else {
                        room
                    };
                    leasing = Some(Box::pin(self.lease_job(bite, pipe.target_caps(cap), stats)));
                }
            }
            if let Some(until) = flush_until.filter(|_| !stopping) {
                let drained = dry
                    && !look
                    && leasing.is_none()
                    && recording.is_none()
                    && attempts.is_empty()
                    && pipe.queues_empty();
                let late = Instant::now() >= until;
                if drained || late {
                    stopping = true;
                    if late && !attempts.is_empty() {
                        tracing::warn!(
                            inflight = attempts.len(),
                            "webhook flush time over: cutting attempts short"
                        );
                        attempts.abort_all();
                    }
                    pipe.release_queued();
                    continue;
                }
            }
            if stopping && attempts.is_empty() && leasing.is_none() && recording.is_none() {
                if pipe.unrecorded.is_empty() && pipe.release.is_empty() {
                    break;
                }
                continue;
            }
            let timer = tokio::time::sleep_until(look_at.unwrap_or_else(Instant::now).into());
            let flush_over =
                tokio::time::sleep_until(flush_until.unwrap_or_else(Instant::now).into());
            tokio::select! {
                biased;
                () = &mut stop, if flush_until.is_none() && !stopping => {
                    tracing::info!(inflight = attempts.len(), "webhook worker stopping");
                    // One more look, so what was written just before the stop goes out too.
                    flush_until = Some(Instant::now() + self.config.stop_flush);
                    look = true;
                    dry = false;
                }
                () = flush_over, if flush_until.is_some() && !stopping => {}
                Some(joined) = attempts.join_next_with_id(), if !attempts.is_empty() => {
                    pipe.joined(joined, cap, Instant::now());
                    // Take whatever else finished too, so one write carries it all.
                    while let Some(joined) = attempts.try_join_next_with_id() {
                        pipe.joined(joined, cap, Instant::now());
                    }
                }
                settled = finish(&mut recording), if recording.is_some() => {
                    recording = None;
                    pipe.held = pipe.held.saturating_sub(settled);
                    pipe.prune(Instant::now());
                    look = true;
                }
                leased = finish(&mut leasing), if leasing.is_some() => {
                    leasing = None;
                    let got = leased.deliveries.len();
                    dry = got == 0;
                    if stopping {
                        pipe.release.extend(leased.deliveries.iter().map(|d| d.id));
                    } else {
                        pipe.held += got;
                        let start_by = Instant::now() + self.config.lease_for / 2;
                        for delivery in leased.deliveries {
                            pipe.enqueue(delivery, start_by, cap);
                        }
                    }
                    match leased.next_look {
                        None => look = true,
                        Some(wait) => look_at = Some(Instant::now() + wait),
                    }
                }
                () = self.wake.notified() => look = true,
                () = timer, if look_at.is_some() => {
                    look_at = None;
                    look = true;
                }
            }
        }
        tracing::info!("webhook worker stopped");
    }

    /// Time until the nearest due time, within `idle_poll`.
    async fn until_next_due(&self) -> Duration {
        let now = Millis::now();
        match self.store.next_delivery_due_at(now).await {
            Ok(Some(due)) if due > now => {
                let wait = Duration::from_millis(u64::try_from(due.0 - now.0).unwrap_or(0));
                wait.min(self.config.idle_poll)
            }
            // Due but not leasable: held back by a chain's order or a target's cap, which a
            // write finishing (which makes the loop look again) or another node releases.
            Ok(_) => self.config.idle_poll,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the next webhook due time");
                STORE_ERROR_PAUSE
            }
        }
    }

    async fn publish_stats(&self) {
        match self.store.outbox_stats().await {
            Ok(stats) => {
                metrics::gauge!("outdial_webhook_outbox_depth").set(stats.depth as f64);
                let age = stats
                    .oldest_pending_created_at
                    .map_or(0, |at| Millis::now().0.saturating_sub(at.0).max(0));
                metrics::gauge!("outdial_webhook_oldest_pending_age_seconds")
                    .set(age as f64 / 1000.0);
            }
            Err(err) => tracing::warn!(error = %err, "cannot read webhook outbox figures"),
        }
    }
}

/// Awaits a running job (the caller's `if` guard ensures there is one).
async fn finish<T>(job: &mut Option<Job<'_, T>>) -> T {
    match job {
        Some(job) => job.await,
        None => std::future::pending().await,
    }
}

/// What one delivery sends: the body with the target's opt-outs applied, its id and type.
struct Prepared {
    event_id: EventId,
    event_type: EventType,
    body: Vec<u8>,
    trace_id: Option<String>,
}

fn prepare(delivery: &LeasedDelivery) -> Result<Prepared, &'static str> {
    let event_id = EventId::parse(&delivery.event_id).map_err(|_| "stored event id is invalid")?;
    let event_type = delivery
        .event_type
        .parse::<EventType>()
        .map_err(|_| "stored event type is unknown")?;
    if event_type == EventType::WebhookTest {
        // Not a call envelope: nothing to opt out of; sent as stored.
        return Ok(Prepared {
            event_id,
            event_type,
            body: delivery.payload.clone().into_bytes(),
            trace_id: None,
        });
    }
    let envelope: Envelope = serde_json::from_str(&delivery.payload)
        .map_err(|_| "stored event payload is not a webhook envelope")?;
    let trace_id = Some(envelope.data.call.trace_id.clone());
    let body = envelope
        .for_target(PayloadOptions {
            include_transcript: delivery.include_transcript,
            include_recording_url: delivery.include_recording_url,
        })
        .to_body()
        .map_err(|_| "event payload cannot be serialised")?;
    Ok(Prepared {
        event_id,
        event_type,
        body,
        trace_id,
    })
}

fn secrets(delivery: &LeasedDelivery) -> Result<SecretSet, &'static str> {
    let current =
        WebhookSecret::parse(&delivery.secret).map_err(|_| "stored signing secret is invalid")?;
    Ok(match &delivery.previous_secret {
        Some((previous, until)) => match WebhookSecret::parse(previous) {
            Ok(previous) => {
                SecretSet::with_previous(current, previous, until.to_datetime() - ROTATION_OVERLAP)
            }
            // The old secret only adds a second signature; the delivery still goes out signed.
            Err(_) => SecretSet::new(current),
        },
        None => SecretSet::new(current),
    })
}

fn refused(error: &str) -> AttemptOutcome {
    AttemptOutcome {
        status: None,
        error: Some(error.to_owned()),
        duration: Duration::ZERO,
        verdict: Verdict::Failed,
        response_body: String::new(),
    }
}

async fn attempt(
    client: DeliveryClient,
    schedule: Arc<RetrySchedule>,
    delivery: LeasedDelivery,
) -> Finished {
    let at = Millis::now();
    let prepared = prepare(&delivery);
    let span = tracing::info_span!(
        "webhook_delivery",
        delivery = %delivery.id,
        target = %delivery.target,
        event_id = %delivery.event_id,
        trace_id = prepared.as_ref().ok().and_then(|p| p.trace_id.as_deref()),
        attempt = delivery.attempts + 1,
    );
    async move {
        let outcome = match (prepared.as_ref().map_err(|e| *e), secrets(&delivery)) {
            (Ok(prepared), Ok(set)) => {
                let signing = set.signing_secrets(Utc::now());
                client
                    .deliver(&Delivery {
                        url: &delivery.url,
                        event_id: &prepared.event_id,
                        event_type: prepared.event_type,
                        body: &prepared.body,
                        secrets: &signing,
                    })
                    .await
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(error, "webhook delivery cannot be sent");
                refused(error)
            }
        };
        let attempts_made = usize::try_from(delivery.attempts)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let next = match outcome.verdict {
            Verdict::Delivered => NextState::Delivered,
            Verdict::Failed => NextState::Failed,
            Verdict::FailedAndDeactivate => NextState::FailedAndDeactivate,
            Verdict::Retry => match schedule.next_delay(attempts_made, &mut rand::thread_rng()) {
                Some(delay) => NextState::RetryAt(Millis(
                    Millis::now()
                        .0
                        .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
                )),
                None => NextState::Failed,
            },
        };
        let result = match next {
            NextState::Delivered => "delivered",
            NextState::RetryAt(_) => "retry",
            NextState::Failed => "failed",
            NextState::FailedAndDeactivate => "deactivated",
        };
        metrics::counter!("outdial_webhook_attempts_total", "result" => result).increment(1);
        metrics::histogram!("outdial_webhook_attempt_duration_seconds")
            .record(outcome.duration.as_secs_f64());
        Finished {
            target: delivery.target,
            verdict: outcome.verdict,
            result: AttemptResult {
                delivery: delivery.id,
                attempt: AttemptRecord {
                    at,
                    http_status: outcome.status,
                    error: outcome.error,
                    duration_ms: u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
                },
                next,
            },
        }
    }
    .instrument(span)
    .await
}
