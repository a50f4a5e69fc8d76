//! Which languages a node can hold a call in: an agent's `language` (or a call's
//! `retry_language`) chooses the voice and the ears of the call (`agents.md`, "Languages"), so a
//! language is served only when the agent's voice engine speaks it and its transcriber hears it.
//! An agent that would speak Hindi to a recogniser that hears only English records nonsense as
//! results, so such an agent is refused when it is saved, not discovered on the phone.

use crate::agent::AgentConfig;
use serde::Serialize;

/// The languages FormantAI's API names (`en-US`, `en-IN` and its Indian languages), in the
/// order `GET /v1/languages` lists them.
pub const CONTRACT_LANGUAGES: [&str; 13] = [
    "en-US", "en-IN", "hi-IN", "bn-IN", "kn-IN", "ml-IN", "mr-IN", "pa-IN", "ta-IN", "te-IN",
    "gu-IN", "as-IN", "ur-IN",
];

/// espeak-ng's voice for each language it speaks (`espeak-ng --voices`). It has no Indian
/// English voice; its British English is the nearer of the two it has. Odia is missing from
/// the contract's list, so `or` is not here either.
const ESPEAK_VOICES: [(&str, &str); 13] = [
    ("en-US", "en-us"),
    ("en-IN", "en"),
    ("hi-IN", "hi"),
    ("bn-IN", "bn"),
    ("kn-IN", "kn"),
    ("ml-IN", "ml"),
    ("mr-IN", "mr"),
    ("pa-IN", "pa"),
    ("ta-IN", "ta"),
    ("te-IN", "te"),
    ("gu-IN", "gu"),
    ("as-IN", "as"),
    ("ur-IN", "ur"),
];

/// Languages by primary subtag (`en` serves `en-US`, `en-IN`, `en-GB` ...) or whole tag.
/// The local engines' models are English only: pocketsphinx's bundled en-us model, Whisper
/// tiny.en, piper's one en_US voice (which speaks any English). Deepgram's streaming models
/// hear English and Hindi among others; only those the contract names and Deepgram documents
/// for its `nova` models are claimed.
pub const PIPER_LANGUAGES: &[&str] = &["en"];
pub const POCKETSPHINX_LANGUAGES: &[&str] = &["en"];
pub const WHISPER_LANGUAGES: &[&str] = &["en"];
pub const DEEPGRAM_LANGUAGES: &[&str] = &["en", "hi"];

/// What this node's configured engines can speak and hear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LanguageSupport {
    /// Deepgram is an engine of this node only with an API key configured.
    pub deepgram: bool,
}

/// One row of `GET /v1/languages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LanguageEngines {
    pub language: String,
    /// Voice engines (`voice.engine`) that speak it.
    pub voices: Vec<&'static str>,
    /// Transcriber engines (`transcriber.engine`) that hear it.
    pub transcribers: Vec<&'static str>,
}

fn covers(langs: &[&str], tag: &str) -> bool {
    let primary = tag.split('-').next().unwrap_or(tag);
    langs
        .iter()
        .any(|l| l.eq_ignore_ascii_case(tag) || l.eq_ignore_ascii_case(primary))
}

/// The voice a voice engine uses for `tag`, if it speaks it: espeak-ng's voice name, or
/// `""` for an engine with one voice.
pub fn voice(engine: &str, tag: &str) -> Option<&'static str> {
    match engine {
        "espeak-ng" => ESPEAK_VOICES
            .iter()
            .find(|(l, _)| l.eq_ignore_ascii_case(tag))
            .map(|(_, v)| *v)
            // Another English (`en-GB`, `en-AU`): espeak-ng's own English.
            .or_else(|| covers(&["en"], tag).then_some("en")),
        "piper" => covers(PIPER_LANGUAGES, tag).then_some(""),
        _ => None,
    }
}

