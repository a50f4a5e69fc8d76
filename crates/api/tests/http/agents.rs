//! Agents, trunks and numbers through the API.

use crate::harness::*;
use serde_json::json;

#[tokio::test]
async fn agent_lifecycle_and_validation() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let trunk = body(app.post(&t, "/v1/trunks", &json!({"name": "pbx", "uri": "sip:127.0.0.1:5080", "username": "u", "password": "secret-pw", "max_concurrent_calls": 4})).await).await;
    assert!(
        !trunk.to_string().contains("secret-pw"),
        "passwords are never returned"
    );
    assert_eq!(trunk["data"]["max_concurrent_calls"], 4);
    let trunk_id = trunk["data"]["trunk_id"].clone();
    expect_error(
        app.post(
            &t,
            "/v1/trunks",
            &json!({"name": "pbx", "uri": "sip:127.0.0.1:5081"}),
        )
        .await,
        400,
        "invalid_request",
        "trunk name already used",
    )
    .await;
    expect_error(
        app.post(&t, "/v1/trunks", &json!({"uri": "sip:127.0.0.1:5081"}))
            .await,
        400,
        "invalid_request",
        "name is required",
    )
    .await;
    let listed = body(app.get(&t, "/v1/trunks").await).await;
    assert!(!listed.to_string().contains("secret-pw"));

    assert_eq!(
        app.post(
            &t,
            "/v1/phone-numbers",
            &json!({"number": "+91 80357 39222", "trunk_id": trunk_id})
        )
        .await
        .status(),
        200
    );
    expect_error(
        app.post(
            &t,
            "/v1/phone-numbers",
            &json!({"number": "+918035739222", "trunk_id": trunk_id}),
        )
        .await,
        400,
        "invalid_request",
        "phone number already exists",
    )
    .await;
    expect_error(
        app.post(
            &t,
            "/v1/phone-numbers",
            &json!({"number": "+918035739223", "trunk_id": 999}),
        )
        .await,
        404,
        "not_found",
        "trunk not found",
    )
    .await;
    assert_eq!(
        body(app.get(&t, "/v1/phone-numbers").await).await["data"][0]["number"],
        "+918035739222"
    );

    expect_error(
        app.post(
            &t,
            "/v1/agents",
            &json!({"name": "a", "phone_number": "+918035739999"}),
        )
        .await,
        404,
        "not_found",
        "phone number not found",
    )
    .await;
    expect_error(
        app.post(
            &t,
            "/v1/agents",
            &json!({"name": "a", "first_mesage": "typo"}),
        )
        .await,
        400,
        "invalid_request",
        "invalid first_mesage",
    )
    .await;
    expect_error(
        app.post(
            &t,
            "/v1/agents",
            &json!({"name": "a", "max_duration_seconds": "300"}),
        )
        .await,
        400,
        "invalid_request",
        "invalid max_duration_seconds",
    )
    .await;
    expect_error(
        app.post(
            &t,
            "/v1/agents",
            &json!({"name": "a", "post_call_transcript": 1}),
        )
        .await,
        400,
        "invalid_request",
        "invalid post_call_transcript",
    )
    .await;
    expect_error(
        app.post(&t, "/v1/agents", &json!({"first_message": "hi"}))
            .await,
        400,
        "invalid_request",
        "name is required",
    )
    .await;

    // Cloud metadata is never a model server, whatever the operator allows.
    expect_error(
        app.post(
            &t,
            "/v1/agents",
            &json!({"name": "x",
            "brain": {"type": "llm", "base_url": "http://169.254.169.254/v1", "model": "m"}}),
        )
        .await,
        400,
        "invalid_request",
        "brain.base_url not allowed",
    )
    .await;

    let created = body(app.post(&t, "/v1/agents", &json!({
        "name": "collections", "phone_number": "+918035739222",
        "stages": [{"id": "ask", "say": "Can you pay by Friday?", "routes": [{"when_any": ["yes"], "set": {"intent": "promise"}, "end": true}]}],
        "retry_policy": {"on": ["busy", "no_answer"], "max_attempts": 3, "delay_seconds": 60},
        "brain": {"type": "llm", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key": "sk-live-secret"}
    })).await).await["data"].clone();
    let id = created["agent_id"].as_i64().unwrap();
    assert_eq!(created["retry_policy"]["max_attempts"], 3);
    assert!(!created.to_string().contains("sk-live-secret"));

    let patched = app
        .patch(
            &t,
            &format!("/v1/agents/{id}"),
            &json!({"first_message": "Hi {{customer_name}}", "retry_policy": null}),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let patched = body(patched).await["data"].clone();
    assert_eq!(patched["first_message"], "Hi {{customer_name}}");
    assert_eq!(patched["retry_policy"], json!(null));
    assert_eq!(patched["stages"], created["stages"]);
    let bad = app
        .patch(
            &t,
            &format!("/v1/agents/{id}"),
            &json!({"stages": [{"id": "x", "routes": [{"when_any": ["y"], "next": "missing"}]}]}),
        )
        .await;
    expect_error(bad, 400, "invalid_request", "invalid stages").await;
    // Transfer targets: configured E.164 numbers; a route may only name one of them.
    let bad = app
        .patch(
            &t,
            &format!("/v1/agents/{id}"),
            &json!({"transfer": {"targets": {"billing": "080 4500 0000"}}}),
        )
        .await;
    expect_error(bad, 400, "invalid_request", "invalid transfer").await;
    let bad = app
        .patch(
            &t,
            &format!("/v1/agents/{id}"),
            &json!({"stages": [{"id": "x", "routes": [{"when_any": ["y"], "transfer_to": "billing"}]}]}),
        )
        .await;
    expect_error(bad, 400, "invalid_request", "invalid stages").await;
    // Post-call transcripts: off unless asked for, a boolean, changed by a PATCH.
    assert_eq!(created["post_call_transcript"], false);
    let bad = app
        .patch(
            &t,
            &format!("/v1/agents/{id}"),
            &json!({"post_call_transcript": "yes"}),
        )
        .await;
    expect_error(bad, 400, "invalid_request", "invalid post_call_transcript").await;
    let on = app
        .patch(
            &t,
            &format!("/v1/agents/{id}"),
            &json!({"post_call_transcript": true}),
        )
        .await;
    assert_eq!(body(on).await["data"]["post_call_transcript"], true);
    assert_eq!(
        body(app.get(&t, &format!("/v1/agents/{id}")).await).await["data"]["post_call_transcript"],
        true
    );
    assert_eq!(
        body(app.get(&t, &format!("/v1/agents/{id}")).await).await["data"]["first_message"],
        "Hi {{customer_name}}",
        "a refused PATCH changed nothing"
    );

    assert_eq!(body(app.get(&t, "/v1/agents").await).await["total"], 1);
    let del = app
        .client
        .delete(app.url(&format!("/v1/agents/{id}")))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    expect_error(
        app.get(&t, &format!("/v1/agents/{id}")).await,
        404,
        "not_found",
        "agent not found",
    )
    .await;
    expect_error(
        app.post(&t, "/v1/call", &call(id, &phone(1))).await,
        404,
        "not_found",
        "agent not found",
    )
    .await;
    assert_eq!(body(app.get(&t, "/v1/agents").await).await["total"], 0);
}

/// `agents.md` "Languages": an agent is saved only in a language its own voice speaks and its
/// own transcriber hears on this node, a retry only in such a language, and `/v1/languages`
/// says which engines serve which language.
#[tokio::test]
async fn an_agent_is_refused_a_language_its_engines_cannot_serve() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let listed = body(app.get(&t, "/v1/languages").await).await;
    let row = |tag: &str| {
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["language"] == tag)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        row("hi-IN"),
        json!({"language": "hi-IN", "voices": ["espeak-ng"], "transcribers": []}),
        "espeak-ng speaks Hindi; no local recogniser hears it"
    );
    assert_eq!(
        row("en-IN")["transcribers"],
        json!(["local", "pocketsphinx", "whisper"])
    );
    assert_eq!(listed["data"].as_array().unwrap().len(), 13);

    for refused in [
        json!({"name": "a", "language": "hi-IN"}),
        json!({"name": "a", "language": "hi-IN", "transcriber": {"engine": "whisper"}}),
        // Deepgram hears Hindi, but this node has no Deepgram key.
        json!({"name": "a", "language": "hi-IN", "transcriber": {"engine": "deepgram"}}),
        json!({"name": "a", "language": "fr-FR"}),
    ] {
        expect_error(
            app.post(&t, "/v1/agents", &refused).await,
            400,
            "invalid_request",
            "unsupported language",
        )
        .await;
    }
    let agent = app.agent(&t, "+918035739222").await;
    expect_error(
        app.patch(
            &t,
            &format!("/v1/agents/{agent}"),
            &json!({"language": "ta-IN"}),
        )
        .await,
        400,
        "invalid_request",
        "unsupported language",
    )
    .await;
    let kept = body(app.get(&t, &format!("/v1/agents/{agent}")).await).await;
    assert_eq!(
        kept["data"]["language"], "en-US",
        "a refused PATCH changes nothing"
    );
    let ok = app
        .patch(
            &t,
            &format!("/v1/agents/{agent}"),
            &json!({"language": "en-IN"}),
        )
        .await;
    assert_eq!(ok.status(), 200);

    let mut retry = call(agent, &phone(1));
    retry["retry_context"] = json!({"retry_language": "hi-IN"});
    expect_error(
        app.post(&t, "/v1/call", &retry).await,
        400,
        "invalid_request",
        "unsupported retry_language",
    )
    .await;
    assert_eq!(app.calls(&t).await, 0, "nothing written");
    retry["retry_context"] = json!({"retry_language": "en-US"});
    assert_eq!(app.post(&t, "/v1/call", &retry).await.status(), 200);
    // An unknown agent is still `agent not found`, whatever the retry language.
    let mut unknown = call(agent + 100, &phone(2));
    unknown["retry_context"] = json!({"retry_language": "hi-IN"});
    expect_error(
        app.post(&t, "/v1/call", &unknown).await,
        404,
        "not_found",
        "agent not found",
    )
    .await;
}

