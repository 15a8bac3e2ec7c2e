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
use std::collections::BTreeMap;

pub struct Evidence {
    worker: Option<EvidenceWorker>,
    /// How to start a worker again: (native, stacks bound, RAS bound).
    spawn: (bool, std::time::Duration, std::time::Duration),
    /// When each request not yet answered was sent, oldest first.
    unanswered: std::collections::VecDeque<Millis>,
    /// A request unanswered this long means the worker is stuck.
    stuck_after_ms: Millis,
    /// Workers replaced so far (`hangwatch_evidence_worker_restarts_total`).
    pub restarts: u64,
    stacks_on: bool,
    ras_on: bool,
    ras_remote: bool,
    proc_root: std::path::PathBuf,
    enter_netns: bool,
    /// (due, engine) of follow-up rounds.
    followups: Vec<(Millis, String)>,
    followup_ms: Millis,
    baseline_ms: Millis,
    last_baseline: Millis,
    denied_said: bool,
    /// engine → rounds asked for its current late step.
    late: BTreeMap<String, LateRounds>,
    /// Since when an engine's API server has not answered its `/metrics`: its event loop
    /// may hang while the engine itself looks idle, so it gets late rounds too.
    silent_since: BTreeMap<String, Millis>,
}

/// Rounds of one late step: the first as soon as it is late, the second `SECOND_MS`
/// later (two rounds tell a stack that moved from one that did not), then one every
/// `EVERY_MS` while it stays late (a rank can hang in the middle of a long step), or
/// every `SECOND_MS` while the engine is suspected and not yet confirmed.
#[derive(Debug, Clone, Copy)]
struct LateRounds {
    step_started_ms: Millis,
    asked: u32,
    last_ms: Millis,
}

