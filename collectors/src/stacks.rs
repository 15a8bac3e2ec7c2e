//! Python stacks of vLLM processes, read with py-spy used as a library.
//!
//! Non-blocking by default: the process is never paused (reads go through
//! `process_vm_readv`), which is also the only way to read a stopped process — py-spy's
//! blocking mode fails on one ("Failed to suspend process", measured, docs/vllm.md).
//! Blocking mode with native frames is opt-in (`native = true`, cargo feature
//! `native-stacks`) and never used on a stopped process.

use hangwatch_rules::stacks::{Frame, StackDump, StackError, StackErrorKind, ThreadStack};
use hangwatch_rules::Millis;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One process to dump.
#[derive(Clone, Debug)]
pub struct Target {
    pub pid: u32,
    pub rank: Option<u32>,
    /// Stopped (state T/t): blocking mode would fail, so never use it.
    pub stopped: bool,
}

/// Whether this build can take native frames.
pub const NATIVE_SUPPORTED: bool = cfg!(feature = "native-stacks");

fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Dumps one process; every failure is a `StackError` with a kind a person can act on.
pub fn dump_one(t: &Target, native: bool) -> StackDump {
    let started = Instant::now();
    let taken_at_ms = now_ms();
    let blocking = native && NATIVE_SUPPORTED && !t.stopped;
    let mut config = py_spy::Config {
        blocking: if blocking {
            py_spy::config::LockingStrategy::Lock
        } else {
            py_spy::config::LockingStrategy::NonBlocking
        },
        native: blocking,
        include_idle: true,
        ..Default::default()
    };
    config.collect_thread_names = true;
    let mut out = StackDump {
        pid: t.pid,
        rank: t.rank,
        taken_at_ms,
        mode: if blocking { "blocking" } else { "nonblocking" }.to_string(),
        duration_seconds: 0.0,
        python_version: None,
        threads: Vec::new(),
        error: None,
    };
    let result = py_spy::PythonSpy::new(t.pid as py_spy::Pid, &config).and_then(|mut spy| {
        out.python_version = Some(spy.version.to_string());
        spy.get_stack_traces()
    });
    match result {
        Ok(traces) => {
            out.threads = traces
                .into_iter()
                .map(|s| ThreadStack {
                    thread_id: s.thread_id,
                    os_thread_id: s.os_thread_id,
                    name: s.thread_name,
                    active: s.active,
                    owns_gil: s.owns_gil,
                    frames: s
                        .frames
                        .into_iter()
                        .map(|f| Frame {
                            name: f.name,
                            filename: f.filename,
                            short_filename: f.short_filename,
                            line: f.line,
                        })
                        .collect(),
                })
                .collect();
        }
        Err(e) => out.error = Some(classify_error(t.pid, &format!("{e:#}"))),
    }
    out.duration_seconds = started.elapsed().as_secs_f64();
    out
}

fn classify_error(pid: u32, message: &str) -> StackError {
    let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
    let lower = message.to_ascii_lowercase();
    let kind = if !alive || lower.contains("no such process") {
        StackErrorKind::Gone
    } else if lower.contains("permission denied") || lower.contains("operation not permitted") {
        StackErrorKind::Permission
    } else if lower.contains("python") || lower.contains("interpreter") {
        StackErrorKind::NotPython
    } else {
        StackErrorKind::Other
    };
    let hint = if kind == StackErrorKind::Permission {
        " (needs CAP_SYS_PTRACE or root)"
    } else {
        ""
    };
    StackError {
        kind,
        message: format!("{}{hint}", first_line(message)),
    }
}

/// The first few distinct parts of an error chain (py-spy repeats the OS error).
fn first_line(s: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in s.split(": ") {
        if !parts.contains(&p) && parts.len() < 3 {
            parts.push(p);
        }
    }
    parts.join(": ")
}

/// Dumps every target in parallel; whatever is not done by `limit` is reported as a
/// `timeout` (its thread finishes in the background and is ignored).
pub fn dump_all(targets: &[Target], native: bool, limit: Duration) -> Vec<StackDump> {
    let (tx, rx) = mpsc::channel();
    for (i, t) in targets.iter().enumerate() {
        let thread_tx = tx.clone();
        let t = t.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("stack-{}", t.pid))
            .spawn(move || {
                let _ = thread_tx.send((i, dump_one(&t, native)));
            });
        if let Err(e) = spawned {
            let _ = tx.send((
                i,
                failed(
                    &targets[i],
                    StackErrorKind::Other,
                    &format!("cannot start a thread: {e}"),
                ),
            ));
        }
    }
    drop(tx);
    let deadline = Instant::now() + limit;
    let mut got: Vec<Option<StackDump>> = vec![None; targets.len()];
    while got.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, d)) => got[i] = Some(d),
            Err(_) => break,
        }
    }
    got.into_iter()
        .enumerate()
        .map(|(i, d)| {
            d.unwrap_or_else(|| {
                failed(
                    &targets[i],
                    StackErrorKind::Timeout,
                    &format!("no stack within {:.1} s", limit.as_secs_f64()),
                )
            })
        })
        .collect()
}

