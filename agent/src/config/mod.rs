//! The agent's configuration: TOML file, then `HANGWATCH_<KEY>` environment variables,
//! then command-line flags, each overriding the one before. Every key has a default;
//! an unknown key or a bad value stops start-up with the file, line and key named.

use serde::{Deserialize, Deserializer, Serialize};
pub mod actions;
pub mod alerts;
mod env;
mod flags;
pub mod http;
pub mod peers;

pub use flags::{load, Flags};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/hangwatch/hangwatch.toml";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP server (`/metrics`, `/healthz`).
    pub listen: SocketAddr,
    /// Where incident bundles are written.
    pub bundle_dir: PathBuf,
    /// Time between two looks at the node.
    #[serde(with = "dur")]
    pub interval: Duration,
    /// The host's `/proc` (a container may mount it elsewhere, e.g. `/host/proc`).
    pub proc_root: PathBuf,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Append every snapshot to this file as JSON lines (for `hangwatch replay`).
    #[serde(with = "opt_path")]
    pub record: Option<PathBuf>,
    /// Watch only engines whose id matches one of these (`*` and `?` wildcards); empty:
    /// every engine on the node.
    pub engines: Vec<String>,
    /// At most this many engines are watched (any user can start processes titled like
    /// an engine core); real ones — under a `vllm serve` or mapping a ring — first.
    pub max_engines: usize,
    /// How long the agent keeps snapshots in memory (they go into bundles).
    #[serde(with = "dur")]
    pub history: Duration,
    pub judge: JudgeConfig,
    pub bundles: BundleConfig,
    pub stacks: StacksConfig,
    pub logs: LogsConfig,
    pub vllm_metrics: VllmMetricsConfig,
    pub gpu: GpuConfig,
    pub nccl_ras: NcclRasConfig,
    pub alerts: alerts::AlertsConfig,
    pub kubernetes: KubernetesConfig,
    pub http: http::HttpConfig,
    pub peers: peers::PeersConfig,
    pub actions: actions::ActionsConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// The kubelet's pod log folder (`<namespace>_<pod>_<uid>/`): where an engine's pod
    /// name and namespace are found from the pod UID in its cgroup.
    pub pod_log_dir: PathBuf,
    /// Reach an engine's loopback services (vLLM `/metrics`, NCCL RAS) inside its own
    /// network namespace (a pod) by entering it from a short-lived thread; needs
    /// CAP_SYS_ADMIN. Off: such engines are judged without them (said once).
    pub enter_network_namespaces: bool,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            pod_log_dir: PathBuf::from("/var/log/pods"),
            enter_network_namespaces: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Read every GPU through NVML each tick (absent NVML: said once, then ignored).
    pub enabled: bool,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig { enabled: true }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NcclRasConfig {
    /// Ask NCCL RAS (the engine's NCCL_RAS_ADDR, else 127.0.0.1:28028) while an engine
    /// is suspected, on nodes with GPUs.
    pub enabled: bool,
    #[serde(with = "dur")]
    pub timeout: Duration,
    /// Also ask an `NCCL_RAS_ADDR` that is not on loopback. Off: an engine's environment
    /// is anyone's to write, and a root daemon must not be sent to connect anywhere.
    pub allow_remote: bool,
}

