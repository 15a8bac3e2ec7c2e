//! A deployment across nodes, seen from the leader: the ranks on other nodes are out of
//! this agent's sight (no rings, no stacks, no `/proc`). When nothing moves, no local
//! rank is named and every local rank waits in a collective, the one they wait for is
//! on another node: the verdict says which ranks run where instead of "culprit unknown"
//! (`docs/multi-node.md`).

use crate::facts::{NodePlace, PeerPart};
use crate::position::{Doing, RankActivity};
use crate::signals::Findings;
use crate::time::Millis;
use crate::verdict::ReasonCode;
use std::collections::BTreeMap;

/// A report older than this says nothing of now.
const PEER_FRESH_MS: Millis = 5_000;

/// Names a remote rank that its own node's agent names (`peer_named`); else adds
/// `remote_wait` when the stall's culprit must be on another node.
pub fn explain(
    node: Option<&NodePlace>,
    peers: &[PeerPart],
    acts: &[RankActivity],
    now: Millis,
    f: &mut Findings,
) {
    let Some(node) = node else { return };
    if node.remote_ranks.is_empty() || !f.by_rank.is_empty() || f.engine.is_empty() {
        return;
    }
    if named_by_peers(node, peers, now, f) {
        return;
    }
    let local: Vec<&RankActivity> = acts
        .iter()
        .filter(|a| !node.remote_ranks.contains(&a.rank))
        .collect();
    let waiting = !local.is_empty() && local.iter().all(|a| a.doing == Doing::Collective);
    if !waiting {
        return;
    }
    let mut by_node: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for r in &node.remote_ranks {
        by_node.entry(node.node_of(*r)).or_default().push(*r);
    }
    let elsewhere: Vec<String> = by_node
        .iter()
        .map(|(n, ranks)| format!("{} on node {n}", ranks_text(ranks)))
        .collect();
    let local_ranks: Vec<u32> = local.iter().map(|a| a.rank).collect();
    let verb = if local_ranks.len() == 1 {
        "waits"
    } else {
        "wait"
    };
    let detail = format!(
        "local {} {verb} in a collective; {} (remote, deployment meets at {}): look there",
        ranks_text(&local_ranks),
        elsewhere.join(", "),
        node.leader
    );
    let since = f.engine.iter().map(|r| r.since_ms).min().unwrap_or(now);
    f.engine(ReasonCode::RemoteWait, detail, since);
}

/// While this engine stalls, a follower's agent that names one of the remote ranks
/// (stalled there, on its own evidence) names it here too, with its pid and node, and
/// this node's incident joins that node's.
fn named_by_peers(node: &NodePlace, peers: &[PeerPart], now: Millis, f: &mut Findings) -> bool {
    let since = f.engine.iter().map(|r| r.since_ms).min().unwrap_or(now);
    let mut named = false;
    for p in peers
        .iter()
        .filter(|p| p.age_ms <= PEER_FRESH_MS && p.state == "stalled")
    {
        for s in p
            .suspects
            .iter()
            .filter(|s| node.remote_ranks.contains(&s.rank))
        {
            let detail = format!(
                "node {}'s agent names it ({}, pid {} there)",
                p.node_rank,
                s.reasons.join("+"),
                s.pid
            );
            f.rank(s.rank, ReasonCode::PeerNamed, detail, since);
            f.conclude(s.rank);
            f.remote.insert(s.rank, (s.pid, p.node_rank));
            if f.joins.is_none() {
                f.joins = p.incident.clone();
            }
            named = true;
        }
    }
    named
}

fn ranks_text(ranks: &[u32]) -> String {
    let list: Vec<String> = ranks.iter().map(u32::to_string).collect();
    match ranks.len() {
        1 => format!("rank {}", list.join("")),
        _ => format!("ranks {}", list.join(",")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::PeerSuspect;

    fn act(rank: u32, doing: Doing) -> RankActivity {
        RankActivity {
            rank,
            doing,
            cpu_cores: None,
            position: None,
            moved: None,
            gpu: None,
        }
    }

    fn leader() -> NodePlace {
        NodePlace {
            node_rank: 0,
            nnodes: 2,
            leader: "10.0.0.1:29501".into(),
            remote_ranks: vec![2, 3],
            ranks_per_node: 2,
        }
    }

    fn stalled() -> Findings {
        let mut f = Findings::default();
        f.engine(ReasonCode::NoReply, "nothing moves".into(), 1_000);
        f
    }

    #[test]
    fn local_ranks_in_a_collective_point_at_the_remote_node() {
        let mut f = stalled();
        let acts = [act(0, Doing::Collective), act(1, Doing::Collective)];
        explain(Some(&leader()), &[], &acts, 5_000, &mut f);
        let r = f.engine.iter().find(|r| r.code == ReasonCode::RemoteWait);
        let r = r.unwrap_or_else(|| panic!("{f:?}"));
        assert!(r.detail.contains("ranks 2,3 on node 1"), "{}", r.detail);
        assert_eq!(r.since_ms, 1_000);
    }

    #[test]
    fn a_follower_agents_word_names_the_remote_rank_and_its_incident() {
        let mut f = stalled();
        let peer = PeerPart {
            node_rank: 1,
            engine: "vllm-10.0.0.1-29501-node1".into(),
            state: "stalled".into(),
            suspects: vec![PeerSuspect {
                rank: 3,
                pid: 11,
                reasons: vec!["process_stopped".into()],
            }],
            incident: Some("vllm-10.0.0.1-29501-node1-20261207T000000Z".into()),
            age_ms: 1_000,
        };
        let acts = [act(0, Doing::Collective), act(1, Doing::Collective)];
        explain(
            Some(&leader()),
            std::slice::from_ref(&peer),
            &acts,
            5_000,
            &mut f,
        );
        assert!(f.has(3, ReasonCode::PeerNamed), "{f:?}");
        assert!(f.conclusive.contains(&3));
        assert_eq!(f.remote.get(&3), Some(&(11, 1)));
        assert_eq!(f.joins, peer.incident);
        // Stale, or not stalled there: nothing.
        for p in [
            PeerPart {
                age_ms: 9_000,
                ..peer.clone()
            },
            PeerPart {
                state: "busy".into(),
                ..peer.clone()
            },
        ] {
            let mut f = stalled();
            explain(Some(&leader()), &[p], &acts, 5_000, &mut f);
            assert!(!f.has(3, ReasonCode::PeerNamed));
        }
    }

    #[test]
    fn nothing_remote_when_a_local_rank_is_named_or_computing() {
        let mut f = stalled();
        f.rank(1, ReasonCode::ProcessStopped, "stopped".into(), 1_000);
        explain(
            Some(&leader()),
            &[],
            &[act(0, Doing::Collective)],
            5_000,
            &mut f,
        );
        assert!(f.engine.iter().all(|r| r.code != ReasonCode::RemoteWait));
        let mut f = stalled();
        let acts = [act(0, Doing::Collective), act(1, Doing::Computing)];
        explain(Some(&leader()), &[], &acts, 5_000, &mut f);
        assert!(f.engine.iter().all(|r| r.code != ReasonCode::RemoteWait));
    }
}
