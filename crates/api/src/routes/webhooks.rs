//! Webhook targets of an agent and the delivery log (`spec/webhooks.md`).

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

use crate::input::ApiPath;
use crate::input::{
    json_object, page, positive_id, query_pairs, query_value, read_body, reject_unknown,
};
use crate::AppState;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use domain::webhooks::{
    AttemptRecord, DeliveryFilter, DeliveryId, DeliveryRecord, DeliveryStatus, NewWebhookTarget,
    OutboxEvent, WebhookTarget, WebhookTargetId, WebhookTargetPatch,
};
use domain::{AgentId, Millis, TenantId};
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use webhooks::guard::UrlPolicy;
use webhooks::{EventId, EventType, WebhookSecret};

/// Longest target name, in characters.
const MAX_NAME_CHARS: usize = 128;

/// The events a target may subscribe to; `webhook.test` is sent on request only.
const SUBSCRIBABLE: [EventType; 8] = [
    EventType::CallCompleted,
    EventType::CallFailed,
    EventType::CallBusy,
    EventType::CallNoAnswer,
    EventType::CallSocketFailure,
    EventType::CallTelephonyFailed,
    EventType::CallUnreachable,
    EventType::CallCanceled,
];

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookTargetView {
    pub webhook_target_id: i64,
    pub agent_id: i64,
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    pub include_transcript: bool,
    pub include_recording_url: bool,
    pub active: bool,
    pub created_at: String,
    pub updated_at: String,
    /// Only in the responses of create and rotate-secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookTargetResponse {
    pub data: WebhookTargetView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookTargetList {
    pub data: Vec<WebhookTargetView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    /// Unix ms.
    pub at: i64,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub webhook_delivery_id: i64,
    pub event_id: String,
    pub event_type: String,
    pub webhook_target_id: i64,
    pub conversation_id: Option<String>,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Unix ms; `null` once settled.
    pub next_attempt_at: Option<i64>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// Oldest first.
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryResponse {
    pub data: DeliveryView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub data: Vec<DeliveryView>,
    pub has_more: bool,
    pub total: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TestEventView {
    pub event_id: String,
    pub webhook_delivery_id: i64,
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TestEventResponse {
    pub data: TestEventView,
}

fn target_view(t: WebhookTarget, secret: Option<&WebhookSecret>) -> WebhookTargetView {
    WebhookTargetView {
        webhook_target_id: t.id.0,
        agent_id: t.agent.0,
        name: t.name,
        url: t.url,
        events: t.events,
        include_transcript: t.include_transcript,
        include_recording_url: t.include_recording_url,
        active: t.active,
        created_at: t.created_at.to_rfc3339_millis(),
        updated_at: t.updated_at.to_rfc3339_millis(),
        secret: secret.map(|s| s.expose().to_owned()),
    }
}

fn attempt_view(a: AttemptRecord) -> AttemptView {
    AttemptView {
        at: a.at.0,
        http_status: a.http_status,
        error: a.error,
        duration_ms: a.duration_ms,
    }
}

fn delivery_view(d: DeliveryRecord) -> DeliveryView {
    DeliveryView {
        webhook_delivery_id: d.id.0,
        event_id: d.event_id,
        event_type: d.event_type,
        webhook_target_id: d.target.0,
        conversation_id: d.conversation_id,
        status: d.status.as_str().to_owned(),
        next_attempt_at: d.next_attempt_at.map(|m| m.0),
        last_status: d.last_status,
        last_error: d.last_error,
        created_at: d.created_at.0,
        updated_at: d.updated_at.0,
        attempts: d.attempts.into_iter().map(attempt_view).collect(),
    }
}

fn agent_id(raw: &str) -> Result<AgentId, ApiError> {
    positive_id(raw, "agent_id")
        .map(AgentId)
        .map_err(|_| ApiError::NotFound("agent not found".into()))
}

fn target_id(raw: &str) -> Result<WebhookTargetId, ApiError> {
    positive_id(raw, "webhook_target_id")
        .map(WebhookTargetId)
        .map_err(|_| target_not_found())
}

fn target_not_found() -> ApiError {
    ApiError::NotFound("webhook target not found".into())
}

fn delivery_not_found() -> ApiError {
    ApiError::NotFound("webhook delivery not found".into())
}

/// The path's agent, when it is the caller's; everything under it is 404 `agent not found`
/// otherwise, whatever else is wrong with the request.
async fn own_agent(state: &AppState, tenant: TenantId, raw: &str) -> ApiResult<AgentId> {
    let id = agent_id(raw)?;
    state
        .store
        .get_agent(tenant, id)
        .await?
        .map(|a| a.id)
        .ok_or_else(|| ApiError::NotFound("agent not found".into()))
}

fn name(value: &Value) -> ApiResult<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() && s.chars().count() <= MAX_NAME_CHARS => {
            Ok(s.clone())
        }
        _ => Err(ApiError::invalid("name")),
    }
}

fn flag(value: &Value, field: &str) -> ApiResult<bool> {
    value.as_bool().ok_or_else(|| ApiError::invalid(field))
}

/// A non-empty list of subscribable event types without repeats, kept in the caller's order.
fn events(value: &Value) -> ApiResult<Vec<String>> {
    let invalid = || ApiError::invalid("events");
    let items = value
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(invalid)?;
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let kind = item
            .as_str()
            .and_then(|s| s.parse::<EventType>().ok())
            .filter(|k| SUBSCRIBABLE.contains(k))
            .ok_or_else(invalid)?;
        if out.iter().any(|e| e == kind.as_str()) {
            return Err(invalid());
        }
        out.push(kind.as_str().to_owned());
    }
    Ok(out)
}

fn secret(value: &Value) -> ApiResult<WebhookSecret> {
    value
        .as_str()
        .and_then(|s| WebhookSecret::parse(s).ok())
        .ok_or_else(|| ApiError::invalid("secret"))
}

async fn url(state: &AppState, value: &Value) -> ApiResult<String> {
    let raw = value.as_str().ok_or_else(|| ApiError::invalid("url"))?;
    let policy = UrlPolicy {
        allow_private: state.config.webhook_allow_private,
    };
    let url = policy
        .validate(raw)
        .await
        .map_err(|e| ApiError::Invalid(e.to_string()))?;
    Ok(url.to_string())
}

/// `null` for an optional field means "not given", as for `POST /v1/call`.
fn given<'a>(body: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    body.get(field).filter(|v| !v.is_null())
}

