//! The judge: a small state machine per engine that turns a stream of snapshots into
//! verdicts. Time comes only from the snapshots, so a recording judged again gives the
//! same verdicts as the live run did.

use crate::facts::{EngineFacts, Millis, ProcState, RankFacts, Snapshot};
use crate::gpu::{gpu_finding, gpu_of_pids, GpuClass, GpuClassifier, GpuFinding, GpuVerdict};
use crate::logs::LogEventKind;
use crate::ras::{ras_finding, RasFinding, RasStatus};
use crate::signals::{core_idle_wait, engine_moved, is_serving_method, reader_lags};
use crate::stacks::{odd_one_out, unchanged, StackDump};
use crate::thresholds::Thresholds;
use crate::verdict::{EngineState, Reason, ReasonCode, Suspect, Verdict};
use std::collections::BTreeMap;

/// Lags shorter than this are ordinary step latency and teach adaptation nothing.
const MIN_RECOVERED_MS: Millis = 1_000;

#[derive(Debug)]
pub struct Judge {
    thresholds: Thresholds,
    engines: BTreeMap<String, EngineMemory>,
    gpu: GpuClassifier,
    gpu_verdicts: BTreeMap<u32, GpuVerdict>,
}

/// What the judge remembers of one engine between snapshots.
#[derive(Debug, Default)]
struct EngineMemory {
    core_pid: u32,
    seen_idle: bool,
    seen_serving: bool,
    last: Option<EngineFacts>,
    last_at_ms: Millis,
    /// Ranks ever seen, with their pids: a rank missing later has exited.
    known_ranks: BTreeMap<u32, u32>,
    /// (ring, reader) → (first unread chunk, rank, since).
    reader_lag: BTreeMap<(String, usize), (u32, u32, Millis)>,
    /// ring → (chunk, since).
    unread_by_all: BTreeMap<String, (u32, Millis)>,
    /// rank → (state, since) for stopped, zombie or gone processes.
    halted: BTreeMap<u32, (ProcState, Millis)>,
    /// rank → since, for uninterruptible sleep.
    disk_sleep: BTreeMap<u32, Millis>,
    /// Last time anything moved or the engine was idle.
    last_progress_ms: Millis,
    /// Lags this engine recovered from: (when, how long).
    recovered: Vec<(Millis, Millis)>,
    /// Stacks of the current stall by rank: the first and the latest dump.
    stacks_first: BTreeMap<u32, StackDump>,
    stacks_latest: BTreeMap<u32, StackDump>,
    /// What vLLM says: (since, requests running) of zero-throughput stats lines.
    log_no_progress: Option<(Millis, u32)>,
    /// (since, seconds) of the reader-side ring wait message.
    ring_wait: Option<(Millis, f64)>,
    rpc_timeout: Option<(Millis, String)>,
    engine_dead_logged: bool,
    worker_died: BTreeMap<u32, (Millis, String)>,
    /// vLLM's /metrics: the progress counters, when they last changed, and since when
    /// they are flat with requests running.
    metrics_counters: Option<(Option<f64>, Option<f64>, Option<f64>)>,
    metrics_changed_ms: Millis,
    metrics_flat: Option<(Millis, f64)>,
    /// NCCL RAS's latest answer during the current stall: (when, status).
    ras: Option<(Millis, RasStatus)>,
    last_verdict: Option<Verdict>,
}

impl Judge {
    pub fn new(thresholds: Thresholds) -> Judge {
        Judge {
            thresholds,
            engines: BTreeMap::new(),
            gpu: GpuClassifier::default(),
            gpu_verdicts: BTreeMap::new(),
        }
    }

