//! Finds every vLLM engine on the node from `/proc`: API server, engine core (one
//! engine per core: data-parallel replicas are separate engines), workers and rings.

mod front;

use crate::naming::{identity, place_of};
use crate::process::ProcRoot;
use crate::rings::{discover_rings, RingSite};
use crate::settings::execute_timeout_seconds;
use crate::title::{classify, ProcessKind, ServeArgs, WorkerTitle, DEFAULT_PORT};
use hangwatch_rules::facts::PodFacts;
use hangwatch_rules::{EngineFacts, Executor, Millis, ProcFacts, RankFacts};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// How long to wait before looking for rings again when an engine has none yet
/// (workers exist before their rings during start-up).
const RING_RETRY_MS: Millis = 2_000;
/// How often a follower part's connections are counted again.
const LINKS_EVERY_MS: Millis = 3_000;

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
    /// The API server's deployment settings by pid, with the process's start time: an
    /// environment never changes after exec, so it is read once per process.
    settings: HashMap<u32, (Millis, BTreeMap<String, String>)>,
    /// Each API server's (or engine core's) pod, read once per process like its settings.
    pods: HashMap<u32, (Millis, Option<PodFacts>)>,
    /// The kubelet's log folder, where pods' names are found by UID.
    pod_log_dir: PathBuf,
    /// Each engine core's API server as last found, by core pid: an API server that
    /// died leaves its engine core (and workers) running without a front end, and the
    /// engine keeps its name and its API server's last state (exited) instead of
    /// turning into a new engine.
    fronts: HashMap<u32, (ProcEntry, ServeArgs)>,
    /// A follower part's established connections by core pid, with when they were
    /// counted: counting reads every worker's descriptors and the TCP table, so it is
    /// done every `LINKS_EVERY_MS`, not every tick (an orphan is told after 10 s).
    links: HashMap<u32, (Millis, Option<u32>)>,
}

/// Where the kubelet keeps pods' logs (`/var/log/pods/<namespace>_<pod>_<uid>/`).
pub const POD_LOG_DIR: &str = "/var/log/pods";

impl Discovery {
    pub fn new(proc: ProcRoot) -> Discovery {
        Discovery {
            proc,
            rings: HashMap::new(),
            settings: HashMap::new(),
            pods: HashMap::new(),
            pod_log_dir: PathBuf::from(POD_LOG_DIR),
            fronts: HashMap::new(),
            links: HashMap::new(),
        }
    }

