//! The API server's event loop: a front end that stops answering while requests are in
//! flight is named; one that is merely slow is not. Three looks must agree, and only
//! while its own `/metrics` goes unanswered (the probe is corroboration, never alone):
//! its main thread stands on the same frame, not a wait, in two rounds at least
//! `PERSIST_MS` apart; it uses no CPU (a front end tokenising a 1 MB prompt or a burst
//! of requests burns CPU and its stack moves); and the engine had work when the silence
//! began. A stopped or exited API server is the roles signal's.

use super::roles::queued;
use super::stacks::PERSIST_MS;
use super::{Board, Findings, Seen, Signal};
use crate::facts::Role;
use crate::stacks::{at_a_wait, unchanged, StackDump};
use crate::time::{secs, Millis};
use crate::verdict::ReasonCode;
use std::collections::VecDeque;

/// CPU use below this many cores is no work (a blocked loop uses none at all).
const IDLE_CORES: f64 = 0.05;
/// The window CPU use is judged over.
const CPU_WINDOW_MS: Millis = 2_000;
const DUMPS_KEPT: usize = 6;

#[derive(Debug, Default)]
pub struct FrontEndSignal {
    pid: u32,
    /// Since when `/metrics` has gone unanswered, and whether the engine had work then.
    silent: Option<(Millis, bool)>,
    /// The engine had work at the previous look.
    busy: bool,
    cpu: VecDeque<(Millis, f64)>,
    /// Whole dumps of its main thread while silent, oldest first.
    dumps: Vec<StackDump>,
}

impl Signal for FrontEndSignal {
    fn observe(&mut self, b: &mut Board<'_>) {
        let e = b.engine;
        let Some(api) = &e.api else {
            *self = FrontEndSignal::default();
            return;
        };
        if api.pid != self.pid {
            *self = FrontEndSignal {
                pid: api.pid,
                ..FrontEndSignal::default()
            };
        }
        let busy_before = self.busy;
        self.busy = !b.look.idle || queued(e).is_some_and(|q| q > 0.0);
        match e.api_answered {
            Some(false) => {
                self.silent.get_or_insert((b.now, busy_before || self.busy));
            }
            Some(true) => {
                self.silent = None;
                self.dumps.clear();
            }
            None => {}
        }
        self.cpu.push_back((b.now, api.cpu_seconds));
        while self.cpu.len() > 2
            && self
                .cpu
                .get(1)
                .is_some_and(|(t, _)| b.now - t >= CPU_WINDOW_MS)
        {
            self.cpu.pop_front();
        }
        if self.silent.is_some() {
            let fresh = e.stacks.iter().filter(|d| d.pid == api.pid && d.complete());
            self.dumps.extend(fresh.cloned());
            if self.dumps.len() > DUMPS_KEPT {
                self.dumps.remove(0);
            }
        }
    }

    fn reasons(&self, s: &Seen<'_>, f: &mut Findings) {
        let Some((since, had_work)) = self.silent else {
            return;
        };
        let Some(api) = &s.engine.api else { return };
        if !had_work
            || api.state.is_halted()
            || s.now - since < s.base.suspect_ms
            || !self.idle_cpu()
        {
            return;
        }
        let Some((frame, held)) = self.stuck() else {
            return;
        };
        let detail = format!(
            "its event loop stands in {frame} for {:.0} s using no CPU; its /metrics unanswered for {:.0} s",
            secs(held),
            secs(s.now - since)
        );
        f.process(
            (Role::ApiServer, api.pid),
            ReasonCode::StackStuck,
            detail,
            since,
            true,
        );
    }
}

impl FrontEndSignal {
    /// Its CPU use over the window, in cores, is below `IDLE_CORES`.
    fn idle_cpu(&self) -> bool {
        match (self.cpu.front(), self.cpu.back()) {
            (Some((t0, c0)), Some((t1, c1))) if t1 - t0 >= CPU_WINDOW_MS / 2 => {
                (c1 - c0) / secs(t1 - t0) < IDLE_CORES
            }
            _ => false,
        }
    }

    /// The innermost frames of a main thread that stood still, not at a wait, and for how
    /// long.
    fn stuck(&self) -> Option<(String, Millis)> {
        let last = self.dumps.last()?;
        let first = self
            .dumps
            .iter()
            .find(|d| last.taken_at_ms - d.taken_at_ms >= PERSIST_MS)?;
        let t = last.main_thread()?;
        if !unchanged(first, last) || at_a_wait(t) {
            return None;
        }
        let top: Vec<String> = t.frames.iter().take(2).map(|f| f.place()).collect();
        Some((top.join(" ← "), last.taken_at_ms - first.taken_at_ms))
    }
}
