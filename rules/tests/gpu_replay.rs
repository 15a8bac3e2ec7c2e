//! The real H200 traces (testdata/gpu, see docs/gpu.md) replayed through the
//! classifier and the judge: the hang names rank 1, the wedge is a collective wedge,
//! busy and idle raise nothing; the NCCL RAS answers name rank 1, then a desync.

use hangwatch_rules::gpu::{GpuClass, GpuFacts, GpuProcess};
use hangwatch_rules::ras::{ras_finding, RasFinding, RasStatus};
use hangwatch_rules::{
    ChunkFlags, EngineFacts, EngineState, ProcFacts, ProcState, RankFacts, ReasonCode, RingFacts,
    RingRole, Snapshot,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[path = "support/transcript.rs"]
mod transcript;
use transcript::Transcript;

const T0: i64 = 1_800_000_000_000;

/// Per phase, the last look: GPU classes, state, named ranks, reasons.
type PhaseLook = (Vec<GpuClass>, EngineState, Vec<u32>, Vec<ReasonCode>);
/// Per phase, the last look: GPU classes, named ranks, engine reasons.
type WedgeLook = (Vec<GpuClass>, Vec<u32>, Vec<ReasonCode>);

fn data(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/gpu")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn proc(pid: u32, wchan: &str) -> ProcFacts {
    ProcFacts {
        pid,
        ns_pid: None,
        state: ProcState::Sleeping,
        wchan: Some(wchan.into()),
        cpu_seconds: 0.0,
        started_at_ms: T0 - 3_600_000,
    }
}

/// A TP=2 engine on pids 610/611 (the trace's ranks). `phase` drives what the rings and
/// the engine core show: busy (rings move), idle (core waits on its queue), hang
/// (nothing moves, the core waits for a reply).
fn engine(phase: &str, tick: u64) -> EngineFacts {
    let core_wchan = if phase == "idle" {
        "futex_do_wait"
    } else {
        "poll_schedule_timeout"
    };
    let fingerprint = if phase == "busy" { tick } else { 1 };
    EngineFacts {
        id: "vllm-8000".into(),
        model: None,
        port: Some(8000),
        api_pid: Some(600),
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
        core: proc(605, core_wchan),
        tp: 2,
        pp: 1,
        dp: 1,
        dp_rank: 0,
        output_rank: 0,
        execute_timeout_seconds: 300.0,
        settings: BTreeMap::new(),
        ranks: (0..2)
            .map(|r| RankFacts {
                rank: r,
                tp_rank: r,
                pp_rank: 0,
                title: format!("VLLM::Worker_TP{r}"),
                process: proc(610 + r, "0"),
            })
            .collect(),
        rings: vec![RingFacts {
            name: "psm_1".into(),
            role: RingRole::Rpc,
            size: 0,
            chunk_bytes: 1 << 24,
            chunks: 10,
            readers: 2,
            writer_rank: None,
            reader_ranks: vec![Some(0), Some(1)],
            flags: Some(vec!["1|11".parse::<ChunkFlags>().expect("flags"); 10]),
            methods: BTreeMap::new(),
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

fn snapshot(t: f64, gpus: Vec<GpuFacts>, e: EngineFacts) -> Snapshot {
    Snapshot {
        at_ms: T0 + (t * 1000.0) as i64,
        engines: vec![e],
        collectors: Vec::new(),
        late_events: Vec::new(),
        gpus,
        ..Default::default()
    }
}

#[test]
fn collective_wait_trace_names_rank_1_and_busy_idle_raise_nothing() {
    let text = data("h200x2-collective-wait.nvml.jsonl");
    let mut judge = Transcript::new();
    let mut last_by_phase: BTreeMap<&str, PhaseLook> = BTreeMap::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let v: Value = serde_json::from_str(line).expect("json");
        let t = v["t"].as_f64().expect("t");
        let phase = match t {
            t if t < 10.0 => "busy",
            t if t < 18.0 => "idle",
            t if t < 43.0 => "hang",
            _ => "recover",
        };
        if t < -15.0 {
            continue; // before the processes existed
        }
        let gpus: Vec<GpuFacts> = v["gpus"]
            .as_array()
            .expect("gpus")
            .iter()
            .enumerate()
            .map(|(i, g)| GpuFacts {
                index: i as u32,
                uuid: format!("GPU-{i}"),
                utilization: g["util"].as_u64().map(|u| u as u32),
                power_w: g["power_mw"].as_f64().map(|p| p / 1000.0),
                gpm: g["gpm"].as_array().map(|a| {
                    [
                        a[0].as_f64().unwrap_or(0.0),
                        a[1].as_f64().unwrap_or(0.0),
                        a[2].as_f64().unwrap_or(0.0),
                    ]
                }),
                processes: vec![GpuProcess {
                    pid: 610 + i as u32,
                    utilization: None,
                }],
                ..Default::default()
            })
            .collect();
        let verdict = judge
            .observe(&snapshot(t, gpus, engine(phase, n as u64)))
            .remove(0);
        let classes: Vec<GpuClass> = judge
            .judge()
            .gpu_verdicts()
            .values()
            .map(|g| g.class)
            .collect();
        let codes = verdict
            .suspects
            .iter()
            .flat_map(|s| s.reasons.iter().map(|r| r.code))
            .collect();
        last_by_phase.insert(
            phase,
            (
                classes,
                verdict.state,
                verdict.suspects.iter().filter_map(|s| s.rank).collect(),
                codes,
            ),
        );
        if phase == "busy" || phase == "idle" {
            assert_ne!(verdict.state, EngineState::Stalled, "t={t}: {verdict:?}");
        }
    }
    judge.check_pinned("gpu-h200x2-collective-wait");
    let (classes, state, named, codes) = &last_by_phase["hang"];
    assert_eq!(classes, &vec![GpuClass::Spin, GpuClass::Idle]);
    assert_eq!(*state, EngineState::Stalled);
    assert_eq!(named, &vec![1]);
    assert!(
        codes.contains(&ReasonCode::GpuIdleWhileOthersSpin),
        "{codes:?}"
    );
    assert_eq!(
        last_by_phase["busy"].0,
        vec![GpuClass::Busy, GpuClass::Busy]
    );
    assert_eq!(
        last_by_phase["idle"].0,
        vec![GpuClass::Idle, GpuClass::Idle]
    );
    assert_eq!(
        last_by_phase["recover"].0,
        vec![GpuClass::Busy, GpuClass::Busy]
    );
}

#[test]
fn hang_and_wedge_trace_says_collective_wedge_without_a_culprit() {
    let text = data("h200x2-hang-and-wedge.nvml.jsonl");
    let mut judge = Transcript::new();
    let mut seen: BTreeMap<&str, WedgeLook> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).expect("json");
        let Some(t) = v["t"].as_f64() else { continue };
        // Phases (testdata/README.md): busy until 10, hang A until 26, recover, wedge B from 33.
        let phase = match t {
            t if t < 10.0 => "busy",
            t if t < 26.0 => "hang",
            t if t < 33.0 => "recover",
            _ => "wedge",
        };
        let gpus: Vec<GpuFacts> = v["gpus"]
            .as_array()
            .expect("gpus")
            .iter()
            .enumerate()
            .map(|(i, g)| GpuFacts {
                index: i as u32,
                uuid: format!("GPU-{i}"),
                utilization: g[0].as_u64().map(|u| u as u32),
                power_w: g[1].as_f64(),
                // The trace has no process lists: one rank per GPU, as in the run.
                processes: vec![GpuProcess {
                    pid: 610 + i as u32,
                    utilization: None,
                }],
                ..Default::default()
            })
            .collect();
        let e = engine(
            if matches!(phase, "busy" | "recover") {
                "busy"
            } else {
                "hang"
            },
            n as u64,
        );
        let verdict = judge.observe(&snapshot(t, gpus, e)).remove(0);
        let classes: Vec<GpuClass> = judge
            .judge()
            .gpu_verdicts()
            .values()
            .map(|g| g.class)
            .collect();
        let engine_codes = verdict.engine_reasons.iter().map(|r| r.code).collect();
        seen.insert(
            phase,
            (
                classes,
                verdict.suspects.iter().filter_map(|s| s.rank).collect(),
                engine_codes,
            ),
        );
        if phase == "busy" {
            assert_ne!(verdict.state, EngineState::Stalled, "t={t}");
        }
    }
    judge.check_pinned("gpu-h200x2-hang-and-wedge");
    assert_eq!(seen["hang"].0, vec![GpuClass::Spin, GpuClass::Idle]);
    assert_eq!(seen["hang"].1, vec![1]);
    let (classes, named, codes) = &seen["wedge"];
    assert_eq!(classes, &vec![GpuClass::Spin, GpuClass::Spin]);
    assert!(named.is_empty(), "no wrong culprit: {named:?}");
    assert!(codes.contains(&ReasonCode::CollectiveWedge), "{codes:?}");
}

#[test]
fn one_gpu_busy_spin_idle_phases() {
    let v: Value = serde_json::from_str(&data("h200x1-busy-spin-idle.nvml.json")).expect("json");
    let mut c = hangwatch_rules::gpu::GpuClassifier::default();
    let mut last: BTreeMap<String, GpuClass> = BTreeMap::new();
    let mut order = Vec::new();
    for row in v.as_array().expect("rows") {
        let t = row[0].as_f64().unwrap_or(0.0);
        let phase = row[1].as_str().unwrap_or("").to_string();
        let g = GpuFacts {
            index: 0,
            uuid: "GPU-0".into(),
            utilization: row[2].as_u64().map(|u| u as u32),
            power_w: row[3].as_f64(),
            ..Default::default()
        };
        let class = c.observe(&[g], (t * 1000.0) as i64)[&0].class;
        if !order.contains(&phase) {
            order.push(phase.clone());
        }
        last.insert(phase, class);
    }
    assert_eq!(last["busy"], GpuClass::Busy, "{last:?}");
    assert_eq!(last["spin"], GpuClass::Spin, "{last:?}");
    assert_eq!(last["idle"], GpuClass::Idle, "{last:?}");
}

#[test]
fn ras_answers_name_rank_1_then_a_desync() {
    let v: Value =
        serde_json::from_str(&data("h200x2-nccl-ras-hang-and-wedge.json")).expect("json");
    let parse = |k: &str| -> RasStatus {
        serde_json::from_str(v[k]["status"].as_str().expect("status")).expect("RAS JSON")
    };
    assert_eq!(ras_finding(&parse("busy")), None);
    match ras_finding(&parse("hangA")) {
        Some(RasFinding::Laggard {
            pid, op, behind, ..
        }) => {
            assert_eq!((pid, op.as_str(), behind), (600, "AllReduce", 1));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ras_finding(&parse("wedgeB")),
        Some(RasFinding::Desync { .. })
    ));
}

/// Measured on one H200 with both ranks on GPU 0 (docs/results/gpu-h200.md): rank 0
/// spins in the wait kernel (97 %), rank 1 has no utilization sample at all. Rank 1 is
/// the idle one, not a collective wedge.
#[test]
fn ranks_sharing_one_gpu_are_told_apart_by_per_process_utilization() {
    let mut judge = Transcript::new();
    let gpu = |util: u32, power: f64, procs: Vec<GpuProcess>| GpuFacts {
        index: 0,
        uuid: "GPU-0".into(),
        utilization: Some(util),
        power_w: Some(power),
        processes: procs,
        ..Default::default()
    };
    let p = |pid: u32, u: Option<u32>| GpuProcess {
        pid,
        utilization: u,
    };
    judge.observe(&snapshot(
        0.0,
        vec![gpu(0, 78.5, vec![])],
        engine("idle", 0),
    ));
    for s in 1..6 {
        judge.observe(&snapshot(
            s as f64,
            vec![gpu(97, 300.0, vec![p(610, Some(78)), p(611, Some(20))])],
            engine("busy", s),
        ));
    }
    let mut last = None;
    for s in 6..20 {
        last = Some(
            judge
                .observe(&snapshot(
                    s as f64,
                    vec![gpu(97, 122.6, vec![p(610, Some(97)), p(611, None)])],
                    engine("hang", 0),
                ))
                .remove(0),
        );
    }
    judge.check_pinned("gpu-h200x1-shared-gpu");
    let v = last.expect("verdict");
    assert_eq!(
        v.suspects.iter().filter_map(|s| s.rank).collect::<Vec<_>>(),
        vec![1],
        "{v:?}"
    );
    assert!(v.suspects[0]
        .reasons
        .iter()
        .any(|r| r.code == ReasonCode::GpuIdleWhileOthersSpin));
    assert!(!v
        .engine_reasons
        .iter()
        .any(|r| r.code == ReasonCode::CollectiveWedge));
}
