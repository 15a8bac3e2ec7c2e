//! Both ends of the peer exchange, shared by the tick and the HTTP server: the leader's
//! inbox of follower reports and its views to answer with; the follower's outbox and
//! the leader's last answers.

use super::{LeaderView, Outgoing, Report};
use crate::config::alerts::Secret;
use crate::window::CallWindow;
use hangwatch_rules::watch::{EngineTick, Watch};
use hangwatch_rules::{
    EngineFacts, EngineState, Executor, LeaderWord, Millis, PeerPart, PeerRank, PeerSuspect,
    Snapshot,
};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// A report body larger than this is refused (a part of a few ranks is ~1 KB).
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// Reports kept this long; the judge reads only fresh ones (`rules/src/remote.rs`).
const KEEP_MS: Millis = 30_000;
/// Bounds of one report, past which it is refused: no node has more.
const MAX_SUSPECTS: usize = 64;
const MAX_TEXT: usize = 256;
/// Follower parts a leader keeps reports of, all deployments together.
const MAX_PARTS: usize = 1_024;
/// An idle follower reports this often (a heartbeat), one with work every
/// `report_interval`.
const IDLE_EVERY_MS: Millis = 10_000;
/// A leader's answer older than this says nothing of its step now.
const ANSWER_FRESH_MS: Millis = 5_000;
/// Ticks are about an interval apart, not exactly: a report due within this much is sent.
const DUE_SLACK_MS: Millis = 200;

