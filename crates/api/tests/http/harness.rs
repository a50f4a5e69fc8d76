use domain::store::Store;
use domain::tenant::TenantLimits;
use domain::{Millis, TenantId};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use store::{SqlStore, StoreOptions};
use tempfile::TempDir;

pub struct TestApp {
    pub base: String,
    pub store: Arc<SqlStore>,
    pub client: Client,
    /// What the binary's engine checks would record; `/readyz` reads it.
    pub readiness: Arc<api::readiness::Readiness>,
    _dir: TempDir,
}

pub struct Tenant {
    pub id: TenantId,
    pub key: String,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(api::ApiConfig {
            api_rate_limit_per_minute: 0,
            // The tests' model servers are on loopback, which the operator allows here.
            llm_endpoints: webhooks::ModelEndpointPolicy::parse("127.0.0.0/8").unwrap(),
            ..Default::default()
        })
        .await
    }

    pub async fn spawn_with(config: api::ApiConfig) -> Self {
        Self::spawn_serving(config, api::router).await
    }

    /// A node whose service `serve` builds from the app state (the real one is `api::router`).
    pub async fn spawn_serving(
        mut config: api::ApiConfig,
        serve: impl FnOnce(api::AppState) -> axum::Router,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/outdial.db", dir.path().display());
        let store = Arc::new(
            SqlStore::connect(&url, StoreOptions::default())
                .await
                .unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        config.public_url = format!("http://{addr}");
        let readiness = Arc::new(api::readiness::Readiness::new());
        let app =
            serve(api::AppState::new(store.clone(), config).with_readiness(readiness.clone()));
        tokio::spawn(async move { axum::serve(listener, app).await });
        TestApp {
            base: format!("http://{addr}"),
            store,
            client: Client::new(),
            readiness,
            _dir: dir,
        }
    }

    pub async fn tenant(&self, name: &str) -> Tenant {
        let t = self.store.create_tenant(name, Millis::now()).await.unwrap();
        let key = api::auth::generate_key();
        self.store
            .create_api_key(t.id, "test", &key.lookup, &key.hash, Millis::now())
            .await
            .unwrap();
        Tenant {
            id: t.id,
            key: key.key,
        }
    }

    pub async fn set_limits(&self, tenant: &Tenant, limits: TenantLimits) {
        assert!(self
            .store
            .update_tenant_limits(tenant.id, &limits)
            .await
            .unwrap());
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(&self, t: &Tenant, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(&t.key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn patch(&self, t: &Tenant, path: &str, body: &Value) -> Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(&t.key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_raw(
        &self,
        t: &Tenant,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(&t.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// A request without a key (probes, metrics, the API description).
    pub async fn get_public(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get(&self, t: &Tenant, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap()
    }

    /// A trunk, a number and an agent using it; returns the agent id.
    pub async fn agent(&self, t: &Tenant, number: &str) -> i64 {
        let trunk = self
            .post(
                t,
                "/v1/trunks",
                &json!({"name": format!("trunk-{number}"), "uri": "sip:127.0.0.1:5080"}),
            )
            .await;
        assert_eq!(trunk.status(), StatusCode::OK);
        let trunk_id = body(trunk).await["data"]["trunk_id"].as_i64().unwrap();
        let n = self
            .post(
                t,
                "/v1/phone-numbers",
                &json!({"number": number, "trunk_id": trunk_id}),
            )
            .await;
        assert_eq!(n.status(), StatusCode::OK);
        let a = self
            .post(t, "/v1/agents", &json!({"name": "collections", "phone_number": number, "first_message": "Hello {{customer_name}}"}))
            .await;
        assert_eq!(a.status(), StatusCode::OK);
        body(a).await["data"]["agent_id"].as_i64().unwrap()
    }

    pub async fn calls(&self, t: &Tenant) -> u64 {
        self.store.count_calls(t.id).await.unwrap()
    }
}

pub fn call(agent: i64, phone: &str) -> Value {
    json!({"agent_id": agent, "parameters": [
        {"name": "customer_phone", "value": phone},
        {"name": "customer_name", "value": "Rahul"}
    ]})
}

/// Distinct valid Indian mobile numbers, so the per-number limit does not interfere.
pub fn phone(i: u32) -> String {
    format!("+9198{:08}", i)
}

pub async fn body(r: Response) -> Value {
    let text = r.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"))
}

/// Asserts the contract's error shape, status, type and exact message; returns the error object.
pub async fn expect_error(r: Response, status: u16, kind: &str, message: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "status for {message:?}");
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "content-type {ct:?} for {message:?}"
    );
    let b = body(r).await;
    assert_eq!(b["error"]["type"], kind, "type in {b}");
    assert_eq!(b["error"]["message"], message, "message in {b}");
    b["error"].clone()
}
