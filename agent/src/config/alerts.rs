//! `[alerts]`: who is told when an incident opens, escalates, resolves or ends with the
//! engine's death. Secrets (bearer tokens, signing keys) live in files or in the agent's
//! environment, never in the configuration itself, so the file can be shown, diffed and
//! kept in a ConfigMap; they are read once at start-up, and a missing one stops it.

use super::{dur, ConfigError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Receivers, each told of every incident event.
    pub webhooks: Vec<WebhookConfig>,
    /// Where undelivered notifications wait (one folder per receiver), so that a
    /// receiver outage or an agent restart loses nothing.
    pub queue_dir: PathBuf,
    /// Most notifications kept per receiver; past that the oldest are dropped (counted).
    pub queue_max: usize,
    /// Escalations of one incident are sent at most this often (the latest one wins).
    #[serde(with = "dur")]
    pub escalate_every: Duration,
    /// An open incident is posted to Alertmanager again this often, so it keeps firing.
    #[serde(with = "dur")]
    pub repeat_every: Duration,
    /// Longest wait between two tries of one notification (backoff doubles up to it).
    #[serde(with = "dur")]
    pub retry_max: Duration,
    /// The node's name in notifications; empty: the host name (`NODE_NAME` in a pod).
    pub node: String,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhooks: Vec::new(),
            queue_dir: PathBuf::from("/var/lib/hangwatch/notifications"),
            queue_max: 1000,
            escalate_every: Duration::from_secs(30),
            repeat_every: Duration::from_secs(60),
            retry_max: Duration::from_secs(60),
            node: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum HookFormat {
    /// hangwatch's own versioned JSON body (`docs/notifications.md`).
    #[default]
    Json,
    /// Slack's incoming-webhook body (`text` and `blocks`).
    Slack,
    /// Alertmanager's v2 API: the URL is Alertmanager's base (`http://am:9093`).
    Alertmanager,
}

impl HookFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            HookFormat::Json => "json",
            HookFormat::Slack => "slack",
            HookFormat::Alertmanager => "alertmanager",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// The receiver's name in metrics, logs and its queue folder; empty: `<format>-<n>`.
    pub name: String,
    pub url: String,
    pub format: HookFormat,
    #[serde(with = "dur")]
    pub timeout: Duration,
    /// A file whose content signs each body (HMAC-SHA256, header
    /// `X-Hangwatch-Signature-256`).
    #[serde(with = "super::opt_path")]
    pub secret_file: Option<PathBuf>,
    /// Or the name of an environment variable of the agent holding that key.
    pub secret_env: String,
    /// A file whose content is sent as `Authorization: Bearer …`.
    #[serde(with = "super::opt_path")]
    pub token_file: Option<PathBuf>,
    /// Or the name of an environment variable of the agent holding the token.
    pub token_env: String,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            name: String::new(),
            url: String::new(),
            format: HookFormat::Json,
            timeout: Duration::from_secs(5),
            secret_file: None,
            secret_env: String::new(),
            token_file: None,
            token_env: String::new(),
        }
    }
}

/// A credential read at start-up. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    #[cfg(test)]
    pub fn for_test(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A receiver ready to use: its configuration, its name, and its secrets read.
#[derive(Debug, Clone)]
pub struct Receiver {
    pub name: String,
    pub url: String,
    pub format: HookFormat,
    pub timeout: Duration,
    pub secret: Option<Secret>,
    pub token: Option<Secret>,
}

/// Largest secret file read: a key or a token, not a log.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

impl AlertsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.queue_max == 0 {
            return bad("alerts.queue_max: must be at least 1".into());
        }
        if self.escalate_every < Duration::from_secs(1)
            || self.repeat_every < Duration::from_secs(1)
        {
            return bad("alerts.escalate_every, alerts.repeat_every: at least 1s".into());
        }
        if self.retry_max < Duration::from_millis(100) {
            return bad("alerts.retry_max: must be at least 100ms".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let key = format!("alerts.webhooks[{i}]");
            match reqwest::Url::parse(&w.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                Ok(_) => return bad(format!("{key}.url: must be an http:// or https:// URL")),
                Err(e) => {
                    return bad(format!(
                        "{key}.url: {e} (write it like https://hooks.example/hangwatch)"
                    ))
                }
            }
            if w.timeout < Duration::from_millis(100) {
                return bad(format!("{key}.timeout: must be at least 100ms"));
            }
            let name = receiver_name(w, i);
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                || name.starts_with('.')
            {
                return bad(format!(
                    "{key}.name: letters, digits, '-', '_' and '.' only"
                ));
            }
            if !names.insert(name.clone()) {
                return bad(format!("{key}.name: {name:?} is used twice"));
            }
        }
        Ok(())
    }

    /// Every receiver with its secrets read; an error names the key.
    pub fn receivers<F>(&self, env: F) -> Result<Vec<Receiver>, ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let mut out = Vec::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let key = format!("alerts.webhooks[{i}]");
            let secret = read_secret(&key, "secret", &w.secret_file, &w.secret_env, &env)?;
            let token = read_secret(&key, "token", &w.token_file, &w.token_env, &env)?;
            if token.is_some() && in_clear_off_host(&w.url) {
                tracing::warn!(
                    receiver = %receiver_name(w, i),
                    url = %shown_url(&w.url),
                    "{key}: a bearer token goes to this receiver over plain http; use https"
                );
            }
            out.push(Receiver {
                name: receiver_name(w, i),
                url: w.url.clone(),
                format: w.format,
                timeout: w.timeout,
                secret,
                token,
            });
        }
        Ok(out)
    }
}

