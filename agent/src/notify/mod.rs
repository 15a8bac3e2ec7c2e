//! Notifications: the output that tells receivers (webhooks, Slack, Alertmanager) about
//! incidents. The tick only decides what to say — one notice per incident event, an
//! escalation at most every `alerts.escalate_every`, an Alertmanager re-post every
//! `alerts.repeat_every` while open — and hands it to each receiver's thread
//! (`deliver.rs`), which owns the durable queue (`queue.rs`) and the network.

mod deliver;
pub mod format;
pub mod notice;
pub mod queue;

use crate::config::alerts::{AlertsConfig, HookFormat, Receiver};
use crate::metrics::notify::NotifyMetrics;
use crate::outputs::{Output, TickView};
use crate::shared::CallWindow;
use deliver::Delivery;
use hangwatch_rules::incident::{Incident, IncidentEvent};
use hangwatch_rules::Millis;
use notice::{Event, Source};
use queue::{AmAlert, DiskQueue, Queued};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

struct Outbox {
    format: HookFormat,
    tx: mpsc::Sender<Queued>,
}

/// What the output remembers of an open incident.
#[derive(Default)]
struct Open {
    engine: String,
    seq: u64,
    /// The last notice sent: what a re-post repeats.
    last: Option<notice::Notice>,
    last_escalation_ms: Millis,
    /// The newest escalation held back by the rate limit.
    pending: Option<Queued>,
    last_post_ms: Millis,
    /// Alertmanager alerts raised so far (alertname, rank): all end with the incident.
    raised: BTreeSet<AlertKey>,
}

/// Opened and escalated notices sent per minute at most, all engines together: many
/// engines stalling at once (or a user's look-alikes) page once per incident, not in a
/// flood. Ends and re-posts always go: they close or keep what was said.
const MAX_NOTICES_PER_MINUTE: usize = 30;

pub struct NotifyOutput {
    /// When the last opened and escalated notices went, for the per-minute cap.
    recent: CallWindow,
    /// Notices held back by the cap since it was last said.
    held_back: u64,
    outboxes: Vec<Outbox>,
    node: String,
    bundle_dir: PathBuf,
    escalate_ms: Millis,
    repeat_ms: Millis,
    open: BTreeMap<String, Open>,
}

impl NotifyOutput {
    /// Opens every receiver's queue (what an earlier run left is sent first) and starts
    /// its thread. A receiver whose queue folder cannot be made is said and skipped.
    pub fn start(
        cfg: &AlertsConfig,
        receivers: Vec<Receiver>,
        bundle_dir: PathBuf,
        metrics: &NotifyMetrics,
    ) -> (NotifyOutput, Vec<JoinHandle<()>>) {
        let mut outboxes = Vec::new();
        let mut threads = Vec::new();
        for r in receivers {
            let dir = cfg.queue_dir.join(&r.name);
            let queue = match DiskQueue::open(&dir, cfg.queue_max) {
                Ok((q, problems)) => {
                    for p in problems {
                        tracing::warn!(receiver = %r.name, "notification queue: {p}");
                    }
                    if !q.is_empty() {
                        tracing::info!(receiver = %r.name, waiting = q.len(), "notifications left by an earlier run will be sent");
                    }
                    q
                }
                Err(e) => {
                    tracing::error!(receiver = %r.name, dir = %dir.display(), error = %e, "cannot open the notification queue: receiver disabled");
                    continue;
                }
            };
            metrics.announce(&r.name);
            let (tx, rx) = mpsc::channel();
            let format = r.format;
            let name = r.name.clone();
            let d = Delivery {
                receiver: r,
                queue,
                metrics: metrics.clone(),
                retry_max: cfg.retry_max,
                repeat_ms: cfg.repeat_every.as_millis() as i64,
            };
            match std::thread::Builder::new()
                .name(format!("notify-{name}"))
                .spawn(move || d.run(rx))
            {
                Ok(h) => {
                    threads.push(h);
                    outboxes.push(Outbox { format, tx });
                }
                Err(e) => {
                    tracing::error!(receiver = %name, error = %e, "cannot start the receiver's thread")
                }
            }
        }
        let out = NotifyOutput {
            recent: Default::default(),
            held_back: 0,
            outboxes,
            node: node_name(&cfg.node),
            bundle_dir,
            escalate_ms: cfg.escalate_every.as_millis() as Millis,
            repeat_ms: cfg.repeat_every.as_millis() as Millis,
            open: BTreeMap::new(),
        };
        (out, threads)
    }

