//! Stamps the binary with the commit it was built from, so `hangwatch --version`, the
//! `hangwatch_build_info` metric, the log's first line and every bundle say exactly
//! which code ran. `HANGWATCH_COMMIT` (set by `scripts/package.sh`, or by a build from
//! a source tarball) wins; else git is asked; else "unknown" (a build without git
//! must still work).

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=HANGWATCH_COMMIT");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let commit = match std::env::var("HANGWATCH_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => from_git(dir).unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=HANGWATCH_COMMIT={commit}");
}

/// The short commit, with "-modified" when tracked files differ from it. Asked again
/// when HEAD moves, the index changes or the agent's sources do.
fn from_git(dir: &Path) -> Option<String> {
    let git_dir = git(dir, &["rev-parse", "--absolute-git-dir"])?;
    for f in ["HEAD", "index"] {
        println!("cargo:rerun-if-changed={git_dir}/{f}");
    }
    println!("cargo:rerun-if-changed=src");
    if let Some(r) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed={git_dir}/{r}");
    }
    let commit = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    let clean = git(dir, &["status", "--porcelain", "--untracked-files=no"])?.is_empty();
    Some(if clean {
        commit
    } else {
        format!("{commit}-modified")
    })
}
