//! The `call.<outcome>` event of a conversation that reached a terminal status, built from the
//! conversation as stored, for the outbox row written in the same transaction.

use super::event::{
    self, CallData, CallParameters, CallRetry, Envelope, EventData, EventId, EventType, Role,
};
use crate::call::Conversation;
use crate::webhooks::OutboxEvent;
use crate::AgentConfig;
use crate::Millis;
use serde_json::{Map, Value};

/// Why no event could be built.
#[derive(Debug, thiserror::Error)]
pub enum TerminalEventError {
    /// Only terminal statuses have events.
    #[error("status {0} has no webhook event")]
    NotTerminal(String),
    /// The service's public URL does not parse, so no recording URL can be made.
    #[error("public url: {0}")]
    PublicUrl(String),
    /// The envelope would not serialise.
    #[error("envelope: {0}")]
    Json(#[from] serde_json::Error),
}

/// Builds the envelope with the transcript and recording URL filled in; each target's opt-outs
/// are applied when it is sent.
///
/// `agent` (`None` once deleted) gives the chain's length (`retry_policy.max_attempts`, 1
/// without a policy) and what the next attempt's `retry_context` offers; `next_retry_at` is
/// when the next attempt is due, `None` when this is the last one.
pub fn terminal_event(
    c: &Conversation,
    agent: Option<&AgentConfig>,
    next_retry_at: Option<Millis>,
    public_url: &str,
    now: Millis,
) -> Result<OutboxEvent, TerminalEventError> {
    let max_attempts = agent
        .and_then(|a| a.retry_policy.as_ref())
        .map_or(1, |p| p.max_attempts);
    let event_type: EventType = format!("call.{}", c.status.as_str())
        .parse()
        .map_err(|_| TerminalEventError::NotTerminal(c.status.to_string()))?;
    let parameters: Map<String, Value> = c
        .parameters
        .iter()
        .map(|p| (p.name.clone(), Value::String(p.value.clone())))
        .collect();
    let recording_url = match &c.recording_path {
        Some(_) => {
            let base = url::Url::parse(public_url)
                .map_err(|e| TerminalEventError::PublicUrl(e.to_string()))?;
            Some(
                event::recording_url(&base, &c.id.to_string())
                    .map_err(|e| TerminalEventError::PublicUrl(e.to_string()))?
                    .to_string(),
            )
        }
        None => None,
    };
    let turns = c.transcript.iter().map(|t| {
        let role = match t.role {
            crate::call::Speaker::Agent => Role::Bot,
            crate::call::Speaker::Human => Role::Human,
        };
        (role, t.message.as_str())
    });
    let ctx = c.next_retry_context(agent);
    let envelope = Envelope {
        event_id: EventId::generate(),
        event_type,
        timestamp: now.to_datetime(),
        data: EventData {
            call: CallData {
                agent_id: c.agent.0,
                call_parameters: CallParameters::new(parameters),
                conversation_id: c.id.to_string(),
                duration_seconds: c.duration_seconds.and_then(|d| u64::try_from(d).ok()),
                started_at: c.started_at.map(Millis::to_datetime),
                ended_at: c.ended_at.map(Millis::to_datetime),
                failure_reason: c.failure_reason.clone(),
                from_phone: c.from_number.clone(),
                to_phone: c.contact_number.clone(),
                recording_url,
                status: c.status.as_str().to_string(),
                trace_id: c.trace_id.to_string(),
                metadata: c.metadata.clone(),
                batch_id: c.batch_id,
                answered_by: c.answered_by,
            },
            results: c.results.clone(),
            retry: CallRetry {
                attempt_number: c.id.attempt,
                is_final_attempt: next_retry_at.is_none(),
                max_attempts: max_attempts.max(c.id.attempt),
                next_retry_at: next_retry_at.map(Millis::to_datetime),
            },
            retry_context: event::RetryContext {
                collected_data: ctx.collected_data.unwrap_or_default(),
                retry_initial_message: ctx.retry_initial_message,
                retry_language: ctx.retry_language,
                retry_stage_id: ctx.retry_stage_id,
            },
            transcript: Some(event::transcript(turns)),
        },
    };
    Ok(OutboxEvent {
        event_id: envelope.event_id.as_str().to_string(),
        event_type: envelope.event_type.as_str().to_string(),
        tenant: c.tenant,
        agent: c.agent,
        conversation_id: Some(c.id.to_string()),
        chain_id: c.id.chain.to_string(),
        payload: serde_json::to_value(&envelope)?,
        created_at: now,
    })
}
