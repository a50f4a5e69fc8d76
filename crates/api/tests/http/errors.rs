//! Every row of the contract's error table, and malformed input of every kind: always a 4xx with
//! the error shape, never a 5xx, never a partial write.

use crate::harness::*;
use domain::store::Store;
use domain::tenant::TenantLimits;
use serde_json::json;

#[tokio::test]
async fn every_row_of_the_call_error_table() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let agent = app.agent(&t, "+918035739222").await;

    let cases = [
        (json!([1, 2]), "invalid JSON body"),
        (json!({"parameters": []}), "agent_id is required"),
        (json!({"agent_id": agent}), "parameters is required"),
        (
            json!({"agent_id": agent, "parameters": [{"name": "customer_name", "value": "R"}]}),
            "customer_phone parameter is required",
        ),
        (
            json!({"agent_id": agent, "parameters": [{"name": "customer_phone", "value": "9876543210"}]}),
            "invalid customer_phone",
        ),
        (
            json!({"agent_id": agent, "parameters": [{"name": "customer_phone", "value": "+919876543210"}], "scheduled_for": "2001-01-01T00:00:00Z"}),
            "invalid scheduled_for",
        ),
        (
            json!({"agent_id": agent, "parameters": [{"name": "customer_phone", "value": "+919876543210"}], "scheduled_for": "2999-01-01T00:00:00Z"}),
            "invalid scheduled_for",
        ),
        (
            json!({"agent_id": agent, "parameters": [{"name": "customer_phone", "value": "+919876543210"}], "metadata": 5}),
            "invalid metadata",
        ),
        (
            json!({"agent_id": agent, "parameters": [{"name": "customer_phone", "value": "+919876543210"}], "idempotency_key": "x".repeat(256)}),
            "invalid idempotency_key",
        ),
        (
            json!({"agent_id": agent, "parameters": [{"name": "customer_phone", "value": "+919876543210"}], "metadata": "m".repeat(16 * 1024 + 1)}),
            "invalid metadata",
        ),
    ];
    for (input, message) in cases {
        expect_error(
            app.post(&t, "/v1/call", &input).await,
            400,
            "invalid_request",
            message,
        )
        .await;
    }

    // An agent without a number cannot place calls.
    let bare = body(
        app.post(&t, "/v1/agents", &json!({"name": "no number"}))
            .await,
    )
    .await["data"]["agent_id"]
        .clone();
    expect_error(
        app.post(&t, "/v1/call", &json!({"agent_id": bare, "parameters": [{"name": "customer_phone", "value": "+919876543210"}]})).await,
        400,
        "invalid_request",
        "agent has no phone number configured",
    )
    .await;
    expect_error(
        app.post(&t, "/v1/call", &call(999_999, "+919876543210"))
            .await,
        404,
        "not_found",
        "agent not found",
    )
    .await;
    let mut chained = call(agent, "+919876543210");
    chained["conversation_id"] = json!("e36853de-9cbb-441e-ad75-d3c8ac82abfb_1");
    expect_error(
        app.post(&t, "/v1/call", &chained).await,
        404,
        "not_found",
        "conversation not found",
    )
    .await;

    // 409 carries the first request's trace id.
    let mut keyed = call(agent, &phone(1));
    keyed["idempotency_key"] = json!("order-1");
    let first = body(app.post(&t, "/v1/call", &keyed).await).await;
    let err = expect_error(
        app.post(&t, "/v1/call", &keyed).await,
        409,
        "duplicate_request",
        "idempotency key already used",
    )
    .await;
    assert_eq!(err["trace_id"], first["data"]["trace_id"]);

    // 413 for a body over 64 KiB, before it is parsed.
    let big = format!(
        "{{\"agent_id\": {agent}, \"metadata\": \"{}\"}}",
        "x".repeat(70 * 1024)
    );
    expect_error(
        app.post_raw(&t, "/v1/call", big).await,
        413,
        "invalid_request",
        "request body too large",
    )
    .await;

    // 429 per number, with Retry-After in whole seconds >= 1.
    app.post(&t, "/v1/call", &call(agent, &phone(2))).await;
    let r = app.post(&t, "/v1/call", &call(agent, &phone(2))).await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    expect_error(
        r,
        429,
        "rate_limit_exceeded",
        "rate limit exceeded for this number",
    )
    .await;

    // 429 for the tenant's concurrent call limit, with the counts.
    app.set_limits(
        &t,
        TenantLimits {
            max_concurrent_calls: Some(3),
            ..Default::default()
        },
    )
    .await;
    // Two immediate calls are live so far (phones 1 and 2); one more fits.
    assert_eq!(
        app.post(&t, "/v1/call", &call(agent, &phone(3)))
            .await
            .status(),
        200
    );
    let err = expect_error(
        app.post(&t, "/v1/call", &call(agent, &phone(4))).await,
        429,
        "concurrent_call_limit_exceeded",
        "concurrent call limit reached. 3 simultaneous calls allowed.",
    )
    .await;
    assert_eq!(err["current_calls"], 3);
    assert_eq!(err["max_calls"], 3);
    assert_eq!(app.calls(&t).await, 3, "refused requests wrote nothing");
}

