//! The detection matrix: every fault mode and position, at TP 2, 4 and 8, at rank 0, a
//! middle rank and the last rank, each against the real binary — plus, alongside, a
//! simulator that must raise nothing (idle, then bursty with 8 s steps).
//!
//! ```text
//! cargo build -p hangwatch && cargo run -p hangwatch-tests --bin detection-matrix -- \
//!     [--quick | --goals] [--trials 5] [--parallel 4] [--quiet-minutes 10]
//!     [--false-alarm-minutes 5] [--no-faults] [--out docs/results/FILE.md]
//! ```
//!
//! `--goals` runs the cells issue 11's goals are stated for (process faults, ring unread,
//! in-step faults, wedges at TP 2/4/8), `--trials` times each, and prints p50/p95/max of
//! the suspect stage and the incident per goal class. `--false-alarm-minutes` runs, after
//! the faults, one simulator per TP with every load that is not a hang mixed (long steps
//! of 15/30/60 s, compile pauses, a rank 1 s behind every step, bursty load, a slow first
//! request) and counts their incidents.
//!
//! Prints Markdown tables and a closing `N passed, M failed` line; exits 1 on failure.

use hangwatch_tests::percentile;
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

/// The goal classes of issue 11 and their p95 bound on "incident opened after the fault".
fn goal_class(c: &Case) -> (&'static str, f64) {
    match (c.mode, c.at) {
        ("stop" | "exit", _) => ("stop / exit", 5.0),
        ("collective", _) if c.tp == 2 => ("wedge (culprit unknown)", 12.0),
        ("collective", _) => ("mismatched collective (call site)", 12.0),
        (_, "next_rpc") => ("ring unread + stack", 7.0),
        _ => ("in-step, named by stacks", 8.0),
    }
}

