//! `hangwatch run`: the tick loop (collect → judge → act) on its own thread, bundle
//! writing on another, the HTTP server on the async runtime.

use crate::bundle::{BundleContents, BundleWriter};
use crate::cli::now_ms;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::record::Recorder;
use crate::server;
use crate::stacks::{spawn_worker, targets_of, StackRequest, StackRound};
use anyhow::Context;
use hangwatch_collectors::gpu::{spawn_event_watcher, GpuEvent, GpuSource, NvmlSource};
use hangwatch_collectors::logs::follow::Limits;
use hangwatch_collectors::logs::{Format, LogCollector, SourceSpec};
use hangwatch_collectors::vllm_metrics::MetricsScraper;
use hangwatch_collectors::{NodeCollector, ProcRoot};
use hangwatch_rules::logs::LogEvent;
use hangwatch_rules::CollectorReport;
use hangwatch_rules::{
    EngineFacts, EngineState, IncidentEvent, IncidentTracker, Judge, Millis, Snapshot, Verdict,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Timeline lines kept per engine for summaries.
const TIMELINE_LINES: usize = 200;

/// What the tick loop shares with the HTTP server.
pub struct Shared {
    pub metrics: Metrics,
    /// Held while a tick updates the metrics and while a scrape encodes them.
    pub lock: Mutex<()>,
    pub last_tick_ms: AtomicI64,
    pub interval: Duration,
}

pub fn run(cfg: Config) -> anyhow::Result<()> {
    raise_priority();
    let shared = Arc::new(Shared {
        metrics: Metrics::new(),
        lock: Mutex::new(()),
        last_tick_ms: AtomicI64::new(0),
        interval: cfg.interval,
    });
    let stop = Arc::new(AtomicBool::new(false));

    let (bundle_tx, bundle_rx) = mpsc::channel::<BundleContents>();
    let writer = BundleWriter {
        dir: cfg.bundle_dir.clone(),
        max_count: cfg.bundles.max_count,
        max_total_bytes: cfg.bundles.max_total_bytes,
    };
    let bshared = shared.clone();
    let bundler = std::thread::Builder::new()
        .name("bundles".into())
        .spawn(move || bundle_worker(writer, bundle_rx, bshared))
        .context("starting the bundle thread")?;

    let mut agent = Agent::new(&cfg, shared.clone(), bundle_tx)?;
    let tstop = stop.clone();
    let interval = cfg.interval;
    let ticker = std::thread::Builder::new()
        .name("tick".into())
        .spawn(move || {
            while !tstop.load(Ordering::Relaxed) {
                let started = Instant::now();
                agent.tick(now_ms());
                let spent = started.elapsed();
                if spent < interval {
                    std::thread::sleep(interval - spent);
                }
            }
            agent.finish();
        })
        .context("starting the tick thread")?;

    tracing::info!(
        listen = %cfg.listen,
        bundle_dir = %cfg.bundle_dir.display(),
        interval = ?cfg.interval,
        version = env!("CARGO_PKG_VERSION"),
        "hangwatch running"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let served = rt.block_on(server::serve(cfg.listen, shared.clone()));
    stop.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    let _ = bundler.join();
    served
}

/// A watchdog must not be starved by what it watches (measured in VLLM.md: a CPU vLLM
/// engine starved other sessions' processes for 10 s). Raise our priority when allowed.
fn raise_priority() {
    let autogroup = std::fs::write("/proc/self/autogroup", "-10");
    // SAFETY: setpriority on our own process with constant arguments.
    let nice = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -10) };
    match (autogroup.is_ok(), nice == 0) {
        (true, true) => tracing::info!("raised own scheduling priority (autogroup nice -10, nice -10)"),
        (a, n) => tracing::info!(
            autogroup = a,
            nice = n,
            "could not fully raise own scheduling priority (needs root or CAP_SYS_NICE); a saturated node may delay detection"
        ),
    }
}

