//! The webhook body: FormantAI's envelope, field for field, plus outdial's additions.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use url::Url;

const EVENT_ID_PREFIX: &str = "evt_";
const EVENT_ID_SUFFIX_LEN: usize = 12;
const EVENT_ID_ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// `evt_` followed by 12 lowercase ASCII letters or digits; stable across retries of an event.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventId(String);

/// A string that is not a well-formed event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event id must be evt_ followed by 12 lowercase letters or digits")]
pub struct EventIdError;

impl EventId {
    /// A new random id from the thread RNG.
    pub fn generate() -> Self {
        Self::generate_with(&mut rand::thread_rng())
    }

    /// A new random id from `rng`.
    pub fn generate_with<R: Rng + ?Sized>(rng: &mut R) -> Self {
        // Drawn uniformly from [0-9a-z] (~62 bits) rather than hex (48 bits), which the
        // contract also permits, to keep collisions negligible across all targets.
        let suffix: String = (0..EVENT_ID_SUFFIX_LEN)
            .map(|_| char::from(EVENT_ID_ALPHABET[rng.gen_range(0..EVENT_ID_ALPHABET.len())]))
            .collect();
        Self(format!("{EVENT_ID_PREFIX}{suffix}"))
    }

    /// Validates an id read back from storage.
    pub fn parse(s: &str) -> Result<Self, EventIdError> {
        let suffix = s.strip_prefix(EVENT_ID_PREFIX).ok_or(EventIdError)?;
        let well_formed = suffix.len() == EVENT_ID_SUFFIX_LEN
            && suffix
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
        if well_formed {
            Ok(Self(s.to_owned()))
        } else {
            Err(EventIdError)
        }
    }

    /// The id as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for EventId {
    type Err = EventIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for EventId {
    type Error = EventIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<EventId> for String {
    fn from(id: EventId) -> Self {
        id.0
    }
}

/// The kinds of event a target can receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// `call.completed`
    #[serde(rename = "call.completed")]
    CallCompleted,
    /// `call.failed`
    #[serde(rename = "call.failed")]
    CallFailed,
    /// `call.busy`
    #[serde(rename = "call.busy")]
    CallBusy,
    /// `call.no_answer`
    #[serde(rename = "call.no_answer")]
    CallNoAnswer,
    /// `call.socket_failure`
    #[serde(rename = "call.socket_failure")]
    CallSocketFailure,
    /// `call.telephony_failed`
    #[serde(rename = "call.telephony_failed")]
    CallTelephonyFailed,
    /// `call.unreachable`
    #[serde(rename = "call.unreachable")]
    CallUnreachable,
    /// `call.canceled` (outdial's own)
    #[serde(rename = "call.canceled")]
    CallCanceled,
    /// `webhook.test` (outdial's own)
    #[serde(rename = "webhook.test")]
    WebhookTest,
}

/// A string that names no known event type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type")]
pub struct UnknownEventType;

impl EventType {
    /// Every event type, in the contract's order.
    pub const ALL: [EventType; 9] = [
        EventType::CallCompleted,
        EventType::CallFailed,
        EventType::CallBusy,
        EventType::CallNoAnswer,
        EventType::CallSocketFailure,
        EventType::CallTelephonyFailed,
        EventType::CallUnreachable,
        EventType::CallCanceled,
        EventType::WebhookTest,
    ];

    /// The wire name, e.g. `call.completed`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::CallCompleted => "call.completed",
            EventType::CallFailed => "call.failed",
            EventType::CallBusy => "call.busy",
            EventType::CallNoAnswer => "call.no_answer",
            EventType::CallSocketFailure => "call.socket_failure",
            EventType::CallTelephonyFailed => "call.telephony_failed",
            EventType::CallUnreachable => "call.unreachable",
            EventType::CallCanceled => "call.canceled",
            EventType::WebhookTest => "webhook.test",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or(UnknownEventType)
    }
}

/// The whole webhook body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Stable across retries.
    pub event_id: EventId,
    /// What happened.
    pub event_type: EventType,
    /// When the event was created (not when an attempt was made).
    #[serde(serialize_with = "iso_millis")]
    pub timestamp: DateTime<Utc>,
    /// Event payload.
    pub data: EventData,
}

