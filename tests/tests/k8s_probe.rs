//! The Kubernetes readiness recipe's probe (`deploy/kubernetes/examples/vllm-readiness.yaml`)
//! run as the kubelet would run it: its script, taken from the manifest, inside a network
//! and mount namespace of its own where `hangwatch-local.monitoring.svc` is loopback and
//! an agent stand-in answers `/ready?namespace=&pod=` with 200 for one pod and 503 for
//! another: the probe passes for the first, fails for the second, and fails with nobody
//! answering.

use hangwatch_tests::{output_text, repo_root};
use std::process::Command;

/// The probe's script, as the manifest holds it.
fn probe_script() -> String {
    let manifest = repo_root().join("deploy/kubernetes/examples/vllm-readiness.yaml");
    let read = "import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); \
                c = d['spec']['template']['spec']['containers'][0]; \
                print(c['readinessProbe']['exec']['command'][2])";
    let out = Command::new("python3")
        .args(["-c", read])
        .arg(&manifest)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn the_readiness_probe_follows_the_nodes_agent() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::write(d.join("probe.py"), probe_script()).expect("probe");
    std::fs::write(
        d.join("hosts"),
        "127.0.0.1 localhost hangwatch-local.monitoring.svc\n",
    )
    .expect("hosts");
    // The agent's answer by pod, as `GET /ready?namespace=NS&pod=NAME` gives it.
    std::fs::write(
        d.join("agent.py"),
        "import http.server\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       ok = self.path == '/ready?namespace=llm&pod=vllm-0'\n\
         \x20       hung = self.path == '/ready?namespace=llm&pod=vllm-1'\n\
         \x20       self.send_response(200 if ok else 503 if hung else 404)\n\
         \x20       self.end_headers()\n\
         \x20   def log_message(self, *a):\n\
         \x20       pass\n\
         http.server.HTTPServer(('127.0.0.1', 9477), H).serve_forever()\n",
    )
    .expect("agent stand-in");
    let run = format!(
        "set -e; ip link set lo up; mount --bind {d}/hosts /etc/hosts; \
         probe() {{ POD_NAMESPACE=llm POD_NAME=$1 python3 {d}/probe.py && echo \"$1 ready\" || echo \"$1 unready\"; }}; \
         probe vllm-0; python3 {d}/agent.py & sleep 1; probe vllm-0; probe vllm-1; probe vllm-2; kill $!",
        d = d.display()
    );
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--", "sh", "-c", &run])
        .output()
        .expect("unshare");
    let text = output_text(&out);
    println!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        vec![
            "vllm-0 unready",
            "vllm-0 ready",
            "vllm-1 unready",
            "vllm-2 unready"
        ],
        "{text}"
    );
}
