//! The signals: one module per kind of evidence, each with its own memory of the
//! engine, an `observe` step that takes this tick's facts, and the reasons it
//! contributes. Signals never decide the engine's state; the judge combines them.
//!
//! | module | evidence | names a rank |
//! |---|---|---|
//! | `rings` | chunks one reader has not finished; RPCs no reader took | yes / no |
//! | `process` | stopped, exited, uninterruptible processes | yes |
//! | `logs` | what vLLM logged: worker died, zero throughput, ring wait, RPC timeout | worker died only |
//! | `metrics` | vLLM's own `/metrics`: requests running, counters flat | no |
//! | `progress` | anything moved; idle; the engine core waits with nothing moving | no |
//! | `stacks` | the odd one out among the ranks' Python stacks | yes |
//! | `gpu` | a rank's GPU idle while the others spin; every GPU spinning | yes / no |
//! | `ras` | NCCL RAS: a rank behind in launched collectives; a desync | yes / no |
//! | `roles` | the engine core and API server stopped, exited, blocked; the core stuck on one frame | the process |
//! | `front` | the API server's event loop on one frame, no CPU, its `/metrics` unanswered | the API server |
//! | `orphan` | a follower node's part without any connection to its deployment | no |
//!
//! Across nodes, `rules/src/remote.rs` adds what the leader knows of its remote ranks
//! (`remote_wait`, `peer_named`) after the step is weighed.
//!
//! `activity` says what each rank is doing while a step is late (at work, waiting in a
//! collective, stopped, blocked): every rank at work is a long step, not a stall.
//! `adapt` remembers the lags an engine recovered from by itself, which raise its
//! thresholds (a long step is not a hang).

pub mod activity;
pub mod adapt;
pub mod front;
pub mod gpu;
pub mod logs;
pub mod metrics;
pub mod orphan;
pub mod process;
pub mod progress;
pub mod ras;
pub mod rings;
pub mod roles;
pub mod stacks;

use crate::facts::{EngineFacts, RankFacts, Role};
use crate::thresholds::{Effective, Thresholds};
use crate::time::Millis;
use crate::verdict::{Reason, ReasonCode};
use adapt::Adaptation;
use progress::ProgressLook;
use rings::RingLook;
use std::collections::{BTreeMap, BTreeSet};

/// The one shape of every signal: it updates its memory from the tick's facts, then
/// says what it sees. The judge calls every registered signal (`judge.rs`,
/// `Signals::all`) in the observe phase, then in the reasons phase.
pub trait Signal {
    /// Updates the signal's memory; reads what the signals before it put on the board
    /// and may add its own look for the ones after it.
    fn observe(&mut self, b: &mut Board<'_>);
    /// Adds what the signal sees to the findings (nothing, for a signal the weigh phase
    /// reads directly).
    fn reasons(&self, _seen: &Seen<'_>, _f: &mut Findings) {}
}

/// The observe phase's board: this tick's facts, the thresholds, and what the signals
/// that already ran found (in `Signals::all`'s order).
pub struct Board<'a> {
    pub engine: &'a EngineFacts,
    /// The engine's facts at the previous tick, and when.
    pub last: Option<&'a EngineFacts>,
    pub last_at_ms: Millis,
    pub now: Millis,
    pub thresholds: &'a Thresholds,
    /// What the engine's long steps taught; a lag that ends this tick is judged against
    /// `confirm_before`, the threshold it ran under.
    pub adapt: &'a mut Adaptation,
    pub confirm_before: Millis,
    /// The ranks as the process signal saw them (a rank gone since: `Gone`).
    pub ranks: Vec<RankFacts>,
    /// The rings' lags, from the ring signal.
    pub rings: RingLook,
    /// Whether vLLM's own counters moved, from the metrics signal.
    pub metrics_moved: bool,
    /// The engine as a whole, from the progress signal.
    pub look: ProgressLook,
}

/// What the reasons phase reads: the board's looks and the thresholds in force.
pub struct Seen<'a> {
    pub engine: &'a EngineFacts,
    pub now: Millis,
    pub ranks: Vec<RankFacts>,
    pub rings: RingLook,
    pub look: ProgressLook,
    pub eff: Effective,
    /// A stopped or blocked process is no long step: its evidence never adapts.
    pub base: Effective,
}

/// Engine-wide evidence that says only "nothing moves".
fn is_no_progress(code: ReasonCode) -> bool {
    code.info().no_progress
}

