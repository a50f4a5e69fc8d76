//! A tenant's do-not-call list (`spec/api-v1.md`, "Do-not-call list").

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::input::{
    clean_text, json_object, page, query_pairs, read_body, reject_unknown, ApiPath,
};
use crate::routes::batches::{bad_multipart, discard, is_csv, read_csv, upload_form};
use crate::AppState;
use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, RawQuery, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use domain::batch::BatchLimits;
use domain::do_not_call::{parse_listings, Entry, Listing, Source, MAX_REASON_CHARS};
use domain::{Millis, E164};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct EntryView {
    /// E.164.
    pub number: String,
    pub reason: Option<String>,
    /// `api`, `call` (the person called asked) or `import`.
    pub source: String,
    /// RFC 3339, UTC.
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EntryResponse {
    pub data: EntryView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EntryList {
    pub data: Vec<EntryView>,
    pub has_more: bool,
    pub total: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportView {
    /// Rows in the file.
    pub total: u64,
    /// Numbers that were not listed before (the others keep their first entry).
    pub added: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResponse {
    pub data: ImportView,
}

fn view(e: Entry) -> EntryView {
    EntryView {
        number: e.number.as_str().to_owned(),
        reason: e.reason,
        source: e.source.as_str().to_owned(),
        created_at: e.created_at.to_rfc3339_millis(),
    }
}

/// The number of a path: any spelling `POST /v1/call` accepts (`+` may be sent as `%2B`).
fn path_number(raw: &str) -> ApiResult<E164> {
    E164::parse(raw.trim()).map_err(|_| ApiError::invalid("number"))
}

fn not_listed() -> ApiError {
    ApiError::NotFound("number not found".into())
}

/// Put a number on the list; a listed number answers its existing entry. Calls still waiting
/// for the number are canceled (`do-not-call`) in the same transaction.
#[utoipa::path(post, path = "/v1/do-not-call", tag = "do-not-call",
    request_body(content = Object, description = "{number, reason?}"),
    responses((status = 200, body = EntryResponse), (status = 400, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_number(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<EntryResponse>> {
    let body = json_object(&read_body(&headers, body).await?)?;
    reject_unknown(&body, &["number", "reason"])?;
    let number = match body.get("number") {
        None | Some(Value::Null) => return Err(ApiError::Invalid("number is required".into())),
        Some(v) => v
            .as_str()
            .and_then(|s| E164::parse(s).ok())
            .ok_or_else(|| ApiError::invalid("number"))?,
    };
    let reason = match body.get("reason") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .map(str::trim)
                .filter(|s| s.chars().count() <= MAX_REASON_CHARS && clean_text(s, false))
                .ok_or_else(|| ApiError::invalid("reason"))?
                .to_owned(),
        )
        .filter(|s| !s.is_empty()),
    };
    let entry = state
        .store
        .add_do_not_call(
            caller.tenant,
            Listing { number, reason },
            Source::Api,
            Millis::now(),
        )
        .await?;
    // Canceled calls have `call.canceled` events waiting in the outbox.
    state.config.webhook_wake.notify_one();
    Ok(Json(EntryResponse { data: view(entry) }))
}

/// The list, newest first.
#[utoipa::path(get, path = "/v1/do-not-call", tag = "do-not-call",
    params(
        ("limit" = Option<u32>, Query, description = "1..=100, default 20"),
        ("offset" = Option<u64>, Query, description = "default 0"),
    ),
    responses((status = 200, body = EntryList), (status = 400, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_numbers(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<EntryList>> {
    let page = page(&query_pairs(raw.as_deref()))?;
    let listed = state.store.list_do_not_call(caller.tenant, page).await?;
    Ok(Json(EntryList {
        has_more: listed.has_more(page),
        total: listed.total,
        data: listed.items.into_iter().map(view).collect(),
    }))
}

/// One listed number.
#[utoipa::path(get, path = "/v1/do-not-call/{number}", tag = "do-not-call",
    params(("number" = String, Path, description = "E.164, `+` sent as `%2B`")),
    responses((status = 200, body = EntryResponse), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_number(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(number): ApiPath<String>,
) -> ApiResult<Json<EntryResponse>> {
    let number = path_number(&number)?;
    let entry = state
        .store
        .get_do_not_call(caller.tenant, &number)
        .await?
        .ok_or_else(not_listed)?;
    Ok(Json(EntryResponse { data: view(entry) }))
}

/// Take a number off the list. Calls canceled while it was listed stay canceled.
#[utoipa::path(delete, path = "/v1/do-not-call/{number}", tag = "do-not-call",
    params(("number" = String, Path, description = "E.164, `+` sent as `%2B`")),
    responses((status = 200, description = "`{\"data\": {\"number\": ..., \"deleted\": true}}`"), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_number(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(number): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let number = path_number(&number)?;
    if !state
        .store
        .delete_do_not_call(caller.tenant, &number)
        .await?
    {
        return Err(not_listed());
    }
    Ok(Json(
        serde_json::json!({"data": {"number": number.as_str(), "deleted": true}}),
    ))
}

/// The import form's one field, `file`, parsed as it streams.
async fn read_listings(multipart: &mut Multipart, limits: BatchLimits) -> ApiResult<Vec<Listing>> {
    let mut listings = None;
    while let Some(field) = multipart.next_field().await.map_err(|_| bad_multipart())? {
        match field.name().unwrap_or("") {
            "file" if listings.is_none() => {
                if !is_csv(&field) {
                    let refusal = ApiError::Invalid("file must be a .csv file".into());
                    return Err(discard(field, limits.max_bytes, refusal).await);
                }
                let parsed = read_csv(field, limits, parse_listings)
                    .await?
                    .map_err(|e| ApiError::Invalid(e.to_string()))?;
                listings = Some(parsed);
            }
            other => {
                let refusal = ApiError::invalid(if other.is_empty() { "field" } else { other });
                return Err(discard(field, limits.max_bytes, refusal).await);
            }
        }
    }
    listings.ok_or_else(|| ApiError::Invalid("file is required".into()))
}

/// List every number of a CSV file (`multipart/form-data`, field `file`, a `number` column and
/// optionally `reason`): all of them or none, with the batch-call file errors.
#[utoipa::path(post, path = "/v1/do-not-call/import", tag = "do-not-call",
    request_body(content_type = "multipart/form-data", description = "`file`: a .csv with a `number` column, optionally `reason`"),
    responses((status = 200, body = ImportResponse), (status = 400, body = crate::openapi::ErrorBody), (status = 413, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn import_numbers(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<ImportResponse>> {
    let limits = state.config.batch_limits;
    let mut multipart = upload_form(&headers, multipart, limits.max_bytes, ApiError::TooLarge)?;
    let listings = read_listings(&mut multipart, limits).await?;
    let imported = state
        .store
        .import_do_not_call(caller.tenant, listings, Millis::now())
        .await?;
    state.config.webhook_wake.notify_one();
    Ok(Json(ImportResponse {
        data: ImportView {
            total: imported.total,
            added: imported.added,
        },
    }))
}
