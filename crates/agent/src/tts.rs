//! Text-to-speech engines.

use async_trait::async_trait;
use domain::telephony::SAMPLE_RATE;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error("text-to-speech engine failed to start: {0}")]
    Spawn(String),
    #[error("text-to-speech engine failed: {0}")]
    Engine(String),
    #[error("text-to-speech engine produced unreadable audio: {0}")]
    Audio(String),
    #[error("text-to-speech took longer than {0:?}")]
    Timeout(Duration),
}

#[async_trait]
pub trait TextToSpeech: Send + Sync + 'static {
    /// Speech for `text` as 16 kHz mono samples.
    async fn synthesize(&self, text: &str, voice: Option<&str>) -> Result<Vec<i16>, TtsError>;
}

/// espeak-ng's command-line program: no model to download, fast, robotic. The text goes in on
/// stdin, never on the command line, so nothing in it can be read as an option.
pub struct EspeakNg {
    pub program: String,
    pub default_voice: String,
    pub timeout: Duration,
}

impl Default for EspeakNg {
    fn default() -> Self {
        Self {
            program: "espeak-ng".into(),
            default_voice: "en-us".into(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Linear-interpolation resampling. Enough for synthetic speech, whose energy sits well below
/// the 8 kHz a 16 kHz stream can carry; the wire is 8 kHz G.711 anyway.
pub fn resample_linear(input: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || input.is_empty() {
        return input.to_vec();
    }
    let out_len = (input.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    (0..out_len)
        .map(|i| {
            let pos = i as f64 * step;
            let j = pos as usize;
            let frac = pos - j as f64;
            let a = f64::from(input[j.min(input.len() - 1)]);
            let b = f64::from(input[(j + 1).min(input.len() - 1)]);
            (a + (b - a) * frac).round() as i16
        })
        .collect()
}

fn voice_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && !v.starts_with('-')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+'))
}

/// A WAV as a streaming writer makes it: espeak-ng on a pipe cannot seek back to fill in the
/// sizes, so the data chunk claims more bytes than follow. Mono 16-bit PCM only.
fn streamed_wav(bytes: &[u8]) -> Result<(u32, Vec<i16>), TtsError> {
    let bad = |why: &str| TtsError::Audio(why.to_string());
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad("not a RIFF/WAVE stream"));
    }
    let mut pos = 12;
    let mut rate = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let body = pos + 8;
        if id == b"fmt " {
            let f = bytes
                .get(body..body + 16)
                .ok_or_else(|| bad("short fmt chunk"))?;
            let (format, channels, bits) = (
                u16::from_le_bytes([f[0], f[1]]),
                u16::from_le_bytes([f[2], f[3]]),
                u16::from_le_bytes([f[14], f[15]]),
            );
            if format != 1 || channels != 1 || bits != 16 {
                return Err(bad("want mono 16-bit PCM"));
            }
            rate = Some(u32::from_le_bytes([f[4], f[5], f[6], f[7]]));
        } else if id == b"data" {
            let rate = rate.ok_or_else(|| bad("data before fmt"))?;
            let end = body.saturating_add(size).min(bytes.len());
            let samples = bytes[body..end]
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            return Ok((rate, samples));
        }
        pos = body.saturating_add(size + (size & 1));
    }
    Err(bad("no data chunk"))
}

#[async_trait]
impl TextToSpeech for EspeakNg {
    async fn synthesize(&self, text: &str, voice: Option<&str>) -> Result<Vec<i16>, TtsError> {
        let voice = voice.filter(|v| voice_ok(v)).unwrap_or(&self.default_voice);
        let mut child = tokio::process::Command::new(&self.program)
            .args(["-v", voice, "--stdout"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| TtsError::Spawn(format!("{}: {e}", self.program)))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| TtsError::Spawn("no stdin".into()))?;
        let text = text.replace('\n', " ");
        let write = async move {
            stdin.write_all(text.as_bytes()).await?;
            stdin.shutdown().await
        };
        let run = async {
            write.await.map_err(|e| TtsError::Engine(e.to_string()))?;
            child
                .wait_with_output()
                .await
                .map_err(|e| TtsError::Engine(e.to_string()))
        };
        let out = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| TtsError::Timeout(self.timeout))??;
        if !out.status.success() {
            return Err(TtsError::Engine(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let (rate, samples) = streamed_wav(&out.stdout)?;
        Ok(resample_linear(&samples, rate, SAMPLE_RATE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_keeps_duration_and_shape() {
        let one_second: Vec<i16> = (0..22_050)
            .map(|i| ((i as f64 * 0.05).sin() * 10_000.0) as i16)
            .collect();
        let out = resample_linear(&one_second, 22_050, 16_000);
        assert_eq!(out.len(), 16_000);
        let peak = out.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!((9_000..=10_000).contains(&peak), "{peak}");
    }

    #[tokio::test]
    async fn espeak_speaks_a_line_at_16_khz() {
        let audio = EspeakNg::default()
            .synthesize("Hello Rahul, this is Asha from Acme.", Some("en-us"))
            .await
            .expect("espeak-ng must be installed (apt-get install espeak-ng)");
        let seconds = audio.len() as f64 / f64::from(SAMPLE_RATE);
        assert!((1.0..6.0).contains(&seconds), "{seconds} s");
        let rms =
            (audio.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / audio.len() as f64).sqrt();
        assert!(rms > 300.0, "speech, not silence: rms {rms}");
    }

    #[tokio::test]
    async fn option_looking_text_is_spoken_not_parsed() {
        let audio = EspeakNg::default()
            .synthesize("--help -w /tmp/x", Some("--evil"))
            .await
            .unwrap();
        assert!(!audio.is_empty());
    }
}
