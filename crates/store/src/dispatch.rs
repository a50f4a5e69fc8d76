//! The dispatcher's queries. Claiming uses `FOR UPDATE SKIP LOCKED` on PostgreSQL so nodes never
//! wait on each other's rows; SQLite has one writer, which makes the same UPDATE atomic.

use crate::calls::insert_event;
use crate::exec::{query, Arg, Exec, Job};
use crate::gate::Work;
use crate::locks::{lock, lock_shared, LockKey};
use crate::rows::{corrupt, get, json};
use crate::settle::{execute_in, SettledRow, SETTLED_RETURNING};
use crate::{db_err, Backend, SqlStore};
use domain::agent::AgentConfig;
use domain::call::{AnsweredBy, Parameter, RetryContext};
use domain::dispatch::{
    BeginDial, CancelOutcome, DialLimits, DialStart, DispatchStore, DueCall, DueTrunk,
    FinishAttempt, OrphanedCall, Progress, Settled, TrunkLane,
};
use domain::lifecycle::settle::{Decision, Event};
use domain::lifecycle::{sql_list, Transition, DIALLED, WAITING};
use domain::store::StoreError;
use domain::telephony::TrunkTarget;
use domain::tenant::TenantLimits;
use domain::{AgentId, CallStatus, ConversationId, Millis, TenantId, TraceId, TrunkId, E164};
use std::sync::Arc;

/// Calls of a paused batch wait, and those of a batch still uploading (`loading`, see `batches`)
/// are not there yet: neither is claimed nor counted as due (else the dispatcher would wake for
/// them at once, forever). The subquery is uncorrelated and small (paused and loading batches),
/// so it is evaluated once per query. The lines of trunks are walked by this rule; the calls
/// due in no line by [`due_calls`], which never walks a batch that is not running.
const BATCH_RUNNING: &str = "(batch_id IS NULL OR batch_id NOT IN \
    (SELECT id FROM batches WHERE status IN ('paused', 'loading')))";

/// The waiting calls in no trunk's line whose lease is free at `free_at` (none, or run out),
/// due by `due_by` when given, oldest first, at most `limit`, as `(id, due_at)` rows; `lock`
/// ends each part (PostgreSQL's `FOR UPDATE SKIP LOCKED`). Two parts, each walked in due order
/// on its own index (migration 0018): the calls of no batch, and those of running (pending or
/// in progress) batches, a batch at a time. So the calls of an upload in progress or of a
/// paused batch cost nothing, where a walk of one due index stepped over each of them
/// (BATCH_RUNNING).
fn due_calls(due_by: Option<&str>, free_at: &str, limit: &str, lock: &str) -> String {
    let waiting = sql_list(WAITING);
    let due = due_by.map_or(String::new(), |d| format!("AND due_at <= {d} "));
    let part = |whose: &str, name: &str| {
        format!(
            "SELECT id, due_at FROM (SELECT id, due_at FROM calls WHERE status IN ({waiting}) \
             AND trunk_lane IS NULL AND {whose} {due}AND (lease_until IS NULL OR lease_until < {free_at}) \
             ORDER BY due_at LIMIT {limit} {lock}) AS {name}"
        )
    };
    format!(
        "SELECT id, due_at FROM ({} UNION ALL {} ORDER BY due_at LIMIT {limit}) AS due",
        part("batch_id IS NULL", "direct"),
        // Only batches that can have waiting calls: a completed batch has none (it completes
        // when none is pending or due again) and a cancel cancels them, so the walk is not a
        // probe per batch ever run.
        part(
            "batch_id IN (SELECT id FROM batches WHERE status IN ('pending', 'in_progress'))",
            "batched"
        ),
    )
}

/// How long a call waits before another try when a cap is full. Short, because capacity frees
/// up as calls end; it is not idle polling: it only happens while calls are waiting.
const CAPACITY_RETRY_MS: i64 = 500;

async fn listed<E: Exec>(conn: &mut E, tenant: i64, phone: &str) -> Result<bool, StoreError> {
    Ok(query(crate::calls::LISTED_SQL)
        .bind(tenant)
        .bind(phone)
        .fetch_optional(&mut *conn)
        .await?
        .is_some())
}

/// Settles a call that was never dialled as `canceled`, with everything its settlement decides
/// (event, batch counter, `call.canceled` webhook event), in the caller's transaction. `None`
/// when the call was no longer waiting (dialled, settled or taken back in the meantime).
pub(crate) async fn cancel_waiting_in<E: Exec>(
    conn: &mut E,
    backend: Backend,
    id: &str,
    tenant: i64,
    reason: Option<&str>,
    now: Millis,
) -> Result<Option<domain::call::Conversation>, StoreError> {
    let row = query(&format!(
        "UPDATE calls SET status = 'canceled', failure_reason = $1, ended_at = $2, lease_owner = NULL, \
         lease_until = NULL WHERE tenant_id = $3 AND id = $4 AND status IN ({}) RETURNING {}",
        Transition::Cancel.from_sql(),
        *SETTLED_RETURNING
    ))
    .bind(reason)
    .bind(now.0)
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let settled = SettledRow::read(&row)?;
    let detail = reason.map(str::to_string);
    let decision = settled.decide(Event::Canceled { detail }, now)?;
    execute_in(conn, backend, std::slice::from_ref(&decision), now).await?;
    Ok(Some(settled.call))
}

