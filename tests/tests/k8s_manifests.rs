//! The Kubernetes manifests (`deploy/kubernetes/`) validate against Kubernetes' own
//! schemas, strictly (kubernetes-validate, installed by `scripts/test.sh`); the
//! kustomization lists every one; the PrometheusRule is the rules file's groups; the
//! DaemonSet and the kustomization name the image `scripts/package.sh` builds.

use hangwatch_tests::{output_text, python, repo_root};
use std::process::Command;

#[test]
fn manifests_validate_and_the_prometheus_rule_matches_the_rules_file() {
    let out = Command::new(python())
        .arg(repo_root().join("scripts/check-manifests.py"))
        .output()
        .expect("python3");
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("7 Kubernetes objects valid (strict), 0 problems"),
        "{text}"
    );
}
