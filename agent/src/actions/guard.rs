//! The guard rails of an action (`docs/actions.md`): only a stall with a named suspect
//! of enough confidence, or a confirmed wedge; never a long step; an incident old
//! enough that its bundle holds the follow-up stack round; one action per engine per
//! window. Pure: the tests below are the table of every rail.

use crate::config::actions::ActionsConfig;
use hangwatch_rules::incident::Incident;
use hangwatch_rules::{EngineState, Millis, ReasonCode, Verdict};

/// Past `min_age` by this much, an incident is acted on without its follow-up round
/// (stack rounds off, or the stack reader stuck): the action matters more.
const ROUND_WAIT_MS: Millis = 15_000;

#[derive(Debug, PartialEq)]
pub enum Decision {
    Act,
    /// Not now; asked again next tick (the reason is said once).
    Wait(String),
    /// Never for this incident.
    Skip(String),
}

/// What the guard looks at for one open incident.
pub struct Ask<'a> {
    pub verdict: &'a Verdict,
    pub incident: &'a Incident,
    pub now: Millis,
    /// When an action was last taken on this engine (dry runs included).
    pub last_action_ms: Option<Millis>,
    /// A stack round of the engine arrived after the incident's follow-up time.
    pub followup_round: bool,
}

pub fn decide(cfg: &ActionsConfig, a: &Ask<'_>) -> Decision {
    let v = a.verdict;
    match v.state {
        EngineState::Stalled => {}
        EngineState::Dead => return Decision::Skip("the engine is already dead".into()),
        s => return Decision::Wait(format!("the engine is {}, not stalled", s.as_str())),
    }
    if v.long_step {
        return Decision::Wait("a long step (every rank at work), not a hang".into());
    }
    let wedge = v.confirmed
        && v.engine_reasons
            .iter()
            .any(|r| r.code == ReasonCode::CollectiveWedge);
    let best = v
        .suspects
        .iter()
        .map(|s| s.confidence)
        .fold(None, |m: Option<f64>, c| Some(m.map_or(c, |m| m.max(c))));
    match best {
        _ if wedge => {}
        None => return Decision::Wait("no named suspect and no confirmed wedge".into()),
        Some(c) if c < cfg.min_confidence => {
            return Decision::Wait(format!(
                "the suspect's confidence {c:.2} is below actions.min_confidence {:.2}",
                cfg.min_confidence
            ))
        }
        Some(_) => {}
    }
    let age = a.now - a.incident.opened_ms;
    let min_age = cfg.min_age.as_millis() as Millis;
    if age < min_age {
        return Decision::Wait(format!(
            "the incident is younger than actions.min_age ({:.0} s)",
            cfg.min_age.as_secs_f64()
        ));
    }
    if !a.followup_round && age < min_age + ROUND_WAIT_MS {
        return Decision::Wait("waiting for the follow-up stack round of the bundle".into());
    }
    let window = cfg.window.as_millis() as Millis;
    if let Some(last) = a.last_action_ms.filter(|t| a.now - t < window) {
        return Decision::Skip(format!(
            "an action on this engine {:.0} s ago (actions.window {:.0} s)",
            (a.now - last) as f64 / 1000.0,
            cfg.window.as_secs_f64()
        ));
    }
    Decision::Act
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangwatch_rules::{Reason, Suspect};
    use std::time::Duration;

    const OPENED: Millis = 100_000;

    fn stalled(confidence: f64) -> Verdict {
        let mut v = Verdict::bare("vllm-8000", OPENED, EngineState::Stalled);
        v.confirmed = true;
        v.suspects = vec![Suspect {
            rank: Some(1),
            role: Default::default(),
            pid: 42,
            node: None,
            reasons: vec![reason(ReasonCode::ProcessStopped)],
            confidence,
        }];
        v
    }

    fn reason(code: ReasonCode) -> Reason {
        Reason {
            code,
            detail: code.as_str().into(),
            since_ms: OPENED,
        }
    }

    fn ask<'a>(v: &'a Verdict, inc: &'a Incident, at: Millis, last: Option<Millis>) -> Ask<'a> {
        Ask {
            verdict: v,
            incident: inc,
            now: OPENED + at,
            last_action_ms: last,
            followup_round: true,
        }
    }

    fn cfg() -> ActionsConfig {
        ActionsConfig {
            min_age: Duration::from_secs(10),
            ..ActionsConfig::default()
        }
    }

    #[test]
    fn a_confirmed_stall_with_a_named_suspect_is_acted_on_once_old_enough() {
        let v = stalled(0.9);
        let inc = Incident::of("i".into(), &v);
        assert!(matches!(
            decide(&cfg(), &ask(&v, &inc, 5_000, None)),
            Decision::Wait(_)
        ));
        assert_eq!(decide(&cfg(), &ask(&v, &inc, 10_000, None)), Decision::Act);
    }

    #[test]
    fn a_long_step_a_starting_engine_and_a_weak_suspect_wait() {
        let mut v = stalled(0.9);
        v.long_step = true;
        let inc = Incident::of("i".into(), &v);
        let d = decide(&cfg(), &ask(&v, &inc, 60_000, None));
        assert!(
            matches!(&d, Decision::Wait(r) if r.contains("long step")),
            "{d:?}"
        );
        let mut v = stalled(0.9);
        v.state = EngineState::Starting;
        let d = decide(&cfg(), &ask(&v, &inc, 60_000, None));
        assert!(
            matches!(&d, Decision::Wait(r) if r.contains("starting")),
            "{d:?}"
        );
        let v = stalled(0.5);
        let d = decide(&cfg(), &ask(&v, &inc, 60_000, None));
        assert!(
            matches!(&d, Decision::Wait(r) if r.contains("confidence 0.50")),
            "{d:?}"
        );
        let mut v = stalled(0.9);
        v.suspects.clear();
        let d = decide(&cfg(), &ask(&v, &inc, 60_000, None));
        assert!(
            matches!(&d, Decision::Wait(r) if r.contains("no named suspect")),
            "{d:?}"
        );
    }

    #[test]
    fn a_confirmed_wedge_needs_no_suspect() {
        let mut v = stalled(0.9);
        v.suspects.clear();
        v.engine_reasons = vec![reason(ReasonCode::CollectiveWedge)];
        let inc = Incident::of("i".into(), &v);
        assert_eq!(decide(&cfg(), &ask(&v, &inc, 20_000, None)), Decision::Act);
    }

    #[test]
    fn a_second_incident_within_the_window_is_skipped() {
        let v = stalled(0.9);
        let inc = Incident::of("i".into(), &v);
        let earlier = Some(OPENED - 60_000);
        let d = decide(&cfg(), &ask(&v, &inc, 20_000, earlier));
        assert!(
            matches!(&d, Decision::Skip(r) if r.contains("window")),
            "{d:?}"
        );
        let long_ago = Some(OPENED - 16 * 60_000);
        assert_eq!(
            decide(&cfg(), &ask(&v, &inc, 20_000, long_ago)),
            Decision::Act
        );
    }

    #[test]
    fn the_follow_up_round_is_waited_for_but_not_forever() {
        let v = stalled(0.9);
        let inc = Incident::of("i".into(), &v);
        let mut a = ask(&v, &inc, 12_000, None);
        a.followup_round = false;
        assert!(matches!(decide(&cfg(), &a), Decision::Wait(r) if r.contains("follow-up")));
        a.now = OPENED + 10_000 + ROUND_WAIT_MS;
        assert_eq!(decide(&cfg(), &a), Decision::Act);
    }

    #[test]
    fn a_dead_engine_is_skipped() {
        let mut v = stalled(0.9);
        v.state = EngineState::Dead;
        let inc = Incident::of("i".into(), &v);
        assert!(matches!(
            decide(&cfg(), &ask(&v, &inc, 20_000, None)),
            Decision::Skip(_)
        ));
    }
}
