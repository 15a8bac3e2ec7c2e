//! A receiver's durable queue: one JSON file per notification, named by a sequence
//! number, in the receiver's own folder under `alerts.queue_dir`. A notification is
//! written before it is first tried and removed only after the receiver took it (or
//! refused it for good), so an outage or an agent restart loses nothing, and a
//! delivered one is never sent again.
//!
//! Files are renamed into place (never seen half-written) but not fsynced: the queue
//! outlives the agent's process, not the node's power (which ends the engines too); a
//! forced sync on a busy node stalled for over a minute (`docs/results/hardening.md`).

use super::notice::Notice;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs;
use std::io;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// One Alertmanager alert of an incident: which rank (if any) and whether it fires.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AmAlert {
    pub alertname: String,
    pub rank: Option<u32>,
    /// The suspect's role (`worker`, `engine_core`, `api_server`…); none for an alert
    /// about the whole engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub firing: bool,
}

/// What waits in the queue: the notice and how it goes to Alertmanager.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Queued {
    pub notice: Notice,
    #[serde(default)]
    pub alerts: Vec<AmAlert>,
    /// A re-post of an open incident (Alertmanager only): worth nothing when anything
    /// else of the incident still waits.
    #[serde(default)]
    pub refresh: bool,
    /// Wall-clock milliseconds when it was queued.
    pub queued_ms: i64,
}

pub struct DiskQueue {
    dir: PathBuf,
    max: usize,
    next_seq: u64,
    items: VecDeque<(u64, Queued)>,
}

/// Files larger than this are not a notification we wrote.
const MAX_FILE_BYTES: u64 = 1 << 20;

impl DiskQueue {
    /// Opens (creating, mode 0700) the folder and loads what an earlier run left.
    /// Unreadable files are set aside as `*.bad` and named in the returned problems.
    pub fn open(dir: &Path, max: usize) -> io::Result<(DiskQueue, Vec<String>)> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        ours_alone(dir)?;
        let mut items = Vec::new();
        let mut problems = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(seq) = seq_of(&path) else { continue };
            match load(&path) {
                Ok(q) => items.push((seq, q)),
                Err(e) => {
                    problems.push(format!("{}: {e}; set aside as .bad", path.display()));
                    let _ = fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
        items.sort_by_key(|(s, _)| *s);
        let next_seq = items.last().map(|(s, _)| s + 1).unwrap_or(0);
        let q = DiskQueue {
            dir: dir.to_path_buf(),
            max,
            next_seq,
            items: items.into(),
        };
        Ok((q, problems))
    }

    /// Writes the notification; returns how many old ones were dropped to make room.
    pub fn push(&mut self, q: Queued) -> io::Result<usize> {
        let seq = self.next_seq;
        let body = serde_json::to_vec(&q).map_err(io::Error::other)?;
        let tmp = self.dir.join(format!(".{seq:020}.tmp"));
        // A file left there (or a link planted) is not written through: replaced.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(&body)?;
        drop(f);
        fs::rename(&tmp, self.path(seq))?;
        self.next_seq += 1;
        self.items.push_back((seq, q));
        let mut dropped = 0;
        while self.items.len() > self.max {
            self.pop()?;
            dropped += 1;
        }
        Ok(dropped)
    }

    pub fn front(&self) -> Option<&Queued> {
        self.items.front().map(|(_, q)| q)
    }

    /// Removes the oldest notification (delivered, or refused for good).
    pub fn pop(&mut self) -> io::Result<()> {
        if let Some((seq, _)) = self.items.pop_front() {
            match fs::remove_file(self.path(seq)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether anything of this incident waits.
    pub fn holds_incident(&self, incident: &str) -> bool {
        self.items
            .iter()
            .any(|(_, q)| q.notice.incident_id == incident)
    }

    pub fn oldest_ms(&self) -> Option<i64> {
        self.items.front().map(|(_, q)| q.queued_ms)
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }
}

fn seq_of(path: &Path) -> Option<u64> {
    if path.extension()? != "json" {
        return None;
    }
    path.file_stem()?.to_str()?.parse().ok()
}

/// The queue's folder must be the agent's own: a folder another user owns or can write
/// into could hand the agent files to send (or links to write through).
fn ours_alone(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no failure mode.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a folder",
            dir.display()
        )));
    }
    if meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} is owned by uid {} with mode {:o}: the queue needs a folder of the agent's own user that no one else can write",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

