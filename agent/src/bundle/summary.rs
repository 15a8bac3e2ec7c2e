//! `summary.txt`: the one page a person reads first.

use super::files::rank_dumps;
use super::BundleContents;
use crate::clock::rfc3339;
use hangwatch_rules::incident::Outcome;
use hangwatch_rules::stacks::{core_waits_for_reply, describe};
use hangwatch_rules::Role;
use std::fmt::Write as _;

/// The one page a person reads first.
pub fn summary(c: &BundleContents) -> String {
    let mut s = String::new();
    verdict(&mut s, c);
    ranks(&mut s, c);
    rings(&mut s, c);
    stacks(&mut s, c);
    vllm_said(&mut s, c);
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

/// Who, why, when, and how it ended.
fn verdict(s: &mut String, c: &BundleContents) {
    let i = &c.incident;
    let e = &c.engine;
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
    if let Some(r) = i.orphaned() {
        let _ = writeln!(s, "verdict: ORPHANED (warning): {}", r.detail);
    } else if i.severity() == "warning" {
        let _ = writeln!(
            s,
            "verdict: LONG STEP (warning): every rank is still at work, past the long-step limit"
        );
    } else if let Some(r) = i.remote_wait().filter(|_| i.suspects.is_empty()) {
        let _ = writeln!(
            s,
            "verdict: {verdict}, culprit on another node: {}",
            r.detail
        );
    } else if i.suspects.is_empty() {
        let _ = writeln!(s, "verdict: {verdict}, culprit unknown");
    } else {
        let names: Vec<String> = i
            .suspects
            .iter()
            .map(|x| format!("{} (pid {})", x.who(), x.pid))
            .collect();
        let _ = writeln!(s, "verdict: {verdict}, suspect {}", names.join(", "));
    }
    for x in &i.suspects {
        let _ = writeln!(s, "  {} (confidence {:.2}):", x.who(), x.confidence);
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
}

fn ranks(s: &mut String, c: &BundleContents) {
    let i = &c.incident;
    let _ = writeln!(s, "ranks");
    for r in &c.engine.ranks {
        let lag = c
            .verdict
            .rank_lag_seconds
            .iter()
            .find(|(k, _)| *k == r.rank)
            .map_or(0.0, |(_, l)| *l);
        let doing = c
            .verdict
            .rank_activity
            .iter()
            .find(|a| a.rank == r.rank)
            .map_or(String::new(), |a| format!("  {}", a.doing.as_str()));
        let mark = if i.suspects.iter().any(|x| x.is_rank(r.rank)) {
            "  <- suspect"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  rank {:<3} pid {:<8} state {}  wchan {:<28} lag {:>5.1} s  cpu {:>8.1} s  {}{}{}",
            r.rank,
            r.process.pid,
            r.process.state.letter(),
            r.process.wchan.as_deref().unwrap_or("-"),
            lag,
            r.process.cpu_seconds,
            r.title,
            doing,
            mark
        );
    }
    others(s, c);
    let _ = writeln!(s);
}

/// The engine core (unless it is rank 0) and the API server, in the ranks' columns.
fn others(s: &mut String, c: &BundleContents) {
    let e = &c.engine;
    let uni = e.ranks.iter().any(|r| r.process.pid == e.core.pid);
    let core = (!uni).then_some((Role::EngineCore, &e.core));
    let api = e.api.as_ref().map(|p| (Role::ApiServer, p));
    for (role, p) in core.into_iter().chain(api) {
        let mark = if c
            .incident
            .suspects
            .iter()
            .any(|x| x.role == role && x.rank.is_none())
        {
            "  <- suspect"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  {:<8} pid {:<8} state {}  wchan {:<28}                cpu {:>8.1} s  {}{}",
            match role {
                Role::EngineCore => "core",
                _ => "api",
            },
            p.pid,
            p.state.letter(),
            p.wchan.as_deref().unwrap_or("-"),
            p.cpu_seconds,
            role.words(),
            mark
        );
    }
}

fn rings(s: &mut String, c: &BundleContents) {
    let _ = writeln!(
        s,
        "rings (flags: written|read by reader 0,1,…; * = pending)"
    );
    for r in &c.engine.rings {
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
}

fn stacks(s: &mut String, c: &BundleContents) {
    if !c.stacks.is_empty() {
        let (first, latest) = rank_dumps(&c.stacks);
        let _ = writeln!(s, "stacks (main threads, {} rounds)", c.stacks.len());
        if let Some(core) = c
            .stacks
            .iter()
            .rev()
            .flat_map(|r| r.dumps.iter())
            .find(|d| d.rank.is_none() && d.pid == c.engine.core.pid)
        {
            let halted = c.engine.core.state.is_halted()
                || c.engine.core.state == hangwatch_rules::ProcState::DiskSleep;
            let line = match (&core.error, core_waits_for_reply(core) && !halted) {
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
            let state = if halted {
                format!(
                    "state {} (its stack is where it stopped); ",
                    c.engine.core.state.letter()
                )
            } else {
                String::new()
            };
            let _ = writeln!(s, "  engine core: {state}{line}");
        }
        for line in describe(&latest, &first) {
            let _ = writeln!(s, "  {line}");
        }
        let _ = writeln!(s);
    }
}

fn vllm_said(s: &mut String, c: &BundleContents) {
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
}
