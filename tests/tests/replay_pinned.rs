//! Recordings of the real agent watching the simulator (a stopped rank that resumes, a
//! rank asleep inside a step, a rank that sleeps until vLLM's own timeout) replay
//! through `hangwatch replay` to exactly the time lines pinned when they were recorded
//! (`testdata/replay/*.replay.txt` and `.replay.jsonl`): live and replay run one watch
//! step, and a refactoring must not change a verdict.

use hangwatch_tests::{hangwatch_bin, repo_root};
use std::process::Command;

fn replay(name: &str, json: bool) -> (String, String) {
    let dir = repo_root().join("testdata/replay");
    let mut cmd = Command::new(hangwatch_bin());
    cmd.arg("replay").arg(dir.join(format!("{name}.jsonl")));
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("hangwatch replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ext = if json { "replay.jsonl" } else { "replay.txt" };
    let pinned = std::fs::read_to_string(dir.join(format!("{name}.{ext}"))).expect("pinned");
    (String::from_utf8_lossy(&out.stdout).to_string(), pinned)
}

#[test]
fn simulator_recordings_replay_to_the_pinned_time_lines() {
    for name in [
        "sim-tp4-rank2-stop-resume",
        "sim-tp4-rank1-sleep-in-step",
        "sim-tp2-rank1-dead-at-timeout",
    ] {
        for json in [false, true] {
            let (got, pinned) = replay(name, json);
            assert_eq!(got, pinned, "{name} (json: {json})");
        }
    }
}

#[test]
fn the_pinned_time_lines_name_the_faulty_ranks() {
    let (stop, _) = replay("sim-tp4-rank2-stop-resume", false);
    assert!(stop.contains("opened (suspect ranks: 2)"), "{stop}");
    assert!(stop.contains("resolved (suspect ranks: 2)"), "{stop}");
    let (dead, _) = replay("sim-tp2-rank1-dead-at-timeout", false);
    assert!(dead.contains("ended (suspect ranks: 1)"), "{dead}");
}
