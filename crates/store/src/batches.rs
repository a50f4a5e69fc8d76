//! Batch calls on SQL: the bulk insert of a checked upload, the reads, pause/resume/cancel, and
//! the counter hooks the dispatch queries call in their own transactions.
//!
//! Counters are per recipient by its latest attempt, so every state change of a batch call moves
//! exactly one recipient from one counter to another and the counters always add up to
//! `total_recipients`; reading them is one primary-key lookup.

use crate::exec::{query, Exec, Job};
use crate::gate::Work;
use crate::rows::{self, corrupt, get, CONVERSATION_COLUMNS};
use crate::settle::SettledRow;
use crate::{db_err, encode_err, json_rows, placeholders, Backend, SqlStore};
use domain::agent::AgentConfig;
use domain::batch::{
    Batch, BatchAction, BatchCounts, BatchError, BatchStatus, BatchStore, NewBatch,
};
use domain::lifecycle::settle::Event;
use domain::lifecycle::Transition;
use domain::store::{Listed, Page, StoreError};
use domain::{AgentId, Millis, TenantId};
use sqlx::AnyConnection;

const BATCH_COLUMNS: &str = "id, tenant_id, agent_id, name, status, total_recipients, \
    pending_count, in_progress_count, pending_retry_count, completed_count, busy_count, \
    no_answer_count, failed_count, socket_failure_count, unreachable_count, canceled_count, \
    completed_duration_seconds, scheduled_for, started_at, created_at, updated_at";

/// A batch the API may show: not one still being uploaded.
const SHOWN: &str = "status <> 'loading'";

/// Calls the API may show: not those of a batch still being uploaded. The subquery is
/// uncorrelated and small (uploads in progress), evaluated once per query.
pub(crate) const CALL_SHOWN: &str =
    "(batch_id IS NULL OR batch_id NOT IN (SELECT id FROM batches WHERE status = 'loading'))";

/// Calls settled per statement by a batch cancel (one bind each).
const CANCEL_CHUNK: usize = 500;

fn batch(row: &sqlx::any::AnyRow) -> Result<Batch, StoreError> {
    let status: String = get(row, "status")?;
    Ok(Batch {
        id: get(row, "id")?,
        tenant: TenantId(get(row, "tenant_id")?),
        agent: AgentId(get(row, "agent_id")?),
        name: get(row, "name")?,
        status: BatchStatus::parse(&status).ok_or_else(|| corrupt("batches.status"))?,
        total_recipients: get(row, "total_recipients")?,
        counts: BatchCounts {
            pending: get(row, "pending_count")?,
            in_progress: get(row, "in_progress_count")?,
            pending_retry: get(row, "pending_retry_count")?,
            completed: get(row, "completed_count")?,
            busy: get(row, "busy_count")?,
            no_answer: get(row, "no_answer_count")?,
            failed: get(row, "failed_count")?,
            socket_failure: get(row, "socket_failure_count")?,
            unreachable: get(row, "unreachable_count")?,
            canceled: get(row, "canceled_count")?,
            completed_duration_seconds: get(row, "completed_duration_seconds")?,
        },
        scheduled_for: get::<Option<i64>>(row, "scheduled_for")?.map(Millis),
        started_at: get::<Option<i64>>(row, "started_at")?.map(Millis),
        created_at: Millis(get(row, "created_at")?),
        updated_at: Millis(get(row, "updated_at")?),
    })
}

/// The calls of a chunk of recipients: the per-row values (id, number, parameters) come as one
/// JSON array at `$9`, the values shared by every row at `$1`..`$8`.
fn chunk_sql(backend: Backend) -> String {
    // `immediate = 0`: like a scheduled `POST /v1/call`, the per-number limit and the calling
    // window apply when the dispatcher dials, not at upload.
    format!(
        "INSERT INTO calls (id, chain_id, attempt, tenant_id, agent_id, status, immediate, \
         customer_phone, from_phone, parameters, scheduled_for, due_at, trace_id, batch_id, created_at) \
         SELECT v.column1 || '_1', v.column1, 1, $1, $2, 'scheduled', 0, v.column2, $3, v.column3, \
         $4, $5, $6, $7, $8 FROM {} AS v",
        json_rows(backend, 9, &["text", "text", "text"])
    )
}

