//! `hangwatch status`: every engine on the node with its ranks and rings, as a table
//! for people or as JSON (a documented contract: fields are added, never renamed).

use hangwatch_rules::{EngineFacts, Incident, RingFacts, RingRole, Snapshot, Verdict};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

/// What `GET /status` answers from, as of the last tick: the snapshot is shared, not
/// copied, and only the (small) verdicts and open incidents are; the JSON is made when
/// someone asks, not on every tick.
#[derive(Default)]
pub struct StatusSource {
    pub snap: Arc<Snapshot>,
    pub verdicts: Vec<Verdict>,
    pub incidents: Vec<Incident>,
}

#[derive(Serialize)]
struct ServedStatus<'a> {
    #[serde(flatten)]
    doc: StatusDoc<'a>,
    verdicts: &'a [Verdict],
    incidents: &'a [Incident],
}

impl StatusSource {
    /// `status --json`'s document with each engine's verdict and the open incidents.
    pub fn render(&self) -> String {
        let served = ServedStatus {
            doc: view(&self.snap.engines),
            verdicts: &self.verdicts,
            incidents: &self.incidents,
        };
        serde_json::to_string(&served).unwrap_or_else(|_| "{}".to_string())
    }
}

#[derive(Serialize)]
pub struct StatusDoc<'a> {
    pub engines: Vec<EngineView<'a>>,
}

#[derive(Serialize)]
pub struct EngineView<'a> {
    pub id: &'a str,
    pub model: Option<&'a str>,
    pub port: Option<u16>,
    pub api_pid: Option<u32>,
    pub core_pid: u32,
    pub core_state: char,
    /// The API server's process state (none without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_state: Option<char>,
    /// `mp` (worker processes) or `uni` (the engine core is rank 0).
    pub executor: &'static str,
    pub tp: u32,
    pub pp: u32,
    pub dp: u32,
    pub dp_rank: u32,
    /// The deployment of a data-parallel replica, and whether its replicas step in
    /// lockstep.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<&'a str>,
    /// Its place in a deployment across nodes: node rank, nodes, the ranks elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<&'a hangwatch_rules::NodePlace>,
    pub lockstep: bool,
    pub output_rank: u32,
    pub execute_timeout_seconds: f64,
    pub ranks: Vec<RankView<'a>>,
    pub rings: Vec<RingView<'a>>,
    pub settings: &'a BTreeMap<String, String>,
    /// The Kubernetes pod, when the engine runs in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<&'a hangwatch_rules::facts::PodFacts>,
}

#[derive(Serialize)]
pub struct RankView<'a> {
    pub rank: u32,
    pub tp_rank: u32,
    pub pp_rank: u32,
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    pub title: &'a str,
    pub state: char,
    pub wchan: Option<&'a str>,
}

#[derive(Serialize)]
pub struct RingView<'a> {
    pub name: &'a str,
    pub role: &'static str,
    /// For a reply ring: the rank that writes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    pub readers: u32,
    pub chunk_bytes: u64,
    pub chunks: u32,
    pub size: u64,
    pub writer_rank: Option<u32>,
    pub reader_ranks: &'a [Option<u32>],
    /// Per reader, how many written chunks it has not finished.
    pub unread: Vec<usize>,
    /// Flags of every chunk, `written|read by reader 0,1,…`.
    pub flags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

pub fn view(engines: &[EngineFacts]) -> StatusDoc<'_> {
    StatusDoc {
        engines: engines.iter().map(engine_view).collect(),
    }
}

