//! The processes besides the workers: the engine core and the API server are judged
//! like ranks. A stopped, exited or blocked core or front end cannot make progress; a
//! core whose main thread stands on the same frame, not a wait, round after round
//! while nothing moves is stuck there (`docs/vllm.md`, "Process roles").
//!
//! A halted process only counts while the engine had work: a core stopped while its
//! engine was idle, or an API server stopped with no request in flight, keeps nobody
//! waiting yet (the same rule as for a stopped rank).

use super::progress::engine_moved;
use super::stacks::PERSIST_MS;
use super::{Board, Findings, Seen, Signal};
use crate::facts::{EngineFacts, Executor, ProcFacts, ProcState, Role};
use crate::position::{position, Position};
use crate::stacks::{activity, at_a_wait, unchanged, Activity, StackDump, ThreadStack};
use crate::time::{secs, Millis};
use crate::verdict::ReasonCode;
use std::collections::VecDeque;

/// Core dumps kept for one quiet spell.
const DUMPS_KEPT: usize = 6;

/// One process watched over time: since when it is halted or blocked.
#[derive(Debug, Default)]
struct Watched {
    pid: u32,
    /// (state, since) while stopped, zombie or gone.
    halted: Option<(ProcState, Millis)>,
    /// Since when in uninterruptible sleep.
    disk_sleep: Option<Millis>,
    /// The engine had work when the halt or block began.
    busy_at_onset: bool,
}

impl Watched {
    /// Follows the process; `busy` says whether the engine has work right now (read at
    /// the onset of a halt or block only).
    fn observe(&mut self, p: &ProcFacts, busy: bool, now: Millis) {
        if p.pid != self.pid {
            *self = Watched {
                pid: p.pid,
                ..Watched::default()
            };
        }
        let st = p.state;
        let onset = |was_clear: bool, busy_at: &mut bool| {
            if was_clear {
                *busy_at = busy;
            }
        };
        if st.is_halted() {
            if self.halted.is_none_or(|(s, _)| s != st) {
                let clear = self.halted.is_none() && self.disk_sleep.is_none();
                onset(clear, &mut self.busy_at_onset);
                self.halted = Some((st, now));
            }
        } else {
            self.halted = None;
        }
        if st == ProcState::DiskSleep {
            if self.disk_sleep.is_none() {
                onset(self.halted.is_none(), &mut self.busy_at_onset);
                self.disk_sleep = Some(now);
            }
        } else {
            self.disk_sleep = None;
        }
    }

