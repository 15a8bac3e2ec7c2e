//! The `logs` collector: follows each engine's log sources and turns their lines into
//! events joined to engines by pid.
//!
//! Sources: the engine's own stdout/stderr when they are files (`vllm serve … >FILE
//! 2>&1`, found through `/proc/<api pid>/fd/1` with no configuration), configured files
//! and globs, and Kubernetes container logs in CRI format (`/var/log/pods/…`).

pub mod cri;
pub mod follow;
pub mod journal;
pub mod owners;
pub mod parse;

use crate::collector::{Collector, Outcome};
use follow::{Follower, Limits};
use hangwatch_rules::logs::LogEvent;
use hangwatch_rules::Snapshot;
use hangwatch_rules::{EngineFacts, Millis};
use journal::JournalLine;
use owners::{pod_uid_of_path, Owners, Scope};
use parse::classify;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How a source's lines are framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Plain,
    /// `<RFC 3339> <stream> <P|F> <text>`; `P` parts are joined until `F`.
    Cri,
}

/// A configured source: a path or a glob, optionally tied to one engine.
#[derive(Clone, Debug)]
pub struct SourceSpec {
    pub pattern: String,
    pub format: Format,
    pub engine: Option<String>,
}

struct Source {
    follower: Follower,
    format: Format,
    cri: cri::Joiner,
    /// Engine this source belongs to (configured, or found through its fds).
    engine: Option<String>,
    /// The pod whose kubelet log folder holds the file.
    pod_uid: Option<String>,
    /// Recent lines, for the bundle's logs.txt.
    tail: VecDeque<String>,
    /// Since when its file has been missing (a pod deleted, a log rotated away for good).
    missing_since: Option<Millis>,
}

/// Lines kept per source for bundles.
const TAIL_LINES: usize = 400;
/// Longest line kept in an event.
const EVENT_LINE_BYTES: usize = 2048;

/// Every followed log source (files, globs, the journal) and what is known of whose
/// lines they hold; the `logs` collector (`LogsCollector`) drives it each tick and the
/// bundle output reads its tails (`LogTails`).
pub struct LogSources {
    journal: Option<journal::JournalSource>,
    journal_tail: VecDeque<JournalLine>,
    specs: Vec<SourceSpec>,
    sources: BTreeMap<PathBuf, Source>,
    limits: Limits,
    last_glob_ms: Millis,
    started: bool,
    /// When each engine was last seen: the sources of an engine gone this long go too.
    engine_seen: BTreeMap<String, Millis>,
    /// Which engine's process a line's pid is, per source (`owners.rs`).
    owners: Owners,
}

/// How long an engine's own sources are kept after the engine was last seen (a restart
/// under the same id finds its files again; a vanished engine's files are let go).
const FORGET_SOURCES_MS: Millis = 5 * 60_000;

/// One tick's reading: events by engine, lines per source, problems.
#[derive(Default)]
pub struct LogReading {
    pub events: Vec<(Option<String>, LogEvent)>,
    pub lines_by_source: BTreeMap<String, u64>,
    pub cut_lines: u64,
    /// Sources that cannot be followed (refused, unreadable), in words.
    pub problems: Vec<String>,
    /// Sources let go of this tick: their series go too.
    pub forgotten: Vec<String>,
}

impl LogSources {
    pub fn new(specs: Vec<SourceSpec>, limits: Limits) -> LogSources {
        LogSources {
            journal: None,
            journal_tail: VecDeque::new(),
            specs,
            sources: BTreeMap::new(),
            limits,
            last_glob_ms: 0,
            started: false,
            engine_seen: BTreeMap::new(),
            owners: Owners::default(),
        }
    }

    /// Follows journald units and identifiers (see `journal`).
    pub fn with_journal(mut self, units: &[String], identifiers: &[String]) -> LogSources {
        self.journal =
            journal::JournalSource::start(units, identifiers, self.limits.max_line_bytes);
        self
    }

