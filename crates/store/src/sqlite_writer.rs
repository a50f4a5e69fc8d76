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
//! The same thread runs the dispatcher's and uploads' background work ([`Job`]s: claims, dial
//! starts, marks, settlements, upload chunks), each in a transaction of its own between batches
//! of calls, with at most its share of the thread's time while calls wait ([`Share`]).
//!
//! SQLite has one writer at a time, and the other writers (the webhook outbox, transcription
//! jobs, deep pages' marks, the API's rarer writes) use the sqlx write pool's single connection.
//! This thread holds that connection, unused, while it writes (across consecutive batches and
//! jobs, for at most the gate's `max_wait`), so the two never write at once: nobody meets
//! `SQLITE_BUSY`, and the checks a batch reads stay true until its commit. Those writers let
//! queued calls go first (`gate`), so a call waits behind at most one of their transactions.

use crate::calls::{
    create_call_in, AgentLimits, CallRow, CallTx, IdempotencyKey, AGENT_SQL, CHAIN_EXISTS_SQL,
    CHAIN_LAST_SQL, IDEMPOTENCY_CLAIM_SQL, IDEMPOTENCY_HOLDER_SQL, IDEMPOTENCY_SEEN_SQL,
    INSERT_CALL_SQL, INSERT_EVENT_SQL, LISTED_SQL, LIVE_COUNT_SQL, RECENT_TO_NUMBER_SQL,
};
use crate::db_err;
use crate::exec::{sqlite_err, Job, Lite};
use crate::gate::{Foreground, Gate, Share, Work};
use crate::locks::LockKey;
use domain::call::{AcceptedCall, NewCall};
use domain::store::{CreateCallError, StoreError};
use futures::FutureExt;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<AcceptedCall, CreateCallError>>;
type Outcome = Result<AcceptedCall, CreateCallError>;
/// Background work for the writer's thread: runs a [`Job`] in its own transaction there and
/// answers its caller.
type JobFn = Box<dyn FnOnce(&mut Connection) + Send>;

// Calls are the many and jobs the few: boxing each call to shrink the enum would cost an
// allocation per call.
#[allow(clippy::large_enum_variant)]
enum Request {
    /// A call, with its place in the gate's count of waiting requests.
    Call(NewCall, Reply, Foreground),
    /// A job, with when it was sent (its wait in the queue is a metric).
    Job(JobFn, Work, Instant),
}

/// A job waiting for its turn on the writer's thread.
struct Queued {
    run: JobFn,
    work: Work,
    since: Instant,
}

/// What the writer has taken from its channel and not yet done: the next batch of calls (with
/// their places in the gate's count) and the jobs, oldest first.
#[derive(Default)]
struct Queue {
    batch: Vec<(NewCall, Reply)>,
    waiting: Vec<Foreground>,
    jobs: VecDeque<Queued>,
}

impl Queue {
    fn take(&mut self, request: Request) {
        match request {
            Request::Call(call, reply, waiting) => {
                self.batch.push((call, reply));
                self.waiting.push(waiting);
            }
            Request::Job(run, work, since) => self.jobs.push_back(Queued { run, work, since }),
        }
    }
}

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
        self.tx
            .send(Request::Call(call, reply, waiting))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Runs `job` on the writer's thread in a transaction of its own, between batches of calls,
    /// when its share lets it ([`Share`]). A job whose caller has gone before its turn came is
    /// not run, so a dropped caller leaves nothing written (as a dropped sqlx transaction).
    pub(crate) async fn run<J: Job>(&self, work: Work, job: J) -> Result<J::Out, StoreError> {
        let (reply, answer) = oneshot::channel();
        let run: JobFn = Box::new(move |conn: &mut Connection| {
            if !reply.is_closed() {
                let _ = reply.send(run_job(conn, job));
            }
        });
        self.tx
            .send(Request::Job(run, work, Instant::now()))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Database("the write path has stopped".into())
}

fn run_job<J: Job>(conn: &mut Connection, job: J) -> Result<J::Out, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_err)?;
    // Dropping `tx` on an error rolls the job back.
    let out = job
        .run(&mut Lite::new(&tx))
        .now_or_never()
        .unwrap_or_else(|| Err(waited()))?;
    tx.commit().map_err(sqlite_err)?;
    Ok(out)
}

fn waited() -> StoreError {
    StoreError::Database("a statement of the call writer waited, which it cannot".into())
}

