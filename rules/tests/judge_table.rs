//! The judge and the incident life cycle over tables of synthetic snapshots.

use hangwatch_rules::incident::Outcome;
use hangwatch_rules::stacks::{Frame, StackDump, ThreadStack};
use hangwatch_rules::{
    ChunkFlags, EngineFacts, EngineState, Executor, IncidentEvent, IncidentTracker, Judge,
    LeaderWord, ProcFacts, ProcState, RankFacts, ReasonCode, RingFacts, RingRole, Snapshot,
    Thresholds, Verdict,
};
use std::collections::BTreeMap;

const T0: i64 = 1_800_000_000_000;

fn proc(pid: u32, state: ProcState, wchan: &str) -> ProcFacts {
    ProcFacts {
        pid,
        ns_pid: None,
        state,
        wchan: Some(wchan.to_string()),
        cpu_seconds: 0.0,
        started_at_ms: T0 - 3_600_000,
    }
}

fn flags(spec: &[&str]) -> Vec<ChunkFlags> {
    spec.iter().map(|s| s.parse().expect("flags")).collect()
}

/// A TP=`tp` engine whose RPC ring has `rpc` flags; the core idles or waits.
fn engine(tp: u32, rpc: &[&str], core_wchan: &str, fingerprint: u64) -> EngineFacts {
    let ranks = (0..tp)
        .map(|r| RankFacts {
            rank: r,
            tp_rank: r,
            pp_rank: 0,
            title: format!("VLLM::Worker_TP{r}"),
            process: proc(100 + r, ProcState::Sleeping, "poll_schedule_timeout"),
        })
        .collect();
    EngineFacts {
        id: "vllm-8000".into(),
        model: Some("m".into()),
        port: Some(8000),
        api_pid: Some(9),
        api_ns_pid: None,
        api_parent_pid: None,
        api: None,
        executor: Default::default(),
        deployment: None,
        lockstep: false,
        node: None,
        peers: Vec::new(),
        links: None,
        leader: None,
        core: proc(10, ProcState::Sleeping, core_wchan),
        tp,
        pp: 1,
        dp: 1,
        dp_rank: 0,
        output_rank: 0,
        execute_timeout_seconds: 300.0,
        settings: BTreeMap::new(),
        ranks,
        rings: vec![RingFacts {
            name: "psm_00000001".into(),
            role: RingRole::Rpc,
            size: 0,
            chunk_bytes: 1 << 24,
            chunks: rpc.len() as u32,
            readers: tp,
            writer_rank: None,
            reader_ranks: (0..tp).map(Some).collect(),
            flags: Some(flags(rpc)),
            methods: BTreeMap::from([(1, "execute_model".to_string())]),
            fingerprint: Some(fingerprint),
            error: None,
        }],
        stacks: Vec::new(),
        log_events: Vec::new(),
        vllm_metrics: None,
        api_answered: None,
        nccl_ras: None,
        pod: None,
        credible: true,
    }
}

const IDLE: &str = "futex_do_wait";
const WAIT: &str = "poll_schedule_timeout.constprop.0";

fn snap(ms: i64, e: &EngineFacts) -> Snapshot {
    Snapshot {
        at_ms: T0 + ms,
        engines: vec![e.clone()],
        collectors: Vec::new(),
        late_events: Vec::new(),
        gpus: Vec::new(),
        ..Default::default()
    }
}

/// Feeds `f(second)` for `secs` seconds at 1 s ticks; returns every verdict and event.
fn run(
    judge: &mut Judge,
    tracker: &mut IncidentTracker,
    from: i64,
    secs: i64,
    f: impl Fn(i64) -> EngineFacts,
) -> (Vec<Verdict>, Vec<IncidentEvent>) {
    let mut vs = Vec::new();
    let mut evs = Vec::new();
    for s in from..from + secs {
        for v in judge.observe(&snap(s * 1000, &f(s))) {
            evs.extend(tracker.on_verdict(&v));
            vs.push(v);
        }
    }
    (vs, evs)
}

fn busy(s: i64) -> EngineFacts {
    engine(4, &["1|1111"; 10], WAIT, s as u64)
}

#[test]
fn idle_engine_is_never_an_incident() {
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    let (vs, evs) = run(&mut j, &mut t, 0, 120, |_| {
        engine(4, &["1|1111"; 10], IDLE, 7)
    });
    assert!(
        vs.iter().all(|v| v.state == EngineState::Idle),
        "{:?}",
        vs.last()
    );
    assert!(evs.is_empty());
}

