use crate::harness::*;
use reqwest::StatusCode;

#[tokio::test]
async fn probes_metrics_and_openapi() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let agent = app.agent(&t, "+918035739222").await;
    assert_eq!(app.get_public("/healthz").await.status(), StatusCode::OK);
    assert_eq!(app.get_public("/readyz").await.status(), StatusCode::OK);
    assert_eq!(
        app.post(&t, "/v1/call", &call(agent, &phone(1)))
            .await
            .status(),
        200
    );
    let metrics = app.get_public("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(
            "outdial_http_requests_total{route=\"/v1/call\",method=\"POST\",status=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("outdial_http_request_duration_seconds_bucket{route=\"/v1/call\""));
    assert!(metrics.contains("outdial_calls_accepted_total{status=\"initiated\"}"));

    let doc = body(app.get_public("/openapi.json").await).await;
    for path in [
        "/v1/call",
        "/v1/conversations",
        "/v1/conversations/{conversation_id}",
        "/v1/conversations/{conversation_id}/recording",
        "/v1/agents",
        "/v1/agents/{agent_id}",
        "/v1/trunks",
        "/v1/phone-numbers",
        "/healthz",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from openapi.json"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // A conversation's transfer to a person is documented with its fields.
    let schemas = &doc["components"]["schemas"];
    let detail = &schemas["ConversationDetail"]["allOf"][1]["properties"];
    assert!(detail["transfer"].to_string().contains("TransferDetail"));
    let transfer = schemas["TransferDetail"]["properties"].as_object().unwrap();
    let fields: Vec<&str> = transfer.keys().map(String::as_str).collect();
    assert_eq!(fields, ["at", "method", "number", "status", "target"]);
    // So is the post-call transcript beside the live one, and the agent field asking for it.
    assert!(detail["post_call_transcript"]
        .to_string()
        .contains("PostCallTranscript"));
    let post_call = schemas["PostCallTranscript"]["properties"]
        .as_object()
        .unwrap();
    for field in ["status", "language", "text", "utterances", "error"] {
        assert!(post_call.contains_key(field), "{field}: {post_call:?}");
    }
    let agent_body =
        &doc["paths"]["/v1/agents"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(
        agent_body["properties"]["post_call_transcript"]["type"],
        serde_json::json!(["boolean", "null"])
    );
    // Every /v1 operation declares what the edge may answer for it.
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            for status in ["401", "429", "500"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} does not declare {status}"
                );
            }
        }
    }
    assert!(operations >= 30, "{operations} operations");
    // The bounds the API enforces are in the document: a generated client or a schema fuzzer
    // does not send `limit=0` or `agent_id=-1` and expect a 200.
    let param = |path: &str, name: &str| {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    };
    let limit = param("/v1/conversations", "limit");
    assert_eq!(
        (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
        (&serde_json::json!(1), &serde_json::json!(100))
    );
    assert_eq!(param("/v1/conversations", "offset")["schema"]["minimum"], 0);
    assert_eq!(
        param("/v1/agents/{agent_id}", "agent_id")["schema"]["minimum"],
        1
    );
    // Every request body says which fields it takes, which are required, and (for JSON) that
    // there are no others: a schema of a bare `object` promised that `{}` would do.
    let mut bodies = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(content) = op["requestBody"]["content"].as_object() else {
                continue;
            };
            for (media, c) in content {
                bodies += 1;
                let schema = &c["schema"];
                assert!(
                    schema["properties"].is_object(),
                    "{method} {path} {media}: {schema}"
                );
                if media == "application/json" {
                    assert_eq!(
                        schema["additionalProperties"], false,
                        "{method} {path}: {schema}"
                    );
                }
            }
        }
    }
    assert!(bodies >= 11, "{bodies} request bodies");
    let trunk =
        &doc["paths"]["/v1/trunks"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(trunk["required"], serde_json::json!(["name", "uri"]));
    let number = doc["paths"]["/v1/do-not-call/{number}"]["get"]["parameters"][0].clone();
    assert_eq!(number["schema"]["format"], "e164", "{number}");
}

