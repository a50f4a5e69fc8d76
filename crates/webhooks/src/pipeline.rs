//! The delivery worker's scheduling, without I/O: which leased delivery starts next, how many
//! attempts each target may have in flight, what a finished attempt teaches about its target,
//! and what is forgotten when. Time is an input (as in `crates/media`), so every rule is
//! unit-tested with a clock the test moves; the worker's run loop (`worker.rs`) feeds it the
//! real one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use domain::webhooks::{AttemptResult, DeliveryId, LeasedDelivery, WebhookTargetId};
use tokio::task;

use crate::Verdict;

/// Leases a failing target keeps (one in flight, the rest queued): the rest go back to the
/// outbox, so it holds no room that answering targets could use.
const FAILING_LEASES: usize = 4;

/// How long a target's health is remembered after its queue empties: a failing one keeps its
/// one-at-a-time limit, an answering one its full share.
const REMEMBER_HEALTH: Duration = Duration::from_secs(600);

/// Attempts in flight to a target (on this worker) until it first answers 2xx: a target that
/// turns out to fail costs a few attempts, not a full share of the slots, and one that answers
/// gets its full share one round trip later.
const UNTRIED_INFLIGHT: usize = 4;

/// While answering targets have deliveries waiting, a failing target is attempted at most this
/// often: its attempts cost the CPU (and, on a shared machine, the receivers' CPU) that the
/// answering targets' deliveries wait for, and its first success restores its share.
const FAILING_PROBE_EVERY: Duration = Duration::from_secs(1);

/// A finished attempt, with what it says about its target.
pub(crate) struct Finished {
    pub target: WebhookTargetId,
    pub verdict: Verdict,
    pub result: AttemptResult,
}

/// One leased delivery waiting for a slot.
pub(crate) struct Queued {
    pub delivery: LeasedDelivery,
    /// Past this the lease is too far gone to start an attempt under it.
    pub start_by: Instant,
}

/// One target's deliveries on this worker.
struct Lane {
    queue: VecDeque<Queued>,
    inflight: usize,
    /// Current in-flight limit: the configured cap once the target answers, a few until it
    /// first does, one while it fails.
    limit: usize,
    /// When its last attempt asked for a retry, while it is failing.
    failed_at: Option<Instant>,
    /// When its last attempt started.
    started_at: Option<Instant>,
    /// When one of its attempts here was last answered 2xx.
    answered_at: Option<Instant>,
}

impl Lane {
    fn failing(&self) -> bool {
        self.failed_at.is_some()
    }

    fn can_start(&self) -> bool {
        !self.queue.is_empty() && self.inflight < self.limit
    }
}

/// The run loop's bookkeeping.
#[derive(Default)]
pub(crate) struct Pipeline {
    lanes: BTreeMap<WebhookTargetId, Lane>,
    /// Attempts in flight.
    pub inflight: usize,
    /// Leases this worker holds: queued, in flight, or waiting to be recorded.
    pub held: usize,
    /// Finished attempts not yet handed to a write.
    pub unrecorded: Vec<AttemptResult>,
    /// Leases to give back with the next write.
    pub release: Vec<DeliveryId>,
    /// The target and delivery of each attempt in flight, for an attempt task that fails or
    /// is cut short.
    pub tasks: HashMap<task::Id, (WebhookTargetId, DeliveryId)>,
    /// When targets whose lanes were forgotten last answered 2xx, so that their next burst
    /// starts at their full share. Kept apart from `lanes`, which every start walks.
    answered: HashMap<WebhookTargetId, Instant>,
}

impl Pipeline {
    /// Queues a leased delivery on its target's lane.
    pub fn enqueue(&mut self, delivery: LeasedDelivery, start_by: Instant, cap: usize) {
        self.lane(delivery.target, cap)
            .queue
            .push_back(Queued { delivery, start_by });
    }

    /// Nothing queued and nothing in flight.
    pub fn idle(&self) -> bool {
        self.inflight == 0 && self.queues_empty()
    }

    pub fn queues_empty(&self) -> bool {
        self.lanes.values().all(|lane| lane.queue.is_empty())
    }

    /// Gives back every queued lease (a stop).
    pub fn release_queued(&mut self) {
        for lane in self.lanes.values_mut() {
            self.release
                .extend(lane.queue.drain(..).map(|q| q.delivery.id));
        }
    }

