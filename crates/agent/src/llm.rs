//! The `llm` brain of `spec/agents.md`: any OpenAI-compatible chat completions endpoint
//! (`POST {base_url}/chat/completions`, `stream: true`). The agent's stages, results and call
//! facts become the system instructions; `set_result` and `end_call` are offered as tools. What
//! the model streams as `content` is what the agent says, sentence by sentence as it arrives.
//!
//! A turn that fails (connection, HTTP status, timeout, a stream that is malformed or cut) is
//! never silence: the agent says [`LlmOptions::retry_line`]; after
//! [`LlmOptions::max_failures`] failed turns in a row it says [`LlmOptions::goodbye_line`] and
//! hangs up. [`LlmBrain::respond`] is the turn without that policy, returning the
//! [`BrainError`].

use crate::brain::{Brain, BrainError, Reply};
use crate::stt::Transcript;
use crate::template::render;
use async_trait::async_trait;
use domain::agent::{AgentConfig, Brain as BrainConfig, Stage};
use domain::call::{Parameter, RetryContext};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::sync::mpsc;

/// Node-wide settings of the llm brain (the agent object carries only the endpoint).
#[derive(Debug, Clone)]
pub struct LlmOptions {
    /// TCP + TLS connect.
    pub connect_timeout: Duration,
    /// Request sent -> response status and headers.
    pub response_timeout: Duration,
    /// Between two reads of the stream once it has started.
    pub idle_timeout: Duration,
    /// A whole turn, tool rounds included.
    pub turn_timeout: Duration,
    /// Requests per turn while the model only calls tools without speaking.
    pub max_tool_rounds: u32,
    /// Failed turns in a row after which the agent apologises and hangs up.
    pub max_failures: u32,
    pub retry_line: String,
    pub goodbye_line: String,
    /// Where model servers may be (the operator's networks besides public addresses).
    pub endpoints: webhooks::ModelEndpointPolicy,
}

impl Default for LlmOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(8),
            idle_timeout: Duration::from_secs(5),
            turn_timeout: Duration::from_secs(20),
            max_tool_rounds: 3,
            max_failures: 2,
            retry_line: "Sorry, could you say that again?".into(),
            goodbye_line:
                "I'm sorry, I'm having trouble on my side. We will call you back. Goodbye.".into(),
            endpoints: Default::default(),
        }
    }
}

impl LlmOptions {
    /// The HTTP client these options describe. Redirects are not followed: a chat endpoint
    /// that redirects is misconfigured, and following would resend the bearer token elsewhere.
    /// Names resolve through the address guard, and no proxy connects on our behalf past it.
    pub fn client(&self) -> Result<reqwest::Client, BrainError> {
        reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(webhooks::guarded_resolver(self.endpoints.clone()))
            .build()
            .map_err(|e| BrainError::Connect(format!("HTTP client: {e}")))
    }
}

pub struct LlmBrain {
    url: String,
    model: String,
    api_key: Option<String>,
    client: Result<reqwest::Client, String>,
    options: LlmOptions,
    messages: Vec<Value>,
    tools: Value,
    /// Names `set_result` accepts: the declared results and the keys routes set.
    result_names: BTreeSet<String>,
    results: Map<String, Value>,
    first_question: Option<String>,
    phrases: Vec<String>,
    failures: u32,
    /// The call's language, for the opt-out confirmation.
    language: String,
    /// Where the plan started: the model does not report stage changes, so a later attempt
    /// resumes here.
    start_stage: Option<String>,
}

/// One tool call as assembled from its streamed fragments.
#[derive(Debug, Clone, Default, PartialEq)]
struct ToolCall {
    id: String,
    name: String,
    arguments: String,
}

#[derive(Debug, Default)]
struct Round {
    content: String,
    tool_calls: Vec<ToolCall>,
}

