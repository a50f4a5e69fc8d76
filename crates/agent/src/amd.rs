//! Answering-machine detection, sans-IO: per 20 ms frame, whether it held speech (the VAD,
//! with the agent's own echo taken out) and whether a tone is sounding (the beep detector),
//! with the time since the answer; out comes a verdict, and later revisions of it.
//!
//! People answer in a word or three ("Hello?", "Yes?", "Hello, Rahul speaking") and then wait
//! for the other side; a recorded greeting talks on ("Hi, you've reached Priya, I can't take your
//! call right now, please leave..."). So:
//! - a beep (a tone reported for `min_beep_ms`) is a machine;
//! - a first utterance that has gone on for `greeting_ms`, mostly speech, is a machine;
//! - so is one that has gone on for `continuous_percent` of that without a pause of
//!   `continuous_gap_ms`: people say "Hello?" and stop, a recording reads its first sentence
//!   in one breath. That verdict is early, and so provisional: should the utterance stop
//!   (`stopped_silence_ms` of silence) before it has run `greeting_ms`, it was a person's long
//!   "Hello, yes, who's calling please?" and the verdict is revised to `human`;
//! - a shorter first utterance followed by `human_silence_ms` of silence is a person; but
//!   should it go on after less than `resumed_gap_ms` and run to `resumed_greeting_ms` without
//!   such a pause, it was a recording played in pieces ("The person at extension" - "2" - "0" -
//!   "4" - "is unavailable" - ...: a phone system's prompts played back to back, each piece's
//!   own silence at its ends), and the verdict is revised to `machine`. A person who says
//!   "Hello?" and waits stops for longer, and one who talks on over the agent is done within
//!   `resumed_greeting_ms`;
//! - nothing said within `max_ms` (or no verdict by then) is unknown;
//! - a beep within `beep_watch_ms` of the answer turns a `human` or `unknown` verdict into
//!   `machine`: a greeting with sentence pauses long enough to pass for a person waiting still
//!   ends in its beep, and a person never beeps (DTMF is two tones, not one).
//!
//! A line's own noise (a street, a bad line) sets off the VAD as well as speech does, and would
//! read as a greeting that never ends: a frame counts as speech only when it is also
//! `above_floor_db` louder than the line's noise floor (minimum statistics over 1.5 s).
//!
//! Taking a person for a machine hangs up on them, so every rule leans to `human`/`unknown`:
//! a pause long enough for a person to wait for an answer ends the greeting as human, and a
//! halting greeting (less than `min_speech_share` speech) never counts as a recording.

use domain::call::AnsweredBy;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AmdConfig {
    /// A first utterance at least this long (from its first speech) is a recorded greeting.
    pub greeting_ms: u64,
    /// Silence after a shorter first utterance that makes it a person waiting for an answer.
    pub human_silence_ms: u64,
    /// Share of the greeting (its first speech to now) that must be speech for `greeting_ms`
    /// to count: "Hello? ... Hello?" is not a recording.
    pub min_speech_share: f64,
    /// No verdict by this time after the answer: unknown.
    pub max_ms: u64,
    /// How much louder than the line's noise floor speech must be (dB).
    pub above_floor_db: f64,
    /// Less speech than this is a click or a breath: no greeting yet.
    pub min_speech_ms: u64,
    /// Less than `min_speech_ms` of speech followed by this much quiet was a click or the
    /// line's noise poking over the floor, not the first utterance's start: the greeting is
    /// timed from the next speech. 0: off.
    pub click_gap_ms: u64,
    /// How long after the answer a beep still revises the verdict to `machine`.
    pub beep_watch_ms: u64,
    /// How long the tone detector must have reported a tone (it reports one after 100 ms)
    /// for it to be a beep (260 ms of tone in all): synthetic voices saying "Who is this?"
    /// held one pitch for up to 240 ms on the tune set; machines beep for 250 ms and more.
    pub min_beep_ms: u64,
    /// A first utterance that has lasted this share (%) of `greeting_ms` with no pause of
    /// `continuous_gap_ms` is a machine already: a recording reads on, a person's "Hello,
    /// Rahul speaking" stops or breathes sooner. A share, so that an operator who wants a
    /// longer greeting gets it from both rules. 0: off.
    pub continuous_percent: u64,
    /// See `continuous_percent`.
    pub continuous_gap_ms: u64,
    /// After a `machine` by the continuous rule, silence this long before the utterance has
    /// run `greeting_ms` makes it a person after all: their long first sentence is over and
    /// they wait for an answer. Longer than a recording's pause between two sentences.
    pub stopped_silence_ms: u64,
    /// After a `human` verdict on the first utterance (a short one followed by silence, or a
    /// long first sentence that stopped), speech that resumes within `resumed_gap_ms` and runs
    /// on, with no pause that long, to this span from the utterance's first speech makes it a
    /// recording played in pieces: a machine after all. 0: off.
    pub resumed_greeting_ms: u64,
    /// See `resumed_greeting_ms`: a pause this long ends the watch, the person stays a person.
    pub resumed_gap_ms: u64,
}

