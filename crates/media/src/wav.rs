//! 16-bit PCM WAV, mono or stereo: a header to stream call recordings behind (stereo: one
//! channel per side of the call), and a reader for test fixtures.

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
    /// Only mono or stereo 16-bit integer PCM is supported.
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

/// A decoded 16-bit WAV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wav {
    /// Samples per second.
    pub sample_rate: u32,
    /// Samples in file order; a stereo file's two channels mixed (their saturating sum, as
    /// [`crate::mix::mix`] mixes the legs of a call).
    pub samples: Vec<i16>,
    /// Each channel apart: one for a mono file (the same as `samples`), two for stereo.
    pub channels: Vec<Vec<i16>>,
}

/// The 44-byte header for `num_samples` mono 16-bit samples. A recorder
/// writes it first with a guess (or 0), then rewrites it at offset 0 once the
/// count is known. Sizes saturate at the 4 GiB RIFF limit.
pub fn header(sample_rate: u32, num_samples: u32) -> [u8; HEADER_LEN] {
    header_channels(sample_rate, 1, num_samples)
}

/// [`header`] for `frames` frames of `channels` interleaved 16-bit channels.
pub fn header_channels(sample_rate: u32, channels: u16, frames: u32) -> [u8; HEADER_LEN] {
    let block = 2 * u32::from(channels);
    let data_len = frames.saturating_mul(block);
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&data_len.saturating_add(36).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&PCM.to_le_bytes());
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&sample_rate.to_le_bytes());
    h[28..32].copy_from_slice(&sample_rate.saturating_mul(block).to_le_bytes());
    h[32..34].copy_from_slice(&(2 * channels).to_le_bytes());
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

/// Parses a mono or stereo 16-bit PCM WAV, skipping chunks it does not need.
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
    if format != PCM || bits != 16 || !(1..=2).contains(&channels) {
        return Err(WavError::Unsupported {
            format,
            channels,
            bits,
        });
    }
    let block = 2 * usize::from(channels);
    if data.len() % block != 0 {
        return Err(WavError::Truncated);
    }
    let interleaved: Vec<i16> = data
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let channels: Vec<Vec<i16>> = (0..usize::from(channels))
        .map(|c| {
            interleaved
                .iter()
                .skip(c)
                .step_by(usize::from(channels.max(1)))
                .copied()
                .collect()
        })
        .collect();
    let samples = match channels.as_slice() {
        [left, right] => {
            let mut mixed = Vec::with_capacity(left.len());
            crate::mix::mix(left, right, &mut mixed);
            mixed
        }
        _ => interleaved,
    };
    Ok(Wav {
        sample_rate: u32::from_le_bytes([r0, r1, r2, r3]),
        samples,
        channels,
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
    fn stereo_is_read_as_two_channels_and_their_mix() {
        let mut file = header_channels(8_000, 2, 3).to_vec();
        assert_eq!(&file[22..24], &[2, 0]);
        assert_eq!(u32::from_le_bytes(file[28..32].try_into().unwrap()), 32_000);
        assert_eq!(&file[32..34], &[4, 0]);
        encode_samples(&[1, 10, 2, 20, i16::MAX, 1], &mut file);
        let wav = read(&file).unwrap();
        assert_eq!(wav.channels, [vec![1, 2, i16::MAX], vec![10, 20, 1]]);
        assert_eq!(wav.samples, [11, 22, i16::MAX]);
        // An odd sample over whole frames is a cut-off file.
        file.extend_from_slice(&[5, 0]);
        let n = file.len() as u32 - 44;
        file[40..44].copy_from_slice(&n.to_le_bytes());
        assert_eq!(read(&file), Err(WavError::Truncated));
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

        let mut three = good.clone();
        three[22] = 3;
        assert_eq!(
            read(&three),
            Err(WavError::Unsupported {
                format: 1,
                channels: 3,
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