struct Agent {
    collector: NodeCollector,
    judge: Judge,
    tracker: IncidentTracker,
    history: VecDeque<Snapshot>,
    history_ms: Millis,
    recorder: Option<Recorder>,
    shared: Arc<Shared>,
    bundles: mpsc::Sender<BundleContents>,
    last_state: BTreeMap<String, EngineState>,
    last_facts: BTreeMap<String, EngineFacts>,
    timelines: BTreeMap<String, VecDeque<(Millis, String)>>,
    problems_seen: BTreeMap<String, Millis>,
    stacks: Option<(mpsc::Sender<StackRequest>, mpsc::Receiver<StackRound>)>,
    /// Stack rounds of each engine's current stall or incident, oldest first.
    stack_rounds: BTreeMap<String, Vec<StackRound>>,
    /// (due, engine) of follow-up rounds.
    followups: Vec<(Millis, String)>,
    followup_ms: Millis,
    baseline_ms: Millis,
    last_baseline: Millis,
    stacks_warned: bool,
    last_verdicts: BTreeMap<String, Verdict>,
    bundle_sent: Vec<String>,
    logs: Option<LogCollector>,
    scraper: Option<MetricsScraper>,
    proc_root: std::path::PathBuf,
    /// Recent log events per engine, for bundles.
    events: BTreeMap<String, VecDeque<LogEvent>>,
    stacks_on: bool,
    ras_on: bool,
    gpu: GpuCollector,
    gpu_classes: BTreeMap<u32, hangwatch_rules::gpu::GpuClass>,
}

/// NVML, opened when present; its absence or failure is said once per change.
struct GpuCollector {
    enabled: bool,
    source: Option<Box<dyn GpuSource>>,
    last_try_ms: Millis,
    /// The last problem said, to say each change once.
    said: Option<String>,
    events: Option<mpsc::Receiver<GpuEvent>>,
}

impl GpuCollector {
    fn sample(
        &mut self,
        now: Millis,
    ) -> (Vec<hangwatch_rules::gpu::GpuFacts>, Option<CollectorReport>) {
        if !self.enabled {
            return (Vec::new(), None);
        }
        let started = Instant::now();
        if self.source.is_none() && (self.last_try_ms == 0 || now - self.last_try_ms >= 60_000) {
            self.last_try_ms = now;
            match NvmlSource::open() {
                Ok(s) => {
                    tracing::info!(driver = %s.driver(), "NVML opened: reading GPUs");
                    self.source = Some(Box::new(s));
                    self.said = None;
                    let (tx, rx) = mpsc::channel();
                    if spawn_event_watcher(tx).is_ok() {
                        self.events = Some(rx);
                    }
                }
                Err(e) => {
                    if self.said.as_deref() != Some(e.as_str()) {
                        tracing::info!("{e}; GPU evidence off (will retry every minute)");
                        self.said = Some(e.clone());
                    }
                }
            }
        }
        let Some(src) = &mut self.source else {
            return (
                Vec::new(),
                Some(CollectorReport {
                    name: "gpu".into(),
                    up: false,
                    duration_seconds: started.elapsed().as_secs_f64(),
                    error: self.said.clone(),
                }),
            );
        };
        match src.sample() {
            Ok(g) => {
                if self.said.take().is_some() {
                    tracing::info!("NVML answers again");
                }
                (
                    g,
                    Some(CollectorReport {
                        name: "gpu".into(),
                        up: true,
                        duration_seconds: started.elapsed().as_secs_f64(),
                        error: None,
                    }),
                )
            }
            Err(e) => {
                if self.said.as_deref() != Some(e.as_str()) {
                    tracing::warn!("NVML failing: {e}; GPU evidence off until it answers");
                    self.said = Some(e.clone());
                }
                (
                    Vec::new(),
                    Some(CollectorReport {
                        name: "gpu".into(),
                        up: false,
                        duration_seconds: started.elapsed().as_secs_f64(),
                        error: Some(e),
                    }),
                )
            }
        }
    }
}

/// Log events kept per engine for its bundle.
const EVENTS_KEPT: usize = 500;

/// Rounds kept per engine (suspect, confirm, follow-up, and a few escalations).
const MAX_ROUNDS: usize = 6;

