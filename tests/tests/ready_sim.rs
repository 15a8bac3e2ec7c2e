//! Readiness for load balancers (`GET /engines/{id}/ready`): 503 within seconds of a
//! hang, 200 again soon after it ends, and 200 throughout a long step and a compile
//! pause — slow is not hung.

use hangwatch_tests::{http_get, now_s, signal, wait_for, watched_sim};
use std::time::Duration;

fn ready(listen: &str, engine: &str) -> Option<u16> {
    http_get(listen, &format!("/engines/{engine}/ready")).map(|(c, _)| c)
}

#[test]
fn a_hung_engine_is_unready_in_seconds_and_ready_again_after() {
    let (agent, sim) = watched_sim(
        &[],
        &[
            "--tp",
            "2",
            "--fault",
            "rank=1,after=6,mode=stop,at=in_step",
        ],
        &[],
    );
    let engine = sim.engine_id();
    let up = wait_for(Duration::from_secs(20), || {
        (ready(&agent.listen, &engine) == Some(200)).then_some(())
    });
    assert!(up.is_some(), "never ready:\n{}", agent.log_text());
    let fault = sim
        .wait_event("fault", Duration::from_secs(30))
        .expect("fault");
    let fault_at = fault["at"].as_f64().unwrap_or(0.0);
    let unready = wait_for(Duration::from_secs(15), || {
        (ready(&agent.listen, &engine) == Some(503)).then(now_s)
    });
    let Some(at) = unready else {
        panic!("still ready:\n{}", agent.log_text());
    };
    println!("503 {:.1} s after the fault", at - fault_at);
    assert!(at - fault_at <= 6.0, "{:.1} s", at - fault_at);
    let (_, body) = http_get(&agent.listen, &format!("/engines/{engine}/ready")).expect("body");
    assert!(body.contains("\"state\":\"stalled\""), "{body}");
    assert!(body.contains("\"incident\":\""), "an incident id: {body}");
    let resumed = now_s();
    signal(sim.worker_pids()[1], libc::SIGCONT);
    let back = wait_for(Duration::from_secs(10), || {
        (ready(&agent.listen, &engine) == Some(200)).then(now_s)
    });
    let Some(back) = back else {
        panic!("not ready again:\n{}", agent.log_text());
    };
    println!("200 again {:.1} s after SIGCONT", back - resumed);
    assert!(back - resumed <= 3.0, "{:.1} s", back - resumed);
    let m = agent.metrics();
    assert!(m.contains("hangwatch_engine_ready{"), "{m}");
    assert_eq!(ready(&agent.listen, "vllm-none-such"), Some(404));
}

#[test]
fn a_long_step_and_a_compile_pause_stay_ready() {
    let (agent, sim) = watched_sim(
        &[],
        &[
            "--tp",
            "2",
            "--long-step-every",
            "12",
            "--long-step-ms",
            "60000",
            "--compile-every",
            "80",
            "--compile-ms",
            "8000",
        ],
        &[],
    );
    let engine = sim.engine_id();
    let up = wait_for(Duration::from_secs(20), || {
        (ready(&agent.listen, &engine) == Some(200)).then_some(())
    });
    assert!(up.is_some(), "never ready:\n{}", agent.log_text());
    let until = now_s() + 85.0;
    let mut looks = 0;
    while now_s() < until {
        let c = ready(&agent.listen, &engine);
        assert_eq!(
            c,
            Some(200),
            "unready during a long step:\n{}",
            agent.log_text()
        );
        looks += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let long = agent.log_text().contains(" busy: ");
    println!("{looks} looks, all 200; a long step seen: {long}");
    assert!(long, "the 60 s step never showed:\n{}", agent.log_text());
}
