//! What the judge says about an engine at one instant.

use crate::facts::Role;
use crate::time::Millis;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum EngineState {
    /// Loading, compiling, warming up: long silences are normal, nothing is judged.
    Starting,
    /// Nothing outstanding: never an incident.
    Idle,
    Busy,
    Stalled,
    Dead,
}

impl EngineState {
    pub const ALL: [EngineState; 5] = [
        EngineState::Starting,
        EngineState::Idle,
        EngineState::Busy,
        EngineState::Stalled,
        EngineState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EngineState::Starting => "starting",
            EngineState::Idle => "idle",
            EngineState::Busy => "busy",
            EngineState::Stalled => "stalled",
            EngineState::Dead => "dead",
        }
    }
}

/// Why a rank (or the engine) is suspected; `code` is stable for machines, `detail`
/// is the sentence a person reads.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Reason {
    pub code: ReasonCode,
    pub detail: String,
    pub since_ms: Millis,
}

/// Declared in the order a summary lists reasons (`Ord`): per rank the most direct
/// evidence first, then the engine-wide evidence, vLLM's own words before inferences.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// A ring chunk the other readers finished is still unread by this rank.
    RingUnread,
    /// The rank's process is stopped by a signal or a tracer.
    ProcessStopped,
    /// The rank's process exited or is a zombie.
    ProcessExited,
    /// The rank's main thread sits in uninterruptible sleep.
    UninterruptibleSleep,
    /// vLLM logged that this worker died.
    WorkerDied,
    /// Its Python stack is the odd one out: the others wait in a collective for it.
    StackOddOneOut,
    /// Its main thread stands on the same frame, not a wait, round after round while
    /// the engine makes no progress (the engine core, the API server's event loop).
    StackStuck,
    /// Its GPU is idle while the other ranks' GPUs spin in a collective.
    GpuIdleWhileOthersSpin,
    /// NCCL RAS: this rank is behind the others in launched collectives.
    RasLaggard,
    /// vLLM's stats line: requests running, zero throughput.
    LogNoProgress,
    /// vLLM's own `/metrics`: requests running, progress counters flat.
    MetricsNoProgress,
    /// vLLM itself logged that it waits for a shared-memory ring.
    RingWaitMessage,
    /// vLLM logged `TimeoutError: RPC call to <method> timed out`: the engine dies now.
    RpcTimeout,
    /// An RPC is unread by every rank: all of them are still inside the last step.
    UnreadByAll,
    /// Every reader finished, the engine core waits for a reply, nothing moves.
    NoReply,
    /// Every local rank's GPU spins in a collective: desync or a remote peer.
    CollectiveWedge,
    /// NCCL RAS: ranks are ahead on different communicators.
    RasDesync,
    /// Every rank has been at work in one step past `judge.long_step_limit`.
    LongStep,
    /// A replica of a lockstep deployment waits for another replica whose stall is named.
    ReplicaWait,
    /// Every local rank waits in a collective for ranks on another node.
    RemoteWait,
    /// Another node's agent names this rank of the deployment (its own evidence).
    PeerNamed,
    /// A follower node's part lost every connection to its deployment: its leader is gone.
    Orphaned,
}

/// What a reason code is, in one place: the judge, the summaries and the metrics read
/// this table and nothing else.
#[derive(Debug, Clone, Copy)]
pub struct ReasonInfo {
    pub code: ReasonCode,
    /// The name in verdicts, bundles, metrics and notifications.
    pub name: &'static str,
    /// How strongly this evidence alone names a rank (0: it names none).
    pub weight: f64,
    /// It says a rank (not the whole engine) is the culprit.
    pub names_rank: bool,
    /// It says nothing moves (dropped when every rank is seen at work: a long step).
    pub no_progress: bool,
    /// It says a process is gone: the stall is confirmed at once.
    pub exited: bool,
    /// A halted process or a conclusive look: confirmed on the base thresholds, never
    /// on thresholds a long step taught (`signals/adapt.rs`).
    pub base_thresholds: bool,
    /// Alone, it makes an incident a `warning`, not `critical`.
    pub warning: bool,
}

const fn reason(code: ReasonCode, name: &'static str, weight: f64) -> ReasonInfo {
    ReasonInfo {
        code,
        name,
        weight,
        names_rank: weight > 0.0,
        no_progress: false,
        exited: false,
        base_thresholds: false,
        warning: false,
    }
}

