//! Batch calls: a CSV upload becomes a campaign; its counters and metrics are read from the
//! batch row, so they cost the same for ten recipients or a million.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::input::ApiPath;
use crate::input::{clean_text, page, positive_id, query_pairs, query_value};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::{Multipart, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::{Extension, Json};
use domain::batch::{
    parse_recipients, Batch, BatchAction, BatchError, BatchLimits, CsvError, NewBatch, Recipients,
};
use domain::call::parse_scheduled_for;
use domain::{AgentId, Millis, TraceId};
use serde::Serialize;
use std::io::Read;
use tokio::sync::mpsc;
use utoipa::ToSchema;

/// The form's text fields are small; anything larger is not a field we know.
const MAX_TEXT_FIELD: usize = 64 * 1024;
/// Room for the text fields and the multipart framing on top of the file itself.
const FORM_OVERHEAD: u64 = 4 * MAX_TEXT_FIELD as u64;
/// Chunks in flight between the socket and the parser: enough to keep both busy, few enough
/// that the file is never buffered whole.
const CHUNKS_IN_FLIGHT: usize = 8;
const MAX_NAME_CHARS: usize = 255;

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::AgentNotFound | BatchError::NotFound => Self::NotFound(e.to_string()),
            BatchError::AgentHasNoNumber => Self::Invalid(e.to_string()),
            BatchError::Finished(_) => Self::Conflict(e.to_string()),
            BatchError::Store(e) => e.into(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchCreated {
    pub id: i64,
    pub name: String,
    pub agent_id: i64,
    pub status: String,
    pub total_recipients: i64,
    /// RFC 3339, UTC.
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchCreatedResponse {
    pub data: BatchCreated,
}

/// A batch with its per-recipient counters (by each recipient's latest attempt).
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItem {
    pub id: i64,
    pub name: String,
    pub agent_id: i64,
    pub status: String,
    pub total_recipients: i64,
    pub created_at: String,
    pub updated_at: String,
    /// RFC 3339, UTC; `null` when the batch started at upload.
    pub scheduled_for: Option<String>,
    pub pending_count: i64,
    pub in_progress_count: i64,
    pub pending_retry_count: i64,
    pub completed_count: i64,
    /// Recipients whose call completed, as in the metrics (the contract's name for it).
    pub success_count: i64,
    pub busy_count: i64,
    pub no_answer_count: i64,
    pub failed_count: i64,
    pub socket_failure_count: i64,
    pub unreachable_count: i64,
    pub canceled_count: i64,
    pub total_processed: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub data: BatchItem,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchList {
    pub data: Vec<BatchItem>,
    pub has_more: bool,
    pub total: u64,
}

/// The contract's metrics, plus `pending_count` and `canceled_count` (ours).
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchMetrics {
    pub avg_duration_seconds: f64,
    pub busy_count: i64,
    pub completed_count: i64,
    pub failed_count: i64,
    pub in_progress_count: i64,
    pub no_answer_count: i64,
    pub pending_retry_count: i64,
    pub socket_failure_count: i64,
    pub success_count: i64,
    pub success_rate: f64,
    pub total_processed: i64,
    pub unreachable_count: i64,
    pub pending_count: i64,
    pub canceled_count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchMetricsResponse {
    pub data: BatchMetrics,
}

fn item(b: &Batch) -> BatchItem {
    let c = &b.counts;
    BatchItem {
        id: b.id,
        name: b.name.clone(),
        agent_id: b.agent.0,
        status: b.status.as_str().to_string(),
        total_recipients: b.total_recipients,
        created_at: b.created_at.to_rfc3339(),
        updated_at: b.updated_at.to_rfc3339(),
        scheduled_for: b.scheduled_for.map(|m| m.to_rfc3339()),
        pending_count: c.pending,
        in_progress_count: c.in_progress,
        pending_retry_count: c.pending_retry,
        completed_count: c.completed,
        success_count: c.completed,
        busy_count: c.busy,
        no_answer_count: c.no_answer,
        failed_count: c.failed,
        socket_failure_count: c.socket_failure,
        unreachable_count: c.unreachable,
        canceled_count: c.canceled,
        total_processed: c.processed(),
    }
}

/// Two decimals: a rate or an average with more digits is noise on a dashboard.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn metrics(b: &Batch) -> BatchMetrics {
    let c = &b.counts;
    let avg = if c.completed > 0 {
        c.completed_duration_seconds as f64 / c.completed as f64
    } else {
        0.0
    };
    let rate = if b.total_recipients > 0 {
        c.completed as f64 * 100.0 / b.total_recipients as f64
    } else {
        0.0
    };
    BatchMetrics {
        avg_duration_seconds: round2(avg),
        busy_count: c.busy,
        completed_count: c.completed,
        failed_count: c.failed,
        in_progress_count: c.in_progress,
        no_answer_count: c.no_answer,
        pending_retry_count: c.pending_retry,
        socket_failure_count: c.socket_failure,
        success_count: c.completed,
        success_rate: round2(rate),
        total_processed: c.processed(),
        unreachable_count: c.unreachable,
        pending_count: c.pending,
        canceled_count: c.canceled,
    }
}

/// Feeds the upload's chunks to the blocking CSV parser as they arrive, so the file is parsed
/// while it streams in and never held whole.
pub(crate) struct ChunkReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

pub(crate) fn bad_multipart() -> ApiError {
    ApiError::Invalid("invalid multipart body".into())
}

/// The form of an upload, refused at once with `too_large` when its declared size is over the
/// file limit plus room for the form around it.
pub(crate) fn upload_form(
    headers: &HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
    max_bytes: u64,
    too_large: ApiError,
) -> ApiResult<Multipart> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_bytes.saturating_add(FORM_OVERHEAD)) {
        return Err(too_large);
    }
    multipart.map_err(|_| ApiError::Invalid("request must be multipart/form-data".into()))
}

/// A `.csv` by name, or by type when the client sent no file name.
pub(crate) fn is_csv(field: &Field<'_>) -> bool {
    match field.file_name() {
        Some(name) => name.to_ascii_lowercase().ends_with(".csv"),
        None => field
            .content_type()
            .is_some_and(|t| t.eq_ignore_ascii_case("text/csv")),
    }
}

/// Streams a CSV file into `parse` (which runs on a blocking thread and gets the row limit).
/// The size limit is enforced on the bytes read, whatever the request declared; a parser that
/// stopped at a bad row ends the upload early.
pub(crate) async fn read_csv<T, P>(
    mut field: Field<'_>,
    limits: BatchLimits,
    parse: P,
) -> Result<Result<T, CsvError>, ApiError>
where
    T: Send + 'static,
    P: FnOnce(ChunkReader, usize) -> Result<T, CsvError> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let max_rows = limits.max_rows;
    let parser = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let parsed = parse(
            ChunkReader {
                rx,
                current: Bytes::new(),
            },
            max_rows,
        );
        // Includes waiting for the bytes: on a fast link it is the parser's own time.
        tracing::info!(
            parse_ms = started.elapsed().as_millis() as u64,
            ok = parsed.is_ok(),
            "csv file read"
        );
        parsed
    });
    let mut size = 0u64;
    let mut parsing = true;
    while let Some(chunk) = field.chunk().await.map_err(|_| bad_multipart())? {
        size += chunk.len() as u64;
        if size > limits.max_bytes {
            if parsing {
                return Err(ApiError::TooLarge);
            }
            // Past the limit after a bad row: stop reading; the bad row is the answer.
            break;
        }
        // Once the parser has its answer (a bad row), the rest of the file cannot change it;
        // it is still read, within the size limit, so that the client, still sending, gets
        // to read the answer instead of a reset connection.
        if parsing && tx.send(chunk).await.is_err() {
            parsing = false;
        }
    }
    drop(tx);
    parser
        .await
        .map_err(|e| ApiError::Internal(format!("csv parser: {e}")))
}

