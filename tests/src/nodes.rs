//! A simulated deployment across emulated nodes on one machine, one agent per node: the
//! leader (`--node-rank 0`: API server, engine core, its ranks) in the host's
//! namespaces; every follower (`--headless`: its launcher and its ranks) in its own PID
//! and mount namespaces with a private `/dev/shm`, its agent entered into them with
//! `nsenter`. The agents compare notes through `[peers]` with one shared token.
//! Traffic stays on loopback.

use crate::{free_port, now_s, python, read_jsonl, repo_root, wait_for, Agent, Sim};
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One follower node: its namespaces' first process, events and log.
pub struct SimFollower {
    pub node_rank: u32,
    child: Child,
    pub events: PathBuf,
    pub log: PathBuf,
}

impl SimFollower {
    /// The first process inside the node's namespaces (to `nsenter` its agent).
    fn inside_pid(&self) -> Option<u32> {
        let path = format!("/proc/{0}/task/{0}/children", self.child.id());
        let text = std::fs::read_to_string(path).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }
}

impl Drop for SimFollower {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child's process group; the namespace's first
        // process going takes every process of the namespace with it.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// The deployment and its agents; `agents[k]` is node `k`'s.
pub struct SimDeployment {
    pub nnodes: u32,
    pub per_node: u32,
    pub master_port: u16,
    pub agents: Vec<Agent>,
    pub leader: Sim,
    pub followers: Vec<SimFollower>,
    pub started_at: f64,
    _dir: tempfile::TempDir,
}

/// A master port whose next port is free too (the simulated engine core listens there).
fn master_port() -> u16 {
    for _ in 0..50 {
        let p = free_port();
        if p > 0 && p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    free_port()
}

impl SimDeployment {
    /// `per_node` ranks on each of `nnodes` nodes; `args` go to every node's simulator
    /// (a `--fault` acts only on the node that has its rank).
    pub fn start(nnodes: u32, per_node: u32, args: &[&str]) -> SimDeployment {
        SimDeployment::start_with(nnodes, per_node, args, |_| String::new())
    }

    /// Like `start`; `extra(k)` is appended to node `k`'s agent configuration.
    pub fn start_with(
        nnodes: u32,
        per_node: u32,
        args: &[&str],
        extra: impl Fn(u32) -> String,
    ) -> SimDeployment {
        let dir = tempfile::tempdir().expect("temp dir");
        let started_at = now_s();
        let mp = master_port();
        let tp = (nnodes * per_node).to_string();
        let nn = nnodes.to_string();
        let mps = mp.to_string();
        let shared = ["--tp", &tp, "--nnodes", &nn, "--master-port", &mps];
        let followers: Vec<SimFollower> = (1..nnodes)
            .map(|k| follower(&dir, k, &shared, args))
            .collect();
        let port = free_port();
        let mut leader_args: Vec<&str> = shared.to_vec();
        leader_args.extend(["--node-rank", "0"]);
        leader_args.extend(args);
        let leader = Sim::start_on(port, &leader_args, &[]);
        let token = dir.path().join("peer-token");
        std::fs::write(&token, "one-deployment-many-nodes\n").expect("token");
        let conf0 = dir.path().join("node0.toml");
        let text = format!("[peers]\ntoken_file = {token:?}\n\n{}", extra(0));
        std::fs::write(&conf0, text).expect("config");
        let c0 = conf0.to_string_lossy().to_string();
        let mut agents = vec![Agent::watching(&[&leader.engine_id()], &["--config", &c0])];
        for f in &followers {
            let conf = dir.path().join(format!("node{}.toml", f.node_rank));
            let text = format!(
                "[peers]\ntoken_file = {token:?}\nleader_agent = {:?}\n\n{}",
                agents[0].listen,
                extra(f.node_rank)
            );
            std::fs::write(&conf, text).expect("config");
            let inside = f
                .inside_pid()
                .expect("the follower's first process")
                .to_string();
            let nsenter = ["nsenter", "-t", &inside, "--pid", "--mount", "--"];
            let c = conf.to_string_lossy().to_string();
            agents.push(Agent::wrapped(&nsenter, &[], &["--config", &c]));
        }
        SimDeployment {
            nnodes,
            per_node,
            master_port: mp,
            agents,
            leader,
            followers,
            started_at,
            _dir: dir,
        }
    }

    /// The deployment id every node derives (`docs/multi-node.md`).
    pub fn deployment(&self) -> String {
        format!("vllm-127.0.0.1-{}", self.master_port)
    }

    /// Node `k`'s engine id: the leader's `vllm-<port>`, a follower's part.
    pub fn engine_of(&self, k: u32) -> String {
        match k {
            0 => self.leader.engine_id(),
            _ => format!("{}-node{k}", self.deployment()),
        }
    }

    /// When the simulator injected its fault, on whichever node it acted.
    pub fn fault_at(&self) -> Option<f64> {
        let files = std::iter::once(self.leader.events.clone())
            .chain(self.followers.iter().map(|f| f.events.clone()));
        files
            .flat_map(|p| read_jsonl(&p))
            .find(|e| e["event"] == "fault")
            .and_then(|e| e["at"].as_f64())
    }

    /// Every node's bundles opened since the deployment started: (node, manifest).
    pub fn bundles(&self) -> Vec<(u32, PathBuf, Value)> {
        let mut out = Vec::new();
        for (k, a) in self.agents.iter().enumerate() {
            for (p, m) in a.manifests(&self.engine_of(k as u32)) {
                let opened = m["opened_at"].as_str().and_then(crate::parse_rfc3339);
                if opened.is_some_and(|o| o >= self.started_at) {
                    out.push((k as u32, p, m));
                }
            }
        }
        out
    }

    /// Waits until the leader's agent has a bundle naming someone.
    pub fn leader_named(&self, within: Duration) -> Option<Value> {
        wait_for(within, || {
            self.bundles()
                .into_iter()
                .find(|(k, _, m)| {
                    *k == 0 && m["suspects"].as_array().is_some_and(|s| !s.is_empty())
                })
                .map(|(_, _, m)| m)
        })
    }

    /// Every node's agent log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (k, a) in self.agents.iter().enumerate() {
            let text = a.log_text();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- node {k} agent:\n"));
            out.push_str(&lines[lines.len().saturating_sub(25)..].join("\n"));
            out.push('\n');
        }
        out
    }
}

