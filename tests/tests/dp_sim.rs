//! Data-parallel replicas as one deployment: replicas in lockstep give one incident
//! naming the stuck replica (the others wait for it); independent replicas stay
//! independent.

use hangwatch_tests::{metric, wait_for, Agent, Sim};
use serde_json::Value;
use std::time::Duration;

fn status(agent: &Agent) -> Value {
    let (_, body) = hangwatch_tests::http_get(&agent.listen, "/status").unwrap_or_default();
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

fn engines_of(agent: &Agent, sim: &Sim) -> Vec<Value> {
    let base = sim.engine_id();
    status(agent)["engines"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["id"].as_str().is_some_and(|i| i.starts_with(&base)))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn gauge(agent: &Agent, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric(&agent.metrics(), name, labels)
}

/// Two replicas, one deployment: both found, both with the deployment's id.
fn both_replicas(agent: &Agent, sim: &Sim, lockstep: bool) -> (String, String) {
    let found = wait_for(Duration::from_secs(30), || {
        let e = engines_of(agent, sim);
        (e.len() == 2).then_some(e)
    })
    .unwrap_or_else(|| panic!("two replicas not found:\n{}", agent.log_text()));
    for e in &found {
        assert_eq!(e["deployment"], sim.engine_id(), "{e}");
        assert_eq!(e["lockstep"], lockstep, "{e}");
        assert_eq!(e["dp"], 2, "{e}");
    }
    let id = |i: usize| format!("{}-dp{i}", sim.engine_id());
    (id(0), id(1))
}

#[test]
fn replicas_in_lockstep_open_one_incident_naming_the_stuck_replica() {
    let sim = Sim::start(&[
        "--tp",
        "1",
        "--dp",
        "2",
        "--dp-lockstep",
        "--fault",
        "replica=1,rank=0,after=10,mode=stop",
    ]);
    let agent = Agent::watching(&[], &[]);
    let (dp0, dp1) = both_replicas(&agent, &sim, true);
    let fault = sim
        .wait_event("fault", Duration::from_secs(60))
        .expect("fault injected");
    assert_eq!(fault["replica"], 1);
    let named = wait_for(Duration::from_secs(10), || {
        agent
            .manifests(&dp1)
            .into_iter()
            .find(|(_, m)| m["suspects"][0]["rank"] == 0)
    });
    let (_, m) = named.unwrap_or_else(|| panic!("replica 1 not named:\n{}", agent.log_text()));
    println!("replica 1: {}", m["suspects"]);
    assert_eq!(m["deployment"], sim.engine_id());
    assert_eq!(m["replica"], 1);
    // Past the confirm threshold of replica 0's own "nothing moves": still one incident.
    std::thread::sleep(Duration::from_secs(14));
    assert_eq!(
        gauge(
            &agent,
            "hangwatch_engine_state",
            &[("engine", &dp0), ("state", "stalled")]
        ),
        Some(1.0),
        "replica 0 waits too:\n{}",
        agent.log_text()
    );
    assert_eq!(
        agent.manifests(&dp0).len(),
        0,
        "replica 0 opened an incident of its own:{}",
        agent.kept_incidents(&dp0)
    );
    assert!(
        agent.log_text().contains("waits for another replica"),
        "{}",
        agent.log_text()
    );
    assert_eq!(
        gauge(&agent, "hangwatch_incident_open", &[("engine", &dp1)]),
        Some(1.0)
    );
}

#[test]
fn independent_replicas_stay_independent() {
    let sim = Sim::start(&[
        "--tp",
        "2",
        "--dp",
        "2",
        "--fault",
        "replica=1,rank=1,after=10,mode=stop",
    ]);
    let agent = Agent::watching(&[], &[]);
    let (dp0, dp1) = both_replicas(&agent, &sim, false);
    sim.wait_event("fault", Duration::from_secs(60))
        .expect("fault injected");
    let named = wait_for(Duration::from_secs(10), || {
        agent
            .manifests(&dp1)
            .into_iter()
            .find(|(_, m)| m["suspects"][0]["rank"] == 1)
    });
    assert!(
        named.is_some(),
        "replica 1 not named:\n{}",
        agent.log_text()
    );
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(
        gauge(
            &agent,
            "hangwatch_engine_state",
            &[("engine", &dp0), ("state", "busy")]
        ),
        Some(1.0),
        "replica 0 serves on:\n{}",
        agent.log_text()
    );
    assert_eq!(
        agent.manifests(&dp0).len(),
        0,
        "{}",
        agent.kept_incidents(&dp0)
    );
}
