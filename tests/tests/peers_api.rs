//! `POST /peers/report` takes hostile input like every other door: no token, a wrong
//! token, garbage, a body too large, a report out of bounds — each a clear error, and
//! the agent runs on. Off without `peers.token_file`.

use hangwatch_tests::{http_get, http_send, Agent};

const TOKEN: &str = "one-deployment-one-secret";

fn report(deployment: &str, suspects: usize) -> String {
    let s: Vec<String> = (0..suspects)
        .map(|r| {
            format!(
                r#"{{"rank":{r},"pid":{},"reasons":["process_stopped"]}}"#,
                100 + r
            )
        })
        .collect();
    format!(
        r#"{{"deployment":"{deployment}","part":{{"node_rank":1,"engine":"{deployment}-node1","state":"stalled","suspects":[{}],"incident":null}}}}"#,
        s.join(",")
    )
}

#[test]
fn peer_reports_take_hostile_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    let conf = dir.path().join("peers.toml");
    std::fs::write(&conf, format!("[peers]\ntoken_file = {token:?}\n")).expect("config");
    let c = conf.to_string_lossy().to_string();
    let agent = Agent::watching(&["none-such"], &["--config", &c]);
    let bearer = format!("Bearer {TOKEN}");
    let good = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    let post = |h: &[(&str, &str)], body: &[u8]| {
        http_send(&agent.listen, "POST", "/peers/report", h, body).map(|(c, _)| c)
    };
    let ok = report("vllm-10.0.0.1-29501", 1);
    assert_eq!(post(&[], ok.as_bytes()), Some(401), "no token");
    assert_eq!(
        post(&[("Authorization", "Bearer guess")], ok.as_bytes()),
        Some(401)
    );
    assert_eq!(post(&good, b"\x00\xffnot json"), Some(400), "garbage");
    assert_eq!(post(&good, &vec![b'{'; 100 * 1024]), Some(413), "too large");
    let many = report("vllm-10.0.0.1-29501", 65);
    assert_eq!(post(&good, many.as_bytes()), Some(400), "65 suspects");
    let long = report(&"x".repeat(300), 1);
    assert_eq!(
        post(&good, long.as_bytes()),
        Some(400),
        "a deployment of 300 bytes"
    );
    let answer = http_send(&agent.listen, "POST", "/peers/report", &good, ok.as_bytes());
    let (code, body) = answer.expect("an answer");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        v["state"], "unknown",
        "no engine of that deployment here: {v}"
    );
    let healthy = http_get(&agent.listen, "/healthz").map(|(c, _)| c);
    assert_eq!(healthy, Some(200), "{}", agent.log_text());
    assert!(
        !agent.log_text().contains(TOKEN),
        "the token never reaches the log"
    );

    let off = Agent::watching(&["none-such"], &[]);
    let code = http_send(&off.listen, "POST", "/peers/report", &good, ok.as_bytes());
    assert_eq!(code.map(|(c, _)| c), Some(403), "off without a token");
}
