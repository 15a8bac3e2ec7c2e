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

/// One completion through `addr`: true when it came back 200 within 5 s.
fn complete(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let body = br#"{"model": "fake-model", "prompt": "hi", "max_tokens": 8}"#;
    let head = format!(
        "POST /v1/completions HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .is_err()
    {
        return false;
    }
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).starts_with("HTTP/1.0 200")
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

/// Requests sent by 3 clients through `addr` while `run` holds: (sent at, ok).
fn clients(addr: String, run: Arc<AtomicBool>) -> Arc<Mutex<Vec<(f64, bool)>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..3 {
        let (addr, run, got) = (addr.clone(), run.clone(), got.clone());
        std::thread::spawn(move || {
            while run.load(Ordering::Relaxed) {
                let at = now_s();
                let ok = complete(&addr);
                if let Ok(mut g) = got.lock() {
                    g.push((at, ok));
                }
            }
        });
    }
    got
}

fn failed_between(got: &Mutex<Vec<(f64, bool)>>, from: f64, to: f64) -> (usize, usize) {
    let g = got.lock().map(|g| g.clone()).unwrap_or_default();
    let window: Vec<&(f64, bool)> = g.iter().filter(|(t, _)| *t >= from && *t < to).collect();
    (window.iter().filter(|(_, ok)| !ok).count(), window.len())
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
    let (before_f, before_n) = failed_between(&through_check, fault - 5.0, fault);
    let (check_f, check_n) = failed_between(&through_check, fault, end);
    let (after_f, after_n) = failed_between(&through_check, down + 0.5, end);
    let (plain_f, plain_n) = failed_between(&through_plain, fault, end);
    println!(
        "hung engine out of HAProxy's rotation {:.1} s after the fault; requests sent in the 25 s after the fault: \
         with the check {check_f} of {check_n} failed ({after_f} of {after_n} after it was out), \
         without {plain_f} of {plain_n} failed; before the fault {before_f} of {before_n}",
        down - fault
    );
    assert!(
        before_f * 20 <= before_n,
        "before the fault {before_f} of {before_n} failed"
    );
    assert!(down - fault <= 10.0, "out after {:.1} s", down - fault);
    assert_eq!(after_f, 0, "requests failed after the hung engine was out");
    assert!(
        plain_f * 4 >= plain_n,
        "without the check, too few failed: {plain_f} of {plain_n}"
    );
    assert!(check_f < plain_f, "with {check_f}, without {plain_f}");
}
