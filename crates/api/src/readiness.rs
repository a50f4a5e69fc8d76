//! What the node needs besides its database to serve a call: its speech engines. The binary
//! checks them (at start and then periodically, for the engines the configured agents name) and
//! records the result here; `/readyz` and `/metrics` read it. An agent that cannot hear or speak
//! is a failed call, so a required engine that cannot start makes the node unready unless the
//! operator declared it optional.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// One engine as last checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineState {
    /// `speech-to-text` or `text-to-speech`, for the reason's wording.
    pub kind: &'static str,
    /// The node's default or an engine a live agent names.
    pub required: bool,
    /// Declared optional by the operator: its absence degrades calls but the node stays ready.
    pub optional: bool,
    pub ready: bool,
}

/// The engines' states, keyed by engine name; empty (nothing to wait for) until the binary
/// records one.
#[derive(Debug, Default)]
pub struct Readiness {
    engines: RwLock<BTreeMap<String, EngineState>>,
    /// Set on the first stop signal: a load balancer must send new work elsewhere while the
    /// node finishes what it holds.
    stopping: AtomicBool,
}

impl Readiness {
    pub fn new() -> Self {
        // The gauges below go nowhere until the process's recorder exists.
        let _ = crate::metrics_handle();
        Self::default()
    }

    /// Records `engine`'s state and mirrors it in `outdial_engine_ready{engine}` and
    /// `outdial_engine_required{engine}` (0/1).
    pub fn set(&self, engine: &str, state: EngineState) {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        metrics::gauge!("outdial_engine_ready", "engine" => engine.to_string())
            .set(flag(state.ready));
        metrics::gauge!("outdial_engine_required", "engine" => engine.to_string())
            .set(flag(state.required && !state.optional));
        if let Ok(mut engines) = self.engines.write() {
            engines.insert(engine.to_string(), state);
        }
    }

    pub fn get(&self, engine: &str) -> Option<EngineState> {
        self.engines.read().ok()?.get(engine).cloned()
    }

    fn names(&self, pick: impl Fn(&EngineState) -> bool) -> Vec<(String, &'static str)> {
        self.engines
            .read()
            .map(|e| {
                e.iter()
                    .filter(|(_, s)| s.required && !s.ready && pick(s))
                    .map(|(name, s)| (name.clone(), s.kind))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node is stopping: from now on it is never ready again.
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Why the node cannot serve calls, if it cannot: it is stopping, or the required engines
    /// that are not ready. Names and kinds only (the endpoint needs no key); `outdial doctor`
    /// and the log have the detail and the fix.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.stopping() {
            return Some("shutting down".into());
        }
        let blocking = self.names(|s| !s.optional);
        if blocking.is_empty() {
            return None;
        }
        let engines: Vec<String> = blocking
            .iter()
            .map(|(name, kind)| format!("{kind} engine {name}"))
            .collect();
        Some(format!(
            "{} cannot start (`outdial doctor` names the fix)",
            engines.join(", ")
        ))
    }

    /// Required engines that are down but declared optional: the node is ready without them.
    pub fn degraded(&self) -> Vec<String> {
        self.names(|s| s.optional)
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(required: bool, optional: bool, ready: bool) -> EngineState {
        EngineState {
            kind: "speech-to-text",
            required,
            optional,
            ready,
        }
    }

    #[test]
    fn only_a_required_engine_that_is_down_and_not_optional_blocks() {
        let r = Readiness::new();
        assert_eq!(r.not_ready_reason(), None);
        r.set("whisper", state(false, false, false));
        assert_eq!(r.not_ready_reason(), None, "no agent needs it");
        r.set("pocketsphinx", state(true, true, false));
        assert_eq!(r.not_ready_reason(), None);
        assert_eq!(r.degraded(), ["pocketsphinx"]);
        r.set("pocketsphinx", state(true, false, false));
        assert_eq!(
            r.not_ready_reason().as_deref(),
            Some(
                "speech-to-text engine pocketsphinx cannot start (`outdial doctor` names the fix)"
            )
        );
        r.set("pocketsphinx", state(true, false, true));
        assert_eq!(r.not_ready_reason(), None);
        assert!(r.degraded().is_empty());
    }

    #[test]
    fn a_stopping_node_is_not_ready_whatever_its_engines() {
        let r = Readiness::new();
        r.set("pocketsphinx", state(true, false, true));
        r.begin_stop();
        assert_eq!(r.not_ready_reason().as_deref(), Some("shutting down"));
        r.set("pocketsphinx", state(true, false, true));
        assert_eq!(r.not_ready_reason().as_deref(), Some("shutting down"));
    }
}
