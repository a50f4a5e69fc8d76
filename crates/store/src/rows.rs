//! Row <-> domain mapping. Values read back were parsed before they were written, so a value
//! that does not parse now means the database was changed behind our back: `Corrupt`.

use crate::exec::{Column, RowRead};
use domain::call::{
    AnsweredBy, CallLatency, Conversation, Parameter, RetryContext, TranscriptItem, Transfer,
};
use domain::store::StoreError;
use domain::{AgentId, CallStatus, ConversationId, Millis, TenantId, TraceId};

pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

pub(crate) fn get<T: Column>(row: &impl RowRead, col: &str) -> Result<T, StoreError> {
    row.read(col)
}

pub(crate) fn json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|_| corrupt(what))
}

pub(crate) const CONVERSATION_COLUMNS: &str = "id, tenant_id, agent_id, status, customer_phone, \
    from_phone, parameters, metadata, retry_context, scheduled_for, trace_id, failure_reason, \
    results, transcript, recording_path, created_at, started_at, ended_at, duration_seconds, batch_id, \
    latency, stage_id, answered_by, transfer";

pub(crate) fn conversation(row: &impl RowRead) -> Result<Conversation, StoreError> {
    let id: String = get(row, "id")?;
    let status: String = get(row, "status")?;
    let trace: String = get(row, "trace_id")?;
    let parameters: String = get(row, "parameters")?;
    let retry_context: Option<String> = get(row, "retry_context")?;
    let results: String = get(row, "results")?;
    let transcript: String = get(row, "transcript")?;
    let recording: Option<String> = get(row, "recording_path")?;
    let latency: Option<String> = get(row, "latency")?;
    let transfer: Option<String> = get(row, "transfer")?;
    Ok(Conversation {
        id: id
            .parse::<ConversationId>()
            .map_err(|_| corrupt("calls.id"))?,
        tenant: TenantId(get(row, "tenant_id")?),
        agent: AgentId(get(row, "agent_id")?),
        status: CallStatus::parse(&status).ok_or_else(|| corrupt("calls.status"))?,
        contact_number: get(row, "customer_phone")?,
        from_number: get(row, "from_phone")?,
        parameters: json::<Vec<Parameter>>(&parameters, "calls.parameters")?,
        metadata: get(row, "metadata")?,
        retry_context: retry_context
            .map(|s| json::<RetryContext>(&s, "calls.retry_context"))
            .transpose()?,
        scheduled_for: get::<Option<i64>>(row, "scheduled_for")?.map(Millis),
        trace_id: trace
            .parse::<TraceId>()
            .map_err(|_| corrupt("calls.trace_id"))?,
        failure_reason: get(row, "failure_reason")?,
        results: json(&results, "calls.results")?,
        transcript: json::<Vec<TranscriptItem>>(&transcript, "calls.transcript")?,
        recording_path: recording,
        created_at: Millis(get(row, "created_at")?),
        started_at: get::<Option<i64>>(row, "started_at")?.map(Millis),
        ended_at: get::<Option<i64>>(row, "ended_at")?.map(Millis),
        duration_seconds: get(row, "duration_seconds")?,
        batch_id: get(row, "batch_id")?,
        latency: latency
            .map(|s| json::<CallLatency>(&s, "calls.latency"))
            .transpose()?,
        stage_id: get(row, "stage_id")?,
        answered_by: get::<Option<String>>(row, "answered_by")?
            .map(|s| AnsweredBy::parse(&s).ok_or_else(|| corrupt("calls.answered_by")))
            .transpose()?,
        transfer: transfer
            .map(|s| json::<Transfer>(&s, "calls.transfer"))
            .transpose()?,
    })
}

/// An agent's stored configuration, as the settlement paths read it (`agents.config`): `None`
/// for no row; one that no longer parses (an older shape) is treated as absent, so a settlement
/// never fails on it.
pub(crate) fn agent_config(
    config: Option<String>,
) -> Result<Option<domain::AgentConfig>, StoreError> {
    Ok(config
        .map(|c| json::<serde_json::Map<String, serde_json::Value>>(&c, "agents.config"))
        .transpose()?
        .and_then(|m| domain::AgentConfig::from_json(&m).ok()))
}
