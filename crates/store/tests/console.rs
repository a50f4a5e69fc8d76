//! The console's filtered conversation list on both backends: each filter narrows, they
//! combine, and nothing of another tenant is ever listed.

mod common;

use common::{backends, new_call};
use domain::call::CallStatus;
use domain::console::ConversationFilter;
use domain::store::{Page, Store};
use domain::{Millis, TenantId};

const T0: Millis = Millis(1_775_000_000_000);
const DAY: i64 = 86_400_000;
const PAGE: Page = Page {
    limit: 100,
    offset: 0,
};

async fn ids(store: &dyn Store, t: TenantId, f: ConversationFilter) -> Vec<String> {
    let listed = store.find_conversations(t, &f, PAGE).await.unwrap();
    assert_eq!(listed.total as usize, listed.items.len());
    listed.items.iter().map(|c| c.id.to_string()).collect()
}

async fn story(store: &dyn Store) {
    let (t, agent) = common::tenant_with_agent(store, "acme", "+918035739222").await;
    let (other, other_agent) = common::tenant_with_agent(store, "other", "+918035739222").await;
    let a = store
        .create_call(new_call(t, agent, "+919876500001", T0))
        .await
        .unwrap()
        .conversation_id;
    let b = store
        .create_call(new_call(t, agent, "+919876500002", Millis(T0.0 + DAY)))
        .await
        .unwrap()
        .conversation_id;
    store
        .create_call(new_call(other, other_agent, "+919876500003", T0))
        .await
        .unwrap();
    store.cancel_call(t, a, Millis(T0.0 + 1)).await.unwrap();
    let (a, b) = (a.to_string(), b.to_string());

    assert_eq!(
        ids(store, t, Default::default()).await,
        [b.as_str(), a.as_str()],
        "newest first"
    );
    let status = |s| ConversationFilter {
        status: Some(s),
        ..Default::default()
    };
    assert_eq!(
        ids(store, t, status(CallStatus::Canceled)).await,
        [a.as_str()]
    );
    assert_eq!(
        ids(store, t, status(CallStatus::Queued)).await,
        [b.as_str()]
    );
    let day = ConversationFilter {
        created_from: Some(Millis(T0.0 + DAY)),
        created_before: Some(Millis(T0.0 + 2 * DAY)),
        ..Default::default()
    };
    assert_eq!(ids(store, t, day.clone()).await, [b.as_str()]);
    let combined = ConversationFilter {
        agent: Some(agent),
        status: Some(CallStatus::Canceled),
        ..day
    };
    assert!(ids(store, t, combined).await.is_empty());
    let batch = ConversationFilter {
        batch: Some(1),
        ..Default::default()
    };
    assert!(ids(store, t, batch).await.is_empty());
    // The other tenant's agent, named in this tenant's filter, finds nothing.
    let foreign = ConversationFilter {
        agent: Some(other_agent),
        ..Default::default()
    };
    assert!(agent == other_agent || ids(store, t, foreign).await.is_empty());
    assert_eq!(ids(store, other, Default::default()).await.len(), 1);
    let paged = store
        .find_conversations(
            t,
            &Default::default(),
            Page {
                limit: 1,
                offset: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!((paged.total, paged.items[0].id.to_string()), (2, a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_filters_on_every_backend() {
    for backend in backends() {
        let db = backend.open().await;
        story(db.store().as_ref()).await;
        db.finish().await;
    }
}
