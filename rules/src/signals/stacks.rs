//! Stack evidence: among the ranks' Python stacks of the current late step, the odd one
//! out (the others wait in a collective, it does not), and whether its stack moved.
//! Seen in two rounds at least `PERSIST_MS` apart, the odd one out is conclusive: a
//! rank the others have waited for that long, in the same place, is the culprit; a
//! load imbalance of a second is gone by the second round.

use super::Findings;
use crate::position::{position, Position};
use crate::stacks::{odd_one_out, unchanged, StackDump};
use crate::time::{secs, Millis};
use crate::verdict::ReasonCode;
use std::collections::BTreeMap;

/// Two rounds this far apart that show the same odd one out make it conclusive.
pub const PERSIST_MS: Millis = 1_500;

/// Latest and earlier whole dumps per rank of the current late step (from
/// `ActivitySignal::dumps`).
pub type Dumps = BTreeMap<u32, Vec<StackDump>>;

/// Every rank's latest dump.
fn latest(dumps: &Dumps) -> BTreeMap<u32, StackDump> {
    dumps
        .iter()
        .filter_map(|(r, v)| Some((*r, v.last()?.clone())))
        .collect()
}

/// Every rank's newest dump taken at least `PERSIST_MS` before its latest one: two
/// rounds asked for in the same tick are one look, not two.
fn earlier(dumps: &Dumps) -> BTreeMap<u32, StackDump> {
    dumps
        .iter()
        .filter_map(|(r, v)| {
            let last = v.last()?.taken_at_ms;
            let d = v
                .iter()
                .rev()
                .find(|d| last - d.taken_at_ms >= PERSIST_MS)?;
            Some((*r, d.clone()))
        })
        .collect()
}

/// Adds `stack_odd_one_out` for the rank the latest round names; conclusive when the
/// round before named it too, long enough ago. Ranks in `halted` (stopped, exited, in
/// `D` state) are left out: a stopped rank's stack is where it stopped, not a wait, and
/// the rank that got through the collective it stopped in must not look odd.
pub fn reasons(dumps: &Dumps, halted: &[u32], now: Millis, f: &mut Findings) {
    let dumps: Dumps = dumps
        .iter()
        .filter(|(r, _)| !halted.contains(r))
        .map(|(r, v)| (*r, v.clone()))
        .collect();
    let dumps = &dumps;
    let latest = latest(dumps);
    let Some(found) = odd_one_out(&latest) else {
        return;
    };
    let first = dumps.get(&found.rank).and_then(|v| v.first());
    let last = latest.get(&found.rank);
    // Since when the others have waited for it, not since its first dump of the step:
    // a rank a second behind at the end of a long step is not a stall as old as the step.
    let since = waiting_since(dumps, found.rank).unwrap_or(now);
    let mut detail = found.detail.clone();
    if let (Some(a), Some(b)) = (first, last) {
        if a.taken_at_ms < b.taken_at_ms && unchanged(a, b) {
            detail.push_str(&format!(
                "; its stack unchanged for {:.0} s",
                secs(b.taken_at_ms - a.taken_at_ms)
            ));
        }
    }
    let previous = earlier(dumps);
    let persisted = (previous.len() == latest.len()
        && odd_one_out(&previous).is_some_and(|p| p.rank == found.rank))
        || others_waited(dumps, found.rank);
    f.rank(found.rank, ReasonCode::StackOddOneOut, detail, since);
    if persisted {
        f.conclude(found.rank);
    }
}

/// The dump's main thread waits in a collective.
fn in_collective(d: &StackDump) -> bool {
    d.main_thread()
        .is_some_and(|t| matches!(position(t), Position::Collective | Position::PipelineWait))
}

/// When the others began to wait: per other rank, the oldest of its latest dumps that
/// are all in a collective; the latest of those over the others.
fn waiting_since(dumps: &Dumps, odd: u32) -> Option<Millis> {
    dumps
        .iter()
        .filter(|(r, _)| **r != odd)
        .map(|(_, v)| {
            v.iter()
                .rev()
                .take_while(|d| in_collective(d))
                .last()
                .map(|d| d.taken_at_ms)
        })
        .collect::<Option<Vec<Millis>>>()?
        .into_iter()
        .max()
}

/// Every rank but `odd` has waited in the same collective, unchanged, for at least
/// `PERSIST_MS`. A rank that spins in Python often cannot be dumped whole (its stack
/// changes under the reader), so two whole rounds of it may never come; the others'
/// unchanged wait says the same.
fn others_waited(dumps: &Dumps, odd: u32) -> bool {
    let mut others = dumps.iter().filter(|(r, _)| **r != odd).peekable();
    others.peek().is_some()
        && others.all(|(_, v)| {
            let Some(last) = v.last() else { return false };
            in_collective(last)
                && v.iter().any(|d| {
                    last.taken_at_ms - d.taken_at_ms >= PERSIST_MS
                        && in_collective(d)
                        && unchanged(d, last)
                })
        })
}

/// Every rank's latest and previous stacks wait in a collective, the rounds far
/// enough apart: a collective wedge seen in the stacks.
pub fn all_in_collective_persisted(dumps: &Dumps) -> bool {
    let all_coll = |round: &BTreeMap<u32, StackDump>| {
        round.len() == dumps.len() && round.len() >= 2 && round.values().all(in_collective)
    };
    all_coll(&latest(dumps)) && all_coll(&earlier(dumps))
}