fn failed(t: &Target, kind: StackErrorKind, message: &str) -> StackDump {
    StackDump {
        pid: t.pid,
        rank: t.rank,
        taken_at_ms: now_ms(),
        mode: "nonblocking".into(),
        duration_seconds: 0.0,
        python_version: None,
        threads: Vec::new(),
        error: Some(StackError {
            kind,
            message: message.into(),
        }),
    }
}

/// The familiar `py-spy dump` text layout.
pub fn render(d: &StackDump, title: &str) -> String {
    let mut s = format!("Process {}: {}\n", d.pid, title);
    if let Some(v) = &d.python_version {
        s.push_str(&format!("Python v{v}\n"));
    }
    s.push_str(&format!(
        "(hangwatch: {} dump at {} ms since epoch, took {:.3} s)\n\n",
        d.mode, d.taken_at_ms, d.duration_seconds
    ));
    if let Some(e) = &d.error {
        s.push_str(&format!("Error: {} ({})\n", e.message, e.kind.as_str()));
        return s;
    }
    for t in &d.threads {
        let state = if t.active { "active" } else { "idle" };
        let gil = if t.owns_gil { "+gil" } else { "" };
        let name = t
            .name
            .as_deref()
            .map(|n| format!(": \"{n}\""))
            .unwrap_or_default();
        s.push_str(&format!(
            "Thread {:#x} ({state}{gil}){name}\n",
            t.os_thread_id.unwrap_or(t.thread_id)
        ));
        for f in &t.frames {
            s.push_str(&format!("    {}\n", f.place()));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_python_process_is_read_and_a_vanished_one_is_a_reason() {
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import time\ndef parked_here():\n    time.sleep(30)\nparked_here()",
            ])
            .spawn()
            .expect("python3");
        std::thread::sleep(Duration::from_millis(800));
        let d = dump_one(
            &Target {
                pid: child.id(),
                rank: Some(0),
                stopped: false,
            },
            false,
        );
        let _ = child.kill();
        let _ = child.wait();
        assert!(d.error.is_none(), "{:?}", d.error);
        let main = d.main_thread().expect("main thread");
        assert!(
            main.frames.iter().any(|f| f.name == "parked_here"),
            "{main:?}"
        );
        assert!(render(&d, "python3").contains("parked_here (<string>:3)"));
        let gone = dump_one(
            &Target {
                pid: child.id(),
                rank: Some(0),
                stopped: false,
            },
            false,
        );
        assert_eq!(gone.error.map(|e| e.kind), Some(StackErrorKind::Gone));
    }

    #[test]
    fn a_target_that_exits_mid_dump_is_a_reason_not_a_crash() {
        let mut child = std::process::Command::new("python3")
            .args(["-c", "import time; time.sleep(0.3)"])
            .spawn()
            .expect("python3");
        let t = Target {
            pid: child.id(),
            rank: Some(1),
            stopped: false,
        };
        let mut kinds = Vec::new();
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < end {
            let d = dump_one(&t, false);
            let k = d.error.map_or("ok", |e| e.kind.as_str());
            let done = k == "gone";
            kinds.push(k);
            if done {
                break;
            }
            if let Ok(Some(_)) = child.try_wait() {
                // Reaped: the next dump must say gone.
                continue;
            }
        }
        let _ = child.wait();
        assert_eq!(kinds.last().copied(), Some("gone"), "{kinds:?}");
        assert!(
            kinds
                .iter()
                .all(|k| ["ok", "gone", "not_python", "other"].contains(k)),
            "{kinds:?}"
        );
    }

    #[test]
    fn a_non_python_process_is_a_reason() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let d = dump_all(
            &[Target {
                pid: child.id(),
                rank: None,
                stopped: false,
            }],
            false,
            Duration::from_secs(5),
        );
        let _ = child.kill();
        let _ = child.wait();
        let e = d[0].error.clone().expect("an error");
        assert_eq!(e.kind, StackErrorKind::NotPython, "{e:?}");
    }
}
