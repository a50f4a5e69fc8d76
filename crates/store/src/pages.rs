//! `GET /v1/conversations` at any depth for what its first page costs (`domain::paging`).
//!
//! `conversation_marks` holds, per tenant (agent 0) and per tenant and agent, every `every`-th
//! listed conversation counted from the oldest: its position and its key `(created_at, id)`.
//! The marks are written by a background pass, never by `POST /v1/call`, so the write path pays
//! nothing for them. A mark is only taken over rows older than `horizon`: a PostgreSQL
//! transaction may commit a lower key after a higher one is visible, and nodes' clocks differ a
//! little; both are far inside the horizon. A batch upload's rows are written earlier than
//! they become listed: making them listed drops the marks at or after the batch's start
//! (`forget_from`), under the same lock the pass takes, and the pass writes them again.

use crate::batches::CALL_SHOWN;
use crate::gate::Work;
use crate::locks::{lock, LockKey};
use crate::rows::{self, get};
use crate::{db_err, Backend, SqlStore};
use domain::call::Conversation;
use domain::paging::{self, Mark};
use domain::store::{Listed, Page, StoreError};
use domain::{AgentId, Millis, TenantId};
use sqlx::AnyConnection;
use std::time::Duration;

/// How the marks are kept: a sane default, every value configurable.
#[derive(Debug, Clone, Copy)]
pub struct PageMarks {
    /// Rows between two marks: the most a deep page walks.
    pub every: u64,
    /// Rows newer than this are not marked yet (see the module's comment).
    pub horizon: Duration,
    /// Marks written per background transaction while catching up.
    pub per_transaction: u32,
}

impl Default for PageMarks {
    fn default() -> Self {
        Self {
            every: 256,
            horizon: Duration::from_secs(30),
            per_transaction: 16,
        }
    }
}

/// The key a mark holds: `(created_at, id)`, the list's order.
type Key = (i64, String);

/// The listed conversations of one scope: a tenant's (`agent` 0) or one agent's.
fn scope_filter(agent: i64) -> String {
    // `$2 = 0 OR agent_id = $2` would defeat the per-agent index on SQLite; two shapes instead.
    if agent != 0 {
        format!("tenant_id = $1 AND agent_id = $2 AND {CALL_SHOWN}")
    } else {
        format!("tenant_id = $1 AND $2 = 0 AND {CALL_SHOWN}")
    }
}

/// Rows after the key `($3, $4)` in list order. A row value, so that both columns bound the
/// index range: a batch's recipients share a few creation times, and `created_at >= $3 AND
/// (created_at > $3 OR id > $4)` walked every row of such a tie from its start.
const AFTER: &str = "(created_at, id) > ($3, $4)";

/// Before any row: the "mark" at position 0.
const START: (i64, &str) = (i64::MIN, "");

async fn last_mark(
    conn: &mut AnyConnection,
    tenant: i64,
    agent: i64,
    at_most: Option<u64>,
) -> Result<Option<Mark<Key>>, StoreError> {
    let cap = at_most.map_or(i64::MAX, |p| i64::try_from(p).unwrap_or(i64::MAX));
    let row = sqlx::query(
        "SELECT position, created_at, call_id FROM conversation_marks \
         WHERE tenant_id = $1 AND agent_id = $2 AND position <= $3 ORDER BY position DESC LIMIT 1",
    )
    .bind(tenant)
    .bind(agent)
    .bind(cap)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    row.map(|r| {
        let position: i64 = get(&r, "position")?;
        Ok(Mark {
            position: u64::try_from(position).map_err(|_| rows::corrupt("marks.position"))?,
            key: (get(&r, "created_at")?, get(&r, "call_id")?),
        })
    })
    .transpose()
}

fn key_of(mark: Option<&Mark<Key>>) -> (i64, &str) {
    mark.map_or(START, |m| (m.key.0, m.key.1.as_str()))
}

/// The scope's row count: its last mark's position plus the rows after it.
async fn total(conn: &mut AnyConnection, tenant: i64, agent: i64) -> Result<u64, StoreError> {
    let mark = last_mark(conn, tenant, agent, None).await?;
    let (at, id) = key_of(mark.as_ref());
    let row = sqlx::query(&format!(
        "SELECT COUNT(*) AS n FROM calls WHERE {} AND {AFTER}",
        scope_filter(agent)
    ))
    .bind(tenant)
    .bind(agent)
    .bind(at)
    .bind(id)
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err)?;
    let after: i64 = get(&row, "n")?;
    Ok(mark.map_or(0, |m| m.position) + u64::try_from(after).unwrap_or(0))
}