impl Agent {
    fn new(
        cfg: &Config,
        shared: Arc<Shared>,
        bundles: mpsc::Sender<BundleContents>,
    ) -> anyhow::Result<Agent> {
        let recorder = match &cfg.record {
            Some(p) => Some(Recorder::open(p)?),
            None => None,
        };
        if cfg.stacks.native && !hangwatch_collectors::stacks::NATIVE_SUPPORTED {
            tracing::warn!("stacks.native = true, but this build has no native stacks (cargo feature native-stacks): taking Python stacks only");
        }
        let stacks = if cfg.stacks.enabled || cfg.nccl_ras.enabled {
            Some(spawn_worker(
                cfg.stacks.native,
                cfg.stacks.timeout,
                cfg.nccl_ras.timeout,
            )?)
        } else {
            None
        };
        Ok(Agent {
            collector: NodeCollector::new(ProcRoot::new(&cfg.proc_root)),
            judge: Judge::new(cfg.judge.thresholds()),
            tracker: IncidentTracker::default(),
            history: VecDeque::new(),
            history_ms: cfg.history.as_millis() as Millis,
            recorder,
            shared,
            bundles,
            last_state: BTreeMap::new(),
            last_facts: BTreeMap::new(),
            timelines: BTreeMap::new(),
            problems_seen: BTreeMap::new(),
            stacks,
            stack_rounds: BTreeMap::new(),
            followups: Vec::new(),
            followup_ms: cfg.stacks.followup_after.as_millis() as Millis,
            baseline_ms: cfg.stacks.baseline_interval.as_millis() as Millis,
            last_baseline: 0,
            stacks_warned: false,
            last_verdicts: BTreeMap::new(),
            bundle_sent: Vec::new(),
            logs: cfg.logs.enabled.then(|| {
                let mut specs: Vec<SourceSpec> = cfg
                    .logs
                    .paths
                    .iter()
                    .map(|p| SourceSpec {
                        pattern: p.clone(),
                        format: Format::Plain,
                        engine: None,
                    })
                    .collect();
                specs.extend(cfg.logs.cri_paths.iter().map(|p| SourceSpec {
                    pattern: p.clone(),
                    format: Format::Cri,
                    engine: None,
                }));
                LogCollector::new(
                    specs,
                    Limits {
                        max_line_bytes: cfg.logs.max_line_bytes,
                        max_bytes_per_poll: cfg.logs.max_bytes_per_tick as usize,
                    },
                )
                .with_journal(&cfg.logs.journald_units, &cfg.logs.journald_identifiers)
            }),
            scraper: cfg
                .vllm_metrics
                .enabled
                .then(|| MetricsScraper::new(cfg.vllm_metrics.timeout)),
            proc_root: cfg.proc_root.clone(),
            events: BTreeMap::new(),
            gpu_classes: BTreeMap::new(),
            stacks_on: cfg.stacks.enabled,
            ras_on: cfg.nccl_ras.enabled,
            gpu: GpuCollector {
                enabled: cfg.gpu.enabled,
                source: None,
                last_try_ms: 0,
                said: None,
                events: None,
            },
        })
    }

