//! Progress: did anything move since the last look, is the engine idle, and — when the
//! engine core waits for a reply while nothing moves — for how long. Also whether the
//! engine is still starting (never idle, never served, young).

use super::adapt::Adaptation;
use super::Findings;
use crate::facts::{EngineFacts, Executor, ProcFacts, ProcState, RingRole};
use crate::thresholds::{Effective, Thresholds};
use crate::time::{secs, Millis};
use crate::verdict::ReasonCode;

/// What this tick's look says about the engine as a whole.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgressLook {
    /// The engine core's wait, as `core_idle_wait` reads it.
    pub core_idle: Option<bool>,
    /// The core waits on its input queue and no RPC is outstanding.
    pub idle: bool,
    /// The core waits for a worker's reply.
    pub waiting: bool,
    pub moved: bool,
}

#[derive(Debug, Default)]
pub struct Progress {
    seen_idle: bool,
    seen_serving: bool,
    /// When the engine was first seen serving (0: not yet).
    first_served_ms: Millis,
    /// Last time anything moved or the engine was idle.
    last_progress_ms: Millis,
}

/// Inputs of one progress look besides the engine's facts.
pub struct Moves<'a> {
    pub last: Option<&'a EngineFacts>,
    pub last_at_ms: Millis,
    pub nothing_pending: bool,
    pub metrics_moved: bool,
}

impl Progress {
    pub fn observe(
        &mut self,
        engine: &EngineFacts,
        m: Moves<'_>,
        now: Millis,
        t: &Thresholds,
        adapt: &mut Adaptation,
        confirm_ms: Millis,
    ) -> ProgressLook {
        if engine
            .rings
            .iter()
            .any(|r| r.methods.values().any(|m| is_serving_method(m)))
            && !self.seen_serving
        {
            self.seen_serving = true;
            self.first_served_ms = now;
        }
        // A follower node's launcher says nothing of the engine's work.
        let core_idle = match engine.executor {
            Executor::Follower => None,
            _ => core_idle_wait(&engine.core),
        };
        let idle = core_idle == Some(true) && m.nothing_pending;
        self.seen_idle |= idle;
        if engine.executor == Executor::Follower {
            // No ring says when serving began: a part whose every worker rested (asleep,
            // no CPU) since the last look has finished loading and warming up; so has
            // one whose leader's agent says the deployment serves (this agent started
            // while it was busy: its workers may not rest for hours).
            self.seen_idle |= m
                .last
                .is_some_and(|prev| workers_at_rest(prev, engine, now - m.last_at_ms))
                || engine.leader.as_ref().is_some_and(|l| l.serving);
        }
        let first_look = m.last.is_none();
        let moved = m.metrics_moved
            || m.last.is_none_or(|prev| {
                engine_moved(prev, engine, now - m.last_at_ms, t.core_busy_cpu_fraction)
            });
        // Without a readable wchan the core's waiting cannot be told from idling: stay
        // silent rather than guess.
        let waiting = core_idle == Some(false);
        if first_look || moved || !waiting || idle {
            let quiet_ms = now - self.last_progress_ms;
            if !first_look
                && moved
                && Adaptation::worth_learning(quiet_ms)
                && self.last_progress_ms > 0
            {
                adapt.recovered(now, quiet_ms, confirm_ms);
            }
            self.last_progress_ms = now;
        }
        ProgressLook {
            core_idle,
            idle,
            waiting,
            moved,
        }
    }

    /// Past start-up and the first minute of serving: lags from now on teach adaptation.
    pub fn warmed_up(&self, now: Millis) -> bool {
        self.seen_serving && now - self.first_served_ms >= super::adapt::WARMUP_MS
    }

    /// How long the engine core has waited with nothing moving (0 when it is not
    /// waiting, or something moved this tick).
    pub fn quiet_for(&self, look: ProgressLook, now: Millis) -> Millis {
        if look.waiting && !look.idle && self.last_progress_ms > 0 {
            now - self.last_progress_ms
        } else {
            0
        }
    }

