//! A deployment across nodes, seen from the leader: the ranks on other nodes are out of
//! this agent's sight (no rings, no stacks, no `/proc`). When nothing moves, no local
//! rank is named and every local rank waits in a collective, the one they wait for is
//! on another node: the verdict says which ranks run where instead of "culprit unknown"
//! (`docs/multi-node.md`).

use crate::facts::{EngineFacts, Executor, NodePlace, PeerPart};
use crate::position::{Doing, RankActivity};
use crate::signals::stacks::PERSIST_MS;
use crate::signals::Findings;
use crate::time::Millis;
use crate::verdict::ReasonCode;
use crate::verdict::{EngineState, Verdict};
use std::collections::BTreeMap;

/// A report older than this says nothing of now.
const PEER_FRESH_MS: Millis = 5_000;
/// How long after its onset a follower's stall waits for the leader's incident id.
const JOIN_WAIT_MS: Millis = 6_000;

/// The rank seen alone outside the collective, and since when (the leader's memory).
#[derive(Debug, Default)]
pub struct OddAcross {
    seen: Option<(u32, Millis)>,
}

/// The ranks of other nodes as their agents last saw them (fresh reports only): the
/// leader judges the whole world's step with them and its own ranks.
pub fn remote_acts(node: Option<&NodePlace>, peers: &[PeerPart]) -> Vec<RankActivity> {
    let Some(node) = node else { return Vec::new() };
    peers
        .iter()
        .filter(|p| p.age_ms <= PEER_FRESH_MS)
        .flat_map(|p| p.ranks.iter())
        .filter(|r| node.remote_ranks.contains(&r.rank))
        .map(|r| RankActivity {
            rank: r.rank,
            doing: r.doing,
            cpu_cores: None,
            position: None,
            moved: None,
            gpu: None,
        })
        .collect()
}

