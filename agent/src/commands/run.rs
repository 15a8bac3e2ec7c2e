//! `hangwatch run`: the agent.

use crate::config::alerts::shown_url;
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
    // Secrets are read now, so that a missing one stops start-up with its key named.
    let ready = match read_secrets(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hangwatch: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    if a.check_config {
        let mut shown = cfg.clone();
        for w in &mut shown.alerts.webhooks {
            w.url = shown_url(&w.url);
        }
        println!("# configuration OK; effective values (webhook URLs cut to their host):");
        print!("{}", toml::to_string(&shown).context("printing config")?);
        return Ok(ExitCode::SUCCESS);
    }
    logging::init(cfg.log_format);
    daemon::run(cfg, ready)?;
    Ok(ExitCode::SUCCESS)
}

/// Secrets and certificates, read before anything runs: a missing one stops start-up
/// with its key named.
fn read_secrets(cfg: &config::Config) -> anyhow::Result<daemon::Ready> {
    let receivers = cfg.alerts.receivers(|k| std::env::var(k).ok())?;
    let capture_token = cfg.http.capture_token()?;
    let peer_token = cfg.peers.token()?;
    let tls = match (&cfg.http.tls_cert_file, &cfg.http.tls_key_file) {
        (Some(c), Some(k)) => Some(crate::tls::acceptor(c, k)?),
        (None, None) => None,
        _ => anyhow::bail!("http.tls_cert_file and http.tls_key_file: set both or neither"),
    };
    Ok(daemon::Ready {
        receivers,
        capture_token,
        peer_token,
        tls,
    })
}
