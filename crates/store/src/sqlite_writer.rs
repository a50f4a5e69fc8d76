//! Group commit for `POST /v1/call` on SQLite. With `synchronous = FULL` every commit is an
//! fsync, and one fsync per call caps acceptance at the disk's fsync rate. Requests that arrive
//! while a commit is in flight queue here; the next transaction carries all of them (a refused
//! call is refused before it writes anything, so it needs no savepoint), and every caller is
//! answered only after the commit that holds its call is durable. A database error fails the
//! whole batch: nothing of it is kept and every caller hears so.
//!
//! The writer is one OS thread with its own connection (rusqlite, on the same libsqlite3 as
//! sqlx) and the statements of `calls` prepared once. A whole batch, checks and inserts, runs
//! from `BEGIN IMMEDIATE` to `COMMIT` on that thread: each call is `calls::create_call_in`, the
//! one sequence of both drivers, run on [`WriterTx`], whose statements finish as they are
//! called, so the sequence completes on its first poll with no executor or task switch. The
//! batch's caches (`BatchState`) sit behind two of those statements. Through sqlx every statement was a round
//! trip to sqlx's connection thread and back (two wake-ups each, five statements a call), and
//! those task switches, not SQLite, were most of the CPU a call cost.
//!
//! SQLite has one writer at a time, and the other writers (dispatch, batches, webhooks) use the
//! sqlx write pool's single connection. The writer holds that connection, unused, for the length
//! of each of its transactions, so the two never write at once: nobody meets `SQLITE_BUSY`, and
//! the checks a batch reads stay true until its commit. Background writers let queued calls go
//! first (`gate`), so a call waits behind at most one of their transactions.

use crate::calls::{
    create_call_in, AgentLimits, CallRow, CallTx, IdempotencyKey, AGENT_SQL, CHAIN_EXISTS_SQL,
    CHAIN_LAST_SQL, IDEMPOTENCY_CLAIM_SQL, IDEMPOTENCY_HOLDER_SQL, IDEMPOTENCY_SEEN_SQL,
    INSERT_CALL_SQL, INSERT_EVENT_SQL, LISTED_SQL, LIVE_COUNT_SQL, RECENT_TO_NUMBER_SQL,
};
use crate::db_err;
use crate::gate::{Foreground, Gate};
use crate::locks::LockKey;
use domain::call::{AcceptedCall, NewCall};
use domain::store::{CreateCallError, StoreError};
use futures::FutureExt;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sqlx::AnyPool;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<AcceptedCall, CreateCallError>>;
/// A call for the writer, with its place in the gate's count of waiting requests.
type Request = (NewCall, Reply, Foreground);
type Outcome = Result<AcceptedCall, CreateCallError>;

#[derive(Clone)]
pub(crate) struct Handle {
    tx: mpsc::Sender<Request>,
    gate: Arc<Gate>,
}

impl Handle {
    pub(crate) async fn create_call(&self, call: NewCall) -> Outcome {
        // Background transactions hold back while this request waits (see `gate`); the writer
        // lets go of it once its transaction holds the connection.
        let waiting = self.gate.foreground();
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Database("the write path has stopped".into());
        self.tx
            .send((call, reply, waiting))
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

fn sqlite_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.into())
}

/// Opens the writer's connection on the database file `path` (already migrated) and starts its
/// thread. The thread ends when the last [`Handle`] is dropped.
pub(crate) fn spawn(
    path: &Path,
    pool: AnyPool,
    max_batch: usize,
    gate: Arc<Gate>,
) -> Result<Handle, StoreError> {
    let conn = open(path).map_err(sqlite_err)?;
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = mpsc::channel(max_batch * 4);
    let writer = Writer {
        conn,
        pool,
        runtime,
        sql: Sql::new(),
    };
    std::thread::Builder::new()
        .name("outdial-call-writer".into())
        .spawn(move || writer.run(rx, max_batch))
        .map_err(|e| StoreError::Database(format!("starting the call writer: {e}").into()))?;
    Ok(Handle { tx, gate })
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // The settings of the sqlx connections (lib.rs): FULL makes every commit an fsync, so a call
    // answered 200 survives power loss.
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(16);
    Ok(conn)
}

/// The statements of `calls` with `$N` spelt `?N`, which SQLite binds by number exactly as
/// sqlx binds `$N`.
struct Sql {
    agent: String,
    listed: String,
    chain_exists: String,
    chain_last: String,
    idempotency_seen: String,
    recent_to_number: String,
    live_count: String,
    idempotency_claim: String,
    idempotency_holder: String,
    insert_call: String,
    insert_event: String,
}