fn receiver_name(w: &WebhookConfig, i: usize) -> String {
    if w.name.is_empty() {
        format!("{}-{i}", w.format.as_str())
    } else {
        w.name.clone()
    }
}

pub(super) fn read_secret<F>(
    key: &str,
    what: &str,
    file: &Option<PathBuf>,
    var: &str,
    env: &F,
) -> Result<Option<Secret>, ConfigError>
where
    F: Fn(&str) -> Option<String>,
{
    let invalid = |m: String| ConfigError::Invalid(m);
    if file.is_some() && !var.is_empty() {
        return Err(invalid(format!(
            "{key}: set {what}_file or {what}_env, not both"
        )));
    }
    let text = if let Some(path) = file {
        let meta = std::fs::metadata(path)
            .map_err(|e| invalid(format!("{key}.{what}_file: {}: {e}", path.display())))?;
        if !meta.is_file() || meta.len() > MAX_SECRET_BYTES {
            return Err(invalid(format!(
                "{key}.{what}_file: {}: not a regular file of at most 64 KiB",
                path.display()
            )));
        }
        secret_file_mode(&meta)
            .map_err(|why| invalid(format!("{key}.{what}_file: {}: {why}", path.display())))?;
        std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("{key}.{what}_file: {}: {e}", path.display())))?
    } else if !var.is_empty() {
        env(var).ok_or_else(|| {
            invalid(format!(
                "{key}.{what}_env: the variable {var} is not set in the agent's environment"
            ))
        })?
    } else {
        return Ok(None);
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(invalid(format!("{key}.{what}: the {what} is empty")));
    }
    if t.contains(['\r', '\n']) && what.ends_with("token") {
        return Err(invalid(format!("{key}.{what}: a token is one line")));
    }
    Ok(Some(Secret(t.to_string())))
}

/// Whether a URL sends in the clear to another host (loopback is the node itself).
fn in_clear_off_host(url: &str) -> bool {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "http" => !matches!(
            u.host_str(),
            Some("localhost") | Some("127.0.0.1") | Some("[::1]") | Some("::1")
        ),
        _ => false,
    }
}

/// A secret someone else could have written is no secret of ours: the file must be
/// owned by root or the agent's user and writable by its owner alone. Readable by
/// others is said (Kubernetes mounts secrets 0644 unless told otherwise) but allowed.
fn secret_file_mode(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no failure mode.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "owned by uid {}, not by root or the agent's user",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "mode {:o}: writable by group or others (chmod go-w)",
            meta.mode() & 0o777
        ));
    }
    if meta.mode() & 0o004 != 0 {
        tracing::warn!(
            mode = format!("{:o}", meta.mode() & 0o777),
            "a secret file is readable by every user (chmod o-r)"
        );
    }
    Ok(())
}

