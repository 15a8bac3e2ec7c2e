//! What vLLM says in its logs and on its `/metrics`, as facts. The line parser lives in
//! `hangwatch-collectors` (`logs::parse`), where a fast multi-pattern search is allowed.

use crate::facts::Millis;
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
    RingWait { side: String, seconds: f64 },
    /// `TimeoutError: RPC call to <method> timed out.`
    RpcTimeout { method: String },
    /// `EngineCore encountered a fatal error.`
    FatalError,
    /// `EngineDeadError`
    EngineDead,
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

impl LogEventKind {
    pub fn name(&self) -> &'static str {
        match self {
            LogEventKind::Stats { .. } => "stats",
            LogEventKind::RingWait { .. } => "ring_wait",
            LogEventKind::RpcTimeout { .. } => "rpc_timeout",
            LogEventKind::FatalError => "fatal_error",
            LogEventKind::EngineDead => "engine_dead",
            LogEventKind::WorkerDied { .. } => "worker_died",
            LogEventKind::ShutdownKill { .. } => "shutdown_kill",
            LogEventKind::Nccl { .. } => "nccl",
            LogEventKind::CudaError => "cuda_error",
            LogEventKind::Xid { .. } => "xid",
        }
    }
}

/// vLLM's own `/metrics`, the series that show progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct VllmMetrics {
    pub running: Option<f64>,
    pub waiting: Option<f64>,
    pub generation_tokens_total: Option<f64>,
    pub prompt_tokens_total: Option<f64>,
    pub iteration_tokens_count: Option<f64>,
}

impl VllmMetrics {
    /// Parses the Prometheus text format, summing each series over its label sets.
    pub fn parse(text: &str) -> VllmMetrics {
        let mut m = VllmMetrics::default();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            let slot = match name {
                "vllm:num_requests_running" => &mut m.running,
                "vllm:num_requests_waiting" => &mut m.waiting,
                "vllm:generation_tokens_total" => &mut m.generation_tokens_total,
                "vllm:prompt_tokens_total" => &mut m.prompt_tokens_total,
                "vllm:iteration_tokens_total_count" => &mut m.iteration_tokens_count,
                _ => continue,
            };
            *slot = Some(slot.unwrap_or(0.0) + value);
        }
        m
    }

    /// The progress counters, for "did anything move".
    pub fn progress(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        (
            self.generation_tokens_total,
            self.prompt_tokens_total,
            self.iteration_tokens_count,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text() {
        let m = VllmMetrics::parse("# HELP x\nvllm:num_requests_running{model_name=\"a\"} 2.0\nvllm:num_requests_running{model_name=\"b\"} 1\nvllm:generation_tokens_total{model_name=\"a\"} 1234\nvllm:generation_tokens_created{model_name=\"a\"} 1.7e9\n");
        assert_eq!(m.running, Some(3.0));
        assert_eq!(m.generation_tokens_total, Some(1234.0));
        assert_eq!(m.waiting, None);
    }
}
