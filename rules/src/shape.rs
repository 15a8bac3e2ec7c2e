//! An engine's shape as seen from outside: how vLLM runs its ranks (the executor) and
//! where it sits in a deployment across nodes.

use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// Where an engine of a multi-node deployment sits: vLLM's multiprocessing executor
/// gives node `k` the ranks `k·L … k·L + L − 1` (`L` = world size / nodes).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct NodePlace {
    pub node_rank: u32,
    pub nnodes: u32,
    /// Where the nodes meet (`--master-addr:--master-port`).
    pub leader: String,
    /// Ranks of this engine that run on other nodes (empty on a follower: it sees only
    /// its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ranks: Vec<u32>,
    /// Ranks per node.
    pub ranks_per_node: u32,
}

impl NodePlace {
    /// The node a rank runs on.
    pub fn node_of(&self, rank: u32) -> u32 {
        rank / self.ranks_per_node.max(1)
    }
}

/// vLLM's executor as seen from outside.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Executor {
    /// Worker processes (`VLLM::Worker*`), the engine core talks to them over rings.
    #[default]
    Mp,
    /// No worker: the model runs in the engine core, which is rank 0.
    Uni,
    /// A follower node's part (`vllm serve --headless --node-rank K`): this node's
    /// workers of an engine whose core runs on the leader node; the `core` slot holds the
    /// headless launcher, there are no rings here (`docs/multi-node.md`).
    Follower,
}

impl Executor {
    pub fn is_mp(&self) -> bool {
        *self == Executor::Mp
    }
}

/// What a follower node's agent last said of its part of this engine's deployment
/// (`POST /peers/report`, `docs/multi-node.md`): the leader's view of the ranks it
/// cannot see.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct PeerPart {
    pub node_rank: u32,
    /// The part's engine id on that node.
    pub engine: String,
    /// Its state there (`busy`, `stalled`…).
    pub state: String,
    /// The ranks that node's agent names, strongest first.
    #[serde(default)]
    pub suspects: Vec<PeerSuspect>,
    /// The incident it has open for the part, if any.
    #[serde(default)]
    pub incident: Option<String>,
    /// How old the report was when the tick read it.
    #[serde(default)]
    pub age_ms: Millis,
    /// What each of the part's ranks does while the deployment's step is late (its
    /// agent's stacks, CPU and GPU): the leader judges the whole world with them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranks: Vec<PeerRank>,
}

/// What the leader node's agent said of the deployment, as a follower part keeps it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct LeaderWord {
    /// The leader's engine is stalled.
    pub stalled: bool,
    /// The leader's engine is past start-up (idle, busy or stalled): so is the part.
    #[serde(default)]
    pub serving: bool,
    /// How long its current step has gone without progress (a part has no ring of its
    /// own to tell when a step began); none while no step is late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_age_ms: Option<Millis>,
    /// The incident it has open: a stall the part sees joins it (one id on every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
}

/// One rank of a follower's part as its node's agent sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PeerRank {
    pub rank: u32,
    pub pid: u32,
    pub doing: crate::position::Doing,
}

/// A rank another node's agent names: its pid there and its reason codes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct PeerSuspect {
    pub rank: u32,
    pub pid: u32,
    #[serde(default)]
    pub reasons: Vec<String>,
}
