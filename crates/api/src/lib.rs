//! The HTTP edge. Requests are parsed here into domain types, handed to the store, and every
//! error is turned into the contract's body here and nowhere else.

pub mod auth;
pub mod console;
pub mod error;
pub mod input;
pub mod openapi;
pub mod readiness;
pub mod routes;
pub mod server;

use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use domain::store::Store;
use domain::TraceId;
use error::{ApiError, REQUEST_TRACE};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tower_http::metrics::in_flight_requests::{InFlightRequestsCounter, InFlightRequestsLayer};
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Settings of the HTTP edge.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Requests per key per minute; 0 turns the limit off.
    pub api_rate_limit_per_minute: u32,
    /// Base URL clients reach this service at, for `recording_url`.
    pub public_url: String,
    /// Webhook target URLs may point at loopback and private addresses
    /// (`OUTDIAL_WEBHOOK_ALLOW_PRIVATE`).
    pub webhook_allow_private: bool,
    /// Poked after a webhook event is enqueued or a delivery retried, so the delivery worker of
    /// this process (`webhooks::Worker::waker`) looks at once.
    pub webhook_wake: Arc<tokio::sync::Notify>,
    /// Size and row limits of `POST /v1/batch-call`.
    pub batch_limits: domain::batch::BatchLimits,
    /// Batch uploads this node writes at once; one more waits up to `batch_upload_wait` for a
    /// turn, then is answered 429 with `Retry-After`.
    pub batch_uploads: usize,
    pub batch_upload_wait: std::time::Duration,
    /// How long a key found in the database is trusted without reading it again (so how long a
    /// revocation takes to reach every node); zero reads the database on every request.
    pub key_cache_ttl: std::time::Duration,
    /// Requests without a valid key one client address may make per minute before it is
    /// answered 429 without a database read; 0 = no budget.
    pub failed_auth_per_ip_per_minute: u32,
    /// Where agents' model servers may be (`brain.base_url`), besides public addresses.
    pub llm_endpoints: webhooks::ModelEndpointPolicy,
    /// Connection caps and read deadlines of the listener.
    pub http: server::HttpLimits,
    /// The languages this node's engines speak and hear: an agent or a retry in another is
    /// refused when it is written.
    pub languages: domain::language::LanguageSupport,
    /// `POST /v1/transcription/jobs`.
    pub transcription: TranscriptionSettings,
}

/// What the transcription endpoints need to know of the node.
#[derive(Debug, Clone)]
pub struct TranscriptionSettings {
    /// The largest audio file taken, in bytes (the contract's 100 MiB by default).
    pub max_bytes: u64,
    /// The recogniser's name, as each job reports it.
    pub engine: String,
}

