//! What one tick sets: each family gets its part of the tick's facts and verdicts.

use super::Metrics;
use hangwatch_rules::lint::Finding;
use hangwatch_rules::{CollectorReport, EngineFacts, EngineState, Verdict};

impl Metrics {
    pub fn observe_tick<'c>(
        &self,
        at_ms: i64,
        engines: &[EngineFacts],
        verdicts: &[Verdict],
        reports: &[CollectorReport],
        lint: &dyn Fn(&str) -> &'c [Finding],
        tick_seconds: f64,
    ) {
        self.engine.clear(engines.len());
        self.rank.clear();
        for e in engines {
            self.engine.observe_engine(e, lint(&e.id));
            self.rank.observe_engine(e);
        }
        for v in verdicts.iter().filter(|v| v.state != EngineState::Dead) {
            self.engine.observe_verdict(v);
            self.rank.observe_verdict(v);
        }
        self.agent.observe(reports, tick_seconds, at_ms);
    }
}