/// With a Deepgram key the node hears Hindi: a Hindi agent that names Deepgram is saved, and
/// its Hindi retries are accepted.
#[tokio::test]
async fn with_deepgram_a_hindi_agent_is_served() {
    let app = TestApp::spawn_with(api::ApiConfig {
        api_rate_limit_per_minute: 0,
        languages: domain::language::LanguageSupport { deepgram: true },
        ..Default::default()
    })
    .await;
    let t = app.tenant("acme").await;
    let listed = body(app.get(&t, "/v1/languages").await).await;
    let hi = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["language"] == "hi-IN")
        .cloned()
        .unwrap();
    assert_eq!(hi["transcribers"], json!(["deepgram"]));
    let a = app
        .post(
            &t,
            "/v1/agents",
            &json!({"name": "hindi", "language": "hi-IN",
            "transcriber": {"engine": "deepgram"}}),
        )
        .await;
    assert_eq!(a.status(), 200);
    assert_eq!(body(a).await["data"]["voice"]["engine"], "espeak-ng");
}

/// The trunk options of the contract: defaults, what is stored and shown, and each refusal
/// with its `invalid <field>` message, writing nothing.
#[tokio::test]
async fn trunk_options_are_stored_shown_and_refused_with_their_field() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let plain = body(
        app.post(
            &t,
            "/v1/trunks",
            &json!({"name": "plain", "uri": "sip:127.0.0.1:5080"}),
        )
        .await,
    )
    .await;
    let options = |v: &serde_json::Value| {
        (
            v["max_calls_per_second"].as_f64(),
            v["transport"].as_str().map(str::to_string),
            v["register"].as_bool(),
        )
    };
    let udp = Some("udp".to_string());
    assert_eq!(options(&plain["data"]), (None, udp.clone(), Some(false)));
    assert!(plain["data"]["max_calls_per_second"].is_null());
    assert_eq!(plain["data"]["srtp"], "off");
    let nulls = json!({"name": "nulls", "uri": "sip:127.0.0.1:5081", "max_calls_per_second": null,
        "transport": null, "register": null});
    let nulls = body(app.post(&t, "/v1/trunks", &nulls).await).await;
    assert_eq!(options(&nulls["data"]), (None, udp, Some(false)));
    // A `sips:` trunk speaks TLS unless told otherwise (and cannot be told otherwise).
    let secure = json!({"name": "secure", "uri": "sips:pbx.example.com:5061", "srtp": "required"});
    let secure = body(app.post(&t, "/v1/trunks", &secure).await).await;
    assert_eq!(secure["data"]["transport"], "tls");
    assert_eq!(secure["data"]["srtp"], "required");
    let carrier = json!({"name": "carrier", "uri": "sip:sip.carrier.example", "username": "acct",
        "password": "secret-pw", "max_calls_per_second": 0.5, "transport": "tcp", "register": true});
    let carrier = body(app.post(&t, "/v1/trunks", &carrier).await).await;
    let want = (Some(0.5), Some("tcp".to_string()), Some(true));
    assert_eq!(options(&carrier["data"]), want);
    let whole = json!({"name": "whole", "uri": "sip:127.0.0.1:5082", "max_calls_per_second": 30});
    let whole = body(app.post(&t, "/v1/trunks", &whole).await).await;
    assert_eq!(whole["data"]["max_calls_per_second"].as_f64(), Some(30.0));
    let listed = body(app.get(&t, "/v1/trunks").await).await;
    let listed = listed["data"].as_array().unwrap();
    assert_eq!(listed.len(), 5);
    let listed_carrier = listed.iter().find(|v| v["name"] == "carrier").unwrap();
    assert_eq!(options(listed_carrier), want);
    assert_eq!(listed_carrier["srtp"], "off");
    let listed_secure = listed.iter().find(|v| v["name"] == "secure").unwrap();
    assert_eq!(listed_secure["srtp"], "required");
    let id = listed_secure["trunk_id"].as_i64().unwrap();
    let one = body(app.get(&t, &format!("/v1/trunks/{id}")).await).await;
    assert_eq!(one["data"]["srtp"], "required");

    let base = json!({"name": "refused", "uri": "sip:127.0.0.1:5090", "username": "acct"});
    let refusals = [
        (json!({"max_calls_per_second": 0}), "max_calls_per_second"),
        (json!({"max_calls_per_second": -2}), "max_calls_per_second"),
        (
            json!({"max_calls_per_second": 0.0001}),
            "max_calls_per_second",
        ),
        (
            json!({"max_calls_per_second": 1001}),
            "max_calls_per_second",
        ),
        (json!({"max_calls_per_second": "5"}), "max_calls_per_second"),
        (
            json!({"max_calls_per_second": true}),
            "max_calls_per_second",
        ),
        (json!({"transport": "sctp"}), "transport"),
        (json!({"transport": "TCP"}), "transport"),
        (json!({"transport": 1}), "transport"),
        (json!({"transport": "tls"}), "transport"),
        (
            json!({"transport": "udp", "uri": "sips:pbx.example.com"}),
            "transport",
        ),
        (
            json!({"transport": "tcp", "uri": "sips:pbx.example.com"}),
            "transport",
        ),
        (json!({"register": "yes"}), "register"),
        (json!({"register": 1}), "register"),
        (json!({"register": true, "username": null}), "register"),
        // SDES keys travel in the SDP: never over plain UDP or TCP.
        (json!({"srtp": "required"}), "srtp"),
        (json!({"srtp": "required", "transport": "tcp"}), "srtp"),
        (json!({"srtp": "optional"}), "srtp"),
        (
            json!({"srtp": "REQUIRED", "uri": "sips:pbx.example.com"}),
            "srtp",
        ),
        (json!({"srtp": true, "uri": "sips:pbx.example.com"}), "srtp"),
    ];
    for (fields, field) in refusals {
        let mut request = base.clone();
        request
            .as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        expect_error(
            app.post(&t, "/v1/trunks", &request).await,
            400,
            "invalid_request",
            &format!("invalid {field}"),
        )
        .await;
    }
    let listed = body(app.get(&t, "/v1/trunks").await).await;
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        5,
        "refusals write nothing"
    );
}