    fn tick(&mut self, now: Millis) {
        let started = Instant::now();
        let got = self.collector.collect(now);
        for p in &got.problems {
            // Say each problem once a minute, not every tick.
            let due = self.problems_seen.get(p).is_none_or(|&t| now - t >= 60_000);
            if due {
                tracing::warn!("{p}");
                self.problems_seen.insert(p.clone(), now);
            }
        }
        self.problems_seen.retain(|_, t| now - *t < 600_000);
        let mut snap = Snapshot {
            at_ms: now,
            engines: got.engines,
            collectors: got.reports,
            late_events: Vec::new(),
            gpus: Vec::new(),
        };
        self.read_logs_and_metrics(&mut snap, now);
        let (gpus, report) = self.gpu.sample(now);
        snap.gpus = gpus;
        snap.collectors.extend(report);
        if let Some(rx) = &self.gpu.events {
            while let Ok(ev) = rx.try_recv() {
                tracing::warn!(gpu = ev.gpu, xid = ev.xid, "GPU Xid error");
                self.shared.metrics.gpu_xid(ev.gpu, ev.xid);
            }
        }
        let fresh = self.take_stack_rounds(&mut snap);
        self.note_engines(&snap);
        if let Some(r) = &mut self.recorder {
            r.append(&snap);
        }
        let verdicts = self.judge.observe(&snap);
        for (idx, v) in self.judge.gpu_verdicts() {
            if self.gpu_classes.get(idx) != Some(&v.class) {
                let g = snap.gpus.iter().find(|g| g.index == *idx);
                tracing::info!(
                    gpu = idx,
                    class = v.class.as_str(),
                    utilization = g.and_then(|g| g.utilization),
                    power_w = g.and_then(|g| g.power_w),
                    idle_power_w = v.idle_power_w,
                    processes = ?g.map(|g| g.processes.iter().map(|p| (p.pid, p.utilization)).collect::<Vec<_>>()),
                    "GPU {idx} is {}", v.class.as_str()
                );
                self.gpu_classes.insert(*idx, v.class);
            }
        }
        self.history.push_back(snap);
        while self
            .history
            .front()
            .is_some_and(|s| now - s.at_ms > self.history_ms)
        {
            self.history.pop_front();
        }
        self.bundle_sent.clear();
        for v in &verdicts {
            self.act(v);
            self.last_verdicts.insert(v.engine.clone(), v.clone());
        }
        // New stacks of an engine with an open incident: bring its bundle up to date.
        for engine in fresh {
            if self.tracker.open_incident(&engine).is_some() && !self.bundle_sent.contains(&engine)
            {
                if let (Some(inc), Some(v)) = (
                    self.tracker.open_incident(&engine).cloned(),
                    self.last_verdicts.get(&engine).cloned(),
                ) {
                    self.send_bundle(&IncidentEvent::Escalated(inc), &v);
                }
            }
        }
        self.stack_schedule(now);
        let snap = self.history.back();
        let _guard = self.shared.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(snap) = snap {
            self.shared.metrics.observe_tick(
                now,
                &snap.engines,
                &verdicts,
                &snap.collectors,
                started.elapsed().as_secs_f64(),
            );
            self.shared
                .metrics
                .observe_gpus(&snap.gpus, self.judge.gpu_verdicts());
        }
        self.shared.last_tick_ms.store(now, Ordering::Relaxed);
    }

    fn note_engines(&mut self, snap: &Snapshot) {
        for e in &snap.engines {
            if !self.last_facts.contains_key(&e.id) {
                tracing::info!(
                    engine = %e.id,
                    tp = e.tp,
                    pp = e.pp,
                    dp = e.dp,
                    core_pid = e.core.pid,
                    ranks = e.ranks.len(),
                    rings = e.rings.len(),
                    execute_timeout_s = e.execute_timeout_seconds,
                    "engine appeared"
                );
                self.shared.metrics.engine_seen(&e.id);
                for f in hangwatch_rules::lint::lint(&e.settings) {
                    tracing::warn!(engine = %e.id, code = %f.code, severity = %f.severity, "config: {}", f.message);
                }
            }
            self.last_facts.insert(e.id.clone(), e.clone());
        }
        let gone: Vec<String> = self
            .last_facts
            .keys()
            .filter(|id| !snap.engines.iter().any(|e| &e.id == *id))
            .cloned()
            .collect();
        for id in gone {
            tracing::info!(engine = %id, "engine gone");
            // Keep the last facts until the judge has spoken about the dead engine.
            if self.tracker.open_incident(&id).is_none() {
                self.last_facts.remove(&id);
            }
        }
    }

    fn timeline(&mut self, engine: &str, at: Millis, line: String) {
        let t = self.timelines.entry(engine.to_string()).or_default();
        t.push_back((at, line));
        while t.len() > TIMELINE_LINES {
            t.pop_front();
        }
    }