async fn count<E: Exec>(
    conn: &mut E,
    sql: &str,
    binds: &[i64],
    text: Option<&str>,
) -> Result<i64, StoreError> {
    let mut q = query(sql);
    for b in binds {
        q = q.bind(*b);
    }
    if let Some(t) = text {
        q = q.bind(t.to_string());
    }
    let row = q.fetch_one(&mut *conn).await?;
    get(&row, "n")
}

fn due_call(row: &sqlx::any::AnyRow) -> Result<DueCall, StoreError> {
    let id: String = get(row, "id")?;
    let status: String = get(row, "status")?;
    let parameters: String = get(row, "parameters")?;
    let retry_context: Option<String> = get(row, "retry_context")?;
    let trace: String = get(row, "trace_id")?;
    let config: Option<String> = get(row, "agent_config")?;
    let deleted: Option<i64> = get(row, "agent_deleted")?;
    let agent_config = match (config, deleted) {
        (Some(c), None) => {
            let map = json::<serde_json::Map<String, serde_json::Value>>(&c, "agents.config")?;
            Some(AgentConfig::from_json(&map).map_err(|_| corrupt("agents.config"))?)
        }
        _ => None,
    };
    let trunk_id: Option<i64> = get(row, "trunk_id")?;
    let trunk = match trunk_id {
        Some(tid) => Some(DueTrunk {
            id: TrunkId(tid),
            target: TrunkTarget {
                uri: get(row, "trunk_uri")?,
                username: get(row, "trunk_username")?,
                password: get(row, "trunk_password")?,
                transport: crate::manage::transport(row, "trunk_transport")?,
                register: get::<i64>(row, "trunk_register")? != 0,
                srtp: crate::manage::srtp(row, "trunk_srtp")?,
            },
            from: E164::from_trusted(get(row, "from_phone")?),
            max_concurrent_calls: get::<Option<i64>>(row, "trunk_max")?
                .and_then(|n| u32::try_from(n).ok()),
            max_calls_per_second: crate::manage::calls_per_second(row, "trunk_cps")?,
            dial_after: get::<Option<i64>>(row, "trunk_dial_after")?.map(Millis),
        }),
        None => None,
    };
    Ok(DueCall {
        id: id.parse().map_err(|_| corrupt("calls.id"))?,
        tenant: TenantId(get(row, "tenant_id")?),
        agent: AgentId(get(row, "agent_id")?),
        status: CallStatus::parse(&status).ok_or_else(|| corrupt("calls.status"))?,
        immediate: get::<i64>(row, "immediate")? == 1,
        customer_phone: E164::from_trusted(get(row, "customer_phone")?),
        parameters: json::<Vec<Parameter>>(&parameters, "calls.parameters")?,
        retry_context: retry_context
            .map(|s| json::<RetryContext>(&s, "calls.retry_context"))
            .transpose()?,
        trace_id: trace
            .parse::<TraceId>()
            .map_err(|_| corrupt("calls.trace_id"))?,
        due_at: Millis(get(row, "due_at")?),
        agent_config,
        trunk,
        tenant_limits: TenantLimits {
            max_concurrent_calls: get::<Option<i64>>(row, "tenant_max")?
                .and_then(|n| u32::try_from(n).ok()),
            per_number_calls: u32::try_from(get::<i64>(row, "per_number_calls")?).unwrap_or(1),
            per_number_window_seconds: u32::try_from(get::<i64>(row, "per_number_window_seconds")?)
                .unwrap_or(60),
        },
    })
}

const DUE_CALL_SELECT: &str = "SELECT c.id AS id, c.tenant_id AS tenant_id, c.agent_id AS agent_id, c.status AS status, \
    c.immediate AS immediate, c.customer_phone AS customer_phone, c.from_phone AS from_phone, \
    c.parameters AS parameters, c.retry_context AS retry_context, c.trace_id AS trace_id, c.due_at AS due_at, \
    a.config AS agent_config, a.deleted_at AS agent_deleted, \
    tr.id AS trunk_id, tr.uri AS trunk_uri, tr.username AS trunk_username, tr.password AS trunk_password, \
    tr.max_concurrent_calls AS trunk_max, tr.max_calls_per_second AS trunk_cps, \
    tr.dial_after AS trunk_dial_after, tr.transport AS trunk_transport, tr.register AS trunk_register, tr.srtp AS trunk_srtp, \
    t.max_concurrent_calls AS tenant_max, t.per_number_calls AS per_number_calls, \
    t.per_number_window_seconds AS per_number_window_seconds \
    FROM calls c JOIN tenants t ON t.id = c.tenant_id \
    LEFT JOIN agents a ON a.id = c.agent_id AND a.tenant_id = c.tenant_id \
    LEFT JOIN phone_numbers pn ON pn.tenant_id = c.tenant_id AND pn.number = c.from_phone \
    LEFT JOIN trunks tr ON tr.id = pn.trunk_id \
    WHERE c.id IN";

/// The trunk takes no new INVITE before `until`; a gate already shut for longer stays so (a
/// 503's hold is never shortened by a dial's token, nor the other way round).
async fn shut_gate<E: Exec>(conn: &mut E, trunk: TrunkId, until: Millis) -> Result<(), StoreError> {
    query(
        "UPDATE trunks SET dial_after = CASE WHEN dial_after IS NULL OR dial_after < $1 THEN $1 \
         ELSE dial_after END WHERE id = $2",
    )
    .bind(until.0)
    .bind(trunk.0)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The call a dial's start is about, as the start's first read found it.
struct Starting<'a> {
    id: ConversationId,
    node: &'a str,
    tenant: i64,
    /// Already in its trunk's line (taken from it, not from the claim of due calls).
    in_line: bool,
}

