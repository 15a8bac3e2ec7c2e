//! An engine as it runs in a Kubernetes pod: its own PID, network, mount and IPC
//! namespaces, a private `/dev/shm`, a pod cgroup, and the kubelet's log folder on the
//! host — the agent on the host, as the DaemonSet runs it. The stopped rank is named,
//! vLLM's `/metrics` on the pod's loopback is read, stacks are dumped, host and
//! container pids both appear in `status --json`, and the pod's names label the engine.

use hangwatch_tests::{
    free_port, hangwatch_bin, http_get, metric, repo_root, signal, wait_for, Agent,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const UID: &str = "0a1b2c3d-4e5f-4789-abcd-ef0123456789";
const CONTAINER_ID: &str = "4f1b0c7d2e3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4";

/// The namespaced engine; its PID namespace (and every process in it) ends on drop.
struct Pod {
    child: Child,
    cgroup: PathBuf,
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill(); // unshare --kill-child takes the namespace's init along
        let _ = self.child.wait();
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir(self.cgroup.parent().unwrap_or(Path::new("/nonexistent")));
    }
}

/// A pod cgroup (cgroupfs driver layout) in a hierarchy this machine lets root write.
fn pod_cgroup(uid: &str, container: &str) -> PathBuf {
    for root in [
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ] {
        let dir = Path::new(root).join(format!("kubepods/besteffort/pod{uid}/{container}"));
        if std::fs::create_dir_all(&dir).is_ok() && dir.join("cgroup.procs").exists() {
            return dir;
        }
    }
    panic!("no writable cgroup hierarchy for the pod's cgroup");
}

fn start_pod(port: u16, dir: &Path) -> Pod {
    start_pod_as(UID, CONTAINER_ID, port, dir)
}

/// A pod with this UID and container id, its engine on `port` of its own loopback.
fn start_pod_as(uid: &str, container: &str, port: u16, dir: &Path) -> Pod {
    let cgroup = pod_cgroup(uid, container);
    let inner = format!(
        "mount -t tmpfs -o size=1g tmpfs /dev/shm && ip link set lo up && exec python3 {} --tp 2 --load steady --port {port} --events {} --log {}",
        repo_root().join("tests/fakevllm/fakevllm.py").display(),
        dir.join("events.jsonl").display(),
        dir.join("vllm.log").display(),
    );
    let outer = format!(
        "echo $$ > {} && exec unshare --pid --net --mount --ipc --kill-child --mount-proc sh -c '{inner}'",
        cgroup.join("cgroup.procs").display()
    );
    let child = Command::new("sh")
        .args(["-c", &outer])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("pod.err")).expect("err"))
        .spawn()
        .expect("unshare");
    Pod { child, cgroup }
}

fn status(engine: &str, config: &Path) -> Option<Value> {
    let out = Command::new(hangwatch_bin())
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["engines"]
        .as_array()?
        .iter()
        .find(|e| e["id"] == engine)
        .cloned()
}

