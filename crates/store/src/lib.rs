//! The `Store` port on SQL: one implementation over sqlx's `Any` driver serving both SQLite (the
//! embedded default) and PostgreSQL (scale-out). The queries are written once in the subset both
//! speak (`$N` parameters, `RETURNING`, `ON CONFLICT`, integer milliseconds, JSON as text); the few
//! places where the engines must differ (locking, the write path) branch on [`Backend`].

mod batches;
mod calls;
mod checkpoint;
mod console;
mod dispatch;
mod do_not_call;
mod engines;
mod exec;
mod gate;
mod locks;
mod manage;
mod outbox;
mod pages;
mod rows;
pub mod secrets;
mod settle;
mod sqlite_writer;
mod transcription;
mod webhooks;

pub use engines::LiveAgent;
pub use pages::PageMarks;

use domain::agent::AgentConfig;
use domain::call::{AcceptedCall, Conversation, NewCall};
use domain::store::{Agent, CreateCallError, Listed, ManageError, Page, Store, StoreError};
use domain::tenant::{
    ApiKeyCredential, ApiKeyInfo, NewTrunk, PhoneNumber, Tenant, TenantLimits, Trunk,
};
use domain::{AgentId, ApiKeyId, ConversationId, Millis, TenantId, TrunkId, E164};
use futures::future::BoxFuture;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, Executor};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Tuning that has a sane default and must stay configurable.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Readers on SQLite; the whole pool on PostgreSQL.
    pub max_connections: u32,
    /// How many `POST /v1/call` transactions one SQLite commit may carry (group commit).
    pub max_write_batch: usize,
    /// Seals trunk passwords, webhook secrets and llm api keys at rest (no key: stored as given).
    pub secrets: std::sync::Arc<secrets::SecretBox>,
    /// PostgreSQL: the connections of the background pool (dispatch, webhook outbox, batch
    /// uploads), apart from `max_connections`, so background work can never take the
    /// connections an API request needs.
    pub background_connections: u32,
    /// SQLite: how long a background transaction lets waiting `POST /v1/call` requests go first
    /// before it takes its turn anyway (so dispatch is never starved).
    pub background_wait: Duration,
    /// SQLite file: the most of the writer's time, in percent, that background work on its
    /// thread (dial starts, progress marks, settlements) takes while `POST /v1/call` requests
    /// wait; with none waiting it takes what it needs.
    pub background_share: u8,
    /// Recipients written per transaction by a batch upload.
    pub upload_chunk_rows: usize,
    /// How long a loading batch whose upload stopped writing is kept before a sweep removes it
    /// as abandoned (every chunk renews it).
    pub upload_lease: Duration,
    /// SQLite file: `POST /v1/call` goes through the group-commit writer (many calls per
    /// fsync). Off, each call is its own transaction on the sqlx path, as for an in-memory
    /// database; the conformance suite runs both.
    pub group_commit: bool,
    /// Deep pages of `GET /v1/conversations` (see `pages`).
    pub page_marks: PageMarks,
    /// SQLite file: how often a thread of its own copies the write-ahead log back into the
    /// database ahead of the writers' own checkpoints (see `checkpoint`). Zero: only theirs.
    pub checkpoint_every: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            max_write_batch: 128,
            secrets: Default::default(),
            background_connections: 4,
            background_wait: Duration::from_millis(10),
            background_share: 25,
            upload_chunk_rows: 250,
            upload_lease: Duration::from_secs(120),
            group_commit: true,
            page_marks: PageMarks::default(),
            checkpoint_every: Duration::from_millis(20),
        }
    }
}

pub struct SqlStore {
    backend: Backend,
    /// Reads. On SQLite a separate pool, so reads never wait for the single writer.
    read: AnyPool,
    /// Writes. On SQLite exactly one connection: SQLite has one writer anyway, and owning it
    /// means no SQLITE_BUSY and a natural point for group commit.
    write: AnyPool,
    /// Background writes (dispatch, outbox, batch uploads): on PostgreSQL a pool of its own, on
    /// SQLite the write pool behind `gate`.
    background: AnyPool,
    gate: Option<std::sync::Arc<gate::Gate>>,
    call_writer: Option<sqlite_writer::Handle>,
    /// SQLite file: the checkpoints' thread, stopped when the store drops.
    _checkpointer: Option<checkpoint::Checkpointer>,
    secrets: std::sync::Arc<secrets::SecretBox>,
    upload_chunk: usize,
    upload_lease: Duration,
    page_marks: PageMarks,
}

