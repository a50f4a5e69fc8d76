//! Deep pages of `GET /v1/conversations` on both backends: every page, at every depth, for the
//! tenant and for one agent, is exactly what a plain newest-first `OFFSET` gives, and so is the
//! total: before any mark, with marks, with rows newer than the horizon, and after a batch whose
//! rows were written earlier than the marks becomes listed.

mod common;

use common::backends;
use domain::batch::{parse_recipients, NewBatch};
use domain::store::{Page, Store};
use domain::{AgentConfig, AgentId, Millis, TenantId, TraceId};
use sqlx::{AnyPool, Row};
use std::time::Duration;
use store::{PageMarks, StoreOptions};

const EVERY: u64 = 16;
const T0: i64 = 1_780_000_000_000;

/// The reference: the scope's ids newest first, straight from SQL with nothing in between.
async fn reference(pool: &AnyPool, tenant: TenantId, agent: Option<AgentId>) -> Vec<String> {
    let agent_filter = agent.map_or(String::new(), |a| format!(" AND agent_id = {}", a.0));
    sqlx::query(&format!(
        "SELECT id FROM calls WHERE tenant_id = {}{agent_filter} \
         ORDER BY created_at DESC, id DESC",
        tenant.0
    ))
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<String, _>("id"))
    .collect()
}

/// Every page of sizes 1, 7 and 20 at every offset (and past the end) against the reference.
async fn assert_pages(
    store: &dyn Store,
    pool: &AnyPool,
    tenant: TenantId,
    agent: Option<AgentId>,
    when: &str,
) {
    let want = reference(pool, tenant, agent).await;
    for limit in [1u32, 7, 20] {
        for offset in 0..=want.len() as u64 + 1 {
            let got = store
                .list_conversations(tenant, agent, Page { limit, offset })
                .await
                .unwrap();
            let ids: Vec<String> = got.items.iter().map(|c| c.id.to_string()).collect();
            let from = (offset as usize).min(want.len());
            let to = (from + limit as usize).min(want.len());
            assert_eq!(
                ids,
                want[from..to],
                "{when}: agent {agent:?}, limit {limit}, offset {offset}"
            );
            assert_eq!(got.total, want.len() as u64, "{when}: total");
        }
    }
}

async fn call(store: &dyn Store, tenant: TenantId, agent: AgentId, i: u32, at: i64) {
    let phone = format!("+9198{i:08}");
    store
        .create_call(common::new_call(tenant, agent, &phone, Millis(at)))
        .await
        .unwrap();
}

#[tokio::test]
async fn deep_pages_are_the_plain_offset_pages_at_every_depth() {
    for backend in backends() {
        let opts = StoreOptions {
            page_marks: PageMarks {
                every: EVERY,
                horizon: Duration::from_secs(30),
                per_transaction: 4,
            },
            ..Default::default()
        };
        let db = backend.open_with(opts).await;
        let pool = AnyPool::connect(&db.url).await.unwrap();
        let store = db.store();
        let (tenant, a1) = common::tenant_with_agent(store.as_ref(), "acme", "+918035739222").await;
        let cfg = serde_json::json!({"name": "b", "phone_number": "+918035739222"});
        let a2 = store
            .create_agent(
                tenant,
                &AgentConfig::from_json(cfg.as_object().unwrap()).unwrap(),
                Millis(T0),
            )
            .await
            .unwrap()
            .id;
        // Another tenant's calls are in neither scope.
        let (other, other_agent) =
            common::tenant_with_agent(store.as_ref(), "other", "+918035739333").await;

        // 200 calls over the two agents, some sharing a millisecond (the id breaks the tie).
        for i in 0..200u32 {
            let agent = if i % 3 == 0 { a2 } else { a1 };
            call(
                store.as_ref(),
                tenant,
                agent,
                i,
                T0 + i64::from(i / 2) * 1000,
            )
            .await;
        }
        for i in 0..30u32 {
            call(
                store.as_ref(),
                other,
                other_agent,
                10_000 + i,
                T0 + i64::from(i),
            )
            .await;
        }
        for agent in [None, Some(a1), Some(a2)] {
            assert_pages(store.as_ref(), &pool, tenant, agent, "no marks yet").await;
        }

        // Marks up to a horizon that leaves the newest 40 seconds' rows unmarked.
        let now = Millis(T0 + 60_000 + 30_000);
        let added = db.store.mark_conversations(now).await.unwrap();
        assert!(added > 0, "a pass over 200 rows wrote no mark");
        assert_eq!(
            db.store.mark_conversations(now).await.unwrap(),
            0,
            "a second pass wrote marks again"
        );
        for agent in [None, Some(a1), Some(a2)] {
            assert_pages(store.as_ref(), &pool, tenant, agent, "marked").await;
        }

        // A batch whose rows were written before the marked rows becomes listed.
        let mut csv = String::from("customer_phone\n");
        for i in 0..40u32 {
            csv.push_str(&format!("+9197{i:08}\n"));
        }
        store
            .create_batch(NewBatch {
                tenant,
                agent: a1,
                name: "early".into(),
                scheduled_for: None,
                recipients: parse_recipients(csv.as_bytes(), 1_000).unwrap(),
                trace_id: TraceId::new(),
                now: Millis(T0 + 20_500),
            })
            .await
            .unwrap();
        for agent in [None, Some(a1), Some(a2)] {
            assert_pages(store.as_ref(), &pool, tenant, agent, "after the batch").await;
        }
        let later = Millis(T0 + 500_000);
        assert!(db.store.mark_conversations(later).await.unwrap() > 0);
        for agent in [None, Some(a1), Some(a2)] {
            assert_pages(store.as_ref(), &pool, tenant, agent, "marked again").await;
        }
        assert_pages(store.as_ref(), &pool, other, None, "the other tenant").await;

        pool.close().await;
        db.finish().await;
    }
}
