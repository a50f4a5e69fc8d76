//! The delivery worker: leases due deliveries from the outbox, sends them, records each attempt
//! and the delivery's next state.
//!
//! Works through the [`WebhookStore`] port only, so any number of workers on any number of nodes
//! share one outbox: a lease that lapses (the worker died) makes its deliveries leasable again,
//! and they are re-sent with the same `webhook-id`, which receivers de-duplicate on.
//!
//! A slow or dead target cannot hold up the others: concurrency is bounded overall and per target
//! (the per-target cap is enforced by the lease query), every attempt has the client's timeout,
//! and a failed attempt goes back to the outbox with a future due time instead of waiting in
//! memory. Between rounds the worker sleeps until the nearest due time, an attempt finishing, a
//! poke on [`Worker::waker`] or, at the latest, `idle_poll` (other nodes cannot poke it).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use domain::store::StoreError;
use domain::webhooks::{
    AttemptRecord, AttemptResult, LeaseRequest, LeasedDelivery, NextState, WebhookStore,
};
use domain::Millis;
use rand::Rng;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::client::{AttemptOutcome, ClientBuildError, ClientConfig, Delivery, DeliveryClient};
use crate::event::{Envelope, EventId, EventType, PayloadOptions};
use crate::schedule::RetrySchedule;
use crate::secret::{SecretSet, WebhookSecret, ROTATION_OVERLAP};
use crate::Verdict;

/// How often the outbox gauges are refreshed while the worker runs.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// Pause after a store error before the next round, so a database outage is not hammered.
const STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Settings of a [`Worker`].
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Lease owner id; unique per worker (two workers sharing one would settle each other's
    /// attempts).
    pub owner: String,
    /// Attempts in flight at once, over all targets.
    pub concurrency: usize,
    /// Attempts in flight at once per target, over all workers sharing the database.
    pub per_target: u32,
    /// How long a lease lasts; must exceed the client's timeout, or a slow attempt could be
    /// leased and sent again by another worker while it is still in flight.
    pub lease_for: Duration,
    /// Longest sleep between rounds when nothing local says otherwise.
    pub idle_poll: Duration,
    /// Gaps between attempts.
    pub schedule: RetrySchedule,
    /// The HTTP client's address policy and timeout.
    pub client: ClientConfig,
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
            lease_for: Duration::from_secs(60),
            idle_poll: Duration::from_secs(2),
            schedule,
            client,
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

    async fn lease(&self, limit: usize) -> Result<Vec<LeasedDelivery>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.store
            .lease_due(LeaseRequest {
                owner: &self.config.owner,
                now: Millis::now(),
                lease_for: self.config.lease_for,
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
                per_target: self.config.per_target,
            })
            .await
    }

    fn spawn(&self, set: &mut JoinSet<AttemptResult>, delivery: LeasedDelivery) {
        let client = self.client.clone();
        let schedule = self.schedule.clone();
        set.spawn(attempt(client, schedule, delivery));
    }

    async fn record(&self, results: &[AttemptResult]) {
        if results.is_empty() {
            return;
        }
        // On failure the leases lapse and the deliveries are attempted again (same webhook-id):
        // at least once, never lost.
        if let Err(err) = self
            .store
            .record_attempts(&self.config.owner, results)
            .await
        {
            tracing::error!(error = %err, count = results.len(), "cannot record webhook attempts; they will be retried after their leases end");
        }
    }

    /// One round: leases what is due (up to the concurrency), attempts it all concurrently,
    /// records the results; returns how many deliveries were attempted.
    pub async fn run_once(&self) -> Result<usize, WorkerError> {
        let leased = self.lease(self.config.concurrency).await?;
        let count = leased.len();
        let mut set = JoinSet::new();
        for delivery in leased {
            self.spawn(&mut set, delivery);
        }
        let mut results = Vec::with_capacity(count);
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(result) => results.push(result),
                Err(err) => tracing::error!(error = %err, "webhook attempt task failed"),
            }
        }
        self.store
            .record_attempts(&self.config.owner, &results)
            .await?;
        Ok(count)
    }

    /// Delivers until `stop` resolves, then lets in-flight attempts finish (each is bounded by
    /// the client's timeout) and records them.
    pub async fn run(&self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut inflight: JoinSet<AttemptResult> = JoinSet::new();
        let mut finished: Vec<AttemptResult> = Vec::new();
        let mut stats_at: Option<Instant> = None;
        tracing::info!(owner = %self.config.owner, "webhook worker started");
        loop {
            while let Some(joined) = inflight.try_join_next() {
                collect(joined, &mut finished);
            }
            // Attempts that finished while the previous round was being written are recorded in
            // one transaction: on SQLite that is one fsync for many deliveries.
            self.record(&finished).await;
            finished.clear();

            let free = self.config.concurrency.saturating_sub(inflight.len());
            let mut pause = match self.lease(free).await {
                Ok(leased) => {
                    let saturated = !leased.is_empty() && leased.len() == free;
                    for delivery in leased {
                        self.spawn(&mut inflight, delivery);
                    }
                    if saturated {
                        // More may be due: come back as soon as a slot frees.
                        None
                    } else {
                        Some(self.until_next_due().await)
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot lease webhook deliveries");
                    Some(STORE_ERROR_PAUSE)
                }
            };
            if stats_at.is_none_or(|at| at.elapsed() >= STATS_EVERY) {
                self.publish_stats().await;
                stats_at = Some(Instant::now());
            }
            if pause.is_none() && inflight.is_empty() {
                pause = Some(Duration::ZERO);
            }
            let sleep = tokio::time::sleep(pause.unwrap_or(self.config.idle_poll));
            tokio::select! {
                biased;
                () = &mut stop => break,
                Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                    collect(joined, &mut finished);
                }
                () = self.wake.notified() => {}
                () = sleep, if pause.is_some() => {}
            }
        }
        tracing::info!(inflight = inflight.len(), "webhook worker stopping");
        while let Some(joined) = inflight.join_next().await {
            collect(joined, &mut finished);
        }
        self.record(&finished).await;
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
            // Due but not leasable: held back by a chain's order or a target's cap, which an
            // attempt finishing (which wakes the loop) or another node releases.
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

fn collect(
    joined: Result<AttemptResult, tokio::task::JoinError>,
    finished: &mut Vec<AttemptResult>,
) {
    match joined {
        Ok(result) => finished.push(result),
        // The lease lapses and the delivery is attempted again.
        Err(err) => tracing::error!(error = %err, "webhook attempt task failed"),
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
) -> AttemptResult {
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
        AttemptResult {
            delivery: delivery.id,
            attempt: AttemptRecord {
                at,
                http_status: outcome.status,
                error: outcome.error,
                duration_ms: u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
            },
            next,
        }
    }
    .instrument(span)
    .await
}
