//! Foreground first on SQLite's one writer. `POST /v1/call`, the dispatcher's work and upload
//! chunks go through the group-commit writer's thread, which keeps its own rule ([`Share`]);
//! the webhook outbox and the other background writers write through the sqlx write pool's
//! single connection. Both take that connection to write, so without a rule an API request
//! waits behind every background transaction queued before it.
//!
//! The rule: one background transaction at a time, and it starts only while no `POST /v1/call`
//! is waiting for the writer, or after it has itself waited `max_wait` (so a node under constant
//! API load still dials). A request therefore waits behind at most one background transaction,
//! and those are kept small (claims, settlements, outbox rounds, batch chunks).
//!
//! A request counts as waiting from its arrival at the writer until its transaction holds the
//! connection, not until it is answered: a request whose batch is already committing cannot be
//! overtaken, and counting it kept the count above zero for as long as clients kept sending, so
//! under steady API load every background transaction waited out the whole of `max_wait`.
//!
//! [`Policy`] is the decision, time and counts in; [`Gate`] is its tokio wiring. [`Share`] is
//! the writer thread's decision for its own queue of jobs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// What a background transaction at the gate should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    Go,
    /// Foreground work is waiting: look again when it drains or after this long.
    Wait(Duration),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub max_wait: Duration,
}

impl Policy {
    pub(crate) fn decide(&self, foreground_waiting: usize, waited: Duration) -> Turn {
        if foreground_waiting == 0 || waited >= self.max_wait {
            Turn::Go
        } else {
            Turn::Wait(self.max_wait - waited)
        }
    }
}

/// The writer thread's rule for its queued jobs (dial starts, marks, settlements): while calls
/// wait, background work gets at most `share` of the thread's time, counted as credit that
/// calls' batches earn and jobs spend; with no call waiting a job goes at once. Credit is
/// earned only while a job waits and is banked up to `MAX_CREDIT`, so an idle spell of
/// background work cannot buy a long run of jobs ahead of the calls later.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Share {
    share: f64,
    /// Seconds of writer time background work may still take ahead of waiting calls; negative
    /// while it owes them.
    credit: f64,
}

const MAX_CREDIT: f64 = 0.010;

impl Share {
    /// `percent` of the writer's time, 1-100.
    pub(crate) fn new(percent: u8) -> Self {
        Self {
            share: f64::from(percent.clamp(1, 100)) / 100.0,
            credit: 0.0,
        }
    }

    /// Whether the oldest queued job goes before the calls waiting now.
    pub(crate) fn job_goes(&self, calls_waiting: usize) -> bool {
        calls_waiting == 0 || self.credit >= 0.0
    }

    pub(crate) fn job_ran(&mut self, took: Duration) {
        self.credit -= took.as_secs_f64();
    }

    /// A batch of calls took `took`; `jobs_waiting`: whether a job waited meanwhile.
    pub(crate) fn calls_ran(&mut self, took: Duration, jobs_waiting: bool) {
        if !jobs_waiting {
            self.credit = self.credit.min(0.0);
        } else if self.share >= 1.0 {
            self.credit = MAX_CREDIT;
        } else {
            let earned = took.as_secs_f64() * self.share / (1.0 - self.share);
            self.credit = (self.credit + earned).min(MAX_CREDIT);
        }
    }
}

pub(crate) struct Gate {
    policy: Policy,
    foreground: AtomicUsize,
    drained: Notify,
    background: Arc<Semaphore>,
}

/// Held by a foreground write from its arrival until its transaction holds the writer's
/// connection.
pub(crate) struct Foreground(Arc<Gate>);

impl Drop for Foreground {
    fn drop(&mut self) {
        if self.0.foreground.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// What a background transaction is for, as its metrics are labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// Claims, dial starts, leases.
    Dispatch,
    /// Ended calls' settlements.
    Settle,
    /// Webhook delivery bookkeeping.
    Outbox,
    /// Batch uploads' chunks.
    Batch,
    /// Deep pages' marks.
    Pages,
    /// Transcription jobs.
    Transcription,
}

impl Work {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Work::Dispatch => "dispatch",
            Work::Settle => "settle",
            Work::Outbox => "outbox",
            Work::Batch => "batch",
            Work::Pages => "pages",
            Work::Transcription => "transcription",
        }
    }
}

/// Held by a background transaction until it ends: the next one waits for it. Its length is
/// how long `POST /v1/call` may have waited behind it, so it is measured
/// (`outdial_db_background_hold_seconds`).
pub(crate) struct BackgroundTurn {
    _permit: Option<OwnedSemaphorePermit>,
    since: Instant,
    work: Work,
}

impl Drop for BackgroundTurn {
    fn drop(&mut self) {
        metrics::histogram!("outdial_db_background_hold_seconds", "work" => self.work.as_str())
            .record(self.since.elapsed().as_secs_f64());
    }
}

