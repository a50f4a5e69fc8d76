//! Band-limited resampling for engines whose output rate is not the pipeline's 16 kHz (piper
//! speaks at 22.05 kHz). Linear interpolation would fold everything between 8 and 11 kHz back
//! into the band as hiss; a windowed-sinc low-pass at the lower rate's Nyquist frequency keeps
//! it out.

use std::f64::consts::PI;

/// Zero crossings of the sinc on each side: the filter's length, so its steepness.
const ZERO_CROSSINGS: f64 = 12.0;

/// `input` at `from` Hz as `to` Hz. The output has `len * to / from` samples.
pub fn resample(input: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || input.is_empty() || from == 0 || to == 0 {
        return input.to_vec();
    }
    let ratio = f64::from(to) / f64::from(from);
    // Cutoff as a fraction of the input rate's Nyquist: below the lower of the two Nyquists,
    // with a little room for the transition band.
    let cutoff = ratio.min(1.0) * 0.95;
    let half_width = ZERO_CROSSINGS / cutoff;
    let out_len = (input.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    let last = input.len() as i64 - 1;
    let mut out = Vec::with_capacity(out_len);
    for n in 0..out_len {
        let t = n as f64 * step;
        let lo = (t - half_width).ceil() as i64;
        let hi = (t + half_width).floor() as i64;
        let mut acc = 0.0;
        for k in lo.max(0)..=hi.min(last) {
            let d = t - k as f64;
            acc += f64::from(input[k as usize]) * kernel(d, cutoff, half_width);
        }
        out.push(acc.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16);
    }
    out
}

/// A low-pass sinc at `cutoff` (of the input Nyquist) under a Blackman window.
fn kernel(d: f64, cutoff: f64, half_width: f64) -> f64 {
    let x = d / half_width;
    if x.abs() >= 1.0 {
        return 0.0;
    }
    let window = 0.42 + 0.5 * (PI * x).cos() + 0.08 * (2.0 * PI * x).cos();
    let arg = PI * cutoff * d;
    let sinc = if arg.abs() < 1e-12 {
        1.0
    } else {
        arg.sin() / arg
    };
    cutoff * sinc * window
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: u32, seconds: f64, amp: f64) -> Vec<i16> {
        (0..(f64::from(rate) * seconds) as usize)
            .map(|i| (amp * (2.0 * PI * freq * i as f64 / f64::from(rate)).sin()) as i16)
            .collect()
    }

    fn rms(x: &[i16]) -> f64 {
        // The ends carry the filter's edge effects.
        let x = &x[x.len() / 10..x.len() * 9 / 10];
        (x.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn speech_band_passes_and_the_band_above_the_new_nyquist_is_removed() {
        let speech = resample(&tone(1_000.0, 22_050, 1.0, 10_000.0), 22_050, 16_000);
        assert_eq!(speech.len(), 16_000);
        let want = 10_000.0 / 2f64.sqrt();
        assert!(
            (rms(&speech) / want - 1.0).abs() < 0.02,
            "1 kHz rms {}",
            rms(&speech)
        );
        // 10 kHz cannot exist at 16 kHz; linear interpolation would alias it to 6 kHz.
        let high = resample(&tone(10_000.0, 22_050, 1.0, 10_000.0), 22_050, 16_000);
        assert!(
            rms(&high) < want * 0.01,
            "10 kHz leaked: rms {}",
            rms(&high)
        );
    }

    #[test]
    fn upsampling_keeps_the_tone() {
        let up = resample(&tone(440.0, 8_000, 0.5, 8_000.0), 8_000, 16_000);
        assert_eq!(up.len(), 8_000);
        let want = 8_000.0 / 2f64.sqrt();
        assert!((rms(&up) / want - 1.0).abs() < 0.02, "rms {}", rms(&up));
    }

    #[test]
    fn same_rate_and_empty_are_unchanged() {
        assert_eq!(resample(&[1, 2, 3], 16_000, 16_000), vec![1, 2, 3]);
        assert!(resample(&[], 22_050, 16_000).is_empty());
    }
}
