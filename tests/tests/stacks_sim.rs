//! Per-rank Python stacks against the simulator (TP=4, rank 2 hangs): the bundle holds
//! every rank's stack, the hung rank's shows the injected function, the others the
//! simulated all-reduce, and the verdict names rank 2 — also where the rings cannot.

use hangwatch_tests::{detect, hangwatch_bin, wait_for, Agent, Sim};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

struct Case {
    mode: &'static str,
    at: &'static str,
    frame: &'static str,
}

const CASES: [Case; 8] = [
    Case {
        mode: "sleep",
        at: "in_step",
        frame: "stuck_in_python_sleep",
    },
    Case {
        mode: "spin",
        at: "in_step",
        frame: "stuck_in_python_spin",
    },
    Case {
        mode: "native",
        at: "in_step",
        frame: "stuck_in_native_call",
    },
    Case {
        mode: "sleep",
        at: "next_rpc",
        frame: "stuck_in_python_sleep",
    },
    Case {
        mode: "spin",
        at: "next_rpc",
        frame: "stuck_in_python_spin",
    },
    Case {
        mode: "native",
        at: "next_rpc",
        frame: "stuck_in_native_call",
    },
    Case {
        mode: "stop",
        at: "next_rpc",
        frame: "stop_self",
    },
    Case {
        mode: "collective",
        at: "in_step",
        frame: "mismatched_collective",
    },
];

