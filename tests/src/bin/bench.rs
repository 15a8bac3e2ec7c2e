//! Side-by-side benchmarks (`scripts/bench.sh`): hangwatch against what a user would run
//! instead, on the same engines at the same time, and hangwatch's own costs.
//!
//! 1. Detection: each fault is watched at once by hangwatch, by vLLM itself (its ring
//!    warning and its execute timeout) and by the best Prometheus-only alert on vLLM's
//!    own metrics (a real Prometheus scraping the simulator).
//! 2. Polling py-spy the naive way (a blocking dump of every rank every 5 s) against
//!    hangwatch watching the same healthy engine.
//! 3. Overhead with 1, 4 and 8 engines of TP=8: CPU, peak RSS, tick, `/metrics`, a
//!    stack round of 9 processes, a bundle; log parsing throughput.
//! 4. False alarms over long steps, compile pauses and bursty load.
//!
//! ```text
//! target/release/hangwatch-bench [--quick] [--out FILE.md]
//! ```

use hangwatch_tests::percentile;
use hangwatch_tests::servers::{prom_query, Server};
use hangwatch_tests::{
    detect, free_port, hangwatch_bin, http_call, http_get, metric, now_s, wait_for, Agent, Sim,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// vLLM's execute timeout in the detection runs (its default is 300 s): long enough for
/// the Prometheus alert to fire before the engine dies, short enough to run many trials.
const TIMEOUT_S: u32 = 120;
/// The fault comes this long after the engine starts (Prometheus's rate window fills).
const FAULT_AFTER_S: u32 = 40;

fn stats(v: &[f64]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    format!(
        "{:.1} / {:.1} / {:.1}",
        percentile(v, 0.5),
        percentile(v, 0.95),
        percentile(v, 1.0)
    )
}

fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn hwm_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The best alert a user can write on vLLM's own metrics without hangwatch: work in
/// flight and no token produced, held long enough (`for: 60s` over a 30 s rate) to stay
/// quiet on long steps of up to a minute. It cannot say which rank.
const PROM_RULE: &str = r#"groups:
  - name: vllm-only
    rules:
      - alert: VllmNoProgress
        expr: |
          sum by (instance) (vllm:num_requests_running) > 0
            and sum by (instance) (rate(vllm:generation_tokens_total[30s])) == 0
        for: 60s
"#;

fn prometheus(dir: &Path, targets: &[u16]) -> (Server, String) {
    let port = free_port();
    std::fs::write(dir.join("vllm-only.rules.yml"), PROM_RULE).expect("rules");
    let list: Vec<String> = targets
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [\"{}\"]\nscrape_configs: [{{job_name: vllm, static_configs: [{{targets: [{}]}}]}}]\n",
            dir.join("vllm-only.rules.yml").display(),
            list.join(", ")
        ),
    )
    .expect("prometheus.yml");
    let addr = format!("127.0.0.1:{port}");
    let s = Server::prometheus(dir, &addr);
    s.wait_ready(&addr);
    (s, addr)
}

fn prom_firing(prom: &str, port: u16) -> bool {
    let q = format!("ALERTS{{alertname=\"VllmNoProgress\",alertstate=\"firing\",instance=\"127.0.0.1:{port}\"}}");
    prom_query(prom, &q).is_ok_and(|r| !r.is_empty())
}

struct Trial {
    cell: String,
    hw_suspect: Option<f64>,
    hw_incident: Option<f64>,
    right_rank: bool,
    vllm_warning: Option<f64>,
    vllm_death: Option<f64>,
    prom_fired: Option<f64>,
}

