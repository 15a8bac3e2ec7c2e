//! Ring evidence: a chunk one rank has not finished while the others have names that
//! rank; an RPC no rank has taken says the whole engine is behind. The reader flags'
//! protocol is in `docs/vllm.md` ("Shared-memory rings").

use super::adapt::Adaptation;
use super::Findings;
use crate::facts::{EngineFacts, RingFacts, RingRole};
use crate::thresholds::Effective;
use crate::time::{secs, Millis};
use crate::verdict::ReasonCode;
use std::collections::BTreeMap;

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

/// This tick's lags, as `reader_lags` found them.
#[derive(Debug, Default)]
pub struct RingLook {
    pub lags: Vec<ReaderLag>,
    pub all: Vec<UnreadByAll>,
}

impl RingLook {
    pub fn nothing_pending(&self) -> bool {
        self.lags.is_empty() && self.all.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct RingSignal {
    /// (ring, reader) → (first unread chunk, rank, since).
    reader_lag: BTreeMap<(String, usize), (u32, u32, Millis)>,
    /// ring → (chunk, since).
    unread_by_all: BTreeMap<String, (u32, Millis)>,
}

impl RingSignal {
    /// Keeps the start of every lag that goes on (same first chunk); a lag that ended
    /// teaches `adapt` how long this engine's steps can take.
    pub fn observe(
        &mut self,
        engine: &EngineFacts,
        now: Millis,
        adapt: &mut Adaptation,
        confirm_ms: Millis,
    ) -> RingLook {
        let (lags, all) = reader_lags(engine);
        let mut next_lag = BTreeMap::new();
        for l in &lags {
            let key = (l.ring.clone(), l.reader);
            let since = match self.reader_lag.get(&key) {
                Some(&(chunk, _, since)) if chunk == l.chunk => since,
                _ => now,
            };
            next_lag.insert(key, (l.chunk, l.rank, since));
        }
        for (key, &(_, _, since)) in &self.reader_lag {
            if !next_lag.contains_key(key) {
                adapt.recovered(now, now - since, confirm_ms);
            }
        }
        self.reader_lag = next_lag;
        let mut next_all = BTreeMap::new();
        for a in &all {
            let since = match self.unread_by_all.get(&a.ring) {
                Some(&(chunk, since)) if chunk == a.chunk => since,
                _ => now,
            };
            next_all.insert(a.ring.clone(), (a.chunk, since));
        }
        for (ring, &(_, since)) in &self.unread_by_all {
            if !next_all.contains_key(ring) {
                adapt.recovered(now, now - since, confirm_ms);
            }
        }
        self.unread_by_all = next_all;
        RingLook { lags, all }
    }

    pub fn reasons(
        &self,
        look: &RingLook,
        engine: &EngineFacts,
        eff: Effective,
        now: Millis,
        f: &mut Findings,
    ) {
        for &(chunk, rank, since) in self.reader_lag.values() {
            let age = now - since;
            f.lag(rank, age);
            if age < eff.suspect_ms {
                continue;
            }
            let method = look
                .lags
                .iter()
                .find(|l| l.rank == rank && l.chunk == chunk)
                .and_then(|l| l.method.clone())
                .map(|m| format!(" ({m})"))
                .unwrap_or_default();
            let ring_role = engine
                .rings
                .iter()
                .find(|r| look.lags.iter().any(|l| l.ring == r.name && l.rank == rank))
                .map(|r| r.role.name())
                .unwrap_or("rpc");
            let detail = format!(
                "has not read {ring_role} chunk {chunk}{method} for {:.0} s; the other ranks have",
                secs(age)
            );
            f.rank(rank, ReasonCode::RingUnread, detail, since);
        }
        for a in &look.all {
            let Some(&(_, since)) = self.unread_by_all.get(&a.ring) else {
                continue;
            };
            let age = now - since;
            if age >= eff.suspect_ms {
                let method = a.method.as_deref().unwrap_or("an RPC");
                let detail = format!(
                    "{method} in chunk {} unread by every rank for {:.0} s",
                    a.chunk,
                    secs(age)
                );
                f.engine(ReasonCode::UnreadByAll, detail, since);
            }
        }
    }
}

impl super::Signal for RingSignal {
    fn observe(&mut self, b: &mut super::Board<'_>) {
        b.rings = RingSignal::observe(self, b.engine, b.now, b.adapt, b.confirm_before);
    }

    fn reasons(&self, s: &super::Seen<'_>, f: &mut Findings) {
        RingSignal::reasons(self, &s.rings, s.engine, s.eff, s.now, f);
    }
}
