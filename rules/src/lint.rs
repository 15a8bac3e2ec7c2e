//! Lint of a deployment's settings: what an experienced operator would flag in the
//! environment of `vllm serve` (variables that do nothing, debug settings that flood
//! logs, timeouts that contradict each other). Values whose names look secret never
//! reach here unredacted.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub code: String,
    /// `info`, `warning` or `error`.
    pub severity: String,
    pub message: String,
    pub reference: String,
}

const NCCL_ENV: &str = "https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/env.html";
const VLLM_ENV: &str = "https://docs.vllm.ai/en/latest/configuration/env_vars.html";

fn finding(code: &str, severity: &str, message: String, reference: &str) -> Finding {
    Finding {
        code: code.to_string(),
        severity: severity.to_string(),
        message,
        reference: reference.to_string(),
    }
}

fn num(s: &BTreeMap<String, String>, k: &str) -> Option<f64> {
    s.get(k).and_then(|v| v.trim().parse().ok())
}

/// Findings for one engine's allowlisted settings, most severe first.
pub fn lint(s: &BTreeMap<String, String>) -> Vec<Finding> {
    let mut out = Vec::new();
    no_effect(s, &mut out);
    noisy(s, &mut out);
    timeouts(s, &mut out);
    slow_paths(s, &mut out);
    let rank = |f: &Finding| match f.severity.as_str() {
        "error" => 0,
        "warning" => 1,
        _ => 2,
    };
    out.sort_by_key(rank);
    out
}

/// Settings operators set believing they help, which do nothing (or turn help off).
fn no_effect(s: &BTreeMap<String, String>, out: &mut Vec<Finding>) {
    // Variables no NCCL version reads.
    for (k, why) in [
        ("NCCL_TIMEOUT", "NCCL has no such variable; collective timeouts come from the framework (torch's process-group timeout), and vLLM's TP all-reduce mostly bypasses it"),
        ("NCCL_HEART_BEAT_POLL_MS", "NCCL has no such variable (torch has TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC); it does nothing"),
        ("NCCL_ASYNC_ERROR_HANDLING", "renamed TORCH_NCCL_ASYNC_ERROR_HANDLING in torch 2.2; NCCL never read it"),
        ("NCCL_BLOCKING_WAIT", "renamed TORCH_NCCL_BLOCKING_WAIT in torch 2.2; NCCL never read it"),
    ] {
        if let Some(v) = s.get(k) {
            out.push(finding(
                "not-an-nccl-variable",
                "warning",
                format!("{k}={v} is set but {why}"),
                NCCL_ENV,
            ));
        }
    }
    if let Some(v) = s.get("VLLM_RPC_TIMEOUT") {
        out.push(finding(
            "removed-vllm-variable",
            "warning",
            format!("VLLM_RPC_TIMEOUT={v} no longer exists in vLLM v1; the execute deadline is VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"),
            VLLM_ENV,
        ));
    }
    if s.get("NCCL_RAS_ENABLE").map(|v| v.trim()) == Some("0") {
        out.push(finding(
            "nccl-ras-disabled",
            "warning",
            "NCCL_RAS_ENABLE=0 turns off NCCL's RAS service, which tells which rank is behind in a hang".to_string(),
            NCCL_ENV,
        ));
    }
    for k in [
        "TORCH_NCCL_BLOCKING_WAIT",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING",
        "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC",
        "TORCH_NCCL_ENABLE_MONITORING",
    ] {
        if s.contains_key(k) {
            out.push(finding(
                "torch-watchdog-does-not-guard-tp",
                "info",
                format!("{k} tunes torch's NCCL watchdog, but vLLM's tensor-parallel all-reduce mostly bypasses torch's process group (pynccl, custom all-reduce): it will not catch a TP hang"),
                VLLM_ENV,
            ));
            break;
        }
    }
}

