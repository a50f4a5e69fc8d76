//! Batches on both backends: the chunked insert, a loading batch hidden and swept, the counter
//! hooks inside the dispatch transactions, pause hiding a batch's calls from the claim, and
//! cancel.

mod common;

use common::backends;
use domain::batch::{parse_recipients, BatchAction, BatchError, BatchStatus, NewBatch};
use domain::call::{AnsweredBy, Transfer, TransferMethod, TransferStatus};
use domain::dispatch::{BeginDial, DialLimits, FinishAttempt};
use domain::store::Store;
use domain::webhooks::{LeaseRequest, NewWebhookTarget};
use domain::{AgentId, CallStatus, Millis, TenantId, TraceId, E164};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

const ROWS: u32 = 2500;

async fn story(store: &dyn Store) {
    let now = Millis::now();
    let (tenant, agent_id) = common::tenant_with_agent(store, "acme", "+918035739222").await;
    // Subscribed to cancellations only: the one completed call below must not reach it.
    let hooks = store
        .create_webhook_target(
            tenant,
            agent_id,
            &NewWebhookTarget {
                name: "crm".into(),
                url: "http://127.0.0.1:9/hook".into(),
                secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into(),
                events: vec!["call.canceled".into()],
                include_transcript: false,
                include_recording_url: false,
                active: true,
            },
            now,
        )
        .await
        .unwrap();

    let new = |agent: AgentId| batch_of_rows(tenant, agent, now);
    // An unknown agent writes nothing.
    assert!(matches!(
        store.create_batch(new(AgentId(9999))).await,
        Err(BatchError::AgentNotFound)
    ));
    assert_eq!(store.count_calls(tenant).await.unwrap(), 0);

    let b = store.create_batch(new(agent_id)).await.unwrap();
    assert_eq!(store.count_calls(tenant).await.unwrap(), u64::from(ROWS));
    assert_eq!(
        (b.status, b.counts.pending, b.total_recipients),
        (BatchStatus::Pending, 2500, 2500)
    );

    // Paused: nothing of it is claimed or due.
    store
        .change_batch(tenant, b.id, BatchAction::Pause, now)
        .await
        .unwrap();
    let later = Millis(now.0 + 1000);
    assert!(store
        .claim_due("n1", later, Millis(later.0 + 30_000), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.next_due_at(later).await.unwrap(), None);
    let b2 = store
        .change_batch(tenant, b.id, BatchAction::Resume, now)
        .await
        .unwrap();
    assert_eq!(b2.status, BatchStatus::Pending);

    // One dial and its end move one recipient pending -> in_progress -> completed.
    let due = store
        .claim_due("n1", later, Millis(later.0 + 30_000), 2)
        .await
        .unwrap();
    assert_eq!(due.len(), 2);
    let limits = DialLimits {
        trunk: None,
        agent: None,
        tenant: None,
        per_number: None,
        pace: None,
    };
    let started = store
        .begin_dial(
            due[0].id,
            "n1",
            later,
            Millis(later.0 + 30_000),
            None,
            &limits,
        )
        .await
        .unwrap();
    assert!(matches!(started, BeginDial::Started));
    let mid = store.get_batch(tenant, b.id).await.unwrap().unwrap();
    assert_eq!(
        (mid.status, mid.counts.pending, mid.counts.in_progress),
        (BatchStatus::InProgress, 2499, 1)
    );
    let transfer = Transfer {
        target: "billing".into(),
        number: E164::parse("+918045000000").unwrap(),
        method: TransferMethod::Bridge,
        status: TransferStatus::Connected,
        at: later,
    };
    let finish = FinishAttempt {
        duration_seconds: Some(42),
        answered_by: Some(AnsweredBy::Human),
        transfer: Some(transfer.clone()),
        ..FinishAttempt::bare(due[0].id, "n1", CallStatus::Completed, later)
    };
    assert!(store.finish_attempt(finish, later).await.unwrap().is_some());
    // The conversation keeps who answered and the hand-over to a person.
    let settled = store
        .get_conversation(tenant, due[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(settled.answered_by, Some(AnsweredBy::Human));
    assert_eq!(settled.transfer, Some(transfer));
    // The second claimed call is cancelled on its own.
    store.cancel_call(tenant, due[1].id, later).await.unwrap();
    let after = store.get_batch(tenant, b.id).await.unwrap().unwrap();
    assert_eq!(
        (
            after.counts.pending,
            after.counts.in_progress,
            after.counts.completed,
            after.counts.canceled,
            after.counts.completed_duration_seconds
        ),
        (2498, 0, 1, 1, 42)
    );

    // The call canceled on its own has its webhook already.
    assert_eq!(store.outbox_stats().await.unwrap().depth, 1);

    // Cancel settles every waiting recipient; another tenant cannot see or touch the batch.
    let other = store.create_tenant("other", now).await.unwrap();
    assert!(store.get_batch(other.id, b.id).await.unwrap().is_none());
    assert!(matches!(
        store
            .change_batch(other.id, b.id, BatchAction::Cancel, now)
            .await,
        Err(BatchError::NotFound)
    ));
    let c = store
        .change_batch(tenant, b.id, BatchAction::Cancel, later)
        .await
        .unwrap();
    assert_eq!(
        (
            c.status,
            c.counts.pending,
            c.counts.canceled,
            c.counts.processed()
        ),
        (BatchStatus::Canceled, 0, 2499, 2500)
    );
    assert!(store
        .claim_due("n1", Millis(later.0 + 60_000), Millis(later.0 + 90_000), 10)
        .await
        .unwrap()
        .is_empty());

    // Every recipient the cancel settled has exactly one `call.canceled` webhook, written with
    // it, whose call is that recipient's as stored; the completed one has none.
    assert_eq!(store.outbox_stats().await.unwrap().depth, 2499);
    let leased = store
        .lease_due(LeaseRequest {
            owner: "w1",
            now: Millis(later.0 + 1000),
            lease_for: Duration::from_secs(60),
            limit: 10_000,
            per_target: 10_000,
        })
        .await
        .unwrap();
    assert_eq!(
        leased.len(),
        2499,
        "2,498 from the batch cancel + 1 single cancel"
    );
    let mut conversations = HashSet::new();
    let mut numbers = HashSet::new();
    for d in &leased {
        assert_eq!(
            (d.target, d.event_type.as_str()),
            (hooks.id, "call.canceled")
        );
        let e: serde_json::Value = serde_json::from_str(&d.payload).unwrap();
        let call = &e["data"]["call"];
        assert_eq!(call["status"], "canceled");
        assert_eq!(call["batch_id"], b.id);
        assert_eq!(call["duration_seconds"], serde_json::Value::Null);
        assert_eq!(e["data"]["retry"]["is_final_attempt"], true);
        let to = call["to_phone"].as_str().unwrap().to_string();
        let i: u32 = to[5..].parse().unwrap();
        assert_eq!(
            call["call_parameters"],
            json!({"customer_name": format!("N{i}")})
        );
        numbers.insert(to);
        assert!(conversations.insert(call["conversation_id"].as_str().unwrap().to_string()));
    }
    assert_eq!(numbers.len(), 2499);
    let completed = due[0].id.to_string();
    assert!(!conversations.contains(&completed));
    // The events agree with the calls as the API shows them.
    let one = leased
        .iter()
        .map(|d| serde_json::from_str::<serde_json::Value>(&d.payload).unwrap())
        .find(|e| e["data"]["call"]["conversation_id"] != due[1].id.to_string())
        .unwrap();
    let id: domain::ConversationId = one["data"]["call"]["conversation_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let stored = store.get_conversation(tenant, id).await.unwrap().unwrap();
    assert_eq!(stored.status, CallStatus::Canceled);
    assert_eq!(
        one["data"]["call"]["to_phone"].as_str(),
        Some(stored.contact_number.as_str())
    );

    // Cancelling again settles nothing more and writes no second event.
    store
        .change_batch(tenant, b.id, BatchAction::Cancel, Millis(later.0 + 2000))
        .await
        .unwrap();
    assert_eq!(store.outbox_stats().await.unwrap().depth, 2499);
    let listed = store
        .list_batches(
            tenant,
            Some(agent_id),
            domain::store::Page {
                limit: 10,
                offset: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.total, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_on_every_backend() {
    for backend in backends() {
        let db = backend.open().await;
        story(db.store().as_ref()).await;
        db.finish().await;
    }
}

async fn scalar(conn: &mut sqlx::AnyConnection, sql: &str) -> i64 {
    use sqlx::Row;
    sqlx::query(sql)
        .fetch_one(conn)
        .await
        .unwrap()
        .try_get::<i64, _>(0)
        .unwrap()
}

/// `ROWS` recipients `+9198<i>` named `N<i>`, for `agent`.
fn batch_of_rows(tenant: TenantId, agent: AgentId, now: Millis) -> NewBatch {
    batch_of(ROWS, 0, tenant, agent, now)
}

/// `rows` recipients numbered from `from`.
fn batch_of(rows: u32, from: u32, tenant: TenantId, agent: AgentId, now: Millis) -> NewBatch {
    let mut csv = String::from("customer_phone,customer_name\n");
    for i in from..from + rows {
        csv.push_str(&format!("+9198{i:08},N{i}\n"));
    }
    NewBatch {
        tenant,
        agent,
        name: "b".into(),
        scheduled_for: None,
        recipients: parse_recipients(csv.as_bytes(), 1_000_000).unwrap(),
        trace_id: TraceId::new(),
        now,
    }
}

/// A batch left `loading` by an upload that died (set by hand: the upload itself runs to its
/// end inside `create_batch`) is hidden from every read and from dispatch, and the sweep removes
/// it with its calls and their events: at once when its lease has run out, and at a SQLite
/// node's start whatever its lease (one node per file), never a live lease on PostgreSQL.
async fn loading_story(db: &common::TestDb, backend: common::Backend) {
    use sqlx::Connection;
    let store = db.store();
    let (tenant, agent) = common::tenant_with_agent(store.as_ref(), "acme", "+918035739222").await;
    let now = Millis::now();
    let new = || batch_of_rows(tenant, agent, now);
    // Written in three chunks (1,000 rows each, see `loading_on_every_backend`).
    let b = store.create_batch(new()).await.unwrap();
    assert_eq!(store.count_calls(tenant).await.unwrap(), u64::from(ROWS));

    let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    let dead = now.0 - 1_000;
    sqlx::query(&format!(
        "UPDATE batches SET status = 'loading', loading_until = {dead} WHERE id = {}",
        b.id
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    assert!(store.get_batch(tenant, b.id).await.unwrap().is_none());
    let page = domain::store::Page {
        limit: 100,
        offset: 0,
    };
    assert_eq!(
        store.list_batches(tenant, None, page).await.unwrap().total,
        0
    );
    assert_eq!(store.count_calls(tenant).await.unwrap(), 0);
    assert_eq!(
        store
            .list_conversations(tenant, None, page)
            .await
            .unwrap()
            .total,
        0
    );
    let later = Millis(now.0 + 1000);
    assert!(store
        .claim_due("n1", later, Millis(later.0 + 30_000), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.next_due_at(later).await.unwrap(), None);
    assert!(matches!(
        store
            .change_batch(tenant, b.id, BatchAction::Pause, now)
            .await,
        Err(BatchError::NotFound)
    ));

    assert_eq!(db.store.remove_abandoned_uploads(false).await.unwrap(), 1);
    for table in ["calls", "call_events", "batches"] {
        assert_eq!(
            scalar(&mut conn, &format!("SELECT COUNT(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }

    // A loading batch whose lease is still running is some upload's, on this node or another.
    let live = store.create_batch(new()).await.unwrap();
    let lease = Millis::now().0 + 60_000;
    sqlx::query(&format!(
        "UPDATE batches SET status = 'loading', loading_until = {lease} WHERE id = {}",
        live.id
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(db.store.remove_abandoned_uploads(false).await.unwrap(), 0);
    let at_start = db.store.remove_abandoned_uploads(true).await.unwrap();
    let expected = match backend {
        common::Backend::Sqlite => 1,
        common::Backend::Postgres => 0,
    };
    assert_eq!(at_start, expected);
    assert_eq!(
        scalar(&mut conn, "SELECT COUNT(*) FROM calls").await,
        i64::from(ROWS) * (1 - expected as i64)
    );
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_on_every_backend() {
    for backend in backends() {
        let db = backend
            .open_with(store::StoreOptions {
                upload_chunk_rows: 1000,
                ..Default::default()
            })
            .await;
        loading_story(&db, backend).await;
        db.finish().await;
    }
}

/// The claim takes the oldest due calls first whether they are a batch's or not (the two are
/// walked on separate indexes and merged), never one of a paused batch, and the next due time
/// is the oldest of either.
async fn oldest_first_story(store: &dyn Store) {
    let (tenant, agent) = common::tenant_with_agent(store, "acme", "+918035739222").await;
    let t = Millis::now();
    let at = |ms: i64| Millis(t.0 + ms);
    let direct = |phone: &str, ms: i64| common::new_call(tenant, agent, phone, at(ms));
    let first = store.create_call(direct("+919800000001", 0)).await.unwrap();
    store
        .create_batch(batch_of(3, 0, tenant, agent, at(100)))
        .await
        .unwrap();
    let last = store
        .create_call(direct("+919800000002", 200))
        .await
        .unwrap();
    let paused = store
        .create_batch(batch_of(2, 10, tenant, agent, at(50)))
        .await
        .unwrap();
    store
        .change_batch(tenant, paused.id, BatchAction::Pause, at(300))
        .await
        .unwrap();

    let now = at(1_000);
    assert_eq!(store.next_due_at(now).await.unwrap(), Some(at(0)));
    let lease = Millis(now.0 + 30_000);
    let two = store.claim_due("n1", now, lease, 2).await.unwrap();
    assert_eq!(two.len(), 2);
    assert_eq!(two[0].id, first.conversation_id);
    assert_eq!(
        two[1].due_at,
        at(100),
        "the batch's call, older than the last direct one"
    );
    assert_eq!(store.next_due_at(now).await.unwrap(), Some(at(100)));
    let rest = store.claim_due("n1", now, lease, 10).await.unwrap();
    let dues: Vec<Millis> = rest.iter().map(|c| c.due_at).collect();
    assert_eq!(
        dues,
        vec![at(100), at(100), at(200)],
        "the paused batch's calls stay"
    );
    assert_eq!(rest[2].id, last.conversation_id);
    assert_eq!(store.next_due_at(now).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oldest_first_on_every_backend() {
    for backend in backends() {
        let db = backend.open().await;
        oldest_first_story(db.store().as_ref()).await;
        db.finish().await;
    }
}