    fn act(&mut self, v: &Verdict) {
        let changed = self.last_state.get(&v.engine) != Some(&v.state);
        if changed {
            let line = v.headline();
            tracing::info!(engine = %v.engine, state = v.state.as_str(), "{line}");
            self.timeline(&v.engine, v.at_ms, line);
            let open = self.tracker.open_incident(&v.engine).is_some();
            match v.state {
                EngineState::Stalled => {
                    if !open {
                        self.stack_rounds.remove(&v.engine);
                    }
                    self.request_stacks(&v.engine, "suspect");
                }
                EngineState::Idle | EngineState::Busy if !open => {
                    self.stack_rounds.remove(&v.engine);
                }
                _ => {}
            }
        }
        self.last_state.insert(v.engine.clone(), v.state);
        for ev in self.tracker.on_verdict(v) {
            let inc = ev.incident().clone();
            let line = format!("incident {} {}: {}", inc.id, ev.kind(), v.headline());
            match &ev {
                IncidentEvent::Opened(_) => {
                    tracing::warn!(engine = %inc.engine, incident = %inc.id, detected_after_s = inc.detected_after_seconds(), "{line}");
                    self.shared.metrics.incident_opened(&inc.engine);
                    self.request_stacks(&inc.engine, "confirm");
                    self.followups
                        .push((v.at_ms + self.followup_ms, inc.engine.clone()));
                }
                IncidentEvent::Escalated(_) => {
                    tracing::warn!(engine = %inc.engine, incident = %inc.id, "{line}")
                }
                IncidentEvent::Resolved(_) | IncidentEvent::Ended(_) => {
                    tracing::info!(engine = %inc.engine, incident = %inc.id, "{line}");
                    self.shared.metrics.incident_closed(&inc.engine);
                }
            }
            self.timeline(&v.engine, v.at_ms, format!("incident {}", ev.kind()));
            self.send_bundle(&ev, v);
        }
        if v.state == EngineState::Dead {
            self.last_state.remove(&v.engine);
            if self.tracker.open_incident(&v.engine).is_none()
                && !self
                    .history
                    .back()
                    .is_some_and(|s| s.engines.iter().any(|e| e.id == v.engine))
            {
                self.last_facts.remove(&v.engine);
            }
        }
    }

    fn send_bundle(&mut self, ev: &IncidentEvent, v: &Verdict) {
        let inc = ev.incident();
        let Some(engine) = self.last_facts.get(&inc.engine).cloned() else {
            tracing::error!(engine = %inc.engine, "no facts for the engine: bundle not written");
            self.shared.metrics.bundle_error();
            return;
        };
        let snapshots: Vec<Snapshot> = self
            .history
            .iter()
            .filter(|s| s.engines.iter().any(|e| e.id == inc.engine))
            .map(|s| Snapshot {
                at_ms: s.at_ms,
                engines: s
                    .engines
                    .iter()
                    .filter(|e| e.id == inc.engine)
                    .cloned()
                    .collect(),
                collectors: s.collectors.clone(),
                late_events: s
                    .late_events
                    .iter()
                    .filter(|(id, _)| *id == inc.engine)
                    .cloned()
                    .collect(),
                gpus: s.gpus.clone(),
            })
            .collect();
        self.bundle_sent.push(inc.engine.clone());
        let contents = BundleContents {
            gpu_classes: self.judge.gpu_verdicts().values().cloned().collect(),
            events: self
                .events
                .get(&inc.engine)
                .map(|q| q.iter().cloned().collect())
                .unwrap_or_default(),
            log_tail: self
                .logs
                .as_ref()
                .map(|l| {
                    let pids = self.last_facts.get(&inc.engine).map_or_else(Vec::new, |e| {
                        let mut p: Vec<u32> = e.ranks.iter().map(|r| r.process.pid).collect();
                        p.push(e.core.pid);
                        p.extend(e.api_pid);
                        p
                    });
                    l.tail_of(&inc.engine, &pids)
                })
                .unwrap_or_default(),
            stacks: self
                .stack_rounds
                .get(&inc.engine)
                .cloned()
                .unwrap_or_default(),
            incident: inc.clone(),
            engine,
            verdict: v.clone(),
            snapshots,
            timeline: self
                .timelines
                .get(&inc.engine)
                .map(|t| t.iter().cloned().collect())
                .unwrap_or_default(),
        };
        if self.bundles.send(contents).is_err() {
            tracing::error!("bundle thread is gone: bundle not written");
            self.shared.metrics.bundle_error();
        }
        if matches!(ev, IncidentEvent::Ended(_)) {
            self.last_facts.remove(&inc.engine);
        }
    }

