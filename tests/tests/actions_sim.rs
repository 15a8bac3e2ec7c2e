//! Actions on confirmed incidents (`[actions]`), with the real binary against the
//! simulator: `exec` runs once per incident with the incident on its input, a second
//! incident within the window is held back, a dry run does nothing but say so, a missing
//! program is said and the agent runs on; and
//! `terminate` ends a hung engine's API server so that its supervisor (a restart loop,
//! as systemd's `Restart=` would) serves again in seconds instead of after vLLM's
//! execute timeout.

use hangwatch_tests::{
    free_port, metric, now_s, python, read_jsonl, repo_root, signal, wait_for, Agent, Sim,
};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn config(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("config");
    path.display().to_string()
}

fn actions(agent: &Agent, engine: &str, action: &str, result: &str) -> f64 {
    let l = [("engine", engine), ("action", action), ("result", result)];
    metric(&agent.metrics(), "hangwatch_actions_total", &l).unwrap_or(0.0)
}

#[test]
fn exec_runs_once_per_window_and_a_dry_run_only_says_so() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let got = d.join("incidents.jsonl");
    let dry_got = d.join("dry.jsonl");
    let exec = |out: &Path, dry: bool| {
        format!(
            "[actions]\nmin_age = \"2s\"\ndry_run = {dry}\n[actions.exec]\ncommand = [\"sh\", \"-c\", \"cat >> {0}; echo >> {0}\"]\ntimeout = \"5s\"\n",
            out.display()
        )
    };
    let port = free_port();
    let engine = format!("vllm-{port}");
    let real = config(d, "real.toml", &exec(&got, false));
    let dry = config(d, "dry.toml", &exec(&dry_got, true));
    // A third agent whose command does not exist: it says so and goes on judging.
    let missing = config(
        d,
        "missing.toml",
        "[actions]\nmin_age = \"2s\"\n[actions.exec]\ncommand = [\"/nonexistent/page-someone\"]\n",
    );
    let agent = Agent::watching(&[&engine], &["--config", &real]);
    let dry_agent = Agent::watching(&[&engine], &["--config", &dry]);
    let missing_agent = Agent::watching(&[&engine], &["--config", &missing]);
    let sim = Sim::start_on(port, &["--tp", "2"], &[]);
    std::thread::sleep(Duration::from_secs(6));
    let rank1 = sim.worker_pids()[1];

    signal(rank1, libc::SIGSTOP);
    let ran = wait_for(Duration::from_secs(40), || {
        (actions(&agent, &engine, "exec", "ok") == 1.0).then_some(())
    });
    assert!(ran.is_some(), "exec never ran:\n{}", agent.log_text());
    let lines: Vec<serde_json::Value> = read_jsonl(&got);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let inc = &lines[0]["incident"];
    println!(
        "exec got incident {} naming {}",
        inc["id"], inc["suspects"][0]
    );
    assert_eq!(inc["engine"], engine.as_str());
    assert_eq!(inc["suspects"][0]["rank"], 1);
    assert!(lines[0]["bundle"]
        .as_str()
        .is_some_and(|b| b.contains(inc["id"].as_str().unwrap_or("?"))));
    let dry_said = wait_for(Duration::from_secs(10), || {
        (actions(&dry_agent, &engine, "exec", "dry_run") == 1.0).then_some(())
    });
    assert!(dry_said.is_some(), "{}", dry_agent.log_text());
    assert!(!dry_got.exists(), "a dry run ran the command");
    assert!(dry_agent.log_text().contains("dry run: would run sh -c"));
    let failed = wait_for(Duration::from_secs(10), || {
        (actions(&missing_agent, &engine, "exec", "failed") == 1.0).then_some(())
    });
    let said = missing_agent.log_text();
    assert!(failed.is_some(), "{said}");
    assert!(
        said.contains("cannot run /nonexistent/page-someone"),
        "{said}"
    );

    // Resumed, then stuck again within the window: a new incident, no second exec.
    signal(rank1, libc::SIGCONT);
    let over = wait_for(Duration::from_secs(30), || {
        let body = agent.metrics();
        (metric(
            &body,
            "hangwatch_incident_open",
            &[("engine", engine.as_str())],
        ) == Some(0.0))
        .then_some(())
    });
    assert!(
        over.is_some(),
        "the incident never ended:\n{}",
        agent.log_text()
    );
    // The agent whose command was missing still runs and saw the engine recover.
    let judged = wait_for(Duration::from_secs(10), || {
        let body = missing_agent.metrics();
        let open = metric(&body, "hangwatch_incident_open", &[("engine", &engine)]);
        (open == Some(0.0)).then_some(())
    });
    assert!(judged.is_some(), "{}", missing_agent.log_text());
    signal(rank1, libc::SIGSTOP);
    let held = wait_for(Duration::from_secs(40), || {
        (actions(&agent, &engine, "exec", "skipped") == 1.0).then_some(())
    });
    signal(rank1, libc::SIGCONT);
    assert!(held.is_some(), "the second incident:\n{}", agent.log_text());
    assert_eq!(
        read_jsonl(&got).len(),
        1,
        "exec ran twice within the window"
    );
    assert!(agent.log_text().contains("actions.window"));
    assert_eq!(actions(&agent, &engine, "exec", "ok"), 1.0);
}

