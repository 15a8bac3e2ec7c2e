//! Both ends of the peer exchange, shared by the tick and the HTTP server: the leader's
//! inbox of follower reports and its views to answer with; the follower's outbox and
//! the leader's last answers.

use super::{LeaderView, Outgoing, Report};
use crate::config::alerts::Secret;
use crate::window::CallWindow;
use hangwatch_rules::watch::{EngineTick, Watch};
use hangwatch_rules::{EngineState, Executor, Millis, PeerPart, PeerSuspect, Snapshot};
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
/// An idle follower reports this often (a heartbeat), one with work every tick.
const IDLE_EVERY_MS: Millis = 10_000;

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
    last_sent: Mutex<BTreeMap<String, Millis>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PeerDesk {
    pub fn new(token: Secret, leader_agent: String, port: u16) -> PeerDesk {
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

    /// Leader side, before the judge: each leader engine gets its followers' fresh
    /// reports.
    pub fn attach(&self, snap: &mut Snapshot, now: Millis) {
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
                let view = LeaderView {
                    engine: e.id.clone(),
                    state: v.state.as_str().into(),
                    incident,
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

    /// Every tick while the part has work or is stalled; idle, every `IDLE_EVERY_MS`.
    fn due(&self, engine: &str, state: EngineState, now: Millis) -> bool {
        let mut sent = lock(&self.last_sent);
        let quiet = matches!(state, EngineState::Idle | EngineState::Starting);
        let last = sent.get(engine).copied().unwrap_or(0);
        if quiet && now - last < IDLE_EVERY_MS {
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
    if p.suspects.len() > MAX_SUSPECTS
        || p.suspects
            .iter()
            .any(|s| s.reasons.len() > 16 || s.reasons.iter().any(|x| long(x)))
    {
        return Err("too many suspects or reasons".into());
    }
    Ok(())
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
