//! An engine whose core dies vanishes from `/proc` at once, but its API server says why
//! a moment later: `[shutdown] MPClient: engine core exited unexpectedly` (measured on
//! vLLM 0.32: the core is reaped 0.2 s after a SIGKILL, the line follows within the
//! second, the API server lives about 6 s longer). A service stop logs its own shutdown
//! lines instead and never this one (`docs/vllm.md`, "When the engine core exits").
//! So the judge listens for a vanished engine's last words for `LAST_WORDS_MS`; the
//! line names the engine core as the process that exited.

use crate::facts::{Role, Snapshot};
use crate::logs::LogEventKind;
use crate::time::Millis;
use crate::verdict::{EngineState, Reason, ReasonCode, Suspect, Verdict};
use std::collections::BTreeMap;

/// How long after an engine vanished its API server's words still count.
pub const LAST_WORDS_MS: Millis = 15_000;

/// What is kept of a vanished engine while its last words may still come.
#[derive(Debug)]
struct Vanished {
    at_ms: Millis,
    core_pid: u32,
    /// The core was rank 0 (the uni executor).
    uni: bool,
    last: Verdict,
}

/// Engines gone lately, by id.
#[derive(Debug, Default)]
pub struct LastWords {
    gone: BTreeMap<String, Vanished>,
}

impl LastWords {
    /// `id` vanished at `at_ms`; `last` was its last verdict.
    pub fn vanished(&mut self, id: &str, core_pid: u32, uni: bool, last: Verdict, at_ms: Millis) {
        self.gone.insert(
            id.to_string(),
            Vanished {
                at_ms,
                core_pid,
                uni,
                last,
            },
        );
    }

    /// An engine of that id is back (a restart): its old core's words no longer count.
    pub fn returned(&mut self, id: &str) {
        self.gone.remove(id);
    }

    /// The verdicts this tick's late events make: an engine core that exited, named
    /// once. Engines past the window are let go.
    pub fn hear(&mut self, snap: &Snapshot) -> Vec<Verdict> {
        self.gone
            .retain(|_, v| snap.at_ms - v.at_ms <= LAST_WORDS_MS);
        let mut out = Vec::new();
        for (id, ev) in &snap.late_events {
            if !matches!(ev.kind, LogEventKind::CoreExited) {
                continue;
            }
            let Some(v) = self.gone.remove(id) else {
                continue;
            };
            out.push(core_exited(v, ev.at_ms, snap.at_ms));
        }
        out
    }
}

/// The engine is dead and its core is named: the stall was its exit, beyond doubt.
fn core_exited(v: Vanished, said_at: Millis, now: Millis) -> Verdict {
    let reason = Reason {
        code: ReasonCode::ProcessExited,
        detail: "the engine core exited unexpectedly (its API server said so)".to_string(),
        since_ms: said_at.min(v.at_ms),
    };
    let suspect = Suspect {
        rank: v.uni.then_some(0),
        role: Role::EngineCore,
        pid: v.core_pid,
        node: None,
        confidence: ReasonCode::ProcessExited.weight(),
        reasons: vec![reason],
    };
    let mut suspects = vec![suspect];
    // A stall already named someone: keep those names after the core's.
    if v.last.state == EngineState::Stalled {
        suspects.extend(v.last.suspects.iter().cloned());
    }
    Verdict {
        at_ms: now,
        state: EngineState::Dead,
        suspects,
        onset_ms: Some(v.last.onset_ms.unwrap_or(v.at_ms).min(v.at_ms)),
        confirmed: true,
        deadline_left_seconds: None,
        step_age_seconds: None,
        long_step: false,
        waits_for: None,
        joins: None,
        ..v.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::LogEvent;

    fn busy(engine: &str) -> Verdict {
        let mut v = crate::judge::bare_verdict(engine, 1_000, EngineState::Busy);
        v.onset_ms = None;
        v
    }

    fn said(engine: &str, kind: LogEventKind, at_ms: Millis) -> Snapshot {
        Snapshot {
            at_ms,
            late_events: vec![(
                engine.to_string(),
                LogEvent {
                    at_ms,
                    logged_at: None,
                    source: "vllm.log".into(),
                    process: Some("APIServer".into()),
                    pid: Some(7),
                    kind,
                    line: String::new(),
                },
            )],
            ..Snapshot::default()
        }
    }

    #[test]
    fn the_api_servers_word_names_the_core_once() {
        let mut w = LastWords::default();
        w.vanished("e", 42, false, busy("e"), 10_000);
        let v = w.hear(&said("e", LogEventKind::CoreExited, 10_500));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].state, EngineState::Dead);
        assert!(v[0].confirmed);
        assert_eq!(v[0].suspects[0].role, Role::EngineCore);
        assert_eq!(v[0].suspects[0].pid, 42);
        assert_eq!(v[0].suspects[0].rank, None);
        assert!(w
            .hear(&said("e", LogEventKind::CoreExited, 11_000))
            .is_empty());
    }

    #[test]
    fn other_words_and_late_words_name_nobody() {
        let mut w = LastWords::default();
        w.vanished("e", 42, true, busy("e"), 10_000);
        assert!(w
            .hear(&said("e", LogEventKind::EngineDead, 10_500))
            .is_empty());
        assert!(w
            .hear(&said("x", LogEventKind::CoreExited, 10_600))
            .is_empty());
        let late = 10_000 + LAST_WORDS_MS + 1;
        assert!(w
            .hear(&said("e", LogEventKind::CoreExited, late))
            .is_empty());
    }

    #[test]
    fn a_restarted_engine_is_not_blamed_for_its_predecessor() {
        let mut w = LastWords::default();
        w.vanished("e", 42, false, busy("e"), 10_000);
        w.returned("e");
        assert!(w
            .hear(&said("e", LogEventKind::CoreExited, 10_500))
            .is_empty());
    }
}