    /// Adds the engines' own stdout/stderr files, expands globs (every 10 s), reads
    /// every source and turns lines into events.
    pub fn poll(
        &mut self,
        engines: &[EngineFacts],
        proc_root: &Path,
        now_ms: Millis,
    ) -> LogReading {
        let mut reading = LogReading {
            forgotten: self.forget_gone(engines, now_ms),
            ..Default::default()
        };
        self.find_sources(engines, proc_root, now_ms);
        self.poll_journal(&mut reading, now_ms);
        self.poll_files(&mut reading, now_ms);
        reading
    }

    fn find_sources(&mut self, engines: &[EngineFacts], proc_root: &Path, now_ms: Millis) {
        for e in engines {
            let Some(api) = e.api_pid else { continue };
            for fd in [1, 2] {
                if let Some(path) = stdio_file(proc_root, api, fd) {
                    self.add(path, Format::Plain, Some(e.id.clone()));
                }
            }
        }
        if now_ms - self.last_glob_ms >= 10_000 || !self.started {
            self.last_glob_ms = now_ms;
            for spec in self.specs.clone() {
                for path in expand(&spec.pattern) {
                    // Configured paths may be links (`/var/log/containers/*.log`): follow
                    // where they point now; opens then refuse a link swapped in later.
                    let path = std::fs::canonicalize(&path).unwrap_or(path);
                    self.add(path, spec.format, spec.engine.clone());
                }
            }
        }
        self.started = true;
    }

    fn poll_journal(&mut self, reading: &mut LogReading, now_ms: Millis) {
        let Some(j) = &self.journal else { return };
        let lines = j.poll(200_000);
        reading
            .lines_by_source
            .insert(j.label.clone(), lines.len() as u64);
        for line in lines {
            let scope = Scope::Journal(line.pid);
            let ev = event_of(&line.text, &j.label, scope, None, &self.owners, now_ms);
            reading.events.extend(ev);
            self.journal_tail.push_back(line);
            while self.journal_tail.len() > TAIL_LINES {
                self.journal_tail.pop_front();
            }
        }
    }

    fn poll_files(&mut self, reading: &mut LogReading, now_ms: Millis) {
        for (path, src) in &mut self.sources {
            let before = src.follower.counters;
            let lines = src.follower.poll();
            // The follower has just looked at the path: since when it names nothing.
            src.missing_since = match (src.follower.missing, src.missing_since) {
                (false, _) => None,
                (true, since) => since.or(Some(now_ms)),
            };
            reading.problems.extend(src.follower.problem.clone());
            let label = path.display().to_string();
            reading
                .lines_by_source
                .insert(label.clone(), src.follower.counters.lines - before.lines);
            reading.cut_lines += src.follower.counters.cut_lines - before.cut_lines;
            for raw in lines {
                let line = match src.format {
                    Format::Plain => Some(raw),
                    Format::Cri => src.cri.push(&raw),
                };
                let Some(line) = line else { continue };
                let scope = match (&src.engine, &src.pod_uid) {
                    (Some(e), _) => Scope::Engine(e),
                    (None, Some(uid)) => Scope::Pod(uid),
                    (None, None) => Scope::Host,
                };
                let engine = src.engine.as_deref();
                let ev = event_of(&line, &label, scope, engine, &self.owners, now_ms);
                reading.events.extend(ev);
                src.tail.push_back(line);
                while src.tail.len() > TAIL_LINES {
                    src.tail.pop_front();
                }
            }
        }
    }

