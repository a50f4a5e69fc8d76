//! The delivery client against real HTTP receivers on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use standardwebhooks::Webhook;
use webhooks::client::{ClientConfig, Delivery, DeliveryClient, Verdict};
use webhooks::guard::UrlPolicy;
use webhooks::{EventId, EventType, WebhookSecret};

const BODY: &[u8] =
    br#"{"event_id":"evt_1c58c5d8c55a","event_type":"call.completed","data":{"call":{}}}"#;

type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;
type Reply = fn() -> Response;

#[derive(Clone)]
struct Receiver {
    seen: Seen,
    reply: Reply,
    delay: Duration,
}

async fn record(State(rx): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    rx.seen.lock().unwrap().push((headers, body));
    tokio::time::sleep(rx.delay).await;
    (rx.reply)()
}

/// Serves `reply` to every request on an ephemeral loopback port.
async fn receiver_with(reply: Reply, delay: Duration) -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/", any(record))
        .route("/{*path}", any(record))
        .with_state(Receiver {
            seen: seen.clone(),
            reply,
            delay,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

async fn receiver(reply: Reply) -> (SocketAddr, Seen) {
    receiver_with(reply, Duration::ZERO).await
}

fn client(policy: UrlPolicy) -> DeliveryClient {
    DeliveryClient::new(ClientConfig {
        policy,
        ..ClientConfig::default()
    })
    .unwrap()
}

fn event_id() -> EventId {
    EventId::parse("evt_1c58c5d8c55a").unwrap()
}

fn delivery<'a>(url: &'a str, id: &'a EventId, secrets: &'a [&'a WebhookSecret]) -> Delivery<'a> {
    Delivery {
        url,
        event_id: id,
        event_type: EventType::CallCompleted,
        body: BODY,
        secrets,
    }
}

fn status(code: u16) -> Response {
    StatusCode::from_u16(code).unwrap().into_response()
}

#[tokio::test]
async fn statuses_map_to_verdicts() {
    let cases: [(Reply, u16, Verdict); 7] = [
        (|| status(200), 200, Verdict::Delivered),
        (|| status(204), 204, Verdict::Delivered),
        (|| status(400), 400, Verdict::Failed),
        (|| status(410), 410, Verdict::FailedAndDeactivate),
        (|| status(429), 429, Verdict::Retry),
        (|| status(500), 500, Verdict::Retry),
        (|| status(503), 503, Verdict::Retry),
    ];
    let secret = WebhookSecret::generate();
    let id = event_id();
    let client = client(UrlPolicy::ALLOW_PRIVATE);
    for (reply, code, verdict) in cases {
        let (addr, seen) = receiver(reply).await;
        let url = format!("http://{addr}/hooks/outdial");
        let outcome = client.deliver(&delivery(&url, &id, &[&secret])).await;
        assert_eq!(outcome.status, Some(code));
        assert_eq!(outcome.verdict, verdict, "{code}");
        assert_eq!(outcome.error, None);
        assert_eq!(seen.lock().unwrap().len(), 1, "{code}: exactly one request");
    }
}

#[tokio::test]
async fn receiver_gets_signed_headers_that_verify() {
    let old = WebhookSecret::generate();
    let new = WebhookSecret::parse("my-own-formantai-secret-42").unwrap();
    let id = event_id();
    let (addr, seen) = receiver(|| status(200)).await;
    let url = format!("http://{addr}/");
    let outcome = client(UrlPolicy::ALLOW_PRIVATE)
        .deliver(&delivery(&url, &id, &[&new, &old]))
        .await;
    assert_eq!(outcome.verdict, Verdict::Delivered);

    let (headers, body) = seen.lock().unwrap().pop().unwrap();
    assert_eq!(&body[..], BODY, "body arrives byte for byte");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(headers["x-formantai-event-id"], "evt_1c58c5d8c55a");
    assert_eq!(headers["x-formantai-event-type"], "call.completed");
    assert_eq!(headers["webhook-id"], "evt_1c58c5d8c55a");
    let ts = headers["x-formantai-timestamp"].to_str().unwrap();
    assert_eq!(headers["webhook-timestamp"], ts);
    let ts: i64 = ts.parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() <= 5);

    // Standard Webhooks: verified by the independent crate, for both secrets of the rotation.
    Webhook::new(old.expose())
        .unwrap()
        .verify(&body, &headers)
        .unwrap();
    Webhook::from_bytes(new.expose().as_bytes().to_vec())
        .unwrap()
        .verify(&body, &headers)
        .unwrap();

    // FormantAI: HMAC of the raw body received, keyed with the newest secret's UTF-8 bytes.
    let mut mac = Hmac::<Sha256>::new_from_slice(new.expose().as_bytes()).unwrap();
    mac.update(&body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(headers["x-formantai-signature"], expected.as_str());
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (target, target_seen) = receiver(|| status(200)).await;
    static LOCATION: Mutex<String> = Mutex::new(String::new());
    *LOCATION.lock().unwrap() = format!("http://{target}/stolen");
    let replies: [Reply; 2] = [
        || {
            let to = LOCATION.lock().unwrap().clone();
            (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
        },
        || {
            let to = LOCATION.lock().unwrap().clone();
            (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response()
        },
    ];
    let secret = WebhookSecret::generate();
    let id = event_id();
    let client = client(UrlPolicy::ALLOW_PRIVATE);
    for (reply, code) in replies.into_iter().zip([302, 307]) {
        let (addr, seen) = receiver(reply).await;
        let url = format!("http://{addr}/");
        let outcome = client.deliver(&delivery(&url, &id, &[&secret])).await;
        assert_eq!(outcome.status, Some(code));
        assert_eq!(outcome.verdict, Verdict::Failed);
        assert_eq!(outcome.error.as_deref(), Some("redirect not followed"));
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
    assert!(
        target_seen.lock().unwrap().is_empty(),
        "redirect target was hit"
    );
}

#[tokio::test]
async fn closed_port_is_retried_with_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let secret = WebhookSecret::generate();
    let id = event_id();
    let url = format!("http://{addr}/?token=s3cr3t");
    let outcome = client(UrlPolicy::ALLOW_PRIVATE)
        .deliver(&delivery(&url, &id, &[&secret]))
        .await;
    assert_eq!(outcome.status, None);
    assert_eq!(outcome.verdict, Verdict::Retry);
    let error = outcome.error.unwrap();
    assert!(error.to_lowercase().contains("connect"), "{error}");
    assert!(!error.contains("s3cr3t"), "error leaks the URL: {error}");
}

#[tokio::test]
async fn slow_receiver_times_out_and_is_retried() {
    let (addr, seen) = receiver_with(|| status(200), Duration::from_secs(3)).await;
    let client = DeliveryClient::new(ClientConfig {
        policy: UrlPolicy::ALLOW_PRIVATE,
        timeout: Duration::from_millis(300),
        ..ClientConfig::default()
    })
    .unwrap();
    let secret = WebhookSecret::generate();
    let id = event_id();
    let url = format!("http://{addr}/");
    let outcome = client.deliver(&delivery(&url, &id, &[&secret])).await;
    assert_eq!(outcome.status, None);
    assert_eq!(outcome.verdict, Verdict::Retry);
    assert!(outcome.error.is_some());
    assert!(
        outcome.duration < Duration::from_secs(2),
        "{:?}",
        outcome.duration
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the request did reach the receiver"
    );
}

#[tokio::test]
async fn response_body_is_capped() {
    let (addr, _seen) = receiver(|| (StatusCode::OK, "x".repeat(1 << 20)).into_response()).await;
    let client = DeliveryClient::new(ClientConfig {
        policy: UrlPolicy::ALLOW_PRIVATE,
        max_response_bytes: 1000,
        ..ClientConfig::default()
    })
    .unwrap();
    let secret = WebhookSecret::generate();
    let id = event_id();
    let url = format!("http://{addr}/");
    let outcome = client.deliver(&delivery(&url, &id, &[&secret])).await;
    assert_eq!(outcome.verdict, Verdict::Delivered);
    assert_eq!(outcome.response_body, "x".repeat(1000));

    let (addr, _seen) =
        receiver(|| (StatusCode::BAD_REQUEST, "missing field").into_response()).await;
    let url = format!("http://{addr}/");
    let outcome = client.deliver(&delivery(&url, &id, &[&secret])).await;
    assert_eq!(outcome.verdict, Verdict::Failed);
    assert_eq!(outcome.response_body, "missing field");
}

#[tokio::test]
async fn public_only_client_never_reaches_loopback() {
    let (addr, seen) = receiver(|| status(200)).await;
    let port = addr.port();
    let secret = WebhookSecret::generate();
    let id = event_id();
    let client = client(UrlPolicy::PUBLIC_ONLY);
    for url in [
        // IP literals: checked before sending.
        format!("http://127.0.0.1:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://2130706433:{port}/"),
        // A name: only the guarded resolver stands between it and 127.0.0.1.
        format!("http://localhost:{port}/"),
    ] {
        let outcome = client.deliver(&delivery(&url, &id, &[&secret])).await;
        assert_eq!(outcome.status, None, "{url}");
        assert_eq!(outcome.verdict, Verdict::Failed, "{url}");
        let error = outcome.error.unwrap();
        assert!(error.contains("url not allowed"), "{url}: {error}");
    }
    assert!(seen.lock().unwrap().is_empty(), "receiver was reached");
}

#[tokio::test]
async fn unsignable_or_invalid_deliveries_are_not_sent() {
    let (addr, seen) = receiver(|| status(200)).await;
    let id = event_id();
    let client = client(UrlPolicy::ALLOW_PRIVATE);

    let url = format!("http://{addr}/");
    let outcome = client.deliver(&delivery(&url, &id, &[])).await;
    assert_eq!(outcome.verdict, Verdict::Failed);
    assert_eq!(outcome.error.as_deref(), Some("no signing secret"));

    let secret = WebhookSecret::generate();
    for url in [
        format!("ftp://{addr}/"),
        format!("http://user:pass@{addr}/"),
    ] {
        let outcome = client.deliver(&delivery(&url, &id, &[&secret])).await;
        assert_eq!(outcome.verdict, Verdict::Failed, "{url}");
        assert_eq!(outcome.error.as_deref(), Some("invalid url"), "{url}");
    }
    assert!(seen.lock().unwrap().is_empty());
}