#[tokio::test]
async fn authentication_and_routing_errors_have_the_error_shape() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let c = &app.client;
    let unauth = "invalid or missing api key";
    expect_error(
        c.get(app.url("/v1/conversations")).send().await.unwrap(),
        401,
        "authentication_error",
        unauth,
    )
    .await;
    for header in [
        "Bearer",
        "Bearer od_nope",
        "Basic abc",
        &format!("Bearer {}x", t.key),
        &t.key.clone(),
    ] {
        let r = c
            .get(app.url("/v1/conversations"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        expect_error(r, 401, "authentication_error", unauth).await;
    }
    // A revoked key stops working at once.
    let keys = app.store.list_api_keys(t.id).await.unwrap();
    app.store
        .revoke_api_key(t.id, keys[0].id, domain::Millis::now())
        .await
        .unwrap();
    expect_error(
        app.get(&t, "/v1/conversations").await,
        401,
        "authentication_error",
        unauth,
    )
    .await;

    expect_error(
        c.get(app.url("/v2/anything")).send().await.unwrap(),
        404,
        "not_found",
        "not found",
    )
    .await;
    // The key is checked before the method: a caller without one learns nothing of the routes.
    expect_error(
        c.delete(app.url("/v1/call")).send().await.unwrap(),
        401,
        "authentication_error",
        unauth,
    )
    .await;
    let t2 = app.tenant("beta").await;
    let r = c
        .delete(app.url("/v1/call"))
        .bearer_auth(&t2.key)
        .send()
        .await
        .unwrap();
    expect_error(r, 405, "invalid_request", "method not allowed").await;
    expect_error(
        app.get(&t2, "/v1/no-such-route").await,
        404,
        "not_found",
        "not found",
    )
    .await;
}

#[tokio::test]
async fn api_rate_limit_per_key_with_headers_on_every_authenticated_response() {
    let app = TestApp::spawn_with(api::ApiConfig {
        api_rate_limit_per_minute: 3,
        ..Default::default()
    })
    .await;
    let t = app.tenant("acme").await;
    let other = app.tenant("other").await;
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = app.get(&t, "/v1/conversations").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit"], "3");
        let reset = r.headers()["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            chrono::DateTime::parse_from_rfc3339(&reset).is_ok() && reset.ends_with("+00:00"),
            "{reset}"
        );
        remaining.push(
            r.headers()["x-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let r = app.get(&t, "/v1/agents/12345").await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    expect_error(r, 429, "rate_limit_exceeded", "rate limit exceeded").await;
    // Error responses of an authenticated request carry the headers too; other keys are unaffected.
    let r = app.get(&other, "/v1/agents/12345").await;
    assert_eq!(r.headers()["x-ratelimit-remaining"], "2");
    expect_error(r, 404, "not_found", "agent not found").await;
}

#[tokio::test]
async fn malformed_input_is_always_a_4xx_with_the_error_shape_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let agent = app.agent(&t, "+918035739222").await;
    let a = agent.to_string();
    let bodies: Vec<String> = vec![
        String::new(),
        "not json".into(),
        "{".into(),
        "null".into(),
        "42".into(),
        "\"string\"".into(),
        "[]".into(),
        "{\"agent_id\": 1e400, \"parameters\": []}".into(),
        "{\"agent_id\": 123456789012345678901234567890, \"parameters\": [{\"name\": \"customer_phone\", \"value\": \"+919876543210\"}]}".into(),
        format!("{{\"agent_id\": -{a}, \"parameters\": []}}"),
        format!("{{\"agent_id\": \"{a}\", \"parameters\": []}}"),
        format!("{{\"agent_id\": {a}, \"parameters\": {{\"customer_phone\": \"+919876543210\"}}}}"),
        format!("{{\"agent_id\": {a}, \"parameters\": [\"+919876543210\"]}}"),
        format!("{{\"agent_id\": {a}, \"parameters\": [{{\"name\": \"customer_phone\"}}]}}"),
        format!("{{\"agent_id\": {a}, \"parameters\": [{{\"name\": \"customer_phone\", \"value\": \"+919876543210\", \"x\": 1}}]}}"),
        format!("{{\"agent_id\": {a}, \"parameters\": [{{\"name\": \"customer_phone\", \"value\": \"+919876543210\"}}], \"scheduled_for\": \"soon\"}}"),
        format!("{{\"agent_id\": {a}, \"parameters\": [{{\"name\": \"customer_phone\", \"value\": \"+919876543210\"}}], \"retry_context\": [1]}}"),
        format!("{{\"agent_id\": {a}, \"parameters\": [{{\"name\": \"customer_phone\", \"value\": \"+919876543210\"}}], \"conversation_id\": 7}}"),
        format!("{{\"agent_id\": {a}, \"parameters\": [{{\"name\": \"customer_phone\", \"value\": \"+919876543210\"}}], \"idempotency_key\": 99}}"),
        "\u{0}\u{1}\u{2}".into(),
        "{\"agent_id\": 1, \"parameters\": [".repeat(2000),
        format!("{{\"agent_id\": {a}, \"metadata\": \"{}\"}}", "y".repeat(70 * 1024)),
    ];
    for b in bodies {
        let shown: String = b.chars().take(60).collect();
        let r = app.post_raw(&t, "/v1/call", b).await;
        let status = r.status().as_u16();
        assert!((400..500).contains(&status), "{status} for {shown:?}");
        let e = body(r).await;
        assert!(
            e["error"]["message"].is_string() && e["error"]["type"].is_string(),
            "{e} for {shown:?}"
        );
    }
    // A chunked body (no Content-Length) over the limit is cut off while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..70).map(|_| Ok(vec![b' '; 1024])).collect();
    let stream = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    expect_error(
        app.post_raw(&t, "/v1/call", stream).await,
        413,
        "invalid_request",
        "request body too large",
    )
    .await;
    assert_eq!(app.calls(&t).await, 0);
    // Management endpoints refuse bad input the same way.
    expect_error(
        app.post_raw(&t, "/v1/agents", "nope").await,
        400,
        "invalid_request",
        "invalid JSON body",
    )
    .await;
    expect_error(
        app.post(
            &t,
            "/v1/trunks",
            &serde_json::json!({"name": "x", "uri": "http://x"}),
        )
        .await,
        400,
        "invalid_request",
        "invalid uri",
    )
    .await;
    expect_error(
        app.post(
            &t,
            "/v1/phone-numbers",
            &serde_json::json!({"number": "12", "trunk_id": 1}),
        )
        .await,
        400,
        "invalid_request",
        "invalid number",
    )
    .await;
    expect_error(
        app.get(&t, "/v1/conversations/not-an-id").await,
        404,
        "not_found",
        "conversation not found",
    )
    .await;
}

#[tokio::test]
async fn a_revoked_key_stops_working_within_the_key_cache_time() {
    let app = TestApp::spawn_with(api::ApiConfig {
        api_rate_limit_per_minute: 0,
        key_cache_ttl: std::time::Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let t = app.tenant("acme").await;
    assert_eq!(app.get(&t, "/v1/conversations").await.status(), 200);
    let keys = app.store.list_api_keys(t.id).await.unwrap();
    app.store
        .revoke_api_key(t.id, keys[0].id, domain::Millis::now())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    expect_error(
        app.get(&t, "/v1/conversations").await,
        401,
        "authentication_error",
        "invalid or missing api key",
    )
    .await;
}
