//! `outdial-bench`: measurements behind docs/benchmarks.md. Every figure there comes from a
//! command of this binary, run on the machine the document names.

mod calls;
mod dispatch;

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
    /// Dispatch throughput and lag with a large backlog of pending calls.
    Dispatch(dispatch::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Calls(args) => rt.block_on(calls::run(args)),
        Command::Dispatch(args) => rt.block_on(dispatch::run(args)),
    }
}
