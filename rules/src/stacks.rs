//! Python stacks of an engine's processes as facts, and what they say: which rank is
//! the odd one out, whose stack did not move between dumps, what the engine core waits
//! for.

use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One process's threads at one instant, or why they could not be read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StackDump {
    pub pid: u32,
    /// `None` for the engine core.
    pub rank: Option<u32>,
    pub taken_at_ms: Millis,
    /// `nonblocking` (never pauses the process) or `blocking` (native frames).
    pub mode: String,
    pub duration_seconds: f64,
    #[serde(default)]
    pub python_version: Option<String>,
    #[serde(default)]
    pub threads: Vec<ThreadStack>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StackError>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StackError {
    pub kind: StackErrorKind,
    pub message: String,
}

/// Why a process could not be read; `Permission` is the one an operator can fix.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StackErrorKind {
    /// No ptrace rights (needs CAP_SYS_PTRACE or root).
    Permission,
    /// The process exited before or during the dump.
    Gone,
    /// Not a Python process, or an interpreter py-spy does not know.
    NotPython,
    /// No dump within the round's bound.
    Timeout,
    Other,
}

impl StackErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StackErrorKind::Permission => "permission",
            StackErrorKind::Gone => "gone",
            StackErrorKind::NotPython => "not_python",
            StackErrorKind::Timeout => "timeout",
            StackErrorKind::Other => "other",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ThreadStack {
    pub thread_id: u64,
    pub os_thread_id: Option<u64>,
    pub name: Option<String>,
    pub active: bool,
    pub owns_gil: bool,
    /// Innermost first.
    pub frames: Vec<Frame>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub name: String,
    pub filename: String,
    pub short_filename: Option<String>,
    pub line: i32,
}

impl Frame {
    pub fn place(&self) -> String {
        let file = self.short_filename.as_deref().unwrap_or(&self.filename);
        let file = file.rsplit('/').next().unwrap_or(file);
        format!("{} ({}:{})", self.name, file, self.line)
    }
}

impl StackDump {
    /// Whether the main thread's stack reaches its outermost `<module>` frame. A
    /// non-blocking dump of a running process can catch the stack while it changes and
    /// come back cut short (seen: a rank shown only inside a generator of its
    /// all-reduce's wait loop); such a dump says less than it seems to.
    pub fn complete(&self) -> bool {
        self.error.is_none()
            && self
                .main_thread()
                .and_then(|t| t.frames.last())
                .is_some_and(|f| f.name == "<module>")
    }

    /// The process's main thread: the one whose OS thread id is the pid.
    pub fn main_thread(&self) -> Option<&ThreadStack> {
        self.threads
            .iter()
            .find(|t| t.os_thread_id == Some(u64::from(self.pid)))
            .or_else(|| {
                self.threads
                    .iter()
                    .find(|t| t.name.as_deref() == Some("MainThread"))
            })
    }
}

/// Words in a frame name that mean "waiting in a collective for the other ranks"
/// (`recv_tensor_dict`: a pipeline stage waiting for the stage before it).
const COLLECTIVE: [&str; 9] = [
    "recv_tensor_dict",
    "all_reduce",
    "allreduce",
    "all_gather",
    "reduce_scatter",
    "broadcast",
    "barrier",
    "all_to_all",
    "ncclKernel",
];

/// What a rank's main thread is doing, in the words the summary uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Activity {
    /// Inside a collective; `site` is the first frame outside the collective code (the
    /// call site that tells one all-reduce from another).
    Collective {
        op: String,
        site: String,
    },
    /// Waiting for its next RPC (idle worker loop).
    WaitingForRpc,
    /// Anything else: `at` is the innermost frame.
    Elsewhere {
        at: String,
    },
    Unknown,
}

fn is_collective(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    COLLECTIVE
        .iter()
        .any(|c| lower.contains(&c.to_ascii_lowercase()))
}

