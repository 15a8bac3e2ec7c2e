//! Activity: what each rank is doing while a step is late — at work (computing,
//! compiling, its GPU busy), waiting for the others (in a collective, or its GPU
//! spinning in one), or doing nothing (stopped, blocked with no CPU use). Built every
//! tick from CPU time, the latest stack round of the current late step, and the GPU
//! class; the judge uses it to tell a long step (every rank at work) from a stall.

use crate::facts::{ProcState, RankFacts};
use crate::gpu::GpuClass;
use crate::position::{position, Position};
pub use crate::position::{Doing, RankActivity};
use crate::stacks::StackDump;
use crate::time::Millis;
use std::collections::{BTreeMap, VecDeque};

/// CPU use of at least this many cores counts as working: a rank blocked in a sleep or
/// a socket read uses none at all (0 clock ticks). A starved computing rank can get
/// less; its run state (`doing`) covers that.
const BUSY_CORES: f64 = 0.02;
/// The window CPU use is averaged over.
const CPU_WINDOW_MS: Millis = 2_000;
/// Rounds kept per rank for one late step.
const ROUNDS_KEPT: usize = 6;

/// Looks at a rank's run state remembered: one of them running is enough.
const STATES_KEPT: usize = 3;

/// What the last looks saw of one rank's process.
#[derive(Debug, Default)]
struct RankLooks {
    /// (at, CPU seconds), spanning about `CPU_WINDOW_MS`.
    cpu: VecDeque<(Millis, f64)>,
    /// The last `STATES_KEPT` run states.
    states: VecDeque<ProcState>,
}

#[derive(Debug, Default)]
pub struct ActivitySignal {
    /// rank → its recent looks.
    looks: BTreeMap<u32, RankLooks>,
    /// rank → whole dumps of the current late step, oldest first.
    dumps: BTreeMap<u32, Vec<StackDump>>,
}

impl ActivitySignal {
    /// Takes this tick's CPU times and stack dumps (only whole ones: a dump cut short
    /// says less than it seems to).
    pub fn observe(&mut self, ranks: &[RankFacts], stacks: &[StackDump], now: Millis) {
        for r in ranks {
            let l = self.looks.entry(r.rank).or_default();
            l.cpu.push_back((now, r.process.cpu_seconds));
            while l.cpu.len() > 2 && l.cpu.get(1).is_some_and(|(t, _)| now - t >= CPU_WINDOW_MS) {
                l.cpu.pop_front();
            }
            l.states.push_back(r.process.state);
            while l.states.len() > STATES_KEPT {
                l.states.pop_front();
            }
        }
        self.looks
            .retain(|rank, _| ranks.iter().any(|r| r.rank == *rank));
        for d in stacks.iter().filter(|d| d.complete()) {
            if let Some(rank) = d.rank {
                let v = self.dumps.entry(rank).or_default();
                v.push(d.clone());
                if v.len() > ROUNDS_KEPT {
                    v.remove(0);
                }
            }
        }
    }

    /// The late step is over (or never began): the next one starts with fresh rounds.
    pub fn step_ended(&mut self) {
        self.dumps.clear();
    }

    /// Dumps of the current late step, oldest first, per rank.
    pub fn dumps(&self) -> &BTreeMap<u32, Vec<StackDump>> {
        &self.dumps
    }

    fn cpu_cores(&self, rank: u32) -> Option<f64> {
        let q = &self.looks.get(&rank)?.cpu;
        let (t0, c0) = *q.front()?;
        let (t1, c1) = *q.back()?;
        (t1 - t0 >= 900).then(|| ((c1 - c0) / ((t1 - t0) as f64 / 1000.0)).max(0.0))
    }

    /// Every rank's activity now.
    pub fn look(&self, ranks: &[RankFacts], gpus: &BTreeMap<u32, GpuClass>) -> Vec<RankActivity> {
        ranks
            .iter()
            .map(|r| {
                let dumps = self.dumps.get(&r.rank);
                let latest = dumps.and_then(|v| v.last());
                let position = latest.and_then(|d| d.main_thread()).map(position);
                let moved = dumps.filter(|v| v.len() >= 2).and_then(|v| {
                    let a = v.get(v.len() - 2)?.main_thread()?;
                    let b = v.last()?.main_thread()?;
                    Some(a.frames != b.frames)
                });
                let mut a = RankActivity {
                    rank: r.rank,
                    doing: Doing::Unknown,
                    cpu_cores: self.cpu_cores(r.rank).map(|c| (c * 100.0).round() / 100.0),
                    position,
                    moved,
                    gpu: gpus
                        .get(&r.rank)
                        .copied()
                        .filter(|c| *c != GpuClass::Unknown),
                };
                let running = self
                    .looks
                    .get(&r.rank)
                    .is_some_and(|l| l.states.contains(&ProcState::Running));
                a.doing = doing(r.process.state, running, &a);
                a
            })
            .collect()
    }
}

