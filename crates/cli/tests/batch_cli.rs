//! `outdial batch create|watch` against the real service over real HTTP: the binary serves, a
//! SIPp callee answers busy on loopback, and the CLI is run as an operator would run it.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use support::{Api, Db, Service, Sipp};

/// Runs `outdial batch ...` against `svc` with `key`.
fn cli(svc: &Service, key: &str, args: &[&str]) -> Output {
    Service::outdial(&svc.data)
        .arg("batch")
        .args(args)
        .env("OUTDIAL_URL", &svc.base)
        .env("OUTDIAL_API_KEY", key)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn number(i: u32) -> String {
    format!("+9198{i:08}")
}

fn write_csv(dir: &Path, name: &str, rows: u32) -> String {
    let mut csv = String::from("customer_phone,customer_name\n");
    for i in 0..rows {
        csv.push_str(&format!("{},\"Name, {i}\"\n", number(i)));
    }
    let path = dir.join(name);
    std::fs::write(&path, csv).unwrap();
    path.display().to_string()
}

/// The counters of a batch object always account for every recipient.
fn adds_up(b: &Value) {
    let n = |k: &str| {
        b[k].as_i64()
            .unwrap_or_else(|| panic!("{k} missing in {b}"))
    };
    let outcomes = n("completed_count")
        + n("busy_count")
        + n("no_answer_count")
        + n("failed_count")
        + n("unreachable_count")
        + n("socket_failure_count")
        + n("canceled_count");
    assert_eq!(n("total_processed"), outcomes, "{b}");
    assert_eq!(n("success_count"), n("completed_count"), "{b}");
    assert_eq!(
        n("total_processed")
            + n("in_progress_count")
            + n("pending_retry_count")
            + n("pending_count"),
        n("total_recipients"),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn create_prints_the_batch_and_watch_json_follows_it_to_metrics_that_add_up() {
    let rows = 24;
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant(dir.path());
    let svc = Service::start(dir.path());
    let sipp = Sipp::busy(dir.path());
    let api = Api::new(&svc.base, &key);
    let agent = api
        .setup_agent(
            sipp.port,
            serde_json::json!({"first_message": "", "max_concurrent_calls": 4}),
        )
        .await;
    let file = write_csv(dir.path(), "March.csv", rows);

    let out = cli(
        &svc,
        &key,
        &[
            "create",
            "--agent",
            &agent.to_string(),
            "--name",
            "March Follow Ups",
            &file,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(created["name"], "March Follow Ups");
    assert_eq!(created["agent_id"], agent);
    assert_eq!(created["total_recipients"], rows);
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    let id = created["id"].as_i64().unwrap();
    // The API agrees with what was printed.
    let got: Value = api.get_json(&format!("/v1/batch-calls/{id}")).await;
    assert_eq!(got["data"]["total_recipients"], rows);

    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking({
            let (base, data, key) = (svc.base.clone(), svc.data.clone(), key.clone());
            move || {
                Service::outdial(&data)
                    .args(["batch", "watch", &id.to_string(), "--json"])
                    .args(["--interval-ms", "100"])
                    .env("OUTDIAL_URL", base)
                    .env("OUTDIAL_API_KEY", key)
                    .output()
                    .unwrap()
            }
        }),
    )
    .await
    .expect("watch ends when the batch does")
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let (last, progress) = lines.split_last().expect("some output");
    assert!(!progress.is_empty());
    let mut processed = 0;
    for p in progress {
        assert_eq!(p["event"], "progress");
        adds_up(&p["batch"]);
        let now = p["batch"]["total_processed"].as_i64().unwrap();
        assert!(now >= processed, "processed never goes back");
        processed = now;
    }
    assert_eq!(last["event"], "final");
    assert_eq!(last["batch"]["status"], "completed");
    adds_up(&last["batch"]);
    let m = &last["metrics"];
    assert_eq!(m["total_processed"], rows, "{m}");
    assert_eq!(m["busy_count"], rows, "{m}");
    assert_eq!(
        (
            m["in_progress_count"].as_i64(),
            m["pending_retry_count"].as_i64(),
            m["success_count"].as_i64(),
            m["success_rate"].as_f64()
        ),
        (Some(0), Some(0), Some(0), Some(0.0))
    );
    let invites = sipp.invites_per_number();
    assert_eq!(invites.len(), rows as usize);
    assert!(invites.values().all(|n| *n == 1), "{invites:?}");

    // Without --json: the final metrics as a table on stdout (the bar went to stderr).
    let out = cli(&svc, &key, &["watch", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.starts_with(&format!(
            "batch {id} \"March Follow Ups\": completed, {rows} recipients"
        )),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["busy_count", &rows.to_string()]),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_errors_are_shown_with_the_contracts_message_and_a_failing_exit() {
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant(dir.path());
    let svc = Service::start(dir.path());
    let api = Api::new(&svc.base, &key);
    // No call is ever placed: the trunk is never reached.
    let agent = api.setup_agent(9, serde_json::json!({})).await.to_string();

    // A bad number on row 3 of a small file.
    let mut csv = String::from("customer_phone\n");
    for i in 0..5 {
        csv.push_str(&if i == 2 {
            "12345".to_string()
        } else {
            number(i)
        });
        csv.push('\n');
    }
    std::fs::write(dir.path().join("bad.csv"), &csv).unwrap();
    // The same mistake early in a 12 MB file: the service answers before it has read the
    // rest, and the answer must still reach the operator.
    let mut big = String::from("customer_phone,notes\n");
    big.push_str(&format!("{},x\n12345,x\n", number(0)));
    let filler = "y".repeat(40);
    for i in 2..300_000 {
        big.push_str(&format!("{},{filler}\n", number(i)));
    }
    std::fs::write(dir.path().join("big-bad.csv"), &big).unwrap();
    std::fs::write(
        dir.path().join("list.txt"),
        "customer_phone\n+919800000001\n",
    )
    .unwrap();
    let path = |n: &str| dir.path().join(n).display().to_string();

    let cases = [
        (
            path("bad.csv"),
            key.as_str(),
            "invalid customer_phone on row 3",
        ),
        (
            path("big-bad.csv"),
            key.as_str(),
            "invalid customer_phone on row 2",
        ),
        (path("list.txt"), key.as_str(), "file must be a .csv file"),
        (
            path("bad.csv"),
            "od_nope_nope",
            "invalid or missing api key",
        ),
    ];
    for (file, key, message) in cases {
        let out = cli(
            &svc,
            key,
            &["create", "--agent", &agent, "--name", "x", &file],
        );
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{file}: {stderr}");
        assert!(
            stderr.contains(message),
            "{file}: want {message:?} in {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "nothing on stdout for scripts to mistake"
        );
    }
    let list: Value = api.get_json("/v1/batch-calls").await;
    assert_eq!(list["total"], 0, "a refused file creates nothing");

    let out = cli(&svc, &key, &["watch", "987654"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("batch not found"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(&svc, "", &["watch", "1"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("OUTDIAL_API_KEY"));
}

#[tokio::test(flavor = "multi_thread")]
async fn lowered_batch_limits_refuse_with_the_contracts_message_style() {
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant(dir.path());
    let svc = Service::start_with(
        dir.path(),
        &Db::sqlite(),
        &[
            ("OUTDIAL_BATCH_MAX_ROWS", "5"),
            ("OUTDIAL_BATCH_MAX_BYTES", "2000"),
        ],
    );
    let api = Api::new(&svc.base, &key);
    let agent = api.setup_agent(9, serde_json::json!({})).await.to_string();
    let create = |file: String| {
        cli(
            &svc,
            &key,
            &["create", "--agent", &agent, "--name", "x", &file],
        )
    };

    let five = write_csv(dir.path(), "five.csv", 5);
    let out = create(five);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let six = write_csv(dir.path(), "six.csv", 6);
    let out = create(six);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("file has more than 5 rows (400 invalid_request)"),
        "{}",
        text(&out.stderr)
    );
    let mut wide = String::from("customer_phone,notes\n");
    for i in 0..3 {
        wide.push_str(&format!("{},{}\n", number(i), "n".repeat(800)));
    }
    std::fs::write(dir.path().join("wide.csv"), wide).unwrap();
    let out = create(dir.path().join("wide.csv").display().to_string());
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("request body too large (413 invalid_request)"),
        "{}",
        text(&out.stderr)
    );
    let list: Value = api.get_json("/v1/batch-calls").await;
    assert_eq!(list["total"], 1, "only the file within the limits");
}
