//! The webhook outbox on both backends: targets, enqueue, leases (chain order, per-target cap,
//! expiry, concurrent workers), attempts and the delivery log.

mod common;

use common::backends;
use domain::store::{Conflict, ManageError, Page};

use domain::webhooks::{
    AttemptRecord, AttemptResult, DeliveryFilter, DeliveryStatus, LeaseRequest, NewWebhookTarget,
    NextState, OutboxEvent, WebhookStore, WebhookTargetPatch,
};
use domain::{AgentId, Millis, TenantId};
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use store::SqlStore;

const T0: Millis = Millis(1_775_000_000_000);

fn target(name: &str, events: &[&str]) -> NewWebhookTarget {
    NewWebhookTarget {
        name: name.into(),
        url: "http://127.0.0.1:9/hook".into(),
        secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        include_transcript: false,
        include_recording_url: false,
        active: true,
    }
}

fn event(
    n: u32,
    tenant: TenantId,
    agent: AgentId,
    chain: &str,
    kind: &str,
    at: Millis,
) -> OutboxEvent {
    OutboxEvent {
        event_id: format!("evt_{n:012}"),
        event_type: kind.into(),
        tenant,
        agent,
        conversation_id: Some(format!("{chain}_{n}")),
        chain_id: chain.into(),
        payload: json!({"event_id": format!("evt_{n:012}"), "event_type": kind}),
        created_at: at,
    }
}

fn lease(owner: &str, now: Millis, limit: u32, per_target: u32) -> LeaseRequest<'_> {
    LeaseRequest {
        owner,
        now,
        lease_for: Duration::from_secs(60),
        limit,
        per_target,
    }
}

fn result(
    delivery: domain::webhooks::DeliveryId,
    at: Millis,
    status: u16,
    next: NextState,
) -> AttemptResult {
    AttemptResult {
        delivery,
        attempt: AttemptRecord {
            at,
            http_status: Some(status),
            error: None,
            duration_ms: 3,
        },
        next,
    }
}

async fn story_targets(store: Arc<SqlStore>) {
    let (t, agent) = common::tenant_with_agent(store.as_ref(), "acme", "+918035739222").await;
    let (other, other_agent) =
        common::tenant_with_agent(store.as_ref(), "other", "+918035739222").await;
    let first = store
        .create_webhook_target(t, agent, &target("a", &["call.completed"]), T0)
        .await
        .unwrap();
    assert!(first.active);
    assert_eq!(first.events, vec!["call.completed"]);
    assert!(matches!(
        store
            .create_webhook_target(t, agent, &target("a", &["call.failed"]), T0)
            .await,
        Err(ManageError::Conflict(Conflict::TargetNameTaken))
    ));
    for name in ["b", "c", "d", "e"] {
        store
            .create_webhook_target(t, agent, &target(name, &["call.failed"]), T0)
            .await
            .unwrap();
    }
    assert!(matches!(
        store
            .create_webhook_target(t, agent, &target("f", &["call.failed"]), T0)
            .await,
        Err(ManageError::Conflict(Conflict::TooManyTargets))
    ));
    // Another tenant's agent is not found, whichever tenant asks.
    assert!(matches!(
        store
            .create_webhook_target(other, agent, &target("x", &["call.failed"]), T0)
            .await,
        Err(ManageError::NotFound("agent"))
    ));
    assert!(matches!(
        store.list_webhook_targets(t, other_agent).await,
        Err(ManageError::NotFound("agent"))
    ));
    assert!(store
        .get_webhook_target(other, agent, first.id)
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.list_webhook_targets(t, agent).await.unwrap().len(), 5);

    let renamed = store
        .update_webhook_target(
            t,
            agent,
            first.id,
            &WebhookTargetPatch {
                name: Some("renamed".into()),
                include_transcript: Some(true),
                ..Default::default()
            },
            Millis(T0.0 + 1),
        )
        .await
        .unwrap();
    assert_eq!(
        (renamed.name.as_str(), renamed.include_transcript),
        ("renamed", true)
    );
    assert!(matches!(
        store
            .update_webhook_target(
                t,
                agent,
                first.id,
                &WebhookTargetPatch {
                    name: Some("b".into()),
                    ..Default::default()
                },
                T0
            )
            .await,
        Err(ManageError::Conflict(Conflict::TargetNameTaken))
    ));
    store
        .rotate_webhook_secret(t, agent, first.id, "a-new-secret-of-enough-length", T0)
        .await
        .unwrap();
    assert!(store
        .delete_webhook_target(t, agent, first.id, T0)
        .await
        .unwrap());
    assert!(!store
        .delete_webhook_target(t, agent, first.id, T0)
        .await
        .unwrap());
    // The freed slot can be used again.
    store
        .create_webhook_target(t, agent, &target("a", &["call.failed"]), T0)
        .await
        .unwrap();
}

