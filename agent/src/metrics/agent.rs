//! The agent's own family: each collector's health and duration, bundle writes and
//! errors, evidence threads replaced, and the tick's duration and time.

use super::labels::CollectorL;
use hangwatch_rules::CollectorReport;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type FGauge = Gauge<f64, AtomicU64>;

#[derive(Default)]
pub struct AgentMetrics {
    collector_up: Family<CollectorL, Gauge>,
    collector_duration: Family<CollectorL, FGauge>,
    bundle_errors: Counter,
    evidence_restarts: Counter,
    bundles_written: Counter,
    tick_duration: FGauge,
    last_tick: FGauge,
}

impl AgentMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "hangwatch_collector_up",
            "1 if the collector's last run succeeded",
            self.collector_up.clone(),
        );
        r.register(
            "hangwatch_collector_duration_seconds",
            "Duration of the collector's last run",
            self.collector_duration.clone(),
        );
        r.register(
            "hangwatch_bundle_errors",
            "Bundles that could not be written completely",
            self.bundle_errors.clone(),
        );
        r.register(
            "hangwatch_evidence_worker_restarts",
            "Evidence threads (stacks, NCCL RAS) replaced because they stopped answering",
            self.evidence_restarts.clone(),
        );
        r.register(
            "hangwatch_bundles_written",
            "Bundle writes (first write and updates)",
            self.bundles_written.clone(),
        );
        r.register(
            "hangwatch_tick_duration_seconds",
            "Duration of the agent's last tick (collect and judge)",
            self.tick_duration.clone(),
        );
        r.register(
            "hangwatch_last_tick_timestamp_seconds",
            "Unix time of the agent's last tick",
            self.last_tick.clone(),
        );
    }

    /// This tick's collector reports, its duration and time.
    pub fn observe(&self, reports: &[CollectorReport], tick_seconds: f64, at_ms: i64) {
        for r in reports {
            let l = CollectorL {
                collector: r.name.clone(),
            };
            self.collector_up.get_or_create(&l).set(i64::from(r.up));
            self.collector_duration
                .get_or_create(&l)
                .set(r.duration_seconds);
        }
        self.tick_duration.set(tick_seconds);
        self.last_tick.set(at_ms as f64 / 1000.0);
    }

    pub fn bundle_error(&self) {
        self.bundle_errors.inc();
    }

    pub fn evidence_worker_restarted(&self) {
        self.evidence_restarts.inc();
    }

    pub fn bundle_written(&self) {
        self.bundles_written.inc();
    }
}