/// Every reason code, in `ReasonCode`'s order.
pub const REASONS: [ReasonInfo; 22] = {
    use ReasonCode as C;
    [
        reason(C::RingUnread, "ring_unread", 0.8),
        ReasonInfo {
            base_thresholds: true,
            ..reason(C::ProcessStopped, "process_stopped", 0.9)
        },
        ReasonInfo {
            exited: true,
            ..reason(C::ProcessExited, "process_exited", 0.95)
        },
        ReasonInfo {
            base_thresholds: true,
            ..reason(C::UninterruptibleSleep, "uninterruptible_sleep", 0.5)
        },
        ReasonInfo {
            exited: true,
            ..reason(C::WorkerDied, "worker_died", 0.95)
        },
        ReasonInfo {
            base_thresholds: true,
            ..reason(C::StackOddOneOut, "stack_odd_one_out", 0.7)
        },
        ReasonInfo {
            base_thresholds: true,
            ..reason(C::StackStuck, "stack_stuck", 0.8)
        },
        ReasonInfo {
            base_thresholds: true,
            ..reason(
                C::GpuIdleWhileOthersSpin,
                "gpu_idle_while_others_spin",
                0.85,
            )
        },
        reason(C::RasLaggard, "ras_laggard", 0.85),
        ReasonInfo {
            no_progress: true,
            ..reason(C::LogNoProgress, "log_no_progress", 0.0)
        },
        ReasonInfo {
            no_progress: true,
            ..reason(C::MetricsNoProgress, "metrics_no_progress", 0.0)
        },
        ReasonInfo {
            no_progress: true,
            ..reason(C::RingWaitMessage, "ring_wait_message", 0.0)
        },
        reason(C::RpcTimeout, "rpc_timeout", 0.0),
        ReasonInfo {
            no_progress: true,
            ..reason(C::UnreadByAll, "unread_by_all", 0.0)
        },
        ReasonInfo {
            no_progress: true,
            ..reason(C::NoReply, "no_reply", 0.0)
        },
        ReasonInfo {
            base_thresholds: true,
            ..reason(C::CollectiveWedge, "collective_wedge", 0.0)
        },
        reason(C::RasDesync, "ras_desync", 0.0),
        ReasonInfo {
            warning: true,
            ..reason(C::LongStep, "long_step", 0.0)
        },
        reason(C::ReplicaWait, "replica_wait", 0.0),
        reason(C::RemoteWait, "remote_wait", 0.0),
        ReasonInfo {
            base_thresholds: true,
            ..reason(C::PeerNamed, "peer_named", 0.9)
        },
        ReasonInfo {
            warning: true,
            ..reason(C::Orphaned, "orphaned", 0.0)
        },
    ]
};

impl ReasonCode {
    /// This code's row of `REASONS`.
    pub fn info(self) -> &'static ReasonInfo {
        &REASONS[self as usize]
    }

    pub fn as_str(self) -> &'static str {
        self.info().name
    }

    /// How strongly this evidence alone names a rank.
    pub fn weight(self) -> f64 {
        self.info().weight
    }
}

/// `warning` when the only evidence is the long-step ceiling, else `critical`.
pub fn severity_of(suspects: &[Suspect], engine_reasons: &[Reason]) -> &'static str {
    let only_long = suspects.is_empty()
        && !engine_reasons.is_empty()
        && engine_reasons.iter().all(|r| r.code.info().warning);
    if only_long {
        "warning"
    } else {
        "critical"
    }
}

/// A process the judge believes the engine waits for: a rank (a worker, or the engine
/// core under the uni executor), or the engine core, the API server, the DP coordinator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Suspect {
    /// The rank, for a process that is one (none for the engine core of an `mp`
    /// engine, the API server, the DP coordinator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    /// Left out for a worker (verdicts of older agents have no role: all workers).
    #[serde(default, skip_serializing_if = "Role::is_worker")]
    pub role: Role,
    pub pid: u32,
    /// The node it runs on, for a rank of another node (its pid is that node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
    pub reasons: Vec<Reason>,
    /// 0..1; independent reasons combine as `1 − Π(1 − wᵢ)`.
    pub confidence: f64,
}

impl Suspect {
    pub fn reason_codes(&self) -> Vec<&'static str> {
        self.reasons.iter().map(|r| r.code.as_str()).collect()
    }

    /// Who it is, as a person reads it: "rank 1", "rank 0 (engine core)", "engine core",
    /// "API server".
    pub fn who(&self) -> String {
        match (self.rank, self.role) {
            (Some(r), Role::Worker) if self.node.is_some() => {
                format!("rank {r} (node {})", self.node.unwrap_or(0))
            }
            (Some(r), Role::Worker) => format!("rank {r}"),
            (Some(r), role) => format!("rank {r} ({})", role.words()),
            (None, role) => role.words().to_string(),
        }
    }

    /// The same process as `other` (by rank where it has one, else by role and pid).
    pub fn same(&self, other: &Suspect) -> bool {
        self.role == other.role
            && self.rank == other.rank
            && (self.rank.is_some() || self.pid == other.pid)
    }

    /// The rank it is, when it is a worker's (or a uni engine core's) rank.
    pub fn is_rank(&self, rank: u32) -> bool {
        self.rank == Some(rank)
    }
}

