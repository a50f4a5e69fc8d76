//! Turn taking, sans-IO: fed one 20 ms frame at a time with the VAD's verdict, the time and
//! whether the agent is talking; says when the caller's turn ends and when the caller barges in.
//!
//! - End of turn: `end_of_turn` of silence after speech (default 0.5 s).
//! - Barge-in: `barge_in` of caller speech (default 0.5 s) while the agent talks. A shorter
//!   utterance during agent speech ("mhm", "okay", a cough, line noise) is dropped, so it
//!   neither cuts the agent off nor becomes a turn.
//! - Speculation: after `speculate_after` of silence the utterance so far is worth
//!   transcribing by an engine that takes whole utterances; if the caller resumes, that
//!   transcription is stale. (Streaming engines are fed throughout and ignore it.)

use std::time::Duration;

pub const FRAME_MS: u64 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnConfig {
    pub end_of_turn: Duration,
    pub barge_in: Duration,
    pub speculate_after: Duration,
    /// Less speech than this in an utterance is a click or a breath, not a turn.
    pub min_speech: Duration,
    /// A turn is cut here even if the caller (or a noisy line) never pauses.
    pub max_utterance: Duration,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            end_of_turn: Duration::from_millis(500),
            barge_in: Duration::from_millis(500),
            speculate_after: Duration::from_millis(200),
            min_speech: Duration::from_millis(100),
            max_utterance: Duration::from_secs(15),
        }
    }
}