fn load(path: &Path) -> io::Result<Queued> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
        return Err(io::Error::other("not a regular file of at most 1 MiB"));
    }
    let text = fs::read(path)?;
    serde_json::from_slice(&text).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::notice::{Event, Notice, SCHEMA};
    use std::os::unix::fs::PermissionsExt;

    fn queued(incident: &str) -> Queued {
        Queued {
            notice: Notice {
                schema: SCHEMA.into(),
                id: format!("{incident}/opened/0"),
                event: Event::Opened,
                incident_id: incident.into(),
                engine: "vllm-1".into(),
                node: "n".into(),
                verdict: "stalled".into(),
                severity: "critical".into(),
                suspects: vec![],
                engine_reasons: vec![],
                summary: "s".into(),
                onset_at: "t".into(),
                opened_at: "t".into(),
                event_at: "t".into(),
                deadline_left_seconds: None,
                bundle: "/b".into(),
                labels: Default::default(),
            },
            alerts: vec![],
            refresh: false,
            queued_ms: 1,
        }
    }

    #[test]
    fn survives_a_restart_in_order_and_forgets_what_was_delivered() {
        let d = tempfile::tempdir().expect("tmp");
        let (mut q, p) = DiskQueue::open(d.path(), 10).expect("open");
        assert!(p.is_empty());
        for i in ["a", "b", "c"] {
            q.push(queued(i)).expect("push");
        }
        q.pop().expect("pop a");
        drop(q);
        fs::write(d.path().join("00000000000000000099.json"), b"{garbage").expect("write");
        let (q, p) = DiskQueue::open(d.path(), 10).expect("reopen");
        let ids: Vec<_> = q
            .items
            .iter()
            .map(|(_, x)| x.notice.incident_id.clone())
            .collect();
        assert_eq!(ids, ["b", "c"]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(d.path().join("00000000000000000099.bad").exists());
        assert_eq!(
            q.next_seq, 3,
            "a new notification goes after the loaded ones"
        );
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let d = tempfile::tempdir().expect("tmp");
        let (mut q, _) = DiskQueue::open(d.path(), 2).expect("open");
        assert_eq!(q.push(queued("a")).expect("push"), 0);
        assert_eq!(q.push(queued("b")).expect("push"), 0);
        assert_eq!(q.push(queued("c")).expect("push"), 1);
        assert_eq!(q.front().map(|x| x.notice.incident_id.as_str()), Some("b"));
        assert_eq!(fs::read_dir(d.path()).expect("ls").count(), 2);
        assert!(q.holds_incident("c") && !q.holds_incident("a"));
    }

    /// A link planted where the next temporary file goes is replaced, never written
    /// through; a folder others can write into is refused.
    #[test]
    fn no_write_through_a_planted_link_and_no_shared_folder() {
        let d = tempfile::tempdir().expect("tmp");
        let (mut q, _) = DiskQueue::open(d.path(), 10).expect("open");
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").expect("write");
        std::os::unix::fs::symlink(&victim, d.path().join(".00000000000000000000.tmp"))
            .expect("link");
        q.push(queued("a")).expect("push");
        assert_eq!(fs::read(&victim).expect("read"), b"precious");
        assert_eq!(q.len(), 1);
        let shared = d.path().join("shared");
        fs::create_dir(&shared).expect("mkdir");
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = DiskQueue::open(&shared, 10).err().expect("refused");
        assert!(e.to_string().contains("no one else can write"), "{e}");
    }
}
