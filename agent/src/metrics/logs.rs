//! The logs family: what was read from vLLM's logs — events by engine and kind, lines
//! per source, lines cut. A source or an engine let go of takes its series along.

use super::labels::{KindL, SourceL};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Default)]
pub struct LogMetrics {
    events: Family<KindL, Counter>,
    lines: Family<SourceL, Counter>,
    cut_lines: Counter,
}

impl LogMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "hangwatch_log_events",
            "Events read from vLLM's logs, by kind",
            self.events.clone(),
        );
        r.register(
            "hangwatch_log_lines",
            "Lines read per log source",
            self.lines.clone(),
        );
        r.register(
            "hangwatch_log_cut_lines",
            "Log lines longer than logs.max_line_bytes, cut",
            self.cut_lines.clone(),
        );
    }

    pub fn event(&self, engine: &str, kind: &str) {
        self.events
            .get_or_create(&KindL {
                engine: engine.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn lines(&self, source: &str, n: u64) {
        self.lines
            .get_or_create(&SourceL {
                source: source.to_string(),
            })
            .inc_by(n);
    }

    pub fn cut_lines(&self, n: u64) {
        self.cut_lines.inc_by(n);
    }

    pub fn forget_source(&self, source: &str) {
        self.lines.remove(&SourceL {
            source: source.to_string(),
        });
    }

    pub fn forget_engine(&self, engine: &str) {
        for kind in hangwatch_rules::logs::LogEventKind::NAMES {
            self.events.remove(&KindL {
                engine: engine.to_string(),
                kind: kind.to_string(),
            });
        }
    }
}
