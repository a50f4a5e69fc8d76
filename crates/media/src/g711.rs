//! G.711 companding (ITU-T G.711): PCMU (µ-law) and PCMA (A-law).
//!
//! The encoders follow the ITU-T G.191 reference software: 16-bit input is
//! truncated to the codec's 14-bit (µ-law) or 13-bit (A-law) resolution and
//! negative values are mirrored with a one's complement, so the quantiser is
//! symmetric around -0.5 LSB. Decoders return the segment mid-points of the
//! G.711 tables, scaled to 16 bits.
//!
//! SoX differs on encode (see `tests/sox.rs`): it rounds to 14/13 bits instead
//! of truncating and, for µ-law only, mirrors negatives with a two's
//! complement. Both make it pick the adjacent code just below a decision
//! threshold; decoding agrees on all 256 codes.

/// Added to the magnitude so that µ-law segments start on powers of two
/// (33 at 14-bit resolution, scaled to 16 bits).
const ULAW_BIAS: i32 = 0x84;

/// Encodes one linear sample as a µ-law (PCMU) code.
pub fn ulaw_encode(sample: i16) -> u8 {
    let x = i32::from(sample);
    // `!x` is `-x - 1`: the ITU one's complement mirror for negative inputs.
    let (magnitude, mask) = if x < 0 { (!x, 0x7F) } else { (x, 0xFF) };
    let biased = magnitude + ULAW_BIAS;
    let segment = top_bit(biased | 0xFF) - 7;
    if segment >= 8 {
        return 0x7F ^ mask;
    }
    let mantissa = (biased >> (segment + 3)) & 0x0F;
    ((segment << 4) | mantissa) as u8 ^ mask
}

/// Decodes one µ-law (PCMU) code to a linear sample.
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_TABLE[usize::from(code)]
}

/// Encodes one linear sample as an A-law (PCMA) code.
pub fn alaw_encode(sample: i16) -> u8 {
    let x = i32::from(sample);
    let (magnitude, mask) = if x < 0 { (!x, 0x55) } else { (x, 0xD5) };
    // An i16 magnitude is at most 0x7FFF, so the segment never exceeds 7.
    let segment = top_bit(magnitude | 0xFF) - 7;
    let shift = if segment == 0 { 4 } else { segment + 3 };
    let mantissa = (magnitude >> shift) & 0x0F;
    ((segment << 4) | mantissa) as u8 ^ mask
}

/// Decodes one A-law (PCMA) code to a linear sample.
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_TABLE[usize::from(code)]
}

/// Encodes `samples` as µ-law, appending one byte per sample to `out`.
pub fn ulaw_encode_slice(samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| ulaw_encode(s)));
}

/// Decodes µ-law `codes`, appending one sample per byte to `out`.
pub fn ulaw_decode_slice(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&c| ulaw_decode(c)));
}

/// Encodes `samples` as A-law, appending one byte per sample to `out`.
pub fn alaw_encode_slice(samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| alaw_encode(s)));
}

/// Decodes A-law `codes`, appending one sample per byte to `out`.
pub fn alaw_decode_slice(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&c| alaw_decode(c)));
}

fn top_bit(v: i32) -> i32 {
    31 - v.leading_zeros() as i32
}

const ULAW_TABLE: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        let inverted = !(code as u8) as i32;
        let segment = (inverted >> 4) & 0x07;
        let level = (((inverted & 0x0F) << 3) + ULAW_BIAS) << segment;
        table[code] = if inverted & 0x80 != 0 {
            (ULAW_BIAS - level) as i16
        } else {
            (level - ULAW_BIAS) as i16
        };
        code += 1;
    }
    table
};

