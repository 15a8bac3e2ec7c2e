//! The binary's command line and its behaviour around incidents: config errors, version,
//! replay equal to live, death at vLLM's timeout, metrics, bundle retention and a bundle
//! directory that cannot be written.

use hangwatch_tests::{detect, hangwatch_bin, metric, wait_for, Agent, Sim};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// `--version` names the commit the binary was built from (the package and the image
/// carry the same binary, so they say the same).
#[test]
fn version_prints_the_commit() {
    let out = Command::new(hangwatch_bin())
        .arg("--version")
        .output()
        .expect("run");
    assert!(out.status.success());
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(hangwatch_tests::repo_root())
        .output()
        .expect("git");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert_eq!(head.len(), 12, "no commit from git");
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let expected = format!("hangwatch {} (commit {head}", env!("CARGO_PKG_VERSION"));
    assert!(printed.starts_with(&expected), "{printed} (HEAD {head})");
}

#[test]
fn bad_config_stops_startup_with_file_line_and_key() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = dir.path().join("h.toml");
    std::fs::write(
        &cfg,
        "interval = \"1s\"\n[judge]\nsuspect_after = \"3s\"\nconfirm_aftr = \"10s\"\n",
    )
    .expect("write");
    let out = Command::new(hangwatch_bin())
        .args(["run", "--check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&cfg.display().to_string()), "{err}");
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("confirm_aftr"), "{err}");

    std::fs::write(&cfg, "interval = \"fast\"\n").expect("write");
    let out = Command::new(hangwatch_bin())
        .args(["run", "--check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1, key `interval`"));

    // Environment overrides are validated too, and name the variable.
    let out = Command::new(hangwatch_bin())
        .args(["run", "--check-config", "--config"])
        .arg(dir.path().join("missing-is-an-error.toml"))
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "an explicitly named file must exist"
    );
    let out = Command::new(hangwatch_bin())
        .args(["run", "--check-config"])
        .env("HANGWATCH_JUDGE_CONFIRM_AFTER", "soon")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HANGWATCH_JUDGE_CONFIRM_AFTER"));

    let example = hangwatch_tests::repo_root().join("deploy/hangwatch.toml");
    let out = Command::new(hangwatch_bin())
        .args(["run", "--check-config", "--config"])
        .arg(example)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("interval = \"1s\""));
}

/// Receivers are checked before anything runs: an unknown format or a secret file that
/// cannot be read stops start-up with exit 2 naming the key; a good configuration is
/// shown with its URLs cut to their host and no secret in sight.
#[test]
fn check_config_validates_receivers_and_shows_no_secret() {
    let dir = tempfile::tempdir().expect("tmp");
    let check = |toml: &str| {
        let p = dir.path().join("h.toml");
        std::fs::write(&p, toml).expect("config");
        Command::new(hangwatch_bin())
            .args(["run", "--check-config", "--config"])
            .arg(&p)
            .output()
            .expect("run")
    };
    let out = check("[[alerts.webhooks]]\nurl = \"https://h.example/x\"\nformat = \"teams\"\n");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("line 3") && err.contains("format"), "{err}");

    let missing = dir.path().join("no-such.secret");
    let out = check(&format!(
        "[[alerts.webhooks]]\nurl = \"https://h.example/x\"\nsecret_file = \"{}\"\n",
        missing.display()
    ));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("alerts.webhooks[0].secret_file"), "{err}");

    let token = dir.path().join("token");
    std::fs::write(&token, "xoxb-very-secret").expect("token");
    let out = check(&format!(
        "[[alerts.webhooks]]\nurl = \"https://hooks.slack.com/services/T0/B0/SECRETPATH\"\nformat = \"slack\"\ntoken_file = \"{}\"\n",
        token.display()
    ));
    let text = hangwatch_tests::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("https://hooks.slack.com/…"), "{text}");
    assert!(
        !text.contains("SECRETPATH") && !text.contains("xoxb"),
        "{text}"
    );
}

