//! hangwatch: names the stuck tensor-parallel rank of a vLLM engine within seconds,
//! captures the evidence while the processes are alive, and tells people.

mod bundle;
mod cli;
mod config;
mod daemon;
mod demo;
mod logging;
mod metrics;
mod record;
mod server;
mod stacks;
mod status;

use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Status(a) => cli::status(a),
        Command::Run(a) => cli::run(a),
        Command::Replay(a) => record::replay_cmd(a),
        Command::Demo(a) => demo::run(a),
        Command::Stacks(a) => stacks::stacks_cmd(a),
        Command::Lint(a) => cli::lint(a),
        Command::Ras(a) => cli::ras(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hangwatch: {e:#}");
            ExitCode::from(1)
        }
    }
}
