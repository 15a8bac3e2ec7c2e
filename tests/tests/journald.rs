//! journald as a log source, against a real journal: systemd-journald runs here (started
//! if it is not), lines go in with `systemd-cat`, hangwatch follows them from the
//! current end and joins their events to the engine by pid.

use hangwatch_tests::{metric, wait_for, Agent, Sim};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn journald_running() -> bool {
    Command::new("pgrep")
        .args(["-x", "systemd-journal"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ensure_journald() {
    // A socket file can outlive its journald: look for the process, not the socket.
    if !journald_running() {
        let bin = "/lib/systemd/systemd-journald";
        assert!(
            Path::new(bin).exists(),
            "no systemd-journald on this machine: a real journal cannot be produced"
        );
        // Left running on purpose: the journal outlives the test, as on a real node.
        let journald = Command::new(bin)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting systemd-journald");
        std::mem::forget(journald);
    }
    // Ready when a line written now can be read back.
    let probe = format!("hw-probe-{}", std::process::id());
    let ready = wait_for(Duration::from_secs(20), || {
        journal_line(&probe, "probe");
        let out = Command::new("journalctl")
            .args(["--no-pager", "-o", "cat", "-t", &probe])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains("probe")
            .then_some(())
    });
    assert!(ready.is_some(), "systemd-journald did not come up");
}

fn journal_line(identifier: &str, line: &str) {
    let mut c = Command::new("systemd-cat")
        .args(["-t", identifier])
        .stdin(Stdio::piped())
        .spawn()
        .expect("systemd-cat");
    if let Some(mut i) = c.stdin.take() {
        let _ = writeln!(i, "{line}");
    }
    let _ = c.wait();
}

#[test]
fn journald_lines_are_followed_from_the_end_and_joined_to_their_engine() {
    ensure_journald();
    let ident = format!("hw-test-{}", std::process::id());
    journal_line(
        &ident,
        "(APIServer pid=1) INFO 11-29 13:00:00 [x.py:1] written before the agent started",
    );
    std::env::set_var("HANGWATCH_LOGS_JOURNALD_IDENTIFIERS", &ident);
    let agent = Agent::start(&[]);
    let sim = Sim::start(&["--tp", "2", "--load", "idle"]);
    let following = wait_for(Duration::from_secs(20), || {
        agent.log_text().contains("following journal").then_some(())
    });
    assert!(following.is_some(), "{}", agent.log_text());
    // journalctl follows from the end: give it time to reach the end before writing.
    std::thread::sleep(Duration::from_secs(2));
    let core = sim.core_pid();
    journal_line(&ident, &format!("(EngineCore pid={core}) INFO 11-29 13:36:21 [shm_broadcast.py:871] No available shared memory broadcast block found in 60 seconds. This typically happens when some processes are hanging."));
    journal_line(&ident, "a plain line");
    journal_line(&ident, &format!("(EngineCore pid={core}) ERROR 11-29 13:37:10 [core.py:1512] TimeoutError: RPC call to sample_tokens timed out."));
    let source = format!("journald:{ident}");
    let engine = sim.engine_id();
    let got = wait_for(Duration::from_secs(20), || {
        let body = agent.metrics();
        let lines = metric(&body, "hangwatch_log_lines_total", &[("source", &source)])?;
        let timeouts = metric(
            &body,
            "hangwatch_log_events_total",
            &[("engine", &engine), ("kind", "rpc_timeout")],
        )?;
        (lines >= 3.0 && timeouts >= 1.0).then_some((lines, body))
    });
    let (lines, body) = got.unwrap_or_else(|| panic!("{}\n{}", agent.metrics(), agent.log_text()));
    assert_eq!(
        lines, 3.0,
        "from the current end: the line written before start is not read"
    );
    assert_eq!(
        metric(
            &body,
            "hangwatch_log_events_total",
            &[("engine", &engine), ("kind", "ring_wait")]
        ),
        Some(1.0)
    );
    assert!(agent
        .log_text()
        .contains("RPC call to sample_tokens timed out"));
}
