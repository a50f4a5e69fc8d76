//! The request bodies the handlers accept, as JSON Schema, so that a client or a schema fuzzer
//! knows exactly what is refused: required fields, types, bounds, the values `null` may take,
//! no unknown keys, no control characters where the input policy refuses them.
//!
//! The handlers parse by hand (for the contract's exact errors), so these schemas are a second
//! statement of the same rules; `crates/api/tests/http/service.rs` and schemathesis in CI hold
//! the two together. What a schema cannot say (an agent's stages that name each other, a call's
//! `scheduled_for` relative to now, a CSV file's rows) is listed in `schemathesis.toml`.

use super::{E164_FORMAT, E164_PATTERN};
use crate::routes::calls::{
    MAX_IDEMPOTENCY_KEY, MAX_METADATA_BYTES, MAX_PARAMETERS, MAX_PARAMETER_NAME,
    MAX_PARAMETER_VALUE,
};
use domain::pacing::CallsPerSecond;
use serde_json::{json, Value};

/// Single-line text: no control characters (`domain::text::is_clean`).
const LINE: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";
/// Single-line text with at least one character that is not white space.
const NAME: &str = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$";
/// Multi-line text: tab, CR and LF allowed, other controls not.
const TEXT: &str = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$";
/// `sip:` or `sips:` host and optional port (`routes::trunks::valid_sip_uri`).
const SIP_URI: &str = r"^sips?:([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?$";
/// BCP 47 in the shape `domain::agent::is_language_tag` accepts.
const LANGUAGE: &str = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$";
/// A URL the node may deliver webhooks to: an `http(s)` URL whose host resolves to an address
/// the node's policy permits (public ones, or private ones with
/// `OUTDIAL_WEBHOOK_ALLOW_PRIVATE`). A schema cannot resolve names, so the format names it.
pub const WEBHOOK_URL_FORMAT: &str = "webhook-url";

fn string(max: usize, pattern: &str) -> Value {
    json!({"type": "string", "maxLength": max, "pattern": pattern})
}

fn or_null(mut schema: Value) -> Value {
    let ty = schema["type"].take();
    schema["type"] = json!([ty, "null"]);
    schema
}

fn integer(min: u64, max: u64) -> Value {
    json!({"type": "integer", "minimum": min, "maximum": max})
}

fn e164() -> Value {
    json!({"type": "string", "format": E164_FORMAT, "pattern": E164_PATTERN})
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": properties,
    })
}

/// The agent object (`domain::agent::AgentConfig::from_json`). Nested blocks are described in
/// docs/api.md and agents.md; here they are typed as objects or arrays, since their rules span
/// fields (routes name stages, results name fields) beyond what a schema states.
fn agent(required: &[&str]) -> Value {
    let text = or_null(string(4096, TEXT));
    let block = json!({"type": ["object", "null"]});
    let list = json!({"type": ["array", "null"]});
    object(
        required,
        json!({
            "name": string(100, NAME),
            "phone_number": or_null(e164()),
            "language": or_null(string(35, LANGUAGE)),
            "first_message": text,
            "retry_message": text,
            "disclosure": text,
            "max_duration_seconds": or_null(integer(10, 4 * 3600)),
            "ring_timeout_seconds": or_null(integer(5, 120)),
            "max_concurrent_calls": or_null(integer(1, 100_000)),
            "brain": block,
            "stages": list,
            "results": list,
            "retry_policy": block,
            "calling_window": {"type": ["object", "string", "null"]},
            "voice": block,
            "transcriber": block,
            "turn_taking": block,
            "voicemail": block,
            "transfer": block,
            "post_call_transcript": {"type": ["boolean", "null"]},
        }),
    )
}