/// The engine dies at vLLM's own timeout: the incident ends `dead`, the bundle is
/// completed, the agent lives on; replaying the recording gives the live verdicts.
#[test]
fn dead_at_timeout_and_replay_equals_live() {
    let (agent, sim) = hangwatch_tests::watched_sim(
        &["--log-format", "json"],
        &[
            "--tp",
            "2",
            "--load",
            "steady",
            "--fault",
            "rank=1,after=4,mode=sleep",
        ],
        &[
            ("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "16"),
            ("VLLM_RINGBUFFER_WARNING_INTERVAL", "5"),
        ],
    );
    let d = detect(&agent, &sim, Duration::from_secs(15)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.suspects, vec![1]);
    let left = d.manifest["deadline_left_seconds"]
        .as_f64()
        .expect("deadline");
    // Ring unread and the odd stack agree: opened ~3 s after the lag began.
    assert!(
        (11.0..=14.0).contains(&left),
        "16 s timeout, opened at ~3 s: {left}"
    );
    let dead = wait_for(Duration::from_secs(30), || {
        let m: Value =
            serde_json::from_str(&std::fs::read_to_string(d.bundle.join("manifest.json")).ok()?)
                .ok()?;
        (m["verdict"] == "dead").then_some(m)
    })
    .unwrap_or_else(|| panic!("no dead verdict:\n{}", agent.log_text()));
    assert_eq!(dead["outcome"], "dead");
    assert_eq!(dead["suspects"][0]["rank"], 1);
    assert!(sim.wait_event("dead", Duration::from_secs(10)).is_some());
    let summary = std::fs::read_to_string(d.bundle.join("summary.txt")).expect("summary");
    assert!(summary.contains("engine dead at"), "{summary}");
    let snaps = std::fs::read_to_string(d.bundle.join("snapshots.jsonl")).expect("snapshots");
    assert!(snaps.lines().count() >= 10);
    // Still alive and scraping.
    let body = agent.metrics();
    assert_eq!(
        metric(
            &body,
            "hangwatch_incident_open",
            &[("engine", &sim.engine_id())]
        ),
        Some(0.0)
    );
    assert!(body.contains("hangwatch_collector_up{collector=\"rings\"}"));

    // JSON log lines: every verdict change of this engine, as live.
    let live: Vec<(String, String)> = agent
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["engine"] == sim.engine_id().as_str() && v["state"].is_string())
        .map(|v| {
            (
                v["state"].as_str().unwrap_or("").to_string(),
                v["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(live.iter().any(|(s, _)| s == "stalled"), "{live:?}");
    let out = Command::new(hangwatch_bin())
        .args(["replay", "--json"])
        .arg(&agent.record)
        .output()
        .expect("replay");
    assert!(out.status.success());
    let replayed: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["engine"] == sim.engine_id().as_str() && v["state"].is_string())
        .map(|v| {
            (
                v["state"].as_str().unwrap_or("").to_string(),
                v["at_ms"].to_string(),
            )
        })
        .collect();
    let live_states: Vec<&str> = live.iter().map(|(s, _)| s.as_str()).collect();
    let replay_states: Vec<&str> = replayed.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        live_states, replay_states,
        "replay must give the live verdicts"
    );
}

#[test]
fn unwritable_bundle_dir_is_counted_and_the_agent_keeps_running() {
    let dir = tempfile::tempdir().expect("dir");
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, "a file where the bundle directory should be").expect("write");
    let port = hangwatch_tests::free_port();
    let agent = Agent::watching(
        &[&format!("vllm-{port}")],
        &["--bundle-dir", blocked.to_str().expect("utf8")],
    );
    let sim = Sim::start_on(
        port,
        &[
            "--tp",
            "2",
            "--load",
            "steady",
            "--fault",
            "rank=0,after=3,mode=exit",
        ],
        &[],
    );
    // The agent watches only this engine: its incident, and the bundle error with it.
    let errors = wait_for(Duration::from_secs(30), || {
        let body = agent.metrics();
        metric(
            &body,
            "hangwatch_incidents_total",
            &[("engine", &sim.engine_id())],
        )
        .filter(|v| *v >= 1.0)?;
        metric(&body, "hangwatch_bundle_errors_total", &[]).filter(|v| *v >= 1.0)
    });
    assert!(errors.is_some(), "{}", agent.log_text());
    assert!(agent.log_text().contains("bundle not written"));
    let body = agent.metrics();
    assert_eq!(
        metric(
            &body,
            "hangwatch_incidents_total",
            &[("engine", &sim.engine_id())]
        ),
        Some(1.0),
        "{}",
        agent.kept_incidents(&sim.engine_id())
    );
    assert!(hangwatch_tests::http_get(&agent.listen, "/healthz").is_some_and(|(c, _)| c == 200));
}

#[test]
fn retention_keeps_the_newest_bundles() {
    // Three incidents in a row (three engines whose rank 1 exits); keep at most 2.
    let dir = tempfile::tempdir().expect("dir");
    let cfg = dir.path().join("h.toml");
    let bundles = dir.path().join("bundles");
    std::fs::write(&cfg, "[bundles]\nmax_count = 2\n").expect("cfg");
    let ports: Vec<u16> = (0..3).map(|_| hangwatch_tests::free_port()).collect();
    let ids: Vec<String> = ports.iter().map(|p| format!("vllm-{p}")).collect();
    let agent = Agent::watching(
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
        &[
            "--config",
            cfg.to_str().expect("utf8"),
            "--bundle-dir",
            bundles.to_str().expect("utf8"),
        ],
    );
    let mut sims = Vec::new();
    for port in ports {
        let sim = Sim::start_on(
            port,
            &[
                "--tp",
                "2",
                "--load",
                "steady",
                "--fault",
                "rank=1,after=3,mode=exit",
            ],
            &[],
        );
        let id = sim.engine_id();
        let seen = wait_for(Duration::from_secs(30), || {
            std::fs::read_dir(&bundles)
                .ok()?
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with(&id))
                .map(|_| ())
        });
        assert!(seen.is_some(), "no bundle for {id}:\n{}", agent.log_text());
        // Pacing, not waiting for a state: incident ids have one-second resolution and
        // retention goes by age, so the three incidents must be seconds apart.
        std::thread::sleep(Duration::from_secs(4));
        sims.push(sim);
    }
    let left: Vec<String> = std::fs::read_dir(&bundles)
        .expect("bundles")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        !left.iter().any(|n| n.starts_with(&sims[0].engine_id())),
        "the oldest went first: {left:?}"
    );
    assert!(agent.log_text().contains("removed old bundle"));
}

