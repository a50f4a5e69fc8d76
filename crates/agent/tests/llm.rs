//! The llm brain against recorded OpenAI-compatible chat completion streams, replayed by a real
//! HTTP/1.1 server on loopback. The fixtures (`tests/fixtures/llm/*.sse`) are the bytes such a
//! server sends: a role chunk, content deltas, tool-call deltas whose `arguments` arrive in
//! fragments, a `finish_reason` chunk and `data: [DONE]`. The server sends them in small,
//! uneven pieces of a chunked body, so events are split across reads as on a real network.

mod llm_server;

use agent::{Brain, BrainError, LlmBrain, LlmOptions};
use domain::agent::AgentConfig;
use domain::call::{Parameter, RetryContext};
use llm_server::{fixture, serve, Answer, Server};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const KEY: &str = "sk-test-9f8e7d6c5b4a3210wxyz";

fn agent(base_url: &str) -> AgentConfig {
    let v = json!({
      "name": "collections",
      "language": "en-IN",
      "first_message": "Hello {{customer_name}}, this is Asha from Acme about invoice {{invoice_id}}.",
      "brain": { "type": "llm", "base_url": base_url, "model": "gpt-4o-mini",
                 "api_key": KEY, "prompt": "You are Asha, a polite collections agent for Acme calling {{customer_name}}." },
      "stages": [
        { "id": "stage_ask", "say": "Can you pay invoice {{invoice_id}} by Friday?",
          "routes": [
            { "when_any": ["yes", "sure"], "set": { "intent": "payment_promise" },
              "say": "Thank you, we will note that. Goodbye.", "end": true },
            { "when_any": ["no", "cannot"], "set": { "intent": "refused" }, "next": "stage_follow_up" }
          ],
          "otherwise": { "say": "Sorry, could you say that again?", "repeat": 1, "then_end": true } },
        { "id": "stage_follow_up", "say": "When could you pay?",
          "routes": [ { "when_any": ["next week"], "set": { "when": "next_week" }, "say": "Noted. Goodbye.", "end": true } ] }
      ],
      "results": [ { "name": "intent", "description": "what the customer agreed to" },
                   { "name": "when", "description": "when the customer will pay" } ]
    });
    AgentConfig::from_json(v.as_object().unwrap()).unwrap()
}

fn params() -> Vec<Parameter> {
    vec![
        Parameter {
            name: "customer_name".into(),
            value: "Rahul".into(),
        },
        Parameter {
            name: "invoice_id".into(),
            value: "INV-7".into(),
        },
    ]
}

fn options() -> LlmOptions {
    LlmOptions {
        response_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        turn_timeout: Duration::from_secs(10),
        // The recorded server is on loopback, which the operator must allow.
        endpoints: webhooks::ModelEndpointPolicy::parse("127.0.0.0/8").unwrap(),
        ..LlmOptions::default()
    }
}

fn brain(server: &Server, retry: Option<&RetryContext>, o: LlmOptions) -> LlmBrain {
    let client = o.client().map_err(|e| e.to_string());
    LlmBrain::new(&agent(&server.base_url), &params(), retry, o, client)
}

