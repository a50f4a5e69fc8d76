//! Fresh databases for tests: a SQLite file in a temp dir, or a uniquely named PostgreSQL
//! database that is dropped afterwards.

#![allow(dead_code)]

use domain::store::Store;
use std::sync::Arc;
use store::{SqlStore, StoreOptions};

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub use testkit::skip_postgres;

pub fn backends() -> Vec<Backend> {
    if skip_postgres() {
        vec![Backend::Sqlite]
    } else {
        vec![Backend::Sqlite, Backend::Postgres]
    }
}

pub struct TestDb {
    pub store: Arc<SqlStore>,
    pub url: String,
    cleanup: Cleanup,
}

/// Removed with the `TestDb`, however the test ends.
enum Cleanup {
    Dir(tempfile::TempDir),
    Database(testkit::PgDatabase),
}

impl Backend {
    pub async fn open(self) -> TestDb {
        self.open_with(StoreOptions::default()).await
    }

    pub async fn open_with(self, opts: StoreOptions) -> TestDb {
        match self {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/outdial.db", dir.path().display());
                let store = Arc::new(SqlStore::connect(&url, opts).await.unwrap());
                TestDb {
                    store,
                    url,
                    cleanup: Cleanup::Dir(dir),
                }
            }
            Backend::Postgres => {
                let pg = testkit::PgDatabase::create();
                let url = pg.url.clone();
                let store = Arc::new(SqlStore::connect(&url, opts).await.unwrap());
                TestDb {
                    store,
                    url,
                    cleanup: Cleanup::Database(pg),
                }
            }
        }
    }
}

impl TestDb {
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Closes the store first, so the database or directory goes with nothing using it.
    pub async fn finish(self) {
        self.store.close().await;
    }
}

/// A tenant with a trunk, one number on it and an agent calling from that number.
pub async fn tenant_with_agent(
    store: &dyn Store,
    name: &str,
    number: &str,
) -> (domain::TenantId, domain::AgentId) {
    let t0 = domain::Millis(1_775_000_000_000);
    testkit::dialling_agent(store, name, number, None, serde_json::json!({}), t0).await
}

/// A `POST /v1/call` for `phone` with only the required parameter.
pub fn new_call(
    tenant: domain::TenantId,
    agent: domain::AgentId,
    phone: &str,
    now: domain::Millis,
) -> domain::call::NewCall {
    domain::call::NewCall {
        tenant,
        agent,
        customer_phone: domain::E164::parse(phone).unwrap(),
        parameters: vec![domain::call::Parameter {
            name: "customer_phone".into(),
            value: phone.into(),
        }],
        continues: None,
        idempotency_key: None,
        metadata: None,
        retry_context: None,
        scheduled_for: None,
        trace_id: domain::TraceId::new(),
        now,
    }
}

/// The post-call transcript job a settlement of an `en-US` call carries (a fresh id each time).
pub fn post_call_job() -> domain::transcription::PostCallJob {
    domain::transcription::PostCallJob {
        id: domain::transcription::JobId::new(),
        engine: "whisper-base".into(),
        languages: domain::transcription::JobLanguages::for_call("en-US"),
        call_language: "en-US".into(),
        audio_bytes: 320_044,
    }
}
