//! The person called asks not to be called again (`spec/agents.md`, "Disclosure and opt-out").
//! Whatever the brain, the request is heard first: the agent confirms in one sentence, hangs up,
//! and the call's results carry `opted_out: true`, which puts the number on the tenant's
//! do-not-call list when the call is settled.

use crate::brain::{Brain, BrainError, Reply};
use crate::flow::{contains_phrase, normalize};
use crate::stt::Transcript;
use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// The result that marks an opted-out call.
pub const RESULT: &str = "opted_out";

/// What people say, in the languages the agent speaks; every list is checked whatever the
/// call's language, since people switch (Hinglish above all). Phrases match as whole words
/// after the flow brain's normalisation, so "Don't", "dont" and "don’t" are one.
const PHRASES: &[&str] = &[
    // English
    "stop calling",
    "stop these calls",
    "no more calls",
    "don't call me",
    "do not call me",
    "don't call again",
    "do not call again",
    "don't ever call",
    "never call me",
    "never call again",
    "don't call this number",
    "do not call this number",
    "remove my number",
    "delete my number",
    "take my number off",
    "remove me from your list",
    "take me off your list",
    "do not call list",
    "unsubscribe",
    // Hindi
    "कॉल मत करो",
    "कॉल मत करना",
    "कॉल मत करें",
    "कॉल मत कीजिए",
    "कॉल मत कीजिये",
    "फोन मत करो",
    "फोन मत करना",
    "फोन मत करें",
    "फोन मत कीजिए",
    "फ़ोन मत करो",
    "फ़ोन मत करना",
    "फ़ोन मत करें",
    "फ़ोन मत कीजिए",
    "कॉल करना बंद",
    "फोन करना बंद",
    "फ़ोन करना बंद",
    "कॉल बंद करो",
    "मेरा नंबर हटा",
    "मेरा नंबर हटाओ",
    "नंबर हटा दो",
    "नंबर हटा दीजिए",
    // Hinglish, as speech-to-text writes it in Latin letters
    "call mat karo",
    "call mat karna",
    "phone mat karo",
    "phone mat karna",
    "call band karo",
    "number hata do",
];

/// The requests the recogniser is told to expect at every turn.
const HINTS: &[&str] = &["stop calling me", "don't call me again", "remove my number"];

/// Whether `text` asks not to be called again.
pub fn asks_to_opt_out(text: &str) -> bool {
    let words = normalize(text);
    !words.is_empty() && PHRASES.iter().any(|p| contains_phrase(&words, p))
}

/// The one-sentence confirmation, in the call's language (BCP 47; English when there is no
/// line for it).
pub fn confirmation(language: &str) -> &'static str {
    let primary = language.split('-').next().unwrap_or("");
    match primary {
        "hi" => "ठीक है, हम आपको दोबारा कॉल नहीं करेंगे, नमस्ते।",
        _ => "Understood, we will not call you again, goodbye.",
    }
}

/// Any brain, with the opt-out heard before it: a request to stop ends the call at once with
/// the confirmation, whatever stage the brain was at.
pub struct OptOutGuard {
    inner: Box<dyn Brain>,
    language: String,
    /// The inner brain's results, plus `opted_out` once the caller asked.
    results: Map<String, Value>,
}

impl OptOutGuard {
    pub fn new(inner: Box<dyn Brain>, language: &str) -> Self {
        let results = inner.results().clone();
        Self {
            inner,
            language: language.to_string(),
            results,
        }
    }

    fn opt_out(&mut self) -> Reply {
        tracing::info!("the caller asked not to be called again");
        self.results = self.inner.results().clone();
        self.results.insert(RESULT.into(), Value::Bool(true));
        Reply {
            say: vec![confirmation(&self.language).to_string()],
            end: true,
            ..Reply::default()
        }
    }

    fn refresh(&mut self) {
        let opted = self.inner.results().get(RESULT) == Some(&Value::Bool(true))
            || self.results.get(RESULT) == Some(&Value::Bool(true));
        self.results = self.inner.results().clone();
        if opted {
            self.results.insert(RESULT.into(), Value::Bool(true));
        }
    }
}

