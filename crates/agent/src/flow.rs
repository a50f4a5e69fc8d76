//! The `flow` brain of `spec/agents.md`: a deterministic stage machine. Each stage asks its
//! question; the caller's words pick the first route with a matching phrase (case- and
//! accent-insensitive, whole words), whose `set` goes into the results; `next` moves on, `end`
//! says goodbye and hangs up, and `otherwise` asks again up to `repeat` times, then ends the call
//! if `then_end`.

use crate::brain::{Brain, BrainError, Reply};
use crate::template::render;
use async_trait::async_trait;
use domain::agent::{AgentConfig, Stage};
use domain::call::{Parameter, RetryContext};
use serde_json::{Map, Value};

pub struct FlowBrain {
    stages: Vec<Stage>,
    parameters: Vec<Parameter>,
    /// Index into `stages`; `None` when the agent has no stages (it only says its opening).
    current: Option<usize>,
    /// Misses (no route matched) at the current stage.
    misses: u32,
    results: Map<String, Value>,
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
            stages: agent.stages.clone(),
            parameters: parameters.to_vec(),
            current,
            misses: 0,
            results,
        }
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

    fn decide(&mut self, heard: &str) -> Reply {
        let Some(stage) = self.stage().cloned() else {
            // No stages: nothing to decide; the call goes on until someone hangs up.
            return Reply::default();
        };
        let words = normalize(heard);
        let route = stage
            .routes
            .iter()
            .find(|r| r.when_any.iter().any(|p| contains_phrase(&words, p)));
        let Some(route) = route else {
            self.misses += 1;
            let otherwise = stage.otherwise.as_ref();
            let repeat = otherwise.map_or(u32::MAX, |o| o.repeat);
            if self.misses > repeat && otherwise.is_some_and(|o| o.then_end) {
                // The spec has no goodbye for this case: the re-ask already told the caller.
                return Reply {
                    say: Vec::new(),
                    end: true,
                };
            }
            let say = otherwise
                .and_then(|o| self.text(&o.say))
                .or_else(|| self.question());
            return Reply {
                say: say.into_iter().collect(),
                end: false,
            };
        };
        for (k, v) in &route.set {
            self.results.insert(k.clone(), v.clone());
        }
        let mut say: Vec<String> = self.text(&route.say).into_iter().collect();
        if route.end {
            return Reply { say, end: true };
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
        Reply { say, end: false }
    }
}

#[async_trait]
impl Brain for FlowBrain {
    fn start(&mut self) -> Reply {
        Reply {
            say: self.question().into_iter().collect(),
            end: false,
        }
    }

    async fn hear(&mut self, heard: &str) -> Result<Reply, BrainError> {
        Ok(self.decide(heard))
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

/// Lower case, accents stripped (Latin letters), everything but letters, digits and the
/// apostrophe a word separator: "Sí, ¡CLARO!" -> ["si", "claro"].
pub fn normalize(text: &str) -> Vec<String> {
    let mut folded = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        match fold_accent(c) {
            Some(s) => folded.push_str(s),
            None if c.is_alphanumeric() || c == '\'' || c == '’' => {
                folded.push(if c == '’' { '\'' } else { c })
            }
            None => folded.push(' '),
        }
    }
    folded
        .split_whitespace()
        .map(|w| w.trim_matches('\'').to_string())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Whether `phrase` occurs in `words` as a run of whole words.
pub fn contains_phrase(words: &[String], phrase: &str) -> bool {
    let want = normalize(phrase);
    !want.is_empty() && words.windows(want.len()).any(|w| w == want.as_slice())
}

/// The Latin letters with diacritics people type in names and answers, folded to ASCII.
fn fold_accent(c: char) -> Option<&'static str> {
    Some(match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'ç' | 'ć' | 'č' => "c",
        'ď' | 'đ' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => "e",
        'ğ' => "g",
        'ì' | 'í' | 'î' | 'ï' | 'ī' | 'į' | 'ı' => "i",
        'ł' => "l",
        'ñ' | 'ń' | 'ň' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' => "o",
        'ř' => "r",
        'ś' | 'š' | 'ş' => "s",
        'ß' => "ss",
        'ť' | 'ţ' => "t",
        'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' => "u",
        'ý' | 'ÿ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        'æ' => "ae",
        'œ' => "oe",
        _ => return None,
    })
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
                say: vec![],
                end: true
            }
        );
        assert!(b.results().is_empty());
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
        assert_eq!(words, vec!["yes", "ca", "va", "i", "can't"]);
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

    #[tokio::test]
    async fn an_agent_without_stages_only_listens() {
        let cfg = AgentConfig::from_json(json!({"name": "x"}).as_object().unwrap()).unwrap();
        let mut b = FlowBrain::new(&cfg, &[], None);
        assert_eq!(b.start(), Reply::default());
        assert_eq!(hear(&mut b, "hello").await, Reply::default());
    }
}
