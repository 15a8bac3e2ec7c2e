//! The incident life cycle: when a stall becomes an incident, escalates, resolves or
//! ends with the engine's death. One stall, one incident, never reported twice.

use crate::time::Millis;
use crate::verdict::{EngineState, Reason, ReasonCode, Suspect, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Progress resumed.
    Resolved,
    /// The engine died (vLLM's timeout, a crash, a kill) while stalled.
    Dead,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Incident {
    pub id: String,
    pub engine: String,
    pub onset_ms: Millis,
    pub opened_ms: Millis,
    /// `stalled` while open; `dead` once the engine died.
    pub verdict: EngineState,
    pub suspects: Vec<Suspect>,
    pub engine_reasons: Vec<Reason>,
    /// Seconds left before vLLM's execute timeout when the incident opened.
    pub deadline_left_seconds: Option<f64>,
    pub escalations: u32,
    pub closed_ms: Option<Millis>,
    pub outcome: Option<Outcome>,
}

impl Incident {
    /// The engine-wide evidence that this follower part lost its deployment, if any.
    pub fn orphaned(&self) -> Option<&Reason> {
        self.engine_reasons
            .iter()
            .find(|r| r.code == ReasonCode::Orphaned)
    }

    /// The engine-wide evidence that the culprit runs on another node, if any.
    pub fn remote_wait(&self) -> Option<&Reason> {
        self.engine_reasons
            .iter()
            .find(|r| r.code == ReasonCode::RemoteWait)
    }

    /// An incident opened now from the verdict's evidence (its state as the verdict).
    pub fn of(id: String, v: &Verdict) -> Incident {
        Incident {
            id,
            engine: v.engine.clone(),
            onset_ms: v.onset_ms.unwrap_or(v.at_ms),
            opened_ms: v.at_ms,
            verdict: v.state,
            suspects: v.suspects.clone(),
            engine_reasons: v.engine_reasons.clone(),
            deadline_left_seconds: v.deadline_left_seconds,
            escalations: 0,
            closed_ms: None,
            outcome: None,
        }
    }

    /// `warning` for a long step past the ceiling, `critical` for a stall.
    pub fn severity(&self) -> &'static str {
        crate::verdict::severity_of(&self.suspects, &self.engine_reasons)
    }

    pub fn detected_after_seconds(&self) -> f64 {
        (self.opened_ms - self.onset_ms) as f64 / 1000.0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum IncidentEvent {
    Opened(Incident),
    /// More or stronger evidence than when it opened.
    Escalated(Incident),
    Resolved(Incident),
    /// The engine died; the incident is over, its bundle must be completed.
    Ended(Incident),
}

impl IncidentEvent {
    pub fn incident(&self) -> &Incident {
        match self {
            IncidentEvent::Opened(i)
            | IncidentEvent::Escalated(i)
            | IncidentEvent::Resolved(i)
            | IncidentEvent::Ended(i) => i,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            IncidentEvent::Opened(_) => "opened",
            IncidentEvent::Escalated(_) => "escalated",
            IncidentEvent::Resolved(_) => "resolved",
            IncidentEvent::Ended(_) => "ended",
        }
    }
}

/// Incidents one engine may open in an hour.
pub const MAX_INCIDENTS_PER_HOUR: usize = 10;
const HOUR_MS: Millis = 3_600_000;

#[derive(Debug, Default)]
pub struct IncidentTracker {
    open: BTreeMap<String, Incident>,
    /// When each engine's incidents of the last hour opened: a flapping engine (or one
    /// a user keeps stalling) opens at most `MAX_INCIDENTS_PER_HOUR` of them, so bundles
    /// and notifications cannot flood.
    opened: BTreeMap<String, VecDeque<Millis>>,
    /// Engines whose stall was held back by the cap and not said yet; and those said.
    held_back: BTreeMap<String, bool>,
    /// Onset of each engine's last ended incident: a dying engine keeps saying `dead`
    /// for a few ticks, which must not open the same incident again.
    ended: BTreeMap<String, Millis>,
}

impl IncidentTracker {
    pub fn open_incident(&self, engine: &str) -> Option<&Incident> {
        self.open.get(engine)
    }

    /// Whether the engine's last stall was held back by the cap and not said before
    /// (true once per held-back stall).
    pub fn take_held_back(&mut self, engine: &str) -> bool {
        match self.held_back.get_mut(engine) {
            Some(said) if !*said => {
                *said = true;
                true
            }
            _ => false,
        }
    }

    /// Whether another incident may open for the engine now (and counts it if so).
    fn admit(&mut self, engine: &str, now: Millis) -> bool {
        // Engines with no incident in the last hour are forgotten (engines come and go).
        self.opened
            .retain(|_, q| q.back().is_some_and(|t| now - t < HOUR_MS));
        let q = self.opened.entry(engine.to_string()).or_default();
        while q.front().is_some_and(|t| now - t >= HOUR_MS) {
            q.pop_front();
        }
        if q.len() >= MAX_INCIDENTS_PER_HOUR {
            self.held_back.entry(engine.to_string()).or_insert(false);
            return false;
        }
        q.push_back(now);
        self.held_back.remove(engine);
        true
    }

    pub fn on_verdict(&mut self, v: &Verdict) -> Vec<IncidentEvent> {
        let mut events = Vec::new();
        let was_stalled = v.onset_ms.is_some();
        if !self.open.contains_key(&v.engine) {
            if v.state == EngineState::Dead
                && v.onset_ms.is_some()
                && self.ended.get(&v.engine) == v.onset_ms.as_ref()
            {
                return events;
            }
            // A death with a named process (an engine core that exited) is an incident
            // of its own, opened and ended at once.
            let named_death = v.state == EngineState::Dead && v.confirmed && !v.suspects.is_empty();
            let opens = (v.state == EngineState::Stalled && v.confirmed)
                || (v.state == EngineState::Dead && was_stalled)
                || named_death;
            if !opens {
                if v.state != EngineState::Stalled {
                    // The held-back stall is over: a later one is said again.
                    self.held_back.remove(&v.engine);
                }
                return events;
            }
            if !self.admit(&v.engine, v.at_ms) {
                return events;
            }
            let id = v
                .joins
                .clone()
                .unwrap_or_else(|| incident_id(&v.engine, v.at_ms));
            let mut inc = Incident::of(id, v);
            inc.verdict = EngineState::Stalled;
            events.push(IncidentEvent::Opened(inc.clone()));
            self.open.insert(v.engine.clone(), inc);
        }
        let Some(inc) = self.open.get_mut(&v.engine) else {
            return events;
        };
        match v.state {
            EngineState::Stalled => {
                if stronger(&inc.suspects, &v.suspects)
                    || v.engine_reasons.len() > inc.engine_reasons.len()
                {
                    inc.suspects = v.suspects.clone();
                    inc.engine_reasons = v.engine_reasons.clone();
                    inc.escalations += 1;
                    events.push(IncidentEvent::Escalated(inc.clone()));
                }
            }
            EngineState::Dead => {
                if !v.suspects.is_empty() && inc.suspects.is_empty() {
                    inc.suspects = v.suspects.clone();
                }
                for r in &v.engine_reasons {
                    if !inc.engine_reasons.iter().any(|x| x.code == r.code) {
                        inc.engine_reasons.push(r.clone());
                    }
                }
                inc.verdict = EngineState::Dead;
                inc.closed_ms = Some(v.at_ms);
                inc.outcome = Some(Outcome::Dead);
                events.push(IncidentEvent::Ended(inc.clone()));
                if let Some(onset) = v.onset_ms {
                    self.ended.insert(v.engine.clone(), onset);
                }
                self.open.remove(&v.engine);
            }
            EngineState::Idle | EngineState::Busy | EngineState::Starting => {
                inc.closed_ms = Some(v.at_ms);
                inc.outcome = Some(Outcome::Resolved);
                events.push(IncidentEvent::Resolved(inc.clone()));
                self.open.remove(&v.engine);
            }
        }
        events
    }
}

/// Evidence grew: a rank named that was not, or a named rank more certain.
fn stronger(old: &[Suspect], new: &[Suspect]) -> bool {
    new.iter().any(|n| match old.iter().find(|o| o.same(n)) {
        None => true,
        Some(o) => n.confidence > o.confidence + 1e-9 || n.reasons.len() > o.reasons.len(),
    })
}

/// `<engine>-<UTC time of opening, YYYYMMDDTHHMMSSZ>`: sortable, readable, replayable.
pub fn incident_id(engine: &str, at_ms: Millis) -> String {
    format!("{engine}-{}", compact_utc(at_ms))
}

/// Formats Unix milliseconds as `YYYYMMDDTHHMMSSZ` without a date library (the rules
/// crate stays dependency-free); days → civil date by the standard era arithmetic.
pub fn compact_utc(at_ms: Millis) -> String {
    let secs = at_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(at_ms: Millis, state: EngineState) -> Verdict {
        let stalled = state == EngineState::Stalled;
        Verdict {
            engine: "vllm-1".into(),
            at_ms,
            state,
            suspects: vec![],
            engine_reasons: vec![],
            onset_ms: stalled.then_some(at_ms),
            confirmed: stalled,
            deadline_left_seconds: None,
            rank_lag_seconds: vec![],
            suspect_after_seconds: 3.0,
            confirm_after_seconds: 10.0,
            step_age_seconds: None,
            long_step: false,
            busy_because: None,
            rank_activity: vec![],
            waits_for: None,
            joins: None,
        }
    }

    /// An engine that stalls and recovers every minute opens ten incidents in an hour,
    /// then none (said once per held-back stall) until the first of them is an hour old.
    #[test]
    fn incidents_per_engine_per_hour_are_capped() {
        let mut t = IncidentTracker::default();
        let mut opened = 0;
        let mut said = 0;
        for m in 0..20 {
            let at = m * 60_000;
            for (dt, state) in [
                (0, EngineState::Stalled),
                (1_000, EngineState::Stalled),
                (30_000, EngineState::Busy),
            ] {
                let evs = t.on_verdict(&verdict(at + dt, state));
                opened += evs
                    .iter()
                    .filter(|e| matches!(e, IncidentEvent::Opened(_)))
                    .count();
                said += usize::from(t.take_held_back("vllm-1"));
            }
        }
        assert_eq!(opened, MAX_INCIDENTS_PER_HOUR);
        assert_eq!(said, 20 - MAX_INCIDENTS_PER_HOUR);
        let evs = t.on_verdict(&verdict(HOUR_MS + 1, EngineState::Stalled));
        assert!(
            matches!(evs.first(), Some(IncidentEvent::Opened(_))),
            "{evs:?}"
        );
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(compact_utc(0), "19700101T000000Z");
        // 2026-11-29T13:36:13Z
        assert_eq!(compact_utc(1_795_959_373_000), "20261129T133613Z");
        assert_eq!(compact_utc(951_782_400_000), "20000229T000000Z");
    }
}
