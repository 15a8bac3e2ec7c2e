//! `hangwatch status --json` against the simulator reports exactly its pids, ranks and
//! rings; the simulator matches the real vLLM recordings (sizes, titles, flags).

use hangwatch_tests::{hangwatch_bin, hangwatch_json, repo_root, wait_for, Sim};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

fn status() -> Value {
    hangwatch_json(&["status", "--json"])
}

fn engine(id: &str) -> Option<Value> {
    status()["engines"]
        .as_array()?
        .iter()
        .find(|e| e["id"] == id)
        .cloned()
}

fn check_tp(tp: usize) {
    let sim = Sim::start(&["--tp", &tp.to_string(), "--load", "steady"]);
    // Rings appear a moment after the processes: wait until all are found.
    let e = wait_for(Duration::from_secs(20), || {
        engine(&sim.engine_id()).filter(|e| e["rings"].as_array().map_or(0, |r| r.len()) == tp + 2)
    })
    .unwrap_or_else(|| panic!("TP={tp}: engine or rings not found: {}", status()));
    assert_eq!(e["api_pid"].as_u64(), Some(u64::from(sim.api_pid())));
    assert_eq!(e["core_pid"].as_u64(), Some(u64::from(sim.core_pid())));
    assert_eq!(e["tp"].as_u64(), Some(tp as u64));
    assert_eq!(e["model"], "fake-model");
    assert_eq!(e["port"].as_u64(), Some(u64::from(sim.port)));
    let ranks = e["ranks"].as_array().expect("ranks");
    let pids: Vec<u32> = ranks
        .iter()
        .map(|r| r["pid"].as_u64().unwrap_or(0) as u32)
        .collect();
    assert_eq!(
        pids,
        sim.worker_pids(),
        "rank order = worker pids in rank order"
    );
    for (i, r) in ranks.iter().enumerate() {
        assert_eq!(r["rank"].as_u64(), Some(i as u64));
        assert_eq!(r["title"], format!("VLLM::Worker_TP{i}"));
    }
    let rings = e["rings"].as_array().expect("rings");
    let names: Vec<&str> = rings.iter().filter_map(|r| r["name"].as_str()).collect();
    let want = &sim.started["rings"];
    assert_eq!(names[0], want["rpc"], "rpc ring first");
    assert_eq!(rings[0]["role"], "rpc");
    assert_eq!(rings[0]["readers"].as_u64(), Some(tp as u64));
    for r in 0..tp {
        let ring = &rings[1 + r];
        assert_eq!(ring["role"], "reply");
        assert_eq!(ring["rank"].as_u64(), Some(r as u64));
        assert_eq!(ring["name"], want["reply"][r]);
    }
    let tpb = &rings[tp + 1];
    assert_eq!(tpb["role"], "tp_broadcast");
    assert_eq!(tpb["name"], want["tp"]);
    assert_eq!(tpb["readers"].as_u64(), Some(tp as u64 - 1));
    assert_eq!(tpb["writer_rank"].as_u64(), Some(0));
    assert_eq!(e["execute_timeout_seconds"].as_f64(), Some(300.0));
    // SIGTERM: the simulator removes every segment it made.
    let segs: Vec<String> = names.iter().map(|n| format!("/dev/shm/{n}")).collect();
    drop(sim);
    for s in segs {
        assert!(!std::path::Path::new(&s).exists(), "{s} left behind");
    }
}

#[test]
fn status_reports_the_simulator_tp2() {
    check_tp(2);
}

#[test]
fn status_reports_the_simulator_tp8() {
    check_tp(8);
}

#[test]
fn status_without_engines_says_so() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("stat"), "btime 1\n").expect("stat");
    let out = Command::new(hangwatch_bin())
        .args(["status", "--proc-root"])
        .arg(dir.path())
        .output()
        .expect("status");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "no vLLM engines found\n"
    );
    let out = Command::new(hangwatch_bin())
        .args(["status", "--json", "--proc-root"])
        .arg(dir.path())
        .output()
        .expect("status");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["engines"].as_array().map(|a| a.len()), Some(0));
}

