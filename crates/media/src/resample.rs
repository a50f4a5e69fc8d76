//! Fixed-ratio 8 kHz <-> 16 kHz conversion for mono i16 audio, for wideband
//! speech models on the agent side of a narrowband call.
//!
//! Both directions use one 47-tap half-band FIR at 16 kHz: a windowed sinc
//! with cutoff 4 kHz and a Kaiser window, beta 5.65, which Kaiser's formula
//! gives for 60 dB stopband attenuation. With 47 taps the response (checked
//! offline) is flat within 0.03 dB to 3.4 kHz, -6 dB at 4 kHz as every
//! half-band filter is, at least 50 dB down from 4.6 kHz and 86 dB at 6 kHz.
//! Every other tap of a half-band filter is zero, so each output costs 24
//! multiplies plus a copy. The filters keep their history
//! between calls, so any split of the input into frames gives bit-identical
//! output to processing it in one go. Each direction delays the signal by 23
//! samples at 16 kHz (11.5 at 8 kHz); a round trip by exactly 23 samples at
//! 8 kHz.

/// Filter length; 4k+3 so that the outermost taps are non-zero.
const TAPS: usize = 47;
/// Taps at even indices, the only non-zero ones besides the centre.
const EVEN_TAPS: usize = TAPS / 2 + 1;
const CENTER: usize = TAPS / 2;
const KAISER_BETA: f64 = 5.65;

/// Even-index taps `h[0], h[2], …, h[46]`, normalised to sum to 0.5 so that
/// together with the 0.5 centre tap the DC gain is exactly one.
fn even_taps() -> [f32; EVEN_TAPS] {
    let i0_beta = bessel_i0(KAISER_BETA);
    let mut taps = [0.0f64; EVEN_TAPS];
    for (i, tap) in taps.iter_mut().enumerate() {
        let offset = (2 * i) as f64 - CENTER as f64;
        let x = std::f64::consts::PI * offset / 2.0;
        let sinc = 0.5 * x.sin() / x;
        let r = offset / CENTER as f64;
        *tap = sinc * bessel_i0(KAISER_BETA * (1.0 - r * r).sqrt()) / i0_beta;
    }
    let scale = 0.5 / taps.iter().sum::<f64>();
    taps.map(|t| (t * scale) as f32)
}

/// Modified Bessel function of the first kind, order zero, by its power
/// series (converges fast for the arguments a Kaiser window needs).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let half_sq = x * x / 4.0;
    for k in 1..50 {
        term *= half_sq / (k * k) as f64;
        sum += term;
    }
    sum
}

fn to_sample(v: f32) -> i16 {
    // `as` saturates, which is the clipping we want on overshoot.
    v.round() as i16
}

/// 8 kHz -> 16 kHz, two output samples per input sample.
#[derive(Debug, Clone)]
pub struct Upsampler {
    taps: [f32; EVEN_TAPS],
    /// Last `EVEN_TAPS - 1` inputs followed by the ones being processed.
    buf: Vec<f32>,
}

impl Default for Upsampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Upsampler {
    /// A filter primed with silence.
    pub fn new() -> Self {
        Self {
            taps: even_taps(),
            buf: vec![0.0; EVEN_TAPS - 1],
        }
    }

    /// Appends `2 * input.len()` samples at 16 kHz to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        self.buf.extend(input.iter().map(|&s| f32::from(s)));
        out.reserve(2 * input.len());
        for window in self.buf.windows(EVEN_TAPS) {
            // Zero-stuffing makes even outputs a 24-tap FIR over the inputs
            // and odd outputs land on the centre tap alone: a delayed copy.
            let acc: f32 = self
                .taps
                .iter()
                .zip(window.iter().rev())
                .map(|(h, x)| h * x)
                .sum();
            out.push(to_sample(2.0 * acc));
            out.push(to_sample(window[EVEN_TAPS - 1 - CENTER / 2]));
        }
        self.buf.drain(..input.len());
    }
}

/// 16 kHz -> 8 kHz, one output sample per two input samples.
#[derive(Debug, Clone)]
pub struct Downsampler {
    taps: [f32; EVEN_TAPS],
    /// Inputs the next output still needs: `TAPS - 1` after an even number of
    /// inputs so far, one fewer after an odd number.
    buf: Vec<f32>,
}

impl Default for Downsampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Downsampler {
    /// A filter primed with silence.
    pub fn new() -> Self {
        Self {
            taps: even_taps(),
            buf: vec![0.0; TAPS - 1],
        }
    }

