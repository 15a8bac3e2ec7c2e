//! Incident bundles: one directory per incident with everything a person needs after
//! the processes are gone. Written atomically (a temporary directory renamed into
//! place, updates swapped in with `renameat2(RENAME_EXCHANGE)`), mode 0700, with
//! retention by count and total size.

use crate::clock::rfc3339;
use crate::status::ring_view;
use hangwatch_collectors::evidence::{title_of, StackRound};
use hangwatch_rules::incident::Outcome;
use hangwatch_rules::stacks::{core_waits_for_reply, describe, StackDump};
use hangwatch_rules::{EngineFacts, Incident, Millis, Snapshot, Verdict};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const SCHEMA: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding {file}: {source}")]
    Encode {
        file: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BundleError + 'a {
    move |source| BundleError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// Everything a bundle is made of, gathered by the agent at the moment of writing.
pub struct BundleContents {
    pub incident: Incident,
    /// The engine's facts now (or the last seen, when it is dead).
    pub engine: EngineFacts,
    pub verdict: Verdict,
    /// This engine's snapshots over the history window, oldest first.
    pub snapshots: Vec<Snapshot>,
    /// Verdict changes and incident events: (time, line).
    pub timeline: Vec<(Millis, String)>,
    /// Stack rounds of this incident, oldest first.
    pub stacks: Vec<StackRound>,
    /// The engine's recent log events.
    pub events: Vec<hangwatch_rules::logs::LogEvent>,
    /// The last lines of each of the engine's log sources.
    pub log_tail: Vec<(String, Vec<String>)>,
    /// Every GPU's class now.
    pub gpu_classes: Vec<hangwatch_rules::gpu::GpuVerdict>,
}

pub struct BundleWriter {
    pub dir: PathBuf,
    pub max_count: usize,
    pub max_total_bytes: u64,
}

impl BundleWriter {
    /// Writes (or rewrites) the incident's bundle and applies retention. Returns the
    /// bundle's path.
    pub fn write(&self, c: &BundleContents) -> Result<PathBuf, BundleError> {
        fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        let final_dir = self.dir.join(&c.incident.id);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            c.incident.id,
            std::process::id() as u128 * 1_000_000 + now_nanos() % 1_000_000
        ));
        let result = self.write_into(&tmp, c).and_then(|()| {
            if final_dir.exists() {
                exchange(&tmp, &final_dir)?;
                fs::remove_dir_all(&tmp).map_err(io("removing", &tmp))
            } else {
                fs::rename(&tmp, &final_dir).map_err(io("renaming into place", &final_dir))
            }
        });
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result?;
        self.retain(&c.incident.id);
        Ok(final_dir)
    }

    fn write_into(&self, dir: &Path, c: &BundleContents) -> Result<(), BundleError> {
        fs::create_dir(dir).map_err(io("creating", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io("setting mode of", dir))?;
        let mut files: Vec<&str> = vec![
            "summary.txt",
            "rings.json",
            "processes.json",
            "environment.json",
            "snapshots.jsonl",
            "verdict.json",
        ];
        files.sort_unstable();
        put(dir, "summary.txt", summary(c).as_bytes())?;
        put_json(dir, "rings.json", &rings_doc(c))?;
        put_json(dir, "processes.json", &processes_doc(&c.engine))?;
        put_json(
            dir,
            "environment.json",
            &json!({
                "source": "environment of the API server, allowlisted, secrets redacted",
                "api_pid": c.engine.api_pid,
                "variables": c.engine.settings,
            }),
        )?;
        put_json(dir, "verdict.json", &c.verdict)?;
        let mut lines = Vec::new();
        for s in &c.snapshots {
            serde_json::to_writer(&mut lines, s).map_err(|e| BundleError::Encode {
                file: "snapshots.jsonl",
                source: e,
            })?;
            lines.push(b'\n');
        }
        put(dir, "snapshots.jsonl", &lines)?;
        let lint = hangwatch_rules::lint::lint(&c.engine.settings);
        put_json(
            dir,
            "lint.json",
            &json!({ "engine": c.engine.id, "findings": lint }),
        )?;
        let mut ev = Vec::new();
        for e in &c.events {
            serde_json::to_writer(&mut ev, e).map_err(|e| BundleError::Encode {
                file: "events.jsonl",
                source: e,
            })?;
            ev.push(b'\n');
        }
        put(dir, "events.jsonl", &ev)?;
        let mut logs = String::new();
        for (source, lines) in &c.log_tail {
            logs.push_str(&format!("==> {source} (last {} lines) <==\n", lines.len()));
            for l in lines {
                logs.push_str(l);
                logs.push('\n');
            }
        }
        if c.log_tail.is_empty() {
            logs.push_str("no log source found for this engine (configure logs.paths, or run vllm serve with its output in a file)\n");
        }
        put(dir, "logs.txt", logs.as_bytes())?;
        files.extend(["lint.json", "events.jsonl", "logs.txt"]);
        if c.snapshots.iter().any(|s| !s.gpus.is_empty()) {
            let readings: Vec<serde_json::Value> = c
                .snapshots
                .iter()
                .filter(|s| !s.gpus.is_empty())
                .map(|s| json!({ "at": rfc3339(s.at_ms), "gpus": s.gpus }))
                .collect();
            let pids: Vec<u32> = c.engine.ranks.iter().map(|r| r.process.pid).collect();
            put_json(
                dir,
                "gpu.json",
                &json!({
                    "classes": c.gpu_classes,
                    "rank_pids": pids,
                    "readings": readings,
                }),
            )?;
            files.push("gpu.json");
        }
        if let Some(ras) = c.stacks.iter().rev().find_map(|r| r.ras.as_ref()) {
            put_json(
                dir,
                "nccl_ras.json",
                &json!({
                    "status": ras.status,
                    "raw": ras.json,
                    "error": ras.error,
                }),
            )?;
            put(dir, "nccl_ras.txt", ras.text.as_bytes())?;
            files.extend(["nccl_ras.json", "nccl_ras.txt"]);
        }
        let mut all = files.clone();
        let stack_files = write_stacks(dir, c)?;
        all.extend(stack_files.iter().map(String::as_str));
        all.push("manifest.json");
        all.sort_unstable();
        put_json(dir, "manifest.json", &manifest(c, &all))?;
        Ok(())
    }

    /// Oldest bundles go first when there are too many or they take too much room; the
    /// bundle just written is never removed.
    fn retain(&self, keep: &str) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut bundles: Vec<(std::time::SystemTime, PathBuf, u64)> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter(|e| e.path().join("manifest.json").is_file())
            .map(|e| {
                let p = e.path();
                let t = fs::metadata(p.join("manifest.json"))
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                let size = dir_size(&p);
                (t, p, size)
            })
            .collect();
        bundles.sort();
        let mut count = bundles.len();
        let mut total: u64 = bundles.iter().map(|b| b.2).sum();
        for (_, path, size) in &bundles {
            if count <= self.max_count && total <= self.max_total_bytes {
                break;
            }
            if path.file_name().is_some_and(|n| n == keep) {
                continue;
            }
            match fs::remove_dir_all(path) {
                Ok(()) => {
                    tracing::info!(bundle = %path.display(), "removed old bundle (retention)");
                    count -= 1;
                    total = total.saturating_sub(*size);
                }
                Err(e) => {
                    tracing::warn!(bundle = %path.display(), error = %e, "cannot remove old bundle")
                }
            }
        }
    }
}