pub fn activity(t: &ThreadStack) -> Activity {
    let Some(top) = t.frames.first() else {
        return Activity::Unknown;
    };
    if let Some(i) = t.frames.iter().position(|f| is_collective(&f.name)) {
        // The outermost consecutive collective frame, then its caller.
        let mut j = i;
        while j + 1 < t.frames.len() && is_collective(&t.frames[j + 1].name) {
            j += 1;
        }
        let site = t
            .frames
            .get(j + 1)
            .map(Frame::place)
            .unwrap_or_else(|| "?".into());
        return Activity::Collective {
            op: short_name(&t.frames[j].name),
            site,
        };
    }
    let waits_rpc = t
        .frames
        .iter()
        .any(|f| f.name.contains("acquire_read") || f.name.ends_with("dequeue"))
        && t.frames.iter().any(|f| f.name.contains("worker_busy_loop"));
    if waits_rpc {
        return Activity::WaitingForRpc;
    }
    Activity::Elsewhere { at: top.place() }
}

fn short_name(n: &str) -> String {
    n.rsplit('.').next().unwrap_or(n).to_string()
}

/// Innermost Python frames that mean the thread waits in native code for something to
/// arrive: a socket poll, a condition or queue, a select, a sleep inside vLLM's ring
/// reader (vLLM 0.32's engine core and workers, `docs/vllm.md`, "Process roles").
const WAITS: [&str; 12] = [
    // uvloop's `run` (and asyncio's `Runner.run` above it) poll in native code.
    "run",
    "poll",
    "wait",
    "select",
    "get",
    "acquire_read",
    "dequeue",
    "get_response",
    "recv",
    "recv_multipart",
    "_wait_for_response",
    "result",
];

/// Ring readers: a frame called by one of these is the reader's own back-off (a poll,
/// a short sleep), a wait all the same.
const RING_READERS: [&str; 2] = ["acquire_read", "dequeue"];

/// The thread's innermost frame is a wait primitive, or the back-off of a ring reader
/// just below it: it waits, it is not stuck on a line of its own. An injected or buggy
/// loop shows its own frame on top instead.
pub fn at_a_wait(t: &ThreadStack) -> bool {
    let name = |i: usize| t.frames.get(i).map(|f| short_name(&f.name));
    name(0).is_some_and(|n| WAITS.contains(&n.as_str()))
        || name(1).is_some_and(|n| RING_READERS.contains(&n.as_str()))
}

/// How many innermost frames say what a wait is for.
const WAIT_DEPTH: usize = 8;

/// The engine core waits for a worker's reply (`get_response` / `acquire_read`): its
/// main thread is at a wait and the reply reader is among its innermost frames, not
/// merely somewhere lower in the stack (a stuck frame on top is no wait).
pub fn core_waits_for_reply(core: &StackDump) -> bool {
    core.main_thread().is_some_and(|t| {
        let near = || t.frames.iter().take(WAIT_DEPTH);
        at_a_wait(t)
            && (near().any(|f| f.name.contains("get_response"))
                || (near().any(|f| f.name.contains("acquire_read"))
                    && !near().any(|f| f.name.contains("process_input"))))
    })
}

/// A rank whose stack says it is the one the others wait for.
#[derive(Clone, Debug, PartialEq)]
pub struct StackFinding {
    pub rank: u32,
    pub detail: String,
}

