//! The Prometheus exporter's families, updated once per tick.
//!
//! Per-engine gauges are cleared and set afresh each tick under one lock that the
//! scrape also takes, so a vanished engine leaves no stale series and a scrape never
//! sees half a tick.

pub mod actions;
pub mod agent;
pub mod engine;
pub mod gpu;
mod labels;
pub mod logs;
pub mod notify;
pub mod rank;
mod tick;

pub use labels::*;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type FGauge = Gauge<f64, AtomicU64>;

/// hangwatch's own series, one family per subject; each family registers and updates
/// its own series (`tick.rs` hands each its part of the tick).
pub struct Metrics {
    registry: Registry,
    pub engine: engine::EngineMetrics,
    pub rank: rank::RankMetrics,
    pub agent: agent::AgentMetrics,
    pub logs: logs::LogMetrics,
    pub gpu: gpu::GpuMetrics,
    pub notify: notify::NotifyMetrics,
    pub actions: actions::ActionMetrics,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            engine: engine::EngineMetrics::default(),
            rank: rank::RankMetrics::default(),
            agent: agent::AgentMetrics::default(),
            logs: logs::LogMetrics::default(),
            gpu: gpu::GpuMetrics::default(),
            notify: notify::NotifyMetrics::default(),
            actions: actions::ActionMetrics::default(),
            registry: Registry::default(),
        };
        m.notify.register(&mut r);
        m.actions.register(&mut r);
        m.agent.register(&mut r);
        m.logs.register(&mut r);
        m.gpu.register(&mut r);
        m.engine.register(&mut r);
        m.rank.register(&mut r);
        let build: Family<VersionL, Gauge> = Family::default();
        build
            .get_or_create(&VersionL {
                version: crate::version::VERSION.to_string(),
                commit: crate::version::COMMIT.to_string(),
            })
            .set(1);
        r.register(
            "hangwatch_build_info",
            "hangwatch's version and the commit it was built from (value 1)",
            build,
        );
        Metrics { registry: r, ..m }
    }

    /// An engine gone for the history window leaves no series behind.
    pub fn forget_engine(&self, engine: &str) {
        self.engine.forget(engine);
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

#[cfg(test)]
mod tests {
    use super::*;
    use hangwatch_rules::{EngineFacts, ProcFacts, ProcState};

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
