//! What the agent keeps of each engine for the people who read about it later: its
//! last facts, its time line, its log events, its stack rounds, its lint findings, and
//! the recent snapshots. Outputs read it; the tick keeps it current. Everything of an
//! engine is forgotten once the engine has been gone for the history window.

use hangwatch_collectors::evidence::{RoundReason, StackRound};
use hangwatch_rules::incident::IncidentEvent;
use hangwatch_rules::last_words::LAST_WORDS_MS;
use hangwatch_rules::lint::Finding;
use hangwatch_rules::logs::LogEvent;
use hangwatch_rules::watch::{EngineTick, Watch};
use hangwatch_rules::{EngineFacts, EngineState, Millis, Snapshot, Verdict};
use std::collections::{BTreeMap, VecDeque};

/// Timeline lines kept per engine for summaries.
const TIMELINE_LINES: usize = 200;
/// Log events kept per engine for its bundle.
const EVENTS_KEPT: usize = 500;
/// Rounds kept per engine (suspect, confirm, follow-up, and a few escalations).
const MAX_ROUNDS: usize = 6;
/// Rounds further apart than this belong to different late steps.
const STEP_GAP_MS: hangwatch_rules::Millis = 30_000;

/// Everything the agent keeps of one engine: made when the engine first appears,
/// forgotten in one place (`Context::forget`) once it has been gone for the history
/// window.
#[derive(Default)]
pub struct EngineRecord {
    /// Its last facts (kept past its end until its incident is closed).
    pub facts: Option<EngineFacts>,
    pub timeline: VecDeque<(Millis, String)>,
    pub events: VecDeque<LogEvent>,
    /// Stack rounds of its current stall or incident, oldest first.
    pub rounds: Vec<StackRound>,
    /// Configuration findings, computed once when the engine appears.
    pub lint: Vec<Finding>,
    pub last_verdict: Option<Verdict>,
    /// Since when it has not been seen.
    gone_since: Option<Millis>,
}

#[derive(Default)]
pub struct Context {
    history_ms: Millis,
    /// The node's snapshots over the history window, oldest first.
    pub history: VecDeque<Snapshot>,
    engines: BTreeMap<String, EngineRecord>,
}

/// Engines that came and went this tick.
#[derive(Default)]
pub struct Arrivals {
    pub appeared: Vec<String>,
    pub gone: Vec<String>,
    /// Gone for longer than the history window: everything of them is dropped after
    /// this tick (outputs drop their series too).
    pub expired: Vec<String>,
}

impl Context {
    pub fn new(history_ms: Millis) -> Context {
        Context {
            history_ms,
            ..Default::default()
        }
    }

    /// The engine's record, if it has one.
    pub fn engine(&self, id: &str) -> Option<&EngineRecord> {
        self.engines.get(id)
    }

    /// The engine's last facts, while they are kept.
    pub fn facts(&self, id: &str) -> Option<&EngineFacts> {
        self.engines.get(id)?.facts.as_ref()
    }

    /// Engines whose facts are kept.
    pub fn engines_with_facts(&self) -> impl Iterator<Item = &str> {
        self.engines
            .iter()
            .filter(|(_, r)| r.facts.is_some())
            .map(|(id, _)| id.as_str())
    }

    pub fn last_verdict(&self, id: &str) -> Option<&Verdict> {
        self.engines.get(id)?.last_verdict.as_ref()
    }

    /// The engine's configuration findings (none when it has no record).
    pub fn lint(&self, id: &str) -> &[Finding] {
        self.engines.get(id).map_or(&[], |r| r.lint.as_slice())
    }

    fn record(&mut self, id: &str) -> &mut EngineRecord {
        self.engines.entry(id.to_string()).or_default()
    }

    /// Finished stack rounds: kept for the bundle (the first round of a stall always).
    /// Keeps the rounds of one stall together; a later round starts afresh after a gap.
    pub fn add_round(&mut self, round: StackRound) {
        let rounds = &mut self.record(&round.engine).rounds;
        if round.reason != RoundReason::Baseline {
            rounds.retain(|r| r.reason != RoundReason::Baseline);
        }
        // Rounds of an earlier late step say nothing about this one.
        let stale = rounds
            .last()
            .is_some_and(|r| round.requested_at_ms - r.requested_at_ms > STEP_GAP_MS);
        if round.reason == RoundReason::Late && stale {
            rounds.clear();
        }
        rounds.push(round);
        while rounds.len() > MAX_ROUNDS {
            rounds.remove(1); // keep the first round: it shows whether stacks moved
        }
    }

