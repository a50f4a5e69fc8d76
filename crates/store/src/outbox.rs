//! The webhook outbox: events are written in the transaction of the state change that causes
//! them ([`enqueue_in`]); workers lease due deliveries, attempt them and record the outcome.
//!
//! Leasing follows the dispatcher's discipline: on PostgreSQL `UPDATE ... WHERE id IN (SELECT
//! ... FOR UPDATE SKIP LOCKED)` so nodes never take the same row, on SQLite the single writer
//! connection serialises leases. A lease that is not settled before it ends (the worker died)
//! makes the delivery leasable again, by any node, with the same `event_id`.

use crate::exec::{query, Exec};
use crate::gate::Work;
use crate::rows::{get, json};
use crate::{db_err, encode_err, json_ids, json_rows, placeholders, Backend, SqlStore};
use domain::store::StoreError;
use domain::webhooks::{
    AttemptResult, DeliveryId, LeaseRequest, LeasedDelivery, NextState, OutboxEvent, OutboxStats,
    WebhookTargetId,
};
use domain::{Millis, TenantId};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use std::collections::{HashMap, HashSet};

/// `last_error` of deliveries failed because their target went away or was switched off.
pub(crate) const TARGET_DEACTIVATED: &str = "webhook target deactivated";

/// Writes `event` and one pending delivery, due at the event's creation time, per active target
/// of the event's agent subscribed to its type. Runs inside the caller's transaction; returns the
/// number of deliveries created.
pub(crate) async fn enqueue_in<E: Exec>(
    conn: &mut E,
    backend: Backend,
    event: &OutboxEvent,
) -> Result<u64, StoreError> {
    insert_event(conn, event).await?;
    // On PostgreSQL a concurrent delete or deactivation of a target waits for this transaction,
    // and then fails the deliveries written here instead of missing them.
    let lock = if backend == Backend::Postgres {
        " FOR SHARE"
    } else {
        ""
    };
    let targets = query(&format!(
        "SELECT id, events FROM webhook_targets \
         WHERE tenant_id = $1 AND agent_id = $2 AND active = 1 ORDER BY id{lock}"
    ))
    .bind(event.tenant.0)
    .bind(event.agent.0)
    .fetch_all(&mut *conn)
    .await?;
    let mut created = 0;
    for row in &targets {
        let events: String = get(row, "events")?;
        let events: Vec<String> = json(&events, "webhook_targets.events")?;
        if events.contains(&event.event_type) {
            insert_delivery(conn, event, WebhookTargetId(get(row, "id")?)).await?;
            created += 1;
        }
    }
    Ok(created)
}

/// [`enqueue_in`] for many events of one agent at once, for a batch cancel that settles up to a
/// million calls in one transaction: the agent's targets are read once and the rows go in
/// multi-row INSERTs. Every event must belong to `tenant` and `agent`.
pub(crate) async fn enqueue_many_in<E: Exec>(
    conn: &mut E,
    backend: Backend,
    tenant: TenantId,
    agent: domain::AgentId,
    events: &[OutboxEvent],
) -> Result<u64, StoreError> {
    // 8 binds per event row, 6 per delivery row: well under either backend's bind limit.
    const ROWS: usize = 500;
    if events.is_empty() {
        return Ok(0);
    }
    let lock = if backend == Backend::Postgres {
        " FOR SHARE"
    } else {
        ""
    };
    let mut subscribed = Vec::new();
    for row in &query(&format!(
        "SELECT id, events FROM webhook_targets \
         WHERE tenant_id = $1 AND agent_id = $2 AND active = 1 ORDER BY id{lock}"
    ))
    .bind(tenant.0)
    .bind(agent.0)
    .fetch_all(&mut *conn)
    .await?
    {
        let types: Vec<String> = json(&get::<String>(row, "events")?, "webhook_targets.events")?;
        subscribed.push((WebhookTargetId(get(row, "id")?), types));
    }
    let mut created = 0u64;
    for chunk in events.chunks(ROWS) {
        let mut sql = String::from(
            "INSERT INTO outbox_events \
             (event_id, tenant_id, agent_id, conversation_id, chain_id, event_type, payload, created_at) VALUES ",
        );
        for i in 0..chunk.len() {
            let p = i * 8;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("({})", placeholders(p + 1, 8)));
        }
        let mut q = query(&sql);
        for e in chunk {
            q = q
                .bind(&e.event_id)
                .bind(e.tenant.0)
                .bind(e.agent.0)
                .bind(e.conversation_id.as_deref())
                .bind(&e.chain_id)
                .bind(&e.event_type)
                .bind(e.payload.to_string())
                .bind(e.created_at.0);
        }
        q.execute(&mut *conn).await?;
        for (target, types) in &subscribed {
            let due: Vec<&OutboxEvent> = chunk
                .iter()
                .filter(|e| types.contains(&e.event_type))
                .collect();
            if due.is_empty() {
                continue;
            }
            let mut sql = String::from(
                "INSERT INTO webhook_deliveries \
                 (tenant_id, event_id, target_id, chain_id, conversation_id, status, attempts, \
                  next_attempt_at, created_at, updated_at) VALUES ",
            );
            for i in 0..due.len() {
                let p = i * 6;
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, 'pending', 0, ${}, ${}, ${})",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5,
                    p + 6,
                    p + 6,
                    p + 6
                ));
            }
            let mut q = query(&sql);
            for e in &due {
                q = q
                    .bind(e.tenant.0)
                    .bind(&e.event_id)
                    .bind(target.0)
                    .bind(&e.chain_id)
                    .bind(e.conversation_id.as_deref())
                    .bind(e.created_at.0);
            }
            q.execute(&mut *conn).await?;
            created += due.len() as u64;
        }
    }
    Ok(created)
}

