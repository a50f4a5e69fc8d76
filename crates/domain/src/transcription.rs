//! Transcription jobs (FormantAI's `/v1/transcription/jobs`): a file posted once, transcribed in
//! the background, polled for text, language and speaker segments. A job's life is data here,
//! as a call's is in `lifecycle`: it is leased like a call, so a node that dies mid-job leaves
//! it to a restart or to another node, and only the holder of the current lease can finish it.

use crate::call::Speaker;
use crate::store::StoreError;
use crate::{AgentConfig, ConversationId, Millis, TenantId};
use async_trait::async_trait;
use rand::Rng;
use std::fmt;
use std::time::Duration;

/// The languages a job may name (`languages`), in the contract's order.
pub const JOB_LANGUAGES: [&str; 12] = [
    "hi-IN", "bn-IN", "kn-IN", "ml-IN", "mr-IN", "pa-IN", "ta-IN", "te-IN", "en-IN", "gu-IN",
    "as-IN", "ur-IN",
];

/// `languages=unknown`: the engine detects the language among [`JOB_LANGUAGES`].
pub const DETECT: &str = "unknown";

/// How many times a job is taken up before it is failed: a file that kills the engine every
/// time must not take a worker down forever.
pub const MAX_ATTEMPTS: u32 = 3;

/// `job_` and 12 lowercase alphanumerics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId(String);

const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ID_LEN: usize = 12;

impl JobId {
    pub fn new() -> Self {
        let mut rng = rand::thread_rng();
        let tail: String = (0..ID_LEN)
            .map(|_| char::from(ID_ALPHABET[rng.gen_range(0..ID_ALPHABET.len())]))
            .collect();
        Self(format!("job_{tail}"))
    }

