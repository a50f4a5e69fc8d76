//! The `flow` brain of `spec/agents.md`: a deterministic stage machine. Each stage asks its
//! question; the caller's words pick the first route with a matching phrase (whole words in any
//! script, Unicode-normalised, case- and accent-insensitive; negation-aware, see [`phrase_in`]),
//! whose `set` goes into the results; `next` moves on, `end` says goodbye and hangs up, and
//! `otherwise` asks again up to `repeat` times, then ends the call if `then_end`.
//!
//! Recording the opposite of what a person said is the worst outcome, so a reply becomes a
//! result only when it is understood: a reply the recogniser doubts (confidence under
//! [`FlowOptions::min_confidence`]), one that matches no route, and one whose words match both a
//! yes-route and a no-route (see [`Polarity`]) all take `otherwise` and set nothing.

use crate::brain::{Brain, BrainError, Reply};
use crate::stt::Transcript;
use crate::template::render;
use async_trait::async_trait;
use domain::agent::{AgentConfig, Route, Stage};
use domain::call::{Parameter, RetryContext};
use serde_json::{Map, Value};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// What a node tunes of the flow brain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowOptions {
    /// A reply whose recogniser confidence is below this is asked again, never matched. A reply
    /// without a confidence (an engine that gives none) is taken as heard.
    pub min_confidence: f32,
}

impl Default for FlowOptions {
    /// 0.6: over G.711, pocketsphinx's hearings of the piper voice's short answers scored
    /// 0.72-1.0, while espeak-ng voices heard as runs of fillers like the issue's ("the i on it
    /// i the on week it") scored 0.37-0.6. A first figure: `outdial-bench understand` tunes it.
    fn default() -> Self {
        Self {
            min_confidence: 0.6,
        }
    }
}

/// Why a reply took `otherwise`, for logs and the understanding benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The recogniser's confidence was under the threshold.
    Doubtful,
    /// Phrases of a yes-route and of a no-route both matched.
    Conflict,
    /// No route's phrase matched (or only negated ones did).
    Unmatched,
    /// A yes or a no that rests on "can"/"can't" or "will"/"won't" alone: see [`HINGES`].
    Hinge,
}

/// The route a reply picks at a stage, or why it picks none.
pub fn choose_route(
    stage: &Stage,
    heard: &Transcript,
    options: &FlowOptions,
) -> Result<usize, Miss> {
    if heard
        .confidence
        .is_some_and(|c| c.is_nan() || c < options.min_confidence)
    {
        return Err(Miss::Doubtful);
    }
    let reply = tokens(&heard.text);
    let hits: Vec<usize> = stage
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.when_any
                .iter()
                .any(|p| occurrence(&reply, &tokens(p)) == Occurrence::Present)
        })
        .map(|(i, _)| i)
        .collect();
    let polarities: Vec<Polarity> = hits
        .iter()
        .map(|&i| polarity(&stage.routes[i].when_any))
        .collect();
    if polarities.contains(&Polarity::Positive) && polarities.contains(&Polarity::Negative) {
        return Err(Miss::Conflict);
    }
    let route = hits.first().copied().ok_or(Miss::Unmatched)?;
    let answers_yes_or_no = polarities.first() != Some(&Polarity::Neutral);
    let hinges =
        reply.iter().any(|t| t.hinge) && !reply.iter().any(|t| DECISIVE.contains(&t.word.as_str()));
    if answers_yes_or_no && hinges {
        return Err(Miss::Hinge);
    }
    Ok(route)
}

pub struct FlowBrain {
    options: FlowOptions,
    stages: Vec<Stage>,
    parameters: Vec<Parameter>,
    /// Index into `stages`; `None` when the agent has no stages (it only says its opening).
    current: Option<usize>,
    /// Misses (no route matched) at the current stage.
    misses: u32,
    results: Map<String, Value>,
    /// The route that asked for a transfer now under way.
    after_transfer: Option<Route>,
}

impl FlowBrain {
    /// A retry context starts at `retry_stage_id` (if it names a stage) with `collected_data`
    /// already in the results.
    pub fn new(
        agent: &AgentConfig,
        parameters: &[Parameter],
        retry: Option<&RetryContext>,
    ) -> Self {
        let resume = retry
            .and_then(|r| r.retry_stage_id.as_deref())
            .and_then(|id| agent.stages.iter().position(|s| s.id == id));
        let current = resume.or(if agent.stages.is_empty() {
            None
        } else {
            Some(0)
        });
        let results = retry
            .and_then(|r| r.collected_data.clone())
            .unwrap_or_default();
        Self {
            options: FlowOptions::default(),
            stages: agent.stages.clone(),
            parameters: parameters.to_vec(),
            current,
            misses: 0,
            results,
            after_transfer: None,
        }
    }

    pub fn with_options(mut self, options: FlowOptions) -> Self {
        self.options = options;
        self
    }

    fn stage(&self) -> Option<&Stage> {
        self.current.and_then(|i| self.stages.get(i))
    }

