//! Both signature schemes, applied to every delivery.
//!
//! Header names go out in lowercase (HTTP/1.1 names are case-insensitive and hyper writes
//! them as stored); receivers looking up `X-FormantAI-Signature` find them either way.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::header::HeaderName;
use sha2::Sha256;

use crate::event::{EventId, EventType};
use crate::secret::WebhookSecret;

/// `X-FormantAI-Event-Id`
pub const FORMANTAI_EVENT_ID: HeaderName = HeaderName::from_static("x-formantai-event-id");
/// `X-FormantAI-Event-Type`
pub const FORMANTAI_EVENT_TYPE: HeaderName = HeaderName::from_static("x-formantai-event-type");
/// `X-FormantAI-Timestamp` (Unix seconds)
pub const FORMANTAI_TIMESTAMP: HeaderName = HeaderName::from_static("x-formantai-timestamp");
/// `X-FormantAI-Signature`: `sha256=<hex>`
pub const FORMANTAI_SIGNATURE: HeaderName = HeaderName::from_static("x-formantai-signature");
/// `webhook-id` (Standard Webhooks)
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// `webhook-timestamp` (Standard Webhooks)
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// `webhook-signature` (Standard Webhooks): `v1,<base64>` per secret, space-separated
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// Why a delivery could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// Every delivery is signed, so an empty secret list is refused rather than sent bare.
    #[error("no signing secret")]
    NoSecret,
    /// The HMAC implementation refused a key.
    #[error("secret cannot be used as an HMAC-SHA256 key")]
    Key,
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Result<[u8; 32], SignError> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| SignError::Key)?;
    for part in parts {
        mac.update(part);
    }
    Ok(mac.finalize().into_bytes().into())
}

/// `sha256=<hex HMAC-SHA256 of body>`, keyed with the secret's UTF-8 bytes.
pub fn formantai_signature(secret: &WebhookSecret, body: &[u8]) -> Result<String, SignError> {
    let tag = hmac_sha256(secret.formantai_key(), &[body])?;
    Ok(format!("sha256={}", hex::encode(tag)))
}

/// `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">` with the Standard Webhooks key.
pub fn standard_signature(
    secret: &WebhookSecret,
    event_id: &EventId,
    timestamp_unix: i64,
    body: &[u8],
) -> Result<String, SignError> {
    let prefix = format!("{}.{timestamp_unix}.", event_id.as_str());
    let tag = hmac_sha256(secret.standard_key(), &[prefix.as_bytes(), body])?;
    Ok(format!("v1,{}", STANDARD.encode(tag)))
}