#[test]
fn minority_unread_names_the_rank_suspect_at_3s_incident_at_10s() {
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    run(&mut j, &mut t, 0, 5, busy);
    let mut rpc = ["1|1111"; 10];
    rpc[1] = "1|1101";
    let (vs, evs) = run(&mut j, &mut t, 5, 12, |_| engine(4, &rpc, WAIT, 99));
    let first_stalled = vs.iter().position(|v| v.state == EngineState::Stalled);
    assert_eq!(
        first_stalled,
        Some(3),
        "{:?}",
        vs.iter().map(|v| v.state).collect::<Vec<_>>()
    );
    let v = &vs[3];
    assert_eq!(v.suspects.len(), 1);
    assert_eq!(v.suspects[0].rank, Some(2));
    assert_eq!(v.suspects[0].reasons[0].code, ReasonCode::RingUnread);
    assert!(v.suspects[0].reasons[0].detail.contains("execute_model"));
    let opened: Vec<usize> = evs
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, IncidentEvent::Opened(_)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(opened.len(), 1, "one incident, opened once");
    let IncidentEvent::Opened(inc) = &evs[opened[0]] else {
        unreachable!()
    };
    assert_eq!(inc.detected_after_seconds(), 10.0);
    assert!(!vs[9].confirmed && vs[10].confirmed);
    // Progress resumes: resolved exactly once.
    let (vs, evs) = run(&mut j, &mut t, 17, 3, busy);
    assert_ne!(vs[0].state, EngineState::Stalled);
    assert_eq!(
        evs.iter()
            .filter(|e| matches!(e, IncidentEvent::Resolved(_)))
            .count(),
        1
    );
}

#[test]
fn transient_unread_under_load_is_not_a_suspect() {
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    // A sample catches `1|10` now and then, on different chunks, while things move.
    let (vs, evs) = run(&mut j, &mut t, 0, 60, |s| {
        let mut rpc = ["1|1111"; 10];
        if s % 3 == 0 {
            rpc[(s % 10) as usize] = "1|1110";
        }
        engine(4, &rpc, WAIT, s as u64)
    });
    assert!(
        vs.iter().all(|v| v.state == EngineState::Busy),
        "{:?}",
        vs.iter().find(|v| v.state != EngineState::Busy)
    );
    assert!(evs.is_empty());
}

#[test]
fn no_reply_is_a_stall_with_culprit_unknown() {
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    run(&mut j, &mut t, 0, 5, busy);
    let (vs, evs) = run(&mut j, &mut t, 5, 12, |_| {
        engine(4, &["1|1111"; 10], WAIT, 4242)
    });
    let v = vs.last().expect("verdict");
    assert_eq!(v.state, EngineState::Stalled);
    assert!(v.culprit_unknown());
    assert_eq!(v.engine_reasons[0].code, ReasonCode::NoReply);
    assert!(v.headline().contains("culprit unknown"));
    let IncidentEvent::Opened(inc) = &evs[0] else {
        panic!("{evs:?}")
    };
    assert!(inc.suspects.is_empty());
}

#[test]
fn long_steps_teach_the_judge_and_open_no_incident() {
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    let mut all = Vec::new();
    // A minute of warm-up teaches nothing; then cycles of 22 s of fast steps and an 8 s
    // step (nothing moves, core waits, nothing says what the ranks do).
    let (_, warm) = run(&mut j, &mut t, 0, 60, busy);
    all.extend(warm);
    for cycle in 0..6 {
        let base = 60 + cycle * 30;
        let (_, e1) = run(&mut j, &mut t, base, 22, busy);
        let (vs, e2) = run(&mut j, &mut t, base + 22, 8, |_| {
            engine(4, &["1|1111"; 10], WAIT, 5)
        });
        all.extend(e1);
        all.extend(e2);
        if cycle >= 1 {
            assert!(
                vs.iter().all(|v| v.state != EngineState::Stalled),
                "cycle {cycle}: adapted thresholds"
            );
            assert!(vs[0].suspect_after_seconds >= 12.0);
        }
    }
    assert!(all.is_empty(), "no incident: {all:?}");
}

