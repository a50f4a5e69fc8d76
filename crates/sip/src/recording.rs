//! Streams a call's audio to a WAV file as it happens, so a long call never sits in memory; the
//! header is rewritten with the real length when the call ends. The file is stereo, one channel
//! per side: left (channel 0) what we sent (the agent, or the person a bridged transfer joined),
//! right (channel 1) what we received (the callee). A player mixes them; a transcription can
//! tell the speakers apart by channel without guessing.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Recording rate: both legs are written at the wire's 8 kHz, where they are already aligned
/// frame by frame.
pub const RATE: u32 = media::CLOCK_RATE;

/// Left: what we sent; right: what we received.
pub const CHANNELS: u16 = 2;

pub struct Recorder {
    path: PathBuf,
    out: BufWriter<File>,
    /// Frames written (one sample per channel each).
    frames: u32,
    interleaved: Vec<i16>,
    scratch: Vec<u8>,
}

impl Recorder {
    pub fn create(dir: &Path, name: &str) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.wav"));
        let mut out = BufWriter::with_capacity(32 * 1024, File::create(&path)?);
        out.write_all(&media::wav::header_channels(RATE, CHANNELS, 0))?;
        Ok(Self {
            path,
            out,
            frames: 0,
            interleaved: Vec::with_capacity(2 * media::FRAME_SAMPLES),
            scratch: Vec::with_capacity(4 * media::FRAME_SAMPLES),
        })
    }

    /// Appends one tick: what we sent on the left, what we received on the right; the shorter
    /// side is padded with silence, so a leg that produced no frame this tick is fine.
    pub fn write(&mut self, sent: &[i16], received: &[i16]) -> io::Result<()> {
        let frames = sent.len().max(received.len());
        self.interleaved.clear();
        for i in 0..frames {
            self.interleaved.push(sent.get(i).copied().unwrap_or(0));
            self.interleaved.push(received.get(i).copied().unwrap_or(0));
        }
        self.scratch.clear();
        media::wav::encode_samples(&self.interleaved, &mut self.scratch);
        self.out.write_all(&self.scratch)?;
        self.frames = self
            .frames
            .saturating_add(u32::try_from(frames).unwrap_or(u32::MAX));
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<PathBuf> {
        self.out.flush()?;
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&media::wav::header_channels(RATE, CHANNELS, self.frames))?;
        file.sync_data()?;
        Ok(self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_has_its_channel_and_the_header_the_final_length() {
        let dir = std::env::temp_dir().join(format!("sip-rec-{}", std::process::id()));
        let mut rec = Recorder::create(&dir, "call").unwrap();
        rec.write(&[100; 160], &[1; 160]).unwrap();
        rec.write(&[0; 160], &[]).unwrap();
        rec.write(&[], &[7; 160]).unwrap();
        let path = rec.finish().unwrap();
        let wav = media::wav::read(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(wav.sample_rate, 8000);
        assert_eq!(wav.channels.len(), 2);
        let (sent, received) = (&wav.channels[0], &wav.channels[1]);
        assert_eq!((sent.len(), received.len()), (480, 480));
        assert_eq!((sent[0], received[0]), (100, 1));
        assert_eq!((sent[200], received[200]), (0, 0));
        assert_eq!((sent[400], received[400]), (0, 7));
        // Played (mixed), it is what both sides heard.
        assert_eq!(wav.samples[0], 101);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
