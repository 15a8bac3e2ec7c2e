//! `[http]`: the API beside `/metrics` — `GET /status` (open to whoever can reach
//! `/metrics`) and `POST /capture` (a bundle on demand: it pauses nothing but costs a
//! stack round, so it needs a token and is rate-limited).

use super::alerts::{read_secret, Secret};
use super::{dur, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A file holding the bearer token `POST /capture` requires; unset: capture is off.
    #[serde(with = "super::opt_path")]
    pub capture_token_file: Option<PathBuf>,
    /// One capture per engine this often at most.
    #[serde(with = "dur")]
    pub capture_min_interval: Duration,
    /// Serve HTTPS with this certificate chain (PEM)…
    #[serde(with = "super::opt_path")]
    pub tls_cert_file: Option<PathBuf>,
    /// …and this private key (PEM). Both or neither.
    #[serde(with = "super::opt_path")]
    pub tls_key_file: Option<PathBuf>,
    /// Connections served at once; more wait in the kernel's backlog. Never more than
    /// half the descriptors left after a reserve for the agent's own reads.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            capture_token_file: None,
            capture_min_interval: Duration::from_secs(30),
            tls_cert_file: None,
            tls_key_file: None,
            max_connections: 128,
        }
    }
}

impl HttpConfig {
    /// The capture token, read now; an error names the key.
    pub fn capture_token(&self) -> Result<Option<Secret>, ConfigError> {
        read_secret(
            "http",
            "capture_token",
            &self.capture_token_file,
            "",
            &|_| None,
        )
    }
}
