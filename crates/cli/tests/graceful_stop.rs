//! A graceful stop of the real binary: SIGTERM after a burst of accepted calls exits promptly
//! and keeps every call; SIGTERM with live answered calls gives them the shutdown grace, then
//! hangs them up (BYE) and settles them `failed` / `interrupted`, never redialled; a second
//! signal exits at once. On SQLite and PostgreSQL.
//!
//! The timing bounds here are generous (a loaded 2-core machine runs the debug binary); the
//! measured SIGTERM-to-exit figures are in docs/benchmarks.md.

mod support;

use serde_json::json;
use std::process::{Child, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Api, Db, Receiver, Service, Sipp};

fn number(i: u32) -> String {
    format!("+9198{i:08}")
}

fn signal(child: &Child, sig: i32) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill only sends a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "signal {sig} to {pid}");
}

/// How long the child took to exit from now, and how it exited; panics after `within`.
fn wait_exit(child: &mut Child, within: Duration) -> (Duration, ExitStatus) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (start.elapsed(), status);
        }
        assert!(
            start.elapsed() < within,
            "outdial still running {within:?} after the signal"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `total` of the tenant's conversation list.
async fn conversations_total(api: &Api) -> i64 {
    let page = api.get_json("/v1/conversations?limit=1").await;
    page["total"]
        .as_i64()
        .unwrap_or_else(|| panic!("no total: {page}"))
}

/// Calls dialling or talking, read from the database itself (the API shows one conversation's
/// status at a time).
fn live_in_db(db: &Db, svc: &Service) -> i64 {
    db.scalar(
        &svc.data,
        "SELECT COUNT(*) FROM calls WHERE status IN ('initiated', 'ringing', 'in_progress')",
    )
    .parse()
    .unwrap()
}

const BURST: u32 = 20_000;

async fn sigterm_after_a_burst(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant_in(dir.path(), &db);
    let mut svc = Service::start_in(dir.path(), &db);
    // Every dial is answered 486 at once: the node dials at full rate while the burst comes in,
    // so at the signal it holds a backlog of due calls and a few dials in flight, as a busy
    // node does. The callee stays up for more INVITEs than the burst has.
    let sipp = Sipp::callee("busy.xml", 10 * BURST, 0, dir.path());
    let api = Arc::new(Api::new(&svc.base, &key));
    let agent = api
        .setup_agent(sipp.port, json!({"first_message": ""}))
        .await;

    let senders = 32;
    let mut tasks = Vec::new();
    for s in 0..senders {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut refused = Vec::new();
            for i in (s..BURST).step_by(senders as usize) {
                let r = api
                    .post(
                        "/v1/call",
                        json!({"agent_id": agent, "parameters": [
                            {"name": "customer_phone", "value": number(i)}]}),
                    )
                    .await;
                if r.status() != 200 {
                    refused.push((i, r.status().as_u16(), r.text().await.unwrap_or_default()));
                }
            }
            refused
        }));
    }
    let mut refused = Vec::new();
    for t in tasks {
        refused.extend(t.await.unwrap());
    }
    assert!(
        refused.is_empty(),
        "{} calls refused, e.g. {:?}",
        refused.len(),
        &refused[..refused.len().min(3)]
    );
    let waiting: i64 = db
        .scalar(
            &svc.data,
            "SELECT COUNT(*) FROM calls WHERE status IN ('scheduled', 'queued')",
        )
        .parse()
        .unwrap();

    signal(&svc.child, libc::SIGTERM);
    // Today's 40-58 s fails this; the target (under 2 s) is measured in docs/benchmarks.md.
    let (took, status) = wait_exit(&mut svc.child, Duration::from_secs(30));
    eprintln!("SIGTERM to exit after a {BURST}-call burst: {took:?} ({waiting} calls still waiting at the signal)");
    assert!(status.success(), "a graceful stop exits 0: {status}");
    assert!(
        took < Duration::from_secs(10),
        "SIGTERM to exit took {took:?} with {waiting} calls waiting"
    );
    assert_eq!(
        live_in_db(&db, &svc),
        0,
        "every dial in flight at the signal ended before the exit"
    );

    svc.restart();
    let api = Api::new(&svc.base, &key);
    assert_eq!(
        conversations_total(&api).await,
        i64::from(BURST),
        "every accepted call is still there"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_after_a_burst_exits_promptly_and_keeps_every_call() {
    sigterm_after_a_burst(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_after_a_burst_exits_promptly_and_keeps_every_call_on_postgres() {
    let (db, _pg) = Db::postgres();
    sigterm_after_a_burst(db).await;
}

/// `calls` answered calls held by the callee until we hang up, on a node started with `env`.
struct Held {
    _dir: tempfile::TempDir,
    svc: Service,
    sipp: Sipp,
    key: String,
    locations: Vec<String>,
    /// The agent's webhook target.
    receiver: Receiver,
}

async fn hold_calls(db: &Db, calls: u32, env: &[(&str, &str)]) -> Held {
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant_in(dir.path(), db);
    let svc = Service::start_with(dir.path(), db, env);
    let sipp = Sipp::callee("answer_hold.xml", calls, 0, dir.path());
    let api = Api::new(&svc.base, &key);
    // No opening line and an echoing callee: the line carries audio but nothing is said, so
    // the calls stay up, and the CPU stays with dialling and the stop.
    let agent = api
        .setup_agent(sipp.port, json!({"first_message": ""}))
        .await;
    let receiver = Receiver::start().await;
    let r = api
        .post(
            &format!("/v1/agents/{agent}/webhook-targets"),
            json!({"name": "crm", "url": receiver.url}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let mut locations = Vec::new();
    for i in 0..calls {
        locations.push(api.call(agent, &number(i)).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for location in &locations {
        loop {
            let c = api.get_json(location).await;
            match c["data"]["status"].as_str().unwrap_or("") {
                "in_progress" => break,
                "queued" | "initiated" | "ringing" => {}
                other => panic!("a held call ended before the stop ({other}): {c}"),
            }
            assert!(Instant::now() < deadline, "not answered in time: {c}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Held {
        _dir: dir,
        svc,
        sipp,
        key,
        locations,
        receiver,
    }
}

/// BYEs the callee received (SIPp logs every message it gets).
/// Calls SIPp got a BYE for; a BYE retransmitted on a loaded machine counts once.
fn byes_received(sipp: &Sipp) -> usize {
    sipp.calls_with("BYE").len()
}

/// Every held call, after a restart: `failed` / `interrupted`, dialled once.
async fn settled_interrupted(held: &mut Held) {
    held.svc.restart();
    let api = Api::new(&held.svc.base, &held.key);
    for location in &held.locations {
        let c = api.wait_terminal(location, Duration::from_secs(30)).await;
        assert_eq!(
            (c["status"].as_str(), c["failure_reason"].as_str()),
            (Some("failed"), Some("interrupted")),
            "{c}"
        );
    }
    assert_eq!(
        conversations_total(&api).await,
        held.locations.len() as i64,
        "no call was retried"
    );
    let invites = held.sipp.invites_per_number();
    assert_eq!(invites.len(), held.locations.len(), "{invites:?}");
    assert!(
        invites.values().all(|n| *n == 1),
        "a number was dialled twice: {invites:?}"
    );
}

/// 20 live calls, as the issue asks: each holds two RTP streams and an agent session, which a
/// 2-core machine carries.
const LIVE: u32 = 20;
const GRACE_SECONDS: u64 = 3;

async fn sigterm_with_live_calls(db: Db) {
    let grace = GRACE_SECONDS.to_string();
    let mut held = hold_calls(
        &db,
        LIVE,
        &[("OUTDIAL_SHUTDOWN_GRACE_SECONDS", grace.as_str())],
    )
    .await;
    signal(&held.svc.child, libc::SIGTERM);
    let (took, status) = wait_exit(&mut held.svc.child, Duration::from_secs(60));
    eprintln!("SIGTERM to exit with {LIVE} live calls and a {GRACE_SECONDS} s grace: {took:?}");
    assert!(status.success(), "a graceful stop exits 0: {status}");
    let grace = Duration::from_secs(GRACE_SECONDS);
    assert!(
        took >= grace,
        "the live calls got their grace: exited after {took:?}"
    );
    assert!(
        took < grace + Duration::from_secs(7),
        "exited {took:?} after SIGTERM with a {grace:?} grace"
    );
    assert_eq!(live_in_db(&db, &held.svc), 0, "{LIVE} calls left live");
    assert_eq!(
        byes_received(&held.sipp),
        LIVE as usize,
        "each held call was hung up with a BYE"
    );
    // Sent in the outbox's flush, before the exit: the receiver has them already.
    let failed: Vec<serde_json::Value> = held
        .receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| serde_json::from_slice::<serde_json::Value>(body).unwrap())
        .filter(|e| e["event_type"] == "call.failed")
        .collect();
    assert_eq!(failed.len(), LIVE as usize, "{failed:#?}");
    assert!(
        failed
            .iter()
            .all(|e| e["data"]["call"]["failure_reason"] == "interrupted"),
        "{failed:#?}"
    );
    settled_interrupted(&mut held).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_live_calls_hangs_them_up_after_the_grace_and_settles_them() {
    sigterm_with_live_calls(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_live_calls_hangs_them_up_after_the_grace_and_settles_them_on_postgres() {
    let (db, _pg) = Db::postgres();
    sigterm_with_live_calls(db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once() {
    let db = Db::sqlite();
    // The default 30 s grace: only the second signal can make the node exit soon.
    let mut held = hold_calls(&db, 2, &[]).await;
    signal(&held.svc.child, libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        held.svc.child.try_wait().unwrap().is_none(),
        "the first SIGTERM waits for the live calls"
    );
    signal(&held.svc.child, libc::SIGINT);
    let (took, status) = wait_exit(&mut held.svc.child, Duration::from_secs(20));
    eprintln!("second signal to exit: {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{status}");
    // Like a crash: the calls' leases run out and the restarted node settles them.
    settled_interrupted(&mut held).await;
}
