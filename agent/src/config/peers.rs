//! `[peers]`: the agents of one deployment across nodes compare notes
//! (`docs/multi-node.md`, "Peers"). Off until a shared token is set: every node's agent
//! of a deployment reads the same token; a follower reports to its leader's agent.

use super::alerts::{read_secret, Secret};
use super::{dur, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PeersConfig {
    /// A file holding the token every agent of the deployment shares; unset: off.
    #[serde(with = "super::opt_path")]
    pub token_file: Option<PathBuf>,
    /// The leader node's agent, `host:port`; empty: the deployment's master address
    /// (`--master-addr`) and this agent's own port.
    pub leader_agent: String,
    /// How often a follower reports while its part has work; idle, every 10 s.
    #[serde(with = "dur")]
    pub report_interval: Duration,
}

impl Default for PeersConfig {
    fn default() -> Self {
        PeersConfig {
            token_file: None,
            leader_agent: String::new(),
            report_interval: Duration::from_secs(1),
        }
    }
}

impl PeersConfig {
    /// The shared token, read now; an error names the key.
    pub fn token(&self) -> Result<Option<Secret>, ConfigError> {
        read_secret("peers", "token", &self.token_file, "", &|_| None)
    }
}