#[test]
fn a_confirmed_stall_does_not_slow_the_next_detection() {
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    run(&mut j, &mut t, 0, 5, busy);
    run(&mut j, &mut t, 5, 30, |_| {
        engine(4, &["1|1111"; 10], WAIT, 1)
    });
    run(&mut j, &mut t, 35, 5, busy);
    let (vs, _) = run(&mut j, &mut t, 40, 11, |_| {
        engine(4, &["1|1111"; 10], WAIT, 2)
    });
    assert_eq!(vs[0].suspect_after_seconds, 3.0);
    assert!(vs[10].confirmed, "confirmed after 10 s as before");
}

#[test]
fn exited_rank_opens_at_once_and_the_dead_engine_ends_it() {
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    run(&mut j, &mut t, 0, 5, busy);
    let (vs, evs) = run(&mut j, &mut t, 5, 1, |s| {
        let mut e = busy(s);
        e.ranks.remove(3);
        e
    });
    assert_eq!(vs[0].state, EngineState::Stalled);
    assert!(vs[0].confirmed);
    assert_eq!(vs[0].suspects[0].rank, Some(3));
    assert_eq!(vs[0].suspects[0].reasons[0].code, ReasonCode::ProcessExited);
    assert!(matches!(evs[0], IncidentEvent::Opened(_)));
    // The engine disappears: dead, the incident ends with its suspect.
    let vs = j.observe(&Snapshot {
        at_ms: T0 + 7_000,
        engines: Vec::new(),
        collectors: Vec::new(),
        late_events: Vec::new(),
        gpus: Vec::new(),
        ..Default::default()
    });
    assert_eq!(vs.len(), 1);
    assert_eq!(vs[0].state, EngineState::Dead);
    let evs = t.on_verdict(&vs[0]);
    let IncidentEvent::Ended(inc) = &evs[0] else {
        panic!("{evs:?}")
    };
    assert_eq!(inc.outcome, Some(Outcome::Dead));
    assert_eq!(inc.verdict, EngineState::Dead);
    assert_eq!(inc.suspects[0].rank, Some(3));
}

#[test]
fn healthy_engine_that_shuts_down_is_not_an_incident() {
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    run(&mut j, &mut t, 0, 5, busy);
    let vs = j.observe(&Snapshot {
        at_ms: T0 + 6_000,
        engines: Vec::new(),
        collectors: Vec::new(),
        late_events: Vec::new(),
        gpus: Vec::new(),
        ..Default::default()
    });
    assert_eq!(vs[0].state, EngineState::Dead);
    assert!(t.on_verdict(&vs[0]).is_empty());
}

/// vLLM stopping its workers (`[shutdown] force killing sub process`, a `systemctl stop`
/// or the end of a run) is not a crash: the ranks that exit then open nothing.
#[test]
fn ranks_killed_by_vllms_own_shutdown_are_not_an_incident() {
    use hangwatch_rules::logs::LogEventKind;
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    run(&mut j, &mut t, 0, 5, busy);
    let (vs, evs) = run(&mut j, &mut t, 5, 2, |s| {
        let mut e = busy(s);
        if s == 5 {
            let kill = LogEventKind::ShutdownKill {
                name: "VLLM::Worker_TP3".into(),
                pid: Some(e.ranks[3].process.pid),
            };
            e.log_events.push(said(&e, s, kill));
        }
        e.ranks.remove(3);
        e
    });
    assert!(evs.is_empty(), "{evs:?}");
    assert!(vs.iter().all(|v| v.suspects.is_empty()), "{vs:?}");
}

#[test]
fn stopped_rank_in_an_idle_engine_is_not_a_stall() {
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    let (vs, evs) = run(&mut j, &mut t, 0, 20, |_| {
        let mut e = engine(2, &["1|11"; 10], IDLE, 3);
        e.ranks[1].process.state = ProcState::Stopped;
        e
    });
    assert!(vs.iter().all(|v| v.state == EngineState::Idle));
    assert!(evs.is_empty());
}

#[test]
fn starting_engine_is_not_judged() {
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    // A young core that has never been idle nor served: loading for a minute.
    let (vs, evs) = run(&mut j, &mut t, 0, 60, |_| {
        let mut e = engine(2, &["1|11"; 10], WAIT, 1);
        e.core.started_at_ms = T0 - 5_000;
        e.rings[0].methods = BTreeMap::from([(0, "load_model".to_string())]);
        e
    });
    assert!(vs.iter().all(|v| v.state == EngineState::Starting));
    assert!(evs.is_empty());
}

