//! Dispatch: accepted calls become dial attempts on time, on exactly one node, at most once.
//!
//! The loop sleeps until the nearest due time (or a poke from the API), claims due calls with a
//! lease, decides for each (calling window, caps), makes `initiated` durable through the store
//! and only then asks telephony to dial. Live calls' leases are renewed; a call whose node died
//! (lease run out while dialling or talking) is settled `failed` / `interrupted`, never redialled
//! blindly, and the agent's retry policy decides what comes next.

mod call;

use domain::agent::CallingHours;
use domain::dispatch::{
    next_opening, BeginDial, CountryZones, DialLimits, DialStart, DueCall, FinishAttempt,
};
use domain::store::{Store, StoreError};
use domain::telephony::Telephony;
use domain::{CallStatus, ConversationId, Millis};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Where the time comes from, so tests can move it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        Millis::now()
    }
}

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// This node's name in leases; unique per process.
    pub node_id: String,
    /// How long a claim or a live call is held without renewal.
    pub lease: Duration,
    /// Calls claimed per round.
    pub claim_batch: u32,
    /// Longest sleep when nothing is due (calls accepted on other nodes, orphan sweeps).
    pub idle_wait: Duration,
    /// When agents without hours of their own may call (the service config's default, which
    /// is 09:00-21:00 Monday-Saturday; this library's default is `Always`, for tests).
    pub default_window: CallingHours,
    /// The tenant-wide disclosure spoken before every agent's first message (templated).
    pub disclosure: Option<String>,
    /// Base URL of the API, for webhooks' `recording_url`.
    pub public_url: String,
    /// Poked after a call settles (its webhook event is in the outbox), so the delivery worker
    /// sends it at once instead of at its next poll.
    pub events_written: Option<Arc<Notify>>,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            node_id: format!("node-{}", std::process::id()),
            lease: Duration::from_secs(30),
            claim_batch: 64,
            idle_wait: Duration::from_secs(5),
            default_window: CallingHours::Always,
            disclosure: None,
            public_url: "http://127.0.0.1:8080".into(),
            events_written: None,
        }
    }
}

/// The agent's ears and voice, shared by every call of a node.
#[derive(Clone)]
pub struct Engines {
    pub tts: Arc<dyn agent::TextToSpeech>,
    pub stt: Arc<dyn agent::SpeechToText>,
    /// The llm brain's settings and client, for agents whose brain is `llm`.
    pub llm: agent::LlmEngine,
}

pub struct Dispatcher {
    store: Arc<dyn Store>,
    telephony: Arc<dyn Telephony>,
    engines: Engines,
    zones: Arc<CountryZones>,
    clock: Arc<dyn Clock>,
    config: DispatchConfig,
    wake: Arc<Notify>,
    live: Mutex<HashSet<ConversationId>>,
}

/// What to do with one due call.
#[derive(Debug, PartialEq)]
enum Decision {
    Dial(DialLimits),
    Wait { until: Millis, reason: String },
    Fail(String),
}