impl Default for AmdConfig {
    fn default() -> Self {
        // Tuned with `outdial-bench amd` (docs/benchmarks.md).
        Self {
            greeting_ms: 2_500,
            human_silence_ms: 500,
            min_speech_share: 0.3,
            max_ms: 6_000,
            above_floor_db: 4.0,
            min_speech_ms: 160,
            click_gap_ms: 200,
            beep_watch_ms: 30_000,
            min_beep_ms: 160,
            // 1.4 s of the default 2.5 s: early, since a person it takes is given back at once
            // when they stop (`stopped_silence_ms`).
            continuous_percent: 56,
            continuous_gap_ms: 350,
            stopped_silence_ms: 600,
            resumed_greeting_ms: 5_000,
            resumed_gap_ms: 800,
        }
    }
}

/// What decided the verdict, for the log and the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cue {
    Beep,
    LongGreeting,
    /// A first utterance that ran on without a pause for `continuous_percent` of the greeting.
    Continuous,
    ShortGreeting,
    /// Nothing decisive by `max_ms`.
    Timeout,
    /// A first utterance taken for a machine by the continuous rule stopped before
    /// `greeting_ms`: a person after all.
    Stopped,
    /// A first utterance taken for a person resumed after a short pause and ran on to
    /// `resumed_greeting_ms`: a recording played in pieces.
    Resumed,
}

#[derive(Debug, Clone)]
pub struct Amd {
    cfg: AmdConfig,
    frame_ms: u64,
    /// First speech after the answer.
    onset: Option<u64>,
    /// End of the last speech frame.
    last_speech: u64,
    speech_ms: u64,
    /// The longest pause between two speech frames since the onset.
    longest_gap: u64,
    floor: NoiseFloor,
    /// How long the tone detector has reported the tone now sounding.
    tone_ms: u64,
    /// The last frame ended a beep (a tone heard for `min_beep_ms`).
    beep_ended: bool,
    /// The verdict given, if any.
    given: Option<AnsweredBy>,
    /// The `machine` given may yet be revised (it came from the continuous rule).
    provisional: bool,
    /// The `human` given on the first utterance may yet be revised should it resume and run on
    /// (`resumed_greeting_ms`).
    resumable: bool,
    /// The last frame was speech by the detector's measure.
    heard: bool,
}

/// The line's noise floor by minimum statistics: the `RANK`-th quietest level of the last
/// `WINDOW_MS`, over frame levels smoothed by a median of three (so a lost packet, a frame of
/// near-silence in the middle of noise, does not count). Speech dips between syllables at
/// least that often; steady noise never rises above its own floor.
#[derive(Debug, Clone)]
struct NoiseFloor {
    recent: [f64; 3],
    smoothed: std::collections::VecDeque<f64>,
    window: usize,
    seen: usize,
}

impl NoiseFloor {
    /// Quieter than this is digital silence, not a floor to measure from.
    const SILENCE_DB: f64 = 20.0;
    const WINDOW_MS: u64 = 1_500;
    /// Not the quietest: two packets lost in a row on a noisy line leave two smoothed levels
    /// 20-40 dB under the noise, and a floor taken from them made 1.5 s of the line's noise
    /// read as speech (a person's silence as a greeting that talks on). Tuned on the tune set.
    const RANK: usize = 3;

    fn new(frame_ms: u64) -> Self {
        let window = (Self::WINDOW_MS / frame_ms.max(1)).max(1) as usize;
        Self {
            recent: [0.0; 3],
            smoothed: std::collections::VecDeque::with_capacity(window),
            window,
            seen: 0,
        }
    }