pub(crate) async fn read_text(mut field: Field<'_>, name: &str) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|_| bad_multipart())? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_TEXT_FIELD {
            return Err(ApiError::invalid(name));
        }
    }
    String::from_utf8(bytes)
        .ok()
        .filter(|text| clean_text(text, false))
        .ok_or_else(|| ApiError::invalid(name))
}

#[derive(Default)]
struct Form {
    agent_id: Option<String>,
    name: Option<String>,
    scheduled_for: Option<String>,
    file: Option<Recipients>,
}

/// The batch form's fields, the file parsed as it streams.
async fn read_form(multipart: &mut Multipart, limits: BatchLimits) -> ApiResult<Form> {
    let mut form = Form::default();
    while let Some(field) = multipart.next_field().await.map_err(|_| bad_multipart())? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "file" if form.file.is_none() => {
                if !is_csv(&field) {
                    let refusal = ApiError::Invalid("file must be a .csv file".into());
                    return Err(discard(field, limits.max_bytes, refusal).await);
                }
                // A bad row decides the answer: nothing after the file is read (and the file
                // itself only up to its size limit).
                let recipients = read_csv(field, limits, parse_recipients)
                    .await?
                    .map_err(|e| ApiError::Invalid(e.to_string()))?;
                form.file = Some(recipients);
            }
            "agent_id" if form.agent_id.is_none() => {
                form.agent_id = Some(read_text(field, "agent_id").await?)
            }
            "name" if form.name.is_none() => form.name = Some(read_text(field, "name").await?),
            "scheduled_for" if form.scheduled_for.is_none() => {
                form.scheduled_for = Some(read_text(field, "scheduled_for").await?)
            }
            // Unknown or repeated: refused, as `POST /v1/call` refuses unknown fields, so a
            // misspelt `scheduled_for` cannot start a campaign now.
            other => {
                let refusal = ApiError::invalid(if other.is_empty() { "field" } else { other });
                return Err(discard(field, limits.max_bytes, refusal).await);
            }
        }
    }
    Ok(form)
}

