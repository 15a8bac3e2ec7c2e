//! The vocabulary every room shares: what the collectors saw at one instant.
//!
//! Facts carry their own timestamps so that the judge never needs a clock and a
//! recording can be judged again later (`hangwatch replay`) with the same result.

use serde::{Deserialize, Serialize};

pub use crate::shape::{Executor, LeaderWord, NodePlace, PeerPart, PeerRank, PeerSuspect};
use std::collections::BTreeMap;
use std::fmt;

pub use crate::time::Millis;

/// Everything the agent saw on the node at one tick.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Snapshot {
    pub at_ms: Millis,
    pub engines: Vec<EngineFacts>,
    /// How each collector fared this tick; a failed collector is data, not an error.
    #[serde(default)]
    pub collectors: Vec<CollectorReport>,
    /// Log events of engines that are gone by the time their lines were read (a dying
    /// engine's last words: the RPC timeout, EngineDeadError).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub late_events: Vec<(String, crate::logs::LogEvent)>,
    /// Every GPU of the node (empty without NVML).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<crate::gpu::GpuFacts>,
    /// Xid and double-bit ECC errors NVML reported since the previous snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xids: Vec<crate::gpu::XidEvent>,
    /// Lines read per log source since the previous snapshot.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub log_lines: BTreeMap<String, u64>,
    /// Lines longer than the configured bound, cut, since the previous snapshot.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub log_cut_lines: u64,
    /// Log sources let go of this tick (their files gone, or their engine).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forgotten_log_sources: Vec<String>,
    /// The agent could not look at the node this tick (its own failure: no descriptors
    /// left, `/proc` unreadable): the engines it lacks are unknown, not gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blind: bool,
}

impl Snapshot {
    /// Every log event of this tick with its engine's id: the engines' own, then the
    /// late events of engines already gone.
    pub fn log_events(&self) -> impl Iterator<Item = (&str, &crate::logs::LogEvent)> {
        self.engines
            .iter()
            .flat_map(|e| e.log_events.iter().map(move |ev| (e.id.as_str(), ev)))
            .chain(self.late_events.iter().map(|(id, ev)| (id.as_str(), ev)))
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CollectorReport {
    pub name: String,
    pub up: bool,
    pub duration_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One vLLM engine: an engine core, its workers and the rings between them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EngineFacts {
    /// Stable label (see `engine_id`): survives restarts, unlike pids.
    pub id: String,
    pub model: Option<String>,
    pub port: Option<u16>,
    pub api_pid: Option<u32>,
    /// The API server's pid inside its own PID namespace (a pod's logs say this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_ns_pid: Option<u32>,
    /// Who started the API server: a shell that did not `exec` may hold the engine's
    /// journal stream, so journald names it as the writer of vLLM's lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_parent_pid: Option<u32>,
    /// The API server's process, as `/proc` says (none when it has none: a headless
    /// node, a facts file of an older agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ProcFacts>,
    pub core: ProcFacts,
    /// How the engine core runs the model: in worker processes (`mp`), or itself
    /// (`uni`: world size 1 on a GPU; the core is rank 0, see `docs/vllm.md`).
    #[serde(default, skip_serializing_if = "Executor::is_mp")]
    pub executor: Executor,
    pub tp: u32,
    pub pp: u32,
    pub dp: u32,
    pub dp_rank: u32,
    /// The deployment a data-parallel replica belongs to: the id its replicas share
    /// (the engine id without `-dp<i>`); none for an engine that is its own deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// This engine's place in a deployment that spans nodes (`--nnodes` > 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodePlace>,
    /// The leader's reports from its follower nodes' agents, fresh ones only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerPart>,
    /// A follower part's established TCP connections (its tie to the leader and the
    /// other nodes); none where not counted or unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<u32>,
    /// A follower part: what the leader's agent last said of the deployment (fresh
    /// answers only; none without peers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderWord>,
    /// The replicas step in lockstep (expert parallelism: every step is a collective
    /// across replicas), so one stuck replica stalls them all.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lockstep: bool,
    /// The rank whose reply the engine core waits for.
    pub output_rank: u32,
    /// `VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS` in force: vLLM kills the engine this long
    /// after an RPC was enqueued.
    pub execute_timeout_seconds: f64,
    /// Allowlisted deployment settings from the API server's environment, secrets redacted.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    pub ranks: Vec<RankFacts>,
    #[serde(default)]
    pub rings: Vec<RingFacts>,
    /// Python stacks dumped since the previous snapshot (only while an engine is
    /// suspected, or on a configured baseline interval).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<crate::stacks::StackDump>,
    /// Log events of this engine read since the previous snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_events: Vec<crate::logs::LogEvent>,
    /// vLLM's own `/metrics`, when scraped this tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vllm_metrics: Option<crate::vllm_metrics::VllmMetrics>,
    /// Whether the API server answered this tick's `/metrics` (none: not asked, e.g. no
    /// port, or its port not held by it): a front end that stops answering, as
    /// corroboration only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_answered: Option<bool>,
    /// NCCL RAS's answer, when it was asked this tick (only while suspected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nccl_ras: Option<crate::ras::RasStatus>,
    /// The Kubernetes pod the engine runs in, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodFacts>,
    /// Known to be vLLM: its engine core runs under a `vllm serve` or maps a vLLM ring.
    /// Any user can title a process `X::EngineCore`; only a credible engine's stall
    /// opens an incident (it is judged and shown all the same).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub credible: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// What a process of a deployment is for: every one of them can hang, and a verdict
/// names which.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A `VLLM::Worker*` process: one rank of the model.
    #[default]
    Worker,
    /// `VLLM::EngineCore`: scheduler, executor; with the uni executor also rank 0.
    EngineCore,
    /// The `vllm serve` front end (HTTP, tokenisation, detokenisation).
    ApiServer,
    /// `VLLM::DPCoordinator` of a data-parallel deployment.
    DpCoordinator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::EngineCore => "engine_core",
            Role::ApiServer => "api_server",
            Role::DpCoordinator => "dp_coordinator",
        }
    }

    pub fn is_worker(&self) -> bool {
        *self == Role::Worker
    }

    /// How a person reads it: "engine core", "API server".
    pub fn words(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::EngineCore => "engine core",
            Role::ApiServer => "API server",
            Role::DpCoordinator => "DP coordinator",
        }
    }
}

