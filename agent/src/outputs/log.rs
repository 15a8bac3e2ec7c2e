//! The agent's own log: engines coming and going, their configuration findings, what
//! vLLM said, GPU classes, state changes and incident events — each said once, when it
//! happens.

use super::{Output, TickView};
use hangwatch_rules::gpu::GpuClass;
use hangwatch_rules::incident::IncidentEvent;
use hangwatch_rules::logs::LogEventKind;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Default)]
pub struct LogOutput {
    gpu_classes: BTreeMap<u32, GpuClass>,
    /// Engines whose current step was already said to be a long step.
    long_said: BTreeSet<String>,
}

impl Output for LogOutput {
    fn emit(&mut self, view: &TickView<'_>) {
        engines(view);
        self.long_said
            .retain(|e| view.ticks.iter().any(|t| &t.verdict.engine == e));
        vllm_says(view);
        self.gpus(view);
        for t in view.ticks {
            let v = &t.verdict;
            if t.state_changed {
                tracing::info!(engine = %v.engine, state = v.state.as_str(), "{}", v.headline());
            }
            if let Some(why) = t.held_back {
                tracing::warn!(engine = %v.engine, "engine {} stalled, no incident opened: {why}", v.engine);
            }
            match &v.busy_because {
                Some(why) if self.long_said.insert(v.engine.clone()) => {
                    tracing::info!(engine = %v.engine, step_age_s = v.step_age_seconds.unwrap_or(0.0), "engine {} busy: {why}", v.engine);
                }
                None if !v.long_step => {
                    self.long_said.remove(&v.engine);
                }
                _ => {}
            }
            for ev in &t.events {
                let inc = ev.incident();
                let line = format!("incident {} {}: {}", inc.id, ev.kind(), v.headline());
                match ev {
                    IncidentEvent::Opened(_) => {
                        tracing::warn!(engine = %inc.engine, incident = %inc.id, detected_after_s = inc.detected_after_seconds(), "{line}")
                    }
                    IncidentEvent::Escalated(_) => {
                        tracing::warn!(engine = %inc.engine, incident = %inc.id, "{line}")
                    }
                    IncidentEvent::Resolved(_) | IncidentEvent::Ended(_) => {
                        tracing::info!(engine = %inc.engine, incident = %inc.id, "{line}")
                    }
                }
            }
        }
    }
}

fn engines(view: &TickView<'_>) {
    for id in &view.arrivals.appeared {
        let Some(e) = view.snap.engines.iter().find(|e| &e.id == id) else {
            continue;
        };
        tracing::info!(
            engine = %e.id,
            tp = e.tp,
            pp = e.pp,
            dp = e.dp,
            core_pid = e.core.pid,
            ranks = e.ranks.len(),
            rings = e.rings.len(),
            execute_timeout_s = e.execute_timeout_seconds,
            "engine appeared"
        );
        for f in view.records.lint(id) {
            tracing::warn!(engine = %e.id, code = %f.code, severity = %f.severity, "config: {}", f.message);
        }
    }
    for id in &view.arrivals.gone {
        tracing::info!(engine = %id, "engine gone");
    }
}

fn vllm_says(view: &TickView<'_>) {
    for (id, ev) in view.snap.log_events() {
        if !matches!(ev.kind, LogEventKind::Stats { .. }) {
            tracing::info!(engine = %id, kind = ev.kind.name(), "vLLM says: {}", ev.line);
        }
    }
    for x in &view.snap.xids {
        tracing::warn!(gpu = x.gpu, xid = x.xid, "GPU Xid error");
    }
}

impl LogOutput {
    fn gpus(&mut self, view: &TickView<'_>) {
        for (idx, v) in view.decided.gpu_verdicts() {
            if self.gpu_classes.get(idx) == Some(&v.class) {
                continue;
            }
            let g = view.snap.gpus.iter().find(|g| g.index == *idx);
            tracing::info!(
                gpu = idx,
                class = v.class.as_str(),
                utilization = g.and_then(|g| g.utilization),
                power_w = g.and_then(|g| g.power_w),
                idle_power_w = v.idle_power_w,
                processes = ?g.map(|g| g.processes.iter().map(|p| (p.pid, p.utilization)).collect::<Vec<_>>()),
                "GPU {idx} is {}", v.class.as_str()
            );
            self.gpu_classes.insert(*idx, v.class);
        }
    }
}