fn tool_names(body: &Value) -> Vec<&str> {
    body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_promise_is_spoken_recorded_and_ends_the_call() {
    let server = serve(vec![Answer::Stream(fixture("promise_and_end.sse"))]).await;
    let mut b = brain(&server, None, options());
    assert_eq!(b.start().say, vec!["Can you pay invoice INV-7 by Friday?"]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reply = b
        .hear_streaming(&"Yes, I can pay by Friday.".into(), &tx)
        .await
        .unwrap();
    assert_eq!(reply.say, vec!["Thank you, we will note that.", "Goodbye."]);
    assert!(reply.end, "end_call ends the call");
    assert_eq!(b.results()["intent"], "payment_promise");
    let mut streamed = Vec::new();
    while let Ok(l) = rx.try_recv() {
        streamed.push(l);
    }
    assert_eq!(
        streamed, reply.say,
        "each sentence went out as it completed"
    );

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(r.body["model"], "gpt-4o-mini");
    assert_eq!(r.body["stream"], true);
    assert_eq!(
        tool_names(&r.body),
        vec!["set_result", "opt_out", "end_call"]
    );
    let names = &r.body["tools"][0]["function"]["parameters"]["properties"]["name"]["enum"];
    assert_eq!(names, &json!(["intent", "when"]));
    let msgs = r.body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3, "{msgs:#?}");
    let system = msgs[0]["content"].as_str().unwrap();
    assert_eq!(msgs[0]["role"], "system");
    for want in [
        "You are Asha, a polite collections agent for Acme calling Rahul.",
        "en-IN",
        "Stage \"stage_ask\": ask \"Can you pay invoice INV-7 by Friday?\"",
        "call set_result with name \"intent\" and value \"payment_promise\"",
        "then go on to stage \"stage_follow_up\"",
        "intent: what the customer agreed to",
        "\"invoice_id\":\"INV-7\"",
        "end_call",
    ] {
        assert!(
            system.contains(want),
            "system prompt lacks {want:?}:\n{system}"
        );
    }
    assert_eq!(
        msgs[1],
        json!({"role": "assistant", "content":
            "Hello Rahul, this is Asha from Acme about invoice INV-7. Can you pay invoice INV-7 by Friday?"})
    );
    assert_eq!(
        msgs[2],
        json!({"role": "user", "content": "Yes, I can pay by Friday."})
    );
}

/// A request to stop that only the model understood: its `opt_out` tool marks the call, and
/// the agent's confirmation ends it without another round to the model.
#[tokio::test]
async fn the_opt_out_tool_confirms_and_ends_the_call() {
    let server = serve(vec![Answer::Stream(fixture("opt_out.sse"))]).await;
    let mut b = brain(&server, None, options());
    b.start();
    let r = b
        .hear("Look, I do not want to hear from Acme any more.")
        .await
        .unwrap();
    assert_eq!(
        r.say,
        vec![agent::opt_out::confirmation("en-IN").to_string()]
    );
    assert!(r.end);
    assert_eq!(b.results()["opted_out"], true);
    assert_eq!(server.requests().len(), 1);
}

/// An agent with transfer targets offers `transfer_call` (naming only its targets); the model's
/// call hands the call over after its line, and a failed transfer is in the next request's
/// history. (`a_promise_is_spoken_recorded_and_ends_the_call`: no targets, no such tool.)
#[tokio::test]
async fn the_transfer_tool_is_offered_with_targets_and_asks_for_the_hand_over() {
    let server = serve(vec![
        Answer::Stream(fixture("transfer_call.sse")),
        Answer::Stream(fixture("next_week_end.sse")),
    ])
    .await;
    let mut config = agent(&server.base_url).to_json();
    config.insert(
        "transfer".into(),
        json!({"targets": {"billing": "+918045000000", "sales": "+918045000001"}}),
    );
    let config = AgentConfig::from_json(&config).unwrap();
    let o = options();
    let client = o.client().map_err(|e| e.to_string());
    let mut b = LlmBrain::new(&config, &params(), None, o, client);
    b.start();
    let r = b.hear("Can I talk to someone in billing?").await.unwrap();
    assert_eq!(r.say, vec!["One moment, please."]);
    assert_eq!(r.transfer.as_deref(), Some("billing"));
    assert!(!r.end, "a hand-over is not a hang-up");
    let reqs = server.requests();
    assert_eq!(
        tool_names(&reqs[0].body),
        vec!["set_result", "transfer_call", "opt_out", "end_call"]
    );
    let targets =
        &reqs[0].body["tools"][1]["function"]["parameters"]["properties"]["target"]["enum"];
    assert_eq!(targets, &json!(["billing", "sales"]));
    assert_eq!(b.transfer_failed(), agent::Reply::default());
    b.hear("Next week then.").await.unwrap();
    let msgs = server.requests()[1].body["messages"].clone();
    let told = msgs.as_array().unwrap().iter().any(|m| {
        m["role"] == "system" && m["content"].as_str().unwrap().contains("could not be made")
    });
    assert!(told, "{msgs:#}");
}

#[tokio::test]
async fn tool_only_replies_are_answered_and_history_carries_over_turns() {
    let server = serve(vec![
        Answer::Stream(fixture("refusal_tool_only.sse")),
        Answer::Stream(fixture("refusal_follow_up.sse")),
        Answer::Stream(fixture("next_week_end.sse")),
    ])
    .await;
    let mut b = brain(&server, None, options());
    b.start();
    let r = b.hear("No, I cannot pay this week.").await.unwrap();
    assert_eq!(
        r.say,
        vec!["I understand.", "When do you think you could pay?"]
    );
    assert!(!r.end);
    assert_eq!(b.results()["intent"], "refused");

    let r = b.hear("Maybe next week.").await.unwrap();
    assert_eq!(
        r.say,
        vec!["Thank you, I have noted next week.", "Goodbye!"]
    );
    assert!(r.end);
    assert_eq!(b.results()["when"], "next week");
    assert_eq!(b.results()["intent"], "refused");

    let reqs = server.requests();
    assert_eq!(reqs.len(), 3, "one request per round");
    // Round two answers the tool call of round one.
    let m = reqs[1].body["messages"].as_array().unwrap();
    let n = m.len();
    assert_eq!(m[n - 2]["role"], "assistant");
    assert_eq!(m[n - 2]["content"], Value::Null);
    let call = &m[n - 2]["tool_calls"][0];
    assert_eq!(call["id"], "call_Zr7Ty2Uq9Wm4Nb6Vc1Xk3Lp8");
    assert_eq!(call["function"]["name"], "set_result");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"name": "intent", "value": "refused"})
    );
    assert_eq!(
        m[n - 1],
        json!({"role": "tool", "tool_call_id": "call_Zr7Ty2Uq9Wm4Nb6Vc1Xk3Lp8", "content": "recorded intent"})
    );
    // The next turn's request holds the whole conversation, in order.
    let m = reqs[2].body["messages"].as_array().unwrap();
    let roles: Vec<&str> = m.iter().map(|x| x["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        vec![
            "system",
            "assistant",
            "user",
            "assistant",
            "tool",
            "assistant",
            "user"
        ]
    );
    assert_eq!(
        m[5]["content"],
        "I understand. When do you think you could pay?"
    );
    assert_eq!(m[6]["content"], "Maybe next week.");
    // The brain's own history ends with the last turn's tool answers.
    let h = b.history();
    assert_eq!(h[h.len() - 1]["role"], "tool");
    assert_eq!(
        h[h.len() - 3]["tool_calls"][1]["function"]["name"],
        "end_call"
    );
}