/// A follower part (no ring) whose agent started while the deployment was busy: its
/// workers never rest, so it would look like start-up until the grace ran out; the
/// leader's agent saying the deployment serves ends that.
#[test]
fn a_busy_follower_part_is_past_start_up_once_its_leader_serves() {
    let part = |s: i64, serving: bool| {
        let mut e = engine(2, &[], WAIT, 1);
        e.executor = Executor::Follower;
        e.rings.clear();
        e.core.started_at_ms = T0 - 5_000;
        for r in &mut e.ranks {
            r.process.cpu_seconds = s as f64;
            r.process.state = ProcState::Running;
        }
        e.leader = serving.then(|| LeaderWord {
            serving: true,
            ..LeaderWord::default()
        });
        e
    };
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    let (vs, _) = run(&mut j, &mut t, 0, 5, |s| part(s, false));
    assert!(
        vs.iter().all(|v| v.state == EngineState::Starting),
        "{vs:?}"
    );
    let (vs, evs) = run(&mut j, &mut t, 5, 5, |s| part(s, true));
    assert!(vs.iter().all(|v| v.state == EngineState::Busy), "{vs:?}");
    assert!(evs.is_empty());
}

#[test]
fn replay_gives_the_same_verdicts() {
    let table: Vec<Snapshot> = (0..40)
        .map(|s| {
            let mut rpc = ["1|1111"; 10];
            if s >= 10 {
                rpc[4] = "1|0111";
            }
            snap(
                s * 1000,
                &engine(4, &rpc, WAIT, if s < 10 { s as u64 } else { 77 }),
            )
        })
        .collect();
    let judge_all = |snaps: &[Snapshot]| {
        let mut j = Judge::new(Thresholds::default());
        snaps.iter().flat_map(|s| j.observe(s)).collect::<Vec<_>>()
    };
    let live = judge_all(&table);
    let text: Vec<String> = table
        .iter()
        .map(|s| serde_json::to_string(s).expect("json"))
        .collect();
    let back: Vec<Snapshot> = text
        .iter()
        .map(|t| serde_json::from_str(t).expect("parse"))
        .collect();
    assert_eq!(live, judge_all(&back));
    assert!(live
        .iter()
        .any(|v| v.state == EngineState::Stalled && v.suspects[0].rank == Some(0)));
}

#[test]
fn a_stopped_rank_is_judged_on_base_thresholds_even_after_long_steps() {
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    run(&mut j, &mut t, 0, 65, busy);
    // One legitimate 8 s step after warm-up: thresholds for ring lags adapt to 12 s / 19 s.
    run(&mut j, &mut t, 65, 8, |_| {
        engine(4, &["1|1111"; 10], WAIT, 5)
    });
    run(&mut j, &mut t, 73, 5, busy);
    let (vs, _) = run(&mut j, &mut t, 78, 11, |_| {
        let mut e = engine(4, &["1|1111"; 10], WAIT, 6);
        e.ranks[1].process.state = ProcState::Stopped;
        e
    });
    assert!(
        vs[0].suspect_after_seconds >= 12.0,
        "ring thresholds adapted"
    );
    assert_ne!(vs[2].state, EngineState::Stalled);
    assert_eq!(
        vs[3].state,
        EngineState::Stalled,
        "stopped rank suspected at 3 s"
    );
    assert_eq!(vs[3].suspects[0].rank, Some(1));
    assert!(
        vs[3].confirmed,
        "a stopped rank is conclusive: confirmed at once"
    );
}

// ---- what the ranks do while a step is late (issue 11's table) ----

/// A whole dump of `pid`'s main thread: `frames` innermost first, then the worker loop.
fn dump(pid: u32, rank: u32, at_ms: i64, frames: &[&str]) -> StackDump {
    let mut names: Vec<&str> = frames.to_vec();
    names.extend([
        "execute_model",
        "worker_busy_loop",
        "worker_main",
        "<module>",
    ]);
    StackDump {
        pid,
        rank: Some(rank),
        taken_at_ms: T0 + at_ms,
        mode: "nonblocking".into(),
        duration_seconds: 0.01,
        python_version: None,
        threads: vec![ThreadStack {
            thread_id: 1,
            os_thread_id: Some(u64::from(pid)),
            name: Some("MainThread".into()),
            active: true,
            owns_gil: false,
            frames: names
                .iter()
                .enumerate()
                .map(|(i, n)| Frame {
                    name: n.to_string(),
                    filename: "model.py".into(),
                    short_filename: None,
                    line: 10 + i as i32 + (at_ms / 1000) as i32,
                })
                .collect(),
        }],
        error: None,
    }
}

