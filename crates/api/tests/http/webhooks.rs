//! Webhook targets, the delivery log and retries over HTTP, with the real delivery worker sending
//! to real receivers on loopback.

#[path = "../../../webhooks/tests/support/receiver.rs"]
mod receiver;

use crate::harness::{body, expect_error, TestApp};
use receiver::Receiver;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn app() -> TestApp {
    TestApp::spawn_with(api::ApiConfig {
        api_rate_limit_per_minute: 0,
        webhook_allow_private: true,
        ..Default::default()
    })
    .await
}

/// Runs a delivery worker over the app's store until the returned sender fires or drops.
fn start_worker(app: &TestApp) -> tokio::sync::oneshot::Sender<()> {
    let mut config = ::webhooks::WorkerConfig::new(
        "1,1,1".parse().unwrap(),
        ::webhooks::ClientConfig {
            policy: ::webhooks::UrlPolicy::ALLOW_PRIVATE,
            ..Default::default()
        },
    );
    config.idle_poll = Duration::from_millis(50);
    let worker = ::webhooks::Worker::new(app.store.clone(), config).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        worker
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    stop
}

async fn patch(
    app: &TestApp,
    t: &crate::harness::Tenant,
    path: &str,
    b: &Value,
) -> reqwest::Response {
    app.client
        .patch(app.url(path))
        .bearer_auth(&t.key)
        .json(b)
        .send()
        .await
        .unwrap()
}

async fn delete(app: &TestApp, t: &crate::harness::Tenant, path: &str) -> reqwest::Response {
    app.client
        .delete(app.url(path))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
}