/// A URL as it may be shown: Slack and many other receivers carry their credential in
/// the path or the query, so only the scheme, host and port are shown.
pub fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("?");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let rest = if u.path().len() > 1 || u.query().is_some() {
                "/…"
            } else {
                ""
            };
            format!("{}://{host}{port}{rest}", u.scheme())
        }
        Err(_) => "<not a URL>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn webhooks_parse_with_defaults_and_names() {
        let c = Config::parse(
            "[[alerts.webhooks]]\nurl = \"https://hooks.example/h\"\n\n[[alerts.webhooks]]\nname = \"am\"\nurl = \"http://127.0.0.1:9093\"\nformat = \"alertmanager\"\ntimeout = \"2s\"\n",
            "h.toml",
        )
        .expect("valid");
        let r = c.alerts.receivers(|_| None).expect("no secrets needed");
        assert_eq!(r[0].name, "json-0");
        assert_eq!(r[0].timeout, Duration::from_secs(5));
        assert_eq!(r[1].name, "am");
        assert_eq!(r[1].format, HookFormat::Alertmanager);
    }

    #[test]
    fn unknown_format_names_line_and_key() {
        let e = Config::parse(
            "[[alerts.webhooks]]\nurl = \"https://h.example/x\"\nformat = \"teams\"\n",
            "h.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 3") && e.contains("format"), "{e}");
    }

    #[test]
    fn bad_url_and_duplicate_names_are_refused() {
        for (toml, key) in [
            ("[[alerts.webhooks]]\nurl = \"hooks.example\"\n", "alerts.webhooks[0].url"),
            ("[[alerts.webhooks]]\nurl = \"file:///etc/passwd\"\n", "alerts.webhooks[0].url"),
            (
                "[[alerts.webhooks]]\nurl = \"http://a.example\"\n[[alerts.webhooks]]\nname = \"json-0\"\nurl = \"http://b.example\"\n",
                "alerts.webhooks[1].name",
            ),
        ] {
            let e = Config::parse(toml, "h.toml").unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    /// A receiver whose token is in a file of a folder of its own.
    fn with_token_file() -> (tempfile::TempDir, std::path::PathBuf, AlertsConfig) {
        let d = tempfile::tempdir().expect("tmp");
        let f = d.path().join("tok");
        std::fs::write(&f, "s3cr3t-token\n").expect("write");
        let mut c = AlertsConfig::default();
        c.webhooks.push(WebhookConfig {
            url: "https://h.example/x".into(),
            token_file: Some(f.clone()),
            ..Default::default()
        });
        (d, f, c)
    }

    #[test]
    fn secrets_come_from_files_or_the_environment_and_never_show() {
        let (d, _, mut c) = with_token_file();
        c.webhooks[0].secret_env = "HOOK_KEY".into();
        let r = c
            .receivers(|k| (k == "HOOK_KEY").then(|| "k3y".to_string()))
            .expect("readable");
        assert_eq!(
            r[0].token.as_ref().map(Secret::expose),
            Some("s3cr3t-token")
        );
        assert_eq!(r[0].secret.as_ref().map(Secret::expose), Some("k3y"));
        let shown = format!("{r:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("k3y"),
            "{shown}"
        );

        let e = c.receivers(|_| None).unwrap_err().to_string();
        assert!(
            e.contains("alerts.webhooks[0].secret_env") && e.contains("HOOK_KEY"),
            "{e}"
        );
        c.webhooks[0].token_file = Some(d.path().join("missing"));
        let e = c.receivers(|_| Some("x".into())).unwrap_err().to_string();
        assert!(e.contains("alerts.webhooks[0].token_file"), "{e}");
    }

    /// A token file anyone may rewrite is refused with its key; one readable by all
    /// is taken (Kubernetes' default 0644) and said.
    #[test]
    fn a_secret_file_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, f, c) = with_token_file();
        for (mode, ok) in [(0o600, true), (0o644, true), (0o666, false), (0o620, false)] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let got = c.receivers(|_| None);
            assert_eq!(got.is_ok(), ok, "mode {mode:o}: {got:?}");
            if let Err(e) = got {
                let e = e.to_string();
                assert!(
                    e.contains("alerts.webhooks[0].token_file") && e.contains("writable"),
                    "{e}"
                );
            }
        }
        assert!(in_clear_off_host("http://am.example:9093"));
        assert!(!in_clear_off_host("http://127.0.0.1:9093"));
        assert!(!in_clear_off_host("https://am.example"));
    }

    #[test]
    fn shown_urls_hide_paths_and_queries() {
        assert_eq!(
            shown_url("https://hooks.slack.com/services/T0/B0/XXXX"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(shown_url("http://127.0.0.1:9093"), "http://127.0.0.1:9093");
        assert_eq!(
            shown_url("http://u:pw@h.example/?k=v"),
            "http://h.example/…"
        );
    }
}