/// Puts the call being started (back) in its trunk's line, releasing the lease; an event says
/// why when it was not there already.
async fn into_line<E: Exec>(
    conn: &mut E,
    call: &Starting<'_>,
    trunk: TrunkId,
    reason: &str,
    now: Millis,
) -> Result<(), StoreError> {
    let moved = query(&format!(
        "UPDATE calls SET status = 'queued', trunk_lane = $1, lease_owner = NULL, lease_until = NULL \
         WHERE id = $2 AND lease_owner = $3 AND status IN ({})",
        Transition::Defer.from_sql()
    ))
    .bind(trunk.0)
    .bind(call.id.to_string())
    .bind(call.node)
    .execute(&mut *conn)
    .await?;
    if moved == 1 && !call.in_line {
        let (id, detail) = (call.id.to_string(), Some(reason.to_string()));
        insert_event(conn, &id, call.tenant, now, CallStatus::Queued, detail).await?;
    }
    Ok(())
}

async fn begin_dial_in<E: Exec>(
    tx: &mut E,
    backend: Backend,
    start: &DialStart,
    node: &str,
    now: Millis,
    lease_until: Millis,
) -> Result<BeginDial, StoreError> {
    let DialStart { id, trunk, limits } = start;
    let (id, trunk) = (*id, *trunk);
    let dial_from = Transition::Dial.from_sql();
    let Some(row) = query(&format!(
        "SELECT tenant_id, agent_id, customer_phone, trunk_lane FROM calls WHERE id = $1 AND lease_owner = $2 \
         AND status IN ({dial_from})"
    ))
    .bind(id.to_string())
    .bind(node)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(BeginDial::Gone);
    };
    let tenant: i64 = get(&row, "tenant_id")?;
    let agent: i64 = get(&row, "agent_id")?;
    let phone: String = get(&row, "customer_phone")?;
    let starting = Starting {
        id,
        node,
        tenant,
        in_line: get::<Option<i64>>(&row, "trunk_lane")?.is_some(),
    };
    let defer = |reason: String| BeginDial::Deferred {
        until: Millis(now.0 + CAPACITY_RETRY_MS),
        reason,
    };
    let dialled = sql_list(DIALLED);
    // Locks in one fixed order (tenant, agent, trunk, number) so two nodes cannot deadlock.
    if let Some(max) = limits.tenant {
        lock(
            &mut *tx,
            backend,
            LockKey::new(&["tenant-live", &tenant.to_string()]),
        )
        .await?;
        let n = count(
            &mut *tx,
            &format!(
                "SELECT COUNT(*) AS n FROM calls WHERE tenant_id = $1 AND status IN ({dialled})"
            ),
            &[tenant],
            None,
        )
        .await?;
        if n >= i64::from(max) {
            return Ok(defer(format!(
                "tenant at its concurrent call limit ({max})"
            )));
        }
    }
    if let Some(max) = limits.agent {
        lock(
            &mut *tx,
            backend,
            LockKey::new(&["agent-live", &agent.to_string()]),
        )
        .await?;
        let n = count(
            &mut *tx,
            &format!(
                "SELECT COUNT(*) AS n FROM calls WHERE agent_id = $1 AND status IN ({dialled})"
            ),
            &[agent],
            None,
        )
        .await?;
        if n >= i64::from(max) {
            return Ok(defer(format!("agent at its concurrent call limit ({max})")));
        }
    }
    // The trunk's cap and its pace share the trunk's lock.
    if let Some(trunk_id) = limits.trunk.map(|t| t.0).or(limits.pace.map(|p| p.0)) {
        lock(
            &mut *tx,
            backend,
            LockKey::new(&["trunk-live", &trunk_id.0.to_string()]),
        )
        .await?;
    }
    if let Some((trunk_id, max)) = limits.trunk {
        let n = count(
            &mut *tx,
            &format!(
                "SELECT COUNT(*) AS n FROM calls WHERE trunk_id = $1 AND status IN ({dialled})"
            ),
            &[trunk_id.0],
            None,
        )
        .await?;
        if n >= i64::from(max) {
            let reason = format!("trunk at max_concurrent_calls ({max})");
            if limits.pace.is_some() {
                // A paced trunk's call keeps its place in the line; the whole trunk waits.
                shut_gate(&mut *tx, trunk_id, Millis(now.0 + CAPACITY_RETRY_MS)).await?;
                into_line(&mut *tx, &starting, trunk_id, &reason, now).await?;
                return Ok(BeginDial::Paced);
            }
            return Ok(defer(reason));
        }
    }
    // The token the call takes if it starts, and when the trunk's next one is due then.
    let mut token = None;
    if let Some((trunk_id, bucket)) = limits.pace {
        let row = query("SELECT dial_after FROM trunks WHERE id = $1")
            .bind(trunk_id.0)
            .fetch_optional(&mut *tx)
            .await?;
        let dial_after = match row {
            Some(r) => get::<Option<i64>>(&r, "dial_after")?.map(Millis),
            None => None,
        };
        match bucket.take(dial_after, now) {
            Ok(taken) => token = Some((trunk_id, taken)),
            Err(_) => {
                let reason = format!(
                    "waiting for the trunk's pace (one call per {} ms)",
                    bucket.interval().as_millis()
                );
                into_line(&mut *tx, &starting, trunk_id, &reason, now).await?;
                return Ok(BeginDial::Paced);
            }
        }
    }
    // After the caps' locks, shared: dials do not wait for each other here, but a listing
    // (which takes it exclusively, and no other lock) either commits before this reads the
    // list or waits until `initiated` is durable.
    lock_shared(&mut *tx, backend, LockKey::do_not_call(tenant)).await?;
    if listed(&mut *tx, tenant, &phone).await? {
        let reason = Some(domain::do_not_call::FAILURE_REASON);
        cancel_waiting_in(&mut *tx, backend, &id.to_string(), tenant, reason, now).await?;
        return Ok(BeginDial::Listed);
    }
    if let Some((calls, window_s)) = limits.per_number.filter(|(c, w)| *c > 0 && *w > 0) {
        lock(
            &mut *tx,
            backend,
            LockKey::new(&["dial-number", &tenant.to_string(), &phone]),
        )
        .await?;
        let window_ms = i64::from(window_s) * 1000;
        let recent = query(
            "SELECT started_at FROM calls WHERE tenant_id = $1 AND customer_phone = $2 AND started_at > $3 \
             ORDER BY started_at DESC LIMIT $4",
        )
        .bind(tenant)
        .bind(phone.as_str())
        .bind(now.0 - window_ms)
        .bind(i64::from(calls))
        .fetch_all(&mut *tx)
        .await?;
        if recent.len() as i64 >= i64::from(calls) {
            let oldest: i64 = recent
                .last()
                .map(|r| get(r, "started_at"))
                .transpose()?
                .unwrap_or(now.0);
            return Ok(BeginDial::Deferred {
                until: Millis(oldest + window_ms),
                reason: "per-number rate limit".into(),
            });
        }
    }
    // A booked call starts when its INVITE leaves (its `start_timestamp`, and what the
    // per-number window counts).
    let started_at = token.map_or(now, |(_, taken)| taken.invite_at);
    let updated = query(&format!(
        "UPDATE calls SET status = '{}', started_at = $1, lease_until = $2, trunk_id = $3 \
         WHERE id = $4 AND lease_owner = $5 AND status IN ({dial_from})",
        CallStatus::Initiated.as_str()
    ))
    .bind(started_at.0)
    .bind(lease_until.0)
    .bind(trunk.map(|t| t.0))
    .bind(id.to_string())
    .bind(node)
    .execute(&mut *tx)
    .await?;
    if updated == 0 {
        return Ok(BeginDial::Gone);
    }
    if let Some((trunk_id, taken)) = token {
        shut_gate(&mut *tx, trunk_id, taken.back_at).await?;
    }
    insert_event(
        &mut *tx,
        &id.to_string(),
        tenant,
        now,
        CallStatus::Initiated,
        None,
    )
    .await?;
    crate::batches::on_dial_started_in(&mut *tx, &id.to_string(), now).await?;
    Ok(if started_at > now {
        BeginDial::Booked(started_at)
    } else {
        BeginDial::Started
    })
}

