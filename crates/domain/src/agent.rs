//! The agent object of `spec/agents.md`: what a call runs. Parsed field by field so an unknown or
//! mistyped field is named in the error (`invalid <field>`): a typo must never silently do nothing.

use crate::E164;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentConfigError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("invalid {0}")]
    Invalid(String),
}

fn invalid(field: &str) -> AgentConfigError {
    AgentConfigError::Invalid(field.to_string())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Brain {
    /// The deterministic stage machine.
    Flow,
    /// Any OpenAI-compatible chat completions endpoint.
    Llm {
        base_url: String,
        model: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub when_any: Vec<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub set: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub say: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub end: bool,
    /// Hands the call to one of the agent's `transfer.targets` (after `say`); should that fail,
    /// `next` or `end` applies as usual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Otherwise {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub say: Option<String>,
    /// How many times the stage is asked again before `then_end` applies.
    #[serde(default)]
    pub repeat: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub then_end: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub say: Option<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otherwise: Option<Otherwise>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultField {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Outcomes a retry policy may act on: the ones where nobody was reached.
pub const RETRYABLE_OUTCOMES: [&str; 6] = [
    "no_answer",
    "busy",
    "failed",
    "telephony_failed",
    "unreachable",
    "socket_failure",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub on: Vec<String>,
    pub max_attempts: u32,
    pub delay_seconds: u64,
}

pub const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallingWindow {
    /// `HH:MM`, the callee's local time.
    pub start: String,
    /// `HH:MM`; earlier than `start` means the window runs past midnight.
    pub end: String,
    #[serde(default = "all_days")]
    pub days: Vec<String>,
}

impl CallingWindow {
    /// The service's default: 09:00-21:00 in the callee's local time, Monday to Saturday (the
    /// strictest of the common rules: India's TRAI 09:00-21:00, the US TCPA 08:00-21:00).
    pub fn decent() -> Self {
        Self {
            start: "09:00".into(),
            end: "21:00".into(),
            days: WEEKDAYS[..6].iter().map(|d| d.to_string()).collect(),
        }
    }

    fn valid(&self) -> bool {
        let (Some(start), Some(end)) = (parse_hhmm(&self.start), parse_hhmm(&self.end)) else {
            return false;
        };
        start != end
            && !self.days.is_empty()
            && self.days.iter().all(|d| WEEKDAYS.contains(&d.as_str()))
    }
}

/// When an agent may call: inside a window, or at any hour (`"always"`, said explicitly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallingHours {
    Always,
    Window(CallingWindow),
}

impl CallingHours {
    /// The window to respect, if any.
    pub fn window(&self) -> Option<&CallingWindow> {
        match self {
            Self::Always => None,
            Self::Window(w) => Some(w),
        }
    }

    /// The service configuration's spelling: `always`, `HH:MM-HH:MM` (every day) or
    /// `HH:MM-HH:MM mon,tue,...`.
    pub fn parse_setting(s: &str) -> Option<Self> {
        let s = s.trim();
        if s == "always" {
            return Some(Self::Always);
        }
        let (hours, days) = match s.split_once(char::is_whitespace) {
            Some((h, d)) => (h, Some(d.trim())),
            None => (s, None),
        };
        let (start, end) = hours.split_once('-')?;
        let window = CallingWindow {
            start: start.trim().to_string(),
            end: end.trim().to_string(),
            days: match days {
                Some(d) => d.split(',').map(|d| d.trim().to_lowercase()).collect(),
                None => all_days(),
            },
        };
        window.valid().then_some(Self::Window(window))
    }
}

impl Serialize for CallingHours {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Always => s.serialize_str("always"),
            Self::Window(w) => w.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for CallingHours {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) if s == "always" => Ok(Self::Always),
            v @ Value::Object(_) => serde_json::from_value(v)
                .map(Self::Window)
                .map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom(
                "calling_window must be \"always\" or a window",
            )),
        }
    }
}

fn all_days() -> Vec<String> {
    WEEKDAYS.iter().map(|d| d.to_string()).collect()
}

impl CallingWindow {
    /// Minutes after midnight of (start, end).
    pub fn minutes(&self) -> (u32, u32) {
        (
            parse_hhmm(&self.start).unwrap_or(0),
            parse_hhmm(&self.end).unwrap_or(0),
        )
    }
}

fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Voice {
    pub engine: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transcriber {
    pub engine: String,
}

/// How the agent takes turns (ours; `agents.md` is silent). Every field is optional; the
/// object comes back with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnTaking {
    /// Silence after the caller's speech that ends their turn, 200-800.
    pub end_of_turn_silence_ms: u32,
    /// Caller speech over the agent that stops it (barge-in), 100-2000. Shorter speech under
    /// the agent ("mhm", "okay", a cough) neither stops it nor becomes a turn.
    pub barge_in_min_speech_ms: u32,
    /// Less speech than this is a click or a breath, not a turn, 20-1000.
    pub min_speech_ms: u32,
    /// A turn is cut here even if the caller (or a noisy line) never pauses, 2000-60000.
    pub max_utterance_ms: u32,
    /// Voice activity score (0-1) at or above which audio counts as speech, 0.1-0.95: higher
    /// ignores more line noise, lower hears quieter callers.
    pub vad_threshold: f64,
}

impl Default for TurnTaking {
    fn default() -> Self {
        Self {
            // Natural speech pauses 300-350 ms at a comma (measured on the piper voice), so
            // 0.5 s rarely cuts a caller mid-sentence and leaves room in an 800 ms reply.
            end_of_turn_silence_ms: 500,
            barge_in_min_speech_ms: 500,
            min_speech_ms: 100,
            max_utterance_ms: 15_000,
            vad_threshold: 0.5,
        }
    }
}

impl TurnTaking {
    fn valid(&self) -> bool {
        (200..=800).contains(&self.end_of_turn_silence_ms)
            && (100..=2000).contains(&self.barge_in_min_speech_ms)
            && (20..=1000).contains(&self.min_speech_ms)
            && (2000..=60_000).contains(&self.max_utterance_ms)
            && (0.1..=0.95).contains(&self.vad_threshold)
    }
}

/// What an agent does when a machine answers (`agents.md`, "Answering machines").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Voicemail {
    /// Classify the answered audio (default `true`).
    #[serde(default = "yes")]
    pub detect: bool,
    /// Absent: `leave_message` when there is a `message`, else `hangup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<VoicemailAction>,
    /// Said after the greeting's beep or end (templated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoicemailAction {
    LeaveMessage,
    Hangup,
}

impl Default for Voicemail {
    fn default() -> Self {
        Self {
            detect: true,
            action: None,
            message: None,
        }
    }
}

impl Voicemail {
    /// The message to leave on a machine, or `None` to hang up at once.
    pub fn message_to_leave(&self) -> Option<&str> {
        match self.action {
            Some(VoicemailAction::Hangup) => None,
            _ => self.message.as_deref().filter(|m| !m.trim().is_empty()),
        }
    }

    fn valid(&self) -> bool {
        let message = self.message.as_deref().map(str::trim).unwrap_or("");
        let fits = self
            .message
            .as_ref()
            .is_none_or(|m| m.chars().count() <= MAX_TEXT);
        // Leaving a message needs one.
        fits && !(self.action == Some(VoicemailAction::LeaveMessage) && message.is_empty())
    }
}

/// Where the agent may hand a call to a person (`agents.md`, "Transfer to a person"): only
/// numbers the tenant configured here, never one taken from the caller's words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// Name (what a route's `transfer_to` or the `transfer_call` tool says) -> number.
    pub targets: BTreeMap<String, E164>,
    /// Said whole before the call is handed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub say: Option<String>,
}

impl Transfer {
    fn valid(&self) -> bool {
        !self.targets.is_empty()
            && self.targets.len() <= 50
            && self
                .targets
                .keys()
                .all(|k| !k.trim().is_empty() && k.chars().count() <= 100)
            && self
                .say
                .as_ref()
                .is_none_or(|s| s.chars().count() <= MAX_TEXT)
    }

    pub fn number(&self, target: &str) -> Option<&E164> {
        self.targets.get(target)
    }
}

pub const VOICE_ENGINES: [&str; 2] = ["espeak-ng", "piper"];
pub const TRANSCRIBER_ENGINES: [&str; 4] = ["local", "pocketsphinx", "whisper", "deepgram"];

