//! The weigh phase of the judge: how old the current step is, and what the ranks'
//! activity makes of the findings — a long step, a wedge, or the timer (`docs/design.md`,
//! "How the judge tells a stall from a long step").

use crate::signals::activity::{busy_line, picture, Picture, RankActivity};
use crate::signals::progress::{Progress, ProgressLook};
use crate::signals::{stacks, Findings};
use crate::time::Millis;
use crate::verdict::ReasonCode;

/// How long the current step has gone without progress: the engine core's wait with
/// nothing moving, or the longest lag of a rank or of the engine-wide evidence.
pub(crate) fn step_age(
    p: &Progress,
    look: ProgressLook,
    f: &Findings,
    now: Millis,
) -> Option<Millis> {
    if look.idle {
        return None;
    }
    let quiet = p.quiet_for(look, now);
    let lag = f.lag_of.values().copied().max().unwrap_or(0);
    let engine = f.engine.iter().map(|r| now - r.since_ms).max().unwrap_or(0);
    Some(quiet.max(lag).max(engine)).filter(|a| *a > 0)
}

/// The current step as `weigh` needs it.
#[derive(Clone, Copy)]
pub(crate) struct Step {
    /// How long it has gone without progress (none: it is not late at all).
    pub age: Option<Millis>,
    /// Late past the suspect threshold.
    pub late: bool,
    pub now: Millis,
    pub suspect_ms: Millis,
    pub long_step_limit_ms: Millis,
    /// The engine has pipeline stages: a stage waits for the one before it, or is done
    /// with its part, while another computes.
    pub pipeline: bool,
    /// The world spans nodes: local ranks all in a collective wait for one elsewhere,
    /// which `remote.rs` says; no wedge of their own.
    pub across_nodes: bool,
}

/// The combination of what the ranks do while a step is late. Conclusive evidence
/// against a rank stands whatever the others do; otherwise every rank at work is a long
/// step (the "nothing moves" evidence is dropped; past the ceiling it is flagged), and
/// every rank waiting in a collective is a wedge. Returns why the engine is busy.
pub(crate) fn weigh(
    step: Step,
    acts: &[RankActivity],
    dumps: &stacks::Dumps,
    explained_until: &mut Millis,
    f: &mut Findings,
) -> Option<String> {
    let Some(age) = step.age else {
        *explained_until = 0;
        return None;
    };
    let (late, now) = (step.late, step.now);
    // The rank that never took an RPC the others took, and whose stack says so too.
    let both: Vec<u32> = f
        .by_rank
        .keys()
        .copied()
        .filter(|r| f.has(*r, ReasonCode::RingUnread) && f.has(*r, ReasonCode::StackOddOneOut))
        .collect();
    for r in both {
        f.conclude(r);
    }
    if !late || !f.conclusive.is_empty() {
        return None;
    }
    let since = now - age;
    let picture = picture(acts, step.pipeline);
    if picture != Picture::AllActive && *explained_until > 0 {
        // Work explained this step until a moment ago: the silence counts from then,
        // and only past the suspect threshold (the last second of a long step, one rank
        // still at work while the others wait, is no stall as old as the step).
        if now - *explained_until < step.suspect_ms {
            f.drop_no_progress();
        } else {
            f.progress_silence_since(*explained_until);
        }
    }
    match picture {
        Picture::AllActive => {
            *explained_until = now;
            f.drop_no_progress();
            if age >= step.long_step_limit_ms {
                let detail = format!(
                    "a step has run for {:.0} s with every rank at work, past the long-step limit",
                    crate::time::secs(age)
                );
                f.engine(ReasonCode::LongStep, detail, since);
                f.engine_conclusive = true;
            }
            Some(busy_line(acts, crate::time::secs(age)))
        }
        Picture::AllInCollective | Picture::Mixed
            if !step.across_nodes
                && stacks::all_in_collective_persisted(dumps)
                && f.by_rank.is_empty()
                && !f
                    .engine
                    .iter()
                    .any(|r| r.code == ReasonCode::CollectiveWedge) =>
        {
            let detail = "collective wedge: every rank's stack waits in a collective, unchanged between rounds; the collectives disagree (desync) or the missing peer is on another node".to_string();
            f.engine(
                ReasonCode::CollectiveWedge,
                detail,
                since.max(*explained_until),
            );
            None
        }
        _ => None,
    }
}
