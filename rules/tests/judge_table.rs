//! The judge and the incident life cycle over tables of synthetic snapshots.

use hangwatch_rules::incident::Outcome;
use hangwatch_rules::{
    ChunkFlags, EngineFacts, EngineState, IncidentEvent, IncidentTracker, Judge, ProcFacts,
    ProcState, RankFacts, ReasonCode, RingFacts, RingRole, Snapshot, Thresholds, Verdict,
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
        nccl_ras: None,
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
    assert_eq!(v.suspects[0].rank, 2);
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
    // Cycles of 22 s of fast steps, then an 8 s step (nothing moves, core waits).
    for cycle in 0..6 {
        let base = cycle * 30;
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
    assert_eq!(vs[0].suspects[0].rank, 3);
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
    assert_eq!(inc.suspects[0].rank, 3);
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
        .any(|v| v.state == EngineState::Stalled && v.suspects[0].rank == 0));
}

#[test]
fn a_stopped_rank_is_judged_on_base_thresholds_even_after_long_steps() {
    let mut j = Judge::new(Thresholds::default());
    let mut t = IncidentTracker::default();
    run(&mut j, &mut t, 0, 5, busy);
    // One legitimate 8 s step: thresholds for ring lags adapt to 12 s / 19 s.
    run(&mut j, &mut t, 5, 8, |_| {
        engine(4, &["1|1111"; 10], WAIT, 5)
    });
    run(&mut j, &mut t, 13, 5, busy);
    let (vs, _) = run(&mut j, &mut t, 18, 11, |_| {
        let mut e = engine(4, &["1|1111"; 10], WAIT, 6);
        e.ranks[1].process.state = ProcState::Stopped;
        e
    });
    assert!(
        vs[0].suspect_after_seconds >= 12.0,
        "ring thresholds adapted"
    );
    assert_eq!(
        vs[3].state,
        EngineState::Stalled,
        "stopped rank suspected at 3 s"
    );
    assert_eq!(vs[3].suspects[0].rank, 1);
    assert!(!vs[9].confirmed && vs[10].confirmed, "confirmed at 10 s");
}