/// One fault watched by all three; times in seconds after the fault.
fn trial(agent: &Agent, sim: Sim, prom: &str, cell: &str, rank: u64) -> Trial {
    let fault = sim
        .wait_event("fault", Duration::from_secs(120))
        .and_then(|f| f["at"].as_f64());
    let d = detect(agent, &sim, Duration::from_secs(30)).ok();
    let fault_at = fault.unwrap_or_else(now_s);
    let mut t = Trial {
        cell: cell.to_string(),
        hw_suspect: d.as_ref().and_then(|d| d.suspected_after),
        hw_incident: d.as_ref().map(|d| d.opened_after),
        right_rank: d.as_ref().is_some_and(|d| d.suspects == vec![rank]),
        vllm_warning: None,
        vllm_death: None,
        prom_fired: None,
    };
    let end = Instant::now() + Duration::from_secs(u64::from(TIMEOUT_S) + 40);
    let log = sim.log.clone();
    while Instant::now() < end && (t.vllm_death.is_none() || t.prom_fired.is_none()) {
        let now = now_s() - fault_at;
        if t.vllm_warning.is_none()
            && std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("No available shared memory broadcast block"))
        {
            t.vllm_warning = Some(now);
        }
        if t.prom_fired.is_none() && prom_firing(prom, sim.port) {
            t.prom_fired = Some(now);
        }
        if t.vllm_death.is_none() {
            t.vllm_death = sim
                .event("dead")
                .and_then(|e| e["at"].as_f64())
                .map(|a| a - fault_at);
        }
        if t.vllm_death.is_some() && t.vllm_death.unwrap_or(0.0) + 5.0 < now {
            break; // the engine is gone: its metrics are gone with it, no alert can come
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    t
}

fn detection(trials: usize, parallel: usize) -> (String, String) {
    let cells: [(&str, u32, &str); 2] = [
        ("TP=2, rank 1 stopped in a step", 2, "stop"),
        ("TP=4, rank 3 hangs in Python in a step", 4, "sleep"),
    ];
    let mut jobs: Vec<(String, u32, &str, u16)> = Vec::new();
    for (name, tp, mode) in cells {
        for _ in 0..trials {
            jobs.push((name.to_string(), tp, mode, free_port()));
        }
    }
    let dir = tempfile::tempdir().expect("tmp");
    let ports: Vec<u16> = jobs.iter().map(|j| j.3).collect();
    let (_prom, prom) = prometheus(dir.path(), &ports);
    let patterns: Vec<String> = ports.iter().map(|p| format!("vllm-{p}")).collect();
    let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let agent = std::sync::Arc::new(Agent::watching(&refs, &[]));
    let mut results: Vec<Trial> = Vec::new();
    for chunk in jobs.chunks(parallel.max(1)) {
        let handles: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|(name, tp, mode, port)| {
                let (agent, prom) = (agent.clone(), prom.clone());
                std::thread::spawn(move || {
                    let fault = format!(
                        "rank={},after={FAULT_AFTER_S},mode={mode},at=in_step",
                        tp - 1
                    );
                    let env = [
                        ("VLLM_RINGBUFFER_WARNING_INTERVAL", "60".to_string()),
                        ("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", TIMEOUT_S.to_string()),
                    ];
                    let env: Vec<(&str, &str)> =
                        env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let sim = Sim::start_on(
                        port,
                        &[
                            "--tp",
                            &tp.to_string(),
                            "--load",
                            "steady",
                            "--fault",
                            &fault,
                        ],
                        &env,
                    );
                    trial(&agent, sim, &prom, &name, u64::from(tp - 1))
                })
            })
            .collect();
        for h in handles {
            if let Ok(t) = h.join() {
                eprintln!("detection: {} → hangwatch {:?} s, vLLM warning {:?} s, death {:?} s, Prometheus {:?} s", t.cell, t.hw_incident, t.vllm_warning, t.vllm_death, t.prom_fired);
                results.push(t);
            }
        }
    }
    let mut md = String::from("| fault | trials | hangwatch: suspect p50 / p95 / max (s) | hangwatch: incident p50 / p95 / max (s) | right rank | vLLM: first ring warning (s) | vLLM: engine dead (s) | Prometheus-only alert (s) | Prometheus names the rank |\n|---|---|---|---|---|---|---|---|---|\n");
    let mut headline = String::new();
    for (name, _, _) in cells {
        let rows: Vec<&Trial> = results.iter().filter(|t| t.cell == name).collect();
        let col = |f: &dyn Fn(&Trial) -> Option<f64>| -> (String, usize) {
            let v: Vec<f64> = rows.iter().filter_map(|t| f(t)).collect();
            (stats(&v), v.len())
        };
        let (sus, _) = col(&|t| t.hw_suspect);
        let (inc, n_inc) = col(&|t| t.hw_incident);
        let (warn, _) = col(&|t| t.vllm_warning);
        let (dead, _) = col(&|t| t.vllm_death);
        let (prom, n_prom) = col(&|t| t.prom_fired);
        let right = rows.iter().filter(|t| t.right_rank).count();
        md.push_str(&format!(
            "| {name} | {} | {sus} | {inc} ({n_inc} opened) | {right}/{} | {warn} | {dead} | {prom} ({n_prom} fired) | never (labels: instance only) |\n",
            rows.len(),
            rows.len()
        ));
        if headline.is_empty() {
            headline = format!("{name}: hangwatch incident {inc} s (p50/p95/max), vLLM warning {warn} s, death {dead} s, Prometheus-only {prom} s");
        }
    }
    md.push_str(&format!(
        "\nvLLM ran with its default ring warning interval (60 s) and its execute timeout set to {TIMEOUT_S} s (default 300 s: the death column is then 300 s later at the default, the warning column unchanged). The Prometheus rule:\n\n```yaml\n{PROM_RULE}```\n"
    ));
    (md, headline)
}

