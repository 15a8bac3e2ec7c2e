//! Incident bundles: one directory per incident with everything a person needs after
//! the processes are gone. Written atomically (a temporary directory renamed into
//! place, updates swapped in with `renameat2(RENAME_EXCHANGE)`), mode 0700, with
//! retention by count and total size.

use hangwatch_collectors::evidence::StackRound;
use hangwatch_rules::{EngineFacts, Incident, Millis, Snapshot, Verdict};
use serde::Serialize;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

mod files;
mod summary;

pub use summary::summary;

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

pub(super) fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BundleError + 'a {
    move |source| BundleError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// Why a bundle is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// An incident opened, escalated, ended, or new stacks came for it.
    Incident,
    /// A person asked for it (`POST /capture`): the record it carries is the capture's
    /// own (its id ends in `-capture-…`), not an incident's.
    Capture,
    /// Another node's agent opened an incident for the deployment: this node's part,
    /// under that incident's id (`peers/`).
    Peer,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Incident => "incident",
            Trigger::Capture => "capture",
            Trigger::Peer => "peer",
        }
    }
}

/// Everything a bundle is made of, gathered by the agent at the moment of writing.
pub struct BundleContents {
    /// The incident, or for a capture the record that names it.
    pub incident: Incident,
    pub trigger: Trigger,
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
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(io("setting mode of", &self.dir))?;
        let final_dir = self.dir.join(&c.incident.id);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            c.incident.id,
            std::process::id() as u128 * 1_000_000 + now_nanos() % 1_000_000
        ));
        let result = files::write_into(&tmp, c).and_then(|()| {
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
        // Also after a failed write: a full disk is exactly when old bundles must go.
        self.retain(&c.incident.id);
        result?;
        Ok(final_dir)
    }

    /// Oldest bundles go first when there are too many or they take too much room; the
    /// bundle just written is never removed.
    fn retain(&self, keep: &str) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let entries: Vec<fs::DirEntry> = entries.flatten().collect();
        remove_stale_temporaries(&entries);
        // Bundles a person asked for go before any incident's: a capture loop must
        // never push an incident's evidence out. Oldest first within each.
        let mut bundles: Vec<(bool, std::time::SystemTime, PathBuf, u64)> = entries
            .iter()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter(|e| e.path().join("manifest.json").is_file())
            .map(|e| {
                let p = e.path();
                let t = fs::metadata(p.join("manifest.json"))
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                let size = dir_size(&p);
                (!is_capture(&p), t, p, size)
            })
            .collect();
        bundles.sort();
        let mut count = bundles.len();
        let mut total: u64 = bundles.iter().map(|b| b.3).sum();
        for (_, _, path, size) in &bundles {
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

/// Whether a bundle was asked for (`trigger` `capture` in its manifest).
fn is_capture(bundle: &Path) -> bool {
    use std::io::Read;
    let mut bytes = Vec::new();
    let read = fs::File::open(bundle.join("manifest.json"))
        .and_then(|f| f.take(1 << 20).read_to_end(&mut bytes));
    if read.is_err() {
        return false;
    }
    serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|m| m["trigger"] == "capture")
}

/// Every byte below `p` (a bundle's `stacks/` too); links are not followed.
fn dir_size(p: &Path) -> u64 {
    fs::read_dir(p)
        .map(|es| {
            es.flatten()
                .filter_map(|e| {
                    let m = e.path().symlink_metadata().ok()?;
                    Some(if m.is_dir() {
                        dir_size(&e.path())
                    } else {
                        m.len()
                    })
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Temporary folders older than this are left over by a write that was interrupted
/// (the agent killed mid-write): they would otherwise take room for ever.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(600);

fn remove_stale_temporaries(entries: &[fs::DirEntry]) {
    for e in entries {
        if !e.file_name().to_string_lossy().starts_with(".tmp-") {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TMP);
        if old && fs::remove_dir_all(e.path()).is_ok() {
            tracing::info!(path = %e.path().display(), "removed a stale temporary bundle");
        }
    }
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

pub(super) fn put(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
    let path = dir.join(name);
    // Bundles hold stacks, environments and log lines: readable by root only.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io("creating", &path))?;
    // No fsync per file: under heavy I/O one fsync waited for the whole node's
    // writeback for over a minute (seen in the suite: the bundle thread in
    // folio_wait_writeback), and a bundle late is worth less than one lost in a crash.
    f.write_all(bytes).map_err(io("writing", &path))
}

/// One JSON document a line (`snapshots.jsonl`, `events.jsonl`): replayable, greppable.
pub(super) fn put_jsonl<T: Serialize>(
    dir: &Path,
    name: &'static str,
    items: &[T],
) -> Result<(), BundleError> {
    let mut bytes = Vec::new();
    for item in items {
        serde_json::to_writer(&mut bytes, item).map_err(|e| BundleError::Encode {
            file: name,
            source: e,
        })?;
        bytes.push(b'\n');
    }
    put(dir, name, &bytes)
}

pub(super) fn put_json<T: Serialize>(
    dir: &Path,
    name: &'static str,
    v: &T,
) -> Result<(), BundleError> {
    let mut bytes = serde_json::to_vec_pretty(v).map_err(|e| BundleError::Encode {
        file: name,
        source: e,
    })?;
    bytes.push(b'\n');
    put(dir, name, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over the count, captures go first, whatever their age.
    #[test]
    fn captures_never_push_incidents_out() {
        let d = tempfile::tempdir().expect("dir");
        let put = |name: &str, trigger: &str| {
            let b = d.path().join(name);
            fs::create_dir_all(&b).expect("mkdir");
            let m = serde_json::json!({ "trigger": trigger }).to_string();
            fs::write(b.join("manifest.json"), m).expect("write");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        put("incident-old", "incident");
        put("incident-mid", "incident");
        for i in 0..5 {
            put(&format!("capture-{i}"), "capture");
        }
        let w = BundleWriter {
            dir: d.path().to_path_buf(),
            max_count: 3,
            max_total_bytes: u64::MAX,
        };
        w.retain("capture-4");
        let mut left: Vec<String> = fs::read_dir(d.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["capture-4", "incident-mid", "incident-old"]);
    }

    #[test]
    fn sizes_count_stacks_and_stale_temporaries_go() {
        let d = tempfile::tempdir().expect("dir");
        let b = d.path().join("vllm-1-20261203T000000Z");
        fs::create_dir_all(b.join("stacks")).expect("mkdir");
        fs::write(b.join("manifest.json"), vec![b'x'; 100]).expect("write");
        fs::write(b.join("stacks/rank-0.txt"), vec![b'y'; 1000]).expect("write");
        assert_eq!(dir_size(&b), 1100, "stacks/ counts");
        let stale = d.path().join(".tmp-old");
        let fresh = d.path().join(".tmp-new");
        fs::create_dir(&stale).expect("mkdir");
        fs::create_dir(&fresh).expect("mkdir");
        let c = std::ffi::CString::new(stale.to_str().expect("utf8")).expect("c");
        let hour_ago = libc::timeval {
            tv_sec: (now_nanos() / 1_000_000_000) as libc::time_t - 3600,
            tv_usec: 0,
        };
        // SAFETY: utimes on a folder in our own temporary directory.
        assert_eq!(
            unsafe { libc::utimes(c.as_ptr(), [hour_ago, hour_ago].as_ptr()) },
            0
        );
        let entries: Vec<fs::DirEntry> = fs::read_dir(d.path()).expect("ls").flatten().collect();
        remove_stale_temporaries(&entries);
        assert!(!stale.exists(), "an interrupted write's leftovers go");
        assert!(fresh.exists(), "a write in progress stays");
        assert!(b.exists());
    }
}
