//! Steady pure tones, such as an answering machine's "leave your message after the beep".
//!
//! Each frame's dominant frequency is estimated from its zero crossings and refined on a small
//! grid of Goertzel filters; the frame is tonal when that one frequency holds most of its
//! energy. Speech never does (its energy is spread over harmonics and formants), nor does noise.
//! A tone is reported once it has stayed tonal, at one frequency, for `min_ms`, and again when
//! it ends, so a caller can wait for the end of the beep before speaking. One frame that is not
//! tonal (a lost packet) does not break a tone: it ends at the second.
//!
//! Sans-IO: frames in, events out; time is the frame count.

/// What counts as a tone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ToneConfig {
    /// Lowest and highest frequency taken for a tone (Hz). Machines beep between ~400 and ~2 kHz.
    pub min_hz: f32,
    /// See `min_hz`.
    pub max_hz: f32,
    /// How long it must last to be a tone and not a chirp in music.
    pub min_ms: u32,
    /// Share of the frame's energy at the one frequency (0-1) for the frame to be tonal.
    pub purity: f32,
    /// RMS below which a frame is too quiet to be a tone (a distant whine is not a beep).
    pub min_rms: f32,
    /// How far (relative) the frequency may wander between frames of one tone.
    pub drift: f32,
}

impl Default for ToneConfig {
    fn default() -> Self {
        Self {
            min_hz: 300.0,
            max_hz: 3_000.0,
            min_ms: 100,
            purity: 0.7,
            // About -40 dBFS.
            min_rms: 330.0,
            drift: 0.03,
        }
    }
}

/// A tone's start (once it has lasted `min_ms`) or its end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ToneEvent {
    /// A tone at `hz` has lasted `min_ms` so far.
    Started {
        /// Its frequency.
        hz: f32,
    },
    /// The tone stopped after `ms`.
    Ended {
        /// Its frequency.
        hz: f32,
        /// How long it lasted.
        ms: u32,
    },
}

/// Finds tones in a stream of equal frames.
#[derive(Debug, Clone)]
pub struct ToneDetector {
    cfg: ToneConfig,
    rate: u32,
    frame_ms: u32,
    /// Tonal frames in a row at `hz`.
    run: u32,
    hz: f32,
    reported: bool,
    /// A frame that was not tonal in the middle of a tone.
    gap: bool,
}

impl ToneDetector {
    /// A detector for frames of `frame_ms` at `rate` Hz.
    pub fn new(cfg: ToneConfig, rate: u32, frame_ms: u32) -> Self {
        Self {
            cfg,
            rate,
            frame_ms: frame_ms.max(1),
            run: 0,
            hz: 0.0,
            reported: false,
            gap: false,
        }
    }

    /// Whether a tone has started and not yet ended.
    pub fn in_tone(&self) -> bool {
        self.reported
    }

    /// The next frame.
    pub fn frame(&mut self, frame: &[i16]) -> Option<ToneEvent> {
        let tonal = tonal_frequency(frame, self.rate, &self.cfg);
        let gap = std::mem::take(&mut self.gap);
        match tonal {
            Some(hz)
                if self.run > 0 && ((hz - self.hz).abs() / self.hz) <= self.cfg.drift.max(0.0) =>
            {
                self.run += 1 + u32::from(gap);
                // Follow a slow glide, not the first frame's estimate.
                self.hz = 0.8 * self.hz + 0.2 * hz;
            }
            Some(hz) => {
                let ended = self.end();
                self.run = 1;
                self.hz = hz;
                if ended.is_some() {
                    return ended;
                }
            }
            None if self.run > 0 && !gap => {
                self.gap = true;
                return None;
            }
            None => return self.end(),
        }
        if !self.reported && self.run * self.frame_ms >= self.cfg.min_ms {
            self.reported = true;
            return Some(ToneEvent::Started { hz: self.hz });
        }
        None
    }

    fn end(&mut self) -> Option<ToneEvent> {
        let ended = self.reported.then_some(ToneEvent::Ended {
            hz: self.hz,
            ms: self.run * self.frame_ms,
        });
        self.run = 0;
        self.reported = false;
        ended
    }
}

/// The frequency holding at least `purity` of the frame's energy, if any.
pub fn tonal_frequency(frame: &[i16], rate: u32, cfg: &ToneConfig) -> Option<f32> {
    let n = frame.len();
    if n < 32 || rate == 0 {
        return None;
    }
    let mean = frame.iter().map(|&s| f64::from(s)).sum::<f64>() / n as f64;
    let x: Vec<f64> = frame.iter().map(|&s| f64::from(s) - mean).collect();
    let energy: f64 = x.iter().map(|v| v * v).sum();
    if (energy / n as f64).sqrt() < f64::from(cfg.min_rms) {
        return None;
    }
    let crossings = x
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    let estimate = crossings as f64 * f64::from(rate) / (2.0 * (n - 1) as f64);
    if estimate < f64::from(cfg.min_hz) * 0.9 || estimate > f64::from(cfg.max_hz) * 1.1 {
        return None;
    }
    // Zero crossings are off by up to one per frame: a grid of 1 % steps either side finds the
    // peak to within the Goertzel filter's own width.
    let (hz, power) = (-6..=6)
        .map(|k| {
            let hz = estimate * (1.0 + f64::from(k) * 0.01);
            (hz, goertzel_power(&x, hz / f64::from(rate)))
        })
        .fold((0.0, 0.0), |best, c| if c.1 > best.1 { c } else { best });
    // A sinusoid of amplitude A puts (A n / 2)^2 at its frequency and A^2 n / 2 in the frame.
    let share = 2.0 * power / (n as f64 * energy);
    let in_band = hz >= f64::from(cfg.min_hz) && hz <= f64::from(cfg.max_hz);
    (in_band && share >= f64::from(cfg.purity)).then_some(hz as f32)
}

