//! `hangwatch status`: every engine on the node now, as a table or as JSON.

use crate::clock::now_ms;
use crate::config::{self, Flags};
use crate::status;
use anyhow::Context;
use clap::Args;
use hangwatch_collectors::NodeLook;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct StatusArgs {
    /// Print JSON: {"engines": [...]}.
    #[arg(long)]
    pub json: bool,
    /// The agent's config file: its `engines`, `proc_root` and `kubernetes.pod_log_dir`
    /// say what to show, so that this answer matches the agent's (a missing default
    /// file means defaults).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The host's /proc [default: the configuration's `proc_root`, /proc].
    #[arg(long, value_name = "DIR")]
    pub proc_root: Option<PathBuf>,
}

pub fn run(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = match config::load(&Flags {
        config: a.config,
        ..Flags::default()
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hangwatch: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if let Some(p) = a.proc_root {
        cfg.proc_root = p;
    }
    let (discovery, rings) = crate::daemon::agent::watched_engines(&cfg);
    let snap = NodeLook::of(discovery, rings).collect(now_ms());
    if a.json {
        let doc = status::view(&snap.engines);
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).context("encoding status")?
        );
    } else {
        print!("{}", status::render_text(&snap.engines));
    }
    Ok(ExitCode::SUCCESS)
}