#[test]
fn an_engine_in_its_own_namespaces_is_watched_from_the_host() {
    let dir = tempfile::tempdir().expect("tmp");
    let logs = dir.path().join("pods");
    std::fs::create_dir_all(logs.join(format!("llm_vllm-tiny-0_{UID}/vllm"))).expect("pod logs");
    let cfg = dir.path().join("h.toml");
    std::fs::write(
        &cfg,
        format!("[kubernetes]\npod_log_dir = \"{}\"\n", logs.display()),
    )
    .expect("cfg");
    let port = free_port();
    // Its pod in the id: another pod may serve on the same port.
    let engine = format!("vllm-{port}.llm.vllm-tiny-0");
    let agent = Agent::watching(&[&engine], &["--config", &cfg.display().to_string()]);
    let _pod = start_pod(port, dir.path());

    // Both pids of every rank, and the pod, in `status --json`.
    let st = wait_for(Duration::from_secs(60), || {
        status(&engine, &cfg).filter(|e| e["ranks"].as_array().is_some_and(|r| r.len() == 2))
    })
    .unwrap_or_else(|| {
        panic!(
            "engine not found: {}",
            std::fs::read_to_string(dir.path().join("pod.err")).unwrap_or_default()
        )
    });
    let ranks = st["ranks"].as_array().expect("ranks");
    for r in ranks {
        let (pid, ns_pid) = (
            r["pid"].as_u64().unwrap_or(0),
            r["ns_pid"].as_u64().unwrap_or(0),
        );
        assert!(
            pid > 1 && ns_pid > 1 && pid != ns_pid,
            "host and container pids: {r}"
        );
    }
    // The one-shot command reads the agent's configuration: names from its pod log folder.
    assert_eq!(st["pod"]["uid"], UID, "{st}");
    assert_eq!(st["pod"]["container_id"], CONTAINER_ID);
    assert_eq!(st["pod"]["namespace"], "llm", "{st}");
    assert_eq!(st["pod"]["pod"], "vllm-tiny-0", "{st}");

    // vLLM's /metrics on the pod's loopback, read from the host's agent.
    wait_for(Duration::from_secs(60), || {
        let m = agent.metrics();
        let busy = metric(
            &m,
            "hangwatch_engine_state",
            &[("engine", &engine), ("state", "busy")],
        );
        let running = metric(
            &m,
            "hangwatch_vllm_requests_running",
            &[("engine", &engine)],
        );
        (busy == Some(1.0) && running.is_some()).then_some(())
    })
    .unwrap_or_else(|| panic!("no vLLM metrics from inside the pod:\n{}", agent.log_text()));
    let m = agent.metrics();
    assert!(
        metric(
            &m,
            "hangwatch_engine_info",
            &[
                ("engine", &engine),
                ("namespace", "llm"),
                ("pod", "vllm-tiny-0"),
                ("container", "vllm")
            ]
        ) == Some(1.0),
        "{m}"
    );
    std::thread::sleep(Duration::from_secs(2));
    // A pod's readiness probe asks by its names (docs/load-balancers.md): ready now.
    let ready = "/ready?namespace=llm&pod=vllm-tiny-0";
    let before = http_get(&agent.listen, ready);
    assert!(
        before.as_ref().is_some_and(|(c, _)| *c == 200),
        "{ready} before the fault: {before:?}"
    );

    let rank1 = ranks
        .iter()
        .find(|r| r["rank"] == 1)
        .and_then(|r| r["pid"].as_u64())
        .expect("rank 1") as u32;
    signal(rank1, libc::SIGSTOP);
    let (bundle, manifest) = wait_for(Duration::from_secs(20), || {
        agent.manifests(&engine).into_iter().next()
    })
    .unwrap_or_else(|| panic!("no incident:\n{}", agent.log_text()));
    assert_eq!(manifest["suspects"][0]["rank"], 1, "{manifest}");
    assert_eq!(manifest["pod"]["pod"], "vllm-tiny-0", "{manifest}");
    let after = http_get(&agent.listen, ready);
    assert!(
        after
            .as_ref()
            .is_some_and(|(c, b)| *c == 503 && b.contains("stalled")),
        "{ready} with rank 1 stopped: {after:?}"
    );
    println!("{ready}: {before:?} before the fault, {after:?} after");
    let stack = wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(bundle.join("stacks/rank-0.txt"))
            .ok()
            .filter(|t| t.contains(".py"))
    });
    signal(rank1, libc::SIGCONT);
    assert!(
        stack.is_some(),
        "no stacks of the namespaced ranks:\n{}",
        agent.log_text()
    );
}

const UID_B: &str = "0a1b2c3d-4e5f-4789-abcd-ef0123456790";
const CONTAINER_B: &str = "5f1b0c7d2e3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d5";

/// The host pid of a rank of an engine, from `status --json`.
fn rank_pid(engine: &str, cfg: &Path, rank: u64) -> Option<u32> {
    let st = status(engine, cfg)?;
    let r = st["ranks"].as_array()?.iter().find(|r| r["rank"] == rank)?;
    r["pid"].as_u64().map(|p| p as u32)
}

