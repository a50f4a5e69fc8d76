//! The call: its identity along a retry chain, the request that creates it, and the one state
//! machine every component moves it through.

use crate::{AgentId, Millis, TenantId, TraceId, E164};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// `<chain uuid>_<attempt>`, attempt counting from 1 along a chain of retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConversationId {
    pub chain: Uuid,
    pub attempt: u32,
}

impl ConversationId {
    /// A new chain's first attempt, created at `now`. The chain is a UUID v7: its leading bits
    /// are `now`, so the ids of new calls sort after the ones before them and every index keyed
    /// by them (the primary key, the chain's, the events') grows at its end, not by a random page
    /// per call; the 74 bits after the time are random, so an id is no easier to guess.
    pub fn first(now: Millis) -> Self {
        let ms = u64::try_from(now.0).unwrap_or(0);
        let at =
            uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, (ms % 1000) as u32 * 1_000_000);
        Self {
            chain: Uuid::new_v7(at),
            attempt: 1,
        }
    }

    pub fn next_attempt(self) -> Self {
        Self {
            chain: self.chain,
            attempt: self.attempt + 1,
        }
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.chain.hyphenated(), self.attempt)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a conversation id")]
pub struct InvalidConversationId;

impl FromStr for ConversationId {
    type Err = InvalidConversationId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (chain, attempt) = s.rsplit_once('_').ok_or(InvalidConversationId)?;
        // Only the canonical spelling, so that one conversation has exactly one id string.
        if chain.len() != 36 || chain.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(InvalidConversationId);
        }
        let chain = Uuid::parse_str(chain).map_err(|_| InvalidConversationId)?;
        if attempt.is_empty()
            || attempt.starts_with('0')
            || !attempt.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(InvalidConversationId);
        }
        let attempt = attempt.parse().map_err(|_| InvalidConversationId)?;
        Ok(Self { chain, attempt })
    }
}

/// Every status a conversation can have. The wire spelling is the contract's; `initiated` is the
/// durable "dialling has begun" mark (the design's `dialing`), written before any INVITE leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Scheduled,
    Queued,
    Initiated,
    Ringing,
    InProgress,
    Completed,
    Failed,
    Busy,
    NoAnswer,
    Unreachable,
    TelephonyFailed,
    SocketFailure,
    Canceled,
}

impl CallStatus {
    pub const ALL: [CallStatus; 13] = [
        Self::Scheduled,
        Self::Queued,
        Self::Initiated,
        Self::Ringing,
        Self::InProgress,
        Self::Completed,
        Self::Failed,
        Self::Busy,
        Self::NoAnswer,
        Self::Unreachable,
        Self::TelephonyFailed,
        Self::SocketFailure,
        Self::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Initiated => "initiated",
            Self::Ringing => "ringing",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Busy => "busy",
            Self::NoAnswer => "no_answer",
            Self::Unreachable => "unreachable",
            Self::TelephonyFailed => "telephony_failed",
            Self::SocketFailure => "socket_failure",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed
                | Self::Failed
                | Self::Busy
                | Self::NoAnswer
                | Self::Unreachable
                | Self::TelephonyFailed
                | Self::SocketFailure
                | Self::Canceled
        )
    }

    /// Statuses that count against the tenant's concurrent call limit and can still be cancelled
    /// or dialled: everything not terminal.
    pub fn live() -> impl Iterator<Item = CallStatus> {
        Self::ALL.into_iter().filter(|s| !s.is_terminal())
    }

    /// The state machine, read off `lifecycle::Transition`'s table:
    ///
    /// ```text
    /// scheduled ─┬─ deferred ──▶ queued ─┐
    ///            └───────────────────────┴─ claimed ──▶ initiated ─180─▶ ringing ─200─▶ in_progress
    ///   (waiting) ──▶ canceled | failed (not diallable)     └────── any of the three ──────┘
    ///                                                                       ▼
    ///     completed | failed | busy | no_answer | unreachable | telephony_failed | socket_failure
    /// ```
    ///
    /// Cancelling is only possible before dialling begins: once `initiated` is durable a person
    /// may already be hearing the phone ring.
    pub fn can_become(self, next: CallStatus) -> bool {
        crate::lifecycle::Transition::all()
            .any(|t| t.from().contains(&self) && t.to() == Some(next))
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `{name, value}` call parameter. Order is kept as given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parameter {
    pub name: String,
    pub value: String,
}

/// What a caller may hand an attempt so it resumes an earlier one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collected_data: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_initial_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_stage_id: Option<String>,
}

