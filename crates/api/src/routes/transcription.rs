//! Transcription jobs (FormantAI's `/v1/transcription/jobs`). The answers have no `data`
//! wrapper, as FormantAI's own examples show.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::input::ApiPath;
use crate::routes::batches::{bad_multipart, discard, discard_form, read_text, upload_form};
use crate::AppState;
use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::{Multipart, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use domain::transcription::{AudioFormat, Job, JobFormat, JobId, JobLanguages, NewJob, Utterance};
use domain::Millis;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct JobCreated {
    /// `job_` and 12 lowercase alphanumerics.
    pub id: String,
    /// The local recogniser that transcribes it.
    pub engine: String,
    /// `pending`.
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UtteranceView {
    /// A job's `speaker_0`, `speaker_1` (one per channel of a stereo file); a post-call
    /// transcript's `agent` and `human`, as in the live transcript.
    pub speaker: String,
    pub text: String,
    /// Seconds from the start of the file.
    pub start: f64,
    pub end: f64,
}

impl From<Utterance> for UtteranceView {
    fn from(u: Utterance) -> Self {
        Self {
            speaker: u.speaker,
            text: u.text,
            start: u.start,
            end: u.end,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub engine: String,
    /// `pending`, `processing`, `completed` or `failed`.
    pub status: String,
    /// `null` until completed.
    pub text: Option<String>,
    /// The contract code heard (e.g. `hi-IN`); `null` until completed.
    pub language: Option<String>,
    /// Empty until completed.
    pub utterances: Vec<UtteranceView>,
    /// Ours: why the job failed (only when `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Ours: what was not done as asked, e.g. `diarize` on one-channel audio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn view(job: Job) -> JobView {
    JobView {
        id: job.id.to_string(),
        engine: job.engine,
        status: job.status.as_str().to_string(),
        text: job.text,
        language: job.language,
        utterances: job
            .utterances
            .into_iter()
            .map(UtteranceView::from)
            .collect(),
        error: job.error,
        note: job.note,
    }
}

#[derive(Default)]
struct Form {
    audio: Option<(AudioFormat, Vec<u8>)>,
    languages: Option<String>,
    diarize: Option<String>,
    format: Option<String>,
}

/// Reads the audio up to `max_bytes`, refusing it from its first bytes when it is no container
/// the recogniser takes (the rest is then read and dropped, within the limit, so a client still
/// sending reads the answer).
async fn read_audio(mut field: Field<'_>, max_bytes: u64) -> ApiResult<(AudioFormat, Vec<u8>)> {
    let mut bytes: Vec<u8> = Vec::new();
    let mut format = None;
    while let Some(chunk) = field.chunk().await.map_err(|_| bad_multipart())? {
        if bytes.len() as u64 + chunk.len() as u64 > max_bytes {
            return Err(ApiError::FileTooLarge);
        }
        bytes.extend_from_slice(&chunk);
        if format.is_none() && bytes.len() >= AudioFormat::SNIFF_LEN {
            format = AudioFormat::sniff(&bytes);
            if format.is_none() {
                return Err(discard(field, max_bytes, unsupported()).await);
            }
        }
    }
    // A file shorter than the sniffing window is told by what there is of it.
    let format = format
        .or_else(|| AudioFormat::sniff(&bytes))
        .ok_or_else(unsupported)?;
    Ok((format, bytes))
}

fn unsupported() -> ApiError {
    ApiError::Invalid("unsupported audio format".into())
}

async fn read_form(multipart: &mut Multipart, max_bytes: u64) -> ApiResult<Form> {
    let mut form = Form::default();
    while let Some(field) = multipart.next_field().await.map_err(|_| bad_multipart())? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "audio" if form.audio.is_none() => {
                form.audio = Some(read_audio(field, max_bytes).await?)
            }
            "languages" if form.languages.is_none() => {
                form.languages = Some(read_text(field, "languages").await?)
            }
            "diarize" if form.diarize.is_none() => {
                form.diarize = Some(read_text(field, "diarize").await?)
            }
            "format" if form.format.is_none() => {
                form.format = Some(read_text(field, "format").await?)
            }
            // Unknown or repeated: refused, as the other forms refuse them.
            other => {
                let refusal = ApiError::invalid(if other.is_empty() { "field" } else { other });
                return Err(discard(field, max_bytes, refusal).await);
            }
        }
    }
    Ok(form)
}

fn parse_diarize(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Start a transcription job (`multipart/form-data`). No `data` wrapper, as FormantAI's example.
#[utoipa::path(post, path = "/v1/transcription/jobs", tag = "transcription",
    request_body(content_type = "multipart/form-data", description = "`audio` (WAV, FLAC, MP3 or OGG; at most 100 MiB by default), optional `languages` (comma-separated codes or `unknown`, the default), `diarize` (`true`/`false`), `format` (`standard`, the default, or `code_mixed`)"),
    responses((status = 200, body = JobCreated), (status = 400, body = crate::openapi::ErrorBody), (status = 413, body = crate::openapi::ErrorBody), (status = 429, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<JobCreated>> {
    let max_bytes = state.config.transcription.max_bytes;
    let mut multipart = upload_form(&headers, multipart, max_bytes, ApiError::FileTooLarge)?;
    // A file is held in memory until it is stored: uploads take turns with batch uploads.
    let wait = state.config.batch_upload_wait;
    let Ok(Ok(_turn)) = tokio::time::timeout(wait, state.uploads.clone().acquire_owned()).await
    else {
        let refusal = ApiError::UploadsBusy {
            retry_after_seconds: wait.as_secs().max(1),
        };
        return Err(discard_form(&mut multipart, max_bytes, refusal).await);
    };
    let form = read_form(&mut multipart, max_bytes).await?;
    let (audio_format, audio) = form
        .audio
        .ok_or_else(|| ApiError::Invalid("audio is required".into()))?;
    let languages = match form.languages {
        None => JobLanguages::Detect,
        Some(raw) => JobLanguages::parse(&raw).ok_or_else(|| ApiError::invalid("languages"))?,
    };
    let format = match form.format {
        None => JobFormat::Standard,
        Some(raw) => JobFormat::parse(&raw).ok_or_else(|| ApiError::invalid("format"))?,
    };
    let diarize = match form.diarize {
        None => false,
        Some(raw) => parse_diarize(&raw).ok_or_else(|| ApiError::invalid("diarize"))?,
    };
    let size = audio.len();
    let job = state
        .store
        .create_job(NewJob {
            id: JobId::new(),
            tenant: caller.tenant,
            engine: state.config.transcription.engine.clone(),
            languages,
            diarize,
            format,
            audio_format,
            audio,
            now: Millis::now(),
        })
        .await?;
    tracing::info!(job_id = %job.id, bytes = size, format = audio_format.as_str(), "transcription job accepted");
    if let Some(wake) = &state.transcription_wake {
        wake.notify_one();
    }
    Ok(Json(JobCreated {
        id: job.id.to_string(),
        engine: job.engine,
        status: job.status.as_str().to_string(),
    }))
}

/// A transcription job: its status, and once completed its text, language and utterances.
#[utoipa::path(get, path = "/v1/transcription/jobs/{job_id}", tag = "transcription",
    params(("job_id" = String, Path, description = "`job_` and 12 lowercase alphanumerics")),
    responses((status = 200, body = JobView), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<JobView>> {
    let not_found = || ApiError::NotFound("job not found".into());
    let id = JobId::parse(&id).ok_or_else(not_found)?;
    let job = state
        .store
        .get_job(caller.tenant, &id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(view(job)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diarize_is_a_boolean_in_words() {
        assert_eq!(parse_diarize("true"), Some(true));
        assert_eq!(parse_diarize(" FALSE "), Some(false));
        for bad in ["", "yes", "1", "tru"] {
            assert_eq!(parse_diarize(bad), None, "{bad}");
        }
    }
}