/// `data` of the envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    /// The call the event is about.
    pub call: CallData,
    /// What the agent extracted, e.g. `{"intent": "payment_confirmed"}`.
    pub results: Map<String, Value>,
    /// Where the call stands in its own redial sequence (not webhook delivery retries).
    pub retry: CallRetry,
    /// What a redial of the call would start from.
    pub retry_context: RetryContext,
    /// `BOT: ` / `HUMAN: ` lines; `null` unless the target asked for transcripts.
    pub transcript: Option<String>,
}

/// `data.call` of the envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallData {
    /// The agent that ran the call.
    pub agent_id: i64,
    /// The call's parameters without `customer_phone`.
    pub call_parameters: CallParameters,
    /// The conversation's id.
    pub conversation_id: String,
    /// Talk time; `null` for a call that never connected (as in FormantAI's `call.no_answer`).
    pub duration_seconds: Option<u64>,
    /// When the call connected; `null` if it never did.
    #[serde(serialize_with = "iso_millis_opt")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the call ended; `null` if it never started.
    #[serde(serialize_with = "iso_millis_opt")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Why the call failed; `null` for a completed call.
    pub failure_reason: Option<String>,
    /// Caller id used.
    pub from_phone: String,
    /// The customer's number (the `customer_phone` parameter).
    pub to_phone: String,
    /// `null` unless the target asked for it and the call has a recording.
    pub recording_url: Option<String>,
    /// The call's final status, e.g. `completed`.
    pub status: String,
    /// Correlates the call across services.
    pub trace_id: String,
    /// The request's `metadata` string, unchanged (outdial's own); `null` when there was none.
    pub metadata: Option<String>,
    /// The batch the call belonged to (outdial's own); `null` for a single call.
    pub batch_id: Option<i64>,
    /// Who picked up (outdial's own): `human`, `machine` or `unknown`; `null` when the call was
    /// never answered.
    pub answered_by: Option<crate::call::AnsweredBy>,
}

/// `data.retry`: the call's own redial state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRetry {
    /// 1 for the first dial.
    pub attempt_number: u32,
    /// Whether no redial will follow.
    pub is_final_attempt: bool,
    /// Dials allowed in total.
    pub max_attempts: u32,
    /// When the next redial is planned; `null` when none is.
    #[serde(serialize_with = "iso_millis_opt")]
    pub next_retry_at: Option<DateTime<Utc>>,
}

/// `data.retry_context`; absent values are sent as `null` so the object keeps its shape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RetryContext {
    /// Data collected so far.
    pub collected_data: Map<String, Value>,
    /// Opening line of a redial.
    pub retry_initial_message: Option<String>,
    /// Language of a redial, e.g. `hi-IN`.
    pub retry_language: Option<String>,
    /// Stage a redial resumes at.
    pub retry_stage_id: Option<String>,
}

/// A call's parameters as a flat JSON object without `customer_phone`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallParameters(Map<String, Value>);

impl CallParameters {
    /// Drops `customer_phone` (it is `to_phone`) and flattens nested values.
    ///
    /// A nested object or array is sent as its compact JSON text so the object stays flat
    /// without losing what the caller supplied.
    pub fn new(parameters: Map<String, Value>) -> Self {
        let flat = parameters
            .into_iter()
            .filter(|(key, _)| key != "customer_phone")
            .map(|(key, value)| match value {
                Value::Object(_) | Value::Array(_) => {
                    let text = value.to_string();
                    (key, Value::String(text))
                }
                scalar => (key, scalar),
            })
            .collect();
        Self(flat)
    }

    /// The flattened parameters.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

/// What a target has opted into beyond the base envelope.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadOptions {
    /// Send `data.transcript`.
    pub include_transcript: bool,
    /// Send `data.call.recording_url`.
    pub include_recording_url: bool,
}

impl Envelope {
    /// The envelope as one target receives it: opt-in fields it did not ask for become `null`.
    pub fn for_target(mut self, options: PayloadOptions) -> Self {
        if !options.include_transcript {
            self.data.transcript = None;
        }
        if !options.include_recording_url {
            self.data.call.recording_url = None;
        }
        self
    }