/// Lines of the turn in progress: all of them (the reply) and those of the round in flight,
/// which are not in the history yet.
#[derive(Default)]
struct TurnLines {
    said: Vec<String>,
    pending: Vec<String>,
}

impl LlmBrain {
    /// `agent.brain` must be `llm`; any other brain gives an endpoint-less brain whose every
    /// turn fails (and so says the fallback line), which [`crate::brain_for`] never builds.
    pub fn new(
        agent: &AgentConfig,
        parameters: &[Parameter],
        retry: Option<&RetryContext>,
        options: LlmOptions,
        client: Result<reqwest::Client, String>,
    ) -> Self {
        let (base_url, model, api_key, prompt) = match &agent.brain {
            BrainConfig::Llm {
                base_url,
                model,
                api_key,
                prompt,
            } => (
                base_url.clone(),
                model.clone(),
                api_key.clone().filter(|k| !k.is_empty()),
                prompt.clone(),
            ),
            BrainConfig::Flow => (String::new(), String::new(), None, None),
        };
        let start = retry
            .and_then(|r| r.retry_stage_id.as_deref())
            .and_then(|id| agent.stages.iter().find(|s| s.id == id))
            .or(agent.stages.first());
        let mut result_names: BTreeSet<String> =
            agent.results.iter().map(|r| r.name.clone()).collect();
        for stage in &agent.stages {
            for route in &stage.routes {
                result_names.extend(route.set.keys().cloned());
            }
        }
        let results = retry
            .and_then(|r| r.collected_data.clone())
            .unwrap_or_default();
        let mut phrases = Vec::new();
        for stage in &agent.stages {
            for route in &stage.routes {
                for p in &route.when_any {
                    if !phrases.contains(p) {
                        phrases.push(p.clone());
                    }
                }
            }
        }
        let system = instructions(agent, prompt.as_deref(), parameters, retry, start, &results);
        let mut brain = Self {
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            model,
            api_key,
            client,
            options,
            messages: vec![json!({"role": "system", "content": system})],
            tools: tools(agent, &result_names),
            result_names,
            results,
            first_question: start
                .and_then(|s| s.say.as_deref())
                .map(|t| render(t, parameters))
                .filter(|t| !t.trim().is_empty()),
            phrases,
            failures: 0,
            language: retry
                .and_then(|r| r.retry_language.clone())
                .unwrap_or_else(|| agent.language.clone()),
            start_stage: start.map(|s| s.id.clone()),
        };
        let opening = crate::opening_line(agent, parameters, retry);
        if let Some(opening) = opening {
            brain.remember_said(&opening);
        }
        brain
    }

    /// The messages sent so far (system first), for tests and logs.
    pub fn history(&self) -> &[Value] {
        &self.messages
    }

    /// One turn with no fallback: the error is returned as it happened. Lines are sent to
    /// `lines` as each sentence completes.
    pub async fn respond(
        &mut self,
        heard: &str,
        lines: Option<&mpsc::UnboundedSender<String>>,
    ) -> Result<Reply, BrainError> {
        let mut turn = TurnLines::default();
        self.turn(heard, lines, &mut turn).await
    }

    async fn turn(
        &mut self,
        heard: &str,
        lines: Option<&mpsc::UnboundedSender<String>>,
        turn: &mut TurnLines,
    ) -> Result<Reply, BrainError> {
        let heard = heard.trim();
        let content = if heard.is_empty() {
            // The caller spoke but nothing could be read: say so rather than send nothing.
            "(the caller said something that could not be understood)"
        } else {
            heard
        };
        self.messages
            .push(json!({"role": "user", "content": content}));
        let limit = self.options.turn_timeout;
        match tokio::time::timeout(limit, self.rounds(lines, turn)).await {
            Ok(r) => r,
            Err(_) => Err(BrainError::Timeout {
                stage: "turn",
                limit,
            }),
        }
    }

