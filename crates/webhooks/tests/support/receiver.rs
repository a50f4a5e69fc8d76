//! A webhook receiver on loopback that verifies every delivery independently of the sender: the
//! Standard Webhooks signature with the `standardwebhooks` crate, the FormantAI signature with its
//! own HMAC. Replies follow a script of statuses, then a default.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use standardwebhooks::Webhook;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct Received {
    pub webhook_id: String,
    pub event_type: String,
    pub body: Value,
    pub at: Instant,
    /// Standard Webhooks signatures in the header.
    pub signatures: usize,
    /// Both schemes verified with every secret the receiver expects.
    pub verified: bool,
    pub replied: u16,
}

struct Inner {
    /// Newest first; the FormantAI signature uses the first, every one must verify.
    secrets: Mutex<Vec<String>>,
    script: Mutex<VecDeque<u16>>,
    default: u16,
    delay: Duration,
    seen: Mutex<Vec<Received>>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

fn standard_verifies(secret: &str, body: &[u8], headers: &HeaderMap) -> bool {
    let hook = if secret.starts_with("whsec_") {
        Webhook::new(secret)
    } else {
        Webhook::from_bytes(secret.as_bytes().to_vec())
    };
    hook.is_ok_and(|h| h.verify(body, headers).is_ok())
}

fn formantai_verifies(secret: &str, body: &[u8], headers: &HeaderMap) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    headers
        .get("x-formantai-signature")
        .is_some_and(|v| v.as_bytes() == expected.as_bytes())
}

async fn handle(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let secrets = inner.secrets.lock().unwrap().clone();
    let verified = !secrets.is_empty()
        && formantai_verifies(&secrets[0], &body, &headers)
        && secrets
            .iter()
            .all(|s| standard_verifies(s, &body, &headers));
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let replied = inner
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(inner.default);
    let received = Received {
        webhook_id: header("webhook-id"),
        event_type: header("x-formantai-event-type"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        at: Instant::now(),
        signatures: header("webhook-signature").split(' ').count(),
        verified,
        replied,
    };
    inner.seen.lock().unwrap().push(received);
    tokio::time::sleep(inner.delay).await;
    StatusCode::from_u16(replied).unwrap()
}

impl Receiver {
    pub async fn start(script: &[u16], default: u16) -> Self {
        Self::start_with(
            "127.0.0.1:0".parse().unwrap(),
            script,
            default,
            Duration::ZERO,
        )
        .await
    }

    pub async fn start_with(
        addr: SocketAddr,
        script: &[u16],
        default: u16,
        delay: Duration,
    ) -> Self {
        let inner = Arc::new(Inner {
            secrets: Mutex::new(Vec::new()),
            script: Mutex::new(script.iter().copied().collect()),
            default,
            delay,
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/hook", post(handle))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, inner, task }
    }

    /// A free loopback port with nothing listening on it (yet).
    pub async fn vacant_addr() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Secrets deliveries must verify with, newest first.
    pub fn expect_secrets(&self, secrets: &[&str]) {
        *self.inner.secrets.lock().unwrap() = secrets.iter().map(|s| s.to_string()).collect();
    }

    pub fn seen(&self) -> Vec<Received> {
        self.inner.seen.lock().unwrap().clone()
    }

    /// Waits until `n` requests have arrived, or panics after `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "receiver saw {} of {n} requests",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
