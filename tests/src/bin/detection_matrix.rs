//! The detection matrix: every fault mode and position, at TP 2, 4 and 8, at rank 0, a
//! middle rank and the last rank, each against the real binary — plus, alongside, a
//! simulator that must raise nothing (idle, then bursty with 8 s steps).
//!
//! ```text
//! cargo build -p hangwatch && cargo run -p hangwatch-tests --bin detection-matrix -- \
//!     [--quick] [--parallel 4] [--quiet-minutes 10] [--out docs/results/FILE.md]
//! ```
//!
//! Prints a Markdown table and a closing `N passed, M failed` line; exits 1 on failure.

use hangwatch_tests::{detect, Agent, Detection, Sim};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
struct Case {
    tp: u32,
    rank: u32,
    mode: &'static str,
    at: &'static str,
}

impl Case {
    /// Whether the rings (or the process) can name the rank: the rank hangs before it
    /// takes its RPC, or its process is stopped or gone.
    fn attributable(&self) -> bool {
        self.at == "next_rpc" && self.mode != "collective" || matches!(self.mode, "stop" | "exit")
    }

    fn expected_reason(&self) -> Option<&'static str> {
        match self.mode {
            "stop" => Some("process_stopped"),
            "exit" => Some("process_exited"),
            _ if self.attributable() => Some("ring_unread"),
            _ => None,
        }
    }
}

fn cases(quick: bool) -> Vec<Case> {
    let mut out = Vec::new();
    for tp in [2u32, 4, 8] {
        let mut ranks = vec![0, tp / 2, tp - 1];
        ranks.dedup();
        for &rank in &ranks {
            for mode in ["stop", "sleep", "spin", "native", "exit", "collective"] {
                out.push(Case {
                    tp,
                    rank,
                    mode,
                    at: "next_rpc",
                });
            }
            for mode in ["stop", "exit", "sleep", "spin", "native"] {
                out.push(Case {
                    tp,
                    rank,
                    mode,
                    at: "in_step",
                });
            }
        }
    }
    // collective is always in-step: one entry per rank is enough.
    out.retain(|c| !(c.mode == "collective" && c.at == "in_step"));
    if quick {
        // Every mode and position once, rotating through the TP sizes and rank positions.
        let mut keys: Vec<(&str, &str)> = Vec::new();
        for c in &out {
            if !keys.contains(&(c.mode, c.at)) {
                keys.push((c.mode, c.at));
            }
        }
        return keys
            .iter()
            .enumerate()
            .map(|(i, &(mode, at))| {
                let tp = [2u32, 4, 8][i % 3];
                let rank = [0, tp / 2, tp - 1][(i / 3) % 3];
                Case { tp, rank, mode, at }
            })
            .collect();
    }
    out
}

struct Row {
    case: Case,
    result: Result<Detection, String>,
    ok: bool,
    why: String,
}

fn judge_case(c: &Case, r: &Result<Detection, String>) -> (bool, String) {
    let d = match r {
        Ok(d) => d,
        Err(e) => return (false, e.clone()),
    };
    if c.attributable() {
        if d.suspects != vec![u64::from(c.rank)] {
            return (
                false,
                format!("named {:?}, expected [{}]", d.suspects, c.rank),
            );
        }
        if let Some(reason) = c.expected_reason() {
            if !d.reasons.iter().any(|x| x == reason) {
                return (false, format!("reasons {:?} lack {reason}", d.reasons));
            }
        }
        if d.opened_after > 12.0 {
            return (
                false,
                format!("opened {:.1} s after the fault (> 12)", d.opened_after),
            );
        }
        if d.bundle_after > 15.0 {
            return (
                false,
                format!("bundle {:.1} s after the fault (> 15)", d.bundle_after),
            );
        }
    } else {
        if d.suspects.iter().any(|&s| s != u64::from(c.rank)) {
            return (false, format!("wrong culprit {:?}", d.suspects));
        }
        if d.opened_after > 15.0 {
            return (
                false,
                format!(
                    "stalled reported {:.1} s after the fault (> 15)",
                    d.opened_after
                ),
            );
        }
    }
    (true, String::new())
}