    /// This tick's engines and log events, before the judge.
    pub fn note(&mut self, snap: &Snapshot) -> Arrivals {
        let mut a = Arrivals::default();
        for e in &snap.engines {
            let r = self.record(&e.id);
            if r.facts.is_none() {
                a.appeared.push(e.id.clone());
                r.lint = hangwatch_rules::lint::lint(&e.settings);
            }
            r.gone_since = None;
            r.facts = Some(e.clone());
        }
        for (id, ev) in snap.log_events() {
            self.event(id, ev.clone());
        }
        for (id, r) in &mut self.engines {
            let seen = snap.engines.iter().any(|e| &e.id == id);
            if r.facts.is_some() && !seen && r.gone_since.is_none() {
                a.gone.push(id.clone());
                r.gone_since = Some(snap.at_ms);
            }
        }
        a.expired = self
            .engines
            .iter()
            .filter(|(_, r)| {
                r.gone_since
                    .is_some_and(|t| snap.at_ms - t > self.history_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        a
    }

    fn event(&mut self, engine: &str, ev: LogEvent) {
        let q = &mut self.record(engine).events;
        q.push_back(ev);
        while q.len() > EVENTS_KEPT {
            q.pop_front();
        }
    }

    /// A line in the engine's time line from outside the judge (an action taken).
    pub fn say(&mut self, engine: &str, at: Millis, line: String) {
        self.timeline(engine, at, line);
    }

    fn timeline(&mut self, engine: &str, at: Millis, line: String) {
        let t = &mut self.record(engine).timeline;
        t.push_back((at, line));
        while t.len() > TIMELINE_LINES {
            t.pop_front();
        }
    }

    /// After the judge: the snapshot joins the history, state changes and incident
    /// events join the time lines, and a new stall starts with fresh stack rounds.
    pub fn judged(&mut self, snap: &Snapshot, ticks: &[EngineTick], watch: &Watch) {
        self.history.push_back(snap.clone());
        while self
            .history
            .front()
            .is_some_and(|s| snap.at_ms - s.at_ms > self.history_ms)
        {
            self.history.pop_front();
        }
        for t in ticks {
            let v = &t.verdict;
            if t.state_changed {
                self.timeline(&v.engine, v.at_ms, v.headline());
                let fresh_stall = v.state == EngineState::Stalled;
                let calm = matches!(v.state, EngineState::Idle | EngineState::Busy);
                if (fresh_stall || calm) && !was_open(t, watch) {
                    self.record(&v.engine).rounds.clear();
                }
            }
            let was_long = self
                .last_verdict(&v.engine)
                .is_some_and(|p| p.busy_because.is_some());
            if let (Some(why), false) = (&v.busy_because, was_long) {
                self.timeline(
                    &v.engine,
                    v.at_ms,
                    format!("engine {} busy: {why}", v.engine),
                );
            }
            for ev in &t.events {
                self.timeline(&v.engine, v.at_ms, format!("incident {}", ev.kind()));
            }
            self.record(&v.engine).last_verdict = Some(v.clone());
        }
    }

    /// After the outputs: an engine that is gone and has no open incident needs no facts;
    /// everything of an engine gone for the history window is dropped.
    pub fn settle(
        &mut self,
        snap: &Snapshot,
        ticks: &[EngineTick],
        watch: &Watch,
        arrivals: &Arrivals,
    ) {
        for t in ticks {
            let id = &t.verdict.engine;
            let ended = t
                .events
                .iter()
                .any(|e| matches!(e, IncidentEvent::Ended(_)));
            if ended {
                self.record(id).facts = None;
            }
        }
        // A vanished engine's facts stay while its last words may still name a process
        // (and so need a bundle): `last_words.rs`.
        for (id, r) in &mut self.engines {
            let gone_long = r
                .gone_since
                .is_some_and(|at| snap.at_ms - at > LAST_WORDS_MS);
            let gone = gone_long && !snap.engines.iter().any(|e| &e.id == id);
            if gone && watch.open_incident(id).is_none() {
                r.facts = None;
            }
        }
        for id in &arrivals.expired {
            self.engines.remove(id);
        }
    }

    /// This engine's snapshots over the history window (other engines left out).
    pub fn snapshots_of(&self, engine: &str) -> Vec<Snapshot> {
        self.history
            .iter()
            .filter(|s| s.engines.iter().any(|e| e.id == engine))
            .map(|s| Snapshot {
                engines: s
                    .engines
                    .iter()
                    .filter(|e| e.id == engine)
                    .cloned()
                    .collect(),
                late_events: s
                    .late_events
                    .iter()
                    .filter(|(id, _)| id == engine)
                    .cloned()
                    .collect(),
                ..s.clone()
            })
            .collect()
    }
}

/// What outputs may read of the engines' records: facts, verdicts, findings, kept
/// stacks and snapshots — never the bookkeeping that makes and forgets them.
#[derive(Clone, Copy)]
pub struct Records<'a>(&'a Context);

impl<'a> Records<'a> {
    pub fn engine(self, id: &str) -> Option<&'a EngineRecord> {
        self.0.engine(id)
    }

    pub fn facts(self, id: &str) -> Option<&'a EngineFacts> {
        self.0.facts(id)
    }