/// The odd one out: the others wait in a collective and this rank does not, or waits at
/// another call site than the majority (a mismatched collective).
pub fn odd_one_out(dumps: &BTreeMap<u32, StackDump>) -> Option<StackFinding> {
    let acts: BTreeMap<u32, Activity> = dumps
        .iter()
        .filter_map(|(r, d)| d.main_thread().map(|t| (*r, activity(t))))
        .collect();
    if acts.len() < 2 {
        return None;
    }
    let in_coll: Vec<u32> = acts
        .iter()
        .filter(|(_, a)| matches!(a, Activity::Collective { .. }))
        .map(|(r, _)| *r)
        .collect();
    let outside: Vec<u32> = acts
        .iter()
        .filter(|(_, a)| !matches!(a, Activity::Collective { .. } | Activity::Unknown))
        .map(|(r, _)| *r)
        .collect();
    if outside.len() == 1 && !in_coll.is_empty() {
        let r = outside[0];
        let what = match &acts[&r] {
            Activity::Elsewhere { at } => format!("stuck in {at}"),
            Activity::WaitingForRpc => "waiting for its next RPC".to_string(),
            _ => "not in the collective".to_string(),
        };
        return Some(StackFinding {
            rank: r,
            detail: format!("{what} while ranks {} wait in a collective", join(&in_coll)),
        });
    }
    if in_coll.len() == acts.len() && acts.len() >= 3 {
        // All in collectives: the one at a call site no other rank shares.
        let mut sites: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (r, a) in &acts {
            if let Activity::Collective { site, .. } = a {
                sites.entry(site.clone()).or_default().push(*r);
            }
        }
        if sites.len() == 2 {
            let lonely: Vec<(&String, &Vec<u32>)> =
                sites.iter().filter(|(_, v)| v.len() == 1).collect();
            if lonely.len() == 1 {
                let (site, ranks) = lonely[0];
                return Some(StackFinding {
                    rank: ranks[0],
                    detail: format!(
                        "waits in a collective called from {site}, a call site no other rank is at (mismatched collective)"
                    ),
                });
            }
        }
    }
    None
}

/// Main-thread frames that did not change between two dumps of the same process.
pub fn unchanged(a: &StackDump, b: &StackDump) -> bool {
    match (a.main_thread(), b.main_thread()) {
        (Some(x), Some(y)) => !x.frames.is_empty() && x.frames == y.frames,
        _ => false,
    }
}

/// One line per group of ranks for the summary, e.g.
/// `rank 2: stuck in stuck_in_python_sleep (fakevllm.py:88), unchanged for 12 s`.
pub fn describe(
    latest: &BTreeMap<u32, StackDump>,
    first: &BTreeMap<u32, StackDump>,
) -> Vec<String> {
    let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (r, d) in latest {
        let text = match (&d.error, d.main_thread()) {
            (Some(e), _) => format!("no stack ({}: {})", e.kind.as_str(), e.message),
            (None, None) => "no main thread found".to_string(),
            (None, Some(t)) => {
                let mut s = match activity(t) {
                    Activity::Collective { op, site } => {
                        format!("waiting in {op} (called from {site})")
                    }
                    Activity::WaitingForRpc => "waiting for its next RPC".to_string(),
                    Activity::Elsewhere { at } => format!("in {at}"),
                    Activity::Unknown => "empty stack".to_string(),
                };
                if let Some(f) = first.get(r) {
                    if f.taken_at_ms < d.taken_at_ms && unchanged(f, d) {
                        s.push_str(&format!(
                            ", unchanged for {:.0} s",
                            (d.taken_at_ms - f.taken_at_ms) as f64 / 1000.0
                        ));
                    }
                }
                s
            }
        };
        groups.entry(text).or_default().push(*r);
    }
    let mut lines: Vec<(u32, String)> = groups
        .into_iter()
        .map(|(text, ranks)| {
            let who = if ranks.len() == 1 {
                format!("rank {}", ranks[0])
            } else {
                format!("ranks {}", join(&ranks))
            };
            (ranks[0], format!("{who}: {text}"))
        })
        .collect();
    lines.sort();
    lines.into_iter().map(|(_, l)| l).collect()
}

