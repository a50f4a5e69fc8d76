//! `POST /v1/call`.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, REQUEST_TRACE};
use crate::input::{read_json_object, reject_unknown};
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use domain::agent::is_language_tag;
use domain::call::{parse_scheduled_for, NewCall, Parameter, RetryContext};
use domain::{AgentId, ConversationId, Millis, TraceId, E164};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashSet;
use utoipa::ToSchema;

pub const MAX_PARAMETERS: usize = 100;
pub const MAX_PARAMETER_NAME: usize = 128;
pub const MAX_PARAMETER_VALUE: usize = 4096;
pub const MAX_IDEMPOTENCY_KEY: usize = 255;
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

const KNOWN_FIELDS: [&str; 7] = [
    "agent_id",
    "parameters",
    "conversation_id",
    "idempotency_key",
    "metadata",
    "retry_context",
    "scheduled_for",
];

/// `null` is how FormantAI's clients say "not given" for optional fields.
fn present<'a>(body: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    body.get(field).filter(|v| !v.is_null())
}

fn optional_string<'a>(
    body: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match present(body, field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(field)),
    }
}

fn parameters(v: &Value) -> Result<Vec<Parameter>, ApiError> {
    let bad = || ApiError::invalid("parameters");
    let items = v.as_array().ok_or_else(bad)?;
    if items.len() > MAX_PARAMETERS {
        return Err(bad());
    }
    let mut seen = HashSet::new();
    items
        .iter()
        .map(|item| {
            let obj = item.as_object().filter(|o| o.len() == 2).ok_or_else(bad)?;
            let (Some(Value::String(name)), Some(Value::String(value))) =
                (obj.get("name"), obj.get("value"))
            else {
                return Err(bad());
            };
            let name_ok = !name.is_empty() && name.chars().count() <= MAX_PARAMETER_NAME;
            if !name_ok || value.chars().count() > MAX_PARAMETER_VALUE || !seen.insert(name.clone())
            {
                return Err(bad());
            }
            Ok(Parameter {
                name: name.clone(),
                value: value.clone(),
            })
        })
        .collect()
}

fn retry_context(v: &Value) -> Result<RetryContext, ApiError> {
    let ctx: RetryContext =
        serde_json::from_value(v.clone()).map_err(|_| ApiError::invalid("retry_context"))?;
    let language_ok = ctx.retry_language.as_deref().is_none_or(is_language_tag);
    let sizes_ok = ctx
        .retry_initial_message
        .as_ref()
        .is_none_or(|m| m.len() <= MAX_PARAMETER_VALUE)
        && ctx
            .retry_stage_id
            .as_ref()
            .is_none_or(|s| !s.is_empty() && s.len() <= MAX_PARAMETER_NAME);
    if !language_ok || !sizes_ok {
        return Err(ApiError::invalid("retry_context"));
    }
    Ok(ctx)
}

/// Turns a request body into a [`NewCall`], checking fields in the contract's order so the
/// first problem a client sees is the one the contract names.
pub fn parse_call_request(
    body: &Map<String, Value>,
    caller: Caller,
    trace_id: TraceId,
    now: Millis,
) -> Result<NewCall, ApiError> {
    let agent = match present(body, "agent_id") {
        None => return Err(ApiError::Invalid("agent_id is required".into())),
        Some(v) => v
            .as_i64()
            .filter(|n| *n > 0)
            .map(AgentId)
            .ok_or_else(|| ApiError::invalid("agent_id"))?,
    };
    let parameters = match present(body, "parameters") {
        None => return Err(ApiError::Invalid("parameters is required".into())),
        Some(v) => parameters(v)?,
    };
    let phone = parameters
        .iter()
        .find(|p| p.name == "customer_phone")
        .ok_or_else(|| ApiError::Invalid("customer_phone parameter is required".into()))?;
    let customer_phone =
        E164::parse(&phone.value).map_err(|_| ApiError::invalid("customer_phone"))?;

    let continues = optional_string(body, "conversation_id")?
        .map(|s| {
            s.parse::<ConversationId>()
                .map_err(|_| ApiError::invalid("conversation_id"))
        })
        .transpose()?;
    let idempotency_key = optional_string(body, "idempotency_key")?
        .map(|k| {
            let n = k.chars().count();
            if (1..=MAX_IDEMPOTENCY_KEY).contains(&n) {
                Ok(k.to_string())
            } else {
                Err(ApiError::invalid("idempotency_key"))
            }
        })
        .transpose()?;
    let metadata = optional_string(body, "metadata")?
        .map(|m| {
            if m.len() <= MAX_METADATA_BYTES {
                Ok(m.to_string())
            } else {
                Err(ApiError::invalid("metadata"))
            }
        })
        .transpose()?;
    let retry_context = present(body, "retry_context")
        .map(retry_context)
        .transpose()?;
    let scheduled_for = match present(body, "scheduled_for") {
        None => None,
        Some(Value::String(s)) => {
            Some(parse_scheduled_for(s, now).map_err(|_| ApiError::invalid("scheduled_for"))?)
        }
        Some(_) => return Err(ApiError::invalid("scheduled_for")),
    };
    // A misspelt field (say `schedule_for`) must not silently turn into a call placed now.
    reject_unknown(body, &KNOWN_FIELDS)?;
    Ok(NewCall {
        tenant: caller.tenant,
        agent,
        customer_phone,
        parameters,
        continues,
        idempotency_key,
        metadata,
        retry_context,
        scheduled_for,
        trace_id,
        now,
    })
}

