//! Streams a call's mixed audio to a WAV file as it happens, so a long call never sits in
//! memory; the header is rewritten with the real length when the call ends.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Recording rate: both legs are mixed at the wire's 8 kHz, where they are already aligned
/// frame by frame.
pub const RATE: u32 = media::CLOCK_RATE;

pub struct Recorder {
    path: PathBuf,
    out: BufWriter<File>,
    samples: u32,
    mixed: Vec<i16>,
    scratch: Vec<u8>,
}

impl Recorder {
    pub fn create(dir: &Path, name: &str) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.wav"));
        let mut out = BufWriter::with_capacity(32 * 1024, File::create(&path)?);
        out.write_all(&media::wav::header(RATE, 0))?;
        Ok(Self {
            path,
            out,
            samples: 0,
            mixed: Vec::with_capacity(media::FRAME_SAMPLES),
            scratch: Vec::with_capacity(2 * media::FRAME_SAMPLES),
        })
    }

    /// Appends one tick: what we sent and what we received, mixed.
    pub fn write(&mut self, sent: &[i16], received: &[i16]) -> io::Result<()> {
        self.mixed.clear();
        media::mix::mix(sent, received, &mut self.mixed);
        self.scratch.clear();
        media::wav::encode_samples(&self.mixed, &mut self.scratch);
        self.out.write_all(&self.scratch)?;
        self.samples = self.samples.saturating_add(self.mixed.len() as u32);
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<PathBuf> {
        self.out.flush()?;
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&media::wav::header(RATE, self.samples))?;
        file.sync_data()?;
        Ok(self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_carries_the_final_length() {
        let dir = std::env::temp_dir().join(format!("sip-rec-{}", std::process::id()));
        let mut rec = Recorder::create(&dir, "call").unwrap();
        rec.write(&[100; 160], &[1; 160]).unwrap();
        rec.write(&[0; 160], &[]).unwrap();
        let path = rec.finish().unwrap();
        let wav = media::wav::read(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(wav.sample_rate, 8000);
        assert_eq!(wav.samples.len(), 320);
        assert_eq!(wav.samples[0], 101);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
