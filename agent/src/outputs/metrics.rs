//! The Prometheus output: every tick's engines, verdicts, incidents, collectors, GPUs
//! and log reading into the registry that `/metrics` renders.

use super::{Output, TickView};
use crate::shared::Shared;
use hangwatch_rules::incident::IncidentEvent;
use std::sync::Arc;

pub struct MetricsOutput {
    pub shared: Arc<Shared>,
}

impl Output for MetricsOutput {
    fn emit(&mut self, view: &TickView<'_>) {
        let m = &self.shared.metrics;
        let _guard = self.shared.lock.lock().unwrap_or_else(|p| p.into_inner());
        for id in &view.arrivals.appeared {
            m.engine.seen(id);
        }
        for id in &view.arrivals.expired {
            m.forget_engine(id);
        }
        for (source, n) in &view.snap.log_lines {
            m.logs.lines(source, *n);
        }
        for source in &view.snap.forgotten_log_sources {
            m.logs.forget_source(source);
        }
        m.logs.cut_lines(view.snap.log_cut_lines);
        for (id, ev) in view.snap.log_events() {
            m.logs.event(id, ev.kind.name());
        }
        for x in &view.snap.xids {
            m.gpu.xid(x.gpu, x.xid);
        }
        for ev in view.ticks.iter().flat_map(|t| t.events.iter()) {
            match ev {
                IncidentEvent::Opened(i) => m.engine.incident_opened(&i.engine),
                IncidentEvent::Resolved(i) | IncidentEvent::Ended(i) => {
                    m.engine.incident_closed(&i.engine)
                }
                IncidentEvent::Escalated(_) => {}
            }
        }
        let verdicts: Vec<_> = view.ticks.iter().map(|t| t.verdict.clone()).collect();
        m.observe_tick(
            view.now,
            &view.snap.engines,
            &verdicts,
            &view.snap.collectors,
            &|id: &str| view.records.lint(id),
            view.tick_seconds,
        );
        m.gpu.observe(&view.snap.gpus, view.decided.gpu_verdicts());
    }
}