fn sqlite_pragmas(
    conn: &mut sqlx::AnyConnection,
    _meta: sqlx::pool::PoolConnectionMetadata,
) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        // FULL: a call acknowledged with 200 survives power loss, not just a process crash.
        conn.execute(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
        )
        .await
        .map(|_| ())
    })
}

/// The read pool's connections refuse writes: a write sent there by mistake fails at once
/// instead of racing the single writer for SQLite's lock.
fn sqlite_read_pragmas(
    conn: &mut sqlx::AnyConnection,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        sqlite_pragmas(conn, meta).await?;
        conn.execute("PRAGMA query_only = ON;").await.map(|_| ())
    })
}

/// `$from, $from+1, ...`: `n` numbered placeholders, for an `IN (...)` list or one row of a
/// multi-row `VALUES`.
pub(crate) fn placeholders(from: usize, n: usize) -> String {
    let mut s = String::with_capacity(n * 6);
    for i in from..from + n {
        if i > from {
            s.push_str(", ");
        }
        s.push('$');
        s.push_str(&i.to_string());
    }
    s
}

/// A table of rows bound as one parameter, `$n`: a JSON array of arrays, whose columns are
/// `column1..` typed as `types` (PostgreSQL type names). A multi-row `VALUES` binds a parameter
/// per cell, and SQLite finds each bound parameter's name by walking a list (sqlx asks it for
/// every one), so binding N of them costs N²; its text also changes with the row count, so it is
/// parsed anew every time. One JSON parameter keeps the text fixed, prepared once.
pub(crate) fn json_rows(backend: Backend, n: usize, types: &[&str]) -> String {
    let columns = types
        .iter()
        .enumerate()
        .map(|(i, ty)| match backend {
            Backend::Sqlite => format!("json_extract(value, '$[{i}]') AS column{}", i + 1),
            Backend::Postgres => format!("(value->>{i})::{ty} AS column{}", i + 1),
        })
        .collect::<Vec<_>>()
        .join(", ");
    match backend {
        Backend::Sqlite => format!("(SELECT {columns} FROM json_each(${n}))"),
        Backend::Postgres => format!("(SELECT {columns} FROM json_array_elements(${n}::json))"),
    }
}

/// The ids of a JSON array of integers bound as one parameter, `$n`, for `id IN (...)`; see
/// [`json_rows`] for why.
pub(crate) fn json_ids(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Sqlite => format!("SELECT value FROM json_each(${n})"),
        Backend::Postgres => {
            format!("SELECT value::bigint FROM json_array_elements_text(${n}::json)")
        }
    }
}

/// The strings of a JSON array bound as one parameter, `$n`, for `id IN (...)`.
pub(crate) fn json_texts(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Sqlite => format!("SELECT value FROM json_each(${n})"),
        Backend::Postgres => format!("SELECT value FROM json_array_elements_text(${n}::json)"),
    }
}

/// Rows that could not be turned into the JSON a statement binds.
pub(crate) fn encode_err(e: serde_json::Error) -> StoreError {
    StoreError::Database(format!("encoding rows: {e}").into())
}

pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
    StoreError::Database(e.into())
}