/// `status --config` answers as the agent with that configuration would: its
/// `proc_root` (and engine filter, pod folder) apply; a broken file is named, exit 2.
#[test]
fn status_reads_the_agents_configuration() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("stat"), "btime 1\n").expect("stat");
    let cfg = dir.path().join("hangwatch.toml");
    std::fs::write(&cfg, format!("proc_root = \"{}\"\n", dir.path().display())).expect("cfg");
    let status_with = |cfg: &std::path::Path| {
        Command::new(hangwatch_bin())
            .args(["status", "--config"])
            .arg(cfg)
            .output()
            .expect("status")
    };
    let out = status_with(&cfg);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "no vLLM engines found\n"
    );
    std::fs::write(&cfg, "interval = \"1s\"\nengines = 5\n").expect("cfg");
    let out = status_with(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("line 2") && err.contains("engines"), "{err}");
}

/// The simulator's TP=2 rings have the sizes and flag patterns of the real recordings.
#[test]
fn simulator_matches_the_real_recordings() {
    let rec: Value = serde_json::from_str(
        &std::fs::read_to_string(
            repo_root().join("testdata/vllm/snapshots/runA-3-rank1-stopped-3s.json"),
        )
        .expect("recording"),
    )
    .expect("JSON");
    let mut real_sizes: Vec<u64> = rec["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("psm_")))
        .filter_map(|s| s["size"].as_u64())
        .collect();
    real_sizes.sort_unstable();

    let sim = Sim::start(&[
        "--tp",
        "2",
        "--load",
        "steady",
        "--fault",
        "rank=1,after=4,mode=stop",
    ]);
    let e = wait_for(Duration::from_secs(20), || {
        engine(&sim.engine_id()).filter(|e| e["rings"].as_array().map_or(0, |r| r.len()) == 4)
    })
    .expect("engine");
    let mut sizes: Vec<u64> = e["rings"]
        .as_array()
        .expect("rings")
        .iter()
        .filter_map(|r| r["size"].as_u64())
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, real_sizes, "ring sizes as in vLLM 0.32 at TP=2");
    let titles: Vec<&str> = e["ranks"]
        .as_array()
        .expect("ranks")
        .iter()
        .filter_map(|r| r["title"].as_str())
        .collect();
    assert_eq!(titles, vec!["VLLM::Worker_TP0", "VLLM::Worker_TP1"]);
    // The core's environment is blanked by the title change, as in vLLM.
    let env = std::fs::read(format!("/proc/{}/environ", sim.core_pid())).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&env).contains("PATH="),
        "core environ should be blank"
    );

    // Rank 1 stopped before its next RPC: one or two chunks `1|10` (two when it stopped
    // before sample_tokens, which rank 0 answers alone), as in the recordings (runD-3:
    // `1:1|10`; runA-3: `8:1|10 9:1|10`).
    sim.wait_event("fault", Duration::from_secs(30))
        .expect("fault");
    let rank1 = sim.worker_pids()[1];
    assert!(hangwatch_tests::wait_stopped(
        rank1,
        Duration::from_secs(10)
    ));
    let e = engine(&sim.engine_id()).expect("engine");
    let flags: Vec<String> = e["rings"][0]["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    let pending = flags.iter().filter(|f| *f == "1|10").count();
    assert!((1..=2).contains(&pending), "{flags:?}");
    assert!(
        flags.iter().all(|f| f == "1|10" || f == "1|11"),
        "{flags:?}"
    );
    assert_eq!(e["rings"][0]["unread"][0], 0);
    assert_eq!(e["rings"][0]["unread"][1].as_u64(), Some(pending as u64));
    let rank1 = &e["ranks"][1];
    assert_eq!(rank1["state"], "T");
}