fn dir_size(p: &Path) -> u64 {
    fs::read_dir(p)
        .map(|es| {
            es.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Swaps two directories in one step, so a reader never sees a half-updated bundle.
fn exchange(a: &Path, b: &Path) -> Result<(), BundleError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(|e| BundleError::Io {
        action: "naming",
        path: a.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(|e| BundleError::Io {
        action: "naming",
        path: b.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    // SAFETY: both pointers are valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // Filesystems without RENAME_EXCHANGE: move the old one aside, then the new in.
    let aside = b.with_extension(format!("old-{}", now_nanos()));
    fs::rename(b, &aside).map_err(io("moving aside", b))?;
    fs::rename(a, b).map_err(io("renaming into place", b))?;
    fs::rename(&aside, a).map_err(io("moving back", a))
}

fn put(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
    let path = dir.join(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io("creating", &path))?;
    f.write_all(bytes).map_err(io("writing", &path))?;
    f.sync_all().map_err(io("syncing", &path))
}

fn put_json<T: Serialize>(dir: &Path, name: &'static str, v: &T) -> Result<(), BundleError> {
    let mut bytes = serde_json::to_vec_pretty(v).map_err(|e| BundleError::Encode {
        file: name,
        source: e,
    })?;
    bytes.push(b'\n');
    put(dir, name, &bytes)
}

/// `stacks/engine-core.txt`, `stacks/rank-<N>.txt` (every round, oldest first, in
/// py-spy's text layout) and `stacks.json`.
fn write_stacks(dir: &Path, c: &BundleContents) -> Result<Vec<String>, BundleError> {
    if c.stacks.is_empty() {
        return Ok(Vec::new());
    }
    let sdir = dir.join("stacks");
    fs::create_dir(&sdir).map_err(io("creating", &sdir))?;
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    for round in &c.stacks {
        for d in &round.dumps {
            let file = match d.rank {
                Some(r) => format!("rank-{r}.txt"),
                None => "engine-core.txt".to_string(),
            };
            let who = match d.rank {
                Some(r) => format!("rank {r}, {}", title_of(&round.titles, d.pid)),
                None => "engine core".to_string(),
            };
            let t = texts.entry(file).or_default();
            t.push_str(&format!(
                "=== {} round at {} ===\n",
                round.reason.as_str(),
                rfc3339(d.taken_at_ms)
            ));
            t.push_str(&hangwatch_collectors::stacks::render(d, &who));
            t.push('\n');
        }
    }
    let mut names = Vec::new();
    for (file, text) in &texts {
        put(&sdir, file, text.as_bytes())?;
        names.push(format!("stacks/{file}"));
    }
    put_json(dir, "stacks.json", &json!({ "rounds": c.stacks }))?;
    names.push("stacks.json".to_string());
    Ok(names)
}

/// First and latest dump of each rank over the incident's rounds.
fn rank_dumps(rounds: &[StackRound]) -> (BTreeMap<u32, StackDump>, BTreeMap<u32, StackDump>) {
    let mut first = BTreeMap::new();
    let mut latest = BTreeMap::new();
    for d in rounds.iter().flat_map(|r| r.dumps.iter()) {
        if let Some(r) = d.rank {
            if d.error.is_none() {
                first.entry(r).or_insert_with(|| d.clone());
            }
            latest.insert(r, d.clone());
        }
    }
    (first, latest)
}

fn manifest(c: &BundleContents, files: &[&str]) -> serde_json::Value {
    let i = &c.incident;
    json!({
        "schema": SCHEMA,
        "incident_id": i.id,
        "engine": i.engine,
        "verdict": i.verdict.as_str(),
        "onset_at": rfc3339(i.onset_ms),
        "opened_at": rfc3339(i.opened_ms),
        "detected_after_seconds": i.detected_after_seconds(),
        "deadline_left_seconds": i.deadline_left_seconds,
        "suspects": i.suspects.iter().map(|s| json!({
            "rank": s.rank,
            "pid": s.pid,
            "reasons": s.reason_codes(),
            "confidence": s.confidence,
        })).collect::<Vec<_>>(),
        "engine_reasons": i.engine_reasons.iter().map(|r| r.code.as_str()).collect::<Vec<_>>(),
        "outcome": i.outcome.map(|o| match o { Outcome::Resolved => "resolved", Outcome::Dead => "dead" }),
        "closed_at": i.closed_ms.map(rfc3339),
        "updated_at": rfc3339(c.verdict.at_ms),
        "files": files,
        "agent_version": env!("CARGO_PKG_VERSION"),
    })
}

fn rings_doc(c: &BundleContents) -> serde_json::Value {
    let rings: Vec<serde_json::Value> = c
        .engine
        .rings
        .iter()
        .map(|r| {
            let v = ring_view(r);
            let readers: Vec<serde_json::Value> = (0..r.readers as usize)
                .map(|reader| {
                    let run = r.unread_by(reader);
                    let since = unread_since(&c.snapshots, &c.engine.id, &r.name, reader, run.first().copied());
                    json!({
                        "reader": reader,
                        "rank": r.reader_ranks.get(reader).copied().flatten(),
                        "unread_chunks": run,
                        "unread_methods": run.iter().filter_map(|k| r.methods.get(k)).collect::<Vec<_>>(),
                        "unread_since": since.map(rfc3339),
                        "unread_age_seconds": since.map(|s| (c.verdict.at_ms - s) as f64 / 1000.0),
                    })
                })
                .collect();
            json!({
                "name": v.name,
                "role": v.role,
                "rank": v.rank,
                "size": v.size,
                "chunk_bytes": v.chunk_bytes,
                "chunks": v.chunks,
                "writer_rank": v.writer_rank,
                "reader_ranks": v.reader_ranks,
                "flags": v.flags,
                "methods": r.methods,
                "readers": readers,
                "error": v.error,
            })
        })
        .collect();
    json!({ "at": rfc3339(c.verdict.at_ms), "rings": rings })
}

/// When a reader's current unread run began: the earliest consecutive snapshot in which
/// it had the same first unread chunk.
fn unread_since(
    snaps: &[Snapshot],
    engine: &str,
    ring: &str,
    reader: usize,
    first: Option<u32>,
) -> Option<Millis> {
    let first = first?;
    let mut since = None;
    for s in snaps.iter().rev() {
        let same = s
            .engines
            .iter()
            .find(|e| e.id == engine)
            .and_then(|e| e.rings.iter().find(|r| r.name == ring))
            .is_some_and(|r| r.unread_by(reader).first() == Some(&first));
        if !same {
            break;
        }
        since = Some(s.at_ms);
    }
    since
}

fn processes_doc(e: &EngineFacts) -> serde_json::Value {
    json!({
        "api_server": { "pid": e.api_pid },
        "engine_core": e.core,
        "ranks": e.ranks,
    })
}

/// The one page a person reads first.
pub fn summary(c: &BundleContents) -> String {
    let i = &c.incident;
    let e = &c.engine;
    let mut s = String::new();
    let _ = writeln!(s, "hangwatch incident {}", i.id);
    let _ = writeln!(
        s,
        "engine {} (model {}, port {}, tp {}, pp {}, dp {}, engine core pid {})",
        e.id,
        e.model.as_deref().unwrap_or("?"),
        e.port.map_or("?".into(), |p| p.to_string()),
        e.tp,
        e.pp,
        e.dp,
        e.core.pid
    );
    let _ = writeln!(s);
    let verdict = i.verdict.as_str().to_uppercase();
    if i.suspects.is_empty() {
        let _ = writeln!(s, "verdict: {verdict}, culprit unknown");
    } else {
        let names: Vec<String> = i
            .suspects
            .iter()
            .map(|x| format!("rank {} (pid {})", x.rank, x.pid))
            .collect();
        let _ = writeln!(s, "verdict: {verdict}, suspect {}", names.join(", "));
    }
    for x in &i.suspects {
        let _ = writeln!(s, "  rank {} (confidence {:.2}):", x.rank, x.confidence);
        for r in &x.reasons {
            let _ = writeln!(s, "    - {} [{}]", r.detail, r.code.as_str());
        }
    }
    for r in &i.engine_reasons {
        let _ = writeln!(s, "  engine: {} [{}]", r.detail, r.code.as_str());
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "onset:    {}", rfc3339(i.onset_ms));
    let _ = writeln!(
        s,
        "opened:   {} (detected after {:.1} s)",
        rfc3339(i.opened_ms),
        i.detected_after_seconds()
    );
    if let Some(d) = i.deadline_left_seconds {
        let _ = writeln!(
            s,
            "deadline: {:.0} s were left before vLLM's execute timeout ({} s) when it opened",
            d, e.execute_timeout_seconds
        );
    }
    match (i.outcome, i.closed_ms) {
        (Some(Outcome::Resolved), Some(t)) => {
            let _ = writeln!(s, "outcome:  resolved at {} (progress resumed)", rfc3339(t));
        }
        (Some(Outcome::Dead), Some(t)) => {
            let _ = writeln!(s, "outcome:  engine dead at {}", rfc3339(t));
        }
        _ => {
            let _ = writeln!(s, "outcome:  still open at {}", rfc3339(c.verdict.at_ms));
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "ranks");
    for r in &e.ranks {
        let lag = c
            .verdict
            .rank_lag_seconds
            .iter()
            .find(|(k, _)| *k == r.rank)
            .map_or(0.0, |(_, l)| *l);
        let mark = if i.suspects.iter().any(|x| x.rank == r.rank) {
            "  <- suspect"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  rank {:<3} pid {:<8} state {}  wchan {:<28} lag {:>5.1} s  {}{}",
            r.rank,
            r.process.pid,
            r.process.state.letter(),
            r.process.wchan.as_deref().unwrap_or("-"),
            lag,
            r.title,
            mark
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "rings (flags: written|read by reader 0,1,…; * = pending)"
    );
    for r in &e.rings {
        let flags = match &r.flags {
            Some(f) => f
                .iter()
                .enumerate()
                .map(|(k, x)| {
                    let m = r
                        .methods
                        .get(&(k as u32))
                        .map(|m| format!("({m})"))
                        .unwrap_or_default();
                    format!("{k}:{x}{}{m}", if x.pending() { "*" } else { "" })
                })
                .collect::<Vec<_>>()
                .join(" "),
            None => format!("unreadable: {}", r.error.as_deref().unwrap_or("?")),
        };
        let role = match r.role {
            hangwatch_rules::RingRole::Reply { rank } => format!("reply rank {rank}"),
            ref other => other.name().to_string(),
        };
        let _ = writeln!(s, "  {} {:<14} {}", r.name, role, flags);
    }
    let _ = writeln!(s);
    if !c.stacks.is_empty() {
        let (first, latest) = rank_dumps(&c.stacks);
        let _ = writeln!(s, "stacks (main threads, {} rounds)", c.stacks.len());
        if let Some(core) = c
            .stacks
            .iter()
            .rev()
            .flat_map(|r| r.dumps.iter())
            .find(|d| d.rank.is_none())
        {
            let line = match (&core.error, core_waits_for_reply(core)) {
                (Some(e), _) => format!("no stack ({}: {})", e.kind.as_str(), e.message),
                (None, true) => {
                    "waiting for a worker's reply (get_response / acquire_read)".to_string()
                }
                (None, false) => core
                    .main_thread()
                    .and_then(|t| t.frames.first())
                    .map(|f| format!("in {}", f.place()))
                    .unwrap_or_else(|| "no main thread".to_string()),
            };
            let _ = writeln!(s, "  engine core: {line}");
        }
        for line in describe(&latest, &first) {
            let _ = writeln!(s, "  {line}");
        }
        let _ = writeln!(s);
    }
    let said: Vec<&hangwatch_rules::logs::LogEvent> = c
        .events
        .iter()
        .filter(|e| !matches!(e.kind, hangwatch_rules::logs::LogEventKind::Stats { .. }))
        .collect();
    let last_stats = c
        .events
        .iter()
        .rev()
        .find(|e| matches!(e.kind, hangwatch_rules::logs::LogEventKind::Stats { .. }));
    if !said.is_empty() || last_stats.is_some() {
        let _ = writeln!(s, "what vLLM said");
        if let Some(st) = last_stats {
            let _ = writeln!(s, "  last stats: {}", st.line);
        }
        for e in said.iter().rev().take(12).rev() {
            let _ = writeln!(s, "  {} [{}]", e.line, e.kind.name());
        }
        let _ = writeln!(s);
    }
    let lint = hangwatch_rules::lint::lint(&c.engine.settings);
    if !lint.is_empty() {
        let _ = writeln!(s, "configuration findings (lint.json)");
        for f in &lint {
            let _ = writeln!(s, "  {} {}: {}", f.severity, f.code, f.message);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "time line");
    for (t, line) in &c.timeline {
        let _ = writeln!(s, "  {}  {}", rfc3339(*t), line);
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "files: manifest.json (contract), rings.json, processes.json, environment.json, verdict.json,"
    );
    let _ = writeln!(
        s,
        "       snapshots.jsonl (replay with: hangwatch replay snapshots.jsonl)"
    );
    s
}
