//! `POST /v1/call` in the database: the checks that need it, then the writes, in one
//! transaction; and the conversation reads.
//!
//! The SQL, every decision taken on its answers and the sequence of checks and writes
//! ([`create_call_in`]) live here once, written against [`CallTx`]: one method per statement.
//! Two drivers implement it: [`SqlxCallTx`] below (PostgreSQL, and SQLite when group commit is
//! off) and the SQLite group-commit writer (`sqlite_writer`), which runs the same statements on
//! its own rusqlite connection in one blocking thread.

use crate::exec::{query, Exec};
use crate::locks::{lock, LockKey};
use crate::rows::{self, get};
use crate::{db_err, Backend};
use domain::call::{AcceptedCall, NewCall};
use domain::store::{CreateCallError, StoreError};
use domain::{CallStatus, ConversationId, Millis, TraceId};
use sqlx::AnyConnection;
use std::sync::LazyLock;

/// How long an idempotency key stays claimed.
pub(crate) const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

pub(crate) const AGENT_SQL: &str = "SELECT a.phone_number AS phone_number, \
     t.max_concurrent_calls AS max_concurrent_calls, t.per_number_calls AS per_number_calls, \
     t.per_number_window_seconds AS per_number_window_seconds \
     FROM agents a JOIN tenants t ON t.id = a.tenant_id \
     WHERE a.tenant_id = $1 AND a.id = $2 AND a.deleted_at IS NULL";
pub(crate) const LISTED_SQL: &str =
    "SELECT 1 AS one FROM do_not_call WHERE tenant_id = $1 AND number = $2";
pub(crate) const CHAIN_EXISTS_SQL: &str =
    "SELECT 1 AS one FROM calls WHERE tenant_id = $1 AND id = $2";
pub(crate) const CHAIN_LAST_SQL: &str =
    "SELECT MAX(attempt) AS last FROM calls WHERE tenant_id = $1 AND chain_id = $2";
pub(crate) const IDEMPOTENCY_SEEN_SQL: &str = "SELECT trace_id FROM idempotency_keys \
     WHERE tenant_id = $1 AND agent_id = $2 AND key = $3 AND created_at > $4";
pub(crate) const RECENT_TO_NUMBER_SQL: &str = "SELECT created_at FROM calls \
     WHERE tenant_id = $1 AND customer_phone = $2 AND immediate = 1 \
     AND created_at > $3 ORDER BY created_at DESC LIMIT $4";
/// Insert-or-take-over-if-expired in one statement: the primary key decides races between
/// nodes, and a key older than 24 hours is reusable without a cleanup job having run.
pub(crate) const IDEMPOTENCY_CLAIM_SQL: &str = "INSERT INTO idempotency_keys \
     (tenant_id, agent_id, key, trace_id, call_id, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (tenant_id, agent_id, key) DO UPDATE \
     SET trace_id = excluded.trace_id, call_id = excluded.call_id, created_at = excluded.created_at \
     WHERE idempotency_keys.created_at <= $7 RETURNING trace_id";
pub(crate) const IDEMPOTENCY_HOLDER_SQL: &str =
    "SELECT trace_id FROM idempotency_keys WHERE tenant_id = $1 AND agent_id = $2 AND key = $3";
pub(crate) const INSERT_CALL_SQL: &str = "INSERT INTO calls (id, chain_id, attempt, tenant_id, \
     agent_id, status, immediate, customer_phone, from_phone, parameters, metadata, retry_context, \
     scheduled_for, due_at, trace_id, results, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";
pub(crate) const INSERT_EVENT_SQL: &str =
    "INSERT INTO call_events (call_id, tenant_id, at, status, detail) VALUES ($1, $2, $3, $4, $5)";
pub(crate) static LIVE_COUNT_SQL: LazyLock<String> = LazyLock::new(|| {
    let live = domain::lifecycle::sql_list(&CallStatus::live().collect::<Vec<_>>());
    format!("SELECT COUNT(*) AS n FROM calls WHERE tenant_id = $1 AND immediate = 1 AND status IN ({live})")
});

/// The agent's number and its tenant's limits, as `AGENT_SQL` reads them.
#[derive(Debug, Clone)]
pub(crate) struct AgentLimits {
    pub(crate) from_phone: Option<String>,
    pub(crate) per_number: i64,
    pub(crate) window_s: i64,
    pub(crate) max_concurrent: Option<i64>,
}

