//! Finds every vLLM engine on the node from `/proc`: API server, engine core (one
//! engine per core: data-parallel replicas are separate engines), workers and rings.

use crate::process::ProcRoot;
use crate::rings::{discover_rings, RingSite};
use crate::settings::{deployment_settings, execute_timeout_seconds};
use crate::title::{classify, ProcessKind, ServeArgs, WorkerTitle, DEFAULT_PORT};
use hangwatch_rules::{EngineFacts, Millis, RankFacts};
use std::collections::{BTreeMap, HashMap};

/// How long to wait before looking for rings again when an engine has none yet
/// (workers exist before their rings during start-up).
const RING_RETRY_MS: Millis = 2_000;

#[derive(Clone, Debug)]
struct ProcEntry {
    pid: u32,
    ppid: u32,
    kind: ProcessKind,
    title: String,
}

/// The rings found for one set of engine processes; reused while that set is unchanged
/// because reading `/proc/PID/maps` of busy workers is slow.
#[derive(Clone, Debug)]
struct RingCache {
    pids: Vec<u32>,
    sites: Vec<RingSite>,
    looked_at_ms: Millis,
}

/// An engine as discovery sees it: processes and ring sites, no per-tick readings.
#[derive(Clone, Debug)]
pub struct EngineLayout {
    pub facts: EngineFacts,
    pub sites: Vec<RingSite>,
    /// Non-fatal problems met while discovering this engine.
    pub problems: Vec<String>,
}

pub struct Discovery {
    proc: ProcRoot,
    rings: HashMap<u32, RingCache>,
}

impl Discovery {
    pub fn new(proc: ProcRoot) -> Discovery {
        Discovery {
            proc,
            rings: HashMap::new(),
        }
    }

    pub fn proc_root(&self) -> &ProcRoot {
        &self.proc
    }

    /// Forget the rings of an engine core so the next scan reads its maps again (a
    /// segment vanished or changed size).
    pub fn invalidate_rings(&mut self, core_pid: u32) {
        self.rings.remove(&core_pid);
    }

    /// Every engine on the node now. Unreadable processes are skipped: a process that
    /// vanishes mid-scan is normal.
    pub fn scan(&mut self, now_ms: Millis) -> Vec<EngineLayout> {
        let procs = self.list();
        let by_pid: HashMap<u32, &ProcEntry> = procs.iter().map(|p| (p.pid, p)).collect();
        let mut engines = Vec::new();
        for core in &procs {
            let ProcessKind::EngineCore { dp_rank } = core.kind else {
                continue;
            };
            let api = find_api_server(core, &by_pid);
            let workers: Vec<(&ProcEntry, &WorkerTitle)> = procs
                .iter()
                .filter(|p| p.ppid == core.pid)
                .filter_map(|p| match &p.kind {
                    ProcessKind::Worker(w) => Some((p, w)),
                    _ => None,
                })
                .collect();
            engines.push(self.layout(core, dp_rank, api, &workers, now_ms));
        }
        let alive: Vec<u32> = engines.iter().map(|e| e.facts.core.pid).collect();
        self.rings.retain(|pid, _| alive.contains(pid));
        engines.sort_by(|a, b| a.facts.id.cmp(&b.facts.id));
        engines
    }

    fn list(&self) -> Vec<ProcEntry> {
        let Ok(all) = procfs::process::all_processes_with_root(&self.proc.root) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for p in all.flatten() {
            let Ok(cmdline) = p.cmdline() else { continue };
            if cmdline.is_empty() {
                continue; // kernel threads
            }
            let kind = classify(&cmdline);
            if kind == ProcessKind::Other {
                continue;
            }
            let Ok(stat) = p.stat() else { continue };
            out.push(ProcEntry {
                pid: p.pid() as u32,
                ppid: stat.ppid as u32,
                title: cmdline.join(" ").trim().to_string(),
                kind,
            });
        }
        out
    }

