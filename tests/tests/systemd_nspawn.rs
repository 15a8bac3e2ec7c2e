//! The shipped unit under a real systemd (issue 25): a minimal Debian booted in
//! systemd-nspawn (`tests/src/nspawn.rs`) with `deploy/systemd/hangwatch.service`, the
//! default configuration and the binary under test. `systemctl start` returns only at
//! READY (Type=notify); the watchdog is petted; the dynamic user, with only the unit's
//! capabilities, reads a simulated engine's rings (mode 0600, root's) and its ranks'
//! stacks and names the rank hung in its step; `systemd-analyze security` of the
//! running unit stays ≤ 3.5; a stopped agent is killed by the watchdog after
//! `WatchdogSec` (30 s, as shipped) and started again by `Restart=always`.

use hangwatch_tests::nspawn::{debian_root, Container};
use hangwatch_tests::{exposure_score, hangwatch_bin, repo_root, wait_for};
use std::time::{Duration, Instant};

const UNIT: &str = "hangwatch.service";

fn boot() -> Container {
    let root = repo_root();
    Container::boot(
        &debian_root(),
        &[
            (hangwatch_bin(), "/usr/local/bin/hangwatch"),
            (
                root.join("deploy/systemd/hangwatch.service"),
                "/etc/systemd/system/hangwatch.service",
            ),
            (
                root.join("deploy/hangwatch.toml"),
                "/etc/hangwatch/hangwatch.toml",
            ),
            (root.join("tests/fakevllm"), "/opt/fakevllm"),
        ],
    )
}

/// The agent's uid and capability sets, from inside.
fn main_process(c: &Container) -> (String, String) {
    let pid = c.unit_property(UNIT, "MainPID");
    let st = c.text(&["cat", &format!("/proc/{pid}/status")]);
    let uid = st
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or("")
        .to_string();
    let caps = st
        .lines()
        .filter(|l| l.starts_with("CapEff:") || l.starts_with("CapBnd:"))
        .collect::<Vec<_>>()
        .join(" ");
    (uid, caps)
}

#[test]
fn the_unit_runs_under_a_real_systemd() {
    let c = boot();

    let started = Instant::now();
    let out = c.run(&["systemctl", "start", UNIT]);
    let start_s = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "start failed:\n{}", c.journal(UNIT));
    assert_eq!(c.unit_property(UNIT, "ActiveState"), "active");
    assert_eq!(c.unit_property(UNIT, "SubState"), "running");
    assert!(
        c.journal(UNIT).contains("hangwatch running"),
        "READY before the agent ran?\n{}",
        c.journal(UNIT)
    );
    println!("systemctl start returned after READY in {start_s:.2} s");

    // The watchdog is petted: systemd's record of the last ping moves.
    let first = c.unit_property(UNIT, "WatchdogTimestampMonotonic");
    std::thread::sleep(Duration::from_millis(2500));
    let second = c.unit_property(UNIT, "WatchdogTimestampMonotonic");
    let (a, b): (u64, u64) = (first.parse().unwrap_or(0), second.parse().unwrap_or(0));
    assert!(a > 0 && b > a, "watchdog not petted: {first} then {second}");
    println!("watchdog pings {:.2} s apart", (b - a) as f64 / 1e6);

    let (uid, caps) = main_process(&c);
    assert!(!uid.contains("\t0\t"), "the agent runs as root: {uid}");
    // CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_SYS_NICE (23): nothing else.
    assert!(
        caps.contains("CapEff:\t0000000000880004") && caps.contains("CapBnd:\t0000000000880004"),
        "capabilities: {caps}"
    );
    println!("agent {uid}; {caps}");

    rank_named_by_the_dynamic_user(&c);
    exposure_at_most_3_5(&c);
    watchdog_restarts_a_stopped_agent(&c);
}

/// A TP=2 simulated engine, run by root inside, its rank 1 asleep in its step: only its
/// stack (read with CAP_SYS_PTRACE) tells it from the others, which wait in a collective.
fn rank_named_by_the_dynamic_user(c: &Container) {
    c.start_sim("rank=1,after=8,mode=sleep,at=in_step");
    let rings = wait_for(Duration::from_secs(30), || {
        let s = c.agent_status()?;
        let n = s["engines"][0]["rings"].as_array()?.len();
        (n > 0).then_some(n)
    });
    let modes = c.text(&["sh", "-c", "stat -c '%a %U %n' /dev/shm/psm_*"]);
    assert!(
        rings.is_some(),
        "no rings read; /dev/shm: {modes}\n{}",
        c.journal(UNIT)
    );
    assert!(modes.starts_with("600 root"), "rings: {modes}");
    println!(
        "rings read: {rings:?} ({})",
        modes.lines().next().unwrap_or("")
    );

    let Some((incident, after)) = c.incident_naming(1, Duration::from_secs(40)) else {
        panic!(
            "no incident naming rank 1:\n{}\n{}",
            c.journal(UNIT),
            c.text(&["tail", "-20", "/tmp/sim.out"])
        );
    };
    let reasons = incident["suspects"][0]["reasons"].to_string();
    assert!(reasons.contains("stack_odd_one_out"), "{reasons}");
    println!(
        "incident {} names rank 1 {after:.1} s after the fault: {reasons}",
        incident["id"]
    );
    let bundle = wait_for(Duration::from_secs(20), || {
        let l = c.text(&["sh", "-c", "ls /var/lib/private/hangwatch/bundles/*/"]);
        l.contains("stacks").then_some(l)
    });
    assert!(
        bundle.is_some(),
        "no bundle with stacks:\n{}",
        c.journal(UNIT)
    );
}

fn exposure_at_most_3_5(c: &Container) {
    let text = c.text(&["systemd-analyze", "security", UNIT, "--no-pager"]);
    let score = exposure_score(&text).unwrap_or_else(|| panic!("no score in:\n{text}"));
    println!("systemd-analyze security of the running unit: {score}");
    assert!(score <= 3.5, "exposure {score}:\n{text}");
}

fn watchdog_restarts_a_stopped_agent(c: &Container) {
    let pid = c.unit_property(UNIT, "MainPID");
    let stop = Instant::now();
    let out = c.run(&["sh", "-c", &format!("kill -STOP {pid}")]);
    assert!(out.status.success(), "{out:?}");
    let restarted = wait_for(Duration::from_secs(60), || {
        let now = c.unit_property(UNIT, "MainPID");
        let n = c.unit_property(UNIT, "NRestarts");
        (now != pid && now != "0" && n == "1").then_some(now)
    });
    let took = stop.elapsed().as_secs_f64();
    let j = c.journal(UNIT);
    assert!(restarted.is_some(), "not restarted after {took:.1} s:\n{j}");
    assert!(j.contains("Watchdog timeout"), "{j}");
    assert!(took >= 30.0, "killed before WatchdogSec: {took:.1} s");
    let back = wait_for(Duration::from_secs(20), || c.agent_status());
    assert!(back.is_some(), "the restarted agent does not answer:\n{j}");
    println!("stopped agent killed by the watchdog and running again {took:.1} s after SIGSTOP");
}
