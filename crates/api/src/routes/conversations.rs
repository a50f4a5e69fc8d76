//! Conversations: one per attempt.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::input::ApiPath;
use crate::input::{page, positive_id, query_pairs, query_value};
use crate::routes::transcription::UtteranceView;
use crate::AppState;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use domain::call::Conversation;
use domain::dispatch::CancelOutcome;
use domain::transcription::Job;
use domain::{AgentId, ConversationId};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationItem {
    pub agent_id: i64,
    pub contact_number: String,
    pub conversation_id: String,
    pub duration_seconds: Option<i64>,
    /// Unix milliseconds; `null` until dialling starts.
    pub start_timestamp: Option<i64>,
    /// Unix milliseconds; `null` until the call ends.
    pub end_timestamp: Option<i64>,
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TranscriptLine {
    pub role: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationDetail {
    #[serde(flatten)]
    pub item: ConversationItem,
    pub failure_reason: Option<String>,
    #[schema(value_type = Object)]
    pub results: Map<String, Value>,
    pub trace_id: String,
    pub transcript: Vec<TranscriptLine>,
    pub metadata: Option<String>,
    /// RFC 3339, UTC; `null` for immediate calls.
    pub scheduled_for: Option<String>,
    /// `null` until a recording exists.
    pub recording_url: Option<String>,
    pub attempt: u32,
    /// Ours: the batch the call belongs to; `null` for a call made with `POST /v1/call`.
    pub batch_id: Option<i64>,
    /// Ours: how quickly the agent answered; `null` for calls nobody talked on.
    pub latency: Option<LatencyDetail>,
    /// Ours: `human`, `machine` or `unknown` (the answering-machine detector's verdict);
    /// `null` for a call never answered.
    #[schema(value_type = Option<String>)]
    pub answered_by: Option<domain::call::AnsweredBy>,
    /// Ours: the hand-over to a person; `null` when none was tried.
    pub transfer: Option<TransferDetail>,
    /// Ours: the call's recording transcribed again after the call, when its agent asks for it
    /// (`post_call_transcript: true`) and the call has a recording; `null` otherwise.
    pub post_call_transcript: Option<PostCallTranscript>,
}

/// Ours: a post-call transcript, made by the transcription jobs' recogniser from the call's
/// recording (one channel per side), beside the live `transcript`. Its failure is its own: the
/// call's status and results never change with it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PostCallTranscript {
    /// `pending`, `processing`, `completed` or `failed`.
    pub status: String,
    /// The recogniser, e.g. `whisper-base`.
    pub engine: String,
    /// The language heard: the call's own (e.g. `en-US`) when that is what was heard; `null`
    /// until completed.
    pub language: Option<String>,
    /// Every utterance's text in time order; `null` until completed.
    pub text: Option<String>,
    /// Empty until completed.
    pub utterances: Vec<UtteranceView>,
    /// Only when `failed`: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Only when something was not done as usual (a one-channel recording: no speakers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Unix milliseconds; `null` until completed or failed.
    pub completed_at: Option<i64>,
}

fn post_call(job: Job) -> PostCallTranscript {
    PostCallTranscript {
        status: job.status.as_str().to_string(),
        engine: job.engine,
        language: job.language,
        text: job.text,
        utterances: job
            .utterances
            .into_iter()
            .map(UtteranceView::from)
            .collect(),
        error: job.error,
        note: job.note,
        completed_at: job.completed_at.map(|m| m.0),
    }
}

/// Ours (`agents.md`, "Transfer to a person"). `at` is when the outcome was known, in ms since
/// the epoch like `start_timestamp`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferDetail {
    /// The target's name in the agent's `transfer.targets`.
    pub target: String,
    /// E.164.
    pub number: String,
    /// `refer` or `bridge`.
    pub method: String,
    /// `connected` or `failed`.
    pub status: String,
    pub at: i64,
}

