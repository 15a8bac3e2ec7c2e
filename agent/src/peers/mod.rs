//! The agents of one deployment across nodes compare notes (`docs/multi-node.md`,
//! "Peers"). A follower node's agent reports its part to the leader node's agent
//! (`POST /peers/report`, the shared token); the answer is the leader's view of the
//! deployment. So the leader names a remote rank with its pid and node, and both nodes
//! write their bundles under one incident id. Only a deployment's own agents talk: a
//! follower dials the one leader its command line names, the leader dials nobody.

mod client;
mod desk;

pub use client::spawn_client;
pub use desk::{PeerDesk, MAX_REPORT_BYTES};

use hangwatch_rules::{Millis, PeerPart};
use serde::{Deserialize, Serialize};

/// What a follower's agent sends: its part of `deployment`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Report {
    pub deployment: String,
    pub part: PeerPart,
}

/// What the leader's agent answers: its engine of the deployment, its state and open
/// incident (none known: `state` is `unknown`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct LeaderView {
    pub engine: String,
    pub state: String,
    #[serde(default)]
    pub incident: Option<String>,
    /// How long the leader's current step has gone without progress, while it has one
    /// late: the follower's part has no ring to date it (`rules` `LeaderWord`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_age_ms: Option<Millis>,
}

/// A report waiting to go: where to, and what.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub to: String,
    pub report: Report,
}