impl Default for NcclRasConfig {
    fn default() -> Self {
        NcclRasConfig {
            enabled: true,
            timeout: Duration::from_secs(1),
            allow_remote: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Follow each engine's stdout/stderr when they are files, and the paths below.
    pub enabled: bool,
    /// Plain log files or globs (`/var/log/vllm/*.log`).
    pub paths: Vec<String>,
    /// Kubernetes container logs in CRI format (`/var/log/pods/*/vllm/*.log`).
    pub cri_paths: Vec<String>,
    /// journald units to follow (`journalctl -u`), e.g. `vllm.service`.
    pub journald_units: Vec<String>,
    /// journald syslog identifiers to follow (`journalctl -t`).
    pub journald_identifiers: Vec<String>,
    /// Longer lines are cut (and counted).
    pub max_line_bytes: usize,
    /// Bytes read per source and tick at most; a burst is read over several ticks.
    #[serde(deserialize_with = "bytes")]
    pub max_bytes_per_tick: u64,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            enabled: true,
            paths: Vec::new(),
            cri_paths: Vec::new(),
            journald_units: Vec::new(),
            journald_identifiers: Vec::new(),
            max_line_bytes: 64 * 1024,
            max_bytes_per_tick: 8 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VllmMetricsConfig {
    /// Scrape each engine's own `/metrics` (API port, loopback) every tick.
    pub enabled: bool,
    #[serde(with = "dur")]
    pub timeout: Duration,
}

impl Default for VllmMetricsConfig {
    fn default() -> Self {
        VllmMetricsConfig {
            enabled: true,
            timeout: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StacksConfig {
    /// Dump Python stacks of a suspected engine's processes (needs CAP_SYS_PTRACE or root).
    pub enabled: bool,
    /// Blocking dumps with native frames (pauses the process briefly; needs a build with
    /// the `native-stacks` feature). Stopped processes are always dumped non-blocking.
    pub native: bool,
    /// Bound on one round of dumps (all processes of an engine in parallel).
    #[serde(with = "dur")]
    pub timeout: Duration,
    /// A round this long after the incident opened, and another at three times it, to
    /// show whether stacks moved.
    #[serde(with = "dur")]
    pub followup_after: Duration,
    /// Dump every engine this often even when healthy (`0s`: never).
    #[serde(with = "dur")]
    pub baseline_interval: Duration,
}

impl Default for StacksConfig {
    fn default() -> Self {
        StacksConfig {
            enabled: true,
            native: false,
            timeout: Duration::from_secs(2),
            followup_after: Duration::from_secs(5),
            baseline_interval: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeConfig {
    /// Lag after which a rank is suspected.
    #[serde(with = "dur")]
    pub suspect_after: Duration,
    /// Lag after which an incident opens.
    #[serde(with = "dur")]
    pub confirm_after: Duration,
    /// New lags must exceed this × the longest lag the engine recovered from lately.
    pub adapt_factor: f64,
    /// A never-idle engine younger than this is still starting and not judged.
    #[serde(with = "dur")]
    pub startup_grace: Duration,
    /// A step with every rank at work for longer than this opens a `long_step` warning;
    /// `0s`: the smaller of 120 s and 40 % of the engine's execute timeout.
    #[serde(with = "dur")]
    pub long_step_limit: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BundleConfig {
    /// Most bundles kept; the oldest go first.
    pub max_count: usize,
    /// Most bytes all bundles may take together; the oldest go first.
    #[serde(deserialize_with = "bytes")]
    pub max_total_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9477)),
            bundle_dir: PathBuf::from("/var/lib/hangwatch/bundles"),
            interval: Duration::from_secs(1),
            proc_root: PathBuf::from("/proc"),
            log_format: LogFormat::Text,
            record: None,
            engines: Vec::new(),
            max_engines: 64,
            history: Duration::from_secs(300),
            judge: JudgeConfig::default(),
            bundles: BundleConfig::default(),
            stacks: StacksConfig::default(),
            logs: LogsConfig::default(),
            vllm_metrics: VllmMetricsConfig::default(),
            gpu: GpuConfig::default(),
            nccl_ras: NcclRasConfig::default(),
            alerts: alerts::AlertsConfig::default(),
            kubernetes: KubernetesConfig::default(),
            http: http::HttpConfig::default(),
            peers: peers::PeersConfig::default(),
            actions: actions::ActionsConfig::default(),
        }
    }
}

impl Default for JudgeConfig {
    fn default() -> Self {
        let t = hangwatch_rules::Thresholds::default();
        JudgeConfig {
            suspect_after: Duration::from_millis(t.suspect_after_ms as u64),
            confirm_after: Duration::from_millis(t.confirm_after_ms as u64),
            adapt_factor: t.adapt_factor,
            startup_grace: Duration::from_millis(t.startup_grace_ms as u64),
            long_step_limit: Duration::from_millis(t.long_step_limit_ms as u64),
        }
    }
}

impl Default for BundleConfig {
    fn default() -> Self {
        BundleConfig {
            max_count: 100,
            max_total_bytes: 1 << 30,
        }
    }
}

impl JudgeConfig {
    pub fn thresholds(&self) -> hangwatch_rules::Thresholds {
        hangwatch_rules::Thresholds {
            suspect_after_ms: self.suspect_after.as_millis() as i64,
            confirm_after_ms: self.confirm_after.as_millis() as i64,
            adapt_factor: self.adapt_factor,
            startup_grace_ms: self.startup_grace.as_millis() as i64,
            long_step_limit_ms: self.long_step_limit.as_millis() as i64,
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path`; a missing file means defaults only when `must_exist` is false (the
    /// default path), an explicitly named file must exist.
    pub fn load(path: &Path, must_exist: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => String::new(),
            Err(e) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source: e,
                })
            }
        };
        Config::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: describe_toml_error(text, &e),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.interval < Duration::from_millis(50) {
            return bad("interval: must be at least 50ms");
        }
        if self.judge.confirm_after < self.judge.suspect_after {
            return bad("judge.confirm_after: must not be shorter than judge.suspect_after");
        }
        if !(1.0..=100.0).contains(&self.judge.adapt_factor) {
            return bad("judge.adapt_factor: must be between 1 and 100");
        }
        if self.stacks.timeout < Duration::from_millis(100) {
            return bad("stacks.timeout: must be at least 100ms");
        }
        if self.logs.max_line_bytes < 256 {
            return bad("logs.max_line_bytes: must be at least 256");
        }
        if self.bundles.max_count == 0 {
            return bad("bundles.max_count: must be at least 1");
        }
        self.alerts.validate()?;
        self.actions.validate()
    }
}

/// toml's message names the key and quotes the line; make sure the line number is in
/// the first words a person reads.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let key = text
                .lines()
                .nth(line - 1)
                .and_then(|l| l.split('=').next())
                .map(|k| k.trim().trim_start_matches('[').trim_end_matches(']'))
                .unwrap_or("");
            format!("line {line}, key `{key}`: {msg}")
        }
        None => msg,
    }
}

pub fn parse_duration(v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v.trim()).map_err(|e| {
        format!("{v:?} is not a duration ({e}); write it like \"1s\", \"500ms\" or \"2m\"")
    })
}

/// `1073741824`, `512MiB`, `1GiB`, `500MB`.
pub fn parse_bytes(v: &str) -> Result<u64, String> {
    let t = v.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{v:?} is not a size like 512MiB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024f64.powi(4),
        other => return Err(format!("{v:?}: unknown unit {other:?}")),
    };
    Ok((n * mult) as u64)
}

fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        N(u64),
        S(String),
    }
    match B::deserialize(d)? {
        B::N(n) => Ok(n),
        B::S(s) => parse_bytes(&s).map_err(serde::de::Error::custom),
    }
}

/// An unset path is written as `""` (so that every key shows in `--check-config` and
/// has its environment variable), and `""` reads as unset.
mod opt_path {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::path::PathBuf;

    pub fn serialize<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(
            &p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        let s = String::deserialize(d)?;
        Ok((!s.is_empty()).then(|| PathBuf::from(s)))
    }
}

/// Durations are written as text (`"1s"`, `"500ms"`), as operators write them.
mod dur {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::parse("", "x.toml").unwrap(), Config::default());
    }

    #[test]
    fn values_parse() {
        let c = Config::parse(
            "interval = \"500ms\"\nlisten = \"0.0.0.0:9000\"\n[judge]\nsuspect_after = \"2s\"\n[bundles]\nmax_total_bytes = \"2GiB\"\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.judge.suspect_after, Duration::from_secs(2));
        assert_eq!(c.bundles.max_total_bytes, 2 << 30);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = Config::parse("interval = \"1s\"\n\nbogus_key = 3\n", "/etc/h.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/h.toml"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("bogus_key"), "{e}");
    }

    #[test]
    fn bad_value_names_line_and_key() {
        let e = Config::parse("[judge]\nsuspect_after = \"soon\"\n", "h.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("suspect_after"), "{e}");
        assert!(e.contains("not a duration"), "{e}");
    }

    #[test]
    fn inconsistent_thresholds_are_refused() {
        let e = Config::parse(
            "[judge]\nsuspect_after = \"20s\"\nconfirm_after = \"10s\"\n",
            "h.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("confirm_after"), "{e}");
    }
}
