//! The judge: a small state machine per engine that turns a stream of snapshots into
//! verdicts. Each kind of evidence is a signal (`crate::signals`) with its own memory;
//! the judge feeds them the engine's facts, collects their findings, and decides the
//! state. Time comes only from the snapshots, so a recording judged again gives the
//! same verdicts as the live run did.

use crate::facts::{EngineFacts, Millis, ProcState, RankFacts, Snapshot};
use crate::gpu::{GpuClassifier, GpuVerdict};
use crate::logs::{LogEvent, LogEventKind};
use crate::signals::activity::{busy_line, picture, ActivitySignal, Picture, RankActivity};
use crate::signals::adapt::Adaptation;
use crate::signals::gpu::GpuMemory;
use crate::signals::gpu::{rank_gpus, RankGpus};
use crate::signals::logs::{rpc_timeout_detail, LogSignal};
use crate::signals::metrics::MetricsSignal;
use crate::signals::process::ProcessSignal;
use crate::signals::progress::ProgressLook;
use crate::signals::progress::{Moves, Progress};
use crate::signals::ras::RasSignal;
use crate::signals::rings::RingSignal;
use crate::signals::{gpu, stacks, Findings};
use crate::thresholds::{Effective, Thresholds};
use crate::verdict::{EngineState, Reason, ReasonCode, Suspect, Verdict};
use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Judge {
    thresholds: Thresholds,
    engines: BTreeMap<String, EngineMemory>,
    gpu: GpuClassifier,
    gpu_verdicts: BTreeMap<u32, GpuVerdict>,
}

/// What the judge remembers of one engine between snapshots: each signal's memory.
#[derive(Debug, Default)]
struct EngineMemory {
    core_pid: u32,
    last: Option<EngineFacts>,
    last_at_ms: Millis,
    adapt: Adaptation,
    process: ProcessSignal,
    rings: RingSignal,
    logs: LogSignal,
    metrics: MetricsSignal,
    progress: Progress,
    activity: ActivitySignal,
    gpu: GpuMemory,
    /// The last look at which every rank was at work in the current step (0: none).
    explained_until: Millis,
    ras: RasSignal,
    last_verdict: Option<Verdict>,
}

impl Judge {
    pub fn new(thresholds: Thresholds) -> Judge {
        Judge {
            thresholds,
            engines: BTreeMap::new(),
            gpu: GpuClassifier::default(),
            gpu_verdicts: BTreeMap::new(),
        }
    }

    /// Every GPU's class after the last snapshot (for metrics and bundles).
    pub fn gpu_verdicts(&self) -> &BTreeMap<u32, GpuVerdict> {
        &self.gpu_verdicts
    }