impl Sql {
    fn new() -> Self {
        let numbered = |sql: &str| sql.replace('$', "?");
        Self {
            agent: numbered(AGENT_SQL),
            listed: numbered(LISTED_SQL),
            chain_exists: numbered(CHAIN_EXISTS_SQL),
            chain_last: numbered(CHAIN_LAST_SQL),
            idempotency_seen: numbered(IDEMPOTENCY_SEEN_SQL),
            recent_to_number: numbered(RECENT_TO_NUMBER_SQL),
            live_count: numbered(&LIVE_COUNT_SQL),
            idempotency_claim: numbered(IDEMPOTENCY_CLAIM_SQL),
            idempotency_holder: numbered(IDEMPOTENCY_HOLDER_SQL),
            insert_call: numbered(INSERT_CALL_SQL),
            insert_event: numbered(INSERT_EVENT_SQL),
        }
    }
}

/// What one transaction has learnt and may reuse: nothing but this writer changes the database
/// while it runs, so an agent read stays true, and a tenant's live count moves only by the calls
/// this transaction accepts.
#[derive(Default)]
struct BatchState {
    agents: HashMap<(i64, i64), Option<AgentLimits>>,
    live: HashMap<i64, i64>,
}

struct Writer {
    conn: Connection,
    pool: AnyPool,
    runtime: tokio::runtime::Handle,
    sql: Sql,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>, max_batch: usize) {
        let mut batch = Vec::with_capacity(max_batch);
        while let Some(first) = rx.blocking_recv() {
            let mut waiting = Vec::with_capacity(max_batch);
            let mut next = Some(first);
            while let Some((call, reply, w)) = next {
                batch.push((call, reply));
                waiting.push(w);
                next = (batch.len() < max_batch)
                    .then(|| rx.try_recv().ok())
                    .flatten();
            }
            let results = self.commit_batch(&batch, waiting);
            for ((_, reply), result) in batch.drain(..).zip(results) {
                // The caller may have gone (client disconnected); the call is stored all the same.
                let _ = reply.send(result);
            }
        }
    }

    fn commit_batch(
        &mut self,
        batch: &[(NewCall, Reply)],
        waiting: Vec<Foreground>,
    ) -> Vec<Outcome> {
        let fail_all = |e: StoreError| {
            let msg = e.to_string();
            batch
                .iter()
                .map(|_| {
                    Err(CreateCallError::Store(StoreError::Database(
                        msg.clone().into(),
                    )))
                })
                .collect()
        };
        // The other writers' connection, held so that none of them writes during this
        // transaction. A closed pool (shutdown) refuses, and so does the batch.
        let asked = std::time::Instant::now();
        let token = match self.runtime.block_on(self.pool.acquire()) {
            Ok(c) => c,
            Err(e) => return fail_all(db_err(e)),
        };
        // How long accepted calls waited behind a background transaction.
        metrics::histogram!("outdial_db_call_writer_wait_seconds")
            .record(asked.elapsed().as_secs_f64());
        // No background transaction can overtake these calls now.
        drop(waiting);
        let began = std::time::Instant::now();
        let results = transaction(&mut self.conn, &self.sql, batch);
        metrics::histogram!("outdial_db_call_writer_commit_seconds")
            .record(began.elapsed().as_secs_f64());
        metrics::histogram!("outdial_call_writer_batch_calls").record(batch.len() as f64);
        // Returning a connection to the pool spawns a task, which needs the runtime's context.
        self.runtime.block_on(async move { drop(token) });
        results.unwrap_or_else(fail_all)
    }
}

fn transaction(
    conn: &mut Connection,
    sql: &Sql,
    batch: &[(NewCall, Reply)],
) -> Result<Vec<Outcome>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_err)?;
    let mut state = BatchState::default();
    let mut results = Vec::with_capacity(batch.len());
    for (call, _) in batch {
        match create_call(&tx, sql, &mut state, call) {
            // Dropping `tx` rolls the whole batch back.
            Err(CreateCallError::Store(e)) => return Err(e),
            outcome => results.push(outcome),
        }
    }
    tx.commit().map_err(sqlite_err)?;
    Ok(results)
}

/// `calls::create_call_in` on this connection. Every statement of [`WriterTx`] runs to its end
/// when called, so the sequence's future is ready on its first poll and needs no executor.
fn create_call(
    conn: &Connection,
    sql: &Sql,
    state: &mut BatchState,
    call: &NewCall,
) -> Result<AcceptedCall, CreateCallError> {
    let mut tx = WriterTx { conn, sql, state };
    create_call_in(&mut tx, call)
        .now_or_never()
        .unwrap_or_else(|| {
            Err(CreateCallError::Store(StoreError::Database(
                "a statement of the call writer waited, which it cannot".into(),
            )))
        })
}

/// [`CallTx`] on the writer's transaction, with what its batch has learnt (`BatchState`).
struct WriterTx<'a> {
    conn: &'a Connection,
    sql: &'a Sql,
    state: &'a mut BatchState,
}