fn call() -> Value {
    let parameter = object(
        &["name", "value"],
        json!({
            "name": {"type": "string", "minLength": 1, "maxLength": MAX_PARAMETER_NAME, "pattern": LINE},
            "value": string(MAX_PARAMETER_VALUE, TEXT),
        }),
    );
    object(
        &["agent_id", "parameters"],
        json!({
            "agent_id": integer(1, i64::MAX as u64),
            "parameters": {
                "type": "array",
                "maxItems": MAX_PARAMETERS,
                "items": parameter,
                "contains": {
                    "type": "object",
                    "properties": {"name": {"const": "customer_phone"}, "value": e164()},
                },
                "description": "`{name, value}` pairs with distinct names; one is `customer_phone`",
            },
            "conversation_id": or_null(json!({"type": "string", "pattern": super::CONVERSATION_ID})),
            "idempotency_key": or_null(json!({"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY, "pattern": LINE})),
            "metadata": or_null(string(MAX_METADATA_BYTES, TEXT)),
            "retry_context": {
                "type": ["object", "null"],
                "additionalProperties": false,
                "properties": {
                    "collected_data": {"type": ["object", "null"]},
                    "retry_initial_message": or_null(string(MAX_PARAMETER_VALUE, TEXT)),
                    "retry_language": or_null(string(35, LANGUAGE)),
                    "retry_stage_id": or_null(json!({"type": "string", "minLength": 1, "maxLength": MAX_PARAMETER_NAME, "pattern": LINE})),
                },
            },
            "scheduled_for": or_null(json!({"type": "string", "format": "date-time", "description": "in the future, at most 30 days ahead"})),
        }),
    )
}

/// A trunk (`routes::trunks::create_trunk`), with its cross-field rules: `password` and
/// `register: true` need a `username`; `tls` goes with a `sips:` uri and only there.
fn trunk() -> Value {
    let mut schema = object(
        &["name", "uri"],
        json!({
            "name": string(100, NAME),
            "uri": {"type": "string", "maxLength": 300, "pattern": SIP_URI},
            "username": or_null(string(200, NAME)),
            "password": or_null(string(200, NAME)),
            "max_concurrent_calls": or_null(integer(1, 100_000)),
            "max_calls_per_second": {
                "type": ["number", "null"],
                "minimum": CallsPerSecond::MIN,
                "maximum": CallsPerSecond::MAX,
                "description": "new INVITEs per second (fractional allowed); null = unpaced",
            },
            "transport": {
                "type": ["string", "null"],
                "enum": ["udp", "tcp", "tls", null],
                "description": "`udp` (default) or `tcp` with a `sip:` uri; `tls` (its default) with `sips:`",
            },
            "register": {"type": ["boolean", "null"], "description": "`true` needs a `username`"},
            "srtp": {
                "type": ["string", "null"],
                "enum": ["off", "required", null],
                "description": "`off` (default): RTP/AVP; `required`: RTP/SAVP with SDES keys (RFC 4568), only with `transport: tls` (a `sips:` uri)",
            },
        }),
    );
    let needs_username = |field: &str, value: Value| {
        json!({
            "if": {"required": [field], "properties": {field: value}},
            "then": {"required": ["username"], "properties": {"username": {"type": "string"}}},
        })
    };
    schema["allOf"] = json!([
        {
            "if": {"properties": {"uri": {"pattern": "^sips:"}}},
            "then": {"properties": {"transport": {"enum": ["tls", null]}}},
            "else": {"properties": {"transport": {"enum": ["udp", "tcp", null]}}},
        },
        needs_username("password", json!({"type": "string"})),
        needs_username("register", json!({"const": true})),
        // SDES keys are in the SDP: only a TLS trunk keeps them off the wire in the clear.
        {
            "if": {"required": ["srtp"], "properties": {"srtp": {"const": "required"}}},
            "then": {"properties": {"uri": {"pattern": "^sips:"}}},
        },
    ]);
    schema
}

fn webhook_target(required: &[&str], with_secret: bool) -> Value {
    let mut properties = json!({
        "name": string(128, NAME),
        "url": {"type": "string", "format": WEBHOOK_URL_FORMAT, "maxLength": 2048},
        "events": {
            "type": "array",
            "minItems": 1,
            "uniqueItems": true,
            "items": {"enum": [
                "call.completed", "call.failed", "call.busy", "call.no_answer",
                "call.socket_failure", "call.telephony_failed", "call.unreachable", "call.canceled",
            ]},
        },
        "include_transcript": {"type": "boolean"},
        "include_recording_url": {"type": "boolean"},
        "active": {"type": "boolean"},
    });
    if with_secret {
        properties["secret"] = secret();
    }
    // On create, `null` means "not given"; on update no field can be cleared.
    if required.is_empty() {
        return object(required, properties);
    }
    for (key, schema) in properties.as_object_mut().into_iter().flatten() {
        if !required.contains(&key.as_str()) {
            *schema = or_null(schema.take());
        }
    }
    object(required, properties)
}

/// `webhooks::WebhookSecret::parse`: 16-256 characters, no white space or control characters.
fn secret() -> Value {
    json!({"type": "string", "pattern": r"^[^\s\u0000-\u001F\u007F-\u009F]{16,256}$"})
}

fn multipart(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}

/// Every documented request body: (path, method, media type, schema).
pub fn all() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    const JSON: &str = "application/json";
    const FORM: &str = "multipart/form-data";
    let csv = json!({"type": "string", "format": "binary", "description": "a .csv file"});
    vec![
        ("/v1/call", "post", JSON, call()),
        ("/v1/agents", "post", JSON, agent(&["name"])),
        ("/v1/agents/{agent_id}", "patch", JSON, agent(&[])),
        ("/v1/trunks", "post", JSON, trunk()),
        (
            "/v1/phone-numbers",
            "post",
            JSON,
            object(
                &["number", "trunk_id"],
                json!({"number": e164(), "trunk_id": integer(1, i64::MAX as u64)}),
            ),
        ),
        (
            "/v1/do-not-call",
            "post",
            JSON,
            object(
                &["number"],
                json!({"number": e164(), "reason": or_null(string(500, LINE))}),
            ),
        ),
        (
            "/v1/agents/{agent_id}/webhook-targets",
            "post",
            JSON,
            webhook_target(&["name", "url"], true),
        ),
        (
            "/v1/agents/{agent_id}/webhook-targets/{webhook_target_id}",
            "patch",
            JSON,
            webhook_target(&[], false),
        ),
        (
            "/v1/agents/{agent_id}/webhook-targets/{webhook_target_id}/rotate-secret",
            "post",
            JSON,
            object(&[], json!({"secret": or_null(secret())})),
        ),
        (
            "/v1/batch-call",
            "post",
            FORM,
            multipart(
                &["agent_id", "name", "file"],
                json!({
                    "agent_id": integer(1, i64::MAX as u64),
                    "name": string(255, NAME),
                    "file": csv,
                    "scheduled_for": {"type": "string", "format": "date-time"},
                }),
            ),
        ),
        (
            "/v1/do-not-call/import",
            "post",
            FORM,
            multipart(&["file"], json!({"file": csv})),
        ),
        (
            "/v1/transcription/jobs",
            "post",
            FORM,
            multipart(
                &["audio"],
                json!({
                    "audio": {"type": "string", "format": "binary", "description": "WAV, FLAC, MP3 or OGG"},
                    "languages": {"type": "string", "pattern": r"^(unknown|(hi|bn|kn|ml|mr|pa|ta|te|en|gu|as|ur)-IN( *, *(hi|bn|kn|ml|mr|pa|ta|te|en|gu|as|ur)-IN)*)$"},
                    "diarize": {"type": "string", "enum": ["true", "false"]},
                    "format": {"type": "string", "enum": ["standard", "code_mixed"]},
                }),
            ),
        ),
    ]
}

/// Writes [`all`] into a serialised OpenAPI document.
pub fn apply(doc: &mut Value) {
    for (path, method, media, schema) in all() {
        let op = &mut doc["paths"][path][method];
        if op.is_object() {
            op["requestBody"]["required"] = Value::Bool(true);
            op["requestBody"]["content"] = json!({ media: {"schema": schema} });
        }
    }
}