/// `words` (a program and its arguments) as another node would run them: in its own PID
/// and mount namespaces (its own `/proc`), with a private `/dev/shm`.
pub fn another_node(words: &[String]) -> Command {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!("mount -t tmpfs tmpfs /dev/shm && exec {}", quoted.join(" "));
    let mut c = Command::new("unshare");
    c.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--mount",
        "--",
        "sh",
        "-c",
    ])
    .arg(script);
    c
}

/// Starts node `k`'s headless simulator in its own PID and mount namespaces.
fn follower(dir: &tempfile::TempDir, k: u32, shared: &[&str], args: &[&str]) -> SimFollower {
    let events = dir.path().join(format!("events{k}.jsonl"));
    let log = dir.path().join(format!("vllm{k}.log"));
    let script = repo_root().join("tests/fakevllm/fakevllm.py");
    let mut words: Vec<String> = vec![python(), script.to_string_lossy().to_string()];
    words.extend(shared.iter().map(|s| s.to_string()));
    words.extend(["--node-rank".into(), k.to_string(), "--headless".into()]);
    words.extend(["--events".into(), events.to_string_lossy().to_string()]);
    words.extend(["--log".into(), log.to_string_lossy().to_string()]);
    words.extend(args.iter().map(|s| s.to_string()));
    let child = another_node(&words)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("starting a follower node");
    let f = SimFollower {
        node_rank: k,
        child,
        events,
        log,
    };
    let started = wait_for(Duration::from_secs(30), || {
        read_jsonl(&f.events)
            .into_iter()
            .find(|e| e["event"] == "started")
    });
    assert!(
        started.is_some() && f.inside_pid().is_some(),
        "follower node {k} did not start:\n{}",
        std::fs::read_to_string(&f.log).unwrap_or_default()
    );
    f
}
