//! Hostile or odd input never stops, blinds or misleads the agent (issue 12), with the
//! real binary: log lines no parser expects, FIFOs and links where files were, and
//! look-alike engines started by an unprivileged user.

use hangwatch_tests::{hangwatch_json, http_get, signal, wait_for, wait_stopped, Agent, Sim};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().expect("utf8")).expect("c path");
    // SAFETY: mkfifo on a path in the test's own temporary directory.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "{}",
        p.display()
    );
}

fn append(p: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(p)
        .expect("open");
    f.write_all(bytes).expect("write");
}

/// `/healthz` answers 200 on every look for `secs` seconds.
fn healthy_for(agent: &Agent, secs: u64) {
    for _ in 0..secs * 2 {
        let code = http_get(&agent.listen, "/healthz").map(|(c, _)| c);
        assert_eq!(code, Some(200), "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn occurrences(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn odd_logs_and_swapped_segments_never_stop_the_agent() {
    let dir = tempfile::tempdir().expect("dir");
    let logs = dir.path();
    let odd = logs.join("odd.log");
    let swapped = logs.join("swapped.log");
    append(
        &odd,
        b"(EngineCore pid=1) INFO 11-29 13:00:00 [x.py:1] before\n",
    );
    append(
        &swapped,
        b"(EngineCore pid=1) INFO 11-29 13:00:00 [x.py:1] before\n",
    );
    mkfifo(&logs.join("fifo.log"));
    let port = hangwatch_tests::free_port();
    let engine = format!("vllm-{port}");
    let cfg = tempfile::tempdir().expect("config dir");
    let cfg_file = cfg.path().join("hangwatch.toml");
    std::fs::write(
        &cfg_file,
        format!("[logs]\npaths = [\"{}/*.log\"]\n", logs.display()),
    )
    .expect("config");
    let cfg_arg = cfg_file.to_str().expect("utf8").to_string();
    let agent = Agent::watching(&[&engine], &["--config", &cfg_arg]);
    let sim = Sim::start_on(port, &["--tp", "2", "--load", "steady"], &[]);
    let seen = wait_for(Duration::from_secs(20), || {
        agent.log_text().contains("engine appeared").then_some(())
    });
    assert!(seen.is_some(), "{}", agent.log_text());

    // Lines no parser expects: a multi-byte character where the timestamp goes, invalid
    // UTF-8, a 300 kB line, a forged fatal line without vLLM's prefix.
    append(
        &odd,
        "(EngineCore pid=1) INFO 11-29 13:36:2é [x.py:1] NCCL WARN boom\n".as_bytes(),
    );
    append(
        &odd,
        b"(EngineCore pid=1) INFO \xff\xfe\xfd 11-29 [x.py:1] \xc3\x28\n",
    );
    let mut long = vec![b'a'; 300 * 1024];
    long.push(b'\n');
    append(&odd, &long);
    append(
        &odd,
        b"INFO: 127.0.0.1:1 - \"GET /EngineDeadError HTTP/1.1\" 404\n",
    );
    // A followed log swapped for a FIFO.
    std::fs::remove_file(&swapped).expect("rm");
    mkfifo(&swapped);
    // Ring segments swapped for a FIFO and for a link to a file the agent must not read.
    let rings = &sim.started["rings"];
    let reply = rings["reply"][0].as_str().expect("reply ring").to_string();
    let tp = rings["tp"].as_str().expect("tp ring").to_string();
    let shm = |n: &str| Path::new("/dev/shm").join(n.trim_start_matches('/'));
    std::fs::remove_file(shm(&reply)).expect("rm reply ring");
    mkfifo(&shm(&reply));
    std::fs::remove_file(shm(&tp)).expect("rm tp ring");
    std::os::unix::fs::symlink("/etc/shadow", shm(&tp)).expect("link");

    healthy_for(&agent, 8);
    let log = agent.log_text();
    assert!(!log.contains("panicked"), "{log}");
    let fifo_lines = log
        .lines()
        .filter(|l| l.contains("fifo.log") && l.contains("regular file"))
        .count();
    assert_eq!(fifo_lines, 1, "said once:\n{log}");
    let swapped_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("swapped.log") && l.contains("regular file"))
        .collect();
    assert_eq!(swapped_lines.len(), 1, "said once:\n{log}");
    let reply_name = reply.trim_start_matches('/');
    assert_eq!(
        occurrences(&log, reply_name),
        1,
        "the swapped segment is said once:\n{log}"
    );
    // The forged access-log line changed no verdict.
    let status = hangwatch_json(&["status", "--json"]);
    assert!(status.to_string().contains(&engine), "{status}");
    let body = agent.metrics();
    assert!(
        !body.contains(&format!("engine=\"{engine}\",state=\"dead\"}} 1")),
        "{body}"
    );
    // And the agent still judges.
    stopped_rank_1_is_named(&agent, &engine, &sim);
}

/// Stops rank 1 of `sim`: the agent opens an incident for `engine` naming it.
fn stopped_rank_1_is_named(agent: &Agent, engine: &str, sim: &Sim) {
    let pid = sim.worker_pids()[1];
    signal(pid, libc::SIGSTOP);
    assert!(wait_stopped(pid, Duration::from_secs(5)));
    let named = wait_for(Duration::from_secs(20), || {
        agent.manifests(engine).into_iter().next()
    });
    signal(pid, libc::SIGCONT);
    let (_, m) = named.unwrap_or_else(|| panic!("no incident:\n{}", agent.log_text()));
    assert_eq!(m["suspects"][0]["rank"], 1, "{m}");
}

/// Every line of an OpenMetrics exposition, strictly: comments, samples with quoted
/// and escaped label values, a number, and `# EOF` last.
fn strictly_valid(body: &str) -> Result<(), String> {
    let lines: Vec<&str> = body.lines().collect();
    if lines.last() != Some(&"# EOF") {
        return Err("no # EOF at the end".into());
    }
    for l in &lines[..lines.len() - 1] {
        if let Some(rest) = l.strip_prefix("# ") {
            if !(rest.starts_with("HELP ")
                || rest.starts_with("TYPE ")
                || rest.starts_with("UNIT "))
            {
                return Err(format!("bad comment: {l}"));
            }
            continue;
        }
        let name_end = l
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(l.len());
        if name_end == 0 {
            return Err(format!("no metric name: {l}"));
        }
        let mut rest = &l[name_end..];
        if let Some(labels) = rest.strip_prefix('{') {
            let mut chars = labels.char_indices();
            let mut in_value = false;
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match (in_value, c) {
                    (true, '\\') => match chars.next() {
                        Some((_, '\\' | '"' | 'n')) => {}
                        _ => return Err(format!("bad escape: {l}")),
                    },
                    (true, '"') => in_value = false,
                    (true, '\n') => return Err(format!("raw newline: {l}")),
                    (false, '"') => in_value = true,
                    (false, '}') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let Some(end) = end else {
                return Err(format!("unterminated labels: {l}"));
            };
            rest = &labels[end + 1..];
        }
        let value = rest.strip_prefix(' ').ok_or(format!("no value: {l}"))?;
        let value = value.split(' ').next().unwrap_or("");
        if value.parse::<f64>().is_err() && !["+Inf", "-Inf", "NaN"].contains(&value) {
            return Err(format!("bad value: {l}"));
        }
    }
    Ok(())
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn look_alikes_of_an_unprivileged_user_cannot_mislead_the_agent() {
    let port = hangwatch_tests::free_port();
    let engine = format!("vllm-{port}");
    let evil_port = hangwatch_tests::free_port();
    let agent = Agent::watching(
        &[&format!("vllm-{port}*"), &format!("vllm-{evil_port}*")],
        &[],
    );
    // Started first, claiming the real engine's port (which it cannot get: it is held
    // until the real engine starts), with a model name holding `"`, `\` and a newline.
    let placeholder = std::net::TcpListener::bind(("127.0.0.1", port)).expect("hold the port");
    let same_port = Sim::start_as_nobody(
        port,
        &[
            "--tp",
            "2",
            "--load",
            "steady",
            "--model",
            "evil\"\\\nhangwatch_injected 1",
        ],
    );
    drop(placeholder);
    let real = Sim::start_on(port, &["--tp", "2", "--load", "steady"], &[]);
    // An endless /metrics.
    let endless = Sim::start_as_nobody(
        evil_port,
        &[
            "--tp",
            "2",
            "--load",
            "steady",
            "--hostile-metrics",
            "--model",
            "m\"}\n",
        ],
    );
    healthy_for(&agent, 25);
    let status = hangwatch_json(&["status", "--json"]);
    let engines = status["engines"].as_array().cloned().unwrap_or_default();
    let real_entry = engines
        .iter()
        .find(|e| e["core_pid"].as_u64() == Some(u64::from(real.core_pid())))
        .unwrap_or_else(|| panic!("real engine missing: {status}"));
    assert_eq!(real_entry["id"], engine.as_str(), "{status}");
    let evil_entry = engines
        .iter()
        .find(|e| e["core_pid"].as_u64() == Some(u64::from(same_port.core_pid())));
    if let Some(e) = evil_entry {
        assert_ne!(
            e["id"],
            engine.as_str(),
            "the look-alike took the id: {status}"
        );
    }
    let body = agent.metrics();
    strictly_valid(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    assert!(
        !body.lines().any(|l| l.starts_with("hangwatch_injected")),
        "a series was injected:\n{body}"
    );
    let rss = peak_rss_kib(agent.child.id());
    println!("agent peak RSS {} KiB beside an endless /metrics", rss);
    assert!(rss > 0 && rss < 64 * 1024, "peak RSS {rss} KiB");
    // The real engine keeps its verdicts: a stopped rank is named under its own id.
    stopped_rank_1_is_named(&agent, &engine, &real);
    drop(endless);
    drop(same_port);
}

/// A "NCCL RAS" peer that greets, then answers with an endless status, or trickles it
/// byte by byte: `hangwatch ras` gives up within its bounds and stays small.
#[test]
fn a_huge_or_endless_ras_answer_is_cut() {
    for trickle in [false, true] {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let mut c = conn;
                std::thread::spawn(move || {
                    let _ = c.write_all(b"SERVER PROTOCOL 2\nOK\n{\"x\": [");
                    let chunk = vec![b'1'; 64 * 1024];
                    loop {
                        let sent = if trickle {
                            std::thread::sleep(Duration::from_millis(100));
                            c.write_all(b"1,")
                        } else {
                            c.write_all(&chunk)
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let started = std::time::Instant::now();
        let mut child = std::process::Command::new(hangwatch_tests::hangwatch_bin())
            .args(["ras", "--addr", &addr, "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("hangwatch ras");
        // Its peak resident set, read while it runs.
        let mut peak = 0;
        while child.try_wait().ok().flatten().is_none()
            && started.elapsed() < Duration::from_secs(20)
        {
            peak = peak.max(peak_rss_kib(child.id()));
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = child.wait_with_output().expect("wait");
        let took = started.elapsed();
        let text = hangwatch_tests::output_text(&out);
        println!(
            "trickle {trickle}: {took:?}, peak RSS {peak} KiB: {}",
            text.trim()
        );
        assert!(took < Duration::from_secs(10), "{took:?}: {text}");
        assert!(
            text.contains("longer than") || text.contains("no end within"),
            "{text}"
        );
        assert!(peak > 0 && peak < 64 * 1024, "peak RSS {peak} KiB");
    }
}

/// Opens `count` TCP connections to `addr` as `nobody` and holds them, idle, for
/// `hold` seconds; prints how many it got.
const FLOOD: &str = r#"
import resource, socket, sys, time
addr, count, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
host, port = addr.rsplit(":", 1)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for _ in range(count):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect_ex((host, int(port)))
    except OSError:
        pass
    held.append(s)
print("connections", len(held), flush=True)
time.sleep(hold)
"#;

/// A connection flood as an unprivileged user against an agent with 1,024
/// descriptors: the engine with an open incident is never judged dead, the incident is
/// neither ended nor opened twice, and `/metrics` answers within 2 s once it ends.
#[test]
fn a_connection_flood_blinds_nothing() {
    let port = hangwatch_tests::free_port();
    let engine = format!("vllm-{port}");
    let agent = Agent::watching_limited(&[&engine], &[], 1024);
    let sim = Sim::start_on(port, &hangwatch_tests::RANK_1_STOPS, &[]);
    let opened = wait_for(Duration::from_secs(30), || {
        agent.manifests(&engine).first().cloned()
    });
    let (path, m) = opened.unwrap_or_else(|| panic!("no incident:\n{}", agent.log_text()));
    assert!(m["outcome"].is_null(), "{m}");
    let flood = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", FLOOD, &agent.listen, "2000", "20"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("flood");
    let out = flood.wait_with_output().expect("flood ran");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("connections 2000"), "{said}");
    let started = std::time::Instant::now();
    let answered = http_get(&agent.listen, "/metrics");
    let took = started.elapsed();
    assert!(
        answered.as_ref().is_some_and(|(c, _)| *c == 200) && took < Duration::from_secs(2),
        "/metrics after the flood: {:?} in {took:?}",
        answered.map(|(c, _)| c)
    );
    println!("/metrics answered {took:?} after 2000 idle connections for 20 s");
    let text = std::fs::read_to_string(path.join("manifest.json")).unwrap_or_default();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    assert!(m["outcome"].is_null(), "the incident ended: {m}");
    let all = agent.manifests(&engine);
    assert_eq!(all.len(), 1, "{}", agent.kept_incidents(&engine));
    let log = agent.log_text();
    assert!(
        !log.contains("state=dead") && !log.contains("state=\"dead\""),
        "{log}"
    );
    assert_eq!(
        hangwatch_tests::metric(
            &agent.metrics(),
            "hangwatch_incidents_total",
            &[("engine", &engine)]
        ),
        Some(1.0)
    );
    drop(sim);
}

/// Forks `count` processes as the calling user, each titled `X::EngineCore`, and keeps
/// them until stdin closes.
const LOOK_ALIKES: &str = r#"
import os, sys, time
from setproctitle import setproctitle
count = int(sys.argv[1])
kids = []
for i in range(count):
    pid = os.fork()
    if pid == 0:
        setproctitle(f"X{i}::EngineCore")
        while True:
            time.sleep(60)
    kids.append(pid)
print("started", len(kids), flush=True)
sys.stdin.read()
for k in kids:
    os.kill(k, 9)
"#;

/// 200 processes titled like an engine core, started by an unprivileged user: the cap
/// on engines holds (the real engine first), none of them opens an incident, the real
/// engine's stopped rank is still named with its bundle, and the agent stays small.
#[test]
fn two_hundred_look_alike_engine_cores_change_nothing() {
    let port = hangwatch_tests::free_port();
    let engine = format!("vllm-{port}");
    let mut fakes = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", LOOK_ALIKES, "200"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("look-alikes");
    let mut line = String::new();
    if let Some(out) = fakes.stdout.as_mut() {
        use std::io::BufRead;
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    assert_eq!(line.trim(), "started 200");
    let agent = Agent::watching(&[&format!("{engine}*"), "vllm-core*"], &[]);
    let real = Sim::start_on(port, &["--tp", "2", "--load", "steady"], &[]);
    // Past the start-up grace, when a bare look-alike would read stalled.
    healthy_for(&agent, 20);
    let status = http_get(&agent.listen, "/status")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let doc: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
    let ids: Vec<&str> = doc["engines"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids.len(), 64, "the cap: {ids:?}");
    assert!(
        ids.contains(&engine.as_str()),
        "the real engine first: {ids:?}"
    );
    let log = agent.log_text();
    assert_eq!(occurrences(&log, "engines found, watching 64"), 1, "{log}");
    stopped_rank_1_is_named(&agent, &engine, &real);
    let bundles: Vec<String> = std::fs::read_dir(&agent.bundle_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !bundles.is_empty() && bundles.iter().all(|b| b.starts_with(&engine)),
        "only the real engine's incident: {bundles:?}"
    );
    let rss = peak_rss_kib(agent.child.id());
    println!("agent peak RSS {rss} KiB watching 64 of 201 engines");
    assert!(rss > 0 && rss < 64 * 1024, "peak RSS {rss} KiB");
    drop(fakes.stdin.take());
    let _ = fakes.wait();
}

/// Serves a `/metrics` that says five requests run with counters that never move, to
/// every connection, until the test ends.
fn lying_metrics(listener: std::net::TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut c = conn;
            let body = "vllm:num_requests_running{model_name=\"m\"} 5\nvllm:generation_tokens_total{model_name=\"m\"} 1\n";
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

/// Someone else holds the port the engine was told to serve on: what answers there is
/// not the engine's `/metrics`, and is not read as such.
#[test]
fn a_metrics_port_held_by_someone_else_is_not_scraped() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    lying_metrics(listener);
    let engine = format!("vllm-{port}");
    let agent = Agent::watching(&[&engine], &[]);
    let _sim = Sim::start_on(port, &["--tp", "2", "--load", "idle"], &[]);
    let said = wait_for(Duration::from_secs(20), || {
        agent
            .log_text()
            .contains("is not held by its API server")
            .then_some(())
    });
    assert!(said.is_some(), "{}", agent.log_text());
    std::thread::sleep(Duration::from_secs(3));
    let body = agent.metrics();
    let running = hangwatch_tests::metric(
        &body,
        "hangwatch_vllm_requests_running",
        &[("engine", &engine)],
    );
    assert_eq!(running, None, "the impostor's /metrics was read:\n{body}");
}
