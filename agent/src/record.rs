//! Record and replay: every snapshot as a JSON line, judged again later with the same
//! verdicts as live (the judge reads time only from the snapshots).

use crate::bundle::rfc3339;
use crate::cli::{load_config, RunArgs};
use anyhow::Context;
use clap::Args;
use hangwatch_rules::{IncidentTracker, Judge, Snapshot, Verdict};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub struct Recorder {
    path: PathBuf,
    out: BufWriter<File>,
    failed: bool,
}

impl Recorder {
    pub fn open(path: &Path) -> anyhow::Result<Recorder> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open recording {}", path.display()))?;
        Ok(Recorder {
            path: path.to_path_buf(),
            out: BufWriter::new(f),
            failed: false,
        })
    }

    /// A failing recording is logged once and never stops the agent.
    pub fn append(&mut self, s: &Snapshot) {
        let r = serde_json::to_writer(&mut self.out, s)
            .map_err(std::io::Error::other)
            .and_then(|()| self.out.write_all(b"\n"))
            .and_then(|()| self.out.flush());
        match r {
            Ok(()) => self.failed = false,
            Err(e) if !self.failed => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot append to recording");
                self.failed = true;
            }
            Err(_) => {}
        }
    }

    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

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

/// One line of the time line, the same words the live agent logs.
pub fn timeline_line(v: &Verdict) -> String {
    format!("{}  {}", rfc3339(v.at_ms), v.headline())
}

pub fn replay_cmd(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(&RunArgs {
        config: a.config.clone(),
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let f = File::open(&a.file).with_context(|| format!("cannot open {}", a.file.display()))?;
    let mut judge = Judge::new(cfg.judge.thresholds());
    let mut tracker = IncidentTracker::default();
    let mut last: BTreeMap<String, hangwatch_rules::EngineState> = BTreeMap::new();
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
        for v in judge.observe(&snap) {
            if last.get(&v.engine) != Some(&v.state) {
                if a.json {
                    writeln!(out, "{}", serde_json::to_string(&v)?)?;
                } else {
                    writeln!(out, "{}", timeline_line(&v))?;
                }
                last.insert(v.engine.clone(), v.state);
            }
            for ev in tracker.on_verdict(&v) {
                let i = ev.incident();
                if a.json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({"incident": ev.kind(), "id": i.id, "engine": i.engine,
                            "suspects": i.suspects.iter().map(|s| s.rank).collect::<Vec<_>>(),
                            "at": rfc3339(v.at_ms)})
                    )?;
                } else {
                    let ranks: Vec<String> =
                        i.suspects.iter().map(|s| s.rank.to_string()).collect();
                    writeln!(
                        out,
                        "{}  incident {} {} (suspect ranks: {})",
                        rfc3339(v.at_ms),
                        i.id,
                        ev.kind(),
                        if ranks.is_empty() {
                            "unknown".to_string()
                        } else {
                            ranks.join(",")
                        }
                    )?;
                }
            }
        }
    }
    if !a.json {
        writeln!(out, "{snapshots} snapshots judged")?;
    }
    Ok(ExitCode::SUCCESS)
}