async fn story_enqueue_and_lease(store: Arc<SqlStore>) {
    let (t, agent) = common::tenant_with_agent(store.as_ref(), "acme", "+918035739222").await;
    let all = store
        .create_webhook_target(
            t,
            agent,
            &target("all", &["call.completed", "call.failed"]),
            T0,
        )
        .await
        .unwrap();
    let failed_only = store
        .create_webhook_target(t, agent, &target("failed", &["call.failed"]), T0)
        .await
        .unwrap();
    let mut inactive = target("off", &["call.completed"]);
    inactive.active = false;
    store
        .create_webhook_target(t, agent, &inactive, T0)
        .await
        .unwrap();

    // Two events of one chain and one of another.
    let n = store
        .enqueue_events(&[
            event(1, t, agent, "chain-a", "call.completed", T0),
            event(2, t, agent, "chain-a", "call.failed", T0),
            event(3, t, agent, "chain-b", "call.failed", T0),
        ])
        .await
        .unwrap();
    assert_eq!(n, 1 + 2 + 2);
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!(
        (stats.depth, stats.oldest_pending_created_at),
        (5, Some(T0))
    );
    assert_eq!(store.next_delivery_due_at(T0).await.unwrap(), Some(T0));

    // Not yet due.
    assert!(store
        .lease_due(lease("w1", Millis(T0.0 - 1), 100, 100))
        .await
        .unwrap()
        .is_empty());
    let now = Millis(T0.0 + 10);
    let first = store.lease_due(lease("w1", now, 100, 100)).await.unwrap();
    let got: HashSet<(i64, String)> = first
        .iter()
        .map(|d| (d.target.0, d.event_id.clone()))
        .collect();
    // evt 2 to `all` waits behind evt 1 of the same chain; to `failed` it is that chain's first.
    let expected: HashSet<(i64, String)> = [
        (all.id.0, "evt_000000000001".to_string()),
        (all.id.0, "evt_000000000003".to_string()),
        (failed_only.id.0, "evt_000000000002".to_string()),
        (failed_only.id.0, "evt_000000000003".to_string()),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, expected);
    let leased_secret = &first[0].secret;
    assert!(leased_secret.starts_with("whsec_"));
    // Leased deliveries are not leased again, by anyone, until their lease ends.
    assert!(store
        .lease_due(lease("w2", now, 100, 100))
        .await
        .unwrap()
        .is_empty());
    // evt 2 to `all` is due, though held back by its chain: the worker waits for an attempt to
    // finish rather than for a time.
    assert_eq!(store.next_delivery_due_at(now).await.unwrap(), Some(T0));

    let evt1 = first
        .iter()
        .find(|d| d.event_id == "evt_000000000001")
        .unwrap();
    let retry_at = Millis(now.0 + 1_000);
    assert_eq!(
        store
            .record_attempts(
                "w1",
                &[result(evt1.id, now, 500, NextState::RetryAt(retry_at))]
            )
            .await
            .unwrap(),
        1
    );
    // evt 1 is pending again, so evt 2 of its chain still waits; evt 1 itself is not due yet.
    assert!(store
        .lease_due(lease("w1", now, 100, 100))
        .await
        .unwrap()
        .is_empty());
    let again = store
        .lease_due(lease("w1", retry_at, 100, 100))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].event_id.as_str(), again[0].attempts),
        ("evt_000000000001", 1)
    );
    store
        .record_attempts(
            "w1",
            &[result(again[0].id, retry_at, 200, NextState::Delivered)],
        )
        .await
        .unwrap();
    let next = store
        .lease_due(lease("w1", retry_at, 100, 100))
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(
        (next[0].event_id.as_str(), next[0].target),
        ("evt_000000000002", all.id)
    );

    // A lease that lapses is taken by another worker; the first worker's late result enters the
    // log but no longer settles the delivery.
    let later = Millis(retry_at.0 + 60_001);
    let stolen = store.lease_due(lease("w2", later, 100, 100)).await.unwrap();
    assert_eq!(stolen.len(), 4, "{stolen:?}");
    let lost = stolen
        .iter()
        .find(|d| d.event_id == "evt_000000000002" && d.target == all.id)
        .unwrap();
    assert_eq!(
        store
            .record_attempts("w1", &[result(lost.id, later, 200, NextState::Delivered)])
            .await
            .unwrap(),
        0
    );
    let rec = store.get_delivery(t, lost.id).await.unwrap().unwrap();
    assert_eq!(
        (rec.status, rec.attempts.len()),
        (DeliveryStatus::Pending, 1)
    );

    // 410: the target is deactivated and its other pending deliveries fail.
    let gone = stolen.iter().find(|d| d.target == failed_only.id).unwrap();
    store
        .record_attempts(
            "w2",
            &[
                result(gone.id, later, 410, NextState::FailedAndDeactivate),
                result(lost.id, later, 400, NextState::Failed),
            ],
        )
        .await
        .unwrap();
    let target = store
        .get_webhook_target(t, agent, failed_only.id)
        .await
        .unwrap()
        .unwrap();
    assert!(!target.active);
    let failed = store
        .list_deliveries(
            t,
            &DeliveryFilter {
                target: Some(failed_only.id),
                ..Default::default()
            },
            Page {
                limit: 10,
                offset: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(failed.total, 2);
    assert!(failed
        .items
        .iter()
        .all(|d| d.status == DeliveryStatus::Failed));
    assert!(matches!(
        store.retry_delivery(t, gone.id, later).await,
        Err(ManageError::Conflict(Conflict::TargetInactive))
    ));

    // The log: filters, attempts oldest first, newest delivery first.
    let by_conversation = store
        .list_deliveries(
            t,
            &DeliveryFilter {
                conversation_id: Some("chain-a_1".into()),
                ..Default::default()
            },
            Page {
                limit: 10,
                offset: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(by_conversation.total, 1);
    let log = &by_conversation.items[0];
    assert_eq!(log.status, DeliveryStatus::Delivered);
    assert_eq!(
        log.attempts
            .iter()
            .map(|a| a.http_status)
            .collect::<Vec<_>>(),
        vec![Some(500), Some(200)]
    );
    let delivered = store
        .list_deliveries(
            t,
            &DeliveryFilter {
                status: Some(DeliveryStatus::Delivered),
                ..Default::default()
            },
            Page {
                limit: 10,
                offset: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(delivered.total, 1);
    let page = store
        .list_deliveries(
            t,
            &DeliveryFilter::default(),
            Page {
                limit: 2,
                offset: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!((page.items.len(), page.total), (2, 5));
    assert!(page.has_more(Page {
        limit: 2,
        offset: 0
    }));
    assert!(page.items[0].id > page.items[1].id);
    // Another tenant sees none of it.
    let (other, _) = common::tenant_with_agent(store.as_ref(), "other", "+918035739222").await;
    assert_eq!(
        store
            .list_deliveries(
                other,
                &DeliveryFilter::default(),
                Page {
                    limit: 10,
                    offset: 0
                }
            )
            .await
            .unwrap()
            .total,
        0
    );
    assert!(matches!(
        store.retry_delivery(other, log.id, later).await,
        Err(ManageError::NotFound(_))
    ));

    // Retrying a delivered delivery makes it due now, with the same event.
    let retried = store.retry_delivery(t, log.id, later).await.unwrap();
    assert_eq!(
        (retried.status, retried.next_attempt_at),
        (DeliveryStatus::Pending, Some(later))
    );
    let re = store.lease_due(lease("w3", later, 100, 100)).await.unwrap();
    assert!(re
        .iter()
        .any(|d| d.id == log.id && d.event_id == "evt_000000000001"));
}

async fn story_per_target_cap(store: Arc<SqlStore>) {
    let (t, agent) = common::tenant_with_agent(store.as_ref(), "acme", "+918035739222").await;
    let slow = store
        .create_webhook_target(t, agent, &target("slow", &["call.completed"]), T0)
        .await
        .unwrap();
    let events: Vec<OutboxEvent> = (0..20)
        .map(|i| event(i, t, agent, &format!("chain-{i}"), "call.completed", T0))
        .collect();
    store.enqueue_events(&events).await.unwrap();
    let a = store.lease_due(lease("w1", T0, 100, 4)).await.unwrap();
    assert_eq!(a.len(), 4);
    // The cap counts every worker's unexpired leases.
    assert!(store
        .lease_due(lease("w2", T0, 100, 4))
        .await
        .unwrap()
        .is_empty());
    let healthy = store
        .create_webhook_target(t, agent, &target("healthy", &["call.completed"]), T0)
        .await
        .unwrap();
    store
        .enqueue_events(&[event(99, t, agent, "chain-99", "call.completed", T0)])
        .await
        .unwrap();
    // The capped target holds back only itself.
    let b = store.lease_due(lease("w2", T0, 100, 4)).await.unwrap();
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0].target, healthy.id);
    assert!(a.iter().all(|d| d.target == slow.id));
}

async fn story_concurrent_workers(store: Arc<SqlStore>) {
    let (t, agent) = common::tenant_with_agent(store.as_ref(), "acme", "+918035739222").await;
    store
        .create_webhook_target(t, agent, &target("a", &["call.completed"]), T0)
        .await
        .unwrap();
    store
        .create_webhook_target(t, agent, &target("b", &["call.completed"]), T0)
        .await
        .unwrap();
    let events: Vec<OutboxEvent> = (0..200)
        .map(|i| event(i, t, agent, &format!("c{i}"), "call.completed", T0))
        .collect();
    store.enqueue_events(&events).await.unwrap();
    let owners: Vec<String> = (0..8).map(|i| format!("w{i}")).collect();
    let tasks = owners.iter().map(|owner| {
        let store = store.clone();
        let owner = owner.clone();
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store.lease_due(lease(&owner, T0, 7, 1000)).await.unwrap();
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|d| d.id));
            }
            mine
        })
    });
    let all: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!((all.len(), unique.len()), (400, 400));
}

