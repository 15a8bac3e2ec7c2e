//! Evidence on demand: Python stacks of every process of an engine, and NCCL RAS's
//! answer, taken on a worker thread of its own when the agent asks (an engine turned
//! stalled, an incident opened, a follow-up, a baseline). A slow round never blocks the
//! tick: its result is picked up by a later tick and goes into that tick's snapshot.

use crate::nccl_ras::RasAnswer;
use crate::stacks::{dump_all, Target};
use hangwatch_rules::stacks::StackDump;
use hangwatch_rules::{EngineFacts, Millis, ProcState};
use serde::Serialize;
use std::sync::mpsc;
use std::time::Duration;

/// Why a round was taken; the first round of a stall and the follow-up together show
/// whether the stacks moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundReason {
    /// A step turned late (no progress for a second or more), and a few rounds after:
    /// what the ranks do tells a long step from a stall.
    Late,
    /// The engine turned stalled.
    Suspect,
    /// Its incident opened.
    Confirm,
    /// A few seconds after the incident opened.
    Followup,
    /// A healthy engine, on the configured baseline interval.
    Baseline,
    /// A person asked for a bundle (`POST /capture`).
    Capture,
}

impl RoundReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RoundReason::Late => "late",
            RoundReason::Suspect => "suspect",
            RoundReason::Confirm => "confirm",
            RoundReason::Followup => "followup",
            RoundReason::Baseline => "baseline",
            RoundReason::Capture => "capture",
        }
    }
}

/// One round of dumps of one engine.
#[derive(Clone, Debug, Serialize)]
pub struct StackRound {
    pub engine: String,
    pub reason: RoundReason,
    pub requested_at_ms: Millis,
    pub dumps: Vec<StackDump>,
    /// Process titles by pid, for the text files.
    pub titles: Vec<(u32, String)>,
    /// NCCL RAS's answer, asked in the same round on GPU nodes.
    pub ras: Option<RasAnswer>,
}

/// One round of on-demand evidence: stacks, and NCCL RAS when `ras_addr` is set.
pub struct EvidenceRequest {
    pub engine: String,
    pub reason: RoundReason,
    pub targets: Vec<Target>,
    pub titles: Vec<(u32, String)>,
    pub ras_addr: Option<String>,
    /// The engine's network namespace, when not the agent's (RAS listens on its loopback).
    pub ras_netns: Option<std::path::PathBuf>,
}

/// Who to dump for an engine: the engine core, then every rank still there.
pub fn targets_of(e: &EngineFacts) -> (Vec<Target>, Vec<(u32, String)>) {
    let stopped = |s: ProcState| matches!(s, ProcState::Stopped | ProcState::TracingStop);
    // Under the uni executor the engine core is rank 0: one dump, with its rank.
    let core_rank = e
        .ranks
        .iter()
        .find(|r| r.process.pid == e.core.pid)
        .map(|r| r.rank);
    let mut t = vec![Target {
        pid: e.core.pid,
        rank: core_rank,
        stopped: stopped(e.core.state),
    }];
    let mut titles = vec![(e.core.pid, "VLLM::EngineCore".to_string())];
    // The API server: its event loop can hang too (its stack never pauses it either).
    if let Some(api) = e.api.as_ref().filter(|p| p.state != ProcState::Gone) {
        t.push(Target {
            pid: api.pid,
            rank: None,
            stopped: stopped(api.state),
        });
        titles.push((api.pid, "vllm serve (API server)".to_string()));
    }
    for r in &e.ranks {
        if r.process.state == ProcState::Gone || r.process.pid == e.core.pid {
            continue;
        }
        t.push(Target {
            pid: r.process.pid,
            rank: Some(r.rank),
            stopped: stopped(r.process.state),
        });
        titles.push((r.process.pid, r.title.clone()));
    }
    (t, titles)
}

/// One round: NCCL RAS when asked, then every target's stack.
fn round(
    r: EvidenceRequest,
    native: bool,
    limit: Duration,
    ras_timeout: Duration,
    clock: fn() -> Millis,
) -> StackRound {
    let requested_at_ms = clock();
    let ras = r
        .ras_addr
        .as_deref()
        .map(|a| crate::nccl_ras::query(a, r.ras_netns.as_deref(), ras_timeout));
    let dumps = if r.targets.is_empty() {
        Vec::new()
    } else {
        dump_all(&r.targets, native, limit)
    };
    StackRound {
        engine: r.engine,
        reason: r.reason,
        requested_at_ms,
        dumps,
        titles: r.titles,
        ras,
    }
}

pub fn title_of(titles: &[(u32, String)], pid: u32) -> String {
    titles
        .iter()
        .find(|(p, _)| *p == pid)
        .map(|(_, t)| t.clone())
        .unwrap_or_else(|| "?".to_string())
}

/// The worker's two ends: requests in, rounds out.
pub struct EvidenceWorker {
    pub requests: mpsc::Sender<EvidenceRequest>,
    pub rounds: mpsc::Receiver<StackRound>,
}

/// Rounds of different engines run side by side, at most this many at once: nine
/// engines whose long steps start together must not wait in one queue (measured: the
/// last engine's first round came 7 s late), and a flood of look-alike engines must not
/// start a thread each.
const ROUNDS_AT_ONCE: usize = 4;

/// Starts the worker: it takes requests in order and runs up to `ROUNDS_AT_ONCE` rounds
/// at once, each bounded by `limit` (stacks) and `ras_timeout` (RAS). `clock` stamps the
/// rounds.
pub fn spawn_worker(
    native: bool,
    limit: Duration,
    ras_timeout: Duration,
    clock: fn() -> Millis,
) -> std::io::Result<EvidenceWorker> {
    let (req_tx, req_rx) = mpsc::channel::<EvidenceRequest>();
    let (out_tx, out_rx) = mpsc::channel::<StackRound>();
    // A token per round that may run; a round gives its token back when done.
    let (tokens_tx, tokens_rx) = mpsc::sync_channel::<()>(ROUNDS_AT_ONCE);
    for _ in 0..ROUNDS_AT_ONCE {
        let _ = tokens_tx.try_send(());
    }
    std::thread::Builder::new()
        .name("evidence".into())
        .spawn(move || {
            while let Ok(r) = req_rx.recv() {
                if tokens_rx.recv().is_err() {
                    break;
                }
                let (out, give_back) = (out_tx.clone(), tokens_tx.clone());
                let spawned = std::thread::Builder::new()
                    .name("evidence-round".into())
                    .spawn(move || {
                        let _ = out.send(round(r, native, limit, ras_timeout, clock));
                        let _ = give_back.try_send(());
                    });
                if spawned.is_err() {
                    let _ = tokens_tx.try_send(());
                }
            }
        })?;
    Ok(EvidenceWorker {
        requests: req_tx,
        rounds: out_rx,
    })
}