impl CallTx for WriterTx<'_> {
    async fn lock(&mut self, _key: LockKey) -> Result<(), StoreError> {
        // The only writer while its transaction runs: nothing to serialise against.
        Ok(())
    }

    async fn agent(&mut self, tenant: i64, agent: i64) -> Result<Option<AgentLimits>, StoreError> {
        if let Some(known) = self.state.agents.get(&(tenant, agent)) {
            return Ok(known.clone());
        }
        let read = self
            .conn
            .prepare_cached(&self.sql.agent)
            .and_then(|mut s| {
                s.query_row(params![tenant, agent], |r| {
                    Ok(AgentLimits {
                        from_phone: r.get("phone_number")?,
                        per_number: r.get("per_number_calls")?,
                        window_s: r.get("per_number_window_seconds")?,
                        max_concurrent: r.get("max_concurrent_calls")?,
                    })
                })
                .optional()
            })
            .map_err(sqlite_err)?;
        self.state.agents.insert((tenant, agent), read.clone());
        Ok(read)
    }

    async fn listed(&mut self, tenant: i64, number: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(&self.sql.listed)
            .and_then(|mut s| s.exists(params![tenant, number]))
            .map_err(sqlite_err)
    }

    async fn chain_exists(&mut self, tenant: i64, id: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(&self.sql.chain_exists)
            .and_then(|mut s| s.exists(params![tenant, id]))
            .map_err(sqlite_err)
    }

    async fn chain_last(&mut self, tenant: i64, chain: &str) -> Result<Option<i64>, StoreError> {
        self.conn
            .prepare_cached(&self.sql.chain_last)
            .and_then(|mut s| s.query_row(params![tenant, chain], |r| r.get(0)))
            .map_err(sqlite_err)
    }

    async fn idempotency_seen(
        &mut self,
        key: IdempotencyKey<'_>,
        since: i64,
    ) -> Result<Option<String>, StoreError> {
        self.conn
            .prepare_cached(&self.sql.idempotency_seen)
            .and_then(|mut s| {
                s.query_row(params![key.tenant, key.agent, key.key, since], |r| r.get(0))
                    .optional()
            })
            .map_err(sqlite_err)
    }

    async fn recent_to_number(
        &mut self,
        tenant: i64,
        number: &str,
        since: i64,
        limit: i64,
    ) -> Result<Vec<i64>, StoreError> {
        self.conn
            .prepare_cached(&self.sql.recent_to_number)
            .and_then(|mut s| {
                s.query_map(params![tenant, number, since, limit], |r| {
                    r.get::<_, i64>(0)
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sqlite_err)
    }

    async fn live_count(&mut self, tenant: i64) -> Result<i64, StoreError> {
        if let Some(n) = self.state.live.get(&tenant) {
            return Ok(*n);
        }
        let n: i64 = self
            .conn
            .prepare_cached(&self.sql.live_count)
            .and_then(|mut s| s.query_row(params![tenant], |r| r.get(0)))
            .map_err(sqlite_err)?;
        self.state.live.insert(tenant, n);
        Ok(n)
    }

    async fn idempotency_claim(
        &mut self,
        key: IdempotencyKey<'_>,
        row: &CallRow<'_>,
        expired_before: i64,
    ) -> Result<bool, StoreError> {
        let claimed: Option<String> = self
            .conn
            .prepare_cached(&self.sql.idempotency_claim)
            .and_then(|mut s| {
                s.query_row(
                    params![
                        key.tenant,
                        key.agent,
                        key.key,
                        row.trace,
                        row.id,
                        row.created_at,
                        expired_before
                    ],
                    |r| r.get(0),
                )
                .optional()
            })
            .map_err(sqlite_err)?;
        Ok(claimed.is_some())
    }

    async fn idempotency_holder(&mut self, key: IdempotencyKey<'_>) -> Result<String, StoreError> {
        self.conn
            .prepare_cached(&self.sql.idempotency_holder)
            .and_then(|mut s| s.query_row(params![key.tenant, key.agent, key.key], |r| r.get(0)))
            .map_err(sqlite_err)
    }

    async fn insert_call(&mut self, row: &CallRow<'_>) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(&self.sql.insert_call)
            .and_then(|mut s| {
                s.execute(params![
                    row.id,
                    row.chain,
                    row.attempt,
                    row.tenant,
                    row.agent,
                    row.status.as_str(),
                    i64::from(row.immediate),
                    row.customer_phone,
                    row.from_phone,
                    row.parameters,
                    row.metadata,
                    row.retry_context,
                    row.scheduled_for,
                    row.due_at,
                    row.trace,
                    row.results,
                    row.created_at
                ])
            })
            .map_err(sqlite_err)?;
        if row.immediate {
            // The new call is `queued`, so live: later calls of this batch must count it.
            if let Some(n) = self.state.live.get_mut(&row.tenant) {
                *n += 1;
            }
        }
        Ok(())
    }

    async fn insert_first_event(&mut self, row: &CallRow<'_>) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(&self.sql.insert_event)
            .and_then(|mut s| {
                s.execute(params![
                    row.id,
                    row.tenant,
                    row.created_at,
                    row.status.as_str(),
                    None::<String>
                ])
            })
            .map_err(sqlite_err)?;
        Ok(())
    }
}