/// Opens the writer's connection on the database file `path` (already migrated) and starts its
/// thread. The thread ends when the last [`Handle`] is dropped.
pub(crate) fn spawn(
    path: &Path,
    pool: AnyPool,
    max_batch: usize,
    gate: Arc<Gate>,
    share: Share,
) -> Result<Handle, StoreError> {
    let conn = open(path).map_err(sqlite_err)?;
    let runtime = tokio::runtime::Handle::current();
    let max_hold = gate.policy().max_wait;
    let (tx, rx) = mpsc::channel(max_batch * 4);
    let writer = Writer {
        conn,
        pool,
        runtime,
        sql: Sql::new(),
        token: None,
        max_hold,
    };
    std::thread::Builder::new()
        .name("outdial-call-writer".into())
        .spawn(move || writer.run(rx, max_batch, share))
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
    // The calls' statements and the background jobs' (whose texts vary with their caps).
    conn.set_prepared_statement_cache_capacity(128);
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
    /// The other writers' connection, held so that none of them writes while this thread does,
    /// and since when. Kept from one batch or job to the next while there is more to do, for at
    /// most the gate's `max_wait`: taking and returning it goes through the runtime, and cost
    /// the thread about 0.6 ms a time under load, a fifth of its time when it was taken for each.
    token: Option<(PoolConnection<Any>, Instant)>,
    max_hold: Duration,
}

impl Writer {
    /// Calls go first: a queued job runs when no call is waiting, or while background work has
    /// had less than its share of this thread's time ([`Share`]), so a node under constant API
    /// load still dials, at a bounded cost to the API. The connection the other writers share is
    /// held across batches and jobs for at most the gate's `max_wait`.
    fn run(mut self, mut rx: mpsc::Receiver<Request>, max_batch: usize, mut share: Share) {
        let mut queue = Queue::default();
        loop {
            if queue.batch.is_empty() && queue.jobs.is_empty() {
                if rx.is_empty() {
                    self.let_go();
                }
                match rx.blocking_recv() {
                    Some(request) => queue.take(request),
                    None => {
                        self.let_go();
                        return;
                    }
                }
            }
            while queue.batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(request) => queue.take(request),
                    Err(_) => break,
                }
            }
            if self
                .token
                .as_ref()
                .is_some_and(|(_, since)| since.elapsed() >= self.max_hold)
            {
                // Whoever waits for the connection (a batch chunk, the API's other writes)
                // gets it now.
                self.let_go();
            }
            if !queue.jobs.is_empty() && share.job_goes(queue.batch.len()) {
                if let Some(job) = queue.jobs.pop_front() {
                    let began = Instant::now();
                    self.run_job(job);
                    share.job_ran(began.elapsed());
                }
                continue;
            }
            let began = Instant::now();
            let results = self.commit_batch(&queue.batch, std::mem::take(&mut queue.waiting));
            share.calls_ran(began.elapsed(), !queue.jobs.is_empty());
            for ((_, reply), result) in queue.batch.drain(..).zip(results) {
                // The caller may have gone (client disconnected); the call is stored all the same.
                let _ = reply.send(result);
            }
        }
    }

    /// A background job, holding the other writers' connection as a batch does. Its wait and
    /// its time here are the gate's metrics, as for background transactions on sqlx.
    fn run_job(&mut self, job: Queued) {
        let work = job.work.as_str();
        metrics::histogram!("outdial_db_background_wait_seconds", "work" => work)
            .record(job.since.elapsed().as_secs_f64());
        let began = Instant::now();
        if self.hold().is_err() {
            // Closed at shutdown: the job is dropped, so its caller hears the writer stopped.
            return;
        }
        (job.run)(&mut self.conn);
        metrics::histogram!("outdial_db_background_hold_seconds", "work" => work)
            .record(began.elapsed().as_secs_f64());
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
        // A closed pool (shutdown) refuses, and so does the batch.
        let asked = Instant::now();
        if let Err(e) = self.hold() {
            return fail_all(e);
        }
        // How long accepted calls waited behind a background transaction on sqlx.
        metrics::histogram!("outdial_db_call_writer_wait_seconds")
            .record(asked.elapsed().as_secs_f64());
        // No background transaction can overtake these calls now.
        drop(waiting);
        let began = Instant::now();
        let results = transaction(&mut self.conn, &self.sql, batch);
        metrics::histogram!("outdial_db_call_writer_commit_seconds")
            .record(began.elapsed().as_secs_f64());
        metrics::histogram!("outdial_call_writer_batch_calls").record(batch.len() as f64);
        results.unwrap_or_else(fail_all)
    }

    /// Takes the other writers' connection unless this thread holds it already.
    fn hold(&mut self) -> Result<(), StoreError> {
        if self.token.is_none() {
            let conn = self.runtime.block_on(self.pool.acquire()).map_err(db_err)?;
            self.token = Some((conn, Instant::now()));
        }
        Ok(())
    }

    fn let_go(&mut self) {
        if let Some((conn, _)) = self.token.take() {
            // Returning a connection to the pool spawns a task, which needs the runtime's
            // context.
            self.runtime.block_on(async move { drop(conn) });
        }
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
        .unwrap_or_else(|| Err(CreateCallError::Store(waited())))
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
