//! Echo-aware speech gating: tells whether an inbound frame is the agent's own voice coming
//! back down the line (a handset's acoustic echo, a hybrid's line echo, a peer that loops the
//! audio back) rather than the caller talking. Without it the agent's opening, echoed, reads as
//! the caller talking over the agent and cuts the agent off (barge-in).
//!
//! Not a canceller: the caller's speech is not separated from the echo, only recognised as
//! more than the echo explains. The echo path is found from energy envelopes (5 ms sub-frames):
//! the delay whose far-end envelope best correlates with the near-end one over the last second,
//! and the gain between them. A near frame is echo when the agent's audio played that delay
//! ago predicts its energy to within [`EchoConfig::margin_db`]; the caller speaking over the
//! echo (double talk) adds energy the path does not predict, so it still counts as speech.
//!
//! Sans-IO: the driver hands over each frame it queues for playout ([`EchoGate::queue_far`])
//! and each inbound frame ([`EchoGate::near`]); one inbound frame is one tick of the clock, and
//! each tick one queued frame is taken as played (the adapter plays one per tick).

use std::collections::VecDeque;

/// Sub-frames per frame: 5 ms resolution for a 20 ms frame.
const SUBFRAMES: usize = 4;

/// What an operator could tune; the defaults suit a phone line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EchoConfig {
    /// The longest echo delay looked for, from queueing a frame to hearing it back (includes
    /// the driver's lead, the network both ways and the far end's jitter buffer).
    pub max_delay_ms: u32,
    /// Near-end history the path is estimated over.
    pub window_ms: u32,
    /// Envelope correlation that establishes an echo path (and below which the path is not
    /// re-estimated: the caller talking over the echo lowers it).
    pub min_correlation: f32,
    /// How far above the predicted echo a frame may be and still be echo (6 dB: the caller
    /// must be at least as loud as the echo to be heard over it).
    pub margin_db: f32,
}

impl Default for EchoConfig {
    fn default() -> Self {
        Self {
            max_delay_ms: 1_000,
            window_ms: 1_000,
            min_correlation: 0.9,
            margin_db: 6.0,
        }
    }
}

/// The estimated echo path: delay in sub-frames and energy gain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EchoPath {
    /// Sub-frames (5 ms each) between playing a sound and hearing it back.
    pub delay_subframes: usize,
    /// Near energy over far energy along the path (1.0 = the echo comes back at full level).
    pub gain: f32,
    /// The envelope correlation that established it.
    pub correlation: f32,
}

/// See the module documentation.
#[derive(Debug)]
pub struct EchoGate {
    cfg: EchoConfig,
    sub_ms: u32,
    /// Frames queued but not yet played.
    pending: VecDeque<Vec<i16>>,
    /// The samples played, newest last, as far back as the longest delay looks.
    far_samples: VecDeque<i16>,
    /// The latest inbound samples, for checking a path on the waveform.
    near_samples: VecDeque<i16>,
    /// Samples per sub-frame (from the frames fed).
    sub_samples: usize,
    /// Sub-frame energies of what was played, newest last.
    far: VecDeque<f32>,
    /// Sub-frame energies of what came in, newest last.
    near: VecDeque<f32>,
    path: Option<EchoPath>,
    /// Frames since the path was last estimated.
    since_estimate: u32,
}

fn subframe_energies(frame: &[i16]) -> [f32; SUBFRAMES] {
    let mut out = [0.0; SUBFRAMES];
    let n = (frame.len() / SUBFRAMES).max(1);
    for (i, chunk) in frame.chunks(n).take(SUBFRAMES).enumerate() {
        out[i] = chunk.iter().map(|&s| f32::from(s).powi(2)).sum::<f32>() / n as f32;
    }
    out
}