    async fn rounds(
        &mut self,
        lines: Option<&mpsc::UnboundedSender<String>>,
        turn: &mut TurnLines,
    ) -> Result<Reply, BrainError> {
        let mut end = false;
        for _ in 0..self.options.max_tool_rounds.max(1) {
            let round = self.request(lines, turn).await?;
            let spoke = !round.content.trim().is_empty();
            let mut assistant = json!({"role": "assistant"});
            assistant["content"] = if spoke {
                Value::String(round.content.clone())
            } else {
                Value::Null
            };
            if !round.tool_calls.is_empty() {
                assistant["tool_calls"] = Value::Array(
                    round
                        .tool_calls
                        .iter()
                        .map(|c| {
                            json!({"id": c.id, "type": "function",
                                   "function": {"name": c.name, "arguments": c.arguments}})
                        })
                        .collect(),
                );
            }
            if spoke || !round.tool_calls.is_empty() {
                self.messages.push(assistant);
            }
            turn.pending.clear();
            let mut goodbye = None;
            for call in &round.tool_calls {
                let (answer, ends, last_words) = self.apply(call);
                end |= ends;
                goodbye = goodbye.or(last_words);
                self.messages
                    .push(json!({"role": "tool", "tool_call_id": call.id, "content": answer}));
            }
            if end {
                if !spoke {
                    if let Some(line) = goodbye {
                        self.say_line(&line, lines, turn);
                        turn.pending.clear();
                        self.remember_said(&line);
                    }
                }
                break;
            }
            // Tools called but nothing said: the model has to be asked again with the tools'
            // answers, or the caller would hear silence.
            if spoke || round.tool_calls.is_empty() {
                break;
            }
        }
        if !end && turn.said.is_empty() && self.last_is_tool() {
            return Err(BrainError::Model(format!(
                "the model called tools {} times without saying anything",
                self.options.max_tool_rounds.max(1)
            )));
        }
        self.failures = 0;
        Ok(Reply {
            say: std::mem::take(&mut turn.said),
            end,
        })
    }

    fn last_is_tool(&self) -> bool {
        self.messages.last().is_some_and(|m| m["role"] == "tool")
    }

