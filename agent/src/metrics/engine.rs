//! The engine family: which engines the node runs, each one's state, step age, long
//! step, deadline, incidents, vLLM's own count of running requests and its
//! configuration findings. The per-tick gauges are cleared and set afresh; the
//! incident counters live until the engine is forgotten.

use super::labels::{EngineL, FindingL, InfoL, StateL};
use super::FGauge;
use hangwatch_rules::lint::Finding;
use hangwatch_rules::ReasonCode;
use hangwatch_rules::{EngineFacts, EngineState, Verdict};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Default)]
pub struct EngineMetrics {
    engines: Gauge,
    info: Family<InfoL, Gauge>,
    state: Family<StateL, Gauge>,
    step_age: Family<EngineL, FGauge>,
    long_step: Family<EngineL, Gauge>,
    orphaned: Family<EngineL, Gauge>,
    ready: Family<EngineL, Gauge>,
    deadline: Family<EngineL, FGauge>,
    incidents: Family<EngineL, Counter>,
    incident_open: Family<EngineL, Gauge>,
    vllm_running: Family<EngineL, FGauge>,
    config_finding: Family<FindingL, Gauge>,
}

impl EngineMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "hangwatch_engines",
            "vLLM engines seen on this node",
            self.engines.clone(),
        );
        r.register(
            "hangwatch_engine_info",
            "An engine's identity (value 1)",
            self.info.clone(),
        );
        r.register(
            "hangwatch_engine_state",
            "1 for the engine's current state (starting, idle, busy, stalled, dead)",
            self.state.clone(),
        );
        r.register(
            "hangwatch_engine_step_age_seconds",
            "How long the engine's current step has gone without progress (0 when steps complete)",
            self.step_age.clone(),
        );
        r.register(
            "hangwatch_engine_long_step",
            "1 while a late step is a long step: every rank at work, not a stall",
            self.long_step.clone(),
        );
        r.register(
            "hangwatch_engine_ready",
            "1 while the engine is idle or busy (a balancer may send it requests), 0 while starting, stalled or dead",
            self.ready.clone(),
        );
        r.register(
            "hangwatch_engine_orphaned",
            "1 while a follower node's part has lost every connection to its deployment (its leader is gone)",
            self.orphaned.clone(),
        );
        r.register(
            "hangwatch_engine_deadline_seconds",
            "Seconds left before vLLM's own execute timeout kills a stalled engine",
            self.deadline.clone(),
        );
        r.register(
            "hangwatch_incidents",
            "Incidents opened",
            self.incidents.clone(),
        );
        r.register(
            "hangwatch_incident_open",
            "1 while an incident is open for the engine",
            self.incident_open.clone(),
        );
        r.register(
            "hangwatch_vllm_requests_running",
            "Requests running, from vLLM's own /metrics",
            self.vllm_running.clone(),
        );
        r.register(
            "hangwatch_config_finding",
            "1 for each finding of the engine's configuration lint",
            self.config_finding.clone(),
        );
    }

    /// Starts a tick: the per-tick gauges hold only what this tick sets.
    pub fn clear(&self, engines: usize) {
        self.engines.set(engines as i64);
        self.info.clear();
        self.state.clear();
        self.step_age.clear();
        self.long_step.clear();
        self.orphaned.clear();
        self.ready.clear();
        self.deadline.clear();
        self.vllm_running.clear();
        self.config_finding.clear();
    }

    /// An engine's identity, vLLM's own count of running requests and its
    /// configuration findings.
    pub fn observe_engine(&self, e: &EngineFacts, lint: &[Finding]) {
        if let Some(r) = e.vllm_metrics.as_ref().and_then(|m| m.running) {
            self.vllm_running.get_or_create(&engine_l(&e.id)).set(r);
        }
        for f in lint {
            self.config_finding
                .get_or_create(&FindingL {
                    engine: e.id.clone(),
                    code: f.code.clone(),
                    severity: f.severity.clone(),
                })
                .set(1);
        }
        self.info.get_or_create(&InfoL::of(e)).set(1);
    }

    /// A live engine's state, step age, long step and deadline.
    pub fn observe_verdict(&self, v: &Verdict) {
        for s in EngineState::ALL {
            self.state
                .get_or_create(&StateL {
                    engine: v.engine.clone(),
                    state: s.as_str().to_string(),
                })
                .set(i64::from(s == v.state));
        }
        let e = engine_l(&v.engine);
        self.step_age
            .get_or_create(&e)
            .set(v.step_age_seconds.unwrap_or(0.0));
        self.long_step.get_or_create(&e).set(i64::from(v.long_step));
        let orphaned = v
            .engine_reasons
            .iter()
            .any(|r| r.code == ReasonCode::Orphaned);
        self.orphaned.get_or_create(&e).set(i64::from(orphaned));
        let ready = crate::ready::is_ready(v);
        self.ready.get_or_create(&e).set(i64::from(ready));
        if let Some(d) = v.deadline_left_seconds {
            self.deadline.get_or_create(&e).set(d);
        }
    }

    pub fn incident_opened(&self, engine: &str) {
        let l = engine_l(engine);
        self.incidents.get_or_create(&l).inc();
        self.incident_open.get_or_create(&l).set(1);
    }

    pub fn incident_closed(&self, engine: &str) {
        self.incident_open.get_or_create(&engine_l(engine)).set(0);
    }

    /// Makes the counter exist (at 0) for an engine as soon as it is seen, so alerts on
    /// `increase()` work from the first incident.
    pub fn seen(&self, engine: &str) {
        let l = engine_l(engine);
        let _ = self.incidents.get_or_create(&l);
        let _ = self.incident_open.get_or_create(&l);
    }

    /// An engine gone for the history window leaves no series behind: label sets must
    /// not grow with every engine a node ever ran.
    pub fn forget(&self, engine: &str) {
        let l = engine_l(engine);
        self.incidents.remove(&l);
        self.incident_open.remove(&l);
    }
}

fn engine_l(engine: &str) -> EngineL {
    EngineL {
        engine: engine.to_string(),
    }
}
