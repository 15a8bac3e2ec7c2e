//! The judge: a small state machine per engine that turns a stream of snapshots into
//! verdicts. Each kind of evidence is a signal (`crate::signals`) with its own memory;
//! the judge feeds them the engine's facts, collects their findings, and decides the
//! state. Time comes only from the snapshots, so a recording judged again gives the
//! same verdicts as the live run did.

use crate::decide::{decide, Decision};
use crate::facts::{EngineFacts, Executor, Millis, ProcState, RankFacts, Snapshot};
use crate::gpu::{GpuClassifier, GpuVerdict};
use crate::last_words::LastWords;
use crate::logs::{LogEvent, LogEventKind};
use crate::signals::activity::{ActivitySignal, RankActivity};
use crate::signals::adapt::Adaptation;
use crate::signals::front::FrontEndSignal;
use crate::signals::gpu::GpuMemory;
use crate::signals::gpu::{rank_gpus, RankGpus};
use crate::signals::logs::{rpc_timeout_detail, LogSignal};
use crate::signals::metrics::MetricsSignal;
use crate::signals::orphan::OrphanSignal;
use crate::signals::process::ProcessSignal;
use crate::signals::progress::Progress;
use crate::signals::progress::ProgressLook;
use crate::signals::ras::RasSignal;
use crate::signals::rings::{RingLook, RingSignal};
use crate::signals::roles::RoleSignal;
use crate::signals::{gpu, stacks, Board, Findings, Seen, Signal};
use crate::thresholds::Thresholds;
use crate::verdict::{EngineState, Reason, ReasonCode, Verdict};
use crate::weigh::{step_age, weigh, Step};
use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Judge {
    thresholds: Thresholds,
    engines: BTreeMap<String, EngineMemory>,
    gpu: GpuClassifier,
    gpu_verdicts: BTreeMap<u32, GpuVerdict>,
    /// Engines gone lately, whose API server may still say why.
    last_words: LastWords,
}

/// What the judge remembers of one engine between snapshots: each signal's memory.
#[derive(Debug, Default)]
struct EngineMemory {
    core_pid: u32,
    last: Option<EngineFacts>,
    last_at_ms: Millis,
    adapt: Adaptation,
    signals: Signals,
    gpu: GpuMemory,
    /// The last look at which every rank was at work in the current step (0: none).
    explained_until: Millis,
    last_verdict: Option<Verdict>,
    /// Across nodes: the rank seen alone outside the collective (`remote.rs`).
    odd_across: crate::remote::OddAcross,
}

/// Every signal of an engine, registered once (`all`).
#[derive(Debug, Default)]
struct Signals {
    process: ProcessSignal,
    rings: RingSignal,
    metrics: MetricsSignal,
    progress: Progress,
    roles: RoleSignal,
    front: FrontEndSignal,
    logs: LogSignal,
    activity: ActivitySignal,
    ras: RasSignal,
    orphan: OrphanSignal,
}

impl Signals {
    /// In the order they observe: each reads what the ones before it put on the board
    /// (ranks ← process; rings and vLLM's counters → progress → the core and API server,
    /// what moved → logs).
    fn all(&mut self) -> [&mut dyn Signal; 10] {
        [
            &mut self.process,
            &mut self.rings,
            &mut self.metrics,
            &mut self.progress,
            &mut self.roles,
            &mut self.front,
            &mut self.logs,
            &mut self.activity,
            &mut self.ras,
            &mut self.orphan,
        ]
    }
}

