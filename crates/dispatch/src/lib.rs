//! Dispatch: accepted calls become dial attempts on time, on exactly one node, at most once.
//!
//! The loop sleeps until the nearest due time (or a poke from the API), claims due calls with a
//! lease, decides for each (calling window, caps), makes `initiated` durable through the store
//! and only then asks telephony to dial. Calls of a trunk with a pace (`max_calls_per_second`)
//! or a carrier's hold (503 `Retry-After`) wait in that trunk's line and are taken from it as
//! its gate opens (see [`Dispatcher::tick`]). Live calls' leases are renewed; a call whose node died
//! (lease run out while dialling or talking) is settled `failed` / `interrupted`, never redialled
//! blindly, and the agent's retry policy decides what comes next. A node that stops on purpose
//! gives its live calls a grace to end, then hangs up the rest and settles them the same way.

mod call;
mod settler;

pub use settler::SettleBatching;

use domain::agent::CallingHours;
use domain::dispatch::{
    next_opening, BeginDial, CountryZones, DialLimits, DialStart, DueCall, FinishAttempt,
    OrphanedCall,
};
use domain::pacing::{lane_room, BusyBudget, Foreground, TokenBucket};
use domain::store::{Store, StoreError};
use domain::telephony::{CallControl, Telephony};
use domain::{CallStatus, ConversationId, Millis, TrunkId};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// After a stop's hang-ups, how long the calls' tasks get to send their BYE or CANCEL and see
/// it answered before the process goes on without them.
const HANGUP_WAIT: Duration = Duration::from_secs(2);

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
    /// Poked after a settlement wrote a post-call transcript job, so an idle transcription
    /// worker of this node takes it at once.
    pub post_call_written: Option<Arc<Notify>>,
    /// On a stop, how long live calls get to end on their own before they are hung up and
    /// settled `failed` / `interrupted`.
    pub shutdown_grace: Duration,
    /// The answering-machine detector's thresholds.
    pub amd: agent::AmdConfig,
    /// How ended calls are gathered into settling transactions (see `settler`).
    pub settle: SettleBatching,
    /// Calls a second this node dials while its API is busy (`foreground`); 0 is no limit.
    pub busy_dial_rate: u32,
    /// Whether the node's API is serving requests (`None`: no API on this node).
    pub foreground: Option<Arc<dyn Foreground>>,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            node_id: format!("node-{}", std::process::id()),
            lease: Duration::from_secs(30),
            claim_batch: 32,
            idle_wait: Duration::from_secs(5),
            default_window: CallingHours::Always,
            disclosure: None,
            public_url: "http://127.0.0.1:8080".into(),
            events_written: None,
            post_call_written: None,
            shutdown_grace: Duration::from_secs(30),
            amd: agent::AmdConfig::default(),
            settle: SettleBatching::default(),
            busy_dial_rate: 0,
            foreground: None,
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
    live: Mutex<HashMap<ConversationId, Live>>,
    /// Poked whenever a live call ends, so a stop waiting for the last one wakes at once.
    ended: Notify,
    /// Started by the first call that ends, inside the runtime.
    settler: OnceLock<settler::Settler>,
    marker: OnceLock<settler::Marker>,
    /// The node's pace while its API is busy.
    budget: Mutex<BusyBudget>,
}

/// A call this node dials or talks on.
struct Live {
    /// What settling it as interrupted needs.
    call: OrphanedCall,
    /// How to hang it up, once telephony has it.
    control: Option<mpsc::Sender<CallControl>>,
    /// Settled by a stop: its task must hang up instead of going on.
    abandoned: bool,
}

fn dials(to_dial: &[(DueCall, DialLimits)]) -> u32 {
    u32::try_from(to_dial.len()).unwrap_or(u32::MAX)
}

/// What to do with one due call.
#[derive(Debug, PartialEq)]
enum Decision {
    Dial(DialLimits),
    Wait {
        until: Millis,
        reason: String,
    },
    /// Into its trunk's line, with the trunk's other due calls: the trunk's pace or hold
    /// decides when.
    Line {
        trunk: TrunkId,
        reason: String,
    },
    Fail(String),
}