impl Gate {
    pub(crate) fn new(max_wait: Duration) -> Self {
        Self {
            policy: Policy { max_wait },
            foreground: AtomicUsize::new(0),
            drained: Notify::new(),
            background: Arc::new(Semaphore::new(1)),
        }
    }

    pub(crate) fn policy(&self) -> Policy {
        self.policy
    }

    pub(crate) fn foreground(self: &Arc<Self>) -> Foreground {
        self.foreground.fetch_add(1, Ordering::AcqRel);
        Foreground(self.clone())
    }

    pub(crate) async fn background(&self, work: Work) -> BackgroundTurn {
        // The semaphore is never closed, so acquiring cannot fail; if it ever were, going on
        // without the turn only costs priority, never correctness.
        let permit = self.background.clone().acquire_owned().await.ok();
        let arrived = Instant::now();
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Registered before the count is read, so a drain in between is not missed.
            drained.as_mut().enable();
            let waiting = self.foreground.load(Ordering::Acquire);
            match self.policy.decide(waiting, arrived.elapsed()) {
                Turn::Go => break,
                Turn::Wait(d) => {
                    tokio::select! {
                        _ = drained => {}
                        _ = tokio::time::sleep(d) => {}
                    }
                }
            }
        }
        metrics::histogram!("outdial_db_background_wait_seconds", "work" => work.as_str())
            .record(arrived.elapsed().as_secs_f64());
        BackgroundTurn {
            _permit: permit,
            since: Instant::now(),
            work,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn jobs_get_their_share_of_the_writer_while_calls_wait() {
        let mut s = Share::new(25);
        assert!(s.job_goes(5), "the first job goes with no debt");
        s.job_ran(3 * MS);
        assert!(
            !s.job_goes(5),
            "then calls go until they have had three times as long"
        );
        s.calls_ran(6 * MS, true);
        assert!(!s.job_goes(5));
        s.calls_ran(3 * MS, true);
        assert!(s.job_goes(5));
    }

    #[test]
    fn a_job_goes_at_once_when_no_call_waits_whatever_it_owes() {
        let mut s = Share::new(25);
        s.job_ran(50 * MS);
        assert!(s.job_goes(0));
        assert!(!s.job_goes(1));
    }

    #[test]
    fn credit_is_earned_only_while_a_job_waits_and_is_banked_only_so_far() {
        let mut s = Share::new(25);
        s.calls_ran(1000 * MS, false);
        s.job_ran(MS);
        assert!(
            !s.job_goes(1),
            "calls that ran with no job waiting earn nothing"
        );
        s.calls_ran(1000 * MS, true);
        for _ in 0..4 {
            assert!(s.job_goes(1));
            s.job_ran(3 * MS);
        }
        assert!(
            !s.job_goes(1),
            "a long spell of calls buys 10 ms of jobs (and the job that crosses the line)"
        );
    }

    #[test]
    fn a_full_share_lets_every_job_go() {
        let mut s = Share::new(100);
        s.job_ran(5 * MS);
        s.calls_ran(MS, true);
        assert!(s.job_goes(10));
    }

    #[test]
    fn background_goes_at_once_when_no_request_waits() {
        let p = Policy { max_wait: 20 * MS };
        assert_eq!(p.decide(0, Duration::ZERO), Turn::Go);
    }

    #[test]
    fn background_waits_while_requests_are_queued_for_the_rest_of_its_budget() {
        let p = Policy { max_wait: 20 * MS };
        assert_eq!(p.decide(3, Duration::ZERO), Turn::Wait(20 * MS));
        assert_eq!(p.decide(1, 15 * MS), Turn::Wait(5 * MS));
    }

    #[test]
    fn background_is_not_starved_past_its_budget() {
        let p = Policy { max_wait: 20 * MS };
        assert_eq!(p.decide(50, 20 * MS), Turn::Go);
        assert_eq!(p.decide(50, 90 * MS), Turn::Go);
    }

    #[tokio::test]
    async fn a_background_transaction_waits_for_queued_requests_then_goes() {
        let gate = Arc::new(Gate::new(Duration::from_secs(60)));
        let request = gate.foreground();
        let g = gate.clone();
        let turn = tokio::spawn(async move {
            let _t = g.background(Work::Dispatch).await;
        });
        tokio::time::sleep(50 * MS).await;
        assert!(!turn.is_finished(), "went while a request was waiting");
        drop(request);
        tokio::time::timeout(Duration::from_secs(5), turn)
            .await
            .expect("drain did not wake the background transaction")
            .expect("task");
    }

    #[tokio::test]
    async fn one_background_transaction_at_a_time() {
        let gate = Arc::new(Gate::new(Duration::from_secs(60)));
        let first = gate.background(Work::Dispatch).await;
        let g = gate.clone();
        let second = tokio::spawn(async move {
            let _t = g.background(Work::Dispatch).await;
        });
        tokio::time::sleep(50 * MS).await;
        assert!(!second.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("second turn")
            .expect("task");
    }
}
