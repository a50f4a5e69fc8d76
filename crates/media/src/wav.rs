//! Mono 16-bit PCM WAV: a header to stream call recordings behind, and a
//! reader for test fixtures.

use std::io::{self, Write};

use thiserror::Error;

/// Length of the canonical header written by [`header`].
pub const HEADER_LEN: usize = 44;

const PCM: u16 = 1;

/// Reasons a byte string is not a WAV this module can read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WavError {
    /// Missing `RIFF`/`WAVE` magic.
    #[error("not a RIFF/WAVE file")]
    NotWave,
    /// A chunk runs past the end of the data.
    #[error("WAV data truncated")]
    Truncated,
    /// No `fmt ` or `data` chunk.
    #[error("WAV has no {0:?} chunk")]
    MissingChunk(&'static str),
    /// Only mono 16-bit integer PCM is supported.
    #[error("unsupported WAV format {format}, {channels} channels, {bits} bits")]
    Unsupported {
        /// Format tag (1 = PCM).
        format: u16,
        /// Channel count.
        channels: u16,
        /// Bits per sample.
        bits: u16,
    },
}

/// A decoded mono 16-bit WAV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wav {
    /// Samples per second.
    pub sample_rate: u32,
    /// Samples in file order.
    pub samples: Vec<i16>,
}

/// The 44-byte header for `num_samples` mono 16-bit samples. A recorder
/// writes it first with a guess (or 0), then rewrites it at offset 0 once the
/// count is known. Sizes saturate at the 4 GiB RIFF limit.
pub fn header(sample_rate: u32, num_samples: u32) -> [u8; HEADER_LEN] {
    let data_len = num_samples.saturating_mul(2);
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&data_len.saturating_add(36).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&PCM.to_le_bytes());
    h[22..24].copy_from_slice(&1u16.to_le_bytes());
    h[24..28].copy_from_slice(&sample_rate.to_le_bytes());
    h[28..32].copy_from_slice(&sample_rate.saturating_mul(2).to_le_bytes());
    h[32..34].copy_from_slice(&2u16.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// Appends samples as little-endian PCM, the body that follows [`header`].
pub fn encode_samples(samples: &[i16], out: &mut Vec<u8>) {
    out.reserve(2 * samples.len());
    out.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
}

/// Writes a complete WAV file.
pub fn write<W: Write>(mut w: W, sample_rate: u32, samples: &[i16]) -> io::Result<()> {
    let count = u32::try_from(samples.len())
        .ok()
        .filter(|&n| n <= u32::MAX / 2 - 18)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "too many samples for WAV"))?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + 2 * samples.len());
    bytes.extend_from_slice(&header(sample_rate, count));
    encode_samples(samples, &mut bytes);
    w.write_all(&bytes)
}

/// Parses a mono 16-bit PCM WAV, skipping chunks it does not need.
pub fn read(bytes: &[u8]) -> Result<Wav, WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWave);
    }
    let mut fmt = None;
    let mut data = None;
    let mut rest = &bytes[12..];
    while rest.len() >= 8 {
        let id = &rest[0..4];
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let end = 8usize.saturating_add(len);
        let body = rest.get(8..end).ok_or(WavError::Truncated)?;
        match id {
            b"fmt " => fmt = Some(body),
            b"data" => data = Some(body),
            _ => {}
        }
        // Chunks are word-aligned; a final pad byte may be missing.
        rest = rest.get(end + len % 2..).unwrap_or_default();
    }
    let fmt = fmt.ok_or(WavError::MissingChunk("fmt "))?;
    let data = data.ok_or(WavError::MissingChunk("data"))?;
    let [f0, f1, c0, c1, r0, r1, r2, r3, _, _, _, _, _, _, b0, b1, ..] = *fmt else {
        return Err(WavError::Truncated);
    };
    let format = u16::from_le_bytes([f0, f1]);
    let channels = u16::from_le_bytes([c0, c1]);
    let bits = u16::from_le_bytes([b0, b1]);
    if (format, channels, bits) != (PCM, 1, 16) {
        return Err(WavError::Unsupported {
            format,
            channels,
            bits,
        });
    }
    if data.len() % 2 != 0 {
        return Err(WavError::Truncated);
    }
    Ok(Wav {
        sample_rate: u32::from_le_bytes([r0, r1, r2, r3]),
        samples: data
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_has_the_canonical_layout() {
        let h = header(8_000, 3);
        assert_eq!(&h[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(h[4..8].try_into().unwrap()), 42);
        assert_eq!(&h[8..16], b"WAVEfmt ");
        assert_eq!(
            &h[16..36],
            &[16, 0, 0, 0, 1, 0, 1, 0, 0x40, 0x1F, 0, 0, 0x80, 0x3E, 0, 0, 2, 0, 16, 0]
        );
        assert_eq!(&h[36..40], b"data");
        assert_eq!(u32::from_le_bytes(h[40..44].try_into().unwrap()), 6);
        let huge = header(8_000, u32::MAX);
        assert_eq!(&huge[4..8], &u32::MAX.to_le_bytes());
    }

    #[test]
    fn write_then_read_round_trips() {
        let samples = [0i16, 1, -1, i16::MAX, i16::MIN, 1234];
        let mut file = Vec::new();
        write(&mut file, 16_000, &samples).unwrap();
        assert_eq!(file.len(), HEADER_LEN + 12);
        let wav = read(&file).unwrap();
        assert_eq!(wav.sample_rate, 16_000);
        assert_eq!(wav.samples, samples);
    }

    #[test]
    fn reader_skips_unknown_and_odd_sized_chunks() {
        let mut file = header(8_000, 2).to_vec();
        // Splice a 3-byte LIST chunk (plus pad byte) between fmt and data.
        file.splice(36..36, *b"LIST\x03\0\0\0abc\0");
        file.extend_from_slice(&[1, 0, 0xFF, 0xFF]);
        let wav = read(&file).unwrap();
        assert_eq!(wav.samples, [1, -1]);
    }

    #[test]
    fn reader_rejects_what_it_cannot_decode() {
        assert_eq!(read(b"RIFX\0\0\0\0WAVE"), Err(WavError::NotWave));
        let good = {
            let mut f = Vec::new();
            write(&mut f, 8_000, &[5, 6]).unwrap();
            f
        };
        assert_eq!(read(&good[..good.len() - 1]), Err(WavError::Truncated));
        assert_eq!(read(&good[..36]), Err(WavError::MissingChunk("data")));

        let mut stereo = good.clone();
        stereo[22] = 2;
        assert_eq!(
            read(&stereo),
            Err(WavError::Unsupported {
                format: 1,
                channels: 2,
                bits: 16
            })
        );
        let mut float = good.clone();
        float[20] = 3;
        float[34] = 32;
        assert!(matches!(
            read(&float),
            Err(WavError::Unsupported { format: 3, .. })
        ));
    }
}