    /// Every GPU's class after the last snapshot (for metrics and bundles).
    pub fn gpu_verdicts(&self) -> &BTreeMap<u32, GpuVerdict> {
        &self.gpu_verdicts
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// One verdict per engine in the snapshot, plus a `dead` verdict for every engine
    /// that was there before and is gone now.
    pub fn observe(&mut self, snap: &Snapshot) -> Vec<Verdict> {
        let mut out = Vec::new();
        self.gpu_verdicts = self.gpu.observe(&snap.gpus, snap.at_ms);
        let gpu_of = gpu_of_pids(&snap.gpus);
        for engine in &snap.engines {
            let rank_gpu: BTreeMap<u32, (u32, GpuClass)> = engine
                .ranks
                .iter()
                .filter_map(|r| {
                    let g = gpu_of
                        .get(&r.process.pid)
                        .or_else(|| r.process.ns_pid.and_then(|p| gpu_of.get(&p)))?;
                    let mut c = self
                        .gpu_verdicts
                        .get(g)
                        .map_or(GpuClass::Unknown, |v| v.class);
                    // Ranks sharing a GPU: its class is the busiest one's; a rank whose
                    // own (per-process) utilization is ~0 is idle on it.
                    let gpu = snap.gpus.iter().find(|x| x.index == *g);
                    // NVML reports samples only for processes that ran kernels lately:
                    // a rank without a sample, beside ranks with one, ran nothing.
                    let own = gpu
                        .and_then(|x| x.processes.iter().find(|p| p.pid == r.process.pid))
                        .and_then(|p| p.utilization);
                    let sampled = gpu.is_some_and(|x| {
                        x.processes.len() > 1 && x.processes.iter().any(|p| p.utilization.is_some())
                    });
                    if sampled && own.unwrap_or(0) <= 5 && c != GpuClass::Unknown {
                        c = GpuClass::Idle;
                    }
                    Some((r.rank, (*g, c)))
                })
                .collect();
            let mem = self.engines.entry(engine.id.clone()).or_default();
            if mem.core_pid != 0 && mem.core_pid != engine.core.pid {
                // A new engine core under the same label: the old engine died.
                if let Some(v) = dead_verdict(mem, snap.at_ms) {
                    out.push(v);
                }
                *mem = EngineMemory::default();
            }
            let core_gone = engine.core.state == ProcState::Gone;
            let v = if core_gone {
                dead_verdict(mem, snap.at_ms).unwrap_or_else(|| bare_dead(engine, snap.at_ms))
            } else {
                judge_engine(&self.thresholds, mem, engine, snap.at_ms, &rank_gpu)
            };
            mem.last_verdict = Some(v.clone());
            out.push(v);
        }
        let gone: Vec<String> = self
            .engines
            .keys()
            .filter(|id| !snap.engines.iter().any(|e| &e.id == *id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(mem) = self.engines.remove(&id) {
                let already_dead = mem
                    .last_verdict
                    .as_ref()
                    .is_some_and(|v| v.state == EngineState::Dead);
                if !already_dead {
                    if let Some(mut v) = dead_verdict(&mem, snap.at_ms) {
                        add_last_words(&mut v, &id, &snap.late_events);
                        out.push(v);
                    }
                }
            }
        }
        out
    }
}

fn bare_dead(engine: &EngineFacts, at_ms: Millis) -> Verdict {
    Verdict {
        engine: engine.id.clone(),
        at_ms,
        state: EngineState::Dead,
        suspects: Vec::new(),
        engine_reasons: Vec::new(),
        onset_ms: None,
        confirmed: false,
        deadline_left_seconds: None,
        rank_lag_seconds: Vec::new(),
        suspect_after_seconds: 0.0,
        confirm_after_seconds: 0.0,
    }
}

/// What a dying engine logged after it vanished from `/proc`: its RPC timeout.
fn add_last_words(v: &mut Verdict, engine: &str, late: &[(String, crate::logs::LogEvent)]) {
    for (id, ev) in late.iter().filter(|(id, _)| id == engine) {
        let _ = id;
        if let LogEventKind::RpcTimeout { method } = &ev.kind {
            if !v
                .engine_reasons
                .iter()
                .any(|r| r.code == ReasonCode::RpcTimeout)
            {
                v.engine_reasons.push(Reason {
                    code: ReasonCode::RpcTimeout,
                    detail: format!("vLLM's own timeout fired: RPC call to {method} timed out"),
                    since_ms: ev.at_ms,
                });
            }
        }
    }
}

/// The engine is gone: keep what was last known of the stall, so its incident ends
/// with the names it had.
fn dead_verdict(mem: &EngineMemory, at_ms: Millis) -> Option<Verdict> {
    let last = mem.last_verdict.as_ref()?;
    Some(Verdict {
        at_ms,
        state: EngineState::Dead,
        deadline_left_seconds: None,
        ..last.clone()
    })
}

fn judge_engine(
    t: &Thresholds,
    mem: &mut EngineMemory,
    engine: &EngineFacts,
    now: Millis,
    rank_gpu: &BTreeMap<u32, (u32, GpuClass)>,
) -> Verdict {
    let first_look = mem.last.is_none();
    mem.core_pid = engine.core.pid;
    let eff_before = t.effective(mem.recovered.iter().map(|(_, d)| *d).max().unwrap_or(0));

    // Ranks seen before and missing now have exited.
    let mut ranks: Vec<RankFacts> = engine.ranks.clone();
    for r in &ranks {
        mem.known_ranks.insert(r.rank, r.process.pid);
    }
    for (&rank, &pid) in &mem.known_ranks {
        if !ranks.iter().any(|r| r.rank == rank) {
            if let Some(prev) = mem.last.as_ref().and_then(|l| l.rank(rank)) {
                let mut gone = prev.clone();
                gone.process.state = ProcState::Gone;
                gone.process.pid = pid;
                ranks.push(gone);
            }
        }
    }

    // Process evidence.
    for r in &ranks {
        let st = r.process.state;
        if st.is_halted() {
            let e = mem.halted.entry(r.rank).or_insert((st, now));
            if e.0 != st {
                *e = (st, now);
            }
        } else {
            mem.halted.remove(&r.rank);
        }
        if st == ProcState::DiskSleep {
            mem.disk_sleep.entry(r.rank).or_insert(now);
        } else {
            mem.disk_sleep.remove(&r.rank);
        }
    }

    // Ring evidence.
    let (lags, all) = reader_lags(engine);
    let mut next_lag = BTreeMap::new();
    for l in &lags {
        let key = (l.ring.clone(), l.reader);
        let since = match mem.reader_lag.get(&key) {
            Some(&(chunk, _, since)) if chunk == l.chunk => since,
            _ => now,
        };
        next_lag.insert(key, (l.chunk, l.rank, since));
    }
    for (key, &(_, _, since)) in &mem.reader_lag {
        if !next_lag.contains_key(key) {
            remember_recovery(&mut mem.recovered, now, now - since, eff_before.confirm_ms);
        }
    }
    mem.reader_lag = next_lag;
    let mut next_all = BTreeMap::new();
    for a in &all {
        let since = match mem.unread_by_all.get(&a.ring) {
            Some(&(chunk, since)) if chunk == a.chunk => since,
            _ => now,
        };
        next_all.insert(a.ring.clone(), (a.chunk, since));
    }
    for (ring, &(_, since)) in &mem.unread_by_all {
        if !next_all.contains_key(ring) {
            remember_recovery(&mut mem.recovered, now, now - since, eff_before.confirm_ms);
        }
    }
    mem.unread_by_all = next_all;
    for ring in &engine.rings {
        if ring.methods.values().any(|m| is_serving_method(m)) {
            mem.seen_serving = true;
        }
    }

    // What vLLM says in its logs and on its /metrics.
    let stats_ms = engine
        .settings
        .get("VLLM_LOG_STATS_INTERVAL")
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(10_000, |s| (s * 1000.0) as Millis);
    for ev in &engine.log_events {
        match &ev.kind {
            LogEventKind::Stats {
                running,
                generation_tps,
                prompt_tps,
                ..
            } => {
                if *running > 0 && *generation_tps == 0.0 && *prompt_tps == 0.0 {
                    let since = mem.log_no_progress.map_or(ev.at_ms - stats_ms, |(s, _)| s);
                    mem.log_no_progress = Some((since, *running));
                } else {
                    mem.log_no_progress = None;
                }
            }
            LogEventKind::RingWait { side, seconds } if side == "reader" => {
                let since = ev.at_ms - (*seconds * 1000.0) as Millis;
                mem.ring_wait.get_or_insert((since, *seconds));
            }
            LogEventKind::RpcTimeout { method } => {
                mem.rpc_timeout = Some((ev.at_ms, method.clone()));
            }
            LogEventKind::EngineDead => mem.engine_dead_logged = true,
            LogEventKind::WorkerDied {
                rank: Some(rank),
                name,
                exit_code,
            } => {
                let code = exit_code.map_or("?".to_string(), |c| c.to_string());
                mem.worker_died.entry(*rank).or_insert((
                    ev.at_ms,
                    format!("vLLM logged: worker {name} died unexpectedly (exit code {code})"),
                ));
            }
            _ => {}
        }
    }
    let mut metrics_moved = false;
    if let Some(m) = &engine.vllm_metrics {
        let counters = m.progress();
        let running = m.running.unwrap_or(0.0);
        if mem.metrics_counters != Some(counters) {
            if mem.metrics_counters.is_some() {
                metrics_moved = true;
                if let Some((since, _)) = mem.metrics_flat.take() {
                    remember_recovery(&mut mem.recovered, now, now - since, eff_before.confirm_ms);
                }
            }
            mem.metrics_counters = Some(counters);
            mem.metrics_changed_ms = now;
        } else if running > 0.0 {
            let since = mem.metrics_changed_ms;
            mem.metrics_flat = Some((since, running));
        }
        if running <= 0.0 {
            mem.metrics_flat = None;
        }
    }

    // Progress: something moved, or nothing is outstanding.
    let idle_wait = core_idle_wait(&engine.core);
    let nothing_pending = lags.is_empty() && all.is_empty();
    let idle = idle_wait == Some(true) && nothing_pending;
    if idle {
        mem.seen_idle = true;
    }
    let moved = metrics_moved
        || match &mem.last {
            Some(prev) => {
                engine_moved(prev, engine, now - mem.last_at_ms, t.core_busy_cpu_fraction)
            }
            None => true,
        };
    if moved {
        mem.ring_wait = None;
    }
    // Without a readable wchan the core's waiting cannot be told from idling: stay
    // silent rather than guess.
    let waiting = idle_wait == Some(false);
    if first_look || moved || !waiting || idle {
        let quiet_ms = now - mem.last_progress_ms;
        if !first_look && moved && quiet_ms > MIN_RECOVERED_MS && mem.last_progress_ms > 0 {
            remember_recovery(&mut mem.recovered, now, quiet_ms, eff_before.confirm_ms);
        }
        mem.last_progress_ms = now;
    }
    mem.recovered
        .retain(|(at, _)| now - at <= t.adapt_memory_ms);
    let longest = mem.recovered.iter().map(|(_, d)| *d).max().unwrap_or(0);
    let eff = t.effective(longest);
    // A stopped or blocked process is no long step: its evidence never adapts.
    let base = t.effective(0);

    mem.last = Some(engine.clone());
    mem.last_at_ms = now;

    let core_age = if engine.core.started_at_ms > 0 {
        now - engine.core.started_at_ms
    } else {
        Millis::MAX
    };
    let starting = !mem.seen_idle && !mem.seen_serving && core_age < t.startup_grace_ms;

    for d in engine.stacks.iter().filter(|d| d.error.is_none()) {
        if let Some(rank) = d.rank {
            mem.stacks_first.entry(rank).or_insert_with(|| d.clone());
            mem.stacks_latest.insert(rank, d.clone());
        }
    }

    // Suspects by rank.
    let mut by_rank: BTreeMap<u32, Vec<Reason>> = BTreeMap::new();
    let mut lag_of: BTreeMap<u32, Millis> = BTreeMap::new();
    for ((_, _), &(chunk, rank, since)) in &mem.reader_lag {
        let age = now - since;
        lag_of
            .entry(rank)
            .and_modify(|a| *a = (*a).max(age))
            .or_insert(age);
        if age >= eff.suspect_ms {
            let l = lags.iter().find(|l| l.rank == rank && l.chunk == chunk);
            let method = l
                .and_then(|l| l.method.clone())
                .map(|m| format!(" ({m})"))
                .unwrap_or_default();
            let ring_role = engine
                .rings
                .iter()
                .find(|r| lags.iter().any(|l| l.ring == r.name && l.rank == rank))
                .map(|r| r.role.name())
                .unwrap_or("rpc");
            by_rank.entry(rank).or_default().push(Reason {
                code: ReasonCode::RingUnread,
                detail: format!(
                    "has not read {ring_role} chunk {chunk}{method} for {:.0} s; the other ranks have",
                    age as f64 / 1000.0
                ),
                since_ms: since,
            });
        }
    }
    for (&rank, &(st, since)) in &mem.halted {
        let age = now - since;
        lag_of
            .entry(rank)
            .and_modify(|a| *a = (*a).max(age))
            .or_insert(age);
        let exited = matches!(st, ProcState::Zombie | ProcState::Dead | ProcState::Gone);
        if exited {
            by_rank.entry(rank).or_default().push(Reason {
                code: ReasonCode::ProcessExited,
                detail: match st {
                    ProcState::Zombie => "process exited (zombie, not yet reaped)".to_string(),
                    _ => "process exited".to_string(),
                },
                since_ms: since,
            });
        } else if age >= base.suspect_ms && idle_wait != Some(true) {
            by_rank.entry(rank).or_default().push(Reason {
                code: ReasonCode::ProcessStopped,
                detail: format!(
                    "process stopped ({}) for {:.0} s",
                    if st == ProcState::TracingStop {
                        "by a tracer"
                    } else {
                        "SIGSTOP"
                    },
                    age as f64 / 1000.0
                ),
                since_ms: since,
            });
        }
    }
    for (&rank, &since) in &mem.disk_sleep {
        let age = now - since;
        if age >= base.suspect_ms && idle_wait != Some(true) {
            let wchan = ranks
                .iter()
                .find(|r| r.rank == rank)
                .and_then(|r| r.process.wchan.clone())
                .unwrap_or_else(|| "?".into());
            by_rank.entry(rank).or_default().push(Reason {
                code: ReasonCode::UninterruptibleSleep,
                detail: format!(
                    "in uninterruptible sleep ({wchan}) for {:.0} s",
                    age as f64 / 1000.0
                ),
                since_ms: since,
            });
        }
    }

    for (&rank, (since, detail)) in &mem.worker_died {
        by_rank.entry(rank).or_default().push(Reason {
            code: ReasonCode::WorkerDied,
            detail: detail.clone(),
            since_ms: *since,
        });
    }

    // Engine-wide evidence that names nobody.
    let mut engine_reasons = Vec::new();
    if let Some((since, running)) = mem.log_no_progress {
        if now - since >= eff.suspect_ms {
            engine_reasons.push(Reason {
                code: ReasonCode::LogNoProgress,
                detail: format!(
                    "vLLM's stats line: {running} requests running at 0 tokens/s for {:.0} s",
                    (now - since) as f64 / 1000.0
                ),
                since_ms: since,
            });
        }
    }
    if let Some((since, running)) = mem.metrics_flat {
        if now - since >= eff.suspect_ms {
            engine_reasons.push(Reason {
                code: ReasonCode::MetricsNoProgress,
                detail: format!(
                    "vLLM's /metrics: {running:.0} requests running, token counters flat for {:.0} s",
                    (now - since) as f64 / 1000.0
                ),
                since_ms: since,
            });
        }
    }
    if let Some((since, seconds)) = mem.ring_wait {
        engine_reasons.push(Reason {
            code: ReasonCode::RingWaitMessage,
            detail: format!(
                "vLLM logged that its engine core found no shared memory broadcast block for {seconds:.0} s"
            ),
            since_ms: since,
        });
    }
    if let Some((since, method)) = &mem.rpc_timeout {
        engine_reasons.push(Reason {
            code: ReasonCode::RpcTimeout,
            detail: format!("vLLM's own timeout fired: RPC call to {method} timed out"),
            since_ms: *since,
        });
    }
    for a in &all {
        if let Some(&(_, since)) = mem.unread_by_all.get(&a.ring) {
            let age = now - since;
            if age >= eff.suspect_ms {
                let method = a.method.as_deref().unwrap_or("an RPC");
                engine_reasons.push(Reason {
                    code: ReasonCode::UnreadByAll,
                    detail: format!(
                        "{method} in chunk {} unread by every rank for {:.0} s",
                        a.chunk,
                        age as f64 / 1000.0
                    ),
                    since_ms: since,
                });
            }
        }
    }
    let quiet_ms = now - mem.last_progress_ms;
    if waiting && quiet_ms >= eff.suspect_ms && mem.last_progress_ms > 0 {
        engine_reasons.push(Reason {
            code: ReasonCode::NoReply,
            detail: format!(
                "every rank took its RPC but no reply for {:.0} s while the engine core waits",
                quiet_ms as f64 / 1000.0
            ),
            since_ms: mem.last_progress_ms,
        });
    }

    // Stacks only ever add a name to a stall the other evidence already shows.
    if !by_rank.is_empty() || !engine_reasons.is_empty() {
        if let Some(f) = odd_one_out(&mem.stacks_latest) {
            let since = mem
                .stacks_latest
                .get(&f.rank)
                .map_or(now, |d| d.taken_at_ms);
            let mut detail = f.detail.clone();
            if let (Some(a), Some(b)) = (
                mem.stacks_first.get(&f.rank),
                mem.stacks_latest.get(&f.rank),
            ) {
                if a.taken_at_ms < b.taken_at_ms && unchanged(a, b) {
                    detail.push_str(&format!(
                        "; its stack unchanged for {:.0} s",
                        (b.taken_at_ms - a.taken_at_ms) as f64 / 1000.0
                    ));
                }
            }
            by_rank.entry(f.rank).or_default().push(Reason {
                code: ReasonCode::StackOddOneOut,
                detail,
                since_ms: since,
            });
        }
    }

    // GPUs and NCCL RAS, like stacks, name ranks in a stall other evidence shows.
    if let Some(r) = &engine.nccl_ras {
        mem.ras = Some((now, r.clone()));
    }
    if !by_rank.is_empty() || !engine_reasons.is_empty() {
        let classes: BTreeMap<u32, GpuClass> =
            rank_gpu.iter().map(|(r, (_, c))| (*r, *c)).collect();
        match gpu_finding(&classes) {
            Some(GpuFinding::IdleWhileOthersSpin { rank, others }) => {
                let gpu = rank_gpu.get(&rank).map_or(0, |(g, _)| *g);
                let list = others
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                by_rank.entry(rank).or_default().push(Reason {
                    code: ReasonCode::GpuIdleWhileOthersSpin,
                    detail: format!(
                        "its GPU {gpu} is idle while the GPUs of ranks {list} spin in a collective (utilization ~100 % at idle power): they wait for it"
                    ),
                    since_ms: now,
                });
            }
            Some(GpuFinding::CollectiveWedge { ranks }) => {
                engine_reasons.push(Reason {
                    code: ReasonCode::CollectiveWedge,
                    detail: format!(
                        "collective wedge: every local rank ({}) waits in a collective; the collectives disagree (desync) or the missing peer is on another node",
                        ranks.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",")
                    ),
                    since_ms: now,
                });
            }
            None => {}
        }
        if let Some((at, status)) = &mem.ras {
            match ras_finding(status) {
                Some(RasFinding::Laggard {
                    pid,
                    communicator,
                    op,
                    behind,
                }) => {
                    if let Some(r) = ranks
                        .iter()
                        .find(|r| r.process.pid == pid || r.process.ns_pid == Some(pid))
                    {
                        by_rank.entry(r.rank).or_default().push(Reason {
                            code: ReasonCode::RasLaggard,
                            detail: format!(
                                "NCCL RAS: {behind} {op} behind the other ranks on communicator {communicator}"
                            ),
                            since_ms: *at,
                        });
                    }
                }
                Some(RasFinding::Desync { detail }) => engine_reasons.push(Reason {
                    code: ReasonCode::RasDesync,
                    detail: format!("NCCL RAS: desync, no single laggard: {detail}"),
                    since_ms: *at,
                }),
                None => {}
            }
        }
    }

    let mut suspects: Vec<Suspect> = by_rank
        .into_iter()
        .map(|(rank, reasons)| {
            let pid = ranks
                .iter()
                .find(|r| r.rank == rank)
                .map(|r| r.process.pid)
                .unwrap_or(0);
            let miss: f64 = reasons.iter().map(|r| 1.0 - r.code.weight()).product();
            Suspect {
                rank,
                pid,
                reasons,
                confidence: ((1.0 - miss) * 100.0).round() / 100.0,
            }
        })
        .collect();
    suspects.sort_by(|a, b| {
        b.confidence
            .partial_cmp(&a.confidence)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.rank.cmp(&b.rank))
    });