/// The six signature headers of one delivery attempt.
///
/// `secrets` is newest first: the FormantAI signature (one value by design) uses the newest
/// secret, `webhook-signature` carries one signature per secret so receivers still holding an
/// older secret keep verifying during a rotation. `timestamp_unix` is the attempt's time, not
/// the event's, because Standard Webhooks verifiers reject timestamps older than five minutes.
pub fn signature_headers(
    event_id: &EventId,
    event_type: EventType,
    timestamp_unix: i64,
    body: &[u8],
    secrets: &[&WebhookSecret],
) -> Result<Vec<(HeaderName, String)>, SignError> {
    let newest = secrets.first().ok_or(SignError::NoSecret)?;
    let standard = secrets
        .iter()
        .map(|secret| standard_signature(secret, event_id, timestamp_unix, body))
        .collect::<Result<Vec<_>, _>>()?
        .join(" ");
    let timestamp = timestamp_unix.to_string();
    Ok(vec![
        (FORMANTAI_EVENT_ID, event_id.as_str().to_owned()),
        (FORMANTAI_EVENT_TYPE, event_type.as_str().to_owned()),
        (FORMANTAI_TIMESTAMP, timestamp.clone()),
        (FORMANTAI_SIGNATURE, formantai_signature(newest, body)?),
        (WEBHOOK_ID, event_id.as_str().to_owned()),
        (WEBHOOK_TIMESTAMP, timestamp),
        (WEBHOOK_SIGNATURE, standard),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values were produced independently with Python 3.11's `hmac` and `hashlib`:
    //   hmac.new(secret.encode(), BODY, hashlib.sha256).hexdigest()
    //   base64.b64encode(hmac.new(key, b"evt_1c58c5d8c55a.1773867221." + BODY,
    //                             hashlib.sha256).digest())
    // with key = base64.b64decode(secret[6:]) for whsec_ secrets, else secret.encode().
    const BODY: &[u8] = br#"{"event_id":"evt_1c58c5d8c55a","event_type":"webhook.test","timestamp":"2026-03-18T20:53:41.766Z"}"#;
    const TS: i64 = 1_773_867_221;
    const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const PLAIN: &str = "my-own-formantai-secret-42";

    fn id() -> EventId {
        EventId::parse("evt_1c58c5d8c55a").unwrap()
    }

    #[test]
    fn formantai_signature_matches_python_vectors() {
        let whsec = WebhookSecret::parse(WHSEC).unwrap();
        let plain = WebhookSecret::parse(PLAIN).unwrap();
        assert_eq!(
            formantai_signature(&whsec, BODY).unwrap(),
            "sha256=586b45ad6a1927354515d0f0b4679906d371ed3d013bd99b5764d856a4a40f27"
        );
        assert_eq!(
            formantai_signature(&plain, BODY).unwrap(),
            "sha256=ef849aa47c4a105695e9d7459c2965ee6e6ef9f1153412a710b367dc317a4c42"
        );
    }

    #[test]
    fn standard_signature_matches_python_vectors() {
        let whsec = WebhookSecret::parse(WHSEC).unwrap();
        let plain = WebhookSecret::parse(PLAIN).unwrap();
        assert_eq!(
            standard_signature(&whsec, &id(), TS, BODY).unwrap(),
            "v1,orWVjG/ZSqe29Zm2XgdesrWvgk6M77Pezp5vZE0Q0qU="
        );
        assert_eq!(
            standard_signature(&plain, &id(), TS, BODY).unwrap(),
            "v1,Qrhc/5tHHrBlnJcqoeupADprGHF7fgaL9c4hSBklf1s="
        );
    }

    #[test]
    fn headers_carry_both_schemes() {
        let whsec = WebhookSecret::parse(WHSEC).unwrap();
        let headers =
            signature_headers(&id(), EventType::WebhookTest, TS, BODY, &[&whsec]).unwrap();
        let rendered: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        assert_eq!(
            rendered,
            vec![
                ("x-formantai-event-id", "evt_1c58c5d8c55a"),
                ("x-formantai-event-type", "webhook.test"),
                ("x-formantai-timestamp", "1773867221"),
                (
                    "x-formantai-signature",
                    "sha256=586b45ad6a1927354515d0f0b4679906d371ed3d013bd99b5764d856a4a40f27"
                ),
                ("webhook-id", "evt_1c58c5d8c55a"),
                ("webhook-timestamp", "1773867221"),
                (
                    "webhook-signature",
                    "v1,orWVjG/ZSqe29Zm2XgdesrWvgk6M77Pezp5vZE0Q0qU="
                ),
            ]
        );
    }

    #[test]
    fn rotation_uses_newest_for_formantai_and_both_for_standard() {
        let newest = WebhookSecret::parse(PLAIN).unwrap();
        let older = WebhookSecret::parse(WHSEC).unwrap();
        let headers = signature_headers(
            &id(),
            EventType::CallCompleted,
            TS,
            BODY,
            &[&newest, &older],
        )
        .unwrap();
        let value = |name: &HeaderName| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(
            value(&FORMANTAI_SIGNATURE),
            "sha256=ef849aa47c4a105695e9d7459c2965ee6e6ef9f1153412a710b367dc317a4c42"
        );
        assert_eq!(
            value(&WEBHOOK_SIGNATURE),
            "v1,Qrhc/5tHHrBlnJcqoeupADprGHF7fgaL9c4hSBklf1s= \
             v1,orWVjG/ZSqe29Zm2XgdesrWvgk6M77Pezp5vZE0Q0qU="
        );
        assert_eq!(value(&FORMANTAI_EVENT_TYPE), "call.completed");
    }

    #[test]
    fn unsigned_delivery_is_refused() {
        assert_eq!(
            signature_headers(&id(), EventType::WebhookTest, TS, BODY, &[]),
            Err(SignError::NoSecret)
        );
    }

    #[test]
    fn signature_covers_id_timestamp_and_body() {
        let secret = WebhookSecret::parse(WHSEC).unwrap();
        let base = standard_signature(&secret, &id(), TS, BODY).unwrap();
        let other_id = EventId::parse("evt_000000000000").unwrap();
        assert_ne!(
            standard_signature(&secret, &other_id, TS, BODY).unwrap(),
            base
        );
        assert_ne!(
            standard_signature(&secret, &id(), TS + 1, BODY).unwrap(),
            base
        );
        assert_ne!(standard_signature(&secret, &id(), TS, b"{}").unwrap(), base);
        assert_ne!(
            formantai_signature(&secret, b"{}").unwrap(),
            formantai_signature(&secret, BODY).unwrap()
        );
    }
}
