//! The effective configuration: the file, then the environment, then the flags.

use super::{parse_duration, Config, ConfigError, LogFormat, DEFAULT_CONFIG_PATH};
use clap::Args;
use std::path::PathBuf;

/// The flags of `hangwatch run` that override configuration keys.
#[derive(Args, Clone, Default)]
pub struct Flags {
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
}

/// Builds the effective configuration: file, then environment, then flags.
pub fn load(a: &Flags) -> Result<Config, ConfigError> {
    let (path, must_exist) = match &a.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
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
        cfg.interval = parse_duration(v).map_err(|m| flag("interval", m))?;
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
