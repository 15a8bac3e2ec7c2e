//! `hangwatch replay`: judge a recording again with the live agent's own watch step and
//! print what the live agent said: every state change and every incident event.

use crate::clock::rfc3339;
use crate::config::{self, Flags};
use anyhow::Context;
use clap::Args;
use hangwatch_rules::watch::Watch;
use hangwatch_rules::{Role, Snapshot};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct ReplayArgs {
    /// A recording (`run --record FILE`) or a bundle's snapshots.jsonl.
    pub file: PathBuf,
    /// Print each verdict change as a JSON line.
    #[arg(long)]
    pub json: bool,
    /// Judge with the thresholds of this config file.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

pub fn run(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let cfg = config::load(&Flags {
        config: a.config.clone(),
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let f = File::open(&a.file).with_context(|| format!("cannot open {}", a.file.display()))?;
    let mut watch = Watch::new(cfg.judge.thresholds());
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut snapshots = 0usize;
    for (n, line) in BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", a.file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let snap: Snapshot = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a snapshot", a.file.display(), n + 1))?;
        snapshots += 1;
        for tick in watch.step(&snap) {
            let v = &tick.verdict;
            if tick.state_changed {
                if a.json {
                    writeln!(out, "{}", serde_json::to_string(v)?)?;
                } else {
                    writeln!(out, "{}  {}", rfc3339(v.at_ms), v.headline())?;
                }
            }
            for ev in &tick.events {
                let i = ev.incident();
                let ranks: Vec<u32> = i.suspects.iter().filter_map(|s| s.rank).collect();
                let roles: Vec<&str> = i.suspects.iter().map(|s| s.role.as_str()).collect();
                if a.json {
                    let mut doc = serde_json::json!({"incident": ev.kind(), "id": i.id,
                        "engine": i.engine, "suspects": ranks, "at": rfc3339(v.at_ms)});
                    // Roles only where a suspect is no worker: older lines stay as they were.
                    if roles.iter().any(|r| *r != "worker") {
                        doc["roles"] = serde_json::json!(roles);
                    }
                    writeln!(out, "{doc}")?;
                } else {
                    let names: Vec<String> = i
                        .suspects
                        .iter()
                        .map(|s| match s.rank {
                            Some(r) if s.role == Role::Worker => r.to_string(),
                            _ => s.who().replace(' ', "_"),
                        })
                        .collect();
                    let names = if names.is_empty() {
                        "unknown".to_string()
                    } else {
                        names.join(",")
                    };
                    let line = format!("incident {} {} (suspect ranks: {names})", i.id, ev.kind());
                    writeln!(out, "{}  {line}", rfc3339(v.at_ms))?;
                }
            }
        }
    }
    if !a.json {
        writeln!(out, "{snapshots} snapshots judged")?;
    }
    Ok(ExitCode::SUCCESS)
}
