//! Each signal reads the facts of one engine (and what the judge remembers of it) and
//! says what it sees. Signals never decide the engine's state; the judge does.

use crate::facts::{EngineFacts, ProcFacts, ProcState, RingFacts, RingRole};

/// A reader that has not finished a chunk which most other readers did finish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaderLag {
    pub ring: String,
    pub reader: usize,
    pub rank: u32,
    /// First chunk of its unread run: the lag's identity (a new chunk is a new lag).
    pub chunk: u32,
    pub unread: usize,
    pub method: Option<String>,
}

/// A chunk no reader has finished: the whole engine is behind (culprit not named).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadByAll {
    pub ring: String,
    pub chunk: u32,
    pub method: Option<String>,
}

/// Rings whose readers are ranks (the RPC ring and TP broadcasters); reply rings are
/// read by the engine core and say nothing about which rank is late.
fn rank_rings(engine: &EngineFacts) -> impl Iterator<Item = &RingFacts> {
    engine
        .rings
        .iter()
        .filter(|r| matches!(r.role, RingRole::Rpc | RingRole::TpBroadcast))
}

/// Readers that lag while a majority has moved on. "Minority" means at most half of
/// the readers (exactly one of two counts) and never all of them.
pub fn reader_lags(engine: &EngineFacts) -> (Vec<ReaderLag>, Vec<UnreadByAll>) {
    let mut lags = Vec::new();
    let mut all = Vec::new();
    for ring in rank_rings(engine) {
        let Some(flags) = &ring.flags else { continue };
        let readers = ring.readers as usize;
        if readers == 0 {
            continue;
        }
        for reader in 0..readers {
            let run = ring.unread_by(reader);
            let Some(&first) = run.first() else { continue };
            let Some(chunk) = flags.get(first as usize) else {
                continue;
            };
            let unread_here = chunk.read.iter().filter(|r| !**r).count();
            let method = ring.methods.get(&first).cloned();
            if unread_here >= readers {
                if reader == 0 {
                    all.push(UnreadByAll {
                        ring: ring.name.clone(),
                        chunk: first,
                        method,
                    });
                }
                continue;
            }
            if unread_here <= (readers / 2).max(1) {
                if let Some(Some(rank)) = ring.reader_ranks.get(reader) {
                    lags.push(ReaderLag {
                        ring: ring.name.clone(),
                        reader,
                        rank: *rank,
                        chunk: first,
                        unread: run.len(),
                        method,
                    });
                }
            }
        }
    }
    (lags, all)
}

/// The engine core waits on its input queue: nothing is outstanding. vLLM's core
/// blocks in a futex there and in poll while it waits for a worker's reply (measured
/// on vllm 0.32, see VLLM.md); an unreadable wchan says nothing.
pub fn core_idle_wait(core: &ProcFacts) -> Option<bool> {
    match core.state {
        ProcState::Sleeping => core.wchan.as_deref().map(|w| w.contains("futex")),
        ProcState::Running => Some(false),
        _ => None,
    }
}

/// Whether anything visible moved between two looks at the same engine: ring flags or
/// chunk contents of the rings that carry RPCs and replies, or the engine core burning
/// CPU (it schedules between steps).
pub fn engine_moved(prev: &EngineFacts, now: &EngineFacts, dt_ms: i64, busy_cpu: f64) -> bool {
    for ring in now
        .rings
        .iter()
        .filter(|r| !matches!(r.role, RingRole::TpBroadcast))
    {
        match prev.rings.iter().find(|p| p.name == ring.name) {
            Some(p) => {
                if p.flags != ring.flags || p.fingerprint != ring.fingerprint {
                    return true;
                }
            }
            None => return true,
        }
    }
    if dt_ms > 0 && prev.core.pid == now.core.pid {
        let used = now.core.cpu_seconds - prev.core.cpu_seconds;
        if used / (dt_ms as f64 / 1000.0) >= busy_cpu {
            return true;
        }
    }
    false
}

/// RPC methods vLLM's scheduler loop sends; seeing one means start-up is over.
pub fn is_serving_method(method: &str) -> bool {
    matches!(method, "execute_model" | "sample_tokens")
}