    /// Lets go of the sources of engines gone for a while and of files missing for a
    /// while (every pod a node ever ran would otherwise stay, and its series with it);
    /// returns their labels.
    fn forget_gone(&mut self, engines: &[EngineFacts], now_ms: Millis) -> Vec<String> {
        for e in engines {
            self.engine_seen.insert(e.id.clone(), now_ms);
        }
        self.owners.update(engines, now_ms, FORGET_SOURCES_MS);
        self.engine_seen
            .retain(|_, seen| now_ms - *seen <= FORGET_SOURCES_MS);
        let seen = &self.engine_seen;
        let mut forgotten = Vec::new();
        self.sources.retain(|path, src| {
            let keep = match (&src.engine, src.missing_since) {
                (Some(id), _) if !seen.contains_key(id) => {
                    tracing::info!(source = %path.display(), engine = %id, "engine gone: no longer following its log");
                    false
                }
                (_, Some(since)) if now_ms - since > FORGET_SOURCES_MS => {
                    tracing::info!(source = %path.display(), "log file gone: no longer following it");
                    false
                }
                _ => true,
            };
            if !keep {
                forgotten.push(path.display().to_string());
            }
            keep
        });
        forgotten
    }

    fn add(&mut self, path: PathBuf, format: Format, engine: Option<String>) {
        if self.sources.contains_key(&path) {
            return;
        }
        // Files present at start-up are followed from their end; files found later
        // (new rotations, new pods, engines started later) from their beginning.
        let from_end = !self.started;
        tracing::info!(source = %path.display(), engine = ?engine, "following log");
        let pod_uid = pod_uid_of_path(&path);
        self.sources.insert(
            path.clone(),
            Source {
                follower: Follower::new(path, from_end, self.limits),
                format,
                cri: cri::Joiner::default(),
                engine,
                pod_uid,
                tail: VecDeque::new(),
                missing_since: None,
            },
        );
    }

    /// The last lines of every source of an engine, for its bundle (journald lines are
    /// included when one of the engine's processes wrote them).
    pub fn tail_of(&self, engine: &str) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = self
            .sources
            .iter()
            .filter(|(_, s)| s.engine.as_deref() == Some(engine))
            .map(|(p, s)| (p.display().to_string(), scrubbed(s.tail.iter())))
            .collect();
        if let Some(j) = &self.journal {
            let mine = scrubbed(
                self.journal_tail
                    .iter()
                    .filter(|l| self.owners.wrote_for(l.pid, engine))
                    .map(|l| &l.text),
            );
            if !mine.is_empty() {
                out.push((j.label.clone(), mine));
            }
        }
        out
    }
}

/// The `logs` collector as the runner drives it. The follower state is shared with
/// whoever writes bundles (`LogTails`), which needs the last lines of an engine's logs.
pub struct LogsCollector {
    inner: Arc<Mutex<LogSources>>,
    proc_root: PathBuf,
}

/// A handle on the followed logs' recent lines, for bundles.
#[derive(Clone)]
pub struct LogTails(Arc<Mutex<LogSources>>);

impl LogTails {
    pub fn tail_of(&self, engine: &str) -> Vec<(String, Vec<String>)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tail_of(engine)
    }
}

impl LogsCollector {
    pub fn new(logs: LogSources, proc_root: PathBuf) -> (LogsCollector, LogTails) {
        let inner = Arc::new(Mutex::new(logs));
        (
            LogsCollector {
                inner: inner.clone(),
                proc_root,
            },
            LogTails(inner),
        )
    }
}

impl Collector for LogsCollector {
    fn name(&self) -> &'static str {
        "logs"
    }

    /// Events join their engine's facts; events of engines already gone are the
    /// snapshot's late events (a dying engine's last words).
    fn collect(&mut self, snap: &mut Snapshot, now: Millis) -> Outcome {
        let reading = self.inner.lock().unwrap_or_else(|p| p.into_inner()).poll(
            &snap.engines,
            &self.proc_root,
            now,
        );
        snap.log_lines = reading.lines_by_source;
        snap.forgotten_log_sources = reading.forgotten;
        snap.log_cut_lines = reading.cut_lines;
        let problems = reading.problems;
        for (engine, ev) in reading.events {
            let Some(id) = engine else { continue };
            match snap.engines.iter_mut().find(|e| e.id == id) {
                Some(e) => e.log_events.push(ev),
                None => snap.late_events.push((id, ev)),
            }
        }
        Outcome {
            error: None,
            problems,
        }
    }
}

