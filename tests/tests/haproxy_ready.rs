//! The load-balancer recipe (`docs/load-balancers.md`): Debian's HAProxy in front of two
//! simulated engines, its health check asking each node's hangwatch (`GET /ready`);
//! beside it the same HAProxy without that check. Clients send completions through both
//! (5 s client timeout); one engine hangs (rank 1 stopped in a step). With the check,
//! HAProxy takes the hung engine out of rotation within seconds and the requests after
//! that succeed; without it, every other request keeps hanging.

use hangwatch_tests::{free_port, http_get, now_s, signal, wait_for, Agent, Sim};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One completion through `addr`: `Ok` when it came back 200 within 5 s, else why not.
fn complete(addr: &str) -> Result<(), String> {
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let body = br#"{"model": "fake-model", "prompt": "hi", "max_tokens": 8}"#;
    let head = format!(
        "POST /v1/completions HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| format!("send: {e}"))?;
    let mut got = Vec::new();
    let read = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    if text.starts_with("HTTP/1.0 200") {
        return Ok(());
    }
    let status = text.lines().next().unwrap_or("").to_string();
    Err(format!(
        "after {:.2} s: {status:?} {}",
        started.elapsed().as_secs_f64(),
        read.err().map(|e| e.to_string()).unwrap_or_default()
    ))
}

struct HaProxy {
    child: Child,
    front: String,
    stats: String,
}

impl HaProxy {
    fn start(dir: &std::path::Path, name: &str, servers: &[(u16, &str)], check: bool) -> HaProxy {
        let (front, stats) = (free_port(), free_port());
        let mut cfg = format!(
            "defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n\
             frontend fe\n  bind 127.0.0.1:{front}\n  default_backend engines\n\
             listen stats\n  bind 127.0.0.1:{stats}\n  stats enable\n  stats uri /stats\n\
             backend engines\n  balance roundrobin\n"
        );
        if check {
            cfg.push_str("  option httpchk GET /ready\n  default-server inter 1s fall 2 rise 2\n");
        }
        for (i, (port, agent)) in servers.iter().enumerate() {
            let agent_port = agent.rsplit(':').next().unwrap_or("0");
            let chk = if check {
                format!(" check port {agent_port}")
            } else {
                String::new()
            };
            cfg.push_str(&format!("  server e{i} 127.0.0.1:{port}{chk}\n"));
        }
        let path = dir.join(format!("{name}.cfg"));
        std::fs::write(&path, cfg).expect("haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting haproxy (scripts/install-deps.sh installs it): {e}")
            });
        let h = HaProxy {
            child,
            front: format!("127.0.0.1:{front}"),
            stats: format!("127.0.0.1:{stats}"),
        };
        let up = wait_for(Duration::from_secs(10), || http_get(&h.stats, "/stats;csv"));
        assert!(up.is_some(), "haproxy {name} did not start");
        h
    }

    /// The status HAProxy gives server `e<i>` (`UP`, `DOWN`, `no check`…).
    fn status(&self, i: usize) -> String {
        let (_, csv) = http_get(&self.stats, "/stats;csv").unwrap_or_default();
        csv.lines()
            .find(|l| l.starts_with(&format!("engines,e{i},")))
            .and_then(|l| l.split(',').nth(17))
            .unwrap_or("")
            .to_string()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Sent = Arc<Mutex<Vec<(f64, Result<(), String>)>>>;

/// Requests sent by 3 clients through `addr` while `run` holds: (sent at, outcome).
fn clients(addr: String, run: Arc<AtomicBool>) -> Sent {
    let got: Sent = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..3 {
        let (addr, run, got) = (addr.clone(), run.clone(), got.clone());
        std::thread::spawn(move || {
            while run.load(Ordering::Relaxed) {
                let at = now_s();
                let outcome = complete(&addr);
                if let Ok(mut g) = got.lock() {
                    g.push((at, outcome));
                }
            }
        });
    }
    got
}

/// (failed, sent, why the first ones failed, with when they were sent relative to
/// `fault`) of the requests sent in [from, to).
fn failed_between(got: &Sent, fault: f64, from: f64, to: f64) -> (usize, usize, Vec<String>) {
    let g = got.lock().map(|g| g.clone()).unwrap_or_default();
    let window: Vec<_> = g.iter().filter(|(t, _)| *t >= from && *t < to).collect();
    let why: Vec<String> = window
        .iter()
        .filter_map(|(t, o)| {
            let e = o.clone().err()?;
            Some(format!("sent {:+.2} s from the fault, {e}", t - fault))
        })
        .collect();
    (why.len(), window.len(), why.into_iter().take(3).collect())
}

#[test]
fn haproxy_takes_a_hung_engine_out_of_rotation_with_hangwatchs_readiness() {
    let dir = tempfile::tempdir().expect("tmp");
    let (pa, pb) = (free_port(), free_port());
    let agent_a = Agent::watching(&[&format!("vllm-{pa}")], &[]);
    let agent_b = Agent::watching(&[&format!("vllm-{pb}")], &[]);
    let sim_a = Sim::start_on(pa, &["--tp", "2"], &[]);
    let _sim_b = Sim::start_on(pb, &["--tp", "2"], &[]);
    let servers = [(pa, agent_a.listen.as_str()), (pb, agent_b.listen.as_str())];
    let with = HaProxy::start(dir.path(), "with-check", &servers, true);
    let without = HaProxy::start(dir.path(), "without-check", &servers, false);
    let both_up = wait_for(Duration::from_secs(30), || {
        (with.status(0) == "UP" && with.status(1) == "UP").then_some(())
    });
    assert!(
        both_up.is_some(),
        "not both UP: {} {}",
        with.status(0),
        with.status(1)
    );
    let run = Arc::new(AtomicBool::new(true));
    let through_check = clients(with.front.clone(), run.clone());
    let through_plain = clients(without.front.clone(), run.clone());
    std::thread::sleep(Duration::from_secs(5));

    let fault = now_s();
    signal(sim_a.worker_pids()[1], libc::SIGSTOP);
    let down = wait_for(Duration::from_secs(20), || {
        (with.status(0).starts_with("DOWN")).then(now_s)
    });
    std::thread::sleep(Duration::from_secs(20));
    run.store(false, Ordering::Relaxed);
    signal(sim_a.worker_pids()[1], libc::SIGCONT);
    let Some(down) = down else {
        panic!(
            "HAProxy never took the hung engine out: {}\n{}",
            with.status(0),
            agent_a.log_text()
        );
    };
    let end = fault + 25.0;
    // Requests sent in the last second before the fault may be in flight on the engine
    // when it hangs (seen: sent 10–30 ms before, 5 s client timeout): the hang's, not
    // the balancer's. Before that, none may fail.
    let (before_f, before_n, before_why) =
        failed_between(&through_check, fault, fault - 5.0, fault - 1.0);
    let (caught, _, caught_why) = failed_between(&through_check, fault, fault - 1.0, fault);
    let (check_f, check_n, _) = failed_between(&through_check, fault, fault, end);
    let (after_f, after_n, after_why) = failed_between(&through_check, fault, down + 0.5, end);
    let (plain_f, plain_n, _) = failed_between(&through_plain, fault, fault, end);
    println!(
        "hung engine out of HAProxy's rotation {:.1} s after the fault; requests sent in the 25 s after the fault: \
         with the check {check_f} of {check_n} failed ({after_f} of {after_n} after it was out), \
         without {plain_f} of {plain_n} failed; 1–5 s before the fault {before_f} of {before_n}; \
         in flight when it hung {caught} {caught_why:?}",
        down - fault
    );
    assert_eq!(
        before_f, 0,
        "{before_f} of {before_n} failed before the fault: {before_why:?}"
    );
    assert!(down - fault <= 10.0, "out after {:.1} s", down - fault);
    assert_eq!(
        after_f, 0,
        "requests failed after the hung engine was out: {after_why:?}"
    );
    assert!(
        plain_f * 4 >= plain_n,
        "without the check, too few failed: {plain_f} of {plain_n}"
    );
    assert!(check_f < plain_f, "with {check_f}, without {plain_f}");
}