pub struct PeerDesk {
    pub token: Secret,
    /// Good-token calls and bad-token calls per minute, apart (`server.rs`).
    pub calls: CallWindow,
    pub denials: CallWindow,
    /// Leader side: (deployment, node) → (received at, report).
    inbox: Mutex<BTreeMap<(String, u32), (Millis, PeerPart)>>,
    /// Leader side: deployment → what to answer.
    views: Mutex<BTreeMap<String, LeaderView>>,
    /// Follower side: the reports of this tick, sent by the client thread.
    outbox: Mutex<Vec<Outgoing>>,
    /// Follower side: part engine → (answered at, the leader's view).
    answers: Mutex<BTreeMap<String, (Millis, LeaderView)>>,
    /// `host:port` of the leader's agent, or empty: the master address and `port`.
    leader_agent: String,
    port: u16,
    /// How often a part with work reports (`peers.report_interval`).
    every_ms: Millis,
    last_sent: Mutex<BTreeMap<String, Millis>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PeerDesk {
    pub fn new(token: Secret, leader_agent: String, port: u16, every_ms: Millis) -> PeerDesk {
        PeerDesk {
            token,
            calls: CallWindow::default(),
            denials: CallWindow::default(),
            inbox: Mutex::default(),
            views: Mutex::default(),
            outbox: Mutex::default(),
            answers: Mutex::default(),
            leader_agent,
            port,
            every_ms,
            last_sent: Mutex::default(),
        }
    }

    /// The server's half: a follower's report, checked and kept; the answer is this
    /// node's view of that deployment.
    pub fn receive(&self, body: &[u8], now: Millis) -> Result<LeaderView, String> {
        if body.len() > MAX_REPORT_BYTES {
            return Err(format!("a report is {MAX_REPORT_BYTES} bytes at most"));
        }
        let r: Report = serde_json::from_slice(body).map_err(|e| format!("not a report: {e}"))?;
        check(&r)?;
        let mut inbox = lock(&self.inbox);
        inbox.retain(|_, (at, _)| now - *at <= KEEP_MS);
        let key = (r.deployment.clone(), r.part.node_rank);
        if inbox.len() >= MAX_PARTS && !inbox.contains_key(&key) {
            return Err("too many follower parts".into());
        }
        inbox.insert(key, (now, r.part));
        let view = lock(&self.views).get(&r.deployment).cloned();
        Ok(view.unwrap_or(LeaderView {
            state: "unknown".into(),
            ..LeaderView::default()
        }))
    }

    /// Before the judge: each leader engine gets its followers' fresh reports; each
    /// follower part the age of the leader's late step.
    pub fn attach(&self, snap: &mut Snapshot, now: Millis) {
        self.date_parts(snap, now);
        let inbox = lock(&self.inbox);
        for e in &mut snap.engines {
            let leads = e.node.as_ref().is_some_and(|n| !n.remote_ranks.is_empty());
            let Some(dep) = e.deployment.clone().filter(|_| leads) else {
                continue;
            };
            e.peers = inbox
                .iter()
                .filter(|((d, _), (at, _))| *d == dep && now - *at <= KEEP_MS)
                .map(|(_, (at, p))| PeerPart {
                    age_ms: now - *at,
                    ..p.clone()
                })
                .collect();
        }
    }

    /// After the judge: the leader's answers for its deployments, and the follower's
    /// reports to send.
    pub fn after(&self, snap: &Snapshot, ticks: &[EngineTick], watch: &Watch, now: Millis) {
        let mut views = lock(&self.views);
        let mut out = Vec::new();
        for t in ticks {
            let v = &t.verdict;
            let Some(e) = snap.engines.iter().find(|e| e.id == v.engine) else {
                continue;
            };
            let (Some(dep), Some(node)) = (&e.deployment, &e.node) else {
                continue;
            };
            let incident = watch.open_incident(&e.id).map(|i| i.id.clone());
            if e.executor != Executor::Follower {
                let late = matches!(v.state, EngineState::Busy | EngineState::Stalled);
                let view = LeaderView {
                    engine: e.id.clone(),
                    state: v.state.as_str().into(),
                    incident,
                    step_age_ms: v
                        .step_age_seconds
                        .filter(|_| late)
                        .map(|s| (s * 1000.0) as Millis),
                };
                views.insert(dep.clone(), view);
                continue;
            }
            if !self.due(&e.id, v.state, now) {
                continue;
            }
            let part = PeerPart {
                node_rank: node.node_rank,
                engine: e.id.clone(),
                state: v.state.as_str().into(),
                suspects: suspects_of(v),
                incident,
                age_ms: 0,
                ranks: ranks_of(v, e),
            };
            out.push(Outgoing {
                to: self.leader_of(&node.leader),
                report: Report {
                    deployment: dep.clone(),
                    part,
                },
            });
        }
        *lock(&self.outbox) = out;
    }

    /// Every `report_interval` while the part has work or is stalled; idle, every
    /// `IDLE_EVERY_MS` (or the interval, when that is longer).
    fn due(&self, engine: &str, state: EngineState, now: Millis) -> bool {
        let mut sent = lock(&self.last_sent);
        let quiet = matches!(state, EngineState::Idle | EngineState::Starting);
        let every = if quiet {
            IDLE_EVERY_MS.max(self.every_ms)
        } else {
            self.every_ms
        };
        let last = sent.get(engine).copied().unwrap_or(Millis::MIN / 2);
        if now - last + DUE_SLACK_MS < every {
            return false;
        }
        sent.insert(engine.to_string(), now);
        true
    }

    fn leader_of(&self, meets_at: &str) -> String {
        if !self.leader_agent.is_empty() {
            return self.leader_agent.clone();
        }
        let host = meets_at.rsplit_once(':').map_or(meets_at, |(h, _)| h);
        format!("{host}:{}", self.port)
    }

    /// The client thread's half: what to send now.
    pub fn take_outbox(&self) -> Vec<Outgoing> {
        std::mem::take(&mut *lock(&self.outbox))
    }

    /// Follower parts: the leader's late step, aged by the time since it answered.
    fn date_parts(&self, snap: &mut Snapshot, now: Millis) {
        let answers = lock(&self.answers);
        for e in snap
            .engines
            .iter_mut()
            .filter(|e| e.executor == Executor::Follower)
        {
            let fresh = answers
                .get(&e.id)
                .filter(|(at, _)| now - *at <= ANSWER_FRESH_MS);
            e.leader = fresh.map(|(at, v)| LeaderWord {
                stalled: v.state == EngineState::Stalled.as_str(),
                serving: [EngineState::Idle, EngineState::Busy, EngineState::Stalled]
                    .iter()
                    .any(|s| v.state == s.as_str()),
                step_age_ms: v.step_age_ms.map(|a| a + (now - *at)),
                incident: v.incident.clone(),
            });
        }
    }

    pub fn answered(&self, engine: &str, view: LeaderView, now: Millis) {
        lock(&self.answers).insert(engine.to_string(), (now, view));
    }

    /// Follower side: parts whose leader has an incident open, answered lately, with
    /// that incident's id.
    pub fn leader_incidents(&self, now: Millis) -> Vec<(String, String)> {
        let mut answers = lock(&self.answers);
        answers.retain(|_, (at, _)| now - *at <= KEEP_MS);
        answers
            .iter()
            .filter(|(_, (at, _))| now - *at <= 5_000)
            .filter_map(|(e, (_, v))| Some((e.clone(), v.incident.clone()?)))
            .collect()
    }
}

/// A report is refused whole when any part of it is out of bounds.
fn check(r: &Report) -> Result<(), String> {
    let p = &r.part;
    let long = |s: &str| s.len() > MAX_TEXT;
    if r.deployment.is_empty() || long(&r.deployment) || long(&p.engine) || long(&p.state) {
        return Err("deployment, engine or state missing or too long".into());
    }
    if p.incident.as_deref().is_some_and(long) {
        return Err("incident id too long".into());
    }
    if p.ranks.len() > MAX_SUSPECTS {
        return Err("too many ranks".into());
    }
    if p.suspects.len() > MAX_SUSPECTS
        || p.suspects
            .iter()
            .any(|s| s.reasons.len() > 16 || s.reasons.iter().any(|x| long(x)))
    {
        return Err("too many suspects or reasons".into());
    }
    Ok(())
}

/// What each of the part's ranks does, with its pid there (while the step is late).
fn ranks_of(v: &hangwatch_rules::Verdict, e: &EngineFacts) -> Vec<PeerRank> {
    v.rank_activity
        .iter()
        .filter_map(|a| {
            let r = e.ranks.iter().find(|r| r.rank == a.rank)?;
            Some(PeerRank {
                rank: a.rank,
                pid: r.process.pid,
                doing: a.doing,
            })
        })
        .collect()
}

/// The part's named ranks, as the leader will read them (pids as that node's agent
/// sees them: what an operator there types).
fn suspects_of(v: &hangwatch_rules::Verdict) -> Vec<PeerSuspect> {
    v.suspects
        .iter()
        .filter_map(|s| {
            Some(PeerSuspect {
                rank: s.rank?,
                pid: s.pid,
                reasons: s.reason_codes().iter().map(|c| c.to_string()).collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desk(every_ms: Millis) -> PeerDesk {
        PeerDesk::new(Secret::for_test("t"), String::new(), 9477, every_ms)
    }

    #[test]
    fn a_busy_part_reports_every_report_interval_and_an_idle_one_every_ten_seconds() {
        let d = desk(3_000);
        let sent: Vec<Millis> = (0..10)
            .map(|i| i * 1_000)
            .filter(|t| d.due("p", EngineState::Busy, *t))
            .collect();
        assert_eq!(sent, vec![0, 3_000, 6_000, 9_000]);
        let d = desk(1_000);
        // Ticks a little less than the interval apart still report every tick.
        let ticks = [0, 990, 1_985, 2_980];
        assert!(ticks.iter().all(|t| d.due("p", EngineState::Stalled, *t)));
        let idle: Vec<Millis> = (0..25)
            .map(|i| i * 1_000)
            .filter(|t| d.due("q", EngineState::Idle, *t))
            .collect();
        assert_eq!(idle, vec![0, 10_000, 20_000]);
    }

    #[test]
    fn a_follower_part_takes_the_leaders_step_age_and_incident_while_fresh() {
        let d = desk(1_000);
        let view = LeaderView {
            engine: "vllm-8000".into(),
            state: "stalled".into(),
            incident: Some("vllm-8000-20261207T000000Z".into()),
            step_age_ms: Some(4_000),
        };
        d.answered("part", view, 10_000);
        let part = |now| {
            let mut snap = Snapshot {
                engines: vec![EngineFacts {
                    executor: Executor::Follower,
                    ..crate::context::tests::engine("part")
                }],
                ..Snapshot::default()
            };
            d.attach(&mut snap, now);
            snap.engines.remove(0)
        };
        let e = part(11_000);
        let word = e.leader.expect("the leader's word");
        assert!(word.stalled && word.serving);
        assert_eq!(word.step_age_ms, Some(5_000));
        assert_eq!(word.incident.as_deref(), Some("vllm-8000-20261207T000000Z"));
        let stale = part(16_000);
        assert_eq!(stale.leader, None);
    }
}