    /// The frame's level (dB over one unit of 16-bit PCM) against the floor.
    fn above(&mut self, samples: &[i16]) -> f64 {
        let n = samples.len().max(1) as f64;
        let power = samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / n;
        let level = 10.0 * power.max(1.0).log10();
        self.recent[self.seen % 3] = level;
        self.seen += 1;
        if self.seen >= 3 {
            let mut r = self.recent;
            r.sort_by(f64::total_cmp);
            if self.smoothed.len() == self.window {
                self.smoothed.pop_front();
            }
            self.smoothed.push_back(r[1]);
        }
        if self.smoothed.is_empty() {
            // The first frames only start the measure.
            return 0.0;
        }
        let mut quietest = [f64::INFINITY; Self::RANK];
        let mut silent = 0;
        for &l in &self.smoothed {
            if l < Self::SILENCE_DB {
                silent += 1;
            } else if let Some(at) = quietest.iter().position(|&q| l < q) {
                quietest.copy_within(at..Self::RANK - 1, at + 1);
                quietest[at] = l;
            }
        }
        let floor = if silent >= Self::RANK {
            // A line of digital silence between words (a clean line, no noise to measure):
            // its floor is the quietest audible level, lest it be taken from the words.
            quietest.first().copied().filter(|q| q.is_finite())
        } else {
            // Lost packets count towards the rank; with fewer levels than the rank (the
            // call's first frames), the loudest there is.
            let rank = Self::RANK - silent;
            quietest[..rank]
                .iter()
                .rev()
                .copied()
                .find(|q| q.is_finite())
        };
        // A line of digital silence has no floor: anything audible is above it.
        level - floor.unwrap_or(Self::SILENCE_DB)
    }
}

impl Amd {
    pub fn new(cfg: AmdConfig, frame_ms: u64) -> Self {
        Self {
            cfg,
            frame_ms: frame_ms.max(1),
            onset: None,
            last_speech: 0,
            speech_ms: 0,
            longest_gap: 0,
            floor: NoiseFloor::new(frame_ms.max(1)),
            tone_ms: 0,
            beep_ended: false,
            given: None,
            provisional: false,
            resumable: false,
            heard: false,
        }
    }

    /// One frame (`samples`) ending `at_ms` after the answer; `vad`: the VAD took it for speech
    /// (and it was not the agent's echo); `tone`: the tone detector reports a tone sounding
    /// ([`media::tone::ToneDetector::in_tone`]). Returns the verdict when it is reached, and
    /// again whenever it is revised: a provisional `machine` to `human` when the utterance
    /// stops short, a `human` or `unknown` to `machine` on a beep; `None` otherwise.
    pub fn frame(
        &mut self,
        at_ms: u64,
        samples: &[i16],
        vad: bool,
        tone: bool,
    ) -> Option<(AnsweredBy, Cue)> {
        self.beep_ended = !tone && self.tone_ms >= self.cfg.min_beep_ms;
        self.tone_ms = if tone {
            self.tone_ms + self.frame_ms
        } else {
            0
        };
        let beep = tone && self.tone_ms >= self.cfg.min_beep_ms;
        // Every frame feeds the floor, the quiet ones most of all.
        let loud = self.floor.above(samples) >= self.cfg.above_floor_db;
        self.heard = vad && loud;
        match self.given {
            Some(AnsweredBy::Machine) if self.provisional => self.confirm(at_ms, self.heard, beep),
            Some(AnsweredBy::Machine) => None,
            Some(_) if beep && at_ms <= self.cfg.beep_watch_ms => {
                self.given = Some(AnsweredBy::Machine);
                self.resumable = false;
                Some((AnsweredBy::Machine, Cue::Beep))
            }
            Some(AnsweredBy::Human) if self.resumable => self.resume(at_ms, self.heard),
            Some(_) => None,
            None => {
                let verdict = self.decide(at_ms, self.heard, beep);
                self.given = verdict.map(|v| v.0);
                self.provisional = verdict.is_some_and(|v| v.1 == Cue::Continuous);
                self.resumable = verdict.is_some_and(|v| v.1 == Cue::ShortGreeting);
                verdict
            }
        }
    }

    /// Whether the last frame given to [`Amd::frame`] held a sound the greeting may still be
    /// making: speech by the detector's measure (the VAD, and above the line's noise floor), or
    /// a tone. For [`GreetingEnd`].
    pub fn sounding(&self) -> bool {
        self.heard || self.tone_ms > 0
    }

