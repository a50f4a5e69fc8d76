//! Batch uploads next to API traffic, through the real binary on SQLite and PostgreSQL: uploads
//! over the node's limit are refused 429 with `Retry-After` (never 500) while another tenant's
//! calls are all accepted; a batch still uploading is neither listed nor dialled; and a SIGKILL
//! mid-upload leaves nothing of it after the restart, where a new upload works.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{scheduled_call, Api, Db, Service, Sipp};

fn csv(rows: u32, prefix: u32) -> String {
    let mut csv = String::from("customer_phone,customer_name\n");
    for i in 0..rows {
        csv.push_str(&format!("+91{prefix:02}{i:08},Name {i}\n"));
    }
    csv
}

fn form(agent: i64, name: &str) -> Vec<(&'static str, String)> {
    vec![("agent_id", agent.to_string()), ("name", name.to_string())]
}

async fn status_and_retry(r: reqwest::Response) -> (u16, Option<u64>, Value) {
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

const UPLOAD_ROWS: u32 = 50_000;
const UPLOADS: u32 = 4;

async fn uploads_over_the_limit_get_429_and_calls_go_on(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let uploader = Service::create_tenant_in(dir.path(), &db);
    let caller = Service::create_tenant_in(dir.path(), &db);
    let svc = Service::start_with(
        dir.path(),
        &db,
        &[
            ("OUTDIAL_BATCH_MAX_UPLOADS", "2"),
            ("OUTDIAL_BATCH_UPLOAD_WAIT_MS", "0"),
        ],
    );
    // The batches are dialled as they become visible, into a callee answering 486: the node
    // is dispatching while the other uploads and the other tenant's calls are written.
    let sipp = Sipp::busy(dir.path());
    let up = Api::new(&svc.base, &uploader);
    // Within the RTP ports the test gives the service.
    let agent = up
        .setup_agent(
            sipp.port,
            json!({"first_message": "", "max_concurrent_calls": 10}),
        )
        .await;
    let calls = Api::new(&svc.base, &caller);
    let their_agent = calls.setup_agent(sipp.port, json!({})).await;

    let uploads: Vec<_> = (0..UPLOADS)
        .map(|k| {
            let up = Api::new(&svc.base, &uploader);
            tokio::spawn(async move {
                let body = csv(UPLOAD_ROWS, 70 + k);
                let r = up
                    .upload(
                        "/v1/batch-call",
                        &form(agent, &format!("b{k}")),
                        "b.csv",
                        &body,
                    )
                    .await;
                (k, status_and_retry(r).await)
            })
        })
        .collect();
    // The other tenant's calls, eight at a time, while the uploads are written.
    let posting: Vec<_> = (0..8u32)
        .map(|w| {
            let calls = Api::new(&svc.base, &caller);
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..25u32 {
                    let phone = format!("+9177{w:02}{i:06}");
                    let r = calls
                        .post("/v1/call", scheduled_call(their_agent, &phone))
                        .await;
                    statuses.push(r.status().as_u16());
                }
                statuses
            })
        })
        .collect();

    let mut refused = Vec::new();
    for u in uploads {
        let (k, (status, retry, body)) = u.await.unwrap();
        match status {
            200 => assert_eq!(body["data"]["total_recipients"], UPLOAD_ROWS, "{body}"),
            429 => {
                assert_eq!(body["error"]["type"], "rate_limit_exceeded", "{body}");
                assert_eq!(
                    body["error"]["message"], "too many batch uploads in progress",
                    "{body}"
                );
                assert!(retry.is_some_and(|s| s >= 1), "429 without Retry-After");
                refused.push((k, retry.unwrap_or(1)));
            }
            other => panic!("upload {k}: {other} {body}"),
        }
    }
    assert!(
        !refused.is_empty(),
        "{UPLOADS} uploads at once on a node taking 2: none was refused"
    );
    assert!(
        refused.len() <= (UPLOADS - 1) as usize,
        "every upload refused"
    );
    let mut statuses = Vec::new();
    for p in posting {
        statuses.extend(p.await.unwrap());
    }
    assert_eq!(statuses.len(), 200);
    assert!(
        statuses.iter().all(|s| *s == 200),
        "the other tenant's calls: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );

    // A refused upload retried after its Retry-After is written.
    for (k, retry) in refused {
        tokio::time::sleep(Duration::from_secs(retry)).await;
        let body = csv(UPLOAD_ROWS, 70 + k);
        let r = up
            .upload(
                "/v1/batch-call",
                &form(agent, &format!("b{k}")),
                "b.csv",
                &body,
            )
            .await;
        let (status, _, body) = status_and_retry(r).await;
        assert_eq!(status, 200, "retried upload {k}: {body}");
    }
    let list: Value = up.get_json("/v1/batch-calls?limit=100").await;
    assert_eq!(list["total"], UPLOADS, "{list}");
    assert!(list["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["total_recipients"] == UPLOAD_ROWS));
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_over_the_limit_get_429_with_retry_after_and_other_calls_are_accepted() {
    uploads_over_the_limit_get_429_and_calls_go_on(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_over_the_limit_get_429_with_retry_after_and_other_calls_are_accepted_on_postgres()
{
    let (db, _pg) = Db::postgres();
    uploads_over_the_limit_get_429_and_calls_go_on(db).await;
}

const BIG: u32 = 200_000;

async fn loading_batch_is_invisible_and_sigkill_leaves_nothing(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant_in(dir.path(), &db);
    // Small chunks, so the upload is long enough to be watched; a short lease, so that on
    // PostgreSQL (where a starting node removes only uploads whose lease ran out, as another
    // node may be uploading) the killed upload has expired by the restart.
    let mut svc = Service::start_with(
        dir.path(),
        &db,
        &[
            ("OUTDIAL_BATCH_UPLOAD_CHUNK_ROWS", "500"),
            ("OUTDIAL_BATCH_UPLOAD_LEASE_SECONDS", "2"),
        ],
    );
    let sipp = Sipp::busy(dir.path());
    let api = Api::new(&svc.base, &key);
    // Within the RTP ports the test gives the service.
    let agent = api
        .setup_agent(
            sipp.port,
            json!({"first_message": "", "max_concurrent_calls": 10}),
        )
        .await;
    // Sent by hand, not with `Api::upload`: this request is cut off by the kill.
    let upload = {
        let (http, url, key) = (
            api.http.clone(),
            format!("{}/v1/batch-call", svc.base),
            key.clone(),
        );
        let file = reqwest::multipart::Part::text(csv(BIG, 88)).file_name("big.csv");
        let form = reqwest::multipart::Form::new()
            .text("agent_id", agent.to_string())
            .text("name", "big")
            .part("file", file);
        tokio::spawn(async move { http.post(url).bearer_auth(key).multipart(form).send().await })
    };

    // Chunks are being committed: watched in the database, since the API must not show them.
    let deadline = Instant::now() + Duration::from_secs(60);
    let written = loop {
        let n: u64 = db
            .scalar(
                dir.path(),
                "SELECT COUNT(*) FROM calls WHERE batch_id IS NOT NULL",
            )
            .parse()
            .unwrap();
        if n >= 5_000 {
            break n;
        }
        if upload.is_finished() {
            let r = upload.await.unwrap().unwrap();
            panic!(
                "the upload ended before it was watched: {} {:?}",
                r.status(),
                r.text().await
            );
        }
        assert!(Instant::now() < deadline, "the upload wrote nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let id: i64 = db
        .scalar(
            dir.path(),
            "SELECT id FROM batches WHERE status = 'loading'",
        )
        .parse()
        .expect("the batch is loading while its calls are written");
    assert!(
        written < u64::from(BIG),
        "the upload finished before it was watched"
    );
    let list: Value = api.get_json("/v1/batch-calls").await;
    assert_eq!(list["total"], 0, "a loading batch was listed: {list}");
    let r = api.get(&format!("/v1/batch-calls/{id}")).await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "not_found");
    let convs: Value = api.get_json("/v1/conversations").await;
    assert_eq!(
        convs["total"], 0,
        "calls of a loading batch were listed: {convs}"
    );

    svc.kill();
    let _ = upload.await;
    assert!(
        sipp.invites_per_number().is_empty(),
        "a call of a loading batch was dialled"
    );
    // Past the lease (see above), then a fresh start.
    tokio::time::sleep(Duration::from_secs(3)).await;
    svc.restart();
    let api = Api::new(&svc.base, &key);
    assert_eq!(
        db.scalar(dir.path(), "SELECT COUNT(*) FROM calls"),
        "0",
        "the half-written batch's calls are still stored"
    );
    assert_eq!(db.scalar(dir.path(), "SELECT COUNT(*) FROM batches"), "0");
    let r = api.get(&format!("/v1/batch-calls/{id}")).await;
    assert_eq!(r.status(), 404);
    let list: Value = api.get_json("/v1/batch-calls").await;
    assert_eq!(list["total"], 0, "{list}");

    // The same upload retried after the restart works, and is dialled.
    let r = api
        .upload(
            "/v1/batch-call",
            &form(agent, "again"),
            "again.csv",
            &csv(50, 66),
        )
        .await;
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.unwrap();
    let again_id = again["data"]["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let b: Value = api.get_json(&format!("/v1/batch-calls/{again_id}")).await;
        if b["data"]["status"] == "completed" {
            assert_eq!(b["data"]["busy_count"], 50, "{b}");
            break;
        }
        assert!(Instant::now() < deadline, "retried batch not dialled: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let invites = sipp.invites_per_number();
    assert_eq!(
        invites.len(),
        50,
        "only the retried batch's numbers were dialled"
    );
    assert!(invites.keys().all(|n| n.contains("9166")), "{invites:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loading_batch_is_invisible_and_a_sigkill_mid_upload_leaves_nothing() {
    loading_batch_is_invisible_and_sigkill_leaves_nothing(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loading_batch_is_invisible_and_a_sigkill_mid_upload_leaves_nothing_on_postgres() {
    let (db, _pg) = Db::postgres();
    loading_batch_is_invisible_and_sigkill_leaves_nothing(db).await;
}

/// A request the node is still serving: its headers are in, its body never comes (the
/// body's idle timeout is 30 s). Dropped, the connection closes and the request ends.
async fn held_request(base: &str, key: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/call HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// While the node's API serves a request, it dials at its busy rate (here 5 calls a second
/// after a first round of 4, the claim batch); once no request is being served, every call
/// still due goes at once. Each is dialled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_api_slows_the_nodes_dials_and_an_idle_one_lets_them_go() {
    const CALLS: usize = 40;
    const RATE: f64 = 5.0;
    const BURST: f64 = 4.0;
    let db = Db::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant_in(dir.path(), &db);
    let svc = Service::start_with(
        dir.path(),
        &db,
        &[
            ("OUTDIAL_DISPATCH_BUSY_DIAL_RATE", "5"),
            ("OUTDIAL_DISPATCH_CLAIM_BATCH", "4"),
        ],
    );
    let sipp = Sipp::busy(dir.path());
    let api = Api::new(&svc.base, &key);
    let agent = api
        .setup_agent(sipp.port, json!({"first_message": ""}))
        .await;
    let numbers: Vec<String> = (0..CALLS).map(|i| format!("+9198765440{i:02}")).collect();

    let held = held_request(&svc.base, &key).await;
    let busy_from = Instant::now();
    for n in &numbers {
        api.call(agent, n).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy_for = busy_from.elapsed().as_secs_f64();
    let while_busy = sipp.invites_per_number().len() as f64;
    let most = BURST + RATE * busy_for + 1.0;
    assert!(
        (RATE..=most).contains(&while_busy),
        "{while_busy} calls dialled in {busy_for:.1} s of a busy API (busy rate {RATE}/s, \
         burst {BURST}: at most {most:.0}, and dialling goes on)"
    );

    drop(held);
    let idle_from = Instant::now();
    while sipp.invites_per_number().len() < CALLS {
        assert!(
            idle_from.elapsed() < Duration::from_secs(20),
            "calls never dialled: {:?}",
            sipp.invites_per_number()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rest = CALLS as f64 - while_busy;
    let took = idle_from.elapsed().as_secs_f64();
    eprintln!("{while_busy} dialled in {busy_for:.1} s busy; the {rest} left in {took:.2} s idle");
    // At the busy rate the rest would take rest / RATE seconds (4 s or more).
    assert!(
        took < rest / RATE / 2.0,
        "the {rest} calls left took {took:.1} s once the API was idle"
    );
    let invites = sipp.invites_per_number();
    for n in &numbers {
        assert_eq!(invites.get(n), Some(&1), "{n}: {invites:?}");
    }
}
