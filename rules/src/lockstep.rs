//! Replicas in lockstep: with expert parallelism every step of every data-parallel
//! replica is a collective across all of them, so one stuck replica stalls the others,
//! which then show nothing but "nothing moves" of their own. They are told to wait for
//! the replica whose stall is named, and open no incident of their own: one incident
//! per deployment, with the right culprit (`docs/vllm.md`, "Data-parallel replicas").
//! Likewise a long step in one replica holds the others: while it is at work they are
//! busy waiting for it, not stalled.

use crate::facts::EngineFacts;
use crate::verdict::{EngineState, Reason, ReasonCode, Verdict};
use std::collections::BTreeMap;

/// Marks every stalled replica that names no one as waiting for a stalled replica of the
/// same lockstep deployment that does.
pub fn correlate(engines: &[EngineFacts], verdicts: &mut [Verdict]) {
    let mut groups: BTreeMap<&str, Vec<&EngineFacts>> = BTreeMap::new();
    for e in engines.iter().filter(|e| e.lockstep) {
        if let Some(d) = &e.deployment {
            groups.entry(d.as_str()).or_default().push(e);
        }
    }
    for replicas in groups.values().filter(|r| r.len() > 1) {
        held_by_a_long_step(replicas, verdicts);
        let named = replicas.iter().find_map(|e| {
            let v = verdicts.iter().find(|v| v.engine == e.id)?;
            let culprit = v.suspects.first()?;
            (v.state == EngineState::Stalled).then(|| (*e, culprit.who(), v.onset_ms))
        });
        let Some((culprit, who, onset)) = named else {
            continue;
        };
        for v in verdicts.iter_mut().filter(|v| {
            v.engine != culprit.id
                && v.state == EngineState::Stalled
                && v.suspects.is_empty()
                && replicas.iter().any(|e| e.id == v.engine)
        }) {
            let detail = format!(
                "waits for replica {} ({}), whose {who} is stuck: its replicas step in lockstep",
                culprit.dp_rank, culprit.id
            );
            let since = onset.or(v.onset_ms).unwrap_or(v.at_ms);
            v.engine_reasons.insert(
                0,
                Reason {
                    code: ReasonCode::ReplicaWait,
                    detail,
                    since_ms: since,
                },
            );
            v.waits_for = Some(culprit.id.clone());
        }
    }
}

/// While a replica is in a long step (every rank of it at work), the replicas that only
/// show "nothing moves" wait for it in the lockstep collective: busy, not stalled.
fn held_by_a_long_step(replicas: &[&EngineFacts], verdicts: &mut [Verdict]) {
    let working = replicas.iter().find_map(|e| {
        let v = verdicts.iter().find(|v| v.engine == e.id)?;
        (v.state == EngineState::Busy && v.long_step).then_some(*e)
    });
    let Some(working) = working else { return };
    for v in verdicts.iter_mut().filter(|v| {
        v.engine != working.id
            && v.state == EngineState::Stalled
            && v.suspects.is_empty()
            && v.engine_reasons.iter().all(|r| r.code.info().no_progress)
            && replicas.iter().any(|e| e.id == v.engine)
    }) {
        v.state = EngineState::Busy;
        v.busy_because = Some(format!(
            "waits for replica {} ({}), which is at work in a long step: its replicas step in lockstep",
            working.dp_rank, working.id
        ));
        v.engine_reasons.clear();
        v.confirmed = false;
        v.onset_ms = None;
        v.deadline_left_seconds = None;
    }
}
