//! The bundle output: on every incident event (and when new stacks arrive for an open
//! incident) the engine's evidence is gathered and handed to the writer thread, so a
//! slow or full disk never holds up the tick.

use super::{Output, TickView};
use crate::bundle::{BundleContents, BundleWriter, Trigger};
use crate::shared::Shared;
use hangwatch_collectors::logs::LogTails;
use hangwatch_rules::incident::Incident;
use hangwatch_rules::Verdict;
use std::sync::mpsc;
use std::sync::Arc;

pub struct BundleOutput {
    tx: mpsc::Sender<BundleContents>,
    shared: Arc<Shared>,
    tails: Option<LogTails>,
}

impl BundleOutput {
    /// Starts the writer thread; it ends when the output is dropped.
    pub fn start(
        writer: BundleWriter,
        shared: Arc<Shared>,
        tails: Option<LogTails>,
    ) -> std::io::Result<(BundleOutput, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<BundleContents>();
        let wshared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("bundles".into())
            .spawn(move || write_all(writer, rx, wshared))?;
        Ok((BundleOutput { tx, shared, tails }, handle))
    }

    /// Gathers the engine's evidence for `inc` (an incident, or a capture's record) and
    /// hands it to the writer.
    fn send(&self, view: &TickView<'_>, inc: &Incident, v: &Verdict, trigger: Trigger) {
        let cx = view.records;
        let Some(record) = cx.engine(&inc.engine) else {
            tracing::error!(engine = %inc.engine, "no record of the engine: bundle not written");
            self.shared.metrics.agent.bundle_error();
            return;
        };
        let Some(engine) = record.facts.clone() else {
            tracing::error!(engine = %inc.engine, "no facts for the engine: bundle not written");
            self.shared.metrics.agent.bundle_error();
            return;
        };
        let contents = BundleContents {
            gpu_classes: view.decided.gpu_verdicts().values().cloned().collect(),
            events: record.events.iter().cloned().collect(),
            log_tail: self
                .tails
                .as_ref()
                .map(|t| t.tail_of(&inc.engine))
                .unwrap_or_default(),
            stacks: record.rounds.clone(),
            incident: inc.clone(),
            trigger,
            engine,
            verdict: v.clone(),
            snapshots: cx.snapshots_of(&inc.engine),
            timeline: record.timeline.iter().cloned().collect(),
        };
        if self.tx.send(contents).is_err() {
            tracing::error!("bundle thread is gone: bundle not written");
            self.shared.metrics.agent.bundle_error();
        }
    }
}

impl Output for BundleOutput {
    fn emit(&mut self, view: &TickView<'_>) {
        let mut sent: Vec<&str> = Vec::new();
        for t in view.ticks {
            for ev in &t.events {
                self.send(view, ev.incident(), &t.verdict, Trigger::Incident);
                sent.push(&t.verdict.engine);
            }
        }
        // New stacks of an engine with an open incident: bring its bundle up to date.
        for engine in view.fresh_stacks {
            if sent.contains(&engine.as_str()) {
                continue;
            }
            let inc = view.decided.open_incident(engine);
            let v = view.records.last_verdict(engine);
            if let (Some(inc), Some(v)) = (inc, v) {
                self.send(view, inc, v, Trigger::Incident);
            }
        }
        for (inc, trigger) in view.captures {
            if let Some(v) = view.records.last_verdict(&inc.engine) {
                self.send(view, inc, v, *trigger);
            }
        }
    }
}

fn write_all(writer: BundleWriter, rx: mpsc::Receiver<BundleContents>, shared: Arc<Shared>) {
    while let Ok(c) = rx.recv() {
        let started = std::time::Instant::now();
        match writer.write(&c) {
            Ok(path) => {
                let write_ms = (started.elapsed().as_secs_f64() * 1000.0).round();
                tracing::info!(incident = %c.incident.id, engine = %c.incident.engine, bundle = %path.display(), write_ms, "bundle written");
                shared.metrics.agent.bundle_written();
            }
            Err(e) => {
                tracing::error!(incident = %c.incident.id, error = %e, "bundle not written");
                shared.metrics.agent.bundle_error();
            }
        }
    }
}
