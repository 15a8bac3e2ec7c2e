//! The goals matrix of every process role and deployment shape (issue 23): faults in
//! workers, the engine core and the API server, at TP 1/2/4/8, with the mp and the uni
//! executor, data-parallel replicas in lockstep and pipeline stages — each against the
//! real binary and the simulator — and, with `--quiet-minutes`, the same shapes under
//! loads that are not hangs, which must raise nothing.
//!
//! ```text
//! cargo build -p hangwatch && cargo run -p hangwatch-tests --bin roles-matrix -- \
//!     [--trials 3] [--parallel 3] [--quiet-minutes 10] [--only TEXT] [--out FILE.md]
//! ```
//!
//! Prints Markdown tables and a closing `N passed, M failed` line; exits 1 on failure.

use hangwatch_tests::percentile;
use hangwatch_tests::{detect_on, Agent, Detection, Sim};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
struct Case {
    /// Shape and fault, for the table.
    name: String,
    sim: Vec<String>,
    /// The engine the incident belongs to: `""` (the simulator's) or `-dp<i>`.
    replica: &'static str,
    rank: Option<u64>,
    role: &'static str,
    /// Goal class: stop/exit/D (5 s) or in-step/stack (8 s).
    stack: bool,
}

fn case(name: String, sim: &[&str], rank: Option<u64>, role: &'static str, stack: bool) -> Case {
    Case {
        name,
        sim: sim.iter().map(|s| s.to_string()).collect(),
        replica: "",
        rank,
        role,
        stack,
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for tp in [1u32, 2, 4, 8] {
        let t = tp.to_string();
        let last = tp - 1;
        let core_modes = [
            ("stop", false),
            ("exit", false),
            ("sleep", true),
            ("native", true),
            ("spin", true),
        ];
        for (mode, stack) in core_modes {
            let fault = format!("target=core,after=5,mode={mode}");
            out.push(case(
                format!("TP{tp} mp, engine core {mode}"),
                &["--tp", &t, "--fault", &fault],
                None,
                "engine_core",
                stack,
            ));
        }
        out.push(case(
            format!("TP{tp} mp, API server event loop stuck"),
            &["--tp", &t, "--fault", "target=api,after=5,mode=sleep"],
            None,
            "api_server",
            true,
        ));
        for mode in ["stop", "exit"] {
            let fault = format!("target=api,after=5,mode={mode}");
            out.push(case(
                format!("TP{tp} mp, API server {mode}"),
                &["--tp", &t, "--fault", &fault],
                None,
                "api_server",
                false,
            ));
        }
        let fault = format!("rank={last},after=5,mode=stop");
        out.push(case(
            format!("TP{tp} mp, worker rank {last} stop"),
            &["--tp", &t, "--fault", &fault],
            Some(u64::from(last)),
            "worker",
            false,
        ));
    }
    let uni_modes = [
        ("stop", false),
        ("exit", false),
        ("sleep", true),
        ("native", true),
    ];
    for (mode, stack) in uni_modes {
        let fault = format!("rank=0,after=5,mode={mode}");
        out.push(case(
            format!("TP1 uni, engine core (rank 0) {mode}"),
            &["--tp", "1", "--executor", "uni", "--fault", &fault],
            Some(0),
            "engine_core",
            stack,
        ));
    }
    out.push(case(
        "TP1 uni, API server stop".into(),
        &[
            "--tp",
            "1",
            "--executor",
            "uni",
            "--fault",
            "target=api,after=5,mode=stop",
        ],
        None,
        "api_server",
        false,
    ));
    for tp in ["1", "2"] {
        out.push(Case {
            replica: "-dp1",
            ..case(
                format!("DP2 lockstep TP{tp}, replica 1 rank 0 stop"),
                &[
                    "--tp",
                    tp,
                    "--dp",
                    "2",
                    "--dp-lockstep",
                    "--fault",
                    "replica=1,rank=0,after=5,mode=stop",
                ],
                Some(0),
                "worker",
                false,
            )
        });
    }
    out.push(case(
        "PP2 TP2, stage 0 rank 1 sleep in step".into(),
        &[
            "--tp",
            "2",
            "--pp",
            "2",
            "--fault",
            "rank=1,after=5,mode=sleep,at=in_step",
        ],
        Some(1),
        "worker",
        true,
    ));
    out.push(case(
        "PP2 TP2, output rank 2 stop".into(),
        &[
            "--tp",
            "2",
            "--pp",
            "2",
            "--fault",
            "rank=2,after=5,mode=stop",
        ],
        Some(2),
        "worker",
        false,
    ));
    out
}

struct Row {
    case: Case,
    result: Result<Detection, String>,
    why: Option<String>,
}

fn run(agent: &Agent, c: &Case) -> Row {
    let args: Vec<&str> = c.sim.iter().map(String::as_str).collect();
    let mut all = vec!["--load", "steady"];
    all.extend(args);
    let sim = Sim::start(&all);
    let engine = format!("{}{}", sim.engine_id(), c.replica);
    let result = detect_on(agent, &sim, &engine, Duration::from_secs(20));
    let why = match &result {
        Err(e) => Some(e.clone()),
        Ok(d) => {
            let rank = d.manifest["suspects"][0]["rank"].as_u64();
            let role = d.manifest["suspects"][0]["role"].as_str().unwrap_or("");
            let bound = if c.stack { 8.0 } else { 5.0 };
            if rank != c.rank || role != c.role {
                Some(format!(
                    "named {rank:?} {role}, expected {:?} {}",
                    c.rank, c.role
                ))
            } else if d.opened_after > bound + 4.0 {
                Some(format!("opened {:.1} s after the fault", d.opened_after))
            } else {
                None
            }
        }
    };
    Row {
        case: c.clone(),
        result,
        why,
    }
}

/// Shapes under loads that are not hangs, for `minutes`: every incident is a false alarm.
fn quiet(agent: &Agent, minutes: f64) -> (String, usize) {
    let dur = (minutes * 60.0).round().to_string();
    let shapes: Vec<(&str, Vec<&str>)> = vec![
        (
            "TP1 uni, long steps 4-12 s, compile pauses",
            vec![
                "--tp",
                "1",
                "--executor",
                "uni",
                "--long-step-every",
                "20",
                "--long-step-ms",
                "4000,12000",
                "--compile-every",
                "45",
                "--compile-ms",
                "6000",
            ],
        ),
        (
            "DP2 lockstep TP1, long steps 8 s",
            vec![
                "--tp",
                "1",
                "--dp",
                "2",
                "--dp-lockstep",
                "--long-step-every",
                "25",
                "--long-step-ms",
                "8000",
            ],
        ),
        (
            "DP2 independent TP2, bursty, a slow first request",
            vec![
                "--tp",
                "2",
                "--dp",
                "2",
                "--load",
                "bursty",
                "--first-step-ms",
                "15000",
            ],
        ),
        (
            "TP2, the API server busy 5 s of every 15 s (huge prompts tokenised)",
            vec![
                "--tp",
                "2",
                "--api-busy-every",
                "15",
                "--api-busy-ms",
                "5000",
            ],
        ),
        (
            "PP2 TP2, long steps 8 s, rank 1 0.5 s behind",
            vec![
                "--tp",
                "2",
                "--pp",
                "2",
                "--long-step-every",
                "30",
                "--long-step-ms",
                "8000",
                "--imbalance-rank",
                "1",
                "--imbalance-ms",
                "500",
            ],
        ),
    ];
    let sims: Vec<(&str, Sim)> = shapes
        .into_iter()
        .map(|(name, mut a)| {
            a.extend(["--duration", dur.as_str()]);
            (name, Sim::start(&a))
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(minutes * 60.0 + 2.0));
    let mut md =
        format!("\n| quiet shape ({minutes} min each, side by side) | incidents |\n|---|---|\n");
    let mut total = 0;
    for (name, sim) in &sims {
        let base = sim.engine_id();
        let n: usize = ["", "-dp0", "-dp1"]
            .iter()
            .map(|s| agent.manifests(&format!("{base}{s}")).len())
            .sum();
        total += n;
        md.push_str(&format!("| {name} | {n} |\n"));
    }
    (md, total)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |n: &str| hangwatch_tests::arg_value(&args, n);
    let trials: usize = flag("--trials").and_then(|v| v.parse().ok()).unwrap_or(1);
    let parallel: usize = flag("--parallel").and_then(|v| v.parse().ok()).unwrap_or(3);
    let quiet_minutes: f64 = flag("--quiet-minutes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let agent = Arc::new(Agent::start(&[]));
    // `--only TEXT`: the cases whose name holds TEXT.
    let only = flag("--only").unwrap_or_default();
    let all: Vec<Case> = (0..trials.max(1))
        .flat_map(|_| cases())
        .filter(|c| c.name.contains(&only))
        .collect();
    let pool_agent = agent.clone();
    let rows = hangwatch_tests::run_parallel(all, parallel, move |c: Case| {
        let row = run(&pool_agent, &c);
        eprintln!("{}: {}", c.name, row.why.as_deref().unwrap_or("ok"));
        row
    });
    let rows: Vec<_> = rows
        .iter()
        .map(|x| (x.case.clone(), x.result.clone(), x.why.clone()))
        .collect();
    let mut md = String::from("| shape and fault | named (rank, role) | reasons | opened after fault (s) | result |\n|---|---|---|---|---|\n");
    let mut classes: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    let mut failed = 0;
    let mut sorted = rows.clone();
    sorted.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    for (c, r, why) in &sorted {
        let (named, reasons, opened) = match r {
            Ok(d) => {
                let class = if c.stack {
                    "in-step / stack (goal p95 ≤ 8 s)"
                } else {
                    "stop / exit / D (goal p95 ≤ 5 s)"
                };
                classes.entry(class).or_default().push(d.opened_after);
                (
                    format!(
                        "{:?} {}",
                        d.manifest["suspects"][0]["rank"].as_u64(),
                        d.manifest["suspects"][0]["role"].as_str().unwrap_or("")
                    ),
                    d.reasons.join("+"),
                    format!("{:.1}", d.opened_after),
                )
            }
            Err(_) => ("-".into(), "-".into(), "-".into()),
        };
        failed += usize::from(why.is_some());
        md.push_str(&format!(
            "| {} | {named} | {reasons} | {opened} | {} |\n",
            c.name,
            why.as_deref()
                .map_or("ok".to_string(), |w| format!("FAILED: {w}"))
        ));
    }
    md.push_str("\n| goal class | cases | p50 (s) | p95 (s) | max (s) |\n|---|---|---|---|---|\n");
    for (class, v) in &classes {
        md.push_str(&format!(
            "| {class} | {} | {:.1} | {:.1} | {:.1} |\n",
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.95),
            percentile(v, 1.0)
        ));
        let bound = if class.starts_with("in-step") {
            8.0
        } else {
            5.0
        };
        if percentile(v, 0.95) > bound {
            failed += 1;
        }
    }
    let right = rows.iter().filter(|(_, _, w)| w.is_none()).count();
    md.push_str(&format!(
        "\nright suspect: {right} of {} ({:.0} %)\n",
        rows.len(),
        100.0 * right as f64 / rows.len().max(1) as f64
    ));
    if quiet_minutes > 0.0 {
        let (table, n) = quiet(&agent, quiet_minutes);
        md.push_str(&table);
        failed += usize::from(n > 0);
    }
    print!("{md}");
    if let Some(path) = flag("--out") {
        if let Err(e) = std::fs::write(&path, &md) {
            eprintln!("cannot write {path}: {e}");
        }
    }
    println!(
        "{} passed, {failed} failed",
        rows.len() - rows.iter().filter(|(_, _, w)| w.is_some()).count()
    );
    if failed > 0 {
        // `exit` runs no destructor: the agent (the last reference) is ended first.
        drop(agent);
        std::process::exit(1);
    }
}
