//! `outdial-bench understand`: how often the agent understands what a callee means, per local
//! recogniser, the way a callee would find out. Replies from [`corpus`] are spoken by every
//! English espeak-ng voice at two speeds and two pitches, espeak-ng's variants and the piper
//! voice, carried over a telephone line ([`line`]: G.711 u-law or A-law, the telephone band,
//! 1-3 % packet loss, white noise at 20 and 10 dB), then recognised with the stage's phrases
//! and put through the flow brain's route choice as a call would.
//!
//! Reported per engine: intent accuracy and the confusion matrix, results recorded wrong,
//! "opposite" results (a yes recorded as a no or the reverse: the worst error), re-asks by
//! cause, word error rate and words heard in silence or a cough. The utterance is handed over
//! whole with the end-of-turn silence after it, as the turn taker would; VAD is not measured
//! here (`outdial-bench voice` runs the whole pipeline).
//!
//! Synthesised speech is cached under `--cache-dir` (default: the system temp dir), never in
//! the repository.

mod corpus;
pub(crate) mod line;
mod score;

use agent::flow::{choose_route, normalize, Miss};
use agent::{
    FlowOptions, Listening, PocketSphinx, PocketSphinxConfig, SpeechToText, Transcript, Whisper,
};
use anyhow::{bail, Context, Result};
use corpus::{Intent, Item, Reply, CORPUS};
use domain::agent::{AgentConfig, Stage};
use line::{carry, cough, with_end_of_turn, Profile, PROFILES};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use score::{word_errors, Tally};
use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Utterances to run (a seeded random sample of the whole set); 0: all of them.
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Recognisers, comma-separated: pocketsphinx, whisper.
    #[arg(long, default_value = "pocketsphinx,whisper", value_delimiter = ',')]
    engines: Vec<String>,
    /// Every line profile for every utterance (5x the work); default: the profiles in turn.
    #[arg(long)]
    all_profiles: bool,
    /// Leave out espeak-ng's voice variants (+m1, +f2, ...; about a hundred).
    #[arg(long)]
    no_variants: bool,
    /// The flow brain's confidence threshold (default: the shipped one).
    #[arg(long)]
    min_confidence: Option<f32>,
    /// Sample, packet-loss and noise seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where synthesised speech is cached.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// One JSON line per utterance and engine (what was heard, its confidence, the outcome).
    #[arg(long)]
    details: Option<PathBuf>,
    /// Also write each utterance as it reached the recogniser (16 kHz WAV) with a
    /// `manifest.jsonl`, to study a recogniser outside the benchmark.
    #[arg(long)]
    dump_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Voice {
    Espeak {
        voice: String,
        speed: u32,
        pitch: u32,
    },
    Piper,
}

impl Voice {
    pub(crate) fn label(&self) -> String {
        match self {
            Voice::Espeak {
                voice,
                speed,
                pitch,
            } => format!("espeak:{voice}:s{speed}:p{pitch}"),
            Voice::Piper => "piper:joe".into(),
        }
    }
}

/// The English voices of this espeak-ng (the built-in `gmw/` ones; mbrola voices need data
/// that is not installed) and its variants.
pub(crate) fn espeak_voices(variants: bool) -> Result<Vec<Voice>> {
    let list = |arg: &str| -> Result<String> {
        let out = Command::new("espeak-ng")
            .arg(arg)
            .output()
            .context("espeak-ng --voices")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut voices = Vec::new();
    for line in list("--voices=en")?.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if let (Some(lang), Some(file)) = (cols.get(1), cols.get(4)) {
            if !file.starts_with("gmw/") {
                continue;
            }
            for speed in [150, 190] {
                for pitch in [35, 65] {
                    voices.push(Voice::Espeak {
                        voice: lang.to_string(),
                        speed,
                        pitch,
                    });
                }
            }
        }
    }
    if variants {
        for line in list("--voices=variant")?.lines().skip(1) {
            if let Some(name) = line
                .split_whitespace()
                .nth(4)
                .and_then(|f| f.strip_prefix("!v/"))
            {
                voices.push(Voice::Espeak {
                    voice: format!("en-us+{name}"),
                    speed: 175,
                    pitch: 50,
                });
            }
        }
    }
    if voices.is_empty() {
        bail!("espeak-ng lists no English voice (apt-get install espeak-ng)");
    }
    Ok(voices)
}

fn read_wav_16k(path: &Path) -> Result<Vec<i16>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let wav = media::wav::read(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(media::sinc_resample::resample(
        &wav.samples,
        wav.sample_rate,
        16_000,
    ))
}

