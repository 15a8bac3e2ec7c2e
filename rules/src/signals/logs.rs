//! What vLLM says about itself in its logs: a worker that died, requests running at
//! zero throughput, the engine core waiting for a ring, its own RPC timeout, and
//! `EngineDeadError`. The lines and their meaning are in `docs/vllm.md` ("Log lines").

use super::Findings;
use crate::facts::EngineFacts;
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
    engine_dead: bool,
    worker_died: BTreeMap<u32, (Millis, String)>,
    /// vLLM said it is killing its workers to shut down (`[shutdown] force killing sub
    /// process`): ranks that exit now are the service stopping, not a crash.
    shutting_down: bool,
}

impl LogSignal {
    pub fn observe(&mut self, engine: &EngineFacts) {
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
                LogEventKind::EngineDead => self.engine_dead = true,
                LogEventKind::ShutdownKill { .. } => self.shutting_down = true,
                LogEventKind::WorkerDied {
                    rank: Some(rank),
                    name,
                    exit_code,
                } => {
                    let code = exit_code.map_or("?".to_string(), |c| c.to_string());
                    self.worker_died.entry(*rank).or_insert((
                        ev.at_ms,
                        format!("vLLM logged: worker {name} died unexpectedly (exit code {code})"),
                    ));
                }
                _ => {}
            }
        }
    }

    /// Something moved: an earlier ring wait message is over, and so is a zero-throughput
    /// stats line (it speaks of the interval before it; the rings speak of now — a long
    /// step that just ended must not be reported for the ten seconds until vLLM's next
    /// stats line).
    pub fn progress_seen(&mut self) {
        self.ring_wait = None;
        self.no_progress = None;
    }

    /// vLLM logged `EngineDeadError`.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    pub fn engine_dead(&self) -> bool {
        self.engine_dead
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
