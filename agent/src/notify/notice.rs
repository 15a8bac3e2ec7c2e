//! What a notification says, once, in hangwatch's own words: the versioned JSON body
//! (`docs/notifications.md`). The Slack and Alertmanager bodies are cut from it at send
//! time, so a notification that waited in the queue still carries fresh times.

use crate::clock::rfc3339;
use crate::context::Records;
use hangwatch_collectors::evidence::StackRound;
use hangwatch_rules::incident::{Incident, IncidentEvent};
use hangwatch_rules::{EngineFacts, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The body's version: a receiver that parses it checks this first.
pub const SCHEMA: &str = "hangwatch.notification/v1";
/// Frames of a suspect's main thread sent along, innermost first.
const TOP_FRAMES: usize = 5;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Opened,
    Escalated,
    Resolved,
    Dead,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Opened => "opened",
            Event::Escalated => "escalated",
            Event::Resolved => "resolved",
            Event::Dead => "dead",
        }
    }

    pub fn of(ev: &IncidentEvent) -> Event {
        match ev {
            IncidentEvent::Opened(_) => Event::Opened,
            IncidentEvent::Escalated(_) => Event::Escalated,
            IncidentEvent::Resolved(_) => Event::Resolved,
            IncidentEvent::Ended(_) => Event::Dead,
        }
    }

    /// Whether the incident is over with this event.
    pub fn closes(self) -> bool {
        matches!(self, Event::Resolved | Event::Dead)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NoticeSuspect {
    /// None for a process that is no rank (see `role`).
    pub rank: Option<u32>,
    /// `worker`, `engine_core`, `api_server`, `dp_coordinator`.
    #[serde(default = "worker")]
    pub role: String,
    pub pid: u32,
    /// The node it runs on, for a rank of another node (its pid is that node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
    pub reasons: Vec<String>,
    pub confidence: f64,
    /// The main thread's innermost frames in the latest stack round, as `name (file:line)`.
    pub top_frames: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Notice {
    pub schema: String,
    /// Unique per notification: receivers may use it to drop a repeat (also sent as the
    /// `Idempotency-Key` header).
    pub id: String,
    pub event: Event,
    pub incident_id: String,
    pub engine: String,
    pub node: String,
    /// `stalled` while open, `dead` once the engine died, `resolved` when it recovered.
    pub verdict: String,
    /// `critical` for a stall, `warning` for a long step past its ceiling.
    pub severity: String,
    pub suspects: Vec<NoticeSuspect>,
    pub engine_reasons: Vec<String>,
    /// The one line a person reads first.
    pub summary: String,
    pub onset_at: String,
    pub opened_at: String,
    pub event_at: String,
    /// Seconds left before vLLM's own execute timeout kills the engine, when known.
    pub deadline_left_seconds: Option<f64>,
    /// The incident's bundle on the node.
    pub bundle: String,
    /// What identifies the engine to a person: `model`, `tp`, `port`, and `namespace`,
    /// `pod` and `container` when it runs in a pod.
    pub labels: BTreeMap<String, String>,
}

/// Where the notice's facts come from: the event, this tick's verdict, the engine.
pub struct Source<'a> {
    pub event: &'a IncidentEvent,
    pub verdict: &'a Verdict,
    pub engine: Option<&'a EngineFacts>,
    pub records: Records<'a>,
    pub node: &'a str,
    pub bundle_dir: &'a Path,
    pub now_ms: i64,
    /// Makes `id` unique among this incident's notifications.
    pub seq: u64,
}

fn worker() -> String {
    "worker".to_string()
}

pub fn notice(s: &Source<'_>) -> Notice {
    let inc = s.event.incident();
    let event = Event::of(s.event);
    let rounds = s.records.engine(&inc.engine).map(|r| &r.rounds);
    let suspects = inc
        .suspects
        .iter()
        .map(|x| NoticeSuspect {
            rank: x.rank,
            role: x.role.as_str().to_string(),
            pid: x.pid,
            node: x.node,
            reasons: x.reason_codes().iter().map(|c| c.to_string()).collect(),
            confidence: (x.confidence * 100.0).round() / 100.0,
            top_frames: rounds.map(|r| top_frames(r, x.pid)).unwrap_or_default(),
        })
        .collect();
    let verdict = match event {
        Event::Resolved => "resolved",
        Event::Dead => "dead",
        _ => "stalled",
    };
    let deadline = if event.closes() {
        None
    } else {
        s.verdict
            .deadline_left_seconds
            .or(inc.deadline_left_seconds)
            .map(|d| d.max(0.0).round())
    };
    Notice {
        schema: SCHEMA.to_string(),
        id: format!("{}/{}/{}", inc.id, event.as_str(), s.seq),
        event,
        incident_id: inc.id.clone(),
        engine: inc.engine.clone(),
        node: s.node.to_string(),
        verdict: verdict.to_string(),
        severity: inc.severity().to_string(),
        suspects,
        engine_reasons: inc
            .engine_reasons
            .iter()
            .map(|r| r.code.as_str().to_string())
            .collect(),
        summary: summary(inc, event, s.node, deadline, s.now_ms),
        onset_at: rfc3339(inc.onset_ms),
        opened_at: rfc3339(inc.opened_ms),
        event_at: rfc3339(s.now_ms),
        deadline_left_seconds: deadline,
        bundle: s.bundle_dir.join(&inc.id).display().to_string(),
        labels: s.engine.map(labels).unwrap_or_default(),
    }
}

fn labels(e: &EngineFacts) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    if let Some(m) = &e.model {
        l.insert("model".to_string(), m.clone());
    }
    l.insert("tp".to_string(), e.tp.to_string());
    if let Some(p) = e.port {
        l.insert("port".to_string(), p.to_string());
    }
    if let Some(d) = &e.deployment {
        l.insert("deployment".to_string(), d.clone());
        if e.dp > 1 {
            l.insert("replica".to_string(), e.dp_rank.to_string());
        }
    }
    if let Some(n) = &e.node {
        l.insert("node_rank".to_string(), n.node_rank.to_string());
    }
    if let Some(pod) = &e.pod {
        for (k, v) in [
            ("namespace", &pod.namespace),
            ("pod", &pod.pod),
            ("container", &pod.container),
        ] {
            if let Some(v) = v {
                l.insert(k.to_string(), v.clone());
            }
        }
    }
    l
}