    /// Whether the last frame ended a beep: a tone heard as long as a beep must be
    /// (`min_beep_ms`), for [`GreetingEnd`]. A shorter tone (a held vowel, a note of the
    /// greeting's music) is part of the greeting, not its end.
    pub fn beep_ended(&self) -> bool {
        self.beep_ended
    }

    /// The `machine` verdict given may still be revised to `human`: no message yet.
    pub fn provisional(&self) -> bool {
        self.provisional
    }

    /// Times the first utterance with one more frame: its onset, its last speech, its longest
    /// pause and how much of it was speech.
    fn track(&mut self, at_ms: u64, speech: bool) {
        if !speech {
            return;
        }
        match self.onset {
            None => self.onset = Some(at_ms.saturating_sub(self.frame_ms)),
            Some(_) => {
                let gap = at_ms.saturating_sub(self.frame_ms + self.last_speech);
                let click = self.cfg.click_gap_ms > 0
                    && self.speech_ms < self.cfg.min_speech_ms
                    && gap >= self.cfg.click_gap_ms;
                if click {
                    self.onset = Some(at_ms.saturating_sub(self.frame_ms));
                    self.speech_ms = 0;
                    self.longest_gap = 0;
                } else {
                    self.longest_gap = self.longest_gap.max(gap);
                }
            }
        }
        self.last_speech = at_ms;
        self.speech_ms += self.frame_ms;
    }

    fn decide(&mut self, at_ms: u64, speech: bool, beep: bool) -> Option<(AnsweredBy, Cue)> {
        if beep {
            return Some((AnsweredBy::Machine, Cue::Beep));
        }
        self.track(at_ms, speech);
        let cfg = &self.cfg;
        if let Some(onset) = self.onset {
            let span = self.last_speech.saturating_sub(onset);
            let silence = at_ms.saturating_sub(self.last_speech);
            if silence >= cfg.human_silence_ms && self.speech_ms >= cfg.min_speech_ms {
                return Some((AnsweredBy::Human, Cue::ShortGreeting));
            }
            let dense = self.speech_ms as f64 >= cfg.min_speech_share * span as f64;
            if span >= cfg.greeting_ms && dense {
                return Some((AnsweredBy::Machine, Cue::LongGreeting));
            }
            let continuous_ms = cfg.greeting_ms * cfg.continuous_percent / 100;
            if continuous_ms > 0
                && span >= continuous_ms
                && self.longest_gap < cfg.continuous_gap_ms
                && dense
            {
                return Some((AnsweredBy::Machine, Cue::Continuous));
            }
        }
        (at_ms >= cfg.max_ms).then_some((AnsweredBy::Unknown, Cue::Timeout))
    }

    /// After a `machine` by the continuous rule: a person after all if the utterance stops
    /// (`stopped_silence_ms`) before it has run `greeting_ms`; for sure once it has, or on a
    /// beep, or at `max_ms`.
    fn confirm(&mut self, at_ms: u64, speech: bool, beep: bool) -> Option<(AnsweredBy, Cue)> {
        self.track(at_ms, speech);
        let onset = self.onset.unwrap_or(at_ms);
        let span = self.last_speech.saturating_sub(onset);
        let silence = at_ms.saturating_sub(self.last_speech);
        if !beep && silence >= self.cfg.stopped_silence_ms {
            self.provisional = false;
            self.resumable = true;
            self.given = Some(AnsweredBy::Human);
            return Some((AnsweredBy::Human, Cue::Stopped));
        }
        self.provisional = !beep && span < self.cfg.greeting_ms && at_ms < self.cfg.max_ms;
        None
    }

    /// After a `human` verdict on the first utterance: a machine after all if the utterance
    /// resumes and runs on to `resumed_greeting_ms` with no pause of `resumed_gap_ms`; the
    /// watch ends at such a pause.
    fn resume(&mut self, at_ms: u64, speech: bool) -> Option<(AnsweredBy, Cue)> {
        self.track(at_ms, speech);
        let cfg = &self.cfg;
        if cfg.resumed_greeting_ms == 0
            || at_ms.saturating_sub(self.last_speech) >= cfg.resumed_gap_ms
        {
            self.resumable = false;
            return None;
        }
        let onset = self.onset.unwrap_or(at_ms);
        let span = self.last_speech.saturating_sub(onset);
        let dense = self.speech_ms as f64 >= cfg.min_speech_share * span as f64;
        if span < cfg.resumed_greeting_ms || !dense {
            return None;
        }
        self.resumable = false;
        self.given = Some(AnsweredBy::Machine);
        Some((AnsweredBy::Machine, Cue::Resumed))
    }
}