    /// The exact bytes to sign and send.
    pub fn to_body(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// Speaker of a transcript line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The agent: `BOT: `.
    Bot,
    /// The callee: `HUMAN: `.
    Human,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Bot => "BOT",
            Role::Human => "HUMAN",
        }
    }
}

/// Joins turns into `BOT: ...\nHUMAN: ...` lines.
///
/// Line breaks inside a message become spaces so every turn stays on one line, which is what
/// receivers splitting on `\n` expect; turns that are empty after trimming are left out.
pub fn transcript<I, M>(turns: I) -> String
where
    I: IntoIterator<Item = (Role, M)>,
    M: AsRef<str>,
{
    turns
        .into_iter()
        .filter_map(|(role, message)| {
            let one_line = message
                .as_ref()
                .split(['\r', '\n'])
                .map(str::trim)
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            (!one_line.is_empty()).then(|| format!("{}: {one_line}", role.label()))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `<base>/v1/conversations/<id>/recording`, with `id` escaped as one path segment.
pub fn recording_url(base: &Url, conversation_id: &str) -> Result<Url, url::ParseError> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| url::ParseError::RelativeUrlWithCannotBeABaseBase)?
        .pop_if_empty()
        .extend(["v1", "conversations", conversation_id, "recording"]);
    Ok(url)
}

fn iso_millis<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn iso_millis_opt<S: Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => iso_millis(at, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use serde_json::json;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn contract_example() -> Envelope {
        let mut params = Map::new();
        params.insert("customer_name".into(), json!("Rahul"));
        params.insert("customer_phone".into(), json!("+917014675791"));
        let mut results = Map::new();
        results.insert("intent".into(), json!("payment_confirmed"));
        Envelope {
            event_id: EventId::parse("evt_1c58c5d8c55a").unwrap(),
            event_type: EventType::CallCompleted,
            timestamp: at("2026-03-18T20:53:41.766Z"),
            data: EventData {
                call: CallData {
                    agent_id: 497,
                    call_parameters: CallParameters::new(params),
                    conversation_id: "e36853de-9cbb-441e-ad75-d3c8ac82abfb_1".into(),
                    duration_seconds: Some(142),
                    started_at: Some(at("2026-03-18T20:53:41.766Z")),
                    ended_at: Some(at("2026-03-18T20:55:41.766Z")),
                    failure_reason: None,
                    from_phone: "+918065177389".into(),
                    to_phone: "+917014675791".into(),
                    recording_url: Some("<base>/v1/conversations/<id>/recording".into()),
                    status: "completed".into(),
                    trace_id: "a1b2c3d4-e5f6-7890-abcd-ef1234567890".into(),
                    metadata: None,
                    batch_id: None,
                    answered_by: Some(crate::call::AnsweredBy::Human),
                },
                results,
                retry: CallRetry {
                    attempt_number: 1,
                    is_final_attempt: true,
                    max_attempts: 3,
                    next_retry_at: None,
                },
                retry_context: RetryContext {
                    collected_data: Map::new(),
                    retry_initial_message: Some("...".into()),
                    retry_language: Some("hi-IN".into()),
                    retry_stage_id: Some("...".into()),
                },
                transcript: Some("BOT: Hello Rahul...\nHUMAN: Yes, I can talk.".into()),
            },
        }
    }

    // The contract's example, verbatim, plus outdial's own `metadata`, `batch_id` and
    // `answered_by`.
    const CONTRACT_BODY: &str = r#"{"event_id": "evt_1c58c5d8c55a", "event_type": "call.completed", "timestamp": "2026-03-18T20:53:41.766Z",
 "data": {
   "call": {"agent_id": 497, "call_parameters": {"customer_name": "Rahul"},
            "conversation_id": "e36853de-9cbb-441e-ad75-d3c8ac82abfb_1", "duration_seconds": 142,
            "started_at": "2026-03-18T20:53:41.766Z", "ended_at": "2026-03-18T20:55:41.766Z",
            "failure_reason": null, "from_phone": "+918065177389", "to_phone": "+917014675791",
            "recording_url": "<base>/v1/conversations/<id>/recording", "status": "completed",
            "trace_id": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
            "metadata": null, "batch_id": null, "answered_by": "human"},
   "results": {"intent": "payment_confirmed"},
   "retry": {"attempt_number": 1, "is_final_attempt": true, "max_attempts": 3, "next_retry_at": null},
   "retry_context": {"collected_data": {}, "retry_initial_message": "...", "retry_language": "hi-IN", "retry_stage_id": "..."},
   "transcript": "BOT: Hello Rahul...\nHUMAN: Yes, I can talk."}}"#;

    #[test]
    fn envelope_matches_the_contract_field_for_field() {
        let options = PayloadOptions {
            include_transcript: true,
            include_recording_url: true,
        };
        let body = contract_example().for_target(options).to_body().unwrap();
        let sent: Value = serde_json::from_slice(&body).unwrap();
        let expected: Value = serde_json::from_str(CONTRACT_BODY).unwrap();
        assert_eq!(sent, expected);
    }

    #[test]
    fn body_keeps_the_contract_key_order() {
        let body = String::from_utf8(contract_example().to_body().unwrap()).unwrap();
        let keys = [
            "\"event_id\"",
            "\"event_type\"",
            "\"timestamp\"",
            "\"data\"",
            "\"call\"",
            "\"agent_id\"",
            "\"call_parameters\"",
            "\"conversation_id\"",
            "\"duration_seconds\"",
            "\"started_at\"",
            "\"ended_at\"",
            "\"failure_reason\"",
            "\"from_phone\"",
            "\"to_phone\"",
            "\"recording_url\"",
            "\"status\"",
            "\"trace_id\"",
            "\"metadata\"",
            "\"batch_id\"",
            "\"results\"",
            "\"retry\"",
            "\"attempt_number\"",
            "\"is_final_attempt\"",
            "\"max_attempts\"",
            "\"next_retry_at\"",
            "\"retry_context\"",
            "\"collected_data\"",
            "\"retry_initial_message\"",
            "\"retry_language\"",
            "\"retry_stage_id\"",
            "\"transcript\"",
        ];
        let positions: Vec<usize> = keys.iter().map(|k| body.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{body}");
    }

    #[test]
    fn opt_in_fields_are_null_unless_the_target_asked() {
        let body = contract_example()
            .for_target(PayloadOptions::default())
            .to_body()
            .unwrap();
        let sent: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(sent["data"]["transcript"], Value::Null);
        assert_eq!(sent["data"]["call"]["recording_url"], Value::Null);
        // Present as null, not missing, so strict schema validators keep accepting the body.
        assert!(sent["data"].as_object().unwrap().contains_key("transcript"));

        let only_transcript = contract_example().for_target(PayloadOptions {
            include_transcript: true,
            include_recording_url: false,
        });
        assert!(only_transcript.data.transcript.is_some());
        assert!(only_transcript.data.call.recording_url.is_none());
    }

    #[test]
    fn times_always_have_three_fraction_digits_in_utc() {
        let mut envelope = contract_example();
        envelope.timestamp = at("2026-03-18T20:53:41Z");
        envelope.data.call.started_at = Some(at("2026-03-18T22:53:41.123456789+02:00"));
        envelope.data.call.ended_at = None;
        envelope.data.retry.next_retry_at = Some(at("2026-03-19T00:00:00.5Z"));
        let body = String::from_utf8(envelope.to_body().unwrap()).unwrap();
        assert!(
            body.contains(r#""timestamp":"2026-03-18T20:53:41.000Z""#),
            "{body}"
        );
        assert!(
            body.contains(r#""started_at":"2026-03-18T20:53:41.123Z""#),
            "{body}"
        );
        assert!(body.contains(r#""ended_at":null"#), "{body}");
        assert!(
            body.contains(r#""next_retry_at":"2026-03-19T00:00:00.500Z""#),
            "{body}"
        );
    }

    #[test]
    fn envelope_round_trips_through_json() {
        let envelope = contract_example();
        let back: Envelope = serde_json::from_slice(&envelope.to_body().unwrap()).unwrap();
        assert_eq!(back, envelope);
    }

    #[test]
    fn event_types_use_the_exact_wire_strings() {
        let wire = [
            "call.completed",
            "call.failed",
            "call.busy",
            "call.no_answer",
            "call.socket_failure",
            "call.telephony_failed",
            "call.unreachable",
            "call.canceled",
            "webhook.test",
        ];
        for (event_type, name) in EventType::ALL.into_iter().zip(wire) {
            assert_eq!(event_type.as_str(), name);
            assert_eq!(event_type.to_string(), name);
            assert_eq!(serde_json::to_value(event_type).unwrap(), json!(name));
            assert_eq!(name.parse::<EventType>(), Ok(event_type));
            assert_eq!(
                serde_json::from_value::<EventType>(json!(name)).unwrap(),
                event_type
            );
        }
        assert_eq!("call.cancelled".parse::<EventType>(), Err(UnknownEventType));
    }

    #[test]
    fn generated_event_ids_are_evt_and_12_lowercase_alphanumerics() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let id = EventId::generate_with(&mut rng);
            let s = id.as_str();
            assert_eq!(s.len(), 16);
            assert!(s.starts_with("evt_"));
            assert!(s[4..]
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
            assert_eq!(EventId::parse(s), Ok(id.clone()));
            seen.insert(id);
        }
        assert_eq!(seen.len(), 2000);
        // Both letters and digits must actually occur, or the alphabet is wrong.
        let all: String = seen.iter().map(|id| &id.as_str()[4..]).collect();
        assert!(all.bytes().any(|b| b.is_ascii_digit()));
        assert!(all.bytes().any(|b| b == b'z'));
        assert_ne!(EventId::generate(), EventId::generate());
    }

    #[test]
    fn malformed_event_ids_are_rejected() {
        for bad in [
            "",
            "evt_",
            "evt_1c58c5d8c55",
            "evt_1c58c5d8c55a0",
            "evt_1C58C5D8C55A",
            "EVT_1c58c5d8c55a",
            "msg_1c58c5d8c55a",
            "evt_1c58c5d8c5-a",
            "evt_1c58c5d8c5éa",
        ] {
            assert_eq!(EventId::parse(bad), Err(EventIdError), "{bad:?}");
        }
        assert!(serde_json::from_value::<EventId>(json!("evt_UPPERCASE123")).is_err());
    }

    #[test]
    fn call_parameters_drop_customer_phone_and_stay_flat() {
        let params = json!({
            "customer_phone": "+917014675791",
            "customer_name": "Rahul",
            "amount": 1200,
            "vip": true,
            "note": null,
            "address": {"city": "Jaipur"},
            "tags": ["a", "b"]
        });
        let Value::Object(map) = params else {
            unreachable!()
        };
        let flat = CallParameters::new(map);
        assert_eq!(
            serde_json::to_value(&flat).unwrap(),
            json!({
                "customer_name": "Rahul",
                "amount": 1200,
                "vip": true,
                "note": null,
                "address": "{\"city\":\"Jaipur\"}",
                "tags": "[\"a\",\"b\"]"
            })
        );
        assert!(!flat.as_map().contains_key("customer_phone"));
    }

    #[test]
    fn transcript_lines_are_prefixed_and_single_line() {
        let text = transcript([
            (Role::Bot, "Hello Rahul..."),
            (Role::Human, "Yes, I can talk."),
            (Role::Bot, "   "),
            (Role::Human, "first line\r\nsecond line\n"),
        ]);
        assert_eq!(
            text,
            "BOT: Hello Rahul...\nHUMAN: Yes, I can talk.\nHUMAN: first line second line"
        );
        assert_eq!(transcript(Vec::<(Role, String)>::new()), "");
    }

    #[test]
    fn recording_url_appends_escaped_segments_to_the_base() {
        let id = "e36853de-9cbb-441e-ad75-d3c8ac82abfb_1";
        for base in ["https://api.example.com", "https://api.example.com/"] {
            let url = recording_url(&Url::parse(base).unwrap(), id).unwrap();
            assert_eq!(
                url.as_str(),
                format!("https://api.example.com/v1/conversations/{id}/recording")
            );
        }
        let nested = Url::parse("https://example.com/outdial/?x=1#f").unwrap();
        assert_eq!(
            recording_url(&nested, "a/b c").unwrap().as_str(),
            "https://example.com/outdial/v1/conversations/a%2Fb%20c/recording"
        );
        let opaque = Url::parse("mailto:someone@example.com").unwrap();
        assert!(recording_url(&opaque, id).is_err());
    }
}
