//! What vLLM says in its logs, as facts. The line parser lives in `hangwatch-collectors`
//! (`logs::parse`), where a fast multi-pattern search is allowed.

use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// One event read from a log line.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LogEvent {
    /// When the agent read it (vLLM's own timestamps carry no year).
    pub at_ms: Millis,
    /// vLLM's `MM-DD HH:MM:SS`, as written.
    #[serde(default)]
    pub logged_at: Option<String>,
    pub source: String,
    /// Process name in the prefix: `EngineCore`, `Worker_TP1`, `APIServer`…
    #[serde(default)]
    pub process: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    pub kind: LogEventKind,
    /// The line, cut to a bound.
    pub line: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogEventKind {
    /// `Engine 000: Avg prompt throughput: … Running: N reqs, Waiting: M reqs, …`
    Stats {
        prompt_tps: f64,
        generation_tps: f64,
        running: u32,
        waiting: u32,
        kv_cache_usage: Option<f64>,
    },
    /// `No available shared memory broadcast block found in N seconds`: from the reader
    /// side (engine core waiting for a reply) or the writer side (ring full).
    RingWait { side: RingWaitSide, seconds: f64 },
    /// `TimeoutError: RPC call to <method> timed out.`
    RpcTimeout { method: String },
    /// `EngineCore encountered a fatal error.`
    FatalError,
    /// `EngineDeadError`
    EngineDead,
    /// `[shutdown] MPClient: engine core exited unexpectedly; starting cleanup` (the API
    /// server saw its engine core's process end without being asked to).
    CoreExited,
    /// `Worker proc <name> died unexpectedly (exit code: N)`
    WorkerDied {
        name: String,
        rank: Option<u32>,
        exit_code: Option<i32>,
    },
    /// `[shutdown] force killing sub process <name> pid N`
    ShutdownKill { name: String, pid: Option<u32> },
    /// An NCCL warning or error line.
    Nccl { level: String },
    /// A CUDA error.
    CudaError,
    /// An NVIDIA Xid line.
    Xid { code: Option<u32> },
}

/// Which end of a ring logged the wait: only the reader side (the engine core waiting
/// for a worker's reply) says a rank is late; the writer side says a ring is full.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RingWaitSide {
    Reader,
    Writer,
}

impl LogEventKind {
    /// Every `name()`, for whoever keeps series per kind.
    pub const NAMES: [&'static str; 11] = [
        "stats",
        "ring_wait",
        "rpc_timeout",
        "fatal_error",
        "engine_dead",
        "worker_died",
        "shutdown_kill",
        "core_exited",
        "nccl",
        "cuda_error",
        "xid",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            LogEventKind::Stats { .. } => "stats",
            LogEventKind::RingWait { .. } => "ring_wait",
            LogEventKind::RpcTimeout { .. } => "rpc_timeout",
            LogEventKind::FatalError => "fatal_error",
            LogEventKind::EngineDead => "engine_dead",
            LogEventKind::CoreExited => "core_exited",
            LogEventKind::WorkerDied { .. } => "worker_died",
            LogEventKind::ShutdownKill { .. } => "shutdown_kill",
            LogEventKind::Nccl { .. } => "nccl",
            LogEventKind::CudaError => "cuda_error",
            LogEventKind::Xid { .. } => "xid",
        }
    }
}