pub const DEFAULT_MAX_DURATION_SECONDS: u32 = 300;
pub const DEFAULT_RING_TIMEOUT_SECONDS: u32 = 30;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentConfig {
    pub name: String,
    pub phone_number: Option<E164>,
    pub language: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_message: Option<String>,
    pub max_duration_seconds: u32,
    pub ring_timeout_seconds: u32,
    pub brain: Brain,
    pub stages: Vec<Stage>,
    pub results: Vec<ResultField>,
    pub retry_policy: Option<RetryPolicy>,
    /// `None`: the service's default window.
    pub calling_window: Option<CallingHours>,
    /// Spoken before `first_message` on a human-answered call (templated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disclosure: Option<String>,
    /// The opening a later attempt is offered (webhooks' `retry_context`), and the one a call
    /// with a `retry_context` but no `retry_initial_message` uses (templated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_message: Option<String>,
    pub voice: Voice,
    pub transcriber: Transcriber,
    /// Simultaneous live calls of this agent; `None` = no cap of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_calls: Option<u32>,
    /// `None`: the defaults of [`TurnTaking`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_taking: Option<TurnTaking>,
    /// What a machine-answered call does; absent: detect, and hang up on a machine.
    #[serde(default)]
    pub voicemail: Voicemail,
    /// Where a call may be handed to a person; `None`: nowhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
    /// After a call with a recording ends, transcribe the recording again with the
    /// transcription jobs' recogniser, one speaker per channel, and keep it beside the live
    /// transcript (the conversation's `post_call_transcript`).
    pub post_call_transcript: bool,
}

const MAX_TEXT: usize = 4096;

