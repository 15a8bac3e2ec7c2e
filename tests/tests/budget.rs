//! The tick keeps its pace when engines do not answer: eight engines whose `/metrics`
//! takes the request and never replies cost the tick about one scrape's deadline, not
//! eight (they are scraped side by side, under one budget).

use hangwatch_tests::{free_port, metric, wait_for, Agent, Sim};
use std::time::{Duration, Instant};

#[test]
fn eight_silent_metrics_endpoints_keep_the_tick_under_two_seconds() {
    let ports: Vec<u16> = (0..8).map(|_| free_port()).collect();
    let ids: Vec<String> = ports.iter().map(|p| format!("vllm-{p}")).collect();
    let patterns: Vec<&str> = ids.iter().map(String::as_str).collect();
    let agent = Agent::watching(&patterns, &[]);
    let _sims: Vec<Sim> = ports
        .iter()
        .map(|p| {
            Sim::start_on(
                *p,
                &["--tp", "1", "--load", "idle", "--silent-metrics"],
                &[],
            )
        })
        .collect();
    let all = wait_for(Duration::from_secs(30), || {
        let n = metric(&agent.metrics(), "hangwatch_engines", &[])?;
        (n >= 8.0).then_some(())
    });
    assert!(all.is_some(), "{}", agent.metrics());
    let until = Instant::now() + Duration::from_secs(10);
    let mut max: f64 = 0.0;
    while Instant::now() < until {
        if let Some(t) = metric(&agent.metrics(), "hangwatch_tick_duration_seconds", &[]) {
            max = max.max(t);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("longest tick beside eight silent /metrics: {max:.2} s");
    assert!(max > 0.5, "the scrapes were not tried: {max}");
    assert!(max < 2.0, "tick {max:.2} s\n{}", agent.log_text());
}
