//! `POST /v1/call` in the database: the checks that need it, then the writes, in one
//! transaction; and the conversation reads.

use crate::rows::{self, get};
use crate::{db_err, Backend};
use domain::call::{AcceptedCall, NewCall};
use domain::store::{CreateCallError, StoreError};
use domain::{CallStatus, ConversationId, Millis, TraceId};
use sqlx::AnyConnection;

/// How long an idempotency key stays claimed.
pub(crate) const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// A stable 64-bit key for PostgreSQL advisory locks (FNV-1a): it serialises the check-then-insert
/// of the per-number and concurrency limits across nodes without locking whole tables.
fn lock_key(parts: &[&str]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h as i64
}

async fn advisory_lock(
    conn: &mut AnyConnection,
    backend: Backend,
    parts: &[&str],
) -> Result<(), StoreError> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key(parts))
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

fn live_status_list() -> String {
    CallStatus::live()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs every database check of the contract, in its order, then writes the call, its first
/// event and the idempotency claim. Refusals happen before the first write; the caller owns the
/// transaction and rolls it back on a database error.
pub(crate) async fn create_call_in(
    conn: &mut AnyConnection,
    backend: Backend,
    call: &NewCall,
) -> Result<AcceptedCall, CreateCallError> {
    let tenant = call.tenant.0;
    let agent = sqlx::query(
        "SELECT a.phone_number AS phone_number, t.max_concurrent_calls AS max_concurrent_calls, \
         t.per_number_calls AS per_number_calls, t.per_number_window_seconds AS per_number_window_seconds \
         FROM agents a JOIN tenants t ON t.id = a.tenant_id \
         WHERE a.tenant_id = $1 AND a.id = $2 AND a.deleted_at IS NULL",
    )
    .bind(tenant)
    .bind(call.agent.0)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?
    .ok_or(CreateCallError::AgentNotFound)?;
    let from_phone: Option<String> = get(&agent, "phone_number")?;
    let from_phone = from_phone.ok_or(CreateCallError::AgentHasNoNumber)?;

    let conversation_id = match call.continues {
        None => ConversationId::first(),
        Some(prev) => {
            let chain = prev.chain.to_string();
            advisory_lock(conn, backend, &["chain", &chain]).await?;
            let exists = sqlx::query("SELECT 1 AS one FROM calls WHERE tenant_id = $1 AND id = $2")
                .bind(tenant)
                .bind(prev.to_string())
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_err)?;
            if exists.is_none() {
                return Err(CreateCallError::ConversationNotFound);
            }
            let row = sqlx::query(
                "SELECT MAX(attempt) AS last FROM calls WHERE tenant_id = $1 AND chain_id = $2",
            )
            .bind(tenant)
            .bind(&chain)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err)?;
            let last: Option<i64> = get(&row, "last")?;
            let attempt =
                u32::try_from(last.unwrap_or(0) + 1).map_err(|_| rows::corrupt("calls.attempt"))?;
            ConversationId {
                chain: prev.chain,
                attempt,
            }
        }
    };
    let id = conversation_id.to_string();
    let now = call.now.0;
    let trace = call.trace_id.to_string();

    if let Some(key) = &call.idempotency_key {
        // Checked here, in the contract's order, and claimed with the writes below. On SQLite
        // the single writer makes this read final; on PostgreSQL a racing claim is caught by
        // the primary key at insert time.
        let existing = sqlx::query(
            "SELECT trace_id FROM idempotency_keys WHERE tenant_id = $1 AND agent_id = $2 AND key = $3 AND created_at > $4",
        )
        .bind(tenant)
        .bind(call.agent.0)
        .bind(key.as_str())
        .bind(now - IDEMPOTENCY_TTL_MS)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
        if let Some(row) = existing {
            return Err(duplicate(&row)?);
        }
    }

    let immediate = call.scheduled_for.is_none();
    if immediate {
        let per_number: i64 = get(&agent, "per_number_calls")?;
        let window_s: i64 = get(&agent, "per_number_window_seconds")?;
        let max_concurrent: Option<i64> = get(&agent, "max_concurrent_calls")?;

        if per_number > 0 && window_s > 0 {
            advisory_lock(
                conn,
                backend,
                &["number", &tenant.to_string(), call.customer_phone.as_str()],
            )
            .await?;
            let window_ms = window_s * 1000;
            let recent = sqlx::query(
                "SELECT created_at FROM calls WHERE tenant_id = $1 AND customer_phone = $2 AND immediate = 1 \
                 AND created_at > $3 ORDER BY created_at DESC LIMIT $4",
            )
            .bind(tenant)
            .bind(call.customer_phone.as_str())
            .bind(now - window_ms)
            .bind(per_number)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?;
            if recent.len() as i64 >= per_number {
                // The window frees up when the oldest of the last `per_number` calls leaves it.
                let oldest: i64 = recent
                    .last()
                    .map(|r| get(r, "created_at"))
                    .transpose()?
                    .unwrap_or(now);
                let wait_ms = (oldest + window_ms - now).max(1);
                let retry_after_seconds = u64::try_from((wait_ms + 999) / 1000).unwrap_or(1).max(1);
                return Err(CreateCallError::NumberRateLimited {
                    retry_after_seconds,
                });
            }
        }

        if let Some(max) = max_concurrent {
            advisory_lock(conn, backend, &["live", &tenant.to_string()]).await?;
            let row = sqlx::query(&format!(
                "SELECT COUNT(*) AS n FROM calls WHERE tenant_id = $1 AND immediate = 1 AND status IN ({})",
                live_status_list()
            ))
            .bind(tenant)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err)?;
            let current: i64 = get(&row, "n")?;
            if current >= max {
                return Err(CreateCallError::ConcurrentLimit {
                    current: u64::try_from(current).unwrap_or(0),
                    max: u32::try_from(max).unwrap_or(u32::MAX),
                });
            }
        }
    }

    // Immediate calls wait in `queued` for the dispatcher; scheduled ones in `scheduled`.
    let status = if immediate {
        CallStatus::Queued
    } else {
        CallStatus::Scheduled
    };
    let parameters =
        serde_json::to_string(&call.parameters).map_err(|e| StoreError::Database(e.to_string()))?;
    let retry_context = call
        .retry_context
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Database(e.to_string()))?;
    let results = call
        .retry_context
        .as_ref()
        .and_then(|r| r.collected_data.as_ref())
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Database(e.to_string()))?
        .unwrap_or_else(|| "{}".into());
    let due_at = call.scheduled_for.map(|m| m.0).unwrap_or(now);

    // Every check has passed: only writes from here on, so a refusal above has written nothing
    // and needs no savepoint to undo.
    if let Some(key) = &call.idempotency_key {
        // Insert-or-take-over-if-expired in one statement: the primary key decides races between
        // nodes, and a key older than 24 hours is reusable without a cleanup job having run.
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (tenant_id, agent_id, key, trace_id, call_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant_id, agent_id, key) DO UPDATE \
             SET trace_id = excluded.trace_id, call_id = excluded.call_id, created_at = excluded.created_at \
             WHERE idempotency_keys.created_at <= $7 RETURNING trace_id",
        )
        .bind(tenant)
        .bind(call.agent.0)
        .bind(key.as_str())
        .bind(trace.as_str())
        .bind(id.as_str())
        .bind(now)
        .bind(now - IDEMPOTENCY_TTL_MS)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
        if claimed.is_none() {
            let row = sqlx::query("SELECT trace_id FROM idempotency_keys WHERE tenant_id = $1 AND agent_id = $2 AND key = $3")
                .bind(tenant)
                .bind(call.agent.0)
                .bind(key.as_str())
                .fetch_one(&mut *conn)
                .await
                .map_err(db_err)?;
            return Err(duplicate(&row)?);
        }
    }
    sqlx::query(
        "INSERT INTO calls (id, chain_id, attempt, tenant_id, agent_id, status, immediate, customer_phone, \
         from_phone, parameters, metadata, retry_context, scheduled_for, due_at, trace_id, results, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(id.as_str())
    .bind(conversation_id.chain.to_string())
    .bind(i64::from(conversation_id.attempt))
    .bind(tenant)
    .bind(call.agent.0)
    .bind(status.as_str())
    .bind(i64::from(immediate))
    .bind(call.customer_phone.as_str())
    .bind(from_phone)
    .bind(parameters)
    .bind(call.metadata.clone())
    .bind(retry_context)
    .bind(call.scheduled_for.map(|m| m.0))
    .bind(due_at)
    .bind(trace.as_str())
    .bind(results)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    insert_event(conn, &id, tenant, Millis(now), status, None).await?;
    Ok(AcceptedCall {
        conversation_id,
        status,
        trace_id: call.trace_id,
    })
}

fn duplicate(row: &sqlx::any::AnyRow) -> Result<CreateCallError, StoreError> {
    let first: String = get(row, "trace_id")?;
    let first_trace_id = first
        .parse::<TraceId>()
        .map_err(|_| rows::corrupt("idempotency_keys.trace_id"))?;
    Ok(CreateCallError::DuplicateRequest { first_trace_id })
}

pub(crate) async fn insert_event(
    conn: &mut AnyConnection,
    call_id: &str,
    tenant: i64,
    at: Millis,
    status: CallStatus,
    detail: Option<String>,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO call_events (call_id, tenant_id, at, status, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(call_id)
        .bind(tenant)
        .bind(at.0)
        .bind(status.as_str())
        .bind(detail)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_separate_their_parts() {
        assert_ne!(lock_key(&["ab", "c"]), lock_key(&["a", "bc"]));
        assert_eq!(
            lock_key(&["number", "1", "+91"]),
            lock_key(&["number", "1", "+91"])
        );
    }
}
