//! Settlements on SQL: every path that ends a call (a node's report, the orphan sweep, a stop's
//! leftover calls, the API's cancel, a batch's cancel, a do-not-call listing) makes its fenced
//! update, reads the call back from that same statement, asks
//! [`domain::lifecycle::settle::settle`] what follows, and hands the decision to [`execute_in`].
//! Nothing here decides: which counters move, whether a retry is due and what the webhook says
//! are the domain's.

use crate::calls::INSERT_EVENT_SQL;
use crate::exec::{query, Exec};
use crate::locks::{lock, LockKey};
use crate::rows::{self, get, CONVERSATION_COLUMNS};
use crate::{encode_err, json_rows, Backend};
use domain::agent::AgentConfig;
use domain::batch::{BatchCounter, BatchCounts};
use domain::call::Conversation;
use domain::lifecycle::settle::{settle, Decision, Event, Settling};
use domain::store::StoreError;
use domain::Millis;
use std::sync::LazyLock;

/// What a settling `UPDATE calls ... RETURNING` reads back: the call as settled and its agent
/// (two primary-key lookups in the same statement, so a settlement makes no read of its own).
pub(crate) static SETTLED_RETURNING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{CONVERSATION_COLUMNS}, \
         (SELECT a.config FROM agents a WHERE a.id = calls.agent_id) AS agent_config, \
         (SELECT a.deleted_at FROM agents a WHERE a.id = calls.agent_id) AS agent_deleted_at"
    )
});

/// A call as its settling statement returned it.
pub(crate) struct SettledRow {
    pub(crate) call: Conversation,
    agent: Option<AgentConfig>,
    agent_deleted: bool,
}

impl SettledRow {
    /// A row of [`SETTLED_RETURNING`].
    pub(crate) fn read(row: &impl crate::exec::RowRead) -> Result<Self, StoreError> {
        Ok(Self {
            call: rows::conversation(row)?,
            agent: rows::agent_config(get(row, "agent_config")?)?,
            agent_deleted: get::<Option<i64>>(row, "agent_deleted_at")?.is_some(),
        })
    }

    /// A row of `CONVERSATION_COLUMNS` whose agent the caller read once for many calls (a
    /// batch's cancel: a cancel retries nothing, so whether the agent is deleted is moot).
    pub(crate) fn with_agent(
        row: &sqlx::any::AnyRow,
        agent: Option<AgentConfig>,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            call: rows::conversation(row)?,
            agent,
            agent_deleted: false,
        })
    }

    pub(crate) fn decide(&self, event: Event, now: Millis) -> Result<Decision, StoreError> {
        let retry_policy = match self.agent_deleted {
            true => None,
            false => self.agent.as_ref().and_then(|a| a.retry_policy.as_ref()),
        };
        let state = Settling {
            call: &self.call,
            agent: self.agent.as_ref(),
            retry_policy,
            now,
        };
        settle(state, event).map_err(|e| StoreError::Database(Box::new(e)))
    }
}

/// A batch counter's column.
fn column(counter: BatchCounter) -> &'static str {
    match counter {
        BatchCounter::Pending => "pending_count",
        BatchCounter::InProgress => "in_progress_count",
        BatchCounter::PendingRetry => "pending_retry_count",
        BatchCounter::Completed => "completed_count",
        BatchCounter::Busy => "busy_count",
        BatchCounter::NoAnswer => "no_answer_count",
        BatchCounter::Failed => "failed_count",
        BatchCounter::SocketFailure => "socket_failure_count",
        BatchCounter::Unreachable => "unreachable_count",
        BatchCounter::Canceled => "canceled_count",
    }
}

