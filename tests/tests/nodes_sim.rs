//! The simulator across emulated nodes, one agent per node (`hangwatch_tests::nodes`):
//! a rank stuck on any node is named with its node by the leader's agent, from what the
//! other nodes' agents report; every node bundles under one incident id; a follower
//! whose leader died is reported orphaned.

use hangwatch_tests::nodes::SimDeployment;
use hangwatch_tests::{metric, signal, wait_for};
use serde_json::Value;
use std::time::Duration;

/// The leader's first bundle naming someone, opened within 8 s of the fault.
fn leader_named(d: &SimDeployment) -> Value {
    let Some(m) = d.leader_named(Duration::from_secs(40)) else {
        panic!("the leader's agent named nobody:\n{}", d.logs());
    };
    let fault_at = d.fault_at().expect("the fault was injected");
    let after = m["opened_at"]
        .as_str()
        .and_then(hangwatch_tests::parse_rfc3339)
        .map_or(f64::NAN, |o| o - fault_at);
    println!(
        "leader's incident {after:.1} s after the fault: {}",
        m["suspects"]
    );
    assert!(after <= 8.0, "named {after:.1} s after the fault");
    m
}

/// Two ranks per node; rank 3 (node 1) asleep in its step: node 1's agent sees it alone
/// outside the collective, the leader's names it with node and pid, and both nodes hold
/// a bundle under the leader's incident id.
#[test]
fn sim_rank_asleep_on_a_follower_is_named_on_every_node() {
    let d = SimDeployment::start(2, 2, &["--fault", "rank=3,after=12,mode=sleep,at=in_step"]);
    let m = leader_named(&d);
    assert_eq!(m["suspects"][0]["rank"], 3, "{m}");
    assert_eq!(m["suspects"][0]["node"], 1, "{m}");
    let id = m["incident_id"].as_str().unwrap_or_default().to_string();
    let joined = wait_for(Duration::from_secs(15), || {
        d.bundles()
            .into_iter()
            .find(|(k, _, b)| *k == 1 && b["incident_id"] == id.as_str())
    });
    let Some((_, path, b)) = joined else {
        panic!("node 1 wrote no bundle under {id}:\n{}", d.logs());
    };
    println!("node 1's bundle under the same id: {}", path.display());
    assert_eq!(b["node"]["node_rank"], 1, "{b}");
    // Node 1's bundle has its ranks' stacks: rank 2 in the collective.
    let stacks =
        std::fs::read_to_string(path.join("stacks").join("rank-2.txt")).unwrap_or_default();
    assert!(stacks.contains("all_reduce"), "node 1's stacks:\n{stacks}");
}

/// One rank per node, rank 0 (on the leader) spinning in its step: alone it looks like a
/// long step; with node 1's report that rank 1 waits in the collective, it is the
/// culprit. Then the leader node dies: node 1's part is orphaned.
#[test]
fn sim_lone_leader_rank_is_named_with_the_followers_word_then_orphans() {
    let d = SimDeployment::start(2, 1, &["--fault", "rank=0,after=12,mode=spin,at=in_step"]);
    let m = leader_named(&d);
    assert_eq!(m["suspects"][0]["rank"], 0, "{m}");
    assert!(m["suspects"][0]["node"].is_null(), "a local rank: {m}");

    // The leader node lost: every process of it killed.
    let killed_at = hangwatch_tests::now_s();
    for pid in d
        .leader
        .replica_pids()
        .into_iter()
        .chain([d.leader.api_pid()])
    {
        signal(pid, libc::SIGKILL);
    }
    let part = d.engine_of(1);
    let orphaned = wait_for(Duration::from_secs(30), || {
        let body = d.agents[1].metrics();
        (metric(
            &body,
            "hangwatch_engine_orphaned",
            &[("engine", part.as_str())],
        ) == Some(1.0))
        .then(hangwatch_tests::now_s)
    });
    let Some(at) = orphaned else {
        panic!("node 1's part not orphaned:\n{}", d.logs());
    };
    println!(
        "node 1's part orphaned {:.1} s after the leader died",
        at - killed_at
    );
}