fn run(agent: &Agent, c: &Case) -> Result<String, String> {
    let fault = format!("rank=2,after=5,mode={},at={}", c.mode, c.at);
    let sim = Sim::start(&["--tp", "4", "--load", "steady", "--fault", &fault]);
    let d = detect(agent, &sim, Duration::from_secs(15))?;
    let label = format!("{} at {}", c.mode, c.at);
    // The follow-up round lands a few seconds after the incident opened.
    let m = wait_for(Duration::from_secs(20), || {
        let text = std::fs::read_to_string(d.bundle.join("stacks.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        (v["rounds"].as_array()?.len() >= 3).then_some(v)
    })
    .ok_or(format!("{label}: fewer than 3 stack rounds in the bundle"))?;
    let rank2 = std::fs::read_to_string(d.bundle.join("stacks/rank-2.txt"))
        .map_err(|e| format!("{label}: rank-2.txt: {e}"))?;
    if !rank2.contains(c.frame) {
        return Err(format!("{label}: rank-2.txt lacks {}:\n{rank2}", c.frame));
    }
    for r in [0, 1, 3] {
        let t = std::fs::read_to_string(d.bundle.join(format!("stacks/rank-{r}.txt")))
            .unwrap_or_default();
        if !t.contains("all_reduce") {
            return Err(format!("{label}: rank {r} not in all_reduce:\n{t}"));
        }
    }
    let core = std::fs::read_to_string(d.bundle.join("stacks/engine-core.txt")).unwrap_or_default();
    if !core.contains("get_response") {
        return Err(format!(
            "{label}: engine core not waiting for a reply:\n{core}"
        ));
    }
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(d.bundle.join("manifest.json")).unwrap_or_default(),
    )
    .unwrap_or_default();
    let named: Vec<u64> = manifest["suspects"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["rank"].as_u64()).collect())
        .unwrap_or_default();
    if named != vec![2] {
        return Err(format!(
            "{label}: named {named:?}, expected [2]: {manifest}"
        ));
    }
    let summary = std::fs::read_to_string(d.bundle.join("summary.txt")).unwrap_or_default();
    if !summary.contains(&format!("rank 2: in {}", c.frame)) && !summary.contains(c.frame) {
        return Err(format!(
            "{label}: summary does not say where rank 2 is:\n{summary}"
        ));
    }
    // Ranks are grouped by what their stacks say, "unchanged for N s" included, so the
    // three waiting ranks may share a line or not (a rank can arrive at the all-reduce
    // between two rounds).
    let waiting: std::collections::BTreeSet<u32> = summary
        .lines()
        .filter(|l| l.contains("waiting in all_reduce"))
        .filter_map(|l| l.trim().split(':').next())
        .flat_map(|who| {
            who.trim_start_matches("ranks ")
                .trim_start_matches("rank ")
                .split(',')
                .filter_map(|r| r.trim().parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    // In the mismatched-collective case rank 2 waits in an all-reduce of its own.
    let expected: std::collections::BTreeSet<u32> = [0, 1, 3].into();
    if !waiting.is_superset(&expected) || (c.mode != "collective" && waiting != expected) {
        return Err(format!(
            "{label}: summary lacks the others' all_reduce:\n{summary}"
        ));
    }
    let _ = m;
    Ok(format!(
        "{label}: named [2] {:.1} s after the fault; reasons {:?}",
        d.opened_after, manifest["suspects"][0]["reasons"]
    ))
}

#[test]
fn stacks_name_rank_2_in_every_mode() {
    let agent = Agent::start(&[]);
    let results: Vec<Result<String, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = CASES
            .chunks(4)
            .map(|chunk| {
                let agent = &agent;
                s.spawn(move || chunk.iter().map(|c| run(agent, c)).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut failed = Vec::new();
    for r in &results {
        match r {
            Ok(line) => println!("{line}"),
            Err(e) => failed.push(e.clone()),
        }
    }
    assert_eq!(results.len(), CASES.len());
    assert!(
        failed.is_empty(),
        "{}\n---\n{}",
        failed.join("\n---\n"),
        agent.log_text()
    );
}

#[test]
fn stacks_command_dumps_a_stopped_rank_and_reports_failures_as_reasons() {
    let sim = Sim::start(&[
        "--tp",
        "2",
        "--load",
        "steady",
        "--fault",
        "rank=1,after=2,mode=stop",
    ]);
    sim.wait_event("fault", Duration::from_secs(30))
        .expect("fault");
    assert!(hangwatch_tests::wait_stopped(
        sim.worker_pids()[1],
        Duration::from_secs(10)
    ));
    let out = Command::new(hangwatch_bin())
        .args(["stacks", "--json", "--engine", &sim.engine_id()])
        .output()
        .expect("stacks");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let dumps = v["engines"][0]["dumps"].as_array().expect("dumps").clone();
    assert_eq!(dumps.len(), 4, "engine core, API server, 2 ranks");
    assert!(
        dumps.iter().any(|d| d["pid"] == sim.api_pid()),
        "the API server is dumped too"
    );
    let r1 = dumps.iter().find(|d| d["rank"] == 1).expect("rank 1");
    assert!(
        r1["error"].is_null(),
        "a stopped rank is still dumped: {r1}"
    );
    assert_eq!(r1["mode"], "nonblocking");
    assert!(r1.to_string().contains("stop_self"));
    let text = Command::new(hangwatch_bin())
        .args(["stacks", "--engine", &sim.engine_id()])
        .output()
        .expect("stacks");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Thread ") && text.contains("stop_self (faults.py:"),
        "{text}"
    );
    let none = Command::new(hangwatch_bin())
        .args(["stacks", "--engine", "vllm-nope"])
        .output()
        .expect("stacks");
    assert_eq!(none.status.code(), Some(1));
}

#[test]
fn without_ptrace_rights_stacks_say_so_and_nothing_fails() {
    let sim = Sim::start(&["--tp", "2", "--load", "steady"]);
    // Run as nobody: no right to read root's processes.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(hangwatch_bin())
        .args(["stacks", "--json", "--engine", &sim.engine_id()])
        .output()
        .expect("setpriv (util-linux)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let dumps = v["engines"][0]["dumps"].as_array().expect("dumps").clone();
    assert_eq!(dumps.len(), 4, "engine core, API server, 2 ranks");
    for d in &dumps {
        assert_eq!(d["error"]["kind"], "permission", "{d}");
        assert!(d["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("CAP_SYS_PTRACE"));
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("CAP_SYS_PTRACE"));
}