fn join(v: &[u32]) -> String {
    v.iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str, line: i32) -> Frame {
        Frame {
            name: name.into(),
            filename: "/x/fakevllm.py".into(),
            short_filename: None,
            line,
        }
    }

    fn dump(pid: u32, rank: u32, frames: &[(&str, i32)], at: Millis) -> StackDump {
        StackDump {
            pid,
            rank: Some(rank),
            taken_at_ms: at,
            mode: "nonblocking".into(),
            duration_seconds: 0.01,
            python_version: None,
            threads: vec![ThreadStack {
                thread_id: 1,
                os_thread_id: Some(u64::from(pid)),
                name: Some("MainThread".into()),
                active: false,
                owns_gil: false,
                frames: frames.iter().map(|(n, l)| frame(n, *l)).collect(),
            }],
            error: None,
        }
    }

    const STEP: [(&str, i32); 4] = [
        ("all_reduce", 200),
        ("execute_model", 300),
        ("worker_busy_loop", 280),
        ("worker_main", 250),
    ];

    #[test]
    fn the_rank_outside_the_collective_is_named() {
        let mut d = BTreeMap::new();
        for r in [0u32, 1, 3] {
            d.insert(r, dump(10 + r, r, &STEP, 0));
        }
        d.insert(
            2,
            dump(
                12,
                2,
                &[
                    ("stuck_in_python_sleep", 88),
                    ("maybe_fault", 270),
                    ("worker_busy_loop", 275),
                ],
                0,
            ),
        );
        let f = odd_one_out(&d).expect("finding");
        assert_eq!(f.rank, 2);
        assert!(
            f.detail.contains("stuck_in_python_sleep (fakevllm.py:88)"),
            "{}",
            f.detail
        );
        assert!(f.detail.contains("ranks 0,1,3"), "{}", f.detail);
        let later: BTreeMap<u32, StackDump> = d
            .iter()
            .map(|(r, x)| {
                let mut y = x.clone();
                y.taken_at_ms = 12_000;
                (*r, y)
            })
            .collect();
        let lines = describe(&later, &d);
        assert!(
            lines.iter().any(|l| l.starts_with(
                "rank 2: in stuck_in_python_sleep (fakevllm.py:88), unchanged for 12 s"
            )),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("ranks 0,1,3: waiting in all_reduce")),
            "{lines:?}"
        );
    }

    #[test]
    fn a_mismatched_collective_is_named_by_its_call_site() {
        let mut d = BTreeMap::new();
        for r in [0u32, 1, 3] {
            d.insert(r, dump(10 + r, r, &STEP, 0));
        }
        d.insert(
            2,
            dump(
                12,
                2,
                &[
                    ("all_reduce", 200),
                    ("mismatched_collective", 120),
                    ("maybe_fault", 270),
                ],
                0,
            ),
        );
        let f = odd_one_out(&d).expect("finding");
        assert_eq!(f.rank, 2);
        assert!(f.detail.contains("mismatched_collective"), "{}", f.detail);
    }

    #[test]
    fn everybody_alike_names_nobody() {
        let mut d = BTreeMap::new();
        for r in 0u32..4 {
            d.insert(r, dump(10 + r, r, &STEP, 0));
        }
        assert_eq!(odd_one_out(&d), None);
    }

    #[test]
    fn a_stack_cut_short_is_not_complete() {
        let dump = |frames: &[&str]| -> StackDump {
            let frames: Vec<serde_json::Value> = frames
                .iter()
                .map(|n| serde_json::json!({"name": n, "filename": "f.py", "short_filename": null, "line": 1}))
                .collect();
            serde_json::from_value(serde_json::json!({
                "pid": 7, "rank": 1, "taken_at_ms": 0, "mode": "nonblocking", "duration_seconds": 0.0,
                "threads": [{"thread_id": 1, "os_thread_id": 7, "name": "MainThread",
                             "active": true, "owns_gil": false, "frames": frames}]
            }))
            .expect("dump")
        };
        assert!(dump(&["wait", "all_reduce", "execute_model", "<module>"]).complete());
        assert!(!dump(&["Collectives.done.<locals>.<genexpr>"]).complete());
        assert!(!dump(&[]).complete());
    }
}
