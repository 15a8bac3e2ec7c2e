//! `hangwatch ras`: ask NCCL RAS which rank is behind; NCCL's report, then hangwatch's
//! reading of it.

use clap::Args;
use std::process::ExitCode;

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
    /// Ask inside this process's network namespace (a rank in a pod: RAS listens on the
    /// pod's loopback). Needs CAP_SYS_ADMIN.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
}

pub fn run(a: RasArgs) -> anyhow::Result<ExitCode> {
    let timeout =
        crate::config::parse_duration(&a.timeout).map_err(|m| anyhow::anyhow!("--timeout: {m}"))?;
    let addr = a
        .addr
        .or_else(|| std::env::var("NCCL_RAS_ADDR").ok())
        .unwrap_or_else(|| hangwatch_collectors::nccl_ras::DEFAULT_ADDR.to_string());
    let netns = a
        .pid
        .and_then(|p| hangwatch_collectors::netns::foreign_netns(std::path::Path::new("/proc"), p));
    let ans = hangwatch_collectors::nccl_ras::query(&addr, netns.as_deref(), timeout);
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