#[tokio::test]
async fn a_retry_resumes_at_its_stage_in_its_language_with_what_was_collected() {
    let server = serve(vec![Answer::Stream(fixture("next_week_end.sse"))]).await;
    let retry = RetryContext {
        collected_data: Some(json!({"intent": "refused"}).as_object().unwrap().clone()),
        retry_initial_message: Some("Hello again {{customer_name}}, it's Asha from Acme.".into()),
        retry_language: Some("hi-IN".into()),
        retry_stage_id: Some("stage_follow_up".into()),
    };
    let mut b = brain(&server, Some(&retry), options());
    assert_eq!(b.results()["intent"], "refused");
    assert_eq!(b.start().say, vec!["When could you pay?"]);
    let r = b.hear("next week").await.unwrap();
    assert!(r.end);
    let body = &server.requests()[0].body;
    let system = body["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("hi-IN"), "{system}");
    assert!(
        system.contains("now at stage \"stage_follow_up\""),
        "{system}"
    );
    assert!(system.contains("{\"intent\":\"refused\"}"), "{system}");
    assert_eq!(
        body["messages"][1]["content"],
        "Hello again Rahul, it's Asha from Acme. When could you pay?"
    );
}

#[tokio::test]
async fn http_errors_are_reported_and_the_agent_falls_back_then_hangs_up() {
    let server = serve(vec![
        Answer::Status(401, fixture("errors_401.json")),
        Answer::Status(500, fixture("errors_500.json")),
        Answer::Status(500, fixture("errors_500.json")),
    ])
    .await;
    let mut b = brain(&server, None, options());
    b.start();
    let err = b.respond("hello?", None).await.unwrap_err();
    match &err {
        BrainError::Http { status, body } => {
            assert_eq!(*status, 401);
            assert!(body.starts_with("Incorrect API key provided"), "{body}");
        }
        other => panic!("want an HTTP error, got {other:?}"),
    }
    assert!(!err.to_string().contains(KEY), "the key is masked: {err}");

    // Through the Brain trait: a safe line instead of silence, then goodbye on the second miss.
    let defaults = LlmOptions::default();
    let r = b.hear("hello?").await.unwrap();
    assert_eq!(r.say, vec![defaults.retry_line.clone()]);
    assert!(!r.end);
    let r = b.hear("are you there?").await.unwrap();
    assert_eq!(r.say, vec![defaults.goodbye_line.clone()]);
    assert!(r.end);
    // What the caller heard is in the history, so a recovered model would know.
    let h = b.history();
    assert_eq!(h[h.len() - 1]["content"], defaults.goodbye_line);
    assert_eq!(h[h.len() - 2]["content"], "are you there?");
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn a_model_server_outside_the_allowed_networks_is_never_contacted() {
    let server = serve(vec![Answer::Stream(fixture("promise_and_end.sse"))]).await;
    // Public addresses only (the default): the loopback server, by address or by name.
    let public_only = LlmOptions {
        endpoints: Default::default(),
        ..options()
    };
    let by_name = server.base_url.replace("127.0.0.1", "localhost");
    for base_url in [server.base_url.clone(), by_name] {
        let client = public_only.client().map_err(|e| e.to_string());
        let mut b = LlmBrain::new(
            &agent(&base_url),
            &params(),
            None,
            public_only.clone(),
            client,
        );
        b.start();
        let err = b.respond("yes", None).await.unwrap_err();
        assert!(matches!(err, BrainError::Connect(_)), "{base_url}: {err:?}");
    }
    assert!(server.requests().is_empty(), "nothing reached the server");
}

#[tokio::test]
async fn a_stream_cut_mid_way_is_an_error_and_what_was_said_stays_said() {
    let server = serve(vec![
        Answer::Cut(fixture("cut.sse")),
        Answer::Cut(fixture("cut.sse")),
    ])
    .await;
    let mut b = brain(&server, None, options());
    b.start();
    let err = b.respond("how much do I owe?", None).await.unwrap_err();
    assert!(matches!(err, BrainError::Stream(_)), "{err:?}");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let r = b
        .hear_streaming(&"how much do I owe?".into(), &tx)
        .await
        .unwrap();
    let fallback = LlmOptions::default().retry_line;
    assert_eq!(r.say, vec!["Thank you.".to_string(), fallback.clone()]);
    assert!(!r.end);
    let mut streamed = Vec::new();
    while let Ok(l) = rx.try_recv() {
        streamed.push(l);
    }
    assert_eq!(streamed, r.say);
    assert_eq!(
        b.history().last().unwrap()["content"],
        format!("Thank you. {fallback}")
    );
}

#[tokio::test]
async fn a_malformed_event_is_a_stream_error() {
    let server = serve(vec![Answer::Stream(fixture("malformed.sse"))]).await;
    let mut b = brain(&server, None, options());
    let err = b.respond("hi", None).await.unwrap_err();
    match err {
        BrainError::Stream(msg) => assert!(msg.contains("not valid JSON"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_silent_server_times_out_and_a_closed_port_is_a_connect_error() {
    let server = serve(vec![Answer::Hang]).await;
    let o = LlmOptions {
        response_timeout: Duration::from_millis(300),
        ..options()
    };
    let mut b = brain(&server, None, o);
    let err = b.respond("hi", None).await.unwrap_err();
    assert!(
        matches!(
            err,
            BrainError::Timeout {
                stage: "response",
                ..
            }
        ),
        "{err:?}"
    );

    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let closed = Server {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        requests: Arc::default(),
    };
    let mut b = brain(&closed, None, options());
    let err = b.respond("hi", None).await.unwrap_err();
    assert!(matches!(err, BrainError::Connect(_)), "{err:?}");
    assert!(
        !err.to_string().contains(&port.to_string()),
        "no endpoint in: {err}"
    );
}
