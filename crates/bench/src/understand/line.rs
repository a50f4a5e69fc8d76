//! The telephone line a reply crosses, sans-IO: 16 kHz speech in, 16 kHz speech as the agent
//! hears it out. 8 kHz narrowband, a 300-3400 Hz band-pass (the telephone band), white noise at a
//! signal-to-noise ratio, G.711 (u-law or A-law), then whole 20 ms packets lost. Deterministic
//! for a seed, so every engine hears the same line.

use media::g711::{alaw_decode_slice, alaw_encode_slice, ulaw_decode_slice, ulaw_encode_slice};
use media::sinc_resample::resample;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Ulaw,
    Alaw,
}

/// One way the line can be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    pub codec: Codec,
    pub band_pass: bool,
    /// Share of 20 ms packets lost (0.0-1.0); a lost packet plays as silence.
    pub loss: f64,
    /// White noise this many dB under the speech; `None`: no noise added.
    pub snr_db: Option<f64>,
}

pub const PROFILES: &[Profile] = &[
    Profile {
        name: "ulaw",
        codec: Codec::Ulaw,
        band_pass: false,
        loss: 0.0,
        snr_db: None,
    },
    Profile {
        name: "alaw",
        codec: Codec::Alaw,
        band_pass: false,
        loss: 0.0,
        snr_db: None,
    },
    Profile {
        name: "ulaw-band-1%loss",
        codec: Codec::Ulaw,
        band_pass: true,
        loss: 0.01,
        snr_db: None,
    },
    Profile {
        name: "alaw-band-2%loss-20dB",
        codec: Codec::Alaw,
        band_pass: true,
        loss: 0.02,
        snr_db: Some(20.0),
    },
    Profile {
        name: "ulaw-band-3%loss-10dB",
        codec: Codec::Ulaw,
        band_pass: true,
        loss: 0.03,
        snr_db: Some(10.0),
    },
];

const NARROW: u32 = 8_000;
const PACKET: usize = 160;

/// `speech` (16 kHz) as heard at the far end of the line `p`.
pub fn carry(speech: &[i16], p: &Profile, seed: u64) -> Vec<i16> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut narrow: Vec<f64> = resample(speech, 16_000, NARROW)
        .into_iter()
        .map(f64::from)
        .collect();
    if p.band_pass {
        // Two second-order sections each side: a 12 dB/octave roll-off, as a handset's.
        for f in [
            Biquad::high_pass(300.0, NARROW as f64),
            Biquad::high_pass(300.0, NARROW as f64),
            Biquad::low_pass(3400.0, NARROW as f64),
            Biquad::low_pass(3400.0, NARROW as f64),
        ] {
            f.run(&mut narrow);
        }
    }
    if let Some(snr) = p.snr_db {
        add_noise(&mut narrow, snr, &mut rng);
    }
    let pcm: Vec<i16> = narrow
        .iter()
        .map(|s| s.round().clamp(i16::MIN as f64, i16::MAX as f64) as i16)
        .collect();
    let mut codes = Vec::with_capacity(pcm.len());
    match p.codec {
        Codec::Ulaw => ulaw_encode_slice(&pcm, &mut codes),
        Codec::Alaw => alaw_encode_slice(&pcm, &mut codes),
    }
    let mut heard = Vec::with_capacity(codes.len());
    for packet in codes.chunks(PACKET) {
        if p.loss > 0.0 && rng.gen_bool(p.loss) {
            heard.extend(std::iter::repeat_n(0i16, packet.len()));
            continue;
        }
        match p.codec {
            Codec::Ulaw => ulaw_decode_slice(packet, &mut heard),
            Codec::Alaw => alaw_decode_slice(packet, &mut heard),
        }
    }
    resample(&heard, NARROW, 16_000)
}

/// Gaussian white noise at `snr_db` under the RMS of the loud part of `x` (frames above a
/// tenth of the peak), so leading and trailing silence do not make the noise quieter.
fn add_noise(x: &mut [f64], snr_db: f64, rng: &mut StdRng) {
    let peak = x.iter().fold(0.0f64, |m, s| m.max(s.abs()));
    let loud: Vec<f64> = x
        .iter()
        .copied()
        .filter(|s| s.abs() > peak / 10.0)
        .collect();
    // Silence or a click: noise at a quiet room's level instead.
    let rms = if loud.is_empty() {
        300.0
    } else {
        (loud.iter().map(|s| s * s).sum::<f64>() / loud.len() as f64).sqrt()
    };
    let sigma = rms / 10f64.powf(snr_db / 20.0);
    for s in x.iter_mut() {
        *s += sigma * gaussian(rng);
    }
}

