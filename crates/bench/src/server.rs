//! The service under test, in-process: the real router and SQLite store on a temp dir, with a
//! tenant, a key, a trunk, a number and an agent created through the API.

use anyhow::{Context, Result};
use domain::store::Store;
use domain::tenant::TenantLimits;
use domain::{Millis, TenantId};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use store::{SqlStore, StoreOptions};

/// A tenant named `name` with no per-number limit (the benches call many numbers many times;
/// that limit is not what they measure) and a new API key for it, returned in the clear.
pub async fn tenant(store: &SqlStore, name: &str) -> Result<(domain::tenant::Tenant, String)> {
    let tenant = store.create_tenant(name, Millis::now()).await?;
    store
        .update_tenant_limits(
            tenant.id,
            &TenantLimits {
                max_concurrent_calls: None,
                per_number_calls: 1_000_000,
                per_number_window_seconds: 1,
            },
        )
        .await?;
    let key = api::auth::generate_key();
    store
        .create_api_key(tenant.id, name, &key.lookup, &key.hash, Millis::now())
        .await?;
    Ok((tenant, key.key))
}

/// A tenant (as [`tenant`]) with a trunk to loopback, a number on it and an agent on that
/// number, for the benches that write calls or events straight to the store.
pub async fn dialling_agent(store: &SqlStore) -> Result<(TenantId, domain::AgentId)> {
    let (tenant, _) = tenant(store, "bench").await?;
    let now = Millis::now();
    let trunk = store
        .create_trunk(
            tenant.id,
            &domain::tenant::NewTrunk::new("pbx", "sip:127.0.0.1:5080"),
            now,
        )
        .await?;
    let number = domain::E164::parse("+918035739222").context("number")?;
    store
        .create_phone_number(tenant.id, &number, trunk.id, now)
        .await?;
    let config = json!({"name": "bench", "phone_number": number.as_str()});
    let config = config.as_object().context("agent config")?;
    let agent = store
        .create_agent(
            tenant.id,
            &domain::AgentConfig::from_json(config).context("agent config")?,
            now,
        )
        .await?;
    Ok((tenant.id, agent.id))
}

pub struct Server {
    pub store: Arc<SqlStore>,
    pub tenant: TenantId,
    pub key: String,
    pub base: String,
    pub client: reqwest::Client,
    pub agent_id: i64,
}

impl Server {
    pub async fn start(dir: &Path, opts: StoreOptions, clients: usize) -> Result<Self> {
        let url = format!("sqlite://{}/outdial.db", dir.display());
        let store = Arc::new(SqlStore::connect(&url, opts).await?);
        let (tenant, key) = tenant(store.as_ref(), "bench").await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = api::router(api::AppState::new(
            store.clone(),
            api::ApiConfig {
                api_rate_limit_per_minute: 0,
                public_url: format!("http://{addr}"),
                ..Default::default()
            },
        ));
        // The listener the binary runs (connection caps, deadlines), so the bench measures it.
        tokio::spawn(api::server::serve(
            listener,
            app,
            api::server::HttpLimits::default(),
            std::future::pending(),
        ));
        let base = format!("http://{addr}");
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .build()?;
        let post = |path: &str, body: serde_json::Value| {
            client
                .post(format!("{base}{path}"))
                .bearer_auth(&key)
                .json(&body)
                .send()
        };
        let trunk: serde_json::Value = post(
            "/v1/trunks",
            json!({"name": "t", "uri": "sip:127.0.0.1:5080"}),
        )
        .await?
        .json()
        .await?;
        post(
            "/v1/phone-numbers",
            json!({"number": "+918035739222", "trunk_id": trunk["data"]["trunk_id"]}),
        )
        .await?;
        let agent: serde_json::Value = post(
            "/v1/agents",
            json!({"name": "a", "phone_number": "+918035739222"}),
        )
        .await?
        .json()
        .await?;
        let agent_id = agent["data"]["agent_id"].as_i64().context("agent")?;
        Ok(Self {
            store,
            tenant: tenant.id,
            key,
            base,
            client,
            agent_id,
        })
    }
}

impl Server {
    /// `POST /v1/batch-call` of `csv` for this server's agent, as a CRM export is uploaded.
    pub async fn upload_batch(&self, name: &str, csv: String) -> Result<reqwest::Response> {
        let form = reqwest::multipart::Form::new()
            .text("agent_id", self.agent_id.to_string())
            .text("name", name.to_string())
            .part(
                "file",
                reqwest::multipart::Part::bytes(csv.into_bytes()).file_name("recipients.csv"),
            );
        Ok(self
            .client
            .post(format!("{}/v1/batch-call", self.base))
            .bearer_auth(&self.key)
            .multipart(form)
            .send()
            .await?)
    }
}

/// A `/proc/self/status` memory figure (`VmRSS`, `VmHWM`, ...) in MB; 0 where unavailable.
pub fn proc_status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| {
                    l.strip_prefix(field)
                        .is_some_and(|rest| rest.starts_with(':'))
                })
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU seconds (user + system) this process's live threads have used, summed by thread name
/// (`/proc/self/task/*/stat`; Linux truncates names to 15 bytes). Empty where unavailable.
pub fn thread_cpu_seconds() -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (name) state ...`: the name may hold spaces, so split around the parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: state is field 3 of stat(5), utime 14 and stime 15.
        let ticks = |i: usize| {
            fields
                .get(i - 3)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        *by_name.entry(name).or_insert(0.0) += (ticks(14) + ticks(15)) / clock_ticks_per_second();
    }
    by_name
}

fn clock_ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux ABI this runs on; `getconf CLK_TCK` says so too.
    100.0
}
