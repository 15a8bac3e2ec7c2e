//! The decide phase of the judge: the engine's state from the weighed findings, who is
//! suspected and how strongly, and when a stall is confirmed.

use crate::facts::{EngineFacts, Millis, RankFacts, Role};
use crate::signals::Findings;
use crate::thresholds::Effective;
use crate::verdict::{EngineState, Reason, ReasonCode, Suspect, Verdict};
use std::collections::BTreeMap;

/// Everything `decide` needs besides the findings.
pub(crate) struct Decision<'a> {
    pub engine: &'a EngineFacts,
    pub ranks: &'a [RankFacts],
    pub starting: bool,
    pub idle: bool,
    pub engine_dead: bool,
    pub rpc_timed_out: bool,
    pub eff: Effective,
    pub base: Effective,
    pub now: Millis,
}

/// The state machine: dead (vLLM said so), starting (not judged), stalled (evidence),
/// idle, or busy; and when a stall is confirmed.
pub(crate) fn decide(d: Decision<'_>, f: Findings) -> Verdict {
    let now = d.now;
    let conclusive = f.engine_conclusive
        || f.by_rank.keys().any(|r| f.conclusive.contains(r))
        || f.others.keys().any(|w| f.others_conclusive.contains(w));
    let (joins, engine_reasons) = (f.joins, f.engine);
    let suspects = suspects_of(f.by_rank, f.others, &f.remote, d.engine, d.ranks);
    let stalled =
        (!d.starting || d.rpc_timed_out) && (!suspects.is_empty() || !engine_reasons.is_empty());
    let state = if d.engine_dead {
        EngineState::Dead
    } else if d.starting {
        EngineState::Starting
    } else if stalled {
        EngineState::Stalled
    } else if d.idle {
        EngineState::Idle
    } else {
        EngineState::Busy
    };
    // Lags carry no meaning while starting: stay silent on them.
    let quiet = d.starting && state != EngineState::Stalled;
    let mut rank_lag_seconds: Vec<(u32, f64)> = d
        .ranks
        .iter()
        .map(|r| {
            let lag = f.lag_of.get(&r.rank).copied().filter(|_| !quiet);
            (r.rank, crate::time::secs(lag.unwrap_or(0)))
        })
        .collect();
    rank_lag_seconds.sort_by_key(|(r, _)| *r);
    let all_reasons = || {
        suspects
            .iter()
            .flat_map(|s| s.reasons.iter())
            .chain(engine_reasons.iter())
    };
    let onset_ms = stalled
        .then(|| all_reasons().map(|r| r.since_ms).min())
        .flatten();
    let exited = d.rpc_timed_out || all_reasons().any(|r| r.code.info().exited);
    let confirm_after = |code: ReasonCode| {
        if code.info().base_thresholds {
            d.base.confirm_ms
        } else {
            d.eff.confirm_ms
        }
    };
    let confirmed = stalled
        && (exited
            || conclusive
            || all_reasons().any(|r| now - r.since_ms >= confirm_after(r.code)));
    let deadline_left_seconds =
        onset_ms.map(|o| (d.engine.execute_timeout_seconds - crate::time::secs(now - o)).max(0.0));
    // Only a stalled verdict carries names, and only while stalled.
    let (suspects, engine_reasons) = if stalled {
        (suspects, engine_reasons)
    } else {
        (Vec::new(), Vec::new())
    };
    Verdict {
        engine: d.engine.id.clone(),
        at_ms: now,
        state,
        suspects,
        engine_reasons,
        onset_ms,
        confirmed,
        deadline_left_seconds,
        rank_lag_seconds,
        suspect_after_seconds: crate::time::secs(d.eff.suspect_ms),
        confirm_after_seconds: crate::time::secs(d.eff.confirm_ms),
        step_age_seconds: None,
        long_step: false,
        busy_because: None,
        rank_activity: Vec::new(),
        waits_for: None,
        joins: joins.filter(|_| stalled),
    }
}

/// Ranks and other processes with reasons, strongest first; independent reasons
/// combine as `1 − Π(1 − wᵢ)`.
fn suspects_of(
    by_rank: BTreeMap<u32, Vec<Reason>>,
    others: BTreeMap<(Role, u32), Vec<Reason>>,
    remote: &BTreeMap<u32, (u32, u32)>,
    engine: &EngineFacts,
    ranks: &[RankFacts],
) -> Vec<Suspect> {
    let suspect = |rank: Option<u32>, role: Role, pid: u32, reasons: Vec<Reason>| {
        let miss: f64 = reasons.iter().map(|r| 1.0 - r.code.weight()).product();
        Suspect {
            rank,
            role,
            pid,
            node: rank.and_then(|r| remote.get(&r)).map(|(_, n)| *n),
            reasons,
            confidence: ((1.0 - miss) * 100.0).round() / 100.0,
        }
    };
    let mut suspects: Vec<Suspect> = by_rank
        .into_iter()
        .map(|(rank, reasons)| {
            let pid = ranks
                .iter()
                .find(|r| r.rank == rank)
                .map(|r| r.process.pid)
                .or(remote.get(&rank).map(|(pid, _)| *pid))
                .unwrap_or(0);
            let role = if pid != 0 && pid == engine.core.pid {
                Role::EngineCore
            } else {
                Role::Worker
            };
            suspect(Some(rank), role, pid, reasons)
        })
        .chain(
            others
                .into_iter()
                .map(|((role, pid), reasons)| suspect(None, role, pid, reasons)),
        )
        .collect();
    suspects.sort_by(|a, b| {
        b.confidence
            .partial_cmp(&a.confidence)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.rank.cmp(&b.rank))
            .then(a.role.cmp(&b.role))
    });
    suspects
}
