//! Reading requests: bodies with the contract's size limit and error, JSON objects, query
//! strings and pagination. Every rejection becomes the contract's error, never axum's plain text.

use crate::error::ApiError;
use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use domain::store::Page;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Bodies over this are refused with 413 before they are parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::TooLarge);
    }
    // Without a length (chunked) the limit is enforced while reading.
    to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| body_error(&e))
}

/// What went wrong reading a body: over the limit, too slow, or cut off.
pub fn body_error(e: &(dyn std::error::Error + 'static)) -> ApiError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if err.is::<http_body_util::LengthLimitError>() {
            return ApiError::TooLarge;
        }
        if err.is::<BodyDeadline>() {
            return ApiError::BodyTimeout;
        }
        cause = err.source();
    }
    ApiError::IncompleteBody
}

/// A request body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("request body deadline passed")]
pub struct BodyDeadline;

/// A request body under two deadlines: no pause between pieces longer than `idle`, and (for
/// bodies read whole) the whole of it by `whole_by`. The timers are started only when the body
/// has nothing ready, so a body that has already arrived (nearly every API call) costs no timer.
struct DeadlineBody {
    inner: Body,
    idle: Duration,
    whole_by: Option<tokio::time::Instant>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    whole: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            // Something arrived: the pause is over.
            self.pause = None;
            return Poll::Ready(frame);
        }
        let this = &mut *self;
        let idle = this.idle;
        let pause = this
            .pause
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        let mut late = pause.as_mut().poll(cx).is_ready();
        if let Some(by) = this.whole_by {
            let whole = this
                .whole
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(by)));
            late |= whole.as_mut().poll(cx).is_ready();
        }
        if late {
            return Poll::Ready(Some(Err(axum::Error::new(BodyDeadline))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: no request body may pause longer than the idle limit, and every body but a
/// multipart upload (which streams up to its own, much larger limit) must arrive whole within
/// the whole-body limit, so a client sending a byte now and then cannot hold a connection and a
/// request slot indefinitely.
pub async fn body_deadline(
    State((idle, whole)): State<(Duration, Duration)>,
    req: Request,
    next: Next,
) -> Response {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/")
        });
    let (parts, body) = req.into_parts();
    let body = Body::new(DeadlineBody {
        inner: body,
        idle,
        whole_by: (!multipart).then(|| tokio::time::Instant::now() + whole),
        pause: None,
        whole: None,
    });
    next.run(Request::from_parts(parts, body)).await
}

/// The query parameters each documented `/v1` operation declares, from the OpenAPI document,
/// so the document and the parameters accepted cannot disagree.
pub struct QueryPolicy {
    /// Per path template, each method's declared query parameters.
    allowed: HashMap<String, Vec<(Method, Vec<String>)>>,
}

impl QueryPolicy {
    pub fn from_openapi(doc: &utoipa::openapi::OpenApi) -> Self {
        use utoipa::openapi::path::ParameterIn;
        let mut allowed: HashMap<String, Vec<(Method, Vec<String>)>> = HashMap::new();
        for (path, item) in &doc.paths.paths {
            let operations = [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::PATCH, &item.patch),
                (Method::DELETE, &item.delete),
            ];
            for (method, op) in operations {
                let Some(op) = op else { continue };
                let names = op
                    .parameters
                    .iter()
                    .flatten()
                    .filter(|p| matches!(p.parameter_in, ParameterIn::Query))
                    .map(|p| p.name.clone())
                    .collect();
                allowed
                    .entry(path.clone())
                    .or_default()
                    .push((method, names));
            }
        }
        Self { allowed }
    }

    /// `invalid <name>` for a parameter the operation does not declare, one given twice (which
    /// of `?status=failed&status=delivered` would the client mean?), or a value with control
    /// characters; `None` when the operation is not a documented `/v1` one.
    fn check(&self, path: &str, method: &Method, query: Option<&str>) -> Result<(), ApiError> {
        if !path.starts_with("/v1/") {
            return Ok(());
        }
        let Some((_, allowed)) = self
            .allowed
            .get(path)
            .and_then(|ops| ops.iter().find(|(m, _)| m == method))
        else {
            return Ok(());
        };
        let pairs = query_pairs(query);
        for (i, (name, value)) in pairs.iter().enumerate() {
            if !clean_text(name, false) {
                return Err(ApiError::invalid("query"));
            }
            let repeated = pairs[..i].iter().any(|(earlier, _)| earlier == name);
            if repeated || !allowed.contains(name) || !clean_text(value, false) {
                return Err(ApiError::invalid(name));
            }
        }
        Ok(())
    }
}

/// Route middleware: refuses what [`QueryPolicy::check`] refuses. A misspelt filter must not
/// silently list everything.
pub async fn query_policy(
    State(policy): State<Arc<QueryPolicy>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(path) = req.extensions().get::<MatchedPath>() {
        if let Err(e) = policy.check(path.as_str(), req.method(), req.uri().query()) {
            return e.into_response();
        }
    }
    next.run(req).await
}