/// Writes `event` for one target only, whatever it subscribed to (`webhook.test`).
pub(crate) async fn enqueue_for_target_in<E: Exec>(
    conn: &mut E,
    event: &OutboxEvent,
    target: WebhookTargetId,
) -> Result<(), StoreError> {
    insert_event(conn, event).await?;
    insert_delivery(conn, event, target).await
}

async fn insert_event<E: Exec>(conn: &mut E, event: &OutboxEvent) -> Result<(), StoreError> {
    query(
        "INSERT INTO outbox_events \
         (event_id, tenant_id, agent_id, conversation_id, chain_id, event_type, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&event.event_id)
    .bind(event.tenant.0)
    .bind(event.agent.0)
    .bind(event.conversation_id.as_deref())
    .bind(&event.chain_id)
    .bind(&event.event_type)
    .bind(event.payload.to_string())
    .bind(event.created_at.0)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn insert_delivery<E: Exec>(
    conn: &mut E,
    event: &OutboxEvent,
    target: WebhookTargetId,
) -> Result<(), StoreError> {
    query(
        "INSERT INTO webhook_deliveries \
         (tenant_id, event_id, target_id, chain_id, conversation_id, status, attempts, \
          next_attempt_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6)",
    )
    .bind(event.tenant.0)
    .bind(&event.event_id)
    .bind(target.0)
    .bind(&event.chain_id)
    .bind(event.conversation_id.as_deref())
    .bind(event.created_at.0)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Fails every pending delivery of a target that was deleted or deactivated: none of them could
/// ever be leased, and leaving them pending would inflate the outbox depth forever.
pub(crate) async fn fail_pending_of_target(
    conn: &mut AnyConnection,
    target: WebhookTargetId,
    reason: &str,
    now: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, \
         lease_owner = NULL, lease_until = NULL, last_error = $1, updated_at = $2 \
         WHERE target_id = $3 AND status = 'pending'",
    )
    .bind(reason)
    .bind(now.0)
    .bind(target.0)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

fn leased(row: &AnyRow) -> Result<LeasedDelivery, StoreError> {
    let previous: Option<String> = get(row, "previous_secret")?;
    let until: Option<i64> = get(row, "previous_secret_until")?;
    Ok(LeasedDelivery {
        id: DeliveryId(get(row, "id")?),
        tenant: TenantId(get(row, "tenant_id")?),
        target: WebhookTargetId(get(row, "target_id")?),
        event_id: get(row, "event_id")?,
        event_type: get(row, "event_type")?,
        payload: get(row, "payload")?,
        attempts: u32::try_from(get::<i64>(row, "attempts")?).unwrap_or(u32::MAX),
        url: get(row, "url")?,
        secret: get(row, "secret")?,
        previous_secret: previous.zip(until.map(Millis)),
        include_transcript: get::<i64>(row, "include_transcript")? != 0,
        include_recording_url: get::<i64>(row, "include_recording_url")? != 0,
    })
}

fn lease_ms(lease: &LeaseRequest<'_>) -> i64 {
    i64::try_from(lease.lease_for.as_millis()).unwrap_or(i64::MAX)
}

async fn insert_attempts(
    conn: &mut AnyConnection,
    backend: Backend,
    results: &[AttemptResult],
) -> Result<(), StoreError> {
    let rows: Vec<_> = results
        .iter()
        .map(|r| {
            let a = &r.attempt;
            (
                r.delivery.0,
                a.at.0,
                a.http_status.map(i64::from),
                a.error.as_deref(),
                i64::try_from(a.duration_ms).unwrap_or(i64::MAX),
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO webhook_attempts (delivery_id, at, http_status, error, duration_ms) \
         SELECT column1, column2, column3, column4, column5 FROM {} AS v",
        json_rows(
            backend,
            1,
            &["bigint", "bigint", "bigint", "text", "bigint"]
        )
    );
    sqlx::query(&sql)
        .bind(serde_json::to_string(&rows).map_err(encode_err)?)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Applies each result's next state while `owner` still holds the lease; returns the settled
/// deliveries with their targets.
async fn settle(
    conn: &mut AnyConnection,
    backend: Backend,
    owner: &str,
    results: &[&AttemptResult],
) -> Result<Vec<(i64, i64)>, StoreError> {
    let rows: Vec<_> = results
        .iter()
        .map(|r| {
            let (status, next_at) = match r.next {
                NextState::Delivered => ("delivered", None),
                NextState::RetryAt(at) => ("pending", Some(at.0)),
                NextState::Failed | NextState::FailedAndDeactivate => ("failed", None),
            };
            let a = &r.attempt;
            (
                r.delivery.0,
                status,
                next_at,
                a.http_status.map(i64::from),
                a.error.as_deref(),
                a.at.0,
            )
        })
        .collect();
    let sql = format!(
        "UPDATE webhook_deliveries SET status = v.column2, attempts = attempts + 1, \
         next_attempt_at = v.column3, lease_owner = NULL, lease_until = NULL, \
         last_status = v.column4, last_error = v.column5, updated_at = v.column6 \
         FROM {} AS v \
         WHERE webhook_deliveries.id = v.column1 AND webhook_deliveries.lease_owner = $1 \
         AND webhook_deliveries.status = 'pending' RETURNING id, target_id",
        json_rows(
            backend,
            2,
            &["bigint", "text", "bigint", "bigint", "text", "bigint"]
        )
    );
    sqlx::query(&sql)
        .bind(owner)
        .bind(serde_json::to_string(&rows).map_err(encode_err)?)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?
        .iter()
        .map(|row| Ok((get::<i64>(row, "id")?, get::<i64>(row, "target_id")?)))
        .collect()
}

impl SqlStore {
    /// Like [`domain::webhooks::WebhookStore::enqueue_event`] for many events in one
    /// transaction (tests and the benchmark enqueue bursts this way).
    pub async fn enqueue_events(&self, events: &[OutboxEvent]) -> Result<u64, StoreError> {
        let mut tx = self.background_tx(Work::Outbox).await?;
        let mut created = 0;
        for event in events {
            created += enqueue_in(&mut tx, self.backend, event).await?;
        }
        tx.commit().await?;
        Ok(created)
    }

    pub(crate) async fn lease_deliveries(
        &self,
        lease: LeaseRequest<'_>,
        target_caps: &[(WebhookTargetId, u32)],
    ) -> Result<Vec<LeasedDelivery>, StoreError> {
        if lease.limit == 0 || lease.per_target == 0 {
            return Ok(Vec::new());
        }
        let skip_locked = if self.backend == Backend::Postgres {
            "FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        // A target with a cap of its own (one that keeps failing) gets only that many leases.
        let cap = if target_caps.is_empty() {
            "$4".to_owned()
        } else {
            let arms = (0..target_caps.len())
                .map(|i| format!("WHEN ${} THEN ${}", 6 + 2 * i, 7 + 2 * i))
                .collect::<Vec<_>>()
                .join(" ");
            format!("CASE c.target_id {arms} ELSE $4 END")
        };
        // Candidates are due, unleased, of an active target, first of their chain to that target,
        // and ranked per target so that with the target's unexpired leases they stay within the
        // per-target cap. The due ones are picked first (`MATERIALIZED`) so that both engines
        // find them by the due index, not by walking every pending delivery in target order for
        // the ranking: deliveries waiting for a retry, however many, cost nothing here. The
        // window function sits a level below the locking SELECT because PostgreSQL refuses
        // FOR UPDATE next to window functions. The locking level repeats the row conditions
        // because PostgreSQL re-checks only those on a row another node has just leased; the
        // candidates come from a snapshot taken before that lease.
        let sql = format!(
            "UPDATE webhook_deliveries SET lease_owner = $1, lease_until = $2 WHERE id IN ( \
               SELECT d.id FROM webhook_deliveries d WHERE d.id IN ( \
                 WITH due AS MATERIALIZED ( \
                   SELECT p.id AS id, p.target_id AS target_id, p.next_attempt_at AS next_attempt_at \
                   FROM webhook_deliveries p JOIN webhook_targets t ON t.id = p.target_id AND t.active = 1 \
                   WHERE p.status = 'pending' AND p.next_attempt_at <= $3 \
                     AND (p.lease_until IS NULL OR p.lease_until <= $3) \
                     AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.target_id = p.target_id \
                        AND e.chain_id = p.chain_id AND e.status = 'pending' AND e.id < p.id)) \
                 SELECT c.id FROM ( \
                   SELECT due.id AS id, due.target_id AS target_id, \
                     ROW_NUMBER() OVER (PARTITION BY due.target_id ORDER BY due.next_attempt_at, due.id) AS rank, \
                     COALESCE(b.busy, 0) AS busy \
                   FROM due LEFT JOIN (SELECT l.target_id AS target_id, COUNT(*) AS busy FROM webhook_deliveries l \
                     WHERE l.status = 'pending' AND l.lease_until IS NOT NULL AND l.lease_until > $3 \
                     GROUP BY l.target_id) b ON b.target_id = due.target_id \
                 ) c WHERE c.rank + c.busy <= {cap}) \
               AND d.status = 'pending' AND (d.lease_until IS NULL OR d.lease_until <= $3) \
               ORDER BY d.next_attempt_at, d.id LIMIT $5 {skip_locked}) \
             RETURNING id"
        );
        let now = lease.now.0;
        // Nothing due, no write: the worker wakes for every event a settlement writes, and
        // where no target takes them each wake found nothing, yet took a turn at SQLite's one
        // writer (a third of all background turns while the node dialled 600 calls/s). Read on
        // the read pool, by the due index.
        let due = sqlx::query(
            "SELECT 1 AS one FROM webhook_deliveries WHERE status = 'pending' \
             AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until <= $1) LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let mut query = sqlx::query(&sql)
            .bind(lease.owner)
            .bind(now.saturating_add(lease_ms(&lease)))
            .bind(now)
            .bind(i64::from(lease.per_target))
            .bind(i64::from(lease.limit));
        for (target, cap) in target_caps {
            query = query.bind(target.0).bind(i64::from(*cap));
        }
        let mut tx = self.background_tx(Work::Outbox).await?;
        let ids: Vec<i64> = query
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?
            .iter()
            .map(|row| get::<i64>(row, "id"))
            .collect::<Result<_, _>>()?;
        if ids.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let select = format!(
            "SELECT d.id AS id, d.tenant_id AS tenant_id, d.target_id AS target_id, \
             d.event_id AS event_id, d.attempts AS attempts, o.event_type AS event_type, \
             o.payload AS payload, t.url AS url, t.secret AS secret, \
             t.previous_secret AS previous_secret, t.previous_secret_until AS previous_secret_until, \
             t.include_transcript AS include_transcript, t.include_recording_url AS include_recording_url \
             FROM webhook_deliveries d JOIN outbox_events o ON o.event_id = d.event_id \
             JOIN webhook_targets t ON t.id = d.target_id \
             WHERE d.id IN ({}) ORDER BY d.next_attempt_at, d.id",
            json_ids(self.backend, 1)
        );
        let rows = sqlx::query(&select)
            .bind(serde_json::to_string(&ids).map_err(encode_err)?)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                let d = leased(r)?;
                Ok(LeasedDelivery {
                    secret: self.open_opt(Some(d.secret))?.unwrap_or_default(),
                    previous_secret: match d.previous_secret {
                        Some((s, until)) => self.open_opt(Some(s))?.map(|s| (s, until)),
                        None => None,
                    },
                    ..d
                })
            })
            .collect()
    }

    /// Records attempts in a handful of multi-row statements instead of two per attempt: the
    /// worker commits whatever finished while the previous commit was in flight (group commit),
    /// and on SQLite every statement is a hop to the connection's thread.
    pub(crate) async fn record_attempt_results(
        &self,
        owner: &str,
        results: &[AttemptResult],
    ) -> Result<u64, StoreError> {
        if results.is_empty() {
            return Ok(0);
        }
        let mut tx = self.background_tx(Work::Outbox).await?;
        insert_attempts(&mut tx, self.backend, results).await?;
        let mut settled: HashMap<i64, i64> = HashMap::with_capacity(results.len());
        // A delivery appears twice only when its lease lapsed and this worker leased it again
        // before the first result was written; each pass settles one result per delivery, in
        // the order the results came, as one UPDATE per result would.
        let mut rest: Vec<&AttemptResult> = results.iter().collect();
        while !rest.is_empty() {
            let mut seen = HashSet::with_capacity(rest.len());
            let (pass, later): (Vec<&AttemptResult>, Vec<&AttemptResult>) =
                rest.into_iter().partition(|r| seen.insert(r.delivery.0));
            settled.extend(settle(&mut tx, self.backend, owner, &pass).await?);
            rest = later;
        }
        for result in results {
            if !settled.contains_key(&result.delivery.0) {
                tracing::warn!(delivery = %result.delivery, "webhook delivery lease lost before its attempt was recorded");
            }
        }
        for result in results {
            if result.next != NextState::FailedAndDeactivate {
                continue;
            }
            let Some(&target) = settled.get(&result.delivery.0) else {
                continue;
            };
            let target = WebhookTargetId(target);
            let at = result.attempt.at;
            sqlx::query("UPDATE webhook_targets SET active = 0, updated_at = $1 WHERE id = $2")
                .bind(at.0)
                .bind(target.0)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            fail_pending_of_target(&mut tx, target, TARGET_DEACTIVATED, at).await?;
            tracing::warn!(%target, "webhook target deactivated: it answered 410 Gone");
        }
        tx.commit().await?;
        Ok(u64::try_from(settled.len()).unwrap_or(u64::MAX))
    }

    /// Gives leases back before they end (a worker stopping, or one that cannot start an
    /// attempt in time), so any worker can take the deliveries at once.
    pub(crate) async fn release_delivery_leases(
        &self,
        owner: &str,
        ids: &[DeliveryId],
    ) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        let sql = format!(
            "UPDATE webhook_deliveries SET lease_owner = NULL, lease_until = NULL \
             WHERE lease_owner = $1 AND status = 'pending' AND id IN ({})",
            json_ids(self.backend, 2)
        );
        let mut conn = self.background_conn(Work::Outbox).await?;
        Ok(sqlx::query(&sql)
            .bind(owner)
            .bind(serde_json::to_string(&ids).map_err(encode_err)?)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?
            .rows_affected())
    }

    pub(crate) async fn next_delivery_due(
        &self,
        now: Millis,
    ) -> Result<Option<Millis>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(CASE WHEN d.lease_until > $1 THEN d.lease_until ELSE d.next_attempt_at END) AS due \
             FROM webhook_deliveries d JOIN webhook_targets t ON t.id = d.target_id AND t.active = 1 \
             WHERE d.status = 'pending'",
        )
        .bind(now.0)
        .fetch_one(&self.read)
        .await
        .map_err(db_err)?;
        Ok(get::<Option<i64>>(&row, "due")?.map(Millis))
    }

    pub(crate) async fn outbox_figures(&self) -> Result<OutboxStats, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM webhook_deliveries \
             WHERE status = 'pending'",
        )
        .fetch_one(&self.read)
        .await
        .map_err(db_err)?;
        Ok(OutboxStats {
            depth: u64::try_from(get::<i64>(&row, "n")?).unwrap_or(0),
            oldest_pending_created_at: get::<Option<i64>>(&row, "oldest")?.map(Millis),
        })
    }
}
