//! A real Debian with a real systemd, booted in `systemd-nspawn` for the tests that prove
//! what users run: the shipped unit and the Debian package. The root file system comes
//! from `scripts/debian-root.sh` (cached) and is never changed: the container boots with
//! `--volatile=overlay`, so what a test writes lives in memory and is gone after it.
//! Its own network namespace (loopback only) and PID namespace keep it apart from the
//! tests beside it; commands run inside with `nsenter` into its init's namespaces.

use crate::{output_text, repo_root, wait_for};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The cached Debian root: `HANGWATCH_DEBIAN_ROOT`, else what `scripts/debian-root.sh`
/// prints (it builds the root the first time).
pub fn debian_root() -> PathBuf {
    if let Ok(p) = std::env::var("HANGWATCH_DEBIAN_ROOT") {
        return PathBuf::from(p);
    }
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/debian-root.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/debian-root.sh");
    assert!(out.status.success(), "scripts/debian-root.sh failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A booted container; powered off (and its init killed if it will not go) on drop.
pub struct Container {
    nspawn: Child,
    /// The container's init (systemd) as the host sees it.
    pub init: u32,
    pub console: PathBuf,
    _dir: tempfile::TempDir,
}

impl Container {
    /// Boots `root` with `binds` (`host path`, `container path`) mounted read-only, and
    /// waits until systemd says the system is running.
    pub fn boot(root: &Path, binds: &[(PathBuf, &str)]) -> Container {
        let dir = tempfile::tempdir().expect("temp dir");
        let console = dir.path().join("console.log");
        let out = std::fs::File::create(&console).expect("console log");
        let name = format!("hw{}", std::process::id());
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("--directory")
            .arg(root)
            .args([
                "--register=no",
                "--keep-unit",
                "--boot",
                "--volatile=overlay",
            ])
            .args(["--private-network", "--machine", &name]);
        for (host, inside) in binds {
            cmd.arg(format!("--bind-ro={}:{inside}", host.display()));
        }
        let nspawn = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("starting systemd-nspawn");
        let pid = nspawn.id();
        let init = wait_for(Duration::from_secs(20), || init_of(pid));
        let c = Container {
            nspawn,
            init: init.unwrap_or(0),
            console,
            _dir: dir,
        };
        assert!(
            c.init > 0,
            "no systemd in the container:\n{}",
            c.console_text()
        );
        let state = wait_for(Duration::from_secs(60), || {
            let s = c.text(&["systemctl", "is-system-running"]);
            matches!(s.trim(), "running" | "degraded").then_some(s)
        });
        let failed = c.text(&["systemctl", "--failed", "--no-legend"]);
        assert!(
            state.as_deref().map(str::trim) == Some("running"),
            "the container did not boot clean ({state:?}); failed units:\n{failed}\n{}",
            c.console_text()
        );
        c
    }

    /// Runs a program inside (every namespace of the container's init).
    pub fn run(&self, args: &[&str]) -> Output {
        self.nsenter("-a", args)
    }

    fn nsenter(&self, which: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.init.to_string(), which, "--"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// What a program inside printed (stdout and stderr).
    pub fn text(&self, args: &[&str]) -> String {
        output_text(&self.run(args))
    }

    /// A host program run in the container's network only (curl, which the minimal root
    /// does not have, reaching a port on the container's loopback).
    pub fn on_its_network(&self, args: &[&str]) -> Output {
        self.nsenter("-n", args)
    }

    /// One property of a unit (`systemctl show -p NAME --value`).
    pub fn unit_property(&self, unit: &str, name: &str) -> String {
        let out = self.run(&["systemctl", "show", unit, "-p", name, "--value"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The journal of one unit, messages only.
    pub fn journal(&self, unit: &str) -> String {
        self.text(&["journalctl", "-u", unit, "--no-pager", "-o", "cat"])
    }

    /// The agent's `/status` on the container's loopback (the default listen address).
    pub fn agent_status(&self) -> Option<Value> {
        let url = "http://127.0.0.1:9477/status";
        let out = self.on_its_network(&["curl", "-sf", "--max-time", "2", url]);
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Starts the simulator (bound at `/opt/fakevllm`) inside, as root, in the
    /// background: a TP=2 engine under load on port 8000 with `fault`, its events in
    /// `/tmp/events.jsonl`.
    pub fn start_sim(&self, fault: &str) {
        let sim = format!(
            "cd /tmp && setsid python3 /opt/fakevllm/fakevllm.py --tp 2 --load steady \
             --port 8000 --fault {fault} --log /tmp/vllm.log --events /tmp/events.jsonl \
             --duration 300 >/tmp/sim.out 2>&1 &"
        );
        let out = self.run(&["sh", "-c", &sim]);
        assert!(out.status.success(), "simulator: {}", output_text(&out));
    }

    /// The agent's first incident whose first suspect is `rank`, and how long after the
    /// simulator's fault it opened (seconds).
    pub fn incident_naming(&self, rank: u64, within: Duration) -> Option<(Value, f64)> {
        let incident = wait_for(within, || {
            let s = self.agent_status()?;
            s["incidents"]
                .as_array()?
                .iter()
                .find(|i| i["suspects"][0]["rank"] == rank)
                .cloned()
        })?;
        let fault_ms = self
            .text(&["cat", "/tmp/events.jsonl"])
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["event"] == "fault")
            .and_then(|e| e["at"].as_f64())
            .map(|t| t * 1000.0)
            .unwrap_or(0.0);
        let opened = incident["opened_ms"].as_f64().unwrap_or(0.0);
        Some((incident, (opened - fault_ms) / 1000.0))
    }

    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGRTMIN+4 asks systemd to power off; killing the namespace's init ends the rest.
        crate::signal(self.init, libc::SIGRTMIN() + 4);
        let gone = wait_for(Duration::from_secs(15), || {
            self.nspawn.try_wait().ok().flatten()
        });
        if gone.is_none() {
            crate::signal(self.init, libc::SIGKILL);
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
    }
}

/// The systemd that nspawn started: its child named `systemd`.
fn init_of(nspawn: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{nspawn}/task")).ok()?;
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|c| c.trim() == "systemd")
                .unwrap_or(false)
        })
}
