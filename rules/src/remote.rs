//! A deployment across nodes, seen from the leader: the ranks on other nodes are out of
//! this agent's sight (no rings, no stacks, no `/proc`). When nothing moves, no local
//! rank is named and every local rank waits in a collective, the one they wait for is
//! on another node: the verdict says which ranks run where instead of "culprit unknown"
//! (`docs/multi-node.md`).

use crate::facts::NodePlace;
use crate::position::{Doing, RankActivity};
use crate::signals::Findings;
use crate::time::Millis;
use crate::verdict::ReasonCode;
use std::collections::BTreeMap;

/// Adds `remote_wait` when the stall's culprit must be on another node.
pub fn explain(node: Option<&NodePlace>, acts: &[RankActivity], now: Millis, f: &mut Findings) {
    let Some(node) = node else { return };
    if node.remote_ranks.is_empty() || !f.by_rank.is_empty() || f.engine.is_empty() {
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
        explain(Some(&leader()), &acts, 5_000, &mut f);
        let r = f.engine.iter().find(|r| r.code == ReasonCode::RemoteWait);
        let r = r.unwrap_or_else(|| panic!("{f:?}"));
        assert!(r.detail.contains("ranks 2,3 on node 1"), "{}", r.detail);
        assert_eq!(r.since_ms, 1_000);
    }

    #[test]
    fn nothing_remote_when_a_local_rank_is_named_or_computing() {
        let mut f = stalled();
        f.rank(1, ReasonCode::ProcessStopped, "stopped".into(), 1_000);
        explain(Some(&leader()), &[act(0, Doing::Collective)], 5_000, &mut f);
        assert!(f.engine.iter().all(|r| r.code != ReasonCode::RemoteWait));
        let mut f = stalled();
        let acts = [act(0, Doing::Collective), act(1, Doing::Computing)];
        explain(Some(&leader()), &acts, 5_000, &mut f);
        assert!(f.engine.iter().all(|r| r.code != ReasonCode::RemoteWait));
    }
}
