//! `POST /v1/batch-call` and the batch reads: every bad file is a 400 naming its first bad row
//! and writes nothing; the edge cases of real-world CSV are accepted.

use crate::harness::{body, expect_error, phone, Tenant, TestApp};
use domain::store::Store;
use reqwest::{Response, StatusCode};

const BOUNDARY: &str = "----outdial-test-boundary";

/// A multipart body built by hand, so tests control every byte of the file.
fn form(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        b.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    if let Some((filename, bytes)) = file {
        b.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: text/csv\r\n\r\n")
                .as_bytes(),
        );
        b.extend_from_slice(bytes);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

async fn upload(app: &TestApp, t: &Tenant, agent: i64, filename: &str, csv: &[u8]) -> Response {
    let agent = agent.to_string();
    app.client
        .post(app.url("/v1/batch-call"))
        .bearer_auth(&t.key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(form(
            &[("agent_id", &agent), ("name", "March Follow Ups")],
            Some((filename, csv)),
        ))
        .send()
        .await
        .unwrap()
}

fn rows(n: u32) -> String {
    let mut s = String::from("customer_phone,customer_name\n");
    for i in 0..n {
        s.push_str(&format!("{},Name {i}\n", phone(i)));
    }
    s
}

#[tokio::test]
async fn bad_files_are_refused_whole_and_name_the_first_bad_row() {
    let app = TestApp::spawn_with(api::ApiConfig {
        api_rate_limit_per_minute: 0,
        batch_limits: domain::batch::BatchLimits {
            max_bytes: 4096,
            max_rows: 1_000_000,
        },
        ..Default::default()
    })
    .await;
    let t = app.tenant("acme").await;
    let agent = app.agent(&t, "+918035739222").await;

    let mut bad_row_17 = rows(20);
    bad_row_17 = bad_row_17.replace(&format!("{},", phone(16)), "98765,");
    let mut duplicate = rows(5);
    duplicate.push_str(&format!("{},again\n", phone(2)));
    let big = rows(200);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "list.txt",
            rows(3).into_bytes(),
            400,
            "file must be a .csv file",
        ),
        (
            "list.csv",
            format!("{}\n{}\n", phone(1), phone(2)).into_bytes(),
            400,
            "customer_phone column is required",
        ),
        (
            "list.csv",
            b"phone,name\n+919800000001,a\n".to_vec(),
            400,
            "customer_phone column is required",
        ),
        ("list.csv", Vec::new(), 400, "file has no rows"),
        (
            "list.csv",
            b"customer_phone,customer_name\r\n".to_vec(),
            400,
            "file has no rows",
        ),
        (
            "list.csv",
            bad_row_17.into_bytes(),
            400,
            "invalid customer_phone on row 17",
        ),
        (
            "list.csv",
            duplicate.into_bytes(),
            400,
            "duplicate customer_phone on row 6",
        ),
        ("list.csv", big.into_bytes(), 413, "request body too large"),
        (
            "list.csv",
            b"customer_phone,name\n+919800000001,caf\xe9\n".to_vec(),
            400,
            "invalid UTF-8 on row 1",
        ),
        (
            "list.csv",
            b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe".to_vec(),
            400,
            "file must be UTF-8",
        ),
    ];
    for (filename, csv, status, message) in cases {
        let r = upload(&app, &t, agent, filename, &csv).await;
        expect_error(r, status, "invalid_request", message).await;
    }
    assert_eq!(app.calls(&t).await, 0, "a refused file writes nothing");
    let list = body(app.get(&t, "/v1/batch-calls").await).await;
    assert_eq!(list["total"], 0);

    // Form fields.
    let r = app
        .client
        .post(app.url("/v1/batch-call"))
        .bearer_auth(&t.key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(form(&[("name", "x")], Some(("a.csv", rows(1).as_bytes()))))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "invalid_request", "agent_id is required").await;
    let r = upload(&app, &t, 999, "a.csv", rows(1).as_bytes()).await;
    expect_error(r, 404, "not_found", "agent not found").await;
    let r = app.post_raw(&t, "/v1/batch-call", "{}").await;
    expect_error(
        r,
        400,
        "invalid_request",
        "request must be multipart/form-data",
    )
    .await;
    assert_eq!(app.calls(&t).await, 0);
}

