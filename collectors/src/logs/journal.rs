//! journald sources: `journalctl --follow --lines=0 --output=json` for the configured
//! units (`-u`) and syslog identifiers (`-t`), read on a thread of its own. JSON, not
//! the bare message, because journald's `_PID` — the process that wrote the line, taken
//! from the socket, not from the writer's words — is what ties a line to an engine:
//! anyone can `logger -t vllm` a line that reads like vLLM's. From the
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

/// One journal entry: its text and the host pid journald says wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalLine {
    pub text: String,
    pub pid: Option<u32>,
}

/// An entry of `journalctl --output=json`: `MESSAGE` is a string, or an array of bytes
/// when it is not UTF-8 (or holds control characters).
pub fn parse_entry(json: &[u8], max_line: usize) -> Option<JournalLine> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let text = match v.get("MESSAGE")? {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(bytes) => {
            let raw: Vec<u8> = bytes
                .iter()
                .take(max_line)
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            String::from_utf8_lossy(&raw).into_owned()
        }
        _ => return None,
    };
    let mut text = text;
    if text.len() > max_line {
        let mut at = max_line;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
    let pid = v
        .get("_PID")
        .and_then(|p| p.as_str())
        .and_then(|p| p.parse().ok());
    Some(JournalLine { text, pid })
}

pub struct JournalSource {
    pub label: String,
    rx: mpsc::Receiver<JournalLine>,
    pub dropped: Arc<AtomicU64>,
}

/// Hands `journalctl`'s entries to the tick until its output ends (true) or the tick's
/// side is gone (false). Entries over the bound, or that find the queue full, are
/// dropped and counted.
fn relay(
    out: std::process::ChildStdout,
    tx: &mpsc::SyncSender<JournalLine>,
    dropped: &AtomicU64,
    max_line: usize,
) -> bool {
    let mut r = BufReader::new(out);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        // A MESSAGE of up to `max_line` bytes as JSON: escapes at most sextuple it.
        // Longer entries are cut to nothing.
        if buf.len() > max_line * 6 + 4096 {
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Some(line) = parse_entry(&buf, max_line) else {
            continue;
        };
        match tx.try_send(line) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return false,
        }
    }
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
            "--output=json".into(),
            "--output-fields=MESSAGE,_PID".into(),
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
        let (tx, rx) = mpsc::sync_channel::<JournalLine>(QUEUE_LINES);
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
                        let reader_gone = child
                            .stdout
                            .take()
                            .is_some_and(|out| !relay(out, &tx, &d, max_line));
                        let _ = child.kill();
                        let _ = child.wait();
                        if reader_gone {
                            return;
                        }
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
    pub fn poll(&self, max: usize) -> Vec<JournalLine> {
        self.rx.try_iter().take(max).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_with_text_or_bytes() {
        let e = parse_entry(br#"{"MESSAGE":"(EngineCore pid=7) hi","_PID":"4242"}"#, 100);
        assert_eq!(
            e,
            Some(JournalLine {
                text: "(EngineCore pid=7) hi".into(),
                pid: Some(4242)
            })
        );
        let e = parse_entry(br#"{"MESSAGE":[104,105,255],"_PID":"x"}"#, 100).unwrap();
        assert_eq!((e.text.as_str(), e.pid), ("hi\u{fffd}", None));
        assert_eq!(parse_entry(b"{not json", 100), None);
        assert_eq!(parse_entry(br#"{"_PID":"1"}"#, 100), None);
        let long = format!(r#"{{"MESSAGE":"{}"}}"#, "é".repeat(100));
        assert_eq!(parse_entry(long.as_bytes(), 9).unwrap().text, "éééé");
    }
}