/// The innermost frames of the rank's main thread in the newest round that has it.
fn top_frames(rounds: &[StackRound], pid: u32) -> Vec<String> {
    rounds
        .iter()
        .rev()
        .flat_map(|r| r.dumps.iter())
        .filter(|d| d.pid == pid)
        .find_map(|d| d.main_thread().filter(|t| !t.frames.is_empty()))
        .map(|t| {
            t.frames
                .iter()
                .take(TOP_FRAMES)
                .map(|f| f.place())
                .collect()
        })
        .unwrap_or_default()
}

fn summary(inc: &Incident, event: Event, node: &str, deadline: Option<f64>, now: i64) -> String {
    let e = &inc.engine;
    let what = match inc.suspects.first() {
        Some(x) => {
            let why = x.reasons.first().map(|r| r.detail.as_str()).unwrap_or("");
            format!("{} (pid {}) is stuck: {why}", x.who(), x.pid)
        }
        None if inc.orphaned().is_some() => {
            inc.orphaned().map_or(String::new(), |r| r.detail.clone())
        }
        None if inc.severity() == "warning" => {
            let why = inc.engine_reasons.first().map(|r| r.detail.as_str());
            format!(
                "long step past its limit: {}",
                why.unwrap_or("every rank busy")
            )
        }
        None if inc.remote_wait().is_some() => {
            let why = inc.remote_wait().map_or("", |r| r.detail.as_str());
            format!("stalled, culprit on another node: {why}")
        }
        None => {
            let why = inc.engine_reasons.first().map(|r| r.detail.as_str());
            format!(
                "stalled, culprit unknown: {}",
                why.unwrap_or("no rank moves")
            )
        }
    };
    let lasted = (now - inc.onset_ms).max(0) / 1000;
    match event {
        Event::Opened | Event::Escalated => {
            let left = deadline
                .map(|d| format!(" — {d:.0} s before vLLM's timeout"))
                .unwrap_or_default();
            format!("engine {e} on {node}: {what}{left}")
        }
        Event::Resolved => format!("engine {e} on {node} recovered after {lasted} s ({what})"),
        Event::Dead => {
            format!("engine {e} on {node} died while stalled, {lasted} s after onset ({what})")
        }
    }
}