/// Writes what settlements decided, in the caller's transaction, whose fenced updates already
/// wrote their statuses: the next attempts' rows (before their history rows, which reference
/// them), the history rows, the webhook events, the post-call jobs, the batch counters (one
/// statement per batch, whatever the number of calls), then the do-not-call listings (last:
/// the waiting calls a listing cancels are the others).
pub(crate) async fn execute_in<E: Exec>(
    conn: &mut E,
    backend: Backend,
    decisions: &[Decision],
    now: Millis,
) -> Result<(), StoreError> {
    for d in decisions {
        if let Some(r) = &d.retry {
            query(
                "INSERT INTO calls (id, chain_id, attempt, tenant_id, agent_id, status, immediate, customer_phone, \
                 from_phone, parameters, metadata, retry_context, scheduled_for, due_at, trace_id, batch_id, results, created_at) \
                 SELECT $1, chain_id, attempt + 1, tenant_id, agent_id, 'scheduled', 0, customer_phone, from_phone, \
                 parameters, metadata, retry_context, $2, $2, trace_id, batch_id, '{}', $3 FROM calls WHERE id = $4",
            )
            .bind(r.id.to_string())
            .bind(r.due.0)
            .bind(now.0)
            .bind(r.of.to_string())
            .execute(&mut *conn)
            .await?;
        }
    }
    insert_history(conn, backend, decisions).await?;
    let mut rest = decisions;
    while let Some(first) = rest.first() {
        // Runs of one agent's events: its targets are read once per run.
        let run = rest
            .iter()
            .take_while(|d| {
                (d.webhook.tenant, d.webhook.agent) == (first.webhook.tenant, first.webhook.agent)
            })
            .count();
        let (these, others) = rest.split_at(run);
        if let [one] = these {
            crate::outbox::enqueue_in(conn, backend, &one.webhook).await?;
        } else {
            let events: Vec<_> = these.iter().map(|d| d.webhook.clone()).collect();
            let (tenant, agent) = (first.webhook.tenant, first.webhook.agent);
            crate::outbox::enqueue_many_in(conn, backend, tenant, agent, &events).await?;
        }
        rest = others;
    }
    for d in decisions {
        if let Some(job) = &d.post_call {
            // With the settlement, so the job exists exactly when the settled call does.
            let id = d.call.to_string();
            crate::transcription::insert_post_call_in(conn, d.tenant.0, &id, job, now).await?;
        }
    }
    let mut batches: Vec<(i64, BatchCounts)> = Vec::new();
    for m in decisions.iter().filter_map(|d| d.batch) {
        match batches.iter_mut().find(|(id, _)| *id == m.batch) {
            Some((_, delta)) => *delta = delta.moved(m.from, m.to, m.duration_seconds),
            None => batches.push((
                m.batch,
                BatchCounts::default().moved(m.from, m.to, m.duration_seconds),
            )),
        }
    }
    // In id order, so two nodes' settlements touching the same batches cannot deadlock.
    batches.sort_by_key(|(id, _)| *id);
    for (batch, delta) in &batches {
        move_recipients(conn, *batch, delta, now).await?;
    }
    for d in decisions {
        if let Some(listing) = &d.do_not_call {
            lock(&mut *conn, backend, LockKey::do_not_call(d.tenant.0)).await?;
            let source = domain::do_not_call::Source::Call;
            // Boxed: a listing cancels the calls waiting for the number, whose settlements
            // come back here.
            Box::pin(crate::do_not_call::list_number_in(
                &mut *conn, backend, d.tenant.0, listing, source, now,
            ))
            .await?;
        }
    }
    Ok(())
}

/// The decisions' history rows: one plain INSERT for one row, else one INSERT of a JSON table.
async fn insert_history<E: Exec>(
    conn: &mut E,
    backend: Backend,
    decisions: &[Decision],
) -> Result<(), StoreError> {
    let rows: Vec<_> = decisions
        .iter()
        .flat_map(|d| d.events.iter().map(move |e| (d.tenant, e)))
        .collect();
    match rows.as_slice() {
        [] => Ok(()),
        [(tenant, e)] => {
            query(INSERT_EVENT_SQL)
                .bind(e.call.to_string())
                .bind(tenant.0)
                .bind(e.at.0)
                .bind(e.status.as_str())
                .bind(e.detail.as_deref())
                .execute(&mut *conn)
                .await?;
            Ok(())
        }
        many => {
            let table: Vec<_> = many
                .iter()
                .map(|(tenant, e)| {
                    serde_json::json!([
                        e.call.to_string(),
                        tenant.0,
                        e.at.0,
                        e.status.as_str(),
                        e.detail
                    ])
                })
                .collect();
            let table = serde_json::to_string(&table).map_err(encode_err)?;
            let sql = format!(
                "INSERT INTO call_events (call_id, tenant_id, at, status, detail) \
                 SELECT v.column1, v.column2, v.column3, v.column4, v.column5 FROM {} AS v",
                json_rows(backend, 1, &["text", "bigint", "bigint", "text", "text"])
            );
            query(&sql).bind(table).execute(&mut *conn).await?;
            Ok(())
        }
    }
}

/// Applies the moves of a batch's recipients, summed. The last unfinished recipient to land in
/// a final counter completes the batch: SET expressions read the row as it was, so that is an
/// unfinished total that the moves bring to 0.
async fn move_recipients<E: Exec>(
    conn: &mut E,
    batch: i64,
    delta: &BatchCounts,
    now: Millis,
) -> Result<(), StoreError> {
    let mut sets = String::new();
    let mut binds = Vec::new();
    for counter in BatchCounter::ALL {
        let d = delta.get(counter);
        if d != 0 {
            let col = column(counter);
            binds.push(d);
            sets.push_str(&format!("{col} = {col} + ${}, ", binds.len()));
        }
    }
    let n = binds.len();
    let sql = format!(
        "UPDATE batches SET {sets}completed_duration_seconds = completed_duration_seconds + ${}, \
         status = CASE WHEN status IN ('pending', 'in_progress', 'paused') \
         AND pending_count + in_progress_count + pending_retry_count + ${} = 0 \
         THEN 'completed' ELSE status END, updated_at = ${} WHERE id = ${}",
        n + 1,
        n + 2,
        n + 3,
        n + 4
    );
    let mut q = query(&sql);
    for b in binds {
        q = q.bind(b);
    }
    q.bind(delta.completed_duration_seconds)
        .bind(delta.unfinished())
        .bind(now.0)
        .bind(batch)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Moves one recipient of a batch from its waiting counter to `in_progress` as its call starts
/// dialling; the batch's first dial makes it `in_progress`.
pub(crate) fn dial_started_sql(attempt: u32) -> String {
    let from = column(BatchCounter::waiting(attempt));
    format!(
        "UPDATE batches SET {from} = {from} - 1, in_progress_count = in_progress_count + 1, \
         status = CASE WHEN status = 'pending' THEN 'in_progress' ELSE status END, \
         started_at = COALESCE(started_at, $2), updated_at = $2 WHERE id = $1"
    )
}