/// How far ahead a call may be scheduled.
pub const MAX_SCHEDULE_AHEAD_SECONDS: i64 = 30 * 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid scheduled_for")]
pub struct InvalidSchedule;

/// Parses `scheduled_for`: RFC 3339 with an explicit zone, strictly after `now`, at most 30 days
/// ahead. A time without a zone is refused: guessing the zone is how a call lands at 3 a.m.
pub fn parse_scheduled_for(input: &str, now: Millis) -> Result<Millis, InvalidSchedule> {
    let t = DateTime::parse_from_rfc3339(input.trim()).map_err(|_| InvalidSchedule)?;
    let at = Millis::from_datetime(t.with_timezone(&Utc));
    if at <= now || at > now.plus_seconds(MAX_SCHEDULE_AHEAD_SECONDS) {
        return Err(InvalidSchedule);
    }
    Ok(at)
}

/// A validated `POST /v1/call`: every field already parsed; the store only has to check what
/// needs the database (agent, chain, idempotency, limits) and write.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub tenant: TenantId,
    pub agent: AgentId,
    pub customer_phone: E164,
    pub parameters: Vec<Parameter>,
    /// The existing conversation whose chain this call continues.
    pub continues: Option<ConversationId>,
    pub idempotency_key: Option<String>,
    pub metadata: Option<String>,
    pub retry_context: Option<RetryContext>,
    pub scheduled_for: Option<Millis>,
    pub trace_id: TraceId,
    pub now: Millis,
}

/// What the store answers for an accepted call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedCall {
    pub conversation_id: ConversationId,
    pub status: CallStatus,
    pub trace_id: TraceId,
}

/// Who spoke a transcript line, as the contract names them. Lines stored before the contract
/// was followed say `user` for the callee; they read as `human`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    Agent,
    #[serde(alias = "user")]
    Human,
}

impl Speaker {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Human => "human",
        }
    }
}

/// Who picked up an answered call (`answered_by`): the answering-machine detector's verdict.
/// `Unknown` when it could not tell (or was switched off); a call never answered has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnsweredBy {
    Human,
    Machine,
    Unknown,
}

impl AnsweredBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Human => "human",
            Self::Machine => "machine",
            Self::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "human" => Some(Self::Human),
            "machine" => Some(Self::Machine),
            "unknown" => Some(Self::Unknown),
            _ => None,
        }
    }
}

/// How a call was handed to a person: the far end took it over (SIP REFER), or outdial dialled
/// the target and joined the two legs itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferMethod {
    Refer,
    Bridge,
}

impl TransferMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refer => "refer",
            Self::Bridge => "bridge",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferStatus {
    Connected,
    Failed,
}

impl TransferStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Failed => "failed",
        }
    }
}

/// A call's transfer to a person (`transfer` on the conversation): the target's name and number,
/// how the hand-over was done and whether the person was reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub target: String,
    pub number: crate::E164,
    pub method: TransferMethod,
    pub status: TransferStatus,
    /// When the outcome was known.
    pub at: Millis,
}

/// A transcript line: only what was actually played or heard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptItem {
    pub role: Speaker,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<i64>,
}

/// How quickly the agent answered on one call (ours): each turn's voice-to-voice time (the
/// caller stopped speaking -> the first packet of the reply) and the time from the answer to
/// the agent's first word.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallLatency {
    #[serde(default)]
    pub turns_ms: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_to_first_word_ms: Option<u64>,
}

impl CallLatency {
    /// The `q`-quantile (0-1) of the turns, nearest rank; `None` without turns.
    pub fn turn_quantile_ms(&self, q: f64) -> Option<u64> {
        if self.turns_ms.is_empty() {
            return None;
        }
        let mut sorted = self.turns_ms.clone();
        sorted.sort_unstable();
        let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
        sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
    }
}

