//! The transcription jobs' recogniser (`agent::WhisperJobs`, the sidecar the node runs) on a
//! corpus of call sentences in every job language (`corpus.tsv`), spoken by espeak-ng and
//! posted as FLAC files, as users post them. Each file is transcribed twice: with its language
//! given, and with `languages=unknown`. Reported per language: how often detection chose the
//! right language, the character error rate with the language given, and the real-time factor
//! (transcription time / audio length) on this machine.

use agent::{SidecarConfig, WhisperJobs, WhisperJobsConfig};
use anyhow::{bail, Context, Result};
use domain::transcription::{EngineRequest, FileTranscript, JOB_LANGUAGES};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CORPUS: &str = include_str!("corpus.tsv");

#[derive(clap::Args)]
pub struct Args {
    /// Decoder threads of the recogniser.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Its CPU priority below ours (the node runs it at 10; 0 measures the engine alone).
    #[arg(long, default_value_t = 0)]
    nice: u32,
    /// The interpreter with the engine installed (`outdial setup --all`).
    #[arg(long, default_value = ".venv/bin/python3")]
    python: String,
    /// Only these languages (Whisper codes: hi, en, ...), comma-separated.
    #[arg(long, value_delimiter = ',')]
    languages: Vec<String>,
    /// Where the model is put together (default: the system temp dir).
    #[arg(long)]
    model_dir: Option<PathBuf>,
}

pub(crate) struct Sentence {
    pub id: String,
    pub language: &'static str,
    pub code_mixed: bool,
    pub text: String,
}

pub(crate) fn corpus() -> Result<Vec<Sentence>> {
    CORPUS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let [id, lang, mixed, text] = f[..] else {
                bail!("corpus line {l:?}")
            };
            let language = JOB_LANGUAGES
                .iter()
                .find(|t| t.split('-').next() == Some(lang))
                .with_context(|| format!("corpus language {lang}"))?;
            Ok(Sentence {
                id: id.into(),
                language,
                code_mixed: mixed == "1",
                text: text.into(),
            })
        })
        .collect()
}

fn checked(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `s` spoken by espeak-ng in its language, as 16 kHz mono FLAC.
pub(crate) fn flac(s: &Sentence, dir: &Path) -> Result<PathBuf> {
    let voice = match s.language {
        "en-IN" => "en-us",
        tag => tag.split('-').next().unwrap_or(tag),
    };
    let wav = dir.join(format!("{}.wav", s.id));
    let out = dir.join(format!("{}.flac", s.id));
    if !out.exists() {
        checked(
            Command::new("espeak-ng")
                .args(["-v", voice, "-s", "150", "-w"])
                .arg(&wav)
                .arg(&s.text),
        )?;
        checked(
            Command::new("sox")
                .arg(&wav)
                .args(["-r", "16000", "-c", "1"])
                .arg(&out),
        )?;
    }
    Ok(out)
}

pub(crate) fn recogniser(python: &str, threads: u32, nice: u32, model_dir: PathBuf) -> WhisperJobs {
    WhisperJobs::new(WhisperJobsConfig {
        sidecar: SidecarConfig {
            python: python.into(),
            ..SidecarConfig::new(Duration::from_secs(600))
        },
        threads,
        nice,
        model_dir: Some(model_dir),
    })
}

/// Lower case, punctuation (Latin and Indic) dropped, spaces collapsed: what a character error
/// rate should not count.
fn normalise(s: &str) -> Vec<char> {
    let kept: String = s
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_punctuation() || "।॥،۔؟‘’“”".contains(c) {
                ' '
            } else {
                c
            }
        })
        .collect();
    kept.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .collect()
}

fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

fn text_of(t: &FileTranscript) -> String {
    t.channels
        .iter()
        .flat_map(|c| c.segments.iter().map(|s| s.text.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Default)]
struct Tally {
    files: usize,
    detected: usize,
    errors: usize,
    reference: usize,
    audio_s: f64,
    fixed_s: f64,
    detect_s: f64,
}

pub async fn run(args: Args) -> Result<()> {
    let dir = std::env::temp_dir().join("outdial-bench-transcribe");
    std::fs::create_dir_all(&dir)?;
    let model_dir = args.model_dir.clone().unwrap_or_else(|| dir.join("model"));
    let engine = recogniser(&args.python, args.threads, args.nice, model_dir);
    let started = Instant::now();
    engine.warm_up().await.context("starting the recogniser")?;
    println!(
        "recogniser ready in {:.1} s (threads {}, nice {})",
        started.elapsed().as_secs_f64(),
        args.threads,
        args.nice
    );
    let mut tallies: BTreeMap<(&'static str, bool), Tally> = BTreeMap::new();
    for s in corpus()? {
        let code = s.language.split('-').next().unwrap_or("");
        if !args.languages.is_empty() && !args.languages.iter().any(|l| l == code) {
            continue;
        }
        let file = std::fs::read(flac(&s, &dir)?)?;
        let ask = |languages: Vec<&'static str>| EngineRequest {
            languages,
            code_mixed: s.code_mixed,
            split_channels: false,
        };
        let t = Instant::now();
        let fixed = engine.transcribe(&file, &ask(vec![s.language])).await?;
        let fixed_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let detected = engine
            .transcribe(&file, &ask(JOB_LANGUAGES.to_vec()))
            .await?;
        let detect_s = t.elapsed().as_secs_f64();
        let heard = text_of(&fixed);
        let (reference, got) = (normalise(&s.text), normalise(&heard));
        let errors = edit_distance(&reference, &got);
        let chosen = detected.channels.first().map(|c| c.language).unwrap_or("-");
        println!(
            "{:<5} {:>5.1} s  detected {:<6} cer {:>5.1} %  rtf {:.2}  {:?}",
            s.id,
            fixed.duration,
            chosen,
            100.0 * errors as f64 / reference.len().max(1) as f64,
            fixed_s / fixed.duration.max(0.01),
            heard
        );
        let tally = tallies.entry((s.language, s.code_mixed)).or_default();
        tally.files += 1;
        tally.detected += usize::from(chosen == s.language);
        tally.errors += errors;
        tally.reference += reference.len();
        tally.audio_s += fixed.duration;
        tally.fixed_s += fixed_s;
        tally.detect_s += detect_s;
    }
    println!("\n| language | files | `unknown` chose it | CER, language given | RTF given | RTF `unknown` |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for ((language, mixed), t) in &tallies {
        println!(
            "| {language}{} | {} | {}/{} | {:.1} % | {:.2} | {:.2} |",
            if *mixed { " (code-mixed)" } else { "" },
            t.files,
            t.detected,
            t.files,
            100.0 * t.errors as f64 / t.reference.max(1) as f64,
            t.fixed_s / t.audio_s.max(0.01),
            t.detect_s / t.audio_s.max(0.01),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_reads_and_covers_hindi_and_english() {
        let c = corpus().unwrap();
        assert!(c.iter().any(|s| s.language == "hi-IN" && s.code_mixed));
        assert!(c.iter().filter(|s| s.language == "en-IN").count() >= 3);
    }

    #[test]
    fn character_errors_ignore_case_and_punctuation() {
        let r = normalise("नमस्ते, मैं राहुल।");
        assert_eq!(edit_distance(&r, &normalise("नमस्ते मैं राहुल")), 0);
        assert_eq!(
            edit_distance(&normalise("Pay Friday."), &normalise("pay friday")),
            0
        );
        assert_eq!(edit_distance(&normalise("abc"), &normalise("abd")), 1);
        assert_eq!(edit_distance(&normalise("abc"), &normalise("")), 3);
    }
}