#[tokio::test]
async fn a_panicking_handler_answers_500_naming_the_trace_id_and_the_node_serves_on() {
    use axum::routing::get;
    let app = TestApp::spawn_serving(api::ApiConfig::default(), |state| {
        let boom: axum::Router<api::AppState> = axum::Router::new()
            .route(
                "/v1/boom",
                get(|| async {
                    if true {
                        panic!("boom: internal detail");
                    }
                    "unreached"
                }),
            )
            .route("/v1/fine", get(|| async { "fine" }));
        api::edge(boom, state)
    })
    .await;
    let t = app.tenant("acme").await;
    let r = app.get(&t, "/v1/boom").await;
    assert_eq!(r.status(), 500);
    let e = body(r).await;
    let msg = internal_error_message(&e);
    assert!(
        !msg.contains("boom"),
        "the panic's text stays in the log: {msg}"
    );
    let r = app.get(&t, "/v1/fine").await;
    assert_eq!(r.status(), 200, "the node serves on after a panic");
}

#[tokio::test]
async fn a_database_failure_is_a_500_naming_the_trace_id_and_nothing_internal() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let agent = app.agent(&t, "+918035739222").await;
    // Authentication needs the database too, so break only the write path: close the store.
    let r = app.get_public("/readyz").await;
    assert_eq!(r.status(), 200);
    app.store.close().await;
    let r = app.post(&t, "/v1/call", &call(agent, &phone(1))).await;
    assert_eq!(r.status(), 500);
    let e = body(r).await;
    let msg = internal_error_message(&e);
    assert!(
        !msg.to_lowercase().contains("sql") && !msg.contains("pool"),
        "{msg}"
    );
    let r = app.get_public("/readyz").await;
    assert_eq!(r.status(), 503);
    let e = body(r).await;
    assert_eq!(
        (e["error"]["type"].as_str(), e["error"]["message"].as_str()),
        (Some("internal_error"), Some("database unavailable")),
        "the error shape: {e}"
    );
}

#[tokio::test]
async fn an_engine_the_agents_need_that_cannot_start_makes_the_node_unready_unless_optional() {
    use api::readiness::EngineState;
    let app = TestApp::spawn().await;
    let engine = |required, optional, ready| EngineState {
        kind: "speech-to-text",
        required,
        optional,
        ready,
    };
    // Installed nowhere, but no agent uses it: still ready.
    app.readiness.set("whisper", engine(false, false, false));
    assert_eq!(app.get_public("/readyz").await.status(), 200);

    app.readiness
        .set("pocketsphinx", engine(true, false, false));
    let r = app.get_public("/readyz").await;
    assert_eq!(r.status(), 503);
    let e = body(r).await;
    assert_eq!(
        (e["error"]["type"].as_str(), e["error"]["message"].as_str()),
        (
            Some("internal_error"),
            Some(
                "speech-to-text engine pocketsphinx cannot start (`outdial doctor` names the fix)"
            )
        ),
        "the error shape: {e}"
    );
    let metrics = app.get_public("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("outdial_engine_ready{engine=\"pocketsphinx\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("outdial_engine_required{engine=\"pocketsphinx\"} 1"),
        "{metrics}"
    );

    // Declared optional: ready, and the answer says what is missing.
    app.readiness.set("pocketsphinx", engine(true, true, false));
    let r = app.get_public("/readyz").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        body(r).await,
        serde_json::json!({"status": "ready", "degraded": ["pocketsphinx"]})
    );

    app.readiness.set("pocketsphinx", engine(true, false, true));
    let r = app.get_public("/readyz").await;
    assert_eq!(body(r).await, serde_json::json!({"status": "ready"}));
    let metrics = app.get_public("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("outdial_engine_ready{engine=\"pocketsphinx\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stopping_node_answers_readyz_503_while_it_still_serves_requests() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get_public("/readyz").await.status(), 200);
    app.readiness.begin_stop();
    let r = app.get_public("/readyz").await;
    assert_eq!(r.status(), 503);
    let e = body(r).await;
    assert_eq!(
        (e["error"]["type"].as_str(), e["error"]["message"].as_str()),
        (Some("internal_error"), Some("shutting down")),
        "the error shape: {e}"
    );
    // Liveness is unchanged: the process answers, it just wants no new work.
    let r = app.get_public("/healthz").await;
    assert_eq!(r.status(), 200);
}

/// The message of a contract `internal_error`, checked to name the request's trace id (a UUID)
/// and nothing else: `internal error (trace_id: <uuid>)`.
fn internal_error_message(e: &serde_json::Value) -> String {
    assert_eq!(e["error"]["type"], "internal_error");
    let msg = e["error"]["message"].as_str().unwrap().to_string();
    let trace = msg
        .strip_prefix("internal error (trace_id: ")
        .and_then(|m| m.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{msg}"));
    assert!(uuid::Uuid::parse_str(trace).is_ok(), "{msg}");
    msg
}
