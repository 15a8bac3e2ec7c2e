//! `hangwatch stacks`: every engine's Python stacks now, in py-spy's text layout or JSON.

use crate::clock::now_ms;
use clap::Args;
use hangwatch_collectors::evidence::{targets_of, title_of};
use hangwatch_collectors::stacks::{dump_all, render};
use hangwatch_collectors::{NodeLook, ProcRoot};
use hangwatch_rules::stacks::{StackDump, StackErrorKind};
use hangwatch_rules::EngineFacts;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct StacksArgs {
    /// Only this engine (an id from `hangwatch status`).
    #[arg(long)]
    pub engine: Option<String>,
    /// Print JSON instead of py-spy's text layout.
    #[arg(long)]
    pub json: bool,
    /// Blocking dumps with native frames (needs the native-stacks build).
    #[arg(long)]
    pub native: bool,
    /// Bound on the whole dump.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    #[arg(long, default_value = "/proc", env = "HANGWATCH_PROC_ROOT")]
    pub proc_root: PathBuf,
}

#[derive(Serialize)]
struct EngineStacks<'a> {
    id: &'a str,
    /// Wall time of the whole (parallel) dump of this engine.
    elapsed_seconds: f64,
    dumps: Vec<StackDump>,
}

pub fn run(a: StacksArgs) -> anyhow::Result<ExitCode> {
    let limit =
        crate::config::parse_duration(&a.timeout).map_err(|m| anyhow::anyhow!("--timeout: {m}"))?;
    if a.native && !hangwatch_collectors::stacks::NATIVE_SUPPORTED {
        eprintln!("hangwatch: this build has no native stacks (feature native-stacks); taking Python stacks");
    }
    let mut collector = NodeLook::new(ProcRoot::new(&a.proc_root));
    let got = collector.collect(now_ms());
    let engines: Vec<&EngineFacts> = got
        .engines
        .iter()
        .filter(|e| a.engine.as_deref().is_none_or(|id| id == e.id))
        .collect();
    if engines.is_empty() {
        match &a.engine {
            Some(id) => {
                eprintln!("hangwatch: no engine {id}");
                return Ok(ExitCode::from(1));
            }
            None => {
                println!("no vLLM engines found");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    let mut out = Vec::new();
    let mut denied = false;
    for e in engines {
        let (targets, titles) = targets_of(e);
        let started = std::time::Instant::now();
        let dumps = dump_all(&targets, a.native, limit);
        let elapsed_seconds = started.elapsed().as_secs_f64();
        denied |= dumps.iter().any(|d| {
            d.error
                .as_ref()
                .is_some_and(|x| x.kind == StackErrorKind::Permission)
        });
        if !a.json {
            println!("engine {}", e.id);
            for d in &dumps {
                let who = match d.rank {
                    Some(r) => format!("rank {r}, {}", title_of(&titles, d.pid)),
                    None => "engine core".to_string(),
                };
                print!("{}", render(d, &who));
            }
        }
        out.push(EngineStacks {
            id: &e.id,
            elapsed_seconds,
            dumps,
        });
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "engines": out }))?
        );
    }
    if denied {
        eprintln!("hangwatch: reading stacks needs CAP_SYS_PTRACE (or root)");
    }
    Ok(ExitCode::SUCCESS)
}