    /// `None` for anything that is not an id this service could have issued.
    pub fn parse(raw: &str) -> Option<Self> {
        let tail = raw.strip_prefix("job_")?;
        (tail.len() == ID_LEN && tail.bytes().all(|b| ID_ALPHABET.contains(&b)))
            .then(|| Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Processing,
            Self::Completed,
            Self::Failed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    /// The statuses of a job not yet ended: a worker may take it up when it is waiting, or
    /// held by a lease that ran out (its node died or stalled).
    pub const OPEN: [Self; 2] = [Self::Pending, Self::Processing];

    /// `'pending', 'processing'`: [`JobStatus::OPEN`] for a query's `status IN (...)`.
    pub fn open_sql() -> String {
        Self::OPEN
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What `languages` asks for: detection, or one or more of [`JOB_LANGUAGES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobLanguages {
    Detect,
    Among(Vec<&'static str>),
}

impl JobLanguages {
    /// `unknown`, or comma-separated codes of [`JOB_LANGUAGES`] (case as listed, spaces around
    /// commas allowed, no repeats). `None` for anything else.
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        if raw == DETECT {
            return Some(Self::Detect);
        }
        let mut codes: Vec<&'static str> = Vec::new();
        for part in raw.split(',') {
            let code = JOB_LANGUAGES.iter().find(|&&l| l == part.trim())?;
            if codes.contains(code) {
                return None;
            }
            codes.push(code);
        }
        Some(Self::Among(codes))
    }

    /// As stored and echoed: `unknown` or the codes joined by commas.
    pub fn to_text(&self) -> String {
        match self {
            Self::Detect => DETECT.to_string(),
            Self::Among(codes) => codes.join(","),
        }
    }

    /// What a call in `language` (a BCP 47 tag: the agent's, or a retry's) is transcribed
    /// in: the listed code of the same language (`en-US` -> `en-IN`: the recogniser knows
    /// languages, not regions), else detection among all of them.
    pub fn for_call(language: &str) -> Self {
        let primary = primary_subtag(language);
        JOB_LANGUAGES
            .iter()
            .find(|code| primary_subtag(code) == primary)
            .map_or(Self::Detect, |code| Self::Among(vec![code]))
    }

    /// The codes the engine chooses among: every supported one when detecting.
    pub fn candidates(&self) -> Vec<&'static str> {
        match self {
            Self::Detect => JOB_LANGUAGES.to_vec(),
            Self::Among(codes) => codes.clone(),
        }
    }
}

/// `en` of `en-IN`, lowercased.
fn primary_subtag(tag: &str) -> String {
    tag.split('-').next().unwrap_or(tag).to_ascii_lowercase()
}

/// `format`: `code_mixed` says the audio may switch between English and an Indian language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobFormat {
    #[default]
    Standard,
    CodeMixed,
}

impl JobFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::CodeMixed => "code_mixed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Standard, Self::CodeMixed]
            .into_iter()
            .find(|v| v.as_str() == s.trim())
    }
}

/// The containers a job accepts, told by their first bytes (the name or declared type of an
/// upload proves nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    Wav,
    Flac,
    Mp3,
    Ogg,
}

impl AudioFormat {
    pub fn sniff(head: &[u8]) -> Option<Self> {
        if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WAVE" {
            Some(Self::Wav)
        } else if head.starts_with(b"fLaC") {
            Some(Self::Flac)
        } else if head.starts_with(b"OggS") {
            Some(Self::Ogg)
        } else if head.starts_with(b"ID3")
            // An MPEG audio frame header: 11 sync bits, then a layer that is not "reserved".
            || (head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0 && head[1] & 0x06 != 0)
        {
            Some(Self::Mp3)
        } else {
            None
        }
    }

    /// How many leading bytes [`AudioFormat::sniff`] needs.
    pub const SNIFF_LEN: usize = 12;

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wav => "wav",
            Self::Flac => "flac",
            Self::Mp3 => "mp3",
            Self::Ogg => "ogg",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Wav, Self::Flac, Self::Mp3, Self::Ogg]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// One speaker's stretch of speech; times in seconds from the start of the file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Utterance {
    pub speaker: String,
    pub text: String,
    pub start: f64,
    pub end: f64,
}

/// What a recogniser is asked for one file.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineRequest {
    /// The contract codes the language is chosen among (all of [`JOB_LANGUAGES`] to detect);
    /// one code fixes it.
    pub languages: Vec<&'static str>,
    pub code_mixed: bool,
    /// Transcribe each channel of a stereo file apart (one speaker per channel).
    pub split_channels: bool,
}

/// One stretch of recognised speech; times in seconds from the start of the file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Segment {
    pub start: f64,
    pub end: f64,
    pub text: String,
}

/// What a recogniser heard on one channel (or on the whole file, mixed down).
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelTranscript {
    /// A contract code of [`JOB_LANGUAGES`].
    pub language: &'static str,
    pub segments: Vec<Segment>,
}

/// What a recogniser heard in one file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileTranscript {
    /// One per channel when the channels were split, else one.
    pub channels: Vec<ChannelTranscript>,
    /// Channels the file has (whether or not they were split).
    pub file_channels: u32,
    /// The file's length in seconds.
    pub duration: f64,
}

/// A job as accepted: everything the worker needs, the audio included (kept in the database,
/// so any node can take the job up).
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    pub tenant: TenantId,
    pub engine: String,
    pub languages: JobLanguages,
    pub diarize: bool,
    pub format: JobFormat,
    pub audio_format: AudioFormat,
    pub audio: Vec<u8>,
    pub now: Millis,
}

/// A post-call transcript (an agent's `post_call_transcript`): a job on the call's own
/// recording, written in the transaction that settles the call, so it exists exactly when the
/// settled call does. The recording is referenced (the call's `recording_path`), not copied.
#[derive(Debug, Clone, PartialEq)]
pub struct PostCallJob {
    pub id: JobId,
    pub engine: String,
    /// What the recogniser is told: the call's language ([`JobLanguages::for_call`]).
    pub languages: JobLanguages,
    /// The language the call spoke (BCP 47).
    pub call_language: String,
    /// The recording's size in bytes (0 when it could not be told).
    pub audio_bytes: u64,
}

impl PostCallJob {
    /// The job a call that ends now gets: one when its agent asks for post-call transcripts
    /// and the call left a recording (`recording_bytes`: its size; only answered calls have
    /// one). The call spoke its retry's language, else its agent's.
    pub fn for_call(
        call: &crate::dispatch::DueCall,
        recording_bytes: Option<u64>,
        engine: &str,
    ) -> Option<Self> {
        let agent: &AgentConfig = call.agent_config.as_ref()?;
        if !agent.post_call_transcript {
            return None;
        }
        let audio_bytes = recording_bytes?;
        let language = call
            .retry_context
            .as_ref()
            .and_then(|r| r.retry_language.clone())
            .unwrap_or_else(|| agent.language.clone());
        Some(Self {
            id: JobId::new(),
            engine: engine.to_string(),
            languages: JobLanguages::for_call(&language),
            call_language: language,
            audio_bytes,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub tenant: TenantId,
    pub engine: String,
    pub status: JobStatus,
    pub languages: JobLanguages,
    pub diarize: bool,
    pub format: JobFormat,
    pub text: Option<String>,
    pub language: Option<String>,
    pub utterances: Vec<Utterance>,
    /// Why diarization was not done where it was asked for (mono audio): stated, never
    /// invented speakers.
    pub note: Option<String>,
    pub error: Option<String>,
    /// Times the job was taken up.
    pub attempts: u32,
    pub created_at: Millis,
    pub completed_at: Option<Millis>,
    /// `Some` for a call's post-call transcript: the job transcribes that call's recording.
    pub call: Option<CallSource>,
}

/// The call a post-call transcript job belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSource {
    pub conversation: ConversationId,
    /// The language the call spoke (BCP 47, e.g. `en-US`), which the answer reports when the
    /// recogniser heard that language.
    pub language: String,
}

/// Where a claimed job's audio is.
#[derive(Debug, Clone, PartialEq)]
pub enum JobAudio {
    /// The uploaded file, kept in the database with the job.
    Stored { format: AudioFormat, bytes: Vec<u8> },
    /// A call's recording, a file on the recordings' storage (`None`: the call has none any
    /// more). It is read by the worker, so a node can take the job only where it can read
    /// the recordings (shared storage when there are several nodes).
    Recording { path: Option<String> },
}

/// A job a worker holds: its lease is `lease` (only its holder can renew or finish it).
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub job: Job,
    pub audio: JobAudio,
    pub lease: String,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Completed {
        text: String,
        language: String,
        utterances: Vec<Utterance>,
        note: Option<String>,
    },
    Failed {
        error: String,
    },
}

impl JobOutcome {
    pub fn status(&self) -> JobStatus {
        match self {
            Self::Completed { .. } => JobStatus::Completed,
            Self::Failed { .. } => JobStatus::Failed,
        }
    }
}

/// What a claim does with a job it finds: a job taken up [`MAX_ATTEMPTS`] times already was
/// abandoned by a worker that died on it each time, so it is failed instead of tried again.
pub fn claim_decision(attempts_so_far: u32) -> ClaimDecision {
    if attempts_so_far >= MAX_ATTEMPTS {
        ClaimDecision::GiveUp(JobOutcome::Failed {
            error: format!("transcription stopped {attempts_so_far} times without finishing"),
        })
    } else {
        ClaimDecision::Take
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimDecision {
    Take,
    GiveUp(JobOutcome),
}

/// Why a job asked to `diarize` a one-channel file has one speaker: speakers are separated by
/// channel only, never guessed.
pub const MONO_DIARIZE_NOTE: &str =
    "diarize separates speakers by channel; this audio has one channel, so all speech is speaker_0";

/// The job's answer from what the recogniser heard: one speaker per channel (`speaker_0` the
/// first), utterances in time order, the text as they read in order, and the language of the
/// channel that spoke longest.
pub fn assemble(heard: &FileTranscript, diarize: bool) -> JobOutcome {
    let note = (diarize && heard.file_channels < 2).then(|| MONO_DIARIZE_NOTE.to_string());
    assemble_as(heard, |channel| format!("speaker_{channel}"), note)
}

/// What a job's worker writes for what the recogniser heard: an uploaded file's answer
/// ([`assemble`]), or a call's post-call transcript ([`assemble_call`]).
pub fn outcome(job: &Job, heard: &FileTranscript) -> JobOutcome {
    match &job.call {
        None => assemble(heard, job.diarize),
        Some(call) => assemble_call(heard, &call.language),
    }
}

/// Why a post-call transcript has no speakers: a recording of one channel (made before
/// recordings kept the two sides apart) cannot tell them apart.
pub const MONO_RECORDING_NOTE: &str =
    "the recording has one channel, so the speakers cannot be told apart";

/// A call's recording heard channel by channel (outdial records what it sent on the left and
/// what it received on the right): the left channel is the agent's, the right the person
/// called, named as the live transcript names them ([`Speaker`]). The language is the call's
/// own tag when that is what was heard (`en-US`, not the recogniser's `en-IN`).
pub fn assemble_call(heard: &FileTranscript, call_language: &str) -> JobOutcome {
    let stereo = heard.file_channels >= 2 && heard.channels.len() >= 2;
    let speaker = |channel: usize| match (stereo, channel) {
        (false, _) => "unknown".to_string(),
        (true, 0) => Speaker::Agent.as_str().to_string(),
        (true, _) => Speaker::Human.as_str().to_string(),
    };
    let note = (!stereo).then(|| MONO_RECORDING_NOTE.to_string());
    match assemble_as(heard, speaker, note) {
        JobOutcome::Completed {
            text,
            language,
            utterances,
            note,
        } => JobOutcome::Completed {
            text,
            language: if primary_subtag(&language) == primary_subtag(call_language) {
                call_language.to_string()
            } else {
                language
            },
            utterances,
            note,
        },
        failed => failed,
    }
}

fn assemble_as(
    heard: &FileTranscript,
    speaker: impl Fn(usize) -> String,
    note: Option<String>,
) -> JobOutcome {
    let mut utterances: Vec<Utterance> = heard
        .channels
        .iter()
        .enumerate()
        .flat_map(|(channel, t)| {
            let speaker = speaker(channel);
            t.segments
                .iter()
                .filter(|s| !s.text.trim().is_empty())
                .map(move |s| Utterance {
                    speaker: speaker.clone(),
                    text: s.text.trim().to_string(),
                    start: round_ms(s.start),
                    end: round_ms(s.end.max(s.start)),
                })
        })
        .collect();
    // Stable: a tie keeps the first channel first.
    utterances.sort_by(|a, b| a.start.total_cmp(&b.start));
    let text = utterances
        .iter()
        .map(|u| u.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let spoken = |t: &ChannelTranscript| t.segments.iter().map(|s| s.end - s.start).sum::<f64>();
    let Some(language) = heard
        .channels
        .iter()
        .max_by(|a, b| spoken(a).total_cmp(&spoken(b)))
        .map(|t| t.language)
    else {
        return JobOutcome::Failed {
            error: "the recogniser returned no channel".into(),
        };
    };
    JobOutcome::Completed {
        text,
        language: language.to_string(),
        utterances,
        note,
    }
}

fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// The jobs' port of the store.
#[async_trait]
pub trait TranscriptionStore: Send + Sync {
    /// Writes the job and its audio in one transaction, `pending`.
    async fn create_job(&self, job: NewJob) -> Result<Job, StoreError>;
    /// A tenant's job; another tenant's is `None`.
    async fn get_job(&self, tenant: TenantId, id: &JobId) -> Result<Option<Job>, StoreError>;
    /// The oldest job waiting or whose lease ran out, now held for `lease` by a new lease id;
    /// jobs found past [`MAX_ATTEMPTS`] are failed on the way.
    async fn claim_job(
        &self,
        now: Millis,
        lease: Duration,
    ) -> Result<Option<ClaimedJob>, StoreError>;
    /// Extends a held lease; `false` when it is no longer held (taken over, or finished).
    async fn renew_job(&self, id: &JobId, lease: &str, until: Millis) -> Result<bool, StoreError>;
    /// Ends a held job and drops its audio; `false` (and nothing written) when the lease is no
    /// longer held, so a job is finished once whatever the workers do.
    async fn finish_job(
        &self,
        id: &JobId,
        lease: &str,
        outcome: &JobOutcome,
        now: Millis,
    ) -> Result<bool, StoreError>;
    /// The post-call transcript job of a tenant's conversation; `None` when none was asked for
    /// (or the conversation is another tenant's).
    async fn post_call_transcript(
        &self,
        tenant: TenantId,
        conversation: ConversationId,
    ) -> Result<Option<Job>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_job_and_twelve_lowercase_alphanumerics() {
        let id = JobId::new();
        assert_eq!(id.as_str().len(), 16);
        assert_eq!(JobId::parse(id.as_str()), Some(id.clone()));
        assert_ne!(JobId::new(), id);
        for bad in [
            "job_ABCDEFGHIJKL",
            "job_abc",
            "jab_abcdefghijkl",
            "job_abcdefghijk!",
            "",
        ] {
            assert_eq!(JobId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn languages_are_unknown_or_listed_codes() {
        assert_eq!(JobLanguages::parse("unknown"), Some(JobLanguages::Detect));
        assert_eq!(
            JobLanguages::parse("hi-IN, en-IN"),
            Some(JobLanguages::Among(vec!["hi-IN", "en-IN"]))
        );
        for bad in [
            "",
            "hi",
            "en-US",
            "hi-IN,hi-IN",
            "hi-IN,",
            "unknown,hi-IN",
            "HI-IN",
        ] {
            assert_eq!(JobLanguages::parse(bad), None, "{bad}");
        }
        assert_eq!(JobLanguages::Detect.candidates().len(), 12);
    }

    #[test]
    fn formats_are_told_by_their_first_bytes() {
        assert_eq!(
            AudioFormat::sniff(b"RIFF\x24\0\0\0WAVEfmt "),
            Some(AudioFormat::Wav)
        );
        assert_eq!(
            AudioFormat::sniff(b"fLaC\0\0\0\x22"),
            Some(AudioFormat::Flac)
        );
        assert_eq!(AudioFormat::sniff(b"OggS\0\x02"), Some(AudioFormat::Ogg));
        assert_eq!(AudioFormat::sniff(b"ID3\x04\0"), Some(AudioFormat::Mp3));
        assert_eq!(
            AudioFormat::sniff(&[0xFF, 0xFB, 0x90, 0x64]),
            Some(AudioFormat::Mp3)
        );
        for bad in [
            &b"RIFF\0\0\0\0AVI "[..],
            b"customer_phone\n",
            b"",
            b"\xFF\xE0",
        ] {
            assert_eq!(AudioFormat::sniff(bad), None, "{bad:?}");
        }
    }

    fn segment(start: f64, end: f64, text: &str) -> Segment {
        Segment {
            start,
            end,
            text: text.into(),
        }
    }

    #[test]
    fn two_channels_are_two_speakers_in_time_order() {
        let heard = FileTranscript {
            channels: vec![
                ChannelTranscript {
                    language: "en-IN",
                    segments: vec![
                        segment(0.0, 2.5, " Hello, this is Asha."),
                        segment(6.0, 7.0, "Thank you."),
                    ],
                },
                ChannelTranscript {
                    language: "hi-IN",
                    segments: vec![segment(3.0, 5.1234, "Haan ji. "), segment(8.0, 8.0, " ")],
                },
            ],
            file_channels: 2,
            duration: 9.0,
        };
        let JobOutcome::Completed {
            text,
            language,
            utterances,
            note,
        } = assemble(&heard, true)
        else {
            panic!("not completed")
        };
        assert_eq!(text, "Hello, this is Asha. Haan ji. Thank you.");
        let who: Vec<(&str, f64, f64)> = utterances
            .iter()
            .map(|u| (u.speaker.as_str(), u.start, u.end))
            .collect();
        assert_eq!(
            who,
            [
                ("speaker_0", 0.0, 2.5),
                ("speaker_1", 3.0, 5.123),
                ("speaker_0", 6.0, 7.0)
            ]
        );
        // Channel 0 spoke 3.5 s, channel 1 2.1 s.
        assert_eq!(language, "en-IN");
        assert_eq!(note, None);
    }

    #[test]
    fn one_channel_asked_to_diarize_says_so_instead_of_inventing_speakers() {
        let heard = FileTranscript {
            channels: vec![ChannelTranscript {
                language: "hi-IN",
                segments: vec![segment(0.0, 1.0, "namaste"), segment(1.5, 2.0, "ji")],
            }],
            file_channels: 1,
            duration: 2.0,
        };
        let JobOutcome::Completed {
            utterances, note, ..
        } = assemble(&heard, true)
        else {
            panic!("not completed")
        };
        assert!(utterances.iter().all(|u| u.speaker == "speaker_0"));
        assert_eq!(note.as_deref(), Some(MONO_DIARIZE_NOTE));
        let JobOutcome::Completed { note, .. } = assemble(&heard, false) else {
            panic!("not completed")
        };
        assert_eq!(note, None);
    }

    #[test]
    fn a_call_is_transcribed_in_its_own_language() {
        assert_eq!(
            JobLanguages::for_call("en-US"),
            JobLanguages::Among(vec!["en-IN"])
        );
        assert_eq!(
            JobLanguages::for_call("hi-IN"),
            JobLanguages::Among(vec!["hi-IN"])
        );
        assert_eq!(
            JobLanguages::for_call("Ta"),
            JobLanguages::Among(vec!["ta-IN"])
        );
        assert_eq!(JobLanguages::for_call("fr-FR"), JobLanguages::Detect);
    }

    fn due(
        agent: Option<serde_json::Value>,
        retry_language: Option<&str>,
    ) -> crate::dispatch::DueCall {
        crate::dispatch::DueCall {
            id: ConversationId::first(Millis(1_700_000_000_000)),
            tenant: TenantId(1),
            agent: crate::AgentId(1),
            status: crate::CallStatus::Ringing,
            immediate: true,
            customer_phone: crate::E164::from_trusted("+919876543210".into()),
            parameters: Vec::new(),
            retry_context: retry_language.map(|l| crate::call::RetryContext {
                retry_language: Some(l.into()),
                ..Default::default()
            }),
            trace_id: crate::TraceId::new(),
            due_at: Millis(0),
            agent_config: agent.map(|v| AgentConfig::from_json(v.as_object().unwrap()).unwrap()),
            trunk: None,
            tenant_limits: Default::default(),
        }
    }

    #[test]
    fn a_post_call_job_is_made_when_the_agent_asks_and_there_is_a_recording() {
        let asks =
            serde_json::json!({"name": "a", "language": "hi-IN", "post_call_transcript": true});
        let job =
            PostCallJob::for_call(&due(Some(asks.clone()), None), Some(64_044), "whisper-base")
                .unwrap();
        assert_eq!(
            (
                job.languages,
                job.call_language.as_str(),
                job.audio_bytes,
                job.engine.as_str()
            ),
            (
                JobLanguages::Among(vec!["hi-IN"]),
                "hi-IN",
                64_044,
                "whisper-base"
            )
        );
        // A retry speaks its own language.
        let retry =
            PostCallJob::for_call(&due(Some(asks.clone()), Some("en-US")), Some(1), "w").unwrap();
        assert_eq!(retry.call_language, "en-US");
        // No recording (never answered), an agent that does not ask, a deleted agent: none.
        assert_eq!(
            PostCallJob::for_call(&due(Some(asks), None), None, "w"),
            None
        );
        let quiet = serde_json::json!({"name": "a"});
        assert_eq!(
            PostCallJob::for_call(&due(Some(quiet), None), Some(1), "w"),
            None
        );
        assert_eq!(PostCallJob::for_call(&due(None, None), Some(1), "w"), None);
    }

    #[test]
    fn a_call_recording_is_the_agent_on_the_left_and_the_person_called_on_the_right() {
        let heard = FileTranscript {
            channels: vec![
                ChannelTranscript {
                    language: "en-IN",
                    segments: vec![
                        segment(0.5, 3.0, " Hello Rahul, this is Asha."),
                        segment(6.0, 7.0, "Goodbye."),
                    ],
                },
                ChannelTranscript {
                    language: "en-IN",
                    segments: vec![segment(3.5, 5.0, "Yes, I can pay.")],
                },
            ],
            file_channels: 2,
            duration: 8.0,
        };
        let JobOutcome::Completed {
            text,
            language,
            utterances,
            note,
        } = assemble_call(&heard, "en-US")
        else {
            panic!("not completed")
        };
        let who: Vec<&str> = utterances.iter().map(|u| u.speaker.as_str()).collect();
        assert_eq!(who, ["agent", "human", "agent"]);
        assert_eq!(text, "Hello Rahul, this is Asha. Yes, I can pay. Goodbye.");
        // The call's own tag, not the recogniser's region.
        assert_eq!(language, "en-US");
        assert_eq!(note, None);
        // Heard in another language than the call's: what was heard is said.
        let JobOutcome::Completed { language, .. } = assemble_call(&heard, "hi-IN") else {
            panic!("not completed")
        };
        assert_eq!(language, "en-IN");

        // One channel: no speaker is guessed.
        let mono = FileTranscript {
            channels: vec![heard.channels[0].clone()],
            file_channels: 1,
            duration: 8.0,
        };
        let JobOutcome::Completed {
            utterances, note, ..
        } = assemble_call(&mono, "en-US")
        else {
            panic!("not completed")
        };
        assert!(utterances.iter().all(|u| u.speaker == "unknown"));
        assert_eq!(note.as_deref(), Some(MONO_RECORDING_NOTE));
    }

    #[test]
    fn a_job_abandoned_three_times_is_failed_not_retried() {
        assert_eq!(claim_decision(0), ClaimDecision::Take);
        assert_eq!(claim_decision(MAX_ATTEMPTS - 1), ClaimDecision::Take);
        match claim_decision(MAX_ATTEMPTS) {
            ClaimDecision::GiveUp(JobOutcome::Failed { error }) => {
                assert!(error.contains("3 times"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }
}
