//! The contract's error body, produced here and only here: everything inside the service speaks
//! its own `thiserror` enums, and this is where each becomes a status, a `type` and a message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use domain::store::{CreateCallError, ManageError, StoreError};
use domain::TraceId;
use serde_json::{json, Map, Value};

tokio::task_local! {
    /// The trace id of the request being served, so that a 500 can name it without every
    /// handler threading it through.
    pub static REQUEST_TRACE: TraceId;
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(String),
    /// An agent whose voice or transcriber engine cannot speak or hear its `language` on this
    /// node (`GET /v1/languages`).
    #[error("unsupported language")]
    UnsupportedLanguage,
    /// A call's `retry_language` the agent's engines cannot serve.
    #[error("unsupported retry_language")]
    UnsupportedRetryLanguage,
    #[error("invalid or missing api key")]
    Unauthenticated,
    #[error("{0}")]
    NotFound(String),
    #[error("idempotency key already used")]
    Duplicate { first_trace_id: TraceId },
    #[error("{0}")]
    Conflict(String),
    #[error("request body too large")]
    TooLarge,
    /// A transcription job's audio over its size limit.
    #[error("file too large")]
    FileTooLarge,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("rate limit exceeded")]
    ApiRateLimited { retry_after_seconds: u64 },
    /// This node is writing as many batch uploads as it is configured to.
    #[error("too many batch uploads in progress")]
    UploadsBusy { retry_after_seconds: u64 },
    #[error("rate limit exceeded for this number")]
    NumberRateLimited { retry_after_seconds: u64 },
    #[error("concurrent call limit reached. {max} simultaneous calls allowed.")]
    ConcurrentLimit { current: u64, max: u32 },
    #[error("internal error: {0}")]
    Internal(String),
    /// A request the HTTP parser could not read (a malformed request line or header).
    #[error("malformed request")]
    MalformedRequest,
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("request URI too long")]
    UriTooLong,
    /// The client stopped sending its body, or took longer than the limit to send it.
    #[error("request body timed out")]
    BodyTimeout,
    /// The connection ended before the declared body arrived.
    #[error("incomplete request body")]
    IncompleteBody,
    /// Past the connection cap (the whole node's or one client address's).
    #[error("too many connections")]
    TooManyConnections,
    /// Past the per-address budget of requests without a valid key.
    #[error("too many failed authentications")]
    AuthRateLimited { retry_after_seconds: u64 },
    /// The service cannot serve now (readiness); the reason is safe to show.
    #[error("{0}")]
    Unavailable(&'static str),
    /// The service cannot serve calls now: an engine its agents need cannot start (readiness).
    #[error("{0}")]
    NotReady(String),
    /// A handler panicked; the panic's text goes to the log only.
    #[error("internal error: handler panicked: {0}")]
    Panicked(String),
}

impl ApiError {
    pub fn invalid(field: &str) -> Self {
        Self::Invalid(format!("invalid {field}"))
    }

    fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Invalid(_)
            | Self::UnsupportedLanguage
            | Self::UnsupportedRetryLanguage
            | Self::MalformedRequest
            | Self::IncompleteBody => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "invalid_request",
            ),
            Self::UriTooLong => (StatusCode::URI_TOO_LONG, "invalid_request"),
            Self::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "invalid_request"),
            Self::TooManyConnections => (StatusCode::SERVICE_UNAVAILABLE, "rate_limit_exceeded"),
            Self::Unavailable(_) | Self::NotReady(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "internal_error")
            }
            Self::Unauthenticated => (StatusCode::UNAUTHORIZED, "authentication_error"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Duplicate { .. } => (StatusCode::CONFLICT, "duplicate_request"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::TooLarge | Self::FileTooLarge => {
                (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request")
            }
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "invalid_request"),
            Self::ApiRateLimited { .. }
            | Self::NumberRateLimited { .. }
            | Self::AuthRateLimited { .. }
            | Self::UploadsBusy { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded"),
            Self::ConcurrentLimit { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "concurrent_call_limit_exceeded",
            ),
            Self::Internal(_) | Self::Panicked(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
            }
        }
    }
}

impl ApiError {
    /// The status and the contract's JSON body. A 500's detail is logged here, never returned.
    pub fn status_and_body(&self) -> (StatusCode, Value) {
        let (status, kind) = self.status_and_type();
        let trace = REQUEST_TRACE.try_with(|t| *t).ok();
        let message = match self {
            Self::Internal(detail) | Self::Panicked(detail) => {
                tracing::error!(error = %detail, "internal error");
                match trace {
                    Some(t) => format!("internal error (trace_id: {t})"),
                    None => "internal error".to_string(),
                }
            }
            other => other.to_string(),
        };
        let mut error = Map::new();
        error.insert("message".into(), Value::String(message));
        error.insert("type".into(), Value::String(kind.into()));
        match self {
            Self::Duplicate { first_trace_id } => {
                error.insert("trace_id".into(), json!(first_trace_id.to_string()));
            }
            Self::ConcurrentLimit { current, max } => {
                error.insert("current_calls".into(), json!(current));
                error.insert("max_calls".into(), json!(max));
            }
            _ => {}
        }
        (status, json!({ "error": error }))
    }

    /// Seconds a client should wait before trying again, for the errors that say so.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::ApiRateLimited {
                retry_after_seconds,
            }
            | Self::NumberRateLimited {
                retry_after_seconds,
            }
            | Self::AuthRateLimited {
                retry_after_seconds,
            }
            | Self::UploadsBusy {
                retry_after_seconds,
            } => Some((*retry_after_seconds).max(1)),
            Self::TooManyConnections => Some(1),
            _ => None,
        }
    }

    /// The whole HTTP/1.1 response, for the connection-level answers written before (or
    /// instead of) the HTTP stack: the connection is closed after it.
    pub fn raw_response(&self) -> Vec<u8> {
        let (status, body) = self.status_and_body();
        let body = body.to_string();
        let retry = self
            .retry_after()
            .map(|s| format!("retry-after: {s}\r\n"))
            .unwrap_or_default();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry}connection: close\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after() {
            if let Ok(v) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<ManageError> for ApiError {
    fn from(e: ManageError) -> Self {
        match e {
            ManageError::NotFound(what) => Self::NotFound(format!("{what} not found")),
            // Name clashes are bad input to fix, as the webhook targets' contract treats them.
            ManageError::Conflict(msg) => Self::Invalid(msg.to_string()),
            ManageError::Store(e) => e.into(),
        }
    }
}

impl From<CreateCallError> for ApiError {
    fn from(e: CreateCallError) -> Self {
        match e {
            CreateCallError::AgentNotFound | CreateCallError::ConversationNotFound => {
                Self::NotFound(e.to_string())
            }
            CreateCallError::AgentHasNoNumber | CreateCallError::DoNotCall => {
                Self::Invalid(e.to_string())
            }
            CreateCallError::DuplicateRequest { first_trace_id } => {
                Self::Duplicate { first_trace_id }
            }
            CreateCallError::NumberRateLimited {
                retry_after_seconds,
            } => Self::NumberRateLimited {
                retry_after_seconds,
            },
            CreateCallError::ConcurrentLimit { current, max } => {
                Self::ConcurrentLimit { current, max }
            }
            CreateCallError::Store(e) => e.into(),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
