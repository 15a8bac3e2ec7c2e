//! The goals matrix of deployments across nodes (issue 24): 2 and 4 emulated nodes × 1,
//! 2 or 4 ranks per node × a fault on the leader node or on the last follower × a rank
//! stopped, asleep or spinning in its step — each a simulated deployment with one agent
//! per node (`hangwatch_tests::nodes`). With `--quiet-minutes`, deployments across
//! nodes under loads that are not hangs (long steps, compile pauses, bursts), which must
//! raise nothing on any node.
//!
//! ```text
//! cargo build -p hangwatch && cargo run -p hangwatch-tests --bin nodes-matrix -- \
//!     [--trials 1] [--parallel 2] [--quiet-minutes 10] [--only TEXT] [--out FILE.md]
//! ```
//!
//! Prints Markdown tables and a closing `N passed, M failed` line; exits 1 on failure.

use hangwatch_tests::nodes::SimDeployment;
use hangwatch_tests::percentile;
use serde_json::Value;
use std::time::Duration;

/// The goal: the right node and rank, p95 within this many seconds of the fault.
const GOAL_S: f64 = 8.0;

#[derive(Clone, Debug)]
struct Case {
    nnodes: u32,
    per_node: u32,
    /// The faulty rank is on the leader (its last local rank) or on the last node.
    on_leader: bool,
    mode: &'static str,
}

impl Case {
    fn rank(&self) -> u32 {
        if self.on_leader {
            self.per_node - 1
        } else {
            self.nnodes * self.per_node - 1
        }
    }

    fn node(&self) -> u32 {
        self.rank() / self.per_node
    }

