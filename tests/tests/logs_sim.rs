//! What vLLM says, read with no configuration from the simulator's `vllm serve >FILE 2>&1`
//! output: the hang is corroborated by the ring wait message and `Running > 0` at zero
//! throughput, the engine killed at its timeout is `dead` with the RPC's method in the
//! summary, and the environment lint reports the two NCCL variables that do nothing.

use hangwatch_tests::{detect, hangwatch_bin, metric, wait_for, Agent, Sim};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const SECRETS: [&str; 5] = [
    "hunter2",
    "hf_leakytoken12345",
    "tok-leak-777",
    "sk-planted-secret-0001",
    "envpass-42",
];

fn plant_secret_lines(sim: &Sim) {
    use std::io::Write;
    let w0 = sim.worker_pids()[0];
    let api = sim.api_pid();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&sim.log)
        .expect("simulator log");
    let _ = writeln!(f, "(Worker_TP0 pid={w0}) WARNING 11-29 13:36:21 [pynccl.py:1] NCCL WARN connect to https://svc:hunter2@store.example/x failed");
    let _ = writeln!(f, "(APIServer pid={api}) INFO 11-29 13:36:21 [api.py:1] fetched https://hf_leakytoken12345@hub.example/x?token=tok-leak-777");
}

/// No planted secret reaches the bundle (any file), the agent's log, its metrics or its
/// recording.
fn no_secret_anywhere(bundle: &std::path::Path, agent: &Agent) {
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    files(bundle, &mut all);
    assert!(all.len() >= 8, "{all:?}");
    let mut texts: Vec<(String, String)> = all
        .iter()
        .map(|p| {
            let b = std::fs::read(p).unwrap_or_default();
            (
                p.display().to_string(),
                String::from_utf8_lossy(&b).into_owned(),
            )
        })
        .collect();
    texts.push(("agent log".into(), agent.log_text()));
    texts.push(("metrics".into(), agent.metrics()));
    let rec = std::fs::read(&agent.record).unwrap_or_default();
    texts.push((
        "recording".into(),
        String::from_utf8_lossy(&rec).into_owned(),
    ));
    for (name, text) in &texts {
        for s in SECRETS {
            assert!(!text.contains(s), "{s} leaked into {name}");
        }
    }
    let logs = std::fs::read_to_string(bundle.join("logs.txt")).unwrap_or_default();
    assert!(
        logs.contains("<redacted>"),
        "the planted lines are there, scrubbed:\n{logs}"
    );
}

