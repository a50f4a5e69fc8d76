//! Reading requests: bodies with the contract's size limit and error, JSON objects, query
//! strings and pagination. Every rejection becomes the contract's error, never axum's plain text.

use crate::error::ApiError;
use axum::body::{to_bytes, Body};
use axum::http::{header, HeaderMap};
use domain::store::Page;
use serde_json::{Map, Value};

/// Bodies over this are refused with 413 before they are parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub async fn read_body(headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::TooLarge);
    }
    // Without a length (chunked) the limit is enforced while reading; failing to read a body
    // within the limit is the only error a well-behaved client can provoke here.
    to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge)
}

/// A JSON object, or the contract's `invalid JSON body`.
pub fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::Invalid("invalid JSON body".into())),
    }
}

pub async fn read_json_object(
    headers: &HeaderMap,
    body: Body,
) -> Result<Map<String, Value>, ApiError> {
    let bytes = read_body(headers, body).await?;
    json_object(&bytes)
}

/// `invalid <field>` for the first (in sorted order) field not in `known`: a misspelt field must
/// never silently do nothing.
pub fn reject_unknown(body: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    let mut unknown: Vec<&String> = body
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .collect();
    unknown.sort();
    unknown
        .first()
        .map_or(Ok(()), |k| Err(ApiError::invalid(k)))
}

/// Query parameters as pairs; the last of a repeated name wins.
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

pub fn query_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

/// `limit` (1..=100, default 20) and `offset` (>= 0, default 0). Out-of-range values are refused
/// rather than clamped, so a client never silently gets fewer rows than it asked for.
pub fn page(pairs: &[(String, String)]) -> Result<Page, ApiError> {
    let limit = match query_value(pairs, "limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::invalid("limit"))?,
    };
    let offset = match query_value(pairs, "offset") {
        None => 0,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= i64::MAX as u64)
            .ok_or_else(|| ApiError::invalid("offset"))?,
    };
    Ok(Page { limit, offset })
}

/// A positive integer id from a path or query, or `invalid <field>`.
pub fn positive_id(raw: &str, field: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::invalid(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        query_pairs(Some(q))
    }

    #[test]
    fn pagination_bounds() {
        assert_eq!(
            page(&pairs("")).unwrap(),
            Page {
                limit: 20,
                offset: 0
            }
        );
        assert_eq!(
            page(&pairs("limit=100&offset=5")).unwrap(),
            Page {
                limit: 100,
                offset: 5
            }
        );
        for bad in [
            "limit=0",
            "limit=101",
            "limit=-1",
            "limit=abc",
            "limit=1.5",
            "offset=-1",
            "offset=x",
        ] {
            assert!(page(&pairs(bad)).is_err(), "{bad}");
        }
    }
}