/// Polls the delivery log until `pred` holds for the listed deliveries.
async fn wait_log(
    app: &TestApp,
    t: &crate::harness::Tenant,
    query: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.get(t, &format!("/v1/webhook-deliveries{query}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let b = body(r).await;
        if pred(&b) {
            return b;
        }
        assert!(Instant::now() < deadline, "delivery log never matched: {b}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test]
async fn target_crud_and_its_errors() {
    let app = app().await;
    let t = app.tenant("acme").await;
    let agent = app.agent(&t, "+918035739222").await;
    let base = format!("/v1/agents/{agent}/webhook-targets");

    let r = app
        .post(
            &t,
            &base,
            &json!({"name": "crm", "url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let created = body(r).await["data"].clone();
    let id = created["webhook_target_id"].as_i64().unwrap();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["active"], true);
    assert_eq!(created["include_transcript"], false);
    assert_eq!(created["events"].as_array().unwrap().len(), 8);
    assert!(!created["events"]
        .as_array()
        .unwrap()
        .contains(&json!("webhook.test")));

    let got = body(app.get(&t, &format!("{base}/{id}")).await).await["data"].clone();
    assert!(
        got.get("secret").is_none(),
        "GET never shows the secret: {got}"
    );
    let listed = body(app.get(&t, &base).await).await;
    assert!(listed["data"][0].get("secret").is_none());

    expect_error(
        app.post(
            &t,
            &base,
            &json!({"name": "crm", "url": "http://127.0.0.1:9/x"}),
        )
        .await,
        400,
        "invalid_request",
        "webhook target name already used",
    )
    .await;
    for i in 2..=5 {
        let r = app
            .post(&t, &base, &json!({"name": format!("t{i}"), "url": "http://127.0.0.1:9/x", "secret": "my-own-secret-0123456789", "events": ["call.failed"]}))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await["data"]["secret"], "my-own-secret-0123456789");
    }
    expect_error(
        app.post(
            &t,
            &base,
            &json!({"name": "sixth", "url": "http://127.0.0.1:9/x"}),
        )
        .await,
        400,
        "invalid_request",
        "agent has 5 webhook targets",
    )
    .await;

    // Another tenant's agent is not found, for every route under it.
    let other = app.tenant("other").await;
    expect_error(
        app.post(
            &other,
            &base,
            &json!({"name": "x", "url": "http://127.0.0.1:9/x"}),
        )
        .await,
        404,
        "not_found",
        "agent not found",
    )
    .await;
    expect_error(
        app.get(&other, &format!("{base}/{id}")).await,
        404,
        "not_found",
        "agent not found",
    )
    .await;
    expect_error(
        app.get(&other, &base).await,
        404,
        "not_found",
        "agent not found",
    )
    .await;

    for (bad, message) in [
        (json!({"url": "http://127.0.0.1:9/x"}), "name is required"),
        (json!({"name": "n"}), "url is required"),
        (
            json!({"name": "n", "url": "http://127.0.0.1:9/x", "events": ["call.nope"]}),
            "invalid events",
        ),
        (
            json!({"name": "n", "url": "http://127.0.0.1:9/x", "events": []}),
            "invalid events",
        ),
        (
            json!({"name": "n", "url": "http://127.0.0.1:9/x", "secret": "short"}),
            "invalid secret",
        ),
        (
            json!({"name": "n", "url": "http://127.0.0.1:9/x", "active": "yes"}),
            "invalid active",
        ),
        (
            json!({"name": "n", "url": "http://127.0.0.1:9/x", "colour": 1}),
            "invalid colour",
        ),
    ] {
        expect_error(
            app.post(&t, &base, &bad).await,
            400,
            "invalid_request",
            message,
        )
        .await;
    }

    let r = patch(
        &app,
        &t,
        &format!("{base}/{id}"),
        &json!({"include_transcript": true, "name": "crm2"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let patched = body(r).await["data"].clone();
    assert_eq!(
        (
            patched["name"].clone(),
            patched["include_transcript"].clone()
        ),
        (json!("crm2"), json!(true))
    );
    assert!(patched.get("secret").is_none());
    expect_error(
        patch(&app, &t, &format!("{base}/{id}"), &json!({"name": "t2"})).await,
        400,
        "invalid_request",
        "webhook target name already used",
    )
    .await;
    expect_error(
        patch(
            &app,
            &t,
            &format!("{base}/{id}"),
            &json!({"secret": "my-own-secret-0123456789"}),
        )
        .await,
        400,
        "invalid_request",
        "invalid secret",
    )
    .await;

    let r = app
        .post(&t, &format!("{base}/{id}/rotate-secret"), &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let rotated = body(r).await["data"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(rotated.starts_with("whsec_") && rotated != created["secret"]);

    let r = delete(&app, &t, &format!("{base}/{id}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    expect_error(
        delete(&app, &t, &format!("{base}/{id}")).await,
        404,
        "not_found",
        "webhook target not found",
    )
    .await;
    expect_error(
        app.get(&t, &format!("{base}/999")).await,
        404,
        "not_found",
        "webhook target not found",
    )
    .await;
    expect_error(
        app.get(&t, &format!("{base}/abc")).await,
        404,
        "not_found",
        "webhook target not found",
    )
    .await;
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let agent = app.agent(&t, "+918035739222").await;
    let base = format!("/v1/agents/{agent}/webhook-targets");
    for url in [
        "http://127.0.0.1/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://localhost:8080/hook",
    ] {
        expect_error(
            app.post(&t, &base, &json!({"name": "n", "url": url})).await,
            400,
            "invalid_request",
            "url not allowed",
        )
        .await;
    }
    for url in [
        "ftp://example.com/x",
        "http://user:pw@example.com/",
        "not a url",
        "javascript:alert(1)",
    ] {
        expect_error(
            app.post(&t, &base, &json!({"name": "n", "url": url})).await,
            400,
            "invalid_request",
            "invalid url",
        )
        .await;
    }
}

#[tokio::test]
async fn delivery_log_shows_every_attempt_and_retry_resends() {
    let app = app().await;
    let t = app.tenant("acme").await;
    let agent = app.agent(&t, "+918035739222").await;
    let base = format!("/v1/agents/{agent}/webhook-targets");
    let _worker = start_worker(&app);

    // 500, 500, 200: three attempts of one event, all signed, one webhook-id.
    let flaky = Receiver::start(&[500, 500], 200).await;
    let r = app
        .post(&t, &base, &json!({"name": "flaky", "url": flaky.url()}))
        .await;
    let created = body(r).await["data"].clone();
    let flaky_id = created["webhook_target_id"].as_i64().unwrap();
    flaky.expect_secrets(&[created["secret"].as_str().unwrap()]);
    let r = app
        .post(&t, &format!("{base}/{flaky_id}/test"), &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let test = body(r).await["data"].clone();
    assert_eq!(test["status"], "pending");
    let log = wait_log(
        &app,
        &t,
        &format!("?webhook_target_id={flaky_id}&status=delivered"),
        |b| b["total"] == 1,
    )
    .await;
    let d = &log["data"][0];
    assert_eq!(d["event_id"], test["event_id"]);
    assert_eq!(d["event_type"], "webhook.test");
    assert_eq!(d["webhook_delivery_id"], test["webhook_delivery_id"]);
    let statuses: Vec<Value> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["http_status"].clone())
        .collect();
    assert_eq!(statuses, vec![json!(500), json!(500), json!(200)]);
    assert!(d["attempts"][0]["at"].as_i64().unwrap() > 0);
    let seen = flaky.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen
        .iter()
        .all(|r| r.verified && r.webhook_id == test["event_id"]));
    assert_eq!(seen[0].body["data"]["webhook_target_id"], flaky_id);

    // 400: one attempt, failed; a manual retry sends it again (same id) and it is delivered.
    let picky = Receiver::start(&[400], 200).await;
    let r = app
        .post(
            &t,
            &base,
            &json!({"name": "picky", "url": picky.url(), "secret": "picky-secret-0123456789"}),
        )
        .await;
    let picky_id = body(r).await["data"]["webhook_target_id"].as_i64().unwrap();
    picky.expect_secrets(&["picky-secret-0123456789"]);
    let test = body(
        app.post(&t, &format!("{base}/{picky_id}/test"), &json!({}))
            .await,
    )
    .await["data"]
        .clone();
    let log = wait_log(&app, &t, &format!("?webhook_target_id={picky_id}"), |b| {
        b["data"][0]["status"] == "failed"
    })
    .await;
    assert_eq!(log["data"][0]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(log["data"][0]["last_status"], 400);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(picky.seen().len(), 1, "a 400 is not retried");
    let delivery = test["webhook_delivery_id"].as_i64().unwrap();
    let r = app
        .post(
            &t,
            &format!("/v1/webhook-deliveries/{delivery}/retry"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await["data"]["status"], "pending");
    wait_log(
        &app,
        &t,
        &format!("?webhook_target_id={picky_id}&status=delivered"),
        |b| b["total"] == 1,
    )
    .await;
    let seen = picky.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|r| r.verified && r.webhook_id == test["event_id"]));

    // Rotation: the next delivery carries two signatures, each verifying with its secret.
    let old = picky_id;
    let r = app
        .post(
            &t,
            &format!("{base}/{old}/rotate-secret"),
            &json!({"secret": "rotated-secret-0123456789"}),
        )
        .await;
    assert_eq!(body(r).await["data"]["secret"], "rotated-secret-0123456789");
    picky.expect_secrets(&["rotated-secret-0123456789", "picky-secret-0123456789"]);
    app.post(&t, &format!("{base}/{old}/test"), &json!({}))
        .await;
    let seen = picky.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!((seen[2].signatures, seen[2].verified), (2, true));

    // Log filters and errors.
    let all = body(app.get(&t, "/v1/webhook-deliveries?limit=2").await).await;
    assert_eq!(
        (
            all["total"].clone(),
            all["has_more"].clone(),
            all["data"].as_array().unwrap().len()
        ),
        (json!(3), json!(true), 2)
    );
    // A malformed id is refused rather than matching nothing; a well-formed unknown one
    // matches nothing.
    expect_error(
        app.get(&t, "/v1/webhook-deliveries?conversation_id=nope")
            .await,
        400,
        "invalid_request",
        "invalid conversation_id",
    )
    .await;
    let none = body(
        app.get(
            &t,
            "/v1/webhook-deliveries?conversation_id=00000000-0000-0000-0000-000000000000_1",
        )
        .await,
    )
    .await;
    assert_eq!(none["total"], 0);
    // Which of two values would the client mean? Neither is guessed.
    expect_error(
        app.get(&t, "/v1/webhook-deliveries?status=failed&status=delivered")
            .await,
        400,
        "invalid_request",
        "invalid status",
    )
    .await;
    expect_error(
        app.get(&t, "/v1/webhook-deliveries?status=done").await,
        400,
        "invalid_request",
        "invalid status",
    )
    .await;
    expect_error(
        app.get(&t, "/v1/webhook-deliveries?webhook_target_id=x")
            .await,
        400,
        "invalid_request",
        "invalid webhook_target_id",
    )
    .await;
    expect_error(
        app.get(&t, "/v1/webhook-deliveries?limit=0").await,
        400,
        "invalid_request",
        "invalid limit",
    )
    .await;
    let other = app.tenant("other").await;
    assert_eq!(
        body(app.get(&other, "/v1/webhook-deliveries").await).await["total"],
        0
    );
    expect_error(
        app.post(
            &other,
            &format!("/v1/webhook-deliveries/{delivery}/retry"),
            &json!({}),
        )
        .await,
        404,
        "not_found",
        "webhook delivery not found",
    )
    .await;

    // A deactivated target takes no tests and no retries.
    patch(
        &app,
        &t,
        &format!("{base}/{old}"),
        &json!({"active": false}),
    )
    .await;
    expect_error(
        app.post(&t, &format!("{base}/{old}/test"), &json!({}))
            .await,
        400,
        "invalid_request",
        "webhook target is not active",
    )
    .await;
    expect_error(
        app.post(
            &t,
            &format!("/v1/webhook-deliveries/{delivery}/retry"),
            &json!({}),
        )
        .await,
        400,
        "invalid_request",
        "webhook target is not active",
    )
    .await;
}
