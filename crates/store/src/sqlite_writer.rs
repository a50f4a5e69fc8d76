//! Group commit for `POST /v1/call` on SQLite. With `synchronous = FULL` every commit is an
//! fsync, and one fsync per call caps acceptance at the disk's fsync rate. Requests that arrive
//! while a commit is in flight queue here; the next transaction carries all of them (a refused
//! call is refused before it writes anything, so it needs no savepoint), and every caller is
//! answered only after the commit that holds its call is durable. A database error fails the
//! whole batch: nothing of it is kept and every caller hears so.

use crate::calls::create_call_in;
use crate::{db_err, Backend};
use domain::call::{AcceptedCall, NewCall};
use domain::store::{CreateCallError, StoreError};
use sqlx::{Acquire, AnyPool};
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<AcceptedCall, CreateCallError>>;

#[derive(Clone)]
pub(crate) struct Handle {
    tx: mpsc::Sender<(NewCall, Reply)>,
}

impl Handle {
    pub(crate) async fn create_call(&self, call: NewCall) -> Result<AcceptedCall, CreateCallError> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Database("the write path has stopped".into());
        self.tx.send((call, reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

pub(crate) fn spawn(pool: AnyPool, max_batch: usize) -> Handle {
    let (tx, rx) = mpsc::channel(max_batch * 4);
    tokio::spawn(run(pool, rx, max_batch));
    Handle { tx }
}

async fn run(pool: AnyPool, mut rx: mpsc::Receiver<(NewCall, Reply)>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        let results = commit_batch(&pool, &batch).await;
        for ((_, reply), result) in batch.drain(..).zip(results) {
            // The caller may have gone (client disconnected); the call is stored all the same.
            let _ = reply.send(result);
        }
    }
}

async fn commit_batch(
    pool: &AnyPool,
    batch: &[(NewCall, Reply)],
) -> Vec<Result<AcceptedCall, CreateCallError>> {
    let fail_all = |e: StoreError| {
        let msg = e.to_string();
        batch
            .iter()
            .map(|_| Err(CreateCallError::Store(StoreError::Database(msg.clone()))))
            .collect()
    };
    let mut conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => return fail_all(db_err(e)),
    };
    let mut tx = match conn.begin().await {
        Ok(t) => t,
        Err(e) => return fail_all(db_err(e)),
    };
    let mut results = Vec::with_capacity(batch.len());
    for (call, _) in batch {
        match create_call_in(&mut tx, Backend::Sqlite, call).await {
            Err(CreateCallError::Store(e)) => return fail_all(e),
            outcome => results.push(outcome),
        }
    }
    match tx.commit().await {
        Ok(()) => results,
        Err(e) => fail_all(db_err(e)),
    }
}