fn decide(
    due: &DueCall,
    now: Millis,
    zones: &CountryZones,
    default_window: &CallingHours,
) -> Decision {
    let Some(agent) = &due.agent_config else {
        return Decision::Fail("agent no longer exists".into());
    };
    let Some(trunk) = &due.trunk else {
        return Decision::Fail(format!(
            "no trunk carries the agent's number {}",
            agent
                .phone_number
                .as_ref()
                .map(|n| n.as_str())
                .unwrap_or("(none)")
        ));
    };
    let hours = agent.calling_window.as_ref().unwrap_or(default_window);
    if let Some(window) = hours.window() {
        let tz = zones.zones_for(&due.customer_phone);
        match next_opening(window, tz, now.to_datetime()) {
            None => {
                return Decision::Fail(format!(
                    "calling window: no known local time for {} in the next 8 days",
                    due.customer_phone
                ))
            }
            Some(t) if Millis::from_datetime(t) > now => {
                return Decision::Wait {
                    until: Millis::from_datetime(t),
                    reason: "outside the calling window".into(),
                }
            }
            Some(_) => {}
        }
    }
    let limits = &due.tenant_limits;
    Decision::Dial(DialLimits {
        trunk: trunk.max_concurrent_calls.map(|m| (trunk.id, m)),
        agent: agent.max_concurrent_calls,
        tenant: limits.max_concurrent_calls,
        per_number: (!due.immediate)
            .then_some((limits.per_number_calls, limits.per_number_window_seconds)),
    })
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        telephony: Arc<dyn Telephony>,
        engines: Engines,
        zones: CountryZones,
        clock: Arc<dyn Clock>,
        config: DispatchConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            telephony,
            engines,
            zones: Arc::new(zones),
            clock,
            config,
            wake: Arc::new(Notify::new()),
            live: Mutex::new(HashSet::new()),
        })
    }

    /// Poke this after accepting a call that is due now, so it does not wait for the next wake-up.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    fn lease_until(&self, now: Millis) -> Millis {
        Millis(now.0 + self.config.lease.as_millis() as i64)
    }

    pub fn live_calls(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// One round: claim what is due and act on it. Returns how many calls were claimed.
    pub async fn tick(self: &Arc<Self>) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let due = self
            .store
            .claim_due(
                &self.config.node_id,
                now,
                self.lease_until(now),
                self.config.claim_batch,
            )
            .await?;
        let claimed = due.len();
        let mut to_dial = Vec::new();
        for call in due {
            let lag_ms = (now.0 - call.due_at.0).max(0);
            metrics::histogram!("outdial_dispatch_lag_seconds").record(lag_ms as f64 / 1000.0);
            match decide(&call, now, &self.zones, &self.config.default_window) {
                Decision::Fail(reason) => self.fail_undialled(&call, reason).await?,
                Decision::Wait { until, reason } => {
                    tracing::info!(conversation_id = %call.id, trace_id = %call.trace_id, %reason, until = %until.to_rfc3339(), "call waits");
                    self.store
                        .defer_call(call.id, &self.config.node_id, until, &reason)
                        .await?;
                }
                Decision::Dial(limits) => to_dial.push((call, limits)),
            }
        }
        if to_dial.is_empty() {
            return Ok(claimed);
        }
        let now = self.clock.now();
        let starts: Vec<DialStart> = to_dial
            .iter()
            .map(|(call, limits)| DialStart {
                id: call.id,
                trunk: call.trunk.as_ref().map(|t| t.id),
                limits: limits.clone(),
            })
            .collect();
        let outcomes = self
            .store
            .begin_dials(&self.config.node_id, now, self.lease_until(now), &starts)
            .await?;
        for ((call, _), outcome) in to_dial.into_iter().zip(outcomes) {
            match outcome {
                BeginDial::Started => {
                    self.track(call.id, true);
                    let me = self.clone();
                    tokio::spawn(async move { me.run_call(call).await });
                }
                BeginDial::Deferred { until, reason } => {
                    self.store
                        .defer_call(call.id, &self.config.node_id, until, &reason)
                        .await?;
                }
                BeginDial::Gone => {}
                BeginDial::Listed => {
                    tracing::info!(conversation_id = %call.id, trace_id = %call.trace_id, "number is on the do-not-call list: call canceled");
                    self.events_written();
                }
            }
        }
        Ok(claimed)
    }

    pub(crate) fn events_written(&self) {
        if let Some(n) = &self.config.events_written {
            n.notify_one();
        }
    }

    fn track(&self, id: ConversationId, live: bool) {
        if let Ok(mut set) = self.live.lock() {
            if live {
                set.insert(id);
            } else {
                set.remove(&id);
            }
        }
    }

    /// A `failed` settlement of a call that was never talked on (nothing played or heard).
    fn failed_attempt(
        &self,
        id: ConversationId,
        reason: String,
        now: Millis,
        retry_at: Option<Millis>,
    ) -> FinishAttempt {
        FinishAttempt {
            id,
            node: self.config.node_id.clone(),
            status: CallStatus::Failed,
            failure_reason: Some(reason),
            ended_at: now,
            duration_seconds: None,
            recording_path: None,
            transcript: Vec::new(),
            results: Default::default(),
            latency: None,
            retry_at,
            stage_id: None,
            opted_out: false,
            public_url: self.config.public_url.clone(),
        }
    }

    async fn fail_undialled(&self, call: &DueCall, reason: String) -> Result<(), StoreError> {
        tracing::warn!(conversation_id = %call.id, trace_id = %call.trace_id, %reason, "call cannot be dialled");
        let now = self.clock.now();
        self.store
            .finish_attempt(self.failed_attempt(call.id, reason, now, None), now)
            .await
            .map(|_| ())
    }

    /// Settles calls whose node stopped renewing their lease: `failed` / `interrupted`, then
    /// the retry policy. Never redials them directly: the person may have been talking already.
    pub async fn sweep_orphans(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let orphans = self.store.orphaned_calls(now, 100).await?;
        let mut settled = 0;
        for o in orphans {
            let retry_at = domain::dispatch::retry_delay(
                o.retry_policy.as_ref(),
                CallStatus::Failed,
                o.attempt,
            )
            .map(|d| Millis(now.0 + d.as_millis() as i64));
            let finish = self.failed_attempt(o.id, "interrupted".into(), now, retry_at);
            if self.store.finish_attempt(finish, now).await? {
                tracing::warn!(conversation_id = %o.id, "settled an interrupted call");
                self.events_written();
                settled += 1;
            }
        }
        Ok(settled)
    }

    async fn renew_leases(&self) -> Result<(), StoreError> {
        let ids: Vec<ConversationId> = self
            .live
            .lock()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        if ids.is_empty() {
            return Ok(());
        }
        let now = self.clock.now();
        self.store
            .renew_leases(&self.config.node_id, &ids, self.lease_until(now))
            .await
    }

    /// Runs until `shutdown` turns true. Live calls keep their tasks; their leases simply stop
    /// being renewed once the process exits, and another node settles them.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let renew_every = self.config.lease / 3;
        let mut next_renew = tokio::time::Instant::now() + renew_every;
        let mut next_sweep = tokio::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            loop {
                match self.tick().await {
                    Ok(n) if n as u32 >= self.config.claim_batch => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "dispatch round failed");
                        break;
                    }
                }
            }
            let now_i = tokio::time::Instant::now();
            if now_i >= next_renew {
                if let Err(e) = self.renew_leases().await {
                    tracing::error!(error = %e, "lease renewal failed");
                }
                next_renew = now_i + renew_every;
            }
            if now_i >= next_sweep {
                if let Err(e) = self.sweep_orphans().await {
                    tracing::error!(error = %e, "orphan sweep failed");
                }
                next_sweep = now_i + self.config.lease / 2;
            }
            let now = self.clock.now();
            let wait_for_due = match self.store.next_due_at(now).await {
                Ok(Some(due)) => Duration::from_millis(u64::try_from(due.0 - now.0).unwrap_or(0)),
                Ok(None) => self.config.idle_wait,
                Err(e) => {
                    tracing::error!(error = %e, "reading the next due time failed");
                    self.config.idle_wait
                }
            };
            let mut wait = wait_for_due.min(self.config.idle_wait);
            if !self.live.lock().map(|l| l.is_empty()).unwrap_or(true) {
                wait = wait.min(next_renew.saturating_duration_since(now_i));
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