/// Lines leave the agent (into a bundle) only with credentials cut out.
fn scrubbed<'a>(lines: impl Iterator<Item = &'a String>) -> Vec<String> {
    lines.map(|l| crate::scrub::scrub(l).into_owned()).collect()
}

fn cut(line: &str) -> String {
    let mut text = line.to_string();
    if text.len() > EVENT_LINE_BYTES {
        let mut at = EVENT_LINE_BYTES;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
    text
}

/// The event a line means, if any, with its engine: vLLM's lines belong to the engine
/// whose process of the role the prefix names wrote them, looked up where the source
/// says (`owners.rs`; no such process: to none); lines without vLLM's prefix (NCCL,
/// CUDA, the driver) to the source's engine.
fn event_of(
    line: &str,
    source: &str,
    scope: Scope<'_>,
    source_engine: Option<&str>,
    owners: &Owners,
    now_ms: Millis,
) -> Option<(Option<String>, LogEvent)> {
    let (kind, prefix) = classify(line)?;
    let pid = prefix.as_ref().map(|p| p.pid);
    let engine = match &prefix {
        Some(p) => p.speaker().and_then(|s| owners.owner(p.pid, s, scope)),
        None => source_engine.map(String::from),
    };
    let event = LogEvent {
        at_ms: now_ms,
        logged_at: prefix.as_ref().map(|p| p.time.to_string()),
        source: source.to_string(),
        process: prefix.as_ref().map(|p| p.process.to_string()),
        pid,
        kind,
        line: cut(&crate::scrub::scrub(line)),
    };
    Some((engine, event))
}

/// `/proc/<pid>/fd/<fd>` when it is a regular file: the path as the process sees it,
/// reached through its root so container paths resolve.
fn stdio_file(proc_root: &Path, pid: u32, fd: u32) -> Option<PathBuf> {
    let link = std::fs::read_link(proc_root.join(format!("{pid}/fd/{fd}"))).ok()?;
    let text = link.to_str()?;
    if !text.starts_with('/') || text.ends_with(" (deleted)") || text.starts_with("/dev/") {
        return None;
    }
    let through_root = proc_root
        .join(format!("{pid}/root"))
        .join(text.trim_start_matches('/'));
    let meta = std::fs::metadata(&through_root).ok()?;
    meta.is_file().then_some(through_root)
}

/// A path, or a glob with `*` and `?` in its last components.
pub fn expand(pattern: &str) -> Vec<PathBuf> {
    if !pattern.contains(['*', '?']) {
        return vec![PathBuf::from(pattern)];
    }
    let mut current = vec![PathBuf::from(if pattern.starts_with('/') {
        "/"
    } else {
        "."
    })];
    for part in pattern.split('/').filter(|p| !p.is_empty()) {
        let mut next = Vec::new();
        for dir in &current {
            if part.contains(['*', '?']) {
                let Ok(rd) = std::fs::read_dir(dir) else {
                    continue;
                };
                let mut names: Vec<PathBuf> = rd
                    .flatten()
                    .filter(|e| wildcard(part, &e.file_name().to_string_lossy()))
                    .map(|e| e.path())
                    .collect();
                names.sort();
                next.extend(names);
            } else {
                next.push(dir.join(part));
            }
        }
        current = next;
    }
    // Everything but folders: a FIFO or socket that matches is refused when opened, and
    // said, rather than silently passed over.
    current
        .into_iter()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| !m.is_dir()))
        .collect()
}