fn engine_view(e: &EngineFacts) -> EngineView<'_> {
    EngineView {
        id: &e.id,
        model: e.model.as_deref(),
        port: e.port,
        api_pid: e.api_pid,
        core_pid: e.core.pid,
        core_state: e.core.state.letter(),
        api_state: e.api.as_ref().map(|p| p.state.letter()),
        executor: match e.executor {
            hangwatch_rules::Executor::Mp => "mp",
            hangwatch_rules::Executor::Uni => "uni",
            hangwatch_rules::Executor::Follower => "follower",
        },
        tp: e.tp,
        pp: e.pp,
        dp: e.dp,
        dp_rank: e.dp_rank,
        deployment: e.deployment.as_deref(),
        node: e.node.as_ref(),
        lockstep: e.lockstep,
        output_rank: e.output_rank,
        execute_timeout_seconds: e.execute_timeout_seconds,
        pod: e.pod.as_ref(),
        ranks: e
            .ranks
            .iter()
            .map(|r| RankView {
                rank: r.rank,
                tp_rank: r.tp_rank,
                pp_rank: r.pp_rank,
                pid: r.process.pid,
                ns_pid: r.process.ns_pid,
                title: &r.title,
                state: r.process.state.letter(),
                wchan: r.process.wchan.as_deref(),
            })
            .collect(),
        rings: e.rings.iter().map(ring_view).collect(),
        settings: &e.settings,
    }
}

pub fn ring_view(r: &RingFacts) -> RingView<'_> {
    RingView {
        name: &r.name,
        role: r.role.name(),
        rank: match r.role {
            RingRole::Reply { rank } => Some(rank),
            _ => None,
        },
        readers: r.readers,
        chunk_bytes: r.chunk_bytes,
        chunks: r.chunks,
        size: r.size,
        writer_rank: r.writer_rank,
        reader_ranks: &r.reader_ranks,
        unread: (0..r.readers as usize)
            .map(|i| r.unread_by(i).len())
            .collect(),
        flags: r
            .flags
            .as_ref()
            .map(|f| f.iter().map(|c| c.to_string()).collect())
            .unwrap_or_default(),
        error: r.error.as_deref(),
    }
}

/// The table people read.
pub fn render_text(engines: &[EngineFacts]) -> String {
    if engines.is_empty() {
        return "no vLLM engines found\n".to_string();
    }
    let mut s = String::new();
    for e in engines {
        let _ = writeln!(
            s,
            "engine {}  model {}  port {}  api pid {}  engine core pid {} ({})",
            e.id,
            e.model.as_deref().unwrap_or("?"),
            e.port.map_or("?".to_string(), |p| p.to_string()),
            e.api_pid.map_or("?".to_string(), |p| p.to_string()),
            e.core.pid,
            e.core.state.letter(),
        );
        let _ = writeln!(
            s,
            "  tp {}  pp {}  dp {} (replica {})  output rank {}  execute timeout {} s",
            e.tp, e.pp, e.dp, e.dp_rank, e.output_rank, e.execute_timeout_seconds
        );
        let _ = writeln!(
            s,
            "  {:<5} {:<8} {:<6} {:<28} title",
            "rank", "pid", "state", "wchan"
        );
        for r in &e.ranks {
            let _ = writeln!(
                s,
                "  {:<5} {:<8} {:<6} {:<28} {}",
                r.rank,
                r.process.pid,
                r.process.state.letter(),
                r.process.wchan.as_deref().unwrap_or("-"),
                r.title
            );
        }
        if e.rings.is_empty() {
            let _ = writeln!(s, "  no rings found (yet)");
        } else {
            let _ = writeln!(
                s,
                "  {:<14} {:<14} {:>7} {:>9} {:>6}  unread per reader",
                "ring", "role", "readers", "chunk", "chunks"
            );
        }
        for r in &e.rings {
            let v = ring_view(r);
            let role = match v.rank {
                Some(k) => format!("{} rank {k}", v.role),
                None => v.role.to_string(),
            };
            let unread = match &r.error {
                Some(err) => format!("unreadable: {err}"),
                None => v
                    .unread
                    .iter()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            let _ = writeln!(
                s,
                "  {:<14} {:<14} {:>7} {:>6} MiB {:>6}  {}",
                r.name,
                role,
                r.readers,
                r.chunk_bytes >> 20,
                r.chunks,
                unread
            );
        }
        s.push('\n');
    }
    s
}
