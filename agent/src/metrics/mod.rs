//! The Prometheus exporter's families, updated once per tick.
//!
//! Per-engine gauges are cleared and set afresh each tick under one lock that the
//! scrape also takes, so a vanished engine leaves no stale series and a scrape never
//! sees half a tick.

pub mod agent;
pub mod gpu;
mod labels;
pub mod logs;
pub mod notify;
mod tick;

pub use labels::*;

use hangwatch_rules::signals::activity::Doing;
use hangwatch_rules::EngineFacts;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type FGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    engines: Gauge,
    engine_info: Family<InfoL, Gauge>,
    engine_state: Family<StateL, Gauge>,
    rank_lag: Family<RankL, FGauge>,
    rank_suspect: Family<RankL, Gauge>,
    rank_activity: Family<ActivityL, Gauge>,
    rank_cpu: Family<RankL, FGauge>,
    step_age: Family<EngineL, FGauge>,
    long_step: Family<EngineL, Gauge>,
    deadline: Family<EngineL, FGauge>,
    incidents: Family<EngineL, Counter>,
    incident_open: Family<EngineL, Gauge>,
    vllm_running: Family<EngineL, FGauge>,
    config_finding: Family<FindingL, Gauge>,
    pub agent: agent::AgentMetrics,
    pub logs: logs::LogMetrics,
    pub gpu: gpu::GpuMetrics,
    pub notify: notify::NotifyMetrics,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            engines: Gauge::default(),
            engine_info: Family::default(),
            engine_state: Family::default(),
            rank_lag: Family::default(),
            rank_suspect: Family::default(),
            rank_activity: Family::default(),
            rank_cpu: Family::default(),
            step_age: Family::default(),
            long_step: Family::default(),
            deadline: Family::default(),
            incidents: Family::default(),
            incident_open: Family::default(),
            vllm_running: Family::default(),
            config_finding: Family::default(),
            agent: agent::AgentMetrics::default(),
            logs: logs::LogMetrics::default(),
            gpu: gpu::GpuMetrics::default(),
            notify: notify::NotifyMetrics::default(),
            registry: Registry::default(),
        };
        m.notify.register(&mut r);
        m.agent.register(&mut r);
        m.logs.register(&mut r);
        m.gpu.register(&mut r);
        m.register_engines(&mut r);
        m.register_sources(&mut r);
        let build: Family<VersionL, Gauge> = Family::default();
        build
            .get_or_create(&VersionL {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        r.register(
            "hangwatch_build_info",
            "hangwatch's version (value 1)",
            build,
        );
        Metrics { registry: r, ..m }
    }

    /// Engines, ranks, verdicts and incidents.
    fn register_engines(&self, r: &mut Registry) {
        r.register(
            "hangwatch_engines",
            "vLLM engines seen on this node",
            self.engines.clone(),
        );
        r.register(
            "hangwatch_engine_info",
            "An engine's identity (value 1)",
            self.engine_info.clone(),
        );
        r.register(
            "hangwatch_engine_state",
            "1 for the engine's current state (starting, idle, busy, stalled, dead)",
            self.engine_state.clone(),
        );
        r.register(
            "hangwatch_rank_lag_seconds",
            "How long a rank has been behind the others (0 when it is not)",
            self.rank_lag.clone(),
        );
        r.register(
            "hangwatch_rank_suspect",
            "1 while the judge names this rank as the cause of a stall",
            self.rank_suspect.clone(),
        );
        r.register(
            "hangwatch_rank_activity",
            "1 for what the rank is doing while a step is late (computing, compiling, collective, waiting_for_rpc, waiting_on_gpu, blocked, stopped, unknown)",
            self.rank_activity.clone(),
        );
        r.register(
            "hangwatch_rank_cpu_seconds",
            "CPU seconds (user + system) the rank's process has used",
            self.rank_cpu.clone(),
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
    }

    /// What the collectors read: GPUs, logs, vLLM's own metrics, configuration findings.
    fn register_sources(&self, r: &mut Registry) {
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

    pub fn incident_opened(&self, engine: &str) {
        let l = EngineL {
            engine: engine.to_string(),
        };
        self.incidents.get_or_create(&l).inc();
        self.incident_open.get_or_create(&l).set(1);
    }

    pub fn incident_closed(&self, engine: &str) {
        self.incident_open
            .get_or_create(&EngineL {
                engine: engine.to_string(),
            })
            .set(0);
    }

    /// Makes the counter exist (at 0) for an engine as soon as it is seen, so alerts on
    /// `increase()` work from the first incident.
    pub fn engine_seen(&self, engine: &str) {
        let l = EngineL {
            engine: engine.to_string(),
        };
        let _ = self.incidents.get_or_create(&l);
        let _ = self.incident_open.get_or_create(&l);
    }

    /// An engine gone for the history window leaves no series behind: label sets must
    /// not grow with every engine a node ever ran.
    pub fn forget_engine(&self, engine: &str) {
        let l = EngineL {
            engine: engine.to_string(),
        };
        self.incidents.remove(&l);
        self.incident_open.remove(&l);
        self.logs.forget_engine(engine);
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        if encode(&mut s, &self.registry).is_err() {
            s.clear();
            s.push_str("# encoding failed\n");
        }
        s
    }
}

fn pod_field(
    e: &EngineFacts,
    f: impl Fn(&hangwatch_rules::facts::PodFacts) -> &Option<String>,
) -> String {
    e.pod
        .as_ref()
        .and_then(|p| f(p).clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangwatch_rules::{ProcFacts, ProcState};

    /// One exposition line: `name{label="value",…} number` or `name number`, label
    /// values with only `\\`, `\"` and `\n` escapes — what Prometheus itself accepts.
    fn strict_line(l: &str) -> bool {
        let b = l.as_bytes();
        let mut i = 0;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
            i += 1;
        }
        if i == 0 {
            return false;
        }
        if b.get(i) == Some(&b'{') {
            i += 1;
            loop {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                if i == start || b.get(i) != Some(&b'=') || b.get(i + 1) != Some(&b'"') {
                    return false;
                }
                i += 2;
                loop {
                    match b.get(i) {
                        None | Some(b'\n') => return false,
                        Some(b'\\') => match b.get(i + 1) {
                            Some(b'\\') | Some(b'"') | Some(b'n') => i += 2,
                            _ => return false,
                        },
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                match b.get(i) {
                    Some(b',') => i += 1,
                    Some(b'}') => {
                        i += 1;
                        break;
                    }
                    _ => return false,
                }
            }
        }
        l.get(i..)
            .and_then(|r| r.strip_prefix(' '))
            .is_some_and(|v| {
                v.split(' ')
                    .next()
                    .is_some_and(|n| n.parse::<f64>().is_ok())
            })
    }

    /// A served model name is whatever the operator (or a look-alike process) put on a
    /// command line: quotes, backslashes and newlines must not break the exposition or
    /// inject a series.
    #[test]
    fn hostile_label_values_keep_the_exposition_valid() {
        let m = Metrics::new();
        let core = ProcFacts {
            pid: 1,
            ns_pid: None,
            state: ProcState::Sleeping,
            wchan: None,
            cpu_seconds: 0.0,
            started_at_ms: 0,
        };
        let hostile = "m\"} 1\nhangwatch_injected 1\n\\";
        let mut e: EngineFacts = serde_json::from_value(serde_json::json!({
            "id": "vllm-1", "model": hostile, "port": 1, "api_pid": 2,
            "core": core, "tp": 1, "pp": 1, "dp": 1, "dp_rank": 0, "output_rank": 0,
            "execute_timeout_seconds": 300.0, "ranks": []
        }))
        .expect("facts");
        e.id = format!("vllm-\"{hostile}");
        m.observe_tick(0, &[e], &[], &[], &|_| &[], 0.0);
        let text = m.render();
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(strict_line(l), "not a valid exposition line: {l:?}\n{text}");
        }
        assert!(
            !text.lines().any(|l| l.starts_with("hangwatch_injected")),
            "{text}"
        );
        assert!(text.contains("hangwatch_engine_info{"), "{text}");
    }
}
