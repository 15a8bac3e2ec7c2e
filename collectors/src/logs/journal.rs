//! journald sources: `journalctl --follow --lines=0 --output=cat` for the configured
//! units (`-u`) and syslog identifiers (`-t`), read on a thread of its own. From the
//! current end, as every source at start-up; a bounded queue between the reader and
//! the tick keeps a burst from growing memory (lines over the bound are dropped and
//! counted); a `journalctl` that exits is started again after a pause.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Lines waiting between the reader thread and the tick.
const QUEUE_LINES: usize = 100_000;

pub struct JournalSource {
    pub label: String,
    rx: mpsc::Receiver<String>,
    pub dropped: Arc<AtomicU64>,
}

impl JournalSource {
    /// `units` become `-u`, `identifiers` `-t`. Fails when there is nothing to follow.
    pub fn start(
        units: &[String],
        identifiers: &[String],
        max_line: usize,
    ) -> Option<JournalSource> {
        if units.is_empty() && identifiers.is_empty() {
            return None;
        }
        let mut args: Vec<String> = vec![
            "--follow".into(),
            "--lines=0".into(),
            "--output=cat".into(),
            "--no-pager".into(),
        ];
        for u in units {
            args.push(format!("--unit={u}"));
        }
        for t in identifiers {
            args.push(format!("--identifier={t}"));
        }
        let label = format!(
            "journald:{}",
            units
                .iter()
                .chain(identifiers.iter())
                .cloned()
                .collect::<Vec<_>>()
                .join(",")
        );
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        let l = label.clone();
        let spawned = std::thread::Builder::new()
            .name("journald".into())
            .spawn(move || loop {
                match Command::new("journalctl")
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                {
                    Ok(mut child) => {
                        tracing::info!(source = %l, "following journal");
                        if let Some(out) = child.stdout.take() {
                            let mut r = BufReader::new(out);
                            let mut buf = Vec::new();
                            loop {
                                buf.clear();
                                match r.read_until(b'\n', &mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(_) => {}
                                }
                                if buf.last() == Some(&b'\n') {
                                    buf.pop();
                                }
                                buf.truncate(max_line);
                                let line = String::from_utf8_lossy(&buf).into_owned();
                                match tx.try_send(line) {
                                    Ok(()) => {}
                                    Err(mpsc::TrySendError::Full(_)) => {
                                        d.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(mpsc::TrySendError::Disconnected(_)) => {
                                        let _ = child.kill();
                                        return;
                                    }
                                }
                            }
                        }
                        let _ = child.kill();
                        let _ = child.wait();
                        tracing::warn!(source = %l, "journalctl ended; following again in 2 s");
                    }
                    Err(e) => {
                        tracing::warn!(source = %l, error = %e, "cannot run journalctl; retrying in 2 s");
                    }
                }
                std::thread::sleep(Duration::from_secs(2));
            });
        match spawned {
            Ok(_) => Some(JournalSource { label, rx, dropped }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the journald thread");
                None
            }
        }
    }

    /// Lines read since the last poll (at most `max` of them).
    pub fn poll(&self, max: usize) -> Vec<String> {
        self.rx.try_iter().take(max).collect()
    }
}