    fn text(&self, t: &Option<String>) -> Option<String> {
        t.as_deref()
            .map(|t| render(t, &self.parameters))
            .filter(|t| !t.trim().is_empty())
    }

    fn question(&self) -> Option<String> {
        self.stage().and_then(|s| self.text(&s.say))
    }

    /// The current stage id, for logs and tests.
    pub fn stage_id(&self) -> Option<&str> {
        self.stage().map(|s| s.id.as_str())
    }

    fn decide(&mut self, heard: &Transcript) -> Reply {
        let Some(stage) = self.stage().cloned() else {
            // No stages: nothing to decide; the call goes on until someone hangs up.
            return Reply::default();
        };
        let route = match choose_route(&stage, heard, &self.options) {
            Ok(i) => stage.routes.get(i),
            Err(miss) => {
                tracing::info!(?miss, heard = %heard.text, confidence = heard.confidence, stage = %stage.id, "reply not understood; asking again");
                None
            }
        };
        let Some(route) = route else {
            self.misses += 1;
            let otherwise = stage.otherwise.as_ref();
            let repeat = otherwise.map_or(u32::MAX, |o| o.repeat);
            if self.misses > repeat && otherwise.is_some_and(|o| o.then_end) {
                // The spec has no goodbye for this case: the re-ask already told the caller.
                return Reply {
                    end: true,
                    ..Reply::default()
                };
            }
            let say = otherwise
                .and_then(|o| self.text(&o.say))
                .or_else(|| self.question());
            return Reply {
                say: say.into_iter().collect(),
                ..Reply::default()
            };
        };
        for (k, v) in &route.set {
            self.results.insert(k.clone(), v.clone());
        }
        let say: Vec<String> = self.text(&route.say).into_iter().collect();
        if let Some(target) = &route.transfer_to {
            // `next` or `end` waits for the transfer's outcome: they apply only if it fails.
            self.after_transfer = Some(route.clone());
            return Reply {
                say,
                transfer: Some(target.clone()),
                ..Reply::default()
            };
        }
        self.follow(route, say)
    }

    /// A matched route's `end` or `next` (the caller already heard `say`, the route's own line).
    fn follow(&mut self, route: &Route, mut say: Vec<String>) -> Reply {
        if route.end {
            return Reply {
                say,
                end: true,
                ..Reply::default()
            };
        }
        if let Some(next) = &route.next {
            if let Some(i) = self.stages.iter().position(|s| &s.id == next) {
                self.current = Some(i);
                self.misses = 0;
                say.extend(self.question());
            }
        } else if say.is_empty() {
            // A route that neither moves on nor speaks: ask the stage's question again rather
            // than leave the caller in silence.
            say.extend(self.question());
        }
        Reply {
            say,
            ..Reply::default()
        }
    }
}

#[async_trait]
impl Brain for FlowBrain {
    fn start(&mut self) -> Reply {
        Reply {
            say: self.question().into_iter().collect(),
            ..Reply::default()
        }
    }

    fn transfer_failed(&mut self) -> Reply {
        match self.after_transfer.take() {
            Some(route) => self.follow(&route, Vec::new()),
            None => Reply::default(),
        }
    }

    async fn hear(&mut self, heard: &str) -> Result<Reply, BrainError> {
        Ok(self.decide(&Transcript::from(heard)))
    }

    async fn hear_transcript(&mut self, heard: &Transcript) -> Result<Reply, BrainError> {
        Ok(self.decide(heard))
    }

    fn stage_id(&self) -> Option<String> {
        self.stage().map(|s| s.id.clone())
    }