/// `*` any run, `?` one character.
pub fn wildcard(pat: &str, name: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    while i < p.len() && p[i] == '*' {
        i += 1;
    }
    i == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(wildcard("*.log", "vllm.log"));
        assert!(wildcard("vllm-?.log", "vllm-1.log"));
        assert!(!wildcard("*.log", "vllm.log.1"));
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("pods/ns_a/vllm")).unwrap();
        std::fs::write(d.path().join("pods/ns_a/vllm/0.log"), "").unwrap();
        std::fs::write(d.path().join("pods/ns_a/vllm/1.log"), "").unwrap();
        let pat = format!("{}/pods/*/vllm/*.log", d.path().display());
        assert_eq!(expand(&pat).len(), 2);
    }

    fn engine(id: &str, core_pid: u32) -> EngineFacts {
        let mut e: EngineFacts = serde_json::from_value(serde_json::json!({
            "id": id, "model": null, "port": null, "api_pid": null,
            "core": {"pid": core_pid, "state": "sleeping"},
            "tp": 1, "pp": 1, "dp": 1, "dp_rank": 0, "output_rank": 0,
            "execute_timeout_seconds": 300.0, "ranks": []
        }))
        .expect("engine facts");
        e.id = id.to_string();
        e
    }

    /// A line with vLLM's prefix belongs to the engine whose process wrote it — also
    /// after that process is gone (a dying engine's last words) — and to no engine when
    /// no engine ever had that pid (someone else wrote it).
    #[test]
    fn lines_belong_to_the_engine_of_their_pid() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("vllm.log");
        std::fs::write(&path, "").unwrap();
        let spec = SourceSpec {
            pattern: path.display().to_string(),
            format: Format::Plain,
            engine: None,
        };
        let limits = Limits {
            max_line_bytes: 4096,
            max_bytes_per_poll: 1 << 20,
        };
        let mut c = LogSources::new(vec![spec], limits);
        let engines = vec![engine("vllm-1", 4242)];
        c.poll(&engines, Path::new("/proc"), 1_000);
        let dead = "ERROR 11-29 13:37:10 [core.py:1512] TimeoutError: RPC call to execute_model timed out.";
        let text = format!("(EngineCore pid=4242) {dead}\n(EngineCore pid=999999) {dead}\n");
        std::fs::write(&path, &text).unwrap();
        // The engine is gone by the time its last words are read.
        let r = c.poll(&[], Path::new("/proc"), 2_000);
        let owners: Vec<Option<String>> = r.events.iter().map(|(e, _)| e.clone()).collect();
        assert_eq!(owners, vec![Some("vllm-1".to_string()), None]);
    }

    /// A collector following one plain glob.
    fn following(glob: &str) -> LogSources {
        let spec = SourceSpec {
            pattern: glob.to_string(),
            format: Format::Plain,
            engine: None,
        };
        let limits = Limits {
            max_line_bytes: 4096,
            max_bytes_per_poll: 1 << 20,
        };
        LogSources::new(vec![spec], limits)
    }

    /// A FIFO that matches a configured glob would block a plain `open` for ever (and
    /// with it the tick): it is refused at once, and said.
    #[test]
    fn a_fifo_matching_a_glob_is_refused_not_waited_on() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("vllm-0.log");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path in our own temporary directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut c = following(&format!("{}/*.log", d.path().display()));
        let started = std::time::Instant::now();
        let r = c.poll(&[], Path::new("/proc"), 1_000);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert!(
            r.problems.iter().any(|p| p.contains("not a regular file")),
            "{:?}",
            r.problems
        );
    }

    /// A file that matched a glob and is gone (its pod deleted) is let go of after a
    /// while and named, so its series go too; one still there stays.
    #[test]
    fn files_gone_for_a_while_are_forgotten() {
        let d = tempfile::tempdir().unwrap();
        let (gone, kept) = (d.path().join("a.log"), d.path().join("b.log"));
        std::fs::write(&gone, "").unwrap();
        std::fs::write(&kept, "").unwrap();
        let mut c = following(&format!("{}/*.log", d.path().display()));
        c.poll(&[], Path::new("/proc"), 1_000);
        std::fs::remove_file(&gone).unwrap();
        let r = c.poll(&[], Path::new("/proc"), 2_000);
        assert!(r.forgotten.is_empty(), "not at once: {:?}", r.forgotten);
        let r = c.poll(&[], Path::new("/proc"), 2_000 + FORGET_SOURCES_MS + 1);
        assert_eq!(r.forgotten, vec![gone.display().to_string()]);
        assert_eq!(c.sources.len(), 1);
        assert!(c.sources.contains_key(&kept));
    }
}
