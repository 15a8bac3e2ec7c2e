//! The command line: each command owns its arguments and its code, in its own file.

pub mod demo;
pub mod lint;
pub mod ras;
pub mod replay;
pub mod run;
pub mod stacks;
pub mod status;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hangwatch",
    version = crate::version::LONG,
    about = "Names the stuck rank of a vLLM engine within seconds"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Show every vLLM engine on this node: ranks, processes, rings.
    Status(status::StatusArgs),
    /// Run the agent: watch every engine, judge, export metrics, write bundles.
    Run(run::RunArgs),
    /// Judge a recording (`run --record FILE`) again and print the verdict time line.
    Replay(replay::ReplayArgs),
    /// Ask NCCL RAS for its status (which rank is behind) and print it.
    Ras(ras::RasArgs),
    /// Check every engine's environment for settings an operator would flag.
    Lint(lint::LintArgs),
    /// Dump the Python stacks of every engine's processes now.
    Stacks(stacks::StacksArgs),
    /// Start the vLLM simulator with a hang and watch hangwatch catch it.
    Demo(demo::DemoArgs),
}

impl Command {
    pub fn run(self) -> anyhow::Result<std::process::ExitCode> {
        match self {
            Command::Status(a) => status::run(a),
            Command::Run(a) => run::run(a),
            Command::Replay(a) => replay::run(a),
            Command::Demo(a) => demo::run(a),
            Command::Stacks(a) => stacks::run(a),
            Command::Lint(a) => lint::run(a),
            Command::Ras(a) => ras::run(a),
        }
    }
}
