//! The shipped systemd unit (`deploy/systemd/hangwatch.service`): systemd's own checker
//! finds nothing wrong with it, and its exposure score (`systemd-analyze security`) stays
//! at or below 3.5 — least privilege is checked, not promised. systemd-analyze comes with
//! the `systemd` package that `scripts/test.sh` installs.

use hangwatch_tests::{exposure_score, hangwatch_bin, output_text, repo_root};
use std::process::Command;

fn unit_text() -> String {
    std::fs::read_to_string(repo_root().join("deploy/systemd/hangwatch.service")).expect("unit")
}

#[test]
fn the_unit_verifies_clean() {
    let dir = tempfile::tempdir().expect("dir");
    // Verify checks that ExecStart exists: point it at the binary under test.
    let unit = unit_text().replace(
        "/usr/local/bin/hangwatch",
        hangwatch_bin().to_str().expect("utf8 path"),
    );
    let path = dir.path().join("hangwatch.service");
    std::fs::write(&path, unit).expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let text = output_text(&out);
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

#[test]
fn the_unit_exposure_is_at_most_3_5() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(repo_root().join("deploy/systemd/hangwatch.service"))
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    let score = exposure_score(&text).unwrap_or_else(|| panic!("no score in:\n{text}"));
    println!("systemd-analyze security: exposure {score}");
    assert!(score <= 3.5, "exposure {score}:\n{text}");
    let unit = unit_text();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "CapabilityBoundingSet=CAP_SYS_PTRACE CAP_DAC_READ_SEARCH CAP_SYS_NICE",
        "UMask=0077",
    ] {
        assert!(unit.contains(needed), "{needed} missing");
    }
}
