//! Bundles on demand (`POST /capture?engine=ID`): a person who thinks an engine looks
//! wrong gets the same evidence an incident would keep — a fresh stack round, the rings,
//! the GPUs, the log tail, the time line — without waiting for hangwatch to agree.
//! The tick answers each request at once (the bundle's id and path, or why not), asks
//! for a stack round, and writes the bundle when the round is in (or after the stack
//! timeout, with what there is).

use super::evidence::Evidence;
use crate::bundle::Trigger;
use crate::context::Context;
use crate::shared::{CaptureAnswer, CaptureRequest};
use hangwatch_rules::incident::{incident_id, Incident};
use hangwatch_rules::watch::Watch;
use hangwatch_rules::Millis;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;

pub struct Captures {
    rx: mpsc::Receiver<CaptureRequest>,
    min_interval_ms: Millis,
    wait_ms: Millis,
    bundle_dir: PathBuf,
    last: BTreeMap<String, Millis>,
    /// Bundles waiting for their stack round: (incident, asked at, why).
    pending: Vec<(Incident, Millis, Trigger)>,
    /// Incidents of other nodes this node's part was bundled for (`join`).
    joined: std::collections::BTreeSet<String>,
}

impl Captures {
    pub fn new(
        rx: mpsc::Receiver<CaptureRequest>,
        min_interval_ms: Millis,
        wait_ms: Millis,
        bundle_dir: PathBuf,
    ) -> Captures {
        Captures {
            rx,
            min_interval_ms,
            wait_ms,
            bundle_dir,
            last: BTreeMap::new(),
            pending: Vec::new(),
            joined: Default::default(),
        }
    }

    /// Answers this tick's requests and asks for their stack rounds.
    pub fn take_requests(
        &mut self,
        cx: &Context,
        watch: &Watch,
        evidence: &mut Evidence,
        now: Millis,
    ) {
        while let Ok(req) = self.rx.try_recv() {
            let answer = self.answer(&req.engine, cx, watch, evidence, now);
            let _ = req.reply.try_send(answer); // the server may have given up waiting
        }
    }

    fn answer(
        &mut self,
        engine: &str,
        cx: &Context,
        watch: &Watch,
        evidence: &mut Evidence,
        now: Millis,
    ) -> CaptureAnswer {
        let err = |status: u16, error: String| CaptureAnswer {
            status,
            body: json!({ "error": error }),
        };
        let Some(v) = cx
            .last_verdict(engine)
            .filter(|_| cx.facts(engine).is_some())
        else {
            return err(404, format!("no engine {engine:?} on this node"));
        };
        if let Some(at) = self.last.get(engine) {
            let wait = self.min_interval_ms - (now - at);
            if wait > 0 {
                return err(
                    429,
                    format!(
                        "{engine} was captured {} s ago; try again in {} s",
                        (now - at) / 1000,
                        (wait + 999) / 1000
                    ),
                );
            }
        }
        self.last.insert(engine.to_string(), now);
        // An open incident's evidence is the incident's; a capture names itself.
        let mut inc = Incident::of(incident_id(&format!("{engine}-capture"), now), v);
        inc.opened_ms = now;
        let body = json!({
            "incident_id": inc.id,
            "bundle": self.bundle_dir.join(&inc.id),
            "engine": engine,
            "state": v.state.as_str(),
            "open_incident": watch.open_incident(engine).map(|i| i.id.clone()),
        });
        evidence.capture(cx, engine);
        self.pending.push((inc, now, Trigger::Capture));
        CaptureAnswer { status: 202, body }
    }

    /// Another node's agent has incident `id` open for this engine's deployment: this
    /// node's part is bundled under the same id, once, with a fresh stack round (unless
    /// the part has an incident of its own, whose bundle says more).
    pub fn join(
        &mut self,
        engine: &str,
        id: &str,
        cx: &Context,
        watch: &Watch,
        evidence: &mut Evidence,
        now: Millis,
    ) {
        // This node's own bundle under that id (its incident, joined by the leader) is
        // never written over.
        let own = self.bundle_dir.join(id).exists();
        if own || self.joined.contains(id) || watch.open_incident(engine).is_some() {
            return;
        }
        let Some(v) = cx
            .last_verdict(engine)
            .filter(|_| cx.facts(engine).is_some())
        else {
            return;
        };
        if self.joined.len() >= 256 {
            self.joined.clear();
        }
        self.joined.insert(id.to_string());
        let mut inc = Incident::of(id.to_string(), v);
        inc.opened_ms = now;
        tracing::info!(
            engine,
            incident = id,
            "bundling this node's part for another node's incident"
        );
        evidence.capture(cx, engine);
        self.pending.push((inc, now, Trigger::Peer));
    }

    /// Captures ready to write: a round taken since they asked came in this tick, or
    /// they waited long enough.
    pub fn ready(
        &mut self,
        fresh: &[String],
        cx: &Context,
        now: Millis,
    ) -> Vec<(Incident, Trigger)> {
        let wait = self.wait_ms;
        let since = |engine: &str, at: Millis| {
            let last = cx.engine(engine).and_then(|r| r.rounds.last());
            last.is_some_and(|r| r.requested_at_ms >= at)
        };
        let (done, waiting): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|(inc, at, _)| {
            (fresh.contains(&inc.engine) && since(&inc.engine, *at)) || now - at >= wait
        });
        self.pending = waiting;
        self.last.retain(|_, at| now - *at < self.min_interval_ms);
        done.into_iter().map(|(i, _, t)| (i, t)).collect()
    }
}