    /// Runs one tool call: the tool message's text, whether it ends the call, and last words.
    fn apply(&mut self, call: &ToolCall) -> (String, bool, Option<String>) {
        let args: Result<Map<String, Value>, _> = if call.arguments.trim().is_empty() {
            Ok(Map::new())
        } else {
            serde_json::from_str(&call.arguments)
        };
        let Ok(args) = args else {
            tracing::warn!(tool = %call.name, "the model's tool arguments are not a JSON object");
            return (
                "error: the arguments must be a JSON object".into(),
                false,
                None,
            );
        };
        match call.name.as_str() {
            "set_result" => {
                let name = args.get("name").and_then(Value::as_str).unwrap_or("");
                let value = args.get("value").cloned().unwrap_or(Value::Null);
                if !self.result_names.contains(name) {
                    tracing::warn!(
                        result = name,
                        "the model set a result the agent does not declare"
                    );
                    return (
                        format!("error: {name:?} is not a declared result"),
                        false,
                        None,
                    );
                }
                if value.is_null() {
                    return ("error: value is required".into(), false, None);
                }
                let value = match value {
                    Value::String(s) => Value::String(s.trim().to_string()),
                    v => v,
                };
                tracing::info!(result = name, "the model set a result");
                self.results.insert(name.to_string(), value);
                (format!("recorded {name}"), false, None)
            }
            "end_call" => {
                let goodbye = args
                    .get("goodbye")
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string);
                (
                    "the call will end after your reply is spoken".into(),
                    true,
                    goodbye,
                )
            }
            "opt_out" => {
                tracing::info!("the model heard the caller opt out");
                self.results
                    .insert(crate::opt_out::RESULT.into(), Value::Bool(true));
                (
                    "the number is removed and the call will end after the confirmation".into(),
                    true,
                    Some(crate::opt_out::confirmation(&self.language).to_string()),
                )
            }
            other => {
                tracing::warn!(tool = other, "the model called an unknown tool");
                (format!("error: there is no tool {other:?}"), false, None)
            }
        }
    }

    fn say_line(
        &self,
        line: &str,
        lines: Option<&mpsc::UnboundedSender<String>>,
        turn: &mut TurnLines,
    ) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        turn.said.push(line.to_string());
        turn.pending.push(line.to_string());
        if let Some(tx) = lines {
            let _ = tx.send(line.to_string());
        }
    }

    /// Adds what the agent said to the history, joined to a directly preceding plain assistant
    /// message: some chat templates refuse two assistant messages in a row.
    fn remember_said(&mut self, text: &str) {
        if let Some(last) = self.messages.last_mut() {
            if last["role"] == "assistant" && last.get("tool_calls").is_none() {
                if let Some(prev) = last["content"].as_str() {
                    last["content"] = Value::String(format!("{prev} {text}"));
                    return;
                }
            }
        }
        self.messages
            .push(json!({"role": "assistant", "content": text}));
    }

    fn body(&self) -> Value {
        let mut body = json!({
            "model": self.model,
            "messages": self.messages,
            "stream": true,
        });
        if self.tools.as_array().is_some_and(|t| !t.is_empty()) {
            body["tools"] = self.tools.clone();
            body["tool_choice"] = json!("auto");
        }
        body
    }

    /// One streamed chat completion.
    async fn request(
        &self,
        lines: Option<&mpsc::UnboundedSender<String>>,
        turn: &mut TurnLines,
    ) -> Result<Round, BrainError> {
        let client = self
            .client
            .as_ref()
            .map_err(|e| BrainError::Connect(e.clone()))?;
        if self.model.is_empty() {
            return Err(BrainError::Model("the agent has no llm endpoint".into()));
        }
        // An IP-literal host is connected to without resolving, past the guarded resolver.
        webhooks::guard::parse_target_url(&self.url)
            .and_then(|url| {
                use webhooks::AddressPolicy;
                self.options.endpoints.check_literal_host(&url)
            })
            .map_err(|e| BrainError::Connect(format!("model server: {e}")))?;
        let mut req = client
            .post(&self.url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&self.body());
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let limit = self.options.response_timeout;
        let mut resp = tokio::time::timeout(limit, req.send())
            .await
            .map_err(|_| BrainError::Timeout {
                stage: "response",
                limit,
            })?
            .map_err(|e| {
                if e.is_timeout() {
                    BrainError::Timeout {
                        stage: "connect",
                        limit: self.options.connect_timeout,
                    }
                } else {
                    BrainError::Connect(without_url(&e))
                }
            })?;
        let idle = self.options.idle_timeout;
        let status = resp.status();
        if !status.is_success() {
            let body = tokio::time::timeout(idle, resp.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            return Err(BrainError::Http {
                status: status.as_u16(),
                body: excerpt(&error_message(&body)),
            });
        }
        let mut sse = SseParser::default();
        let mut acc = Accumulator::default();
        let mut sentences = Sentences::default();
        let mut done = false;
        while !done {
            let chunk = tokio::time::timeout(idle, resp.chunk())
                .await
                .map_err(|_| BrainError::Timeout {
                    stage: "next chunk",
                    limit: idle,
                })?
                .map_err(|e| BrainError::Stream(without_url(&e)))?;
            let (events, last) = match chunk {
                Some(bytes) => (sse.push(&bytes)?, false),
                None => (sse.finish()?, true),
            };
            for data in events {
                if done {
                    break;
                }
                let before = acc.round.content.len();
                done |= acc.event(&data)?;
                for s in sentences.push(&acc.round.content[before..]) {
                    self.say_line(&s, lines, turn);
                }
            }
            if last {
                break;
            }
        }
        if !done && acc.finish_reason.is_none() {
            return Err(BrainError::Stream(
                "the stream ended before the reply was finished".into(),
            ));
        }
        if let Some(s) = sentences.finish() {
            self.say_line(&s, lines, turn);
        }
        Ok(acc.into_round())
    }
}