    fn expected_phrases(&self) -> Vec<String> {
        self.stage()
            .map(|s| {
                s.routes
                    .iter()
                    .flat_map(|r| r.when_any.iter().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn results(&self) -> &Map<String, Value> {
        &self.results
    }
}

/// Clause breaks: negation does not reach across them ("not today, but yes I can pay").
const CLAUSE_PUNCTUATION: &[char] = &['.', ',', ';', ':', '!', '?', '¿', '¡', '।', '॥', '…', '—'];

/// Words that also end a clause: what follows stands on its own. Not "पर": it is also the
/// postposition "on", and a clause break in the wrong place would free a negated phrase.
const CLAUSE_WORDS: &[&str] = &["but", "though", "however", "लेकिन", "मगर"];

/// Words that negate what follows them. "no", "nope", "नहीं" alone are answers, not operators:
/// they are in [`NEGATIVE`] instead ("no I can pay" stays a conflict, not a refusal of "pay").
#[rustfmt::skip]
const NEGATORS: &[&str] = &[
    "not", "never", "cannot", "don't", "won't", "wouldn't", "didn't", "doesn't", "isn't",
    "aren't", "wasn't", "couldn't", "shouldn't", "neither", "nor", "without",
    "नहीं", "नही", "मत", "न", "nahi", "nahin", "mat",
];

/// Over a phone line "can" and "can't", "will" and "won't" differ by one faint sound, and
/// recognisers swap them with full confidence: in `outdial-bench understand` 5 of whisper's 6
/// opposite intents were "I can pay" heard as "I can't pay" (and one "won't" as "will"). A yes
/// or a no whose only sign is one of these words is asked again; one that also holds a
/// [`DECISIVE`] word ("yes", "no", "not", ...) is taken. "cannot" said as such is not a hinge.
const HINGES: &[&str] = &["can", "can't", "cant", "will", "won't", "wont"];

/// Words whose yes or no a recogniser does not turn into the other.
#[rustfmt::skip]
const DECISIVE: &[&str] = &[
    "yes", "yeah", "yep", "yup", "sure", "okay", "fine", "alright", "definitely", "certainly",
    "absolutely", "agreed", "no", "nope", "nah", "not", "never", "don't", "refuse",
    "हां", "हा", "जी", "ठीक", "नहीं", "नही", "ना", "मत", "haan", "han", "ji", "nahi", "nahin",
];

/// Words that make a phrase (and so its route) mean no.
const NEGATIVE: &[&str] = &[
    "no",
    "nope",
    "nah",
    "refuse",
    "नहीं",
    "नही",
    "ना",
    "nahi",
    "nahin",
    "na",
];

/// Words that make a phrase (and so its route) mean yes: assent, and the promise itself ("I
/// will pay", "कर दूँगा"). Compared after normalisation (so "दूंगा", not "दूँगा").
#[rustfmt::skip]
const AFFIRMATIVE: &[&str] = &[
    "yes", "yeah", "yep", "yup", "sure", "okay", "fine", "alright", "agree", "agreed",
    "definitely", "certainly", "absolutely", "correct", "right", "pay", "promise",
    "हां", "हा", "जी", "ठीक", "बिल्कुल", "दूंगा", "करूंगा", "haan", "han", "ji", "theek", "thik",
];

/// Fixed expressions whose "no"/"not" does not negate anything: "no problem, I will pay".
const IDIOMS: &[&[&str]] = &[
    &["no", "problem"],
    &["not", "a", "problem"],
    &["no", "worries"],
    &["why", "not"],
    &["no", "doubt"],
];

/// How many words before a phrase a negator reaches: "I do not really want to pay" negates
/// "pay"; a negator further back is more likely about something else.
const NEGATION_REACH: usize = 4;

/// One normalised word of a reply and the clause it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    word: String,
    clause: u32,
    /// Part of an [`IDIOMS`] expression: neither a negator nor a match on its own.
    idiom: bool,
    /// Spelled as one of [`HINGES`] in the reply.
    hinge: bool,
}

/// The reply's words, normalised for any script: NFKC (full-width letters, ligatures and
/// compatibility forms become plain ones), lower case, Latin/Greek/Cyrillic accents stripped
/// ("Sí" = "si"; Devanagari vowel signs, virama and nukta are letters, not accents, and are
/// kept), chandrabindu = anusvara ("हाँ" = "हां", spellings people use interchangeably), and a
/// few spellings of one word made one ("can't", "cant", "can not" -> "cannot"; "ok" ->
/// "okay"); numbers written in digits are spelled out in English ("500" -> "five hundred",
/// "15th" -> "fifteenth", "2,000" -> "two thousand"). Words are runs of letters, digits,
/// combining marks and the apostrophe.
fn tokens(text: &str) -> Vec<Token> {
    let folded: String = fold(text);
    let mut out: Vec<Token> = Vec::new();
    let mut clause = 0u32;
    let mut word = String::new();
    let flush = |word: &mut String, clause: &mut u32, out: &mut Vec<Token>| {
        let w = word.trim_matches('\'').to_string();
        word.clear();
        if w.is_empty() {
            return;
        }
        if CLAUSE_WORDS.contains(&w.as_str()) {
            *clause += 1;
            return;
        }
        let words = crate::numerals::spelled(&w).unwrap_or_else(|| vec![w]);
        out.extend(words.into_iter().map(|word| Token {
            hinge: HINGES.contains(&word.as_str()),
            word,
            clause: *clause,
            idiom: false,
        }));
    };
    let mut chars = folded.chars().peekable();
    while let Some(c) = chars.next() {
        // "2,000" is one number, not two clauses.
        let digit_comma = c == ','
            && word.ends_with(|p: char| p.is_ascii_digit())
            && chars.peek().is_some_and(char::is_ascii_digit);
        if digit_comma {
            continue;
        }
        if c.is_alphanumeric() || is_combining_mark(c) || c == '\'' {
            word.push(c);
        } else {
            flush(&mut word, &mut clause, &mut out);
            if CLAUSE_PUNCTUATION.contains(&c) {
                clause += 1;
            }
        }
    }
    flush(&mut word, &mut clause, &mut out);
    canonical(out)
}

fn fold(text: &str) -> String {
    let lower: String = text
        .nfkc()
        .flat_map(char::to_lowercase)
        .map(|c| if c == '’' || c == 'ʼ' { '\'' } else { c })
        .collect();
    let mut stripped = String::with_capacity(lower.len());
    for c in lower.nfd() {
        match c {
            // Combining diacritical marks: the accents of Latin, Greek and Cyrillic letters.
            '\u{0300}'..='\u{036f}' => {}
            '\u{0901}' => stripped.push('\u{0902}'),
            'ß' => stripped.push_str("ss"),
            'æ' => stripped.push_str("ae"),
            'œ' => stripped.push_str("oe"),
            'ø' => stripped.push('o'),
            'ł' => stripped.push('l'),
            'đ' => stripped.push('d'),
            'ı' => stripped.push('i'),
            'ς' => stripped.push('σ'),
            _ => stripped.push(c),
        }
    }
    stripped.nfc().collect()
}

/// One spelling per word, so a route's "can't" matches a recogniser's "cannot", and idioms
/// marked.
fn canonical(tokens: Vec<Token>) -> Vec<Token> {
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        let next = tokens.get(i + 1).filter(|n| n.clause == t.clause);
        let (word, used) = match (t.word.as_str(), next.map(|n| n.word.as_str())) {
            ("can", Some("not")) => ("cannot", 2),
            ("can't" | "cant", _) => ("cannot", 1),
            ("ok", _) => ("okay", 1),
            ("dont", _) => ("don't", 1),
            ("wont", _) => ("won't", 1),
            (w, _) => (w, 1),
        };
        out.push(Token {
            word: word.to_string(),
            clause: t.clause,
            idiom: false,
            // "can not" said as two words carries its "not".
            hinge: t.hinge && used == 1,
        });
        i += used;
    }
    for idiom in IDIOMS {
        for start in 0..out.len() {
            let w = &out[start..];
            let same_clause =
                w.len() >= idiom.len() && w[..idiom.len()].iter().all(|t| t.clause == w[0].clause);
            if same_clause && w.iter().zip(idiom.iter()).all(|(t, want)| t.word == *want) {
                for t in &mut out[start..start + idiom.len()] {
                    t.idiom = true;
                }
            }
        }
    }
    out
}

/// The words of `text` as the flow brain compares them: "Sí, ¡CLARO!" -> ["si", "claro"],
/// "हाँ, ठीक है" -> ["हां", "ठीक", "है"].
pub fn normalize(text: &str) -> Vec<String> {
    tokens(text).into_iter().map(|t| t.word).collect()
}

/// Whether `phrase` occurs in `words` as a run of whole words (normalised like [`normalize`]),
/// negated or not. For route choice the flow brain uses [`phrase_in`], which knows negation.
pub fn contains_phrase(words: &[String], phrase: &str) -> bool {
    let want = normalize(phrase);
    !want.is_empty() && words.windows(want.len()).any(|w| w == want.as_slice())
}

/// How a phrase occurs in a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occurrence {
    Absent,
    /// Only under a negation ("not yes", "I can't pay" for "pay", "not sure" for "sure").
    Negated,
    Present,
}

/// Where `phrase` occurs in `reply`, negation-aware. The rule:
///
/// - an occurrence counts only if no negator ("not", "never", "cannot", "don't", "नहीं", ...)
///   stands in the [`NEGATION_REACH`] words before it in the same clause (commas, full stops,
///   "but", "लेकिन" end a clause);
/// - a phrase that itself contains a negator or a "no" word ("cannot", "not sure", "no") is
///   matched literally: its own negation is its meaning;
/// - an occurrence inside a fixed expression ("no problem", "why not") counts only for a phrase
///   that is the whole expression, and such an expression negates nothing.
///
/// So "not yes" and "no I can't pay" never match "yes" or "pay", and "I'm not sure" matches
/// neither "sure" nor, unless a route lists it, anything else: the brain asks again.
pub fn phrase_in(reply: &str, phrase: &str) -> Occurrence {
    occurrence(&tokens(reply), &tokens(phrase))
}

fn occurrence(reply: &[Token], want: &[Token]) -> Occurrence {
    if want.is_empty() || want.len() > reply.len() {
        return Occurrence::Absent;
    }
    let self_negating = want
        .iter()
        .any(|t| is_negator(&t.word) || NEGATIVE.contains(&t.word.as_str()));
    let mut found = Occurrence::Absent;
    for start in 0..=reply.len() - want.len() {
        let run = &reply[start..start + want.len()];
        if !run.iter().zip(want).all(|(t, w)| t.word == w.word) {
            continue;
        }
        if run.iter().any(|t| t.idiom) && !whole_idiom(reply, start, want.len()) {
            continue;
        }
        let clause = run[0].clause;
        let negated = !self_negating
            && reply[start.saturating_sub(NEGATION_REACH)..start]
                .iter()
                .any(|t| t.clause == clause && !t.idiom && is_negator(&t.word));
        if !negated {
            return Occurrence::Present;
        }
        found = Occurrence::Negated;
    }
    found
}

fn whole_idiom(reply: &[Token], start: usize, len: usize) -> bool {
    let words: Vec<&str> = reply[start..start + len]
        .iter()
        .map(|t| t.word.as_str())
        .collect();
    IDIOMS.contains(&words.as_slice())
}

fn is_negator(word: &str) -> bool {
    NEGATORS.contains(&word) || word.ends_with("n't")
}

/// What a route's answer means, from its phrases' words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    /// Yes: its phrases hold an affirmative word and no negation.
    Positive,
    /// No: its phrases hold a negation or a "no" word and no affirmative one.
    Negative,
    /// Anything else ("next week", "wrong number"), or a mix.
    Neutral,
}

