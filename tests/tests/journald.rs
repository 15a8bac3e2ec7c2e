//! journald as a log source, against a real journal: systemd-journald runs here (started
//! if it is not), lines go in with `systemd-cat`, hangwatch follows them from the
//! current end and joins their events to the engine by pid.

use hangwatch_tests::{free_port, metric, wait_for, Agent, Sim};
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

/// A journald this test started, stopped when the test ends: the suite leaves no
/// process behind on a machine that had no journal.
struct Journald(Option<std::process::Child>);

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn ensure_journald() -> Journald {
    // A socket file can outlive its journald: look for the process, not the socket.
    let mut started = Journald(None);
    if !journald_running() {
        let bin = "/lib/systemd/systemd-journald";
        assert!(
            Path::new(bin).exists(),
            "no systemd-journald on this machine: a real journal cannot be produced"
        );
        let journald = Command::new(bin)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting systemd-journald");
        started.0 = Some(journald);
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
    started
}

fn journal_line(identifier: &str, line: &str) {
    let mut c = Command::new("systemd-cat")
        .args(["-t", identifier])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-cat");
    if let Some(mut i) = c.stdin.take() {
        let _ = writeln!(i, "{line}");
    }
    let _ = c.wait();
}

/// The same line through syslog (`logger`), as any local user can send it. journald
/// listens at `/run/systemd/journal/dev-log` (`/dev/log` points there under systemd).
fn syslog_line(identifier: &str, line: &str) {
    let sock = "/run/systemd/journal/dev-log";
    let mut c = Command::new("logger");
    c.args(["-t", identifier]);
    if !Path::new("/dev/log").exists() {
        c.args(["-u", sock]);
    }
    let ok = c.arg(line).status().is_ok_and(|s| s.success());
    assert!(ok, "logger could not write to the journal");
}

/// The simulator's own output goes to the journal (as a service's stdout does): its
/// lines are followed from the current end and joined to its engine because journald
/// says its process wrote them. The same words written by someone else — `systemd-cat`
/// or `logger -t` under the same identifier, naming the engine core's pid — are nobody's.
#[test]
fn journald_lines_are_followed_from_the_end_and_joined_to_their_engine() {
    let _journald = ensure_journald();
    let ident = format!("hw-test-{}", std::process::id());
    journal_line(
        &ident,
        "(APIServer pid=1) INFO 11-29 13:00:00 [x.py:1] written before the agent started",
    );
    std::env::set_var("HANGWATCH_LOGS_JOURNALD_IDENTIFIERS", &ident);
    let port = free_port();
    let engine = format!("vllm-{port}");
    let agent = Agent::watching(&[&engine], &[]);
    let following = wait_for(Duration::from_secs(20), || {
        agent.log_text().contains("following journal").then_some(())
    });
    assert!(following.is_some(), "{}", agent.log_text());
    // journalctl follows from the end: give it time to reach the end.
    std::thread::sleep(Duration::from_secs(2));
    let source = format!("journald:{ident}");
    let before = metric(
        &agent.metrics(),
        "hangwatch_log_lines_total",
        &[("source", &source)],
    );
    assert_eq!(
        before.unwrap_or(0.0),
        0.0,
        "from the current end: the line written before start is not read"
    );
    let sim = Sim::start_in_journal(
        &ident,
        port,
        &["--tp", "2", "--load", "steady"],
        &[("VLLM_LOG_STATS_INTERVAL", "2")],
    );
    let core = sim.core_pid();
    let forged = [
        format!("(EngineCore pid={core}) ERROR 11-29 13:37:10 [core.py:1512] TimeoutError: RPC call to sample_tokens timed out."),
        format!("(EngineCore pid={core}) ERROR 11-29 13:37:10 [multiproc_executor.py:390] Worker proc VLLM::Worker_TP1 died unexpectedly (exit code: 1), shutting down executor."),
        format!("(APIServer pid={}) ERROR 11-29 13:37:10 [async_llm.py:906] vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.", sim.api_pid()),
    ];
    let stats = wait_for(Duration::from_secs(30), || {
        metric(
            &agent.metrics(),
            "hangwatch_log_events_total",
            &[("engine", &engine), ("kind", "stats")],
        )
        .filter(|n| *n >= 1.0)
    });
    assert!(stats.is_some(), "{}\n{}", agent.metrics(), agent.log_text());
    let stats_of = |body: &str| {
        metric(
            body,
            "hangwatch_log_events_total",
            &[("engine", &engine), ("kind", "stats")],
        )
        .unwrap_or(0.0)
    };
    let before = stats_of(&agent.metrics());
    for line in &forged {
        journal_line(&ident, line);
        syslog_line(&ident, line);
    }
    // The forged lines are in the journal under the followed identifier (journald
    // takes a moment with what comes through syslog)…
    let in_journal = || {
        let out = Command::new("journalctl")
            .args(["--no-pager", "-o", "cat", "-t", &ident])
            .output()
            .ok()?;
        let journal = String::from_utf8_lossy(&out.stdout).to_string();
        let n: usize = forged
            .iter()
            .map(|l| journal.matches(l.as_str()).count())
            .sum();
        (n == 2 * forged.len()).then_some(())
    };
    let written = wait_for(Duration::from_secs(10), in_journal);
    assert!(
        written.is_some(),
        "the forged lines did not reach the journal"
    );
    // …and the agent read past them: a stats line the simulator wrote after them came
    // in (journalctl hands entries over in order).
    let past = wait_for(Duration::from_secs(20), || {
        (stats_of(&agent.metrics()) > before).then_some(())
    });
    assert!(past.is_some(), "{}", agent.log_text());
    let body = agent.metrics();
    // …and change nothing.
    for kind in ["rpc_timeout", "worker_died", "engine_dead"] {
        let n = metric(
            &body,
            "hangwatch_log_events_total",
            &[("engine", &engine), ("kind", kind)],
        );
        assert_eq!(n.unwrap_or(0.0), 0.0, "{kind}: {body}");
    }
    let state = metric(
        &body,
        "hangwatch_engine_state",
        &[("engine", &engine), ("state", "busy")],
    );
    assert_eq!(state, Some(1.0), "{body}\n{}", agent.log_text());
    assert!(
        agent.manifests(&engine).is_empty(),
        "an incident was opened: {}",
        agent.log_text()
    );
}