/// A pod as seen from the node, without the Kubernetes API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct PodFacts {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub uid: Option<String>,
    pub container_id: Option<String>,
}

impl EngineFacts {
    pub fn rank(&self, rank: u32) -> Option<&RankFacts> {
        self.ranks.iter().find(|r| r.rank == rank)
    }

    /// The role of the process that is `rank`: the engine core itself under the uni
    /// executor, a worker otherwise.
    pub fn role_of_rank(&self, rank: u32) -> Role {
        match self.rank(rank) {
            Some(r) if r.process.pid == self.core.pid => Role::EngineCore,
            _ => Role::Worker,
        }
    }
}

/// One worker process of an engine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RankFacts {
    /// Executor rank: `pp·(PCP·TP) + pcp·TP + tp`.
    pub rank: u32,
    pub tp_rank: u32,
    pub pp_rank: u32,
    pub title: String,
    pub process: ProcFacts,
}

/// What `/proc` says about one process, cheaply.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ProcFacts {
    /// Host pid (what the agent sees; inside a pod the pid may differ, see `ns_pid`).
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    pub state: ProcState,
    /// Kernel function the main thread sleeps in; tells "idle" from "waiting for a reply".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wchan: Option<String>,
    /// User + system CPU seconds consumed so far (cumulative).
    #[serde(default)]
    pub cpu_seconds: f64,
    /// When the process started (Unix ms), to tell a restarted pid from the old one.
    #[serde(default)]
    pub started_at_ms: Millis,
}

/// Process state as `/proc/PID/stat` spells it, plus `Gone` for a vanished pid.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ProcState {
    Running,
    Sleeping,
    /// `D`: uninterruptible sleep (usually I/O or a driver call).
    DiskSleep,
    /// `T`: stopped by a signal (SIGSTOP).
    Stopped,
    /// `t`: stopped by a tracer.
    TracingStop,
    Zombie,
    Dead,
    Idle,
    Gone,
    Unknown,
}

impl ProcState {
    pub fn from_char(c: char) -> ProcState {
        match c {
            'R' => ProcState::Running,
            'S' => ProcState::Sleeping,
            'D' => ProcState::DiskSleep,
            'T' => ProcState::Stopped,
            't' => ProcState::TracingStop,
            'Z' => ProcState::Zombie,
            'X' | 'x' => ProcState::Dead,
            'I' => ProcState::Idle,
            _ => ProcState::Unknown,
        }
    }

    pub fn letter(self) -> char {
        match self {
            ProcState::Running => 'R',
            ProcState::Sleeping => 'S',
            ProcState::DiskSleep => 'D',
            ProcState::Stopped => 'T',
            ProcState::TracingStop => 't',
            ProcState::Zombie => 'Z',
            ProcState::Dead => 'X',
            ProcState::Idle => 'I',
            ProcState::Gone => '-',
            ProcState::Unknown => '?',
        }
    }

    /// A process in this state cannot make progress on its own.
    /// The process still exists as itself (not a zombie, not gone).
    pub fn is_alive(self) -> bool {
        !matches!(self, ProcState::Zombie | ProcState::Dead | ProcState::Gone)
    }

    pub fn is_halted(self) -> bool {
        matches!(
            self,
            ProcState::Stopped
                | ProcState::TracingStop
                | ProcState::Zombie
                | ProcState::Dead
                | ProcState::Gone
        )
    }
}

/// What a ring is for; decides which reader is which rank.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RingRole {
    /// Engine core → every worker (reader index = worker rank).
    Rpc,
    /// One worker → engine core (reader 0 = engine core).
    Reply { rank: u32 },
    /// TP rank 0 of a group → the other ranks of that group.
    TpBroadcast,
}