/// A step this old without progress is late.
const LATE_AFTER_S: f64 = 1.0;
const SECOND_MS: Millis = 2_000;
const EVERY_MS: Millis = 5_000;

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
        let bound = cfg.stacks.timeout + cfg.nccl_ras.timeout;
        Ok(Evidence {
            worker,
            spawn: (cfg.stacks.native, cfg.stacks.timeout, cfg.nccl_ras.timeout),
            unanswered: std::collections::VecDeque::new(),
            stuck_after_ms: (bound * 4).as_millis() as Millis + 10_000,
            restarts: 0,
            stacks_on: cfg.stacks.enabled,
            ras_on: cfg.nccl_ras.enabled,
            ras_remote: cfg.nccl_ras.allow_remote,
            proc_root: cfg.proc_root.clone(),
            enter_netns: cfg.kubernetes.enter_network_namespaces,
            followups: Vec::new(),
            followup_ms: cfg.stacks.followup_after.as_millis() as Millis,
            baseline_ms: cfg.stacks.baseline_interval.as_millis() as Millis,
            last_baseline: 0,
            denied_said: false,
            late: BTreeMap::new(),
            silent_since: BTreeMap::new(),
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
        for _ in &rounds {
            self.unanswered.pop_front();
        }
        for round in rounds {
            self.say_denied(&round);
            if let Some(e) = snap.engines.iter_mut().find(|e| e.id == round.engine) {
                e.stacks.extend(round.dumps.iter().cloned());
                if let Some(status) = round.ras.as_ref().and_then(|r| r.status.clone()) {
                    e.nccl_ras = Some(status);
                }
            }
            let failed = round.dumps.iter().filter(|d| d.error.is_some()).count();
            if round.reason == RoundReason::Late {
                // Every slow step asks for rounds: not worth a line at the default level.
                tracing::debug!(engine = %round.engine, processes = round.dumps.len(), failed, "stacks dumped (late step)");
            } else {
                let round_ms = round
                    .dumps
                    .iter()
                    .map(|d| d.duration_seconds * 1000.0)
                    .fold(0.0, f64::max)
                    .round();
                tracing::info!(
                    engine = %round.engine,
                    reason = round.reason.as_str(),
                    processes = round.dumps.len(),
                    failed,
                    round_ms,
                    "stacks dumped"
                );
            }
            // Late rounds come every few seconds while a step is late: they join the
            // snapshot and the context, but do not rewrite an open incident's bundle
            // (the confirm and follow-up rounds do).
            if round.reason != RoundReason::Late && !fresh.contains(&round.engine) {
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

    /// A worker that has not answered a request for far longer than a round can take is
    /// stuck (a dump that ignored its bound, a wedged connection): it is left behind and
    /// a fresh one takes the next requests, so evidence never stops for good.
    fn replace_if_stuck(&mut self, now: Millis) {
        let stuck = self
            .unanswered
            .front()
            .is_some_and(|sent| now - sent > self.stuck_after_ms);
        if !stuck || self.worker.is_none() {
            return;
        }
        let (native, limit, ras) = self.spawn;
        match spawn_worker(native, limit, ras, now_ms) {
            Ok(w) => {
                self.restarts += 1;
                tracing::warn!(
                    unanswered = self.unanswered.len(),
                    restarts = self.restarts,
                    "the evidence thread has not answered for {} s: started a new one",
                    (now - self.unanswered.front().copied().unwrap_or(now)) / 1000
                );
                self.worker = Some(w);
                self.unanswered.clear();
            }
            Err(e) => tracing::warn!(error = %e, "cannot start a new evidence thread"),
        }
    }

    /// Asks for this tick's rounds: engines that turned stalled, incidents that opened,
    /// follow-ups that are due, baselines.
    pub fn plan(&mut self, ticks: &[EngineTick], cx: &Context, watch: &Watch, now: Millis) {
        self.replace_if_stuck(now);
        let just_asked = self.plan_late(ticks, cx);
        for t in ticks {
            let v = &t.verdict;
            // A late round asked for this tick already shows the stall.
            if t.state_changed && v.state == EngineState::Stalled && !just_asked.contains(&v.engine)
            {
                self.request(cx, &v.engine, RoundReason::Suspect);
            }
            for ev in &t.events {
                if let IncidentEvent::Opened(inc) = ev {
                    self.request(cx, &inc.engine, RoundReason::Confirm);
                    // Two later looks: whether the stacks moved, and where the ranks
                    // that were still on their way into the collective ended up.
                    for after in [self.followup_ms, 3 * self.followup_ms] {
                        self.followups.push((v.at_ms + after, inc.engine.clone()));
                    }
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
            for e in cx.engines_with_facts() {
                if watch.open_incident(e).is_none() {
                    self.request(cx, e, RoundReason::Baseline);
                }
            }
        }
    }

    /// Rounds for late steps: the judge needs to see what every rank does while a step
    /// is late, before any threshold, to tell a long step from a stall.
    fn plan_late(&mut self, ticks: &[EngineTick], cx: &Context) -> Vec<String> {
        let mut due = Vec::new();
        for t in ticks {
            let v = &t.verdict;
            let silent = cx
                .facts(&v.engine)
                .is_some_and(|f| f.api_answered == Some(false));
            if silent {
                self.silent_since.entry(v.engine.clone()).or_insert(v.at_ms);
            } else {
                self.silent_since.remove(&v.engine);
            }
            let age = v
                .step_age_seconds
                .filter(|_| matches!(v.state, EngineState::Busy | EngineState::Stalled))
                .or_else(|| {
                    let since = self.silent_since.get(&v.engine)?;
                    Some((v.at_ms - since) as f64 / 1000.0)
                })
                .filter(|a| *a >= LATE_AFTER_S);
            let Some(age) = age else {
                self.late.remove(&v.engine);
                continue;
            };
            let started = v.at_ms - (age * 1000.0) as Millis;
            let fresh = LateRounds {
                step_started_ms: started,
                asked: 0,
                last_ms: 0,
            };
            let entry = self.late.entry(v.engine.clone()).or_insert(fresh);
            // Another step (its start moved): its rounds begin again.
            if (entry.step_started_ms - started).abs() > 1_500 {
                *entry = fresh;
            }
            // While the engine is suspected but not confirmed, every round may be the
            // one that settles it: a rank whose dump came back cut short in one round
            // must not wait `EVERY_MS` for its next look.
            let suspected = v.state == EngineState::Stalled && !v.confirmed;
            let wait = match entry.asked {
                0 => 0,
                1 => SECOND_MS,
                _ if suspected => SECOND_MS,
                _ => EVERY_MS,
            };
            if v.at_ms - entry.last_ms >= wait {
                entry.asked += 1;
                entry.last_ms = v.at_ms;
                due.push(v.engine.clone());
            }
        }
        self.late
            .retain(|e, _| ticks.iter().any(|t| &t.verdict.engine == e));
        self.silent_since
            .retain(|e, _| ticks.iter().any(|t| &t.verdict.engine == e));
        for e in &due {
            self.request(cx, e, RoundReason::Late);
        }
        due
    }

    /// A round for a bundle a person asked for.
    pub fn capture(&mut self, cx: &Context, engine: &str) {
        self.request(cx, engine, RoundReason::Capture);
    }

    fn request(&mut self, cx: &Context, engine: &str, reason: RoundReason) {
        let Some(w) = &self.worker else { return };
        let Some(facts) = cx.facts(engine) else {
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
        if w.requests
            .send(EvidenceRequest {
                engine: engine.to_string(),
                reason,
                targets,
                titles,
                ras_netns: ras_addr
                    .as_ref()
                    .filter(|_| self.enter_netns)
                    .and_then(|_| {
                        hangwatch_collectors::netns::foreign_netns(&self.proc_root, facts.core.pid)
                    }),
                ras_addr,
            })
            .is_ok()
        {
            self.unanswered.push_back(now_ms());
        }
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
    use super::{is_loopback, Evidence};

    #[test]
    fn a_worker_that_stopped_answering_is_replaced_and_counted() {
        let mut e = Evidence::new(&crate::config::Config::default()).expect("evidence");
        let now = crate::clock::now_ms();
        // A request that has waited for a minute (a round is bounded to 3 s here).
        e.unanswered.push_back(now - 60_000);
        e.replace_if_stuck(now);
        assert_eq!(e.restarts, 1);
        assert!(e.unanswered.is_empty());
        // A request sent a moment ago is not a stuck worker.
        e.unanswered.push_back(now - 1_000);
        e.replace_if_stuck(now);
        assert_eq!(e.restarts, 1);
    }

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

#[cfg(test)]
mod late_round_tests {
    use super::*;
    use hangwatch_rules::Verdict;

    fn tick(at_ms: Millis, age: f64, state: EngineState) -> EngineTick {
        EngineTick {
            verdict: Verdict {
                engine: "vllm-1".into(),
                at_ms,
                state,
                suspects: vec![],
                engine_reasons: vec![],
                onset_ms: None,
                confirmed: false,
                deadline_left_seconds: None,
                rank_lag_seconds: vec![],
                suspect_after_seconds: 3.0,
                confirm_after_seconds: 10.0,
                step_age_seconds: Some(age),
                long_step: false,
                busy_because: None,
                rank_activity: vec![],
                waits_for: None,
                joins: None,
            },
            state_changed: false,
            events: vec![],
            held_back: None,
        }
    }

    /// Rounds at 1 s, 2 s later, then every 5 s for a long step, every 2 s while the
    /// engine is suspected and not confirmed.
    #[test]
    fn a_suspected_engine_is_looked_at_every_two_seconds() {
        let mut e = Evidence::new(&crate::config::Config::default()).expect("evidence");
        let cx = Context::new(60_000);
        let step = 100_000;
        let due = |e: &mut Evidence, at: Millis, state| {
            !e.plan_late(&[tick(step + at, at as f64 / 1000.0, state)], &cx)
                .is_empty()
        };
        assert!(due(&mut e, 1_000, EngineState::Busy));
        assert!(!due(&mut e, 2_000, EngineState::Busy));
        assert!(due(&mut e, 3_000, EngineState::Busy));
        assert!(
            !due(&mut e, 5_000, EngineState::Busy),
            "a long step: every 5 s"
        );
        assert!(
            due(&mut e, 5_000, EngineState::Stalled),
            "suspected: every 2 s"
        );
        assert!(!due(&mut e, 6_000, EngineState::Stalled));
        assert!(due(&mut e, 7_000, EngineState::Stalled));
    }
}