/// A call's `ringing` or `in_progress` (with its answer time), fenced by the lease and by the
/// states it may come from, with its event; whether it was marked.
async fn mark_progress_in<E: Exec>(
    conn: &mut E,
    node: &str,
    mark: &Progress,
) -> Result<bool, StoreError> {
    let Progress { id, status, at } = *mark;
    let from = match status {
        CallStatus::Ringing => Transition::Ring.from_sql(),
        CallStatus::InProgress => Transition::Answer.from_sql(),
        _ => return Ok(false),
    };
    let answered = if status == CallStatus::InProgress {
        ", answered_at = $4"
    } else {
        ""
    };
    let sql = format!(
        "UPDATE calls SET status = $1{answered} WHERE id = $2 AND lease_owner = $3 AND status IN ({from}) RETURNING tenant_id"
    );
    let mut q = query(&sql)
        .bind(status.as_str())
        .bind(id.to_string())
        .bind(node);
    if status == CallStatus::InProgress {
        q = q.bind(at.0);
    }
    let Some(row) = q.fetch_optional(&mut *conn).await? else {
        return Ok(false);
    };
    insert_event(
        conn,
        &id.to_string(),
        get(&row, "tenant_id")?,
        at,
        status,
        None,
    )
    .await?;
    Ok(true)
}

impl SqlStore {
    /// Claims leave rows another node is claiming to it, on PostgreSQL; SQLite's one writer
    /// makes the claim atomic anyway.
    fn skip_locked(&self) -> &'static str {
        if self.backend == Backend::Postgres {
            "FOR UPDATE SKIP LOCKED"
        } else {
            ""
        }
    }

    /// The claimed calls with what dialling them needs, in due order, read in one statement
    /// once the claim is committed: on SQLite from the read pool, so a round's reads never
    /// hold the writer; on PostgreSQL from the background pool, which is not the API's.
    async fn load_due(&self, ids: Vec<String>) -> Result<Vec<DueCall>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(&ids).map_err(crate::encode_err)?;
        let sql = format!("{DUE_CALL_SELECT} ({})", crate::json_texts(self.backend, 1));
        let pool = match self.backend {
            Backend::Sqlite => &self.read,
            Backend::Postgres => &self.background,
        };
        let rows = sqlx::query(&sql)
            .bind(ids)
            .fetch_all(pool)
            .await
            .map_err(db_err)?;
        let mut due = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut call = due_call(row)?;
            if let Some(t) = call.trunk.as_mut() {
                t.target.password = self.open_opt(t.target.password.take())?;
            }
            if let Some(a) = call.agent_config.take() {
                call.agent_config = Some(self.agent_key(a, false)?);
            }
            due.push(call);
        }
        due.sort_by_key(|d| d.due_at);
        Ok(due)
    }
}

