//! SIP trunks and the phone numbers on them.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

use crate::input::{positive_id, read_json_object, reject_unknown, ApiPath};
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use domain::pacing::CallsPerSecond;
use domain::telephony::{Srtp, Transport};
use domain::tenant::{NewTrunk, PhoneNumber, Trunk};
use domain::{Millis, TrunkId, E164};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct TrunkView {
    pub trunk_id: i64,
    pub name: String,
    pub uri: String,
    pub username: Option<String>,
    pub max_concurrent_calls: Option<u32>,
    /// New INVITEs per second on this trunk (`null`: unpaced); calls over it wait.
    pub max_calls_per_second: Option<f64>,
    /// `udp`, `tcp` or `tls`.
    #[schema(value_type = String, example = "udp")]
    pub transport: &'static str,
    /// Whether outdial keeps a REGISTER binding with the trunk.
    pub register: bool,
    /// `off` (plain RTP) or `required` (SRTP with SDES keys; TLS trunks only).
    #[schema(value_type = String, example = "off")]
    pub srtp: &'static str,
    pub created_at: String,
    /// This node's REGISTER binding (`GET /v1/trunks/{id}` of a trunk with `register`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration: Option<RegistrationJson>,
    /// This node's last OPTIONS probe of the trunk (`GET /v1/trunks/{id}`, probes on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<ProbeJson>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RegistrationJson {
    /// `registering`, `registered` or `failed`.
    #[schema(value_type = String, example = "registered")]
    pub status: &'static str,
    /// The registrar's last answer (`200 OK`, `403 Forbidden`) or why none came.
    pub detail: Option<String>,
    pub expires_at: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProbeJson {
    /// The trunk's answer (`200 OK`; any answer means it is up), `null` when none came.
    pub response: Option<String>,
    pub error: Option<String>,
    pub round_trip_ms: Option<u64>,
    pub at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrunkResponse {
    pub data: TrunkView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrunkList {
    pub data: Vec<TrunkView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PhoneNumberView {
    pub phone_number_id: i64,
    pub number: String,
    pub trunk_id: i64,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PhoneNumberResponse {
    pub data: PhoneNumberView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PhoneNumberList {
    pub data: Vec<PhoneNumberView>,
}

/// Passwords are write-only.
fn trunk_view(t: Trunk) -> TrunkView {
    TrunkView {
        trunk_id: t.id.0,
        name: t.name,
        uri: t.uri,
        username: t.username,
        max_concurrent_calls: t.max_concurrent_calls,
        max_calls_per_second: t.max_calls_per_second.map(CallsPerSecond::get),
        transport: t.transport.as_str(),
        register: t.register,
        srtp: t.srtp.as_str(),
        created_at: t.created_at.to_rfc3339_millis(),
        registration: None,
        last_probe: None,
    }
}

fn number_view(n: PhoneNumber) -> PhoneNumberView {
    PhoneNumberView {
        phone_number_id: n.id.0,
        number: n.number.to_string(),
        trunk_id: n.trunk.0,
        created_at: n.created_at.to_rfc3339_millis(),
    }
}

/// `sip:host[:port]` (or `sips:`), with no user part or parameters we would silently ignore.
pub fn valid_sip_uri(uri: &str) -> bool {
    let Some(rest) = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
    else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    host_ok && port_ok
}

fn text(
    body: &Map<String, Value>,
    field: &str,
    required: bool,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) if required => {
            Err(ApiError::Invalid(format!("{field} is required")))
        }
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= max => {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(ApiError::invalid(field)),
    }
}

/// The trunk options of the contract: `max_calls_per_second` (a positive number, fractional
/// allowed; `null` or absent = unpaced), `transport` (`udp` by default, `tls` for a `sips:`
/// URI; `tls` only with `sips:` and `sips:` only with `tls`), `register` (a boolean; `true`
/// needs a `username`, whose credentials the binding uses), `srtp` (`off` by default;
/// `required` only with `tls`: SDES keys travel in the SDP, which only TLS keeps secret).
fn trunk_options(
    body: &Map<String, Value>,
    uri: &str,
    username: Option<&str>,
) -> Result<(Option<CallsPerSecond>, Transport, bool, Srtp), ApiError> {
    let max_calls_per_second = match body.get("max_calls_per_second") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .and_then(CallsPerSecond::new)
                .ok_or_else(|| ApiError::invalid("max_calls_per_second"))?,
        ),
    };
    let secure = uri.starts_with("sips:");
    let transport = match body.get("transport") {
        None | Some(Value::Null) if secure => Transport::Tls,
        None | Some(Value::Null) => Transport::Udp,
        Some(Value::String(t)) => Transport::parse(t)
            .filter(|t| (*t == Transport::Tls) == secure)
            .ok_or_else(|| ApiError::invalid("transport"))?,
        Some(_) => return Err(ApiError::invalid("transport")),
    };
    let register = match body.get("register") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(true)) if username.is_none() => return Err(ApiError::invalid("register")),
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("register")),
    };
    let srtp = match body.get("srtp") {
        None | Some(Value::Null) => Srtp::Off,
        Some(Value::String(s)) => Srtp::parse(s)
            .filter(|s| *s == Srtp::Off || transport == Transport::Tls)
            .ok_or_else(|| ApiError::invalid("srtp"))?,
        Some(_) => return Err(ApiError::invalid("srtp")),
    };
    Ok((max_calls_per_second, transport, register, srtp))
}

/// Add a SIP trunk.
#[utoipa::path(post, path = "/v1/trunks", tag = "telephony", request_body(content = Object, description = "{name, uri, username?, password?, max_concurrent_calls?, max_calls_per_second?, transport?, register?, srtp?}"),
    responses((status = 200, body = TrunkResponse), (status = 400, body = crate::openapi::ErrorBody)), security(("bearer" = [])))]
