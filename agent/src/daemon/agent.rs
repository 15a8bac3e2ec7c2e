//! One tick: collectors fill a snapshot, evidence rounds join it, it is recorded, the
//! watch step judges it, the context keeps what people will want to read, and every
//! output tells the world.

use super::capture::Captures;
use super::evidence::Evidence;
use crate::bundle::BundleWriter;
use crate::config::alerts::Receiver;
use crate::config::Config;
use crate::context::Context;
use crate::notify::NotifyOutput;
use crate::outputs::bundles::BundleOutput;
use crate::outputs::log::LogOutput;
use crate::outputs::metrics::MetricsOutput;
use crate::outputs::{Output, TickView};
use crate::record::Recorder;
use crate::shared::{CaptureRequest, Shared};
use crate::status::StatusSource;
use anyhow::Context as _;
use hangwatch_collectors::engines::{engine_collectors, DiscoveryCollector, RingCollector};
use hangwatch_collectors::gpu::GpuCollector;
use hangwatch_collectors::logs::follow::Limits;
use hangwatch_collectors::logs::{Format, LogSources, LogTails, LogsCollector, SourceSpec};
use hangwatch_collectors::vllm_metrics::MetricsScraper;
use hangwatch_collectors::{ProcRoot, Runner};
use hangwatch_rules::watch::{EngineTick, Watch};
use hangwatch_rules::{Millis, Snapshot};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Instant;

pub struct Agent {
    runner: Runner,
    captures: Option<Captures>,
    evidence: Evidence,
    watch: Watch,
    recorder: Option<Recorder>,
    context: Context,
    outputs: Vec<Box<dyn Output>>,
    actions: Option<crate::actions::Actions>,
    shared: Arc<Shared>,
}

impl Agent {
    /// The agent and its outputs' threads (bundle writer, receivers), which end after
    /// the agent is dropped.
    pub fn new(
        cfg: &Config,
        receivers: Vec<Receiver>,
        captures: Option<mpsc::Receiver<CaptureRequest>>,
        shared: Arc<Shared>,
    ) -> anyhow::Result<(Agent, Vec<std::thread::JoinHandle<()>>)> {
        let recorder = match &cfg.record {
            Some(p) => Some(Recorder::open(p)?),
            None => None,
        };
        let (runner, tails) = collectors(cfg);
        let writer = BundleWriter {
            dir: cfg.bundle_dir.clone(),
            max_count: cfg.bundles.max_count,
            max_total_bytes: cfg.bundles.max_total_bytes,
        };
        let (bundles, bundler) = BundleOutput::start(writer, shared.clone(), tails)
            .context("starting the bundle thread")?;
        let (notify, mut threads) = NotifyOutput::start(
            &cfg.alerts,
            receivers,
            cfg.bundle_dir.clone(),
            &shared.metrics.notify,
        );
        threads.insert(0, bundler);
        let outputs: Vec<Box<dyn Output>> = vec![
            Box::new(LogOutput::default()),
            Box::new(MetricsOutput {
                shared: shared.clone(),
            }),
            Box::new(bundles),
            Box::new(notify),
        ];
        // Peers need the capture machinery even with `POST /capture` off.
        let captures = match captures {
            None if shared.peers.is_some() => Some(mpsc::channel().1),
            c => c,
        };
        let captures = captures.map(|rx| {
            Captures::new(
                rx,
                cfg.http.capture_min_interval.as_millis() as Millis,
                (cfg.stacks.timeout.as_millis() as Millis) + 1_000,
                cfg.bundle_dir.clone(),
            )
        });
        let agent = Agent {
            runner,
            captures,
            evidence: Evidence::new(cfg)?,
            watch: Watch::new(cfg.judge.thresholds()),
            recorder,
            context: Context::new(cfg.history.as_millis() as Millis),
            outputs,
            actions: crate::actions::Actions::new(cfg, shared.metrics.actions.clone()),
            shared,
        };
        Ok((agent, threads))
    }

