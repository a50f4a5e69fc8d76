//! Webhook targets and the delivery log, and the `WebhookStore` port on SQL.

use crate::outbox::{enqueue_for_target_in, fail_pending_of_target, TARGET_DEACTIVATED};
use crate::rows::{corrupt, get, json};
use crate::{db_err, is_unique_violation, Backend, SqlStore};
use domain::store::{Conflict, Listed, ManageError, Page, StoreError};
use domain::webhooks::{
    AttemptRecord, AttemptResult, DeliveryFilter, DeliveryId, DeliveryRecord, DeliveryStatus,
    LeaseRequest, LeasedDelivery, NewWebhookTarget, OutboxEvent, OutboxStats, WebhookStore,
    WebhookTarget, WebhookTargetId, WebhookTargetPatch, MAX_TARGETS_PER_AGENT, ROTATION_OVERLAP_MS,
};
use domain::{AgentId, Millis, TenantId};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use std::collections::HashMap;

/// `last_error` of the pending deliveries of a deleted target.
const TARGET_DELETED: &str = "webhook target deleted";

const TARGET_COLUMNS: &str = "id, tenant_id, agent_id, name, url, events, include_transcript, \
    include_recording_url, active, created_at, updated_at";

const DELIVERY_COLUMNS: &str = "d.id AS id, d.event_id AS event_id, o.event_type AS event_type, \
    d.target_id AS target_id, d.conversation_id AS conversation_id, d.status AS status, \
    d.next_attempt_at AS next_attempt_at, d.last_status AS last_status, d.last_error AS last_error, \
    d.created_at AS created_at, d.updated_at AS updated_at";

fn flag(b: bool) -> i64 {
    i64::from(b)
}

fn target(row: &AnyRow) -> Result<WebhookTarget, StoreError> {
    let events: String = get(row, "events")?;
    Ok(WebhookTarget {
        id: WebhookTargetId(get(row, "id")?),
        tenant: TenantId(get(row, "tenant_id")?),
        agent: AgentId(get(row, "agent_id")?),
        name: get(row, "name")?,
        url: get(row, "url")?,
        events: json(&events, "webhook_targets.events")?,
        include_transcript: get::<i64>(row, "include_transcript")? != 0,
        include_recording_url: get::<i64>(row, "include_recording_url")? != 0,
        active: get::<i64>(row, "active")? != 0,
        created_at: Millis(get(row, "created_at")?),
        updated_at: Millis(get(row, "updated_at")?),
    })
}

fn http_status(v: Option<i64>) -> Option<u16> {
    v.and_then(|n| u16::try_from(n).ok())
}

fn delivery(row: &AnyRow) -> Result<DeliveryRecord, StoreError> {
    let status: String = get(row, "status")?;
    Ok(DeliveryRecord {
        id: DeliveryId(get(row, "id")?),
        event_id: get(row, "event_id")?,
        event_type: get(row, "event_type")?,
        target: WebhookTargetId(get(row, "target_id")?),
        conversation_id: get(row, "conversation_id")?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| corrupt("webhook_deliveries.status"))?,
        next_attempt_at: get::<Option<i64>>(row, "next_attempt_at")?.map(Millis),
        last_status: http_status(get(row, "last_status")?),
        last_error: get(row, "last_error")?,
        created_at: Millis(get(row, "created_at")?),
        updated_at: Millis(get(row, "updated_at")?),
        attempts: Vec::new(),
    })
}

fn events_json(events: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(events).map_err(|e| StoreError::Database(e.into()))
}

/// Whether the agent is the tenant's and not retired. With `lock` (PostgreSQL, inside a writing
/// transaction) the row stays locked until the transaction ends, which serialises the
/// five-targets check per agent across nodes.
async fn agent_exists(
    conn: &mut AnyConnection,
    lock: bool,
    tenant: TenantId,
    agent: AgentId,
) -> Result<bool, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    Ok(sqlx::query(&format!(
        "SELECT id FROM agents WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL{lock}"
    ))
    .bind(tenant.0)
    .bind(agent.0)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?
    .is_some())
}

async fn name_taken(
    conn: &mut AnyConnection,
    agent: AgentId,
    name: &str,
    except: Option<WebhookTargetId>,
) -> Result<bool, StoreError> {
    Ok(
        sqlx::query(
            "SELECT id FROM webhook_targets WHERE agent_id = $1 AND name = $2 AND id <> $3",
        )
        .bind(agent.0)
        .bind(name)
        .bind(except.map_or(0, |id| id.0))
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?
        .is_some(),
    )
}

