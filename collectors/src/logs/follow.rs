//! Follows one log file the way `tail -F` does: from its end at start-up, across
//! rotation by rename (the old file is read to its end first) and by truncation,
//! through deletion and re-creation, with bounded memory: a line longer than the bound
//! is cut (and counted), invalid UTF-8 is replaced, and one poll reads at most a budget
//! of bytes (the rest waits for the next poll).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Bounds that keep a burst of megabytes per second from growing memory.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_line_bytes: usize,
    pub max_bytes_per_poll: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: 64 * 1024,
            max_bytes_per_poll: 8 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub lines: u64,
    pub bytes: u64,
    pub cut_lines: u64,
    pub rotations: u64,
    pub truncations: u64,
}

pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    dev: u64,
    offset: u64,
    /// Bytes of a line not yet ended by a newline.
    partial: Vec<u8>,
    /// The current line went over the bound: drop bytes until its newline.
    discarding: bool,
    limits: Limits,
    pub counters: Counters,
    /// Whether the next open starts at the end (only the very first one does).
    start_at_end: bool,
    /// Why the file could not be opened (refused: not a regular file, a link), until
    /// it can; the collector says it.
    pub problem: Option<String>,
    /// The path named nothing at the last poll (deleted, or not there yet).
    pub missing: bool,
}

