//! The brain: what the agent says next, given what the caller said.

use crate::stt::Transcript;
use async_trait::async_trait;
use serde_json::{Map, Value};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum BrainError {
    #[error("the brain's model failed: {0}")]
    Model(String),
    /// The model server could not be reached (refused, DNS, TLS).
    #[error("the model server could not be reached: {0}")]
    Connect(String),
    /// The model server answered with a non-success status; `body` is a short excerpt.
    #[error("the model server answered {status}: {body}")]
    Http { status: u16, body: String },
    /// `stage` is what we were waiting for: "connect", "response", "next chunk" or "turn".
    #[error("the model server took longer than {limit:?} ({stage})")]
    Timeout {
        stage: &'static str,
        limit: Duration,
    },
    /// The reply stream broke off or could not be read.
    #[error("the model's reply stream was malformed or cut: {0}")]
    Stream(String),
}

/// What the agent does after a turn: speak `say` in order, then hang up if `end`, or hand the
/// call to the agent's transfer target named `transfer`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    pub say: Vec<String>,
    pub end: bool,
    pub transfer: Option<String>,
}

#[async_trait]
pub trait Brain: Send + 'static {
    /// What the agent says right after the opening line (the first stage's question).
    fn start(&mut self) -> Reply;
    /// The caller finished a turn and said `heard` (possibly empty: speech nobody could read).
    async fn hear(&mut self, heard: &str) -> Result<Reply, BrainError>;
    /// Like [`Brain::hear`], with the recogniser's confidence, for brains that weigh it (the
    /// `flow` brain re-asks on a doubtful reply). The default ignores it.
    async fn hear_transcript(&mut self, heard: &Transcript) -> Result<Reply, BrainError> {
        self.hear(&heard.text).await
    }
    /// Like [`Brain::hear_transcript`], but each line of the reply is also sent to `lines` as soon as it is
    /// known, so speech can start before a streaming model has finished. On `Ok` the lines sent
    /// are exactly the returned `say`, in order; on `Err` the lines already sent are still the
    /// brain's (the agent should speak them). The default sends the lines after `hear`.
    async fn hear_streaming(
        &mut self,
        heard: &Transcript,
        lines: &mpsc::UnboundedSender<String>,
    ) -> Result<Reply, BrainError> {
        let reply = self.hear_transcript(heard).await?;
        for line in &reply.say {
            let _ = lines.send(line.clone());
        }
        Ok(reply)
    }
    /// The transfer a reply asked for could not be made; the caller is still on the line and
    /// has been told. What the agent does next (the default: wait for the caller).
    fn transfer_failed(&mut self) -> Reply {
        Reply::default()
    }
    /// Words and phrases the caller is expected to say now: a hint for speech-to-text.
    fn expected_phrases(&self) -> Vec<String>;
    /// Everything collected so far.
    fn results(&self) -> &Map<String, Value>;
    /// The stage the conversation is in, for a later attempt to resume at; `None` for a brain
    /// without stages.
    fn stage_id(&self) -> Option<String> {
        None
    }
}
