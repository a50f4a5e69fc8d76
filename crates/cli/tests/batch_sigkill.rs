//! A batch survives a SIGKILL of the real binary: a SIPp callee on loopback counts INVITE
//! Call-IDs per number while `outdial serve` dials a batch; the process is killed mid-batch and
//! restarted. No recipient is lost, none is dialled twice for one attempt, and the metrics add
//! up, on SQLite and PostgreSQL.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::{Api, Db, Service, Sipp};

const ROWS: u32 = 160;

fn number(i: u32) -> String {
    format!("+9198{i:08}")
}

async fn metrics(api: &Api, id: i64) -> Value {
    let r = api.get(&format!("/v1/batch-calls/{id}/metrics")).await;
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["data"].clone()
}

fn n(m: &Value, k: &str) -> i64 {
    m[k].as_i64()
        .unwrap_or_else(|| panic!("{k} missing in {m}"))
}

fn adds_up(m: &Value) {
    assert_eq!(
        n(m, "total_processed")
            + n(m, "in_progress_count")
            + n(m, "pending_retry_count")
            + n(m, "pending_count"),
        i64::from(ROWS),
        "{m}"
    );
}

async fn sigkill_mid_batch(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant_in(dir.path(), &db);
    let mut svc = Service::start_in(dir.path(), &db);
    // Every call is answered and lasts a second; at most 16 at once, so at the kill some are
    // live, some done and most still waiting.
    let sipp = Sipp::callee("answer_talk_bye.xml", ROWS, 1000, dir.path());
    let api = Api::new(&svc.base, &key);
    // No opening line: the test is about dialling, and keeps the CPU for it.
    let agent = api
        .setup_agent(
            sipp.port,
            json!({"first_message": "", "max_concurrent_calls": 16}),
        )
        .await;
    let mut csv = String::from("customer_phone,customer_name\n");
    for i in 0..ROWS {
        csv.push_str(&format!("{},Name {i}\n", number(i)));
    }
    let form = reqwest::multipart::Form::new()
        .text("agent_id", agent.to_string())
        .text("name", "kill")
        .part(
            "file",
            reqwest::multipart::Part::bytes(csv.into_bytes()).file_name("kill.csv"),
        );
    let r = api
        .http
        .post(format!("{}/v1/batch-call", svc.base))
        .bearer_auth(&key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["data"]["id"]
        .as_i64()
        .unwrap();

    // Kill once some recipients are done and calls are live.
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let m = metrics(&api, id).await;
        adds_up(&m);
        if n(&m, "completed_count") >= 16 && n(&m, "in_progress_count") > 0 {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the batch did not get going: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    svc.kill();
    svc.restart();
    let api = Api::new(&svc.base, &key);
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let b: Value = api.get_json(&format!("/v1/batch-calls/{id}")).await;
        let m = metrics(&api, id).await;
        adds_up(&m);
        if b["data"]["status"] == "completed" {
            break m;
        }
        assert!(Instant::now() < deadline, "batch not finished: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Every recipient has a final outcome: completed, or `failed interrupted` when the kill
    // caught its call live (never redialled blindly).
    let mut outcomes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut offset = 0;
    loop {
        let page: Value = api
            .get_json(&format!("/v1/conversations?limit=100&offset={offset}"))
            .await;
        let items = page["data"].as_array().unwrap();
        for item in items {
            // The list item is FormantAI's; the detail has the reason and the batch.
            let id_ = item["conversation_id"].as_str().unwrap();
            let c: Value = api.get_json(&format!("/v1/conversations/{id_}")).await;
            let c = &c["data"];
            assert_eq!(c["batch_id"], id);
            let outcome = format!(
                "{} {}",
                c["status"].as_str().unwrap(),
                c["failure_reason"].as_str().unwrap_or("")
            );
            outcomes
                .entry(outcome.trim().to_string())
                .or_default()
                .push(c["contact_number"].as_str().unwrap().to_string());
        }
        offset += items.len();
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    let counts: BTreeMap<&str, usize> = outcomes
        .iter()
        .map(|(k, v)| (k.as_str(), v.len()))
        .collect();
    let completed = outcomes.get("completed").cloned().unwrap_or_default();
    let interrupted = outcomes.get("failed interrupted").map_or(0, Vec::len);
    assert_eq!(
        completed.len() + interrupted,
        ROWS as usize,
        "one attempt per recipient, each completed or interrupted: {counts:?}"
    );
    assert!(interrupted >= 1, "the kill caught live calls: {counts:?}");
    assert!(
        completed.len() > n(&before, "completed_count") as usize,
        "the batch went on after the restart: {counts:?}"
    );
    assert_eq!(
        (
            n(&after, "total_processed"),
            n(&after, "completed_count"),
            n(&after, "failed_count")
        ),
        (i64::from(ROWS), completed.len() as i64, interrupted as i64),
        "{after}"
    );

    let invites = sipp.invites_per_number();
    assert!(
        invites.values().all(|n| *n == 1),
        "a number was dialled twice: {:?}",
        invites.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    assert!(
        completed.iter().all(|c| invites.get(c) == Some(&1)),
        "every completed call was one INVITE"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_batch_loses_no_recipient_and_dials_none_twice() {
    sigkill_mid_batch(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_batch_loses_no_recipient_and_dials_none_twice_on_postgres() {
    let (db, _pg) = Db::postgres();
    sigkill_mid_batch(db).await;
}
