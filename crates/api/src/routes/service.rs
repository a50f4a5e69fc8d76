//! Liveness, readiness, metrics and the API description: no authentication.

use crate::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "service", responses((status = 200, body = Object)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the node is not stopping, the database answers and every speech engine the
/// agents need can start (or was declared optional; those down are listed as `degraded`).
#[utoipa::path(get, path = "/readyz", tag = "service", responses((status = 200, body = Object), (status = 503, description = "not ready; the reason in the error shape", body = crate::openapi::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    // Before the database: a stopping node answers at once, however busy its store is.
    if state.readiness.stopping() {
        return crate::error::ApiError::NotReady("shutting down".into()).into_response();
    }
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "not ready");
        return crate::error::ApiError::Unavailable("database unavailable").into_response();
    }
    if let Some(reason) = state.readiness.not_ready_reason() {
        return crate::error::ApiError::NotReady(reason).into_response();
    }
    let degraded = state.readiness.degraded();
    if degraded.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        Json(json!({"status": "ready", "degraded": degraded})).into_response()
    }
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "service", responses((status = 200, content_type = "text/plain", description = "Prometheus metrics")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
