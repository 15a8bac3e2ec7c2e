//! Every process of an engine is a suspect: the engine core and the API server are
//! named when they hang, and the uni executor's engine core is rank 0.

use hangwatch_tests::{detect, Detection};
use std::time::Duration;

fn summary(d: &Detection) -> String {
    std::fs::read_to_string(d.bundle.join("summary.txt")).unwrap_or_default()
}

#[test]
fn a_stopped_engine_core_is_named() {
    let (agent, sim) = hangwatch_tests::watched_sim(
        &[],
        &["--tp", "2", "--fault", "target=core,after=6,mode=stop"],
        &[],
    );
    let d = detect(&agent, &sim, Duration::from_secs(12))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    println!("{d:?}");
    assert_eq!(d.roles, vec!["engine_core"], "{}", summary(&d));
    assert!(d.suspects.is_empty(), "no rank: {:?}", d.suspects);
    assert!(d.reasons.contains(&"process_stopped".to_string()));
    assert!(
        d.opened_after <= 6.0,
        "opened {:.1} s after",
        d.opened_after
    );
    let s = summary(&d);
    assert!(s.contains("engine core (pid"), "{s}");
    assert!(
        s.lines().any(|l| l.contains("engine core")
            && l.contains("state T")
            && l.contains("<- suspect")),
        "{s}"
    );
    hangwatch_tests::signal(sim.core_pid(), libc::SIGCONT);
}

#[test]
fn an_engine_core_stuck_in_python_is_named_with_its_frame() {
    let (agent, sim) = hangwatch_tests::watched_sim(
        &[],
        &["--tp", "2", "--fault", "target=core,after=6,mode=sleep"],
        &[],
    );
    let d = detect(&agent, &sim, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    println!("{d:?}");
    assert_eq!(d.roles, vec!["engine_core"], "{}", summary(&d));
    assert!(d.reasons.contains(&"stack_stuck".to_string()), "{d:?}");
    assert!(
        d.opened_after <= 10.0,
        "opened {:.1} s after",
        d.opened_after
    );
    let s = summary(&d);
    assert!(s.contains("stuck_in_python_sleep"), "{s}");
    assert!(!s.contains("waiting for a worker's reply"), "{s}");
}

#[test]
fn a_stopped_api_server_under_load_is_named() {
    let (agent, sim) = hangwatch_tests::watched_sim(
        &[],
        &["--tp", "1", "--fault", "target=api,after=6,mode=stop"],
        &[],
    );
    let d = detect(&agent, &sim, Duration::from_secs(14))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    println!("{d:?}");
    assert_eq!(d.roles, vec!["api_server"], "{}", summary(&d));
    assert!(
        d.opened_after <= 8.0,
        "opened {:.1} s after",
        d.opened_after
    );
    let am = agent.metrics();
    assert!(am.contains("hangwatch_incident_open"), "{am}");
    hangwatch_tests::signal(sim.api_pid(), libc::SIGCONT);
}

/// The uni executor: no worker; the engine core is rank 0, judged like one, and a
/// healthy uni engine raises nothing.
#[test]
fn the_uni_executor_core_is_rank_0() {
    let (agent, sim) = hangwatch_tests::watched_sim(
        &[],
        &[
            "--tp",
            "1",
            "--executor",
            "uni",
            "--long-step-every",
            "8",
            "--long-step-ms",
            "4000",
            "--fault",
            "target=core,after=20,mode=stop",
        ],
        &[],
    );
    let d = detect(&agent, &sim, Duration::from_secs(12))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    println!("{d:?}");
    assert_eq!(d.suspects, vec![0], "{}", summary(&d));
    assert_eq!(d.roles, vec!["engine_core"], "{}", summary(&d));
    assert!(
        d.opened_after <= 6.0,
        "opened {:.1} s after",
        d.opened_after
    );
    // Nothing before the fault: long steps of 4 s are work, not a hang.
    let opened = agent.manifests(&sim.engine_id()).len();
    assert_eq!(opened, 1, "{}", agent.kept_incidents(&sim.engine_id()));
    hangwatch_tests::signal(sim.core_pid(), libc::SIGCONT);
}

/// The API server's event loop stuck in Python: `/metrics` unanswered, its main thread
/// on one frame, no CPU, with requests in flight when it stopped answering.
#[test]
fn an_api_server_whose_event_loop_hangs_is_named() {
    let (agent, sim) = hangwatch_tests::watched_sim(
        &[],
        &["--tp", "1", "--fault", "target=api,after=6,mode=sleep"],
        &[],
    );
    let d = detect(&agent, &sim, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    println!("{d:?}");
    assert_eq!(d.roles, vec!["api_server"], "{}", summary(&d));
    assert!(d.reasons.contains(&"stack_stuck".to_string()), "{d:?}");
    assert!(
        d.opened_after <= 10.0,
        "opened {:.1} s after",
        d.opened_after
    );
    assert!(
        summary(&d).contains("stuck_in_python_sleep"),
        "{}",
        summary(&d)
    );
}

/// A front end busy for 5 s at a time (a huge prompt being tokenised: CPU busy, nothing
/// answered meanwhile) is slow, not hung.
#[test]
fn a_busy_api_server_is_not_a_hang() {
    let (agent, sim) = hangwatch_tests::watched_sim(
        &[],
        &[
            "--tp",
            "1",
            "--api-busy-every",
            "7",
            "--api-busy-ms",
            "5000",
        ],
        &[],
    );
    std::thread::sleep(Duration::from_secs(40));
    let id = sim.engine_id();
    assert!(
        agent.log_text().contains("/metrics"),
        "the busy spells never made a scrape fail:\n{}",
        agent.log_text()
    );
    assert_eq!(
        agent.manifests(&id).len(),
        0,
        "{}",
        agent.kept_incidents(&id)
    );
}