impl RingRole {
    pub fn name(&self) -> &'static str {
        match self {
            RingRole::Rpc => "rpc",
            RingRole::Reply { .. } => "reply",
            RingRole::TpBroadcast => "tp_broadcast",
        }
    }
}

/// One shared-memory ring (`/dev/shm/psm_*`) and, when readable, its flags now.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RingFacts {
    pub name: String,
    pub role: RingRole,
    pub size: u64,
    pub chunk_bytes: u64,
    pub chunks: u32,
    pub readers: u32,
    /// Writer rank, `None` when the engine core writes.
    pub writer_rank: Option<u32>,
    /// Rank of each reader index, `None` for the engine core.
    pub reader_ranks: Vec<Option<u32>>,
    /// Flags of every chunk; `None` when they could not be read this tick (see `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<ChunkFlags>>,
    /// RPC method written in each chunk, when its header is readable.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub methods: BTreeMap<u32, String>,
    /// Hash of the first bytes of every chunk: changes when the writer writes anew even
    /// when the flags read the same as before (they always read `1|1…` under load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RingFacts {
    /// Chunks reader `r` has not finished, in ring order starting after the newest
    /// chunk it did finish (unread chunks of one reader are one contiguous run).
    pub fn unread_by(&self, reader: usize) -> Vec<u32> {
        let Some(flags) = &self.flags else {
            return Vec::new();
        };
        let unread: Vec<u32> = flags
            .iter()
            .enumerate()
            .filter(|(_, f)| f.written && !f.read.get(reader).copied().unwrap_or(true))
            .map(|(i, _)| i as u32)
            .collect();
        order_run(unread, flags.len() as u32)
    }
}

/// Puts a wrapped run like `[0, 1, 8, 9]` into ring order `[8, 9, 0, 1]`.
fn order_run(mut idx: Vec<u32>, k: u32) -> Vec<u32> {
    if idx.len() < 2 || idx.len() as u32 == k {
        return idx;
    }
    // The run starts at the first index whose predecessor (mod k) is not in the run.
    let start = idx
        .iter()
        .position(|&i| !idx.contains(&((i + k - 1) % k)))
        .unwrap_or(0);
    idx.rotate_left(start);
    idx
}

/// Flags of one chunk: written, and read by each reader.
///
/// Serialized compactly as vLLM's bytes read: `"1|10"` = written, reader 0 done,
/// reader 1 not, so recordings stay small and readable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkFlags {
    pub written: bool,
    pub read: Vec<bool>,
}

impl ChunkFlags {
    /// From the raw flag bytes of one chunk: `[written, read_0, read_1, …]`.
    pub fn from_bytes(bytes: &[u8]) -> ChunkFlags {
        ChunkFlags {
            written: bytes.first().copied().unwrap_or(0) != 0,
            read: bytes.iter().skip(1).map(|b| *b != 0).collect(),
        }
    }

    pub fn pending(&self) -> bool {
        self.written && self.read.iter().any(|r| !r)
    }
}

impl fmt::Display for ChunkFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|", u8::from(self.written))?;
        for r in &self.read {
            write!(f, "{}", u8::from(*r))?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ChunkFlags {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (w, r) = s
            .split_once('|')
            .ok_or_else(|| format!("chunk flags {s:?}: expected W|RR…"))?;
        let bit = |c: char| match c {
            '0' => Ok(false),
            '1' => Ok(true),
            _ => Err(format!("chunk flags {s:?}: {c:?} is not 0 or 1")),
        };
        let mut wc = w.chars();
        let written = match (wc.next(), wc.next()) {
            (Some(c), None) => bit(c)?,
            _ => return Err(format!("chunk flags {s:?}: one written digit expected")),
        };
        let read = r.chars().map(bit).collect::<Result<Vec<_>, _>>()?;
        Ok(ChunkFlags { written, read })
    }
}

impl Serialize for ChunkFlags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ChunkFlags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip_as_text() {
        let f: ChunkFlags = "1|10".parse().unwrap();
        assert!(f.written);
        assert_eq!(f.read, vec![true, false]);
        assert!(f.pending());
        assert_eq!(f.to_string(), "1|10");
        assert!("2|10".parse::<ChunkFlags>().is_err());
        assert!("110".parse::<ChunkFlags>().is_err());
    }

    #[test]
    fn unread_run_is_in_ring_order() {
        assert_eq!(order_run(vec![0, 1, 8, 9], 10), vec![8, 9, 0, 1]);
        assert_eq!(order_run(vec![3, 4], 10), vec![3, 4]);
        assert_eq!(order_run(vec![7], 10), vec![7]);
    }

    #[test]
    fn state_letters() {
        for c in ['R', 'S', 'D', 'T', 't', 'Z', 'X', 'I'] {
            assert_eq!(
                ProcState::from_char(c).letter(),
                if c == 'x' { 'X' } else { c }
            );
        }
        assert!(ProcState::Stopped.is_halted());
        assert!(!ProcState::DiskSleep.is_halted());
    }
}
