//! What vLLM says about itself in its logs: a worker that died, requests running at
//! zero throughput, the engine core waiting for a ring, its own RPC timeout, and
//! `EngineDeadError`. The lines and their meaning are in `docs/vllm.md` ("Log lines").

use super::Findings;
use crate::facts::{EngineFacts, ProcState};
use crate::logs::{LogEventKind, RingWaitSide};
use crate::thresholds::Effective;
use crate::time::{secs, Millis};
use crate::verdict::ReasonCode;
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct LogSignal {
    /// (since, requests running) of zero-throughput stats lines.
    no_progress: Option<(Millis, u32)>,
    /// (since, seconds) of the reader-side ring wait message.
    ring_wait: Option<(Millis, f64)>,
    rpc_timeout: Option<(Millis, String)>,
    /// When vLLM logged `EngineDeadError`: the engine dies within seconds of it, so the
    /// word counts only that long (a live engine long after it was no death).
    engine_dead: Option<Millis>,
    worker_died: BTreeMap<u32, (Millis, String)>,
    /// A worker vLLM said died while its process still ran: counts once the process is
    /// gone, void if it still runs after `ANNOUNCED_MS`.
    worker_died_pending: BTreeMap<u32, (Millis, String)>,
    /// When vLLM last said it is killing one of this engine's workers to shut down
    /// (`[shutdown] force killing sub process`): ranks that exit now are the service
    /// stopping, not a crash — for `ANNOUNCED_MS`, after which the word is void.
    shutting_down: Option<Millis>,
    /// Something moved since `engine_dead` was logged.
    moved_since_dead: bool,
    /// Pids (host and namespace) of this engine's workers, when last seen: the workers
    /// vLLM kills are gone by the time its line is read.
    worker_pids: BTreeMap<u32, Millis>,
}

/// An `EngineDeadError` with the engine still there this long after is void, moving or not.
const DEATH_VOID_MS: Millis = 60_000;

/// How long what a log line announces (a death, a shutdown) may take to follow before
/// the line is void. vLLM kills its processes within a second or two of saying so.
pub const ANNOUNCED_MS: Millis = 15_000;

impl LogSignal {
    pub fn observe(&mut self, engine: &EngineFacts, now: Millis) {
        for r in &engine.ranks {
            self.worker_pids.insert(r.process.pid, now);
            if let Some(ns) = r.process.ns_pid {
                self.worker_pids.insert(ns, now);
            }
        }
        self.worker_pids
            .retain(|_, seen| now - *seen <= ANNOUNCED_MS);
        // A zero-throughput stats line covers the interval before it.
        let stats_ms = engine
            .settings
            .get("VLLM_LOG_STATS_INTERVAL")
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(10_000, |s| (s * 1000.0) as Millis);
        for ev in &engine.log_events {
            match &ev.kind {
                LogEventKind::Stats {
                    running,
                    generation_tps,
                    prompt_tps,
                    ..
                } => {
                    if *running > 0 && *generation_tps == 0.0 && *prompt_tps == 0.0 {
                        let since = self.no_progress.map_or(ev.at_ms - stats_ms, |(s, _)| s);
                        self.no_progress = Some((since, *running));
                    } else {
                        self.no_progress = None;
                    }
                }
                LogEventKind::RingWait {
                    side: RingWaitSide::Reader,
                    seconds,
                } => {
                    let since = ev.at_ms - (*seconds * 1000.0) as Millis;
                    self.ring_wait.get_or_insert((since, *seconds));
                }
                LogEventKind::RpcTimeout { method } => {
                    self.rpc_timeout = Some((ev.at_ms, method.clone()));
                }
                LogEventKind::EngineDead if self.engine_dead.is_none() => {
                    self.engine_dead = Some(ev.at_ms);
                    self.moved_since_dead = false;
                }
                // Only a kill of one of this engine's own workers says it stops.
                LogEventKind::ShutdownKill { pid: Some(pid), .. }
                    if self.worker_pids.contains_key(pid) =>
                {
                    self.shutting_down = Some(ev.at_ms);
                }
                LogEventKind::WorkerDied {
                    rank: Some(rank),
                    name,
                    exit_code,
                } => {
                    let code = exit_code.map_or("?".to_string(), |c| c.to_string());
                    let detail =
                        format!("vLLM logged: worker {name} died unexpectedly (exit code {code})");
                    if !self.worker_died.contains_key(rank) {
                        self.worker_died_pending
                            .entry(*rank)
                            .or_insert((ev.at_ms, detail));
                    }
                }
                _ => {}
            }
        }
        self.settle_announcements(engine, now);
    }