    /// Whether an opened or escalated notice may go now (counted if so); held-back
    /// notices are said once a minute.
    fn admit(&mut self, now: Millis) -> bool {
        if !self.recent.admit(now, MAX_NOTICES_PER_MINUTE) {
            self.held_back += 1;
            return false;
        }
        if self.held_back > 0 {
            tracing::warn!(held_back = self.held_back, "notices held back by the cap of {MAX_NOTICES_PER_MINUTE} a minute (their incidents and bundles are there)");
            self.held_back = 0;
        }
        true
    }

    fn send(&self, q: &Queued, only_alertmanager: bool) {
        for o in &self.outboxes {
            if only_alertmanager && o.format != HookFormat::Alertmanager {
                continue;
            }
            // A receiver thread that ended has said why; its queue keeps the rest.
            let _ = o.tx.send(q.clone());
        }
    }

    fn queued(
        &mut self,
        view: &TickView<'_>,
        ev: &IncidentEvent,
        v: &hangwatch_rules::Verdict,
    ) -> Queued {
        let inc = ev.incident();
        let open = self.open.entry(inc.id.clone()).or_default();
        open.seq += 1;
        open.engine = inc.engine.clone();
        let n = notice::notice(&Source {
            event: ev,
            verdict: v,
            engine: view.records.facts(&inc.engine),
            records: view.records,
            node: &self.node,
            bundle_dir: &self.bundle_dir,
            now_ms: view.now,
            seq: open.seq,
        });
        let event = n.event;
        let now_raised = if event.closes() {
            BTreeSet::new()
        } else {
            alerts_of(inc)
        };
        open.raised.extend(now_raised.iter().cloned());
        let alerts = am_alerts(&open.raised, &now_raised);
        Queued {
            notice: n,
            alerts,
            refresh: false,
            queued_ms: view.now,
        }
    }
}

impl Output for NotifyOutput {
    fn emit(&mut self, view: &TickView<'_>) {
        if self.outboxes.is_empty() {
            return;
        }
        let now = view.now;
        for t in view.ticks {
            for ev in &t.events {
                let q = self.queued(view, ev, &t.verdict);
                let id = q.notice.incident_id.clone();
                match q.notice.event {
                    Event::Escalated => {
                        if let Some(o) = self.open.get_mut(&id) {
                            o.pending = Some(q);
                        }
                    }
                    Event::Opened => {
                        if self.admit(now) {
                            self.send(&q, false);
                        }
                        if let Some(o) = self.open.get_mut(&id) {
                            o.last_escalation_ms = now;
                            o.last_post_ms = now;
                            o.last = Some(q.notice);
                        }
                    }
                    Event::Resolved | Event::Dead => {
                        self.send(&q, false);
                        self.open.remove(&id);
                    }
                }
            }
        }
        self.follow_up(view);
    }
}

impl NotifyOutput {
    /// Held escalations whose time has come, and Alertmanager re-posts.
    fn follow_up(&mut self, view: &TickView<'_>) {
        let now = view.now;
        let mut out = Vec::new();
        for (id, o) in &mut self.open {
            if now - o.last_escalation_ms >= self.escalate_ms {
                if let Some(q) = o.pending.take() {
                    o.last_escalation_ms = now;
                    o.last_post_ms = now;
                    o.last = Some(q.notice.clone());
                    out.push((q, false, true));
                    continue;
                }
            }
            if now - o.last_post_ms >= self.repeat_ms {
                o.last_post_ms = now;
                let inc = view
                    .decided
                    .open_incident(&o.engine)
                    .filter(|i| &i.id == id);
                if let (Some(inc), Some(mut q)) = (inc, refresh_of(o, now)) {
                    q.alerts = am_alerts(&o.raised, &alerts_of(inc));
                    q.notice.id = format!("{id}/refresh/{now}");
                    out.push((q, true, false));
                }
            }
        }
        for (q, only_am, capped) in out {
            if !capped || self.admit(now) {
                self.send(&q, only_am);
            }
        }
        // Incidents the tracker no longer holds (their engine was forgotten).
        self.open.retain(|id, o| {
            view.decided
                .open_incident(&o.engine)
                .is_some_and(|i| &i.id == id)
        });
    }
}