impl Judge {
    pub fn new(thresholds: Thresholds) -> Judge {
        Judge {
            thresholds,
            engines: BTreeMap::new(),
            gpu: GpuClassifier::default(),
            gpu_verdicts: BTreeMap::new(),
            last_words: LastWords::default(),
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
            self.last_words.returned(&engine.id);
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
        crate::lockstep::correlate(&snap.engines, &mut out);
        for id in gone {
            let Some(mem) = self.engines.remove(&id) else {
                continue;
            };
            if let Some(last) = &mem.last_verdict {
                let uni = mem
                    .last
                    .as_ref()
                    .is_some_and(|e| e.executor == Executor::Uni);
                self.last_words
                    .vanished(&id, mem.core_pid, uni, last.clone(), snap.at_ms);
            }
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
        out.extend(self.last_words.hear(snap));
        out
    }
}

fn bare_dead(engine: &EngineFacts, at_ms: Millis) -> Verdict {
    bare_verdict(&engine.id, at_ms, EngineState::Dead)
}

/// A verdict that says only the state: no suspect, no evidence.
pub(crate) fn bare_verdict(engine: &str, at_ms: Millis, state: EngineState) -> Verdict {
    Verdict::bare(engine, at_ms, state)
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

/// One engine's tick in four phases: every signal observes the facts (`observe`),
/// says what it sees (`reasons`), what the ranks are doing is weighed (`weigh_step`),
/// and the state is decided (`verdict_of`).
fn judge_engine(
    t: &Thresholds,
    mem: &mut EngineMemory,
    engine: &EngineFacts,
    now: Millis,
    rank_gpu: &RankGpus,
) -> Verdict {
    let seen = observe(t, mem, engine, now);
    let mut f = reasons(mem, &seen);
    let weighed = weigh_step(t, mem, &seen, engine, rank_gpu, now, &mut f);
    verdict_of(t, mem, &seen, engine, weighed, now, f)
}

/// What the weigh phase hands on.
struct Weighed {
    /// How long the current step has gone without progress (none: not late).
    step_age: Option<Millis>,
    acts: Vec<RankActivity>,
    /// Why the engine is busy, when every rank is at work in a long step.
    long: Option<String>,
}

/// Phase 1: every signal updates its memory from this tick's facts.
fn observe<'e>(
    t: &Thresholds,
    mem: &mut EngineMemory,
    engine: &'e EngineFacts,
    now: Millis,
) -> Seen<'e> {
    mem.core_pid = engine.core.pid;
    mem.adapt.set_learning(mem.signals.progress.warmed_up(now));
    let confirm_before = mem.adapt.effective(t).confirm_ms;
    let mut b = Board {
        engine,
        last: mem.last.as_ref(),
        last_at_ms: mem.last_at_ms,
        now,
        thresholds: t,
        adapt: &mut mem.adapt,
        confirm_before,
        ranks: Vec::new(),
        rings: RingLook::default(),
        metrics_moved: false,
        look: ProgressLook::default(),
    };
    for s in mem.signals.all() {
        s.observe(&mut b);
    }
    let Board {
        ranks, rings, look, ..
    } = b;
    mem.adapt.forget_before(now, t.adapt_memory_ms);
    mem.last = Some(engine.clone());
    mem.last_at_ms = now;
    Seen {
        engine,
        now,
        ranks,
        rings,
        look,
        eff: mem.adapt.effective(t),
        base: t.effective(0),
    }
}

/// Phase 2: every signal says what it sees.
fn reasons(mem: &mut EngineMemory, seen: &Seen<'_>) -> Findings {
    let mut f = Findings::default();
    for s in mem.signals.all() {
        s.reasons(seen, &mut f);
    }
    f
}

/// Phase 3: how old the step is, what each rank does in it, and the combination
/// (`weigh`); stacks, GPUs and RAS speak only about a step already late.
fn weigh_step(
    t: &Thresholds,
    mem: &mut EngineMemory,
    seen: &Seen,
    engine: &EngineFacts,
    rank_gpu: &RankGpus,
    now: Millis,
    f: &mut Findings,
) -> Weighed {
    // A follower part has no ring to date its step: the leader's agent dates it.
    let step_age = step_age(&mem.signals.progress, seen.look, f, now).or(engine
        .leader
        .as_ref()
        .and_then(|l| l.step_age_ms)
        .filter(|_| engine.executor == Executor::Follower));
    if step_age.is_none() {
        mem.signals.activity.step_ended();
    }
    let late = step_age.is_some_and(|a| a >= seen.base.suspect_ms);
    looks(mem, &seen.ranks, rank_gpu, f.any() || late, now, f);
    let gpus = rank_gpu.iter().map(|(r, (_, c))| (*r, *c)).collect();
    let mut acts = mem.signals.activity.look(&seen.ranks, &gpus);
    acts.extend(crate::remote::remote_acts(
        engine.node.as_ref(),
        &engine.peers,
    ));
    let step = Step {
        age: step_age,
        late,
        now,
        suspect_ms: seen.base.suspect_ms,
        long_step_limit_ms: t.long_step_limit(engine.execute_timeout_seconds),
        pipeline: engine.pp > 1,
        across_nodes: engine.node.as_ref().is_some_and(|n| n.nnodes > 1),
    };
    let long = weigh(
        step,
        &acts,
        mem.signals.activity.dumps(),
        &mut mem.explained_until,
        f,
    );
    Weighed {
        step_age,
        acts,
        long,
    }
}

/// Phase 4: the state and what the verdict says about the step.
fn verdict_of(
    t: &Thresholds,
    mem: &mut EngineMemory,
    seen: &Seen,
    engine: &EngineFacts,
    w: Weighed,
    now: Millis,
    mut f: Findings,
) -> Verdict {
    let Weighed {
        step_age,
        acts,
        long,
    } = w;
    crate::remote::explain(
        engine.node.as_ref(),
        &engine.peers,
        &acts,
        now,
        &mut mem.odd_across,
        &mut f,
    );
    if engine.executor == Executor::Follower && f.joins.is_none() {
        f.joins = engine.leader.as_ref().and_then(|l| l.incident.clone());
    }
    f.finish(mem.signals.logs.shutting_down());
    let mut v = decide(
        Decision {
            engine,
            ranks: &seen.ranks,
            starting: mem.signals.progress.starting(engine, now, t),
            idle: seen.look.idle,
            engine_dead: mem.signals.logs.engine_dead(),
            rpc_timed_out: mem.signals.logs.rpc_timed_out(),
            eff: seen.eff,
            base: seen.base,
            now,
        },
        f,
    );
    if v.state != EngineState::Stalled {
        mem.signals.ras.clear();
    }
    crate::remote::wait_for_the_leader(engine, &mut v, now);
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
    stacks::reasons(mem.signals.activity.dumps(), &halted, now, f);
    f.merge(g);
    mem.signals.ras.reasons(ranks, f);
}
