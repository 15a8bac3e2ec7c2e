//! `hangwatch status`: every engine on the node now, as a table or as JSON.

use crate::clock::now_ms;
use crate::status;
use anyhow::Context;
use clap::Args;
use hangwatch_collectors::{NodeCollector, ProcRoot};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct StatusArgs {
    /// Print JSON: {"engines": [...]}.
    #[arg(long)]
    pub json: bool,
    /// The host's /proc.
    #[arg(long, default_value = "/proc", env = "HANGWATCH_PROC_ROOT")]
    pub proc_root: PathBuf,
}

pub fn run(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let snap = NodeCollector::new(ProcRoot::new(&a.proc_root)).collect(now_ms());
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
