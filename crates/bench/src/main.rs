//! `outdial-bench`: measurements behind docs/benchmarks.md. Every figure there comes from a
//! command of this binary, run on the machine the document names.

mod amd;
mod batch;
mod calls;
mod dispatch;
mod mixed;
mod pages;
mod server;
mod transcribe;
mod understand;
mod voice;
mod webhooks;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "outdial-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// POST /v1/call throughput and latency on the embedded default, beside the machine's
    /// SQLite durable-commit rate measured in the same run.
    Calls(calls::Args),
    /// POST /v1/call on a busy node: the real `outdial serve` dialling every call into a
    /// loopback SIPp answering 486 while another tenant uploads a large batch.
    Mixed(mixed::Args),
    /// A large CSV batch: upload time, peak memory, metrics latency.
    Batch(batch::Args),
    /// Deep pages of GET /v1/conversations at 1,000,000 conversations: the first page against
    /// deep ones, before and after the marking pass, and the pass's own cost.
    Pages(pages::Args),
    /// Dispatch throughput and lag with a large backlog of pending calls.
    Dispatch(dispatch::Args),
    /// Webhook delivery: a burst of events to a loopback receiver, events/s and
    /// enqueue-to-received latency, with and without a second target failing every attempt.
    Webhooks(webhooks::Args),
    /// The agent pipeline with the local engines on paced in-memory lines: voice-to-voice,
    /// answer-to-first-word, our own added time per turn, at `--calls` conversations at once.
    Voice(voice::Args),
    /// Understanding: a corpus of callee replies in many voices over impaired telephone lines,
    /// through each local recogniser and the flow brain's routes; intent accuracy, confusion
    /// matrix, "opposite intent" count and WER per engine.
    Understand(understand::Args),
    /// Answering-machine detection on a generated corpus of machine greetings and people
    /// answering: confusion matrix, people taken for machines, time to verdict.
    Amd(amd::Args),
    /// The transcription jobs' recogniser on call sentences in every job language spoken by
    /// espeak-ng: language detection, character error rate, real-time factor.
    Transcribe(transcribe::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Calls(args) => rt.block_on(calls::run(args)),
        Command::Batch(args) => rt.block_on(batch::run(args)),
        Command::Pages(args) => rt.block_on(pages::run(args)),
        Command::Mixed(args) => rt.block_on(mixed::run(args)),
        Command::Webhooks(args) => rt.block_on(webhooks::run(args)),
        Command::Dispatch(args) => rt.block_on(dispatch::run(args)),
        Command::Voice(args) => rt.block_on(voice::run(args)),
        Command::Understand(args) => rt.block_on(understand::run(args)),
        Command::Amd(args) => rt.block_on(amd::run(args)),
        Command::Transcribe(args) => rt.block_on(transcribe::run(args)),
    }
}