async fn story_caps_and_release(store: Arc<SqlStore>) {
    let (t, agent) = common::tenant_with_agent(store.as_ref(), "acme", "+918035739222").await;
    let a = store
        .create_webhook_target(t, agent, &target("a", &["call.completed"]), T0)
        .await
        .unwrap();
    let b = store
        .create_webhook_target(t, agent, &target("b", &["call.completed"]), T0)
        .await
        .unwrap();
    let events: Vec<OutboxEvent> = (0..3)
        .map(|i| event(i, t, agent, &format!("c{i}"), "call.completed", T0))
        .collect();
    store.enqueue_events(&events).await.unwrap();
    // A worker that wants none of `a`'s and one of `b`'s gets just that.
    let caps = [(a.id, 0), (b.id, 1)];
    let one_b = store
        .lease_due_capped(lease("w1", T0, 100, 100), &caps)
        .await
        .unwrap();
    assert_eq!(one_b.len(), 1);
    assert_eq!(one_b[0].target, b.id);
    // The cap counts leases already held: with one of `b`'s out, a cap of 1 gives none more.
    let caps = [(a.id, 0), (b.id, 1)];
    assert!(store
        .lease_due_capped(lease("w1", T0, 100, 100), &caps)
        .await
        .unwrap()
        .is_empty());
    let caps = [(a.id, 0)];
    let only_b: Vec<_> = one_b
        .into_iter()
        .chain(
            store
                .lease_due_capped(lease("w1", T0, 100, 100), &caps)
                .await
                .unwrap(),
        )
        .collect();
    assert_eq!(only_b.len(), 3);
    assert!(only_b.iter().all(|d| d.target == b.id));
    // Leases given back by someone else's name stay; given back by the holder, any worker can
    // take them at once, long before they would have lapsed.
    let ids: Vec<_> = only_b.iter().map(|d| d.id).collect();
    assert_eq!(store.release_leases("w2", &ids).await.unwrap(), 0);
    assert_eq!(store.release_leases("w1", &ids[..2]).await.unwrap(), 2);
    let again = store.lease_due(lease("w2", T0, 100, 100)).await.unwrap();
    let got: HashSet<_> = again.iter().map(|d| d.id).collect();
    let a_ids: HashSet<_> = again
        .iter()
        .filter(|d| d.target == a.id)
        .map(|d| d.id)
        .collect();
    assert_eq!(a_ids.len(), 3);
    assert!(got.contains(&ids[0]) && got.contains(&ids[1]) && !got.contains(&ids[2]));
    // A released delivery that was settled meanwhile is not made pending again.
    store
        .record_attempts("w2", &[result(ids[0], T0, 200, NextState::Delivered)])
        .await
        .unwrap();
    assert_eq!(store.release_leases("w2", &ids[..1]).await.unwrap(), 0);
    let rec = store.get_delivery(t, ids[0]).await.unwrap().unwrap();
    assert_eq!(rec.status, DeliveryStatus::Delivered);
}

