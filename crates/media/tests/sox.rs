//! Cross-checks against SoX (Debian package `sox`). These tests fail rather
//! than skip when `sox` is missing, so CI must install it.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use media::{g711, wav};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("media-sox-{}-{n}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs a prepared `sox` command, failing loudly if SoX is not installed.
fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| {
        panic!("cannot run `sox` ({e}); install it with `apt-get install -y sox`")
    });
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn sox() -> Command {
    Command::new("sox")
}

/// `sox` options for mono 16-bit signed PCM.
const PCM16_MONO: [&str; 6] = ["-e", "signed-integer", "-b", "16", "-c", "1"];

fn le_bytes(samples: impl IntoIterator<Item = i16>) -> Vec<u8> {
    samples.into_iter().flat_map(i16::to_le_bytes).collect()
}

fn le_samples(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Encodes every i16 with SoX. `-D` is required: SoX otherwise adds TPDF
/// dither when narrowing 16-bit input to 14/13-bit G.711, and the output
/// changes from run to run.
fn sox_encode_all(encoding: &str) -> Vec<u8> {
    let dir = Scratch::new(encoding);
    let input = dir.path("in.raw");
    let output = dir.path("out.raw");
    fs::write(&input, le_bytes(i16::MIN..=i16::MAX)).unwrap();
    run(sox()
        .arg("-D")
        .args(["-t", "raw", "-r", "8000"])
        .args(PCM16_MONO)
        .arg(&input)
        .args(["-t", "raw", "-e", encoding])
        .arg(&output));
    let codes = fs::read(&output).unwrap();
    assert_eq!(codes.len(), 65_536, "sox wrote {} codes", codes.len());
    codes
}

fn sox_decode_all(encoding: &str) -> Vec<i16> {
    let dir = Scratch::new(&format!("{encoding}-decode"));
    let input = dir.path("codes.raw");
    let output = dir.path("out.raw");
    fs::write(&input, (0..=255u8).collect::<Vec<_>>()).unwrap();
    run(sox()
        .args([
            "-t", "raw", "-r", "8000", "-e", encoding, "-b", "8", "-c", "1",
        ])
        .arg(&input)
        .args(["-t", "raw", "-e", "signed-integer", "-b", "16"])
        .arg(&output));
    le_samples(&fs::read(&output).unwrap())
}

/// Compares our encoder with SoX on every input and checks that they differ
/// exactly where SoX's documented deviation from ITU-T G.191 predicts.
///
/// SoX first rounds the 16-bit sample half-up to `1 << shift` (14 bits for
/// µ-law, 13 for A-law) where G.191 truncates, and for µ-law mirrors negative
/// values with a two's complement (magnitude `-q`) where G.191 uses a one's
/// complement (`-q - 1`). Both shift a few inputs just below each decision
/// threshold into the neighbouring code.
fn check_encoder(
    encoding: &str,
    encode: fn(i16) -> u8,
    decode: fn(u8) -> i16,
    shift: u32,
    twos_complement_mirror: bool,
    expected_exceptions: usize,
) {
    let sox = sox_encode_all(encoding);
    let sox_code = |x: i16| sox[(i32::from(x) + 32_768) as usize];

    let max = (1i32 << (15 - shift)) - 1;
    let sox_model = |x: i16| {
        let mut q = ((i32::from(x) + (1 << (shift - 1))) >> shift).min(max);
        if twos_complement_mirror && q < 0 {
            q -= 1;
        }
        // Clamping only touches i16::MIN, which clips to the top code anyway.
        encode((q << shift).max(i32::from(i16::MIN)) as i16)
    };

    // Inputs already on SoX's grid leave it nothing to round, so they must
    // agree exactly (for µ-law, only where the sign mirrors also agree).
    for x in (i16::MIN..=i16::MAX).step_by(1 << shift) {
        if x >= 0 || !twos_complement_mirror {
            assert_eq!(encode(x), sox_code(x), "{encoding} grid input {x}");
        }
    }

    let mismatches: BTreeSet<i16> = (i16::MIN..=i16::MAX)
        .filter(|&x| encode(x) != sox_code(x))
        .collect();
    let predicted: BTreeSet<i16> = (i16::MIN..=i16::MAX)
        .filter(|&x| encode(x) != sox_model(x))
        .collect();
    let unexplained: Vec<_> = mismatches
        .symmetric_difference(&predicted)
        .take(20)
        .collect();
    assert!(
        unexplained.is_empty(),
        "{encoding}: inputs where ours vs SoX disagree contrary to the model: {unexplained:?}"
    );
    assert_eq!(
        mismatches.len(),
        expected_exceptions,
        "{encoding} exception count"
    );

    // Every exception is off by exactly one quantisation level.
    let mut levels: Vec<i16> = (0..=255u8).map(decode).collect();
    levels.sort_unstable();
    levels.dedup();
    let level = |c: u8| levels.binary_search(&decode(c)).unwrap();
    for &x in &mismatches {
        let (ours, theirs) = (level(encode(x)), level(sox_code(x)));
        assert!(
            ours.abs_diff(theirs) <= 1,
            "{encoding} input {x}: levels {ours} vs {theirs}"
        );
    }
}

#[test]
fn ulaw_encoder_matches_sox_except_documented_rounding() {
    check_encoder("u-law", g711::ulaw_encode, g711::ulaw_decode, 2, true, 510);
}

#[test]
fn alaw_encoder_matches_sox_except_documented_rounding() {
    check_encoder(
        "a-law",
        g711::alaw_encode,
        g711::alaw_decode,
        3,
        false,
        1_020,
    );
}

#[test]
fn decoders_match_sox_on_all_256_codes() {
    let ulaw = sox_decode_all("u-law");
    let alaw = sox_decode_all("a-law");
    for code in 0..=255u8 {
        assert_eq!(
            g711::ulaw_decode(code),
            ulaw[usize::from(code)],
            "µ-law {code:#04x}"
        );
        assert_eq!(
            g711::alaw_decode(code),
            alaw[usize::from(code)],
            "A-law {code:#04x}"
        );
    }
}

#[test]
fn sox_reads_our_wav() {
    let dir = Scratch::new("wav-read");
    let ours = dir.path("ours.wav");
    let raw = dir.path("out.raw");
    let samples: Vec<i16> = (0..4_000)
        .map(|n| ((n * 37) % 65_536 - 32_768) as i16)
        .collect();
    let mut file = Vec::new();
    wav::write(&mut file, 8_000, &samples).unwrap();
    fs::write(&ours, file).unwrap();
    run(sox()
        .arg(&ours)
        .args(["-t", "raw", "-e", "signed-integer", "-b", "16"])
        .arg(&raw));
    assert_eq!(le_samples(&fs::read(&raw).unwrap()), samples);

    let info = Command::new("sox")
        .args(["--i", "-r"])
        .arg(&ours)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "8000");
}

#[test]
fn we_read_a_sox_wav() {
    let dir = Scratch::new("wav-write");
    let raw = dir.path("in.raw");
    let theirs = dir.path("theirs.wav");
    let samples: Vec<i16> = (0..3_000)
        .map(|n| ((n * 101) % 20_000 - 10_000) as i16)
        .collect();
    fs::write(&raw, le_bytes(samples.iter().copied())).unwrap();
    run(sox()
        .args(["-t", "raw", "-r", "16000"])
        .args(PCM16_MONO)
        .arg(&raw)
        .arg(&theirs));
    let wav = wav::read(&fs::read(&theirs).unwrap()).unwrap();
    assert_eq!(wav.sample_rate, 16_000);
    assert_eq!(wav.samples, samples);
}