/// A field refused unread (not a CSV, not a field of the form): it is read and dropped up to
/// the file limit, so a client still sending it reads the refusal instead of a reset
/// connection. Past the limit it is not read: the connection closes after the answer.
pub(crate) async fn discard(mut field: Field<'_>, max_bytes: u64, refusal: ApiError) -> ApiError {
    let mut budget = max_bytes;
    while let Ok(Some(chunk)) = field.chunk().await {
        match budget.checked_sub(chunk.len() as u64) {
            Some(left) => budget = left,
            None => break,
        }
    }
    refusal
}

/// Every field of a form refused before it was read, each read and dropped as [`discard`] does.
pub(crate) async fn discard_form(
    multipart: &mut Multipart,
    max_bytes: u64,
    refusal: ApiError,
) -> ApiError {
    let mut refusal = refusal;
    while let Ok(Some(field)) = multipart.next_field().await {
        refusal = discard(field, max_bytes, refusal).await;
    }
    refusal
}

/// Create a batch from a CSV of recipients (`multipart/form-data`).
#[utoipa::path(post, path = "/v1/batch-call", tag = "batch calls",
    request_body(content_type = "multipart/form-data", description = "`agent_id`, `name`, `file` (a .csv with a `customer_phone` column), optional `scheduled_for`"),
    responses((status = 200, body = BatchCreatedResponse), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 413, body = crate::openapi::ErrorBody), (status = 429, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<BatchCreatedResponse>> {
    let limits = state.config.batch_limits;
    let mut multipart = upload_form(&headers, multipart, limits.max_bytes, ApiError::TooLarge)?;
    // Before the file is read: a refused upload costs neither the parse nor the memory.
    let wait = state.config.batch_upload_wait;
    let Ok(Ok(_turn)) = tokio::time::timeout(wait, state.uploads.clone().acquire_owned()).await
    else {
        let refusal = ApiError::UploadsBusy {
            retry_after_seconds: wait.as_secs().max(1),
        };
        return Err(discard_form(&mut multipart, limits.max_bytes, refusal).await);
    };
    let form = read_form(&mut multipart, limits).await?;
    let now = Millis::now();
    let agent = form
        .agent_id
        .ok_or_else(|| ApiError::Invalid("agent_id is required".into()))
        .and_then(|v| positive_id(v.trim(), "agent_id"))?;
    let name = form
        .name
        .map(|n| n.trim().to_string())
        .ok_or_else(|| ApiError::Invalid("name is required".into()))?;
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::invalid("name"));
    }
    let scheduled_for = form
        .scheduled_for
        .map(|s| parse_scheduled_for(&s, now).map_err(|_| ApiError::invalid("scheduled_for")))
        .transpose()?;
    let recipients = form
        .file
        .ok_or_else(|| ApiError::Invalid("file is required".into()))?;
    let trace_id = crate::error::REQUEST_TRACE
        .try_with(|t| *t)
        .unwrap_or_else(|_| TraceId::new());
    let rows = recipients.len();
    let batch = state
        .store
        .create_batch(NewBatch {
            tenant: caller.tenant,
            agent: AgentId(agent),
            name,
            scheduled_for,
            recipients,
            trace_id,
            now,
        })
        .await?;
    tracing::info!(batch_id = batch.id, rows, "batch accepted");
    if scheduled_for.is_none() {
        if let Some(wake) = &state.dispatch_wake {
            wake.notify_one();
        }
    }
    Ok(Json(BatchCreatedResponse {
        data: BatchCreated {
            id: batch.id,
            name: batch.name,
            agent_id: batch.agent.0,
            status: batch.status.as_str().to_string(),
            total_recipients: batch.total_recipients,
            created_at: batch.created_at.to_rfc3339(),
        },
    }))
}

