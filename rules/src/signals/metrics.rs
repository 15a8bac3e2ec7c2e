//! vLLM's own `/metrics`: requests running while the progress counters stay flat means
//! work is outstanding and nothing moves; counters that change are progress.

use super::adapt::Adaptation;
use super::Findings;
use crate::facts::EngineFacts;
use crate::thresholds::Effective;
use crate::time::{secs, Millis};
use crate::verdict::ReasonCode;

use crate::vllm_metrics::Progress as Counters;

#[derive(Debug, Default)]
pub struct MetricsSignal {
    counters: Option<Counters>,
    changed_ms: Millis,
    /// (since, requests running) while the counters are flat with requests running.
    flat: Option<(Millis, f64)>,
}

impl MetricsSignal {
    /// Returns whether the counters moved since the last scrape.
    pub fn observe(
        &mut self,
        engine: &EngineFacts,
        now: Millis,
        adapt: &mut Adaptation,
        confirm_ms: Millis,
    ) -> bool {
        let Some(m) = &engine.vllm_metrics else {
            return false;
        };
        let mut moved = false;
        let counters = m.progress();
        let running = m.running.unwrap_or(0.0);
        if self.counters != Some(counters) {
            if self.counters.is_some() {
                moved = true;
                if let Some((since, _)) = self.flat.take() {
                    adapt.recovered(now, now - since, confirm_ms);
                }
            }
            self.counters = Some(counters);
            self.changed_ms = now;
        } else if running > 0.0 {
            self.flat = Some((self.changed_ms, running));
        }
        if running <= 0.0 {
            self.flat = None;
        }
        moved
    }

    pub fn reasons(&self, eff: Effective, now: Millis, f: &mut Findings) {
        if let Some((since, running)) = self.flat {
            if now - since >= eff.suspect_ms {
                let detail = format!(
                    "vLLM's /metrics: {running:.0} requests running, token counters flat for {:.0} s",
                    secs(now - since)
                );
                f.engine(ReasonCode::MetricsNoProgress, detail, since);
            }
        }
    }
}

impl super::Signal for MetricsSignal {
    fn observe(&mut self, b: &mut super::Board<'_>) {
        b.metrics_moved = MetricsSignal::observe(self, b.engine, b.now, b.adapt, b.confirm_before);
    }

    fn reasons(&self, s: &super::Seen<'_>, f: &mut Findings) {
        MetricsSignal::reasons(self, s.eff, s.now, f);
    }
}