/// The judge's word on one engine at one tick.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Verdict {
    pub engine: String,
    pub at_ms: Millis,
    pub state: EngineState,
    /// Ranks named as the cause, strongest first; empty when the culprit is unknown.
    pub suspects: Vec<Suspect>,
    /// Engine-wide evidence of a stall that names no rank.
    pub engine_reasons: Vec<Reason>,
    /// When the stall began (earliest evidence).
    pub onset_ms: Option<Millis>,
    /// The stall has lasted past the confirm threshold (or is beyond doubt).
    pub confirmed: bool,
    /// Seconds until vLLM's own execute timeout kills the engine.
    pub deadline_left_seconds: Option<f64>,
    /// Per rank, how long it has been behind (0 when it is not).
    pub rank_lag_seconds: Vec<(u32, f64)>,
    /// Thresholds in force for this engine (they adapt to its history).
    pub suspect_after_seconds: f64,
    pub confirm_after_seconds: f64,
    /// How long the current step has gone without progress (none while idle or
    /// starting, or while steps complete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_age_seconds: Option<f64>,
    /// The step is late and every rank is at work: a long step, not a stall (still set
    /// once it passed the long-step ceiling and the engine is `stalled`, a warning).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub long_step: bool,
    /// Why the engine is busy rather than stalled, in one line (long steps only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_because: Option<String>,
    /// What each rank is doing (while a step is late).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_activity: Vec<crate::position::RankActivity>,
    /// The replica of its lockstep deployment this engine waits for (that one's
    /// incident names the culprit; this one opens none of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waits_for: Option<String>,
    /// The incident another node's agent opened for this stall: this node's incident
    /// takes its id, so the deployment's bundles share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joins: Option<String>,
}

impl Verdict {
    /// `warning` for a long step that reached the ceiling (every rank still at work),
    /// `critical` for a stall.
    /// A verdict that says only the state: no suspect, no evidence.
    pub fn bare(engine: &str, at_ms: Millis, state: EngineState) -> Verdict {
        Verdict {
            engine: engine.to_string(),
            at_ms,
            state,
            suspects: Vec::new(),
            engine_reasons: Vec::new(),
            onset_ms: None,
            confirmed: false,
            deadline_left_seconds: None,
            rank_lag_seconds: Vec::new(),
            suspect_after_seconds: 0.0,
            confirm_after_seconds: 0.0,
            step_age_seconds: None,
            long_step: false,
            busy_because: None,
            rank_activity: Vec::new(),
            waits_for: None,
            joins: None,
        }
    }

    pub fn severity(&self) -> &'static str {
        severity_of(&self.suspects, &self.engine_reasons)
    }

    pub fn culprit_unknown(&self) -> bool {
        self.state == EngineState::Stalled && self.suspects.is_empty()
    }

    /// One line a person reads in a log.
    pub fn headline(&self) -> String {
        let mut s = format!("engine {} {}", self.engine, self.state.as_str());
        if matches!(self.state, EngineState::Stalled | EngineState::Dead) {
            let remote = self
                .engine_reasons
                .iter()
                .find(|r| r.code == ReasonCode::RemoteWait);
            let orphaned = self
                .engine_reasons
                .iter()
                .find(|r| r.code == ReasonCode::Orphaned);
            if let (true, Some(r)) = (self.suspects.is_empty(), orphaned) {
                s.push_str(": ");
                s.push_str(&r.detail);
            } else if let (true, Some(r)) = (self.suspects.is_empty(), remote) {
                s.push_str(": culprit on another node: ");
                s.push_str(&r.detail);
            } else if self.suspects.is_empty() {
                if !self.engine_reasons.is_empty() || self.state == EngineState::Stalled {
                    s.push_str(": culprit unknown");
                }
            } else {
                let names: Vec<String> = self
                    .suspects
                    .iter()
                    .map(|x| {
                        format!(
                            "{} (pid {}, {}, confidence {:.2})",
                            x.who(),
                            x.pid,
                            x.reason_codes().join("+"),
                            x.confidence
                        )
                    })
                    .collect();
                s.push_str(": suspect ");
                s.push_str(&names.join(", "));
            }
            if let Some(r) = self.engine_reasons.first().filter(|_| orphaned.is_none()) {
                s.push_str("; ");
                s.push_str(&r.detail);
            }
            if let Some(d) = self.deadline_left_seconds {
                s.push_str(&format!("; {d:.0} s left before vLLM's execute timeout"));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row sits at its code's place, names are unique and match the serialized
    /// name.
    #[test]
    fn the_reason_table_is_in_order_and_names_match() {
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in REASONS.iter().enumerate() {
            assert_eq!(r.code as usize, i, "{r:?}");
            assert!(names.insert(r.name), "{} twice", r.name);
            let json = serde_json::to_string(&r.code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", r.name));
            assert!(!(r.no_progress && r.names_rank), "{r:?}");
        }
    }
}