/// A path id that cannot exist is reported like one that does not.
fn batch_id(raw: &str) -> Result<i64, ApiError> {
    positive_id(raw, "batch_id").map_err(|_| BatchError::NotFound.into())
}

async fn load(state: &AppState, caller: &Caller, raw: &str) -> ApiResult<Batch> {
    let id = batch_id(raw)?;
    state
        .store
        .get_batch(caller.tenant, id)
        .await?
        .ok_or_else(|| BatchError::NotFound.into())
}

/// List batches, newest first.
#[utoipa::path(get, path = "/v1/batch-calls", tag = "batch calls",
    params(
        ("agent_id" = Option<i64>, Query, description = "Only this agent's batches"),
        ("limit" = Option<u32>, Query, description = "1..=100, default 20"),
        ("offset" = Option<u64>, Query, description = "default 0"),
    ),
    responses((status = 200, body = BatchList), (status = 400, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_batches(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<BatchList>> {
    let pairs = query_pairs(raw.as_deref());
    let agent = query_value(&pairs, "agent_id")
        .map(|v| positive_id(v, "agent_id").map(AgentId))
        .transpose()?;
    let page = page(&pairs)?;
    let listed = state.store.list_batches(caller.tenant, agent, page).await?;
    Ok(Json(BatchList {
        has_more: listed.has_more(page),
        total: listed.total,
        data: listed.items.iter().map(item).collect(),
    }))
}

/// One batch with its counters.
#[utoipa::path(get, path = "/v1/batch-calls/{batch_id}", tag = "batch calls",
    params(("batch_id" = i64, Path)),
    responses((status = 200, body = BatchResponse), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<BatchResponse>> {
    let b = load(&state, &caller, &id).await?;
    Ok(Json(BatchResponse { data: item(&b) }))
}

/// The batch's metrics, counted per recipient by its latest attempt.
#[utoipa::path(get, path = "/v1/batch-calls/{batch_id}/metrics", tag = "batch calls",
    params(("batch_id" = i64, Path)),
    responses((status = 200, body = BatchMetricsResponse), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_batch_metrics(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<BatchMetricsResponse>> {
    let b = load(&state, &caller, &id).await?;
    Ok(Json(BatchMetricsResponse { data: metrics(&b) }))
}

async fn change(
    state: &AppState,
    caller: &Caller,
    raw: &str,
    action: BatchAction,
) -> ApiResult<Json<BatchResponse>> {
    let id = batch_id(raw)?;
    let b = state
        .store
        .change_batch(caller.tenant, id, action, Millis::now())
        .await?;
    match action {
        BatchAction::Resume => {
            if let Some(wake) = &state.dispatch_wake {
                wake.notify_one();
            }
        }
        // Every recipient settled as canceled has its `call.canceled` event in the outbox now.
        BatchAction::Cancel => state.config.webhook_wake.notify_one(),
        BatchAction::Pause => {}
    }
    Ok(Json(BatchResponse { data: item(&b) }))
}

/// Pause (ours): no new dials of the batch's calls; live calls go on.
#[utoipa::path(post, path = "/v1/batch-calls/{batch_id}/pause", tag = "batch calls",
    params(("batch_id" = i64, Path)),
    responses((status = 200, body = BatchResponse), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn pause_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<BatchResponse>> {
    change(&state, &caller, &id, BatchAction::Pause).await
}

/// Resume a paused batch (ours).
#[utoipa::path(post, path = "/v1/batch-calls/{batch_id}/resume", tag = "batch calls",
    params(("batch_id" = i64, Path)),
    responses((status = 200, body = BatchResponse), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn resume_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<BatchResponse>> {
    change(&state, &caller, &id, BatchAction::Resume).await
}

/// Cancel (ours): recipients not yet dialled become `canceled`; live calls are never cut.
#[utoipa::path(post, path = "/v1/batch-calls/{batch_id}/cancel", tag = "batch calls",
    params(("batch_id" = i64, Path)),
    responses((status = 200, body = BatchResponse), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<BatchResponse>> {
    change(&state, &caller, &id, BatchAction::Cancel).await
}
