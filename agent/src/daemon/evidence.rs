//! When to ask for evidence on demand (stack rounds and NCCL RAS): as an engine turns
//! stalled, when its incident opens, a few seconds later to see whether the stacks
//! moved, and on the configured baseline interval. Finished rounds join the tick's
//! snapshot, so they are recorded and judged like every other fact.

use crate::clock::now_ms;
use crate::config::Config;
use crate::context::Context;
use hangwatch_collectors::evidence::{
    spawn_worker, targets_of, EvidenceRequest, EvidenceWorker, RoundReason, StackRound,
};
use hangwatch_rules::incident::IncidentEvent;
use hangwatch_rules::stacks::StackErrorKind;
use hangwatch_rules::watch::{EngineTick, Watch};
use hangwatch_rules::{EngineState, Millis, Snapshot};

pub struct Evidence {
    worker: Option<EvidenceWorker>,
    stacks_on: bool,
    ras_on: bool,
    ras_remote: bool,
    /// (due, engine) of follow-up rounds.
    followups: Vec<(Millis, String)>,
    followup_ms: Millis,
    baseline_ms: Millis,
    last_baseline: Millis,
    denied_said: bool,
}

impl Evidence {
    pub fn new(cfg: &Config) -> anyhow::Result<Evidence> {
        if cfg.stacks.native && !hangwatch_collectors::stacks::NATIVE_SUPPORTED {
            tracing::warn!("stacks.native = true, but this build has no native stacks (cargo feature native-stacks): taking Python stacks only");
        }
        let worker = if cfg.stacks.enabled || cfg.nccl_ras.enabled {
            let w = spawn_worker(
                cfg.stacks.native,
                cfg.stacks.timeout,
                cfg.nccl_ras.timeout,
                now_ms,
            );
            Some(w.map_err(|e| anyhow::anyhow!("starting the evidence thread: {e}"))?)
        } else {
            None
        };
        Ok(Evidence {
            worker,
            stacks_on: cfg.stacks.enabled,
            ras_on: cfg.nccl_ras.enabled,
            ras_remote: cfg.nccl_ras.allow_remote,
            followups: Vec::new(),
            followup_ms: cfg.stacks.followup_after.as_millis() as Millis,
            baseline_ms: cfg.stacks.baseline_interval.as_millis() as Millis,
            last_baseline: 0,
            denied_said: false,
        })
    }

    /// Rounds finished since the last tick: into the snapshot (their engine's stacks and
    /// RAS answer) and the context. Returns the engines that got new stacks.
    pub fn take(&mut self, snap: &mut Snapshot, cx: &mut Context) -> Vec<String> {
        let mut fresh = Vec::new();
        let Some(w) = &self.worker else {
            return fresh;
        };
        let rounds: Vec<StackRound> = w.rounds.try_iter().collect();
        for round in rounds {
            self.say_denied(&round);
            if let Some(e) = snap.engines.iter_mut().find(|e| e.id == round.engine) {
                e.stacks.extend(round.dumps.iter().cloned());
                if let Some(status) = round.ras.as_ref().and_then(|r| r.status.clone()) {
                    e.nccl_ras = Some(status);
                }
            }
            tracing::info!(
                engine = %round.engine,
                reason = round.reason.as_str(),
                processes = round.dumps.len(),
                failed = round.dumps.iter().filter(|d| d.error.is_some()).count(),
                "stacks dumped"
            );
            if !fresh.contains(&round.engine) {
                fresh.push(round.engine.clone());
            }
            cx.add_round(round);
        }
        fresh
    }

    fn say_denied(&mut self, round: &StackRound) {
        let denied: Vec<u32> = round
            .dumps
            .iter()
            .filter(|d| {
                d.error
                    .as_ref()
                    .is_some_and(|e| e.kind == StackErrorKind::Permission)
            })
            .map(|d| d.pid)
            .collect();
        if !denied.is_empty() && !self.denied_said {
            tracing::warn!(
                pids = ?denied,
                "cannot read Python stacks: permission denied; hangwatch needs CAP_SYS_PTRACE (or root) for stacks, and keeps working with the other evidence"
            );
            self.denied_said = true;
        }
    }

    /// Asks for this tick's rounds: engines that turned stalled, incidents that opened,
    /// follow-ups that are due, baselines.
    pub fn plan(&mut self, ticks: &[EngineTick], cx: &Context, watch: &Watch, now: Millis) {
        for t in ticks {
            let v = &t.verdict;
            if t.state_changed && v.state == EngineState::Stalled {
                self.request(cx, &v.engine, RoundReason::Suspect);
            }
            for ev in &t.events {
                if let IncidentEvent::Opened(inc) = ev {
                    self.request(cx, &inc.engine, RoundReason::Confirm);
                    self.followups
                        .push((v.at_ms + self.followup_ms, inc.engine.clone()));
                }
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = self.followups.drain(..).partition(|(t, _)| *t <= now);
        self.followups = later;
        for (_, e) in due {
            if watch.open_incident(&e).is_some() {
                self.request(cx, &e, RoundReason::Followup);
            }
        }
        if self.baseline_ms > 0 && now - self.last_baseline >= self.baseline_ms {
            self.last_baseline = now;
            for e in cx.facts.keys() {
                if watch.open_incident(e).is_none() {
                    self.request(cx, e, RoundReason::Baseline);
                }
            }
        }
    }

    fn request(&self, cx: &Context, engine: &str, reason: RoundReason) {
        let Some(w) = &self.worker else { return };
        let Some(facts) = cx.facts.get(engine) else {
            return;
        };
        let (mut targets, titles) = targets_of(facts);
        if !self.stacks_on {
            targets.clear();
        }
        // RAS only where NCCL can run: a node with GPUs.
        let has_gpus = cx.history.back().is_some_and(|s| !s.gpus.is_empty());
        let ras_addr = (self.ras_on && has_gpus)
            .then(|| {
                facts
                    .settings
                    .get("NCCL_RAS_ADDR")
                    .cloned()
                    .unwrap_or_else(|| hangwatch_collectors::nccl_ras::DEFAULT_ADDR.to_string())
            })
            .filter(|a| {
                let ok = self.ras_remote || is_loopback(a);
                if !ok {
                    tracing::warn!(engine, addr = %a, "NCCL_RAS_ADDR is not on loopback: not asked (set nccl_ras.allow_remote to allow)");
                }
                ok
            });
        if targets.is_empty() && ras_addr.is_none() {
            return;
        }
        let _ = w.requests.send(EvidenceRequest {
            engine: engine.to_string(),
            reason,
            targets,
            titles,
            ras_addr,
        });
    }
}

/// `127.x.x.x:port`, `[::1]:port` or `localhost:port`, without resolving anything.
fn is_loopback(addr: &str) -> bool {
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return sa.ip().is_loopback();
    }
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| host == "localhost" && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn only_loopback_ras_addresses_are_asked() {
        for a in [
            "127.0.0.1:28028",
            "127.1.2.3:1",
            "[::1]:28028",
            "localhost:28028",
        ] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "10.0.0.5:28028",
            "example.com:28028",
            "169.254.169.254:80",
            "localhost",
            "0.0.0.0:1",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
    }
}
