//! The real log of a vLLM engine whose rank 1 was stopped until vLLM's own timeout
//! killed it (testdata/vllm/tp2-rank1-stopped-until-timeout.serve.log) parses into
//! exactly the events it holds.

use hangwatch_collectors::logs::follow::{Follower, Limits};
use hangwatch_collectors::logs::parse::classify;
use hangwatch_rules::logs::{LogEventKind, RingWaitSide};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[test]
fn the_real_hang_log_parses_into_the_expected_events() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/vllm/tp2-rank1-stopped-until-timeout.serve.log");
    let mut f = Follower::new(&p, false, Limits::default());
    let lines = f.poll();
    assert!(lines.len() > 700, "{} lines", lines.len());
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut methods = Vec::new();
    let mut stats = Vec::new();
    let mut waits = Vec::new();
    let mut kills = Vec::new();
    for l in &lines {
        if let Some((kind, prefix)) = classify(l) {
            *counts.entry(kind.name()).or_default() += 1;
            match kind {
                LogEventKind::RpcTimeout { method } => {
                    assert_eq!(
                        prefix.map(|p| (p.process, p.pid)),
                        Some(("EngineCore", 25213))
                    );
                    methods.push(method)
                }
                LogEventKind::Stats {
                    running,
                    generation_tps,
                    ..
                } => stats.push((running, generation_tps)),
                LogEventKind::RingWait { side, seconds } => waits.push((side, seconds)),
                LogEventKind::ShutdownKill { name, pid } => kills.push((name, pid)),
                _ => {}
            }
        }
    }
    assert_eq!(counts.get("ring_wait"), Some(&6), "{counts:?}");
    assert_eq!(counts.get("fatal_error"), Some(&1));
    assert_eq!(counts.get("rpc_timeout"), Some(&1));
    assert_eq!(methods, vec!["execute_model"]);
    assert_eq!(counts.get("engine_dead"), Some(&1));
    assert_eq!(counts.get("shutdown_kill"), Some(&2));
    assert_eq!(counts.get("stats"), Some(&5));
    assert_eq!(counts.get("worker_died"), None);
    assert_eq!(
        counts.values().sum::<usize>(),
        16,
        "nothing else: {counts:?}"
    );
    assert!(
        waits
            .iter()
            .all(|(s, sec)| *s == RingWaitSide::Reader && *sec == 10.0),
        "{waits:?}"
    );
    assert_eq!(
        kills,
        vec![
            ("VLLM::Worker_TP0".to_string(), Some(25305)),
            ("VLLM::Worker_TP1".to_string(), Some(25306))
        ]
    );
    // The last stats line before the timeout: a request running at zero throughput.
    assert_eq!(stats.last(), Some(&(1, 0.0)));
}