impl SqlStore {
    async fn attach_attempts(&self, records: &mut [DeliveryRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let marks = (1..=records.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT delivery_id, at, http_status, error, duration_ms FROM webhook_attempts \
             WHERE delivery_id IN ({marks}) ORDER BY delivery_id, id"
        );
        let mut query = sqlx::query_as::<_, (i64, i64, Option<i64>, Option<String>, i64)>(&sql);
        for r in records.iter() {
            query = query.bind(r.id.0);
        }
        let rows = query.fetch_all(&self.read).await.map_err(db_err)?;
        let mut by_delivery: HashMap<i64, Vec<AttemptRecord>> = HashMap::new();
        for (delivery, at, status, error, duration) in rows {
            by_delivery
                .entry(delivery)
                .or_default()
                .push(AttemptRecord {
                    at: Millis(at),
                    http_status: http_status(status),
                    error,
                    duration_ms: u64::try_from(duration).unwrap_or(0),
                });
        }
        for r in records.iter_mut() {
            r.attempts = by_delivery.remove(&r.id.0).unwrap_or_default();
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl WebhookStore for SqlStore {
    async fn create_webhook_target(
        &self,
        tenant: TenantId,
        agent: AgentId,
        new: &NewWebhookTarget,
        now: Millis,
    ) -> Result<WebhookTarget, ManageError> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        if !agent_exists(&mut tx, self.backend == Backend::Postgres, tenant, agent).await? {
            return Err(ManageError::NotFound("agent"));
        }
        if name_taken(&mut tx, agent, &new.name, None).await? {
            return Err(ManageError::Conflict(Conflict::TargetNameTaken));
        }
        let count = sqlx::query("SELECT COUNT(*) AS n FROM webhook_targets WHERE agent_id = $1")
            .bind(agent.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        if u64::try_from(get::<i64>(&count, "n")?).unwrap_or(0) >= MAX_TARGETS_PER_AGENT {
            return Err(ManageError::Conflict(Conflict::TooManyTargets));
        }
        let row = sqlx::query(&format!(
            "INSERT INTO webhook_targets (tenant_id, agent_id, name, url, secret, events, \
             include_transcript, include_recording_url, active, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING {TARGET_COLUMNS}"
        ))
        .bind(tenant.0)
        .bind(agent.0)
        .bind(&new.name)
        .bind(&new.url)
        .bind(self.seal_opt(Some(&new.secret))?)
        .bind(events_json(&new.events)?)
        .bind(flag(new.include_transcript))
        .bind(flag(new.include_recording_url))
        .bind(flag(new.active))
        .bind(now.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                ManageError::Conflict(Conflict::TargetNameTaken)
            } else {
                ManageError::Store(db_err(e))
            }
        })?;
        let created = target(&row)?;
        tx.commit().await.map_err(db_err)?;
        Ok(created)
    }

    async fn list_webhook_targets(
        &self,
        tenant: TenantId,
        agent: AgentId,
    ) -> Result<Vec<WebhookTarget>, ManageError> {
        let mut conn = self.read.acquire().await.map_err(db_err)?;
        if !agent_exists(&mut conn, false, tenant, agent).await? {
            return Err(ManageError::NotFound("agent"));
        }
        let rows = sqlx::query(&format!(
            "SELECT {TARGET_COLUMNS} FROM webhook_targets WHERE tenant_id = $1 AND agent_id = $2 ORDER BY id"
        ))
        .bind(tenant.0)
        .bind(agent.0)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?;
        Ok(rows.iter().map(target).collect::<Result<_, _>>()?)
    }

    async fn get_webhook_target(
        &self,
        tenant: TenantId,
        agent: AgentId,
        id: WebhookTargetId,
    ) -> Result<Option<WebhookTarget>, StoreError> {
        sqlx::query(&format!(
            "SELECT {TARGET_COLUMNS} FROM webhook_targets WHERE tenant_id = $1 AND agent_id = $2 AND id = $3"
        ))
        .bind(tenant.0)
        .bind(agent.0)
        .bind(id.0)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?
        .map(|r| target(&r))
        .transpose()
    }

    async fn update_webhook_target(
        &self,
        tenant: TenantId,
        agent: AgentId,
        id: WebhookTargetId,
        patch: &WebhookTargetPatch,
        now: Millis,
    ) -> Result<WebhookTarget, ManageError> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let lock = if self.backend == Backend::Postgres {
            " FOR UPDATE"
        } else {
            ""
        };
        let current = sqlx::query(&format!(
            "SELECT {TARGET_COLUMNS} FROM webhook_targets WHERE tenant_id = $1 AND agent_id = $2 AND id = $3{lock}"
        ))
        .bind(tenant.0)
        .bind(agent.0)
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .map(|r| target(&r))
        .transpose()?
        .ok_or(ManageError::NotFound("webhook target"))?;
        if let Some(name) = &patch.name {
            if name_taken(&mut tx, agent, name, Some(id)).await? {
                return Err(ManageError::Conflict(Conflict::TargetNameTaken));
            }
        }
        let active = patch.active.unwrap_or(current.active);
        let row = sqlx::query(&format!(
            "UPDATE webhook_targets SET name = $1, url = $2, events = $3, include_transcript = $4, \
             include_recording_url = $5, active = $6, updated_at = $7 WHERE id = $8 RETURNING {TARGET_COLUMNS}"
        ))
        .bind(patch.name.as_ref().unwrap_or(&current.name))
        .bind(patch.url.as_ref().unwrap_or(&current.url))
        .bind(events_json(patch.events.as_ref().unwrap_or(&current.events))?)
        .bind(flag(patch.include_transcript.unwrap_or(current.include_transcript)))
        .bind(flag(
            patch
                .include_recording_url
                .unwrap_or(current.include_recording_url),
        ))
        .bind(flag(active))
        .bind(now.0)
        .bind(id.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                ManageError::Conflict(Conflict::TargetNameTaken)
            } else {
                ManageError::Store(db_err(e))
            }
        })?;
        if current.active && !active {
            fail_pending_of_target(&mut tx, id, TARGET_DEACTIVATED, now).await?;
        }
        let updated = target(&row)?;
        tx.commit().await.map_err(db_err)?;
        Ok(updated)
    }

    async fn delete_webhook_target(
        &self,
        tenant: TenantId,
        agent: AgentId,
        id: WebhookTargetId,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let deleted = sqlx::query(
            "DELETE FROM webhook_targets WHERE tenant_id = $1 AND agent_id = $2 AND id = $3 RETURNING id",
        )
        .bind(tenant.0)
        .bind(agent.0)
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .is_some();
        if deleted {
            fail_pending_of_target(&mut tx, id, TARGET_DELETED, now).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(deleted)
    }

    async fn rotate_webhook_secret(
        &self,
        tenant: TenantId,
        agent: AgentId,
        id: WebhookTargetId,
        secret: &str,
        now: Millis,
    ) -> Result<WebhookTarget, ManageError> {
        // Both engines evaluate every SET expression against the old row, so `previous_secret`
        // receives the secret being replaced.
        let row = sqlx::query(&format!(
            "UPDATE webhook_targets SET previous_secret = secret, previous_secret_until = $1, \
             secret = $2, updated_at = $3 WHERE tenant_id = $4 AND agent_id = $5 AND id = $6 \
             RETURNING {TARGET_COLUMNS}"
        ))
        .bind(now.0.saturating_add(ROTATION_OVERLAP_MS))
        .bind(self.seal_opt(Some(secret))?)
        .bind(now.0)
        .bind(tenant.0)
        .bind(agent.0)
        .bind(id.0)
        .fetch_optional(&self.write)
        .await
        .map_err(db_err)?
        .ok_or(ManageError::NotFound("webhook target"))?;
        Ok(target(&row)?)
    }

    async fn enqueue_event(&self, event: &OutboxEvent) -> Result<u64, StoreError> {
        self.enqueue_events(std::slice::from_ref(event)).await
    }

    async fn enqueue_test_event(
        &self,
        target: WebhookTargetId,
        event: &OutboxEvent,
    ) -> Result<DeliveryId, ManageError> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let active = sqlx::query(
            "SELECT active FROM webhook_targets WHERE tenant_id = $1 AND agent_id = $2 AND id = $3",
        )
        .bind(event.tenant.0)
        .bind(event.agent.0)
        .bind(target.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .ok_or(ManageError::NotFound("webhook target"))?;
        if get::<i64>(&active, "active")? == 0 {
            return Err(ManageError::Conflict(Conflict::TargetInactive));
        }
        enqueue_for_target_in(&mut tx, event, target).await?;
        let row = sqlx::query("SELECT id FROM webhook_deliveries WHERE event_id = $1")
            .bind(&event.event_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        let id = DeliveryId(get(&row, "id")?);
        tx.commit().await.map_err(db_err)?;
        Ok(id)
    }

    async fn list_deliveries(
        &self,
        tenant: TenantId,
        filter: &DeliveryFilter,
        page: Page,
    ) -> Result<Listed<DeliveryRecord>, StoreError> {
        let mut clauses = vec!["d.tenant_id = $1".to_string()];
        let mut next = 2;
        let mut push = |column: &str| {
            clauses.push(format!("{column} = ${next}"));
            next += 1;
        };
        if filter.conversation_id.is_some() {
            push("d.conversation_id");
        }
        if filter.target.is_some() {
            push("d.target_id");
        }
        if filter.status.is_some() {
            push("d.status");
        }
        let filter_sql = clauses.join(" AND ");
        let items_sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d \
             JOIN outbox_events o ON o.event_id = d.event_id \
             WHERE {filter_sql} ORDER BY d.id DESC LIMIT ${next} OFFSET ${}",
            next + 1
        );
        let count_sql =
            format!("SELECT COUNT(*) AS n FROM webhook_deliveries d WHERE {filter_sql}");
        let mut items = sqlx::query(&items_sql).bind(tenant.0);
        let mut count = sqlx::query(&count_sql).bind(tenant.0);
        if let Some(c) = &filter.conversation_id {
            items = items.bind(c.clone());
            count = count.bind(c.clone());
        }
        if let Some(t) = filter.target {
            items = items.bind(t.0);
            count = count.bind(t.0);
        }
        if let Some(s) = filter.status {
            items = items.bind(s.as_str());
            count = count.bind(s.as_str());
        }
        let mut records = items
            .bind(i64::from(page.limit))
            .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
            .fetch_all(&self.read)
            .await
            .map_err(db_err)?
            .iter()
            .map(delivery)
            .collect::<Result<Vec<_>, _>>()?;
        self.attach_attempts(&mut records).await?;
        let total: i64 = get(&count.fetch_one(&self.read).await.map_err(db_err)?, "n")?;
        Ok(Listed {
            items: records,
            total: u64::try_from(total).unwrap_or(0),
        })
    }

    async fn get_delivery(
        &self,
        tenant: TenantId,
        id: DeliveryId,
    ) -> Result<Option<DeliveryRecord>, StoreError> {
        let Some(row) = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d \
             JOIN outbox_events o ON o.event_id = d.event_id WHERE d.tenant_id = $1 AND d.id = $2"
        ))
        .bind(tenant.0)
        .bind(id.0)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?
        else {
            return Ok(None);
        };
        let mut records = [delivery(&row)?];
        self.attach_attempts(&mut records).await?;
        let [record] = records;
        Ok(Some(record))
    }

    async fn retry_delivery(
        &self,
        tenant: TenantId,
        id: DeliveryId,
        now: Millis,
    ) -> Result<DeliveryRecord, ManageError> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let row = sqlx::query(
            "SELECT t.active AS active FROM webhook_deliveries d \
             LEFT JOIN webhook_targets t ON t.id = d.target_id \
             WHERE d.tenant_id = $1 AND d.id = $2",
        )
        .bind(tenant.0)
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .ok_or(ManageError::NotFound("webhook delivery"))?;
        if get::<Option<i64>>(&row, "active")?.unwrap_or(0) == 0 {
            return Err(ManageError::Conflict(Conflict::TargetInactive));
        }
        // A delivery being attempted right now (unexpired lease) is left to that attempt: making
        // it due again would send it twice at once.
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $1, \
             lease_owner = NULL, lease_until = NULL, updated_at = $1 \
             WHERE id = $2 AND (lease_until IS NULL OR lease_until <= $1)",
        )
        .bind(now.0)
        .bind(id.0)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        self.get_delivery(tenant, id)
            .await?
            .ok_or(ManageError::NotFound("webhook delivery"))
    }

    async fn lease_due(&self, lease: LeaseRequest<'_>) -> Result<Vec<LeasedDelivery>, StoreError> {
        self.lease_deliveries(lease, &[]).await
    }

    async fn lease_due_capped(
        &self,
        lease: LeaseRequest<'_>,
        target_caps: &[(WebhookTargetId, u32)],
    ) -> Result<Vec<LeasedDelivery>, StoreError> {
        self.lease_deliveries(lease, target_caps).await
    }

    async fn record_attempts(
        &self,
        owner: &str,
        results: &[AttemptResult],
    ) -> Result<u64, StoreError> {
        self.record_attempt_results(owner, results).await
    }

    async fn release_leases(&self, owner: &str, ids: &[DeliveryId]) -> Result<u64, StoreError> {
        self.release_delivery_leases(owner, ids).await
    }

    async fn next_delivery_due_at(&self, now: Millis) -> Result<Option<Millis>, StoreError> {
        self.next_delivery_due(now).await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.outbox_figures().await
    }
}