/// `text` in `voice` at 16 kHz, from the cache when it was made before.
pub(crate) fn speech(voice: &Voice, text: &str, cache: &Path) -> Result<Vec<i16>> {
    let mut h = DefaultHasher::new();
    (voice, text).hash(&mut h);
    let path = cache.join(format!("{:016x}.wav", h.finish()));
    if !path.exists() {
        let tmp = path.with_extension("part.wav");
        match voice {
            Voice::Espeak {
                voice,
                speed,
                pitch,
            } => {
                let st = Command::new("espeak-ng")
                    .args([
                        "-v",
                        voice,
                        "-s",
                        &speed.to_string(),
                        "-p",
                        &pitch.to_string(),
                    ])
                    .arg("-w")
                    .arg(&tmp)
                    .arg(text)
                    .status()
                    .context("espeak-ng")?;
                if !st.success() {
                    bail!("espeak-ng -v {voice} failed");
                }
            }
            Voice::Piper => crate::voice::caller_voice::speak(text, &tmp),
        }
        std::fs::rename(&tmp, &path)?;
    }
    read_wav_16k(&path)
}

struct Job {
    item: usize,
    voice: usize,
    profile: usize,
}

enum Engine {
    PocketSphinx(PocketSphinx),
    Whisper(Whisper),
    /// `replay:FILE`: what a recogniser run outside the benchmark heard in the audio of
    /// `--dump-dir`, one JSON line per utterance in order (`text`, `confidence`).
    Replay(std::sync::Mutex<std::vec::IntoIter<Transcript>>),
}

impl Engine {
    async fn start(name: &str) -> Result<Engine> {
        let engine = match name {
            "pocketsphinx" => Engine::PocketSphinx(PocketSphinx::new(PocketSphinxConfig {
                sidecars: 1,
                ..Default::default()
            })),
            "whisper" => Engine::Whisper(Whisper::default()),
            other => match other.strip_prefix("replay:") {
                Some(path) => Engine::Replay(std::sync::Mutex::new(replayed(Path::new(path))?)),
                None => bail!("unknown engine {other:?} (pocketsphinx, whisper, replay:FILE)"),
            },
        };
        match &engine {
            Engine::PocketSphinx(e) => e.warm_up().await?,
            Engine::Whisper(e) => e.warm_up().await?,
            Engine::Replay(_) => {}
        }
        Ok(engine)
    }

    /// As a call hears it: after the stage's question, listening for its phrases.
    async fn hear(&self, audio: &[i16], listening: &Listening) -> Result<Transcript> {
        Ok(match self {
            Engine::PocketSphinx(e) => e.transcribe_reply(audio, listening).await?,
            Engine::Whisper(e) => e.transcribe_reply(audio, listening).await?,
            Engine::Replay(lines) => lines
                .lock()
                .map_err(|_| anyhow::anyhow!("replay poisoned"))?
                .next()
                .context("the replay file has fewer lines than utterances")?,
        })
    }
}

fn replayed(path: &Path) -> Result<std::vec::IntoIter<Transcript>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut heard = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        heard.push(Transcript::new(
            v["text"].as_str().unwrap_or_default(),
            v["confidence"].as_f64().map(|c| c as f32),
        ));
    }
    Ok(heard.into_iter())
}

fn intent_of(stage: &Stage, route: usize) -> Intent {
    stage
        .routes
        .get(route)
        .and_then(|r| r.set.get("intent"))
        .and_then(|v| v.as_str())
        .and_then(Intent::from_name)
        .unwrap_or(Intent::Unclear)
}

fn dump(
    dir: &Path,
    n: usize,
    audio: &[i16],
    voice: &Voice,
    profile: &Profile,
    said: &str,
    intent: Intent,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let file = format!("{n:05}.wav");
    media::wav::write(
        std::io::BufWriter::new(std::fs::File::create(dir.join(&file))?),
        16_000,
        audio,
    )?;
    let line = serde_json::json!({
        "file": file, "voice": voice.label(), "profile": profile.name,
        "said": said, "expected": intent.name(),
    });
    let mut manifest = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("manifest.jsonl"))?;
    writeln!(manifest, "{line}")?;
    Ok(())
}

fn seed_of(job: &Job, seed: u64) -> u64 {
    let mut h = DefaultHasher::new();
    (job.item, job.voice, job.profile, seed).hash(&mut h);
    h.finish()
}