pub async fn create_trunk(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<TrunkResponse>> {
    let body = read_json_object(&headers, body).await?;
    reject_unknown(
        &body,
        &[
            "name",
            "uri",
            "username",
            "password",
            "max_concurrent_calls",
            "max_calls_per_second",
            "transport",
            "register",
            "srtp",
        ],
    )?;
    let name = text(&body, "name", true, 100)?.unwrap_or_default();
    let uri = text(&body, "uri", true, 300)?.unwrap_or_default();
    if !valid_sip_uri(&uri) {
        return Err(ApiError::invalid("uri"));
    }
    let username = text(&body, "username", false, 200)?;
    let password = text(&body, "password", false, 200)?;
    if password.is_some() && username.is_none() {
        return Err(ApiError::invalid("password"));
    }
    let max_concurrent_calls = match body.get("max_concurrent_calls") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| (1..=100_000).contains(n))
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| ApiError::invalid("max_concurrent_calls"))?,
        ),
    };
    let (max_calls_per_second, transport, register, srtp) =
        trunk_options(&body, &uri, username.as_deref())?;
    let trunk = NewTrunk {
        name,
        uri,
        username,
        password,
        max_concurrent_calls,
        max_calls_per_second,
        transport,
        register,
        srtp,
    };
    let trunk = state
        .store
        .create_trunk(caller.tenant, &trunk, Millis::now())
        .await?;
    Ok(Json(TrunkResponse {
        data: trunk_view(trunk),
    }))
}

/// The tenant's trunks.
#[utoipa::path(get, path = "/v1/trunks", tag = "telephony", responses((status = 200, body = TrunkList)), security(("bearer" = [])))]
pub async fn list_trunks(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<TrunkList>> {
    let trunks = state.store.list_trunks(caller.tenant).await?;
    Ok(Json(TrunkList {
        data: trunks.into_iter().map(trunk_view).collect(),
    }))
}

/// One trunk, with what this node knows of its health: its REGISTER binding and its last
/// OPTIONS probe.
#[utoipa::path(get, path = "/v1/trunks/{trunk_id}", tag = "telephony", params(("trunk_id" = i64, Path)),
    responses((status = 200, body = TrunkResponse), (status = 404, body = crate::openapi::ErrorBody)), security(("bearer" = [])))]
pub async fn get_trunk(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TrunkResponse>> {
    let id = positive_id(&id, "trunk_id")
        .map(TrunkId)
        .map_err(|_| ApiError::NotFound("trunk not found".into()))?;
    let trunk = state
        .store
        .list_trunks(caller.tenant)
        .await?
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(|| ApiError::NotFound("trunk not found".into()))?;
    let health = state.trunk_health.as_ref().and_then(|h| h.health(id));
    let mut view = trunk_view(trunk);
    if let Some(health) = health {
        view.registration = health.registration.map(|r| RegistrationJson {
            status: r.status,
            detail: r.detail,
            expires_at: r.expires_at.map(Millis::to_rfc3339_millis),
            updated_at: r.updated_at.map(Millis::to_rfc3339_millis),
        });
        view.last_probe = health.probe.map(|p| ProbeJson {
            response: p.response,
            error: p.error,
            round_trip_ms: p.round_trip_ms,
            at: p.at.to_rfc3339_millis(),
        });
    }
    Ok(Json(TrunkResponse { data: view }))
}

/// Add a phone number (E.164) on one of the tenant's trunks.
#[utoipa::path(post, path = "/v1/phone-numbers", tag = "telephony", request_body(content = Object, description = "{number, trunk_id}"),
    responses((status = 200, body = PhoneNumberResponse), (status = 400, body = crate::openapi::ErrorBody), (status = 404, description = "trunk not found", body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_phone_number(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<PhoneNumberResponse>> {
    let body = read_json_object(&headers, body).await?;
    reject_unknown(&body, &["number", "trunk_id"])?;
    let number = text(&body, "number", true, 32)?.unwrap_or_default();
    let number = E164::parse(&number).map_err(|_| ApiError::invalid("number"))?;
    let trunk = match body.get("trunk_id") {
        None | Some(Value::Null) => return Err(ApiError::Invalid("trunk_id is required".into())),
        Some(v) => TrunkId(
            v.as_i64()
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::invalid("trunk_id"))?,
        ),
    };
    let n = state
        .store
        .create_phone_number(caller.tenant, &number, trunk, Millis::now())
        .await?;
    Ok(Json(PhoneNumberResponse {
        data: number_view(n),
    }))
}

/// The tenant's phone numbers.
#[utoipa::path(get, path = "/v1/phone-numbers", tag = "telephony", responses((status = 200, body = PhoneNumberList)), security(("bearer" = [])))]
pub async fn list_phone_numbers(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<PhoneNumberList>> {
    let numbers = state.store.list_phone_numbers(caller.tenant).await?;
    Ok(Json(PhoneNumberList {
        data: numbers.into_iter().map(number_view).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::valid_sip_uri;

    #[test]
    fn sip_uris() {
        for ok in [
            "sip:127.0.0.1:5080",
            "sip:trunk.example.com",
            "sips:pbx.local:5061",
            "sip:[::1]:5060",
        ] {
            assert!(valid_sip_uri(ok), "{ok}");
        }
        for bad in [
            "",
            "http://x",
            "sip:",
            "sip:host:0",
            "sip:host:99999",
            "sip:user@host",
            "sip:host;transport=tcp",
        ] {
            assert!(!valid_sip_uri(bad), "{bad}");
        }
    }
}