    fn lane(&mut self, target: WebhookTargetId, cap: usize) -> &mut Lane {
        let answered = &mut self.answered;
        self.lanes.entry(target).or_insert_with(|| {
            let answered_at = answered.remove(&target);
            Lane {
                queue: VecDeque::new(),
                inflight: 0,
                limit: if answered_at.is_some() {
                    cap
                } else {
                    cap.min(UNTRIED_INFLIGHT)
                },
                failed_at: None,
                started_at: None,
                answered_at,
            }
        })
    }

    /// Failing targets get a handful of leases at a time, whatever the general cap, and a
    /// target not yet heard from one round of its slots: leasing (and, if it turns out to
    /// fail, giving back) a deep queue for a target that may never answer costs the database
    /// time the answering targets' deliveries wait for.
    pub fn target_caps(&self, cap: usize) -> Vec<(WebhookTargetId, u32)> {
        let few = u32::try_from(FAILING_LEASES).unwrap_or(u32::MAX);
        let untried = u32::try_from(cap).unwrap_or(u32::MAX);
        self.lanes
            .iter()
            .filter_map(|(id, lane)| {
                if lane.failing() {
                    Some((*id, few))
                } else if lane.answered_at.is_none() {
                    Some((*id, untried))
                } else {
                    None
                }
            })
            .collect()
    }

    /// Forgets targets with nothing queued or in flight, but not for a while what was learnt
    /// of them: a failing one's next retries start one at a time too, an answering one's next
    /// burst at its full share.
    pub fn prune(&mut self, now: Instant) {
        let recent = |at: &Instant| now - *at < REMEMBER_HEALTH;
        let answered = &mut self.answered;
        answered.retain(|_, at| recent(at));
        self.lanes.retain(|id, lane| {
            let keep = !lane.queue.is_empty()
                || lane.inflight > 0
                || lane.failed_at.as_ref().is_some_and(recent);
            if !keep {
                if let Some(at) = lane.answered_at.filter(recent) {
                    answered.insert(*id, at);
                }
            }
            keep
        });
    }

    /// The next delivery to start: healthy targets first, taking turns by target, so a busy
    /// one cannot take every slot; a failing one only when no healthy one has deliveries
    /// waiting, or once per [`FAILING_PROBE_EVERY`] so it is never starved.
    pub fn next_start(
        &mut self,
        cursor: &mut Option<WebhookTargetId>,
        now: Instant,
    ) -> Option<Queued> {
        loop {
            let after = cursor.unwrap_or(WebhookTargetId(i64::MIN));
            let healthy_waiting = self
                .lanes
                .values()
                .any(|lane| !lane.failing() && !lane.queue.is_empty());
            let mut pick = None;
            for healthy in [true, false] {
                let ready = |lane: &Lane| {
                    lane.failing() != healthy
                        && lane.can_start()
                        && (healthy
                            || !healthy_waiting
                            || lane
                                .started_at
                                .is_none_or(|at| now - at >= FAILING_PROBE_EVERY))
                };
                pick = self
                    .lanes
                    .iter()
                    .filter(|(id, lane)| **id > after && ready(lane))
                    .chain(self.lanes.iter().filter(|(_, lane)| ready(lane)))
                    .map(|(id, _)| *id)
                    .next();
                if pick.is_some() {
                    break;
                }
            }
            let id = pick?;
            let lane = self.lanes.get_mut(&id)?;
            let queued = lane.queue.pop_front()?;
            if queued.start_by > now {
                lane.started_at = Some(now);
                lane.inflight += 1;
                self.inflight += 1;
                *cursor = Some(id);
                return Some(queued);
            }
            // Too late to start under this lease: give it back for anyone to take.
            self.release.push(queued.delivery.id);
            self.held = self.held.saturating_sub(1);
        }
    }

    pub fn joined(
        &mut self,
        joined: Result<(task::Id, Finished), task::JoinError>,
        cap: usize,
        now: Instant,
    ) {
        match joined {
            Ok((id, finished)) => {
                self.tasks.remove(&id);
                self.finished(finished, cap, now);
            }
            // Nothing to record: the delivery is attempted again, at once when a stop cut it
            // short, else when its lease lapses.
            Err(err) => {
                self.inflight = self.inflight.saturating_sub(1);
                self.held = self.held.saturating_sub(1);
                if let Some((target, delivery)) = self.tasks.remove(&err.id()) {
                    if let Some(lane) = self.lanes.get_mut(&target) {
                        lane.inflight = lane.inflight.saturating_sub(1);
                    }
                    if err.is_cancelled() {
                        self.release.push(delivery);
                        return;
                    }
                }
                tracing::error!(error = %err, "webhook attempt task failed");
            }
        }
    }