/// The engine under a supervisor that restarts it (`while :; do vllm serve …; done`);
/// its first run hangs (rank 1 stopped in a step). hangwatch ends its API server once
/// the bundle is complete; the supervisor brings it back.
#[test]
fn terminate_brings_a_hung_engine_back_through_its_supervisor() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let port = free_port();
    let engine = format!("vllm-{port}");
    let events = d.join("events.jsonl");
    let cfg = config(
        d,
        "terminate.toml",
        "[actions.terminate]\nenabled = true\ngrace = \"5s\"\n",
    );
    let agent = Agent::watching(&[&engine], &["--config", &cfg]);
    let script = repo_root().join("tests/fakevllm/fakevllm.py");
    let run = format!(
        "'{py}' '{script}' --tp 2 --port {port} --events '{ev}' --log '{log}'",
        py = python(),
        script = script.display(),
        ev = events.display(),
        log = d.join("vllm.log").display()
    );
    let loop_ = format!(
        "first=1; while :; do if [ $first = 1 ]; then first=0; {run} --fault rank=1,after=8,mode=stop,at=in_step; else {run}; fi; sleep 0.5; done"
    );
    let mut supervisor = Command::new("sh")
        .args(["-c", &loop_])
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("supervisor");
    let pgid = supervisor.id() as i32;
    let stop = || {
        // SAFETY: kill(2) of the supervisor's process group, which this test started.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    };
    let started = |n: usize| {
        read_jsonl(&events)
            .into_iter()
            .filter(|e| e["event"] == "started")
            .nth(n)
            .map(|_| now_s())
    };
    let fault = wait_for(Duration::from_secs(60), || {
        read_jsonl(&events)
            .into_iter()
            .find(|e| e["event"] == "fault")
    });
    let again = wait_for(Duration::from_secs(60), || started(1));
    let log = agent.log_text();
    stop();
    let _ = supervisor.wait();
    // The second run's processes outlive the shell only briefly: end them too.
    for e in read_jsonl(&events)
        .into_iter()
        .filter(|e| e["event"] == "started")
    {
        let pids = e["worker_pids"].as_array().cloned().unwrap_or_default();
        for p in pids.iter().chain([&e["api_pid"], &e["core_pid"]]) {
            signal(p.as_u64().unwrap_or(0) as u32, libc::SIGKILL);
        }
    }
    let (Some(fault), Some(again)) = (fault, again) else {
        panic!("the engine did not come back:\n{log}");
    };
    let fault_at = fault["at"].as_f64().unwrap_or(0.0);
    println!(
        "fault → the engine started again: {:.1} s",
        again - fault_at
    );
    assert!(log.contains("actions: terminate"), "{log}");
    assert!(again - fault_at <= 25.0, "{:.1} s\n{log}", again - fault_at);
    let ok = wait_for(Duration::from_secs(10), || {
        (actions(&agent, &engine, "terminate", "ok") == 1.0).then_some(())
    });
    assert!(ok.is_some(), "{}", agent.log_text());
}
