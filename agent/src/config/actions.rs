//! `[actions]`: what the agent does on a confirmed incident besides telling people —
//! run a command, or end the engine so that its supervisor restarts it. Off by default;
//! every action passes the guard rails of `docs/actions.md` first.

use super::{dur, ConfigError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ActionsConfig {
    /// Say (log, time line, metric) what would be done, and do nothing.
    pub dry_run: bool,
    /// The named suspect's confidence (0..1) an action needs; an engine-wide wedge that
    /// is confirmed needs none.
    pub min_confidence: f64,
    /// An incident younger than this is not acted on: its evidence is still being
    /// gathered, and a slow step may still end.
    #[serde(with = "dur")]
    pub min_age: Duration,
    /// At most one action per engine in this window: a restart that does not help must
    /// not become a restart loop.
    #[serde(with = "dur")]
    pub window: Duration,
    pub exec: ExecConfig,
    pub terminate: TerminateConfig,
}

impl Default for ActionsConfig {
    fn default() -> Self {
        ActionsConfig {
            dry_run: false,
            min_confidence: 0.8,
            min_age: Duration::from_secs(10),
            window: Duration::from_secs(15 * 60),
            exec: ExecConfig::default(),
            terminate: TerminateConfig::default(),
        }
    }
}

/// `[actions.exec]`: a command run with the incident as JSON on its standard input.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExecConfig {
    /// The program and its arguments, run as is (no shell); empty: off.
    pub command: Vec<String>,
    /// Killed (SIGKILL) when it runs longer.
    #[serde(with = "dur")]
    pub timeout: Duration,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            command: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// `[actions.terminate]`: SIGTERM to the engine's API server once the bundle is
/// complete, SIGKILL after `grace`; systemd's `Restart=` or Kubernetes restarts it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TerminateConfig {
    pub enabled: bool,
    #[serde(with = "dur")]
    pub grace: Duration,
}

impl Default for TerminateConfig {
    fn default() -> Self {
        TerminateConfig {
            enabled: false,
            grace: Duration::from_secs(10),
        }
    }
}

impl ActionsConfig {
    /// Any action configured at all.
    pub fn any(&self) -> bool {
        !self.exec.command.is_empty() || self.terminate.enabled
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return bad("actions.min_confidence: must be between 0 and 1");
        }
        if self
            .exec
            .command
            .first()
            .is_some_and(|p| p.trim().is_empty())
        {
            return bad("actions.exec.command: the program is empty");
        }
        if !self.exec.command.is_empty() && self.exec.timeout < Duration::from_millis(100) {
            return bad("actions.exec.timeout: must be at least 100ms");
        }
        Ok(())
    }
}
