//! Stack evidence: among the ranks' Python stacks of the current stall, the odd one out
//! (the others wait in a collective, it does not), and whether its stack moved between
//! the first and the latest round.

use super::Findings;
use crate::facts::EngineFacts;
use crate::stacks::{odd_one_out, unchanged, StackDump};
use crate::time::{secs, Millis};
use crate::verdict::ReasonCode;
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct StackSignal {
    /// Stacks of the current stall by rank: the first and the latest dump.
    first: BTreeMap<u32, StackDump>,
    latest: BTreeMap<u32, StackDump>,
}

impl StackSignal {
    pub fn observe(&mut self, engine: &EngineFacts) {
        for d in engine.stacks.iter().filter(|d| d.error.is_none()) {
            if let Some(rank) = d.rank {
                self.first.entry(rank).or_insert_with(|| d.clone());
                self.latest.insert(rank, d.clone());
            }
        }
    }

    /// The stall is over: the next one starts with fresh rounds.
    pub fn clear(&mut self) {
        self.first.clear();
        self.latest.clear();
    }

    pub fn reasons(&self, now: Millis, f: &mut Findings) {
        let Some(found) = odd_one_out(&self.latest) else {
            return;
        };
        let since = self.latest.get(&found.rank).map_or(now, |d| d.taken_at_ms);
        let mut detail = found.detail.clone();
        if let (Some(a), Some(b)) = (self.first.get(&found.rank), self.latest.get(&found.rank)) {
            if a.taken_at_ms < b.taken_at_ms && unchanged(a, b) {
                detail.push_str(&format!(
                    "; its stack unchanged for {:.0} s",
                    secs(b.taken_at_ms - a.taken_at_ms)
                ));
            }
        }
        f.rank(found.rank, ReasonCode::StackOddOneOut, detail, since);
    }
}
