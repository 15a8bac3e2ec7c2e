//! `hangwatch run`: the agent.

use crate::config::{self, Flags};
use crate::{daemon, logging};
use anyhow::Context;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Clone, Default)]
pub struct RunArgs {
    #[command(flatten)]
    pub flags: Flags,
    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
}

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = match config::load(&a.flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hangwatch: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if a.check_config {
        println!("# configuration OK; effective values:");
        print!("{}", toml::to_string(&cfg).context("printing config")?);
        return Ok(ExitCode::SUCCESS);
    }
    logging::init(cfg.log_format);
    daemon::run(cfg)?;
    Ok(ExitCode::SUCCESS)
}
