//! Cheap per-process reads from `/proc`: state, wchan, CPU time, start time.
//!
//! Only small files are read here; `/proc/PID/maps` (slow on busy vLLM workers, see
//! docs/vllm.md) is read by ring discovery, and only when the set of processes changes.

use hangwatch_rules::{Millis, ProcFacts, ProcState};
use procfs::process::Process;
use std::path::{Path, PathBuf};

/// Where `/proc` is (a DaemonSet may mount the host's elsewhere) and the clock facts
/// needed to turn its ticks into seconds.
#[derive(Clone, Debug)]
pub struct ProcRoot {
    pub root: PathBuf,
    ticks_per_second: f64,
    boot_time_ms: Millis,
}

impl ProcRoot {
    pub fn new(root: impl Into<PathBuf>) -> ProcRoot {
        let root = root.into();
        let ticks_per_second = procfs::ticks_per_second() as f64;
        let boot_time_ms = read_boot_time_ms(&root).unwrap_or(0);
        ProcRoot {
            root,
            ticks_per_second,
            boot_time_ms,
        }
    }

    pub fn process(&self, pid: u32) -> Option<Process> {
        Process::new_with_root(self.root.join(pid.to_string())).ok()
    }

    /// A process's view of a path of its own (through `/proc/PID/root`), so segments of
    /// a containerised vLLM are found where the container sees them.
    pub fn path_in(&self, pid: u32, path: &str) -> PathBuf {
        self.root
            .join(pid.to_string())
            .join("root")
            .join(path.trim_start_matches('/'))
    }

    /// What `/proc` says of `pid` now; a vanished pid reads as `Gone`.
    pub fn facts(&self, pid: u32) -> ProcFacts {
        let gone = ProcFacts {
            pid,
            ns_pid: None,
            state: ProcState::Gone,
            wchan: None,
            cpu_seconds: 0.0,
            started_at_ms: 0,
        };
        // A read that fails while `/proc/PID` is still there (stat needs no descriptor)
        // is the agent's own trouble, not the process's end.
        let vanished = || {
            let still = std::fs::symlink_metadata(self.root.join(pid.to_string()));
            if still.is_ok() {
                ProcFacts {
                    state: ProcState::Unknown,
                    ..gone.clone()
                }
            } else {
                gone.clone()
            }
        };
        let Some(p) = self.process(pid) else {
            return vanished();
        };
        let Ok(stat) = p.stat() else {
            return vanished();
        };
        let wchan = p.wchan().ok().map(|w| w.trim().to_string());
        let ns_pid = p
            .status()
            .ok()
            .and_then(|s| s.nspid)
            .and_then(|v| v.last().copied())
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n != pid);
        ProcFacts {
            pid,
            ns_pid,
            state: ProcState::from_char(stat.state),
            wchan,
            cpu_seconds: (stat.utime + stat.stime) as f64 / self.ticks_per_second,
            started_at_ms: self.boot_time_ms
                + (stat.starttime as f64 / self.ticks_per_second * 1000.0) as Millis,
        }
    }
}

/// Errors that are the agent's own (no descriptors or memory left), not the target's.
pub fn is_own_failure(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOMEM)
    )
}

impl Default for ProcRoot {
    fn default() -> Self {
        ProcRoot::new("/proc")
    }
}

fn read_boot_time_ms(root: &Path) -> Option<Millis> {
    let text = std::fs::read_to_string(root.join("stat")).ok()?;
    let line = text.lines().find(|l| l.starts_with("btime "))?;
    let secs: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(secs * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_itself_and_reports_vanished_pids_as_gone() {
        let root = ProcRoot::default();
        let me = root.facts(std::process::id());
        assert!(
            matches!(me.state, ProcState::Running | ProcState::Sleeping),
            "{:?}",
            me.state
        );
        assert!(me.started_at_ms > 1_600_000_000_000, "{}", me.started_at_ms);
        // pid_max is at most 2^22: this pid cannot exist.
        assert_eq!(root.facts(4_194_305).state, ProcState::Gone);
    }
}
