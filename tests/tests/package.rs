//! The Debian package and the container image, built and proven as an operator would
//! use them (issue 26): `scripts/package.sh --debug --check` packages the debug build
//! (a release build from scratch would not fit the suite's time; `scripts/package.sh
//! --check` proves the release build the same way, docs/results/packaging.md), installs
//! the package in a booted Debian (installed, not enabled; `systemctl start` works; the
//! stopped rank named; purge keeps only the bundles) and runs the image with podman the
//! way the DaemonSet runs it (`tests/src/bin/package_check.rs`). lintian finds nothing
//! but the one tag docs/packaging.md explains.

use hangwatch_tests::{output_text, repo_root};
use std::process::Command;

#[test]
fn the_package_and_the_image_work() {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/package.sh"))
        .args(["--debug", "--check"])
        .output()
        .expect("scripts/package.sh");
    let text = output_text(&out);
    println!("{text}");
    assert!(out.status.success(), "package.sh failed:\n{text}");
    assert!(text.contains("package-check: all passed"), "{text}");
    let lintian = std::fs::read_to_string(repo_root().join("target/package/lintian.txt"))
        .expect("lintian.txt");
    let tags: Vec<&str> = lintian
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .filter(|l| !l.contains("initial-upload-closes-no-bugs"))
        .collect();
    assert!(tags.is_empty(), "lintian:\n{lintian}");
}