    /// Finished stack rounds go into this tick's snapshot (so they are recorded and
    /// judged) and into the engine's rounds for its bundle. Returns the engines that got
    /// new stacks.
    fn take_stack_rounds(&mut self, snap: &mut Snapshot) -> Vec<String> {
        let mut fresh = Vec::new();
        let Some((_, rx)) = &self.stacks else {
            return fresh;
        };
        while let Ok(round) = rx.try_recv() {
            let denied: Vec<u32> = round
                .dumps
                .iter()
                .filter(|d| d.error.as_ref().is_some_and(|e| e.kind == "permission"))
                .map(|d| d.pid)
                .collect();
            if !denied.is_empty() && !self.stacks_warned {
                tracing::warn!(
                    pids = ?denied,
                    "cannot read Python stacks: permission denied; hangwatch needs CAP_SYS_PTRACE (or root) for stacks, and keeps working with the other evidence"
                );
                self.stacks_warned = true;
            }
            if let Some(e) = snap.engines.iter_mut().find(|e| e.id == round.engine) {
                e.stacks.extend(round.dumps.iter().cloned());
                if let Some(status) = round.ras.as_ref().and_then(|r| r.status.clone()) {
                    e.nccl_ras = Some(status);
                }
            }
            tracing::info!(
                engine = %round.engine,
                reason = %round.reason,
                processes = round.dumps.len(),
                failed = round.dumps.iter().filter(|d| d.error.is_some()).count(),
                "stacks dumped"
            );
            if !fresh.contains(&round.engine) {
                fresh.push(round.engine.clone());
            }
            let rounds = self.stack_rounds.entry(round.engine.clone()).or_default();
            if round.reason != "baseline" {
                rounds.retain(|r| r.reason != "baseline");
            }
            rounds.push(round);
            while rounds.len() > MAX_ROUNDS {
                rounds.remove(1); // keep the first round: it shows whether stacks moved
            }
        }
        fresh
    }

    /// The `logs` and `vllm_metrics` collectors: events and metrics join their engine's
    /// facts in this tick's snapshot.
    fn read_logs_and_metrics(&mut self, snap: &mut Snapshot, now: Millis) {
        if let Some(lc) = &mut self.logs {
            let started = Instant::now();
            let reading = lc.poll(&snap.engines, &self.proc_root, now);
            for (source, n) in &reading.lines_by_source {
                self.shared.metrics.log_lines(source, *n, 0);
            }
            self.shared.metrics.log_lines("", 0, reading.cut_lines);
            for (engine, ev) in reading.events {
                let Some(id) = engine else { continue };
                self.shared.metrics.log_event(&id, ev.kind.name());
                if !matches!(ev.kind, hangwatch_rules::logs::LogEventKind::Stats { .. }) {
                    tracing::info!(engine = %id, kind = ev.kind.name(), "vLLM says: {}", ev.line);
                }
                match snap.engines.iter_mut().find(|e| e.id == id) {
                    Some(e) => e.log_events.push(ev.clone()),
                    None => snap.late_events.push((id.clone(), ev.clone())),
                }
                let q = self.events.entry(id).or_default();
                q.push_back(ev);
                while q.len() > EVENTS_KEPT {
                    q.pop_front();
                }
            }
            snap.collectors.push(CollectorReport {
                name: "logs".into(),
                up: true,
                duration_seconds: started.elapsed().as_secs_f64(),
                error: None,
            });
        }
        if let Some(sc) = &self.scraper {
            let started = Instant::now();
            let err = sc.scrape(&mut snap.engines);
            snap.collectors.push(CollectorReport {
                name: "vllm_metrics".into(),
                up: err.is_none(),
                duration_seconds: started.elapsed().as_secs_f64(),
                error: err,
            });
        }
    }