/// A TP=`tp` engine whose step began at second 10 and never ends by itself: the core
/// waits, nothing on the rings moves. `cpu(rank, s)` gives each rank's CPU seconds,
/// `at(rank)` its frames; rounds are dumped at seconds 11 and 13 (as the agent asks:
/// when the step turns late, and 2 s later) and then every 5 s.
fn late_step(
    tp: u32,
    s: i64,
    cpu: impl Fn(u32, i64) -> f64,
    at: impl Fn(u32) -> Vec<&'static str>,
) -> EngineFacts {
    if s < 10 {
        let mut e = engine(tp, &["1|1111"; 10], WAIT, s as u64);
        for r in &mut e.ranks {
            r.process.cpu_seconds = s as f64;
        }
        return e;
    }
    let mut e = engine(tp, &["1|1111"; 10], WAIT, 7);
    for r in &mut e.ranks {
        r.process.cpu_seconds = 10.0 + cpu(r.rank, s);
    }
    if s == 11 || s == 13 || (s > 13 && (s - 13) % 5 == 0) {
        e.stacks = (0..tp)
            .map(|r| dump(100 + r, r, s * 1000, &at(r)))
            .collect();
    }
    e
}

fn run_late(
    tp: u32,
    secs: i64,
    cpu: impl Fn(u32, i64) -> f64,
    at: impl Fn(u32) -> Vec<&'static str>,
) -> (Vec<Verdict>, Vec<IncidentEvent>) {
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    run(&mut j, &mut t, 0, secs, |s| late_step(tp, s, &cpu, &at))
}

fn opened_at(evs: &[IncidentEvent]) -> Option<i64> {
    evs.iter().find_map(|e| match e {
        IncidentEvent::Opened(i) => Some((i.opened_ms - T0) / 1000),
        _ => None,
    })
}

#[test]
fn every_rank_at_work_is_a_long_step_not_a_stall() {
    for tp in [2, 4, 8] {
        // 90 s into one step, each rank burning a core in model code that moves.
        let (vs, evs) = run_late(
            tp,
            100,
            |_, s| (s - 10) as f64,
            |_| vec!["matmul", "forward"],
        );
        assert!(evs.is_empty(), "tp {tp}: no incident: {evs:?}");
        let v = vs.last().expect("verdict");
        assert_eq!(v.state, EngineState::Busy, "tp {tp}: {v:?}");
        assert!(v.long_step && v.suspects.is_empty());
        assert!(v.step_age_seconds.is_some_and(|a| a >= 85.0), "{v:?}");
        assert!(
            v.busy_because
                .as_deref()
                .is_some_and(|b| b.contains("every rank is at work")),
            "{v:?}"
        );
        assert!(v
            .rank_activity
            .iter()
            .all(|a| a.doing.as_str() == "computing"));
    }
}

#[test]
fn a_compile_pause_is_busy() {
    let (vs, evs) = run_late(
        4,
        60,
        |_, s| (s - 10) as f64 * 0.9,
        |_| vec!["compile_fx_inner", "compile"],
    );
    assert!(evs.is_empty(), "{evs:?}");
    let v = vs.last().expect("verdict");
    assert_eq!(v.state, EngineState::Busy);
    assert!(v
        .rank_activity
        .iter()
        .all(|a| a.doing.as_str() == "compiling"));
}

#[test]
fn the_rank_outside_the_collective_is_named_once_two_rounds_agree() {
    for tp in [2, 4, 8] {
        let culprit = tp - 1;
        // The others wait in all_reduce (spinning: CPU busy); the culprit sleeps.
        let (vs, evs) = run_late(
            tp,
            30,
            |r, s| if r == culprit { 0.0 } else { (s - 10) as f64 },
            |r| {
                if r == culprit {
                    vec!["sleep", "load_weights_slowly"]
                } else {
                    vec!["all_reduce", "forward"]
                }
            },
        );
        let opened = opened_at(&evs).expect("an incident");
        assert!(
            opened <= 13 + 1,
            "tp {tp}: opened at {opened} s, step began at 10 s"
        );
        let v = vs.iter().find(|v| v.confirmed).expect("confirmed");
        assert_eq!(v.suspects[0].rank, Some(culprit));
        assert!(v.suspects[0].reason_codes().contains(&"stack_odd_one_out"));
    }
}