/// A `UNIQUE` (or primary key) constraint refused the row, on either backend.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl SqlStore {
    /// Connects, applies migrations and starts the write path. `url` is `sqlite://<path>` or
    /// `postgres://...`.
    pub async fn connect(url: &str, opts: StoreOptions) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Database(
                format!(
                    "unsupported database url scheme (want sqlite:// or postgres://): {}",
                    url.split(':').next().unwrap_or("")
                )
                .into(),
            ));
        };
        let store = match backend {
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(opts.max_connections.max(2))
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await
                    .map_err(db_err)?;
                sqlx::migrate!("./migrations/postgres")
                    .run(&pool)
                    .await
                    .map_err(|e| StoreError::Database(e.into()))?;
                let background = AnyPoolOptions::new()
                    .max_connections(opts.background_connections.max(1))
                    .acquire_timeout(Duration::from_secs(30))
                    .connect(url)
                    .await
                    .map_err(db_err)?;
                SqlStore {
                    backend,
                    read: pool.clone(),
                    write: pool,
                    background,
                    gate: None,
                    call_writer: None,
                    _checkpointer: None,
                    secrets: opts.secrets.clone(),
                    upload_chunk: opts.upload_chunk_rows,
                    upload_lease: opts.upload_lease,
                    page_marks: opts.page_marks,
                }
            }
            Backend::Sqlite => {
                let url = if url.contains('?') {
                    url.to_string()
                } else {
                    format!("{url}?mode=rwc")
                };
                let connect_opts = AnyConnectOptions::from_str(&url).map_err(db_err)?;
                let write = AnyPoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(sqlite_pragmas)
                    .connect_with(connect_opts.clone())
                    .await
                    .map_err(db_err)?;
                sqlx::migrate!("./migrations/sqlite")
                    .run(&write)
                    .await
                    .map_err(|e| StoreError::Database(e.into()))?;
                let read = AnyPoolOptions::new()
                    .max_connections(opts.max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(sqlite_read_pragmas)
                    .connect_with(connect_opts)
                    .await
                    .map_err(db_err)?;
                // The group-commit writer opens the same file itself (it has its own connection).
                let file = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
                    .map_err(db_err)?
                    .get_filename()
                    .to_path_buf();
                let checkpointer = if file.is_file() && !opts.checkpoint_every.is_zero() {
                    Some(checkpoint::spawn(&file, opts.checkpoint_every)?)
                } else {
                    None
                };
                let gate = std::sync::Arc::new(gate::Gate::new(opts.background_wait));
                let call_writer = if opts.group_commit && file.is_file() {
                    Some(sqlite_writer::spawn(
                        &file,
                        write.clone(),
                        opts.max_write_batch.max(1),
                        gate.clone(),
                        gate::Share::new(opts.background_share),
                    )?)
                } else {
                    // An in-memory database cannot be opened twice: calls take the sqlx path.
                    None
                };
                SqlStore {
                    backend,
                    read,
                    background: write.clone(),
                    write,
                    gate: Some(gate),
                    call_writer,
                    _checkpointer: checkpointer,
                    secrets: opts.secrets.clone(),
                    upload_chunk: opts.upload_chunk_rows,
                    upload_lease: opts.upload_lease,
                    page_marks: opts.page_marks,
                }
            }
        };
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pools after in-flight writes finish (graceful shutdown).
    pub async fn close(&self) {
        self.background.close().await;
        self.write.close().await;
        self.read.close().await;
    }

    /// A connection for background work, after its turn at the gate (see [`gate`]).
    pub(crate) async fn background_conn(
        &self,
        work: gate::Work,
    ) -> Result<Background<PoolConnection<Any>>, StoreError> {
        let turn = self.background_turn(work).await;
        let conn = self.background.acquire().await.map_err(db_err)?;
        Ok(Background { conn, _turn: turn })
    }

    /// A transaction for background work, after its turn at the gate (see [`gate`]). Keep it
    /// small: a waiting API request may be behind it.
    pub(crate) async fn background_tx(
        &self,
        work: gate::Work,
    ) -> Result<Background<sqlx::Transaction<'static, Any>>, StoreError> {
        let turn = self.background_turn(work).await;
        let conn = self.background.begin().await.map_err(db_err)?;
        Ok(Background { conn, _turn: turn })
    }

    /// Background work of one transaction: on SQLite's writer thread, which lets waiting calls go
    /// first (statement by statement on its rusqlite connection, see [`exec`]), else in a sqlx
    /// transaction on the background pool after its turn at the gate. Either way nothing of it
    /// is kept on an error.
    pub(crate) async fn background_job<J: exec::Job>(
        &self,
        work: gate::Work,
        job: J,
    ) -> Result<J::Out, StoreError> {
        if let Some(writer) = &self.call_writer {
            // The writer's thread keeps the gate's rule itself (`sqlite_writer`).
            return writer.run(work, job).await;
        }
        let mut tx = self.background_tx(work).await?;
        let out = job.run(&mut tx).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn background_turn(&self, work: gate::Work) -> Option<gate::BackgroundTurn> {
        match &self.gate {
            Some(g) => Some(g.background(work).await),
            None => None,
        }
    }
}

/// A background connection or transaction holding its turn at the gate until dropped.
pub(crate) struct Background<C> {
    conn: C,
    _turn: Option<gate::BackgroundTurn>,
}

impl Background<sqlx::Transaction<'static, Any>> {
    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        self.conn.commit().await.map_err(db_err)
    }
}