    fn name(&self) -> String {
        format!(
            "{} nodes × TP{} per node, rank {} (node {}) {}",
            self.nnodes,
            self.per_node,
            self.rank(),
            self.node(),
            self.mode
        )
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for nnodes in [2, 4] {
        for per_node in [1, 2, 4] {
            for on_leader in [true, false] {
                for mode in ["stop", "sleep", "spin"] {
                    out.push(Case {
                        nnodes,
                        per_node,
                        on_leader,
                        mode,
                    });
                }
            }
        }
    }
    out
}

struct Row {
    case: Case,
    /// (seconds after the fault, rank, node, reasons) of the leader's first named bundle.
    named: Option<(f64, u64, u64, String)>,
    /// Bundles each node wrote for the deployment.
    bundles: Vec<usize>,
    why: Option<String>,
}

fn run(c: &Case) -> Row {
    // Late enough that every node's agent watches before the fault, as in a fleet.
    let fault = format!("rank={},after=20,mode={},at=in_step", c.rank(), c.mode);
    let d = SimDeployment::start(c.nnodes, c.per_node, &["--fault", &fault]);
    let m = d.leader_named(Duration::from_secs(45));
    let fault_at = d.fault_at();
    // Give the other nodes' agents a moment to write theirs under the same id.
    std::thread::sleep(Duration::from_secs(3));
    let mut bundles = vec![0; c.nnodes as usize];
    for (k, _, _) in d.bundles() {
        bundles[k as usize] += 1;
    }
    let named = match (&m, fault_at) {
        (Some(m), Some(at)) => suspect(m, at),
        _ => None,
    };
    let why = match &named {
        None => Some(format!("the leader's agent named nobody\n{}", d.logs())),
        Some((_, rank, node, _))
            if *rank != u64::from(c.rank()) || *node != u64::from(c.node()) =>
        {
            Some(format!("named rank {rank} on node {node}"))
        }
        Some(_) => None,
    };
    Row {
        case: c.clone(),
        named,
        bundles,
        why,
    }
}

/// The first suspect of a manifest: (seconds after the fault, rank, node, reasons).
fn suspect(m: &Value, fault_at: f64) -> Option<(f64, u64, u64, String)> {
    let opened = m["opened_at"]
        .as_str()
        .and_then(hangwatch_tests::parse_rfc3339)?;
    let s = &m["suspects"][0];
    let rank = s["rank"].as_u64()?;
    let node = s["node"].as_u64().unwrap_or(0);
    let reasons: Vec<&str> = s["reasons"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    Some((opened - fault_at, rank, node, reasons.join("+")))
}

/// Deployments across nodes under loads that are not hangs, side by side for `minutes`:
/// every bundle on any node is a false alarm.
fn quiet(minutes: f64) -> (String, usize) {
    let dur = (minutes * 60.0).round().to_string();
    let shapes: Vec<(&str, u32, u32, Vec<&str>)> = vec![
        (
            "2 nodes × TP2, long steps 4-12 s, compile pauses",
            2,
            2,
            vec![
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
            "4 nodes × TP1, bursty, long steps 8 s",
            4,
            1,
            vec![
                "--load",
                "bursty",
                "--long-step-every",
                "25",
                "--long-step-ms",
                "8000",
            ],
        ),
        (
            "2 nodes × TP1, a slow first request, rank 1 0.5 s behind",
            2,
            1,
            vec![
                "--first-step-ms",
                "15000",
                "--imbalance-rank",
                "1",
                "--imbalance-ms",
                "500",
            ],
        ),
    ];
    let deps: Vec<(&str, SimDeployment)> = shapes
        .into_iter()
        .map(|(name, nnodes, per, mut a)| {
            a.extend(["--duration", dur.as_str()]);
            (name, SimDeployment::start(nnodes, per, &a))
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(minutes * 60.0 + 2.0));
    let mut md = format!(
        "\n| quiet deployment ({minutes} min each, side by side) | bundles (any node) |\n|---|---|\n"
    );
    let mut total = 0;
    for (name, d) in &deps {
        let n = d.bundles().len();
        if n > 0 {
            eprintln!("{name}: {n} bundles\n{}", d.logs());
        }
        total += n;
        md.push_str(&format!("| {name} | {n} |\n"));
    }
    (md, total)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |n: &str| hangwatch_tests::arg_value(&args, n);
    let trials: usize = flag("--trials").and_then(|v| v.parse().ok()).unwrap_or(1);
    let parallel: usize = flag("--parallel").and_then(|v| v.parse().ok()).unwrap_or(2);
    let quiet_minutes: f64 = flag("--quiet-minutes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let only = flag("--only").unwrap_or_default();
    let all: Vec<Case> = (0..trials.max(1))
        .flat_map(|_| cases())
        .filter(|c| c.name().contains(&only))
        .collect();
    let mut rows = hangwatch_tests::run_parallel(all, parallel, |c: Case| {
        let row = run(&c);
        eprintln!("{}: {}", c.name(), row.why.as_deref().unwrap_or("ok"));
        row
    });
    rows.sort_by_key(|r| r.case.name());
    let mut md = String::from(
        "| deployment and fault | named (rank, node) | reasons | opened after fault (s) | bundles per node | result |\n|---|---|---|---|---|---|\n",
    );
    let mut times = Vec::new();
    let mut failed = 0;
    for r in &rows {
        let (named, reasons, after) = match &r.named {
            Some((t, rank, node, why)) => {
                times.push(*t);
                (format!("{rank}, {node}"), why.clone(), format!("{t:.1}"))
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        failed += usize::from(r.why.is_some());
        let per: Vec<String> = r.bundles.iter().map(usize::to_string).collect();
        let result = r.why.as_deref().map_or("ok".to_string(), |w| {
            format!("FAILED: {}", w.lines().next().unwrap_or(""))
        });
        md.push_str(&format!(
            "| {} | {named} | {reasons} | {after} | {} | {result} |\n",
            r.case.name(),
            per.join("/")
        ));
    }
    let right = rows.iter().filter(|r| r.why.is_none()).count();
    md.push_str(&format!(
        "\nright node and rank: {right} of {} ({:.0} %); opened after the fault p50 {:.1} s, p95 {:.1} s, max {:.1} s (goal p95 ≤ {GOAL_S} s)\n",
        rows.len(),
        100.0 * right as f64 / rows.len().max(1) as f64,
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        percentile(&times, 1.0)
    ));
    if percentile(&times, 0.95) > GOAL_S {
        failed += 1;
    }
    if quiet_minutes > 0.0 {
        let (table, n) = quiet(quiet_minutes);
        md.push_str(&table);
        failed += usize::from(n > 0);
    }
    print!("{md}");
    if let Some(path) = flag("--out") {
        if let Err(e) = std::fs::write(&path, &md) {
            eprintln!("cannot write {path}: {e}");
        }
    }
    println!("{right} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