/// Path parameters, like axum's `Path`, but a value that cannot be read (not UTF-8 once
/// percent-decoded, or not of the parameter's type) answers the contract's `invalid <name>`.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for ApiPath<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => Err(match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key }
                | ErrorKind::ParseErrorAtKey { key, .. } => ApiError::invalid(key),
                _ => ApiError::invalid("path"),
            }),
            Err(other) => Err(ApiError::Internal(format!("path parameters: {other}"))),
        }
    }
}

/// Deepest nesting of arrays and objects a request body may have. The deepest field a request
/// carries (`retry_context.collected_data`) is copied a few levels down into webhook envelopes,
/// which must still parse when delivered (serde_json stops at 128 levels): well within that.
pub const MAX_JSON_DEPTH: usize = 32;

/// Fields whose text may span lines (tabs and line breaks allowed); every other string, and
/// every object key, is single-line. Anything inside one of them inherits its freedom.
const MULTILINE_FIELDS: [&str; 9] = [
    "metadata",
    "first_message",
    "say",
    "prompt",
    "description",
    "retry_message",
    "retry_initial_message",
    "value",
    "collected_data",
];

pub use domain::text::is_clean as clean_text;

/// Where the input policy was broken, and in which top-level field.
#[derive(Default)]
struct Offence {
    field: std::cell::RefCell<Option<String>>,
    found: std::cell::Cell<bool>,
}

impl Offence {
    fn raise<E: serde::de::Error>(&self) -> E {
        self.found.set(true);
        E::custom("input policy")
    }
}

/// One JSON value parsed under the input policy: no duplicate keys (the last-wins reading of
/// `{"agent_id": 999, "agent_id": 1}` would act on a value the client may not have meant), no
/// nesting beyond [`MAX_JSON_DEPTH`], no control characters outside multi-line text.
#[derive(Clone, Copy)]
struct Strict<'a> {
    offence: &'a Offence,
    depth: usize,
    multiline: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        if clean_text(v, self.multiline) {
            Ok(Value::String(v.to_owned()))
        } else {
            Err(self.offence.raise())
        }
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        if clean_text(&v, self.multiline) {
            Ok(Value::String(v))
        } else {
            Err(self.offence.raise())
        }
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let clean = clean_text(&key, false);
            if self.depth == 0 {
                // An unclean key is not echoed back in the error message.
                *self.offence.field.borrow_mut() = clean.then(|| key.clone());
            }
            if !clean || object.contains_key(&key) {
                return Err(self.offence.raise());
            }
            let seed = Strict {
                multiline: inner.multiline || MULTILINE_FIELDS.contains(&key.as_str()),
                ..inner
            };
            let value = map.next_value_seed(seed)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

impl Strict<'_> {
    fn nested<E: serde::de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_JSON_DEPTH {
            return Err(self.offence.raise());
        }
        Ok(Self {
            depth: self.depth + 1,
            ..self
        })
    }
}

/// A JSON object under the input policy: `invalid JSON body` when it is not JSON or not an
/// object, `invalid <field>` naming the top-level field that breaks the policy.
pub fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    use serde::de::DeserializeSeed;
    let offence = Offence::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let seed = Strict {
        offence: &offence,
        depth: 0,
        multiline: false,
    };
    let parsed = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(Value::Object(m)) => Ok(m),
        Err(_) if offence.found.get() => match offence.field.take() {
            Some(field) => Err(ApiError::invalid(&field)),
            None => Err(ApiError::Invalid("invalid JSON body".into())),
        },
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

    #[test]
    fn strict_json_names_the_field_that_breaks_the_policy() {
        let msg = |body: &str| match json_object(body.as_bytes()) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        assert_eq!(msg(r#"{"a": 1, "a": 2}"#), "invalid a");
        assert_eq!(msg(r#"{"p": [{"name": "x", "name": "y"}]}"#), "invalid p");
        assert_eq!(msg(r#"{"metadata": "one\ntwo\tthree"}"#), "ok");
        assert_eq!(msg(r#"{"name": "one\ntwo"}"#), "invalid name");
        assert_eq!(msg(r#"{"metadata": "nul\u0000"}"#), "invalid metadata");
        assert_eq!(
            msg(r#"{"retry_context": {"collected_data": {"note": "a\nb"}}}"#),
            "ok"
        );
        assert_eq!(msg(r#"{"k\u0000": 1}"#), "invalid JSON body");
        let deep = |n: usize| format!("{{\"x\": {}1{}}}", "[".repeat(n), "]".repeat(n));
        assert_eq!(msg(&deep(MAX_JSON_DEPTH - 1)), "ok");
        assert_eq!(msg(&deep(MAX_JSON_DEPTH)), "invalid x");
        assert_eq!(msg("[1]"), "invalid JSON body");
        assert_eq!(msg(r#"{"a": 1"#), "invalid JSON body");
    }
}
