//! Actions on a confirmed incident (`[actions]`, `docs/actions.md`): run a command with
//! the incident on its input, or end the engine's API server so that its supervisor
//! restarts it — the outage becomes detection + restart instead of vLLM's timeout +
//! restart. Off by default. Each open incident is put to the guard rails every tick
//! until it is acted on or held back; every decision is one log line, one line in the
//! engine's time line (so in its bundle) and a count in `hangwatch_actions_total`.

mod guard;
mod run;

use crate::config::actions::ActionsConfig;
use crate::context::Context;
use crate::metrics::actions::ActionMetrics;
use guard::{decide, Ask, Decision};
use hangwatch_rules::incident::Incident;
use hangwatch_rules::watch::{EngineTick, Watch};
use hangwatch_rules::{EngineFacts, Millis, Snapshot};
use run::{Done, Job};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};

/// One open incident as the actions see it.
#[derive(Debug, Default)]
struct Tracked {
    engine: String,
    /// The reason last said for waiting (said again only when it changes).
    said: Option<String>,
    /// A stack round of the engine came after the incident's follow-up time, in an
    /// earlier tick (so its bundle holds it).
    followup_round: bool,
    decided: bool,
}

pub struct Actions {
    cfg: ActionsConfig,
    metrics: ActionMetrics,
    proc_root: PathBuf,
    bundle_dir: PathBuf,
    /// When the follow-up stack round of a new incident is due.
    followup_ms: Millis,
    /// engine → when an action was last taken on it (dry runs included).
    last_action: BTreeMap<String, Millis>,
    /// incident id → what is known of it.
    tracked: BTreeMap<String, Tracked>,
    tx: Sender<Done>,
    rx: Receiver<Done>,
}

/// Where the tick is, as the actions need it.
pub struct ActionView<'a> {
    pub snap: &'a Snapshot,
    pub ticks: &'a [EngineTick],
    pub watch: &'a Watch,
    pub fresh_stacks: &'a [String],
    pub now: Millis,
}

impl Actions {
    /// None when no action is configured.
    pub fn new(cfg: &crate::config::Config, metrics: ActionMetrics) -> Option<Actions> {
        let a = &cfg.actions;
        if !a.any() {
            return None;
        }
        if let Some(p) = a.exec.command.first().filter(|p| !program_found(p)) {
            tracing::warn!(program = %p, "actions.exec.command: no such program now; an incident's exec will fail until it exists");
        }
        tracing::info!(
            exec = !a.exec.command.is_empty(),
            terminate = a.terminate.enabled,
            dry_run = a.dry_run,
            "actions on confirmed incidents are on"
        );
        let (tx, rx) = channel();
        Some(Actions {
            cfg: a.clone(),
            metrics,
            proc_root: cfg.proc_root.clone(),
            bundle_dir: cfg.bundle_dir.clone(),
            followup_ms: cfg.stacks.followup_after.as_millis() as Millis,
            last_action: BTreeMap::new(),
            tracked: BTreeMap::new(),
            tx,
            rx,
        })
    }

    /// After the judge, before the outputs: what finished, then each open incident.
    pub fn tick(&mut self, v: &ActionView<'_>, cx: &mut Context) {
        while let Ok(d) = self.rx.try_recv() {
            self.finished(d, cx, v.now);
        }
        for t in v.ticks {
            let engine = &t.verdict.engine;
            let Some(inc) = v.watch.open_incident(engine) else {
                continue;
            };
            let tracked = self.tracked.entry(inc.id.clone()).or_insert(Tracked {
                engine: engine.clone(),
                ..Tracked::default()
            });
            if !tracked.decided {
                let ask = Ask {
                    verdict: &t.verdict,
                    incident: inc,
                    now: v.now,
                    last_action_ms: self.last_action.get(engine).copied(),
                    followup_round: tracked.followup_round,
                };
                let d = decide(&self.cfg, &ask);
                let facts = v.snap.engines.iter().find(|e| &e.id == engine);
                self.on_decision(d, inc, &t.verdict.headline(), facts, cx, v.now);
            }
            let due = inc.opened_ms + self.followup_ms;
            if let Some(tr) = self.tracked.get_mut(&inc.id) {
                tr.followup_round |= v.now >= due && v.fresh_stacks.contains(engine);
            }
        }
        self.forget_closed(v.watch, cx, v.now);
    }

    fn on_decision(
        &mut self,
        d: Decision,
        inc: &Incident,
        headline: &str,
        facts: Option<&EngineFacts>,
        cx: &mut Context,
        now: Millis,
    ) {
        let Some(tr) = self.tracked.get_mut(&inc.id) else {
            return;
        };
        match d {
            Decision::Wait(why) => {
                if tr.said.as_deref() != Some(why.as_str()) {
                    tracing::info!(engine = %inc.engine, incident = %inc.id, "actions: not yet: {why}");
                    cx.say(&inc.engine, now, format!("action held: {why}"));
                    tr.said = Some(why);
                }
            }
            Decision::Skip(why) => {
                tr.decided = true;
                self.skipped(&inc.engine, &inc.id, &why, cx, now);
            }
            Decision::Act => {
                tr.decided = true;
                self.last_action.insert(inc.engine.clone(), now);
                self.act(inc, headline, facts, cx, now);
            }
        }
    }

