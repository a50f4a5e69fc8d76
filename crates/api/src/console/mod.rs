//! The operator console: server-rendered pages at `/console` on the API's listener.
//!
//! A page reads and writes through the same tenant-scoped code the API's handlers run (most
//! pages call those handlers directly), so an operator sees exactly what their key's tenant
//! sees through `/v1`, with the same validation messages. Pages are HTML rendered from
//! compile-time-checked templates (`templates/console`), enhanced by htmx for live fragments;
//! every asset is embedded in the binary.

mod pages;
pub mod session;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{FromRequestParts, Path};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

/// No inline script or style anywhere, so neither is allowed; htmx talks only to this origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; media-src 'self'; connect-src 'self'; \
    form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<AppState> {
    use pages::*;
    Router::new()
        .route("/console", get(home))
        .route("/console/sign-in", post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/conversations", get(conversations))
        .route("/console/conversations/rows", get(conversation_rows))
        .route("/console/conversations/{id}", get(conversation))
        .route("/console/conversations/{id}/live", get(conversation_live))
        .route("/console/conversations/{id}/recording", get(recording))
        .route("/console/batches", get(batches))
        .route("/console/batches/{id}", get(batch))
        .route("/console/batches/{id}/progress", get(batch_progress))
        .route("/console/batches/{id}/{action}", post(batch_action))
        .route("/console/agents", get(agents).post(create_agent))
        .route("/console/agents/new", get(new_agent))
        .route("/console/agents/{id}", get(agent).post(update_agent))
        .route("/console/agents/{id}/test-call", post(test_call))
        .route("/console/webhooks", get(webhooks))
        .route("/console/deliveries/{id}/retry", post(retry_delivery))
        .route("/console/assets/{name}", get(asset))
        .layer(middleware::from_fn(security_headers))
}

/// Everything the console answers carries the policy; pages are never cached (they show one
/// tenant's data), assets may be.
async fn security_headers(req: axum::extract::Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

const HTMX: &str = include_str!("../../assets/htmx.min.js");
const CSS: &str = include_str!("../../assets/console.css");
const JS: &str = include_str!("../../assets/console.js");

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        "console.css" => (CSS, "text/css; charset=utf-8"),
        _ => return ConsoleError::Api(ApiError::NotFound("not found".into())).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Why a console request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No live session: back to the sign-in page. A fragment htmx asked for gets a 401 with
    /// `HX-Redirect` instead of a redirect, which the browser would follow silently and htmx
    /// would then swap the sign-in page into the fragment's place.
    #[error("signed out")]
    SignedOut { fragment: bool },
    /// A form post without this session's token (or from another site).
    #[error("this form has expired or came from another site; reload the page and try again")]
    Forgery,
    /// What the API would have answered.
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("page could not be rendered: {0}")]
    Render(#[from] askama::Error),
}

impl From<domain::store::StoreError> for ConsoleError {
    fn from(e: domain::store::StoreError) -> Self {
        Self::Api(e.into())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::SignedOut { fragment: false } => return Redirect::to("/console").into_response(),
            Self::SignedOut { fragment: true } => {
                return (
                    StatusCode::UNAUTHORIZED,
                    [("hx-redirect", HeaderValue::from_static("/console"))],
                )
                    .into_response()
            }
            Self::Forgery => (StatusCode::FORBIDDEN, self.to_string()),
            Self::Api(e) => {
                let (status, body) = e.status_and_body();
                let message = body["error"]["message"]
                    .as_str()
                    .unwrap_or("error")
                    .to_string();
                (status, message)
            }
            Self::Render(e) => {
                tracing::error!(error = %e, "console page could not be rendered");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_string(),
                )
            }
        };
        let page = pages::ErrorPage {
            nav: None,
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Error"),
            message,
        };
        match askama::Template::render(&page) {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, page.message).into_response(),
        }
    }
}

/// A signed-in request: the tenant its key resolved to and the session's form token.
pub struct Console {
    pub caller: Caller,
    pub csrf: String,
    token: String,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl FromRequestParts<AppState> for Console {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ConsoleError> {
        let signed_out = ConsoleError::SignedOut {
            fragment: parts.headers.contains_key("hx-request"),
        };
        let Some(token) = cookie(&parts.headers, session::COOKIE).map(str::to_string) else {
            return Err(signed_out);
        };
        let Some(s) = state.console.touch(&token) else {
            return Err(signed_out);
        };
        if !crate::auth::key_still_valid(state, &s.key_lookup, s.caller).await? {
            state.console.close(&token);
            return Err(signed_out);
        }
        Ok(Console {
            caller: s.caller,
            csrf: s.csrf,
            token,
        })
    }
}

/// A cross-site form post never carries the cookie (SameSite=Strict); browsers that say
/// where a request came from are also held to this origin.
fn cross_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site")
}

/// The fields of a posted form whose `csrf` field is this session's token.
pub fn checked_form(
    console: &Console,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(String, String)>, ConsoleError> {
    let fields: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let token = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if cross_site(headers) || !session::same_token(token, &console.csrf) {
        return Err(ConsoleError::Forgery);
    }
    Ok(fields)
}

/// `Secure` when clients reach the service over TLS (a TLS-terminating proxy in front of it:
/// `OUTDIAL_PUBLIC_URL=https://...`, or the proxy's `X-Forwarded-Proto`).
fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    state.config.public_url.starts_with("https://")
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn set_cookie(name: &str, value: &str, max_age_secs: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
    );
    // Tokens are alphanumeric, so this cannot fail; an empty cookie is the safe fallback.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}