/// A finished attempt's columns, encoded before any transaction starts.
struct Ending {
    transcript: String,
    results: String,
    latency: Option<String>,
    transfer: Option<String>,
}

impl Ending {
    fn of(f: &FinishAttempt) -> Result<Self, StoreError> {
        if Transition::End(f.status).to().is_none() {
            let e = format!("{} is no outcome of an attempt", f.status);
            return Err(StoreError::Database(e.into()));
        }
        let encode = |e: serde_json::Error| StoreError::Database(e.into());
        Ok(Self {
            transcript: serde_json::to_string(&f.transcript).map_err(encode)?,
            results: serde_json::to_string(&f.results).map_err(encode)?,
            latency: f
                .latency
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(encode)?,
            transfer: f
                .transfer
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(encode)?,
        })
    }
}

/// An attempt's fenced end and what [`domain::lifecycle::settle::settle`] decides follows it, in
/// the caller's transaction; the decision is left to the caller to execute. `None` when the
/// call was not `f.node`'s to settle.
async fn end_attempt_in<E: Exec>(
    conn: &mut E,
    f: &FinishAttempt,
    ending: &Ending,
    now: Millis,
) -> Result<Option<domain::lifecycle::settle::Decision>, StoreError> {
    let ended = Transition::End(f.status);
    // Fenced: the holder of the lease, or anyone once that lease has run out. A call that
    // was claimed but could not be dialled (`queued`) is settled by its holder only, and
    // only as failed.
    let dialled = ended.from_sql();
    let refused = match Transition::Refuse.to() == Some(f.status) {
        true => format!(
            " OR (status IN ({}) AND lease_owner = $9)",
            Transition::Refuse.from_sql()
        ),
        false => String::new(),
    };
    let Some(row) = query(&format!(
        "UPDATE calls SET status = $1, failure_reason = $2, ended_at = $3, duration_seconds = $4, \
         recording_path = $5, transcript = $6, results = $7, latency = $11, stage_id = $12, answered_by = $13, transfer = $14, \
         lease_owner = NULL, lease_until = NULL WHERE id = $8 AND ((status IN ({dialled}) AND (lease_owner = $9 OR lease_until < $10)){refused}) \
         RETURNING {}",
        *SETTLED_RETURNING
    ))
    .bind(f.status.as_str())
    .bind(f.failure_reason.clone())
    .bind(f.ended_at.0)
    .bind(f.duration_seconds)
    .bind(f.recording_path.as_ref().map(|p| p.display().to_string()))
    .bind(ending.transcript.clone())
    .bind(ending.results.clone())
    .bind(f.id.to_string())
    .bind(f.node.as_str())
    .bind(now.0)
    .bind(ending.latency.clone())
    .bind(f.stage_id.clone())
    .bind(f.answered_by.map(AnsweredBy::as_str))
    .bind(ending.transfer.clone())
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    SettledRow::read(&row)?.decide(f.event(), now).map(Some)
}

/// Attempts' settlements in one transaction (one fsync, one turn at the writer): each call's
/// fenced end, then every decision executed together, as [`execute_in`] does for a batch's
/// cancel. Any error rolls the whole of it back. For each attempt, `None` when it was not its
/// node's to settle.
struct Finish {
    backend: Backend,
    /// Shared with the caller, which settles them again one by one if the batch fails.
    attempts: Arc<[(FinishAttempt, Ending)]>,
    /// The positions in `attempts` this transaction settles; the answer is in this order.
    which: Vec<usize>,
    now: Millis,
}

impl Job for Finish {
    type Out = Vec<Option<Settled>>;

    async fn run<E: Exec>(self, tx: &mut E) -> Result<Self::Out, StoreError> {
        // The fenced updates lock the calls in id order, as `renew_leases` does, so that on
        // PostgreSQL a batch never deadlocks with the lease renewal or with a stop's own
        // settlement of the same calls (each deadlock cost a second, `deadlock_timeout`: a 4 s
        // stop after a burst). What follows is written in the attempts' own order, as one by
        // one.
        let mut decided: Vec<Option<Decision>> = self.which.iter().map(|_| None).collect();
        for k in in_id_order(self.which.iter().map(|&i| self.attempts[i].0.id)) {
            let (f, ending) = &self.attempts[self.which[k]];
            decided[k] = end_attempt_in(tx, f, ending, self.now).await?;
        }
        let settled = decided
            .iter()
            .map(|d| {
                d.as_ref().map(|d| Settled {
                    retry_at: d.retry.map(|r| r.due),
                })
            })
            .collect();
        let decisions: Vec<Decision> = decided.into_iter().flatten().collect();
        execute_in(tx, self.backend, &decisions, self.now).await?;
        Ok(settled)
    }
}

/// Calls' `ringing` / `in_progress` marks in one transaction, locking their calls in id order
/// as settlements do; whether each was marked, in the marks' own order. Any error rolls the
/// whole of it back.
struct Mark {
    node: String,
    marks: Vec<Progress>,
}

impl Job for Mark {
    type Out = Vec<bool>;

    async fn run<E: Exec>(self, tx: &mut E) -> Result<Self::Out, StoreError> {
        let mut marked = vec![false; self.marks.len()];
        for k in in_id_order(self.marks.iter().map(|m| m.id)) {
            marked[k] = mark_progress_in(tx, &self.node, &self.marks[k]).await?;
        }
        Ok(marked)
    }
}