    pub fn tick(&mut self, now: Millis) {
        let started = Instant::now();
        let mut snap = Snapshot {
            at_ms: now,
            ..Default::default()
        };
        self.runner.run(&mut snap, now);
        if let Some(p) = &self.shared.peers {
            p.attach(&mut snap, now);
        }
        let fresh_stacks = self.evidence.take(&mut snap, &mut self.context);
        let snap = Arc::new(snap);
        let captures = match &mut self.captures {
            Some(c) => c.ready(&fresh_stacks, &self.context, now),
            None => Vec::new(),
        };
        let arrivals = self.context.note(&snap);
        if let Some(r) = &mut self.recorder {
            r.append(&snap);
        }
        let ticks = self.watch.step(&snap);
        self.context.judged(&snap, &ticks, &self.watch);
        let restarts = self.evidence.restarts;
        self.evidence.plan(&ticks, &self.context, &self.watch, now);
        if let Some(c) = &mut self.captures {
            c.take_requests(&self.context, &self.watch, &mut self.evidence, now);
        }
        self.compare_notes(&snap, &ticks, now);
        self.publish_status(&snap, &ticks);
        if let Some(a) = &mut self.actions {
            let view = crate::actions::ActionView {
                snap: &snap,
                ticks: &ticks,
                watch: &self.watch,
                fresh_stacks: &fresh_stacks,
                now,
            };
            a.tick(&view, &mut self.context);
        }
        if self.evidence.restarts > restarts {
            self.shared.metrics.agent.evidence_worker_restarted();
        }
        let view = TickView {
            now,
            snap: &snap,
            ticks: &ticks,
            decided: crate::outputs::Decided::of(&self.watch),
            records: self.context.records(),
            arrivals: &arrivals,
            fresh_stacks: &fresh_stacks,
            captures: &captures,
            tick_seconds: started.elapsed().as_secs_f64(),
        };
        for o in &mut self.outputs {
            o.emit(&view);
        }
        self.context.settle(&snap, &ticks, &self.watch, &arrivals);
        self.shared.last_tick_ms.store(now, Ordering::Relaxed);
    }

    /// The peer exchange after the judge: the leader's answers and the follower's
    /// reports are set; a follower part whose leader has an incident open is bundled
    /// under its id.
    fn compare_notes(&mut self, snap: &Snapshot, ticks: &[EngineTick], now: Millis) {
        let Some(p) = &self.shared.peers else {
            return;
        };
        p.after(snap, ticks, &self.watch, now);
        let Some(c) = &mut self.captures else {
            return;
        };
        for (engine, id) in p.leader_incidents(now) {
            c.join(
                &engine,
                &id,
                &self.context,
                &self.watch,
                &mut self.evidence,
                now,
            );
        }
    }

    /// `GET /status`'s source: the snapshot (shared) with copies of this tick's verdicts
    /// and open incidents; the server renders it when asked.
    fn publish_status(&self, snap: &Arc<Snapshot>, ticks: &[EngineTick]) {
        let source = StatusSource {
            snap: snap.clone(),
            verdicts: ticks.iter().map(|t| t.verdict.clone()).collect(),
            incidents: snap
                .engines
                .iter()
                .filter_map(|e| self.watch.open_incident(&e.id).cloned())
                .collect(),
        };
        if let Ok(mut s) = self.shared.status.lock() {
            *s = Arc::new(source);
        }
    }

    pub fn finish(&mut self) {
        if let Some(r) = &mut self.recorder {
            r.flush();
        }
    }
}

/// The engines the configuration watches (`proc_root`, `engines`, pod names from
/// `kubernetes.pod_log_dir`) and their rings: the agent's first collectors, and what
/// the one-shot `status` shows, so that both answer alike.
pub fn watched_engines(cfg: &Config) -> (DiscoveryCollector, RingCollector) {
    let (discovery, rings) = engine_collectors(ProcRoot::new(&cfg.proc_root));
    (
        discovery
            .only(&cfg.engines)
            .at_most(cfg.max_engines)
            .pod_log_dir(&cfg.kubernetes.pod_log_dir),
        rings,
    )
}

/// Every collector the configuration asks for, in the order they must run: engines
/// first (the others join what they find), then their logs, vLLM's own metrics, GPUs.
fn collectors(cfg: &Config) -> (Runner, Option<LogTails>) {
    let mut runner = Runner::new();
    let (discovery, rings) = watched_engines(cfg);
    runner.add(Box::new(discovery));
    runner.add(Box::new(rings));
    let mut tails = None;
    if cfg.logs.enabled {
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
        let limits = Limits {
            max_line_bytes: cfg.logs.max_line_bytes,
            max_bytes_per_poll: cfg.logs.max_bytes_per_tick as usize,
        };
        let logs = LogSources::new(specs, limits)
            .with_journal(&cfg.logs.journald_units, &cfg.logs.journald_identifiers);
        let (c, t) = LogsCollector::new(logs, cfg.proc_root.clone());
        runner.add(Box::new(c));
        tails = Some(t);
    }
    if cfg.vllm_metrics.enabled {
        runner.add(Box::new(MetricsScraper::new(
            cfg.vllm_metrics.timeout,
            &cfg.proc_root,
            cfg.kubernetes.enter_network_namespaces,
        )));
    }
    if cfg.gpu.enabled {
        runner.add(Box::new(GpuCollector::new()));
    }
    (runner, tails)
}