/// The first event of every call of a chunk, as a `POST /v1/call` writes it; the same JSON
/// rows as [`chunk_sql`], at `$3`.
fn chunk_events_sql(backend: Backend) -> String {
    format!(
        "INSERT INTO call_events (call_id, tenant_id, at, status, detail) \
         SELECT v.column1 || '_1', $1, $2, 'scheduled', NULL FROM {} AS v",
        json_rows(backend, 3, &["text", "text", "text"])
    )
}

/// The batch row of an upload about to be written, `loading` (never listed, its calls never
/// dialled), and the number its calls are dialled from.
async fn begin_loading_in(
    conn: &mut AnyConnection,
    b: &NewBatch,
    lease_until: Millis,
) -> Result<(i64, String), BatchError> {
    let agent = sqlx::query(
        "SELECT phone_number FROM agents WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL",
    )
    .bind(b.tenant.0)
    .bind(b.agent.0)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?
    .ok_or(BatchError::AgentNotFound)?;
    let from_phone: Option<String> = get(&agent, "phone_number")?;
    let from_phone = from_phone.ok_or(BatchError::AgentHasNoNumber)?;
    let total = i64::try_from(b.recipients.len()).map_err(|_| corrupt("recipients"))?;
    let row = sqlx::query(
        "INSERT INTO batches (tenant_id, agent_id, name, status, total_recipients, pending_count, \
         scheduled_for, created_at, updated_at, loading_until) \
         VALUES ($1, $2, $3, 'loading', $4, $4, $5, $6, $6, $7) RETURNING id",
    )
    .bind(b.tenant.0)
    .bind(b.agent.0)
    .bind(b.name.as_str())
    .bind(total)
    .bind(b.scheduled_for.map(|m| m.0))
    .bind(b.now.0)
    .bind(lease_until.0)
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok((get(&row, "id")?, from_phone))
}

/// Moves the lease of a loading batch forward; false when it is no longer loading (removed by
/// a sweep that took it for abandoned), so the upload stops instead of writing orphans.
async fn renew_loading_in<E: Exec>(
    conn: &mut E,
    id: i64,
    lease_until: Millis,
) -> Result<bool, StoreError> {
    let done = query("UPDATE batches SET loading_until = $2 WHERE id = $1 AND status = 'loading'")
        .bind(id)
        .bind(lease_until.0)
        .execute(&mut *conn)
        .await?;
    Ok(done == 1)
}

/// An upload whose loading batch was swept as abandoned (its lease ran out) while it ran.
fn lease_lost(id: i64) -> StoreError {
    StoreError::Database(
        format!("batch {id} was removed while uploading (its lease ran out)").into(),
    )
}

/// The batch and the attempt of one call, if it belongs to a batch.
struct BatchCall {
    batch_id: i64,
    attempt: i64,
}

async fn batch_call<E: Exec>(conn: &mut E, id: &str) -> Result<Option<BatchCall>, StoreError> {
    let row = query("SELECT batch_id, attempt FROM calls WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let Some(batch_id) = get::<Option<i64>>(&row, "batch_id")? else {
        return Ok(None);
    };
    Ok(Some(BatchCall {
        batch_id,
        attempt: get(&row, "attempt")?,
    }))
}

