//! Signatures checked by the independent `standardwebhooks` verifier and an HMAC computed here.

use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderValue};
use sha2::Sha256;
use standardwebhooks::{Webhook, WebhookError};
use webhooks::sign::{FORMANTAI_SIGNATURE, WEBHOOK_SIGNATURE};
use webhooks::{signature_headers, EventId, EventType, WebhookSecret};

const BODY: &[u8] = br#"{"event_id":"evt_1c58c5d8c55a","event_type":"call.completed","data":{}}"#;

fn header_map(headers: Vec<(reqwest::header::HeaderName, String)>) -> HeaderMap {
    headers
        .into_iter()
        .map(|(name, value)| (name, HeaderValue::from_str(&value).unwrap()))
        .collect()
}

fn signed(secrets: &[&WebhookSecret], at: i64) -> HeaderMap {
    let id = EventId::parse("evt_1c58c5d8c55a").unwrap();
    header_map(signature_headers(&id, EventType::CallCompleted, at, BODY, secrets).unwrap())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[test]
fn generated_secret_verifies_with_standardwebhooks() {
    let secret = WebhookSecret::generate();
    let headers = signed(&[&secret], now());
    Webhook::new(secret.expose())
        .unwrap()
        .verify(BODY, &headers)
        .unwrap();
}

#[test]
fn both_secrets_of_a_rotation_verify() {
    let old = WebhookSecret::generate();
    let new = WebhookSecret::generate();
    let headers = signed(&[&new, &old], now());
    assert_eq!(
        headers[&WEBHOOK_SIGNATURE]
            .to_str()
            .unwrap()
            .split(' ')
            .count(),
        2
    );
    for secret in [&new, &old] {
        Webhook::new(secret.expose())
            .unwrap()
            .verify(BODY, &headers)
            .unwrap();
    }
    let stranger = WebhookSecret::generate();
    assert!(matches!(
        Webhook::new(stranger.expose())
            .unwrap()
            .verify(BODY, &headers),
        Err(WebhookError::InvalidSignature)
    ));
}

#[test]
fn tampered_body_or_stale_timestamp_fails_verification() {
    let secret = WebhookSecret::generate();
    let verifier = Webhook::new(secret.expose()).unwrap();
    let headers = signed(&[&secret], now());
    assert!(matches!(
        verifier.verify(br#"{"event_id":"evt_1c58c5d8c55a"}"#, &headers),
        Err(WebhookError::InvalidSignature)
    ));
    // Why each attempt is signed with its own time: verifiers reject anything over 5 minutes old.
    let stale = signed(&[&secret], now() - 3600);
    assert!(matches!(
        verifier.verify(BODY, &stale),
        Err(WebhookError::TimestampTooOldError)
    ));
}

/// `Webhook::new` always base64-decodes the secret (after stripping an optional `whsec_`), so
/// a receiver holding a plain secret must use `Webhook::from_bytes(secret.as_bytes())`, which
/// matches the contract's "else the secret's UTF-8 bytes".
#[test]
fn plain_secret_needs_from_bytes_in_standardwebhooks() {
    // Not valid base64: `Webhook::new` refuses it outright.
    let dashed = WebhookSecret::parse("my-own-formantai-secret-42").unwrap();
    assert!(matches!(
        Webhook::new(dashed.expose()),
        Err(WebhookError::InvalidSecret(_))
    ));
    // Valid base64 by accident: `Webhook::new` accepts it but derives another key.
    let lookalike = WebhookSecret::parse("abcdefghijklmnopqrstuvwx").unwrap();

    for secret in [&dashed, &lookalike] {
        let headers = signed(&[secret], now());
        Webhook::from_bytes(secret.expose().as_bytes().to_vec())
            .unwrap()
            .verify(BODY, &headers)
            .unwrap();
    }
    let headers = signed(&[&lookalike], now());
    assert!(matches!(
        Webhook::new(lookalike.expose())
            .unwrap()
            .verify(BODY, &headers),
        Err(WebhookError::InvalidSignature)
    ));
}

#[test]
fn formantai_signature_is_hmac_of_the_raw_body_with_the_newest_secret() {
    let old = WebhookSecret::generate();
    let new = WebhookSecret::parse("my-own-formantai-secret-42").unwrap();
    let headers = signed(&[&new, &old], now());
    let mut mac = Hmac::<Sha256>::new_from_slice(b"my-own-formantai-secret-42").unwrap();
    mac.update(BODY);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(headers[&FORMANTAI_SIGNATURE], expected.as_str());
}
