//! What the end-to-end tests of the real binary share: free loopback ports, `outdial serve` on
//! a fresh data dir (SQLite or a throw-away PostgreSQL database), a SIPp callee that counts
//! INVITE Call-IDs per number, and a small HTTP API client. Each test file uses a part of it.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Ports handed out in this test process: the kernel may offer a released port again at once,
/// and two tests running side by side would then both be given it.
fn fresh(port: u16) -> bool {
    fresh_range(port, 1)
}

fn fresh_range(start: u16, len: u16) -> bool {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    if (start..start + len).any(|p| given.contains(&p)) {
        return false;
    }
    given.extend(start..start + len);
    true
}

/// A port the kernel offers (`pick`), never one handed out before in this process.
fn fresh_port(pick: impl Fn() -> u16) -> u16 {
    loop {
        let port = pick();
        if fresh(port) {
            return port;
        }
    }
}

pub fn free_tcp_port() -> u16 {
    fresh_port(|| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
}

pub fn free_udp_port() -> u16 {
    fresh_port(|| {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
}

/// An even port with a few free neighbours, for RTP ranges of parallel tests.
pub fn free_rtp_base() -> u16 {
    loop {
        let p = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            & !1;
        if p < 60_000
            && (p..p + 40).all(|q| std::net::UdpSocket::bind(("127.0.0.1", q)).is_ok())
            && fresh_range(p, 40)
        {
            return p;
        }
    }
}

/// Where the transcription model is put together: once for the whole suite, not once per
/// service (the tests of transcription jobs and of post-call transcripts share it).
pub fn transcription_model_dir() -> String {
    format!("{}/whisper-base", env!("CARGO_TARGET_TMPDIR"))
}

pub struct Service {
    pub child: Child,
    pub base: String,
    pub data: PathBuf,
    pub env: Vec<(String, String)>,
}

/// The database of a test: SQLite in the data dir, or a throw-away PostgreSQL database.
#[derive(Clone)]
pub struct Db(pub Option<String>);

impl Db {
    pub fn sqlite() -> Self {
        Db(None)
    }

    /// A throw-away PostgreSQL database on the tests' server (`OUTDIAL_TEST_POSTGRES_URL`),
    /// dropped with the returned guard.
    pub fn postgres() -> (Self, testkit::PgDatabase) {
        let pg = testkit::PgDatabase::create();
        (Db(Some(pg.url.clone())), pg)
    }
}

impl Db {
    /// The first column of the first row of `sql`, as text, read with the database's own
    /// client (`sqlite3` on the data dir's file, `psql`), for what the API does not show.
    pub fn scalar(&self, data: &Path, sql: &str) -> String {
        let out = match &self.0 {
            None => Command::new("sqlite3")
                .arg(data.join("outdial.db"))
                .arg(sql)
                .output()
                .expect("sqlite3"),
            Some(url) => Command::new("psql")
                .args([url.as_str(), "-At", "-c", sql])
                .output()
                .expect("psql"),
        };
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

impl Service {
    pub fn outdial(data: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_outdial"));
        c.env("OUTDIAL_DATA_DIR", data).env("OUTDIAL_LOG", "warn");
        c
    }

    pub fn create_tenant(data: &Path) -> String {
        Self::create_tenant_in(data, &Db::sqlite())
    }

    pub fn create_tenant_in(data: &Path, db: &Db) -> String {
        let mut cmd = Self::outdial(data);
        if let Some(url) = &db.0 {
            cmd.env("OUTDIAL_DATABASE_URL", url);
        }
        let out = cmd.args(["tenants", "create", "acme"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["api_key"].as_str().unwrap().to_string()
    }

    pub fn start(data: &Path) -> Self {
        Self::start_in(data, &Db::sqlite())
    }

    pub fn start_in(data: &Path, db: &Db) -> Self {
        Self::start_with(data, db, &[])
    }

    pub fn start_with(data: &Path, db: &Db, extra: &[(&str, &str)]) -> Self {
        let http = free_tcp_port();
        let rtp = free_rtp_base();
        let mut env = vec![
            ("OUTDIAL_LISTEN".to_string(), format!("127.0.0.1:{http}")),
            (
                "OUTDIAL_SIP_LISTEN".to_string(),
                format!("127.0.0.1:{}", free_udp_port()),
            ),
            (
                "OUTDIAL_RTP_PORTS".to_string(),
                format!("{rtp}-{}", rtp + 39),
            ),
            (
                "OUTDIAL_DISPATCH_LEASE_SECONDS".to_string(),
                "3".to_string(),
            ),
            (
                "OUTDIAL_API_RATE_LIMIT_PER_MINUTE".to_string(),
                "0".to_string(),
            ),
            // Tests dial at whatever hour they run; the service's default window (09:00-21:00
            // callee time) is tested on its own.
            (
                "OUTDIAL_DEFAULT_CALLING_WINDOW".to_string(),
                "always".to_string(),
            ),
            // The test's webhook receiver is on loopback.
            (
                "OUTDIAL_WEBHOOK_ALLOW_PRIVATE".to_string(),
                "true".to_string(),
            ),
            // The suite's engines are the `python3` first on PATH: scripts/test puts the
            // project's venv (`outdial setup --all`) there.
            ("OUTDIAL_PYTHON".to_string(), "python3".to_string()),
            // Each worker loads the transcription model at start: only the tests of
            // transcription (which ask for one) pay for it.
            ("OUTDIAL_TRANSCRIPTION_WORKERS".to_string(), "0".to_string()),
        ];
        if let Some(url) = &db.0 {
            env.push(("OUTDIAL_DATABASE_URL".to_string(), url.clone()));
        }
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Self::spawn(data, env)
    }

    pub fn spawn(data: &Path, env: Vec<(String, String)>) -> Self {
        let child = Self::outdial(data)
            .arg("serve")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let http = env[0].1.clone();
        let s = Service {
            child,
            base: format!("http://{http}"),
            data: data.to_path_buf(),
            env,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&http).is_err() {
            assert!(Instant::now() < deadline, "service did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn restart(&mut self) {
        let env = self.env.clone();
        *self = Self::spawn(&self.data.clone(), env);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Sipp {
    pub child: Child,
    pub port: u16,
    pub trace: PathBuf,
}

impl Sipp {
    /// A callee that echoes our audio back (`-rtp_echo`), as a real line carries audio.
    pub fn callee(scenario: &str, calls: u32, talk_ms: u32, dir: &Path) -> Self {
        let scenario = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/scenarios")
            .join(scenario);
        Self::run(&scenario, true, calls, talk_ms, dir)
    }

    /// A callee answering every INVITE 486 Busy Here. It stays up however many INVITEs come:
    /// with a call count SIPp may exit early on a loaded machine (an INVITE retransmitted after
    /// its call ended counts as another call) and refuse the dial a test expects; tests count
    /// dials by Call-ID with [`Sipp::invites_per_number`] instead.
    pub fn busy(dir: &Path) -> Self {
        Self::callee("busy.xml", 10_000, 0, dir)
    }

    /// `scenario` (a path) run in `dir`, so files it plays are found there; with `echo` our
    /// audio comes back (`-rtp_echo`), without it the scenario's own audio is all we hear.
    pub fn run(scenario: &Path, echo: bool, calls: u32, talk_ms: u32, dir: &Path) -> Self {
        Self::run_with(scenario, echo, calls, talk_ms, dir, &[])
    }

    /// Like [`Sipp::run`], with more of SIPp's arguments (e.g. `-set name value`).
    pub fn run_with(
        scenario: &Path,
        echo: bool,
        calls: u32,
        talk_ms: u32,
        dir: &Path,
        extra: &[&str],
    ) -> Self {
        // Ports are picked free, but a test running beside this one may take the same ones
        // before SIPp binds them, and SIPp then exits: an INVITE to it is refused
        // (`telephony_failed`). So: wait until it listens, check it stayed up, else new ports.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_udp_port();
            let media = free_rtp_base();
            let trace = dir.join(format!("sipp-{port}.log"));
            let mut child = Command::new("sipp")
                .arg("-sf")
                .arg(scenario)
                .args([
                    "-i",
                    "127.0.0.1",
                    "-mi",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-mp",
                    &media.to_string(),
                ])
                .args(echo.then_some("-rtp_echo"))
                .args(["-m", &calls.to_string(), "-d", &talk_ms.to_string()])
                .args(extra)
                .args(["-nostdin", "-timeout", "90s", "-trace_msg", "-message_file"])
                .arg(&trace)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("sipp (Debian package sip-tester) must be installed");
            match testkit::sipp_listening(&mut child, port, Duration::from_secs(10)) {
                Ok(()) => return Sipp { child, port, trace },
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = why;
                }
            }
        }
        panic!("sipp did not start five times (ports taken?): {last}")
    }

    /// Distinct dial attempts (INVITE Call-IDs) per destination number, from SIPp's own log.
    pub fn invites_per_number(&self) -> std::collections::HashMap<String, usize> {
        let mut seen: std::collections::HashMap<String, std::collections::HashSet<String>> =
            Default::default();
        for (uri, call_id) in self.requests("INVITE") {
            let Some(number) = uri
                .strip_prefix("sip:+")
                .map(|n| n.split('@').next().unwrap_or(""))
            else {
                continue;
            };
            seen.entry(format!("+{number}"))
                .or_default()
                .insert(call_id);
        }
        seen.into_iter().map(|(k, v)| (k, v.len())).collect()
    }

    /// The distinct calls (Call-IDs) that received a `method` request, retransmissions counted
    /// once.
    pub fn calls_with(&self, method: &str) -> std::collections::HashSet<String> {
        self.requests(method)
            .into_iter()
            .map(|(_, id)| id)
            .collect()
    }

    /// Each dial attempt's first INVITE as it reached SIPp: the destination number and the
    /// arrival time (SIPp's clock, milliseconds since the epoch), in arrival order;
    /// retransmissions are left out.
    pub fn invite_arrivals(&self) -> Vec<(String, f64)> {
        let log = std::fs::read_to_string(&self.trace)
            .unwrap_or_else(|e| panic!("SIPp's trace {}: {e}", self.trace.display()));
        let mut seen = std::collections::HashSet::new();
        let mut arrivals = Vec::new();
        for msg in log
            .split("----------------------------------------------- ")
            .skip(1)
        {
            // `2026-12-05 07:20:10.156590\nUDP message received [514] bytes :\n\nINVITE sip:...`
            let Some((stamp, rest)) = msg.split_once('\n') else {
                continue;
            };
            if !rest.starts_with("UDP message received") {
                continue;
            }
            let Some(request) = rest.find("INVITE sip:").map(|i| &rest[i..]) else {
                continue;
            };
            if !seen.insert(call_id(request)) {
                continue;
            }
            let number = request["INVITE sip:".len()..]
                .split('@')
                .next()
                .unwrap_or("")
                .to_string();
            let at = chrono::NaiveDateTime::parse_from_str(stamp.trim(), "%Y-%m-%d %H:%M:%S%.f")
                .unwrap_or_else(|e| panic!("SIPp's time stamp {stamp:?}: {e}"));
            // SIPp stamps its trace in the machine's local time.
            let at = at
                .and_local_timezone(chrono::Local)
                .earliest()
                .unwrap_or_else(|| panic!("SIPp's time stamp {stamp:?} is not a local time"));
            arrivals.push((number, at.timestamp_micros() as f64 / 1000.0));
        }
        arrivals
    }

    /// Every `method` request in SIPp's log: its request URI and Call-ID.
    fn requests(&self, method: &str) -> Vec<(String, String)> {
        // SIPp creates its trace at start: one that cannot be read is a broken test, not a
        // callee that was never dialled.
        let log = std::fs::read_to_string(&self.trace)
            .unwrap_or_else(|e| panic!("SIPp's trace {}: {e}", self.trace.display()));
        let line_start = format!("{method} sip:");
        log.split("----------------------------------------------- ")
            .filter_map(|msg| {
                let request = &msg[msg.find(&line_start)?..];
                let uri = request[method.len() + 1..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string();
                Some((uri, call_id(request)))
            })
            .collect()
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A conversation's transcript as (role, message) pairs.
pub fn transcript_lines(c: &Value) -> Vec<(String, String)> {
    c["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["role"].as_str().unwrap().to_string(),
                l["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A `POST /v1/call` body for `agent` scheduled a day ahead: accepted and stored, never dialled
/// while a test runs.
pub fn scheduled_call(agent: i64, phone: &str) -> Value {
    let tomorrow = domain::Millis(domain::Millis::now().0 + 86_400_000);
    json!({"agent_id": agent, "scheduled_for": tomorrow.to_rfc3339_millis(),
        "parameters": [{"name": "customer_phone", "value": phone}]})
}

pub struct Api {
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, key: &str) -> Self {
        Self {
            base: base.to_string(),
            key: key.to_string(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
    }

    /// A CSV file posted as the multipart field `file` (named `name`), with text `fields`.
    pub async fn upload(
        &self,
        path: &str,
        fields: &[(&str, String)],
        name: &str,
        csv: &str,
    ) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in fields {
            form = form.text(k.to_string(), v.clone());
        }
        let part = reqwest::multipart::Part::text(csv.to_string())
            .file_name(name.to_string())
            .mime_str("text/csv")
            .unwrap();
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .multipart(form.part("file", part))
            .send()
            .await
            .unwrap()
    }

    /// `get`'s body as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.unwrap()
    }

    pub async fn setup_agent(&self, sipp_port: u16, extra: Value) -> i64 {
        self.setup_agent_on(
            json!({"name": "sipp", "uri": format!("sip:127.0.0.1:{sipp_port}")}),
            extra,
        )
        .await
    }

    /// [`Api::setup_agent`] on a trunk described by `trunk` (credentials, caps).
    pub async fn setup_agent_on(&self, trunk: Value, extra: Value) -> i64 {
        let trunk: Value = self.post("/v1/trunks", trunk).await.json().await.unwrap();
        let r = self
            .post(
                "/v1/phone-numbers",
                json!({"number": "+918035739222", "trunk_id": trunk["data"]["trunk_id"]}),
            )
            .await;
        assert_eq!(r.status(), 200);
        let mut agent = json!({"name": "collections", "phone_number": "+918035739222",
            "first_message": "Hello {{customer_name}}, this is Asha from Acme about your invoice."});
        agent
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let a: Value = self.post("/v1/agents", agent).await.json().await.unwrap();
        a["data"]["agent_id"].as_i64().unwrap()
    }

    pub async fn call(&self, agent: i64, phone: &str) -> String {
        let r = self
            .post("/v1/call", json!({"agent_id": agent, "parameters": [
                {"name": "customer_phone", "value": phone}, {"name": "customer_name", "value": "Rahul"}]}))
            .await;
        assert_eq!(r.status(), 200);
        r.headers()["location"].to_str().unwrap().to_string()
    }

    pub async fn wait_terminal(&self, location: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let c: Value = self.get(location).await.json().await.unwrap();
            let status = c["data"]["status"].as_str().unwrap_or("").to_string();
            let terminal = !["scheduled", "queued", "initiated", "ringing", "in_progress"]
                .contains(&status.as_str());
            if terminal {
                return c["data"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "still {status} after {within:?}: {c}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

/// A webhook receiver on loopback; the test checks both signatures with independent code.
pub struct Receiver {
    pub url: String,
    pub got: Received,
    /// While false the receiver answers 500 (and still records what it got).
    pub healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    pub async fn start() -> Self {
        let got: Received = Default::default();
        let sink = got.clone();
        let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let up = healthy.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let sink = sink.clone();
                    let up = up.clone();
                    async move {
                        sink.lock().unwrap().push((headers, body.to_vec()));
                        if up.load(std::sync::atomic::Ordering::SeqCst) {
                            axum::http::StatusCode::NO_CONTENT
                        } else {
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR
                        }
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, got, healthy }
    }

    pub async fn wait_for(
        &self,
        n: usize,
        within: Duration,
    ) -> Vec<(axum::http::HeaderMap, Vec<u8>)> {
        let deadline = Instant::now() + within;
        while self.got.lock().unwrap().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.got.lock().unwrap().clone()
    }
}

/// What the spoken tests' agent says first (the default opening `Api::setup_agent` gives).
pub const OPENING: &str = "Hello Rahul, this is Asha from Acme about your invoice.";
pub const QUESTION: &str = "Can you pay it by Friday?";
pub const GOODBYE: &str = "Thank you, we will note that. Goodbye.";

/// The spoken tests' collections flow: it asks [`QUESTION`]; a yes sets `intent:
/// payment_promise` and ends with [`GOODBYE`], a no `refused`; anything else is asked again once.
pub fn payment_flow() -> Value {
    json!({
      "stages": [
        { "id": "stage_ask", "say": QUESTION,
          "routes": [
            { "when_any": ["yes", "yeah", "sure", "okay"], "set": { "intent": "payment_promise" },
              "say": GOODBYE, "end": true },
            { "when_any": ["no", "cannot", "can't"], "set": { "intent": "refused" }, "end": true }
          ],
          "otherwise": { "say": "Sorry, could you say that again?", "repeat": 1, "then_end": true } }
      ],
      "results": [ { "name": "intent" } ],
      "turn_taking": { "end_of_turn_silence_ms": 500, "barge_in_min_speech_ms": 500 }
    })
}

/// The agent crate's callee scenario: answer, wait `-d` ms, play `./caller.ul`, wait for our BYE.
pub fn callee_speaks_scenario() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/scenarios/callee_speaks.xml")
}

/// A SIP message's Call-ID as SIPp logs it (either spelling of the header name); empty if none.
fn call_id(message: &str) -> String {
    message
        .lines()
        .find_map(|l| {
            l.strip_prefix("Call-ID:")
                .or_else(|| l.strip_prefix("Call-Id:"))
        })
        .unwrap_or("")
        .trim()
        .to_string()
}
