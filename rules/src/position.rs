//! What a rank is doing (`Doing`, exported per rank), and where its main thread is, read from its Python stack: in a collective, waiting
//! for its next RPC, waiting on the GPU, compiling, or somewhere else (model code, a
//! sleep, a blocking call). The frame names and files are vLLM's and torch's
//! (`docs/vllm.md`, "What a rank's stack says"); the position alone never decides
//! anything — CPU time and the GPU say whether "somewhere else" is work or a wait.

use crate::gpu::GpuClass;
use crate::stacks::{activity, Activity, ThreadStack};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// Inside a collective (all-reduce, barrier, broadcast…): waiting for the others.
    Collective,
    /// A pipeline stage waiting for the stage before it (`recv_tensor_dict`): during a
    /// long step the later stages wait while the first one computes.
    PipelineWait,
    /// In the worker's loop, waiting for the next RPC on the broadcast ring.
    WaitingForRpc,
    /// Blocked on the GPU (a synchronize, an event wait).
    WaitingOnGpu,
    /// torch.compile: dynamo, inductor, triton, autotuning.
    Compiling,
    /// Anywhere else: model code, a sleep, a blocking call — CPU time tells which.
    Elsewhere,
    /// No frames.
    Unknown,
}

/// Frame names or files of compilation: dynamo's frame conversion, inductor's code
/// generation and autotuning, triton's compiler. vLLM's normal
/// forward passes through `torch/_dynamo/eval_frame.py` and vLLM's own
/// `compilation/decorators.py` too, so those two do not count.
const COMPILING: [&str; 9] = [
    "convert_frame",
    "symbolic_convert",
    "compile_fx",
    "torch/_inductor/",
    "triton/compiler",
    "autotune",
    "codecache",
    "aot_autograd",
    "_functorch/",
];

/// Frame names of a host thread blocked until the GPU finishes.
const GPU_WAIT: [&str; 3] = ["synchronize", "cuda_wait", "wait_stream"];

/// How many innermost frames are searched for compiler frames: inductor's lowering
/// reaches deep into sympy, so the compiler's own frames can sit dozens of frames out.
const NEAR: usize = 60;

pub fn position(t: &ThreadStack) -> Position {
    match activity(t) {
        Activity::Collective { op, .. } if op.contains("recv_tensor_dict") => {
            return Position::PipelineWait
        }
        Activity::Collective { .. } => return Position::Collective,
        Activity::WaitingForRpc => return Position::WaitingForRpc,
        Activity::Unknown => return Position::Unknown,
        Activity::Elsewhere { .. } => {}
    }
    let near = || t.frames.iter().take(NEAR);
    if near().any(|f| {
        COMPILING
            .iter()
            .any(|c| f.name.contains(c) || f.filename.contains(c))
    }) {
        return Position::Compiling;
    }
    let innermost = t.frames.iter().take(3);
    if innermost
        .map(|f| f.name.to_ascii_lowercase())
        .any(|n| GPU_WAIT.iter().any(|w| n.contains(w)))
    {
        return Position::WaitingOnGpu;
    }
    Position::Elsewhere
}

/// A rank's activity, as exported (`hangwatch_rank_activity{activity}`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Doing {
    /// Stopped, exited or in uninterruptible sleep.
    Stopped,
    /// Waiting in a collective (its stack), or its GPU spinning in one.
    Collective,
    /// Waiting for the previous pipeline stage.
    PipelineWait,
    WaitingForRpc,
    /// Blocked on its GPU, the GPU's class unknown.
    WaitingOnGpu,
    Compiling,
    /// Model code with CPU time growing, or its GPU busy.
    Computing,
    /// Somewhere else with no CPU time growing: a sleep, a blocking call.
    Blocked,
    /// Not known (or a word a newer peer agent sent that this one does not know).
    #[serde(other)]
    Unknown,
}

impl Doing {
    pub const ALL: [Doing; 9] = [
        Doing::Stopped,
        Doing::Collective,
        Doing::PipelineWait,
        Doing::WaitingForRpc,
        Doing::WaitingOnGpu,
        Doing::Compiling,
        Doing::Computing,
        Doing::Blocked,
        Doing::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Doing::Stopped => "stopped",
            Doing::Collective => "collective",
            Doing::PipelineWait => "pipeline_wait",
            Doing::WaitingForRpc => "waiting_for_rpc",
            Doing::WaitingOnGpu => "waiting_on_gpu",
            Doing::Compiling => "compiling",
            Doing::Computing => "computing",
            Doing::Blocked => "blocked",
            Doing::Unknown => "unknown",
        }
    }

    /// At work: a step this rank is in can still end by itself.
    pub fn active(self) -> bool {
        matches!(self, Doing::Computing | Doing::Compiling)
    }
}

/// One rank's activity this tick, with the evidence behind it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RankActivity {
    pub rank: u32,
    pub doing: Doing,
    /// CPU use over the last few seconds, in cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    /// Where its stack is (latest round of this late step), when dumped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// Its stack changed between the last two rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuClass>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::Frame;

    fn stack(frames: &[(&str, &str)]) -> ThreadStack {
        ThreadStack {
            thread_id: 1,
            os_thread_id: Some(1),
            name: Some("MainThread".into()),
            active: true,
            owns_gil: false,
            frames: frames
                .iter()
                .map(|(n, f)| Frame {
                    name: n.to_string(),
                    filename: f.to_string(),
                    short_filename: None,
                    line: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn positions_of_real_and_simulated_frames() {
        let real_all_reduce = stack(&[
            ("OpOverloadPacket.__call__", "torch/_ops.py"),
            (
                "_CPUSHMDistributed.all_reduce",
                "vllm/distributed/device_communicators/cpu_communicator.py",
            ),
            (
                "_support_torch_compile.<locals>.__call__",
                "vllm/compilation/decorators.py",
            ),
            ("WorkerProc.worker_busy_loop", "multiproc_executor.py"),
        ]);
        assert_eq!(position(&real_all_reduce), Position::Collective);
        let waits_rpc = stack(&[
            ("sched_yield", "vllm/distributed/utils.py"),
            ("MessageQueue.acquire_read", "shm_broadcast.py"),
            ("MessageQueue.dequeue", "shm_broadcast.py"),
            ("WorkerProc.worker_busy_loop", "multiproc_executor.py"),
        ]);
        assert_eq!(position(&waits_rpc), Position::WaitingForRpc);
        let compiling = stack(&[
            ("compile_fx_inner", "torch/_inductor/compile_fx.py"),
            ("_fn", "torch/_dynamo/eval_frame.py"),
            ("LlamaModel.forward", "vllm/model_executor/models/llama.py"),
        ]);
        assert_eq!(position(&compiling), Position::Compiling);
        let forward = stack(&[
            (
                "LlamaAttention.forward",
                "vllm/model_executor/models/llama.py",
            ),
            ("_fn", "torch/_dynamo/eval_frame.py"),
            (
                "_support_torch_compile.<locals>.__call__",
                "vllm/compilation/decorators.py",
            ),
        ]);
        assert_eq!(position(&forward), Position::Elsewhere);
        let sync = stack(&[
            ("synchronize", "torch/cuda/__init__.py"),
            ("compute", "sim/gpu.py"),
        ]);
        assert_eq!(position(&sync), Position::WaitingOnGpu);
        assert_eq!(position(&stack(&[])), Position::Unknown);
    }
}