/// A claim round's starts in one transaction (one fsync); each call's caps are checked against
/// the rows the earlier ones in the round just wrote.
struct Start {
    backend: Backend,
    node: String,
    now: Millis,
    lease_until: Millis,
    calls: Vec<DialStart>,
}

impl Job for Start {
    type Out = Vec<BeginDial>;

    async fn run<E: Exec>(self, tx: &mut E) -> Result<Self::Out, StoreError> {
        let mut outcomes = Vec::with_capacity(self.calls.len());
        for c in &self.calls {
            let (node, now, until) = (self.node.as_str(), self.now, self.lease_until);
            outcomes.push(begin_dial_in(tx, self.backend, c, node, now, until).await?);
        }
        Ok(outcomes)
    }
}

/// A claim's `UPDATE ... RETURNING id`: the ids of the calls it leased.
struct Claim {
    sql: String,
    args: Vec<Arg>,
}

impl Job for Claim {
    type Out = Vec<String>;

    async fn run<E: Exec>(self, tx: &mut E) -> Result<Self::Out, StoreError> {
        let mut q = query(&self.sql);
        for a in self.args {
            q = q.bind(a);
        }
        q.fetch_all(tx)
            .await?
            .iter()
            .map(|r| get(r, "id"))
            .collect()
    }
}

/// Calls due now moved into their trunk's line, each with an event saying why.
struct Park {
    sql: String,
    trunk: TrunkId,
    node: String,
    now: Millis,
    reason: String,
}

impl Job for Park {
    type Out = u64;

    async fn run<E: Exec>(self, tx: &mut E) -> Result<Self::Out, StoreError> {
        let parked = query(&self.sql)
            .bind(self.trunk.0)
            .bind(self.now.0)
            .bind(self.node.as_str())
            .fetch_all(tx)
            .await?;
        for row in &parked {
            let id: String = get(row, "id")?;
            let tenant: i64 = get(row, "tenant_id")?;
            let detail = Some(self.reason.clone());
            insert_event(tx, &id, tenant, self.now, CallStatus::Queued, detail).await?;
        }
        Ok(parked.len() as u64)
    }
}

/// A trunk's gate shut until a time (see [`shut_gate`]).
struct Hold {
    trunk: TrunkId,
    until: Millis,
}

impl Job for Hold {
    type Out = ();

    async fn run<E: Exec>(self, tx: &mut E) -> Result<(), StoreError> {
        shut_gate(tx, self.trunk, self.until).await
    }
}

/// A claimed call put back to wait until a time, with an event saying why.
struct Defer {
    id: ConversationId,
    node: String,
    until: Millis,
    reason: String,
}

impl Job for Defer {
    type Out = ();

    async fn run<E: Exec>(self, tx: &mut E) -> Result<(), StoreError> {
        let row = query(&format!(
            "UPDATE calls SET status = 'queued', due_at = $1, lease_owner = NULL, lease_until = NULL, \
             trunk_lane = NULL WHERE id = $2 AND lease_owner = $3 AND status IN ({}) RETURNING tenant_id, status",
            Transition::Defer.from_sql()
        ))
        .bind(self.until.0)
        .bind(self.id.to_string())
        .bind(self.node.as_str())
        .fetch_optional(tx)
        .await?;
        if let Some(row) = row {
            let tenant: i64 = get(&row, "tenant_id")?;
            let (id, detail) = (self.id.to_string(), Some(self.reason));
            insert_event(tx, &id, tenant, Millis::now(), CallStatus::Queued, detail).await?;
        }
        Ok(())
    }
}

/// A node's live calls' leases renewed, in id order, as settlements lock the same rows.
struct Renew {
    node: String,
    ids: Vec<String>,
    until: Millis,
}

impl Job for Renew {
    type Out = ();

    async fn run<E: Exec>(self, tx: &mut E) -> Result<(), StoreError> {
        for id in self.ids {
            query("UPDATE calls SET lease_until = $1 WHERE id = $2 AND lease_owner = $3")
                .bind(self.until.0)
                .bind(id)
                .bind(self.node.as_str())
                .execute(tx)
                .await?;
        }
        Ok(())
    }
}

impl SqlStore {
    /// Attempts settled in one transaction (see [`Finish`]).
    async fn finish(
        &self,
        attempts: Arc<[(FinishAttempt, Ending)]>,
        which: Vec<usize>,
        now: Millis,
    ) -> Result<Vec<Option<Settled>>, StoreError> {
        let backend = self.backend;
        let job = Finish {
            backend,
            attempts,
            which,
            now,
        };
        self.background_job(Work::Settle, job).await
    }

    async fn mark_together(&self, node: &str, marks: &[Progress]) -> Result<Vec<bool>, StoreError> {
        let (node, marks) = (node.to_string(), marks.to_vec());
        self.background_job(Work::Dispatch, Mark { node, marks })
            .await
    }

    /// Leases the calls a claim statement picks and reads what dialling them needs.
    async fn claim(&self, sql: String, args: Vec<Arg>) -> Result<Vec<DueCall>, StoreError> {
        let ids = self
            .background_job(Work::Dispatch, Claim { sql, args })
            .await?;
        self.load_due(ids).await
    }
}