#[test]
fn logs_corroborate_the_hang_and_the_timeout_ends_it_dead() {
    let (agent, sim) = hangwatch_tests::watched_sim(
        &[],
        &[
            "--tp",
            "2",
            "--load",
            "steady",
            "--fault",
            "rank=1,after=4,mode=sleep,at=in_step",
        ],
        &[
            ("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "24"),
            ("VLLM_RINGBUFFER_WARNING_INTERVAL", "4"),
            ("VLLM_LOG_STATS_INTERVAL", "2"),
            ("NCCL_TIMEOUT", "1800000"),
            ("NCCL_HEART_BEAT_POLL_MS", "5000"),
            ("VLLM_API_KEY", "sk-planted-secret-0001"),
            ("VLLM_CONFIG_URL", "https://cfg:envpass-42@config.example/x"),
        ],
    );
    let engine = sim.engine_id();
    // Secrets in what the engine's own processes log: an event line and a plain line.
    plant_secret_lines(&sim);
    let d = detect(&agent, &sim, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    println!(
        "opened {:.1} s after the fault: {}",
        d.opened_after, d.manifest
    );
    // Wait for vLLM's own timeout to kill the engine: the incident ends dead.
    let dead = wait_for(Duration::from_secs(40), || {
        let m: Value =
            serde_json::from_str(&std::fs::read_to_string(d.bundle.join("manifest.json")).ok()?)
                .ok()?;
        (m["verdict"] == "dead").then_some(m)
    })
    .unwrap_or_else(|| panic!("no dead verdict:\n{}", agent.log_text()));
    let reasons: Vec<String> = dead["engine_reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    println!("dead: engine reasons {reasons:?}");
    for r in ["ring_wait_message", "log_no_progress", "rpc_timeout"] {
        assert!(
            reasons.iter().any(|x| x == r),
            "{r} missing from {reasons:?}"
        );
    }
    let summary = std::fs::read_to_string(d.bundle.join("summary.txt")).expect("summary");
    assert!(
        summary.contains("RPC call to execute_model timed out"),
        "{summary}"
    );
    assert!(summary.contains("verdict: DEAD"), "{summary}");
    assert!(
        summary.contains("No available shared memory broadcast block"),
        "{summary}"
    );
    let events = std::fs::read_to_string(d.bundle.join("events.jsonl")).expect("events");
    for k in ["\"ring_wait\"", "\"rpc_timeout\"", "\"stats\""] {
        assert!(events.contains(k), "{k} not in events.jsonl");
    }
    let logs = std::fs::read_to_string(d.bundle.join("logs.txt")).expect("logs");
    assert!(
        logs.contains("TimeoutError: RPC call to execute_model timed out."),
        "{logs}"
    );
    assert!(
        events.contains("\"nccl\""),
        "the planted NCCL line is an event"
    );
    no_secret_anywhere(&d.bundle, &agent);
    let lint: Value =
        serde_json::from_str(&std::fs::read_to_string(d.bundle.join("lint.json")).expect("lint"))
            .expect("json");
    let codes: Vec<&str> = lint["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["code"].as_str())
        .collect();
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == "not-an-nccl-variable")
            .count(),
        2,
        "{lint}"
    );

    let body = agent.metrics();
    assert!(
        metric(
            &body,
            "hangwatch_log_events_total",
            &[("engine", &engine), ("kind", "ring_wait")]
        )
        .is_some_and(|v| v >= 1.0),
        "{body}"
    );
    assert!(
        metric(
            &body,
            "hangwatch_log_events_total",
            &[("engine", &engine), ("kind", "rpc_timeout")]
        ) == Some(1.0)
    );
    assert!(body.contains("hangwatch_log_lines_total{source="));
}

#[test]
fn lint_reports_variables_that_do_nothing_and_metrics_show_vllm_running() {
    let (agent, sim) = hangwatch_tests::watched_sim(
        &[],
        &["--tp", "2", "--load", "steady"],
        &[
            ("NCCL_TIMEOUT", "1800000"),
            ("NCCL_HEART_BEAT_POLL_MS", "5000"),
            ("VLLM_API_KEY", "sk-secret-value"),
        ],
    );
    let out = Command::new(hangwatch_bin())
        .args(["lint", "--json", "--engine", &sim.engine_id()])
        .output()
        .expect("lint");
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let msgs: Vec<String> = v["engines"][0]["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["message"].as_str().map(String::from))
        .collect();
    assert!(
        msgs.iter().any(|m| m.starts_with("NCCL_TIMEOUT=1800000")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("NCCL_HEART_BEAT_POLL_MS=5000")),
        "{msgs:?}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("sk-secret-value"));
    let engine = sim.engine_id();
    let seen = wait_for(Duration::from_secs(15), || {
        let body = agent.metrics();
        let running = metric(
            &body,
            "hangwatch_vllm_requests_running",
            &[("engine", &engine)],
        )
        .filter(|r| *r >= 1.0)?;
        let finding = metric(
            &body,
            "hangwatch_config_finding",
            &[("engine", &engine), ("code", "not-an-nccl-variable")],
        )?;
        Some((running, finding, body))
    });
    let (running, finding, body) = seen.unwrap_or_else(|| panic!("{}", agent.metrics()));
    assert!(running >= 1.0, "steady load keeps requests running");
    assert_eq!(finding, 1.0);
    assert!(!body.contains("sk-secret-value"));
    // No NVML on this machine: the gpu collector says so, everything else runs.
    assert_eq!(
        metric(&body, "hangwatch_collector_up", &[("collector", "gpu")]),
        Some(0.0),
        "{body}"
    );
    assert!(agent.log_text().contains("NVML not available"));
    assert!(agent.log_text().contains("NCCL_TIMEOUT=1800000"));
    assert!(!agent.log_text().contains("sk-secret-value"));
}