impl Follower {
    /// `from_end`: skip what the file holds now (true at agent start-up).
    pub fn new(path: impl Into<PathBuf>, from_end: bool, limits: Limits) -> Follower {
        Follower {
            path: path.into(),
            file: None,
            ino: 0,
            dev: 0,
            offset: 0,
            partial: Vec::new(),
            discarding: false,
            limits,
            counters: Counters::default(),
            start_at_end: from_end,
            problem: None,
            missing: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// New complete lines since the last poll. Never fails: a missing file is waited for.
    pub fn poll(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut budget = self.limits.max_bytes_per_poll;
        let meta = std::fs::metadata(&self.path).ok();
        self.missing = meta.is_none();
        let replaced = match (&self.file, &meta) {
            (Some(_), Some(m)) => m.ino() != self.ino || m.dev() != self.dev,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if replaced {
            // Rotated by rename (or deleted): finish the old file, then move on.
            self.read_available(&mut out, &mut budget);
            if budget == 0 {
                return out;
            }
            self.flush_partial(&mut out);
            self.file = None;
            self.counters.rotations += 1;
        }
        if self.file.is_none() {
            let Some(m) = meta else {
                // Not there yet: when it appears, everything in it is new.
                self.start_at_end = false;
                return out;
            };
            let mut f = match crate::safe_open::open_regular(&self.path) {
                Ok(f) => f,
                Err(e) => {
                    self.problem = Some(format!("log {}: {e}", self.path.display()));
                    return out;
                }
            };
            self.problem = None;
            self.offset = if self.start_at_end { m.len() } else { 0 };
            if f.seek(SeekFrom::Start(self.offset)).is_err() {
                return out;
            }
            self.ino = m.ino();
            self.dev = m.dev();
            self.file = Some(f);
            self.start_at_end = false;
        }
        if let Some(m) = std::fs::metadata(&self.path)
            .ok()
            .filter(|m| m.ino() == self.ino)
        {
            if m.len() < self.offset {
                // Truncated in place (copytruncate): start over.
                self.counters.truncations += 1;
                self.offset = 0;
                self.partial.clear();
                self.discarding = false;
                if let Some(f) = &mut self.file {
                    let _ = f.seek(SeekFrom::Start(0));
                }
            }
        }
        self.read_available(&mut out, &mut budget);
        out
    }

    fn read_available(&mut self, out: &mut Vec<String>, budget: &mut usize) {
        let Some(mut f) = self.file.take() else {
            return;
        };
        let mut buf = vec![0u8; 64 * 1024];
        while *budget > 0 {
            let want = buf.len().min(*budget);
            let n = match f.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            *budget -= n;
            self.offset += n as u64;
            self.counters.bytes += n as u64;
            let mut start = 0;
            for i in memchr::memchr_iter(b'\n', &buf[..n]) {
                self.push(&buf[start..i]);
                self.end_line(out);
                start = i + 1;
            }
            self.push(&buf[start..n]);
        }
        self.file = Some(f);
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.discarding || bytes.is_empty() {
            return;
        }
        let room = self
            .limits
            .max_line_bytes
            .saturating_sub(self.partial.len());
        if bytes.len() > room {
            self.partial.extend_from_slice(&bytes[..room]);
            self.discarding = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    fn end_line(&mut self, out: &mut Vec<String>) {
        if self.discarding {
            self.counters.cut_lines += 1;
        }
        let mut line = match std::str::from_utf8(&self.partial) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(&self.partial).into_owned(),
        };
        if line.ends_with('\r') {
            line.pop();
        }
        out.push(line);
        self.counters.lines += 1;
        self.partial.clear();
        self.discarding = false;
    }

    /// A file that ended without a newline (rotated away): its last line still counts.
    fn flush_partial(&mut self, out: &mut Vec<String>) {
        if !self.partial.is_empty() || self.discarding {
            self.end_line(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(p: &Path, s: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap();
        f.write_all(s).unwrap();
    }

    #[test]
    fn starts_at_the_end_then_follows() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        append(&p, b"old line\n");
        let mut f = Follower::new(&p, true, Limits::default());
        assert!(f.poll().is_empty());
        append(&p, b"one\ntw");
        assert_eq!(f.poll(), vec!["one"]);
        append(&p, b"o\n");
        assert_eq!(f.poll(), vec!["two"]);
    }

    #[test]
    fn rotation_by_rename_loses_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        append(&p, b"");
        let mut f = Follower::new(&p, true, Limits::default());
        f.poll();
        append(&p, b"before rotation\nlast words");
        std::fs::rename(&p, d.path().join("a.log.1")).unwrap();
        append(&p, b"after rotation\n");
        assert_eq!(
            f.poll(),
            vec!["before rotation", "last words", "after rotation"]
        );
        assert_eq!(f.counters.rotations, 1);
    }

    #[test]
    fn truncation_starts_over() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        append(&p, b"");
        let mut f = Follower::new(&p, true, Limits::default());
        f.poll();
        append(&p, b"a fairly long first line\n");
        assert_eq!(f.poll().len(), 1);
        std::fs::write(&p, b"short\n").unwrap();
        assert_eq!(f.poll(), vec!["short"]);
        assert_eq!(f.counters.truncations, 1);
    }

    #[test]
    fn deleted_and_recreated_and_late_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("late.log");
        let mut f = Follower::new(&p, true, Limits::default());
        assert!(f.poll().is_empty());
        append(&p, b"hello\n");
        // A file that appears after start-up is read from its beginning.
        assert_eq!(f.poll(), vec!["hello"]);
        std::fs::remove_file(&p).unwrap();
        assert!(f.poll().is_empty());
        append(&p, b"again\n");
        assert_eq!(f.poll(), vec!["again"]);
    }

    #[test]
    fn a_10_mb_line_is_cut_and_counted_and_invalid_utf8_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        append(&p, b"");
        let lim = Limits {
            max_line_bytes: 1024,
            max_bytes_per_poll: 64 << 20,
        };
        let mut f = Follower::new(&p, true, lim);
        f.poll();
        let mut big = vec![b'x'; 10 << 20];
        big.push(b'\n');
        append(&p, &big);
        append(&p, b"ok \xff\xfe bytes\n");
        let lines = f.poll();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), 1024);
        assert_eq!(lines[1], "ok \u{fffd}\u{fffd} bytes");
        assert_eq!(f.counters.cut_lines, 1);
        assert!(f.partial.capacity() < 64 * 1024, "memory stays bounded");
    }

    #[test]
    fn a_burst_is_read_over_several_polls() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        append(&p, b"");
        let lim = Limits {
            max_line_bytes: 1024,
            max_bytes_per_poll: 1000,
        };
        let mut f = Follower::new(&p, true, lim);
        f.poll();
        let burst: String = (0..1000).map(|i| format!("line {i:04}\n")).collect();
        append(&p, burst.as_bytes());
        let mut got = Vec::new();
        for _ in 0..20 {
            got.extend(f.poll());
        }
        assert_eq!(got.len(), 1000);
        assert_eq!(got[999], "line 0999");
    }
}
