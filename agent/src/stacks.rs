//! Stack dumps on demand: a worker thread that dumps every process of an engine when
//! the agent asks (an engine turned stalled, an incident opened, a follow-up), and the
//! `hangwatch stacks` command.

use crate::cli::now_ms;
use anyhow::Context;
use clap::Args;
use hangwatch_collectors::stacks::{dump_all, render, Target};
use hangwatch_collectors::{NodeCollector, ProcRoot};
use hangwatch_rules::stacks::StackDump;
use hangwatch_rules::{EngineFacts, Millis, ProcState};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

/// One round of dumps of one engine.
#[derive(Clone, Debug, Serialize)]
pub struct StackRound {
    pub engine: String,
    /// `suspect`, `confirm`, `followup` or `baseline`.
    pub reason: String,
    pub requested_at_ms: Millis,
    pub dumps: Vec<StackDump>,
    /// Process titles by pid, for the text files.
    pub titles: Vec<(u32, String)>,
    /// NCCL RAS's answer, asked in the same round on GPU nodes.
    pub ras: Option<hangwatch_collectors::nccl_ras::RasAnswer>,
}

/// One round of on-demand evidence: stacks, and NCCL RAS when `ras_addr` is set.
pub struct StackRequest {
    pub engine: String,
    pub reason: String,
    pub targets: Vec<Target>,
    pub titles: Vec<(u32, String)>,
    pub ras_addr: Option<String>,
}

/// Who to dump for an engine: the engine core, then every rank.
pub fn targets_of(e: &EngineFacts) -> (Vec<Target>, Vec<(u32, String)>) {
    let stopped = |s: ProcState| matches!(s, ProcState::Stopped | ProcState::TracingStop);
    let mut t = vec![Target {
        pid: e.core.pid,
        rank: None,
        stopped: stopped(e.core.state),
    }];
    let mut titles = vec![(e.core.pid, "VLLM::EngineCore".to_string())];
    for r in &e.ranks {
        if r.process.state == ProcState::Gone {
            continue;
        }
        t.push(Target {
            pid: r.process.pid,
            rank: Some(r.rank),
            stopped: stopped(r.process.state),
        });
        titles.push((r.process.pid, r.title.clone()));
    }
    (t, titles)
}

/// Runs rounds one after another; a slow round never blocks the tick loop.
pub fn spawn_worker(
    native: bool,
    limit: Duration,
    ras_timeout: Duration,
) -> anyhow::Result<(mpsc::Sender<StackRequest>, mpsc::Receiver<StackRound>)> {
    let (req_tx, req_rx) = mpsc::channel::<StackRequest>();
    let (out_tx, out_rx) = mpsc::channel::<StackRound>();
    std::thread::Builder::new()
        .name("stacks".into())
        .spawn(move || {
            while let Ok(r) = req_rx.recv() {
                let requested_at_ms = now_ms();
                let ras = r
                    .ras_addr
                    .as_deref()
                    .map(|a| hangwatch_collectors::nccl_ras::query(a, ras_timeout));
                let dumps = if r.targets.is_empty() {
                    Vec::new()
                } else {
                    dump_all(&r.targets, native, limit)
                };
                let round = StackRound {
                    engine: r.engine,
                    reason: r.reason,
                    requested_at_ms,
                    dumps,
                    titles: r.titles,
                    ras,
                };
                if out_tx.send(round).is_err() {
                    break;
                }
            }
        })
        .context("starting the stacks thread")?;
    Ok((req_tx, out_rx))
}

pub fn title_of(titles: &[(u32, String)], pid: u32) -> String {
    titles
        .iter()
        .find(|(p, _)| *p == pid)
        .map(|(_, t)| t.clone())
        .unwrap_or_else(|| "?".to_string())
}

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

pub fn stacks_cmd(a: StacksArgs) -> anyhow::Result<ExitCode> {
    let limit =
        crate::config::parse_duration(&a.timeout).map_err(|m| anyhow::anyhow!("--timeout: {m}"))?;
    if a.native && !hangwatch_collectors::stacks::NATIVE_SUPPORTED {
        eprintln!("hangwatch: this build has no native stacks (feature native-stacks); taking Python stacks");
    }
    let mut collector = NodeCollector::new(ProcRoot::new(&a.proc_root));
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
        denied |= dumps
            .iter()
            .any(|d| d.error.as_ref().is_some_and(|x| x.kind == "permission"));
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
