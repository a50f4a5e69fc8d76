//! Listing and reading conversations; tenant isolation.

use crate::harness::*;
use serde_json::json;

#[tokio::test]
async fn pagination_is_newest_first_with_bounds() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let agent = app.agent(&t, "+918035739222").await;
    let other_agent = app.agent(&t, "+918035739223").await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let a = if i % 5 == 0 { other_agent } else { agent };
        let r = app.post(&t, "/v1/call", &call(a, &phone(i))).await;
        assert_eq!(r.status(), 200);
        ids.push(
            r.headers()["location"]
                .to_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string(),
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    ids.reverse();

    let page = body(app.get(&t, "/v1/conversations").await).await;
    assert_eq!(page["total"], 25);
    assert_eq!(page["has_more"], true);
    let got: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conversation_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        ids[..20].iter().map(String::as_str).collect::<Vec<_>>()
    );
    let item = page["data"][0].as_object().unwrap();
    let mut keys: Vec<&str> = item.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "agent_id",
            "contact_number",
            "conversation_id",
            "duration_seconds",
            "end_timestamp",
            "start_timestamp",
            "status"
        ]
    );

    let last = body(app.get(&t, "/v1/conversations?limit=20&offset=20").await).await;
    assert_eq!(last["data"].as_array().unwrap().len(), 5);
    assert_eq!(last["has_more"], false);
    let beyond = body(app.get(&t, "/v1/conversations?offset=1000").await).await;
    assert_eq!(beyond["data"], json!([]));
    assert_eq!(beyond["total"], 25);
    let max = body(app.get(&t, "/v1/conversations?limit=100").await).await;
    assert_eq!(max["data"].as_array().unwrap().len(), 25);

    let filtered = body(
        app.get(&t, &format!("/v1/conversations?agent_id={other_agent}"))
            .await,
    )
    .await;
    assert_eq!(filtered["total"], 5);
    assert!(filtered["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["agent_id"] == other_agent));

    for (q, msg) in [
        ("limit=0", "invalid limit"),
        ("limit=101", "invalid limit"),
        ("limit=-5", "invalid limit"),
        ("limit=ten", "invalid limit"),
        ("offset=-1", "invalid offset"),
        ("agent_id=abc", "invalid agent_id"),
        ("agent_id=0", "invalid agent_id"),
    ] {
        expect_error(
            app.get(&t, &format!("/v1/conversations?{q}")).await,
            400,
            "invalid_request",
            msg,
        )
        .await;
    }
}

#[tokio::test]
async fn tenants_never_see_each_others_agents_or_conversations() {
    let app = TestApp::spawn().await;
    let a = app.tenant("acme").await;
    let b = app.tenant("globex").await;
    let agent_a = app.agent(&a, "+918035739222").await;
    let r = app.post(&a, "/v1/call", &call(agent_a, &phone(1))).await;
    let conv = r.headers()["location"].to_str().unwrap().to_string();

    // B cannot read, change, delete or use A's agent; the answer is the one for a missing agent.
    expect_error(
        app.get(&b, &format!("/v1/agents/{agent_a}")).await,
        404,
        "not_found",
        "agent not found",
    )
    .await;
    let patch = app
        .client
        .patch(app.url(&format!("/v1/agents/{agent_a}")))
        .bearer_auth(&b.key)
        .json(&json!({"name": "mine"}))
        .send()
        .await
        .unwrap();
    expect_error(patch, 404, "not_found", "agent not found").await;
    let del = app
        .client
        .delete(app.url(&format!("/v1/agents/{agent_a}")))
        .bearer_auth(&b.key)
        .send()
        .await
        .unwrap();
    expect_error(del, 404, "not_found", "agent not found").await;
    expect_error(
        app.post(&b, "/v1/call", &call(agent_a, &phone(2))).await,
        404,
        "not_found",
        "agent not found",
    )
    .await;
    assert_eq!(body(app.get(&b, "/v1/agents").await).await["total"], 0);

    // Nor A's conversations, by id, by listing or by filtering on A's agent.
    expect_error(
        app.get(&b, &conv).await,
        404,
        "not_found",
        "conversation not found",
    )
    .await;
    expect_error(
        app.get(&b, &format!("{conv}/recording")).await,
        404,
        "not_found",
        "conversation not found",
    )
    .await;
    assert_eq!(
        body(app.get(&b, "/v1/conversations").await).await["total"],
        0
    );
    assert_eq!(
        body(
            app.get(&b, &format!("/v1/conversations?agent_id={agent_a}"))
                .await
        )
        .await["total"],
        0
    );
    // B cannot put a number on A's trunk either.
    let trunks = body(app.get(&a, "/v1/trunks").await).await;
    let trunk_a = trunks["data"][0]["trunk_id"].clone();
    expect_error(
        app.post(
            &b,
            "/v1/phone-numbers",
            &json!({"number": "+918035739299", "trunk_id": trunk_a}),
        )
        .await,
        404,
        "not_found",
        "trunk not found",
    )
    .await;

    // A still sees its own.
    assert_eq!(app.get(&a, &conv).await.status(), 200);
    expect_error(
        app.get(&a, &format!("{conv}/recording")).await,
        404,
        "not_found",
        "recording not found",
    )
    .await;
}

#[tokio::test]
async fn cancel_before_dialling_and_conflict_after() {
    use domain::dispatch::DispatchStore;
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let agent = app.agent(&t, "+918035739222").await;
    let mut req = call(agent, &phone(1));
    req["scheduled_for"] = json!((chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
    let loc = app.post(&t, "/v1/call", &req).await.headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    let r = app.post(&t, &format!("{loc}/cancel"), &json!({})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body(r).await["data"]["status"], "canceled");
    expect_error(
        app.post(&t, &format!("{loc}/cancel"), &json!({})).await,
        409,
        "conflict",
        "call already started",
    )
    .await;

    // Once dialling has begun (the dispatcher made `initiated` durable), it is too late.
    let loc2 = app
        .post(&t, "/v1/call", &call(agent, &phone(2)))
        .await
        .headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    let now = domain::Millis::now();
    let claimed = app
        .store
        .claim_due("n1", now, domain::Millis(now.0 + 30_000), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let started = app
        .store
        .begin_dial(
            claimed[0].id,
            "n1",
            now,
            domain::Millis(now.0 + 30_000),
            None,
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(started, domain::dispatch::BeginDial::Started);
    expect_error(
        app.post(&t, &format!("{loc2}/cancel"), &json!({})).await,
        409,
        "conflict",
        "call already started",
    )
    .await;
    assert_eq!(
        body(app.get(&t, &loc2).await).await["data"]["status"],
        "initiated"
    );

    let other = app.tenant("globex").await;
    expect_error(
        app.post(&other, &format!("{loc2}/cancel"), &json!({}))
            .await,
        404,
        "not_found",
        "conversation not found",
    )
    .await;
}
