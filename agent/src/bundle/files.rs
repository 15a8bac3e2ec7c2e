//! The files of a bundle, each written whole (see `manifest.json` for the list).

use super::{io, put, put_json, put_jsonl, summary, BundleContents, BundleError, SCHEMA};
use crate::clock::rfc3339;
use crate::status::ring_view;
use hangwatch_collectors::evidence::{title_of, StackRound};
use hangwatch_rules::incident::Outcome;
use hangwatch_rules::stacks::StackDump;
use hangwatch_rules::{EngineFacts, Millis, Snapshot};
use serde_json::json;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub fn write_into(dir: &Path, c: &BundleContents) -> Result<(), BundleError> {
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
    put_jsonl(dir, "snapshots.jsonl", &c.snapshots)?;
    files.extend(write_evidence(dir, c)?);
    let mut all = files.clone();
    let stack_files = write_stacks(dir, c)?;
    all.extend(stack_files.iter().map(String::as_str));
    all.push("manifest.json");
    all.sort_unstable();
    put_json(dir, "manifest.json", &manifest(c, &all))?;
    Ok(())
}

/// What vLLM said and what the GPUs and NCCL RAS showed: `lint.json`, `events.jsonl`,
/// `logs.txt`, and `gpu.json`, `nccl_ras.*` where there is something to say.
fn write_evidence(dir: &Path, c: &BundleContents) -> Result<Vec<&'static str>, BundleError> {
    let mut files = vec!["lint.json", "events.jsonl", "logs.txt"];
    let lint = hangwatch_rules::lint::lint(&c.engine.settings);
    put_json(
        dir,
        "lint.json",
        &json!({ "engine": c.engine.id, "findings": lint }),
    )?;
    put_jsonl(dir, "events.jsonl", &c.events)?;
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
    Ok(files)
}

/// `stacks/engine-core.txt`, `stacks/api-server.txt`, `stacks/rank-<N>.txt` (every
/// round, oldest first, in py-spy's text layout) and `stacks.json`.
fn write_stacks(dir: &Path, c: &BundleContents) -> Result<Vec<String>, BundleError> {
    if c.stacks.is_empty() {
        return Ok(Vec::new());
    }
    let sdir = dir.join("stacks");
    fs::create_dir(&sdir).map_err(io("creating", &sdir))?;
    fs::set_permissions(&sdir, fs::Permissions::from_mode(0o700))
        .map_err(io("setting mode of", &sdir))?;
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    for round in &c.stacks {
        for d in &round.dumps {
            let api = c.engine.api.as_ref().is_some_and(|p| p.pid == d.pid);
            let (file, who) = match d.rank {
                Some(r) => (
                    format!("rank-{r}.txt"),
                    format!("rank {r}, {}", title_of(&round.titles, d.pid)),
                ),
                None if api => ("api-server.txt".to_string(), "API server".to_string()),
                None => ("engine-core.txt".to_string(), "engine core".to_string()),
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
pub(super) fn rank_dumps(
    rounds: &[StackRound],
) -> (BTreeMap<u32, StackDump>, BTreeMap<u32, StackDump>) {
    let mut first = BTreeMap::new();
    let mut latest = BTreeMap::new();
    let mut latest_complete: BTreeMap<u32, StackDump> = BTreeMap::new();
    for d in rounds.iter().flat_map(|r| r.dumps.iter()) {
        if let Some(r) = d.rank {
            if d.error.is_none() {
                first.entry(r).or_insert_with(|| d.clone());
            }
            if d.complete() {
                latest_complete.insert(r, d.clone());
            }
            latest.insert(r, d.clone());
        }
    }
    // The summary describes each rank by its latest whole stack, when there is one.
    latest.extend(latest_complete);
    (first, latest)
}

fn manifest(c: &BundleContents, files: &[&str]) -> serde_json::Value {
    let i = &c.incident;
    json!({
        "schema": SCHEMA,
        "incident_id": i.id,
        "trigger": c.trigger.as_str(),
        "engine": i.engine,
        "verdict": i.verdict.as_str(),
        "severity": i.severity(),
        "onset_at": rfc3339(i.onset_ms),
        "opened_at": rfc3339(i.opened_ms),
        "detected_after_seconds": i.detected_after_seconds(),
        "deadline_left_seconds": i.deadline_left_seconds,
        "suspects": i.suspects.iter().map(|s| json!({
            "rank": s.rank,
            "role": s.role.as_str(),
            "pid": s.pid,
            "node": s.node,
            "reasons": s.reason_codes(),
            "confidence": s.confidence,
        })).collect::<Vec<_>>(),
        "engine_reasons": i.engine_reasons.iter().map(|r| r.code.as_str()).collect::<Vec<_>>(),
        "outcome": i.outcome.map(|o| match o { Outcome::Resolved => "resolved", Outcome::Dead => "dead" }),
        "closed_at": i.closed_ms.map(rfc3339),
        "updated_at": rfc3339(c.verdict.at_ms),
        "files": files,
        "agent_version": crate::version::VERSION,
        "agent_commit": crate::version::COMMIT,
        "pod": c.engine.pod,
        "deployment": c.engine.deployment,
        "replica": c.engine.deployment.as_ref().filter(|_| c.engine.dp > 1).map(|_| c.engine.dp_rank),
        "node": c.engine.node,
        "waits_for": c.verdict.waits_for,
        "ranks": c.engine.ranks.iter().map(|r| json!({
            "rank": r.rank,
            "pid": r.process.pid,
            "ns_pid": r.process.ns_pid,
        })).collect::<Vec<_>>(),
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