/// `hangwatch demo`: the simulator with rank 2 stuck, the agent beside it, the bundle's
/// summary printed.
#[test]
fn demo_shows_an_incident_and_its_bundle() {
    let out = Command::new(hangwatch_bin())
        .args(["demo", "--after", "5"])
        .output()
        .expect("demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("demo: bundle written"), "{text}");
    assert!(text.contains("verdict: STALLED, suspect rank 2"), "{text}");
    assert!(text.contains("stuck_in_python_sleep"), "{text}");
}

/// A panic in the tick loop ends the process with a non-zero status (so systemd or
/// Kubernetes restarts it) instead of leaving a process whose /healthz says 503 for ever.
#[test]
fn a_panicking_tick_ends_the_process() {
    let log = broken_tick_exits_70(&[("HANGWATCH_TEST_PANIC_AT_TICK", "3")]);
    assert!(log.contains("the tick panicked"), "{log}");
}

/// A tick that never returns (a read that hangs) must not leave a live-looking zombie:
/// the watchdog thread ends the process.
#[test]
fn a_stalled_tick_ends_the_process() {
    let log = broken_tick_exits_70(&[
        ("HANGWATCH_TEST_STALL_AT_TICK", "3"),
        ("HANGWATCH_TEST_STALL_LIMIT_MS", "2000"),
    ]);
    assert!(log.contains("has not completed a tick"), "{log}");
}

/// Runs the agent with a test hook that breaks its tick loop; it must exit with status
/// 70 within 20 s. Returns its log.
fn broken_tick_exits_70(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("none.toml"), "").expect("config");
    let started = std::time::Instant::now();
    let out = Command::new(hangwatch_bin())
        .args(["run", "--listen", "127.0.0.1:0", "--interval", "200ms"])
        .arg("--config")
        .arg(dir.path().join("none.toml"))
        .arg("--bundle-dir")
        .arg(dir.path().join("b"))
        .envs(env.iter().copied())
        .env("HANGWATCH_ENGINES", "none")
        .output()
        .expect("run");
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(70), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    log
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY once running, then WATCHDOG=1
/// after every tick — read from a real notify socket, as systemd would.
#[test]
fn systemd_hears_ready_and_a_watchdog_pet_every_tick() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("none.toml"), "").expect("config");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut child = Command::new(hangwatch_bin())
        .args(["run", "--listen", "127.0.0.1:0", "--interval", "200ms"])
        .arg("--config")
        .arg(dir.path().join("none.toml"))
        .arg("--bundle-dir")
        .arg(dir.path().join("b"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("HANGWATCH_ENGINES", "none")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got
        .iter()
        .filter(|m: &&String| m.contains("WATCHDOG=1"))
        .count()
        < 3
    {
        let Ok(n) = sock.recv(&mut buf) else { break };
        got.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{got:?}"
    );
}
