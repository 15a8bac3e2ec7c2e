//! `hangwatch lint`: settings in each engine's environment an operator should fix.

use crate::clock::now_ms;
use clap::Args;
use hangwatch_collectors::{NodeLook, ProcRoot};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct LintArgs {
    /// Only this engine.
    #[arg(long)]
    pub engine: Option<String>,
    /// Print JSON: {"engines": [{"id": ..., "findings": [...]}]}.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "/proc", env = "HANGWATCH_PROC_ROOT")]
    pub proc_root: PathBuf,
}

pub fn run(a: LintArgs) -> anyhow::Result<ExitCode> {
    let snap = NodeLook::new(ProcRoot::new(&a.proc_root)).collect(now_ms());
    let engines: Vec<_> = snap
        .engines
        .iter()
        .filter(|e| a.engine.as_deref().is_none_or(|id| id == e.id))
        .collect();
    if let (Some(id), true) = (&a.engine, engines.is_empty()) {
        eprintln!("hangwatch: no engine {id}");
        return Ok(ExitCode::from(1));
    }
    let docs: Vec<serde_json::Value> = engines
        .iter()
        .map(|e| serde_json::json!({"id": e.id, "findings": hangwatch_rules::lint::lint(&e.settings)}))
        .collect();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "engines": docs }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if engines.is_empty() {
        println!("no vLLM engines found");
    }
    for e in engines {
        let f = hangwatch_rules::lint::lint(&e.settings);
        println!("engine {}: {} findings", e.id, f.len());
        for x in f {
            println!("  {:<7} {:<32} {}", x.severity, x.code, x.message);
            println!("          see {}", x.reference);
        }
    }
    Ok(ExitCode::SUCCESS)
}