/// A line in a pod's log folder is that pod's: the same line, naming pod a's rank 0 by
/// its pid inside pod a, counts for pod a from a's folder and never from b's (where it
/// is b's only if b's rank 0 has the same pid in b's namespace).
fn pods_logs_speak_for_their_own_pods(
    agent: &Agent,
    cfg: &Path,
    engines: [&str; 2],
    logs: &[PathBuf],
) {
    let ns_pid = |engine: &str| -> Option<u64> {
        let st = status(engine, cfg)?;
        st["ranks"].as_array()?.iter().find(|r| r["rank"] == 0)?["ns_pid"].as_u64()
    };
    let (na, nb) = (ns_pid(engines[0]), ns_pid(engines[1]));
    let na = na.expect("rank 0 of pod a inside its namespace");
    let line = format!("2026-12-06T20:00:00.000000000Z stderr F (Worker_TP0 pid={na}) WARNING 12-06 20:00:00 [pynccl.py:1] node:1:1 [0] NCCL WARN said in pod a's log\n");
    for log in logs {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(log)
            .expect("log");
        std::io::Write::write_all(&mut f, line.as_bytes()).expect("write");
    }
    let nccl = |engine: &str| {
        metric(
            &agent.metrics(),
            "hangwatch_log_events_total",
            &[("engine", engine), ("kind", "nccl")],
        )
        .unwrap_or(0.0)
    };
    let seen = wait_for(Duration::from_secs(15), || {
        (nccl(engines[0]) >= 1.0).then_some(())
    });
    assert!(
        seen.is_some(),
        "pod a's own line not read:\n{}",
        agent.log_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(nccl(engines[0]), 1.0, "pod b's folder spoke for pod a");
    let b_same_pid = nb == Some(na);
    assert_eq!(nccl(engines[1]), if b_same_pid { 1.0 } else { 0.0 });
    println!("a line in pod b's folder with pod a's pid {na}: pod a 1 event, pod b's rank 0 is pid {nb:?}");
}

/// Two pods on one node, both serving on port 8000 in their own network namespaces: two
/// engines with two ids, and a restart of one pod leaves the other's incident open.
#[test]
fn two_pods_on_the_same_port_are_two_engines() {
    let dir = tempfile::tempdir().expect("tmp");
    let logs = dir.path().join("pods");
    let mut pod_log = Vec::new();
    for (name, uid) in [("vllm-a-0", UID), ("vllm-b-0", UID_B)] {
        let folder = logs.join(format!("llm_{name}_{uid}/vllm"));
        std::fs::create_dir_all(&folder).expect("pod logs");
        std::fs::write(folder.join("0.log"), "").expect("pod log");
        pod_log.push(folder.join("0.log"));
    }
    let cfg = dir.path().join("h.toml");
    let pod_logs = format!(
        "[kubernetes]\npod_log_dir = \"{l}\"\n[logs]\ncri_paths = [\"{l}/*/vllm/*.log\"]\n",
        l = logs.display()
    );
    std::fs::write(&cfg, pod_logs).expect("cfg");
    let (a, b) = ("vllm-8000.llm.vllm-a-0", "vllm-8000.llm.vllm-b-0");
    let agent = Agent::watching(&[a, b], &["--config", &cfg.display().to_string()]);
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).expect("a");
    std::fs::create_dir_all(&db).expect("b");
    let _pod_a = start_pod_as(UID, CONTAINER_ID, 8000, &da);
    let pod_b = start_pod_as(UID_B, CONTAINER_B, 8000, &db);
    let found = wait_for(Duration::from_secs(60), || {
        Some((rank_pid(a, &cfg, 1)?, rank_pid(b, &cfg, 1)?))
    });
    let (a1, _) = found.unwrap_or_else(|| {
        panic!(
            "not two engines: {}",
            hangwatch_tests::hangwatch_json(&[
                "status",
                "--json",
                "--config",
                &cfg.display().to_string()
            ])
        )
    });
    wait_for(Duration::from_secs(30), || {
        let m = agent.metrics();
        let busy = |e| {
            metric(
                &m,
                "hangwatch_engine_state",
                &[("engine", e), ("state", "busy")],
            )
        };
        (busy(a) == Some(1.0) && busy(b) == Some(1.0)).then_some(())
    })
    .unwrap_or_else(|| panic!("both engines not busy:\n{}", agent.metrics()));
    pods_logs_speak_for_their_own_pods(&agent, &cfg, [a, b], &pod_log);
    signal(a1, libc::SIGSTOP);
    let opened = wait_for(Duration::from_secs(20), || {
        agent.manifests(a).into_iter().next()
    });
    let Some((bundle, m)) = opened else {
        signal(a1, libc::SIGCONT);
        panic!("no incident for pod a:\n{}", agent.log_text());
    };
    assert_eq!(m["suspects"][0]["rank"], 1, "{m}");
    // Pod b restarts: same pod, same port, a new engine.
    drop(pod_b);
    let _pod_b = start_pod_as(UID_B, CONTAINER_B, 8000, &db);
    let back = wait_for(Duration::from_secs(60), || rank_pid(b, &cfg, 1));
    std::thread::sleep(Duration::from_secs(3));
    let text = std::fs::read_to_string(bundle.join("manifest.json")).unwrap_or_default();
    signal(a1, libc::SIGCONT);
    assert!(back.is_some(), "pod b not found again");
    let m: Value = serde_json::from_str(&text).unwrap_or_default();
    assert!(
        m["outcome"].is_null(),
        "pod b's restart ended pod a's incident: {m}"
    );
    assert_eq!(agent.manifests(a).len(), 1, "{}", agent.kept_incidents(a));
    assert!(agent.manifests(b).is_empty(), "{}", agent.kept_incidents(b));
}
