//! GPU evidence: a rank whose GPU is idle while the other ranks' GPUs spin in a
//! collective is the one they wait for; every local GPU spinning is a collective wedge
//! (desync, or a peer on another node). The signatures are in `docs/gpu.md`.

use super::Findings;
use crate::facts::EngineFacts;
use crate::gpu::{gpu_finding, gpu_of_pids, GpuClass, GpuFacts, GpuFinding, GpuVerdict};
use crate::time::Millis;
use crate::verdict::ReasonCode;
use std::collections::BTreeMap;

/// rank → (GPU index, class of that GPU as seen by that rank).
pub type RankGpus = BTreeMap<u32, (u32, GpuClass)>;

/// Joins ranks to GPUs by host pid (NVML's process lists) and gives each rank its GPU's
/// class; ranks sharing a GPU are told apart by per-process utilization.
pub fn rank_gpus(
    engine: &EngineFacts,
    gpus: &[GpuFacts],
    verdicts: &BTreeMap<u32, GpuVerdict>,
) -> RankGpus {
    let gpu_of = gpu_of_pids(gpus);
    engine
        .ranks
        .iter()
        .filter_map(|r| {
            let g = gpu_of
                .get(&r.process.pid)
                .or_else(|| r.process.ns_pid.and_then(|p| gpu_of.get(&p)))?;
            let mut c = verdicts.get(g).map_or(GpuClass::Unknown, |v| v.class);
            let gpu = gpus.iter().find(|x| x.index == *g);
            // NVML reports samples only for processes that ran kernels lately: a rank
            // without a sample, beside ranks with one, ran nothing.
            let own = gpu
                .and_then(|x| x.processes.iter().find(|p| p.pid == r.process.pid))
                .and_then(|p| p.utilization);
            let sampled = gpu.is_some_and(|x| {
                x.processes.len() > 1 && x.processes.iter().any(|p| p.utilization.is_some())
            });
            // Only on a spinning GPU: during real work NVML's per-process samples come
            // and go (a working rank shows no value in some samples at 290 W; docs/gpu.md).
            if sampled && own.unwrap_or(0) <= 5 && c == GpuClass::Spin {
                c = GpuClass::Idle;
            }
            Some((r.rank, (*g, c)))
        })
        .collect()
}

/// A GPU asymmetry seen this long is conclusive (the classifier's hysteresis already
/// takes a few samples; this guards against one rank briefly ahead of the others).
const GPU_PERSIST_MS: Millis = 2_000;

/// Since when the same GPU finding has held.
#[derive(Debug, Default)]
pub struct GpuMemory {
    idle_rank: Option<(u32, Millis)>,
    wedge_since: Option<Millis>,
}

pub fn reasons(rank_gpu: &RankGpus, mem: &mut GpuMemory, now: Millis, f: &mut Findings) {
    let classes: BTreeMap<u32, GpuClass> = rank_gpu.iter().map(|(r, (_, c))| (*r, *c)).collect();
    let list = |ranks: &[u32]| {
        ranks
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let finding = gpu_finding(&classes);
    if !matches!(finding, Some(GpuFinding::IdleWhileOthersSpin { .. })) {
        mem.idle_rank = None;
    }
    if !matches!(finding, Some(GpuFinding::CollectiveWedge { .. })) {
        mem.wedge_since = None;
    }
    match finding {
        Some(GpuFinding::IdleWhileOthersSpin { rank, others }) => {
            let since = match mem.idle_rank {
                Some((r, since)) if r == rank => since,
                _ => now,
            };
            mem.idle_rank = Some((rank, since));
            let gpu = rank_gpu.get(&rank).map_or(0, |(g, _)| *g);
            let detail = format!(
                "its GPU {gpu} is idle while the GPUs of ranks {} spin in a collective (utilization ~100 % at idle power): they wait for it",
                list(&others)
            );
            f.rank(rank, ReasonCode::GpuIdleWhileOthersSpin, detail, since);
            if now - since >= GPU_PERSIST_MS {
                f.conclude(rank);
            }
        }
        Some(GpuFinding::CollectiveWedge { ranks }) => {
            let since = *mem.wedge_since.get_or_insert(now);
            let detail = format!(
                "collective wedge: every local rank ({}) waits in a collective; the collectives disagree (desync) or the missing peer is on another node",
                list(&ranks)
            );
            f.engine(ReasonCode::CollectiveWedge, detail, since);
        }
        None => {}
    }
}