    pub fn with_pod_log_dir(mut self, dir: &Path) -> Discovery {
        self.pod_log_dir = dir.to_path_buf();
        self
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
    /// vanishes mid-scan is normal; an unreadable `/proc` is an error.
    pub fn scan(&mut self, now_ms: Millis) -> Result<Vec<EngineLayout>, String> {
        let procs = self.list()?;
        let by_pid: HashMap<u32, &ProcEntry> = procs.iter().map(|p| (p.pid, p)).collect();
        let mut engines = Vec::new();
        for core in &procs {
            let ProcessKind::EngineCore { dp_rank } = core.kind else {
                continue;
            };
            let found = find_api_server(core, &by_pid);
            if let Some((p, a)) = found {
                self.fronts.insert(core.pid, (p.clone(), a.clone()));
            }
            let remembered = match found {
                Some(_) => None,
                None => self.fronts.get(&core.pid).cloned(),
            };
            let api = found.or(remembered.as_ref().map(|(p, a)| (p, a)));
            let workers = children_workers(&procs, core.pid);
            engines.push(self.layout(core, dp_rank, api, &workers, now_ms));
        }
        // A follower node's part: a headless launcher with workers and no engine core.
        for launcher in &procs {
            let ProcessKind::ApiServer(a) = &launcher.kind else {
                continue;
            };
            let workers = children_workers(&procs, launcher.pid);
            if a.headless && !workers.is_empty() {
                let me = Some((launcher, a));
                engines.push(self.layout(launcher, 0, me, &workers, now_ms));
            }
        }
        let alive: Vec<u32> = engines.iter().map(|e| e.facts.core.pid).collect();
        self.rings.retain(|pid, _| alive.contains(pid));
        self.fronts.retain(|pid, _| alive.contains(pid));
        self.links.retain(|pid, _| alive.contains(pid));
        let apis: Vec<u32> = engines.iter().filter_map(|e| e.facts.api_pid).collect();
        self.settings.retain(|pid, _| apis.contains(pid));
        self.pods.retain(|pid, _| apis.contains(pid));
        let root = self.proc.root.clone();
        unique_ids(&mut engines, |pid, port| {
            crate::listens::listens_on(&root, pid, port)
        });
        engines.sort_by(|a, b| a.facts.id.cmp(&b.facts.id));
        Ok(engines)
    }

    fn list(&self) -> Result<Vec<ProcEntry>, String> {
        let all = procfs::process::all_processes_with_root(&self.proc.root)
            .map_err(|e| format!("cannot list processes in {}: {e}", self.proc.root.display()))?;
        let mut out = Vec::new();
        for p in all.flatten() {
            let cmdline = match crate::capped::cmdline(&self.proc.root, p.pid() as u32) {
                Ok(c) => c,
                Err(e) if crate::process::is_own_failure(&e) => {
                    return Err(format!(
                        "cannot read processes in {}: {e}",
                        self.proc.root.display()
                    ));
                }
                Err(_) => continue, // gone meanwhile, or not ours to read
            };
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
        Ok(out)
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
        // A headless launcher serves no HTTP: its settings count, it is no API server.
        // Passed as the core too, it stands for a follower node's part.
        let follower = args.headless && api.is_some_and(|(p, _)| p.pid == core.pid);
        // Each process's /proc facts read once a tick: the caches below key on start time.
        let core_facts = self.proc.facts(core.pid);
        let api_facts = api.map(|(p, _)| self.proc.facts(p.pid));
        let (settings, pod) = self.front_of(api_facts.as_ref(), &core_facts, &mut problems);
        let api_facts = api_facts.filter(|_| !args.headless);
        let front = api.filter(|_| !args.headless);
        let sizes = Sizes::of(&args, workers);
        let (executor, ranks) = self.executor_of(follower, core, &core_facts, workers, sizes);
        let sites = self.sites_of(core.pid, &ranks, now_ms, &mut problems);
        let dp_size = args.dp.unwrap_or(1).max(1);
        let port = args
            .port
            .or(front.map(|_| DEFAULT_PORT))
            .filter(|_| !args.headless);
        let local: Vec<u32> = ranks.iter().map(|r| r.rank).collect();
        let node = place_of(&args, sizes.tp * sizes.pp * sizes.pcp, &local);
        let world = match &node {
            Some(_) => sizes.tp * sizes.pp * sizes.pcp,
            None => ranks.len() as u32,
        };
        let output_rank = world.saturating_sub(sizes.tp * sizes.pcp);
        let (id, deployment) = identity(&args, port, dp_rank, core.pid, follower, pod.as_ref());
        let facts = EngineFacts {
            id,
            model: args.served_model_name.clone().or(args.model.clone()),
            port,
            api_pid: front.map(|(p, _)| p.pid),
            api_ns_pid: api_facts.as_ref().and_then(|f| f.ns_pid),
            api_parent_pid: front.map(|(p, _)| p.ppid),
            api: api_facts,
            core: core_facts,
            executor,
            tp: sizes.tp,
            pp: sizes.pp,
            dp: dp_size,
            dp_rank,
            deployment,
            node,
            peers: Vec::new(),
            links: follower
                .then(|| self.links_of(core.pid, workers, now_ms))
                .flatten(),
            leader: None,
            lockstep: dp_size > 1 && args.expert_parallel,
            output_rank,
            execute_timeout_seconds: execute_timeout_seconds(&settings),
            settings,
            ranks,
            rings: Vec::new(),
            stacks: Vec::new(),
            log_events: Vec::new(),
            vllm_metrics: None,
            api_answered: None,
            nccl_ras: None,
            pod,
            credible: api.is_some() || !sites.is_empty(),
        };
        EngineLayout {
            facts,
            sites,
            problems,
        }
    }

    /// How vLLM runs the ranks, and the ranks. World size 1 and no worker: the uni
    /// executor, the engine core is rank 0 (`docs/vllm.md`, "Executors").
    fn executor_of(
        &self,
        follower: bool,
        core: &ProcEntry,
        core_facts: &ProcFacts,
        workers: &[(&ProcEntry, &WorkerTitle)],
        sizes: Sizes,
    ) -> (Executor, Vec<RankFacts>) {
        if follower {
            return (Executor::Follower, self.ranks_of(workers, sizes));
        }
        if workers.is_empty() && sizes.tp * sizes.pp * sizes.pcp == 1 {
            let rank0 = RankFacts {
                rank: 0,
                tp_rank: 0,
                pp_rank: 0,
                title: core.title.clone(),
                process: core_facts.clone(),
            };
            return (Executor::Uni, vec![rank0]);
        }
        (Executor::Mp, self.ranks_of(workers, sizes))
    }

    /// Ranks from the titles; plain `Worker` titles (before device init) by start order.
    /// The follower part's connection count, counted again once `LINKS_EVERY_MS` old.
    fn links_of(
        &mut self,
        core: u32,
        workers: &[(&ProcEntry, &WorkerTitle)],
        now_ms: Millis,
    ) -> Option<u32> {
        if let Some((at, n)) = self.links.get(&core) {
            if now_ms.saturating_sub(*at) < LINKS_EVERY_MS {
                return *n;
            }
        }
        let pids: Vec<u32> = workers.iter().map(|(p, _)| p.pid).collect();
        let n = crate::links::established(&self.proc, &pids);
        self.links.insert(core, (now_ms, n));
        n
    }

    fn ranks_of(&self, workers: &[(&ProcEntry, &WorkerTitle)], sizes: Sizes) -> Vec<RankFacts> {
        let mut sorted: Vec<_> = workers.to_vec();
        sorted.sort_by_key(|(p, _)| p.pid);
        let mut ranks: Vec<RankFacts> = sorted
            .iter()
            .enumerate()
            .map(|(i, (p, w))| {
                let tp = w.tp.unwrap_or(i as u32 % sizes.tp);
                let pp = w.pp.unwrap_or(0);
                let pcp = w.pcp.unwrap_or(0);
                let rank = if w.tp.is_none() && w.pp.is_none() {
                    i as u32
                } else {
                    pp * (sizes.pcp * sizes.tp) + pcp * sizes.tp + tp
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
        ranks
    }

    /// Rings: rediscovered only when the processes changed (maps are slow to read).
    fn sites_of(
        &mut self,
        core_pid: u32,
        ranks: &[RankFacts],
        now_ms: Millis,
        problems: &mut Vec<String>,
    ) -> Vec<RingSite> {
        let mut pids: Vec<u32> = ranks.iter().map(|r| r.process.pid).collect();
        pids.push(core_pid);
        pids.sort_unstable();
        let stale = match self.rings.get(&core_pid) {
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
                discover_rings(&self.proc, core_pid, &rank_pids, ranks.len() as u32);
            problems.append(&mut ring_problems);
            self.rings.insert(
                core_pid,
                RingCache {
                    pids,
                    sites,
                    looked_at_ms: now_ms,
                },
            );
        }
        self.rings
            .get(&core_pid)
            .map(|c| c.sites.clone())
            .unwrap_or_default()
    }
}

/// Ids are unique per node. Anyone can start processes titled like vLLM's with the same
/// `--port` as a real engine: the id stays with the engine whose processes map an RPC
/// ring (then the one whose core started first); the others get `-core<pid>` appended,
/// and say so.
/// Two engines claiming one id (the same `--port`): the one whose API server holds the
/// listening socket keeps it, then the one that maps an RPC ring, then the older.
fn unique_ids(engines: &mut [EngineLayout], listens: impl Fn(u32, u16) -> bool) {
    let mut by_id: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, e) in engines.iter().enumerate() {
        by_id.entry(e.facts.id.clone()).or_default().push(i);
    }
    for (id, mut idx) in by_id.into_iter().filter(|(_, v)| v.len() > 1) {
        idx.sort_by_key(|&i| {
            let e = &engines[i];
            let has_rpc = e
                .sites
                .iter()
                .any(|s| s.role == hangwatch_rules::RingRole::Rpc);
            let holds_port = match (e.facts.api_pid, e.facts.port) {
                (Some(pid), Some(port)) => listens(pid, port),
                _ => false,
            };
            (
                !holds_port,
                !has_rpc,
                e.facts.core.started_at_ms,
                e.facts.core.pid,
            )
        });
        for &i in &idx[1..] {
            let e = &mut engines[i];
            let pid = e.facts.core.pid;
            e.facts.id = format!("{id}-core{pid}");
            e.problems.push(format!(
                "two engines claim the id {id}: the one with engine core {pid} is {} (it maps no RPC ring, or started later)",
                e.facts.id
            ));
        }
    }
}

/// Parallel sizes of an engine: from the API server's flags, else from the titles.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    tp: u32,
    pp: u32,
    pcp: u32,
}

impl Sizes {
    fn of(args: &ServeArgs, workers: &[(&ProcEntry, &WorkerTitle)]) -> Sizes {
        let from_titles = |f: fn(&WorkerTitle) -> Option<u32>| {
            workers
                .iter()
                .filter_map(|(_, w)| f(w))
                .max()
                .map_or(1, |m| m + 1)
        };
        Sizes {
            tp: args.tp.unwrap_or_else(|| from_titles(|w| w.tp)).max(1),
            pp: args.pp.unwrap_or_else(|| from_titles(|w| w.pp)).max(1),
            pcp: from_titles(|w| w.pcp),
        }
    }
}

/// The workers whose parent is `pid`.
fn children_workers(procs: &[ProcEntry], pid: u32) -> Vec<(&ProcEntry, &WorkerTitle)> {
    procs
        .iter()
        .filter(|p| p.ppid == pid)
        .filter_map(|p| match &p.kind {
            ProcessKind::Worker(w) => Some((p, w)),
            _ => None,
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(id: &str, core_pid: u32, started: i64, rpc: bool) -> EngineLayout {
        let facts = serde_json::json!({
            "id": id, "model": null, "port": 8000, "api_pid": core_pid + 1,
            "core": {"pid": core_pid, "state": "sleeping", "started_at_ms": started},
            "tp": 2, "pp": 1, "dp": 1, "dp_rank": 0, "output_rank": 0,
            "execute_timeout_seconds": 300.0, "ranks": []
        });
        let sites = if rpc {
            vec![RingSite {
                name: "psm_1".into(),
                path: "/dev/shm/psm_1".into(),
                geometry: crate::rings::geometry::Geometry {
                    chunk_bytes: 1 << 24,
                    chunks: 10,
                    readers: 2,
                },
                role: hangwatch_rules::RingRole::Rpc,
                writer_rank: None,
                reader_ranks: vec![Some(0), Some(1)],
            }]
        } else {
            Vec::new()
        };
        EngineLayout {
            facts: serde_json::from_value(facts).expect("facts"),
            sites,
            problems: Vec::new(),
        }
    }

    /// A look-alike started earlier with the same port does not take the real engine's
    /// id: the one whose processes map an RPC ring keeps it.
    #[test]
    fn a_look_alike_does_not_take_a_real_engines_id() {
        let mut e = vec![
            layout("vllm-8000", 100, 1_000, false),
            layout("vllm-8000", 200, 2_000, true),
        ];
        unique_ids(&mut e, |_, _| false);
        assert_eq!(e[1].facts.id, "vllm-8000");
        assert_eq!(e[0].facts.id, "vllm-8000-core100");
        assert_eq!(e[0].problems.len(), 1);
        let mut e = vec![
            layout("vllm-8000", 300, 3_000, true),
            layout("vllm-8000", 200, 2_000, true),
        ];
        unique_ids(&mut e, |_, _| false);
        assert_eq!(e[1].facts.id, "vllm-8000", "then the older core");
        assert_eq!(e[0].facts.id, "vllm-8000-core300");
        // The API server that holds the port wins over an older look-alike with rings.
        let mut e = vec![
            layout("vllm-8000", 300, 3_000, true),
            layout("vllm-8000", 200, 2_000, true),
        ];
        let api_of_300 = e[0].facts.api_pid;
        unique_ids(&mut e, |pid, _| Some(pid) == api_of_300);
        assert_eq!(e[0].facts.id, "vllm-8000");
        assert_eq!(e[1].facts.id, "vllm-8000-core200");
    }
}
