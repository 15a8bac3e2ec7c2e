//! The real vLLM engine (CPU build) across two emulated nodes, one agent per node: TP=2
//! with the multiprocessing executor, the leader (`--node-rank 0`: API server, engine
//! core, rank 0) in the host's namespaces, the follower (`--node-rank 1 --headless`: its
//! launcher and rank 1) in its own PID and mount namespaces with a private `/dev/shm`,
//! its agent entered into them with `nsenter`. Traffic stays on loopback.

use hangwatch_tests::load::{cpu_engine_env, Load};
use hangwatch_tests::{free_port, http_get, metric, now_s, signal, wait_for, Agent};
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// One node's `vllm serve`, ended with its process group.
struct Node {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    /// `node_rank` 0 serves on `port`; 1 is headless, in its own namespaces.
    fn start(node_rank: u32, port: u16, master_port: u16) -> Node {
        let python = std::env::var("HANGWATCH_VLLM_PYTHON")
            .expect("HANGWATCH_VLLM_PYTHON is not set: run scripts/test.sh, which installs vLLM");
        let model = std::env::var("HANGWATCH_VLLM_MODEL")
            .expect("HANGWATCH_VLLM_MODEL is not set: run scripts/test.sh");
        let vllm = PathBuf::from(&python).with_file_name("vllm");
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("serve.log");
        let logf = std::fs::File::create(&log).expect("log");
        let mut serve: Vec<String> = [
            vllm.to_string_lossy().as_ref(),
            "serve",
            &model,
            "--served-model-name",
            "tiny",
            "--tensor-parallel-size",
            "2",
            "--dtype",
            "bfloat16",
            "--enforce-eager",
            "--max-model-len",
            "256",
            "--distributed-executor-backend",
            "mp",
            "--nnodes",
            "2",
            "--node-rank",
            &node_rank.to_string(),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            &master_port.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut cmd = if node_rank == 0 {
            serve.extend(["--host", "127.0.0.1", "--port"].map(String::from));
            serve.push(port.to_string());
            let mut c = Command::new(&serve[0]);
            c.args(&serve[1..]);
            c
        } else {
            serve.push("--headless".into());
            // Its own PID and mount namespaces, a private /dev/shm: another node.
            hangwatch_tests::nodes::another_node(&serve)
        };
        cpu_engine_env(&mut cmd, &node_rank.to_string());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log"))
            .stderr(logf)
            .process_group(0)
            .spawn()
            .expect("starting vllm serve");
        Node {
            child,
            log,
            _dir: dir,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The follower's `sh`/`vllm serve`, the first process inside its namespaces.
    fn inside_pid(&self) -> Option<u32> {
        let path = format!("/proc/{0}/task/{0}/children", self.child.id());
        let text = std::fs::read_to_string(path).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }
}

impl Node {
    /// SIGKILL to the node's whole process group (a node lost).
    fn kill(&self) {
        // SAFETY: kill(2) of our own child's process group, no memory involved.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        let _ = self.child.wait();
    }
}

fn engines(agent: &Agent) -> Vec<Value> {
    http_get(&agent.listen, "/status")
        .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
        .and_then(|v| v["engines"].as_array().cloned())
        .unwrap_or_default()
}

/// The host pid of the process titled `title` under `root` (another test's engine
/// may have a worker of the same title).
fn host_pid_of(root: u32, title: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let first = cmd.split(|b| *b == 0).next()?;
        let titled = String::from_utf8_lossy(first).trim() == title;
        (titled && descends(pid, root)).then_some(pid)
    })
}

/// Whether `pid`'s chain of parents reaches `root`.
fn descends(mut pid: u32, root: u32) -> bool {
    for _ in 0..16 {
        if pid == root {
            return true;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
        match after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

#[test]
fn real_vllm_tp2_across_two_nodes() {
    let port = free_port();
    let master_port = free_port();
    let follower = Node::start(1, 0, master_port);
    let leader = Node::start(0, port, master_port);
    let healthy = wait_for(Duration::from_secs(600), || {
        http_get(&format!("127.0.0.1:{port}"), "/health").filter(|(c, _)| *c == 200)
    });
    assert!(
        healthy.is_some(),
        "the two-node engine did not start:\nleader:\n{}\nfollower:\n{}",
        leader.log_tail(),
        follower.log_tail()
    );
    // One shared token; the follower's agent reports to the leader's (both agents on
    // loopback here, so the leader's agent is named instead of `<master addr>:<port>`).
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("peer-token");
    std::fs::write(&token, "two-nodes-one-deployment\n").expect("token");
    let conf0 = dir.path().join("node0.toml");
    std::fs::write(&conf0, format!("[peers]\ntoken_file = {:?}\n", token)).expect("config");
    let engine = format!("vllm-{port}");
    let c0 = conf0.to_string_lossy().to_string();
    let node0 = Agent::watching(&[&engine], &["--config", &c0]);
    let conf1 = dir.path().join("node1.toml");
    let text = format!(
        "[peers]\ntoken_file = {:?}\nleader_agent = {:?}\n",
        token, node0.listen
    );
    std::fs::write(&conf1, text).expect("config");
    let inside = follower.inside_pid().expect("the follower's first process");
    let t = inside.to_string();
    let nsenter = ["nsenter", "-t", &t, "--pid", "--mount", "--"];
    let c1 = conf1.to_string_lossy().to_string();
    let node1 = Agent::wrapped(&nsenter, &[], &["--config", &c1]);
    let deployment = format!("vllm-127.0.0.1-{master_port}");
    let part = format!("{deployment}-node1");

    // Each node's agent sees its part of one deployment.
    let seen = wait_for(Duration::from_secs(20), || {
        let e = engines(&node1)
            .into_iter()
            .find(|e| e["id"] == part.as_str())?;
        let l = engines(&node0)
            .into_iter()
            .find(|e| e["id"] == engine.as_str())?;
        Some((e, l))
    });
    let Some((e1, e0)) = seen else {
        panic!(
            "parts not seen: node 1 {:?}\nnode 0 {:?}\n{}",
            engines(&node1),
            engines(&node0),
            node1.log_text()
        );
    };
    println!("node 1 sees {e1}\nnode 0 sees {e0}");
    assert_eq!(e1["executor"], "follower");
    assert_eq!(e1["deployment"], deployment.as_str());
    assert_eq!(e1["node"]["node_rank"], 1);
    assert!(e1["port"].is_null(), "no API port guessed: {e1}");
    assert_eq!(e1["ranks"][0]["rank"], 1, "{e1}");
    assert_eq!(e0["deployment"], deployment.as_str());
    assert_eq!(e0["node"]["remote_ranks"], serde_json::json!([1]), "{e0}");

    // A follower part has no ring to say when serving began: it is judged once its
    // workers were seen at rest (`docs/multi-node.md`), as before the first request.
    let judged = wait_for(Duration::from_secs(30), || {
        let body = node1.metrics();
        let starting = [("engine", part.as_str()), ("state", "starting")];
        (metric(&body, "hangwatch_engine_state", &starting) == Some(0.0)).then_some(())
    });
    assert!(
        judged.is_some(),
        "node 1 still starting:\n{}",
        node1.log_text()
    );

    // Under load, rank 1 (on node 1) stopped.
    let load = Load::start(port, 2);
    let busy = wait_for(Duration::from_secs(60), || {
        (load.done.load(Ordering::Relaxed) >= 2).then_some(())
    });
    assert!(busy.is_some(), "no request served:\n{}", leader.log_tail());
    std::thread::sleep(Duration::from_secs(3));
    let worker = host_pid_of(follower.child.id(), "VLLM::Worker_TP1").expect("rank 1's worker");
    let fault_at = now_s();
    signal(worker, libc::SIGSTOP);
    let named = wait_for(Duration::from_secs(20), || {
        node1.manifests(&part).into_iter().next()
    });
    // The leader's incident joins node 1's (same id) once node 1's agent reported.
    let id = named
        .as_ref()
        .and_then(|(_, m)| m["incident_id"].as_str())
        .unwrap_or_default()
        .to_string();
    let joined = wait_for(Duration::from_secs(10), || {
        node0
            .manifests(&engine)
            .into_iter()
            .find(|(_, l)| l["incident_id"] == id.as_str())
    });
    let leader_says = wait_for(Duration::from_secs(25), || {
        let text = std::fs::read_to_string(&node0.log).ok()?;
        text.lines()
            .find(|l| {
                l.contains(&engine)
                    && (l.contains("rank 1 on node 1") || l.contains("rank 1 (node 1)"))
            })
            .map(|l| (now_s(), l.to_string()))
    });
    signal(worker, libc::SIGCONT);
    let Some((_, m)) = named else {
        panic!("node 1 named nobody:\n{}", node1.log_text());
    };
    let opened = m["opened_at"]
        .as_str()
        .and_then(hangwatch_tests::parse_rfc3339)
        .expect("opened_at");
    println!(
        "node 1's incident {:.1} s after SIGSTOP: {}",
        opened - fault_at,
        m["suspects"]
    );
    assert_eq!(m["suspects"][0]["rank"], 1, "{m}");
    assert_eq!(m["node"]["node_rank"], 1, "{m}");
    assert!(
        opened - fault_at <= 8.0,
        "opened {:.1} s after",
        opened - fault_at
    );
    let Some((_, l)) = joined else {
        panic!(
            "the leader has no incident {id}:\n{}\n{}\nnode 1:\n{}",
            node0.kept_incidents(&engine),
            node0.log_text(),
            node1.log_text()
        );
    };
    let leader_opened = l["opened_at"]
        .as_str()
        .and_then(hangwatch_tests::parse_rfc3339)
        .expect("opened_at");
    println!(
        "node 0's incident {id} {:.1} s after SIGSTOP: {}",
        leader_opened - fault_at,
        l["suspects"]
    );
    assert_eq!(l["suspects"][0]["rank"], 1, "{l}");
    assert_eq!(l["suspects"][0]["node"], 1, "{l}");
    assert_eq!(l["suspects"][0]["pid"], m["suspects"][0]["pid"], "{l}");
    assert!(leader_opened - fault_at <= 8.0);
    let Some((at, line)) = leader_says else {
        panic!("the leader never named node 1:\n{}", node0.log_text());
    };
    println!("node 0 {:.1} s after SIGSTOP: {line}", at - fault_at);
    leader_worker_stopped(&node0, &node1, &engine, &part, leader.child.id());
    drop(load);

    // The leader lost: the follower's part is an orphan (its worker lives on).
    let killed_at = now_s();
    leader.kill();
    let orphaned = wait_for(Duration::from_secs(40), || {
        let body = node1.metrics();
        (metric(
            &body,
            "hangwatch_engine_orphaned",
            &[("engine", part.as_str())],
        ) == Some(1.0))
        .then(now_s)
    });
    let Some(at) = orphaned else {
        panic!("node 1's part not orphaned:\n{}", node1.log_text());
    };
    println!(
        "leader killed: node 1's part orphaned {:.1} s after",
        at - killed_at
    );
    assert!(at - killed_at <= 30.0);
    // The gauge follows the verdict; the incident's bundle is written by the bundle
    // writer after it (CI once looked in the same instant and found none yet).
    let said = wait_for(Duration::from_secs(15), || {
        node1
            .manifests(&part)
            .into_iter()
            .any(|(_, m)| m["engine_reasons"].to_string().contains("orphaned"))
            .then_some(())
    });
    assert!(
        said.is_some(),
        "no orphan incident: {}",
        node1.kept_incidents(&part)
    );
    assert!(
        host_pid_of(follower.child.id(), "VLLM::Worker_TP1").is_some(),
        "the orphan lives on"
    );
}

/// Rank 0 (the leader's worker) stopped: the leader names it as on one node, and the
/// follower's agent bundles its part under the leader's incident id, its worker waiting
/// in the collective.
fn leader_worker_stopped(node0: &Agent, node1: &Agent, engine: &str, part: &str, leader_pid: u32) {
    let resolved = wait_for(Duration::from_secs(60), || {
        let open = |a: &Agent, e: &str| {
            a.manifests(e)
                .iter()
                .any(|(_, m)| m["outcome"].is_null() && m["trigger"] == "incident")
        };
        (!open(node0, engine) && !open(node1, part)).then_some(())
    });
    assert!(resolved.is_some(), "incidents still open after SIGCONT");
    let seen0 = node0.manifests(engine).len();
    let worker = host_pid_of(leader_pid, "VLLM::Worker_TP0").expect("rank 0's worker");
    let fault_at = now_s();
    signal(worker, libc::SIGSTOP);
    let named = wait_for(Duration::from_secs(20), || {
        node0.manifests(engine).into_iter().nth(seen0)
    });
    let Some((_, m)) = named else {
        signal(worker, libc::SIGCONT);
        panic!("the leader named nobody:\n{}", node0.log_text());
    };
    let id = m["incident_id"].as_str().unwrap_or_default().to_string();
    let bundle = wait_for(Duration::from_secs(15), || {
        node1
            .manifests(part)
            .into_iter()
            .find(|(_, f)| f["incident_id"] == id.as_str())
    });
    signal(worker, libc::SIGCONT);
    println!(
        "rank 0 stopped: node 0's incident {id} {:.1} s after, suspects {}",
        m["opened_at"]
            .as_str()
            .and_then(hangwatch_tests::parse_rfc3339)
            .unwrap_or(0.0)
            - fault_at,
        m["suspects"]
    );
    assert_eq!(m["suspects"][0]["rank"], 0, "{m}");
    let Some((path, f)) = bundle else {
        panic!("node 1 wrote no bundle for {id}:\n{}", node1.log_text());
    };
    assert_eq!(f["trigger"], "peer", "{f}");
    let stacks =
        std::fs::read_to_string(path.join("stacks").join("rank-1.txt")).unwrap_or_default();
    println!(
        "node 1's bundle for {id}: rank 1 {}",
        if stacks.contains("all_reduce") {
            "in all_reduce"
        } else {
            "elsewhere"
        }
    );
    assert!(
        stacks.contains("all_reduce"),
        "{stacks}\nnode 1:\n{}",
        node1.log_text()
    );
}