    /// Every configured action, or what a dry run would have done.
    fn act(
        &self,
        inc: &Incident,
        headline: &str,
        facts: Option<&EngineFacts>,
        cx: &mut Context,
        now: Millis,
    ) {
        let job = || Job {
            engine: inc.engine.clone(),
            incident: inc.id.clone(),
        };
        if !self.cfg.exec.command.is_empty() {
            let argv = self.cfg.exec.command.clone();
            if self.cfg.dry_run {
                self.dry(
                    inc,
                    "exec",
                    &format!("would run {}", argv.join(" ")),
                    cx,
                    now,
                );
            } else {
                let input = self.input(inc, headline);
                tracing::warn!(engine = %inc.engine, incident = %inc.id, command = %argv.join(" "), "actions: exec");
                cx.say(&inc.engine, now, format!("action exec: {}", argv.join(" ")));
                run::exec(job(), argv, input, self.cfg.exec.timeout, self.tx.clone());
            }
        }
        if self.cfg.terminate.enabled {
            let target = facts
                .and_then(|e| e.api_pid.or(Some(e.core.pid)))
                .filter(|p| *p > 1);
            let Some(pid) = target else {
                let d = job().done(
                    "terminate",
                    "failed",
                    "the engine's API server is not known".into(),
                );
                self.finished(d, cx, now);
                return;
            };
            if self.cfg.dry_run {
                self.dry(
                    inc,
                    "terminate",
                    &format!("would send SIGTERM to pid {pid}"),
                    cx,
                    now,
                );
                return;
            }
            tracing::warn!(engine = %inc.engine, incident = %inc.id, pid, "actions: terminate: SIGTERM to the engine's API server");
            cx.say(
                &inc.engine,
                now,
                format!("action terminate: SIGTERM to pid {pid}"),
            );
            let grace = self.cfg.terminate.grace;
            let rest: Vec<u32> = facts
                .map(|e| {
                    let workers = e.ranks.iter().map(|r| r.process.pid);
                    std::iter::once(e.core.pid)
                        .chain(workers)
                        .filter(|p| *p != pid)
                        .collect()
                })
                .unwrap_or_default();
            let root = self.proc_root.clone();
            run::terminate(job(), root, pid, rest, grace, self.tx.clone());
        }
    }

    /// The command's input: the incident, its headline and its bundle.
    fn input(&self, inc: &Incident, headline: &str) -> Vec<u8> {
        let body = serde_json::json!({
            "incident": inc,
            "headline": headline,
            "bundle": self.bundle_dir.join(&inc.id),
        });
        serde_json::to_vec(&body).unwrap_or_default()
    }

    fn dry(&self, inc: &Incident, action: &str, what: &str, cx: &mut Context, now: Millis) {
        tracing::warn!(engine = %inc.engine, incident = %inc.id, "actions: dry run: {what}");
        cx.say(
            &inc.engine,
            now,
            format!("action {action} (dry run): {what}"),
        );
        self.metrics.count(&inc.engine, action, "dry_run");
    }

    fn skipped(&self, engine: &str, id: &str, why: &str, cx: &mut Context, now: Millis) {
        tracing::warn!(engine = %engine, incident = %id, "actions: none for this incident: {why}");
        cx.say(engine, now, format!("no action: {why}"));
        for action in self.configured() {
            self.metrics.count(engine, action, "skipped");
        }
    }

    fn configured(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.cfg.exec.command.is_empty() {
            out.push("exec");
        }
        if self.cfg.terminate.enabled {
            out.push("terminate");
        }
        out
    }

    fn finished(&self, d: Done, cx: &mut Context, now: Millis) {
        if d.result == "ok" {
            tracing::info!(engine = %d.engine, incident = %d.incident, action = d.action, "actions: {}", d.detail);
        } else {
            tracing::error!(engine = %d.engine, incident = %d.incident, action = d.action, result = d.result, "actions: {}", d.detail);
        }
        cx.say(
            &d.engine,
            now,
            format!("action {} {}: {}", d.action, d.result, d.detail),
        );
        self.metrics.count(&d.engine, d.action, d.result);
    }

    /// Incidents that closed without an action: said once, with the last reason.
    fn forget_closed(&mut self, watch: &Watch, cx: &mut Context, now: Millis) {
        let closed: Vec<String> = self
            .tracked
            .iter()
            .filter(|(id, t)| watch.open_incident(&t.engine).is_none_or(|i| &i.id != *id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in closed {
            let Some(t) = self.tracked.remove(&id) else {
                continue;
            };
            if !t.decided {
                let why = t
                    .said
                    .unwrap_or_else(|| "it closed before any rail was passed".into());
                let why = format!("the incident closed; {why}");
                self.skipped(&t.engine, &id, &why, cx, now);
            }
        }
    }
}

/// The program exists now (a path, or a name on `PATH`).
fn program_found(p: &str) -> bool {
    if p.contains('/') {
        return std::path::Path::new(p).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
}