    let mut rank_lag_seconds: Vec<(u32, f64)> = ranks
        .iter()
        .map(|r| {
            (
                r.rank,
                lag_of.get(&r.rank).copied().unwrap_or(0) as f64 / 1000.0,
            )
        })
        .collect();
    rank_lag_seconds.sort_by_key(|(r, _)| *r);

    let stalled = (!starting || mem.rpc_timeout.is_some())
        && (!suspects.is_empty() || !engine_reasons.is_empty());
    let state = if mem.engine_dead_logged {
        EngineState::Dead
    } else if starting {
        EngineState::Starting
    } else if stalled {
        EngineState::Stalled
    } else if idle {
        EngineState::Idle
    } else {
        EngineState::Busy
    };
    let onset_ms = if stalled {
        suspects
            .iter()
            .flat_map(|s| s.reasons.iter())
            .chain(engine_reasons.iter())
            .map(|r| r.since_ms)
            .min()
    } else {
        None
    };
    let exited = mem.rpc_timeout.is_some()
        || suspects.iter().any(|s| {
            s.reasons
                .iter()
                .any(|r| matches!(r.code, ReasonCode::ProcessExited | ReasonCode::WorkerDied))
        });
    let confirm_after = |code: ReasonCode| match code {
        ReasonCode::ProcessStopped | ReasonCode::UninterruptibleSleep => base.confirm_ms,
        _ => eff.confirm_ms,
    };
    let confirmed = stalled
        && (exited
            || suspects
                .iter()
                .flat_map(|s| s.reasons.iter())
                .chain(engine_reasons.iter())
                .any(|r| now - r.since_ms >= confirm_after(r.code)));
    let deadline_left_seconds =
        onset_ms.map(|o| (engine.execute_timeout_seconds - (now - o) as f64 / 1000.0).max(0.0));
    if state != EngineState::Stalled {
        mem.ras = None;
        mem.stacks_first.clear();
        mem.stacks_latest.clear();
        // Stay silent on rank lags while starting: they carry no meaning yet.
        if starting {
            for l in &mut rank_lag_seconds {
                l.1 = 0.0;
            }
        }
    }
    Verdict {
        engine: engine.id.clone(),
        at_ms: now,
        state,
        suspects: if stalled { suspects } else { Vec::new() },
        engine_reasons: if stalled { engine_reasons } else { Vec::new() },
        onset_ms,
        confirmed,
        deadline_left_seconds,
        rank_lag_seconds,
        suspect_after_seconds: eff.suspect_ms as f64 / 1000.0,
        confirm_after_seconds: eff.confirm_ms as f64 / 1000.0,
    }
}

/// Learns from a lag that ended on its own before it was confirmed as a stall (a long
/// step); a confirmed stall that recovered must not teach the judge to be slower.
fn remember_recovery(
    recovered: &mut Vec<(Millis, Millis)>,
    now: Millis,
    lag: Millis,
    confirm_ms: Millis,
) {
    if (MIN_RECOVERED_MS..confirm_ms).contains(&lag) {
        recovered.push((now, lag));
    }
}