#[tokio::test]
async fn edge_files_are_accepted_and_become_scheduled_calls() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let agent = app.agent(&t, "+918035739222").await;
    let good: Vec<(&[u8], i64)> =
        vec![
        (b"\xef\xbb\xbfcustomer_phone,customer_name\n+919800000001,A\n", 1),
        (b"customer_phone,customer_name\r\n+919800000002,B\r\n+919800000003,C\r\n", 2),
        (b"customer_name,customer_phone,note\n\"Doe, Jane\",+919800000004,\"line1\nline2\"\n", 1),
        (b"customer_phone\n+919800000005\n+91 98000 00006\n", 2),
    ];
    let mut total = 0;
    for (csv, n) in good {
        let r = upload(&app, &t, agent, "list.CSV", csv).await;
        assert_eq!(r.status(), StatusCode::OK);
        let b = body(r).await;
        let data = b["data"].as_object().unwrap();
        let mut keys: Vec<_> = data.keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "agent_id",
                "created_at",
                "id",
                "name",
                "status",
                "total_recipients"
            ]
        );
        assert_eq!(data["status"], "pending");
        assert_eq!(data["total_recipients"], n);
        assert_eq!(data["agent_id"], agent);
        total += n as u64;
    }
    assert_eq!(app.calls(&t).await, total);

    // The quoted-comma row's parameters, in file order after customer_phone.
    let list = body(app.get(&t, "/v1/conversations?limit=100").await).await;
    let c = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["contact_number"] == "+919800000004")
        .unwrap()
        .clone();
    assert_eq!(c["status"], "scheduled");
    let one = app
        .store
        .get_conversation(
            t.id,
            c["conversation_id"].as_str().unwrap().parse().unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    let params: Vec<_> = one
        .parameters
        .iter()
        .map(|p| (p.name.as_str(), p.value.as_str()))
        .collect();
    assert_eq!(
        params,
        [
            ("customer_phone", "+919800000004"),
            ("customer_name", "Doe, Jane"),
            ("note", "line1\nline2")
        ]
    );
    assert!(one.batch_id.is_some());

    // Reads: list, one, metrics; another tenant sees nothing.
    let list = body(
        app.get(&t, &format!("/v1/batch-calls?agent_id={agent}&limit=2"))
            .await,
    )
    .await;
    assert_eq!(list["total"], 4);
    assert_eq!(list["has_more"], true);
    let id = list["data"][0]["id"].as_i64().unwrap();
    let one = body(app.get(&t, &format!("/v1/batch-calls/{id}")).await).await;
    assert_eq!(one["data"]["pending_count"], 2);
    let m = body(app.get(&t, &format!("/v1/batch-calls/{id}/metrics")).await).await;
    let mut keys: Vec<_> = m["data"].as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "avg_duration_seconds",
            "busy_count",
            "canceled_count",
            "completed_count",
            "failed_count",
            "in_progress_count",
            "no_answer_count",
            "pending_count",
            "pending_retry_count",
            "socket_failure_count",
            "success_count",
            "success_rate",
            "total_processed",
            "unreachable_count"
        ]
    );
    assert_eq!(m["data"]["pending_count"], 2);
    assert_eq!(m["data"]["total_processed"], 0);

    let other = app.tenant("other").await;
    for path in [
        format!("/v1/batch-calls/{id}"),
        format!("/v1/batch-calls/{id}/metrics"),
        "/v1/batch-calls/abc".into(),
    ] {
        expect_error(
            app.get(&other, &path).await,
            404,
            "not_found",
            "batch not found",
        )
        .await;
    }

    // Pause, resume, cancel: the waiting recipients become canceled.
    let r = app
        .post(
            &t,
            &format!("/v1/batch-calls/{id}/pause"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(body(r).await["data"]["status"], "paused");
    let r = app
        .post(
            &t,
            &format!("/v1/batch-calls/{id}/resume"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(body(r).await["data"]["status"], "pending");
    let r = app
        .post(
            &t,
            &format!("/v1/batch-calls/{id}/cancel"),
            &serde_json::json!({}),
        )
        .await;
    let b = body(r).await;
    assert_eq!(b["data"]["status"], "canceled");
    assert_eq!(b["data"]["canceled_count"], 2);
    assert_eq!(b["data"]["pending_count"], 0);
    assert_eq!(b["data"]["total_processed"], 2);
    let r = app
        .post(
            &t,
            &format!("/v1/batch-calls/{id}/pause"),
            &serde_json::json!({}),
        )
        .await;
    expect_error(r, 409, "conflict", "batch already canceled").await;
}