fn run_case(agent: &Agent, c: &Case) -> Row {
    let fault = format!("rank={},after=5,mode={},at={}", c.rank, c.mode, c.at);
    let tp = c.tp.to_string();
    let sim = Sim::start(&["--tp", &tp, "--load", "steady", "--fault", &fault]);
    let result = detect(agent, &sim, Duration::from_secs(20));
    let (ok, why) = judge_case(c, &result);
    Row {
        case: c.clone(),
        result,
        ok,
        why,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |n: &str| {
        args.iter()
            .position(|a| a == n)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    let parallel: usize = flag("--parallel").and_then(|v| v.parse().ok()).unwrap_or(3);
    let quiet_minutes: f64 = flag("--quiet-minutes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let out = flag("--out");

    let agent = Arc::new(Agent::start(&[]));
    let started = Instant::now();
    // The engine that must stay quiet: idle first, then bursty with 8 s steps.
    let quiet = (quiet_minutes > 0.0).then(|| {
        let idle_s = (quiet_minutes * 60.0 * 0.3).round().to_string();
        let dur = (quiet_minutes * 60.0).round().to_string();
        Sim::start(&[
            "--tp",
            "4",
            "--load",
            "bursty",
            "--warmup",
            &idle_s,
            "--long-step-every",
            "30",
            "--long-step-ms",
            "8000",
            "--duration",
            &dur,
        ])
    });

    let todo = Arc::new(Mutex::new(cases(quick)));
    let rows = Arc::new(Mutex::new(Vec::<Row>::new()));
    let mut handles = Vec::new();
    for _ in 0..parallel.max(1) {
        let (todo, rows, agent) = (todo.clone(), rows.clone(), agent.clone());
        handles.push(std::thread::spawn(move || loop {
            let next = todo.lock().map(|mut t| t.pop()).unwrap_or(None);
            let Some(c) = next else { break };
            let row = run_case(&agent, &c);
            eprintln!(
                "tp={} rank={} {} at {}: {}",
                c.tp,
                c.rank,
                c.mode,
                c.at,
                if row.ok {
                    "ok".to_string()
                } else {
                    format!("FAILED {}", row.why)
                }
            );
            if let Ok(mut r) = rows.lock() {
                r.push(row);
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    let mut quiet_line = String::new();
    let mut quiet_ok = true;
    if let Some(q) = &quiet {
        let left = Duration::from_secs_f64(quiet_minutes * 60.0).saturating_sub(started.elapsed());
        std::thread::sleep(left + Duration::from_secs(2));
        let n = agent.manifests(&q.engine_id()).len();
        quiet_ok = n == 0;
        quiet_line = format!(
            "quiet engine ({}; {quiet_minutes} min: idle {:.0} s, then bursty with an 8 s step every 30 s): {n} incidents",
            q.engine_id(),
            quiet_minutes * 60.0 * 0.3
        );
    }

    let mut rows = match Arc::try_unwrap(rows) {
        Ok(m) => m.into_inner().unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    rows.sort_by_key(|r| (r.case.tp, r.case.rank, r.case.at, r.case.mode));
    let mut md = String::new();
    md.push_str("| TP | rank | mode | at | named | reasons | engine reasons | opened after fault (s) | bundle after fault (s) | result |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    let mut opened: Vec<f64> = Vec::new();
    for r in &rows {
        let (named, reasons, er, o, b) = match &r.result {
            Ok(d) => {
                opened.push(d.opened_after);
                (
                    format!("{:?}", d.suspects),
                    d.reasons.join("+"),
                    d.engine_reasons.join("+"),
                    format!("{:.1}", d.opened_after),
                    format!("{:.1}", d.bundle_after),
                )
            }
            Err(_) => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.case.tp,
            r.case.rank,
            r.case.mode,
            r.case.at,
            named,
            reasons,
            er,
            o,
            b,
            if r.ok {
                "ok".to_string()
            } else {
                format!("FAILED: {}", r.why)
            }
        ));
    }
    opened.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let passed = rows.iter().filter(|r| r.ok).count() + usize::from(quiet.is_some() && quiet_ok);
    let failed = rows.len() - rows.iter().filter(|r| r.ok).count()
        + usize::from(quiet.is_some() && !quiet_ok);
    if !opened.is_empty() {
        md.push_str(&format!(
            "\nopened after the fault: median {:.1} s, max {:.1} s over {} cases\n",
            opened[opened.len() / 2],
            opened[opened.len() - 1],
            opened.len()
        ));
    }
    if !quiet_line.is_empty() {
        md.push_str(&format!("\n{quiet_line}\n"));
    }
    print!("{md}");
    if let Some(path) = out {
        if let Err(e) = std::fs::write(&path, &md) {
            eprintln!("cannot write {path}: {e}");
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        eprintln!(
            "agent log tail:\n{}",
            agent
                .log_text()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::process::exit(1);
    }
}