    /// A tick the agent could not see the node: every engine keeps the verdict it had
    /// (nothing is judged, no memory changes), so the agent's own failure ends no
    /// incident and opens none.
    fn held(&self, at_ms: Millis) -> Vec<Verdict> {
        self.engines
            .values()
            .filter_map(|m| m.last_verdict.clone())
            .map(|v| Verdict { at_ms, ..v })
            .collect()
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// One verdict per engine in the snapshot, plus a `dead` verdict for every engine
    /// that was there before and is gone now.
    pub fn observe(&mut self, snap: &Snapshot) -> Vec<Verdict> {
        if snap.blind {
            return self.held(snap.at_ms);
        }
        let mut out = Vec::new();
        self.gpu_verdicts = self.gpu.observe(&snap.gpus, snap.at_ms);
        for engine in &snap.engines {
            let rank_gpu = rank_gpus(engine, &snap.gpus, &self.gpu_verdicts);
            let mem = self.engines.entry(engine.id.clone()).or_default();
            if mem.core_pid != 0 && mem.core_pid != engine.core.pid {
                // A new engine core under the same label: the old engine died.
                out.extend(dead_verdict(mem, snap.at_ms));
                *mem = EngineMemory::default();
            }
            let v = if engine.core.state == ProcState::Gone {
                dead_verdict(mem, snap.at_ms).unwrap_or_else(|| bare_dead(engine, snap.at_ms))
            } else {
                judge_engine(&self.thresholds, mem, engine, snap.at_ms, &rank_gpu)
            };
            mem.last_verdict = Some(v.clone());
            out.push(v);
        }
        let gone: Vec<String> = self
            .engines
            .keys()
            .filter(|id| !snap.engines.iter().any(|e| &e.id == *id))
            .cloned()
            .collect();
        for id in gone {
            let Some(mem) = self.engines.remove(&id) else {
                continue;
            };
            let already_dead = mem
                .last_verdict
                .as_ref()
                .is_some_and(|v| v.state == EngineState::Dead);
            if !already_dead {
                if let Some(mut v) = dead_verdict(&mem, snap.at_ms) {
                    add_last_words(&mut v, &id, &snap.late_events);
                    out.push(v);
                }
            }
        }
        out
    }
}

fn bare_dead(engine: &EngineFacts, at_ms: Millis) -> Verdict {
    Verdict {
        engine: engine.id.clone(),
        at_ms,
        state: EngineState::Dead,
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
    }
}

/// What a dying engine logged after it vanished from `/proc`: its RPC timeout.
fn add_last_words(v: &mut Verdict, engine: &str, late: &[(String, LogEvent)]) {
    for (_, ev) in late.iter().filter(|(id, _)| id == engine) {
        if let LogEventKind::RpcTimeout { method } = &ev.kind {
            if !v
                .engine_reasons
                .iter()
                .any(|r| r.code == ReasonCode::RpcTimeout)
            {
                v.engine_reasons.push(Reason {
                    code: ReasonCode::RpcTimeout,
                    detail: rpc_timeout_detail(method),
                    since_ms: ev.at_ms,
                });
            }
        }
    }
}

/// The engine is gone: keep what was last known of the stall, so its incident ends
/// with the names it had.
fn dead_verdict(mem: &EngineMemory, at_ms: Millis) -> Option<Verdict> {
    let last = mem.last_verdict.as_ref()?;
    Some(Verdict {
        at_ms,
        state: EngineState::Dead,
        deadline_left_seconds: None,
        ..last.clone()
    })
}

/// Feeds every signal this tick's facts, collects their findings, weighs what the
/// ranks are doing, decides.
fn judge_engine(
    t: &Thresholds,
    mem: &mut EngineMemory,
    engine: &EngineFacts,
    now: Millis,
    rank_gpu: &RankGpus,
) -> Verdict {
    mem.core_pid = engine.core.pid;
    mem.adapt.set_learning(mem.progress.warmed_up(now));
    // Lags that end this tick are judged against the thresholds they ran under.
    let confirm_before = mem.adapt.effective(t).confirm_ms;
    let ranks = mem.process.observe(engine, mem.last.as_ref(), now);
    let rings = mem
        .rings
        .observe(engine, now, &mut mem.adapt, confirm_before);
    mem.logs.observe(engine, now);
    let metrics_moved = mem
        .metrics
        .observe(engine, now, &mut mem.adapt, confirm_before);
    let moves = Moves {
        last: mem.last.as_ref(),
        last_at_ms: mem.last_at_ms,
        nothing_pending: rings.nothing_pending(),
        metrics_moved,
    };
    let look = mem
        .progress
        .observe(engine, moves, now, t, &mut mem.adapt, confirm_before);
    if look.moved {
        mem.logs.progress_seen();
    }
    mem.adapt.forget_before(now, t.adapt_memory_ms);
    let eff = mem.adapt.effective(t);
    // A stopped or blocked process is no long step: its evidence never adapts.
    let base = t.effective(0);
    mem.last = Some(engine.clone());
    mem.last_at_ms = now;
    mem.activity.observe(&ranks, &engine.stacks, now);
    mem.ras.observe(engine, now);

    let mut f = Findings::default();
    mem.rings.reasons(&rings, engine, eff, now, &mut f);
    mem.process
        .reasons(&ranks, base, look.core_idle, now, &mut f);
    mem.logs.reasons(eff, now, &mut f);
    mem.metrics.reasons(eff, now, &mut f);
    mem.progress.reasons(look, eff, now, &mut f);
    let step_age = step_age(&mem.progress, look, &f, now);
    if step_age.is_none() {
        mem.activity.step_ended();
    }
    let late = step_age.is_some_and(|a| a >= base.suspect_ms);
    looks(mem, &ranks, rank_gpu, f.any() || late, now, &mut f);
    let gpus = rank_gpu.iter().map(|(r, (_, c))| (*r, *c)).collect();
    let acts = mem.activity.look(&ranks, &gpus);
    let step = Step {
        age: step_age,
        late,
        now,
        suspect_ms: base.suspect_ms,
        long_step_limit_ms: t.long_step_limit(engine.execute_timeout_seconds),
    };
    let long = weigh(
        step,
        &acts,
        mem.activity.dumps(),
        &mut mem.explained_until,
        &mut f,
    );
    f.finish(mem.logs.shutting_down());
    let mut v = decide(
        Decision {
            engine,
            ranks: &ranks,
            starting: mem.progress.starting(engine, now, t),
            idle: look.idle,
            engine_dead: mem.logs.engine_dead(),
            rpc_timed_out: mem.logs.rpc_timed_out(),
            eff,
            base,
            now,
        },
        f,
    );
    if v.state != EngineState::Stalled {
        mem.ras.clear();
    }
    if !matches!(v.state, EngineState::Idle | EngineState::Starting) {
        v.step_age_seconds = step_age.map(crate::time::secs);
        v.rank_activity = acts;
    }
    // A long step stays one past the ceiling (then stalled, a warning), so alert rules
    // can tell it from a stall.
    v.long_step = long.is_some() && matches!(v.state, EngineState::Busy | EngineState::Stalled);
    if v.state == EngineState::Busy {
        v.busy_because = long;
    }
    v
}

/// What looking at the ranks adds (stacks, GPUs, NCCL RAS) — only about a step already
/// late or otherwise suspect; the GPU memory is kept up to date every tick all the same.
fn looks(
    mem: &mut EngineMemory,
    ranks: &[RankFacts],
    rank_gpu: &RankGpus,
    wanted: bool,
    now: Millis,
    f: &mut Findings,
) {
    let mut g = Findings::default();
    gpu::reasons(rank_gpu, &mut mem.gpu, now, &mut g);
    if !wanted {
        return;
    }
    let halted: Vec<u32> = ranks
        .iter()
        .filter(|r| r.process.state.is_halted() || r.process.state == ProcState::DiskSleep)
        .map(|r| r.rank)
        .collect();
    stacks::reasons(mem.activity.dumps(), &halted, now, f);
    f.merge(g);
    mem.ras.reasons(ranks, f);
}

/// How long the current step has gone without progress: the engine core's wait with
/// nothing moving, or the longest lag of a rank or of the engine-wide evidence.
fn step_age(p: &Progress, look: ProgressLook, f: &Findings, now: Millis) -> Option<Millis> {
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
struct Step {
    /// How long it has gone without progress (none: it is not late at all).
    age: Option<Millis>,
    /// Late past the suspect threshold.
    late: bool,
    now: Millis,
    suspect_ms: Millis,
    long_step_limit_ms: Millis,
}

/// The combination of what the ranks do while a step is late. Conclusive evidence
/// against a rank stands whatever the others do; otherwise every rank at work is a long
/// step (the "nothing moves" evidence is dropped; past the ceiling it is flagged), and
/// every rank waiting in a collective is a wedge. Returns why the engine is busy.
fn weigh(
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
    let picture = picture(acts);
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
            if stacks::all_in_collective_persisted(dumps)
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

/// Everything `decide` needs besides the findings.
struct Decision<'a> {
    engine: &'a EngineFacts,
    ranks: &'a [RankFacts],
    starting: bool,
    idle: bool,
    engine_dead: bool,
    rpc_timed_out: bool,
    eff: Effective,
    base: Effective,
    now: Millis,
}

/// The state machine: dead (vLLM said so), starting (not judged), stalled (evidence),
/// idle, or busy; and when a stall is confirmed.
fn decide(d: Decision<'_>, f: Findings) -> Verdict {
    let now = d.now;
    let suspects = suspects_of(f.by_rank, d.ranks);
    let engine_reasons = f.engine;
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
    let conclusive = f.engine_conclusive || suspects.iter().any(|s| f.conclusive.contains(&s.rank));
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
    }
}

/// Ranks with reasons, strongest first; independent reasons combine as `1 − Π(1 − wᵢ)`.
fn suspects_of(by_rank: BTreeMap<u32, Vec<Reason>>, ranks: &[RankFacts]) -> Vec<Suspect> {
    let mut suspects: Vec<Suspect> = by_rank
        .into_iter()
        .map(|(rank, reasons)| {
            let pid = ranks
                .iter()
                .find(|r| r.rank == rank)
                .map_or(0, |r| r.process.pid);
            let miss: f64 = reasons.iter().map(|r| 1.0 - r.code.weight()).product();
            Suspect {
                rank,
                pid,
                reasons,
                confidence: ((1.0 - miss) * 100.0).round() / 100.0,
            }
        })
        .collect();
    suspects.sort_by(|a, b| {
        b.confidence
            .partial_cmp(&a.confidence)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.rank.cmp(&b.rank))
    });
    suspects
}