fn gaussian(rng: &mut StdRng) -> f64 {
    // Box-Muller: two uniforms, one normal.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A second-order section (RBJ cookbook, Q = 1/sqrt(2)).
#[derive(Debug, Clone, Copy)]
struct Biquad {
    b: [f64; 3],
    a: [f64; 2],
}

impl Biquad {
    fn new(f0: f64, rate: f64, high: bool) -> Self {
        let w0 = std::f64::consts::TAU * f0 / rate;
        let alpha = w0.sin() / (2.0 * std::f64::consts::FRAC_1_SQRT_2);
        let cos = w0.cos();
        let a0 = 1.0 + alpha;
        let (b0, b1) = if high {
            ((1.0 + cos) / 2.0, -(1.0 + cos))
        } else {
            ((1.0 - cos) / 2.0, 1.0 - cos)
        };
        Self {
            b: [b0 / a0, b1 / a0, b0 / a0],
            a: [-2.0 * cos / a0, (1.0 - alpha) / a0],
        }
    }

    fn high_pass(f0: f64, rate: f64) -> Self {
        Self::new(f0, rate, true)
    }

    fn low_pass(f0: f64, rate: f64) -> Self {
        Self::new(f0, rate, false)
    }

    fn run(&self, x: &mut [f64]) {
        let (mut x1, mut x2, mut y1, mut y2) = (0.0, 0.0, 0.0, 0.0);
        for s in x.iter_mut() {
            let y =
                self.b[0] * *s + self.b[1] * x1 + self.b[2] * x2 - self.a[0] * y1 - self.a[1] * y2;
            x2 = x1;
            x1 = *s;
            y2 = y1;
            y1 = y;
            *s = y;
        }
    }
}

/// Half a second of silence: what the turn taker waits for before the words go to the
/// recogniser.
pub fn with_end_of_turn(mut speech: Vec<i16>) -> Vec<i16> {
    speech.extend(std::iter::repeat_n(0, 8_000));
    speech
}

/// A cough-like burst at 16 kHz: 0.35 s of noise with a fast attack and decay, low-passed so it
/// is breathy rather than hiss, inside silence.
pub fn cough(seed: u64) -> Vec<i16> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = vec![0i16; 4_000];
    let n = 5_600;
    let mut lp = 0.0f64;
    for i in 0..n {
        let t = i as f64 / n as f64;
        let envelope = (t * 40.0).min(1.0) * (-6.0 * t).exp();
        lp = 0.7 * lp + 0.3 * gaussian(&mut rng);
        out.push((lp * envelope * 9_000.0).clamp(-32_000.0, 32_000.0) as i16);
    }
    out.extend(std::iter::repeat_n(0, 4_000));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| (8_000.0 * (std::f64::consts::TAU * hz * i as f64 / 16_000.0).sin()) as i16)
            .collect()
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// Samples in long quiet runs (the resampler smears a gap's edges), in 16 kHz packets.
    fn lost_packets(out: &[i16]) -> usize {
        let (mut quiet, mut run) = (0usize, 0usize);
        for s in out.iter().chain(std::iter::once(&i16::MAX)) {
            if s.unsigned_abs() < 200 {
                run += 1;
            } else {
                if run >= 200 {
                    quiet += run;
                }
                run = 0;
            }
        }
        (quiet as f64 / 320.0).round() as usize
    }

    const CLEAN_BAND: Profile = Profile {
        name: "t",
        codec: Codec::Ulaw,
        band_pass: true,
        loss: 0.0,
        snr_db: None,
    };

    #[test]
    fn the_telephone_band_passes_speech_and_cuts_hum() {
        let speech = carry(&tone(1_000.0, 16_000), &CLEAN_BAND, 1);
        let hum = carry(&tone(100.0, 16_000), &CLEAN_BAND, 1);
        let r = rms(&tone(1_000.0, 16_000));
        assert!(rms(&speech[4_000..12_000]) > 0.8 * r);
        assert!(rms(&hum[4_000..12_000]) < 0.2 * r);
    }

    #[test]
    fn loss_drops_whole_packets_and_noise_sets_the_ratio() {
        let speech = tone(1_000.0, 160_000);
        let lossy = Profile {
            loss: 0.03,
            band_pass: false,
            ..CLEAN_BAND
        };
        let out = carry(&speech, &lossy, 7);
        // 500 packets at 3 %: about 15 lost; none for the same line at 0 %.
        let silent_packets = lost_packets(&out);
        assert!((5..=35).contains(&silent_packets), "{silent_packets}");
        let whole = Profile { loss: 0.0, ..lossy };
        assert_eq!(lost_packets(&carry(&speech, &whole, 7)), 0);
        assert_eq!(carry(&speech, &lossy, 7), out, "a seed is one line");
        let noisy = Profile {
            snr_db: Some(10.0),
            band_pass: false,
            ..CLEAN_BAND
        };
        let silence = vec![0i16; 16_000];
        let noise = carry(&[speech.clone(), silence].concat(), &noisy, 3);
        let speech_rms = rms(&speech);
        let noise_rms = rms(&noise[170_000..]);
        let snr = 20.0 * (speech_rms / noise_rms).log10();
        assert!((7.0..13.0).contains(&snr), "{snr} dB");
    }

    #[test]
    fn a_cough_is_loud_and_short() {
        let c = cough(1);
        let loud = c.iter().filter(|s| s.abs() > 1_000).count();
        assert!(loud > 500 && loud < 5_600, "{loud}");
        assert_eq!(cough(1), c);
    }
}
