//! Carrying an action out, each on a thread of its own so that a command that hangs or
//! an engine slow to die never holds the tick: `exec` runs a program (no shell) with
//! the incident on its standard input and kills it at its timeout; `terminate` sends
//! SIGTERM and, after the grace, SIGKILL — to the same process only (its start time is
//! checked first, so a reused pid is never hit).

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

/// How an action ended, for the log, the time line and `hangwatch_actions_total`.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub engine: String,
    pub incident: String,
    pub action: &'static str,
    /// `ok`, `failed`, `timeout`, `killed`.
    pub result: &'static str,
    pub detail: String,
}

/// How often a running command or a dying engine is looked at.
const POLL: Duration = Duration::from_millis(50);

pub struct Job {
    pub engine: String,
    pub incident: String,
}

impl Job {
    pub fn done(&self, action: &'static str, result: &'static str, detail: String) -> Done {
        Done {
            engine: self.engine.clone(),
            incident: self.incident.clone(),
            action,
            result,
            detail,
        }
    }
}

/// Runs `argv` with `input` on its standard input; its output goes nowhere (the agent's
/// log is not the command's).
pub fn exec(job: Job, argv: Vec<String>, input: Vec<u8>, timeout: Duration, tx: Sender<Done>) {
    let spawned = std::thread::Builder::new()
        .name("action-exec".into())
        .spawn(move || {
            let d = exec_now(&job, &argv, &input, timeout);
            let _ = tx.send(d);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "actions: cannot start a thread for exec");
    }
}

fn exec_now(job: &Job, argv: &[String], input: &[u8], timeout: Duration) -> Done {
    let Some((program, args)) = argv.split_first() else {
        return job.done("exec", "failed", "no command".into());
    };
    let started = Instant::now();
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return job.done("exec", "failed", format!("cannot run {program}: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input must not block us: the pipe buffer
        // takes an incident; a write error (it closed its input) is its business.
        let _ = stdin.write_all(input);
    }
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let secs = started.elapsed().as_secs_f64();
                return match status.code() {
                    Some(0) => job.done(
                        "exec",
                        "ok",
                        format!("{program} exited 0 after {secs:.1} s"),
                    ),
                    Some(c) => job.done(
                        "exec",
                        "failed",
                        format!("{program} exited {c} after {secs:.1} s"),
                    ),
                    None => job.done(
                        "exec",
                        "failed",
                        format!("{program} ended by a signal after {secs:.1} s"),
                    ),
                };
            }
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return job.done(
                    "exec",
                    "timeout",
                    format!(
                        "{program} killed at its timeout ({:.0} s)",
                        timeout.as_secs_f64()
                    ),
                );
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => return job.done("exec", "failed", format!("waiting for {program}: {e}")),
        }
    }
}

/// SIGTERM to `pid` (the engine's API server); after `grace`, SIGKILL to it and to
/// every process of `rest` (the engine core, the workers) that is still the same
/// process: a hung engine's workers left behind would hold their GPUs and memory, and
/// the restarted engine could not load.
pub fn terminate(
    job: Job,
    proc_root: std::path::PathBuf,
    pid: u32,
    rest: Vec<u32>,
    grace: Duration,
    tx: Sender<Done>,
) {
    let spawned = std::thread::Builder::new()
        .name("action-terminate".into())
        .spawn(move || {
            let born: Vec<(u32, u64)> = rest
                .iter()
                .filter_map(|p| Some((*p, start_time(&proc_root, *p)?)))
                .collect();
            let mut d = terminate_now(&job, &proc_root, pid, grace);
            let left: Vec<u32> = born
                .iter()
                .filter(|(p, t)| *p > 1 && start_time(&proc_root, *p) == Some(*t))
                .map(|(p, _)| *p)
                .collect();
            for p in &left {
                let _ = send(*p, libc::SIGKILL);
            }
            if !left.is_empty() {
                let n = left.len();
                d.detail.push_str(&format!(
                    "; SIGKILL to {n} process(es) of the engine left behind"
                ));
            }
            let _ = tx.send(d);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "actions: cannot start a thread for terminate");
    }
}