/// What the signals found this tick: reasons per rank, reasons for the whole engine, and
/// how long each rank has been behind.
#[derive(Debug, Default)]
pub struct Findings {
    pub by_rank: BTreeMap<u32, Vec<Reason>>,
    pub engine: Vec<Reason>,
    pub lag_of: BTreeMap<u32, Millis>,
    /// Ranks whose evidence is conclusive (stopped, exited, the odd one out in two
    /// rounds…): their stall is confirmed at once, never after a timer.
    pub conclusive: BTreeSet<u32>,
    /// The engine-wide evidence is conclusive (the long-step ceiling was reached).
    pub engine_conclusive: bool,
    /// Reasons against a process that is no rank (the engine core of an `mp` engine,
    /// the API server), by role and pid; all of them conclusive when in `others_conclusive`.
    pub others: BTreeMap<(Role, u32), Vec<Reason>>,
    pub others_conclusive: BTreeSet<(Role, u32)>,
    /// Ranks of other nodes named by their agents: rank → (pid there, node).
    pub remote: BTreeMap<u32, (u32, u32)>,
    /// The incident another node's agent opened for this stall.
    pub joins: Option<String>,
}

impl Findings {
    pub fn rank(&mut self, rank: u32, code: ReasonCode, detail: String, since_ms: Millis) {
        self.by_rank.entry(rank).or_default().push(Reason {
            code,
            detail,
            since_ms,
        });
    }

    pub fn engine(&mut self, code: ReasonCode, detail: String, since_ms: Millis) {
        self.engine.push(Reason {
            code,
            detail,
            since_ms,
        });
    }

    /// Evidence against a process that is no rank; `conclusive`: it needs no timer.
    pub fn process(
        &mut self,
        who: (Role, u32),
        code: ReasonCode,
        detail: String,
        since_ms: Millis,
        conclusive: bool,
    ) {
        self.others.entry(who).or_default().push(Reason {
            code,
            detail,
            since_ms,
        });
        if conclusive {
            self.others_conclusive.insert(who);
        }
    }

    /// The evidence against `rank` needs no timer.
    pub fn conclude(&mut self, rank: u32) {
        self.conclusive.insert(rank);
    }

    pub fn has(&self, rank: u32, code: ReasonCode) -> bool {
        self.by_rank
            .get(&rank)
            .is_some_and(|v| v.iter().any(|r| r.code == code))
    }

    /// Takes another finding's reasons and conclusions (evidence gathered every tick but
    /// added only when it matters).
    pub fn merge(&mut self, other: Findings) {
        for (rank, reasons) in other.by_rank {
            self.by_rank.entry(rank).or_default().extend(reasons);
        }
        self.engine.extend(other.engine);
        self.conclusive.extend(other.conclusive);
        for (who, reasons) in other.others {
            self.others.entry(who).or_default().extend(reasons);
        }
        self.others_conclusive.extend(other.others_conclusive);
        self.engine_conclusive |= other.engine_conclusive;
    }

    /// The tick's findings made final: what vLLM's own shutdown explains left out
    /// (`shutting_down`), then sorted.
    pub fn finish(&mut self, shutting_down: bool) {
        if shutting_down {
            self.shutting_down();
        }
        self.sort();
    }

    /// vLLM is stopping its workers on purpose (a service stop, the end of a run, or the
    /// aftermath of its own timeout): ranks that exit and silence that follows are that,
    /// not a hang. Only a worker vLLM said died unexpectedly still counts (a crash that
    /// set the shutdown off); an incident already open ends with the engine as before.
    pub fn shutting_down(&mut self) {
        for reasons in self.by_rank.values_mut() {
            reasons.retain(|r| r.code == ReasonCode::WorkerDied);
        }
        self.by_rank.retain(|_, v| !v.is_empty());
        let named: BTreeSet<u32> = self.by_rank.keys().copied().collect();
        self.conclusive.retain(|r| named.contains(r));
        self.others.clear();
        self.others_conclusive.clear();
        self.engine.clear();
        self.engine_conclusive = false;
    }

    /// Drops the engine-wide "nothing moves" evidence: every rank is at work, so the
    /// silence is a long step, not a stall.
    pub fn drop_no_progress(&mut self) {
        self.engine.retain(|r| !is_no_progress(r.code));
    }

    /// The "nothing moves" evidence counts from `at` at the earliest: until then the
    /// silence was explained by work.
    pub fn progress_silence_since(&mut self, at: Millis) {
        for r in &mut self.engine {
            if is_no_progress(r.code) {
                r.since_ms = r.since_ms.max(at);
            }
        }
    }

    /// Records that `rank` has been behind for `age` (the longest of its lags counts).
    pub fn lag(&mut self, rank: u32, age: Millis) {
        let a = self.lag_of.entry(rank).or_insert(age);
        *a = (*a).max(age);
    }

    /// Anything at all: stacks, GPUs and RAS only ever add names to a stall that other
    /// evidence already shows.
    pub fn any(&self) -> bool {
        !self.by_rank.is_empty() || !self.engine.is_empty() || !self.others.is_empty()
    }

    /// Puts every list in the order a summary reads best (`ReasonCode`'s order: the most
    /// direct evidence first); signals may contribute in any order.
    pub fn sort(&mut self) {
        for reasons in self.by_rank.values_mut().chain(self.others.values_mut()) {
            reasons.sort_by_key(|r| r.code);
        }
        self.engine.sort_by_key(|r| r.code);
    }
}
