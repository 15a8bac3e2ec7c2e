//! The agent's HTTP API beside `/metrics`: `GET /status` (what `status --json` says, with
//! verdicts and open incidents) and `POST /capture` (a bundle on demand: token required,
//! rate-limited, answered with the bundle's path).

use hangwatch_tests::{http_call, http_get, wait_for, Agent, Sim};
use serde_json::Value;
use std::time::Duration;

const TOKEN: &str = "capture-t0ken";

#[test]
fn status_and_capture_over_http() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token");
    let cfg = dir.path().join("h.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\ncapture_token_file = \"{}\"\n",
            dir.path().join("token").display()
        ),
    )
    .expect("cfg");
    let port = hangwatch_tests::free_port();
    let engine = format!("vllm-{port}");
    let agent = Agent::watching(&[&engine], &["--config", &cfg.display().to_string()]);
    let _sim = Sim::start_on(port, &["--tp", "2", "--load", "steady"], &[]);

    let doc = wait_for(Duration::from_secs(40), || {
        let (code, body) = http_get(&agent.listen, "/status")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let seen = v["verdicts"]
            .as_array()?
            .iter()
            .any(|x| x["engine"] == engine.as_str() && x["state"] == "busy");
        (code == 200 && seen).then_some(v)
    })
    .unwrap_or_else(|| panic!("no /status with the engine busy:\n{}", agent.log_text()));
    let e = doc["engines"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["id"] == engine.as_str()))
        .expect("engine");
    assert_eq!(e["ranks"].as_array().map(Vec::len), Some(2), "{e}");
    assert_eq!(doc["incidents"], Value::Array(vec![]));

    let post = |path: &str, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        http_call(&agent.listen, "POST", path, &headers).expect("answer")
    };
    let capture = format!("/capture?engine={engine}");
    assert_eq!(post(&capture, None).0, 401);
    assert_eq!(post(&capture, Some("wrong")).0, 401);
    // A guesser runs into its own limit and locks no operator out.
    let codes: Vec<u16> = (0..25).map(|_| post(&capture, Some("guess")).0).collect();
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 7, "{codes:?}");
    assert_eq!(post("/capture?engine=vllm-1", Some(TOKEN)).0, 404);
    assert_eq!(post("/capture", Some(TOKEN)).0, 400);
    let (code, body) = post(&capture, Some(TOKEN));
    assert_eq!(code, 202, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("json");
    let bundle = std::path::PathBuf::from(answer["bundle"].as_str().expect("bundle path"));
    assert_eq!(answer["state"], "busy");
    let (code, body) = post(&capture, Some(TOKEN));
    assert_eq!(code, 429, "one capture per engine per 30 s: {body}");

    let manifest = wait_for(Duration::from_secs(15), || {
        let m: Value =
            serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).ok()?)
                .ok()?;
        Some(m)
    })
    .unwrap_or_else(|| panic!("capture bundle not written:\n{}", agent.log_text()));
    assert_eq!(manifest["trigger"], "capture", "{manifest}");
    assert_eq!(manifest["verdict"], "busy");
    let stacks = std::fs::read_to_string(bundle.join("stacks/rank-1.txt")).unwrap_or_default();
    assert!(stacks.contains(".py"), "a fresh stack round: {stacks}");
    assert!(
        agent
            .manifests(&engine)
            .iter()
            .all(|(_, m)| m["trigger"] == "capture"),
        "an incident:{}",
        agent.kept_incidents(&engine)
    );
}

#[test]
fn capture_is_off_without_a_token() {
    let agent = Agent::watching(&["vllm-none"], &[]);
    let (code, body) =
        http_call(&agent.listen, "POST", "/capture?engine=vllm-none", &[]).expect("answer");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("capture_token_file"), "{body}");
}

/// With a certificate and key the listener speaks only HTTPS; a client that connects
/// and never speaks does not hold up the next one.
#[test]
fn https_when_a_certificate_is_configured() {
    let dir = tempfile::tempdir().expect("tmp");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=hangwatch-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/test.sh installs it)");
    assert!(
        made.status.success(),
        "{}",
        hangwatch_tests::output_text(&made)
    );
    let cfg = dir.path().join("h.toml");
    std::fs::write(
        &cfg,
        format!(
            "engines = [\"vllm-none\"]\n[http]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .expect("cfg");
    let listen = format!("127.0.0.1:{}", hangwatch_tests::free_port());
    let mut agent = std::process::Command::new(hangwatch_tests::hangwatch_bin())
        .args(["run", "--listen", &listen, "--bundle-dir"])
        .arg(dir.path().join("b"))
        .arg("--config")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("agent.log")).expect("log"))
        .spawn()
        .expect("agent");
    let curl = |path: &str| {
        std::process::Command::new("curl")
            .args(["-s", "--max-time", "5", "--cacert"])
            .arg(&cert)
            .arg(format!("https://{listen}{path}"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let healthy = wait_for(Duration::from_secs(20), || {
        curl("/healthz").filter(|b| b.contains("ok"))
    });
    let _idle = std::net::TcpStream::connect(&listen).expect("an idle client");
    let metrics = curl("/metrics");
    let plain = http_get(&listen, "/healthz");
    let _ = agent.kill();
    let _ = agent.wait();
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    assert!(healthy.is_some(), "no HTTPS answer:\n{log}");
    assert!(
        metrics.is_some_and(|m| m.contains("hangwatch_build_info")),
        "an idle client held up HTTPS:\n{log}"
    );
    assert!(
        plain.is_none_or(|(code, _)| code != 200),
        "plain HTTP must not be served"
    );
}
