//! The brain: what the agent says next, given what the caller said.

use async_trait::async_trait;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum BrainError {
    #[error("the brain's model failed: {0}")]
    Model(String),
}

/// What the agent does after a turn: speak `say` in order, then hang up if `end`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    pub say: Vec<String>,
    pub end: bool,
}

#[async_trait]
pub trait Brain: Send + 'static {
    /// What the agent says right after the opening line (the first stage's question).
    fn start(&mut self) -> Reply;
    /// The caller finished a turn and said `heard` (possibly empty: speech nobody could read).
    async fn hear(&mut self, heard: &str) -> Result<Reply, BrainError>;
    /// Words and phrases the caller is expected to say now: a hint for speech-to-text.
    fn expected_phrases(&self) -> Vec<String>;
    /// Everything collected so far.
    fn results(&self) -> &Map<String, Value>;
}
