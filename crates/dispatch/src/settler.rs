//! Settlements in batches. Each ended call used to be settled in its own transaction: on
//! SQLite one fsync and one turn at the background gate per call, which capped a node under
//! API load at a few hundred calls per second. Call tasks now hand their end to one settler,
//! which writes whatever has gathered (up to [`SettleBatching::max_calls`]) in one
//! transaction through [`domain::dispatch::DispatchStore::finish_attempts`]; the next batch gathers while one is
//! written, so the batches grow with the load and a lone call is not held back.
//!
//! Nothing about a settlement changes: each call is still fenced by its lease, and the store
//! settles a failed batch again one call per transaction, so one bad call fails alone and the
//! rest are settled; a call whose settlement fails is left to the orphan sweep, as before.

use domain::dispatch::{FinishAttempt, Settled};
use domain::store::Store;
use domain::store::StoreError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

use crate::Clock;

/// How settlements are gathered into transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleBatching {
    /// Most calls settled in one transaction (at least 1).
    pub max_calls: usize,
    /// How long the settler waits for more calls to end once one has, while it has fewer than
    /// `max_calls` (zero: it writes what is there at once).
    pub gather: Duration,
}

impl Default for SettleBatching {
    fn default() -> Self {
        Self {
            max_calls: 32,
            gather: Duration::from_millis(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SettleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The settler's task ended (the runtime is shutting down) before the call's batch was
    /// answered; whether it was written is unknown, and the fence makes that harmless.
    #[error("the settler stopped before answering")]
    Stopped,
}

struct Job {
    finish: FinishAttempt,
    answer: oneshot::Sender<Result<Option<Settled>, StoreError>>,
}

/// The call tasks' side of the settler; its task ends when this is dropped.
pub(crate) struct Settler {
    jobs: mpsc::Sender<Job>,
}

impl Settler {
    /// Spawns the settler's task: call from inside the runtime.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        batching: SettleBatching,
    ) -> Self {
        let max = batching.max_calls.max(1);
        // Each call task waits for its own answer, so at most one job per live call is ever
        // queued; the bound only makes a burst beyond it wait for room.
        let (jobs, rx) = mpsc::channel(max * 4);
        tokio::spawn(run(store, clock, max, batching.gather, rx));
        Self { jobs }
    }

    /// Settles the attempt with whatever other calls end about now; answers as
    /// [`domain::dispatch::DispatchStore::finish_attempt`] would.
    pub(crate) async fn settle(
        &self,
        finish: FinishAttempt,
    ) -> Result<Option<Settled>, SettleError> {
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send(Job { finish, answer })
            .await
            .map_err(|_| SettleError::Stopped)?;
        Ok(answered.await.map_err(|_| SettleError::Stopped)??)
    }
}

async fn run(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    max: usize,
    gather: Duration,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut jobs = Vec::with_capacity(max);
    while let Some(first) = rx.recv().await {
        jobs.push(first);
        let deadline = tokio::time::Instant::now() + gather;
        while jobs.len() < max {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(mpsc::error::TryRecvError::Empty) if !gather.is_zero() => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(job)) => jobs.push(job),
                        _ => break,
                    }
                }
                Err(_) => break,
            }
        }
        let (finishes, answers): (Vec<_>, Vec<_>) =
            jobs.drain(..).map(|j| (j.finish, j.answer)).unzip();
        let calls = finishes.len();
        metrics::histogram!("outdial_settle_batch_calls").record(calls as f64);
        let results = store.finish_attempts(finishes, clock.now()).await;
        // A call task that is gone (its node stopping) no longer needs its answer.
        for (answer, result) in answers.into_iter().zip(results) {
            let _ = answer.send(result);
        }
    }
}
