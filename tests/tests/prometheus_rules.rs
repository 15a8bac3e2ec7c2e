//! The Prometheus alert rules (`deploy/prometheus/`): valid for Prometheus's own checker,
//! their unit tests pass under `promtool test rules` (Debian's prometheus package,
//! installed by `scripts/test.sh`), and every hangwatch metric they use is one the
//! agent really exports.

use hangwatch_tests::{http_get, output_text, repo_root, wait_for};
use std::process::Command;
use std::time::Duration;

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo_root().join("deploy/prometheus"))
        .output()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    (out.status.success(), output_text(&out))
}

#[test]
fn the_rules_are_valid_and_their_unit_tests_pass() {
    let (ok, text) = promtool(&["check", "rules", "hangwatch.rules.yml"]);
    assert!(ok, "{text}");
    assert!(text.contains("SUCCESS: 15 rules found"), "{text}");
    let (ok, text) = promtool(&["test", "rules", "tests/hangwatch.rules.test.yml"]);
    assert!(ok && text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_metric_the_rules_use_is_exported() {
    let rules = std::fs::read_to_string(repo_root().join("deploy/prometheus/hangwatch.rules.yml"))
        .expect("rules");
    let mut used: Vec<String> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("hangwatch_"))
        .map(|w| w.trim_end_matches("_total").to_string())
        .collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 9, "{used:?}");
    // Families without series are not exported: an engine with a stopped rank makes
    // every one of them appear, and a receiver (down) the notification families.
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("h.toml");
    std::fs::write(
        &cfg,
        format!(
            "[alerts]\nqueue_dir = \"{}\"\n[[alerts.webhooks]]\nurl = \"http://127.0.0.1:1/down\"\n",
            dir.path().join("q").display()
        ),
    )
    .expect("config");
    let (agent, _sim) = hangwatch_tests::watched_sim(
        &["--config", &cfg.display().to_string()],
        &hangwatch_tests::RANK_1_STOPS,
        &[],
    );
    let body = wait_for(Duration::from_secs(40), || {
        let b = http_get(&agent.listen, "/metrics").map(|(_, b)| b)?;
        b.contains("hangwatch_engine_deadline_seconds{")
            .then_some(b)
    })
    .unwrap_or_else(|| panic!("no stall seen:\n{}", agent.log_text()));
    let families: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for m in &used {
        assert!(
            families.contains(&m.as_str()),
            "{m} is not exported:\n{body}"
        );
    }
}