/// The positions of `ids` in the order of the ids' text: the order in which every transaction
/// that updates several live calls (settlements, marks, lease renewals) locks them, so that
/// two such transactions never deadlock on PostgreSQL.
fn in_id_order(ids: impl Iterator<Item = ConversationId>) -> Vec<usize> {
    let mut keyed: Vec<(String, usize)> =
        ids.enumerate().map(|(k, id)| (id.to_string(), k)).collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, k)| k).collect()
}

#[async_trait::async_trait]
impl DispatchStore for SqlStore {
    async fn next_due_at(&self, now: Millis) -> Result<Option<Millis>, StoreError> {
        // The first call nobody holds; calls claimed by a node that then died come back through
        // the dispatcher's idle wake-up.
        let row = sqlx::query(&due_calls(None, "$1", "1", ""))
            .bind(now.0)
            .fetch_optional(&self.read)
            .await
            .map_err(db_err)?;
        let due = row
            .map(|r| get::<i64>(&r, "due_at").map(Millis))
            .transpose()?;
        let gate = self
            .trunk_lanes(now)
            .await?
            .into_iter()
            .map(|l| domain::pacing::line_due(l.max_calls_per_second, l.dial_after, now))
            .min();
        Ok(due.into_iter().chain(gate).min())
    }

