//! When a lag becomes a suspicion and a suspicion an incident.

use crate::time::Millis;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// Lag after which a rank (or the engine) is suspected.
    pub suspect_after_ms: Millis,
    /// Lag after which a suspicion opens an incident.
    pub confirm_after_ms: Millis,
    /// A new lag must exceed `adapt_factor ×` the longest lag this engine recovered from
    /// recently before it counts: long prefills are not incidents.
    pub adapt_factor: f64,
    /// How long a recovered lag is remembered for adaptation.
    pub adapt_memory_ms: Millis,
    /// An engine whose core is younger than this and that has never been seen idle is
    /// still starting (loading, compiling, warming up) and is not judged.
    pub startup_grace_ms: Millis,
    /// Engine core CPU use (fraction of one core) above which it counts as working.
    pub core_busy_cpu_fraction: f64,
    /// A step with every rank at work longer than this is flagged (`long_step`, a
    /// warning); 0: the smaller of 120 s and 40 % of the engine's execute timeout.
    #[serde(default)]
    pub long_step_limit_ms: Millis,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            suspect_after_ms: 3_000,
            confirm_after_ms: 10_000,
            adapt_factor: 1.5,
            adapt_memory_ms: 30 * 60_000,
            startup_grace_ms: 15 * 60_000,
            core_busy_cpu_fraction: 0.2,
            long_step_limit_ms: 0,
        }
    }
}

/// Thresholds of one engine after adaptation to the lags it recovered from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Effective {
    pub suspect_ms: Millis,
    pub confirm_ms: Millis,
}

impl Thresholds {
    /// The long-step ceiling for an engine with this execute timeout.
    pub fn long_step_limit(&self, execute_timeout_seconds: f64) -> Millis {
        if self.long_step_limit_ms > 0 {
            return self.long_step_limit_ms;
        }
        let share = (execute_timeout_seconds.max(0.0) * 0.4 * 1000.0) as Millis;
        if share > 0 {
            share.min(120_000)
        } else {
            120_000
        }
    }

    pub fn effective(&self, longest_recovered_ms: Millis) -> Effective {
        let adapted = (longest_recovered_ms as f64 * self.adapt_factor) as Millis;
        let suspect_ms = self.suspect_after_ms.max(adapted);
        let gap = (self.confirm_after_ms - self.suspect_after_ms).max(0);
        Effective {
            suspect_ms,
            confirm_ms: self.confirm_after_ms.max(suspect_ms + gap),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapts_upwards_only() {
        let t = Thresholds::default();
        assert_eq!(
            t.effective(0),
            Effective {
                suspect_ms: 3_000,
                confirm_ms: 10_000
            }
        );
        assert_eq!(
            t.effective(8_000),
            Effective {
                suspect_ms: 12_000,
                confirm_ms: 19_000
            }
        );
    }
}