async fn story_record_many_at_once(store: Arc<SqlStore>) {
    let (t, agent) = common::tenant_with_agent(store.as_ref(), "acme", "+918035739222").await;
    store
        .create_webhook_target(t, agent, &target("a", &["call.completed"]), T0)
        .await
        .unwrap();
    // More than one multi-row statement's worth.
    let events: Vec<OutboxEvent> = (0..300)
        .map(|i| event(i, t, agent, &format!("c{i}"), "call.completed", T0))
        .collect();
    store.enqueue_events(&events).await.unwrap();
    let leased = store.lease_due(lease("w1", T0, 1000, 1000)).await.unwrap();
    assert_eq!(leased.len(), 300);
    let retry_at = Millis(T0.0 + 5_000);
    let results: Vec<AttemptResult> = leased
        .iter()
        .enumerate()
        .map(|(i, d)| match i % 3 {
            0 => result(d.id, T0, 200, NextState::Delivered),
            1 => result(d.id, T0, 503, NextState::RetryAt(retry_at)),
            _ => AttemptResult {
                delivery: d.id,
                attempt: AttemptRecord {
                    at: T0,
                    http_status: None,
                    error: Some("connection refused".into()),
                    duration_ms: 1,
                },
                next: NextState::Failed,
            },
        })
        .collect();
    assert_eq!(store.record_attempts("w1", &results).await.unwrap(), 300);
    for (i, d) in leased.iter().enumerate() {
        let rec = store.get_delivery(t, d.id).await.unwrap().unwrap();
        let expected = match i % 3 {
            0 => (DeliveryStatus::Delivered, None, Some(200), None),
            1 => (DeliveryStatus::Pending, Some(retry_at), Some(503), None),
            _ => (
                DeliveryStatus::Failed,
                None,
                None,
                Some("connection refused".to_string()),
            ),
        };
        assert_eq!(
            (
                rec.status,
                rec.next_attempt_at,
                rec.last_status,
                rec.last_error
            ),
            expected
        );
        assert_eq!(rec.attempts.len(), 1);
        assert_eq!(rec.attempts[0].http_status, expected.2);
    }
    // The retried ones are leasable when due. One leased again by the same worker after its
    // lease lapsed can have two results in one write: both enter the log, the first settles it
    // and ends the lease, so the second settles nothing (as two separate writes would); the
    // delivery is sent again later, with the same id.
    let due = store
        .lease_due(lease("w1", retry_at, 1000, 1000))
        .await
        .unwrap();
    assert_eq!(due.len(), 100);
    let d = due[0].id;
    let lapsed = Millis(retry_at.0 + 60_001);
    let re = store
        .lease_due(lease("w1", lapsed, 1000, 1000))
        .await
        .unwrap();
    assert!(re.iter().any(|r| r.id == d));
    let later = Millis(retry_at.0 + 10_000);
    assert_eq!(
        store
            .record_attempts(
                "w1",
                &[
                    result(d, retry_at, 500, NextState::RetryAt(later)),
                    result(d, lapsed, 200, NextState::Delivered),
                ],
            )
            .await
            .unwrap(),
        1
    );
    let rec = store.get_delivery(t, d).await.unwrap().unwrap();
    assert_eq!(
        (rec.status, rec.next_attempt_at),
        (DeliveryStatus::Pending, Some(later))
    );
    assert_eq!(
        rec.attempts
            .iter()
            .map(|a| a.http_status)
            .collect::<Vec<_>>(),
        vec![Some(503), Some(500), Some(200)]
    );
}

macro_rules! on_both {
    ($name:ident, $story:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            for backend in backends() {
                let db = backend.open().await;
                $story(db.store.clone()).await;
                db.finish().await;
            }
        }
    };
}

on_both!(targets_on_every_backend, story_targets);
on_both!(enqueue_and_lease_on_every_backend, story_enqueue_and_lease);
on_both!(per_target_cap_on_every_backend, story_per_target_cap);
on_both!(
    concurrent_workers_on_every_backend,
    story_concurrent_workers
);
on_both!(caps_and_release_on_every_backend, story_caps_and_release);
on_both!(
    record_many_at_once_on_every_backend,
    story_record_many_at_once
);
