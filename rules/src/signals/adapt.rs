//! Adaptation: an engine's own history of long steps raises its thresholds, so a step
//! as long as one it already recovered from by itself is not an incident.

use crate::thresholds::{Effective, Thresholds};
use crate::time::Millis;

/// Lags shorter than this are ordinary step latency and teach adaptation nothing.
const MIN_RECOVERED_MS: Millis = 1_000;

/// How long after an engine first served its steps still count as warm-up (first
/// requests compile kernels, capture graphs, fill caches) and teach adaptation nothing.
pub const WARMUP_MS: Millis = 60_000;

#[derive(Debug, Default)]
pub struct Adaptation {
    /// Lags this engine recovered from: (when, how long).
    recovered: Vec<(Millis, Millis)>,
    /// Off during start-up and warm-up: those lags say nothing about later steps.
    learning: bool,
}

impl Adaptation {
    /// The thresholds in force, after the lags remembered so far.
    pub fn effective(&self, t: &Thresholds) -> Effective {
        t.effective(self.recovered.iter().map(|(_, d)| *d).max().unwrap_or(0))
    }

    /// Learns from a lag that ended on its own before it was confirmed as a stall (a
    /// long step); a confirmed stall that recovered must not make the judge slower.
    pub fn recovered(&mut self, now: Millis, lag: Millis, confirm_ms: Millis) {
        if self.learning && (MIN_RECOVERED_MS..confirm_ms).contains(&lag) {
            self.recovered.push((now, lag));
        }
    }

    pub fn set_learning(&mut self, on: bool) {
        self.learning = on;
    }

    /// Whether a quiet stretch this long is worth learning from at all.
    pub fn worth_learning(lag: Millis) -> bool {
        lag > MIN_RECOVERED_MS
    }

    pub fn forget_before(&mut self, now: Millis, memory_ms: Millis) {
        self.recovered.retain(|(at, _)| now - at <= memory_ms);
    }
}
