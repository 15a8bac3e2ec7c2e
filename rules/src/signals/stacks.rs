//! Stack evidence: among the ranks' Python stacks of the current late step, the odd one
//! out (the others wait in a collective, it does not), and whether its stack moved.
//! Seen in two rounds at least `PERSIST_MS` apart, the odd one out is conclusive: a
//! rank the others have waited for that long, in the same place, is the culprit; a
//! load imbalance of a second is gone by the second round.

use super::Findings;
use crate::stacks::{odd_one_out, unchanged, StackDump};
use crate::time::{secs, Millis};
use crate::verdict::ReasonCode;
use std::collections::BTreeMap;

/// Two rounds this far apart that show the same odd one out make it conclusive.
pub const PERSIST_MS: Millis = 1_500;

/// Latest and earlier whole dumps per rank of the current late step (from
/// `ActivitySignal::dumps`).
pub type Dumps = BTreeMap<u32, Vec<StackDump>>;

fn nth_from_end(dumps: &Dumps, back: usize) -> BTreeMap<u32, StackDump> {
    dumps
        .iter()
        .filter_map(|(r, v)| {
            let i = v.len().checked_sub(1 + back)?;
            Some((*r, v.get(i)?.clone()))
        })
        .collect()
}

/// Adds `stack_odd_one_out` for the rank the latest round names; conclusive when the
/// round before named it too, long enough ago.
pub fn reasons(dumps: &Dumps, now: Millis, f: &mut Findings) {
    let latest = nth_from_end(dumps, 0);
    let Some(found) = odd_one_out(&latest) else {
        return;
    };
    let first = dumps.get(&found.rank).and_then(|v| v.first());
    let last = latest.get(&found.rank);
    let since = first.map_or(now, |d| d.taken_at_ms);
    let mut detail = found.detail.clone();
    if let (Some(a), Some(b)) = (first, last) {
        if a.taken_at_ms < b.taken_at_ms && unchanged(a, b) {
            detail.push_str(&format!(
                "; its stack unchanged for {:.0} s",
                secs(b.taken_at_ms - a.taken_at_ms)
            ));
        }
    }
    let previous = nth_from_end(dumps, 1);
    let persisted = odd_one_out(&previous).is_some_and(|p| p.rank == found.rank)
        && match (previous.get(&found.rank), last) {
            (Some(a), Some(b)) => b.taken_at_ms - a.taken_at_ms >= PERSIST_MS,
            _ => false,
        };
    f.rank(found.rank, ReasonCode::StackOddOneOut, detail, since);
    if persisted {
        f.conclude(found.rank);
    }
}

/// Every rank's latest and previous stacks wait in a collective, the rounds far
/// enough apart: a collective wedge seen in the stacks.
pub fn all_in_collective_persisted(dumps: &Dumps) -> bool {
    let rounds = [nth_from_end(dumps, 0), nth_from_end(dumps, 1)];
    let all_coll = |round: &BTreeMap<u32, StackDump>| {
        round.len() == dumps.len()
            && round.len() >= 2
            && round.values().all(|d| {
                d.main_thread().is_some_and(|t| {
                    crate::position::position(t) == crate::position::Position::Collective
                })
            })
    };
    let span = dumps.values().all(|v| {
        v.len() >= 2
            && v.last().map_or(0, |d| d.taken_at_ms)
                - v.get(v.len() - 2).map_or(0, |d| d.taken_at_ms)
                >= PERSIST_MS
    });
    rounds.iter().all(all_coll) && span
}