const ALAW_TABLE: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        let toggled = (code as i32) ^ 0x55;
        let segment = (toggled >> 4) & 0x07;
        let mantissa = (toggled & 0x0F) << 4;
        // Segment 0 and 1 share a step size; the +8 / +0x108 put the output at
        // the middle of the quantisation interval (0x100 is the implicit
        // leading one of segments >= 1).
        let level = if segment == 0 {
            mantissa + 8
        } else {
            (mantissa + 0x108) << (segment - 1)
        };
        table[code] = if toggled & 0x80 != 0 {
            level as i16
        } else {
            -level as i16
        };
        code += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Transcription of ITU-T G.191 `ulaw_compress`, kept structurally
    /// different from ours (segment search loop, nibble inversion) so that
    /// the comparison can catch real mistakes.
    fn g191_ulaw(x: i16) -> u8 {
        let mut absno = if x < 0 { (!x >> 2) + 33 } else { (x >> 2) + 33 };
        absno = absno.min(0x1FFF);
        let mut i = absno >> 6;
        let mut segno = 1;
        while i != 0 {
            segno += 1;
            i >>= 1;
        }
        let high = 8 - segno;
        let low = 0x0F - ((absno >> segno) & 0x0F);
        let code = ((high << 4) | low) as u8;
        if x >= 0 {
            code | 0x80
        } else {
            code
        }
    }

    /// Transcription of ITU-T G.191 `alaw_compress`.
    fn g191_alaw(x: i16) -> u8 {
        let mut ix = if x < 0 { !x >> 4 } else { x >> 4 };
        if ix > 15 {
            let mut exp = 1;
            while ix > 16 + 15 {
                ix >>= 1;
                exp += 1;
            }
            ix -= 16;
            ix += exp << 4;
        }
        if x >= 0 {
            ix |= 0x80;
        }
        (ix ^ 0x55) as u8
    }

    #[test]
    fn encoders_match_g191_reference_for_every_input() {
        for x in i16::MIN..=i16::MAX {
            assert_eq!(ulaw_encode(x), g191_ulaw(x), "µ-law input {x}");
            assert_eq!(alaw_encode(x), g191_alaw(x), "A-law input {x}");
        }
    }

    #[test]
    fn decoders_match_g711_table_anchors() {
        // Values from G.711 tables 1a/2a scaled to 16 bits.
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0xFE), 8);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
    }

    #[test]
    fn silence_encodes_to_the_conventional_idle_codes() {
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(ulaw_encode(-1), 0x7F);
        assert_eq!(alaw_encode(-1), 0x55);
    }

    #[test]
    fn reencoding_a_decoded_code_is_stable() {
        for code in 0..=255u8 {
            let ulaw = ulaw_encode(ulaw_decode(code));
            // Negative zero (0x7F) decodes to 0, which encodes as positive zero.
            let expected = if code == 0x7F { 0xFF } else { code };
            assert_eq!(ulaw, expected, "µ-law code {code:#04x}");
            assert_eq!(
                alaw_encode(alaw_decode(code)),
                code,
                "A-law code {code:#04x}"
            );
        }
    }

    #[test]
    fn encoding_is_monotonic_in_the_decoded_domain() {
        let mut prev_u = i16::MIN;
        let mut prev_a = i16::MIN;
        for x in i16::MIN..=i16::MAX {
            let u = ulaw_decode(ulaw_encode(x));
            let a = alaw_decode(alaw_encode(x));
            assert!(u >= prev_u && a >= prev_a, "non-monotonic at {x}");
            prev_u = u;
            prev_a = a;
        }
    }

    #[test]
    fn slice_helpers_append_per_sample_results() {
        let samples = [0i16, 1000, -1000, i16::MAX, i16::MIN];
        let mut codes = vec![0xAB];
        ulaw_encode_slice(&samples, &mut codes);
        assert_eq!(codes[0], 0xAB);
        assert_eq!(codes.len(), 6);
        let mut back = Vec::new();
        ulaw_decode_slice(&codes[1..], &mut back);
        let expected: Vec<i16> = samples
            .iter()
            .map(|&s| ulaw_decode(ulaw_encode(s)))
            .collect();
        assert_eq!(back, expected);

        let mut codes = Vec::new();
        alaw_encode_slice(&samples, &mut codes);
        let mut back = Vec::new();
        alaw_decode_slice(&codes, &mut back);
        let expected: Vec<i16> = samples
            .iter()
            .map(|&s| alaw_decode(alaw_encode(s)))
            .collect();
        assert_eq!(back, expected);
    }
}
