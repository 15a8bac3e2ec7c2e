//! Notifications from the real agent to a real HTTP receiver, with the receiver down,
//! failing, hanging, and the agent killed in between: nothing lost, nothing sent twice,
//! the tick never slowed. The three tests run side by side (one binary) to keep the
//! suite's wall time.

use hangwatch_tests::receiver::{HookReceiver, Received};
use hangwatch_tests::{free_port, metric, signal, wait_for, Agent, Sim};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;
use std::time::{Duration, Instant};

const SECRET: &str = "k3y-for-signing";
const TOKEN: &str = "t0ken-for-bearer";

/// A configuration with a JSON receiver (signed, with a token) and an Alertmanager one.
fn config(dir: &Path, port: u16, timeout: &str) -> String {
    std::fs::write(dir.join("secret"), SECRET).expect("secret");
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).expect("token");
    let path = dir.join("hangwatch.toml");
    let text = format!(
        r#"[alerts]
queue_dir = "{q}"
retry_max = "2s"
repeat_every = "5s"

[[alerts.webhooks]]
name = "hook"
url = "http://127.0.0.1:{port}/hook"
timeout = "{timeout}"
secret_file = "{d}/secret"
token_file = "{d}/token"

[[alerts.webhooks]]
name = "am"
url = "http://127.0.0.1:{port}/am"
format = "alertmanager"
timeout = "{timeout}"
"#,
        q = dir.join("queue").display(),
        d = dir.display(),
    );
    std::fs::write(&path, text).expect("config");
    path.display().to_string()
}

