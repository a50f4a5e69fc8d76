//! `GET /v1/languages` (ours, `agents.md` "Languages"): what this node can hold a call in.

use crate::AppState;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct LanguageRow {
    /// A BCP 47 tag of the contract's list.
    pub language: String,
    /// `voice.engine` values that speak it on this node.
    pub voices: Vec<&'static str>,
    /// `transcriber.engine` values that hear it on this node.
    pub transcribers: Vec<&'static str>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LanguageList {
    pub data: Vec<LanguageRow>,
}

/// Every language of the contract with the voice and transcriber engines this node can use for
/// it; an agent is served in a language when its own voice and transcriber engines both appear.
#[utoipa::path(get, path = "/v1/languages", tag = "agents",
    responses((status = 200, body = LanguageList)), security(("bearer" = [])))]
pub async fn list_languages(State(state): State<AppState>) -> Json<LanguageList> {
    Json(LanguageList {
        data: state
            .config
            .languages
            .listing()
            .into_iter()
            .map(|l| LanguageRow {
                language: l.language,
                voices: l.voices,
                transcribers: l.transcribers,
            })
            .collect(),
    })
}