#[test]
fn a_rank_a_second_behind_is_not_named() {
    // One round sees rank 1 still computing while the others wait; the next round (2 s
    // later) finds the step over.
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    let (_, evs) = run(&mut j, &mut t, 0, 40, |s| {
        if (10..=12).contains(&s) {
            let mut e = late_step(
                4,
                s,
                |_, s| (s - 10) as f64,
                |r| {
                    if r == 1 {
                        vec!["matmul", "forward"]
                    } else {
                        vec!["all_reduce", "forward"]
                    }
                },
            );
            e.rings[0].fingerprint = Some(7);
            e
        } else {
            busy(s)
        }
    });
    assert!(evs.is_empty(), "{evs:?}");
}

#[test]
fn every_rank_in_a_collective_is_a_wedge_with_no_culprit() {
    let (vs, evs) = run_late(
        4,
        30,
        |_, s| (s - 10) as f64,
        |_| vec!["all_reduce", "forward"],
    );
    let opened = opened_at(&evs).expect("an incident");
    assert!(opened <= 22, "opened at {opened} s");
    let v = vs.iter().find(|v| v.confirmed).expect("confirmed");
    assert!(v.suspects.is_empty(), "{v:?}");
    assert!(v
        .engine_reasons
        .iter()
        .any(|r| r.code == ReasonCode::CollectiveWedge));
}

#[test]
fn without_stacks_or_gpus_the_timer_decides() {
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    let (vs, evs) = run(&mut j, &mut t, 0, 25, |s| {
        let mut e = late_step(4, s, |_, s| (s - 10) as f64, |_| vec![]);
        e.stacks.clear();
        e
    });
    assert_eq!(
        opened_at(&evs),
        Some(20),
        "the 10 s timer after the step began"
    );
    assert!(vs.last().is_some_and(|v| v.culprit_unknown()));
}

#[test]
fn a_long_step_past_the_ceiling_is_flagged_as_a_warning() {
    let (vs, evs) = run_late(
        2,
        140,
        |_, s| (s - 10) as f64,
        |_| vec!["matmul", "forward"],
    );
    let opened = opened_at(&evs).expect("flagged");
    // The engine's execute timeout is 300 s: 40 % is 120 s.
    assert!((129..=131).contains(&opened), "opened at {opened} s");
    let v = vs.iter().find(|v| v.confirmed).expect("confirmed");
    assert_eq!(v.severity(), "warning");
    assert!(v
        .engine_reasons
        .iter()
        .any(|r| r.code == ReasonCode::LongStep));
}

#[test]
fn a_rank_that_got_through_a_stopped_ranks_collective_is_not_named() {
    // Rank 0 stopped inside its all-reduce; rank 1 finished it and waits for its next RPC.
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    let (vs, _) = run(&mut j, &mut t, 0, 20, |s| {
        let mut e = late_step(
            2,
            s,
            |_, s| (s - 10) as f64,
            |r| {
                if r == 0 {
                    vec!["all_reduce", "forward"]
                } else {
                    vec!["acquire_read", "dequeue"]
                }
            },
        );
        if s >= 10 {
            e.ranks[0].process.state = ProcState::Stopped;
        }
        e
    });
    let v = vs.iter().find(|v| v.confirmed).expect("confirmed");
    let named: Vec<u32> = v.suspects.iter().filter_map(|s| s.rank).collect();
    assert_eq!(named, vec![0], "{v:?}");
}

#[test]
fn a_spinning_rank_that_cannot_be_dumped_whole_is_named_from_the_others_wait() {
    // The spinning rank's only whole dump is the first; the others wait, unchanged.
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    let (_, evs) = run(&mut j, &mut t, 0, 30, |s| {
        let mut e = late_step(
            4,
            s,
            |_, s| (s - 10) as f64,
            |r| {
                if r == 3 {
                    vec!["stuck_in_python_spin", "forward"]
                } else {
                    vec!["all_reduce", "forward"]
                }
            },
        );
        for d in &mut e.stacks {
            for th in &mut d.threads {
                for f in &mut th.frames {
                    f.line = 1;
                }
            }
        }
        if s > 11 {
            e.stacks.retain(|d| d.rank != Some(3));
        }
        e
    });
    let opened = opened_at(&evs).expect("an incident");
    assert!(
        opened <= 14,
        "opened at {opened} s (the timer would say 20)"
    );
    let named: Vec<u32> = evs
        .iter()
        .find_map(|e| match e {
            IncidentEvent::Opened(i) => Some(i.suspects.iter().filter_map(|s| s.rank).collect()),
            _ => None,
        })
        .unwrap_or_default();
    assert_eq!(named, vec![3]);
}