    /// Loading, compiling, warming up: never idle yet, never served, and young.
    pub fn starting(&self, engine: &EngineFacts, now: Millis, t: &Thresholds) -> bool {
        let core_age = if engine.core.started_at_ms > 0 {
            now - engine.core.started_at_ms
        } else {
            Millis::MAX
        };
        !self.seen_idle && !self.seen_serving && core_age < t.startup_grace_ms
    }

    pub fn reasons(&self, look: ProgressLook, eff: Effective, now: Millis, f: &mut Findings) {
        let quiet_ms = now - self.last_progress_ms;
        if look.waiting && quiet_ms >= eff.suspect_ms && self.last_progress_ms > 0 {
            let detail = format!(
                "every rank took its RPC but no reply for {:.0} s while the engine core waits",
                secs(quiet_ms)
            );
            f.engine(ReasonCode::NoReply, detail, self.last_progress_ms);
        }
    }
}

/// A worker below this many cores is at rest (an idle CPU-build worker's OpenMP threads
/// still spin a little after each step).
const REST_CORES: f64 = 0.2;

/// Every rank asleep now and using (almost) no CPU since `prev`, `dt_ms` ago.
fn workers_at_rest(prev: &EngineFacts, now: &EngineFacts, dt_ms: Millis) -> bool {
    dt_ms > 0
        && !now.ranks.is_empty()
        && now.ranks.iter().all(|r| {
            let before = prev.rank(r.rank).map(|p| p.process.cpu_seconds);
            r.process.state == ProcState::Sleeping
                && before.is_some_and(|b| {
                    (r.process.cpu_seconds - b) * 1000.0 < REST_CORES * dt_ms as f64
                })
        })
}

/// The engine core waits on its input queue: nothing is outstanding. vLLM's core
/// blocks in a futex there and in poll while it waits for a worker's reply (measured
/// on vllm 0.32, see `docs/vllm.md`); an unreadable wchan says nothing.
pub fn core_idle_wait(core: &ProcFacts) -> Option<bool> {
    match core.state {
        ProcState::Sleeping => core.wchan.as_deref().map(|w| w.contains("futex")),
        ProcState::Running => Some(false),
        _ => None,
    }
}

/// Whether anything visible moved between two looks at the same engine: ring flags or
/// chunk contents of the rings that carry RPCs and replies, or the engine core burning
/// CPU (it schedules between steps).
pub fn engine_moved(prev: &EngineFacts, now: &EngineFacts, dt_ms: i64, busy_cpu: f64) -> bool {
    for ring in now
        .rings
        .iter()
        .filter(|r| !matches!(r.role, RingRole::TpBroadcast))
    {
        match prev.rings.iter().find(|p| p.name == ring.name) {
            Some(p) => {
                if p.flags != ring.flags || p.fingerprint != ring.fingerprint {
                    return true;
                }
            }
            None => return true,
        }
    }
    if dt_ms > 0 && prev.core.pid == now.core.pid {
        let used = now.core.cpu_seconds - prev.core.cpu_seconds;
        if used / (dt_ms as f64 / 1000.0) >= busy_cpu {
            return true;
        }
    }
    false
}

/// RPC methods vLLM's scheduler loop sends; seeing one means start-up is over.
pub fn is_serving_method(method: &str) -> bool {
    matches!(method, "execute_model" | "sample_tokens")
}

impl super::Signal for Progress {
    fn observe(&mut self, b: &mut super::Board<'_>) {
        let moves = Moves {
            last: b.last,
            last_at_ms: b.last_at_ms,
            nothing_pending: b.rings.nothing_pending(),
            metrics_moved: b.metrics_moved,
        };
        b.look = Progress::observe(
            self,
            b.engine,
            moves,
            b.now,
            b.thresholds,
            b.adapt,
            b.confirm_before,
        );
    }

    fn reasons(&self, s: &super::Seen<'_>, f: &mut Findings) {
        Progress::reasons(self, s.look, s.eff, s.now, f);
    }
}
