//! The person called, through the real binary on both backends: the tenant's do-not-call list
//! (its API, `POST /v1/call` refusing listed numbers, waiting and batch calls cancelled and never
//! dialled, listings racing dials), opt-out in the conversation, the disclosure, and the
//! service's default calling window.

mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Api, Db, Receiver, Service, Sipp};

async fn expect(r: reqwest::Response, status: u16, message: &str) -> Value {
    assert_eq!(r.status().as_u16(), status);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["message"], message, "{body}");
    body
}

async fn ok(r: reqwest::Response) -> Value {
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

fn in_ms(ms: i64) -> String {
    domain::Millis(domain::Millis::now().0 + ms).to_rfc3339_millis()
}

async fn wait_status(api: &Api, location: &str, want: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let c = api.get_json(location).await;
        if c["data"]["status"] == want {
            return c["data"].clone();
        }
        assert!(Instant::now() < deadline, "not {want}: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn the_list_is_managed_and_enforced_on_post_call(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant_in(dir.path(), &db);
    let other = Service::create_tenant_in(dir.path(), &db);
    let svc = Service::start_in(dir.path(), &db);
    let api = Api::new(&svc.base, &key);
    let agent = api.setup_agent(5060, json!({})).await;

    // Added in one spelling, found in another; adding again answers the first entry.
    let first = ok(api
        .post(
            "/v1/do-not-call",
            json!({"number": "+91 98765 43210", "reason": "asked by email"}),
        )
        .await)
    .await;
    assert_eq!(first["data"]["number"], "+919876543210");
    assert_eq!(first["data"]["reason"], "asked by email");
    assert_eq!(first["data"]["source"], "api");
    let again = ok(api
        .post("/v1/do-not-call", json!({"number": "+91-98765-43210"}))
        .await)
    .await;
    assert_eq!(again, first);
    assert_eq!(
        ok(api.get("/v1/do-not-call/%2B919876543210").await).await,
        first
    );

    // A call to it is refused and writes nothing.
    let body = json!({"agent_id": agent, "idempotency_key": "k1",
        "parameters": [{"name": "customer_phone", "value": "+919876543210"}]});
    expect(
        api.post("/v1/call", body).await,
        400,
        "number is on the do-not-call list",
    )
    .await;
    let conversations = api.get_json("/v1/conversations").await;
    assert_eq!(conversations["total"], 0, "{conversations}");

    // Import: all or nothing, with the batch file's errors.
    expect(
        api.upload(
            "/v1/do-not-call/import",
            &[],
            "dnc.csv",
            "number,reason\n+14155552671,crm\nnot-a-number,x\n",
        )
        .await,
        400,
        "invalid number on row 2",
    )
    .await;
    expect(
        api.upload(
            "/v1/do-not-call/import",
            &[],
            "dnc.csv",
            "phone\n+14155552671\n",
        )
        .await,
        400,
        "number column is required",
    )
    .await;
    expect(
        api.get("/v1/do-not-call/%2B14155552671").await,
        404,
        "number not found",
    )
    .await;
    let imported = ok(api
        .upload(
            "/v1/do-not-call/import",
            &[],
            "dnc.csv",
            "name,number,reason\nA,+1 (415) 555-2671,crm\nB,+919876543210,again\n",
        )
        .await)
    .await;
    assert_eq!(imported["data"], json!({"total": 2, "added": 1}));
    let listed = api.get_json("/v1/do-not-call?limit=1").await;
    assert_eq!(listed["total"], 2, "{listed}");
    assert_eq!(listed["has_more"], true, "{listed}");
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    let imported_entry = ok(api.get("/v1/do-not-call/+14155552671").await).await;
    assert_eq!(imported_entry["data"]["source"], "import");
    assert_eq!(imported_entry["data"]["reason"], "crm");

    // Bad input.
    expect(
        api.post("/v1/do-not-call", json!({"number": "12"})).await,
        400,
        "invalid number",
    )
    .await;
    expect(
        api.post("/v1/do-not-call", json!({})).await,
        400,
        "number is required",
    )
    .await;
    expect(
        api.post(
            "/v1/do-not-call",
            json!({"number": "+919876543211", "source": "call"}),
        )
        .await,
        400,
        "invalid source",
    )
    .await;
    expect(api.get("/v1/do-not-call/abc").await, 400, "invalid number").await;

    // Another tenant sees nothing of it and may call the number.
    let theirs = Api::new(&svc.base, &other);
    assert_eq!(theirs.get_json("/v1/do-not-call").await["total"], 0);
    expect(
        theirs.get("/v1/do-not-call/%2B919876543210").await,
        404,
        "number not found",
    )
    .await;

    // Deleted: callable again.
    let deleted = ok(api.delete("/v1/do-not-call/%2B919876543210").await).await;
    assert_eq!(deleted["data"]["deleted"], true);
    expect(
        api.delete("/v1/do-not-call/%2B919876543210").await,
        404,
        "number not found",
    )
    .await;
    let r = api
        .post("/v1/call", support::scheduled_call(agent, "+919876543210"))
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_is_managed_and_enforced_on_post_call_on_sqlite() {
    the_list_is_managed_and_enforced_on_post_call(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_is_managed_and_enforced_on_post_call_on_postgres() {
    let (db, _pg) = Db::postgres();
    the_list_is_managed_and_enforced_on_post_call(db).await;
}

/// A call scheduled 3 s ahead whose number is listed 1 s later, and a batch uploaded after the
/// listing that holds the number: neither is ever dialled; each settles `canceled` /
/// `do-not-call` with exactly one `call.canceled`, and the batch counts it.
async fn listed_numbers_are_never_dialled(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant_in(dir.path(), &db);
    let svc = Service::start_in(dir.path(), &db);
    let sipp = Sipp::busy(dir.path());
    let api = Api::new(&svc.base, &key);
    let agent = api.setup_agent(sipp.port, json!({})).await;
    let receiver = Receiver::start().await;
    ok(api
        .post(
            &format!("/v1/agents/{agent}/webhook-targets"),
            json!({"name": "crm", "url": receiver.url}),
        )
        .await)
    .await;

    let listed = "+919876543210";
    let r = api
        .post(
            "/v1/call",
            json!({"agent_id": agent, "scheduled_for": in_ms(3000),
                "parameters": [{"name": "customer_phone", "value": listed}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    ok(api.post("/v1/do-not-call", json!({"number": listed})).await).await;

    // The batch: the listed number and one that is not; both due now.
    let batch = ok(api
        .upload(
            "/v1/batch-call",
            &[("agent_id", agent.to_string()), ("name", "March".into())],
            "march.csv",
            &format!("customer_phone\n{listed}\n+919876543299\n"),
        )
        .await)
    .await;
    let batch_id = batch["data"]["id"].as_i64().unwrap();

    let c = wait_status(&api, &location, "canceled", Duration::from_secs(10)).await;
    assert_eq!(c["failure_reason"], "do-not-call", "{c}");
    // Past the scheduled time and the batch's dials.
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let m = api
            .get_json(&format!("/v1/batch-calls/{batch_id}/metrics"))
            .await;
        if m["data"]["total_processed"] == 2 {
            break m["data"].clone();
        }
        assert!(Instant::now() < deadline, "batch not done: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metrics["canceled_count"], 1, "{metrics}");
    assert_eq!(metrics["busy_count"], 1, "{metrics}");

    let invites = sipp.invites_per_number();
    assert_eq!(invites.get(listed), None, "a listed number was dialled");
    assert_eq!(invites.get("+919876543299"), Some(&1), "{invites:?}");

    // Exactly one `call.canceled` per cancelled call, naming the reason.
    let events: Vec<Value> = receiver
        .wait_for(3, Duration::from_secs(10))
        .await
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    let canceled: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "call.canceled")
        .collect();
    assert_eq!(canceled.len(), 2, "{events:#?}");
    for e in &canceled {
        assert_eq!(e["data"]["call"]["to_phone"], listed);
        assert_eq!(e["data"]["call"]["failure_reason"], "do-not-call");
    }
    let ids: std::collections::HashSet<&Value> = canceled
        .iter()
        .map(|e| &e["data"]["call"]["conversation_id"])
        .collect();
    assert_eq!(ids.len(), 2, "one event per call: {events:#?}");
    assert_eq!(events.len(), 3, "and the busy call's: {events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_numbers_are_never_dialled_on_sqlite() {
    listed_numbers_are_never_dialled(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_numbers_are_never_dialled_on_postgres() {
    let (db, _pg) = Db::postgres();
    listed_numbers_are_never_dialled(db).await;
}

/// 20 calls come due while their 20 numbers are listed at the same moment: every number is
/// dialled at most once, and only if its dial started before its listing committed.
async fn listings_race_dials(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let key = Service::create_tenant_in(dir.path(), &db);
    let svc = Service::start_in(dir.path(), &db);
    let sipp = Sipp::busy(dir.path());
    let api = std::sync::Arc::new(Api::new(&svc.base, &key));
    let agent = api.setup_agent(sipp.port, json!({})).await;
    let numbers: Vec<String> = (0..20).map(|i| format!("+9198765432{i:02}")).collect();
    let due_in = 2000;
    let due = domain::Millis::now().0 + due_in;
    let mut locations = Vec::new();
    for n in &numbers {
        let r = api
            .post(
                "/v1/call",
                json!({"agent_id": agent,
                    "scheduled_for": domain::Millis(due).to_rfc3339_millis(),
                    "parameters": [{"name": "customer_phone", "value": n}]}),
            )
            .await;
        assert_eq!(r.status(), 200);
        locations.push(r.headers()["location"].to_str().unwrap().to_string());
    }
    // Listings spread over the moment the calls come due, so some land before their claim,
    // some during, some after the dial started.
    let wait = (due - domain::Millis::now().0 - 100).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let listings: Vec<_> = numbers
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let api = api.clone();
            let n = n.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i as u64 * 15)).await;
                ok(api.post("/v1/do-not-call", json!({"number": n})).await).await
            })
        })
        .collect();
    let mut listed_at = Vec::new();
    for l in listings {
        let entry = l.await.unwrap();
        let at =
            chrono::DateTime::parse_from_rfc3339(entry["data"]["created_at"].as_str().unwrap())
                .unwrap()
                .timestamp_millis();
        listed_at.push(at);
    }
    let mut dialled = 0;
    let mut canceled = 0;
    for (i, loc) in locations.iter().enumerate() {
        let c = api.wait_terminal(loc, Duration::from_secs(30)).await;
        match c["status"].as_str().unwrap() {
            "canceled" => {
                assert_eq!(c["failure_reason"], "do-not-call", "{c}");
                canceled += 1;
            }
            "busy" => {
                let started = c["start_timestamp"].as_i64().unwrap();
                assert!(
                    started <= listed_at[i],
                    "dialled at {started}, after its listing at {}: {c}",
                    listed_at[i]
                );
                dialled += 1;
            }
            other => panic!("{other}: {c}"),
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let invites = sipp.invites_per_number();
    for (i, n) in numbers.iter().enumerate() {
        let c = api.get_json(&locations[i]).await;
        let want = usize::from(c["data"]["status"] == "busy");
        assert_eq!(invites.get(n).copied().unwrap_or(0), want, "{n}: {c}");
    }
    eprintln!("listings racing dials: {dialled} dialled first, {canceled} canceled");
    assert_eq!(dialled + canceled, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_race_dials_on_sqlite() {
    listings_race_dials(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_race_dials_on_postgres() {
    let (db, _pg) = Db::postgres();
    listings_race_dials(db).await;
}

const DISCLOSURE: &str = "This call is recorded.";
const AGENT_DISCLOSURE: &str = "I am an automated assistant from Acme.";
const OPENING: &str = "Hello Rahul, this is Asha from Acme about your invoice.";
const CONFIRMATION: &str = "Understood, we will not call you again, goodbye.";

/// The callee's recording of `sentence` in `dir` (espeak-ng, not the voice the agent was
/// tuned on), as SIPp's `rtp_stream` plays it.
fn record(sentence: &str, dir: &Path) {
    let wav = dir.join("caller.wav");
    let st = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w"])
        .arg(&wav)
        .arg(sentence)
        .status()
        .expect("espeak-ng");
    assert!(st.success());
    let st = Command::new("sox")
        .arg(&wav)
        .args(["-r", "8000", "-c", "1", "-t", "ul"])
        .arg(dir.join("caller.ul"))
        .status()
        .expect("sox");
    assert!(st.success());
}

/// A callee who, after the disclosure, the opening and the question, says "please stop
/// calling me": the number is listed (`source: call`) as the call settles, the agent confirms
/// and hangs up, `opted_out` is set, and a call already waiting for the number is cancelled.
async fn the_callee_opts_out(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    record("Please stop calling me.", dir.path());
    let key = Service::create_tenant_in(dir.path(), &db);
    let svc = Service::start_with(
        dir.path(),
        &db,
        &[
            ("OUTDIAL_NO_RTP_TIMEOUT_SECONDS", "30"),
            ("OUTDIAL_DISCLOSURE", DISCLOSURE),
        ],
    );
    let scenario =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/scenarios/callee_speaks.xml");
    // The disclosure (~3.5 s), the opening (~3.5 s) and the question (~1.5 s) are over by then.
    let sipp = Sipp::run(&scenario, false, 1, 11_000, dir.path());
    let api = Api::new(&svc.base, &key);
    let agent = api
        .setup_agent(
            sipp.port,
            json!({
                "disclosure": AGENT_DISCLOSURE,
                // The free-text recogniser: pocketsphinx's word loop hears this espeak-ng voice
                // as "you the not a calling week" (the understanding issue's ground).
                "transcriber": {"engine": "whisper"},
                "retry_policy": {"on": ["busy", "no_answer", "failed"], "max_attempts": 3, "delay_seconds": 60},
                "stages": [{ "id": "ask", "say": "Can you pay it by Friday?",
                    "routes": [{ "when_any": ["yes"], "set": {"intent": "pay"}, "end": true }],
                    "otherwise": { "say": "Sorry, could you say that again?", "repeat": 1, "then_end": true } }],
                "turn_taking": { "end_of_turn_silence_ms": 500, "barge_in_min_speech_ms": 500 }
            }),
        )
        .await;
    // A later call to the same number, already scheduled: the opt-out cancels it.
    let r = api
        .post("/v1/call", support::scheduled_call(agent, "+919876543210"))
        .await;
    assert_eq!(r.status(), 200);
    let waiting = r.headers()["location"].to_str().unwrap().to_string();
    let location = api.call(agent, "+919876543210").await;
    let c = api.wait_terminal(&location, Duration::from_secs(60)).await;
    assert_eq!(c["status"], "completed", "{c}");
    let lines = support::transcript_lines(&c);
    assert_eq!(
        lines[0],
        ("agent".into(), format!("{DISCLOSURE} {AGENT_DISCLOSURE}")),
        "{lines:?}"
    );
    assert_eq!(lines[1], ("agent".into(), OPENING.into()), "{lines:?}");
    let asked = lines
        .iter()
        .position(|(role, words)| role == "human" && words.contains("stop calling"))
        .unwrap_or_else(|| panic!("the request was not heard: {lines:?}"));
    assert_eq!(
        lines[asked + 1..],
        [("agent".to_string(), CONFIRMATION.to_string())],
        "{lines:?}"
    );
    assert_eq!(c["results"]["opted_out"], true, "{c}");
    let entry = ok(api.get("/v1/do-not-call/%2B919876543210").await).await;
    assert_eq!(entry["data"]["source"], "call");
    let w = api.get_json(&waiting).await;
    assert_eq!(w["data"]["status"], "canceled", "{w}");
    assert_eq!(w["data"]["failure_reason"], "do-not-call", "{w}");
    // Completed, so no retry was scheduled either: the chain ends here.
    let all = api.get_json("/v1/conversations").await;
    assert_eq!(all["total"], 2, "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callee_opts_out_on_sqlite() {
    the_callee_opts_out(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callee_opts_out_on_postgres() {
    let (db, _pg) = Db::postgres();
    the_callee_opts_out(db).await;
}

/// Numbers of countries with one zone each, spread around the clock.
const NUMBERS: [&str; 5] = [
    "+919876543210", // India, +05:30
    "+447911123456", // United Kingdom, +00:00/+01:00
    "+819012345678", // Japan, +09:00
    "+971501234567", // United Arab Emirates, +04:00
    "+541143211234", // Argentina, -03:00 (several zone names, one offset)
];

/// A number whose local time is now outside 09:00-21:00 Monday-Saturday, with the next
/// opening; at any hour one of them is (their nights cover the clock).
fn number_at_night(zones: &domain::dispatch::CountryZones) -> (String, i64) {
    let window = domain::agent::CallingWindow::decent();
    let now = chrono::Utc::now();
    for n in NUMBERS {
        let e164 = domain::E164::parse(n).unwrap();
        let tz = zones.zones_for(&e164);
        if let Some(open) = domain::dispatch::next_opening(&window, tz, now) {
            if open > now + chrono::Duration::minutes(5) {
                return (n.to_string(), open.timestamp_millis());
            }
        }
    }
    panic!("every number is inside its window now: the test's number list needs another zone")
}

/// With the service's default window, a call due now to a callee at night waits for their
/// 09:00 and is not dialled; an agent with `"calling_window": "always"` calls at once.
async fn calls_wait_for_decent_hours(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let zones = domain::dispatch::CountryZones::parse(
        &std::fs::read_to_string("/usr/share/zoneinfo/zone.tab").expect("tz data"),
    );
    let (number, opens_at) = number_at_night(&zones);
    let key = Service::create_tenant_in(dir.path(), &db);
    // The service's own default, as an operator gets it: no window setting at all.
    let mut svc = Service::start_in(dir.path(), &db);
    svc.kill();
    svc.env
        .retain(|(k, _)| k != "OUTDIAL_DEFAULT_CALLING_WINDOW");
    svc.restart();
    let sipp = Sipp::busy(dir.path());
    let api = Api::new(&svc.base, &key);
    let agent = api.setup_agent(sipp.port, json!({})).await;
    let location = api.call(agent, &number).await;
    let id = location.rsplit('/').next().unwrap().to_string();
    // The dispatcher has looked at it and put it off.
    let deadline = Instant::now() + Duration::from_secs(10);
    let due: i64 = loop {
        let due = db.scalar(
            dir.path(),
            &format!("SELECT due_at FROM calls WHERE id = '{id}' AND lease_owner IS NULL AND due_at > created_at + 1000"),
        );
        if let Ok(d) = due.parse() {
            break d;
        }
        assert!(Instant::now() < deadline, "the call was not deferred");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(due, opens_at, "{number} waits for its 09:00");
    let c = api.get_json(&location).await;
    assert_eq!(c["data"]["status"], "queued", "{c}");
    assert!(sipp.invites_per_number().is_empty());

    // An agent that opts out of the window explicitly is dialled at once.
    let always = api
        .post(
            "/v1/agents",
            json!({"name": "night shift", "phone_number": "+918035739222",
                "calling_window": "always"}),
        )
        .await;
    let always = ok(always).await;
    assert_eq!(always["data"]["calling_window"], "always");
    let r = api
        .post(
            "/v1/call",
            json!({"agent_id": always["data"]["agent_id"],
            "parameters": [{"name": "customer_phone", "value": "+14155552671"}]}),
        )
        .await;
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let c = api.wait_terminal(&loc, Duration::from_secs(20)).await;
    assert_eq!(c["status"], "busy", "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_wait_for_decent_hours_on_sqlite() {
    calls_wait_for_decent_hours(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_wait_for_decent_hours_on_postgres() {
    let (db, _pg) = Db::postgres();
    calls_wait_for_decent_hours(db).await;
}
