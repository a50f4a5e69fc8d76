//! What every crate's tests share: which PostgreSQL server they use (`OUTDIAL_TEST_POSTGRES_URL`,
//! default the local one as `postgres`), whether it may be left out, throwaway databases on it
//! that are dropped however the test ends, and the seeding of a tenant that can dial.
//! Databases are made with the server's own `psql`, synchronously, so a plain test, an async
//! one and one driving the binary all get theirs the same way. [`kamailio`] is the SIP proxy the
//! SIP tests and benches put in front of their callees; [`sipp_listening`] tells whether a SIPp
//! they started holds its ports.

pub mod kamailio;

use domain::store::Store;
use domain::tenant::NewTrunk;
use domain::{AgentConfig, AgentId, Millis, TenantId, E164};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A tenant `tenant` with a trunk (`sip:127.0.0.1:5080`, at most `trunk_cap` calls), `number`
/// on it, and an agent calling from that number: `{"name": "a", "phone_number": number}` with
/// `agent`'s fields on top. Everything is created at `at`.
pub async fn dialling_agent(
    store: &dyn Store,
    tenant: &str,
    number: &str,
    trunk_cap: Option<u32>,
    agent: serde_json::Value,
    at: Millis,
) -> (TenantId, AgentId) {
    let trunk = NewTrunk {
        max_concurrent_calls: trunk_cap,
        ..NewTrunk::new("pbx", "sip:127.0.0.1:5080")
    };
    dialling_agent_on(store, tenant, number, &trunk, agent, at).await
}

/// [`dialling_agent`] on a trunk of the caller's making (its options: pace, caps, transport).
pub async fn dialling_agent_on(
    store: &dyn Store,
    tenant: &str,
    number: &str,
    trunk: &NewTrunk,
    agent: serde_json::Value,
    at: Millis,
) -> (TenantId, AgentId) {
    let t = store.create_tenant(tenant, at).await.expect("tenant");
    let trunk = store.create_trunk(t.id, trunk, at).await.expect("trunk");
    let number = E164::parse(number).expect("an E.164 number");
    store
        .create_phone_number(t.id, &number, trunk.id, at)
        .await
        .expect("number");
    let mut cfg = serde_json::json!({"name": "a", "phone_number": number.as_str()});
    if let (Some(cfg), Some(extra)) = (cfg.as_object_mut(), agent.as_object()) {
        cfg.extend(extra.clone());
    }
    let cfg = cfg.as_object().and_then(|c| AgentConfig::from_json(c).ok());
    let agent = store
        .create_agent(t.id, &cfg.expect("a valid agent"), at)
        .await
        .expect("agent");
    (t.id, agent.id)
}

/// Whether PostgreSQL is left out knowingly (`OUTDIAL_TEST_SKIP_POSTGRES=1`). Never in CI,
/// where every test runs on both backends: there the request fails the test instead.
pub fn skip_postgres() -> bool {
    let skip = std::env::var("OUTDIAL_TEST_SKIP_POSTGRES").is_ok_and(|v| v == "1");
    assert!(
        !(skip && std::env::var_os("CI").is_some()),
        "OUTDIAL_TEST_SKIP_POSTGRES=1 is refused in CI: every test runs on both backends"
    );
    skip
}

/// The server the tests make their databases on, as a URL naming its admin database.
pub fn postgres_admin_url() -> String {
    std::env::var("OUTDIAL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of its own for one test, dropped (with any connections still open) when this
/// is dropped, so a failing test leaves none behind either.
#[derive(Debug)]
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl PgDatabase {
    pub fn create() -> Self {
        let admin = postgres_admin_url();
        let name = format!("outdial_test_{}", uuid::Uuid::new_v4().simple());
        psql(&admin, &format!("CREATE DATABASE {name}"));
        let (base, _) = admin
            .rsplit_once('/')
            .expect("OUTDIAL_TEST_POSTGRES_URL names a database");
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // A failed drop must not turn a passing test into a panic inside a panic.
        let _ = Command::new("psql")
            .args([postgres_admin_url().as_str(), "-qc", &sql])
            .output();
    }
}

fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([url, "-qc", sql])
        .output()
        .expect("psql (postgresql-client) runs");
    assert!(
        out.status.success(),
        "PostgreSQL at {url} is needed for this test ({}); set OUTDIAL_TEST_SKIP_POSTGRES=1 to \
         skip it knowingly",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Waits until the SIPp in `child` listens on UDP `port` (a bind of ours then fails), at most
/// `within`, and checks it is still up 100 ms later, when it has bound its media ports too.
/// Ports are picked free, but a test running beside this one may take one first, and SIPp then
/// exits at once: `Err` says so (or that the port stayed free), and the caller starts another
/// SIPp on other ports.
pub fn sipp_listening(child: &mut Child, port: u16, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("SIPp exited, {status}"));
        }
        if Instant::now() >= deadline {
            return Err(format!("port {port} still free after {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    match child.try_wait() {
        Ok(Some(status)) => Err(format!("SIPp exited after binding port {port}, {status}")),
        _ => Ok(()),
    }
}
