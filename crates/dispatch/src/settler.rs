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
//!
//! The gathering itself ([`Batcher`]) serves the progress marks too ([`Marker`]): `ringing`
//! and `in_progress` come for nearly every call, and one transaction each cost as much.

use domain::dispatch::{FinishAttempt, Progress, Settled};
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

struct Job<J, A> {
    job: J,
    answer: oneshot::Sender<A>,
}

/// Gathers the call tasks' writes of one kind into transactions: the first one waits at most
/// `gather` for more, up to `max_calls`, then `write` takes them all and answers each in order.
/// Its task ends when this is dropped.
pub(crate) struct Batcher<J, A> {
    jobs: mpsc::Sender<Job<J, A>>,
}

impl<J: Send + 'static, A: Send + 'static> Batcher<J, A> {
    /// Spawns the batcher's task: call from inside the runtime. `metric` is the histogram of
    /// the batches' sizes.
    pub(crate) fn start<W, F>(batching: SettleBatching, metric: &'static str, write: W) -> Self
    where
        W: FnMut(Vec<J>) -> F + Send + 'static,
        F: std::future::Future<Output = Vec<A>> + Send + 'static,
    {
        let max = batching.max_calls.max(1);
        // Each call task waits for its own answer, so at most one job per live call is ever
        // queued; the bound only makes a burst beyond it wait for room.
        let (jobs, rx) = mpsc::channel(max * 4);
        tokio::spawn(run(max, batching.gather, metric, rx, write));
        Self { jobs }
    }

    /// Writes `job` with whatever others come about now; its answer.
    pub(crate) async fn submit(&self, job: J) -> Result<A, SettleError> {
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send(Job { job, answer })
            .await
            .map_err(|_| SettleError::Stopped)?;
        answered.await.map_err(|_| SettleError::Stopped)
    }
}

/// The call tasks' side of the settler.
pub(crate) type Settler = Batcher<FinishAttempt, Result<Option<Settled>, StoreError>>;

/// Spawns the settler, which settles through
/// [`domain::dispatch::DispatchStore::finish_attempts`] and answers each attempt as
/// [`domain::dispatch::DispatchStore::finish_attempt`] would.
pub(crate) fn settler(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    batching: SettleBatching,
) -> Settler {
    Batcher::start(batching, "outdial_settle_batch_calls", move |finishes| {
        let (store, now) = (store.clone(), clock.now());
        async move { store.finish_attempts(finishes, now).await }
    })
}

/// The call tasks' side of the progress marks (`ringing`, `in_progress`): one transaction and
/// one turn at the store's background gate per batch, not per call, as for settlements. A
/// carrier sends `180 Ringing` for nearly every call, and one transaction each held a node
/// under API load to about 120 dials/s (docs/benchmarks.md).
pub(crate) type Marker = Batcher<Progress, Result<bool, StoreError>>;

/// Spawns the marker for `node`, writing through
/// [`domain::dispatch::DispatchStore::mark_progresses`].
pub(crate) fn marker(store: Arc<dyn Store>, node: String, batching: SettleBatching) -> Marker {
    Batcher::start(
        batching,
        "outdial_progress_batch_calls",
        move |marks: Vec<Progress>| {
            let (store, node) = (store.clone(), node.clone());
            async move { store.mark_progresses(&node, &marks).await }
        },
    )
}

async fn run<J, A, W, F>(
    max: usize,
    gather: Duration,
    metric: &'static str,
    mut rx: mpsc::Receiver<Job<J, A>>,
    mut write: W,
) where
    W: FnMut(Vec<J>) -> F,
    F: std::future::Future<Output = Vec<A>>,
{
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
        let (batch, answers): (Vec<_>, Vec<_>) = jobs.drain(..).map(|j| (j.job, j.answer)).unzip();
        metrics::histogram!(metric).record(batch.len() as f64);
        let results = write(batch).await;
        // A call task that is gone (its node stopping) no longer needs its answer.
        for (answer, result) in answers.into_iter().zip(results) {
            let _ = answer.send(result);
        }
    }
}
