//! The agent pipeline with the local engines: `--calls` conversations at once, each a real-time
//! paced line (one 20 ms frame in and one out per tick, as the SIP adapter does) carrying a
//! caller who waits for the agent to finish, then says "yes, I can pay by Friday" (the piper
//! voice through the G.711 phone path, made at start-up). The agent is the real runtime:
//! earshot VAD, turn taking, the streaming pocketsphinx sidecar pool, the flow brain and
//! espeak-ng, the opening synthesised before the "answer" as dispatch does.
//!
//! Measured at the line, as a caller would:
//! - voice-to-voice: the caller's last loud frame sent -> the agent's first loud frame played;
//! - answer-to-first-word: the answer -> the agent's first loud frame played;
//! - our own added time per turn (the runtime's `added_us`: after the end of the turn,
//!   everything but waiting on the recogniser and the synthesiser);
//! - tick lateness of the paced lines, and whether each turn was understood (intent set).

use agent::{
    converse, ConversationOutcome, EspeakNg, FlowBrain, Opening, PocketSphinx, PocketSphinxConfig,
    Session, SpeechToText, TextToSpeech, Timing, Whisper,
};
use anyhow::{Context, Result};
use domain::agent::AgentConfig;
use domain::call::Parameter;
use domain::telephony::{CallControl, MediaStream, FRAME_SAMPLES};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

#[path = "../../agent/tests/common/voice.rs"]
pub(crate) mod caller_voice;