/// The voice name to synthesise a call of `agent` in `tag` with: the agent's own
/// `voice.voice` when the call is in the agent's language, else the engine's voice for the
/// call's language (a retry in Hindi is spoken by the Hindi voice, whatever the agent's
/// English voice is).
pub fn call_voice(agent: &AgentConfig, tag: &str) -> Option<String> {
    if tag.eq_ignore_ascii_case(&agent.language) {
        if let Some(v) = &agent.voice.voice {
            return Some(v.clone());
        }
    }
    voice(&agent.voice.engine, tag)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

impl LanguageSupport {
    /// Whether a transcriber engine hears `tag`.
    pub fn hears(&self, engine: &str, tag: &str) -> bool {
        match engine {
            "local" | "pocketsphinx" => covers(POCKETSPHINX_LANGUAGES, tag),
            "whisper" => covers(WHISPER_LANGUAGES, tag),
            "deepgram" => self.deepgram && covers(DEEPGRAM_LANGUAGES, tag),
            _ => false,
        }
    }

    /// Whether `agent`'s own voice and transcriber can hold a call in `tag`.
    pub fn serves(&self, agent: &AgentConfig, tag: &str) -> bool {
        voice(&agent.voice.engine, tag).is_some() && self.hears(&agent.transcriber.engine, tag)
    }

    /// Every contract language with the engines of this node that speak and hear it.
    pub fn listing(&self) -> Vec<LanguageEngines> {
        CONTRACT_LANGUAGES
            .iter()
            .map(|&tag| LanguageEngines {
                language: tag.to_string(),
                voices: crate::agent::VOICE_ENGINES
                    .iter()
                    .copied()
                    .filter(|e| voice(e, tag).is_some())
                    .collect(),
                transcribers: crate::agent::TRANSCRIBER_ENGINES
                    .iter()
                    .copied()
                    .filter(|e| self.hears(e, tag))
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent(v: serde_json::Value) -> AgentConfig {
        AgentConfig::from_json(v.as_object().unwrap()).unwrap()
    }

    #[test]
    fn the_local_engines_hold_english_calls_only() {
        let node = LanguageSupport::default();
        let default = agent(json!({"name": "a"}));
        for tag in ["en-US", "en-IN", "en-GB", "EN-in"] {
            assert!(node.serves(&default, tag), "{tag}");
        }
        // espeak-ng speaks Hindi, but nothing local hears it: not served.
        assert_eq!(voice("espeak-ng", "hi-IN"), Some("hi"));
        assert!(!node.hears("local", "hi-IN"));
        assert!(!node.serves(&default, "hi-IN"));
        let whisper = agent(json!({"name": "a", "transcriber": {"engine": "whisper"}}));
        assert!(!node.serves(&whisper, "hi-IN"));
        assert!(!node.serves(&default, "fr-FR"));
    }

    #[test]
    fn deepgram_hears_hindi_only_when_configured() {
        let hindi = agent(json!({"name": "a", "language": "hi-IN",
            "transcriber": {"engine": "deepgram"}}));
        assert!(!LanguageSupport { deepgram: false }.serves(&hindi, "hi-IN"));
        assert!(LanguageSupport { deepgram: true }.serves(&hindi, "hi-IN"));
        // piper's one voice is English: no Hindi call even with Deepgram's ears.
        let piper = agent(json!({"name": "a", "voice": {"engine": "piper"},
            "transcriber": {"engine": "deepgram"}}));
        assert!(!LanguageSupport { deepgram: true }.serves(&piper, "hi-IN"));
    }

    #[test]
    fn a_call_in_another_language_is_spoken_by_that_languages_voice() {
        let a = agent(json!({"name": "a", "language": "en-IN",
            "voice": {"engine": "espeak-ng", "voice": "en-gb-x-rp"}}));
        assert_eq!(call_voice(&a, "en-IN").as_deref(), Some("en-gb-x-rp"));
        assert_eq!(call_voice(&a, "hi-IN").as_deref(), Some("hi"));
        let plain = agent(json!({"name": "a", "language": "hi-IN"}));
        assert_eq!(call_voice(&plain, "hi-IN").as_deref(), Some("hi"));
        let piper = agent(json!({"name": "a", "voice": {"engine": "piper"}}));
        assert_eq!(call_voice(&piper, "en-US"), None);
    }

    #[test]
    fn the_listing_names_every_contract_language() {
        let rows = LanguageSupport::default().listing();
        assert_eq!(rows.len(), CONTRACT_LANGUAGES.len());
        let hi = rows.iter().find(|r| r.language == "hi-IN").unwrap();
        assert_eq!(hi.voices, vec!["espeak-ng"]);
        assert!(hi.transcribers.is_empty());
        let en = rows.iter().find(|r| r.language == "en-IN").unwrap();
        assert_eq!(en.voices, vec!["espeak-ng", "piper"]);
        assert_eq!(en.transcribers, vec!["local", "pocketsphinx", "whisper"]);
        let with_key = LanguageSupport { deepgram: true }.listing();
        let hi = with_key.iter().find(|r| r.language == "hi-IN").unwrap();
        assert_eq!(hi.transcribers, vec!["deepgram"]);
    }
}