fn required<'a>(body: &'a Map<String, Value>, field: &str) -> ApiResult<&'a Value> {
    given(body, field).ok_or_else(|| ApiError::Invalid(format!("{field} is required")))
}

async fn read_optional_object(headers: &HeaderMap, body: Body) -> ApiResult<Map<String, Value>> {
    let bytes = read_body(headers, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    json_object(&bytes)
}

/// Add a webhook target to an agent (at most 5 per agent).
#[utoipa::path(post, path = "/v1/agents/{agent_id}/webhook-targets", tag = "webhooks",
    params(("agent_id" = i64, Path)),
    request_body(content = Object, description = "{name, url, secret?, events?, include_transcript?, include_recording_url?, active?}"),
    responses((status = 200, body = WebhookTargetResponse), (status = 400, body = crate::openapi::ErrorBody), (status = 404, description = "agent not found", body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_webhook_target(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(agent): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<WebhookTargetResponse>> {
    let body = read_optional_object(&headers, body).await?;
    reject_unknown(
        &body,
        &[
            "name",
            "url",
            "secret",
            "events",
            "include_transcript",
            "include_recording_url",
            "active",
        ],
    )?;
    let name = name(required(&body, "name")?)?;
    let url_value = required(&body, "url")?;
    let secret = given(&body, "secret")
        .map(secret)
        .transpose()?
        .unwrap_or_else(WebhookSecret::generate);
    let events = match given(&body, "events") {
        Some(v) => events(v)?,
        None => SUBSCRIBABLE.iter().map(|e| e.as_str().to_owned()).collect(),
    };
    let include_transcript = given(&body, "include_transcript")
        .map(|v| flag(v, "include_transcript"))
        .transpose()?
        .unwrap_or(false);
    let include_recording_url = given(&body, "include_recording_url")
        .map(|v| flag(v, "include_recording_url"))
        .transpose()?
        .unwrap_or(false);
    let active = given(&body, "active")
        .map(|v| flag(v, "active"))
        .transpose()?
        .unwrap_or(true);
    // Resolution is the slowest check, so it runs last among the fields.
    let url = url(&state, url_value).await?;
    let agent = own_agent(&state, caller.tenant, &agent).await?;
    let target = state
        .store
        .create_webhook_target(
            caller.tenant,
            agent,
            &NewWebhookTarget {
                name,
                url,
                secret: secret.expose().to_owned(),
                events,
                include_transcript,
                include_recording_url,
                active,
            },
            Millis::now(),
        )
        .await?;
    Ok(Json(WebhookTargetResponse {
        data: target_view(target, Some(&secret)),
    }))
}

/// An agent's webhook targets, oldest first (at most 5).
#[utoipa::path(get, path = "/v1/agents/{agent_id}/webhook-targets", tag = "webhooks",
    params(("agent_id" = i64, Path)),
    responses((status = 200, body = WebhookTargetList), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_webhook_targets(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(agent): ApiPath<String>,
) -> ApiResult<Json<WebhookTargetList>> {
    let agent = own_agent(&state, caller.tenant, &agent).await?;
    let targets = state
        .store
        .list_webhook_targets(caller.tenant, agent)
        .await?;
    Ok(Json(WebhookTargetList {
        data: targets.into_iter().map(|t| target_view(t, None)).collect(),
    }))
}

/// One webhook target (without its secret).
#[utoipa::path(get, path = "/v1/agents/{agent_id}/webhook-targets/{webhook_target_id}", tag = "webhooks",
    params(("agent_id" = i64, Path), ("webhook_target_id" = i64, Path)),
    responses((status = 200, body = WebhookTargetResponse), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_webhook_target(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((agent, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<WebhookTargetResponse>> {
    let agent = own_agent(&state, caller.tenant, &agent).await?;
    let target = state
        .store
        .get_webhook_target(caller.tenant, agent, target_id(&id)?)
        .await?
        .ok_or_else(target_not_found)?;
    Ok(Json(WebhookTargetResponse {
        data: target_view(target, None),
    }))
}

/// Change some fields of a target; the secret changes only through rotate-secret.
#[utoipa::path(patch, path = "/v1/agents/{agent_id}/webhook-targets/{webhook_target_id}", tag = "webhooks",
    params(("agent_id" = i64, Path), ("webhook_target_id" = i64, Path)),
    request_body(content = Object, description = "any of {name, url, events, include_transcript, include_recording_url, active}"),
    responses((status = 200, body = WebhookTargetResponse), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_webhook_target(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((agent, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<WebhookTargetResponse>> {
    let body = read_optional_object(&headers, body).await?;
    reject_unknown(
        &body,
        &[
            "name",
            "url",
            "events",
            "include_transcript",
            "include_recording_url",
            "active",
        ],
    )?;
    // Every given field must hold a value: none of a target's fields can be cleared.
    let field = |f: &str| -> ApiResult<Option<&Value>> {
        match body.get(f) {
            Some(Value::Null) => Err(ApiError::invalid(f)),
            other => Ok(other),
        }
    };
    let mut patch = WebhookTargetPatch {
        name: field("name")?.map(name).transpose()?,
        url: None,
        events: field("events")?.map(events).transpose()?,
        include_transcript: field("include_transcript")?
            .map(|v| flag(v, "include_transcript"))
            .transpose()?,
        include_recording_url: field("include_recording_url")?
            .map(|v| flag(v, "include_recording_url"))
            .transpose()?,
        active: field("active")?.map(|v| flag(v, "active")).transpose()?,
    };
    if let Some(v) = field("url")? {
        patch.url = Some(url(&state, v).await?);
    }
    let agent = own_agent(&state, caller.tenant, &agent).await?;
    let target = state
        .store
        .update_webhook_target(caller.tenant, agent, target_id(&id)?, &patch, Millis::now())
        .await?;
    Ok(Json(WebhookTargetResponse {
        data: target_view(target, None),
    }))
}

/// Delete a target; its pending deliveries fail, its delivery log stays readable.
#[utoipa::path(delete, path = "/v1/agents/{agent_id}/webhook-targets/{webhook_target_id}", tag = "webhooks",
    params(("agent_id" = i64, Path), ("webhook_target_id" = i64, Path)),
    responses((status = 200, body = Object), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_webhook_target(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((agent, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let agent = own_agent(&state, caller.tenant, &agent).await?;
    let id = target_id(&id)?;
    if !state
        .store
        .delete_webhook_target(caller.tenant, agent, id, Millis::now())
        .await?
    {
        return Err(target_not_found());
    }
    Ok(Json(
        json!({"data": {"webhook_target_id": id.0, "deleted": true}}),
    ))
}

/// Replace the target's secret (the caller's `secret`, or a generated one); the old secret keeps
/// signing beside the new one for 24 hours.
#[utoipa::path(post, path = "/v1/agents/{agent_id}/webhook-targets/{webhook_target_id}/rotate-secret", tag = "webhooks",
    params(("agent_id" = i64, Path), ("webhook_target_id" = i64, Path)),
    request_body(content = Object, description = "{secret?}; the body may be empty"),
    responses((status = 200, body = WebhookTargetResponse), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn rotate_webhook_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((agent, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<WebhookTargetResponse>> {
    let body = read_optional_object(&headers, body).await?;
    reject_unknown(&body, &["secret"])?;
    let secret = given(&body, "secret")
        .map(secret)
        .transpose()?
        .unwrap_or_else(WebhookSecret::generate);
    let agent = own_agent(&state, caller.tenant, &agent).await?;
    let target = state
        .store
        .rotate_webhook_secret(
            caller.tenant,
            agent,
            target_id(&id)?,
            secret.expose(),
            Millis::now(),
        )
        .await?;
    Ok(Json(WebhookTargetResponse {
        data: target_view(target, Some(&secret)),
    }))
}

/// Send a `webhook.test` event to this target now (whatever events it subscribed to).
#[utoipa::path(post, path = "/v1/agents/{agent_id}/webhook-targets/{webhook_target_id}/test", tag = "webhooks",
    params(("agent_id" = i64, Path), ("webhook_target_id" = i64, Path)),
    responses((status = 200, body = TestEventResponse), (status = 400, description = "webhook target is not active", body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn test_webhook_target(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((agent, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<TestEventResponse>> {
    let agent = own_agent(&state, caller.tenant, &agent).await?;
    let target = target_id(&id)?;
    let event_id = EventId::generate();
    let now = Millis::now();
    let payload = json!({
        "event_id": event_id.as_str(),
        "event_type": EventType::WebhookTest.as_str(),
        "timestamp": now.to_rfc3339_millis(),
        "data": {
            "agent_id": agent.0,
            "webhook_target_id": target.0,
            "message": "This is a test event from outdial.",
        },
    });
    let event = OutboxEvent {
        event_id: event_id.as_str().to_owned(),
        event_type: EventType::WebhookTest.as_str().to_owned(),
        tenant: caller.tenant,
        agent,
        conversation_id: None,
        // Its own chain: a test never waits behind, or holds up, a conversation's events.
        chain_id: event_id.as_str().to_owned(),
        payload,
        created_at: now,
    };
    let delivery = state.store.enqueue_test_event(target, &event).await?;
    state.config.webhook_wake.notify_one();
    Ok(Json(TestEventResponse {
        data: TestEventView {
            event_id: event.event_id,
            webhook_delivery_id: delivery.0,
            status: DeliveryStatus::Pending.as_str().to_owned(),
        },
    }))
}

/// The delivery log, newest first, each delivery with its attempts.
/// The `status` filter's values, for the API description (parsed by `DeliveryStatus::parse`).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum DeliveryStatusQuery {
    Pending,
    Delivered,
    Failed,
}

#[utoipa::path(get, path = "/v1/webhook-deliveries", tag = "webhooks",
    params(("conversation_id" = Option<String>, Query), ("webhook_target_id" = Option<i64>, Query),
        ("status" = Option<DeliveryStatusQuery>, Query, description = "pending, delivered or failed"),
        ("limit" = Option<u32>, Query), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = DeliveryList), (status = 400, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_webhook_deliveries(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<DeliveryList>> {
    let pairs = query_pairs(raw.as_deref());
    let page = page(&pairs)?;
    let filter = DeliveryFilter {
        // A malformed id is the client's mistake, not a filter that matches nothing.
        conversation_id: query_value(&pairs, "conversation_id")
            .map(|v| {
                v.parse::<domain::call::ConversationId>()
                    .map(|id| id.to_string())
                    .map_err(|_| ApiError::invalid("conversation_id"))
            })
            .transpose()?,
        target: query_value(&pairs, "webhook_target_id")
            .map(|v| positive_id(v, "webhook_target_id").map(WebhookTargetId))
            .transpose()?,
        status: query_value(&pairs, "status")
            .map(|v| DeliveryStatus::parse(v).ok_or_else(|| ApiError::invalid("status")))
            .transpose()?,
    };
    let listed = state
        .store
        .list_deliveries(caller.tenant, &filter, page)
        .await?;
    Ok(Json(DeliveryList {
        has_more: listed.has_more(page),
        total: listed.total,
        data: listed.items.into_iter().map(delivery_view).collect(),
    }))
}

/// Attempt one delivery again now (it becomes pending if it was settled).
#[utoipa::path(post, path = "/v1/webhook-deliveries/{webhook_delivery_id}/retry", tag = "webhooks",
    params(("webhook_delivery_id" = i64, Path)),
    responses((status = 200, body = DeliveryResponse), (status = 400, description = "webhook target is not active", body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn retry_webhook_delivery(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<DeliveryResponse>> {
    let id = positive_id(&id, "webhook_delivery_id")
        .map(DeliveryId)
        .map_err(|_| delivery_not_found())?;
    let delivery = state
        .store
        .retry_delivery(caller.tenant, id, Millis::now())
        .await?;
    state.config.webhook_wake.notify_one();
    Ok(Json(DeliveryResponse {
        data: delivery_view(delivery),
    }))
}