/// The polarity of a route with these phrases.
pub fn polarity(phrases: &[String]) -> Polarity {
    let (mut yes, mut no) = (false, false);
    for p in phrases {
        let words = tokens(p);
        let negative = words
            .iter()
            .any(|t| is_negator(&t.word) || NEGATIVE.contains(&t.word.as_str()));
        if negative {
            no = true;
        } else if words.iter().any(|t| AFFIRMATIVE.contains(&t.word.as_str())) {
            yes = true;
        }
    }
    match (yes, no) {
        (true, false) => Polarity::Positive,
        (false, true) => Polarity::Negative,
        _ => Polarity::Neutral,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent() -> AgentConfig {
        let v = json!({
          "name": "collections",
          "first_message": "Hello {{customer_name}}.",
          "stages": [
            { "id": "stage_ask", "say": "Can you pay invoice {{invoice_id}} by Friday?",
              "routes": [
                { "when_any": ["yes", "sure", "okay"], "set": { "intent": "payment_promise" },
                  "say": "Thank you, we will note that. Goodbye.", "end": true },
                { "when_any": ["no", "cannot", "can't"], "set": { "intent": "refused" }, "next": "stage_follow_up" }
              ],
              "otherwise": { "say": "Sorry, could you say that again?", "repeat": 1, "then_end": true } },
            { "id": "stage_follow_up", "say": "When could you pay?",
              "routes": [ { "when_any": ["next week", "monday"], "set": { "when": "next_week" },
                            "say": "Noted. Goodbye.", "end": true } ] }
          ]
        });
        AgentConfig::from_json(v.as_object().unwrap()).unwrap()
    }

    fn params() -> Vec<Parameter> {
        vec![Parameter {
            name: "invoice_id".into(),
            value: "INV-7".into(),
        }]
    }

    async fn hear(b: &mut FlowBrain, s: &str) -> Reply {
        b.hear(s).await.unwrap()
    }

    #[tokio::test]
    async fn a_yes_sets_the_intent_says_goodbye_and_ends() {
        let mut b = FlowBrain::new(&agent(), &params(), None);
        assert_eq!(b.start().say, vec!["Can you pay invoice INV-7 by Friday?"]);
        assert_eq!(
            b.expected_phrases(),
            vec!["yes", "sure", "okay", "no", "cannot", "can't"]
        );
        let r = hear(&mut b, "Yes, I can pay by Friday").await;
        assert_eq!(r.say, vec!["Thank you, we will note that. Goodbye."]);
        assert!(r.end);
        assert_eq!(b.results()["intent"], "payment_promise");
    }

    #[tokio::test]
    async fn next_moves_to_the_stage_and_asks_its_question() {
        let mut b = FlowBrain::new(&agent(), &params(), None);
        let r = hear(&mut b, "no I can't").await;
        assert_eq!(r.say, vec!["When could you pay?"]);
        assert!(!r.end);
        assert_eq!(b.stage_id(), Some("stage_follow_up"));
        assert_eq!(b.results()["intent"], "refused");
        let r = hear(&mut b, "maybe next week").await;
        assert!(r.end);
        assert_eq!(b.results()["when"], "next_week");
    }

    #[tokio::test]
    async fn otherwise_repeats_then_ends() {
        let mut b = FlowBrain::new(&agent(), &params(), None);
        let r = hear(&mut b, "what is this about").await;
        assert_eq!(r.say, vec!["Sorry, could you say that again?"]);
        assert!(!r.end);
        let r = hear(&mut b, "").await;
        assert_eq!(
            r,
            Reply {
                end: true,
                ..Reply::default()
            }
        );
        assert!(b.results().is_empty());
    }

    #[tokio::test]
    async fn a_transfer_route_hands_over_and_its_next_applies_only_if_that_fails() {
        let v = json!({
          "name": "support",
          "transfer": { "targets": { "billing": "+918045000000" } },
          "stages": [
            { "id": "stage_ask", "say": "Anything else?",
              "routes": [
                { "when_any": ["billing"], "set": { "intent": "billing" },
                  "say": "One moment.", "transfer_to": "billing", "next": "stage_after" } ] },
            { "id": "stage_after", "say": "Can I help with anything else?" }
          ]
        });
        let agent = AgentConfig::from_json(v.as_object().unwrap()).unwrap();
        let mut b = FlowBrain::new(&agent, &params(), None);
        let r = hear(&mut b, "billing please").await;
        assert_eq!(r.say, vec!["One moment."]);
        assert_eq!(r.transfer.as_deref(), Some("billing"));
        assert!(!r.end);
        // Still at the stage while the transfer is tried.
        assert_eq!(b.stage_id(), Some("stage_ask"));
        assert_eq!(b.results()["intent"], "billing");
        let r = b.transfer_failed();
        assert_eq!(r.say, vec!["Can I help with anything else?"]);
        assert_eq!((r.end, r.transfer), (false, None));
        assert_eq!(b.stage_id(), Some("stage_after"));
        // Nothing pending any more.
        assert_eq!(b.transfer_failed(), Reply::default());
    }

    #[tokio::test]
    async fn a_stage_without_otherwise_asks_its_question_again() {
        let mut b = FlowBrain::new(&agent(), &params(), None);
        hear(&mut b, "no").await;
        for _ in 0..3 {
            let r = hear(&mut b, "hmm").await;
            assert_eq!(r.say, vec!["When could you pay?"]);
            assert!(!r.end);
        }
    }

    #[tokio::test]
    async fn retry_context_starts_at_its_stage_with_collected_data() {
        let retry = RetryContext {
            collected_data: Some(json!({"intent": "refused"}).as_object().unwrap().clone()),
            retry_stage_id: Some("stage_follow_up".into()),
            ..RetryContext::default()
        };
        let mut b = FlowBrain::new(&agent(), &params(), Some(&retry));
        assert_eq!(b.stage_id(), Some("stage_follow_up"));
        assert_eq!(b.results()["intent"], "refused");
        assert_eq!(b.start().say, vec!["When could you pay?"]);
        // An unknown stage id falls back to the first stage.
        let retry = RetryContext {
            retry_stage_id: Some("gone".into()),
            ..RetryContext::default()
        };
        assert_eq!(
            FlowBrain::new(&agent(), &params(), Some(&retry)).stage_id(),
            Some("stage_ask")
        );
    }

    #[tokio::test]
    async fn matching_is_whole_word_and_case_and_accent_insensitive() {
        let words = normalize("YÉS, Ça va! I can’t");
        // One spelling of "can't" for the recogniser's and the route's.
        assert_eq!(words, vec!["yes", "ca", "va", "i", "cannot"]);
        assert!(contains_phrase(&words, "yes"));
        assert!(contains_phrase(&words, "Can't"));
        assert!(contains_phrase(&words, "ça va"));
        assert!(!contains_phrase(&words, "can"));
        assert!(!contains_phrase(&normalize("yesterday I know"), "yes"));
        assert!(!contains_phrase(&normalize("nobody"), "no"));
        assert!(!contains_phrase(&words, ""));
        let mut b = FlowBrain::new(&agent(), &params(), None);
        // "yesterday" and "nobody" contain route words but not as words: otherwise applies.
        let r = hear(&mut b, "yesterday nobody").await;
        assert_eq!(r.say, vec!["Sorry, could you say that again?"]);
        let r = hear(&mut b, "SÚRE").await;
        assert!(r.end);
    }

    /// The stage of the issue, its yes-route and no-route and nothing else.
    fn ask_stage() -> Stage {
        agent().stages[0].clone()
    }

    fn intent_after(reply: &str) -> Option<Value> {
        let mut b = FlowBrain::new(&agent(), &params(), None);
        b.decide(&Transcript::from(reply));
        b.results().get("intent").cloned()
    }

    #[test]
    fn the_issues_mishearings_set_no_intent() {
        // What pocketsphinx made of espeak-ng's "yes, I can pay by Friday" over G.711, with a
        // confidence its sidecar gives such runs of fillers ("i it on it it i the on week it"
        // scored 0.37 here).
        for heard in [
            "the i i pay i it i not on it i",
            "the i on cannot it i not on it i",
        ] {
            let mut b = FlowBrain::new(&agent(), &params(), None);
            let r = b.decide(&Transcript::new(heard, Some(0.45)));
            assert_eq!(r.say, vec!["Sorry, could you say that again?"], "{heard}");
            assert!(b.results().is_empty(), "{heard} set {:?}", b.results());
        }
        // Even taken at face value (an engine without a confidence), the first has no phrase.
        assert_eq!(intent_after("the i i pay i it i not on it i"), None);
        // A mishearing that carries both a yes and a no is not guessed at.
        assert_eq!(intent_after("yes i can't a not friday the"), None);
    }

    #[test]
    fn a_yes_or_no_resting_on_can_or_cant_alone_is_asked_again() {
        let stage: Stage = serde_json::from_value(json!({ "id": "ask", "say": "Can you pay?",
            "routes": [
                { "when_any": ["call me back"], "set": { "intent": "callback" } },
                { "when_any": ["no", "cannot", "won't"], "set": { "intent": "refused" } },
                { "when_any": ["yes", "i can pay", "i will pay"], "set": { "intent": "payment_promise" } }
            ] }))
        .unwrap();
        let intent = |heard: &str| {
            choose_route(&stage, &Transcript::from(heard), &FlowOptions::default())
                .map(|i| stage.routes[i].set["intent"].clone())
        };
        // What whisper made of "I can pay by Friday" and "I won't pay this" in the bench, and
        // the replies they were mistaken for.
        for heard in [
            "I can't pay it by Friday.",
            "I can pay by Friday.",
            "I will pay this.",
            "I won't pay this.",
        ] {
            assert_eq!(intent(heard), Err(Miss::Hinge), "{heard}");
        }
        // With a word a line does not flip, the answer stands.
        assert_eq!(intent("No, I can't pay."), Ok(json!("refused")));
        assert_eq!(
            intent("Yes, I can pay by Friday."),
            Ok(json!("payment_promise"))
        );
        assert_eq!(intent("I cannot pay."), Ok(json!("refused")));
        assert_eq!(intent("I can not pay."), Ok(json!("refused")));
        // A reply that is neither yes nor no does not hinge on them.
        assert_eq!(intent("Can you call me back?"), Ok(json!("callback")));
    }

    #[test]
    fn numbers_in_digits_match_routes_written_in_words() {
        for (reply, phrase) in [
            ("I can pay 500 now.", "five hundred"),
            ("I can pay 500 now.", "hundred"),
            ("On the 15th.", "fifteenth"),
            ("2,000 rupees this week", "two thousand"),
            ("by the 1st", "first"),
        ] {
            assert_eq!(
                phrase_in(reply, phrase),
                Occurrence::Present,
                "{reply} / {phrase}"
            );
        }
        // A comma between words still ends a clause, and between digits does not split them.
        assert_eq!(normalize("5, 10"), ["five", "ten"]);
        assert_eq!(normalize("2,000"), ["two", "thousand"]);
        // "not 500" is still negated.
        assert_eq!(phrase_in("not 500", "hundred"), Occurrence::Negated);
    }

    #[test]
    fn negated_yes_phrases_never_take_the_yes_route() {
        for reply in [
            "not yes",
            "I'm not okay with that",
            "no I can't pay",
            "I cannot pay",
            "I can't",
            "I can not",
            "no",
            "nope, no",
            "Definitely not sure, no.",
            "I don't think so, no",
        ] {
            let intent = intent_after(reply);
            assert_ne!(
                intent,
                Some(json!("payment_promise")),
                "{reply:?} took the yes-route"
            );
        }
        for reply in ["no I can't pay", "I cannot pay", "No.", "I can not"] {
            assert_eq!(intent_after(reply), Some(json!("refused")), "{reply:?}");
        }
        // A bare "I can't" may have been "I can": asked again (see `HINGES`).
        assert_eq!(intent_after("I can't"), None);
    }

    #[test]
    fn many_ways_of_saying_yes_take_the_yes_route() {
        for reply in [
            "yes",
            "Yes, I can pay by Friday",
            "yeah sure",
            "OK",
            "ok.",
            "okay then",
            "SURE!",
            "sure, no problem",
            "no problem, yes",
            "Ｙｅｓ",
            "not today, but yes I can",
        ] {
            assert_eq!(
                intent_after(reply),
                Some(json!("payment_promise")),
                "{reply:?}"
            );
        }
    }

    #[test]
    fn a_negated_yes_word_asks_again_rather_than_guess_either_way() {
        for reply in ["not sure", "I'm not really sure", "not okay"] {
            let mut b = FlowBrain::new(&agent(), &params(), None);
            let r = b.decide(&Transcript::from(reply));
            assert_eq!(r.say, vec!["Sorry, could you say that again?"], "{reply}");
            assert!(b.results().is_empty(), "{reply}");
        }
        // A route that lists the negated phrase itself gets it.
        let stage: Stage = serde_json::from_value(json!({
            "id": "s",
            "routes": [
                { "when_any": ["sure"], "set": { "intent": "yes" } },
                { "when_any": ["not sure"], "set": { "intent": "unsure" } }
            ]
        }))
        .unwrap();
        let opts = FlowOptions::default();
        assert_eq!(choose_route(&stage, &"I'm not sure".into(), &opts), Ok(1));
        assert_eq!(choose_route(&stage, &"sure".into(), &opts), Ok(0));
    }

    #[test]
    fn a_reply_with_both_a_yes_and_a_no_is_asked_again() {
        let opts = FlowOptions::default();
        for reply in ["yes no", "no, yes", "Yes. No, I cannot.", "sure I can't"] {
            assert_eq!(
                choose_route(&ask_stage(), &reply.into(), &opts),
                Err(Miss::Conflict),
                "{reply}"
            );
            assert_eq!(intent_after(reply), None, "{reply}");
        }
    }

    #[test]
    fn a_doubtful_reply_asks_again_and_sets_nothing() {
        let opts = FlowOptions {
            min_confidence: 0.7,
        };
        let mut b = FlowBrain::new(&agent(), &params(), None).with_options(opts);
        let r = b.decide(&Transcript::new("yes", Some(0.69)));
        assert_eq!(r.say, vec!["Sorry, could you say that again?"]);
        assert!(!r.end);
        assert!(b.results().is_empty());
        // The second doubtful reply uses up `repeat`: the call ends with nothing recorded.
        let r = b.decide(&Transcript::new("no", Some(0.2)));
        assert!(r.end);
        assert!(b.results().is_empty());
        // At the threshold, the same words are understood.
        assert_eq!(
            choose_route(&ask_stage(), &Transcript::new("yes", Some(0.7)), &opts),
            Ok(0)
        );
        assert_eq!(
            choose_route(&ask_stage(), &Transcript::new("yes", Some(f32::NAN)), &opts),
            Err(Miss::Doubtful)
        );
        assert_eq!(
            choose_route(&ask_stage(), &Transcript::new("hmm", Some(0.99)), &opts),
            Err(Miss::Unmatched)
        );
    }

    #[test]
    fn negation_does_not_reach_other_clauses_or_far_back() {
        assert_eq!(phrase_in("not today, yes", "yes"), Occurrence::Present);
        assert_eq!(
            phrase_in("I wasn't home but yes", "yes"),
            Occurrence::Present
        );
        assert_eq!(phrase_in("I won't pay", "pay"), Occurrence::Negated);
        assert_eq!(
            phrase_in("I do not really want to pay", "pay"),
            Occurrence::Negated
        );
        assert_eq!(
            phrase_in("not that one I told you I can pay", "pay"),
            Occurrence::Present
        );
        assert_eq!(phrase_in("not next week", "next week"), Occurrence::Negated);
        assert_eq!(phrase_in("no problem", "no"), Occurrence::Absent);
        assert_eq!(phrase_in("no problem", "no problem"), Occurrence::Present);
        assert_eq!(phrase_in("I cannot", "can't"), Occurrence::Present);
        assert_eq!(phrase_in("I can", "can't"), Occurrence::Absent);
    }

    #[test]
    fn route_polarity_comes_from_its_phrases() {
        let p = |v: &[&str]| polarity(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(p(&["yes", "sure", "okay"]), Polarity::Positive);
        assert_eq!(p(&["no", "cannot", "can't"]), Polarity::Negative);
        assert_eq!(p(&["next week", "monday"]), Polarity::Neutral);
        assert_eq!(p(&["हाँ", "ठीक है"]), Polarity::Positive);
        assert_eq!(p(&["नहीं"]), Polarity::Negative);
        assert_eq!(p(&["yes", "no"]), Polarity::Neutral);
        // The promise itself is a yes, in any language; the refusal of it a no.
        assert_eq!(p(&["I will pay", "कर दूँगा"]), Polarity::Positive);
        assert_eq!(p(&["I won't pay", "नहीं कर दूँगा"]), Polarity::Negative);
    }

    #[test]
    fn devanagari_matches_devanagari_whole_words_in_any_normal_form() {
        let stage: Stage = serde_json::from_value(json!({
            "id": "s",
            "routes": [
                { "when_any": ["हाँ", "कर दूँगा"], "set": { "intent": "payment_promise" } },
                { "when_any": ["नहीं"], "set": { "intent": "refused" } }
            ]
        }))
        .unwrap();
        let opts = FlowOptions::default();
        let pick = |s: &str| choose_route(&stage, &s.into(), &opts);
        assert_eq!(pick("हाँ, मैं शुक्रवार तक भुगतान कर दूँगा।"), Ok(0));
        // Anusvara for chandrabindu: a spelling people use interchangeably.
        assert_eq!(pick("हां जी"), Ok(0));
        // Decomposed nukta and composed forms are one word after NFKC.
        assert_eq!(normalize("ज़रूर"), normalize("ज\u{093c}रूर"));
        // The virama and vowel signs are part of the word, not separators.
        assert_eq!(normalize("शुक्रवार"), vec!["शुक्रवार"]);
        assert_eq!(pick("नहीं, मैं नहीं कर पाऊँगा"), Ok(1));
        // "not will-do" does not promise: the negator comes before the verb in Hindi.
        assert_eq!(pick("मैं भुगतान नहीं कर दूँगा"), Ok(1));
        assert_eq!(
            phrase_in("मैं भुगतान नहीं कर दूँगा", "कर दूँगा"),
            Occurrence::Negated
        );
        assert_eq!(pick("हाँ नहीं"), Err(Miss::Conflict));
        assert_eq!(pick("हाँफना"), Err(Miss::Unmatched));
    }

    #[test]
    fn other_scripts_fold_case_and_width() {
        assert_eq!(normalize("ΝΑΙ"), normalize("ναι"));
        assert_eq!(normalize("Όχι"), normalize("οχι"));
        assert_eq!(normalize("ДА"), vec!["да"]);
        assert_eq!(normalize("ﬁne"), vec!["fine"]);
        assert_eq!(normalize("Straße"), vec!["strasse"]);
    }

    #[tokio::test]
    async fn an_agent_without_stages_only_listens() {
        let cfg = AgentConfig::from_json(json!({"name": "x"}).as_object().unwrap()).unwrap();
        let mut b = FlowBrain::new(&cfg, &[], None);
        assert_eq!(b.start(), Reply::default());
        assert_eq!(hear(&mut b, "hello").await, Reply::default());
    }
}