    async fn claim_due(
        &self,
        node: &str,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<DueCall>, StoreError> {
        let due = due_calls(Some("$3"), "$3", "$4", self.skip_locked());
        let sql = format!(
            "UPDATE calls SET lease_owner = $1, lease_until = $2 WHERE id IN (SELECT id FROM ({due}) AS claimed) \
             RETURNING id"
        );
        let args = vec![
            node.into(),
            lease_until.0.into(),
            now.0.into(),
            i64::from(limit).into(),
        ];
        self.claim(sql, args).await
    }

    async fn park_calls(
        &self,
        node: &str,
        trunk: TrunkId,
        now: Millis,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let waiting = sql_list(WAITING);
        // By the number the calls are made from (`calls_waiting_from`): the trunk's numbers are
        // its tenant's.
        let sql = format!(
            "UPDATE calls SET status = 'queued', trunk_lane = $1, lease_owner = NULL, lease_until = NULL \
             WHERE id IN (SELECT id FROM calls WHERE tenant_id = (SELECT tenant_id FROM trunks WHERE id = $1) \
               AND from_phone IN (SELECT number FROM phone_numbers WHERE trunk_id = $1) \
               AND status IN ({waiting}) AND trunk_lane IS NULL AND due_at <= $2 \
               AND (lease_until IS NULL OR lease_until < $2 OR lease_owner = $3) AND {BATCH_RUNNING} {}) \
             RETURNING id, tenant_id",
            self.skip_locked()
        );
        let job = Park {
            sql,
            trunk,
            node: node.to_string(),
            now,
            reason: reason.to_string(),
        };
        self.background_job(Work::Dispatch, job).await
    }

    async fn trunk_lanes(&self, now: Millis) -> Result<Vec<TrunkLane>, StoreError> {
        // Only trunks that are paced or were ever held can have a line; for each, one probe of
        // `calls_trunk_lane` for a call nobody holds.
        let rows = sqlx::query(&format!(
            "SELECT t.id AS id, t.max_calls_per_second AS cps, t.dial_after AS dial_after FROM trunks t \
             WHERE (t.max_calls_per_second IS NOT NULL OR t.dial_after IS NOT NULL) AND EXISTS ( \
               SELECT 1 FROM calls WHERE trunk_lane = t.id AND status IN ({}) AND trunk_lane IS NOT NULL \
               AND (lease_until IS NULL OR lease_until < $1) AND {BATCH_RUNNING}) ORDER BY t.id",
            sql_list(WAITING)
        ))
        .bind(now.0)
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(TrunkLane {
                    trunk: TrunkId(get(r, "id")?),
                    max_calls_per_second: crate::manage::calls_per_second(r, "cps")?,
                    dial_after: get::<Option<i64>>(r, "dial_after")?.map(Millis),
                })
            })
            .collect()
    }

    async fn claim_lane(
        &self,
        node: &str,
        trunk: TrunkId,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<DueCall>, StoreError> {
        let sql = format!(
            "UPDATE calls SET lease_owner = $1, lease_until = $2 WHERE id IN ( \
               SELECT id FROM calls WHERE trunk_lane = $3 AND status IN ({}) AND trunk_lane IS NOT NULL \
               AND (lease_until IS NULL OR lease_until < $4) AND {BATCH_RUNNING} ORDER BY due_at LIMIT $5 {}) \
             RETURNING id",
            sql_list(WAITING),
            self.skip_locked()
        );
        let args = vec![
            node.into(),
            lease_until.0.into(),
            trunk.0.into(),
            now.0.into(),
            i64::from(limit).into(),
        ];
        self.claim(sql, args).await
    }

    async fn hold_trunk(&self, trunk: TrunkId, until: Millis) -> Result<(), StoreError> {
        self.background_job(Work::Dispatch, Hold { trunk, until })
            .await
    }

    async fn defer_call(
        &self,
        id: ConversationId,
        node: &str,
        until: Millis,
        reason: &str,
    ) -> Result<(), StoreError> {
        let job = Defer {
            id,
            node: node.to_string(),
            until,
            reason: reason.to_string(),
        };
        self.background_job(Work::Dispatch, job).await
    }

    async fn begin_dial(
        &self,
        id: ConversationId,
        node: &str,
        now: Millis,
        lease_until: Millis,
        trunk: Option<TrunkId>,
        limits: &DialLimits,
    ) -> Result<BeginDial, StoreError> {
        let start = DialStart {
            id,
            trunk,
            limits: limits.clone(),
        };
        let mut outcomes = self
            .begin_dials(node, now, lease_until, std::slice::from_ref(&start))
            .await?;
        Ok(outcomes.pop().unwrap_or(BeginDial::Gone))
    }

    async fn begin_dials(
        &self,
        node: &str,
        now: Millis,
        lease_until: Millis,
        calls: &[DialStart],
    ) -> Result<Vec<BeginDial>, StoreError> {
        let job = Start {
            backend: self.backend,
            node: node.to_string(),
            now,
            lease_until,
            calls: calls.to_vec(),
        };
        self.background_job(Work::Dispatch, job).await
    }

    async fn mark_progress(
        &self,
        id: ConversationId,
        node: &str,
        status: CallStatus,
        at: Millis,
    ) -> Result<bool, StoreError> {
        self.mark_together(node, &[Progress { id, status, at }])
            .await
            .map(|marked| marked.first().copied().unwrap_or(false))
    }

    async fn mark_progresses(
        &self,
        node: &str,
        marks: &[Progress],
    ) -> Vec<Result<bool, StoreError>> {
        match self.mark_together(node, marks).await {
            Ok(marked) => marked.into_iter().map(Ok).collect(),
            Err(e) => {
                // Nothing of the batch was written; each mark again in its own transaction, so
                // the one that broke the batch fails alone (as `finish_attempts` does).
                tracing::warn!(error = %e, calls = marks.len(), "marking a batch of calls' progress failed; marking them one by one");
                let mut answers = Vec::with_capacity(marks.len());
                for m in marks {
                    answers.push(self.mark_progress(m.id, node, m.status, m.at).await);
                }
                answers
            }
        }
    }

    async fn renew_leases(
        &self,
        node: &str,
        ids: &[ConversationId],
        until: Millis,
    ) -> Result<(), StoreError> {
        // One transaction for all of a node's live calls: one fsync per renewal round, not one
        // per call.
        let mut ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        ids.sort_unstable();
        let node = node.to_string();
        self.background_job(Work::Dispatch, Renew { node, ids, until })
            .await
    }

    async fn finish_attempt(
        &self,
        f: FinishAttempt,
        now: Millis,
    ) -> Result<Option<Settled>, StoreError> {
        let ending = Ending::of(&f)?;
        let attempts = Arc::from(vec![(f, ending)]);
        let mut settled = self.finish(attempts, vec![0], now).await?;
        Ok(settled.pop().flatten())
    }

    async fn finish_attempts(
        &self,
        finishes: Vec<FinishAttempt>,
        now: Millis,
    ) -> Vec<Result<Option<Settled>, StoreError>> {
        // An attempt that cannot even be encoded fails alone, before the transaction.
        let mut answers: Vec<Option<Result<Option<Settled>, StoreError>>> = Vec::new();
        let (mut slots, mut ready) = (Vec::new(), Vec::new());
        for f in finishes {
            match Ending::of(&f) {
                Ok(ending) => {
                    slots.push(answers.len());
                    answers.push(None);
                    ready.push((f, ending));
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        let attempts: Arc<[(FinishAttempt, Ending)]> = Arc::from(ready);
        match attempts.len() {
            0 => {}
            n => match self.finish(attempts.clone(), (0..n).collect(), now).await {
                Ok(settled) => {
                    for (slot, s) in slots.iter().zip(settled) {
                        answers[*slot] = Some(Ok(s));
                    }
                }
                Err(e) if n > 1 => {
                    // Nothing of the batch was written. Each attempt gets its own transaction,
                    // so the one that broke the batch fails alone (and is left to the orphan
                    // sweep, as a failed single settlement is); the fence makes a second try of
                    // a call the first one did settle (a commit whose answer was lost) answer
                    // `None`.
                    tracing::warn!(error = %e, calls = n, "settling a batch of calls failed; settling them one by one");
                    for (k, slot) in slots.iter().enumerate() {
                        let one = self.finish(attempts.clone(), vec![k], now).await;
                        answers[*slot] = Some(one.map(|mut s| s.pop().flatten()));
                    }
                }
                Err(e) => answers[slots[0]] = Some(Err(e)),
            },
        }
        answers.into_iter().map(|a| a.unwrap_or(Ok(None))).collect()
    }

    async fn orphaned_calls(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<OrphanedCall>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT id FROM calls WHERE status IN ({}) AND lease_until < $1 \
             ORDER BY lease_until LIMIT $2",
            Transition::Interrupt.from_sql()
        ))
        .bind(now.0)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let id: String = get(row, "id")?;
                Ok(OrphanedCall {
                    id: id.parse().map_err(|_| corrupt("calls.id"))?,
                })
            })
            .collect()
    }

    async fn cancel_call(
        &self,
        tenant: TenantId,
        id: ConversationId,
        now: Millis,
    ) -> Result<CancelOutcome, StoreError> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let canceled =
            cancel_waiting_in(&mut tx, self.backend, &id.to_string(), tenant.0, None, now).await?;
        let Some(conversation) = canceled else {
            let exists = sqlx::query("SELECT 1 AS one FROM calls WHERE tenant_id = $1 AND id = $2")
                .bind(tenant.0)
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            return Ok(if exists.is_some() {
                CancelOutcome::AlreadyStarted
            } else {
                CancelOutcome::NotFound
            });
        };
        tx.commit().await.map_err(db_err)?;
        Ok(CancelOutcome::Canceled(Box::new(conversation)))
    }
}
