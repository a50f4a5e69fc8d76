//! A trunk's upkeep through the real binary: a trunk with `register: true` is registered with
//! Kamailio's registrar (digest answered) and kept registered, its OPTIONS probe answered, and
//! both shown by `GET /v1/trunks/{id}`; a wrong password shows the registrar's refusal.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{Api, Db, Service};
use testkit::kamailio::Kamailio;

/// A node that reads its trunks every second, asks for 4 s bindings and probes every second.
fn node(dir: &std::path::Path) -> (Service, Api) {
    let db = Db::sqlite();
    let key = Service::create_tenant_in(dir, &db);
    let svc = Service::start_with(
        dir,
        &db,
        &[
            ("OUTDIAL_TRUNK_REFRESH_SECONDS", "1"),
            ("OUTDIAL_REGISTER_EXPIRES_SECONDS", "4"),
            ("OUTDIAL_TRUNK_PROBE_SECONDS", "1"),
        ],
    );
    let api = Api::new(&svc.base, &key);
    (svc, api)
}

/// Polls `GET /v1/trunks/{id}` until `done` holds of its data.
async fn trunk_until(api: &Api, id: i64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = api.get(&format!("/v1/trunks/{id}")).await;
        assert_eq!(got.status(), 200);
        let body: Value = got.json().await.unwrap();
        if done(&body["data"]) {
            return body["data"].clone();
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn trunk_at(api: &Api, proxy: &Kamailio, password: &str) -> i64 {
    let created = api
        .post(
            "/v1/trunks",
            json!({"name": "carrier", "uri": proxy.uri(), "username": "outdial",
                   "password": password, "register": true}),
        )
        .await;
    assert_eq!(created.status(), 200);
    let body: Value = created.json().await.unwrap();
    body["data"]["trunk_id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_that_asks_for_registration_is_registered_renewed_and_probed() {
    let proxy = Kamailio::start("sip:127.0.0.1:9", "s3cret");
    let dir = tempfile::tempdir().unwrap();
    let (_svc, api) = node(dir.path());
    let id = trunk_at(&api, &proxy, "s3cret").await;
    let data = trunk_until(&api, id, |d| {
        d["registration"]["status"] == "registered" && d["last_probe"]["response"].is_string()
    })
    .await;
    assert_eq!(data["registration"]["detail"], "200 OK", "{data}");
    assert!(data["registration"]["expires_at"].is_string(), "{data}");
    assert_eq!(data["last_probe"]["response"], "200 OK", "{data}");
    assert!(data["last_probe"]["round_trip_ms"].is_u64(), "{data}");
    // Renewed before each 4 s binding runs out: the registrar sees REGISTERs less than 4 s
    // apart, for as long as the node runs.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let seen = proxy.registrations();
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[1].2 - w[0].2 < 4.0), "{seen:?}");
    // The list shows the trunk's options, not this node's view of it.
    let list: Value = api.get("/v1/trunks").await.json().await.unwrap();
    assert_eq!(list["data"][0]["register"], true);
    assert!(list["data"][0].get("registration").is_none(), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_refused_by_the_registrar_is_shown_as_failed() {
    let proxy = Kamailio::start("sip:127.0.0.1:9", "s3cret");
    let dir = tempfile::tempdir().unwrap();
    let (_svc, api) = node(dir.path());
    let id = trunk_at(&api, &proxy, "wrong").await;
    let data = trunk_until(&api, id, |d| d["registration"]["status"] == "failed").await;
    assert_eq!(data["registration"]["detail"], "401 Unauthorized", "{data}");
    assert!(data["registration"]["expires_at"].is_null(), "{data}");
    assert!(proxy.registrations().is_empty());
    // Another tenant's key, or a trunk that is not there, finds nothing.
    let missing = api.get(&format!("/v1/trunks/{}", id + 1)).await;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["message"], "trunk not found", "{body}");
}

/// `srtp: required` from the API to the wire: the trunk (TLS, Kamailio in front of a SIPp that
/// knows no SRTP) gets an RTP/SAVP offer with SDES keys, and the plain answer ends the call
/// `telephony_failed`, saying why; the option is refused on a trunk without TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_requiring_srtp_offers_it_and_refuses_a_plain_answer() {
    let dir = tempfile::tempdir().unwrap();
    let callee = support::Sipp::callee("answer_talk_bye.xml", 1, 1_000, dir.path());
    let proxy = Kamailio::start_tls(&format!("sip:127.0.0.1:{}", callee.port), "s3cret");
    let db = Db::sqlite();
    let key = Service::create_tenant_in(dir.path(), &db);
    let ca = proxy.ca().display().to_string();
    let svc = Service::start_with(dir.path(), &db, &[("OUTDIAL_SIP_TLS_CA", ca.as_str())]);
    let api = Api::new(&svc.base, &key);

    let plain = api
        .post(
            "/v1/trunks",
            json!({"name": "udp", "uri": proxy.uri(), "srtp": "required"}),
        )
        .await;
    assert_eq!(plain.status(), 400);
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["error"]["message"], "invalid srtp", "{body}");

    let trunk = json!({"name": "carrier", "uri": proxy.sips_uri(), "username": "outdial",
        "password": "s3cret", "srtp": "required"});
    let agent = api.setup_agent_on(trunk, json!({})).await;
    let call = api.call(agent, "+919876543210").await;
    let c = api.wait_terminal(&call, Duration::from_secs(30)).await;
    assert_eq!(
        (c["status"].as_str(), c["failure_reason"].as_str()),
        (
            Some("telephony_failed"),
            Some("the trunk requires SRTP: the far end answered plain RTP (RTP/AVP), not RTP/SAVP")
        ),
        "{c}"
    );
    let trace = std::fs::read_to_string(&callee.trace).unwrap();
    assert!(trace.contains(" RTP/SAVP 0 8 101"), "{trace}");
    assert!(
        trace.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
        "{trace}"
    );
}