/// |X(f)|^2 of `x` at `f` cycles per sample.
fn goertzel_power(x: &[f64], f: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * f;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s = v + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 16_000;
    const FRAME: usize = 320;

    fn sine(hz: f64, amp: f64, n: usize, phase0: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                let t = (i + phase0) as f64 / f64::from(RATE);
                (amp * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
            })
            .collect()
    }

    fn noise(n: usize, amp: f64, seed: u64) -> Vec<i16> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (((s >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 2.0 * amp) as i16
            })
            .collect()
    }

    fn events(audio: &[i16]) -> Vec<(usize, ToneEvent)> {
        let mut d = ToneDetector::new(ToneConfig::default(), RATE, 20);
        audio
            .chunks(FRAME)
            .enumerate()
            .filter_map(|(i, f)| d.frame(f).map(|e| (i, e)))
            .collect()
    }

    #[test]
    fn a_beep_is_found_at_its_frequency_and_its_end_reported() {
        for hz in [440.0, 1000.0, 1400.0, 2100.0] {
            let mut audio = vec![0i16; FRAME * 10];
            audio.extend(sine(hz, 8000.0, FRAME * 25, 0));
            audio.extend(vec![0i16; FRAME * 10]);
            let ev = events(&audio);
            assert_eq!(ev.len(), 2, "{hz} Hz: {ev:?}");
            // Started 100 ms (5 frames) into the tone.
            assert_eq!(ev[0].0, 14, "{hz} Hz: {ev:?}");
            match ev[0].1 {
                ToneEvent::Started { hz: f } => assert!((f64::from(f) - hz).abs() < hz * 0.02),
                e => panic!("{e:?}"),
            }
            // Ended at the second frame without it (one could be a lost packet).
            assert_eq!(ev[1].0, 36, "{hz} Hz: {ev:?}");
            assert!(
                matches!(ev[1].1, ToneEvent::Ended { ms: 500, .. }),
                "{ev:?}"
            );
        }
    }

    #[test]
    fn a_beep_under_noise_is_still_a_beep() {
        let tone = sine(1000.0, 6000.0, FRAME * 20, 0);
        let n = noise(tone.len(), 1200.0, 7);
        let mixed: Vec<i16> = tone.iter().zip(&n).map(|(a, b)| a + b).collect();
        assert!(matches!(
            events(&mixed).first(),
            Some((_, ToneEvent::Started { .. }))
        ));
    }

    #[test]
    fn noise_silence_a_click_and_a_voiced_buzz_are_not_tones() {
        assert!(events(&noise(FRAME * 50, 8000.0, 3)).is_empty());
        assert!(events(&vec![0; FRAME * 50]).is_empty());
        let mut click = vec![0i16; FRAME * 50];
        click[4000] = 30_000;
        assert!(events(&click).is_empty());
        // A vowel-like buzz: a 120 Hz voice with its harmonics, as speech is.
        let buzz: Vec<i16> = (0..FRAME * 50)
            .map(|i| {
                let t = i as f64 / f64::from(RATE);
                (1..=20)
                    .map(|h| {
                        let a = 3000.0 / f64::from(h);
                        a * (2.0 * std::f64::consts::PI * 120.0 * f64::from(h) * t).sin()
                    })
                    .sum::<f64>() as i16
            })
            .collect();
        assert!(events(&buzz).is_empty());
    }

    #[test]
    fn a_quiet_tone_or_a_chirp_shorter_than_the_minimum_is_not_a_beep() {
        assert!(events(&sine(1000.0, 200.0, FRAME * 30, 0)).is_empty());
        assert!(events(&sine(1000.0, 8000.0, FRAME * 4, 0)).is_empty());
    }

    #[test]
    fn a_lost_packet_inside_a_beep_does_not_end_it() {
        let mut audio = sine(1000.0, 8000.0, FRAME * 25, 0);
        audio[FRAME * 12..FRAME * 13].fill(0);
        audio.extend(vec![0i16; FRAME * 5]);
        let ev = events(&audio);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(
            matches!(ev[1].1, ToneEvent::Ended { ms: 500, .. }),
            "{ev:?}"
        );
    }

    #[test]
    fn two_tones_in_a_row_are_two_beeps() {
        let mut audio = sine(800.0, 8000.0, FRAME * 10, 0);
        audio.extend(sine(1600.0, 8000.0, FRAME * 10, 0));
        let ev = events(&audio);
        assert_eq!(ev.len(), 3, "{ev:?}");
        assert!(matches!(ev[1].1, ToneEvent::Ended { ms: 200, .. }));
    }
}
