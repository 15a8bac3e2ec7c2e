//! The recording: every snapshot as a JSON line, for `hangwatch replay` (the judge reads
//! time only from the snapshots, so a replay gives the live verdicts).

use anyhow::Context;
use hangwatch_rules::Snapshot;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub struct Recorder {
    path: PathBuf,
    out: BufWriter<File>,
    failed: bool,
}

impl Recorder {
    pub fn open(path: &Path) -> anyhow::Result<Recorder> {
        // Snapshots hold process facts and log lines: readable by root only.
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open recording {}", path.display()))?;
        Ok(Recorder {
            path: path.to_path_buf(),
            out: BufWriter::new(f),
            failed: false,
        })
    }

    /// A failing recording is logged once and never stops the agent.
    pub fn append(&mut self, s: &Snapshot) {
        let r = serde_json::to_writer(&mut self.out, s)
            .map_err(std::io::Error::other)
            .and_then(|()| self.out.write_all(b"\n"))
            .and_then(|()| self.out.flush());
        match r {
            Ok(()) => self.failed = false,
            Err(e) if !self.failed => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot append to recording");
                self.failed = true;
            }
            Err(_) => {}
        }
    }

    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }
}