impl Default for TranscriptionSettings {
    fn default() -> Self {
        Self {
            max_bytes: 100 * 1024 * 1024,
            engine: "whisper-base".into(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            api_rate_limit_per_minute: 6000,
            public_url: "http://127.0.0.1:8080".into(),
            webhook_allow_private: false,
            key_cache_ttl: std::time::Duration::from_secs(2),
            webhook_wake: Arc::new(tokio::sync::Notify::new()),
            batch_limits: Default::default(),
            batch_uploads: 2,
            batch_upload_wait: std::time::Duration::from_secs(2),
            failed_auth_per_ip_per_minute: 120,
            llm_endpoints: Default::default(),
            http: Default::default(),
            languages: domain::language::LanguageSupport::default(),
            transcription: TranscriptionSettings::default(),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub config: Arc<ApiConfig>,
    pub api_limiter: Arc<auth::ApiRateLimiter>,
    pub key_cache: Arc<auth::KeyCache>,
    pub auth_failures: Arc<auth::FailedAuthBudget>,
    pub metrics: PrometheusHandle,
    /// Poked after a call due now is accepted, so the local dispatcher dials it at once.
    pub dispatch_wake: Option<Arc<tokio::sync::Notify>>,
    /// The speech engines' states, as the binary last checked them (for `/readyz`).
    pub readiness: Arc<readiness::Readiness>,
    /// The console's sign-in sessions (this node's memory).
    pub console: Arc<console::session::Sessions>,
    /// Turns for batch uploads and transcription files (`ApiConfig::batch_uploads`).
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// Poked after a transcription job is accepted, so a worker of this node takes it at once.
    pub transcription_wake: Option<Arc<tokio::sync::Notify>>,
    /// This node's view of its trunks' registration and OPTIONS probes (`None`: no SIP side).
    pub trunk_health: Option<Arc<dyn domain::telephony::TrunkHealthSource>>,
    /// The requests being served, which the node's dispatcher yields to.
    pub in_flight: Arc<InFlight>,
}

/// How many requests this node's API is serving now (tower-http's counter, kept by the
/// edge's outermost layer). The dispatcher reads it ([`domain::pacing::Foreground`]) and dials
/// at its busy rate while any is.
#[derive(Debug, Clone, Default)]
pub struct InFlight(InFlightRequestsCounter);

impl domain::pacing::Foreground for InFlight {
    fn busy(&self) -> bool {
        self.0.get() > 0
    }
}

/// The process-wide Prometheus recorder (a `metrics` recorder can be installed only once).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("outdial_http_request_duration_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .and_then(|b| {
                    // The single writer's turns last a millisecond or less.
                    b.set_buckets_for_metric(
                        Matcher::Prefix("outdial_db_".into()),
                        &[
                            0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
                            0.5,
                        ],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_seconds".into()),
                        &[
                            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                        ],
                    )
                })
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; the handle still renders ours.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, config: ApiConfig) -> Self {
        Self {
            store,
            api_limiter: Arc::new(auth::ApiRateLimiter::new(config.api_rate_limit_per_minute)),
            key_cache: Arc::new(auth::KeyCache::new(config.key_cache_ttl)),
            auth_failures: Arc::new(auth::FailedAuthBudget::new(
                config.failed_auth_per_ip_per_minute,
            )),
            uploads: Arc::new(tokio::sync::Semaphore::new(config.batch_uploads.max(1))),
            config: Arc::new(config),
            metrics: metrics_handle(),
            dispatch_wake: None,
            transcription_wake: None,
            trunk_health: None,
            in_flight: Arc::new(InFlight::default()),
            readiness: Arc::new(readiness::Readiness::new()),
            console: Arc::new(console::session::Sessions::new()),
        }
    }

    /// `/readyz` answers from `readiness` (the binary's engine checks) besides the database.
    pub fn with_readiness(mut self, readiness: Arc<readiness::Readiness>) -> Self {
        self.readiness = readiness;
        self
    }

    pub fn with_dispatch_wake(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        self.dispatch_wake = Some(wake);
        self
    }

    /// Counts the requests served in `in_flight`, which the node's dispatcher reads.
    pub fn with_in_flight(mut self, in_flight: Arc<InFlight>) -> Self {
        self.in_flight = in_flight;
        self
    }

    pub fn with_trunk_health(
        mut self,
        health: Arc<dyn domain::telephony::TrunkHealthSource>,
    ) -> Self {
        self.trunk_health = Some(health);
        self
    }

    pub fn with_transcription_wake(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        self.transcription_wake = Some(wake);
        self
    }
}

