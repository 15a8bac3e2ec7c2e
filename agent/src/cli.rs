//! The command line: `status`, `run`, `replay`, `demo`.

use crate::config::{self, Config, ConfigError, LogFormat};
use crate::{daemon, logging, status};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use hangwatch_collectors::{NodeCollector, ProcRoot};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hangwatch",
    version,
    about = "Names the stuck rank of a vLLM engine within seconds"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Show every vLLM engine on this node: ranks, processes, rings.
    Status(StatusArgs),
    /// Run the agent: watch every engine, judge, export metrics, write bundles.
    Run(RunArgs),
    /// Judge a recording (`run --record FILE`) again and print the verdict time line.
    Replay(crate::record::ReplayArgs),
    /// Ask NCCL RAS for its status (which rank is behind) and print it.
    Ras(RasArgs),
    /// Check every engine's environment for settings an operator would flag.
    Lint(LintArgs),
    /// Dump the Python stacks of every engine's processes now.
    Stacks(crate::stacks::StacksArgs),
    /// Start the vLLM simulator with a hang and watch hangwatch catch it.
    Demo(crate::demo::DemoArgs),
}

#[derive(Args)]
pub struct StatusArgs {
    /// Print JSON: {"engines": [...]}.
    #[arg(long)]
    pub json: bool,
    /// The host's /proc.
    #[arg(long, default_value = "/proc", env = "HANGWATCH_PROC_ROOT")]
    pub proc_root: PathBuf,
}

#[derive(Args)]
pub struct RasArgs {
    /// RAS address [default: NCCL_RAS_ADDR, else 127.0.0.1:28028].
    #[arg(long)]
    pub addr: Option<String>,
    /// Print the JSON status (default: NCCL's verbose text report, then hangwatch's reading).
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "2s")]
    pub timeout: String,
}

pub fn ras(a: RasArgs) -> anyhow::Result<ExitCode> {
    let timeout =
        config::parse_duration(&a.timeout).map_err(|m| anyhow::anyhow!("--timeout: {m}"))?;
    let addr = a
        .addr
        .or_else(|| std::env::var("NCCL_RAS_ADDR").ok())
        .unwrap_or_else(|| hangwatch_collectors::nccl_ras::DEFAULT_ADDR.to_string());
    let ans = hangwatch_collectors::nccl_ras::query(&addr, timeout);
    if let Some(e) = &ans.error {
        eprintln!("hangwatch: {e}");
        if ans.status.is_none() {
            return Ok(ExitCode::from(1));
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&ans.status)?);
    } else {
        print!("{}", ans.text);
        if let Some(s) = &ans.status {
            let n: usize = s.communicators.iter().map(|c| c.ranks.len()).sum();
            let reading = match hangwatch_rules::ras::ras_finding(s) {
                Some(hangwatch_rules::ras::RasFinding::Laggard {
                    pid,
                    op,
                    behind,
                    communicator,
                }) => format!("pid {pid} is {behind} {op} behind on communicator {communicator}"),
                Some(hangwatch_rules::ras::RasFinding::Desync { detail }) => {
                    format!("desync: {detail}")
                }
                None => "launch counts consistent".to_string(),
            };
            println!(
                "hangwatch: {} communicators, {n} ranks; {reading}",
                s.communicators.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

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

pub fn lint(a: LintArgs) -> anyhow::Result<ExitCode> {
    let mut collector = NodeCollector::new(ProcRoot::new(&a.proc_root));
    let got = collector.collect(now_ms());
    let engines: Vec<_> = got
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

#[derive(Args, Clone, Default)]
pub struct RunArgs {
    /// Config file (TOML). A missing default file means defaults.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address for /metrics and /healthz [default: 127.0.0.1:9477].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Where bundles are written [default: /var/lib/hangwatch/bundles].
    #[arg(long, value_name = "DIR")]
    pub bundle_dir: Option<PathBuf>,
    /// Time between two looks, like 1s or 500ms [default: 1s].
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,
    /// text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Append every snapshot to FILE as JSON lines.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
}

pub fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut collector = NodeCollector::new(ProcRoot::new(&a.proc_root));
    let now = now_ms();
    let got = collector.collect(now);
    if a.json {
        let doc = status::view(&got.engines);
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).context("encoding status")?
        );
    } else {
        print!("{}", status::render_text(&got.engines));
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds the effective configuration: file, then environment, then flags.
pub fn load_config(a: &RunArgs) -> Result<Config, ConfigError> {
    let (path, must_exist) = match &a.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_CONFIG_PATH), false),
    };
    let mut cfg = Config::load(&path, must_exist)?;
    cfg.apply_env(|k| std::env::var(k).ok())?;
    let flag = |name: &str, m: String| ConfigError::Invalid(format!("--{name}: {m}"));
    if let Some(v) = &a.listen {
        cfg.listen = v
            .parse()
            .map_err(|e| flag("listen", format!("{v:?}: {e}")))?;
    }
    if let Some(v) = &a.bundle_dir {
        cfg.bundle_dir = v.clone();
    }
    if let Some(v) = &a.interval {
        cfg.interval = config::parse_duration(v).map_err(|m| flag("interval", m))?;
    }
    if let Some(v) = &a.log_format {
        cfg.log_format = match v.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(flag("log-format", format!("{v:?}: expected text or json"))),
        };
    }
    if let Some(v) = &a.record {
        cfg.record = Some(v.clone());
    }
    cfg.validate()?;
    Ok(cfg)
}

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = match load_config(&a) {
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

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
