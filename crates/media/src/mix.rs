//! Mixing two tracks into one: a stereo call recording (one leg a channel) as a player hears it.

/// Appends the saturating sum of `a` and `b` to `out`; the shorter input is
/// padded with silence, so a leg that produced no frame this tick is fine.
pub fn mix(a: &[i16], b: &[i16], out: &mut Vec<i16>) {
    let len = a.len().max(b.len());
    out.reserve(len);
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        out.push(x.saturating_add(y));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_samples_and_saturates_at_both_rails() {
        let mut out = vec![7];
        mix(
            &[1000, 30_000, -30_000, i16::MIN],
            &[-200, 10_000, -10_000, -1],
            &mut out,
        );
        assert_eq!(out, [7, 800, i16::MAX, i16::MIN, i16::MIN]);
    }

    #[test]
    fn shorter_leg_counts_as_silence() {
        let mut out = Vec::new();
        mix(&[1, 2, 3], &[10], &mut out);
        assert_eq!(out, [11, 2, 3]);
        out.clear();
        mix(&[], &[4, 5], &mut out);
        assert_eq!(out, [4, 5]);
    }
}