pub async fn run(args: Args) -> Result<()> {
    let cfg = AgentConfig::from_json(
        corpus::agent()
            .as_object()
            .context("the benchmark agent is an object")?,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let stage = cfg.stages[0].clone();
    let listening = Listening {
        asked: stage.say.clone().unwrap_or_default(),
        phrases: stage
            .routes
            .iter()
            .flat_map(|r| r.when_any.iter().cloned())
            .collect(),
    };
    let mut options = FlowOptions::default();
    if let Some(c) = args.min_confidence {
        options.min_confidence = c;
    }
    let cache = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("outdial-bench-understand"));
    std::fs::create_dir_all(&cache)?;

    let mut voices = espeak_voices(!args.no_variants)?;
    voices.push(Voice::Piper);
    let mut jobs = Vec::new();
    let mut turn = 0usize;
    for (item, it) in CORPUS.iter().enumerate() {
        // A sound without words is the same in every voice.
        let voices_for = if matches!(it.reply, Reply::Say(_)) {
            voices.len()
        } else {
            1
        };
        for voice in 0..voices_for {
            if args.all_profiles {
                jobs.extend((0..PROFILES.len()).map(|profile| Job {
                    item,
                    voice,
                    profile,
                }));
            } else {
                jobs.push(Job {
                    item,
                    voice,
                    profile: turn % PROFILES.len(),
                });
                turn += 1;
            }
        }
    }
    jobs.shuffle(&mut StdRng::seed_from_u64(args.seed));
    if args.limit > 0 {
        jobs.truncate(args.limit);
    }
    println!(
        "understand: {} utterances ({} replies, {} voices, {} line profiles), engines {:?}, min confidence {}, audio cache {}",
        jobs.len(),
        CORPUS.len(),
        voices.len(),
        PROFILES.len(),
        args.engines,
        options.min_confidence,
        cache.display()
    );

    let mut engines = Vec::new();
    // `--engines ''` with `--dump-dir`: only the audio.
    for name in args.engines.iter().filter(|n| !n.is_empty()) {
        engines.push((name.clone(), Engine::start(name).await?));
    }
    let mut details = match &args.details {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p)?)),
        None => None,
    };
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let mut by_profile: BTreeMap<(String, &'static str), (usize, usize)> = BTreeMap::new();
    for (n, job) in jobs.iter().enumerate() {
        let item: &Item = &CORPUS[job.item];
        let profile: &Profile = &PROFILES[job.profile];
        let line_seed = seed_of(job, args.seed);
        let (clean, reference) = match item.reply {
            Reply::Say(text) => (speech(&voices[job.voice], text, &cache)?, text),
            Reply::Silence => (vec![0i16; 24_000], ""),
            Reply::Cough => (cough(line_seed), ""),
        };
        let audio = with_end_of_turn(carry(&clean, profile, line_seed));
        if let Some(dir) = &args.dump_dir {
            dump(
                dir,
                n,
                &audio,
                &voices[job.voice],
                profile,
                reference,
                item.intent,
            )?;
        }
        for (name, engine) in &engines {
            let tally = tallies.entry(name.clone()).or_default();
            let heard = match engine.hear(&audio, &listening).await {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("{name}: {e}");
                    tally.failures += 1;
                    Transcript::default()
                }
            };
            let outcome = choose_route(&stage, &heard, &options);
            let got = match outcome {
                Ok(route) => intent_of(&stage, route),
                Err(Miss::Doubtful) => {
                    tally.doubtful += 1;
                    Intent::Unclear
                }
                Err(Miss::Conflict) => {
                    tally.conflicts += 1;
                    Intent::Unclear
                }
                Err(Miss::Hinge) => {
                    tally.hinges += 1;
                    Intent::Unclear
                }
                Err(Miss::Unmatched) => Intent::Unclear,
            };
            tally.add(item.intent, got);
            let want = normalize(reference);
            let words = normalize(&heard.text);
            if want.is_empty() {
                tally.phantom_words += words.len();
            } else {
                tally.word_errors += word_errors(&want, &words);
                tally.reference_words += want.len();
            }
            let p = by_profile.entry((name.clone(), profile.name)).or_default();
            p.0 += usize::from(got == item.intent);
            p.1 += 1;
            if let Some(out) = details.as_mut() {
                let line = serde_json::json!({
                    "engine": name, "voice": voices[job.voice].label(), "profile": profile.name,
                    "said": reference, "expected": item.intent.name(), "heard": heard.text,
                    "confidence": heard.confidence, "got": got.name(),
                });
                writeln!(out, "{line}")?;
            }
        }
        if (n + 1) % 100 == 0 {
            eprintln!("{}/{} utterances", n + 1, jobs.len());
        }
    }
    if let Some(mut out) = details {
        out.flush()?;
    }
    for (name, t) in &tallies {
        let pct = |n: usize| 100.0 * n as f64 / t.total().max(1) as f64;
        println!("\n== {name}");
        println!(
            "intent accuracy {:.1} % ({} of {}); results recorded wrong {} ({:.1} %); OPPOSITE intent {}",
            pct(t.correct()),
            t.correct(),
            t.total(),
            t.wrong_results(),
            pct(t.wrong_results()),
            t.opposite()
        );
        println!(
            "re-asked: {} doubtful (confidence), {} yes/no conflicts, {} can/can't hinges; WER {}; words heard in silence/cough {}; recogniser failures {}",
            t.doubtful,
            t.conflicts,
            t.hinges,
            t.wer().map_or("-".into(), |w| format!("{:.1} %", 100.0 * w)),
            t.phantom_words,
            t.failures
        );
        for ((engine, profile), (ok, n)) in &by_profile {
            if engine == name {
                println!("  {profile:<24} {ok}/{n} understood");
            }
        }
        print!("{}", t.matrix());
    }
    Ok(())
}