    /// Appends the 8 kHz samples that `input` completes to `out`
    /// (`input.len() / 2` for even-length frames).
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        self.buf.extend(input.iter().map(|&s| f32::from(s)));
        let mut start = 0;
        while let Some(window) = self.buf.get(start..start + TAPS) {
            let acc: f32 = self
                .taps
                .iter()
                .zip(window.iter().step_by(2))
                .map(|(h, x)| h * x)
                .sum();
            out.push(to_sample(acc + 0.5 * window[CENTER]));
            start += 2;
        }
        self.buf.drain(..start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::TAU;

    fn tone(freq: f64, rate: f64, amplitude: f64, len: usize) -> Vec<i16> {
        (0..len)
            .map(|n| (amplitude * (TAU * freq * n as f64 / rate).sin()).round() as i16)
            .collect()
    }

    fn energy(x: impl Iterator<Item = f64>) -> f64 {
        x.map(|v| v * v).sum()
    }

    #[test]
    fn taps_are_symmetric_with_unity_dc_gain() {
        let taps = even_taps();
        for i in 0..EVEN_TAPS {
            assert!((taps[i] - taps[EVEN_TAPS - 1 - i]).abs() < 1e-7);
        }
        let sum: f32 = taps.iter().sum();
        assert!((sum - 0.5).abs() < 1e-6);
    }

    #[test]
    fn one_khz_survives_a_round_trip() {
        let input = tone(1_000.0, 8_000.0, 12_000.0, 8_000);
        let mut up = Upsampler::new();
        let mut down = Downsampler::new();
        let mut wide = Vec::new();
        let mut back = Vec::new();
        for frame in input.chunks(160) {
            let start = wide.len();
            up.process(frame, &mut wide);
            down.process(&wide[start..], &mut back);
        }
        assert_eq!(wide.len(), 16_000);
        assert_eq!(back.len(), 8_000);
        const DELAY: usize = 23;
        let signal = energy(input[100..8_000 - DELAY].iter().map(|&s| f64::from(s)));
        let noise = energy(
            input[100..8_000 - DELAY]
                .iter()
                .zip(&back[100 + DELAY..])
                .map(|(&a, &b)| f64::from(a) - f64::from(b)),
        );
        let snr = 10.0 * (signal / noise).log10();
        // The brief asks for 30 dB; this design measures ~70 dB, so guard that.
        assert!(snr > 60.0, "round-trip SNR {snr:.1} dB");
    }

    #[test]
    fn six_khz_is_rejected_when_downsampling() {
        let input = tone(6_000.0, 16_000.0, 12_000.0, 16_000);
        let mut out = Vec::new();
        let mut down = Downsampler::new();
        for frame in input.chunks(320) {
            down.process(frame, &mut out);
        }
        let in_rms = (energy(input.iter().map(|&s| f64::from(s))) / input.len() as f64).sqrt();
        let settled = &out[100..];
        let out_rms = (energy(settled.iter().map(|&s| f64::from(s))) / settled.len() as f64).sqrt();
        let attenuation = 20.0 * (in_rms / out_rms.max(1e-9)).log10();
        // Brief: > 30 dB; the 60 dB design measures ~78 dB.
        assert!(attenuation > 60.0, "alias attenuation {attenuation:.1} dB");
    }

    #[test]
    fn upsampling_rejects_the_image_band() {
        // A 1 kHz tone's image after zero-stuffing sits at 7 kHz; removing it
        // leaves a clean 1 kHz tone at 16 kHz.
        let input = tone(1_000.0, 8_000.0, 12_000.0, 4_000);
        let mut out = Vec::new();
        Upsampler::new().process(&input, &mut out);
        let reference = tone(1_000.0, 16_000.0, 12_000.0, 8_000);
        const DELAY: usize = 23;
        let signal = energy(reference[200..7_000].iter().map(|&s| f64::from(s)));
        let noise = energy(
            reference[200..7_000]
                .iter()
                .zip(&out[200 + DELAY..])
                .map(|(&a, &b)| f64::from(a) - f64::from(b)),
        );
        let snr = 10.0 * (signal / noise).log10();
        assert!(snr > 60.0, "upsampled SNR {snr:.1} dB");
    }

    #[test]
    fn framing_does_not_change_the_output() {
        let mut seed = 0x2545_F491u32;
        let noise: Vec<i16> = (0..4_000)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 16) as i16
            })
            .collect();

        let mut whole = Vec::new();
        Upsampler::new().process(&noise, &mut whole);
        let mut framed = Vec::new();
        let mut up = Upsampler::new();
        for frame in noise.chunks(160) {
            up.process(frame, &mut framed);
        }
        assert_eq!(framed, whole);

        let mut whole = Vec::new();
        Downsampler::new().process(&noise, &mut whole);
        assert_eq!(whole.len(), 2_000);
        // Odd chunk sizes force the phase to carry across calls.
        for size in [320, 37, 1] {
            let mut framed = Vec::new();
            let mut down = Downsampler::new();
            for frame in noise.chunks(size) {
                down.process(frame, &mut framed);
            }
            assert_eq!(framed, whole, "chunk size {size}");
        }
    }

    #[test]
    fn overshoot_saturates_instead_of_wrapping() {
        assert_eq!(to_sample(40_000.0), i16::MAX);
        assert_eq!(to_sample(-40_000.0), i16::MIN);
        assert_eq!(to_sample(1.5), 2);
        assert_eq!(to_sample(-1.5), -2);
    }
}