fn terminate_now(job: &Job, proc_root: &std::path::Path, pid: u32, grace: Duration) -> Done {
    let Some(born) = start_time(proc_root, pid).filter(|_| pid > 1) else {
        return job.done("terminate", "failed", format!("pid {pid} is gone already"));
    };
    let same = || start_time(proc_root, pid) == Some(born);
    if let Err(e) = send(pid, libc::SIGTERM) {
        return job.done("terminate", "failed", format!("SIGTERM to pid {pid}: {e}"));
    }
    let started = Instant::now();
    while started.elapsed() < grace {
        if !same() {
            let secs = started.elapsed().as_secs_f64();
            return job.done(
                "terminate",
                "ok",
                format!("pid {pid} exited {secs:.1} s after SIGTERM"),
            );
        }
        std::thread::sleep(POLL);
    }
    if !same() {
        return job.done(
            "terminate",
            "ok",
            format!("pid {pid} exited within the grace"),
        );
    }
    match send(pid, libc::SIGKILL) {
        Ok(()) => job.done(
            "terminate",
            "killed",
            format!(
                "pid {pid} still alive {:.0} s after SIGTERM: SIGKILL",
                grace.as_secs_f64()
            ),
        ),
        Err(e) => job.done("terminate", "failed", format!("SIGKILL to pid {pid}: {e}")),
    }
}

fn send(pid: u32, sig: i32) -> std::io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) with a positive pid read from /proc and checked above (> 1, its
    // start time unchanged); no memory is passed.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The process's start time (clock ticks since boot), field 22 of its `stat`; none
/// when it is gone (or a zombie's stat is unreadable).
fn start_time(proc_root: &std::path::Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let mut fields = after.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            engine: "vllm-8000".into(),
            incident: "i".into(),
        }
    }

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn a_command_gets_the_incident_on_its_input() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("got.json");
        let script = format!("cat > {}", out.display());
        let d = exec_now(
            &job(),
            &argv(&["sh", "-c", &script]),
            b"{\"id\":\"i\"}",
            Duration::from_secs(5),
        );
        assert_eq!(d.result, "ok", "{d:?}");
        assert_eq!(
            std::fs::read_to_string(&out).ok().as_deref(),
            Some("{\"id\":\"i\"}")
        );
    }

    #[test]
    fn a_command_that_hangs_is_killed_at_its_timeout() {
        let started = Instant::now();
        let d = exec_now(
            &job(),
            &argv(&["sleep", "30"]),
            b"{}",
            Duration::from_millis(300),
        );
        assert_eq!(d.result, "timeout", "{d:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_missing_command_is_a_clear_failure() {
        let d = exec_now(
            &job(),
            &argv(&["/nonexistent/drain-node"]),
            b"{}",
            Duration::from_secs(1),
        );
        assert_eq!(d.result, "failed");
        assert!(
            d.detail.contains("cannot run /nonexistent/drain-node"),
            "{d:?}"
        );
        let d = exec_now(&job(), &argv(&["false"]), b"{}", Duration::from_secs(5));
        assert_eq!(d.result, "failed");
        assert!(d.detail.contains("exited 1"), "{d:?}");
    }

    #[test]
    fn terminate_ends_a_process_and_kills_one_that_ignores_sigterm() {
        let proc_root = std::path::Path::new("/proc");
        let mut quiet = Command::new("sleep").arg("30").spawn().expect("sleep");
        let d = terminate_now(&job(), proc_root, quiet.id(), Duration::from_secs(5));
        let _ = quiet.wait();
        assert_eq!(d.result, "ok", "{d:?}");
        let mut stubborn = Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 30 & wait"])
            .spawn()
            .expect("sh");
        std::thread::sleep(Duration::from_millis(200));
        let d = terminate_now(&job(), proc_root, stubborn.id(), Duration::from_millis(500));
        let _ = stubborn.wait();
        assert_eq!(d.result, "killed", "{d:?}");
        let d = terminate_now(&job(), proc_root, stubborn.id(), Duration::from_millis(100));
        assert_eq!(d.result, "failed", "a reaped pid: {d:?}");
    }
}