    fn request_stacks(&mut self, engine: &str, reason: &str) {
        let Some((tx, _)) = &self.stacks else { return };
        let Some(facts) = self.last_facts.get(engine) else {
            return;
        };
        let (mut targets, titles) = targets_of(facts);
        if !self.stacks_on {
            targets.clear();
        }
        // RAS only where NCCL can run: a node with GPUs.
        let has_gpus = self.history.back().is_some_and(|s| !s.gpus.is_empty());
        let ras_addr = (self.ras_on && has_gpus).then(|| {
            facts
                .settings
                .get("NCCL_RAS_ADDR")
                .cloned()
                .unwrap_or_else(|| hangwatch_collectors::nccl_ras::DEFAULT_ADDR.to_string())
        });
        if targets.is_empty() && ras_addr.is_none() {
            return;
        }
        let _ = tx.send(StackRequest {
            engine: engine.to_string(),
            reason: reason.to_string(),
            targets,
            titles,
            ras_addr,
        });
    }

    fn stack_schedule(&mut self, now: Millis) {
        let due: Vec<String> = self
            .followups
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, e)| e.clone())
            .collect();
        self.followups.retain(|(t, _)| *t > now);
        for e in due {
            if self.tracker.open_incident(&e).is_some() {
                self.request_stacks(&e, "followup");
            }
        }
        if self.baseline_ms > 0 && now - self.last_baseline >= self.baseline_ms {
            self.last_baseline = now;
            let engines: Vec<String> = self.last_facts.keys().cloned().collect();
            for e in engines {
                if self.tracker.open_incident(&e).is_none() {
                    self.request_stacks(&e, "baseline");
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Some(r) = &mut self.recorder {
            r.flush();
        }
    }
}

fn bundle_worker(writer: BundleWriter, rx: mpsc::Receiver<BundleContents>, shared: Arc<Shared>) {
    while let Ok(c) = rx.recv() {
        match writer.write(&c) {
            Ok(path) => {
                tracing::info!(incident = %c.incident.id, bundle = %path.display(), "bundle written");
                shared.metrics.bundle_written();
            }
            Err(e) => {
                tracing::error!(incident = %c.incident.id, error = %e, "bundle not written");
                shared.metrics.bundle_error();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangwatch_rules::gpu::GpuFacts;

    /// NVML cannot fail on demand here: a scripted source behind the same trait stands
    /// in for a driver that fails mid-run and a GPU that falls off the bus.
    struct Scripted(Vec<Result<Vec<GpuFacts>, String>>);

    impl GpuSource for Scripted {
        fn sample(&mut self) -> Result<Vec<GpuFacts>, String> {
            if self.0.is_empty() {
                return Err("script over".into());
            }
            self.0.remove(0)
        }
    }

    fn gpu(index: u32, error: Option<&str>) -> GpuFacts {
        GpuFacts {
            index,
            utilization: error.is_none().then_some(50),
            error: error.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn nvml_failing_mid_run_and_a_vanished_gpu_are_reported_not_fatal() {
        let mut c = GpuCollector {
            enabled: true,
            source: Some(Box::new(Scripted(vec![
                Ok(vec![gpu(0, None), gpu(1, None)]),
                Err("NVML: GPU is lost".into()),
                Ok(vec![gpu(0, None), gpu(1, Some("device 1: GPU is lost"))]),
            ]))),
            last_try_ms: 1,
            said: None,
            events: None,
        };
        let (g, r) = c.sample(1_000);
        assert_eq!(g.len(), 2);
        assert!(r.as_ref().is_some_and(|r| r.up));
        let (g, r) = c.sample(2_000);
        assert!(g.is_empty());
        let r = r.expect("report");
        assert!(!r.up);
        assert_eq!(r.error.as_deref(), Some("NVML: GPU is lost"));
        assert_eq!(c.said.as_deref(), Some("NVML: GPU is lost"), "said once");
        let (g, r) = c.sample(3_000);
        assert!(r.is_some_and(|r| r.up), "answers again");
        assert_eq!(g[1].error.as_deref(), Some("device 1: GPU is lost"));
        assert!(c.said.is_none());
    }
}