/// Naive polling: `py-spy dump` (blocking: it pauses each process while it reads it) of
/// every process of a TP=8 engine every 5 s, against hangwatch watching the same engine.
fn polling(seconds: u64) -> (String, String) {
    let port = free_port();
    let sim = Sim::start_on(port, &["--tp", "8", "--load", "steady"], &[]);
    std::thread::sleep(Duration::from_secs(5));
    let mut pids = vec![sim.core_pid()];
    pids.extend(sim.worker_pids());
    let mut pauses = Vec::new();
    let mut spy_cpu = 0.0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        let round = Instant::now();
        for &p in &pids {
            let t = Instant::now();
            let mut child = match Command::new("py-spy")
                .args(["dump", "--pid", &p.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(c) => c,
                Err(e) => return (format!("py-spy not runnable: {e}\n"), String::new()),
            };
            let pid = child.id() as i32;
            let mut status = 0;
            // SAFETY: an zeroed rusage filled by wait4 for our own child.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            let _ = child.try_wait();
            spy_cpu += ru.ru_utime.tv_sec as f64
                + ru.ru_utime.tv_usec as f64 / 1e6
                + ru.ru_stime.tv_sec as f64
                + ru.ru_stime.tv_usec as f64 / 1e6;
            pauses.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        std::thread::sleep(Duration::from_secs(5).saturating_sub(round.elapsed()));
    }
    let wall = start.elapsed().as_secs_f64();
    let agent = Agent::watching(&[&format!("vllm-{port}")], &[]);
    let pid = agent.child.id();
    let c0 = cpu_seconds(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let agent_cpu = cpu_seconds(pid) - c0;
    let agent_wall = t0.elapsed().as_secs_f64();
    let dumps = agent.log_text().matches("stacks dumped").count();
    let md = format!(
        "| approach | what it costs | pauses the ranks |\n|---|---|---|\n| `py-spy dump` of all 9 processes every 5 s ({} dumps in {wall:.0} s) | {:.1} % of one core | every process, every 5 s, for {} ms (p50 / p95 / max) per dump |\n| hangwatch watching the same engine ({agent_wall:.0} s) | {:.1} % of one core (everything it does, not only stacks) | never while healthy: {dumps} stack rounds taken; when a step is late, non-blocking rounds that pause nothing |\n",
        pauses.len(),
        100.0 * spy_cpu / wall,
        stats(&pauses),
        100.0 * agent_cpu / agent_wall
    );
    let headline = format!("py-spy polling {:.1} % CPU and a {:.0} ms pause per process per 5 s; hangwatch {:.1} % CPU, no pause", 100.0 * spy_cpu / wall, percentile(&pauses, 0.5), 100.0 * agent_cpu / agent_wall);
    (md, headline)
}

/// One row of the overhead table, also written to the CSV the plot is made from.
struct Cost {
    engines: usize,
    tp: usize,
    cpu: f64,
    rss: f64,
    tick: Vec<f64>,
    render: Vec<f64>,
    round: Vec<f64>,
    bundle: Vec<f64>,
}

impl Cost {
    fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {:.1} | {:.0} | {} | {} | {} | {} |\n",
            self.engines,
            self.tp,
            self.engines * (self.tp + 1),
            self.cpu,
            self.rss,
            stats(&self.tick),
            stats(&self.render),
            stats(&self.round),
            stats(&self.bundle)
        )
    }

    fn csv(&self) -> String {
        let p50 = |v: &[f64]| percentile(v, 0.5);
        format!(
            "{},{},{},{:.2},{:.1},{:.2},{:.2},{:.2},{:.2},{:.2}\n",
            self.engines,
            self.tp,
            self.engines * (self.tp + 1),
            self.cpu,
            self.rss,
            p50(&self.tick),
            percentile(&self.tick, 0.95),
            p50(&self.render),
            p50(&self.round),
            p50(&self.bundle)
        )
    }
}