impl SqlStore {
    /// One newest-first page of a tenant's (or one agent's) conversations and their total, read
    /// in one snapshot so the page and the total agree.
    pub(crate) async fn list_conversations_page(
        &self,
        tenant: TenantId,
        agent: Option<AgentId>,
        page: Page,
    ) -> Result<Listed<Conversation>, StoreError> {
        let (t, a) = (tenant.0, agent.map_or(0, |a| a.0));
        let mut tx = self.read.begin().await.map_err(db_err)?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        let total = total(&mut tx, t, a).await?;
        let rows = if paging::near_the_new_end(page, self.page_marks.every) {
            sqlx::query(&format!(
                "SELECT {} FROM calls WHERE {} ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4",
                rows::CONVERSATION_COLUMNS,
                scope_filter(a)
            ))
            .bind(t)
            .bind(a)
            .bind(i64::from(page.limit))
            .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?
        } else if let Some(span) = paging::span(total, page) {
            let mark = last_mark(&mut tx, t, a, Some(span.from)).await?;
            let walk = paging::walk(span, mark.as_ref());
            let (at, id) = key_of(mark.as_ref());
            let mut oldest_first = sqlx::query(&format!(
                "SELECT {} FROM calls WHERE {} AND {AFTER} \
                 ORDER BY created_at ASC, id ASC LIMIT $5 OFFSET $6",
                rows::CONVERSATION_COLUMNS,
                scope_filter(a)
            ))
            .bind(t)
            .bind(a)
            .bind(at)
            .bind(id)
            .bind(i64::try_from(walk.take).unwrap_or(i64::MAX))
            .bind(i64::try_from(walk.skip).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            oldest_first.reverse();
            oldest_first
        } else {
            Vec::new()
        };
        tx.commit().await.map_err(db_err)?;
        Ok(Listed {
            items: rows
                .iter()
                .map(rows::conversation)
                .collect::<Result<_, _>>()?,
            total,
        })
    }

    /// Writes the marks that are due, for every tenant and agent; returns how many. Run by every
    /// node on a timer: each mark is written under the tenant's lock, after checking that the
    /// last mark is still the one it counted from, so nodes never write one twice.
    pub async fn mark_conversations(&self, now: Millis) -> Result<u64, StoreError> {
        let marks = self.page_marks;
        let horizon = now
            .0
            .saturating_sub(i64::try_from(marks.horizon.as_millis()).unwrap_or(i64::MAX));
        let scopes: Vec<(i64, i64)> = sqlx::query(
            "SELECT id AS tenant_id, 0 AS agent_id FROM tenants \
             UNION ALL SELECT tenant_id, id AS agent_id FROM agents",
        )
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| Ok((get(r, "tenant_id")?, get(r, "agent_id")?)))
        .collect::<Result<_, StoreError>>()?;
        let mut added = 0;
        for (tenant, agent) in scopes {
            while self.mark_due(tenant, agent, horizon).await? {
                match self.write_marks(tenant, agent, horizon).await? {
                    0 => break,
                    n => added += n,
                }
            }
        }
        Ok(added)
    }

    /// Whether the scope has a whole spacing of unmarked rows under the horizon (read only, so
    /// a pass over scopes with nothing to do writes nothing).
    async fn mark_due(&self, tenant: i64, agent: i64, horizon: i64) -> Result<bool, StoreError> {
        let mut conn = self.read.acquire().await.map_err(db_err)?;
        let mark = last_mark(&mut conn, tenant, agent, None).await?;
        let (at, id) = key_of(mark.as_ref());
        let found = sqlx::query(&format!(
            "SELECT 1 AS one FROM calls WHERE {} AND {AFTER} AND created_at < $5 \
             ORDER BY created_at ASC, id ASC LIMIT 1 OFFSET $6",
            scope_filter(agent)
        ))
        .bind(tenant)
        .bind(agent)
        .bind(at)
        .bind(id)
        .bind(horizon)
        .bind(self.every_less_one())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
        Ok(found.is_some())
    }

    fn every_less_one(&self) -> i64 {
        i64::try_from(self.page_marks.every.max(1) - 1).unwrap_or(i64::MAX)
    }

    /// Up to `per_transaction` marks in one background transaction; 0 when another node got
    /// there first or nothing is due after all. Each mark is one statement that reads the last
    /// mark itself: on SQLite a read before the write could see a snapshot the call writer has
    /// moved past, and the write would then fail.
    async fn write_marks(&self, tenant: i64, agent: i64, horizon: i64) -> Result<u64, StoreError> {
        let mut tx = self.background_tx(Work::Pages).await?;
        lock(&mut tx, self.backend, LockKey::conversation_marks(tenant)).await?;
        let mut written = 0;
        for _ in 0..self.page_marks.per_transaction {
            let inserted = sqlx::query(&NEXT_MARK[usize::from(agent != 0)])
                .bind(tenant)
                .bind(agent)
                .bind(i64::try_from(self.page_marks.every.max(1)).unwrap_or(i64::MAX))
                .bind(horizon)
                .bind(self.every_less_one())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
            if inserted == 0 {
                break;
            }
            written += 1;
        }
        tx.commit().await?;
        Ok(written)
    }
}

/// The next mark of a scope (tenant `$1`, agent `$2`): `$3` rows after the last one, among rows
/// older than `$4` (`$5` is `$3 - 1`). Indexed by "agent given".
static NEXT_MARK: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
    let last = |col: &str| {
        format!(
            "(SELECT {col} FROM conversation_marks WHERE tenant_id = $1 AND agent_id = $2 \
             ORDER BY position DESC LIMIT 1)"
        )
    };
    let (position, at, id) = (last("position"), last("created_at"), last("call_id"));
    [0, 1].map(|agent| {
        format!(
            "INSERT INTO conversation_marks (tenant_id, agent_id, position, created_at, call_id) \
             SELECT $1, $2, COALESCE({position}, 0) + $3, created_at, id FROM calls \
             WHERE {} AND (created_at, id) > (COALESCE({at}, {min}), COALESCE({id}, '')) \
             AND created_at < $4 ORDER BY created_at ASC, id ASC LIMIT 1 OFFSET $5",
            scope_filter(agent),
            // Below any creation time, as a literal both engines read as an integer (i64::MIN
            // is a numeric on PostgreSQL, which would keep the index out).
            min = -1,
        )
    })
});

/// A batch's rows become listed: the marks at or after its start no longer count them. Called
/// in the transaction that makes the batch pending.
pub(crate) async fn forget_from(
    conn: &mut AnyConnection,
    backend: Backend,
    tenant: i64,
    from: Millis,
) -> Result<(), StoreError> {
    lock(conn, backend, LockKey::conversation_marks(tenant)).await?;
    sqlx::query("DELETE FROM conversation_marks WHERE tenant_id = $1 AND created_at >= $2")
        .bind(tenant)
        .bind(from.0)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(())
}
