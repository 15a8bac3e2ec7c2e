//! NCCL RAS answers as facts, and what they say: the rank one collective behind, or
//! ranks ahead on different communicators (a desync). Counts are launches, not
//! completions (docs/gpu.md): ranks that launched the same collective and stall together
//! look consistent.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct RasStatus {
    #[serde(default)]
    pub nccl_version: Option<String>,
    #[serde(default)]
    pub communicators: Vec<RasCommunicator>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct RasCommunicator {
    #[serde(default)]
    pub hash: String,
    #[serde(default)]
    pub size: Option<u32>,
    #[serde(default)]
    pub ranks: Vec<RasRank>,
    #[serde(default)]
    pub missing_ranks: Vec<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct RasRank {
    pub rank: u32,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub cuda_dev: Option<u32>,
    #[serde(default)]
    pub collective_counts: BTreeMap<String, u64>,
    #[serde(default)]
    pub async_error: Option<i64>,
    #[serde(default)]
    pub abort_flag: Option<bool>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RasFinding {
    /// One process is behind on one communicator and ahead nowhere: the laggard.
    Laggard {
        pid: u32,
        communicator: String,
        op: String,
        behind: u64,
    },
    /// Different processes are behind on different communicators.
    Desync { detail: String },
}

/// Per communicator and operation, who is behind the maximum launch count.
pub fn ras_finding(s: &RasStatus) -> Option<RasFinding> {
    // (pid, communicator, op, behind)
    let mut behind: Vec<(u32, String, String, u64)> = Vec::new();
    for c in &s.communicators {
        let mut ops: BTreeMap<&str, Vec<(u32, u64)>> = BTreeMap::new();
        for r in &c.ranks {
            let Some(pid) = r.pid else { continue };
            for (op, n) in &r.collective_counts {
                ops.entry(op.as_str()).or_default().push((pid, *n));
            }
        }
        for (op, counts) in ops {
            let max = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
            for (pid, n) in counts {
                if n < max {
                    behind.push((pid, c.hash.clone(), op.to_string(), max - n));
                }
            }
        }
    }
    let mut pids: Vec<u32> = behind.iter().map(|b| b.0).collect();
    pids.sort_unstable();
    pids.dedup();
    match pids.len() {
        0 => None,
        1 => {
            let (pid, communicator, op, n) = behind.swap_remove(0);
            Some(RasFinding::Laggard {
                pid,
                communicator,
                op,
                behind: n,
            })
        }
        _ => {
            let parts: Vec<String> = behind
                .iter()
                .map(|(pid, c, op, n)| format!("pid {pid} is {n} {op} behind on communicator {c}"))
                .collect();
            Some(RasFinding::Desync {
                detail: parts.join("; "),
            })
        }
    }
}