impl AgentLimits {
    /// Only immediate calls count against the per-number window (when it is on).
    pub(crate) fn number_window_ms(&self) -> Option<i64> {
        (self.per_number > 0 && self.window_s > 0).then_some(self.window_s * 1000)
    }
}

/// The next attempt of a chain whose highest attempt so far is `last`.
pub(crate) fn next_attempt(last: Option<i64>) -> Result<u32, StoreError> {
    u32::try_from(last.unwrap_or(0) + 1).map_err(|_| rows::corrupt("calls.attempt"))
}

/// The per-number verdict from the newest `per_number` immediate calls to the number inside the
/// window (`recent`, newest first).
pub(crate) fn number_verdict(
    recent: &[i64],
    per_number: i64,
    window_ms: i64,
    now: i64,
) -> Result<(), CreateCallError> {
    if (recent.len() as i64) < per_number {
        return Ok(());
    }
    // The window frees up when the oldest of the last `per_number` calls leaves it.
    let oldest = recent.last().copied().unwrap_or(now);
    let wait_ms = (oldest + window_ms - now).max(1);
    let retry_after_seconds = u64::try_from((wait_ms + 999) / 1000).unwrap_or(1).max(1);
    Err(CreateCallError::NumberRateLimited {
        retry_after_seconds,
    })
}

pub(crate) fn concurrency_verdict(current: i64, max: i64) -> Result<(), CreateCallError> {
    if current >= max {
        return Err(CreateCallError::ConcurrentLimit {
            current: u64::try_from(current).unwrap_or(0),
            max: u32::try_from(max).unwrap_or(u32::MAX),
        });
    }
    Ok(())
}

/// The 409 for a key already claimed by the request that carried `first_trace_id`.
pub(crate) fn duplicate(first_trace_id: &str) -> Result<CreateCallError, StoreError> {
    let first_trace_id = first_trace_id
        .parse::<TraceId>()
        .map_err(|_| rows::corrupt("idempotency_keys.trace_id"))?;
    Ok(CreateCallError::DuplicateRequest { first_trace_id })
}

/// Every value `INSERT_CALL_SQL` and `INSERT_EVENT_SQL` write for an accepted call, computed
/// once for both drivers, in the statement's column order.
pub(crate) struct CallRow<'a> {
    pub(crate) id: String,
    pub(crate) chain: String,
    pub(crate) attempt: i64,
    pub(crate) tenant: i64,
    pub(crate) agent: i64,
    pub(crate) status: CallStatus,
    pub(crate) immediate: bool,
    pub(crate) customer_phone: &'a str,
    pub(crate) from_phone: &'a str,
    pub(crate) parameters: String,
    pub(crate) metadata: Option<&'a str>,
    pub(crate) retry_context: Option<String>,
    pub(crate) scheduled_for: Option<i64>,
    pub(crate) due_at: i64,
    pub(crate) trace: String,
    pub(crate) results: String,
    pub(crate) created_at: i64,
}

impl<'a> CallRow<'a> {
    pub(crate) fn new(
        call: &'a NewCall,
        from_phone: &'a str,
        conversation_id: ConversationId,
    ) -> Result<Self, StoreError> {
        let immediate = call.scheduled_for.is_none();
        let to_json = |e: serde_json::Error| StoreError::Database(e.into());
        Ok(Self {
            id: conversation_id.to_string(),
            chain: conversation_id.chain.to_string(),
            attempt: i64::from(conversation_id.attempt),
            tenant: call.tenant.0,
            agent: call.agent.0,
            // Immediate calls wait in `queued` for the dispatcher; scheduled ones in `scheduled`.
            status: if immediate {
                CallStatus::Queued
            } else {
                CallStatus::Scheduled
            },
            immediate,
            customer_phone: call.customer_phone.as_str(),
            from_phone,
            parameters: serde_json::to_string(&call.parameters).map_err(to_json)?,
            metadata: call.metadata.as_deref(),
            retry_context: call
                .retry_context
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(to_json)?,
            scheduled_for: call.scheduled_for.map(|m| m.0),
            due_at: call.scheduled_for.map(|m| m.0).unwrap_or(call.now.0),
            trace: call.trace_id.to_string(),
            results: call
                .retry_context
                .as_ref()
                .and_then(|r| r.collected_data.as_ref())
                .map(serde_json::to_string)
                .transpose()
                .map_err(to_json)?
                .unwrap_or_else(|| "{}".into()),
            created_at: call.now.0,
        })
    }
}

