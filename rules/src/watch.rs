//! The watch step: one snapshot in, per engine its verdict, whether its state changed,
//! and the incident events it caused. The live agent and `hangwatch replay` both run
//! exactly this, so a replay shows what the live agent saw.

use crate::facts::Snapshot;
use crate::incident::{Incident, IncidentEvent, IncidentTracker};
use crate::judge::Judge;
use crate::thresholds::Thresholds;
use crate::verdict::{EngineState, Verdict};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug)]
pub struct Watch {
    judge: Judge,
    tracker: IncidentTracker,
    /// The state last said per engine; forgotten when the engine died, so a new engine
    /// under the same id is said afresh.
    states: BTreeMap<String, EngineState>,
    /// Replicas that wait for another replica of their lockstep deployment (said once).
    waiting: BTreeSet<String>,
}

/// What one tick says about one engine.
#[derive(Clone, Debug)]
pub struct EngineTick {
    pub verdict: Verdict,
    /// The state differs from the one last said: worth a line in the log.
    pub state_changed: bool,
    pub events: Vec<IncidentEvent>,
    /// A stall that opened no incident, and why (said once per stall).
    pub held_back: Option<&'static str>,
}

impl Watch {
    pub fn new(thresholds: Thresholds) -> Watch {
        Watch {
            judge: Judge::new(thresholds),
            tracker: IncidentTracker::default(),
            states: BTreeMap::new(),
            waiting: BTreeSet::new(),
        }
    }

    pub fn judge(&self) -> &Judge {
        &self.judge
    }

    pub fn open_incident(&self, engine: &str) -> Option<&Incident> {
        self.tracker.open_incident(engine)
    }

    pub fn step(&mut self, snap: &Snapshot) -> Vec<EngineTick> {
        let verdicts = self.judge.observe(snap);
        let doubtful: Vec<&str> = snap
            .engines
            .iter()
            .filter(|e| !e.credible)
            .map(|e| e.id.as_str())
            .collect();
        verdicts
            .into_iter()
            .map(|verdict| {
                let state_changed = self.states.get(&verdict.engine) != Some(&verdict.state);
                self.states.insert(verdict.engine.clone(), verdict.state);
                let mut held_back = None;
                let events = if doubtful.contains(&verdict.engine.as_str()) {
                    // Judged and shown, never an incident: nothing says it is vLLM.
                    if state_changed && verdict.state == EngineState::Stalled {
                        held_back = Some(
                            "no vllm serve above it and no vLLM ring mapped: not known to be vLLM",
                        );
                    }
                    Vec::new()
                } else if verdict.waits_for.is_some()
                    && self.tracker.open_incident(&verdict.engine).is_none()
                {
                    // Its replica's incident names the culprit: one incident, not one each.
                    if self.waiting.insert(verdict.engine.clone()) {
                        held_back = Some("it waits for another replica of its deployment, whose incident names the culprit");
                    }
                    Vec::new()
                } else {
                    self.waiting.remove(&verdict.engine);
                    let events = self.tracker.on_verdict(&verdict);
                    if self.tracker.take_held_back(&verdict.engine) {
                        held_back = Some("the engine's incidents of the last hour reached the cap");
                    }
                    events
                };
                if verdict.state == EngineState::Dead {
                    self.states.remove(&verdict.engine);
                    self.waiting.remove(&verdict.engine);
                }
                EngineTick {
                    verdict,
                    state_changed,
                    events,
                    held_back,
                }
            })
            .collect()
    }
}