#[derive(clap::Args)]
pub struct Args {
    /// Conversations at once.
    #[arg(long, default_value_t = 1)]
    calls: usize,
    /// Caller turns per conversation.
    #[arg(long, default_value_t = 5)]
    turns: usize,
    /// The recogniser: whisper (the node's `local` default) or pocketsphinx.
    #[arg(long, value_enum, default_value_t = Stt::Whisper)]
    stt: Stt,
    /// Recogniser processes (default: pocketsphinx 4 per core, whisper 1, as a node runs them).
    #[arg(long)]
    sidecars: Option<usize>,
    /// The agent's end-of-turn silence.
    #[arg(long, default_value_t = 500)]
    end_of_turn_ms: u32,
    /// Calls start this far apart, so their turns do not all fall on the same instant.
    #[arg(long, default_value_t = 137)]
    stagger_ms: u64,
    /// Transcription jobs running beside the calls the whole time, each a recogniser process
    /// as the node runs them (one thread, nice 10) transcribing a long file over and over.
    #[arg(long, default_value_t = 0)]
    transcription_jobs: usize,
    /// The interpreter with the jobs' engine installed (`outdial setup --all`).
    #[arg(long, default_value = ".venv/bin/python3")]
    python: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Stt {
    Whisper,
    Pocketsphinx,
}

/// Starts `n` transcription jobs' recognisers, each transcribing the same FLAC (the corpus'
/// English sentences four times over, about a minute) until `stop`; each answers how many
/// files it finished.
async fn transcription_load(
    n: usize,
    python: &str,
    dir: &std::path::Path,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<usize>>> {
    use domain::transcription::{EngineRequest, JOB_LANGUAGES};
    let sentences = crate::transcribe::corpus()?;
    let english: Vec<_> = sentences.iter().filter(|s| s.language == "en-IN").collect();
    let mut parts = Vec::new();
    for s in &english {
        parts.push(crate::transcribe::flac(s, dir)?);
    }
    let long = dir.join("long.flac");
    let mut sox = std::process::Command::new("sox");
    for _ in 0..4 {
        sox.args(&parts);
    }
    let st = sox.arg(&long).status().context("sox")?;
    anyhow::ensure!(st.success(), "sox failed to join the files");
    let file = Arc::new(std::fs::read(&long)?);
    let model = std::env::temp_dir()
        .join("outdial-bench-transcribe")
        .join("model");
    let mut loops = Vec::new();
    for _ in 0..n {
        let engine = crate::transcribe::recogniser(python, 1, 10, model.clone());
        engine
            .warm_up()
            .await
            .context("starting a transcription recogniser")?;
        let (file, mut stop) = (file.clone(), stop.clone());
        loops.push(tokio::spawn(async move {
            let request = EngineRequest {
                languages: JOB_LANGUAGES.to_vec(),
                code_mixed: false,
                split_channels: false,
            };
            let mut done = 0;
            loop {
                tokio::select! {
                    r = engine.transcribe(&file, &request) => {
                        if r.is_ok() { done += 1 }
                    }
                    _ = stop.wait_for(|s| *s) => return done,
                }
            }
        }));
    }
    Ok(loops)
}

const LOUD: u16 = 300;

fn loud(frame: &[i16]) -> bool {
    frame.iter().any(|s| s.unsigned_abs() >= LOUD)
}

fn agent(end_of_turn_ms: u32) -> Result<AgentConfig> {
    let v = json!({
      "name": "bench",
      "first_message": "Hello {{customer_name}}, this is Asha from Acme.",
      "stages": [
        { "id": "ask", "say": "Can you pay it by Friday?",
          "routes": [
            { "when_any": ["yes", "yeah", "sure", "okay"], "set": { "intent": "payment_promise" },
              "say": "Thank you.", "next": "ask" }
          ],
          "otherwise": { "say": "Sorry, could you say that again?", "repeat": 10 } }
      ],
      "turn_taking": { "end_of_turn_silence_ms": end_of_turn_ms }
    });
    let obj = v.as_object().context("agent json")?;
    AgentConfig::from_json(obj).map_err(|e| anyhow::anyhow!("{e}"))
}

#[derive(Default)]
struct Line {
    voice_to_voice_ms: Vec<f64>,
    answer_to_first_word_ms: Option<f64>,
    ticks: u64,
    late_ticks: u64,
    max_late_ms: f64,
}

enum Caller {
    /// Waiting for the agent to speak and then fall silent.
    Listening {
        heard_agent: bool,
    },
    Speaking {
        at: usize,
    },
    /// Said it; waiting for the reply's first sound.
    Awaiting {
        said_at: Instant,
    },
}

/// One paced line: the caller side of a conversation.
async fn line(
    sentence: Arc<Vec<i16>>,
    turns: usize,
    inbound: mpsc::Sender<Vec<i16>>,
    mut outbound: mpsc::Receiver<Vec<i16>>,
    mut control: mpsc::Receiver<CallControl>,
    answered: Instant,
) -> Line {
    let last_loud = sentence.chunks(FRAME_SAMPLES).rposition(loud).unwrap_or(0);
    let mut out = Line::default();
    let mut caller = Caller::Listening { heard_agent: false };
    let mut agent_quiet_since = answered;
    let mut said = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let start = tick.tick().await;
    // A long silence from the agent ends the run (a turn it never answered).
    let give_up = Duration::from_secs(20);
    for n in 1u64.. {
        let scheduled = start + Duration::from_millis(20 * n);
        let now = tick.tick().await;
        let late = Instant::now().saturating_duration_since(scheduled);
        out.ticks += 1;
        if late > Duration::from_millis(5) {
            out.late_ticks += 1;
        }
        out.max_late_ms = out.max_late_ms.max(late.as_secs_f64() * 1000.0);
        while let Ok(c) = control.try_recv() {
            match c {
                CallControl::FlushAudio => while outbound.try_recv().is_ok() {},
                CallControl::Hangup => return out,
                _ => {}
            }
        }
        // Playout: one frame per tick.
        let agent_loud = outbound.try_recv().map(|f| loud(&f)).unwrap_or(false);
        if agent_loud {
            if out.answer_to_first_word_ms.is_none() {
                out.answer_to_first_word_ms = Some(ms(now - answered));
            }
            agent_quiet_since = now;
        }
        let frame = match &mut caller {
            Caller::Listening { heard_agent } => {
                *heard_agent |= agent_loud;
                if *heard_agent && now - agent_quiet_since >= Duration::from_millis(600) {
                    if said == turns {
                        return out;
                    }
                    caller = Caller::Speaking { at: 0 };
                }
                if now - agent_quiet_since > give_up {
                    return out;
                }
                None
            }
            Caller::Speaking { at } => {
                let i = *at;
                *at += 1;
                let from = i * FRAME_SAMPLES;
                let f = sentence
                    .get(from..(from + FRAME_SAMPLES).min(sentence.len()))
                    .map(|s| s.to_vec());
                if i == last_loud {
                    caller = Caller::Awaiting { said_at: now };
                    said += 1;
                }
                f
            }
            Caller::Awaiting { said_at } => {
                if agent_loud {
                    out.voice_to_voice_ms.push(ms(now - *said_at));
                    caller = Caller::Listening { heard_agent: true };
                } else if now - *said_at > give_up {
                    return out;
                }
                None
            }
        };
        let mut frame = frame.unwrap_or_default();
        frame.resize(FRAME_SAMPLES, 0);
        if inbound.send(frame).await.is_err() {
            return out;
        }
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

pub async fn run(args: Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let sentence = Arc::new(caller_voice::heard_on_the_phone(
        "Yes, I can pay by Friday.",
        dir.path(),
    ));
    let (stt, sidecars, pids): (Arc<dyn SpeechToText>, usize, Vec<u32>) = match args.stt {
        Stt::Pocketsphinx => {
            let stt = PocketSphinx::new(PocketSphinxConfig {
                python: args.python.clone(),
                sidecars: args.sidecars.unwrap_or_else(agent::stt::default_sidecars),
                ..Default::default()
            });
            stt.warm_up().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let (n, pids) = (stt.sidecars(), stt.idle_pids());
            (Arc::new(stt), n, pids)
        }
        Stt::Whisper => {
            let n = args.sidecars.unwrap_or(1);
            let stt = Whisper::new(agent::SidecarConfig {
                python: args.python.clone(),
                processes: n,
                ..Whisper::config()
            });
            stt.warm_up().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let pids = stt.pids().await;
            (Arc::new(stt), n, pids)
        }
    };
    let sidecar_pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    let tts: Arc<dyn TextToSpeech> = Arc::new(EspeakNg::default());
    let cfg = Arc::new(agent(args.end_of_turn_ms)?);
    let params = vec![Parameter {
        name: "customer_name".into(),
        value: "Rahul".into(),
    }];
    let opening_text = agent::render(cfg.first_message.as_deref().unwrap_or(""), &params);
    let (stop_jobs, jobs_stop) = tokio::sync::watch::channel(false);
    let jobs =
        transcription_load(args.transcription_jobs, &args.python, dir.path(), jobs_stop).await?;
    let cpu_before: f64 =
        cpu_seconds("self") + sidecar_pids.iter().map(|p| cpu_seconds(p)).sum::<f64>();
    let wall = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.calls {
        let (sentence, stt, tts, cfg, params, opening_text) = (
            sentence.clone(),
            stt.clone(),
            tts.clone(),
            cfg.clone(),
            params.clone(),
            opening_text.clone(),
        );
        let turns = args.turns;
        let delay = Duration::from_millis(args.stagger_ms * i as u64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // Synthesised while the phone "rings", as dispatch does.
            let audio = tts.synthesize(&opening_text, None).await.ok()?;
            let (in_tx, inbound) = mpsc::channel(50);
            let (outbound, out_rx) = mpsc::channel(50);
            let (control, ctl_rx) = mpsc::channel(8);
            let answered = Instant::now();
            let session = Session {
                trace_id: format!("bench-{i}"),
                brain: Box::new(FlowBrain::new(&cfg, &params, None)),
                tts: tts.clone(),
                stt,
                voice: None,
                disclosure: None,
                opening: Some(Opening {
                    text: opening_text,
                    audio,
                }),
                answered_at: answered,
                answered_at_ms: 0,
                timing: Timing::for_agent(&cfg),
                voicemail: None,
                transfer: None,
            };
            let caller = tokio::spawn(line(sentence, turns, in_tx, out_rx, ctl_rx, answered));
            let outcome: ConversationOutcome =
                converse(session, MediaStream::new(inbound, outbound).0, control).await;
            let line = caller.await.ok()?;
            Some((line, outcome))
        }));
    }
    let mut v2v = Vec::new();
    // Each call's first turn apart: a model loaded on first use would show here.
    let (mut first_turns, mut later_turns) = (Vec::new(), Vec::new());
    let mut runtime_v2v = Vec::new();
    let mut added = Vec::new();
    let mut first_word = Vec::new();
    let (mut ticks, mut late, mut max_late) = (0u64, 0u64, 0f64);
    let (mut understood, mut turns) = (0usize, 0usize);
    for t in tasks {
        let Some((line, outcome)) = t.await? else {
            anyhow::bail!("a conversation failed to start");
        };
        v2v.extend(&line.voice_to_voice_ms);
        if let Some((first, later)) = line.voice_to_voice_ms.split_first() {
            first_turns.push(*first);
            later_turns.extend(later);
        }
        first_word.extend(line.answer_to_first_word_ms);
        ticks += line.ticks;
        late += line.late_ticks;
        max_late = max_late.max(line.max_late_ms);
        for turn in &outcome.turns {
            runtime_v2v.push(turn.voice_to_voice_ms as f64);
            added.push(turn.added_us as f64 / 1000.0);
        }
        turns += args.turns;
        understood += outcome
            .transcript
            .iter()
            .filter(|l| {
                l.role == domain::call::Speaker::Human
                    && l.message.to_lowercase().contains("friday")
            })
            .count();
        if outcome.results.get("intent").is_none() {
            eprintln!(
                "a conversation ended without the intent: {:?}",
                outcome.transcript
            );
        }
    }
    let wall = wall.elapsed().as_secs_f64();
    let _ = stop_jobs.send(true);
    let mut files = 0;
    for j in jobs {
        files += j.await.unwrap_or(0);
    }
    if args.transcription_jobs > 0 {
        println!(
            "beside {} transcription jobs (1 thread, nice 10 each), which finished {files} files (the corpus' English sentences four times over)",
            args.transcription_jobs
        );
    }
    let cpu_after: f64 =
        cpu_seconds("self") + sidecar_pids.iter().map(|p| cpu_seconds(p)).sum::<f64>();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "calls {} x {} turns, {} x {}, end of turn {} ms, wall {:.1} s, load {}",
        args.calls,
        args.turns,
        sidecars,
        format!("{:?}", args.stt).to_lowercase(),
        args.end_of_turn_ms,
        wall,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "voice-to-voice at the line (last loud caller frame -> first loud agent frame): p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms ({} turns answered of {})",
        quantile(&mut v2v.clone(), 0.5),
        quantile(&mut v2v.clone(), 0.95),
        quantile(&mut v2v, 0.99),
        runtime_v2v.len(),
        turns
    );
    println!(
        "voice-to-voice at the line, each call's first turn: p50 {:.0} ms ({} turns); later turns: p50 {:.0} ms ({} turns)",
        quantile(&mut first_turns.clone(), 0.5),
        first_turns.len(),
        quantile(&mut later_turns.clone(), 0.5),
        later_turns.len()
    );
    println!(
        "voice-to-voice as the runtime records it (last VAD speech frame -> reply queued): p50 {:.0} ms, p95 {:.0} ms",
        quantile(&mut runtime_v2v.clone(), 0.5),
        quantile(&mut runtime_v2v, 0.95)
    );
    println!(
        "our added time per turn (excl. recogniser and synthesiser): p50 {:.2} ms, p99 {:.2} ms",
        quantile(&mut added.clone(), 0.5),
        quantile(&mut added, 0.99)
    );
    println!(
        "answer to first word: p50 {:.0} ms, p99 {:.0} ms",
        quantile(&mut first_word.clone(), 0.5),
        quantile(&mut first_word, 0.99)
    );
    println!(
        "turns understood (\"friday\" heard): {understood} of {turns}; line ticks > 5 ms late: {:.2} % (max {:.1} ms)",
        100.0 * late as f64 / ticks.max(1) as f64,
        max_late
    );
    println!(
        "CPU (this process + sidecars): {:.2} cores over the run, {:.1} ms per call-second",
        (cpu_after - cpu_before) / wall,
        1000.0 * (cpu_after - cpu_before) / (wall * args.calls as f64)
    );
    Ok(())
}