    fn finished(&mut self, finished: Finished, cap: usize, now: Instant) {
        self.inflight = self.inflight.saturating_sub(1);
        if let Some(lane) = self.lanes.get_mut(&finished.target) {
            lane.inflight = lane.inflight.saturating_sub(1);
            match finished.verdict {
                // The target is not answering properly: one attempt at a time until it does.
                Verdict::Retry => {
                    lane.limit = 1;
                    lane.failed_at = Some(now);
                    let keep = FAILING_LEASES.saturating_sub(1);
                    if lane.queue.len() > keep {
                        let surplus: Vec<DeliveryId> =
                            lane.queue.drain(keep..).map(|q| q.delivery.id).collect();
                        self.held = self.held.saturating_sub(surplus.len());
                        self.release.extend(surplus);
                    }
                }
                Verdict::Delivered => {
                    lane.limit = cap;
                    lane.failed_at = None;
                    lane.answered_at = Some(now);
                }
                Verdict::Failed | Verdict::FailedAndDeactivate => {}
            }
        }
        self.unrecorded.push(finished.result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::webhooks::{AttemptRecord, NextState};
    use domain::{Millis, TenantId};

    const CAP: usize = 16;

    fn delivery(id: i64, target: i64) -> LeasedDelivery {
        LeasedDelivery {
            id: DeliveryId(id),
            tenant: TenantId(1),
            target: WebhookTargetId(target),
            event_id: format!("evt_{id:012}"),
            event_type: "call.completed".into(),
            payload: "{}".into(),
            attempts: 0,
            url: "https://example.com/hook".into(),
            secret: "0123456789abcdef".into(),
            previous_secret: None,
            include_transcript: false,
            include_recording_url: false,
        }
    }

    fn finished(pipe: &mut Pipeline, q: &Queued, verdict: Verdict, now: Instant) {
        let result = AttemptResult {
            delivery: q.delivery.id,
            attempt: AttemptRecord {
                at: Millis(0),
                http_status: None,
                error: None,
                duration_ms: 1,
            },
            next: NextState::Delivered,
        };
        let target = q.delivery.target;
        pipe.finished(
            Finished {
                target,
                verdict,
                result,
            },
            CAP,
            now,
        );
    }

    /// Fills a pipeline with `n` deliveries for each target, ids numbered per target.
    fn pipeline(targets: &[(i64, usize)], now: Instant) -> Pipeline {
        let mut pipe = Pipeline::default();
        for &(target, n) in targets {
            for i in 0..n {
                let id = target * 1000 + i as i64;
                pipe.enqueue(delivery(id, target), now + Duration::from_secs(60), CAP);
                pipe.held += 1;
            }
        }
        pipe
    }

    fn start_all(pipe: &mut Pipeline, now: Instant) -> Vec<Queued> {
        let mut cursor = None;
        std::iter::from_fn(|| pipe.next_start(&mut cursor, now)).collect()
    }

    #[test]
    fn a_target_not_yet_heard_from_gets_a_few_attempts_until_it_answers_then_its_share() {
        let t0 = Instant::now();
        let mut pipe = pipeline(&[(1, 40)], t0);
        let first = start_all(&mut pipe, t0);
        assert_eq!(first.len(), UNTRIED_INFLIGHT);
        finished(&mut pipe, &first[0], Verdict::Delivered, t0);
        // One in flight ended and the target answered: up to the full cap now.
        let more = start_all(&mut pipe, t0);
        assert_eq!(more.len(), CAP - (UNTRIED_INFLIGHT - 1));
    }

    #[test]
    fn a_failing_target_gets_one_attempt_at_a_time_and_gives_back_its_surplus_leases() {
        let t0 = Instant::now();
        let mut pipe = pipeline(&[(1, 20)], t0);
        let started = start_all(&mut pipe, t0);
        assert_eq!(started.len(), UNTRIED_INFLIGHT);
        finished(&mut pipe, &started[0], Verdict::Retry, t0);
        // 16 were queued; it keeps FAILING_LEASES - 1 of them.
        assert_eq!(
            pipe.release.len(),
            20 - UNTRIED_INFLIGHT - (FAILING_LEASES - 1)
        );
        for q in &started[1..] {
            finished(&mut pipe, q, Verdict::Retry, t0);
        }
        let next = start_all(&mut pipe, t0);
        assert_eq!(next.len(), 1, "one at a time while failing");
        assert!(start_all(&mut pipe, t0).is_empty());
        assert_eq!(pipe.target_caps(CAP), vec![(WebhookTargetId(1), 4)]);
        // Its first success restores its share.
        finished(&mut pipe, &next[0], Verdict::Delivered, t0);
        assert_eq!(start_all(&mut pipe, t0).len(), FAILING_LEASES - 2);
        assert!(pipe.target_caps(CAP).is_empty());
    }

    #[test]
    fn a_failing_target_waits_while_answering_targets_have_deliveries_but_is_probed_each_second() {
        let t0 = Instant::now();
        let mut pipe = pipeline(&[(1, 2), (2, 3)], t0);
        // Target 1 fails once; target 2 answers.
        let mut cursor = None;
        let bad = pipe.next_start(&mut cursor, t0).unwrap();
        assert_eq!(bad.delivery.target, WebhookTargetId(1));
        finished(&mut pipe, &bad, Verdict::Retry, t0);
        let good = pipe.next_start(&mut cursor, t0).unwrap();
        assert_eq!(good.delivery.target, WebhookTargetId(2));
        finished(&mut pipe, &good, Verdict::Delivered, t0);
        // Within the second after target 1's attempt, target 2's deliveries go first; target
        // 1's only once none of them waits.
        let t = t0 + Duration::from_millis(500);
        let order: Vec<i64> = start_all(&mut pipe, t)
            .iter()
            .map(|q| q.delivery.target.0)
            .collect();
        assert_eq!(order, vec![2, 2, 1]);
        // With answering targets' deliveries still waiting, a second after its last attempt
        // it gets one probe even so.
        let mut pipe = pipeline(&[(1, 2), (2, 40)], t0);
        let mut cursor = None;
        let bad = pipe.next_start(&mut cursor, t0).unwrap();
        finished(&mut pipe, &bad, Verdict::Retry, t0);
        let later = t0 + FAILING_PROBE_EVERY;
        let started = start_all(&mut pipe, later);
        assert_eq!(
            started
                .iter()
                .filter(|q| q.delivery.target == WebhookTargetId(1))
                .count(),
            1
        );
    }

    #[test]
    fn healthy_targets_take_turns() {
        let t0 = Instant::now();
        let mut pipe = pipeline(&[(1, 3), (2, 3)], t0);
        let order: Vec<i64> = start_all(&mut pipe, t0)
            .iter()
            .map(|q| q.delivery.target.0)
            .collect();
        assert_eq!(order, vec![1, 2, 1, 2, 1, 2]);
    }

    #[test]
    fn a_lease_too_old_to_start_under_is_given_back_not_started() {
        let t0 = Instant::now();
        let mut pipe = pipeline(&[(1, 2)], t0);
        let late = t0 + Duration::from_secs(61);
        assert!(start_all(&mut pipe, late).is_empty());
        assert_eq!(pipe.release, vec![DeliveryId(1000), DeliveryId(1001)]);
        assert_eq!(pipe.held, 0);
    }

    #[test]
    fn what_was_learnt_of_a_target_is_kept_for_a_while_after_its_queue_empties() {
        let t0 = Instant::now();
        let mut pipe = pipeline(&[(1, 1)], t0);
        let q = start_all(&mut pipe, t0).pop().unwrap();
        finished(&mut pipe, &q, Verdict::Delivered, t0);
        pipe.prune(t0 + Duration::from_secs(1));
        // Its next burst starts at the full share.
        for i in 0..30 {
            pipe.enqueue(delivery(2000 + i, 1), t0 + Duration::from_secs(60), CAP);
        }
        assert_eq!(start_all(&mut pipe, t0 + Duration::from_secs(2)).len(), CAP);
        // Forgotten after REMEMBER_HEALTH: a new burst is tried with a few again.
        let mut pipe = pipeline(&[(1, 1)], t0);
        let q = start_all(&mut pipe, t0).pop().unwrap();
        finished(&mut pipe, &q, Verdict::Delivered, t0);
        let much_later = t0 + REMEMBER_HEALTH + Duration::from_secs(1);
        pipe.prune(much_later);
        for i in 0..30 {
            pipe.enqueue(
                delivery(2000 + i, 1),
                much_later + Duration::from_secs(60),
                CAP,
            );
        }
        assert_eq!(start_all(&mut pipe, much_later).len(), UNTRIED_INFLIGHT);
    }
}