/// After a machine verdict: when the greeting is over and a message can be left. Over at the
/// end of a beep, after `quiet_ms` without speech or tone, or at `max_ms` whatever is heard
/// (a greeting that never ends must not keep the call open).
#[derive(Debug, Clone)]
pub struct GreetingEnd {
    quiet_ms: u64,
    deadline: u64,
    last_sound: u64,
    over: bool,
}

impl GreetingEnd {
    /// The default wait: 1.5 s of quiet, at most 30 s.
    pub const QUIET_MS: u64 = 1_500;
    pub const MAX_MS: u64 = 30_000;

    /// Waiting from `at_ms` (the machine verdict).
    pub fn new(at_ms: u64, quiet_ms: u64, max_ms: u64) -> Self {
        Self {
            quiet_ms,
            deadline: at_ms + max_ms,
            last_sound: at_ms,
            over: false,
        }
    }

    /// One frame: whether the greeting is over (and stays so).
    pub fn frame(&mut self, at_ms: u64, sound: bool, beep_ended: bool) -> bool {
        if sound {
            self.last_sound = at_ms;
        }
        self.over = self.over
            || beep_ended
            || at_ms.saturating_sub(self.last_sound) >= self.quiet_ms
            || at_ms >= self.deadline;
        self.over
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: u64 = 20;
    const LOUD: [i16; 320] = [3000; 320];
    /// Between syllables: 20 dB down, as speech dips every few frames.
    const DIP: [i16; 320] = [300; 320];
    const QUIET: [i16; 320] = [0; 320];

    fn speech_frame(n: usize) -> &'static [i16] {
        if n % 6 < 2 {
            &DIP
        } else {
            &LOUD
        }
    }

    /// Feeds `(ms, speech)` runs from the answer (speech: syllables the VAD flags, with dips;
    /// else silence); returns the first verdict and when it came.
    fn run(pattern: &[(u64, bool)]) -> Option<(AnsweredBy, Cue, u64)> {
        let mut amd = Amd::new(AmdConfig::default(), FRAME);
        let mut at = 0;
        let mut n = 0;
        for &(ms, speech) in pattern {
            for _ in 0..ms / FRAME {
                at += FRAME;
                n += 1;
                let samples = if speech { speech_frame(n) } else { &QUIET };
                if let Some((v, cue)) = amd.frame(at, samples, speech, false) {
                    return Some((v, cue, at));
                }
            }
        }
        None
    }

    #[test]
    fn hello_then_silence_is_a_person_soon_after_they_stop() {
        let v = run(&[(400, false), (600, true), (2000, false)]);
        let (verdict, cue, at) = v.expect("a verdict");
        assert_eq!((verdict, cue), (AnsweredBy::Human, Cue::ShortGreeting));
        // The silence after the hello, give or take the frame it ended on.
        let silence = AmdConfig::default().human_silence_ms;
        assert!((1000 + silence - 40..=1000 + silence).contains(&at), "{at}");
    }

    #[test]
    fn a_greeting_that_talks_on_is_a_machine_once_it_has_gone_on_for_the_greeting_time() {
        // Sentences with the pauses between them of read-out speech, too long for the
        // continuous rule, too short for a person waiting.
        let mut p = vec![(300, false)];
        for _ in 0..10 {
            p.extend([(500, true), (400, false)]);
        }
        let (verdict, cue, at) = run(&p).expect("a verdict");
        assert_eq!((verdict, cue), (AnsweredBy::Machine, Cue::LongGreeting));
        let greeting = AmdConfig::default().greeting_ms;
        assert!(
            (300 + greeting..=300 + greeting + 500).contains(&at),
            "{at}"
        );
    }

    #[test]
    fn a_greeting_read_in_one_breath_is_a_machine_before_the_greeting_time() {
        // Words with the short pauses between them of read-out speech.
        let mut p = vec![(300, false)];
        for _ in 0..10 {
            p.extend([(500, true), (200, false)]);
        }
        let (verdict, cue, at) = run(&p).expect("a verdict");
        assert_eq!((verdict, cue), (AnsweredBy::Machine, Cue::Continuous));
        let cfg = AmdConfig::default();
        let continuous = cfg.greeting_ms * cfg.continuous_percent / 100;
        assert!(
            (300 + continuous..300 + continuous + 500).contains(&at),
            "{at}"
        );
        assert!(at < 300 + cfg.greeting_ms, "{at}");
    }