/// An idempotency key as its table keys it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdempotencyKey<'a> {
    pub(crate) tenant: i64,
    pub(crate) agent: i64,
    pub(crate) key: &'a str,
}

/// The statements of `POST /v1/call`, one method each, inside the transaction that holds the
/// call. [`create_call_in`] is written once against this; each driver runs the statements its
/// own way: [`SqlxCallTx`] over sqlx (PostgreSQL, and SQLite when group commit is off), and the
/// group-commit writer over rusqlite (`sqlite_writer`), whose methods finish without waiting
/// and may answer from what its batch already read.
///
/// Async so that the sqlx driver can await its round trips; the rusqlite driver's futures are
/// ready on their first poll. Not `Send`-bounded: rusqlite's connection is not `Sync`, and the
/// sqlx driver's futures are `Send` by their concrete type.
pub(crate) trait CallTx {
    /// Serialises a check-then-write with other transactions until this one ends: an advisory
    /// lock on PostgreSQL. SQLite writes one transaction at a time, so both its drivers have
    /// nothing to do.
    async fn lock(&mut self, key: LockKey) -> Result<(), StoreError>;
    /// The agent's number and its tenant's limits, if the agent exists (`AGENT_SQL`).
    async fn agent(&mut self, tenant: i64, agent: i64) -> Result<Option<AgentLimits>, StoreError>;
    /// Whether the tenant's do-not-call list holds the number (`LISTED_SQL`).
    async fn listed(&mut self, tenant: i64, number: &str) -> Result<bool, StoreError>;
    /// Whether the conversation `id` exists (`CHAIN_EXISTS_SQL`).
    async fn chain_exists(&mut self, tenant: i64, id: &str) -> Result<bool, StoreError>;
    /// The chain's highest attempt (`CHAIN_LAST_SQL`).
    async fn chain_last(&mut self, tenant: i64, chain: &str) -> Result<Option<i64>, StoreError>;
    /// The trace id of the request that claimed the key after `since` (`IDEMPOTENCY_SEEN_SQL`).
    async fn idempotency_seen(
        &mut self,
        key: IdempotencyKey<'_>,
        since: i64,
    ) -> Result<Option<String>, StoreError>;
    /// The creation times of the newest `limit` immediate calls to the number after `since`,
    /// newest first (`RECENT_TO_NUMBER_SQL`).
    async fn recent_to_number(
        &mut self,
        tenant: i64,
        number: &str,
        since: i64,
        limit: i64,
    ) -> Result<Vec<i64>, StoreError>;
    /// The tenant's live immediate calls (`LIVE_COUNT_SQL`).
    async fn live_count(&mut self, tenant: i64) -> Result<i64, StoreError>;
    /// Claims the key for `row`'s call unless a claim newer than `expired_before` holds it;
    /// whether it did (`IDEMPOTENCY_CLAIM_SQL`).
    async fn idempotency_claim(
        &mut self,
        key: IdempotencyKey<'_>,
        row: &CallRow<'_>,
        expired_before: i64,
    ) -> Result<bool, StoreError>;
    /// The trace id of the key's holder (`IDEMPOTENCY_HOLDER_SQL`).
    async fn idempotency_holder(&mut self, key: IdempotencyKey<'_>) -> Result<String, StoreError>;
    /// Writes the call (`INSERT_CALL_SQL`).
    async fn insert_call(&mut self, row: &CallRow<'_>) -> Result<(), StoreError>;
    /// Writes the call's first event (`INSERT_EVENT_SQL`, no detail).
    async fn insert_first_event(&mut self, row: &CallRow<'_>) -> Result<(), StoreError>;
}

/// Runs every database check of the contract, in its order, then writes the call, its first
/// event and the idempotency claim. Refusals happen before the first write; the caller owns the
/// transaction and rolls it back on a database error.
pub(crate) async fn create_call_in<T: CallTx>(
    tx: &mut T,
    call: &NewCall,
) -> Result<AcceptedCall, CreateCallError> {
    let tenant = call.tenant.0;
    let number = call.customer_phone.as_str();
    let agent = tx
        .agent(tenant, call.agent.0)
        .await?
        .ok_or(CreateCallError::AgentNotFound)?;
    let from_phone = agent
        .from_phone
        .as_deref()
        .ok_or(CreateCallError::AgentHasNoNumber)?;
    if tx.listed(tenant, number).await? {
        return Err(CreateCallError::DoNotCall);
    }

    let conversation_id = match call.continues {
        None => ConversationId::first(call.now),
        Some(prev) => {
            let chain = prev.chain.to_string();
            tx.lock(LockKey::new(&["chain", &chain])).await?;
            if !tx.chain_exists(tenant, &prev.to_string()).await? {
                return Err(CreateCallError::ConversationNotFound);
            }
            ConversationId {
                chain: prev.chain,
                attempt: next_attempt(tx.chain_last(tenant, &chain).await?)?,
            }
        }
    };
    let now = call.now.0;
    let key = call.idempotency_key.as_deref().map(|key| IdempotencyKey {
        tenant,
        agent: call.agent.0,
        key,
    });

    if let Some(key) = key {
        // Checked here, in the contract's order, and claimed with the writes below. On SQLite
        // the single writer makes this read final; on PostgreSQL a racing claim is caught by
        // the primary key at insert time.
        if let Some(first) = tx.idempotency_seen(key, now - IDEMPOTENCY_TTL_MS).await? {
            return Err(duplicate(&first)?);
        }
    }

    if call.scheduled_for.is_none() {
        if let Some(window_ms) = agent.number_window_ms() {
            tx.lock(LockKey::new(&["number", &tenant.to_string(), number]))
                .await?;
            let recent = tx
                .recent_to_number(tenant, number, now - window_ms, agent.per_number)
                .await?;
            number_verdict(&recent, agent.per_number, window_ms, now)?;
        }
        if let Some(max) = agent.max_concurrent {
            tx.lock(LockKey::new(&["live", &tenant.to_string()]))
                .await?;
            concurrency_verdict(tx.live_count(tenant).await?, max)?;
        }
    }

    let row = CallRow::new(call, from_phone, conversation_id)?;
    // Every check has passed: only writes from here on, so a refusal above has written nothing
    // and needs no savepoint to undo.
    if let Some(key) = key {
        if !tx
            .idempotency_claim(key, &row, now - IDEMPOTENCY_TTL_MS)
            .await?
        {
            return Err(duplicate(&tx.idempotency_holder(key).await?)?);
        }
    }
    tx.insert_call(&row).await?;
    tx.insert_first_event(&row).await?;
    Ok(AcceptedCall {
        conversation_id,
        status: row.status,
        trace_id: call.trace_id,
    })
}

/// [`CallTx`] over a sqlx connection inside a transaction: PostgreSQL, and SQLite when group
/// commit is off.
pub(crate) struct SqlxCallTx<'c> {
    conn: &'c mut AnyConnection,
    backend: Backend,
}

impl<'c> SqlxCallTx<'c> {
    pub(crate) fn new(conn: &'c mut AnyConnection, backend: Backend) -> Self {
        Self { conn, backend }
    }
}

impl CallTx for SqlxCallTx<'_> {
    async fn lock(&mut self, key: LockKey) -> Result<(), StoreError> {
        lock(self.conn, self.backend, key).await
    }

    async fn agent(&mut self, tenant: i64, agent: i64) -> Result<Option<AgentLimits>, StoreError> {
        let Some(row) = sqlx::query(AGENT_SQL)
            .bind(tenant)
            .bind(agent)
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        Ok(Some(AgentLimits {
            from_phone: get(&row, "phone_number")?,
            per_number: get(&row, "per_number_calls")?,
            window_s: get(&row, "per_number_window_seconds")?,
            max_concurrent: get(&row, "max_concurrent_calls")?,
        }))
    }

    async fn listed(&mut self, tenant: i64, number: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query(LISTED_SQL)
            .bind(tenant)
            .bind(number)
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(db_err)?
            .is_some())
    }