const COST_CSV_HEADER: &str = "engines,tp,processes,cpu_percent,peak_rss_mib,tick_ms_p50,tick_ms_p95,metrics_ms_p50,stack_round_ms_p50,bundle_write_ms_p50\n";

/// The agent's own costs with `n` engines of `tp` ranks.
fn overhead(n: usize, tp: usize, seconds: u64, dir: &Path) -> Cost {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let patterns: Vec<String> = ports.iter().map(|p| format!("vllm-{p}")).collect();
    let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
    std::fs::write(dir.join("token"), "bench-token").expect("token");
    let cfg = dir.join(format!("overhead-{n}x{tp}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "log_format = \"json\"\n[http]\ncapture_token_file = \"{}\"\ncapture_min_interval = \"1s\"\n",
            dir.join("token").display()
        ),
    )
    .expect("cfg");
    let agent = Agent::watching(&refs, &["--config", &cfg.display().to_string()]);
    let sims: Vec<Sim> = ports
        .iter()
        .map(|p| Sim::start_on(*p, &["--tp", &tp.to_string(), "--load", "bursty"], &[]))
        .collect();
    wait_for(Duration::from_secs(120), || {
        let m = agent.metrics();
        (metric(&m, "hangwatch_engines", &[]) == Some(n as f64)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    let pid = agent.child.id();
    let c0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut ticks = Vec::new();
    let mut renders = Vec::new();
    while t0.elapsed() < Duration::from_secs(seconds) {
        let r = Instant::now();
        let m = http_get(&agent.listen, "/metrics")
            .map(|x| x.1)
            .unwrap_or_default();
        renders.push(r.elapsed().as_secs_f64() * 1000.0);
        if let Some(t) = metric(&m, "hangwatch_tick_duration_seconds", &[]) {
            ticks.push(t * 1000.0);
        }
        std::thread::sleep(Duration::from_millis(1000));
    }
    let cpu = 100.0 * (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();
    // Stack rounds and bundles of single engines, through POST /capture (three of
    // them, on the engines in turn; the per-engine wait is set to 1 s for this).
    for i in 0..3 {
        let s = &sims[i % sims.len()];
        let _ = http_call(
            &agent.listen,
            "POST",
            &format!("/capture?engine={}", s.engine_id()),
            &[("Authorization", "Bearer bench-token")],
        );
        std::thread::sleep(Duration::from_secs(4));
    }
    let (mut rounds, mut bundles) = (Vec::new(), Vec::new());
    for l in agent.log_text().lines() {
        // The agent's JSON lines carry their fields at the top level.
        let f: Value = serde_json::from_str(l).unwrap_or(Value::Null);
        if f["message"] == "stacks dumped" && f["reason"] == "capture" {
            rounds.extend(f["round_ms"].as_f64());
        }
        if f["message"] == "bundle written" {
            bundles.extend(f["write_ms"].as_f64());
        }
    }
    Cost {
        engines: n,
        tp,
        cpu,
        rss: hwm_mib(pid),
        tick: ticks,
        render: renders,
        round: rounds,
        bundle: bundles,
    }
}

/// Runs the release `detection-matrix` with `args`, its table written to `out`: how
/// it ended, and the table.
fn detection_matrix(args: &[&str], out: &Path) -> (std::io::Result<std::process::Output>, String) {
    let o = Command::new(hangwatch_bin().with_file_name("detection-matrix"))
        .args(args)
        .arg("--out")
        .arg(out)
        .output();
    (o, std::fs::read_to_string(out).unwrap_or_default())
}

fn false_alarms(minutes: f64, out: &Path) -> (String, String) {
    let (o, text) = detection_matrix(
        &["--no-faults", "--false-alarm-minutes", &minutes.to_string()],
        out,
    );
    let incidents: usize = text
        .lines()
        .filter(|l| l.starts_with("| ") && l.split('|').count() >= 5)
        .filter_map(|l| l.split('|').nth(4)?.trim().parse::<usize>().ok())
        .sum();
    let engines = text
        .lines()
        .filter(|l| {
            l.starts_with("| ")
                && l.split('|')
                    .nth(4)
                    .is_some_and(|c| c.trim().parse::<usize>().is_ok())
        })
        .count();
    let hours = engines as f64 * minutes / 60.0;
    let ok = o.is_ok_and(|o| o.status.success() || !text.is_empty());
    let md = format!(
        "{engines} engines at once for {minutes} min each ({hours:.2} engine-hours of wall-clock time: the simulator has no faster clock; TP 2/4/8 × long steps of 15/30/60 s, a 10 s compile pause every 100 s, the last rank 1 s behind in every step, bursty load, a 12 s first request): **{incidents} incidents**, {:.1} per engine-hour{}\n\n{}",
        incidents as f64 / hours.max(1e-9),
        if ok { "" } else { " (the run failed)" },
        text
    );
    (
        md,
        format!("{incidents} false alarms in {hours:.2} engine-hours"),
    )
}

/// The fault matrix of the goals (every fault class at TP 2, 4 and 8) with the release
/// agent: its per-class table and its pass line.
fn matrix(trials: usize, out: &Path) -> (String, String) {
    let (o, text) = detection_matrix(
        &[
            "--goals",
            "--trials",
            &trials.to_string(),
            "--parallel",
            "3",
        ],
        out,
    );
    let stdout = o
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let pass = stdout
        .lines()
        .rev()
        .find(|l| l.ends_with(" failed"))
        .unwrap_or("the matrix did not finish")
        .to_string();
    let table: String = text
        .lines()
        .skip_while(|l| !l.starts_with("| goal class"))
        .take_while(|l| l.starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect();
    let median = text
        .lines()
        .find(|l| l.starts_with("opened after the fault"))
        .unwrap_or("")
        .to_string();
    (
        format!("`detection-matrix --goals --trials {trials} --parallel 3` (three faults at once on the 2 cores; times from the simulator's fault event): **{pass}**; {median}\n\n{table}"),
        format!("fault matrix {pass}"),
    )
}

/// What the run is asked to do.
struct Plan {
    quick: bool,
    /// `--only a,b`: just these sections (for trying the bench itself).
    only: Vec<String>,
}

impl Plan {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

/// The results file as it grows, and the summary line.
struct Report {
    md: String,
    summary: Vec<String>,
    out: Option<PathBuf>,
}

impl Report {
    /// Adds a section and writes the file at once: a run cut short keeps what it measured.
    fn section(&mut self, title: &str, (body, line): (String, String)) {
        self.md.push_str(&format!("## {title}\n\n{body}\n"));
        if !line.is_empty() {
            self.summary.push(line);
        }
        self.save();
    }

    fn save(&self) {
        if let Some(p) = &self.out {
            if let Err(e) = std::fs::write(p, &self.md) {
                eprintln!("bench: cannot write {}: {e}", p.display());
            }
        }
    }
}

/// hangwatch's costs against the number of ranks (one engine of TP 2, 4, 8) and of
/// engines (1, 4, 8 of TP 8), then log parsing; the rows also go to `csv` for the plot.
fn overhead_section(over_s: u64, quick: bool, csv: Option<&Path>, dir: &Path) -> (String, String) {
    let mut md = String::from("| engines | TP | processes | agent CPU (% of one core) | peak RSS (MiB) | tick (ms) p50 / p95 / max | `/metrics` (ms) p50 / p95 / max | stack round of one engine (ms) p50 / p95 / max | bundle write (ms) p50 / p95 / max |\n|---|---|---|---|---|---|---|---|---|\n");
    let mut rows = String::from(COST_CSV_HEADER);
    let mut line = String::new();
    // The quick run keeps its 15 minutes with the ends of both axes.
    let shapes: &[(usize, usize)] = if quick {
        &[(1, 2), (1, 8), (8, 8)]
    } else {
        &[(1, 2), (1, 4), (1, 8), (4, 8), (8, 8)]
    };
    for &(n, tp) in shapes {
        let c = overhead(n, tp, over_s, dir);
        md.push_str(&c.row());
        rows.push_str(&c.csv());
        line = format!("agent {:.1} % CPU, {:.0} MiB at {n}×TP{tp}", c.cpu, c.rss);
    }
    if let Some(p) = csv {
        if let Err(e) = std::fs::write(p, rows) {
            eprintln!("bench: cannot write {}: {e}", p.display());
        }
        md.push_str(&format!(
            "\nThe same rows as CSV: `{}`; plotted by `scripts/plot-bench.py` (when matplotlib is installed) as `{}`.\n",
            p.display(),
            p.with_extension("png").display()
        ));
    }
    md.push_str(&format!("\nSamples per row: CPU and peak RSS over {over_s} s (from `/proc`); tick (`hangwatch_tick_duration_seconds`) and `/metrics` (the scrape's wall time) once a second for {over_s} s; stack round and bundle write from the agent's own log lines of three `POST /capture` rounds. A stack round is the slowest process's non-blocking dump in the round (an engine's processes are read at once); a bundle write is the whole folder written and renamed into place.\n"));
    let logs = Command::new(hangwatch_bin().with_file_name("bench-logs"))
        .args([
            "--mb",
            if quick { "100" } else { "300" },
            "--follow-seconds",
            "10",
        ])
        .output();
    let logs_text = logs
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    md.push_str(&format!(
        "\nLog parsing (`bench-logs`):\n\n```\n{}\n```\n",
        logs_text.trim()
    ));
    (md, line)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |n: &str| hangwatch_tests::arg_value(&args, n);
    let plan = Plan {
        quick: args.iter().any(|a| a == "--quick"),
        only: flag("--only")
            .map(|o| o.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
    };
    let quick = plan.quick;
    let out = flag("--out").map(PathBuf::from);
    let csv = out.as_ref().map(|o| o.with_extension("csv"));
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tmp");
    let (trials, poll_s, over_s, fa_min, matrix_trials) = if quick {
        (2, 30, 20, 3.0, 0)
    } else {
        (20, 120, 60, 10.0, 2)
    };
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut r = Report {
        md: format!(
            "# Benchmarks ({})\n\nDate: {}. Machine: {cores} cores ({machine}). Command: `scripts/bench.sh{}` (release build). Engines are the project's vLLM simulator (CPU).\n\n",
            if quick { "quick" } else { "full" },
            hangwatch_tests::rfc3339_now(),
            if quick { " --quick" } else { "" }
        ),
        summary: Vec::new(),
        out,
    };
    if plan.wants("detection") {
        eprintln!("bench: detection, side by side ({trials} trials per cell)");
        r.section(
            "Detection, side by side (times after the fault)",
            detection(trials, if quick { 4 } else { 5 }),
        );
    }
    if matrix_trials > 0 && plan.wants("matrix") {
        eprintln!("bench: the fault matrix ({matrix_trials} trials per fault)");
        r.section(
            "Detection over the fault matrix (hangwatch alone)",
            matrix(matrix_trials, &dir.path().join("matrix.md")),
        );
    }
    if plan.wants("polling") {
        eprintln!("bench: polling py-spy vs hangwatch ({poll_s} s each)");
        r.section(
            "Polling py-spy the naive way vs hangwatch (one TP=8 engine, steady load)",
            polling(poll_s),
        );
    }
    if plan.wants("overhead") {
        eprintln!("bench: overhead against ranks and engines ({over_s} s each)");
        r.section(
            "Overhead and how it grows (release build, interval 1 s, bursty load)",
            overhead_section(over_s, quick, csv.as_deref(), dir.path()),
        );
    }
    if plan.wants("false-alarms") {
        eprintln!("bench: false alarms ({fa_min} min)");
        r.section(
            "False alarms",
            false_alarms(fa_min, &dir.path().join("false-alarms.md")),
        );
    }
    r.md.push_str(&format!(
        "\nTotal bench time: {:.0} s.\n",
        started.elapsed().as_secs_f64()
    ));
    r.save();
    if r.out.is_none() {
        println!("{}", r.md);
    }
    println!("bench summary: {}", r.summary.join("; "));
}