    /// Every verdict and revision over `pattern` (as `run`), with when it came.
    fn verdicts(pattern: &[(u64, bool)], tone_from: Option<u64>) -> Vec<(AnsweredBy, Cue, u64)> {
        let mut amd = Amd::new(AmdConfig::default(), FRAME);
        let mut out = Vec::new();
        let (mut at, mut n) = (0, 0);
        for &(ms, speech) in pattern {
            for _ in 0..ms / FRAME {
                at += FRAME;
                n += 1;
                let tone = tone_from.is_some_and(|from| (from..from + 400).contains(&at));
                let samples = if speech || tone {
                    speech_frame(n)
                } else {
                    &QUIET
                };
                if let Some((v, cue)) = amd.frame(at, samples, speech, tone) {
                    out.push((v, cue, at));
                }
            }
        }
        out
    }

    #[test]
    fn a_first_sentence_in_one_breath_that_stops_short_of_a_greeting_is_a_person_after_all() {
        // "Hello, yes, who's calling please?" in one breath (2.1 s), then waiting for an answer:
        // taken for a recording read in one breath, a person once they have stopped for long
        // enough.
        let v = verdicts(&[(300, false), (2_100, true), (3_000, false)], None);
        let cfg = AmdConfig::default();
        let kinds: Vec<_> = v.iter().map(|v| (v.0, v.1)).collect();
        assert_eq!(
            kinds,
            [
                (AnsweredBy::Machine, Cue::Continuous),
                (AnsweredBy::Human, Cue::Stopped)
            ]
        );
        let stopped = 300 + 2_100 + cfg.stopped_silence_ms;
        assert!((stopped - 40..=stopped).contains(&v[1].2), "{v:?}");
        // A greeting read on past `greeting_ms` keeps its verdict.
        let v = verdicts(&[(300, false), (4_000, true), (3_000, false)], None);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!((v[0].0, v[0].1), (AnsweredBy::Machine, Cue::Continuous));
    }

    #[test]
    fn a_beep_after_the_verdict_was_taken_back_makes_it_a_machine_again() {
        let v = verdicts(&[(300, false), (2_100, true), (3_000, false)], Some(4_000));
        let kinds: Vec<_> = v.iter().map(|v| (v.0, v.1)).collect();
        assert_eq!(
            kinds,
            [
                (AnsweredBy::Machine, Cue::Continuous),
                (AnsweredBy::Human, Cue::Stopped),
                (AnsweredBy::Machine, Cue::Beep)
            ]
        );
    }

    #[test]
    fn a_greeting_played_in_pieces_is_a_machine_once_it_has_run_on() {
        // A phone system's prompts played back to back: "The person at extension" - "2" - "0"
        // - "4" - "is unavailable" - "Please leave your message...", each pause 600 ms as the
        // noise floor measures it: the first piece passes for "Hello?" and a person waiting.
        let mut pattern = vec![(300, false), (1_200, true)];
        for piece in [500, 500, 500, 1_200, 3_000] {
            pattern.extend([(600, false), (piece, true)]);
        }
        let v = verdicts(&pattern, None);
        let kinds: Vec<_> = v.iter().map(|v| (v.0, v.1)).collect();
        assert_eq!(
            kinds,
            [
                (AnsweredBy::Human, Cue::ShortGreeting),
                (AnsweredBy::Machine, Cue::Resumed)
            ]
        );
        // Revised once the pieces have run `resumed_greeting_ms` from the first word: here at
        // the first speech after the piece that reached it (a piece's last frame can be one of
        // its quiet dips).
        let resumed = 300 + AmdConfig::default().resumed_greeting_ms;
        assert!((resumed..resumed + 700).contains(&v[1].2), "{v:?}");
    }

