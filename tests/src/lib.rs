//! Helpers for the end-to-end tests: start the real hangwatch binary and real processes
//! (the vLLM simulator, a real vLLM engine), wait for what they write, clean up.

pub mod load;
pub mod nodes;
pub mod nspawn;
pub mod receiver;
pub mod servers;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The value after `name` on a command line (`--trials 3` → `Some("3")`).
pub fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The hangwatch binary under test: `HANGWATCH_BIN`, else the path Cargo itself gives
/// for the workspace's `hangwatch` binary after making sure it is built from the
/// current sources (a no-op when it is fresh), so a test never runs a stale build.
pub fn hangwatch_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("HANGWATCH_BIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let out = Command::new(cargo)
            .args(["build", "--quiet", "-p", "hangwatch", "--bin", "hangwatch"])
            .arg("--message-format=json")
            .current_dir(repo_root())
            .stderr(Stdio::inherit())
            .output()
            .expect("running cargo build for the hangwatch binary");
        assert!(out.status.success(), "cargo build -p hangwatch failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|m| m["target"]["name"] == "hangwatch")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo named no hangwatch executable")
    })
    .clone()
}

/// Runs `hangwatch ARGS` to its end and parses what it printed as JSON; a failed run or
/// output that is not JSON fails the test with the command's own words.
pub fn hangwatch_json(args: &[&str]) -> Value {
    let out = Command::new(hangwatch_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("hangwatch {args:?}: {e}"));
    assert!(
        out.status.success(),
        "hangwatch {args:?} exited {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "hangwatch {args:?} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

pub fn python() -> String {
    std::env::var("HANGWATCH_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

pub fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A port free now and never handed out before by this process: a port is often
/// chosen before its server binds it (an engine's port, then its agent's), and the
/// kernel may give a just-released port to the next `bind(0)` — seen once in CI, when
/// HAProxy's backend answered 404 because an agent sat on the engine's port.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        let Ok(mut given) = GIVEN.lock() else {
            return port;
        };
        if port != 0 && !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    0
}

/// The `p`-quantile (0.0–1.0, nearest rank) of `v`; NaN for none. The benchmarks and
/// matrices report p50 / p95 / max with it.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// The overall exposure `systemd-analyze security` gives hangwatch's unit, from its
/// report (offline of the unit file, or of the running unit).
pub fn exposure_score(report: &str) -> Option<f64> {
    report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for hangwatch.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A TP=2 engine under steady load whose rank 1 stops itself (SIGSTOP) 3 s in: the
/// simplest open incident.
pub const RANK_1_STOPS: [&str; 6] = [
    "--tp",
    "2",
    "--load",
    "steady",
    "--fault",
    "rank=1,after=3,mode=stop",
];

/// How a simulator is started.
#[derive(Clone, Copy)]
enum Launch<'a> {
    Plain,
    /// As this user.
    As(&'a str),
    /// Its output into the journal with this identifier.
    Journal(&'a str),
}

/// A running simulator (`tests/fakevllm/fakevllm.py`); stopped with SIGTERM on drop.
pub struct Sim {
    pub child: Child,
    /// When it was started (Unix seconds): bundles older than this are another engine's.
    pub started_at: f64,
    pub events: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    pub started: Value,
    _dir: tempfile::TempDir,
}

impl Sim {
    /// Starts the simulator with `args` (besides --events/--log/--port) and waits for it
    /// to report its processes.
    pub fn start(args: &[&str]) -> Sim {
        Sim::start_with_env(args, &[])
    }

    /// Like `start`, with extra environment for the simulated `vllm serve`.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Sim {
        Sim::start_on(free_port(), args, env)
    }

    /// On a port chosen beforehand, so an agent can be told to watch `vllm-<port>`
    /// before the engine exists (`Agent::watching`).
    pub fn start_on(port: u16, args: &[&str], env: &[(&str, &str)]) -> Sim {
        Sim::launch(port, args, env, Launch::Plain)
    }

    /// As an unprivileged user (`nobody`, through `setpriv`, with Debian's Python): what
    /// any local user could start.
    pub fn start_as_nobody(port: u16, args: &[&str]) -> Sim {
        Sim::launch(port, args, &[], Launch::As("nobody"))
    }

    /// With its output in the journal under `identifier` (through `systemd-cat`, as a
    /// service's stdout is), not in a file.
    pub fn start_in_journal(
        identifier: &str,
        port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Sim {
        Sim::launch(port, args, env, Launch::Journal(identifier))
    }

    fn launch(port: u16, args: &[&str], env: &[(&str, &str)], how: Launch<'_>) -> Sim {
        let dir = tempfile::tempdir().expect("temp dir");
        let events = dir.path().join("events.jsonl");
        let log = dir.path().join("vllm.log");
        let script = repo_root().join("tests/fakevllm/fakevllm.py");
        let started_at = now_s();
        let mut cmd = match how {
            Launch::As(u) => {
                use std::os::unix::fs::PermissionsExt;
                let _ =
                    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777));
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={u}"),
                    "--regid=nogroup",
                    "--clear-groups",
                    "/usr/bin/python3",
                ]);
                c
            }
            Launch::Plain => Command::new(python()),
            Launch::Journal(ident) => {
                let mut c = Command::new("systemd-cat");
                c.args(["-t", ident]).arg(python());
                c
            }
        };
        cmd.arg(&script).args(args).arg("--events").arg(&events);
        if !matches!(how, Launch::Journal(_)) {
            cmd.arg("--log").arg(&log);
        }
        let child = cmd
            .arg("--port")
            .arg(port.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the simulator");
        let started = wait_for(Duration::from_secs(60), || {
            read_jsonl(&events)
                .into_iter()
                .find(|e| e["event"] == "started")
        })
        .unwrap_or_else(|| {
            panic!(
                "simulator {args:?} did not start; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Sim {
            child,
            started_at,
            events,
            log,
            port,
            started,
            _dir: dir,
        }
    }

    pub fn engine_id(&self) -> String {
        format!("vllm-{}", self.port)
    }

    pub fn api_pid(&self) -> u32 {
        self.started["api_pid"].as_u64().unwrap_or(0) as u32
    }

    pub fn core_pid(&self) -> u32 {
        self.started["core_pid"].as_u64().unwrap_or(0) as u32
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.started["worker_pids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as u32)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every engine core and worker of every data-parallel replica.
    pub fn replica_pids(&self) -> Vec<u32> {
        let mut out = vec![self.core_pid()];
        out.extend(self.worker_pids());
        for r in self.started["replicas"].as_array().into_iter().flatten() {
            out.extend(r["core_pid"].as_u64().map(|p| p as u32));
            for w in r["worker_pids"].as_array().into_iter().flatten() {
                out.extend(w.as_u64().map(|p| p as u32));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn event(&self, kind: &str) -> Option<Value> {
        read_jsonl(&self.events)
            .into_iter()
            .find(|e| e["event"] == kind)
    }

    pub fn wait_event(&self, kind: &str, timeout: Duration) -> Option<Value> {
        wait_for(timeout, || self.event(kind))
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // SIGCONT first: a stopped process cannot act on SIGTERM.
        for pid in self.replica_pids().into_iter().chain([self.api_pid()]) {
            signal(pid, libc::SIGCONT);
        }
        signal(self.api_pid(), libc::SIGTERM);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever is left (a worker stuck in a native call survives its parent).
        for pid in self.replica_pids() {
            signal(pid, libc::SIGKILL);
        }
    }
}

/// The state letter of a process (`R`, `S`, `T`…) from `/proc/<pid>/stat`.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Waits until the process is stopped (a fault that SIGSTOPs itself, say).
pub fn wait_stopped(pid: u32, timeout: Duration) -> bool {
    wait_for(timeout, || (proc_state(pid) == Some('T')).then_some(())).is_some()
}

pub fn signal(pid: u32, sig: i32) {
    if pid > 1 {
        // SAFETY: kill(2) with a pid we started; failure (already gone) is fine.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

/// A running `hangwatch run`; killed on drop.
pub struct Agent {
    pub child: Child,
    pub listen: String,
    pub bundle_dir: PathBuf,
    pub log: PathBuf,
    pub record: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// An agent that watches the whole node (it sees every other test's engines too).
    pub fn start(extra: &[&str]) -> Agent {
        Agent::start_filtered(&[], extra, &[])
    }

    /// Watching only these engines, with at most `open_files` descriptors (soft and
    /// hard, through `prlimit`): what a unit's `LimitNOFILE` gives it.
    pub fn watching_limited(engines: &[&str], extra: &[&str], open_files: u64) -> Agent {
        let limit = format!("--nofile={open_files}:{open_files}");
        Agent::start_filtered(engines, extra, &["prlimit", &limit, "--"])
    }

    /// An agent started through `wrapper` (e.g. `nsenter -t PID --pid --mount --`: the
    /// agent of another emulated node, in that node's namespaces).
    pub fn wrapped(wrapper: &[&str], engines: &[&str], extra: &[&str]) -> Agent {
        Agent::start_filtered(engines, extra, wrapper)
    }

    /// An agent that watches only these engines (`engines` in its configuration, set
    /// through `HANGWATCH_ENGINES`): tests running side by side do not see each other.
    pub fn watching(engines: &[&str], extra: &[&str]) -> Agent {
        Agent::start_filtered(engines, extra, &[])
    }

    fn start_filtered(engines: &[&str], extra: &[&str], wrapper: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let bundle_dir = dir.path().join("bundles");
        let log = dir.path().join("agent.log");
        let record = dir.path().join("record.jsonl");
        let listen = format!("127.0.0.1:{}", free_port());
        let logf = std::fs::File::create(&log).expect("agent log");
        std::fs::write(dir.path().join("none.toml"), "").expect("empty config");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(hangwatch_bin());
                c
            }
            None => Command::new(hangwatch_bin()),
        };
        cmd.arg("run")
            .arg("--listen")
            .arg(&listen)
            .arg("--record")
            .arg(&record);
        if !extra.contains(&"--config") {
            cmd.arg("--config").arg(dir.path().join("none.toml"));
        }
        let bundle_dir = match extra.iter().position(|a| *a == "--bundle-dir") {
            Some(i) => PathBuf::from(extra.get(i + 1).copied().unwrap_or("")),
            None => {
                cmd.arg("--bundle-dir").arg(&bundle_dir);
                bundle_dir
            }
        };
        let child = cmd
            .args(extra)
            .env("HANGWATCH_LOG", "info")
            .env("HANGWATCH_ENGINES", engines.join(","))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log"))
            .stderr(logf)
            .spawn()
            .expect("starting hangwatch");
        let a = Agent {
            child,
            listen,
            bundle_dir,
            log,
            record,
            _dir: dir,
        };
        let up = wait_for(Duration::from_secs(20), || {
            http_get(&a.listen, "/healthz").filter(|(c, _)| *c == 200)
        });
        assert!(
            up.is_some(),
            "agent did not become healthy:\n{}",
            a.log_text()
        );
        a
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http_get(&self.listen, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Every bundle's manifest for `engine`, with when it was first seen on disk.
    pub fn manifests(&self, engine: &str) -> Vec<(PathBuf, Value)> {
        let Ok(rd) = std::fs::read_dir(&self.bundle_dir) else {
            return Vec::new();
        };
        let mut out: Vec<(PathBuf, Value)> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .filter_map(|p| {
                let m: Value =
                    serde_json::from_str(&std::fs::read_to_string(p.join("manifest.json")).ok()?)
                        .ok()?;
                (m["engine"] == engine).then_some((p, m))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies a bundle (a folder tree) somewhere that outlives the test; what cannot be
/// copied is said and skipped: keeping evidence must not fail the run.
pub fn keep(from: &Path, to: &Path) {
    let copied = if from.is_dir() {
        std::fs::create_dir_all(to).and_then(|_| {
            for e in std::fs::read_dir(from)? {
                let e = e?;
                keep(&e.path(), &to.join(e.file_name()));
            }
            Ok(())
        })
    } else {
        std::fs::copy(from, to).map(|_| ())
    };
    if let Err(e) = copied {
        eprintln!("keeping {}: {e}", from.display());
    }
}

impl Agent {
    /// For a test that fails on an incident it did not expect: keeps every bundle of
    /// `engine` under `target/kept-bundles/` (the agent's folder goes with the test) and
    /// returns where, with each bundle's `summary.txt`, for the failure message.
    pub fn kept_incidents(&self, engine: &str) -> String {
        let root = repo_root().join("target/kept-bundles");
        let mut out = String::new();
        for (path, _) in self.manifests(engine) {
            let Some(name) = path.file_name() else {
                continue;
            };
            let to = root.join(name);
            keep(&path, &to);
            let summary = std::fs::read_to_string(path.join("summary.txt")).unwrap_or_default();
            out.push_str(&format!("\n== bundle kept at {}\n{summary}", to.display()));
        }
        out
    }
}

/// A minimal HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    http_call(addr, "GET", path, &[])
}

/// A minimal HTTP/1.0 request without a body on loopback: (status, body).
pub fn http_call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    http_send(addr, method, path, headers, b"")
}

/// A minimal HTTP/1.0 request with a body on loopback: (status, body).
pub fn http_send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let n = body.len();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {n}\r\n{extra}\r\n"
    )
    .ok()?;
    // A server may answer (413) and close before reading it all: not our error.
    let _ = s.write_all(body);
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// One metric sample's value from a Prometheus text body, by name and label subset.
pub fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Now in RFC 3339 (UTC, seconds), for reports.
pub fn rfc3339_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// RFC 3339 → Unix seconds (the manifests' times), through `date` to avoid a date crate.
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let out = Command::new("date")
        .arg("-d")
        .arg(s)
        .arg("+%s.%N")
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// Runs `f` on every case, `parallel` cases at a time (the goals matrices); the
/// results in the order they finished.
pub fn run_parallel<C, R, F>(cases: Vec<C>, parallel: usize, f: F) -> Vec<R>
where
    C: Send + 'static,
    R: Send + 'static,
    F: Fn(C) -> R + Send + Sync + 'static,
{
    let todo = std::sync::Arc::new(std::sync::Mutex::new(cases));
    let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let f = std::sync::Arc::new(f);
    let handles: Vec<_> = (0..parallel.max(1))
        .map(|_| {
            let (todo, done, f) = (todo.clone(), done.clone(), f.clone());
            std::thread::spawn(move || loop {
                let next = todo.lock().map(|mut t| t.pop()).unwrap_or(None);
                let Some(c) = next else { break };
                let r = f(c);
                if let Ok(mut d) = done.lock() {
                    d.push(r);
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let mut out = done
        .lock()
        .map(|mut d| std::mem::take(&mut *d))
        .unwrap_or_default();
    out.shrink_to_fit();
    out
}

/// An agent watching only a simulator that starts right after it (the agent first, so
/// it sees the engine from its first moment): `agent_args` for `hangwatch run`,
/// `sim_args` and `env` for the simulator.
pub fn watched_sim(agent_args: &[&str], sim_args: &[&str], env: &[(&str, &str)]) -> (Agent, Sim) {
    let port = free_port();
    let agent = Agent::watching(&[&format!("vllm-{port}")], agent_args);
    let sim = Sim::start_on(port, sim_args, env);
    (agent, sim)
}

/// stdout then stderr of a finished command, as text (for assertion messages).
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Each thread of a process: name, wait channel and the first kernel stack frames — what
/// a test prints when an agent seems stuck.
pub fn thread_dump(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("(no /proc/{pid}/task)");
    };
    tasks
        .flatten()
        .map(|t| {
            let p = t.path();
            let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
            let stack = read("stack");
            let top: Vec<&str> = stack.lines().take(3).collect();
            format!(
                "{} {} {}",
                read("comm").trim(),
                read("wchan"),
                top.join(" / ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a fault scenario produced, measured against the simulator's fault time.
#[derive(Debug, Clone)]
pub struct Detection {
    pub fault_at: f64,
    pub opened_after: f64,
    /// When the engine was first said `stalled` (the suspect stage), from the bundle's
    /// time line.
    pub suspected_after: Option<f64>,
    pub bundle_after: f64,
    pub suspects: Vec<u64>,
    /// Every suspect's role (`worker`, `engine_core`, `api_server`), in the manifest's order.
    pub roles: Vec<String>,
    pub reasons: Vec<String>,
    pub engine_reasons: Vec<String>,
    pub manifest: Value,
    pub bundle: PathBuf,
}

/// Waits for the simulator's fault and for the agent's first bundle of that engine.
pub fn detect(agent: &Agent, sim: &Sim, within: Duration) -> Result<Detection, String> {
    detect_on(agent, sim, &sim.engine_id(), within)
}

/// `detect` for one engine of the simulator (a data-parallel replica: `<id>-dp<i>`).
pub fn detect_on(
    agent: &Agent,
    sim: &Sim,
    engine: &str,
    within: Duration,
) -> Result<Detection, String> {
    let engine = engine.to_string();
    let fault = sim
        .wait_event("fault", Duration::from_secs(120))
        .ok_or("the simulator never injected its fault")?;
    let fault_at = fault["at"].as_f64().ok_or("fault without time")?;
    let deadline = fault_at + within.as_secs_f64();
    let (path, m, seen_at) = loop {
        // An engine of an earlier case may have had this port (and so this id): only a
        // bundle opened since this simulator started counts.
        let ours = agent.manifests(&engine).into_iter().find(|(_, m)| {
            m["opened_at"]
                .as_str()
                .and_then(parse_rfc3339)
                .is_some_and(|o| o >= sim.started_at)
        });
        if let Some((p, m)) = ours {
            break (p, m, now_s());
        }
        if now_s() > deadline {
            return Err(format!(
                "no bundle for {engine} within {:?} of the fault",
                within
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let opened = m["opened_at"]
        .as_str()
        .and_then(parse_rfc3339)
        .ok_or("manifest without opened_at")?;
    let suspects = m["suspects"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["rank"].as_u64()).collect())
        .unwrap_or_default();
    let roles = m["suspects"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["role"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let reasons = m["suspects"]
        .as_array()
        .map(|a| {
            a.iter()
                .flat_map(|s| s["reasons"].as_array().cloned().unwrap_or_default())
                .filter_map(|r| r.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let engine_reasons = m["engine_reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let summary = std::fs::read_to_string(path.join("summary.txt")).unwrap_or_default();
    let suspected = summary
        .lines()
        .filter(|l| l.contains(&format!("engine {engine} stalled")))
        .filter_map(|l| l.split_whitespace().next().and_then(parse_rfc3339))
        .next();
    Ok(Detection {
        fault_at,
        opened_after: opened - fault_at,
        suspected_after: suspected.map(|s| s - fault_at),
        bundle_after: seen_at - fault_at,
        suspects,
        roles,
        reasons,
        engine_reasons,
        manifest: m,
        bundle: path,
    })
}