/// Where a due call was claimed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The claim of due calls in no trunk's line.
    Due,
    /// Its trunk's line, when the trunk's gate let it go.
    Line,
}

fn decide(
    due: &DueCall,
    route: Route,
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
    if route == Route::Due {
        if let Some(reason) = trunk.line_reason(now) {
            return Decision::Line {
                trunk: trunk.id,
                reason,
            };
        }
    }
    let limits = &due.tenant_limits;
    Decision::Dial(DialLimits {
        trunk: trunk.max_concurrent_calls.map(|m| (trunk.id, m)),
        agent: agent.max_concurrent_calls,
        tenant: limits.max_concurrent_calls,
        per_number: (!due.immediate)
            .then_some((limits.per_number_calls, limits.per_number_window_seconds)),
        pace: trunk
            .max_calls_per_second
            .map(|rate| (trunk.id, TokenBucket::new(rate))),
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
        let budget = BusyBudget::new(config.busy_dial_rate, config.claim_batch, clock.now());
        Arc::new(Self {
            store,
            telephony,
            engines,
            zones: Arc::new(zones),
            clock,
            config,
            wake: Arc::new(Notify::new()),
            live: Mutex::new(HashMap::new()),
            ended: Notify::new(),
            settler: OnceLock::new(),
            marker: OnceLock::new(),
            budget: Mutex::new(budget),
        })
    }

    fn api_busy(&self) -> bool {
        self.config.foreground.as_ref().is_some_and(|f| f.busy())
    }

    fn with_budget<T>(&self, f: impl FnOnce(&mut BusyBudget) -> T) -> T {
        // A poisoned lock only means a panic elsewhere; the budget is a plain value.
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut budget)
    }

    /// When a busy node's next round is worth making, if that is later than `now` (see
    /// [`BusyBudget::next_round`]); `None` while the API is idle or the bucket holds enough.
    fn slowed_until(&self, now: Millis) -> Option<Millis> {
        if !self.api_busy() {
            return None;
        }
        self.with_budget(|b| b.next_round()).filter(|at| *at > now)
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

    /// One round: claim what is due and act on it. Returns how many calls were claimed from
    /// the calls in no trunk's line (a full round means there may be more).
    ///
    /// A due call of a paced or held trunk is not dialled from that claim: it joins its trunk's
    /// line, with the trunk's other due calls (one write each, once). Then each line whose
    /// trunk's gate is open gives as many calls as the gate lets through (a paced trunk's
    /// tokens back within `pacing::BOOK_AHEAD`, each call's INVITE at its token's time), oldest
    /// first. So a long line never holds up another trunk's calls, and no call is claimed only
    /// to be held.
    ///
    /// While the node's API is busy, a round dials no more than the node's busy rate lets
    /// through ([`BusyBudget`]), from the due calls and the lines together; a call that only
    /// joins its line is not a dial.
    pub async fn tick(self: &Arc<Self>) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let node = self.config.node_id.as_str();
        let busy = self.api_busy();
        let left = self.with_budget(|b| b.room(busy, now, u32::MAX));
        if left == 0 {
            return Ok(0);
        }
        let due = self
            .store
            .claim_due(
                node,
                now,
                self.lease_until(now),
                self.config.claim_batch.min(left),
            )
            .await?;
        let claimed = due.len();
        let mut to_dial = Vec::new();
        // Each trunk's due calls join its line in one statement, however many this round met.
        let mut lines: BTreeMap<TrunkId, String> = BTreeMap::new();
        for call in due {
            let lag_ms = (now.0 - call.due_at.0).max(0);
            metrics::histogram!("outdial_dispatch_lag_seconds").record(lag_ms as f64 / 1000.0);
            match decide(
                &call,
                Route::Due,
                now,
                &self.zones,
                &self.config.default_window,
            ) {
                Decision::Line { trunk, reason } => {
                    lines.entry(trunk).or_insert(reason);
                }
                decision => self.act(call, decision, now, &mut to_dial).await?,
            }
        }
        for (trunk, reason) in lines {
            self.line_up(trunk, now, &reason).await?;
        }
        for lane in self.store.trunk_lanes(now).await? {
            let room = lane_room(
                lane.max_calls_per_second,
                lane.dial_after,
                now,
                self.config
                    .claim_batch
                    .min(left.saturating_sub(dials(&to_dial))),
            );
            if room == 0 {
                continue;
            }
            let calls = self
                .store
                .claim_lane(node, lane.trunk, now, self.lease_until(now), room)
                .await?;
            for call in calls {
                let decision = decide(
                    &call,
                    Route::Line,
                    now,
                    &self.zones,
                    &self.config.default_window,
                );
                self.act(call, decision, now, &mut to_dial).await?;
            }
        }
        self.with_budget(|b| b.spend(dials(&to_dial), now));
        if to_dial.is_empty() {
            return Ok(claimed);
        }
        // Oldest first: the caps are counted in this order.
        to_dial.sort_by_key(|(call, _)| call.due_at);
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
            .begin_dials(node, now, self.lease_until(now), &starts)
            .await?;
        for ((call, _), outcome) in to_dial.into_iter().zip(outcomes) {
            match outcome {
                BeginDial::Started => self.start(call, None),
                BeginDial::Booked(invite_at) => self.start(call, Some(invite_at)),
                BeginDial::Deferred { until, reason } => {
                    self.store.defer_call(call.id, node, until, &reason).await?;
                }
                BeginDial::Gone => {}
                BeginDial::Listed => {
                    tracing::info!(conversation_id = %call.id, trace_id = %call.trace_id, "number is on the do-not-call list: call canceled");
                    self.events_written();
                }
                BeginDial::Paced => {
                    tracing::debug!(conversation_id = %call.id, "the trunk's token went elsewhere: the call keeps its place in the line");
                }
            }
        }
        Ok(claimed)
    }

    /// Runs a call whose `initiated` is durable, its INVITE at once or at the instant its
    /// trunk's pace booked for it (less than `pacing::BOOK_AHEAD` on). It is live from now, so
    /// a stop meanwhile gives it the grace of the calls already ringing.
    fn start(self: &Arc<Self>, call: DueCall, invite_at: Option<Millis>) {
        self.track(&call);
        let me = self.clone();
        tokio::spawn(async move {
            if let Some(at) = invite_at {
                let wait = u64::try_from(at.0 - me.clock.now().0).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            me.run_call(call).await
        });
    }

    /// Carries out a decision on a claimed call; one to dial is added to `to_dial`.
    async fn act(
        &self,
        call: DueCall,
        decision: Decision,
        now: Millis,
        to_dial: &mut Vec<(DueCall, DialLimits)>,
    ) -> Result<(), StoreError> {
        match decision {
            Decision::Fail(reason) => self.fail_undialled(&call, reason).await?,
            Decision::Wait { until, reason } => {
                tracing::info!(conversation_id = %call.id, trace_id = %call.trace_id, %reason, until = %until.to_rfc3339(), "call waits");
                self.store
                    .defer_call(call.id, &self.config.node_id, until, &reason)
                    .await?;
            }
            Decision::Line { trunk, reason } => self.line_up(trunk, now, &reason).await?,
            Decision::Dial(limits) => to_dial.push((call, limits)),
        }
        Ok(())
    }

    /// Puts the trunk's due calls (those this node holds too) in the trunk's line.
    async fn line_up(&self, trunk: TrunkId, now: Millis, reason: &str) -> Result<(), StoreError> {
        let calls = self
            .store
            .park_calls(&self.config.node_id, trunk, now, reason)
            .await?;
        if calls > 0 {
            tracing::info!(trunk_id = trunk.0, calls, %reason, "calls wait in the trunk's line");
        }
        Ok(())
    }

    pub(crate) fn settler(&self) -> &settler::Settler {
        self.settler.get_or_init(|| {
            settler::settler(self.store.clone(), self.clock.clone(), self.config.settle)
        })
    }

    pub(crate) fn marker(&self) -> &settler::Marker {
        self.marker.get_or_init(|| {
            settler::marker(
                self.store.clone(),
                self.config.node_id.clone(),
                self.config.settle,
            )
        })
    }

    pub(crate) fn events_written(&self) {
        if let Some(n) = &self.config.events_written {
            n.notify_one();
        }
    }

    fn track(&self, call: &DueCall) {
        let live = Live {
            call: OrphanedCall { id: call.id },
            control: None,
            abandoned: false,
        };
        if let Ok(mut map) = self.live.lock() {
            map.insert(call.id, live);
        }
    }

    pub(crate) fn untrack(&self, id: ConversationId) {
        if let Ok(mut map) = self.live.lock() {
            map.remove(&id);
        }
        self.ended.notify_waiters();
    }

    fn abandoned(&self, id: ConversationId) -> bool {
        self.live
            .lock()
            .map(|map| map.get(&id).is_some_and(|l| l.abandoned))
            .unwrap_or(false)
    }

    /// Keeps the way to hang up a call telephony has started. False when a stop has settled
    /// the call meanwhile: the caller hangs up at once.
    pub(crate) fn attach_control(
        &self,
        id: ConversationId,
        control: mpsc::Sender<CallControl>,
    ) -> bool {
        let Ok(mut map) = self.live.lock() else {
            return true;
        };
        match map.get_mut(&id) {
            Some(live) if !live.abandoned => {
                live.control = Some(control);
                true
            }
            _ => false,
        }
    }

    async fn fail_undialled(&self, call: &DueCall, reason: String) -> Result<(), StoreError> {
        tracing::warn!(conversation_id = %call.id, trace_id = %call.trace_id, %reason, "call cannot be dialled");
        let now = self.clock.now();
        let refused = FinishAttempt {
            failure_reason: Some(reason),
            public_url: self.config.public_url.clone(),
            ..FinishAttempt::bare(call.id, &self.config.node_id, CallStatus::Failed, now)
        };
        self.store.finish_attempt(refused, now).await.map(|_| ())
    }

    /// Settles calls whose node stopped renewing their lease: `failed` / `interrupted`, then
    /// the retry policy. Never redials them directly: the person may have been talking already.
    pub async fn sweep_orphans(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let orphans = self.store.orphaned_calls(now, 100).await?;
        let mut settled = 0;
        let mut first_error = None;
        for result in self.settle_interrupted(&orphans).await {
            match result {
                Ok(true) => settled += 1,
                Ok(false) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        // The others are settled; the failed ones are still orphans at the next sweep.
        match first_error {
            Some(e) if settled == 0 => Err(e),
            Some(e) => {
                tracing::error!(error = %e, settled, "some orphaned calls could not be settled");
                Ok(settled)
            }
            None => Ok(settled),
        }
    }

    /// Interrupted calls' one settlement, for a node found dead and for a stop's leftover calls
    /// alike: `failed` / `interrupted`, then the retry policy, all in one transaction. For each
    /// call, false when it was settled already (elsewhere, or by its own task).
    async fn settle_interrupted(&self, calls: &[OrphanedCall]) -> Vec<Result<bool, StoreError>> {
        if calls.is_empty() {
            return Vec::new();
        }
        let now = self.clock.now();
        let (node, url) = (&self.config.node_id, &self.config.public_url);
        let finishes = calls
            .iter()
            .map(|c| FinishAttempt::interrupted(c.id, node, url, now))
            .collect();
        let results = self.store.finish_attempts(finishes, now).await;
        let mut any = false;
        let answers = calls
            .iter()
            .zip(results)
            .map(|(call, r)| {
                let settled = r?.is_some();
                if settled {
                    any = true;
                    tracing::warn!(conversation_id = %call.id, "settled an interrupted call");
                }
                Ok(settled)
            })
            .collect();
        if any {
            self.events_written();
        }
        answers
    }

    async fn renew_leases(&self) -> Result<(), StoreError> {
        let ids: Vec<ConversationId> = self
            .live
            .lock()
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default();
        if ids.is_empty() {
            return Ok(());
        }
        let now = self.clock.now();
        self.store
            .renew_leases(&self.config.node_id, &ids, self.lease_until(now))
            .await
    }

    /// Runs until `shutdown` turns true, then stops claiming at once and returns when its live
    /// calls have ended: on their own within [`DispatchConfig::shutdown_grace`], else settled
    /// `failed` / `interrupted` and hung up.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let renew_every = self.config.lease / 3;
        let mut next_renew = tokio::time::Instant::now() + renew_every;
        let mut next_sweep = tokio::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            loop {
                // A backlog keeps every round full; a stop must not wait for it to run dry.
                if *shutdown.borrow() {
                    break;
                }
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
            if let Some(at) = self.slowed_until(now) {
                // The API is busy and this node has dialled its busy rate's worth: the calls
                // due meanwhile wait for the budget, and a poke from the API brings nothing
                // new to take.
                let wait = Duration::from_millis(u64::try_from(at.0 - now.0).unwrap_or(0));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
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
        self.stop_live_calls(next_renew).await;
    }

    /// A stop's end of the live calls: their leases are renewed while they get the grace to
    /// end on their own; those still live after it are settled `failed` / `interrupted` (as
    /// if the node had died, so the retry policy decides and nothing is redialled blindly)
    /// and then hung up. Settling first means the hang-up cannot be mistaken for the callee's
    /// and the call settled `completed` by its own task.
    async fn stop_live_calls(&self, mut next_renew: tokio::time::Instant) {
        let renew_every = self.config.lease / 3;
        let grace_ends = tokio::time::Instant::now() + self.config.shutdown_grace;
        let live = self.live_calls();
        if live > 0 {
            tracing::info!(live, grace = ?self.config.shutdown_grace, "stopping: waiting for live calls to end");
        }
        loop {
            // Registered before the look, so an end between the look and the wait still wakes.
            let ended = self.ended.notified();
            if self.live_calls() == 0 {
                return;
            }
            let now = tokio::time::Instant::now();
            if now >= grace_ends {
                break;
            }
            if now >= next_renew {
                if let Err(e) = self.renew_leases().await {
                    tracing::error!(error = %e, "lease renewal failed");
                }
                next_renew = now + renew_every;
            }
            tokio::select! {
                () = ended => {}
                () = tokio::time::sleep_until(grace_ends.min(next_renew)) => {}
            }
        }
        let leftover: Vec<(OrphanedCall, Option<mpsc::Sender<CallControl>>)> =
            match self.live.lock() {
                Ok(mut map) => map
                    .values_mut()
                    .map(|l| {
                        l.abandoned = true;
                        (l.call.clone(), l.control.clone())
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
        tracing::warn!(
            calls = leftover.len(),
            "shutdown grace over: hanging up live calls"
        );
        let calls: Vec<OrphanedCall> = leftover.iter().map(|(c, _)| c.clone()).collect();
        for (call, result) in calls.iter().zip(self.settle_interrupted(&calls).await) {
            // The lease runs out and the orphan sweep settles it the same way.
            if let Err(e) = result {
                tracing::error!(conversation_id = %call.id, error = %e, "settling an interrupted call failed")
            }
        }
        for (_, control) in leftover {
            if let Some(control) = control {
                let _ = control.send(CallControl::Hangup).await;
            }
        }
        let hung_up = tokio::time::Instant::now() + HANGUP_WAIT;
        loop {
            let ended = self.ended.notified();
            if self.live_calls() == 0 {
                return;
            }
            tokio::select! {
                () = ended => {}
                () = tokio::time::sleep_until(hung_up) => {
                    tracing::warn!(calls = self.live_calls(), "calls still hanging up; exiting without them");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