/// The rules of `Doing`, strongest evidence first: process state, a busy GPU, the
/// stack's position, then CPU time, the run state and movement for "somewhere else". A
/// rank that was runnable (state R) in one of the last looks is not blocked, whatever
/// its CPU share: on an oversubscribed node (42 computing ranks on two cores, measured)
/// a computing rank gets a hundredth of a core.
fn doing(state: ProcState, running: bool, a: &RankActivity) -> Doing {
    if state.is_halted() || state == ProcState::DiskSleep {
        return Doing::Stopped;
    }
    let cpu_busy = a.cpu_cores.map(|c| c >= BUSY_CORES);
    match (a.gpu, a.position) {
        (Some(GpuClass::Busy), _) => Doing::Computing,
        (_, Some(Position::PipelineWait)) => Doing::PipelineWait,
        (_, Some(Position::Collective)) => Doing::Collective,
        (Some(GpuClass::Spin), Some(Position::WaitingOnGpu) | None) => Doing::Collective,
        (_, Some(Position::WaitingForRpc)) => Doing::WaitingForRpc,
        (_, Some(Position::WaitingOnGpu)) => Doing::WaitingOnGpu,
        (_, Some(Position::Compiling)) => Doing::Compiling,
        (_, Some(Position::Elsewhere)) => match (cpu_busy, a.moved) {
            (Some(true), _) | (None, Some(true)) => Doing::Computing,
            _ if running => Doing::Computing,
            (Some(false), _) => Doing::Blocked,
            _ => Doing::Unknown,
        },
        (Some(GpuClass::Idle), None) if cpu_busy == Some(false) => Doing::Blocked,
        _ => Doing::Unknown,
    }
}

/// What the ranks' activities say about the late step as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Picture {
    /// Every rank at work (or, with pipeline parallelism, waiting for a stage that is):
    /// a long step.
    AllActive,
    /// Every rank waits in a collective.
    AllInCollective,
    /// Anything else, or not known.
    Mixed,
}

/// `pipeline`: with pipeline stages, a rank waiting for the stage before it, or done
/// with its part of the step (waiting for its next RPC), is explained while another
/// rank computes — a step flows through the stages one after the other.
pub fn picture(acts: &[RankActivity], pipeline: bool) -> Picture {
    let explained = |d: Doing| {
        d.active() || (pipeline && matches!(d, Doing::PipelineWait | Doing::WaitingForRpc))
    };
    if acts.is_empty() {
        Picture::Mixed
    } else if acts.iter().all(|a| explained(a.doing)) && acts.iter().any(|a| a.doing.active()) {
        Picture::AllActive
    } else if acts.len() >= 2 && acts.iter().all(|a| a.doing == Doing::Collective) {
        Picture::AllInCollective
    } else {
        Picture::Mixed
    }
}

/// One line a person reads: why a late engine is busy rather than stalled.
pub fn busy_line(acts: &[RankActivity], step_age_s: f64) -> String {
    let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for a in acts {
        let mut what = a.doing.as_str().to_string();
        if a.gpu == Some(GpuClass::Busy) {
            what.push_str(" (GPU busy)");
        } else if let Some(c) = a.cpu_cores {
            what.push_str(&format!(" ({c:.1} CPU)"));
        }
        groups.entry(what).or_default().push(a.rank);
    }
    let parts: Vec<String> = groups
        .into_iter()
        .map(|(what, ranks)| {
            let list: Vec<String> = ranks.iter().map(|r| r.to_string()).collect();
            format!(
                "rank{} {} {what}",
                if ranks.len() > 1 { "s" } else { "" },
                list.join(",")
            )
        })
        .collect();
    format!(
        "a long step ({step_age_s:.0} s), not a stall: every rank is at work — {}",
        parts.join("; ")
    )
}

/// Its evidence is read by the weigh phase (`weigh.rs`), not said as reasons.
impl super::Signal for ActivitySignal {
    fn observe(&mut self, b: &mut super::Board<'_>) {
        ActivitySignal::observe(self, &b.ranks, &b.engine.stacks, b.now);
    }
}