/// BCP 47 in the shape people use (`en`, `en-IN`, `hi-IN`, `zh-Hant-TW`): letters and digits in
/// dash-separated subtags, a 2-3 letter primary language.
pub fn is_language_tag(s: &str) -> bool {
    let mut parts = s.split('-');
    let Some(primary) = parts.next() else {
        return false;
    };
    (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
        && s.len() <= 35
}

fn typed<T: for<'de> Deserialize<'de>>(field: &str, v: &Value) -> Result<T, AgentConfigError> {
    serde_json::from_value(v.clone()).map_err(|_| invalid(field))
}

fn text(field: &str, v: &Value, max: usize) -> Result<String, AgentConfigError> {
    match v {
        Value::String(s) if s.chars().count() <= max => Ok(s.clone()),
        _ => Err(invalid(field)),
    }
}

fn bounded(field: &str, v: &Value, lo: u64, hi: u64) -> Result<u32, AgentConfigError> {
    match v.as_u64() {
        Some(n) if (lo..=hi).contains(&n) => u32::try_from(n).map_err(|_| invalid(field)),
        _ => Err(invalid(field)),
    }
}

impl AgentConfig {
    /// Parses a whole agent object. `null` for an optional field means "not set".
    pub fn from_json(obj: &Map<String, Value>) -> Result<Self, AgentConfigError> {
        let mut cfg = AgentConfig {
            name: String::new(),
            phone_number: None,
            language: "en-US".into(),
            first_message: None,
            max_duration_seconds: DEFAULT_MAX_DURATION_SECONDS,
            ring_timeout_seconds: DEFAULT_RING_TIMEOUT_SECONDS,
            brain: Brain::Flow,
            stages: Vec::new(),
            results: Vec::new(),
            retry_policy: None,
            calling_window: None,
            disclosure: None,
            retry_message: None,
            voice: Voice {
                engine: "espeak-ng".into(),
                voice: None,
            },
            transcriber: Transcriber {
                engine: "local".into(),
            },
            max_concurrent_calls: None,
            turn_taking: None,
            voicemail: Voicemail::default(),
            transfer: None,
            post_call_transcript: false,
        };
        let mut has_name = false;
        // Keys in a stable order so the first bad field reported does not depend on hashing.
        let mut keys: Vec<&String> = obj.keys().collect();
        keys.sort();
        for key in keys {
            let v = &obj[key];
            if v.is_null() && key != "name" {
                continue;
            }
            match key.as_str() {
                "name" => {
                    let name = text("name", v, 100)?;
                    if name.trim().is_empty() {
                        return Err(invalid("name"));
                    }
                    cfg.name = name;
                    has_name = true;
                }
                "phone_number" => {
                    let s = text("phone_number", v, 32)?;
                    cfg.phone_number = Some(E164::parse(&s).map_err(|_| invalid("phone_number"))?);
                }
                "language" => {
                    let s = text("language", v, 35)?;
                    if !is_language_tag(&s) {
                        return Err(invalid("language"));
                    }
                    cfg.language = s;
                }
                "first_message" => cfg.first_message = Some(text("first_message", v, MAX_TEXT)?),
                "retry_message" => {
                    let t = text("retry_message", v, MAX_TEXT)?;
                    cfg.retry_message = Some(t).filter(|t| !t.trim().is_empty());
                }
                "disclosure" => {
                    let t = text("disclosure", v, MAX_TEXT)?;
                    cfg.disclosure = Some(t).filter(|t| !t.trim().is_empty());
                }
                "max_duration_seconds" => {
                    cfg.max_duration_seconds = bounded("max_duration_seconds", v, 10, 4 * 3600)?
                }
                "ring_timeout_seconds" => {
                    cfg.ring_timeout_seconds = bounded("ring_timeout_seconds", v, 5, 120)?
                }
                "brain" => cfg.brain = typed("brain", v)?,
                "stages" => cfg.stages = typed("stages", v)?,
                "results" => cfg.results = typed("results", v)?,
                "retry_policy" => cfg.retry_policy = Some(typed("retry_policy", v)?),
                "calling_window" => cfg.calling_window = Some(typed("calling_window", v)?),
                "voice" => cfg.voice = typed("voice", v)?,
                "transcriber" => cfg.transcriber = typed("transcriber", v)?,
                "max_concurrent_calls" => {
                    cfg.max_concurrent_calls = Some(bounded("max_concurrent_calls", v, 1, 100_000)?)
                }
                "turn_taking" => {
                    let t: TurnTaking = typed("turn_taking", v)?;
                    if !t.valid() {
                        return Err(invalid("turn_taking"));
                    }
                    cfg.turn_taking = Some(t);
                }
                "voicemail" => {
                    let v: Voicemail = typed("voicemail", v)?;
                    if !v.valid() {
                        return Err(invalid("voicemail"));
                    }
                    cfg.voicemail = v;
                }
                "post_call_transcript" => {
                    cfg.post_call_transcript = typed("post_call_transcript", v)?
                }
                "transfer" => {
                    let t: Transfer = typed("transfer", v)?;
                    if !t.valid() {
                        return Err(invalid("transfer"));
                    }
                    cfg.transfer = Some(t);
                }
                other => return Err(invalid(other)),
            }
        }
        if !has_name {
            return Err(AgentConfigError::Missing("name"));
        }
        cfg.check()?;
        Ok(cfg)
    }

    /// Rules that span fields or need more than a type.
    fn check(&self) -> Result<(), AgentConfigError> {
        if let Brain::Llm {
            base_url, model, ..
        } = &self.brain
        {
            let http = base_url.starts_with("http://") || base_url.starts_with("https://");
            if !http || model.trim().is_empty() {
                return Err(invalid("brain"));
            }
        }
        let ids: HashSet<&str> = self.stages.iter().map(|s| s.id.as_str()).collect();
        if ids.len() != self.stages.len() || self.stages.len() > 100 {
            return Err(invalid("stages"));
        }
        for stage in &self.stages {
            let bad_text =
                |t: &Option<String>| t.as_ref().is_some_and(|t| t.chars().count() > MAX_TEXT);
            if stage.id.trim().is_empty() || bad_text(&stage.say) {
                return Err(invalid("stages"));
            }
            for route in &stage.routes {
                let dangling = route.next.as_deref().is_some_and(|n| !ids.contains(n))
                    || route.transfer_to.as_deref().is_some_and(|t| {
                        self.transfer.as_ref().and_then(|x| x.number(t)).is_none()
                    });
                let no_words =
                    route.when_any.is_empty() || route.when_any.iter().any(|w| w.trim().is_empty());
                if dangling
                    || no_words
                    || bad_text(&route.say)
                    || (route.end && route.next.is_some())
                {
                    return Err(invalid("stages"));
                }
            }
            if stage
                .otherwise
                .as_ref()
                .is_some_and(|o| bad_text(&o.say) || o.repeat > 10)
            {
                return Err(invalid("stages"));
            }
        }
        let names: HashSet<&str> = self.results.iter().map(|r| r.name.as_str()).collect();
        if names.len() != self.results.len() || names.iter().any(|n| n.trim().is_empty()) {
            return Err(invalid("results"));
        }
        if let Some(p) = &self.retry_policy {
            let known =
                p.on.iter()
                    .all(|o| RETRYABLE_OUTCOMES.contains(&o.as_str()));
            if !known || !(1..=10).contains(&p.max_attempts) || p.delay_seconds > 7 * 24 * 3600 {
                return Err(invalid("retry_policy"));
            }
        }
        if let Some(CallingHours::Window(w)) = &self.calling_window {
            if !w.valid() {
                return Err(invalid("calling_window"));
            }
        }
        if !VOICE_ENGINES.contains(&self.voice.engine.as_str()) {
            return Err(invalid("voice"));
        }
        if !TRANSCRIBER_ENGINES.contains(&self.transcriber.engine.as_str()) {
            return Err(invalid("transcriber"));
        }
        Ok(())
    }

    /// The object as stored and returned; secrets (an LLM key) are left out of what is returned
    /// through `public_json`.
    pub fn to_json(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }

    pub fn public_json(&self) -> Map<String, Value> {
        let mut m = self.to_json();
        if let Some(Value::Object(brain)) = m.get_mut("brain") {
            if brain.contains_key("api_key") {
                brain.insert("api_key".into(), Value::String("********".into()));
            }
        }
        m
    }

    /// A PATCH: the given fields replace the stored ones (`null` clears an optional field), and
    /// the result is validated whole.
    pub fn patched(&self, patch: &Map<String, Value>) -> Result<Self, AgentConfigError> {
        let mut merged = self.to_json();
        for (k, v) in patch {
            merged.insert(k.clone(), v.clone());
        }
        Self::from_json(&merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn spec_example() -> Value {
        json!({
          "name": "collections",
          "phone_number": "+918035739222",
          "language": "en-IN",
          "first_message": "Hello {{customer_name}}, this is Asha from Acme about invoice {{invoice_id}}.",
          "max_duration_seconds": 300,
          "ring_timeout_seconds": 30,
          "brain": { "type": "flow" },
          "stages": [
            { "id": "stage_ask", "say": "Can you pay it by Friday?",
              "routes": [
                { "when_any": ["yes", "sure", "okay"], "set": { "intent": "payment_promise" },
                  "say": "Thank you, we will note that. Goodbye.", "end": true },
                { "when_any": ["no", "cannot", "can't"], "set": { "intent": "refused" }, "next": "stage_follow_up" }
              ],
              "otherwise": { "say": "Sorry, could you say that again?", "repeat": 1, "then_end": true } },
            { "id": "stage_follow_up", "say": "When could you pay?", "routes": [] }
          ],
          "results": [ { "name": "intent", "description": "what the customer agreed to" } ],
          "retry_policy": { "on": ["no_answer", "busy", "failed"], "max_attempts": 3, "delay_seconds": 1800 },
          "calling_window": { "start": "09:00", "end": "21:00", "days": ["mon","tue","wed","thu","fri","sat"] },
          "voice": { "engine": "espeak-ng", "voice": "en-us" },
          "transcriber": { "engine": "local" }
        })
    }

    #[test]
    fn the_spec_example_parses_and_round_trips() {
        let cfg = AgentConfig::from_json(&obj(spec_example())).unwrap();
        assert_eq!(cfg.stages.len(), 2);
        assert_eq!(cfg.phone_number.as_ref().unwrap().as_str(), "+918035739222");
        let again = AgentConfig::from_json(&cfg.to_json()).unwrap();
        assert_eq!(again, cfg);
    }

    #[test]
    fn defaults_for_a_minimal_agent() {
        let cfg = AgentConfig::from_json(&obj(json!({"name": "x"}))).unwrap();
        assert_eq!(cfg.max_duration_seconds, DEFAULT_MAX_DURATION_SECONDS);
        assert_eq!(cfg.brain, Brain::Flow);
        assert_eq!(cfg.phone_number, None);
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({}), "name is required"),
            (json!({"name": ""}), "invalid name"),
            (json!({"name": 5}), "invalid name"),
            (
                json!({"name": "a", "frist_message": "hi"}),
                "invalid frist_message",
            ),
            (
                json!({"name": "a", "phone_number": "12345"}),
                "invalid phone_number",
            ),
            (
                json!({"name": "a", "language": "english please"}),
                "invalid language",
            ),
            (
                json!({"name": "a", "max_duration_seconds": -1}),
                "invalid max_duration_seconds",
            ),
            (
                json!({"name": "a", "max_duration_seconds": 1e40}),
                "invalid max_duration_seconds",
            ),
            (
                json!({"name": "a", "ring_timeout_seconds": "30"}),
                "invalid ring_timeout_seconds",
            ),
            (
                json!({"name": "a", "brain": {"type": "magic"}}),
                "invalid brain",
            ),
            (
                json!({"name": "a", "brain": {"type": "llm", "base_url": "ftp://x", "model": "m"}}),
                "invalid brain",
            ),
            (
                json!({"name": "a", "stages": [{"id": "s", "routes": [{"when_any": ["y"], "next": "nowhere"}]}]}),
                "invalid stages",
            ),
            (
                json!({"name": "a", "stages": [{"id": "s"}, {"id": "s"}]}),
                "invalid stages",
            ),
            (
                json!({"name": "a", "stages": [{"id": "s", "sy": "typo"}]}),
                "invalid stages",
            ),
            (
                json!({"name": "a", "results": [{"name": "x"}, {"name": "x"}]}),
                "invalid results",
            ),
            (
                json!({"name": "a", "retry_policy": {"on": ["completed"], "max_attempts": 2, "delay_seconds": 1}}),
                "invalid retry_policy",
            ),
            (
                json!({"name": "a", "retry_policy": {"on": ["busy"], "max_attempts": 0, "delay_seconds": 1}}),
                "invalid retry_policy",
            ),
            (
                json!({"name": "a", "calling_window": {"start": "9:00", "end": "21:00"}}),
                "invalid calling_window",
            ),
            (
                json!({"name": "a", "calling_window": {"start": "09:00", "end": "21:00", "days": ["monday"]}}),
                "invalid calling_window",
            ),
            (
                json!({"name": "a", "voice": {"engine": "alexa"}}),
                "invalid voice",
            ),
            (
                json!({"name": "a", "transcriber": {"engine": "ears"}}),
                "invalid transcriber",
            ),
            (
                json!({"name": "a", "turn_taking": {"end_of_turn_silence_ms": 900}}),
                "invalid turn_taking",
            ),
            (
                json!({"name": "a", "turn_taking": {"end_of_turn_silence_ms": 150}}),
                "invalid turn_taking",
            ),
            (
                json!({"name": "a", "turn_taking": {"barge_in_min_speech_ms": 50}}),
                "invalid turn_taking",
            ),
            (
                json!({"name": "a", "turn_taking": {"vad_threshold": 1.5}}),
                "invalid turn_taking",
            ),
            (
                json!({"name": "a", "turn_taking": {"end_of_turn_ms": 400}}),
                "invalid turn_taking",
            ),
            (
                json!({"name": "a", "turn_taking": {"min_speech_ms": "100"}}),
                "invalid turn_taking",
            ),
        ];
        for (input, want) in cases {
            let err = AgentConfig::from_json(&obj(input.clone())).unwrap_err();
            assert_eq!(err.to_string(), want, "for {input}");
        }
    }

    #[test]
    fn patch_replaces_fields_and_revalidates() {
        let cfg = AgentConfig::from_json(&obj(spec_example())).unwrap();
        let p = cfg
            .patched(&obj(json!({"first_message": "Hi", "calling_window": null})))
            .unwrap();
        assert_eq!(p.first_message.as_deref(), Some("Hi"));
        assert_eq!(p.calling_window, None);
        assert_eq!(p.stages, cfg.stages);
        assert_eq!(
            cfg.patched(&obj(json!({"name": null})))
                .unwrap_err()
                .to_string(),
            "invalid name"
        );
    }

    #[test]
    fn turn_taking_is_optional_and_partial_objects_get_defaults() {
        let cfg = AgentConfig::from_json(&obj(json!({"name": "a"}))).unwrap();
        assert_eq!(cfg.turn_taking, None);
        assert!(!cfg.to_json().contains_key("turn_taking"));
        let cfg = AgentConfig::from_json(&obj(
            json!({"name": "a", "turn_taking": {"end_of_turn_silence_ms": 300, "vad_threshold": 0.6}}),
        ))
        .unwrap();
        let t = cfg.turn_taking.unwrap();
        assert_eq!(t.end_of_turn_silence_ms, 300);
        assert_eq!(t.vad_threshold, 0.6);
        assert_eq!(t.barge_in_min_speech_ms, 500);
        let back = cfg.to_json();
        assert_eq!(back["turn_taking"]["end_of_turn_silence_ms"], 300);
        assert_eq!(back["turn_taking"]["vad_threshold"], 0.6);
        assert_eq!(back["turn_taking"]["max_utterance_ms"], 15_000);
        assert_eq!(AgentConfig::from_json(&back).unwrap(), cfg);
    }

    #[test]
    fn llm_key_is_not_returned() {
        let cfg = AgentConfig::from_json(&obj(json!({"name": "a", "brain": {"type": "llm", "base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key": "sk-secret"}}))).unwrap();
        let public = Value::Object(cfg.public_json()).to_string();
        assert!(!public.contains("sk-secret"));
        assert!(Value::Object(cfg.to_json())
            .to_string()
            .contains("sk-secret"));
    }

    #[test]
    fn language_tags() {
        for ok in ["en", "en-IN", "hi-IN", "zh-Hant-TW"] {
            assert!(is_language_tag(ok), "{ok}");
        }
        for bad in [
            "",
            "e",
            "english",
            "en_IN",
            "en-",
            "-IN",
            "en-toolongsubtag",
        ] {
            assert!(!is_language_tag(bad), "{bad}");
        }
    }

    #[test]
    fn calling_hours_are_a_window_or_always_said_explicitly() {
        let a =
            AgentConfig::from_json(&obj(json!({"name": "a", "calling_window": "always"}))).unwrap();
        assert_eq!(a.calling_window, Some(CallingHours::Always));
        assert_eq!(a.to_json()["calling_window"], json!("always"));
        assert_eq!(
            AgentConfig::from_json(&obj(json!({"name": "a", "calling_window": "never"})))
                .unwrap_err()
                .to_string(),
            "invalid calling_window"
        );
        assert_eq!(
            CallingHours::parse_setting("09:00-21:00 mon,tue,wed,thu,fri,sat"),
            Some(CallingHours::Window(CallingWindow::decent()))
        );
        assert_eq!(
            CallingHours::parse_setting("always"),
            Some(CallingHours::Always)
        );
        let every_day = CallingHours::parse_setting("08:00-20:00").unwrap();
        assert_eq!(every_day.window().map(|w| w.days.len()), Some(7));
        for bad in ["", "9-21", "09:00-09:00", "09:00-21:00 monday", "sometimes"] {
            assert_eq!(CallingHours::parse_setting(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn voicemail_detects_by_default_and_leaves_a_message_only_when_there_is_one() {
        let parse = |v: Value| AgentConfig::from_json(&obj(v));
        let plain = parse(json!({"name": "a"})).unwrap();
        assert!(plain.voicemail.detect);
        assert_eq!(plain.voicemail.message_to_leave(), None);
        let leave = parse(json!({"name": "a", "voicemail": {"message": "Call us back."}})).unwrap();
        assert_eq!(leave.voicemail.message_to_leave(), Some("Call us back."));
        let hang = parse(json!({"name": "a", "voicemail":
            {"action": "hangup", "message": "Call us back."}}))
        .unwrap();
        assert_eq!(hang.voicemail.message_to_leave(), None);
        let off = parse(json!({"name": "a", "voicemail": {"detect": false}})).unwrap();
        assert!(!off.voicemail.detect);
        for bad in [
            json!({"action": "leave_message"}),
            json!({"action": "leave_message", "message": "  "}),
            json!({"action": "shout"}),
            json!({"detect": "yes"}),
            json!({"beep": true}),
            json!("on"),
        ] {
            let e = parse(json!({"name": "a", "voicemail": bad})).unwrap_err();
            assert_eq!(e.to_string(), "invalid voicemail", "{bad}");
        }
        // It round-trips through storage.
        let stored = serde_json::to_value(&leave).unwrap();
        assert_eq!(
            stored["voicemail"],
            json!({"detect": true, "message": "Call us back."})
        );
        let back = AgentConfig::from_json(stored.as_object().unwrap()).unwrap();
        assert_eq!(back.voicemail, leave.voicemail);
    }

    #[test]
    fn a_disclosure_is_text_and_blank_means_none() {
        let a = AgentConfig::from_json(&obj(
            json!({"name": "a", "disclosure": "This call is recorded."}),
        ))
        .unwrap();
        assert_eq!(a.disclosure.as_deref(), Some("This call is recorded."));
        let b = AgentConfig::from_json(&obj(json!({"name": "a", "disclosure": "  "}))).unwrap();
        assert_eq!(b.disclosure, None);
        assert_eq!(
            AgentConfig::from_json(&obj(json!({"name": "a", "disclosure": 1})))
                .unwrap_err()
                .to_string(),
            "invalid disclosure"
        );
    }

    #[test]
    fn post_call_transcript_is_a_boolean_off_by_default_and_patchable() {
        let plain = AgentConfig::from_json(&obj(json!({"name": "a"}))).unwrap();
        assert!(!plain.post_call_transcript);
        // Returned (and stored) either way, so a client sees the setting in force.
        assert_eq!(plain.public_json()["post_call_transcript"], json!(false));
        let on = plain
            .patched(&obj(json!({"post_call_transcript": true})))
            .unwrap();
        assert!(on.post_call_transcript);
        assert_eq!(AgentConfig::from_json(&on.to_json()).unwrap(), on);
        let off = on
            .patched(&obj(json!({"post_call_transcript": null})))
            .unwrap();
        assert!(!off.post_call_transcript);
        for bad in [json!("true"), json!(1), json!({}), json!([true])] {
            let e = AgentConfig::from_json(&obj(
                json!({"name": "a", "post_call_transcript": bad.clone()}),
            ))
            .unwrap_err();
            assert_eq!(e.to_string(), "invalid post_call_transcript", "{bad}");
        }
    }

    #[test]
    fn transfer_targets_are_configured_numbers_and_routes_must_name_one() {
        let parse = |v: Value| AgentConfig::from_json(&obj(v));
        let with = |routes: Value| {
            json!({"name": "a",
                "transfer": {"targets": {"billing": "+918045000000"}, "say": "Connecting you."},
                "stages": [{"id": "s", "routes": routes}]})
        };
        let a = parse(with(
            json!([{"when_any": ["billing"], "transfer_to": "billing"}]),
        ))
        .unwrap();
        let t = a.transfer.as_ref().unwrap();
        assert_eq!(t.number("billing").unwrap().as_str(), "+918045000000");
        assert_eq!(t.say.as_deref(), Some("Connecting you."));
        assert_eq!(
            a.stages[0].routes[0].transfer_to.as_deref(),
            Some("billing")
        );
        // It round-trips through storage.
        assert_eq!(AgentConfig::from_json(&a.to_json()).unwrap(), a);
        // A route naming a target the agent does not have is refused when the agent is saved.
        let e = parse(with(
            json!([{"when_any": ["sales"], "transfer_to": "sales"}]),
        ))
        .unwrap_err();
        assert_eq!(e.to_string(), "invalid stages");
        let e = parse(json!({"name": "a", "stages": [{"id": "s", "routes":
            [{"when_any": ["x"], "transfer_to": "billing"}]}]}))
        .unwrap_err();
        assert_eq!(e.to_string(), "invalid stages");
        for bad in [
            json!({"targets": {}}),
            json!({"targets": {"billing": "8045000000"}}),
            json!({"targets": {"billing": "call me"}}),
            json!({"targets": {"": "+918045000000"}}),
            json!({"targets": {"billing": 918045000000u64}}),
            json!({"targets": {"billing": "+918045000000"}, "say": 5}),
            json!({"targets": {"billing": "+918045000000"}, "sya": "typo"}),
            json!({"say": "Connecting you."}),
            json!("billing"),
        ] {
            let e = parse(json!({"name": "a", "transfer": bad})).unwrap_err();
            assert_eq!(e.to_string(), "invalid transfer", "{bad}");
        }
        // Clearing the block with a PATCH leaves a route that names a target invalid.
        assert_eq!(
            a.patched(&obj(json!({"transfer": null})))
                .unwrap_err()
                .to_string(),
            "invalid stages"
        );
    }
}
