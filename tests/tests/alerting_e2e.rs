//! The alerting path end to end, with the real servers an operator runs: Debian's
//! Prometheus (2.42) scrapes the agent watching the simulator and evaluates the
//! repository's rules; it routes `HangwatchRankStuck` to Debian's Alertmanager (0.25),
//! which delivers to a local webhook receiver; the agent's own `json` and
//! `alertmanager` notifications go to the same places. The receiver is down when the
//! fault happens and comes back 20 s later. Then the stopped rank is continued and
//! `resolved` arrives on every path. The Grafana dashboard's queries run against the
//! same Prometheus.

use hangwatch_tests::receiver::{HookReceiver, Received};
use hangwatch_tests::servers::{prom_query as query, Server};
use hangwatch_tests::{free_port, metric, repo_root, signal, wait_for, Agent, Sim};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

fn am_alerts(got: &[Received], status: &str, alertname: &str) -> usize {
    got.iter()
        .flat_map(|r| r.body["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["status"] == status && a["labels"]["alertname"] == alertname)
        .count()
}

fn configs(dir: &Path, agent: &str, am_port: u16, hook_port: u16) {
    let rules = repo_root().join("deploy/prometheus/hangwatch.rules.yml");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [\"{}\"]\n\
             alerting: {{alertmanagers: [{{static_configs: [{{targets: [\"127.0.0.1:{am_port}\"]}}]}}]}}\n\
             scrape_configs: [{{job_name: hangwatch, static_configs: [{{targets: [\"{agent}\"]}}]}}]\n",
            rules.display()
        ),
    )
    .expect("prometheus.yml");
    std::fs::write(
        dir.join("alertmanager.yml"),
        format!(
            "route: {{receiver: hook, group_by: [alertname, engine, source], group_wait: 1s, group_interval: 1s, repeat_interval: 1h}}\n\
             receivers: [{{name: hook, webhook_configs: [{{url: \"http://127.0.0.1:{hook_port}/am-webhook\", send_resolved: true}}]}}]\n"
        ),
    )
    .expect("alertmanager.yml");
}

fn agent_config(dir: &Path, am_port: u16, hook_port: u16) -> String {
    let path = dir.join("hangwatch.toml");
    std::fs::write(
        &path,
        format!(
            "[alerts]\nqueue_dir = \"{}\"\nretry_max = \"2s\"\nrepeat_every = \"5s\"\n\n\
             [[alerts.webhooks]]\nname = \"hook\"\nurl = \"http://127.0.0.1:{hook_port}/hook\"\n\n\
             [[alerts.webhooks]]\nname = \"am\"\nurl = \"http://127.0.0.1:{am_port}\"\nformat = \"alertmanager\"\n",
            dir.join("queue").display()
        ),
    )
    .expect("config");
    path.display().to_string()
}

#[test]
fn prometheus_alertmanager_and_the_agent_page_for_a_stopped_rank_and_resolve() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let (prom_port, am_port, hook_port, sim_port) =
        (free_port(), free_port(), free_port(), free_port());
    let cfg = agent_config(d, am_port, hook_port);
    let agent = Agent::watching(&[&format!("vllm-{sim_port}")], &["--config", &cfg]);
    configs(d, &agent.listen, am_port, hook_port);
    let am_addr = format!("127.0.0.1:{am_port}");
    let prom = format!("127.0.0.1:{prom_port}");
    let am = Server::alertmanager(d, &am_addr);
    let prometheus = Server::prometheus(d, &prom);
    am.wait_ready(&am_addr);
    prometheus.wait_ready(&prom);
    let sim = Sim::start_on(sim_port, &["--tp", "2", "--load", "steady"], &[]);
    let engine = sim.engine_id();
    wait_for(Duration::from_secs(60), || {
        let r = query(
            &prom,
            &format!("hangwatch_engine_state{{engine=\"{engine}\",state=\"busy\"}} == 1"),
        )
        .ok()?;
        (!r.is_empty()).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "Prometheus never saw the engine busy:\n{}",
            agent.log_text()
        )
    });

    let rank1 = sim.worker_pids()[1];
    signal(rank1, libc::SIGSTOP);
    let fault = Instant::now();
    // Prometheus fires the rule while the receiver is down.
    let fired = wait_for(Duration::from_secs(30), || {
        let r = query(
            &prom,
            "ALERTS{alertname=\"HangwatchRankStuck\",alertstate=\"firing\"}",
        )
        .ok()?;
        r.iter()
            .find(|a| a["metric"]["engine"] == engine.as_str())
            .cloned()
    })
    .unwrap_or_else(|| panic!("HangwatchRankStuck never fired:\n{}", agent.log_text()));
    assert_eq!(fired["metric"]["rank"], "1", "{fired}");
    println!(
        "rule fired {:.1} s after the fault",
        fault.elapsed().as_secs_f64()
    );
    std::thread::sleep((fault + Duration::from_secs(20)).saturating_duration_since(Instant::now()));
    let hook = HookReceiver::start(hook_port);
    let paged = wait_for(Duration::from_secs(60), || {
        let am = hook.accepted("/am-webhook");
        let from_rules = am.iter().any(|r| {
            r.body["alerts"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| x["labels"]["job"] == "hangwatch" && x["status"] == "firing")
            })
        });
        let from_agent = am.iter().any(|r| {
            r.body["alerts"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| x["labels"]["source"] == "hangwatch" && x["status"] == "firing")
            })
        });
        let json = hook
            .accepted("/hook")
            .iter()
            .any(|r| r.body["event"] == "opened");
        (from_rules && from_agent && json).then_some(())
    });
    assert!(
        paged.is_some(),
        "not paged on every path: {:?}\n{}",
        hook.got(""),
        agent.log_text()
    );
    println!(
        "paged on every path {:.1} s after the fault",
        fault.elapsed().as_secs_f64()
    );

    signal(rank1, libc::SIGCONT);
    let resolved = wait_for(Duration::from_secs(90), || {
        let am = hook.accepted("/am-webhook");
        let json = hook
            .accepted("/hook")
            .iter()
            .any(|r| r.body["event"] == "resolved");
        let rules = am.iter().any(|r| {
            r.body["status"] == "resolved" && r.body["commonLabels"]["job"] == "hangwatch"
        });
        let agent = am.iter().any(|r| {
            r.body["status"] == "resolved" && r.body["commonLabels"]["source"] == "hangwatch"
        });
        (json && rules && agent).then_some(())
    });
    assert!(
        resolved.is_some(),
        "resolved not on every path: {:?}\n{}",
        hook.got(""),
        agent.log_text()
    );
    let am = hook.accepted("/am-webhook");
    assert!(am_alerts(&am, "resolved", "HangwatchRankStuck") >= 2);
    let json: Vec<String> = hook
        .accepted("/hook")
        .iter()
        .map(|r| r.body["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        json.iter().filter(|e| *e == "opened").count(),
        1,
        "opened once: {json:?}"
    );
    assert_eq!(
        json.iter().filter(|e| *e == "resolved").count(),
        1,
        "resolved once: {json:?}"
    );
    let m = agent.metrics();
    assert_eq!(
        metric(
            &m,
            "hangwatch_notification_queue_depth",
            &[("receiver", "hook")]
        ),
        Some(0.0)
    );
    dashboard_queries_run(&prom);
}

/// Every query of the Grafana dashboard is valid PromQL on this Prometheus, and the
/// panels about engines and the agent have data.
fn dashboard_queries_run(prom: &str) {
    let text = std::fs::read_to_string(repo_root().join("deploy/grafana/hangwatch.json"))
        .expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut with_data = 0;
    let mut total = 0;
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let q = t["expr"]
                .as_str()
                .expect("expr")
                .replace("$instance", ".*")
                .replace("$engine", ".*");
            let r = query(prom, &q).unwrap_or_else(|e| panic!("panel {}: {q}: {e}", p["title"]));
            total += 1;
            with_data += usize::from(!r.is_empty());
        }
    }
    println!("dashboard: {total} queries valid, {with_data} with data");
    for must in [
        "Engines by state",
        "Rank lag",
        "Collector health",
        "Agent tick",
        "Notifications",
    ] {
        let p = dash["panels"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["title"] == must))
            .expect(must);
        let q = p["targets"][0]["expr"]
            .as_str()
            .unwrap_or("")
            .replace("$instance", ".*")
            .replace("$engine", ".*");
        assert!(
            !query(prom, &q).unwrap_or_default().is_empty(),
            "{must}: no data for {q}"
        );
    }
}