    #[test]
    fn a_person_who_talks_on_after_a_hello_or_after_a_wait_stays_a_person() {
        // "Hello?", a short wait, then talking over the agent ("Yes, who is this? Sorry, I
        // can't hear you") and done: shorter than a greeting in pieces runs.
        let v = verdicts(
            &[
                (300, false),
                (500, true),
                (600, false),
                (2_400, true),
                (4_000, false),
            ],
            None,
        );
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!((v[0].0, v[0].1), (AnsweredBy::Human, Cue::ShortGreeting));
        // "Hello?", a person's wait for an answer, then however long they talk.
        let v = verdicts(
            &[
                (300, false),
                (500, true),
                (1_000, false),
                (6_000, true),
                (2_000, false),
            ],
            None,
        );
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!((v[0].0, v[0].1), (AnsweredBy::Human, Cue::ShortGreeting));
    }

    #[test]
    fn only_a_tone_as_long_as_a_beep_ends_the_greeting() {
        // A held vowel or a note of the greeting's music that the tone detector reports for
        // 100 ms is part of the greeting; the beep after it (300 ms reported) ends it.
        let mut amd = Amd::new(AmdConfig::default(), FRAME);
        let (mut at, mut ends) = (0, Vec::new());
        for (ms, tone) in [
            (500, false),
            (100, true),
            (500, false),
            (300, true),
            (500, false),
        ] {
            for _ in 0..ms / FRAME {
                at += FRAME;
                amd.frame(at, &LOUD, true, tone);
                if amd.beep_ended() {
                    ends.push(at);
                }
            }
        }
        assert_eq!(ends, [500 + 100 + 500 + 300 + FRAME]);
    }

    #[test]
    fn a_person_who_takes_a_breath_is_not_a_greeting_read_in_one() {
        // "Hello, Rahul speaking" slowly, a breath, "who is it?", then waiting: as long as the
        // continuous rule, but with a pause no recording reads its first sentence with.
        let v = run(&[
            (200, false),
            (900, true),
            (400, false),
            (900, true),
            (1000, false),
        ]);
        assert_eq!(
            v.map(|v| (v.0, v.1)),
            Some((AnsweredBy::Human, Cue::ShortGreeting))
        );
    }

    #[test]
    fn hello_pause_hello_is_a_person() {
        // Two short hellos 400 ms apart, then the pause of a person waiting for an answer.
        let v = run(&[
            (200, false),
            (500, true),
            (400, false),
            (500, true),
            (900, false),
        ]);
        assert_eq!(v.map(|v| v.0), Some(AnsweredBy::Human));
    }

    #[test]
    fn a_beep_is_a_machine_once_it_has_lasted_and_silence_is_unknown() {
        let mut amd = Amd::new(AmdConfig::default(), FRAME);
        assert_eq!(amd.frame(20, &QUIET, false, false), None);
        let frames = AmdConfig::default().min_beep_ms / FRAME;
        for n in 1..frames {
            assert_eq!(amd.frame(20 + n * FRAME, &LOUD, false, true), None);
        }
        let at = 20 + frames * FRAME;
        assert_eq!(
            amd.frame(at, &LOUD, false, true),
            Some((AnsweredBy::Machine, Cue::Beep))
        );
        // Once only.
        assert_eq!(amd.frame(at + FRAME, &LOUD, false, true), None);
        assert_eq!(
            run(&[(7000, false)]),
            Some((AnsweredBy::Unknown, Cue::Timeout, 6000))
        );
    }

    #[test]
    fn a_beep_within_the_watch_revises_a_person_to_a_machine_and_later_ones_do_not() {
        let beep_at = |frame: usize| {
            let mut amd = Amd::new(AmdConfig::default(), FRAME);
            let mut verdicts = Vec::new();
            for n in 1..2000 {
                let at = n as u64 * FRAME;
                let speech = (10..40).contains(&n);
                let samples = if speech { speech_frame(n) } else { &QUIET };
                let tone = (frame..frame + 20).contains(&n);
                if let Some((v, _)) = amd.frame(at, samples, speech, tone) {
                    verdicts.push(v);
                }
            }
            verdicts
        };
        assert_eq!(beep_at(300), [AnsweredBy::Human, AnsweredBy::Machine]);
        assert_eq!(beep_at(1600), [AnsweredBy::Human]);
    }