    /// What the logs announced either followed (the worker is gone) or is void.
    fn settle_announcements(&mut self, engine: &EngineFacts, now: Millis) {
        let gone = |rank: u32| {
            engine
                .ranks
                .iter()
                .find(|r| r.rank == rank)
                .is_none_or(|r| {
                    matches!(
                        r.process.state,
                        ProcState::Zombie | ProcState::Dead | ProcState::Gone
                    )
                })
        };
        let pending = std::mem::take(&mut self.worker_died_pending);
        for (rank, (since, detail)) in pending {
            if gone(rank) {
                self.worker_died.insert(rank, (since, detail));
            } else if now - since <= ANNOUNCED_MS {
                self.worker_died_pending.insert(rank, (since, detail));
            }
        }
        if self.shutting_down.is_some_and(|at| now - at > ANNOUNCED_MS) {
            self.shutting_down = None;
        }
        let void = |at: Millis| {
            (now - at > ANNOUNCED_MS && self.moved_since_dead) || now - at > DEATH_VOID_MS
        };
        if self.engine_dead.is_some_and(void) {
            self.engine_dead = None;
        }
    }

    /// Something moved: an earlier ring wait message is over, and so is a zero-throughput
    /// stats line (it speaks of the interval before it; the rings speak of now — a long
    /// step that just ended must not be reported for the ten seconds until vLLM's next
    /// stats line).
    pub fn progress_seen(&mut self) {
        self.moved_since_dead = self.engine_dead.is_some();
        self.ring_wait = None;
        self.no_progress = None;
    }

    /// vLLM said, lately, that it kills this engine's workers to stop.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.is_some()
    }

    /// vLLM logged `EngineDeadError`, lately.
    pub fn engine_dead(&self) -> bool {
        self.engine_dead.is_some()
    }

    /// vLLM's own timeout fired: the engine is dying, whatever else is seen.
    pub fn rpc_timed_out(&self) -> bool {
        self.rpc_timeout.is_some()
    }

    pub fn reasons(&self, eff: Effective, now: Millis, f: &mut Findings) {
        for (&rank, (since, detail)) in &self.worker_died {
            f.rank(rank, ReasonCode::WorkerDied, detail.clone(), *since);
        }
        if let Some((since, running)) = self.no_progress {
            if now - since >= eff.suspect_ms {
                let detail = format!(
                    "vLLM's stats line: {running} requests running at 0 tokens/s for {:.0} s",
                    secs(now - since)
                );
                f.engine(ReasonCode::LogNoProgress, detail, since);
            }
        }
        if let Some((since, seconds)) = self.ring_wait {
            let detail = format!(
                "vLLM logged that its engine core found no shared memory broadcast block for {seconds:.0} s"
            );
            f.engine(ReasonCode::RingWaitMessage, detail, since);
        }
        if let Some((since, method)) = &self.rpc_timeout {
            f.engine(ReasonCode::RpcTimeout, rpc_timeout_detail(method), *since);
        }
    }
}

/// The sentence for vLLM's own timeout, also used for the last words of a vanished engine.
pub fn rpc_timeout_detail(method: &str) -> String {
    format!("vLLM's own timeout fired: RPC call to {method} timed out")
}

impl super::Signal for LogSignal {
    /// After the progress signal: what moved this tick ends the waits logged before.
    fn observe(&mut self, b: &mut super::Board<'_>) {
        LogSignal::observe(self, b.engine, b.now);
        if b.look.moved {
            self.progress_seen();
        }
    }

    fn reasons(&self, s: &super::Seen<'_>, f: &mut Findings) {
        LogSignal::reasons(self, s.eff, s.now, f);
    }
}
