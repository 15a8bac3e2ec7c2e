//! hangwatch: names the stuck tensor-parallel rank of a vLLM engine within seconds,
//! captures the evidence while the processes are alive, and tells people.

mod actions;
mod bundle;
mod clock;
mod commands;
mod config;
mod context;
mod daemon;
mod limits;
mod logging;
mod metrics;
mod notify;
mod outputs;
mod peers;
mod ready;
mod record;
mod server;
mod shared;
mod status;
mod tls;
mod version;
mod window;

use clap::Parser;
use commands::Cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    match Cli::parse().command.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hangwatch: {e:#}");
            ExitCode::from(1)
        }
    }
}