/// Moves one recipient from the waiting counter to `in_progress`; the batch's first dial makes
/// it `in_progress`. Called by `begin_dial` in its transaction once `initiated` is written.
pub(crate) async fn on_dial_started_in<E: Exec>(
    conn: &mut E,
    id: &str,
    now: Millis,
) -> Result<(), StoreError> {
    let Some(call) = batch_call(conn, id).await? else {
        return Ok(());
    };
    let attempt = u32::try_from(call.attempt).map_err(|_| corrupt("calls.attempt"))?;
    query(&crate::settle::dial_started_sql(attempt))
        .bind(call.batch_id)
        .bind(now.0)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// One chunk of a loading batch's calls and their first events, in one transaction that renews
/// the batch's lease first (a batch swept as abandoned takes no more calls).
struct Chunk {
    id: i64,
    lease_until: Millis,
    calls_sql: String,
    events_sql: String,
    tenant: i64,
    agent: i64,
    from_phone: String,
    scheduled_for: Option<i64>,
    due_at: i64,
    trace: String,
    now: i64,
    /// `[id, phone, parameters]` rows, as JSON.
    rows: String,
}

impl Job for Chunk {
    type Out = ();

    async fn run<E: Exec>(self, tx: &mut E) -> Result<(), StoreError> {
        if !renew_loading_in(tx, self.id, self.lease_until).await? {
            return Err(lease_lost(self.id));
        }
        query(&self.calls_sql)
            .bind(self.tenant)
            .bind(self.agent)
            .bind(self.from_phone)
            .bind(self.scheduled_for)
            .bind(self.due_at)
            .bind(self.trace)
            .bind(self.id)
            .bind(self.now)
            .bind(self.rows.as_str())
            .execute(tx)
            .await?;
        query(&self.events_sql)
            .bind(self.tenant)
            .bind(self.now)
            .bind(self.rows)
            .execute(tx)
            .await?;
        Ok(())
    }
}

impl SqlStore {
    fn lease_from_now(&self) -> Millis {
        let lease = i64::try_from(self.upload_lease.as_millis()).unwrap_or(i64::MAX);
        Millis(Millis::now().0.saturating_add(lease))
    }

    /// The calls of a loading batch, a chunk per transaction so no upload holds the writer for
    /// long, then the batch made `pending` (and so its calls visible) in one small statement.
    async fn load_calls(
        &self,
        b: &NewBatch,
        id: i64,
        from_phone: &str,
    ) -> Result<Batch, BatchError> {
        let now = b.now.0;
        let due_at = b.scheduled_for.map(|m| m.0).unwrap_or(now);
        let trace = b.trace_id.to_string();
        let (calls_sql, events_sql) = (chunk_sql(self.backend), chunk_events_sql(self.backend));
        let n = b.recipients.len();
        // Time-ordered ids (`ConversationId::first`), inserted in ascending order: the primary
        // key and the chain index then grow at their end instead of taking a million random page
        // splits, most of a big insert's cost.
        let mut ids: Vec<uuid::Uuid> = (0..n)
            .map(|_| domain::ConversationId::first(b.now).chain)
            .collect();
        ids.sort_unstable();
        let chunk_rows = self.upload_chunk.max(1);
        for (chunk, first) in ids.chunks(chunk_rows).zip((0..).step_by(chunk_rows)) {
            let rows = chunk
                .iter()
                .enumerate()
                .map(|(k, id)| {
                    let i = first + k;
                    let params = b.recipients.parameters_json(i).map_err(encode_err)?;
                    Ok((id.to_string(), b.recipients.phone(i), params))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let job = Chunk {
                id,
                lease_until: self.lease_from_now(),
                calls_sql: calls_sql.clone(),
                events_sql: events_sql.clone(),
                tenant: b.tenant.0,
                agent: b.agent.0,
                from_phone: from_phone.to_string(),
                scheduled_for: b.scheduled_for.map(|m| m.0),
                due_at,
                trace: trace.clone(),
                now,
                rows: serde_json::to_string(&rows).map_err(encode_err)?,
            };
            self.background_job(Work::Batch, job).await?;
        }
        let mut tx = self.background_tx(Work::Batch).await?;
        let row = sqlx::query(&format!(
            "UPDATE batches SET status = 'pending', loading_until = NULL \
             WHERE id = $1 AND status = 'loading' RETURNING {BATCH_COLUMNS}"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .ok_or_else(|| lease_lost(id))?;
        let created = batch(&row)?;
        crate::pages::forget_from(&mut tx, self.backend, created.tenant.0, created.created_at)
            .await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Removes a batch that is still loading and its calls, a chunk per transaction; the batch
    /// row goes last, so its calls stay hidden until they are gone.
    async fn remove_loading_batch(&self, id: i64) -> Result<(), StoreError> {
        let chunk = i64::try_from(self.upload_chunk.max(1)).unwrap_or(i64::MAX);
        loop {
            let mut tx = self.background_tx(Work::Batch).await?;
            let ids: Vec<String> = sqlx::query("SELECT id FROM calls WHERE batch_id = $1 LIMIT $2")
                .bind(id)
                .bind(chunk)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?
                .iter()
                .map(|r| get::<String>(r, "id"))
                .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                sqlx::query("DELETE FROM batches WHERE id = $1 AND status = 'loading'")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                return tx.commit().await;
            }
            let ids = serde_json::to_string(&ids).map_err(encode_err)?;
            for table in [("call_events", "call_id"), ("calls", "id")] {
                sqlx::query(&format!(
                    "DELETE FROM {} WHERE {} IN ({})",
                    table.0,
                    table.1,
                    crate::json_texts(self.backend, 1)
                ))
                .bind(ids.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
            tx.commit().await?;
        }
    }

    /// Removes the half-written batches of uploads that died (a node killed mid-upload), with
    /// their calls: those loading past their lease, or, at the start of a SQLite node (the only
    /// node on its file, so no upload can be running), every loading batch. Returns how many.
    pub async fn remove_abandoned_uploads(&self, at_startup: bool) -> Result<u64, StoreError> {
        let cutoff = if at_startup && self.backend == Backend::Sqlite {
            i64::MAX
        } else {
            Millis::now().0
        };
        let ids: Vec<i64> =
            sqlx::query("SELECT id FROM batches WHERE status = 'loading' AND loading_until < $1")
                .bind(cutoff)
                .fetch_all(&self.read)
                .await
                .map_err(db_err)?
                .iter()
                .map(|r| get::<i64>(r, "id"))
                .collect::<Result<_, _>>()?;
        for &id in &ids {
            self.remove_loading_batch(id).await?;
            tracing::warn!(
                batch_id = id,
                "removed the half-written batch of an upload that died"
            );
        }
        Ok(ids.len() as u64)
    }

    async fn batch_row(
        &self,
        conn: &mut AnyConnection,
        tenant: TenantId,
        id: i64,
    ) -> Result<Batch, BatchError> {
        let row = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE tenant_id = $1 AND id = $2 AND {SHOWN}"
        ))
        .bind(tenant.0)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?
        .ok_or(BatchError::NotFound)?;
        Ok(batch(&row)?)
    }

    /// Settles every waiting call of the batch as `canceled`, with what each settlement decides
    /// (event, `call.canceled` webhook, recipient moved to `canceled_count`). Calls already
    /// dialling are not touched: their own settlement counts them. Calls first, then the batch
    /// row: the same lock order as `begin_dial`, so the two cannot deadlock on PostgreSQL.
    async fn cancel_batch_in(
        &self,
        conn: &mut AnyConnection,
        batch: &Batch,
        now: Millis,
    ) -> Result<(), BatchError> {
        let cancellable = Transition::Cancel.from_sql();
        let waiting: Vec<String> = sqlx::query(&format!(
            "SELECT id FROM calls WHERE batch_id = $1 AND tenant_id = $2 \
             AND status IN ({cancellable})"
        ))
        .bind(batch.id)
        .bind(batch.tenant.0)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| get::<String>(r, "id"))
        .collect::<Result<_, _>>()?;
        let agent = agent_config(conn, batch.agent).await?;
        let mut canceled = 0usize;
        for ids in waiting.chunks(CANCEL_CHUNK) {
            let update_sql = format!(
                "UPDATE calls SET status = 'canceled', ended_at = $1, lease_owner = NULL, lease_until = NULL \
                 WHERE tenant_id = $2 AND id IN ({}) AND status IN ({cancellable}) \
                 RETURNING {CONVERSATION_COLUMNS}",
                placeholders(3, ids.len())
            );
            let mut update = sqlx::query(&update_sql).bind(now.0).bind(batch.tenant.0);
            for id in ids {
                update = update.bind(id.as_str());
            }
            // Only what this statement settled: a call that began dialling since the SELECT is
            // no longer waiting and is left to its own settlement.
            let settled = update.fetch_all(&mut *conn).await.map_err(db_err)?;
            let decisions = settled
                .iter()
                .map(|row| {
                    let detail = Some("batch canceled".to_string());
                    SettledRow::with_agent(row, agent.clone())?
                        .decide(Event::Canceled { detail }, now)
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            crate::settle::execute_in(conn, self.backend, &decisions, now).await?;
            canceled += decisions.len();
        }
        sqlx::query("UPDATE batches SET status = 'canceled', updated_at = $1 WHERE id = $2")
            .bind(now.0)
            .bind(batch.id)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
        tracing::info!(batch_id = batch.id, canceled, "batch canceled");
        Ok(())
    }
}

/// The batch's agent, for its calls' events (`retry` block, `retry_context`).
async fn agent_config(
    conn: &mut AnyConnection,
    agent: AgentId,
) -> Result<Option<AgentConfig>, StoreError> {
    let row = sqlx::query("SELECT config FROM agents WHERE id = $1")
        .bind(agent.0)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    match row {
        Some(r) => rows::agent_config(get(&r, "config")?),
        None => Ok(None),
    }
}

#[async_trait::async_trait]
impl BatchStore for SqlStore {
    async fn create_batch(&self, b: NewBatch) -> Result<Batch, BatchError> {
        let started = std::time::Instant::now();
        let (id, from_phone) = {
            let mut tx = self.background_tx(Work::Batch).await?;
            let begun = begin_loading_in(&mut tx, &b, self.lease_from_now()).await?;
            tx.commit().await?;
            begun
        };
        match self.load_calls(&b, id, &from_phone).await {
            Ok(created) => {
                tracing::info!(
                    batch_id = created.id,
                    rows = b.recipients.len(),
                    write_ms = started.elapsed().as_millis() as u64,
                    "batch written"
                );
                Ok(created)
            }
            Err(e) => {
                // Still loading, so never seen; a failed removal is left to the sweep.
                if let Err(cleanup) = self.remove_loading_batch(id).await {
                    tracing::warn!(batch_id = id, error = %cleanup, "removing a failed upload");
                }
                Err(e)
            }
        }
    }

    async fn get_batch(&self, tenant: TenantId, id: i64) -> Result<Option<Batch>, BatchError> {
        let row = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE tenant_id = $1 AND id = $2 AND {SHOWN}"
        ))
        .bind(tenant.0)
        .bind(id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        Ok(row.map(|r| batch(&r)).transpose()?)
    }

    async fn list_batches(
        &self,
        tenant: TenantId,
        agent: Option<AgentId>,
        page: Page,
    ) -> Result<Listed<Batch>, BatchError> {
        // Two shapes rather than `$2 IS NULL OR ...`, so SQLite keeps using the per-agent index.
        let filter = if agent.is_some() {
            format!("tenant_id = $1 AND agent_id = $2 AND {SHOWN}")
        } else {
            format!("tenant_id = $1 AND $2 = 0 AND {SHOWN}")
        };
        let agent_bind = agent.map(|a| a.0).unwrap_or(0);
        let items = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE {filter} ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
        ))
        .bind(tenant.0)
        .bind(agent_bind)
        .bind(i64::from(page.limit))
        .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?
        .iter()
        .map(batch)
        .collect::<Result<Vec<_>, _>>()?;
        let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM batches WHERE {filter}"))
            .bind(tenant.0)
            .bind(agent_bind)
            .fetch_one(&self.read)
            .await
            .map_err(db_err)?;
        let total: i64 = get(&row, "n")?;
        Ok(Listed {
            items,
            total: u64::try_from(total).unwrap_or(0),
        })
    }

    async fn change_batch(
        &self,
        tenant: TenantId,
        id: i64,
        action: BatchAction,
        now: Millis,
    ) -> Result<Batch, BatchError> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let current = self.batch_row(&mut tx, tenant, id).await?;
        use BatchStatus::*;
        match (action, current.status) {
            (_, Completed) => return Err(BatchError::Finished(Completed)),
            (BatchAction::Cancel, Canceled) => return Ok(current),
            (_, Canceled) => return Err(BatchError::Finished(Canceled)),
            // Already in the state asked for: answer it unchanged, so a retried request is safe.
            (BatchAction::Pause, Paused) | (BatchAction::Resume, Pending | InProgress) => {
                return Ok(current)
            }
            (BatchAction::Pause, Pending | InProgress) => {
                // Conditional, so a concurrent cancel is never overwritten.
                sqlx::query(
                    "UPDATE batches SET status = 'paused', updated_at = $1 WHERE id = $2 \
                     AND status IN ('pending', 'in_progress')",
                )
                .bind(now.0)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
            (BatchAction::Resume, Paused) => {
                sqlx::query(
                    "UPDATE batches SET status = CASE WHEN started_at IS NULL THEN 'pending' \
                     ELSE 'in_progress' END, updated_at = $1 WHERE id = $2 AND status = 'paused'",
                )
                .bind(now.0)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
            (BatchAction::Cancel, Pending | InProgress | Paused) => {
                self.cancel_batch_in(&mut tx, &current, now).await?;
            }
        }
        let changed = self.batch_row(&mut tx, tenant, id).await?;
        tx.commit().await.map_err(db_err)?;
        tracing::info!(batch_id = id, action = ?action, status = %changed.status, "batch changed");
        Ok(changed)
    }
}