/// The Alertmanager alerts an open incident raises now.
/// One alert an incident raises: its name, the rank and the role it names.
type AlertKey = (String, Option<u32>, Option<String>);

fn alerts_of(inc: &Incident) -> BTreeSet<AlertKey> {
    if inc.suspects.is_empty() {
        let name = if inc.severity() == "warning" {
            "HangwatchLongStep"
        } else {
            "HangwatchEngineStalled"
        };
        return [(name.to_string(), None, None)].into();
    }
    inc.suspects
        .iter()
        .map(|s| {
            let name = if s.rank.is_some() {
                "HangwatchRankStuck"
            } else {
                "HangwatchProcessStuck"
            };
            (name.to_string(), s.rank, Some(s.role.as_str().to_string()))
        })
        .collect()
}

/// A re-post of what was last said of the incident.
fn refresh_of(o: &Open, now: Millis) -> Option<Queued> {
    Some(Queued {
        notice: o.last.clone()?,
        alerts: Vec::new(),
        refresh: true,
        queued_ms: now,
    })
}

/// Every alert the incident raised: those it raises now fire, the others end.
fn am_alerts(raised: &BTreeSet<AlertKey>, now: &BTreeSet<AlertKey>) -> Vec<AmAlert> {
    raised
        .iter()
        .map(|key| AmAlert {
            alertname: key.0.clone(),
            rank: key.1,
            role: key.2.clone(),
            firing: now.contains(key),
        })
        .collect()
}

/// The configured name, else `NODE_NAME` (a pod's downward API), else the host name.
fn node_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_string();
    }
    if let Ok(n) = std::env::var("NODE_NAME") {
        if !n.trim().is_empty() {
            return n.trim().to_string();
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangwatch_rules::verdict::{Reason, ReasonCode, Suspect};
    use hangwatch_rules::EngineState;

    fn incident(ranks: &[u32], reasons: &[ReasonCode]) -> Incident {
        Incident {
            id: "vllm-1-x".into(),
            engine: "vllm-1".into(),
            onset_ms: 0,
            opened_ms: 1000,
            verdict: EngineState::Stalled,
            suspects: ranks
                .iter()
                .map(|r| Suspect {
                    rank: Some(*r),
                    role: hangwatch_rules::Role::Worker,
                    pid: 100 + r,
                    node: None,
                    reasons: vec![],
                    confidence: 0.9,
                })
                .collect(),
            engine_reasons: reasons
                .iter()
                .map(|c| Reason {
                    code: *c,
                    detail: String::new(),
                    since_ms: 0,
                })
                .collect(),
            deadline_left_seconds: None,
            escalations: 0,
            closed_ms: None,
            outcome: None,
        }
    }

    #[test]
    fn a_rank_no_longer_named_ends_its_alert_and_the_new_one_fires() {
        let first = alerts_of(&incident(&[], &[ReasonCode::CollectiveWedge]));
        assert_eq!(
            first,
            [("HangwatchEngineStalled".to_string(), None, None)].into()
        );
        let mut raised = first.clone();
        let now = alerts_of(&incident(&[2], &[]));
        raised.extend(now.iter().cloned());
        let a = am_alerts(&raised, &now);
        let firing: Vec<_> = a.iter().filter(|x| x.firing).map(|x| x.rank).collect();
        let ended: Vec<_> = a
            .iter()
            .filter(|x| !x.firing)
            .map(|x| x.alertname.as_str())
            .collect();
        assert_eq!(firing, [Some(2)]);
        assert_eq!(ended, ["HangwatchEngineStalled"]);
        let long = alerts_of(&incident(&[], &[ReasonCode::LongStep]));
        assert!(
            long.contains(&("HangwatchLongStep".to_string(), None, None)),
            "{long:?}"
        );
    }

    /// Thirty opened or escalated notices a minute, all engines together; the next
    /// minute sends again.
    #[test]
    fn notices_per_minute_are_capped() {
        let cfg = AlertsConfig::default();
        let metrics = NotifyMetrics::default();
        let (mut out, _) = NotifyOutput::start(&cfg, Vec::new(), PathBuf::new(), &metrics);
        let sent = (0..40).filter(|i| out.admit(1_000 + i)).count();
        assert_eq!(sent, MAX_NOTICES_PER_MINUTE);
        assert_eq!(out.held_back, 10);
        assert!(out.admit(61_001));
        assert_eq!(out.held_back, 0, "said once the cap let a notice through");
    }
}