/// Every documented route.
fn api_routes() -> OpenApiRouter<AppState> {
    use routes::{
        agents, batches, calls, conversations, do_not_call, languages, service, transcription,
        trunks, webhooks,
    };
    // The upload streams up to its own (much larger) limit, checked by the handler itself.
    let batch_upload = OpenApiRouter::new()
        .routes(routes!(batches::create_batch))
        .routes(routes!(do_not_call::import_numbers))
        .routes(routes!(transcription::create_job))
        .layer(axum::extract::DefaultBodyLimit::disable());
    let v1 = OpenApiRouter::new()
        .routes(routes!(calls::create_call))
        .routes(routes!(conversations::list_conversations))
        .routes(routes!(conversations::get_conversation))
        .routes(routes!(conversations::get_recording))
        .routes(routes!(conversations::cancel_conversation))
        .routes(routes!(agents::create_agent, agents::list_agents))
        .routes(routes!(
            agents::get_agent,
            agents::update_agent,
            agents::delete_agent
        ))
        .routes(routes!(languages::list_languages))
        .routes(routes!(trunks::create_trunk, trunks::list_trunks))
        .routes(routes!(trunks::get_trunk))
        .routes(routes!(
            trunks::create_phone_number,
            trunks::list_phone_numbers
        ))
        .routes(routes!(
            webhooks::create_webhook_target,
            webhooks::list_webhook_targets
        ))
        .routes(routes!(
            webhooks::get_webhook_target,
            webhooks::update_webhook_target,
            webhooks::delete_webhook_target
        ))
        .routes(routes!(webhooks::rotate_webhook_secret))
        .routes(routes!(webhooks::test_webhook_target))
        .routes(routes!(webhooks::list_webhook_deliveries))
        .routes(routes!(webhooks::retry_webhook_delivery))
        .merge(batch_upload)
        .routes(routes!(batches::list_batches))
        .routes(routes!(batches::get_batch))
        .routes(routes!(batches::get_batch_metrics))
        .routes(routes!(batches::pause_batch))
        .routes(routes!(batches::resume_batch))
        .routes(routes!(batches::cancel_batch))
        .routes(routes!(do_not_call::add_number, do_not_call::list_numbers))
        .routes(routes!(do_not_call::get_number, do_not_call::delete_number))
        .routes(routes!(transcription::get_job));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(v1)
        .routes(routes!(service::healthz))
        .routes(routes!(service::readyz))
        .routes(routes!(service::metrics))
}

/// The OpenAPI document of everything [`router`] serves.
pub fn openapi_document() -> serde_json::Value {
    let mut doc = api_routes().split_for_parts().1;
    openapi::declare_edge_responses(&mut doc);
    openapi::document_json(&doc)
}

/// The whole service: the API's routes, `/openapi.json` and the console behind [`edge`].
pub fn router(state: AppState) -> Router {
    let (routes, mut doc) = api_routes().split_for_parts();
    openapi::declare_edge_responses(&mut doc);
    let queries = Arc::new(input::QueryPolicy::from_openapi(&doc));
    let doc = Arc::new(openapi::document_json(&doc));
    let routes = routes
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .route_layer(middleware::from_fn_with_state(queries, input::query_policy))
        // After the query policy, which holds only the API's declared routes to their
        // parameters: the console's pages take their own.
        .merge(console::router());
    edge(routes, state)
}

/// What every request passes through, around `routes`. Layers, outermost first: the count of
/// requests in flight (which the node's dispatcher yields to); the trace id and request
/// metrics; the panic catcher (so a panic answers the contract's 500 naming that trace id);
/// the body deadline; authentication and the rate-limit headers for every `/v1` request,
/// whatever route it matches (so a 404 or 405 is answered only to a caller with a key, with
/// the headers). Public so that a test can put a route of its own (one that panics, say)
/// behind exactly the service's edge.
pub fn edge(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(|| async { ApiError::NotFound("not found".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(middleware::from_fn_with_state(
            (
                state.config.http.body_idle_timeout,
                state.config.http.body_read_timeout,
            ),
            input::body_deadline,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .layer(middleware::from_fn(observe))
        .layer(InFlightRequestsLayer::new(state.in_flight.0.clone()))
        .with_state(state)
}

fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let text = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    ApiError::Panicked(text).into_response()
}

/// HTTP method names as metric labels: the standard ones, everything else `other`, so junk
/// methods cannot grow the metrics without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Every request: a trace id (task-local, so errors can name it), a tracing span carrying it,
/// and the request metrics.
async fn observe(req: Request, next: Next) -> Response {
    let trace = TraceId::new();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method());
    let span = tracing::info_span!("request", trace_id = %trace, %method, %route);
    let start = Instant::now();
    let response = REQUEST_TRACE
        .scope(trace, async move { next.run(req).await })
        .instrument(span.clone())
        .await;
    let elapsed = start.elapsed().as_secs_f64();
    let status = response.status().as_u16().to_string();
    metrics::counter!("outdial_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("outdial_http_request_duration_seconds", "route" => route).record(elapsed);
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_ms = elapsed * 1000.0,
            "served"
        )
    });
    response.into_response()
}
