//! The operator console in a real browser: `outdial serve` on a fresh data dir, SIPp callees on
//! loopback, and Debian's headless Chromium driven by playwright-core (`tests/console/`,
//! `console.test.mjs`) through every page, with axe-core on each. The script signs in, places
//! a test call and watches it complete without a reload, plays its recording, watches a
//! 50-row batch through a pause and a resume to 100 %, is shown the API's message next to a
//! bad agent field, retries a failed webhook delivery, checks a second tenant sees none of
//! this, and signs out. It writes the screenshots of docs/console.md.
//!
//! Needs `chromium` (apt) and `npm ci` in `tests/console` (scripts/test does both); without
//! them the test fails saying so.

mod support;

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Api, Db, Service, Sipp};

const CHROMIUM: &str = "/usr/bin/chromium";

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_in_a_browser() {
    let script_dir = tests_dir();
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: `apt-get install chromium` (scripts/test installs it)"
    );
    assert!(
        script_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: `npm ci` in {} (scripts/test runs it)",
        script_dir.display()
    );
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant(dir.path());
    let other = Service::outdial(dir.path())
        .args(["tenants", "create", "other"])
        .output()
        .unwrap();
    assert!(other.status.success());
    let key2 = serde_json::from_slice::<Value>(&other.stdout).unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    // A failed webhook delivery within ~1 s: one attempt, one retry a second later.
    let svc = Service::start_with(
        dir.path(),
        &Db::sqlite(),
        &[("OUTDIAL_WEBHOOK_RETRY_SCHEDULE", "1")],
    );

    // The single call's callee rings only after 2.5 s, so `initiated` is there to be seen.
    let slow = Sipp::run(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/slow_answer_talk_bye.xml"),
        true,
        1,
        4000,
        dir.path(),
    );
    let batch_callee = Sipp::callee("answer_talk_bye.xml", 1000, 1000, dir.path());
    let api = Api::new(&svc.base, &key);
    let agent = api.setup_agent(slow.port, json!({})).await;
    let trunk: Value = api
        .post(
            "/v1/trunks",
            json!({"name": "batch", "uri": format!("sip:127.0.0.1:{}", batch_callee.port)}),
        )
        .await
        .json()
        .await
        .unwrap();
    let r = api
        .post(
            "/v1/phone-numbers",
            json!({"number": "+918035739223", "trunk_id": trunk["data"]["trunk_id"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    // Five calls at a time, no opening line: the batch takes long enough to pause, and
    // leaves the CPU to the browser.
    let batch_agent: Value = api
        .post(
            "/v1/agents",
            json!({"name": "batch", "phone_number": "+918035739223", "first_message": "",
                "max_concurrent_calls": 5}),
        )
        .await
        .json()
        .await
        .unwrap();
    let batch_agent = batch_agent["data"]["agent_id"].as_i64().unwrap();
    let before: Value = api.get_json(&format!("/v1/agents/{agent}")).await;

    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/console");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg("console.test.mjs")
        .current_dir(&script_dir)
        .env("CONSOLE_BASE", &svc.base)
        .env("CONSOLE_KEY", &key)
        .env("CONSOLE_KEY2", &key2)
        .env("CONSOLE_AGENT", agent.to_string())
        .env("CONSOLE_BATCH_AGENT", batch_agent.to_string())
        .env("CONSOLE_SCREENSHOTS", &shots)
        .env("CONSOLE_CHROMIUM", CHROMIUM)
        .output()
        .expect("node (the machine's Node.js) must be installed");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser test failed:\n{log}");
    println!("{log}");

    // What the browser did, seen through the API.
    let convs: Value = api
        .get_json(&format!("/v1/conversations?agent_id={agent}"))
        .await;
    assert_eq!(convs["total"], 1, "one test call: {convs}");
    assert_eq!(convs["data"][0]["status"], "completed");
    assert_eq!(convs["data"][0]["contact_number"], "+919876543210");
    let batches: Value = api.get_json("/v1/batch-calls").await;
    let metrics: Value = api
        .get_json(&format!(
            "/v1/batch-calls/{}/metrics",
            batches["data"][0]["id"]
        ))
        .await;
    assert_eq!(batches["data"][0]["status"], "completed", "{batches}");
    assert_eq!(metrics["data"]["total_processed"], 50, "{metrics}");
    let after: Value = api.get_json(&format!("/v1/agents/{agent}")).await;
    assert_eq!(
        after["data"], before["data"],
        "a refused edit changes nothing"
    );
    let delivered: Value = api
        .get_json("/v1/webhook-deliveries?status=delivered")
        .await;
    let retried = delivered["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["attempts"].as_array().map_or(0, Vec::len) >= 3);
    assert!(
        retried,
        "a delivery failed twice, then the retry got through: {delivered}"
    );
    let other = Api::new(&svc.base, &key2);
    assert_eq!(
        other.get_json("/v1/conversations").await["total"],
        0,
        "the second tenant made nothing"
    );
    let took = started.elapsed();
    println!("console test took {took:?}");
    assert!(
        took < Duration::from_secs(150),
        "the console test must stay well under the suite's budget: {took:?}"
    );
}
