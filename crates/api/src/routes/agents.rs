//! Agents (ours as an API; FormantAI configures them in its dashboard).

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::input::ApiPath;
use crate::input::{page, positive_id, query_pairs, read_json_object};
use crate::AppState;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use domain::agent::{AgentConfig, AgentConfigError};
use domain::store::Agent;
use domain::{AgentId, Millis};
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

impl From<AgentConfigError> for ApiError {
    fn from(e: AgentConfigError) -> Self {
        ApiError::Invalid(e.to_string())
    }
}

/// The agent object of `spec/agents.md` plus `agent_id` and timestamps.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentResponse {
    #[schema(value_type = Object)]
    pub data: Map<String, Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Map<String, Value>>,
    pub has_more: bool,
    pub total: u64,
}

fn agent_json(a: &Agent) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("agent_id".into(), json!(a.id.0));
    m.extend(a.config.public_json());
    m.insert("created_at".into(), json!(a.created_at.to_rfc3339_millis()));
    m.insert("updated_at".into(), json!(a.updated_at.to_rfc3339_millis()));
    m
}

/// The agent's own voice and transcriber must speak and hear its language here: an agent that
/// would talk Hindi to an English-only recogniser is refused now, not found out on the phone.
fn check_language(state: &AppState, config: &AgentConfig) -> Result<(), ApiError> {
    if state.config.languages.serves(config, &config.language) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedLanguage)
    }
}

/// An llm agent's model server must be where the operator lets the node connect: public
/// addresses, or the networks of `OUTDIAL_LLM_ALLOWED_NETWORKS`; never link-local (cloud
/// metadata). The delivery-time guard checks again on every connection.
async fn check_model_server(state: &AppState, config: &AgentConfig) -> Result<(), ApiError> {
    use webhooks::AddressPolicy;
    if let domain::agent::Brain::Llm { base_url, .. } = &config.brain {
        state
            .config
            .llm_endpoints
            .validate(base_url)
            .await
            .map_err(|e| match e {
                webhooks::UrlError::InvalidUrl => ApiError::invalid("brain"),
                webhooks::UrlError::NotAllowed => {
                    ApiError::Invalid("brain.base_url not allowed".into())
                }
            })?;
    }
    Ok(())
}

fn agent_id(raw: &str) -> Result<AgentId, ApiError> {
    positive_id(raw, "agent_id")
        .map(AgentId)
        .map_err(|_| ApiError::NotFound("agent not found".into()))
}

/// Create an agent.
#[utoipa::path(post, path = "/v1/agents", tag = "agents", request_body(content = Object, description = "the agent object"),
    responses((status = 200, body = AgentResponse), (status = 400, body = crate::openapi::ErrorBody), (status = 404, description = "phone number not found", body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<AgentResponse>> {
    let body = read_json_object(&headers, body).await?;
    let config = AgentConfig::from_json(&body)?;
    check_language(&state, &config)?;
    check_model_server(&state, &config).await?;
    let agent = state
        .store
        .create_agent(caller.tenant, &config, Millis::now())
        .await?;
    Ok(Json(AgentResponse {
        data: agent_json(&agent),
    }))
}

/// List agents, newest first.
#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    params(("limit" = Option<u32>, Query), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = AgentList)), security(("bearer" = [])))]
pub async fn list_agents(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<AgentList>> {
    let page = page(&query_pairs(raw.as_deref()))?;
    let listed = state.store.list_agents(caller.tenant, page).await?;
    Ok(Json(AgentList {
        has_more: listed.has_more(page),
        total: listed.total,
        data: listed.items.iter().map(agent_json).collect(),
    }))
}

/// One agent.
#[utoipa::path(get, path = "/v1/agents/{agent_id}", tag = "agents", params(("agent_id" = i64, Path)),
    responses((status = 200, body = AgentResponse), (status = 404, body = crate::openapi::ErrorBody)), security(("bearer" = [])))]
pub async fn get_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<AgentResponse>> {
    let agent = state
        .store
        .get_agent(caller.tenant, agent_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::NotFound("agent not found".into()))?;
    Ok(Json(AgentResponse {
        data: agent_json(&agent),
    }))
}

/// Change some fields of an agent; the result is validated whole.
#[utoipa::path(patch, path = "/v1/agents/{agent_id}", tag = "agents", params(("agent_id" = i64, Path)),
    request_body(content = Object, description = "any subset of the agent object"),
    responses((status = 200, body = AgentResponse), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<AgentResponse>> {
    let id = agent_id(&id)?;
    let patch = read_json_object(&headers, body).await?;
    let current = state
        .store
        .get_agent(caller.tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("agent not found".into()))?;
    let config = current.config.patched(&patch)?;
    check_language(&state, &config)?;
    check_model_server(&state, &config).await?;
    let agent = state
        .store
        .update_agent(caller.tenant, id, &config, Millis::now())
        .await?;
    Ok(Json(AgentResponse {
        data: agent_json(&agent),
    }))
}

/// Retire an agent: it takes no new calls; its conversations stay readable.
#[utoipa::path(delete, path = "/v1/agents/{agent_id}", tag = "agents", params(("agent_id" = i64, Path)),
    responses((status = 200, body = Object), (status = 404, body = crate::openapi::ErrorBody)), security(("bearer" = [])))]
pub async fn delete_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let id = agent_id(&id)?;
    if !state
        .store
        .delete_agent(caller.tenant, id, Millis::now())
        .await?
    {
        return Err(ApiError::NotFound("agent not found".into()));
    }
    Ok(Json(json!({"data": {"agent_id": id.0, "deleted": true}})))
}
