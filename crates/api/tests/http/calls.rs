//! `POST /v1/call` behaviour a client relies on.

use crate::harness::*;
use serde_json::json;

#[tokio::test]
async fn twenty_concurrent_identical_requests_make_exactly_one_call() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let agent = app.agent(&t, "+918035739222").await;
    let other_agent = app.agent(&t, "+918035739223").await;
    let mut req = call(agent, &phone(1));
    req["idempotency_key"] = json!("invoice-42");
    let requests = (0..20).map(|_| app.post(&t, "/v1/call", &req));
    let responses = futures::future::join_all(requests).await;
    let mut statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        19,
        "{statuses:?}"
    );
    assert_eq!(app.calls(&t).await, 1);

    // The same key on another agent is another request.
    let mut req2 = call(other_agent, &phone(2));
    req2["idempotency_key"] = json!("invoice-42");
    assert_eq!(app.post(&t, "/v1/call", &req2).await.status(), 200);
    // And on another tenant too.
    let t2 = app.tenant("globex").await;
    let agent2 = app.agent(&t2, "+918035739222").await;
    let mut req3 = call(agent2, &phone(1));
    req3["idempotency_key"] = json!("invoice-42");
    assert_eq!(app.post(&t2, "/v1/call", &req3).await.status(), 200);
    assert_eq!(app.calls(&t).await, 2);
}

#[tokio::test]
async fn an_accepted_call_is_stored_as_given() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let agent = app.agent(&t, "+918035739222").await;
    let mut req = call(agent, "+91 98765 43210");
    req["metadata"] = json!("{\"crm_id\": \"C-9\", \"note\": \"ünïcode ✓\"}");
    let r = app.post(&t, "/v1/call", &req).await;
    assert_eq!(r.status(), 200);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let accepted = body(r).await;
    assert_eq!(accepted["data"]["status"], "initiated");
    assert_eq!(accepted["data"]["agent_id"], agent);
    assert_eq!(accepted["data"]["conversation_id"], json!(null));
    assert_eq!(accepted["data"]["scheduled_for"], json!(null));
    let trace = accepted["data"]["trace_id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(trace).unwrap().get_version_num(), 4);
    assert_eq!(
        accepted["data"].as_object().unwrap().len(),
        5,
        "exactly FormantAI's fields"
    );

    let conv = body(app.get(&t, &location).await).await["data"].clone();
    assert_eq!(
        conv["status"], "queued",
        "not dialled until telephony takes it"
    );
    assert_eq!(conv["contact_number"], "+919876543210");
    assert_eq!(conv["trace_id"], trace);
    assert_eq!(conv["metadata"], req["metadata"]);
    assert_eq!(conv["attempt"], 1);
    assert_eq!(conv["transcript"], json!([]));
    assert_eq!(conv["results"], json!({}));
    assert_eq!(conv["recording_url"], json!(null));
    // Present and null until a transfer to a person is tried.
    assert_eq!(conv.get("transfer"), Some(&json!(null)));
    assert!(conv["conversation_id"].as_str().unwrap().ends_with("_1"));
}

#[tokio::test]
async fn scheduled_calls_echo_utc_and_wait() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let agent = app.agent(&t, "+918035739222").await;
    let when = (chrono::Utc::now() + chrono::Duration::days(2))
        .with_timezone(&chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap());
    let when_text = when.format("%Y-%m-%dT%H:%M:%S%:z").to_string();
    let mut req = call(agent, &phone(1));
    req["scheduled_for"] = json!(when_text);
    let r = app.post(&t, "/v1/call", &req).await;
    assert_eq!(r.status(), 200);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let accepted = body(r).await;
    assert_eq!(accepted["data"]["status"], "scheduled");
    let utc = when
        .with_timezone(&chrono::Utc)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    assert_eq!(accepted["data"]["scheduled_for"], utc);
    let conv = body(app.get(&t, &location).await).await["data"].clone();
    assert_eq!(conv["status"], "scheduled");
    assert_eq!(conv["scheduled_for"], utc);
    // Scheduled calls do not use up the per-number budget of immediate calls.
    assert_eq!(app.post(&t, "/v1/call", &req).await.status(), 200);
    assert_eq!(
        app.post(&t, "/v1/call", &call(agent, &phone(1)))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn conversation_chains_count_attempts_and_carry_retry_context() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let agent = app.agent(&t, "+918035739222").await;
    let first = app.post(&t, "/v1/call", &call(agent, &phone(1))).await;
    let first_id = first.headers()["location"]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let (chain, attempt) = first_id.rsplit_once('_').unwrap();
    assert_eq!(attempt, "1");

    let mut retry = call(agent, &phone(2));
    retry["conversation_id"] = json!(first_id);
    retry["retry_context"] = json!({"collected_data": {"intent": "callback"}, "retry_initial_message": "Hi again",
                                    "retry_language": "en-IN", "retry_stage_id": "stage_follow_up"});
    let r = app.post(&t, "/v1/call", &retry).await;
    assert_eq!(r.status(), 200);
    let second_id = r.headers()["location"]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(second_id, format!("{chain}_2"));
    assert_eq!(
        body(r).await["data"]["conversation_id"],
        json!(first_id),
        "echoes the request"
    );
    let conv =
        body(app.get(&t, &format!("/v1/conversations/{second_id}")).await).await["data"].clone();
    assert_eq!(conv["attempt"], 2);
    assert_eq!(
        conv["results"],
        json!({"intent": "callback"}),
        "collected data seeds the results"
    );

    // Continuing from either attempt extends the same chain.
    retry["conversation_id"] = json!(first_id);
    retry["parameters"][0]["value"] = json!(phone(3));
    let r = app.post(&t, "/v1/call", &retry).await;
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .ends_with(&format!("{chain}_3")));

    // Another tenant cannot attach to this chain.
    let t2 = app.tenant("globex").await;
    let agent2 = app.agent(&t2, "+918035739222").await;
    let mut foreign = call(agent2, &phone(4));
    foreign["conversation_id"] = json!(first_id);
    expect_error(
        app.post(&t2, "/v1/call", &foreign).await,
        404,
        "not_found",
        "conversation not found",
    )
    .await;
}

#[tokio::test]
async fn per_number_limit_is_configurable_per_tenant() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let agent = app.agent(&t, "+918035739222").await;
    app.set_limits(
        &t,
        domain::tenant::TenantLimits {
            per_number_calls: 3,
            per_number_window_seconds: 600,
            max_concurrent_calls: None,
        },
    )
    .await;
    for _ in 0..3 {
        assert_eq!(
            app.post(&t, "/v1/call", &call(agent, &phone(1)))
                .await
                .status(),
            200
        );
    }
    let r = app.post(&t, "/v1/call", &call(agent, &phone(1))).await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((590..=600).contains(&retry_after), "{retry_after}");
    assert_eq!(r.status(), 429);
    // Other numbers are unaffected.
    assert_eq!(
        app.post(&t, "/v1/call", &call(agent, &phone(2)))
            .await
            .status(),
        200
    );
}