#[test]
fn starved_ranks_that_are_runnable_are_at_work() {
    // 42 computing ranks on two cores: a hundredth of a core each, but runnable (R).
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    let (vs, evs) = run(&mut j, &mut t, 0, 40, |s| {
        let mut e = late_step(
            4,
            s,
            |_, s| (s - 10) as f64 * 0.005,
            |_| vec!["run_layers", "forward"],
        );
        for r in &mut e.ranks {
            r.process.state = ProcState::Running;
        }
        e
    });
    assert!(evs.is_empty(), "{evs:?}");
    assert!(vs.last().is_some_and(|v| v.long_step), "{:?}", vs.last());
}

#[test]
fn a_rank_a_second_behind_at_the_end_of_a_long_step_is_not_a_stall() {
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    let (_, evs) = run(&mut j, &mut t, 0, 40, |s| {
        if s > 31 {
            return busy(s);
        }
        let mut e = late_step(
            4,
            s,
            |_, s| (s - 10) as f64,
            |_| vec!["run_layers", "forward"],
        );
        if s == 31 {
            // The long step's last second: ranks 0-2 wait in the all-reduce for rank 3.
            e.stacks = (0..4u32)
                .map(|r| {
                    let at = if r == 3 {
                        vec!["run_layers", "forward"]
                    } else {
                        vec!["all_reduce", "forward"]
                    };
                    dump(100 + r, r, 31_000, &at)
                })
                .collect();
        }
        e
    });
    assert!(evs.is_empty(), "{evs:?}");
}

fn said(
    e: &EngineFacts,
    s: i64,
    kind: hangwatch_rules::logs::LogEventKind,
) -> hangwatch_rules::logs::LogEvent {
    hangwatch_rules::logs::LogEvent {
        at_ms: T0 + s * 1000,
        logged_at: None,
        source: "serve.log".into(),
        process: Some("EngineCore".into()),
        pid: Some(e.core.pid),
        kind,
        line: String::new(),
    }
}

/// A line that says a worker died while that worker's process runs on is void once
/// `ANNOUNCED_MS` passes; a line that says vLLM kills a process none of the engine's
/// workers ever was says nothing about stopping.
#[test]
fn announcements_that_do_not_follow_are_void() {
    use hangwatch_rules::logs::LogEventKind;
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    run(&mut j, &mut t, 0, 5, busy);
    let (vs, evs) = run(&mut j, &mut t, 5, 20, |s| {
        let mut e = busy(s);
        if s == 5 {
            let died = LogEventKind::WorkerDied {
                name: "VLLM::Worker_TP1".into(),
                rank: Some(1),
                exit_code: Some(1),
            };
            e.log_events.push(said(&e, s, died));
            let kill = LogEventKind::ShutdownKill {
                name: "VLLM::Worker_TP3".into(),
                pid: Some(999_999),
            };
            e.log_events.push(said(&e, s, kill));
        }
        e
    });
    assert!(evs.is_empty(), "{evs:?}");
    assert!(vs.iter().all(|v| v.state == EngineState::Busy), "{vs:?}");
    // Then a real exit of rank 3 is a crash, not the service stopping.
    let (_, evs) = run(&mut j, &mut t, 25, 2, |s| {
        let mut e = busy(s);
        e.ranks.remove(3);
        e
    });
    assert!(
        evs.iter().any(|e| matches!(e, IncidentEvent::Opened(_))),
        "{evs:?}"
    );
}

/// `EngineDeadError` with the engine still moving long after is no death.
#[test]
fn an_engine_dead_word_with_the_engine_alive_expires() {
    use hangwatch_rules::logs::LogEventKind;
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    run(&mut j, &mut t, 0, 5, busy);
    let (vs, _) = run(&mut j, &mut t, 5, 30, |s| {
        let mut e = busy(s);
        if s == 5 {
            e.log_events.push(said(&e, s, LogEventKind::EngineDead));
        }
        e
    });
    assert_eq!(
        vs.last().map(|v| v.state),
        Some(EngineState::Busy),
        "{vs:?}"
    );
}