fn goal_cases() -> Vec<Case> {
    let mut out = Vec::new();
    for tp in [2u32, 4, 8] {
        let rank = tp - 1;
        for (mode, at) in [
            ("stop", "in_step"),
            ("exit", "in_step"),
            ("sleep", "next_rpc"),
            ("sleep", "in_step"),
            ("spin", "in_step"),
            ("collective", "in_step"),
        ] {
            out.push(Case { tp, rank, mode, at });
        }
    }
    out
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
            // vLLM's "worker died" line can arrive before the process is seen gone.
            let also = if reason == "process_exited" {
                "worker_died"
            } else {
                reason
            };
            if !d.reasons.iter().any(|x| x == reason || x == also) {
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
    // `HANGWATCH_KEEP_SLOW=DIR`: keep the bundle of a case opened later than 6 s, to
    // read why (the agent's bundle folder goes with the run).
    if let (Ok(dir), Ok(d)) = (std::env::var("HANGWATCH_KEEP_SLOW"), &result) {
        if d.opened_after > 6.0 {
            if let Some(name) = d.bundle.file_name() {
                let to = std::path::Path::new(&dir).join(name);
                hangwatch_tests::keep(&d.bundle, &to);
            }
        }
    }
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
    let flag = |n: &str| hangwatch_tests::arg_value(&args, n);
    let quick = args.iter().any(|a| a == "--quick");
    let parallel: usize = flag("--parallel").and_then(|v| v.parse().ok()).unwrap_or(3);
    let quiet_minutes: f64 = flag("--quiet-minutes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let out = flag("--out");
    let trials: usize = flag("--trials").and_then(|v| v.parse().ok()).unwrap_or(1);
    let false_alarm_minutes: f64 = flag("--false-alarm-minutes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let goals = args.iter().any(|a| a == "--goals");

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

    let base = if args.iter().any(|a| a == "--no-faults") {
        Vec::new()
    } else if goals {
        goal_cases()
    } else {
        cases(quick)
    };
    // `--only tp=4,mode=spin,at=in_step`: the cases matching every given field.
    let only = flag("--only").unwrap_or_default();
    let base: Vec<Case> = base
        .into_iter()
        .filter(|c| {
            only.split(',')
                .filter(|kv| !kv.is_empty())
                .all(|kv| match kv.split_once('=') {
                    Some(("tp", v)) => c.tp.to_string() == v,
                    Some(("mode", v)) => c.mode == v,
                    Some(("at", v)) => c.at == v,
                    _ => false,
                })
        })
        .collect();
    let all: Vec<Case> = (0..trials.max(1)).flat_map(|_| base.clone()).collect();
    let no_cases = all.is_empty();
    let todo = Arc::new(Mutex::new(all));
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
    if !no_cases {
        md.push_str("| TP | rank | mode | at | named | reasons | engine reasons | opened after fault (s) | bundle after fault (s) | result |\n");
        md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    }
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
    if !no_cases {
        md.push_str(&goal_table(&rows));
    }
    if !quiet_line.is_empty() {
        md.push_str(&format!("\n{quiet_line}\n"));
    }
    let mut fa_failed = 0;
    if false_alarm_minutes > 0.0 {
        let (table, incidents) = false_alarms(&agent, false_alarm_minutes);
        md.push_str(&table);
        fa_failed = usize::from(incidents > 0);
    }
    print!("{md}");
    if let Some(path) = out {
        if let Err(e) = std::fs::write(&path, &md) {
            eprintln!("cannot write {path}: {e}");
        }
    }
    let failed = failed + fa_failed;
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
        // `exit` runs no destructor: the agent (the last reference) is ended first.
        drop(agent);
        std::process::exit(1);
    }
}

/// p50 / p95 / max of the suspect stage and the incident per goal class and TP.
fn goal_table(rows: &[Row]) -> String {
    let mut groups: std::collections::BTreeMap<(&str, u32), Vec<&Row>> = Default::default();
    for r in rows {
        groups
            .entry((goal_class(&r.case).0, r.case.tp))
            .or_default()
            .push(r);
    }
    let mut md = String::from(
        "\n| goal class | TP | trials | named right | suspect p50 / p95 / max (s) | incident p50 / p95 / max (s) | goal (p95) |\n|---|---|---|---|---|---|---|\n",
    );
    for ((class, tp), rs) in groups {
        let ok = rs.iter().filter(|r| r.ok).count();
        let opened: Vec<f64> = rs
            .iter()
            .filter_map(|r| r.result.as_ref().ok().map(|d| d.opened_after))
            .collect();
        let suspected: Vec<f64> = rs
            .iter()
            .filter_map(|r| r.result.as_ref().ok().and_then(|d| d.suspected_after))
            .collect();
        let goal = rs.first().map_or(0.0, |r| goal_class(&r.case).1);
        let met = !opened.is_empty() && percentile(&opened, 0.95) <= goal;
        md.push_str(&format!(
            "| {class} | {tp} | {} | {ok} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | ≤ {goal:.0} s: {} |\n",
            rs.len(),
            percentile(&suspected, 0.5),
            percentile(&suspected, 0.95),
            percentile(&suspected, 1.0),
            percentile(&opened, 0.5),
            percentile(&opened, 0.95),
            percentile(&opened, 1.0),
            if met { "met" } else { "NOT met" }
        ));
    }
    md
}

/// One simulator per TP and long-step length (15, 30, 60 s), each with every other load
/// that is not a hang on at once (bursty load, a 12 s first request, a 10 s compile
/// pause every 100 s, its last rank 1 s behind in every step), all nine side by side
/// for `minutes`; returns the table and the number of incidents they raised.
fn false_alarms(agent: &Agent, minutes: f64) -> (String, usize) {
    let dur = (minutes * 60.0).round().to_string();
    let mut sims: Vec<(u32, &str, Sim)> = Vec::new();
    for tp in [2u32, 4, 8] {
        for long in ["15000", "30000", "60000"] {
            let tps = tp.to_string();
            let imbalanced = (tp - 1).to_string();
            let sim = Sim::start(&[
                "--tp",
                &tps,
                "--load",
                "bursty",
                "--warmup",
                "1",
                "--first-step-ms",
                "12000",
                "--long-step-every",
                "45",
                "--long-step-ms",
                long,
                "--compile-every",
                "100",
                "--compile-ms",
                "10000",
                "--imbalance-rank",
                &imbalanced,
                "--imbalance-ms",
                "1000",
                "--duration",
                &dur,
            ]);
            sims.push((tp, long, sim));
        }
    }
    std::thread::sleep(Duration::from_secs_f64(minutes * 60.0 + 3.0));
    let mut md = format!(
        "\nfalse alarms, {minutes} min per engine, all nine at once on this machine: per TP and long-step length, bursty load, a 12 s first request, a long step every 45 s, a 10 s compile pause every 100 s, the last rank 1 s behind in every step\n\n| TP | long step (ms) | engine | incidents |\n|---|---|---|---|\n"
    );
    let mut total = 0;
    // `HANGWATCH_KEEP_SLOW=DIR`: keep every false alarm's bundle, to read why.
    if let Ok(dir) = std::env::var("HANGWATCH_KEEP_SLOW") {
        for (_, _, sim) in &sims {
            for (b, _) in agent.manifests(&sim.engine_id()) {
                if let Some(name) = b.file_name() {
                    hangwatch_tests::keep(&b, &std::path::Path::new(&dir).join(name));
                }
            }
        }
    }
    for (tp, long, sim) in &sims {
        let n = agent.manifests(&sim.engine_id()).len();
        total += n;
        md.push_str(&format!("| {tp} | {long} | {} | {n} |\n", sim.engine_id()));
    }
    (md, total)
}
