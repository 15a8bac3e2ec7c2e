//! The real binary against the simulator: hangs are named within seconds.

use hangwatch_tests::detect;
use std::time::Duration;

#[test]
fn sleep_at_next_rpc_names_the_rank() {
    let (agent, sim) = hangwatch_tests::watched_sim(
        &[],
        &[
            "--tp",
            "4",
            "--load",
            "steady",
            "--fault",
            "rank=2,after=6,mode=sleep",
        ],
        &[],
    );
    let d = detect(&agent, &sim, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    println!("{d:?}");
    assert_eq!(d.suspects, vec![2], "{}", agent.log_text());
    assert!(d.reasons.contains(&"ring_unread".to_string()));
    assert!(
        d.opened_after <= 12.0,
        "opened {:.1} s after the fault",
        d.opened_after
    );
    assert!(d.bundle_after <= 15.0);
    // Bundles hold stacks, environments and log lines: root's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode(&d.bundle).ok(), Some(0o700));
    assert_eq!(mode(d.bundle.parent().expect("root")).ok(), Some(0o700));
    for f in std::fs::read_dir(&d.bundle).expect("bundle").flatten() {
        let want = if f.path().is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&f.path()).ok(), Some(want), "{}", f.path().display());
    }
    assert_eq!(mode(&agent.record).ok(), Some(0o600), "the recording");
}
