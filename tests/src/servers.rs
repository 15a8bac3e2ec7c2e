//! The real servers the alerting test and the benchmarks start (Debian's Prometheus and
//! Alertmanager): started with their output in a log file, waited for, killed on drop,
//! and asked PromQL questions.

use crate::{http_get, wait_for};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A server process, killed on drop; its stdout and stderr go to `log`.
pub struct Server {
    child: Child,
    pub log: PathBuf,
}

impl Server {
    /// Starts `bin`; a missing binary is a broken set-up, said with the script that
    /// installs it.
    pub fn spawn(bin: &str, args: &[String], log: &Path) -> Server {
        let f = std::fs::File::create(log).expect("server log");
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("server log"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {bin} (installed by scripts/install-deps.sh): {e}")
            });
        Server {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Debian's Prometheus with `dir/prometheus.yml`, its data and log in `dir`,
    /// listening on `addr`.
    pub fn prometheus(dir: &Path, addr: &str) -> Server {
        Server::spawn(
            "prometheus",
            &[
                format!("--config.file={}", dir.join("prometheus.yml").display()),
                format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
                format!("--web.listen-address={addr}"),
            ],
            &dir.join("prometheus.log"),
        )
    }

    /// Debian's Alertmanager with `dir/alertmanager.yml`, its data and log in `dir`,
    /// listening on `addr`, without a cluster.
    pub fn alertmanager(dir: &Path, addr: &str) -> Server {
        Server::spawn(
            "prometheus-alertmanager",
            &[
                format!("--config.file={}", dir.join("alertmanager.yml").display()),
                format!("--storage.path={}", dir.join("am").display()),
                format!("--web.listen-address={addr}"),
                "--cluster.listen-address=".into(),
            ],
            &dir.join("am.log"),
        )
    }

    /// Waits for `/-/ready` on `addr` (both Prometheus and Alertmanager answer it); panics
    /// with the server's log when it does not come up.
    pub fn wait_ready(&self, addr: &str) {
        wait_for(Duration::from_secs(30), || {
            http_get(addr, "/-/ready").filter(|(c, _)| *c == 200)
        })
        .unwrap_or_else(|| {
            panic!(
                "{addr} not ready:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters stay).
pub fn url_encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A PromQL query's answer (`data.result`), or the error Prometheus gave.
pub fn prom_query(prom: &str, q: &str) -> Result<Vec<Value>, String> {
    let (code, body) = http_get(prom, &format!("/api/v1/query?query={}", url_encode(q)))
        .ok_or_else(|| "no answer".to_string())?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if code != 200 || v["status"] != "success" {
        return Err(format!("HTTP {code}: {body}"));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::url_encode;

    #[test]
    fn a_query_keeps_unreserved_characters_and_encodes_the_rest() {
        assert_eq!(
            url_encode("ALERTS{a=\"b c\"}~x"),
            "ALERTS%7Ba%3D%22b%20c%22%7D~x"
        );
    }
}
