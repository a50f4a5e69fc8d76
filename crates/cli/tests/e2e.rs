//! The real binary, end to end: `outdial serve` on a fresh data dir, a SIPp callee on loopback,
//! calls placed through the HTTP API. Nothing in between is replaced.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{Api, Db, Receiver, Service, Sipp};

fn rms(samples: &[i16]) -> f64 {
    (samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / samples.len().max(1) as f64)
        .sqrt()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_call_is_dialled_answered_spoken_recorded_and_completed() {
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant(dir.path());
    let svc = Service::start(dir.path());
    // SIPp echoes our audio back at full level: the agent's own voice coming back must not
    // read as the callee talking over it, so the opening plays whole.
    let sipp = Sipp::callee("answer_talk_bye.xml", 1, 6000, dir.path());
    let api = Api::new(&svc.base, &key);
    let agent = api.setup_agent(sipp.port, json!({})).await;
    let loc = api.call(agent, "+919876543210").await;
    let c = api.wait_terminal(&loc, Duration::from_secs(30)).await;
    assert_eq!(c["status"], "completed", "{c}");
    assert_eq!(c["failure_reason"], Value::Null);
    let duration = c["duration_seconds"].as_i64().unwrap();
    assert!((5..=8).contains(&duration), "{duration}");
    assert_eq!(c["transcript"][0]["role"], "agent");
    let line = c["transcript"][0]["message"].as_str().unwrap();
    assert_eq!(
        line, "Hello Rahul, this is Asha from Acme about your invoice.",
        "the rendered opening, played whole over its own echo"
    );
    assert!(c["start_timestamp"].as_i64().unwrap() <= c["end_timestamp"].as_i64().unwrap());
    let url = c["recording_url"].as_str().expect("recording_url");
    let wav = api
        .http
        .get(url)
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap();
    assert_eq!(wav.status(), 200);
    assert_eq!(wav.headers()["content-type"], "audio/wav");
    let wav = media::wav::read(&wav.bytes().await.unwrap()).unwrap();
    let seconds = wav.samples.len() as f64 / f64::from(wav.sample_rate);
    assert!((4.0..9.0).contains(&seconds), "{seconds} s recorded");
    // The agent's line is in the recording, not silence.
    assert!(rms(&wav.samples) > 200.0, "rms {}", rms(&wav.samples));
    assert_eq!(sipp.invites_per_number().get("+919876543210"), Some(&1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_callee_ends_busy_with_the_sip_reason_and_retries_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant(dir.path());
    // The per-number limit also paces retries (default 1 call per 60 s): shorten it here.
    let out = Service::outdial(dir.path())
        .args(["tenants", "update", "1", "--per-number-window-seconds", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let svc = Service::start(dir.path());
    let sipp = Sipp::busy(dir.path());
    let api = Api::new(&svc.base, &key);
    let agent = api
        .setup_agent(
            sipp.port,
            json!({"retry_policy": {"on": ["busy"], "max_attempts": 2, "delay_seconds": 1}}),
        )
        .await;
    let loc = api.call(agent, "+919876543210").await;
    let c = api.wait_terminal(&loc, Duration::from_secs(20)).await;
    assert_eq!(c["status"], "busy");
    assert_eq!(c["failure_reason"], "486 Busy Here");
    assert_eq!(c["transcript"], json!([]));
    let second = loc.replace("_1", "_2");
    let c2 = api.wait_terminal(&second, Duration::from_secs(20)).await;
    assert_eq!(
        (c2["status"].as_str(), c2["attempt"].as_i64()),
        (Some("busy"), Some(2))
    );
    assert_eq!(c2["trace_id"], c["trace_id"]);
    assert_eq!(sipp.invites_per_number().get("+919876543210"), Some(&2));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_run_loses_no_call_and_dials_none_twice() {
    sigkill_mid_run(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_run_loses_no_call_and_dials_none_twice_on_postgres() {
    let (db, _pg) = Db::postgres();
    sigkill_mid_run(db).await;
}

async fn sigkill_mid_run(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant_in(dir.path(), &db);
    let mut svc = Service::start_in(dir.path(), &db);
    let total = 12;
    let sipp = Sipp::callee("answer_talk_bye.xml", total, 4000, dir.path());
    let api = Api::new(&svc.base, &key);
    // At most 3 calls at once on the trunk, so some are live and some still queued at the kill.
    let agent = api
        .setup_agent(sipp.port, json!({"max_concurrent_calls": 3}))
        .await;
    let mut locations = Vec::new();
    for i in 0..total {
        locations.push(api.call(agent, &format!("+9198765432{i:02}")).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    svc.kill();
    svc.restart();
    let api = Api::new(&svc.base, &key);
    let mut outcomes = std::collections::BTreeMap::new();
    let mut completed_numbers = Vec::new();
    for loc in &locations {
        let c = api.wait_terminal(loc, Duration::from_secs(90)).await;
        let key = format!(
            "{} {}",
            c["status"].as_str().unwrap(),
            c["failure_reason"].as_str().unwrap_or("")
        );
        if c["status"] == "completed" {
            completed_numbers.push(c["contact_number"].as_str().unwrap().to_string());
        }
        *outcomes.entry(key).or_insert(0) += 1;
    }
    let invites = sipp.invites_per_number();
    assert!(
        invites.values().all(|n| *n == 1),
        "a destination was dialled twice: {invites:?}"
    );
    // Every accepted call reached an outcome: completed, or settled as interrupted because the
    // kill caught it live (it is not redialled blindly).
    let interrupted = outcomes.get("failed interrupted").copied().unwrap_or(0);
    assert!(interrupted >= 1, "the kill caught live calls: {outcomes:?}");
    assert_eq!(
        interrupted + completed_numbers.len(),
        total as usize,
        "{outcomes:?}"
    );
    assert!(
        completed_numbers.iter().all(|n| invites.get(n) == Some(&1)),
        "{completed_numbers:?} {invites:?}"
    );
}

fn verify(secret: &str, headers: &axum::http::HeaderMap, body: &[u8]) {
    use hmac::Mac;
    let mut http_headers = http::HeaderMap::new();
    for (k, v) in headers {
        http_headers.insert(
            http::HeaderName::from_bytes(k.as_str().as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
        );
    }
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(body, &http_headers)
        .expect("Standard Webhooks signature");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(headers["x-formantai-signature"].to_str().unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_call_sends_exactly_one_signed_call_busy_that_agrees_with_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant(dir.path());
    let svc = Service::start(dir.path());
    let sipp = Sipp::busy(dir.path());
    let api = Api::new(&svc.base, &key);
    let agent = api.setup_agent(sipp.port, json!({})).await;
    let receiver = Receiver::start().await;
    let target: Value = api
        .post(
            &format!("/v1/agents/{agent}/webhook-targets"),
            json!({"name": "crm", "url": receiver.url, "include_transcript": true}),
        )
        .await
        .json()
        .await
        .unwrap();
    let secret = target["data"]["secret"]
        .as_str()
        .expect("secret on create")
        .to_string();
    let loc = api
        .post("/v1/call", json!({"agent_id": agent, "metadata": "crm-42", "parameters": [
            {"name": "customer_phone", "value": "+919876543210"}, {"name": "customer_name", "value": "Rahul"}]}))
        .await
        .headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    let c = api.wait_terminal(&loc, Duration::from_secs(20)).await;
    assert_eq!(c["status"], "busy", "{c}");
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all: Vec<String> = receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(h, b)| format!("{:?} {}", h.get("webhook-id"), String::from_utf8_lossy(b)))
        .collect();
    assert_eq!(all.len(), 1, "exactly one delivery: {all:#?}");
    let (headers, body) = &got[0];
    verify(&secret, headers, body);
    let event: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(event["event_type"], "call.busy");
    assert_eq!(headers["x-formantai-event-type"], "call.busy");
    assert_eq!(
        headers["webhook-id"].to_str().unwrap(),
        event["event_id"].as_str().unwrap()
    );
    let call = &event["data"]["call"];
    assert_eq!(call["conversation_id"], c["conversation_id"]);
    assert_eq!(call["status"], c["status"]);
    assert_eq!(call["trace_id"], c["trace_id"]);
    assert_eq!(call["to_phone"], c["contact_number"]);
    assert_eq!(call["from_phone"], "+918035739222");
    assert_eq!(call["failure_reason"], "486 Busy Here");
    assert_eq!(call["call_parameters"], json!({"customer_name": "Rahul"}));
    assert_eq!(call["metadata"], "crm-42");
    assert_eq!(call["duration_seconds"], Value::Null);
    assert_eq!(event["data"]["retry"]["is_final_attempt"], true);
}

/// A busy attempt of a call that continues an earlier one: its `call.busy` offers the next
/// attempt what it needs (spec/webhooks.md): the collected data, the stage to resume at, the
/// language, and the agent's `retry_message` rendered, not an echo of the request. And on
/// PostgreSQL too, since the stage is a stored column.
async fn a_busy_call_offers_the_next_attempt_its_context(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant_in(dir.path(), &db);
    let svc = Service::start_in(dir.path(), &db);
    let sipp = Sipp::busy(dir.path());
    let api = Api::new(&svc.base, &key);
    let agent = api
        .setup_agent(
            sipp.port,
            json!({"language": "en-IN",
                "retry_message": "Hi {{customer_name}}, we spoke earlier about {{invoice}}.",
                "stages": [
                    {"id": "ask", "say": "Can you pay?", "routes": [
                        {"when_any": ["no"], "next": "when"}]},
                    {"id": "when", "say": "When could you pay?", "routes": [
                        {"when_any": ["friday"], "set": {"when": "friday"}, "end": true}]}]}),
        )
        .await;
    let receiver = Receiver::start().await;
    let r = api
        .post(
            &format!("/v1/agents/{agent}/webhook-targets"),
            json!({"name": "crm", "url": receiver.url}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = api
        .post(
            "/v1/call",
            json!({"agent_id": agent,
            "parameters": [{"name": "customer_phone", "value": "+919876543210"},
                           {"name": "customer_name", "value": "Rahul"}],
            "retry_context": {"collected_data": {"invoice": "INV-7", "intent": "refused"},
                              "retry_stage_id": "when"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let c = api.wait_terminal(&loc, Duration::from_secs(20)).await;
    assert_eq!(c["status"], "busy", "{c}");
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let event: Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!(event["event_type"], "call.busy");
    assert_eq!(
        event["data"]["retry_context"],
        json!({"collected_data": {"invoice": "INV-7", "intent": "refused"},
            "retry_initial_message": "Hi Rahul, we spoke earlier about INV-7.",
            "retry_language": "en-IN",
            "retry_stage_id": "when"}),
        "{event}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_call_offers_the_next_attempt_its_context_on_sqlite() {
    a_busy_call_offers_the_next_attempt_its_context(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_call_offers_the_next_attempt_its_context_on_postgres() {
    let (db, _pg) = Db::postgres();
    a_busy_call_offers_the_next_attempt_its_context(db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_events_pending_at_a_sigkill_are_all_delivered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant(dir.path());
    let schedule = [(
        "OUTDIAL_WEBHOOK_RETRY_SCHEDULE",
        "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    )];
    let mut svc = Service::start_with(dir.path(), &Db::sqlite(), &schedule);
    let total = 4;
    let sipp = Sipp::busy(dir.path());
    let api = Api::new(&svc.base, &key);
    let agent = api.setup_agent(sipp.port, json!({})).await;
    let receiver = Receiver::start().await;
    receiver
        .healthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let target: Value = api
        .post(
            &format!("/v1/agents/{agent}/webhook-targets"),
            json!({"name": "crm", "url": receiver.url}),
        )
        .await
        .json()
        .await
        .unwrap();
    let secret = target["data"]["secret"].as_str().unwrap().to_string();
    let mut locations = Vec::new();
    for i in 0..total {
        locations.push(api.call(agent, &format!("+9198765432{i:02}")).await);
    }
    for loc in &locations {
        assert_eq!(
            api.wait_terminal(loc, Duration::from_secs(20)).await["status"],
            "busy"
        );
    }
    // Every event has been tried (and refused) at least once: deliveries are pending.
    receiver
        .wait_for(total as usize, Duration::from_secs(10))
        .await;
    svc.kill();
    receiver
        .healthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let before_restart = receiver.got.lock().unwrap().len();
    svc.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let got = receiver.got.lock().unwrap().clone();
        let after: Vec<_> = got[before_restart..].to_vec();
        let ids: std::collections::HashSet<String> = after
            .iter()
            .map(|(h, _)| h["webhook-id"].to_str().unwrap().to_string())
            .collect();
        if ids.len() >= total as usize || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Every event reached the receiver after the restart; a repeat carries the same id and body.
    let mut bodies: std::collections::HashMap<String, Vec<u8>> = Default::default();
    for (headers, body) in &delivered {
        verify(&secret, headers, body);
        let id = headers["webhook-id"].to_str().unwrap().to_string();
        let prev = bodies.insert(id.clone(), body.clone());
        assert!(
            prev.is_none_or(|p| p == *body),
            "event {id} changed between attempts"
        );
    }
    let conversations: std::collections::HashSet<String> = bodies
        .values()
        .map(|b| {
            serde_json::from_slice::<Value>(b).unwrap()["data"]["call"]["conversation_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        bodies.len(),
        total as usize,
        "one event per call, none lost"
    );
    assert_eq!(conversations.len(), total as usize);
    let redelivered: std::collections::HashSet<String> = delivered[before_restart..]
        .iter()
        .map(|(h, _)| h["webhook-id"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        redelivered.len(),
        total as usize,
        "all pending events delivered after the restart"
    );
}

/// `agents.md` "Languages", through the binary: on a node with only the local engines a Hindi
/// agent or a Hindi retry is refused (espeak-ng speaks Hindi, nothing local hears it) and
/// nothing is written; once the operator gives the node a Deepgram key, the same node serves a
/// Hindi agent that names Deepgram and takes its Hindi retries.
#[tokio::test(flavor = "multi_thread")]
async fn hindi_is_served_only_by_a_node_whose_engines_hear_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant(dir.path());
    let hindi = json!({"name": "hindi", "language": "hi-IN",
        "first_message": "नमस्ते {{customer_name}}", "transcriber": {"engine": "deepgram"}});
    let hindi_row = |listing: &Value| {
        listing["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["language"] == "hi-IN")
            .cloned()
            .unwrap()
    };
    let english = {
        let svc = Service::start(dir.path());
        let api = Api::new(&svc.base, &key);
        let listing = api.get_json("/v1/languages").await;
        assert_eq!(hindi_row(&listing)["transcribers"], json!([]), "{listing}");
        let r = api.post("/v1/agents", hindi.clone()).await;
        assert_eq!(r.status(), 400);
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["message"], "unsupported language", "{err}");
        let english = api.setup_agent(9, json!({"language": "en-IN"})).await;
        let r = api
            .post(
                "/v1/call",
                json!({"agent_id": english, "retry_context": {"retry_language": "hi-IN"},
                "parameters": [{"name": "customer_phone", "value": "+919876543210"}]}),
            )
            .await;
        assert_eq!(r.status(), 400);
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["message"], "unsupported retry_language");
        let listed = api.get_json("/v1/conversations").await;
        assert_eq!(listed["total"], 0, "nothing written: {listed}");
        english
    };
    // Deepgram is never reached here: the trunk answers nothing, so the call fails before
    // anyone speaks.
    let svc = Service::start_with(
        dir.path(),
        &Db::sqlite(),
        &[
            ("OUTDIAL_DEEPGRAM_API_KEY", "test-key"),
            ("OUTDIAL_DEEPGRAM_URL", "ws://127.0.0.1:9/v1/listen"),
        ],
    );
    let api = Api::new(&svc.base, &key);
    let listing = api.get_json("/v1/languages").await;
    assert_eq!(hindi_row(&listing)["transcribers"], json!(["deepgram"]));
    let r = api.post("/v1/agents", hindi).await;
    assert_eq!(r.status(), 200);
    // The English agent hears with the local engine: a Hindi retry stays refused until it
    // names Deepgram too.
    let retry = json!({"agent_id": english, "retry_context": {"retry_language": "hi-IN"},
        "parameters": [{"name": "customer_phone", "value": "+919876543210"}]});
    assert_eq!(api.post("/v1/call", retry.clone()).await.status(), 400);
    let r = api
        .http
        .patch(format!("{}/v1/agents/{english}", svc.base))
        .bearer_auth(&api.key)
        .json(&json!({"transcriber": {"engine": "deepgram"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(api.post("/v1/call", retry).await.status(), 200);
}
