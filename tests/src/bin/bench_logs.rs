//! Log benchmarks:
//! 1. parsing throughput on one core: follower + vLLM line classifier over a large
//!    generated log made of the real fixture's lines (goal ≥ 200 MB/s);
//! 2. the agent's CPU while it follows a log growing at 5 MB/s.
//!
//! ```text
//! cargo build --release -p hangwatch -p hangwatch-tests
//! target/release/bench-logs [--mb 300] [--follow-seconds 30] [--rate-mb 5]
//! ```

use hangwatch_collectors::logs::follow::{Follower, Limits};
use hangwatch_collectors::logs::parse::classify;
use hangwatch_tests::{repo_root, Agent};
use std::io::Write;
use std::time::{Duration, Instant};

fn arg(name: &str, default: f64) -> f64 {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fixture_lines() -> Vec<String> {
    let text = std::fs::read_to_string(
        repo_root().join("testdata/vllm/tp2-rank1-stopped-until-timeout.serve.log"),
    )
    .expect("fixture log");
    text.lines().map(String::from).collect()
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(") ").next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn main() {
    let mb = arg("--mb", 300.0);
    let follow_s = arg("--follow-seconds", 30.0);
    let rate = arg("--rate-mb", 5.0);
    let lines = fixture_lines();
    let dir = tempfile::tempdir().expect("dir");

    // 1. Throughput.
    let path = dir.path().join("big.log");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("file"));
    let mut written = 0usize;
    let target = (mb * 1e6) as usize;
    'outer: loop {
        for l in &lines {
            writeln!(f, "{l}").expect("write");
            written += l.len() + 1;
            if written >= target {
                break 'outer;
            }
        }
    }
    f.flush().expect("flush");
    drop(f);
    // Warm the page cache so the disk is not what is measured.
    let _ = std::fs::read(&path);
    let mut fol = Follower::new(
        &path,
        false,
        Limits {
            max_line_bytes: 64 * 1024,
            max_bytes_per_poll: usize::MAX,
        },
    );
    let t = Instant::now();
    let mut events = 0usize;
    let got = fol.poll();
    for l in &got {
        if classify(l).is_some() {
            events += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "parse: {:.0} MB, {} lines, {} events in {:.2} s = {:.0} MB/s on one core",
        written as f64 / 1e6,
        got.len(),
        events,
        secs,
        written as f64 / 1e6 / secs
    );
    // The parser alone, over the same lines in memory.
    let t = Instant::now();
    let mut again = 0usize;
    for l in &got {
        if classify(l).is_some() {
            again += 1;
        }
    }
    let psecs = t.elapsed().as_secs_f64();
    println!(
        "parse only: {} events in {:.2} s = {:.0} MB/s on one core",
        again,
        psecs,
        written as f64 / 1e6 / psecs
    );
    drop(got);

    // 2. The agent following a growing log.
    let live = dir.path().join("live.log");
    std::fs::write(&live, "").expect("live");
    std::env::set_var("HANGWATCH_LOGS_PATHS", live.display().to_string());
    if std::env::var_os("HANGWATCH_BIN").is_none() {
        // Measure the build operators run.
        std::env::set_var(
            "HANGWATCH_BIN",
            repo_root().join("target/release/hangwatch"),
        );
    }
    let agent = Agent::start(&[]);
    std::thread::sleep(Duration::from_secs(2));
    let pid = agent.child.id();
    let c0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .open(&live)
        .expect("open");
    let per_tick = (rate * 1e6 / 10.0) as usize;
    let mut sent = 0usize;
    let mut i = 0usize;
    while t0.elapsed().as_secs_f64() < follow_s {
        let mut chunk = String::with_capacity(per_tick + 512);
        while chunk.len() < per_tick {
            chunk.push_str(&lines[i % lines.len()]);
            chunk.push('\n');
            i += 1;
        }
        out.write_all(chunk.as_bytes()).expect("append");
        sent += chunk.len();
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - c0;
    let metrics = agent.metrics();
    let read: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("hangwatch_log_lines_total{source=") && l.contains("live.log"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!(
        "follow: {:.1} MB appended over {:.0} s ({:.1} MB/s); agent CPU {:.2} s = {:.1} % of one core; {} lines read of {} written",
        sent as f64 / 1e6,
        wall,
        sent as f64 / 1e6 / wall,
        cpu,
        cpu / wall * 100.0,
        read,
        i
    );
}