    fn layout(
        &mut self,
        core: &ProcEntry,
        dp_rank: u32,
        api: Option<(&ProcEntry, &ServeArgs)>,
        workers: &[(&ProcEntry, &WorkerTitle)],
        now_ms: Millis,
    ) -> EngineLayout {
        let mut problems = Vec::new();
        let args = api.map(|(_, a)| a.clone()).unwrap_or_default();
        let settings = match api {
            Some((p, _)) => match self.proc.process(p.pid).map(|pr| pr.environ()) {
                Some(Ok(env)) => deployment_settings(
                    env.iter()
                        .map(|(k, v)| (k.to_string_lossy(), v.to_string_lossy())),
                ),
                _ => {
                    problems.push(format!(
                        "cannot read the environment of API server {}: settings unknown",
                        p.pid
                    ));
                    BTreeMap::new()
                }
            },
            None => BTreeMap::new(),
        };

        // Ranks: from the titles; plain `Worker` titles (before device init) by start order.
        let tp_size = args
            .tp
            .unwrap_or_else(|| {
                workers
                    .iter()
                    .filter_map(|(_, w)| w.tp)
                    .max()
                    .map_or(1, |m| m + 1)
            })
            .max(1);
        let pcp_size = workers
            .iter()
            .filter_map(|(_, w)| w.pcp)
            .max()
            .map_or(1, |m| m + 1);
        let pp_size = args
            .pp
            .unwrap_or_else(|| {
                workers
                    .iter()
                    .filter_map(|(_, w)| w.pp)
                    .max()
                    .map_or(1, |m| m + 1)
            })
            .max(1);
        let mut sorted: Vec<_> = workers.to_vec();
        sorted.sort_by_key(|(p, _)| p.pid);
        let mut ranks: Vec<RankFacts> = sorted
            .iter()
            .enumerate()
            .map(|(i, (p, w))| {
                let tp = w.tp.unwrap_or(i as u32 % tp_size);
                let pp = w.pp.unwrap_or(0);
                let pcp = w.pcp.unwrap_or(0);
                let rank = if w.tp.is_none() && w.pp.is_none() {
                    i as u32
                } else {
                    pp * (pcp_size * tp_size) + pcp * tp_size + tp
                };
                RankFacts {
                    rank,
                    tp_rank: tp,
                    pp_rank: pp,
                    title: p.title.clone(),
                    process: self.proc.facts(p.pid),
                }
            })
            .collect();
        ranks.sort_by_key(|r| r.rank);

        // Rings: rediscover only when the processes changed (maps are slow to read).
        let mut pids: Vec<u32> = ranks.iter().map(|r| r.process.pid).collect();
        pids.push(core.pid);
        pids.sort_unstable();
        let stale = match self.rings.get(&core.pid) {
            Some(c) => {
                c.pids != pids
                    || (!c
                        .sites
                        .iter()
                        .any(|s| s.role == hangwatch_rules::RingRole::Rpc)
                        && now_ms - c.looked_at_ms >= RING_RETRY_MS)
            }
            None => true,
        };
        if stale {
            let rank_pids: Vec<(u32, u32)> =
                ranks.iter().map(|r| (r.rank, r.process.pid)).collect();
            let (sites, mut ring_problems) =
                discover_rings(&self.proc, core.pid, &rank_pids, ranks.len() as u32);
            problems.append(&mut ring_problems);
            self.rings.insert(
                core.pid,
                RingCache {
                    pids,
                    sites,
                    looked_at_ms: now_ms,
                },
            );
        }
        let sites = self
            .rings
            .get(&core.pid)
            .map(|c| c.sites.clone())
            .unwrap_or_default();

        let dp_size = args.dp.unwrap_or(1).max(1);
        let port = args.port.or(api.map(|_| DEFAULT_PORT));
        let world = ranks.len() as u32;
        let output_rank = world.saturating_sub(tp_size * pcp_size);
        let facts = EngineFacts {
            id: engine_id(port, dp_rank, dp_size, &args, core.pid),
            model: args.served_model_name.clone().or(args.model.clone()),
            port,
            api_pid: api.map(|(p, _)| p.pid),
            core: self.proc.facts(core.pid),
            tp: tp_size,
            pp: pp_size,
            dp: dp_size,
            dp_rank,
            output_rank,
            execute_timeout_seconds: execute_timeout_seconds(&settings),
            settings,
            ranks,
            rings: Vec::new(),
            stacks: Vec::new(),
            log_events: Vec::new(),
            vllm_metrics: None,
            nccl_ras: None,
        };
        EngineLayout {
            facts,
            sites,
            problems,
        }
    }
}

/// The API server is the engine core's parent (or grandparent when a DP coordinator or
/// a launcher sits between them).
fn find_api_server<'a>(
    core: &ProcEntry,
    by_pid: &HashMap<u32, &'a ProcEntry>,
) -> Option<(&'a ProcEntry, &'a ServeArgs)> {
    let mut pid = core.ppid;
    for _ in 0..3 {
        let p = by_pid.get(&pid)?;
        if let ProcessKind::ApiServer(a) = &p.kind {
            return Some((p, a));
        }
        pid = p.ppid;
    }
    None
}

/// A label that survives restarts: `vllm-<port>` for the API port (vLLM's default 8000
/// when the command line names none), `-dp<i>` added for data-parallel replicas. With
/// no API server in sight the served model name stands in for the port, and only as a
/// last resort the engine core's pid.
pub fn engine_id(
    port: Option<u16>,
    dp_rank: u32,
    dp_size: u32,
    args: &ServeArgs,
    core_pid: u32,
) -> String {
    let base = match (port, &args.served_model_name, &args.model) {
        (Some(p), _, _) => format!("vllm-{p}"),
        (None, Some(m), _) | (None, None, Some(m)) => format!("vllm-{}", sanitize(m)),
        (None, None, None) => format!("vllm-core{core_pid}"),
    };
    if dp_size > 1 || dp_rank > 0 {
        format!("{base}-dp{dp_rank}")
    } else {
        base
    }
}

fn sanitize(s: &str) -> String {
    let last = s.trim_end_matches('/').rsplit('/').next().unwrap_or(s);
    last.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_ids() {
        let a = ServeArgs::default();
        assert_eq!(engine_id(Some(8000), 0, 1, &a, 5), "vllm-8000");
        assert_eq!(engine_id(Some(8000), 1, 2, &a, 5), "vllm-8000-dp1");
        let named = ServeArgs {
            model: Some("/models/tiny-llama/".into()),
            ..Default::default()
        };
        assert_eq!(engine_id(None, 0, 1, &named, 5), "vllm-tiny-llama");
        assert_eq!(engine_id(None, 0, 1, &a, 5), "vllm-core5");
    }
}