/// Ours. Voice-to-voice is the caller stopping speaking -> the first packet of the agent's
/// reply, per turn; quantiles are nearest-rank over the call's turns.
#[derive(Debug, Serialize, ToSchema)]
pub struct LatencyDetail {
    pub turns: usize,
    pub voice_to_voice_p50_ms: Option<u64>,
    pub voice_to_voice_p95_ms: Option<u64>,
    pub turns_ms: Vec<u64>,
    pub answer_to_first_word_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationList {
    pub data: Vec<ConversationItem>,
    pub has_more: bool,
    pub total: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationResponse {
    pub data: ConversationDetail,
}

fn item(c: &Conversation) -> ConversationItem {
    ConversationItem {
        agent_id: c.agent.0,
        contact_number: c.contact_number.clone(),
        conversation_id: c.id.to_string(),
        duration_seconds: c.duration_seconds,
        start_timestamp: c.started_at.map(|m| m.0),
        end_timestamp: c.ended_at.map(|m| m.0),
        status: c.status.as_str().to_string(),
    }
}

/// The conversation as answered; `post_call_job` is its post-call transcript's job, if any.
pub fn detail(c: Conversation, public_url: &str, post_call_job: Option<Job>) -> ConversationDetail {
    ConversationDetail {
        item: item(&c),
        failure_reason: c.failure_reason,
        results: c.results,
        trace_id: c.trace_id.to_string(),
        transcript: c
            .transcript
            .into_iter()
            .map(|t| TranscriptLine {
                role: t.role.as_str().into(),
                message: t.message,
            })
            .collect(),
        metadata: c.metadata,
        scheduled_for: c.scheduled_for.map(|m| m.to_rfc3339()),
        recording_url: c
            .recording_path
            .as_ref()
            .map(|_| format!("{public_url}/v1/conversations/{}/recording", c.id)),
        attempt: c.id.attempt,
        batch_id: c.batch_id,
        latency: c.latency.map(|l| LatencyDetail {
            turns: l.turns_ms.len(),
            voice_to_voice_p50_ms: l.turn_quantile_ms(0.5),
            voice_to_voice_p95_ms: l.turn_quantile_ms(0.95),
            answer_to_first_word_ms: l.answer_to_first_word_ms,
            turns_ms: l.turns_ms,
        }),
        answered_by: c.answered_by,
        transfer: c.transfer.map(|t| TransferDetail {
            target: t.target,
            number: t.number.to_string(),
            method: t.method.as_str().into(),
            status: t.status.as_str().into(),
            at: t.at.0,
        }),
        post_call_transcript: post_call_job.map(post_call),
    }
}

/// An id that cannot exist is reported like one that does not: not found.
pub fn conversation_id(raw: &str) -> Result<ConversationId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound("conversation not found".into()))
}

/// List conversations, newest first.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations",
    params(
        ("agent_id" = Option<i64>, Query, description = "Only this agent's conversations"),
        ("limit" = Option<u32>, Query, description = "1..=100, default 20"),
        ("offset" = Option<u64>, Query, description = "default 0"),
    ),
    responses((status = 200, body = ConversationList), (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_conversations(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<ConversationList>> {
    let pairs = query_pairs(raw.as_deref());
    let agent = query_value(&pairs, "agent_id")
        .map(|v| positive_id(v, "agent_id").map(AgentId))
        .transpose()?;
    let page = page(&pairs)?;
    let listed = state
        .store
        .list_conversations(caller.tenant, agent, page)
        .await?;
    Ok(Json(ConversationList {
        has_more: listed.has_more(page),
        total: listed.total,
        data: listed.items.iter().map(item).collect(),
    }))
}

/// One conversation with its transcript and results.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}", tag = "conversations",
    params(("conversation_id" = String, Path, description = "`<uuid>_<attempt>`")),
    responses((status = 200, body = ConversationResponse), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_conversation(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ConversationResponse>> {
    let id = conversation_id(&id)?;
    let c = state
        .store
        .get_conversation(caller.tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("conversation not found".into()))?;
    let post_call_job = state.store.post_call_transcript(caller.tenant, id).await?;
    Ok(Json(ConversationResponse {
        data: detail(c, &state.config.public_url, post_call_job),
    }))
}

/// The call's recording as WAV: stereo, the agent's side on the left channel and the person
/// called on the right (a player mixes them).
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/recording", tag = "conversations",
    params(("conversation_id" = String, Path)),
    responses((status = 200, content_type = "audio/wav", description = "WAV audio"), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_recording(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let id = conversation_id(&id)?;
    let c = state
        .store
        .get_conversation(caller.tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("conversation not found".into()))?;
    let missing = || ApiError::NotFound("recording not found".into());
    let path = c.recording_path.ok_or_else(missing)?;
    let bytes = tokio::fs::read(&path).await.map_err(|_| missing())?;
    Ok(([(header::CONTENT_TYPE, "audio/wav")], bytes).into_response())
}

/// Cancel a `scheduled` or `queued` call (ours). Once dialling has begun: 409 `call already started`.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/cancel", tag = "conversations",
    params(("conversation_id" = String, Path)),
    responses((status = 200, body = ConversationResponse), (status = 404, body = crate::openapi::ErrorBody), (status = 409, description = "call already started", body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_conversation(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ConversationResponse>> {
    let id = conversation_id(&id)?;
    match state
        .store
        .cancel_call(caller.tenant, id, domain::Millis::now())
        .await?
    {
        CancelOutcome::Canceled(c) => {
            tracing::info!(conversation_id = %id, "call canceled");
            Ok(Json(ConversationResponse {
                // Never dialled: no recording, so no post-call transcript.
                data: detail(*c, &state.config.public_url, None),
            }))
        }
        CancelOutcome::AlreadyStarted => Err(ApiError::Conflict("call already started".into())),
        CancelOutcome::NotFound => Err(ApiError::NotFound("conversation not found".into())),
    }
}