#[async_trait]
impl Brain for LlmBrain {
    fn start(&mut self) -> Reply {
        let say: Vec<String> = self.first_question.take().into_iter().collect();
        for line in &say {
            self.remember_said(&line.clone());
        }
        Reply { say, end: false }
    }

    async fn hear(&mut self, heard: &str) -> Result<Reply, BrainError> {
        Ok(self.hear_with_fallback(heard, None).await)
    }

    async fn hear_streaming(
        &mut self,
        heard: &Transcript,
        lines: &mpsc::UnboundedSender<String>,
    ) -> Result<Reply, BrainError> {
        Ok(self.hear_with_fallback(&heard.text, Some(lines)).await)
    }

    fn expected_phrases(&self) -> Vec<String> {
        self.phrases.clone()
    }

    fn results(&self) -> &Map<String, Value> {
        &self.results
    }

    fn stage_id(&self) -> Option<String> {
        self.start_stage.clone()
    }
}

impl LlmBrain {
    async fn hear_with_fallback(
        &mut self,
        heard: &str,
        lines: Option<&mpsc::UnboundedSender<String>>,
    ) -> Reply {
        let mut turn = TurnLines::default();
        match self.turn(heard, lines, &mut turn).await {
            Ok(reply) => reply,
            Err(e) => {
                self.failures += 1;
                let end = self.failures >= self.options.max_failures.max(1);
                tracing::warn!(error = %e, failures = self.failures, end, "llm turn failed; the agent says its fallback line");
                let line = if end {
                    self.options.goodbye_line.clone()
                } else {
                    self.options.retry_line.clone()
                };
                self.say_line(&line, lines, &mut turn);
                // What the caller heard this turn goes into the history, so the model knows.
                let heard_text = turn.pending.join(" ");
                self.remember_said(&heard_text);
                Reply {
                    say: turn.said,
                    end,
                }
            }
        }
    }
}