fn events(got: &[Received]) -> Vec<(String, String)> {
    got.iter()
        .map(|r| {
            (
                r.body["event"].as_str().unwrap_or("").to_string(),
                r.body["incident_id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn verify_signature(r: &Received) {
    let ts = r.header("X-Hangwatch-Timestamp").expect("timestamp header");
    let sig = r
        .header("X-Hangwatch-Signature-256")
        .expect("signature header");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&r.raw);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sig, format!("sha256={want}"), "signature over {ts}.<body>");
    assert_eq!(r.header("Authorization"), Some(&*format!("Bearer {TOKEN}")));
}

fn queue_depth(agent: &Agent, receiver: &str) -> f64 {
    metric(
        &agent.metrics(),
        "hangwatch_notification_queue_depth",
        &[("receiver", receiver)],
    )
    .unwrap_or(-1.0)
}

fn count(agent: &Agent, receiver: &str, result: &str) -> f64 {
    metric(
        &agent.metrics(),
        "hangwatch_notifications_total",
        &[("receiver", receiver), ("result", result)],
    )
    .unwrap_or(-1.0)
}

fn start_agent(cfg: &str, sim_port: u16) -> Agent {
    Agent::watching(&[&format!("vllm-{sim_port}")], &["--config", cfg])
}

/// Waits until the agent has seen the engine serve (judged past its start-up).
fn serving(agent: &Agent, sim: &Sim) {
    let id = sim.engine_id();
    wait_for(Duration::from_secs(40), || {
        let m = agent.metrics();
        let busy = metric(
            &m,
            "hangwatch_engine_state",
            &[("engine", &id), ("state", "busy")],
        );
        (busy == Some(1.0)).then_some(())
    })
    .unwrap_or_else(|| panic!("engine never busy:\n{}", agent.log_text()));
    std::thread::sleep(Duration::from_secs(2));
}

/// Longest tick seen while `f` holds, sampled from the agent's own metric.
fn max_tick_while(agent: &Agent, until: Instant) -> f64 {
    let mut max: f64 = 0.0;
    while Instant::now() < until {
        if let Some(t) = metric(&agent.metrics(), "hangwatch_tick_duration_seconds", &[]) {
            max = max.max(t);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    max
}

#[test]
fn a_receiver_down_for_two_minutes_and_an_agent_restart_lose_nothing_and_repeat_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let hook_port = free_port();
    let cfg = config(dir.path(), hook_port, "2s");
    let sim_port = free_port();
    let agent = start_agent(&cfg, sim_port);
    let sim = Sim::start_on(sim_port, &["--tp", "2", "--load", "steady"], &[]);
    serving(&agent, &sim);
    let rank1 = sim.worker_pids()[1];
    signal(rank1, libc::SIGSTOP);
    let down_since = Instant::now();
    // Opened: queued while the receiver is down, tried and failed.
    wait_for(Duration::from_secs(20), || {
        (queue_depth(&agent, "hook") >= 1.0 && count(&agent, "hook", "failed") >= 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("opened not queued:\n{}", agent.log_text()));
    signal(rank1, libc::SIGCONT);
    wait_for(Duration::from_secs(30), || {
        (queue_depth(&agent, "hook") >= 2.0).then_some(())
    })
    .unwrap_or_else(|| panic!("resolved not queued:\n{}", agent.log_text()));
    let on_disk = std::fs::read_dir(dir.path().join("queue/hook"))
        .expect("queue")
        .count();
    assert_eq!(on_disk, 2, "opened and resolved wait on disk");
    // The agent dies hard with both waiting; a new one takes over the queue.
    drop(agent);
    let agent = start_agent(&cfg, sim_port);
    assert_eq!(queue_depth(&agent, "hook"), 2.0, "{}", agent.log_text());
    let ticks = max_tick_while(&agent, down_since + Duration::from_secs(120));
    let hook = HookReceiver::start(hook_port);
    let delivered = wait_for(Duration::from_secs(30), || {
        (hook.accepted("/hook").len() >= 2 && hook.accepted("/am").len() >= 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5)); // anything sent twice would come now
    assert!(delivered.is_some(), "not delivered:\n{}", agent.log_text());
    let got = hook.accepted("/hook");
    let ev = events(&got);
    assert_eq!(ev.len(), 2, "exactly once each: {ev:?}");
    assert_eq!(ev[0].0, "opened");
    assert_eq!(ev[1].0, "resolved");
    assert_eq!(ev[0].1, ev[1].1, "one incident");
    let opened = &got[0].body;
    assert_eq!(opened["schema"], "hangwatch.notification/v1");
    assert_eq!(opened["suspects"][0]["rank"], 1, "{opened}");
    assert_eq!(opened["engine"], format!("vllm-{sim_port}"));
    assert!(
        opened["summary"].as_str().unwrap_or("").contains("rank 1"),
        "{opened}"
    );
    assert!(
        opened["deadline_left_seconds"].as_f64().is_some(),
        "{opened}"
    );
    for r in &got {
        verify_signature(r);
        assert_eq!(r.header("Idempotency-Key"), r.body["id"].as_str());
    }
    // Alertmanager: the rank's alert fired, then ended.
    let am = hook.accepted("/am/api/v2/alerts");
    let first = &am[0].body[0];
    assert_eq!(
        first["labels"]["alertname"], "HangwatchRankStuck",
        "{first}"
    );
    assert_eq!(first["labels"]["rank"], "1");
    assert_eq!(first["labels"]["severity"], "critical");
    let last = &am[am.len() - 1].body[0];
    assert_eq!(last["labels"]["alertname"], "HangwatchRankStuck");
    let ends = hangwatch_tests::parse_rfc3339(last["endsAt"].as_str().unwrap_or(""));
    assert!(
        ends.is_some_and(|t| t <= hangwatch_tests::now_s() + 1.0),
        "ended: {last}"
    );
    assert_eq!(queue_depth(&agent, "hook"), 0.0);
    assert_eq!(count(&agent, "hook", "sent"), 2.0);
    assert!(
        ticks < 0.5,
        "the longest tick during the outage took {ticks:.3} s"
    );
    let log = agent.log_text();
    assert!(
        !log.contains(SECRET) && !log.contains(TOKEN),
        "a secret reached the log"
    );
}

#[test]
fn failing_and_hanging_receivers_never_slow_the_tick() {
    let dir = tempfile::tempdir().expect("tmp");
    let hook = HookReceiver::start(free_port());
    let cfg = config(dir.path(), hook.port, "2s");
    let sim_port = free_port();
    let agent = start_agent(&cfg, sim_port);
    let sim = Sim::start_on(sim_port, &["--tp", "2", "--load", "steady"], &[]);
    serving(&agent, &sim);
    let before = max_tick_while(&agent, Instant::now() + Duration::from_secs(5));
    hook.answer(500);
    let rank1 = sim.worker_pids()[1];
    signal(rank1, libc::SIGSTOP);
    wait_for(Duration::from_secs(20), || {
        (count(&agent, "hook", "failed") >= 2.0).then_some(())
    })
    .unwrap_or_else(|| panic!("no failed try:\n{}", agent.log_text()));
    // Now every answer takes 30 s, far past the receiver's 2 s timeout.
    hook.hang(Duration::from_secs(30));
    let during = max_tick_while(&agent, Instant::now() + Duration::from_secs(35));
    hook.hang(Duration::ZERO);
    hook.answer(200);
    signal(rank1, libc::SIGCONT);
    let done = wait_for(Duration::from_secs(40), || {
        (events(&hook.accepted("/hook")).len() >= 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        done.is_some(),
        "{:?}\n{}",
        events(&hook.got("/hook")),
        agent.log_text()
    );
    let got = hook.accepted("/hook");
    let ev = events(&got);
    let kinds: Vec<&str> = ev.iter().map(|e| e.0.as_str()).collect();
    // The fault lasts ~45 s: one escalation may come after the 30 s rate limit.
    let n = |k: &str| kinds.iter().filter(|x| **x == k).count();
    assert_eq!((n("opened"), n("resolved")), (1, 1), "each once: {ev:?}");
    assert!(
        n("escalated") <= 1,
        "escalations at most every 30 s: {ev:?}"
    );
    assert_eq!(kinds.first(), Some(&"opened"));
    assert_eq!(kinds.last(), Some(&"resolved"));
    let ids: std::collections::BTreeSet<_> = got.iter().map(|r| r.body["id"].to_string()).collect();
    assert_eq!(ids.len(), got.len(), "no notification delivered twice");
    assert!(
        hook.got("/hook").iter().any(|r| r.status == 500),
        "500s were answered"
    );
    println!(
        "longest tick: {before:.3} s before, {during:.3} s while the receiver failed and hung"
    );
    assert!(
        during < 0.5 && during < before + 0.3,
        "tick {before:.3} s → {during:.3} s"
    );
}

/// An Alertmanager receiver whose `url` leads nowhere (404) is said at start, in words,
/// with no incident needed; its status check posts nothing.
#[test]
fn a_wrong_alertmanager_url_is_said_at_start() {
    let hook = HookReceiver::start(free_port());
    hook.answer(404);
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("hangwatch.toml");
    let text = format!(
        "[alerts]\nqueue_dir = \"{}\"\n\n[[alerts.webhooks]]\nname = \"am\"\nurl = \"{}\"\nformat = \"alertmanager\"\n",
        dir.path().join("queue").display(),
        hook.url("/wrong")
    );
    std::fs::write(&cfg, text).expect("config");
    let agent = Agent::watching(&["vllm-none"], &["--config", &cfg.display().to_string()]);
    let said = wait_for(Duration::from_secs(15), || {
        agent
            .log_text()
            .contains("no Alertmanager API at this url")
            .then_some(())
    });
    assert!(said.is_some(), "{}", agent.log_text());
    let asked = hook.got("/wrong/api/v2/status");
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(hook.got("/wrong/api/v2/alerts").is_empty());
}
