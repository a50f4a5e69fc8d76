//! The OpenAPI document, assembled from the handlers' annotations.

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
    components(schemas(ErrorBody, ErrorDetail))
)]
pub struct ApiDoc;