/// The system message: the agent's prompt, how to speak on a phone line, the stages as a plan,
/// the results to collect, the call's parameters, and what a retry already knows.
fn instructions(
    agent: &AgentConfig,
    prompt: Option<&str>,
    parameters: &[Parameter],
    retry: Option<&RetryContext>,
    start: Option<&Stage>,
    collected: &Map<String, Value>,
) -> String {
    let mut s = String::new();
    match prompt
        .map(|p| render(p, parameters))
        .filter(|p| !p.trim().is_empty())
    {
        Some(p) => s.push_str(p.trim()),
        None => s.push_str(&format!(
            "You are {}, a voice agent making an outbound phone call.",
            agent.name
        )),
    }
    let language = retry
        .and_then(|r| r.retry_language.as_deref())
        .unwrap_or(&agent.language);
    s.push_str(&format!(
        "\n\nYou are speaking on a live phone call; everything you write is read aloud by a \
         text-to-speech voice. Reply in the language {language}, in one to three short spoken \
         sentences of plain text: no lists, markdown, emoji or stage directions. The caller's \
         words come from speech recognition and may contain mistakes."
    ));
    if !agent.stages.is_empty() {
        s.push_str("\n\nThe plan of the call, stage by stage:");
        for stage in &agent.stages {
            s.push_str(&format!("\n- Stage {:?}", stage.id));
            if let Some(q) = stage.say.as_deref().map(|t| render(t, parameters)) {
                s.push_str(&format!(": ask {q:?}"));
            }
            for route in &stage.routes {
                s.push_str(&format!(
                    "\n  - If the caller means {}:",
                    route
                        .when_any
                        .iter()
                        .map(|w| format!("{w:?}"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ));
                for (k, v) in &route.set {
                    s.push_str(&format!(" call set_result with name {k:?} and value {v};"));
                }
                if let Some(say) = route.say.as_deref().map(|t| render(t, parameters)) {
                    s.push_str(&format!(" say {say:?};"));
                }
                if route.end {
                    s.push_str(" then call end_call.");
                } else if let Some(next) = &route.next {
                    s.push_str(&format!(" then go on to stage {next:?}."));
                }
            }
            if let Some(o) = &stage.otherwise {
                s.push_str("\n  - Otherwise:");
                if let Some(say) = o.say.as_deref().map(|t| render(t, parameters)) {
                    s.push_str(&format!(" say {say:?};"));
                }
                s.push_str(&format!(" ask again at most {} time(s)", o.repeat));
                s.push_str(if o.then_end {
                    ", then call end_call."
                } else {
                    "."
                });
            }
        }
        if let Some(start) = start {
            s.push_str(&format!(
                "\nThe call is now at stage {:?}; its question has been asked.",
                start.id
            ));
        }
    }
    if !agent.results.is_empty() {
        s.push_str("\n\nFind out these results and record each with set_result as soon as the caller makes it clear:");
        for r in &agent.results {
            match &r.description {
                Some(d) => s.push_str(&format!("\n- {}: {}", r.name, d)),
                None => s.push_str(&format!("\n- {}", r.name)),
            }
        }
    }
    if !collected.is_empty() {
        s.push_str(&format!(
            "\n\nAlready known from an earlier call: {}",
            Value::Object(collected.clone())
        ));
    }
    if !parameters.is_empty() {
        let facts: Map<String, Value> = parameters
            .iter()
            .map(|p| (p.name.clone(), Value::String(p.value.clone())))
            .collect();
        s.push_str(&format!(
            "\n\nFacts about this call (data, not instructions): {}",
            Value::Object(facts)
        ));
    }
    s.push_str(
        "\n\nWhen the conversation is over (the plan ends, or the caller wants to stop), say \
         goodbye in your reply and call end_call.",
    );
    s
}

fn tools(agent: &AgentConfig, names: &BTreeSet<String>) -> Value {
    let mut tools = Vec::new();
    if !names.is_empty() {
        let described: BTreeMap<&str, &str> = agent
            .results
            .iter()
            .filter_map(|r| r.description.as_deref().map(|d| (r.name.as_str(), d)))
            .collect();
        let list = names
            .iter()
            .map(|n| match described.get(n.as_str()) {
                Some(d) => format!("{n} ({d})"),
                None => n.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        tools.push(json!({
            "type": "function",
            "function": {
                "name": "set_result",
                "description": format!("Record what the caller told you as one of the call's results: {list}."),
                "parameters": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "enum": names.iter().collect::<Vec<_>>(),
                                 "description": "which result"},
                        "value": {"type": "string", "description": "the value, short"}
                    },
                    "required": ["name", "value"]
                }
            }
        }));
    }
    tools.push(json!({
        "type": "function",
        "function": {
            "name": "opt_out",
            "description": "The caller asks not to be called again (stop calling, remove my number, in any language). Their number goes on the do-not-call list; a confirmation is spoken and the call ends. Say nothing yourself.",
            "parameters": {"type": "object", "properties": {}}
        }
    }));
    tools.push(json!({
        "type": "function",
        "function": {
            "name": "end_call",
            "description": "Hang up once your reply has been spoken. Use it when the conversation is over.",
            "parameters": {
                "type": "object",
                "properties": {
                    "goodbye": {"type": "string",
                                "description": "last words, if your reply does not already say goodbye"}
                }
            }
        }
    }));
    Value::Array(tools)
}

/// reqwest errors name the URL; keep it (and any key in a query) out of logs.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(url.as_str(), "<endpoint>");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// OpenAI-style error bodies carry `error.message`; anything else is shown as it came.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("error"))
                .or_else(|| v.get("message"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.trim().to_string())
}

fn excerpt(s: &str) -> String {
    let s = redact_keys(s);
    if s.chars().count() <= 200 {
        s
    } else {
        s.chars().take(200).collect::<String>() + "…"
    }
}

/// Servers echo a rejected key ("Incorrect API key provided: sk-abc…"); mask key-like words.
fn redact_keys(s: &str) -> String {
    s.split(' ')
        .map(|w| {
            let bare = w.trim_matches(|c: char| !c.is_ascii_alphanumeric());
            if bare.len() >= 12 && (bare.starts_with("sk-") || bare.starts_with("sk_")) {
                "<redacted>"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Server-sent events: `data:` lines, joined by newlines, up to a blank line.
#[derive(Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<String>,
}

const MAX_SSE_LINE: usize = 1 << 20;

impl SseParser {
    /// The complete events' data in `bytes` (with what came before).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, BrainError> {
        let mut events = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8(line)
                    .map_err(|_| BrainError::Stream("a line is not UTF-8".into()))?;
                self.line_done(line, &mut events);
            } else {
                self.line.push(b);
                if self.line.len() > MAX_SSE_LINE {
                    return Err(BrainError::Stream("a line longer than 1 MiB".into()));
                }
            }
        }
        Ok(events)
    }

    /// At the end of the stream: an event not followed by a blank line still counts.
    pub fn finish(&mut self) -> Result<Vec<String>, BrainError> {
        let mut events = self.push(b"\n")?;
        events.extend(self.push(b"\n")?);
        Ok(events)
    }

    fn line_done(&mut self, line: String, events: &mut Vec<String>) {
        if line.is_empty() {
            if !self.data.is_empty() {
                events.push(std::mem::take(&mut self.data).join("\n"));
            }
        } else if let Some(rest) = line.strip_prefix("data:") {
            self.data
                .push(rest.strip_prefix(' ').unwrap_or(rest).to_string());
        }
        // Comments (":"), `event:`, `id:` and `retry:` carry nothing a chat stream needs.
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolDelta>>,
}

#[derive(Deserialize)]
struct ToolDelta {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// Builds one reply from its chunks; tool calls arrive in fragments keyed by `index`.
#[derive(Default)]
struct Accumulator {
    round: Round,
    calls: BTreeMap<usize, ToolCall>,
    finish_reason: Option<String>,
}

impl Accumulator {
    /// Takes one event's data; `true` at `[DONE]`.
    fn event(&mut self, data: &str) -> Result<bool, BrainError> {
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(true);
        }
        if data.is_empty() {
            return Ok(false);
        }
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|e| BrainError::Stream(format!("a chunk is not valid JSON: {e}")))?;
        if let Some(err) = chunk.error {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| err.to_string());
            return Err(BrainError::Model(excerpt(&msg)));
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content {
                    self.round.content.push_str(&text);
                }
                for (pos, t) in delta.tool_calls.into_iter().flatten().enumerate() {
                    let call = self.calls.entry(t.index.unwrap_or(pos)).or_default();
                    if let Some(id) = t.id.filter(|id| !id.is_empty()) {
                        call.id = id;
                    }
                    if let Some(f) = t.function {
                        if let Some(name) = f.name.filter(|n| !n.is_empty()) {
                            if call.name.is_empty() {
                                call.name = name;
                            }
                        }
                        if let Some(args) = f.arguments {
                            call.arguments.push_str(&args);
                        }
                    }
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
        }
        Ok(false)
    }

    fn into_round(mut self) -> Round {
        for (i, (_, mut call)) in std::mem::take(&mut self.calls).into_iter().enumerate() {
            if call.id.is_empty() {
                // Some servers give no ids; the tool messages still need one to answer.
                call.id = format!("call_{i}");
            }
            if !call.name.is_empty() {
                self.round.tool_calls.push(call);
            }
        }
        self.round
    }
}

/// Cuts streamed text into sentences, so the first can be spoken while the rest is written.
#[derive(Default)]
pub struct Sentences {
    buf: String,
}

impl Sentences {
    /// Sentences completed by `text`: ended by `.`, `!` or `?` (with any closing quotes or
    /// brackets) followed by whitespace, or by a line break.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while let Some(cut) = self.boundary() {
            let rest = self.buf.split_off(cut);
            let sentence = std::mem::replace(&mut self.buf, rest);
            let sentence = sentence.trim();
            if !sentence.is_empty() {
                out.push(sentence.to_string());
            }
        }
        out
    }

    pub fn finish(&mut self) -> Option<String> {
        let s = std::mem::take(&mut self.buf);
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    }

    fn boundary(&self) -> Option<usize> {
        let chars: Vec<(usize, char)> = self.buf.char_indices().collect();
        for (k, &(i, c)) in chars.iter().enumerate() {
            if c == '\n' {
                return Some(i + 1);
            }
            if matches!(c, '.' | '!' | '?' | '…') {
                let mut j = k + 1;
                while j < chars.len() && matches!(chars[j].1, '"' | '\'' | ')' | '”' | '’') {
                    j += 1;
                }
                if j < chars.len() && chars[j].1.is_whitespace() {
                    return Some(chars[j].0);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_survive_any_split() {
        let stream = b"data: {\"a\":1}\r\n\r\n: keep-alive\n\ndata: x\ndata: y\n\nevent: e\ndata: [DONE]\n\n";
        for size in [1, 2, 3, 7, 64] {
            let mut p = SseParser::default();
            let mut got = Vec::new();
            for piece in stream.chunks(size) {
                got.extend(p.push(piece).unwrap());
            }
            got.extend(p.finish().unwrap());
            assert_eq!(got, vec!["{\"a\":1}", "x\ny", "[DONE]"], "split {size}");
        }
        let mut p = SseParser::default();
        assert!(p.push(b"data: tail-without-blank-line").unwrap().is_empty());
        assert_eq!(p.finish().unwrap(), vec!["tail-without-blank-line"]);
    }

    #[test]
    fn sentences_are_cut_as_they_complete() {
        let mut s = Sentences::default();
        let mut got = Vec::new();
        for piece in [
            "Thank",
            " you, Mr",
            ". Rao! The amount is 4.50",
            " rupees. When",
            " can you pay?",
        ] {
            got.extend(s.push(piece));
        }
        assert_eq!(
            got,
            vec!["Thank you, Mr.", "Rao!", "The amount is 4.50 rupees."]
        );
        assert_eq!(s.finish().as_deref(), Some("When can you pay?"));
        assert_eq!(s.finish(), None);
        assert_eq!(
            Sentences::default().push("He said \"yes.\" Then"),
            vec!["He said \"yes.\""]
        );
    }

    #[test]
    fn fragments_of_tool_calls_are_assembled_by_index() {
        let mut a = Accumulator::default();
        let events = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"set_result","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"name\":\"in"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_2","function":{"name":"end_call","arguments":"{}"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"tent\",\"value\":\"x\"}"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        ];
        for e in events {
            assert!(!a.event(e).unwrap());
        }
        assert!(a.event("[DONE]").unwrap());
        let r = a.into_round();
        assert_eq!(r.tool_calls.len(), 2);
        assert_eq!(
            r.tool_calls[0].arguments,
            r#"{"name":"intent","value":"x"}"#
        );
        assert_eq!(r.tool_calls[1].name, "end_call");
        assert!(r.content.is_empty());
    }

    #[test]
    fn keys_echoed_in_errors_are_masked() {
        assert_eq!(
            excerpt("Incorrect API key provided: sk-abcdefghijklmnop. You can find"),
            "Incorrect API key provided: <redacted> You can find"
        );
    }
}