/// A conversation (one attempt) as the store returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub id: ConversationId,
    pub tenant: TenantId,
    pub agent: AgentId,
    pub status: CallStatus,
    pub contact_number: String,
    pub from_number: String,
    pub parameters: Vec<Parameter>,
    pub metadata: Option<String>,
    pub retry_context: Option<RetryContext>,
    pub scheduled_for: Option<Millis>,
    pub trace_id: TraceId,
    pub failure_reason: Option<String>,
    pub results: serde_json::Map<String, serde_json::Value>,
    pub transcript: Vec<TranscriptItem>,
    pub recording_path: Option<String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub ended_at: Option<Millis>,
    pub duration_seconds: Option<i64>,
    pub batch_id: Option<i64>,
    /// `None` for calls nobody talked on.
    pub latency: Option<CallLatency>,
    /// The stage the conversation was in when it ended; `None` when it never got to talk.
    pub stage_id: Option<String>,
    /// Who picked up; `None` for a call never answered.
    pub answered_by: Option<AnsweredBy>,
    /// The hand-over to a person; `None` when none was tried.
    pub transfer: Option<Transfer>,
}

impl Conversation {
    /// What a later call needs to continue this one (`spec/webhooks.md`, `retry_context`): the
    /// request's collected data merged with this attempt's results (later wins), the stage it
    /// ended in (else where it was to start), the language it spoke, and the agent's
    /// `retry_message` rendered with the parameters and the collected data (else the request's
    /// own opening). `agent` is `None` when the agent was deleted.
    pub fn next_retry_context(&self, agent: Option<&crate::AgentConfig>) -> RetryContext {
        let asked = self.retry_context.clone().unwrap_or_default();
        let mut collected = asked.collected_data.clone().unwrap_or_default();
        collected.extend(self.results.clone());
        let stage = self
            .stage_id
            .clone()
            .or(asked.retry_stage_id)
            .or_else(|| agent.and_then(|a| a.stages.first()).map(|s| s.id.clone()));
        let language = asked
            .retry_language
            .or_else(|| agent.map(|a| a.language.clone()));
        let rendered = agent
            .and_then(|a| a.retry_message.as_deref())
            .map(|t| crate::template::render_call(t, &self.parameters, Some(&collected)).0)
            .filter(|t| !t.trim().is_empty());
        RetryContext {
            collected_data: Some(collected),
            retry_initial_message: rendered.or(asked.retry_initial_message),
            retry_language: language,
            retry_stage_id: stage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The store's indexes keyed by the id grow at their end only if a later call's id sorts
    /// after an earlier one's, as text, which is how they are stored.
    #[test]
    fn a_later_calls_id_sorts_after_an_earlier_ones_and_carries_its_time() {
        let now = Millis(1_764_950_400_123);
        let mut ids: Vec<String> = (0..50)
            .map(|k| ConversationId::first(Millis(now.0 + k)).to_string())
            .collect();
        let created = ids.clone();
        ids.sort();
        assert_eq!(ids, created);
        let first: ConversationId = created[0].parse().unwrap();
        let (secs, nanos) = first.chain.get_timestamp().unwrap().to_unix();
        assert_eq!((secs * 1000 + u64::from(nanos) / 1_000_000) as i64, now.0);
        // Two calls in the same millisecond still get different ids.
        assert_ne!(ConversationId::first(now), ConversationId::first(now));
    }

    fn conversation(retry: Option<RetryContext>, stage: Option<&str>) -> Conversation {
        Conversation {
            id: ConversationId::first(Millis(1_700_000_000_000)),
            tenant: TenantId(1),
            agent: AgentId(1),
            status: CallStatus::Busy,
            contact_number: "+919876543210".into(),
            from_number: "+918035739222".into(),
            parameters: vec![Parameter {
                name: "customer_name".into(),
                value: "Rahul".into(),
            }],
            metadata: None,
            retry_context: retry,
            scheduled_for: None,
            trace_id: TraceId::new(),
            failure_reason: None,
            results: serde_json::json!({"intent": "refused", "amount": 500})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            transcript: Vec::new(),
            recording_path: None,
            created_at: Millis(0),
            started_at: None,
            ended_at: None,
            duration_seconds: None,
            batch_id: None,
            latency: None,
            stage_id: stage.map(str::to_string),
            answered_by: None,
            transfer: None,
        }
    }

    fn agent(v: serde_json::Value) -> crate::AgentConfig {
        crate::AgentConfig::from_json(v.as_object().unwrap()).unwrap()
    }

    #[test]
    fn the_next_retry_context_is_what_the_next_attempt_needs_not_an_echo() {
        let a = agent(serde_json::json!({"name": "a", "language": "hi-IN",
            "retry_message": "Hi {{customer_name}}, about the {{amount}} rupees.",
            "stages": [{"id": "ask", "say": "?", "routes": []}, {"id": "when", "say": "?", "routes": []}]}));
        let asked = RetryContext {
            collected_data: serde_json::json!({"intent": "unknown", "promised": true})
                .as_object()
                .cloned(),
            retry_initial_message: Some("Hello again.".into()),
            retry_language: None,
            retry_stage_id: Some("ask".into()),
        };
        let next = conversation(Some(asked.clone()), Some("when")).next_retry_context(Some(&a));
        assert_eq!(
            next.collected_data,
            serde_json::json!({"intent": "refused", "promised": true, "amount": 500})
                .as_object()
                .cloned()
        );
        assert_eq!(next.retry_stage_id.as_deref(), Some("when"));
        assert_eq!(next.retry_language.as_deref(), Some("hi-IN"));
        assert_eq!(
            next.retry_initial_message.as_deref(),
            Some("Hi Rahul, about the 500 rupees.")
        );
        // Never talked on: where it was to start; no retry_message: the request's own opening.
        let plain = agent(serde_json::json!({"name": "a",
            "stages": [{"id": "ask", "say": "?", "routes": []}]}));
        let next = conversation(Some(asked), None).next_retry_context(Some(&plain));
        assert_eq!(next.retry_stage_id.as_deref(), Some("ask"));
        assert_eq!(next.retry_initial_message.as_deref(), Some("Hello again."));
        assert_eq!(next.retry_language.as_deref(), Some("en-US"));
        let fresh = conversation(None, None).next_retry_context(Some(&plain));
        assert_eq!(fresh.retry_stage_id.as_deref(), Some("ask"));
        assert_eq!(fresh.retry_initial_message, None);
        // A deleted agent: what the conversation itself knows.
        assert_eq!(
            conversation(None, Some("x"))
                .next_retry_context(None)
                .retry_stage_id
                .as_deref(),
            Some("x")
        );
    }

    #[test]
    fn latency_quantiles_are_nearest_rank() {
        let l = CallLatency {
            turns_ms: vec![700, 500, 600, 900],
            answer_to_first_word_ms: Some(0),
        };
        assert_eq!(l.turn_quantile_ms(0.5), Some(600));
        assert_eq!(l.turn_quantile_ms(0.95), Some(900));
        assert_eq!(l.turn_quantile_ms(0.0), Some(500));
        assert_eq!(CallLatency::default().turn_quantile_ms(0.5), None);
        let one = CallLatency {
            turns_ms: vec![640],
            answer_to_first_word_ms: None,
        };
        assert_eq!(one.turn_quantile_ms(0.5), Some(640));
        assert_eq!(one.turn_quantile_ms(0.95), Some(640));
    }

    #[test]
    fn conversation_ids_round_trip_and_chain() {
        let id = ConversationId::first(Millis(1_700_000_000_000));
        let s = id.to_string();
        assert!(s.ends_with("_1"));
        assert_eq!(s.parse::<ConversationId>(), Ok(id));
        let next = id.next_attempt();
        assert_eq!(next.chain, id.chain);
        assert!(next.to_string().ends_with("_2"));
        for bad in [
            "",
            "abc_1",
            "e36853de-9cbb-441e-ad75-d3c8ac82abfb",
            "e36853de-9cbb-441e-ad75-d3c8ac82abfb_",
            "e36853de-9cbb-441e-ad75-d3c8ac82abfb_0",
            "e36853de-9cbb-441e-ad75-d3c8ac82abfb_01",
            "e36853de-9cbb-441e-ad75-d3c8ac82abfb_-1",
            "E36853DE-9CBB-441E-AD75-D3C8AC82ABFB_1",
            "e36853de9cbb441ead75d3c8ac82abfb_1",
            "e36853de-9cbb-441e-ad75-d3c8ac82abfb_99999999999",
        ] {
            assert!(bad.parse::<ConversationId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn state_machine_never_leaves_a_terminal_state_and_cancel_stops_at_dialling() {
        for from in CallStatus::ALL {
            for to in CallStatus::ALL {
                if from.is_terminal() {
                    assert!(!from.can_become(to), "{from} -> {to}");
                }
                if to == CallStatus::Canceled && from.can_become(to) {
                    assert!(matches!(from, CallStatus::Scheduled | CallStatus::Queued));
                }
            }
            assert_eq!(CallStatus::parse(from.as_str()), Some(from));
        }
        assert!(CallStatus::Queued.can_become(CallStatus::Initiated));
        assert!(!CallStatus::Initiated.can_become(CallStatus::Canceled));
        assert!(!CallStatus::Initiated.can_become(CallStatus::Queued));
    }

    const NOW: Millis = Millis(1_775_000_000_000);

    #[test]
    fn scheduled_for_edges() {
        let now_dt = NOW.to_datetime();
        let in_an_hour = (now_dt + chrono::Duration::hours(1)).to_rfc3339();
        assert_eq!(
            parse_scheduled_for(&in_an_hour, NOW),
            Ok(NOW.plus_seconds(3600))
        );
        // Offsets are honoured and normalised to UTC.
        let t = (now_dt + chrono::Duration::hours(2))
            .with_timezone(&chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap())
            .to_rfc3339();
        assert_eq!(parse_scheduled_for(&t, NOW), Ok(NOW.plus_seconds(7200)));
        let exactly_30_days = NOW
            .plus_seconds(MAX_SCHEDULE_AHEAD_SECONDS)
            .to_rfc3339_millis();
        assert!(parse_scheduled_for(&exactly_30_days, NOW).is_ok());
        let just_over =
            Millis(NOW.plus_seconds(MAX_SCHEDULE_AHEAD_SECONDS).0 + 1).to_rfc3339_millis();
        assert_eq!(parse_scheduled_for(&just_over, NOW), Err(InvalidSchedule));
        assert_eq!(
            parse_scheduled_for(&NOW.to_rfc3339_millis(), NOW),
            Err(InvalidSchedule)
        );
        for bad in [
            "",
            "tomorrow",
            "2026-04-08T14:00:00",
            "2026-04-08 14:00",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "1775000000",
        ] {
            assert_eq!(
                parse_scheduled_for(bad, NOW),
                Err(InvalidSchedule),
                "{bad:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn scheduled_for_accepts_exactly_the_open_window(offset_ms in -10_000_000i64..(MAX_SCHEDULE_AHEAD_SECONDS * 1000 + 10_000_000)) {
            let at = Millis(NOW.0 + offset_ms);
            let r = parse_scheduled_for(&at.to_rfc3339_millis(), NOW);
            let inside = offset_ms > 0 && offset_ms <= MAX_SCHEDULE_AHEAD_SECONDS * 1000;
            prop_assert_eq!(r.is_ok(), inside);
            if inside { prop_assert_eq!(r, Ok(at)); }
        }

        #[test]
        fn scheduled_for_never_panics(s in ".{0,64}") {
            let _ = parse_scheduled_for(&s, NOW);
        }
    }

    #[test]
    fn transcript_speakers_are_the_contracts_and_old_lines_read_as_human() {
        let old: TranscriptItem =
            serde_json::from_str(r#"{"role": "user", "message": "yes"}"#).unwrap();
        assert_eq!(old.role, Speaker::Human);
        assert_eq!(
            serde_json::to_value(&old).unwrap(),
            serde_json::json!({"role": "human", "message": "yes"})
        );
        assert_eq!(Speaker::Agent.as_str(), "agent");
    }
}
