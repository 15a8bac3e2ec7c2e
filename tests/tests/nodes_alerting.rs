//! Alertmanager groups one multi-node fault into one notification: every node's agent
//! sends its incident to Debian's Alertmanager with the `deployment` label, and a route
//! grouped by `deployment` delivers them together to one webhook.

use hangwatch_tests::nodes::SimDeployment;
use hangwatch_tests::receiver::HookReceiver;
use hangwatch_tests::servers::Server;
use hangwatch_tests::{free_port, wait_for};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

#[test]
fn one_multi_node_fault_is_one_alertmanager_notification() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let (am_port, hook_port) = (free_port(), free_port());
    std::fs::write(
        d.join("alertmanager.yml"),
        format!(
            "route: {{receiver: hook, group_by: [deployment], group_wait: 10s, group_interval: 5m, repeat_interval: 1h}}\n\
             receivers: [{{name: hook, webhook_configs: [{{url: \"http://127.0.0.1:{hook_port}/am\", send_resolved: true}}]}}]\n"
        ),
    )
    .expect("alertmanager.yml");
    let am_addr = format!("127.0.0.1:{am_port}");
    let am = Server::alertmanager(d, &am_addr);
    am.wait_ready(&am_addr);
    let hook = HookReceiver::start(hook_port);
    let queue = d.to_path_buf();
    let dep = SimDeployment::start_with(
        2,
        2,
        &["--fault", "rank=3,after=12,mode=sleep,at=in_step"],
        |k| {
            format!(
                "[alerts]\nqueue_dir = \"{}\"\n\n[[alerts.webhooks]]\nname = \"am\"\nurl = \"http://{am_addr}\"\nformat = \"alertmanager\"\n",
                queue.join(format!("queue{k}")).display()
            )
        },
    );
    let deployment = dep.deployment();
    let ours = |r: &Value| r["groupLabels"]["deployment"] == deployment.as_str();
    let first = wait_for(Duration::from_secs(60), || {
        hook.accepted("/am")
            .into_iter()
            .find(|r| ours(&r.body) && r.body["status"] == "firing")
    });
    let Some(first) = first else {
        panic!(
            "no notification for {deployment}: {:?}\n{}",
            hook.got(""),
            dep.logs()
        );
    };
    // Whatever else the agents send while the fault lasts goes into that group.
    std::thread::sleep(Duration::from_secs(15));
    let firing: Vec<Value> = hook
        .accepted("/am")
        .into_iter()
        .map(|r| r.body)
        .filter(|b| ours(b) && b["status"] == "firing")
        .collect();
    let nodes: BTreeSet<String> = first.body["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["labels"]["node_rank"].as_str().map(String::from))
        .collect();
    println!(
        "{} firing notification(s) for {deployment}; the first holds {} alerts from nodes {nodes:?}",
        firing.len(),
        first.body["alerts"].as_array().map_or(0, Vec::len)
    );
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(
        nodes,
        BTreeSet::from(["0".to_string(), "1".to_string()]),
        "{}\n{}",
        first.body,
        dep.logs()
    );
}