/// `data` of the 200 answer, exactly FormantAI's five fields.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallAccepted {
    pub agent_id: i64,
    /// The request's `conversation_id`, echoed (`null` when not given).
    pub conversation_id: Option<String>,
    /// The request's `scheduled_for`, normalised to UTC (`null` when not given).
    pub scheduled_for: Option<String>,
    /// `initiated` or `scheduled`.
    pub status: String,
    pub trace_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CallAcceptedResponse {
    pub data: CallAccepted,
}

/// Request body of `POST /v1/call` (documentation shape; parsing is by hand for exact errors).
#[derive(Debug, Serialize, ToSchema)]
pub struct CallRequestDoc {
    pub agent_id: i64,
    /// `{name, value}` pairs; must include `customer_phone` (E.164).
    pub parameters: Vec<ParameterDoc>,
    pub conversation_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub metadata: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub retry_context: Option<Value>,
    /// RFC 3339 with a zone, in the future, at most 30 days ahead.
    pub scheduled_for: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ParameterDoc {
    pub name: String,
    pub value: String,
}

/// Start one outbound call.
///
/// The call is durable before this answers. The new conversation's id is in the `Location`
/// header (ours; the body is FormantAI's exactly).
/// A retry in another language must be one the agent's engines speak and hear, or the callee
/// is greeted in a language the agent then cannot understand. Only calls that name a
/// `retry_language` read the agent here; an unknown agent is left to the write, which answers
/// `agent not found` as for any call.
async fn check_retry_language(state: &AppState, call: &NewCall) -> Result<(), ApiError> {
    let Some(language) = call
        .retry_context
        .as_ref()
        .and_then(|r| r.retry_language.as_deref())
    else {
        return Ok(());
    };
    match state.store.get_agent(call.tenant, call.agent).await? {
        Some(agent) if !state.config.languages.serves(&agent.config, language) => {
            Err(ApiError::UnsupportedRetryLanguage)
        }
        _ => Ok(()),
    }
}

#[utoipa::path(post, path = "/v1/call", tag = "calls", request_body = CallRequestDoc,
    responses(
        (status = 200, description = "Call accepted", body = CallAcceptedResponse),
        (status = 400, description = "Invalid request", body = crate::openapi::ErrorBody),
        (status = 401, description = "Invalid or missing API key", body = crate::openapi::ErrorBody),
        (status = 404, description = "Agent or conversation not found", body = crate::openapi::ErrorBody),
        (status = 409, description = "Idempotency key already used", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = crate::openapi::ErrorBody),
        (status = 429, description = "Rate or concurrency limit", body = crate::openapi::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create_call(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = read_json_object(&headers, body).await?;
    let trace_id = REQUEST_TRACE.try_with(|t| *t).unwrap_or_default();
    let call = parse_call_request(&body, caller, trace_id, Millis::now())?;
    let echo_conversation = call.continues.map(|c| c.to_string());
    let echo_schedule = call.scheduled_for.map(|m| m.to_rfc3339());
    let agent_id = call.agent.0;
    check_retry_language(&state, &call).await?;
    let accepted = state.store.create_call(call).await?;
    let status = if echo_schedule.is_some() {
        "scheduled"
    } else {
        "initiated"
    };
    metrics::counter!("outdial_calls_accepted_total", "status" => status).increment(1);
    if let Some(wake) = &state.dispatch_wake {
        wake.notify_one();
    }
    tracing::info!(conversation_id = %accepted.conversation_id, agent_id, status, "call accepted");
    let mut response = Json(CallAcceptedResponse {
        data: CallAccepted {
            agent_id,
            conversation_id: echo_conversation,
            scheduled_for: echo_schedule,
            status: status.into(),
            trace_id: accepted.trace_id.to_string(),
        },
    })
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/conversations/{}", accepted.conversation_id))
    {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{ApiKeyId, TenantId};
    use serde_json::json;

    const NOW: Millis = Millis(1_775_000_000_000);

    fn parse(v: Value) -> Result<NewCall, String> {
        let caller = Caller {
            tenant: TenantId(1),
            key: ApiKeyId(1),
        };
        parse_call_request(v.as_object().unwrap(), caller, TraceId::new(), NOW)
            .map_err(|e| e.to_string())
    }

    fn phone() -> Value {
        json!([{"name": "customer_phone", "value": "+919876543210"}])
    }

    #[test]
    fn the_first_problem_reported_follows_the_contract_order() {
        assert_eq!(parse(json!({})).unwrap_err(), "agent_id is required");
        assert_eq!(
            parse(json!({"agent_id": null, "parameters": 5})).unwrap_err(),
            "agent_id is required"
        );
        assert_eq!(
            parse(json!({"agent_id": 1})).unwrap_err(),
            "parameters is required"
        );
        assert_eq!(
            parse(json!({"agent_id": "1", "parameters": phone()})).unwrap_err(),
            "invalid agent_id"
        );
        assert_eq!(
            parse(json!({"agent_id": 1.5, "parameters": phone()})).unwrap_err(),
            "invalid agent_id"
        );
        assert_eq!(
            parse(json!({"agent_id": 0, "parameters": phone()})).unwrap_err(),
            "invalid agent_id"
        );
        assert_eq!(
            parse(json!({"agent_id": 1e30, "parameters": phone()})).unwrap_err(),
            "invalid agent_id"
        );
        assert_eq!(
            parse(json!({"agent_id": 1, "parameters": []})).unwrap_err(),
            "customer_phone parameter is required"
        );
        assert_eq!(
            parse(
                json!({"agent_id": 1, "parameters": [{"name": "customer_phone", "value": "98765"}]})
            )
            .unwrap_err(),
            "invalid customer_phone"
        );
        assert_eq!(
            parse(json!({"agent_id": 1, "parameters": [{"name": "customer_phone", "value": 919876543210u64}]}))
                .unwrap_err(),
            "invalid parameters"
        );
        assert_eq!(
            parse(json!({"agent_id": 1, "parameters": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]}))
                .unwrap_err(),
            "invalid parameters"
        );
        assert_eq!(
            parse(json!({"agent_id": 1, "parameters": phone(), "scheduled_for": "2020-01-01T00:00:00Z"})).unwrap_err(),
            "invalid scheduled_for"
        );
        assert_eq!(
            parse(json!({"agent_id": 1, "parameters": phone(), "scheduled_for": 5})).unwrap_err(),
            "invalid scheduled_for"
        );
        assert_eq!(
            parse(json!({"agent_id": 1, "parameters": phone(), "idempotency_key": ""}))
                .unwrap_err(),
            "invalid idempotency_key"
        );
        assert_eq!(
            parse(json!({"agent_id": 1, "parameters": phone(), "metadata": {"a": 1}})).unwrap_err(),
            "invalid metadata"
        );
        assert_eq!(
            parse(json!({"agent_id": 1, "parameters": phone(), "retry_context": {"retry_language": "hindi please"}}))
                .unwrap_err(),
            "invalid retry_context"
        );
        assert_eq!(
            parse(json!({"agent_id": 1, "parameters": phone(), "retry_context": {"stage": "x"}}))
                .unwrap_err(),
            "invalid retry_context"
        );
        assert_eq!(
            parse(json!({"agent_id": 1, "parameters": phone(), "conversation_id": "nope"}))
                .unwrap_err(),
            "invalid conversation_id"
        );
        assert_eq!(
            parse(json!({"agent_id": 1, "parameters": phone(), "schedule_for": "2026-04-08T14:00:00Z"})).unwrap_err(),
            "invalid schedule_for"
        );
    }

    #[test]
    fn a_full_request_parses_with_nulls_as_absent() {
        let c = parse(json!({
            "agent_id": 7,
            "parameters": [{"name": "customer_phone", "value": "+91 98765 43210"}, {"name": "customer_name", "value": "Rahul"}],
            "conversation_id": null, "idempotency_key": "k-1", "metadata": "{\"crm\": 5}",
            "retry_context": {"collected_data": {"a": 1}, "retry_language": "hi-IN", "retry_stage_id": "s"},
            "scheduled_for": null
        }))
        .unwrap();
        assert_eq!(c.agent, AgentId(7));
        assert_eq!(c.customer_phone.as_str(), "+919876543210");
        assert_eq!(c.parameters.len(), 2);
        assert_eq!(c.idempotency_key.as_deref(), Some("k-1"));
        assert_eq!(c.scheduled_for, None);
        assert_eq!(
            c.retry_context.unwrap().retry_language.as_deref(),
            Some("hi-IN")
        );
    }
}
