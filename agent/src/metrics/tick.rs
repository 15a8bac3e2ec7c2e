//! What one tick sets: per engine its identity, state, ranks, activity and deadline,
//! and each collector's health. Per-engine gauges are cleared and set afresh, so a
//! vanished engine leaves no stale series.

use super::*;
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
        self.engines.set(engines.len() as i64);
        self.engine_info.clear();
        self.engine_state.clear();
        self.rank_lag.clear();
        self.rank_suspect.clear();
        self.rank_activity.clear();
        self.rank_cpu.clear();
        self.step_age.clear();
        self.long_step.clear();
        self.deadline.clear();
        self.vllm_running.clear();
        self.config_finding.clear();
        for e in engines {
            self.observe_engine(e, lint(&e.id));
        }
        for v in verdicts.iter().filter(|v| v.state != EngineState::Dead) {
            self.observe_verdict(v);
        }
        self.agent.observe(reports, tick_seconds, at_ms);
    }

    /// An engine's identity, its ranks' CPU time, vLLM's own count of running requests
    /// and its configuration findings.
    fn observe_engine(&self, e: &EngineFacts, lint: &[Finding]) {
        if let Some(r) = e.vllm_metrics.as_ref().and_then(|m| m.running) {
            self.vllm_running
                .get_or_create(&EngineL {
                    engine: e.id.clone(),
                })
                .set(r);
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
        for r in &e.ranks {
            let l = RankL {
                engine: e.id.clone(),
                rank: r.rank.to_string(),
            };
            self.rank_cpu.get_or_create(&l).set(r.process.cpu_seconds);
        }
        self.engine_info
            .get_or_create(&InfoL {
                engine: e.id.clone(),
                model: e.model.clone().unwrap_or_default(),
                tp: e.tp.to_string(),
                pp: e.pp.to_string(),
                dp: e.dp.to_string(),
                api_pid: e.api_pid.map(|p| p.to_string()).unwrap_or_default(),
                core_pid: e.core.pid.to_string(),
                namespace: pod_field(e, |p| &p.namespace),
                pod: pod_field(e, |p| &p.pod),
                container: pod_field(e, |p| &p.container),
            })
            .set(1);
    }

    /// A live engine's state, its ranks' lags and suspicion, what they do, its deadline.
    fn observe_verdict(&self, v: &Verdict) {
        for s in EngineState::ALL {
            self.engine_state
                .get_or_create(&StateL {
                    engine: v.engine.clone(),
                    state: s.as_str().to_string(),
                })
                .set(i64::from(s == v.state));
        }
        for (rank, lag) in &v.rank_lag_seconds {
            let l = RankL {
                engine: v.engine.clone(),
                rank: rank.to_string(),
            };
            self.rank_lag.get_or_create(&l).set(*lag);
            let named = v.suspects.iter().any(|s| s.rank == *rank);
            self.rank_suspect.get_or_create(&l).set(i64::from(named));
        }
        self.observe_activity(v);
        if let Some(d) = v.deadline_left_seconds {
            self.deadline
                .get_or_create(&EngineL {
                    engine: v.engine.clone(),
                })
                .set(d);
        }
    }

    fn observe_activity(&self, v: &Verdict) {
        let e = EngineL {
            engine: v.engine.clone(),
        };
        self.step_age
            .get_or_create(&e)
            .set(v.step_age_seconds.unwrap_or(0.0));
        self.long_step.get_or_create(&e).set(i64::from(v.long_step));
        for a in &v.rank_activity {
            for d in Doing::ALL {
                self.rank_activity
                    .get_or_create(&ActivityL {
                        engine: v.engine.clone(),
                        rank: a.rank.to_string(),
                        activity: d.as_str().to_string(),
                    })
                    .set(i64::from(d == a.doing));
            }
        }
    }
}
