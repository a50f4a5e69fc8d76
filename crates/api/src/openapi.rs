//! The OpenAPI document, assembled from the handlers' annotations.

mod bodies;

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// FormantAI's error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The contract's exact message.
    pub message: String,
    /// `invalid_request`, `authentication_error`, `not_found`, `duplicate_request`,
    /// `rate_limit_exceeded`, `concurrent_call_limit_exceeded`, `conflict` or `internal_error`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// A phone number the API accepts: E.164, valid for its country's numbering plan (the pattern
/// is only its shape; the format names the plan check, which a schema cannot spell out).
pub const E164_FORMAT: &str = "e164";
pub const E164_PATTERN: &str = r"^\+[1-9][0-9]{7,14}$";
/// `<chain uuid>_<attempt>`, in the one spelling `ConversationId` accepts.
pub const CONVERSATION_ID: &str =
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}_[1-9][0-9]{0,8}$";

/// The document served at `/openapi.json`: the handlers' annotations, the edge's answers
/// ([`declare_edge_responses`]) and the exact request bodies.
pub fn document_json(doc: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut json = serde_json::to_value(doc).unwrap_or_default();
    bodies::apply(&mut json);
    json
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "outdial", description = "Outbound voice-agent calls; wire-compatible with the FormantAI Voice API v1."),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody, ErrorDetail, crate::routes::webhooks::DeliveryStatusQuery))
)]
pub struct ApiDoc;

/// Declares on every `/v1` operation the answers the layers around the handlers can give, so
/// the document names every status a client may see: 401 (no valid key), 429 (the key's or the
/// address's rate limit), 503 (connection cap), 500; 400 for an operation with parameters or a
/// body (the input policy), and 408 and 413 for one with a body. A handler's own description of
/// a status is kept.
pub fn declare_edge_responses(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::content::ContentBuilder;
    use utoipa::openapi::path::HttpMethod;
    use utoipa::openapi::{Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for method in [
            HttpMethod::Get,
            HttpMethod::Post,
            HttpMethod::Put,
            HttpMethod::Patch,
            HttpMethod::Delete,
        ] {
            let op = match method {
                HttpMethod::Get => item.get.as_mut(),
                HttpMethod::Post => item.post.as_mut(),
                HttpMethod::Put => item.put.as_mut(),
                HttpMethod::Patch => item.patch.as_mut(),
                HttpMethod::Delete => item.delete.as_mut(),
                _ => None,
            };
            let Some(op) = op else { continue };
            let has_input =
                op.request_body.is_some() || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
            let mut edge = vec![
                ("401", "invalid or missing api key"),
                (
                    "429",
                    "rate limit exceeded (per key, or failed authentications per address)",
                ),
                ("500", "internal error; the message names the trace_id"),
                ("503", "too many connections"),
            ];
            if has_input {
                edge.push(("400", "invalid input"));
            }
            if op.request_body.is_some() {
                edge.push(("408", "request body timed out"));
                edge.push(("413", "request body too large"));
            }
            for (code, description) in edge {
                op.responses
                    .responses
                    .entry(code.to_string())
                    .or_insert_with(|| error(description).into());
            }
            for p in op.parameters.iter_mut().flatten() {
                if let Some(schema) = parameter_bounds(&p.name) {
                    p.schema = Some(schema.into());
                }
            }
        }
    }
}

/// The bounds the handlers enforce on their parameters (`input::page`, `input::positive_id`,
/// E.164 numbers), written into the document so a client or a schema fuzzer knows them: a
/// bare `integer` says `limit=0` or `agent_id=-1` is fine when the API answers 400.
fn parameter_bounds(name: &str) -> Option<utoipa::openapi::schema::Object> {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    let integer = |min: i64, max: i64| {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(min))
            .maximum(Some(max))
            .build()
    };
    match name {
        "limit" => Some(integer(1, i64::from(crate::input::MAX_LIMIT))),
        "offset" => Some(integer(0, i64::MAX)),
        "number" => Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::Custom(E164_FORMAT.into())))
                .build(),
        ),
        "conversation_id" => Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(CONVERSATION_ID))
                .build(),
        ),
        n if n.ends_with("_id") => Some(integer(1, i64::MAX)),
        _ => None,
    }
}