#[async_trait]
impl Brain for OptOutGuard {
    fn start(&mut self) -> Reply {
        let reply = self.inner.start();
        self.refresh();
        reply
    }

    async fn hear(&mut self, heard: &str) -> Result<Reply, BrainError> {
        if asks_to_opt_out(heard) {
            return Ok(self.opt_out());
        }
        let reply = self.inner.hear(heard).await;
        self.refresh();
        reply
    }

    async fn hear_transcript(&mut self, heard: &Transcript) -> Result<Reply, BrainError> {
        if asks_to_opt_out(&heard.text) {
            return Ok(self.opt_out());
        }
        let reply = self.inner.hear_transcript(heard).await;
        self.refresh();
        reply
    }

    async fn hear_streaming(
        &mut self,
        heard: &Transcript,
        lines: &mpsc::UnboundedSender<String>,
    ) -> Result<Reply, BrainError> {
        if asks_to_opt_out(&heard.text) {
            let reply = self.opt_out();
            for line in &reply.say {
                let _ = lines.send(line.clone());
            }
            return Ok(reply);
        }
        let reply = self.inner.hear_streaming(heard, lines).await;
        self.refresh();
        reply
    }

    fn transfer_failed(&mut self) -> Reply {
        let reply = self.inner.transfer_failed();
        self.refresh();
        reply
    }

    fn expected_phrases(&self) -> Vec<String> {
        // A grammar-constrained recogniser (pocketsphinx) hears only the words of its hints, so
        // without these a request to stop could never be heard. A few short ones, so a free
        // recogniser's prompt is barely pulled towards them.
        let mut phrases = self.inner.expected_phrases();
        phrases.extend(HINTS.iter().map(|p| p.to_string()));
        phrases
    }

    fn results(&self) -> &Map<String, Value> {
        &self.results
    }

    fn stage_id(&self) -> Option<String> {
        self.inner.stage_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_to_stop_are_heard_in_english_hindi_and_hinglish() {
        for said in [
            "Please stop calling me.",
            "Don't call me again!",
            "dont call again",
            "Can you remove my number from your records",
            "Put me on your do-not-call list",
            "कृपया मुझे दोबारा कॉल मत करो",
            "मेरा नंबर हटा दीजिए",
            "mujhe phone mat karo",
        ] {
            assert!(asks_to_opt_out(said), "{said:?} should opt out");
        }
    }

    #[test]
    fn ordinary_replies_do_not_opt_out() {
        for said in [
            "Yes, I can pay on Friday",
            "Stop, I need a minute",
            "Please call me tomorrow",
            "I will call you back",
            "हाँ, मैं शुक्रवार को भुगतान करूँगा",
            "",
        ] {
            assert!(!asks_to_opt_out(said), "{said:?} should not opt out");
        }
    }

    struct Echo(Map<String, Value>);

    #[async_trait]
    impl Brain for Echo {
        fn start(&mut self) -> Reply {
            Reply::default()
        }
        async fn hear(&mut self, heard: &str) -> Result<Reply, BrainError> {
            self.0.insert("last".into(), Value::String(heard.into()));
            Ok(Reply {
                say: vec![format!("you said {heard}")],
                ..Reply::default()
            })
        }
        fn expected_phrases(&self) -> Vec<String> {
            Vec::new()
        }
        fn results(&self) -> &Map<String, Value> {
            &self.0
        }
    }

    #[tokio::test]
    async fn the_guard_confirms_hangs_up_and_keeps_the_brains_results() {
        let mut b = OptOutGuard::new(Box::new(Echo(Map::new())), "hi-IN");
        let r = b.hear("okay").await.unwrap();
        assert_eq!(r.say, vec!["you said okay".to_string()]);
        assert!(!r.end);
        assert_eq!(b.results().get(RESULT), None);
        let r = b.hear("फोन मत करना").await.unwrap();
        assert_eq!(r.say, vec![confirmation("hi-IN").to_string()]);
        assert!(r.end);
        assert_eq!(b.results().get(RESULT), Some(&Value::Bool(true)));
        assert_eq!(b.results().get("last"), Some(&Value::String("okay".into())));
    }
}