/// Debug settings that flood the logs in production.
fn noisy(s: &BTreeMap<String, String>, out: &mut Vec<Finding>) {
    if let Some(level) = s.get("NCCL_DEBUG") {
        let l = level.trim().to_ascii_uppercase();
        if l == "INFO" || l == "TRACE" {
            out.push(finding(
                "nccl-debug-floods-logs",
                "warning",
                format!("NCCL_DEBUG={level} writes lines for every communicator and collective setup on every rank; use WARN in production"),
                NCCL_ENV,
            ));
        }
    }
    if s.get("NCCL_DEBUG_SUBSYS")
        .is_some_and(|v| v.to_ascii_uppercase().contains("ALL"))
    {
        out.push(finding(
            "nccl-debug-floods-logs",
            "warning",
            "NCCL_DEBUG_SUBSYS=ALL multiplies NCCL's debug output".to_string(),
            NCCL_ENV,
        ));
    }
    if let Some(v) = s.get("VLLM_LOGGING_LEVEL") {
        if v.eq_ignore_ascii_case("DEBUG") {
            out.push(finding(
                "vllm-debug-logging",
                "info",
                "VLLM_LOGGING_LEVEL=DEBUG floods logs under load".to_string(),
                VLLM_ENV,
            ));
        }
    }
}

/// vLLM's own timeouts that contradict each other or the work.
fn timeouts(s: &BTreeMap<String, String>, out: &mut Vec<Finding>) {
    let timeout = num(s, "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS").unwrap_or(300.0);
    let warn_every = num(s, "VLLM_RINGBUFFER_WARNING_INTERVAL").unwrap_or(60.0);
    if warn_every >= timeout {
        out.push(finding(
            "ring-warning-after-timeout",
            "warning",
            format!("VLLM_RINGBUFFER_WARNING_INTERVAL ({warn_every} s) is not shorter than VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS ({timeout} s): vLLM dies before it ever logs that it waits"),
            VLLM_ENV,
        ));
    }
    if timeout < 30.0 {
        out.push(finding(
            "execute-timeout-short",
            "warning",
            format!("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS={timeout}: a long prefill or a first compile can take longer and kill a healthy engine"),
            VLLM_ENV,
        ));
    } else if timeout > 1800.0 {
        out.push(finding(
            "execute-timeout-long",
            "info",
            format!("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS={timeout}: a hung engine keeps failing requests for {:.0} minutes before vLLM gives up", timeout / 60.0),
            VLLM_ENV,
        ));
    }
}

/// Settings that make every step slower.
fn slow_paths(s: &BTreeMap<String, String>, out: &mut Vec<Finding>) {
    if s.get("CUDA_LAUNCH_BLOCKING").map(|v| v.trim()) == Some("1") {
        out.push(finding(
            "cuda-launch-blocking",
            "warning",
            "CUDA_LAUNCH_BLOCKING=1 serialises every kernel launch: a debugging setting that costs throughput".to_string(),
            "https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#env-vars",
        ));
    }
    for k in ["NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE", "NCCL_IB_DISABLE"] {
        if s.get(k).map(|v| v.trim()) == Some("1") {
            out.push(finding(
                "nccl-transport-disabled",
                "info",
                format!("{k}=1 disables an NCCL transport: collectives fall back to slower paths"),
                NCCL_ENV,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn flags_the_variables_that_do_nothing() {
        let f = lint(&env(&[
            ("NCCL_TIMEOUT", "1800000"),
            ("NCCL_HEART_BEAT_POLL_MS", "5000"),
        ]));
        let codes: Vec<&str> = f.iter().map(|x| x.code.as_str()).collect();
        assert_eq!(
            codes
                .iter()
                .filter(|c| **c == "not-an-nccl-variable")
                .count(),
            2,
            "{f:?}"
        );
        assert!(f
            .iter()
            .any(|x| x.message.starts_with("NCCL_TIMEOUT=1800000")));
    }

    #[test]
    fn timeouts_that_contradict() {
        let f = lint(&env(&[
            ("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "20"),
            ("VLLM_RINGBUFFER_WARNING_INTERVAL", "60"),
        ]));
        let codes: Vec<&str> = f.iter().map(|x| x.code.as_str()).collect();
        assert!(codes.contains(&"ring-warning-after-timeout"));
        assert!(codes.contains(&"execute-timeout-short"));
        assert!(lint(&env(&[])).is_empty(), "defaults are fine");
    }
}
