//! Process evidence: a rank that is stopped, exited or in uninterruptible sleep cannot
//! make progress, whatever else is true. Never adapts: a stopped process is no long step,
//! and past the suspect threshold, while the engine waits, it is conclusive.

use super::Findings;
use crate::facts::{EngineFacts, ProcState, RankFacts};
use crate::thresholds::Effective;
use crate::time::{secs, Millis};
use crate::verdict::ReasonCode;
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct ProcessSignal {
    /// Ranks ever seen, with their pids: a rank missing later has exited.
    known_ranks: BTreeMap<u32, u32>,
    /// rank → (state, since) for stopped, zombie or gone processes.
    halted: BTreeMap<u32, (ProcState, Millis)>,
    /// rank → since, for uninterruptible sleep.
    disk_sleep: BTreeMap<u32, Millis>,
}

impl ProcessSignal {
    /// The ranks of this look, plus the ranks seen before that are missing now (as
    /// `Gone`, with their last facts).
    pub fn observe(
        &mut self,
        engine: &EngineFacts,
        last: Option<&EngineFacts>,
        now: Millis,
    ) -> Vec<RankFacts> {
        let mut ranks: Vec<RankFacts> = engine.ranks.clone();
        for r in &ranks {
            self.known_ranks.insert(r.rank, r.process.pid);
        }
        for (&rank, &pid) in &self.known_ranks {
            if !ranks.iter().any(|r| r.rank == rank) {
                if let Some(prev) = last.and_then(|l| l.rank(rank)) {
                    let mut gone = prev.clone();
                    gone.process.state = ProcState::Gone;
                    gone.process.pid = pid;
                    ranks.push(gone);
                }
            }
        }
        for r in &ranks {
            let st = r.process.state;
            if st.is_halted() {
                let e = self.halted.entry(r.rank).or_insert((st, now));
                if e.0 != st {
                    *e = (st, now);
                }
            } else {
                self.halted.remove(&r.rank);
            }
            if st == ProcState::DiskSleep {
                self.disk_sleep.entry(r.rank).or_insert(now);
            } else {
                self.disk_sleep.remove(&r.rank);
            }
        }
        ranks
    }

    /// An exited rank is named at once; a stopped or blocked one after the (never
    /// adapted) suspect threshold, and not while the engine is idle (nothing waits).
    pub fn reasons(
        &self,
        ranks: &[RankFacts],
        base: Effective,
        core_idle: Option<bool>,
        now: Millis,
        f: &mut Findings,
    ) {
        for (&rank, &(st, since)) in &self.halted {
            let age = now - since;
            f.lag(rank, age);
            if matches!(st, ProcState::Zombie | ProcState::Dead | ProcState::Gone) {
                let detail = match st {
                    ProcState::Zombie => "process exited (zombie, not yet reaped)",
                    _ => "process exited",
                };
                f.rank(rank, ReasonCode::ProcessExited, detail.to_string(), since);
            } else if age >= base.suspect_ms && core_idle != Some(true) {
                let by = if st == ProcState::TracingStop {
                    "by a tracer"
                } else {
                    "SIGSTOP"
                };
                let detail = format!("process stopped ({by}) for {:.0} s", secs(age));
                f.rank(rank, ReasonCode::ProcessStopped, detail, since);
                f.conclude(rank);
            }
        }
        for (&rank, &since) in &self.disk_sleep {
            let age = now - since;
            if age >= base.suspect_ms && core_idle != Some(true) {
                let wchan = ranks
                    .iter()
                    .find(|r| r.rank == rank)
                    .and_then(|r| r.process.wchan.clone())
                    .unwrap_or_else(|| "?".into());
                let detail = format!("in uninterruptible sleep ({wchan}) for {:.0} s", secs(age));
                f.rank(rank, ReasonCode::UninterruptibleSleep, detail, since);
                f.conclude(rank);
            }
        }
    }
}

impl super::Signal for ProcessSignal {
    fn observe(&mut self, b: &mut super::Board<'_>) {
        b.ranks = ProcessSignal::observe(self, b.engine, b.last, b.now);
    }

    fn reasons(&self, s: &super::Seen<'_>, f: &mut Findings) {
        ProcessSignal::reasons(self, &s.ranks, s.base, s.look.core_idle, s.now, f);
    }
}