/// Names a remote rank that its own node's agent names (`peer_named`), or the one rank
/// of the whole world outside the collective every other rank waits in; else adds
/// `remote_wait` when the stall's culprit must be on another node.
pub fn explain(
    node: Option<&NodePlace>,
    peers: &[PeerPart],
    acts: &[RankActivity],
    now: Millis,
    odd: &mut OddAcross,
    f: &mut Findings,
) {
    let Some(node) = node else { return };
    if node.remote_ranks.is_empty() || !f.by_rank.is_empty() || f.engine.is_empty() {
        odd.seen = None;
        return;
    }
    if named_by_peers(node, peers, now, f) || odd_across(node, peers, acts, now, odd, f) {
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

/// A follower part stalled while the leader's agent says the leader is stalled too and
/// has no incident yet: the leader's incident is a report away. The part's own waits
/// (unconfirmed) until it can join that one, `JOIN_WAIT_MS` after the onset at most, so
/// that every node files the fault under one id.
pub fn wait_for_the_leader(engine: &EngineFacts, v: &mut Verdict, now: Millis) {
    let waiting = engine.executor == Executor::Follower
        && v.state == EngineState::Stalled
        && v.joins.is_none()
        && engine
            .leader
            .as_ref()
            .is_some_and(|l| l.stalled && l.incident.is_none())
        && v.onset_ms.is_some_and(|o| now - o < JOIN_WAIT_MS);
    if waiting {
        v.confirmed = false;
    }
}

/// Every rank of the world known (local looks and fresh reports), all in a collective
/// but one that is stuck elsewhere: that one is the culprit, on whichever node it runs —
/// the odd one out of `signals/stacks.rs` across nodes. Conclusive once seen alone for
/// `PERSIST_MS`.
fn odd_across(
    node: &NodePlace,
    peers: &[PeerPart],
    acts: &[RankActivity],
    now: Millis,
    odd: &mut OddAcross,
    f: &mut Findings,
) -> bool {
    let known: BTreeMap<u32, Doing> = acts.iter().map(|a| (a.rank, a.doing)).collect();
    let world = node.nnodes * node.ranks_per_node;
    let outside: Vec<(u32, Doing)> = known
        .iter()
        .filter(|(_, d)| **d != Doing::Collective)
        .map(|(r, d)| (*r, *d))
        .collect();
    let lone = match outside[..] {
        [(r, d)] if (0..world).all(|w| known.contains_key(&w)) && stuck_elsewhere(d) => r,
        _ => {
            odd.seen = None;
            return false;
        }
    };
    let first = match odd.seen {
        Some((r, at)) if r == lone => at,
        _ => now,
    };
    odd.seen = Some((lone, first));
    let since = f.engine.iter().map(|r| r.since_ms).min().unwrap_or(now);
    let doing = known.get(&lone).map_or("unknown", |d| d.as_str());
    let reported = peers
        .iter()
        .filter(|p| p.age_ms <= PEER_FRESH_MS)
        .find_map(|p| Some((p, p.ranks.iter().find(|r| r.rank == lone)?)));
    match reported.filter(|_| node.remote_ranks.contains(&lone)) {
        Some((p, r)) => {
            let detail = format!(
                "the only rank outside the collective every other rank waits in: node {}'s agent sees it {doing} (pid {} there)",
                p.node_rank, r.pid
            );
            f.rank(lone, ReasonCode::PeerNamed, detail, since);
            f.remote.insert(lone, (r.pid, p.node_rank));
            if f.joins.is_none() {
                f.joins = p.incident.clone();
            }
        }
        None => {
            let detail = format!(
                "the only rank outside the collective every other rank waits in, here and on the other nodes (their agents' reports): {doing}"
            );
            f.rank(lone, ReasonCode::StackOddOneOut, detail, since);
        }
    }
    if now - first >= PERSIST_MS {
        f.conclude(lone);
    }
    true
}

/// A rank that could hold the others up: not stopped (the process signal names that),
/// not known, or at work somewhere the step never leaves.
fn stuck_elsewhere(d: Doing) -> bool {
    matches!(
        d,
        Doing::Blocked | Doing::Computing | Doing::WaitingForRpc | Doing::WaitingOnGpu
    )
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
    use crate::facts::{PeerRank, PeerSuspect};

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

    /// `explain` on the leader of a stall that nothing moves, at `now`.
    fn judged(
        peers: &[PeerPart],
        acts: &[RankActivity],
        now: Millis,
        odd: &mut OddAcross,
    ) -> Findings {
        let mut f = stalled();
        explain(Some(&leader()), peers, acts, now, odd, &mut f);
        f
    }

    #[test]
    fn local_ranks_in_a_collective_point_at_the_remote_node() {
        let acts = [act(0, Doing::Collective), act(1, Doing::Collective)];
        let f = judged(&[], &acts, 5_000, &mut OddAcross::default());
        let r = f.engine.iter().find(|r| r.code == ReasonCode::RemoteWait);
        let r = r.unwrap_or_else(|| panic!("{f:?}"));
        assert!(r.detail.contains("ranks 2,3 on node 1"), "{}", r.detail);
        assert_eq!(r.since_ms, 1_000);
    }

    #[test]
    fn a_follower_agents_word_names_the_remote_rank_and_its_incident() {
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
            ranks: Vec::new(),
        };
        let acts = [act(0, Doing::Collective), act(1, Doing::Collective)];
        let peers = std::slice::from_ref(&peer);
        let f = judged(peers, &acts, 5_000, &mut OddAcross::default());
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
            let f = judged(&[p], &acts, 5_000, &mut OddAcross::default());
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
            &mut OddAcross::default(),
            &mut f,
        );
        assert!(f.engine.iter().all(|r| r.code != ReasonCode::RemoteWait));
        let acts = [act(0, Doing::Collective), act(1, Doing::Computing)];
        let f = judged(&[], &acts, 5_000, &mut OddAcross::default());
        assert!(f.engine.iter().all(|r| r.code != ReasonCode::RemoteWait));
    }

    fn part(ranks: &[(u32, Doing)]) -> PeerPart {
        PeerPart {
            node_rank: 1,
            engine: "vllm-10.0.0.1-29501-node1".into(),
            state: "busy".into(),
            ranks: ranks
                .iter()
                .map(|(rank, doing)| PeerRank {
                    rank: *rank,
                    pid: 40 + rank,
                    doing: *doing,
                })
                .collect(),
            age_ms: 500,
            ..PeerPart::default()
        }
    }

    fn world(local: &[(u32, Doing)], p: &PeerPart) -> Vec<RankActivity> {
        let mut acts: Vec<RankActivity> = local.iter().map(|(r, d)| act(*r, *d)).collect();
        acts.extend(remote_acts(Some(&leader()), std::slice::from_ref(p)));
        acts
    }

    #[test]
    fn the_one_remote_rank_outside_the_collective_is_named_once_it_persists() {
        let p = part(&[(2, Doing::Collective), (3, Doing::Blocked)]);
        let acts = world(&[(0, Doing::Collective), (1, Doing::Collective)], &p);
        let mut odd = OddAcross::default();
        let f = judged(std::slice::from_ref(&p), &acts, 5_000, &mut odd);
        assert!(f.has(3, ReasonCode::PeerNamed), "{f:?}");
        assert_eq!(f.remote.get(&3), Some(&(43, 1)));
        assert!(!f.conclusive.contains(&3), "not yet persisted");
        let f = judged(std::slice::from_ref(&p), &acts, 6_600, &mut odd);
        assert!(f.conclusive.contains(&3));
    }

    #[test]
    fn a_local_rank_alone_outside_is_named_with_the_others_reports() {
        let p = part(&[(2, Doing::Collective), (3, Doing::Collective)]);
        let acts = world(&[(0, Doing::Computing), (1, Doing::Collective)], &p);
        let f = judged(
            std::slice::from_ref(&p),
            &acts,
            5_000,
            &mut OddAcross::default(),
        );
        assert!(f.has(0, ReasonCode::StackOddOneOut), "{f:?}");
        assert!(f.remote.is_empty());
    }

    #[test]
    fn no_name_with_a_rank_unreported_or_two_outside() {
        // Rank 3 not reported: the world is not known.
        let p = part(&[(2, Doing::Blocked)]);
        let acts = world(&[(0, Doing::Collective), (1, Doing::Collective)], &p);
        let f = judged(
            std::slice::from_ref(&p),
            &acts,
            5_000,
            &mut OddAcross::default(),
        );
        assert!(f.by_rank.is_empty());
        assert!(f.engine.iter().any(|r| r.code == ReasonCode::RemoteWait));
        // Two ranks outside (a long step ending unevenly): nobody.
        let p = part(&[(2, Doing::Computing), (3, Doing::Computing)]);
        let acts = world(&[(0, Doing::Collective), (1, Doing::Collective)], &p);
        let f = judged(
            std::slice::from_ref(&p),
            &acts,
            5_000,
            &mut OddAcross::default(),
        );
        assert!(f.by_rank.is_empty());
        // Stale reports say nothing.
        let p = PeerPart {
            age_ms: 9_000,
            ..part(&[(2, Doing::Collective), (3, Doing::Blocked)])
        };
        assert!(remote_acts(Some(&leader()), &[p]).is_empty());
    }
}