impl From<&domain::agent::TurnTaking> for TurnConfig {
    fn from(t: &domain::agent::TurnTaking) -> Self {
        let ms = |v: u32| Duration::from_millis(u64::from(v));
        let end_of_turn = ms(t.end_of_turn_silence_ms);
        Self {
            end_of_turn,
            barge_in: ms(t.barge_in_min_speech_ms),
            // Only engines that take whole utterances use it; it must come before the end.
            speculate_after: (end_of_turn / 2).min(Duration::from_millis(200)),
            min_speech: ms(t.min_speech_ms),
            max_utterance: ms(t.max_utterance_ms),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurnConfigError {
    #[error("end_of_turn must be 200-800 ms")]
    EndOfTurn,
    #[error("barge_in must be 100-2000 ms")]
    BargeIn,
}

impl TurnConfig {
    pub fn validate(&self) -> Result<(), TurnConfigError> {
        if !(200..=800).contains(&self.end_of_turn.as_millis()) {
            return Err(TurnConfigError::EndOfTurn);
        }
        if !(100..=2000).contains(&self.barge_in.as_millis()) {
            return Err(TurnConfigError::BargeIn);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEvent {
    /// The caller has spoken over the agent long enough: stop the agent now.
    BargeIn,
    /// A pause long enough to start transcribing the utterance speculatively.
    Pause,
    /// The caller went on after a `Pause`: a speculative transcription is stale.
    Resumed,
    /// The caller's turn is over; the last speech was heard at `speech_end_ms`.
    TurnEnded { speech_end_ms: u64 },
    /// The utterance is dropped: a backchannel under agent speech, or too short to be speech.
    Dropped,
}

#[derive(Debug, Clone, Copy)]
struct Utterance {
    start_ms: u64,
    speech_ms: u64,
    silence_ms: u64,
    last_speech_end_ms: u64,
    barged: bool,
    paused: bool,
}

#[derive(Debug)]
pub struct TurnTaker {
    cfg: TurnConfig,
    utterance: Option<Utterance>,
}

impl TurnTaker {
    pub fn new(cfg: TurnConfig) -> Self {
        Self {
            cfg,
            utterance: None,
        }
    }

    pub fn config(&self) -> &TurnConfig {
        &self.cfg
    }

    /// Whether the caller is in the middle of an utterance.
    pub fn in_utterance(&self) -> bool {
        self.utterance.is_some()
    }

    /// One 20 ms frame ending at `now_ms`.
    pub fn frame(&mut self, speech: bool, now_ms: u64, agent_talking: bool) -> Option<TurnEvent> {
        let ms = |d: Duration| d.as_millis() as u64;
        if speech {
            let u = self.utterance.get_or_insert(Utterance {
                start_ms: now_ms.saturating_sub(FRAME_MS),
                speech_ms: 0,
                silence_ms: 0,
                last_speech_end_ms: now_ms,
                barged: false,
                paused: false,
            });
            u.speech_ms += FRAME_MS;
            u.silence_ms = 0;
            u.last_speech_end_ms = now_ms;
            if agent_talking && !u.barged && u.speech_ms >= ms(self.cfg.barge_in) {
                u.barged = true;
                u.paused = false;
                return Some(TurnEvent::BargeIn);
            }
            if now_ms.saturating_sub(u.start_ms) >= ms(self.cfg.max_utterance) {
                return self.finish(agent_talking);
            }
            if u.paused {
                u.paused = false;
                return Some(TurnEvent::Resumed);
            }
            return None;
        }
        let u = self.utterance.as_mut()?;
        u.silence_ms += FRAME_MS;
        if u.silence_ms >= ms(self.cfg.end_of_turn) {
            return self.finish(agent_talking);
        }
        if !u.paused && u.silence_ms >= ms(self.cfg.speculate_after) {
            u.paused = true;
            return Some(TurnEvent::Pause);
        }
        None
    }

    fn finish(&mut self, agent_talking: bool) -> Option<TurnEvent> {
        let u = self.utterance.take()?;
        let backchannel = agent_talking && !u.barged;
        if backchannel || u.speech_ms < self.cfg.min_speech.as_millis() as u64 {
            return Some(TurnEvent::Dropped);
        }
        Some(TurnEvent::TurnEnded {
            speech_end_ms: u.last_speech_end_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `ms` of frames; returns the events with the frame time they came at.
    fn feed(
        t: &mut TurnTaker,
        clock: &mut u64,
        ms: u64,
        speech: bool,
        agent: bool,
    ) -> Vec<(u64, TurnEvent)> {
        let mut out = Vec::new();
        for _ in 0..ms / FRAME_MS {
            *clock += FRAME_MS;
            if let Some(e) = t.frame(speech, *clock, agent) {
                out.push((*clock, e));
            }
        }
        out
    }

    #[test]
    fn speech_over_the_agent_for_0_6_s_barges_in_at_0_5_s() {
        let mut t = TurnTaker::new(TurnConfig::default());
        let mut clock = 1000;
        let ev = feed(&mut t, &mut clock, 600, true, true);
        // The frame that completes 500 ms of speech raises it: the driver flushes in that frame.
        assert_eq!(ev, vec![(1500, TurnEvent::BargeIn)]);
        // The barge-in then becomes the caller's turn, even though the agent was talking.
        let ev = feed(&mut t, &mut clock, 600, false, false);
        assert_eq!(
            ev,
            vec![
                (1800, TurnEvent::Pause),
                (
                    2100,
                    TurnEvent::TurnEnded {
                        speech_end_ms: 1600
                    }
                )
            ]
        );
    }

    #[test]
    fn a_0_3_s_mhm_under_agent_speech_is_dropped() {
        let mut t = TurnTaker::new(TurnConfig::default());
        let mut clock = 0;
        let mut ev = feed(&mut t, &mut clock, 300, true, true);
        ev.extend(feed(&mut t, &mut clock, 600, false, true));
        assert_eq!(ev, vec![(500, TurnEvent::Pause), (800, TurnEvent::Dropped)]);
        assert!(!t.in_utterance());
    }

    #[test]
    fn bursts_of_noise_under_the_agent_never_add_up_to_a_barge_in() {
        let mut t = TurnTaker::new(TurnConfig::default());
        let mut clock = 0;
        for _ in 0..20 {
            let ev = feed(&mut t, &mut clock, 100, true, true);
            assert!(ev.is_empty());
            let ev = feed(&mut t, &mut clock, 600, false, true);
            assert!(!ev.iter().any(|(_, e)| *e == TurnEvent::BargeIn), "{ev:?}");
        }
    }

    #[test]
    fn the_turn_ends_after_the_configured_silence() {
        for silence in [200u64, 500, 800] {
            let cfg = TurnConfig {
                end_of_turn: Duration::from_millis(silence),
                speculate_after: Duration::from_millis(100),
                ..TurnConfig::default()
            };
            assert_eq!(cfg.validate(), Ok(()));
            let mut t = TurnTaker::new(cfg);
            let mut clock = 0;
            assert!(feed(&mut t, &mut clock, 1000, true, false).is_empty());
            let ev = feed(&mut t, &mut clock, 1000, false, false);
            assert_eq!(ev[0], (1100, TurnEvent::Pause));
            assert_eq!(
                ev[1],
                (
                    1000 + silence,
                    TurnEvent::TurnEnded {
                        speech_end_ms: 1000
                    }
                )
            );
            assert_eq!(ev.len(), 2);
        }
    }

    #[test]
    fn a_short_pause_inside_a_sentence_does_not_end_the_turn() {
        let mut t = TurnTaker::new(TurnConfig::default());
        let mut clock = 0;
        feed(&mut t, &mut clock, 400, true, false);
        let ev = feed(&mut t, &mut clock, 300, false, false);
        assert_eq!(ev, vec![(600, TurnEvent::Pause)]);
        let ev = feed(&mut t, &mut clock, 400, true, false);
        assert_eq!(ev, vec![(720, TurnEvent::Resumed)]);
        let ev = feed(&mut t, &mut clock, 500, false, false);
        assert_eq!(
            ev.last(),
            Some(&(
                1600,
                TurnEvent::TurnEnded {
                    speech_end_ms: 1100
                }
            ))
        );
    }

    #[test]
    fn a_click_is_not_a_turn_and_a_monologue_is_cut() {
        let mut t = TurnTaker::new(TurnConfig::default());
        let mut clock = 0;
        feed(&mut t, &mut clock, 40, true, false);
        let ev = feed(&mut t, &mut clock, 500, false, false);
        assert_eq!(ev.last(), Some(&(540, TurnEvent::Dropped)));
        let ev = feed(&mut t, &mut clock, 16_000, true, false);
        assert!(
            matches!(ev.as_slice(), [(_, TurnEvent::TurnEnded { .. })]),
            "{ev:?}"
        );
    }

    #[test]
    fn an_agents_turn_taking_sets_the_silence_and_barge_in() {
        let t = domain::agent::TurnTaking {
            end_of_turn_silence_ms: 300,
            barge_in_min_speech_ms: 800,
            ..Default::default()
        };
        let cfg = TurnConfig::from(&t);
        assert_eq!(cfg.validate(), Ok(()));
        let mut taker = TurnTaker::new(cfg);
        let mut clock = 0;
        // 0.6 s over the agent is not enough at 0.8 s...
        assert!(feed(&mut taker, &mut clock, 600, true, true).is_empty());
        // ...0.8 s is.
        assert_eq!(
            feed(&mut taker, &mut clock, 200, true, true),
            vec![(800, TurnEvent::BargeIn)]
        );
        let ev = feed(&mut taker, &mut clock, 400, false, false);
        assert_eq!(
            ev.last(),
            Some(&(1100, TurnEvent::TurnEnded { speech_end_ms: 800 }))
        );
        // The defaults are the runtime's defaults.
        assert_eq!(
            TurnConfig::from(&domain::agent::TurnTaking::default()),
            TurnConfig::default()
        );
    }

    #[test]
    fn config_ranges() {
        let bad = TurnConfig {
            end_of_turn: Duration::from_millis(900),
            ..TurnConfig::default()
        };
        assert_eq!(bad.validate(), Err(TurnConfigError::EndOfTurn));
        let bad = TurnConfig {
            barge_in: Duration::from_millis(50),
            ..TurnConfig::default()
        };
        assert_eq!(bad.validate(), Err(TurnConfigError::BargeIn));
    }
}