/// Pearson correlation of two equal-length series (0 when either is flat).
fn correlation(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let (a, b) = (&a[..n], &b[..n]);
    let ma = a.iter().sum::<f32>() / n as f32;
    let mb = b.iter().sum::<f32>() / n as f32;
    let (mut sab, mut saa, mut sbb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa <= f32::EPSILON || sbb <= f32::EPSILON {
        return 0.0;
    }
    sab / (saa * sbb).sqrt()
}

/// The amplitude envelope: energy's square root, so a loud syllable does not outweigh the
/// envelope's shape, while the shape inside a syllable (which an on/off log scale loses, and
/// with it the difference between two talkers) still counts.
fn level(e: f32) -> f32 {
    e.sqrt()
}

impl EchoGate {
    /// A gate for frames of `frame_ms` (20 for outdial's frames).
    pub fn new(cfg: EchoConfig, frame_ms: u32) -> Self {
        Self {
            cfg,
            sub_ms: (frame_ms / SUBFRAMES as u32).max(1),
            pending: VecDeque::new(),
            far_samples: VecDeque::new(),
            near_samples: VecDeque::new(),
            sub_samples: 0,
            far: VecDeque::new(),
            since_estimate: 0,
            near: VecDeque::new(),
            path: None,
        }
    }

    fn max_delay(&self) -> usize {
        (self.cfg.max_delay_ms / self.sub_ms) as usize
    }

    fn window(&self) -> usize {
        (self.cfg.window_ms / self.sub_ms) as usize
    }

    /// A frame of agent audio handed to the line, in playout order.
    pub fn queue_far(&mut self, frame: &[i16]) {
        self.pending.push_back(frame.to_vec());
    }

    /// The line dropped what was queued (barge-in flushes the adapter's queue).
    pub fn flush_far(&mut self) {
        self.pending.clear();
    }

    /// The echo path found so far, if any.
    pub fn path(&self) -> Option<EchoPath> {
        self.path
    }

    /// One inbound frame (one tick): true when the agent's own audio explains it.
    pub fn near(&mut self, frame: &[i16]) -> bool {
        self.sub_samples = (frame.len() / SUBFRAMES).max(1);
        let played = self
            .pending
            .pop_front()
            .unwrap_or_else(|| vec![0; frame.len()]);
        let keep_far = self.max_delay() + self.window() + SUBFRAMES;
        self.far.extend(subframe_energies(&played));
        while self.far.len() > keep_far {
            self.far.pop_front();
        }
        self.far_samples.extend(&played);
        let keep_samples = (self.max_delay() + 2 * VERIFY_SUBFRAMES) * self.sub_samples;
        while self.far_samples.len() > keep_samples {
            self.far_samples.pop_front();
        }
        self.near_samples.extend(frame);
        while self.near_samples.len() > VERIFY_SUBFRAMES * self.sub_samples {
            self.near_samples.pop_front();
        }
        let energies = subframe_energies(frame);
        self.near.extend(energies);
        while self.near.len() > self.window() {
            self.near.pop_front();
        }
        // Every frame until a path is found (the opening must not be cut while it is
        // learned), then every few frames: the path of a call barely moves.
        self.since_estimate += 1;
        if self.path.is_none() || self.since_estimate >= REESTIMATE_FRAMES {
            self.since_estimate = 0;
            if self.far.iter().any(|&e| e > 0.0) {
                self.estimate();
            }
        }
        let Some(path) = self.path else {
            return false;
        };
        // What the path predicts for these sub-frames; the frame is echo when its energy is
        // within the margin of it (and the agent was loud enough then to be heard back at all).
        let near_e: f32 = energies.iter().sum();
        let len = self.far.len();
        let mut predicted = 0.0;
        for i in 0..SUBFRAMES {
            let back = path.delay_subframes + (SUBFRAMES - 1 - i);
            if back < len {
                predicted += self.far[len - 1 - back];
            }
        }
        predicted *= path.gain;
        let margin = 10f32.powf(self.cfg.margin_db / 10.0);
        predicted > 0.0 && near_e <= predicted * margin
    }

    /// The delay whose far envelope best matches the near one over the window (at least
    /// [`MIN_OVERLAP`] sub-frames of it), and the path's gain: the median near/far energy ratio
    /// of the sub-frames where the agent was audible, so the caller talking over part of the
    /// window does not inflate it. An established path is replaced only by a better-correlated
    /// one or by a steady new one, so a burst of double talk cannot talk the gate out of it.
    fn estimate(&mut self) {
        let n = self.near.len();
        if n < MIN_OVERLAP {
            return;
        }
        let near: Vec<f32> = self.near.iter().map(|&e| level(e)).collect();
        let far: Vec<f32> = self.far.iter().map(|&e| level(e)).collect();
        let mut best: Option<(usize, usize, f32)> = None;
        for delay in 0..=self.max_delay() {
            let m = n.min(far.len().saturating_sub(delay));
            if m < MIN_OVERLAP {
                break;
            }
            let end = far.len() - delay;
            let c = correlation(&near[n - m..], &far[end - m..end]);
            if best.is_none_or(|(_, _, b)| c > b) {
                best = Some((delay, m, c));
            }
        }
        let Some((delay, m, c)) = best.filter(|&(_, _, c)| c >= self.cfg.min_correlation) else {
            return;
        };
        match self.path {
            // Keep the established path until a different one is at least as clear.
            Some(p) if p.delay_subframes != delay && c < p.correlation => return,
            Some(p) if p.delay_subframes == delay => {}
            // Envelopes alone can line up by chance (one syllable looks much like another):
            // a new path must also hold on the waveform.
            _ => {
                if !self.waveform_agrees(delay) {
                    return;
                }
            }
        }
        let end = self.far.len() - delay;
        let far_seg: Vec<f32> = self.far.range(end - m..end).copied().collect();
        let near_seg: Vec<f32> = self.near.range(n - m..).copied().collect();
        let loudest = far_seg.iter().fold(0.0f32, |a, &e| a.max(e));
        let mut ratios: Vec<f32> = far_seg
            .iter()
            .zip(&near_seg)
            .filter(|(&f, _)| f > loudest / 100.0 && f > 0.0)
            .map(|(&f, &ne)| ne / f)
            .collect();
        if ratios.is_empty() {
            return;
        }
        ratios.sort_by(f32::total_cmp);
        self.path = Some(EchoPath {
            delay_subframes: delay,
            gain: ratios[ratios.len() / 2],
            correlation: c,
        });
    }

    /// Whether the latest inbound samples are the played ones `delay` sub-frames back (give or
    /// take a sub-frame) on the waveform itself: a normalised cross-correlation peak that two
    /// independent talkers do not reach (for noise-like speech over 800 samples and a few
    /// hundred lags, chance peaks stay near 0.1).
    fn waveform_agrees(&self, delay: usize) -> bool {
        let sub = self.sub_samples;
        let near: Vec<f32> = self.near_samples.iter().map(|&s| f32::from(s)).collect();
        let n = near.len();
        let near_energy: f32 = near.iter().map(|x| x * x).sum();
        if n < VERIFY_SUBFRAMES * sub || near_energy <= f32::EPSILON {
            return false;
        }
        let far: Vec<f32> = self.far_samples.iter().map(|&s| f32::from(s)).collect();
        let mut peak = 0.0f32;
        let centre = delay * sub;
        for lag in centre.saturating_sub(sub)..=centre + sub {
            let Some(start) = far.len().checked_sub(n + lag) else {
                continue;
            };
            let seg = &far[start..start + n];
            let (mut dot, mut fe) = (0.0f32, 0.0f32);
            for (a, b) in near.iter().zip(seg) {
                dot += a * b;
                fe += b * b;
            }
            if fe > f32::EPSILON {
                peak = peak.max(dot / (near_energy * fe).sqrt());
            }
        }
        peak >= WAVEFORM_MIN_CORRELATION
    }
}

/// Frames between estimates once a path is known.
const REESTIMATE_FRAMES: u32 = 5;

/// Sub-frames of inbound audio a new path is checked on (100 ms).
const VERIFY_SUBFRAMES: usize = 20;

/// The waveform correlation that confirms a path: the echo of a phone line is the played audio
/// filtered and coded, which keeps its main tap well above this.
const WAVEFORM_MIN_CORRELATION: f32 = 0.4;

/// Sub-frames of overlap a correlation needs before it means anything (200 ms; a chance
/// match of so short an envelope is caught by the waveform check).
const MIN_OVERLAP: usize = 40;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::g711;

    const FRAME: usize = 320; // 20 ms at 16 kHz

    /// Speech-like audio: noise in syllables of random length and loudness with random gaps,
    /// so two talkers' envelopes do not line up by chance.
    fn talker(seconds: f32, seed: u64, level: f32) -> Vec<i16> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let n = (seconds * 16_000.0) as usize;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let syllable = 16 * (80 + (next() % 220) as usize);
            let gain = level * (0.3 + (next() % 700) as f32 / 1000.0);
            for i in 0..syllable {
                let shape = (std::f32::consts::PI * i as f32 / syllable as f32).sin();
                let noise = ((next() % 2001) as f32 - 1000.0) / 1000.0;
                out.push((noise * shape * gain) as i16);
            }
            let gap = 16 * (40 + (next() % 300) as usize);
            out.extend(std::iter::repeat_n(0, gap));
        }
        out.truncate(n);
        out
    }

    /// What an echoing line returns: delayed, scaled and through G.711 both ways.
    fn echo_of(far: &[i16], delay_ms: usize, gain: f32) -> Vec<i16> {
        let delay = delay_ms * 16;
        let mut out = vec![0i16; far.len()];
        for i in delay..far.len() {
            let s = (f32::from(far[i - delay]) * gain) as i16;
            out[i] = g711::ulaw_decode(g711::ulaw_encode(s));
        }
        out
    }

    /// Runs a call through the gate; returns per-frame echo verdicts.
    fn run(far: &[i16], near: &[i16], lead_frames: usize) -> Vec<bool> {
        let mut gate = EchoGate::new(EchoConfig::default(), 20);
        let frames = far.len() / FRAME;
        // The driver keeps `lead_frames` queued ahead of playout.
        for f in 0..lead_frames.min(frames) {
            gate.queue_far(&far[f * FRAME..(f + 1) * FRAME]);
        }
        (0..frames)
            .map(|f| {
                if f + lead_frames < frames {
                    let g = f + lead_frames;
                    gate.queue_far(&far[g * FRAME..(g + 1) * FRAME]);
                }
                gate.near(&near[f * FRAME..(f + 1) * FRAME])
            })
            .collect()
    }

    fn loud(signal: &[i16], f: usize) -> bool {
        let e: f32 = signal[f * FRAME..(f + 1) * FRAME]
            .iter()
            .map(|&s| f32::from(s).powi(2))
            .sum::<f32>()
            / FRAME as f32;
        e.sqrt() > 300.0
    }

    #[test]
    fn a_full_level_echo_is_recognised_after_a_short_warm_up() {
        let far = talker(4.0, 3, 8_000.0);
        let near = echo_of(&far, 60, 1.0);
        let verdicts = run(&far, &near, 3);
        // Frames where the echo is audible, after 0.6 s of learning.
        let audible: Vec<usize> = (30..verdicts.len()).filter(|&f| loud(&near, f)).collect();
        assert!(audible.len() > 60, "{} audible frames", audible.len());
        let missed = audible.iter().filter(|&&f| !verdicts[f]).count();
        assert!(
            missed * 20 <= audible.len(),
            "{missed} of {} echoed frames taken for the caller",
            audible.len()
        );
    }

    #[test]
    fn a_quiet_late_echo_is_recognised_too() {
        let far = talker(4.0, 5, 8_000.0);
        let near = echo_of(&far, 310, 0.25);
        let verdicts = run(&far, &near, 3);
        let audible: Vec<usize> = (40..verdicts.len()).filter(|&f| loud(&near, f)).collect();
        assert!(audible.len() > 40);
        let missed = audible.iter().filter(|&&f| !verdicts[f]).count();
        assert!(
            missed * 20 <= audible.len(),
            "{missed} of {}",
            audible.len()
        );
    }

    #[test]
    fn the_caller_talking_over_the_echo_is_not_echo() {
        let far = talker(4.0, 3, 6_000.0);
        let mut near = echo_of(&far, 60, 0.5);
        // From 2 s the caller talks, louder than the echo.
        let caller = talker(2.0, 11, 12_000.0);
        for (i, s) in caller.iter().enumerate() {
            let at = 32_000 + i;
            near[at] = near[at].saturating_add(*s);
        }
        let verdicts = run(&far, &near, 3);
        let echo = echo_of(&far, 60, 0.5);
        // Frames where the caller is at least twice as loud as the echo under them (the 6 dB
        // margin): each of those must count as the caller.
        let energy = |x: &[i16], f: usize| -> f32 {
            x[f * FRAME..(f + 1) * FRAME]
                .iter()
                .map(|&s| f32::from(s).powi(2))
                .sum()
        };
        let talking: Vec<usize> = (100..200)
            .filter(|&f| energy(&caller, f - 100) > 4.0 * energy(&echo, f).max(1e6))
            .collect();
        let taken_for_echo: Vec<usize> = talking.iter().copied().filter(|&f| verdicts[f]).collect();
        assert!(talking.len() > 30, "{} frames", talking.len());
        assert!(
            taken_for_echo.len() * 20 <= talking.len(),
            "{taken_for_echo:?} of {} caller frames taken for echo",
            talking.len()
        );
        // The echo alone before the caller starts is still echo.
        let before: Vec<usize> = (40..100).filter(|&f| loud(&echo, f)).collect();
        let missed = before.iter().filter(|&&f| !verdicts[f]).count();
        assert!(missed * 20 <= before.len(), "{missed} of {}", before.len());
    }

    #[test]
    fn without_agent_audio_nothing_is_echo() {
        let silence = vec![0i16; 64_000];
        let caller = talker(4.0, 7, 8_000.0);
        assert!(run(&silence, &caller, 3).iter().all(|&v| !v));
        // Nor with agent audio that the line does not return.
        let far = talker(4.0, 3, 8_000.0);
        let verdicts = run(&far, &caller, 3);
        let wrong = verdicts.iter().filter(|&&v| v).count();
        assert!(
            wrong * 20 <= verdicts.len(),
            "{wrong} frames taken for echo"
        );
    }
}