    async fn chain_exists(&mut self, tenant: i64, id: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query(CHAIN_EXISTS_SQL)
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(db_err)?
            .is_some())
    }

    async fn chain_last(&mut self, tenant: i64, chain: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(CHAIN_LAST_SQL)
            .bind(tenant)
            .bind(chain)
            .fetch_one(&mut *self.conn)
            .await
            .map_err(db_err)?;
        get(&row, "last")
    }

    async fn idempotency_seen(
        &mut self,
        key: IdempotencyKey<'_>,
        since: i64,
    ) -> Result<Option<String>, StoreError> {
        sqlx::query(IDEMPOTENCY_SEEN_SQL)
            .bind(key.tenant)
            .bind(key.agent)
            .bind(key.key)
            .bind(since)
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(db_err)?
            .map(|row| get::<String>(&row, "trace_id"))
            .transpose()
    }

    async fn recent_to_number(
        &mut self,
        tenant: i64,
        number: &str,
        since: i64,
        limit: i64,
    ) -> Result<Vec<i64>, StoreError> {
        sqlx::query(RECENT_TO_NUMBER_SQL)
            .bind(tenant)
            .bind(number)
            .bind(since)
            .bind(limit)
            .fetch_all(&mut *self.conn)
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| get::<i64>(r, "created_at"))
            .collect()
    }

    async fn live_count(&mut self, tenant: i64) -> Result<i64, StoreError> {
        let row = sqlx::query(&LIVE_COUNT_SQL)
            .bind(tenant)
            .fetch_one(&mut *self.conn)
            .await
            .map_err(db_err)?;
        get(&row, "n")
    }

    async fn idempotency_claim(
        &mut self,
        key: IdempotencyKey<'_>,
        row: &CallRow<'_>,
        expired_before: i64,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(IDEMPOTENCY_CLAIM_SQL)
            .bind(key.tenant)
            .bind(key.agent)
            .bind(key.key)
            .bind(row.trace.as_str())
            .bind(row.id.as_str())
            .bind(row.created_at)
            .bind(expired_before)
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(db_err)?
            .is_some())
    }

    async fn idempotency_holder(&mut self, key: IdempotencyKey<'_>) -> Result<String, StoreError> {
        let row = sqlx::query(IDEMPOTENCY_HOLDER_SQL)
            .bind(key.tenant)
            .bind(key.agent)
            .bind(key.key)
            .fetch_one(&mut *self.conn)
            .await
            .map_err(db_err)?;
        get(&row, "trace_id")
    }

    async fn insert_call(&mut self, row: &CallRow<'_>) -> Result<(), StoreError> {
        sqlx::query(INSERT_CALL_SQL)
            .bind(row.id.as_str())
            .bind(row.chain.as_str())
            .bind(row.attempt)
            .bind(row.tenant)
            .bind(row.agent)
            .bind(row.status.as_str())
            .bind(i64::from(row.immediate))
            .bind(row.customer_phone)
            .bind(row.from_phone)
            .bind(row.parameters.as_str())
            .bind(row.metadata)
            .bind(row.retry_context.as_deref())
            .bind(row.scheduled_for)
            .bind(row.due_at)
            .bind(row.trace.as_str())
            .bind(row.results.as_str())
            .bind(row.created_at)
            .execute(&mut *self.conn)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn insert_first_event(&mut self, row: &CallRow<'_>) -> Result<(), StoreError> {
        insert_event(
            self.conn,
            &row.id,
            row.tenant,
            Millis(row.created_at),
            row.status,
            None,
        )
        .await
    }
}

pub(crate) async fn insert_event<E: Exec>(
    conn: &mut E,
    call_id: &str,
    tenant: i64,
    at: Millis,
    status: CallStatus,
    detail: Option<String>,
) -> Result<(), StoreError> {
    query(INSERT_EVENT_SQL)
        .bind(call_id)
        .bind(tenant)
        .bind(at.0)
        .bind(status.as_str())
        .bind(detail)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_number_window_frees_when_its_oldest_call_leaves() {
        let now = 100_000;
        assert!(number_verdict(&[now - 10], 2, 60_000, now).is_ok());
        match number_verdict(&[now - 10, now - 30_500], 2, 60_000, now) {
            Err(CreateCallError::NumberRateLimited {
                retry_after_seconds,
            }) => assert_eq!(retry_after_seconds, 30),
            other => panic!("{other:?}"),
        }
    }
}