    /// Its halt or block, past `suspect_ms` and while the engine had work.
    fn reasons(&self, who: (Role, u32), suspect_ms: Millis, now: Millis, f: &mut Findings) {
        if let Some((st, since)) = self.halted {
            let age = now - since;
            if matches!(st, ProcState::Zombie | ProcState::Dead | ProcState::Gone) {
                let detail = format!("the {} exited", who.0.words());
                f.process(who, ReasonCode::ProcessExited, detail, since, true);
            } else if age >= suspect_ms && self.busy_at_onset {
                let by = if st == ProcState::TracingStop {
                    "by a tracer"
                } else {
                    "SIGSTOP"
                };
                let detail = format!(
                    "the {} is stopped ({by}) for {:.0} s while requests wait",
                    who.0.words(),
                    secs(age)
                );
                f.process(who, ReasonCode::ProcessStopped, detail, since, true);
            }
        }
        if let Some(since) = self.disk_sleep {
            let age = now - since;
            if age >= suspect_ms && self.busy_at_onset {
                let detail = format!(
                    "the {} is in uninterruptible sleep for {:.0} s while requests wait",
                    who.0.words(),
                    secs(age)
                );
                f.process(who, ReasonCode::UninterruptibleSleep, detail, since, true);
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct RoleSignal {
    core: Watched,
    api: Watched,
    /// The engine had work at the last look at which the core was readable.
    busy: bool,
    /// Requests running or waiting by vLLM's last answered `/metrics`.
    queued: f64,
    /// Whole dumps of the core's main thread since anything last moved, oldest first.
    core_dumps: Vec<StackDump>,
    /// When kept core dumps were taken with every worker's dump of that round waiting
    /// for its next RPC.
    workers_waiting: Vec<Millis>,
    /// The core is rank 0 (uni executor): its process evidence is the rank's.
    uni: bool,
    /// A follower node's part: no engine core to judge.
    follower: bool,
    /// The core's (at, CPU seconds) over about `CPU_WINDOW_MS`, and its last run states:
    /// a core that computes (CPU, or runnable on a starved node) is not stuck, whatever
    /// its stack says.
    core_cpu: VecDeque<(Millis, f64)>,
    core_states: VecDeque<ProcState>,
}

/// The window the core's CPU use is judged over.
const CPU_WINDOW_MS: Millis = 2_000;
/// Below this many cores the core does no work (a sleep or a blocked call uses none).
const IDLE_CORES: f64 = 0.05;
/// Run states remembered: runnable in one of them is at work.
const STATES_KEPT: usize = 3;

/// Requests running or waiting by vLLM's own count, when `/metrics` answered.
pub(super) fn queued(e: &EngineFacts) -> Option<f64> {
    e.vllm_metrics
        .as_ref()
        .map(|m| m.running.unwrap_or(0.0) + m.waiting.unwrap_or(0.0))
}

impl Signal for RoleSignal {
    fn observe(&mut self, b: &mut Board<'_>) {
        let e = b.engine;
        self.follower = e.executor == Executor::Follower;
        if self.follower {
            return; // no engine core here: the `core` slot is the headless launcher
        }
        self.uni = e.ranks.iter().any(|r| r.process.pid == e.core.pid);
        // A halt begins between two looks: the engine had work if it had at the look
        // before (the core drains its running requests once the front end stops) or has
        // now.
        let before = self.busy || self.queued > 0.0;
        if b.look.core_idle.is_some() {
            self.busy = !b.look.idle;
        }
        if let Some(q) = queued(e) {
            self.queued = q;
        }
        let busy = before || self.busy || self.queued > 0.0;
        self.follow_core_cpu(&e.core, b.now);
        self.core.observe(&e.core, busy, b.now);
        if let Some(api) = &e.api {
            self.api.observe(api, busy, b.now);
        }
        // The core's own CPU is no movement here: a core computing in one place while
        // rings and counters stand still is what `core_spinning` looks for.
        let visible = b.metrics_moved || b.last.is_none_or(|p| engine_moved(p, e, 0, 0.0));
        if visible || b.look.idle || self.core_dumps.first().is_some_and(|d| d.pid != e.core.pid) {
            self.core_dumps.clear();
            self.workers_waiting.clear();
        }
        let fresh: Vec<&StackDump> = e
            .stacks
            .iter()
            .filter(|d| d.pid == e.core.pid && d.complete())
            .collect();
        for d in fresh {
            if workers_wait_for_rpc(e, d.taken_at_ms) {
                self.workers_waiting.push(d.taken_at_ms);
            }
            self.core_dumps.push(d.clone());
        }
        if self.core_dumps.len() > DUMPS_KEPT {
            self.core_dumps.remove(0);
            let oldest = self.core_dumps.first().map_or(0, |d| d.taken_at_ms);
            self.workers_waiting.retain(|t| *t >= oldest);
        }
    }

    fn reasons(&self, s: &Seen<'_>, f: &mut Findings) {
        if self.follower {
            return;
        }
        let core = (Role::EngineCore, s.engine.core.pid);
        if !self.uni {
            self.core.reasons(core, s.base.suspect_ms, s.now, f);
        }
        if let Some(api) = &s.engine.api {
            self.api
                .reasons((Role::ApiServer, api.pid), s.base.suspect_ms, s.now, f);
        }
        let stuck = self.core_stuck().or_else(|| self.core_spinning(s.engine));
        if let Some((detail, since)) = stuck {
            if self.uni {
                f.rank(0, ReasonCode::StackStuck, detail, since);
                f.conclude(0);
            } else {
                f.process(core, ReasonCode::StackStuck, detail, since, true);
            }
        }
        // The core is not waiting for anyone: "no reply while the core waits" is wrong.
        if f.others.contains_key(&core) || (self.uni && f.has(0, ReasonCode::StackStuck)) {
            f.engine.retain(|r| r.code != ReasonCode::NoReply);
        }
    }
}

impl RoleSignal {
    /// Keeps the core's CPU time over the window and its last run states.
    fn follow_core_cpu(&mut self, core: &ProcFacts, now: Millis) {
        if self
            .core_cpu
            .back()
            .is_some_and(|_| self.core.pid != core.pid)
        {
            self.core_cpu.clear();
            self.core_states.clear();
        }
        self.core_cpu.push_back((now, core.cpu_seconds));
        while self.core_cpu.len() > 2
            && self
                .core_cpu
                .get(1)
                .is_some_and(|(t, _)| now - t >= CPU_WINDOW_MS)
        {
            self.core_cpu.pop_front();
        }
        self.core_states.push_back(core.state);
        while self.core_states.len() > STATES_KEPT {
            self.core_states.pop_front();
        }
    }

    /// The core used no CPU over the window and was not runnable lately.
    fn core_at_rest(&self) -> bool {
        if self.core_states.contains(&ProcState::Running) {
            return false;
        }
        match (self.core_cpu.front(), self.core_cpu.back()) {
            (Some((t0, c0)), Some((t1, c1))) if t1 - t0 >= CPU_WINDOW_MS / 2 => {
                (c1 - c0) / secs(t1 - t0) < IDLE_CORES
            }
            _ => false,
        }
    }

    /// The core's main thread on the same frames, not at a wait (nor on the GPU, nor in
    /// a collective), in two rounds at least `PERSIST_MS` apart with nothing moving in
    /// between.
    fn core_stuck(&self) -> Option<(String, Millis)> {
        if !self.core_at_rest() {
            return None;
        }
        let last = self.core_dumps.last()?;
        let first = self
            .core_dumps
            .iter()
            .find(|d| last.taken_at_ms - d.taken_at_ms >= PERSIST_MS)?;
        if !unchanged(first, last) {
            return None;
        }
        let t = last.main_thread()?;
        // In a collective (a data-parallel replica's sync) the core waits for the others.
        if at_a_wait(t)
            || matches!(
                position(t),
                Position::WaitingOnGpu | Position::Collective | Position::PipelineWait
            )
        {
            return None;
        }
        let top: Vec<String> = t.frames.iter().take(2).map(|f| f.place()).collect();
        let detail = format!(
            "its main thread stands in {} for {:.0} s, not a wait, while nothing moves",
            top.join(" ← "),
            secs(last.taken_at_ms - first.taken_at_ms)
        );
        Some((detail, first.taken_at_ms))
    }

    /// The core's main thread computing in the same functions (a loop moves between
    /// lines) for `SPIN_MS`, every worker waiting for its next RPC at both ends of it,
    /// and nothing moving:
    /// the workers wait for the core, the core is busy elsewhere, round after round
    /// (`docs/vllm.md`, "Process roles": a healthy core never computes for seconds
    /// between two broadcasts). Only for the `mp` executor, whose workers tell.
    fn core_spinning(&self, e: &EngineFacts) -> Option<(String, Millis)> {
        if self.uni || e.ranks.is_empty() || self.core_at_rest() {
            return None;
        }
        let last = self.core_dumps.last()?;
        let first = self.core_dumps.first()?;
        if last.taken_at_ms - first.taken_at_ms < SPIN_MS {
            return None;
        }
        let t = last.main_thread()?;
        let same = self
            .core_dumps
            .iter()
            .all(|d| d.main_thread().is_some_and(|x| same_functions(x, t)));
        if !same || at_a_wait(t) || !matches!(position(t), Position::Elsewhere) {
            return None;
        }
        let waiting = |d: &StackDump| self.workers_waiting.contains(&d.taken_at_ms);
        if !waiting(first) || !waiting(last) {
            return None;
        }
        let top: Vec<String> = t.frames.iter().take(2).map(|f| f.place()).collect();
        let detail = format!(
            "its main thread computes in {} for {:.0} s (CPU busy, the same functions) while every worker waits for its next RPC",
            top.join(" ← "),
            secs(last.taken_at_ms - first.taken_at_ms)
        );
        Some((detail, first.taken_at_ms))
    }
}

/// How long the core must compute in the same functions, workers waiting, to be named.
const SPIN_MS: Millis = PERSIST_MS;

/// The same functions in the same files, innermost first; lines may differ.
fn same_functions(a: &ThreadStack, b: &ThreadStack) -> bool {
    !a.frames.is_empty()
        && a.frames.len() == b.frames.len()
        && a.frames
            .iter()
            .zip(&b.frames)
            .all(|(x, y)| x.name == y.name && x.filename == y.filename)
}

/// Every worker's dump of this round (taken within a second of the core's) shows it
/// waiting for its next RPC.
fn workers_wait_for_rpc(e: &EngineFacts, at: Millis) -> bool {
    e.ranks.iter().all(|r| {
        e.stacks.iter().any(|d| {
            d.pid == r.process.pid
                && (d.taken_at_ms - at).abs() <= 1_000
                && d.main_thread()
                    .is_some_and(|t| activity(t) == Activity::WaitingForRpc)
        })
    })
}