    #[test]
    fn a_robotic_hello_that_holds_one_pitch_briefly_is_not_a_beep() {
        // The tone detector reports a tone for 140 ms inside a person's "Hello?" (a synthetic
        // voice holding one pitch); a machine's beep lasts longer.
        let mut amd = Amd::new(AmdConfig::default(), FRAME);
        let mut verdicts = Vec::new();
        for n in 1..200 {
            let at = n as u64 * FRAME;
            let speech = (10..40).contains(&n);
            let samples = if speech { speech_frame(n) } else { &QUIET };
            let tone = (20..27).contains(&n);
            if let Some(v) = amd.frame(at, samples, speech, tone) {
                verdicts.push(v);
            }
        }
        assert_eq!(verdicts, [(AnsweredBy::Human, Cue::ShortGreeting)]);
    }

    #[test]
    fn two_lost_packets_on_a_noisy_line_do_not_turn_its_noise_into_speech() {
        // A hello over line noise the VAD flags throughout, then two packets lost in a row
        // (near silence, but above the digital-silence cut), then the noise alone: a person
        // waiting, not a greeting that talks on.
        const NOISE: [i16; 320] = [300; 320];
        const LOST: [i16; 320] = [20; 320];
        let mut amd = Amd::new(AmdConfig::default(), FRAME);
        let mut verdict = None;
        for n in 1..300 {
            let at = n as u64 * FRAME;
            let samples: &[i16] = match n {
                // The syllables, and the noise between them.
                25..55 if n % 6 >= 2 => &LOUD,
                55..57 => &LOST,
                _ => &NOISE,
            };
            if let Some(v) = amd.frame(at, samples, true, false) {
                verdict = Some(v);
                break;
            }
        }
        assert_eq!(verdict, Some((AnsweredBy::Human, Cue::ShortGreeting)));
    }

    #[test]
    fn noise_poking_over_the_floor_before_a_hello_does_not_start_the_greeting() {
        // Two frames of street noise the VAD and the floor let through, 340 ms apart, then
        // "Haan ji, hello?" in one breath and silence: timed from the clicks, 1.9 s of speech
        // without a long pause, a greeting read in one breath; timed from its words, a person.
        let v = run(&[
            (240, false),
            (20, true),
            (340, false),
            (20, true),
            (300, false),
            (1_200, true),
            (1_000, false),
        ]);
        assert_eq!(
            v.map(|v| (v.0, v.1)),
            Some((AnsweredBy::Human, Cue::ShortGreeting))
        );
    }

    #[test]
    fn a_steady_hello_on_a_clean_line_is_a_person() {
        // Digital silence, one frame of onset, 300 ms of a held vowel, digital silence: the
        // floor is not to be taken from the vowel itself.
        let mut amd = Amd::new(AmdConfig::default(), FRAME);
        let mut verdict = None;
        for n in 1..200 {
            let samples: &[i16] = match n {
                25 => &DIP,
                26..41 => &LOUD,
                _ => &QUIET,
            };
            if let Some(v) = amd.frame(n as u64 * FRAME, samples, (25..41).contains(&n), false) {
                verdict = Some(v);
                break;
            }
        }
        assert_eq!(verdict, Some((AnsweredBy::Human, Cue::ShortGreeting)));
    }

    #[test]
    fn steady_line_noise_the_vad_takes_for_speech_is_not_a_greeting() {
        // A short hello over noise 20 dB under it, which the VAD flags throughout.
        let mut amd = Amd::new(AmdConfig::default(), FRAME);
        let mut verdict = None;
        for n in 1..300 {
            let at = n as u64 * FRAME;
            let samples = if (25..55).contains(&n) {
                speech_frame(n)
            } else {
                &DIP
            };
            if let Some(v) = amd.frame(at, samples, true, false) {
                verdict = Some(v.0);
                break;
            }
        }
        assert_eq!(verdict, Some(AnsweredBy::Human));
    }

    #[test]
    fn the_greeting_ends_at_the_beep_or_after_quiet_or_at_the_deadline() {
        let mut g = GreetingEnd::new(1000, 1500, 30_000);
        assert!(!g.frame(1020, true, false));
        assert!(!g.frame(2000, false, false));
        assert!(g.frame(2040, false, true));
        // Stays over.
        assert!(g.frame(2060, true, false));
        let mut quiet = GreetingEnd::new(1000, 1500, 30_000);
        assert!(!quiet.frame(2000, true, false));
        assert!(!quiet.frame(3480, false, false));
        assert!(quiet.frame(3500, false, false));
        let mut endless = GreetingEnd::new(0, 1500, 30_000);
        assert!(!endless.frame(29_980, true, false));
        assert!(endless.frame(30_000, true, false));
    }
}