impl<C: std::ops::Deref<Target = sqlx::AnyConnection>> std::ops::Deref for Background<C> {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl<C: std::ops::DerefMut<Target = sqlx::AnyConnection>> std::ops::DerefMut for Background<C> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

#[async_trait::async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.read)
            .await
            .map(|_| ())
            .map_err(db_err)
    }

    async fn create_tenant(&self, name: &str, now: Millis) -> Result<Tenant, StoreError> {
        self.create_tenant_row(name, now).await
    }

    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        self.get_tenant_row(id).await
    }

    async fn update_tenant_limits(
        &self,
        id: TenantId,
        limits: &TenantLimits,
    ) -> Result<bool, StoreError> {
        self.set_tenant_limits(id, limits).await
    }

    async fn create_api_key(
        &self,
        tenant: TenantId,
        name: &str,
        lookup: &str,
        secret_hash: &str,
        now: Millis,
    ) -> Result<ApiKeyInfo, StoreError> {
        self.insert_api_key(tenant, name, lookup, secret_hash, now)
            .await
    }

    async fn list_api_keys(&self, tenant: TenantId) -> Result<Vec<ApiKeyInfo>, StoreError> {
        self.api_keys(tenant).await
    }

    async fn revoke_api_key(
        &self,
        tenant: TenantId,
        id: ApiKeyId,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.revoke_key(tenant, id, now).await
    }

    async fn find_api_key(&self, lookup: &str) -> Result<Option<ApiKeyCredential>, StoreError> {
        self.key_credential(lookup).await
    }

    async fn create_trunk(
        &self,
        tenant: TenantId,
        trunk: &NewTrunk,
        now: Millis,
    ) -> Result<Trunk, ManageError> {
        self.insert_trunk(tenant, trunk, now).await
    }

    async fn list_trunks(&self, tenant: TenantId) -> Result<Vec<Trunk>, StoreError> {
        self.trunks(tenant).await
    }

    async fn trunks_to_keep_up(&self) -> Result<Vec<Trunk>, StoreError> {
        self.all_trunks().await
    }

    async fn create_phone_number(
        &self,
        tenant: TenantId,
        number: &E164,
        trunk: TrunkId,
        now: Millis,
    ) -> Result<PhoneNumber, ManageError> {
        self.insert_phone_number(tenant, number, trunk, now).await
    }

    async fn list_phone_numbers(&self, tenant: TenantId) -> Result<Vec<PhoneNumber>, StoreError> {
        self.phone_numbers(tenant).await
    }

    async fn create_agent(
        &self,
        tenant: TenantId,
        config: &AgentConfig,
        now: Millis,
    ) -> Result<Agent, ManageError> {
        self.insert_agent(tenant, config, now).await
    }

    async fn get_agent(&self, tenant: TenantId, id: AgentId) -> Result<Option<Agent>, StoreError> {
        self.agent_row(tenant, id).await
    }

    async fn list_agents(&self, tenant: TenantId, page: Page) -> Result<Listed<Agent>, StoreError> {
        self.agents(tenant, page).await
    }

    async fn update_agent(
        &self,
        tenant: TenantId,
        id: AgentId,
        config: &AgentConfig,
        now: Millis,
    ) -> Result<Agent, ManageError> {
        self.replace_agent(tenant, id, config, now).await
    }

    async fn delete_agent(
        &self,
        tenant: TenantId,
        id: AgentId,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.retire_agent(tenant, id, now).await
    }

    async fn create_call(&self, call: NewCall) -> Result<AcceptedCall, CreateCallError> {
        if let Some(writer) = &self.call_writer {
            return writer.create_call(call).await;
        }
        let mut tx = self.write.begin().await.map_err(db_err)?;
        match calls::create_call_in(&mut calls::SqlxCallTx::new(&mut tx, self.backend), &call).await
        {
            Ok(accepted) => {
                tx.commit().await.map_err(db_err)?;
                Ok(accepted)
            }
            Err(refused) => {
                tx.rollback().await.map_err(db_err)?;
                Err(refused)
            }
        }
    }

    async fn get_conversation(
        &self,
        tenant: TenantId,
        id: ConversationId,
    ) -> Result<Option<Conversation>, StoreError> {
        sqlx::query(&format!(
            "SELECT {} FROM calls WHERE tenant_id = $1 AND id = $2 AND {}",
            rows::CONVERSATION_COLUMNS,
            batches::CALL_SHOWN
        ))
        .bind(tenant.0)
        .bind(id.to_string())
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?
        .map(|r| rows::conversation(&r))
        .transpose()
    }

    async fn list_conversations(
        &self,
        tenant: TenantId,
        agent: Option<AgentId>,
        page: Page,
    ) -> Result<Listed<Conversation>, StoreError> {
        self.list_conversations_page(tenant, agent, page).await
    }

    async fn count_calls(&self, tenant: TenantId) -> Result<u64, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM calls WHERE tenant_id = $1 AND {}",
            batches::CALL_SHOWN
        ))
        .bind(tenant.0)
        .fetch_one(&self.read)
        .await
        .map_err(db_err)?;
        let n: i64 = rows::get(&row, "n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite uses a partial index only for a query whose condition is the index's own, word
    /// for word: the lists the lifecycle table gives the queries must be the migrations'.
    #[test]
    fn the_partial_indexes_name_the_lifecycle_lists_as_the_queries_do() {
        use domain::lifecycle::{sql_list, DIALLED, WAITING};
        for init in [
            include_str!("../migrations/sqlite/0001_init.sql"),
            include_str!("../migrations/postgres/0001_init.sql"),
        ] {
            let due = format!(
                "calls_due ON calls (due_at) WHERE status IN ({});",
                sql_list(WAITING)
            );
            let dialling = format!(
                "calls_dialing ON calls (lease_until) WHERE status IN ({});",
                sql_list(DIALLED)
            );
            assert!(init.contains(&due), "{due}");
            assert!(init.contains(&dialling), "{dialling}");
        }
        let (waiting, dialled) = (sql_list(WAITING), sql_list(DIALLED));
        // Since 0014 the due index leaves out calls in a trunk's line, and each line has its
        // own; since 0018 the calls in no line are indexed apart by whether they are a batch's; 0019
        // indexes the dialled calls by tenant for the tenant's cap.
        let later = [
            (
                [
                    include_str!("../migrations/sqlite/0014_trunk_options.sql"),
                    include_str!("../migrations/postgres/0014_trunk_options.sql"),
                ],
                vec![
                    format!("calls_due ON calls (due_at) WHERE status IN ({waiting}) AND trunk_lane IS NULL;"),
                    format!("calls_trunk_lane ON calls (trunk_lane, due_at) WHERE status IN ({waiting}) AND trunk_lane IS NOT NULL;"),
                ],
            ),
            (
                [
                    include_str!("../migrations/sqlite/0018_due_by_batch.sql"),
                    include_str!("../migrations/postgres/0018_due_by_batch.sql"),
                ],
                vec![
                    format!("calls_due_direct ON calls (due_at) WHERE status IN ({waiting}) AND trunk_lane IS NULL AND batch_id IS NULL;"),
                    format!("calls_due_batch ON calls (batch_id, due_at) WHERE status IN ({waiting}) AND trunk_lane IS NULL AND batch_id IS NOT NULL;"),
                ],
            ),
            (
                [
                    include_str!("../migrations/sqlite/0019_dialled_by_tenant.sql"),
                    include_str!("../migrations/postgres/0019_dialled_by_tenant.sql"),
                ],
                vec![format!(
                    "calls_dialled_tenant ON calls (tenant_id) WHERE status IN ({dialled});"
                )],
            ),
        ];
        for (migrations, indexes) in &later {
            for migration in migrations {
                for index in indexes {
                    assert!(migration.contains(index.as_str()), "{index}");
                }
            }
        }
    }

    /// The conformance suite's SQLite run with group commit off is the only run of the sqlx
    /// write path on SQLite: the option must really take calls off the writer for a file.
    #[tokio::test]
    async fn group_commit_off_sends_a_files_calls_through_sqlx() {
        for group_commit in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("t.db").display());
            let opts = StoreOptions {
                group_commit,
                ..Default::default()
            };
            let store = SqlStore::connect(&url, opts).await.unwrap();
            assert_eq!(store.call_writer.is_some(), group_commit);
            store.close().await;
        }
    }

    #[tokio::test]
    async fn the_sqlite_read_pool_refuses_writes_and_the_writer_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqlStore::connect(&url, StoreOptions::default())
            .await
            .unwrap();
        let insert = "INSERT INTO tenants (name, created_at) VALUES ('t', 0)";
        let refused = sqlx::query(insert).execute(&store.read).await.unwrap_err();
        assert!(refused.to_string().contains("readonly"), "{refused}");
        sqlx::query(insert).execute(&store.write).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenants")
            .fetch_one(&store.read)
            .await
            .unwrap();
        assert_eq!(n, 1);
        store.close().await;
    }
}