    pub fn last_verdict(self, id: &str) -> Option<&'a Verdict> {
        self.0.last_verdict(id)
    }

    pub fn lint(self, id: &str) -> &'a [Finding] {
        self.0.lint(id)
    }

    pub fn snapshots_of(self, engine: &str) -> Vec<Snapshot> {
        self.0.snapshots_of(engine)
    }
}

impl Context {
    /// The read-only view outputs get.
    pub fn records(&self) -> Records<'_> {
        Records(self)
    }
}

/// Whether the engine had an open incident before this tick's events.
pub fn was_open(t: &EngineTick, watch: &Watch) -> bool {
    if t.events
        .iter()
        .any(|e| matches!(e, IncidentEvent::Opened(_)))
    {
        return false;
    }
    if t.events
        .iter()
        .any(|e| matches!(e, IncidentEvent::Resolved(_) | IncidentEvent::Ended(_)))
    {
        return true;
    }
    watch.open_incident(&t.verdict.engine).is_some()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hangwatch_rules::{ProcFacts, ProcState, Thresholds};

    /// A plain engine of one rank, for tests anywhere in the agent.
    pub(crate) fn engine(id: &str) -> EngineFacts {
        EngineFacts {
            id: id.into(),
            model: None,
            port: None,
            api_pid: None,
            api_ns_pid: None,
            api_parent_pid: None,
            api: None,
            executor: Default::default(),
            deployment: None,
            lockstep: false,
            node: None,
            peers: Vec::new(),
            links: None,
            leader: None,
            core: ProcFacts {
                pid: 10,
                ns_pid: None,
                state: ProcState::Sleeping,
                wchan: Some("futex_do_wait".into()),
                cpu_seconds: 0.0,
                started_at_ms: 0,
            },
            tp: 1,
            pp: 1,
            dp: 1,
            dp_rank: 0,
            output_rank: 0,
            execute_timeout_seconds: 300.0,
            settings: BTreeMap::new(),
            ranks: Vec::new(),
            rings: Vec::new(),
            stacks: Vec::new(),
            log_events: Vec::new(),
            vllm_metrics: None,
            api_answered: None,
            nccl_ras: None,
            pod: None,
            credible: true,
        }
    }

    #[test]
    fn an_engine_gone_for_the_history_window_is_forgotten() {
        let mut cx = Context::new(10_000 + LAST_WORDS_MS);
        let mut watch = Watch::new(Thresholds::default());
        let mut step = |cx: &mut Context, at: Millis, engines: Vec<EngineFacts>| {
            let snap = Snapshot {
                at_ms: at,
                engines,
                ..Default::default()
            };
            let a = cx.note(&snap);
            let ticks = watch.step(&snap);
            cx.judged(&snap, &ticks, &watch);
            cx.settle(&snap, &ticks, &watch, &a);
            a
        };
        let a = step(&mut cx, 1_000, vec![engine("e")]);
        assert_eq!(a.appeared, vec!["e".to_string()]);
        assert!(cx.engine("e").is_some() && cx.last_verdict("e").is_some());
        let a = step(&mut cx, 2_000, vec![]);
        assert_eq!(a.gone, vec!["e".to_string()]);
        assert!(cx.facts("e").is_some(), "kept while last words may come");
        step(&mut cx, 2_000 + LAST_WORDS_MS + 1, vec![]);
        assert!(cx.facts("e").is_none(), "no incident: then the facts go");
        assert!(
            cx.engine("e").is_some_and(|r| !r.timeline.is_empty()),
            "the rest stays for the window"
        );
        let a = step(&mut cx, 12_500 + LAST_WORDS_MS, vec![]);
        assert_eq!(a.expired, vec!["e".to_string()]);
        assert!(cx.engine("e").is_none());
        assert!(cx
            .history
            .iter()
            .all(|s| 12_500 + LAST_WORDS_MS - s.at_ms <= 10_000 + LAST_WORDS_MS));
    }
}
