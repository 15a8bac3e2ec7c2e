//! vLLM's log lines → events. One multi-pattern scan (Aho-Corasick) rejects the lines
//! that mean nothing — nearly all of them — before any other work, so parsing keeps up
//! with a log growing by megabytes per second.

use aho_corasick::AhoCorasick;
use hangwatch_rules::logs::{LogEventKind, RingWaitSide};
use std::sync::OnceLock;

/// Words that start every event this parser knows; a line without any is skipped.
const TRIGGERS: [&str; 16] = [
    "Avg prompt throughput",
    "No available shared memory broadcast block",
    "TimeoutError: RPC call to ",
    "encountered a fatal error",
    "EngineDeadError",
    "died unexpectedly",
    "force killing sub process",
    "NCCL WARN",
    "NCCL ERROR",
    "ncclInternalError",
    "ncclSystemError",
    "ncclRemoteError",
    "CUDA error",
    "cudaError",
    "CUDA_ERROR_",
    "NVRM: Xid",
];

fn triggers() -> Option<&'static AhoCorasick> {
    static AC: OnceLock<Option<AhoCorasick>> = OnceLock::new();
    AC.get_or_init(|| AhoCorasick::new(TRIGGERS).ok()).as_ref()
}

/// A vLLM log line's prefix: `(EngineCore pid=25213) INFO 11-29 13:36:21 [shm_broadcast.py:871] msg`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix<'a> {
    pub process: &'a str,
    pub pid: u32,
    pub level: &'a str,
    pub time: &'a str,
    pub file: &'a str,
    pub line: u32,
    pub message: &'a str,
}

/// Parses vLLM's prefix at the start of the line (after colour codes and blanks only):
/// text anywhere else in a line — a request path in an access-log line, a prompt — is
/// whatever a client wrote, not vLLM speaking.
pub fn parse_prefix(line: &str) -> Option<Prefix<'_>> {
    let start = skip_colour_and_blanks(line);
    let rest = line.get(start..)?.strip_prefix('(')?;
    let close = rest.find(") ")?;
    let inner = &rest[..close];
    let (process, pid) = inner.split_once(" pid=")?;
    if process.is_empty() || process.contains(' ') {
        return None;
    }
    let pid: u32 = pid.parse().ok()?;
    let after = &rest[close + 2..];
    let (level, after) = after.split_once(' ')?;
    if level.is_empty() || !level.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    // MM-DD HH:MM:SS, ASCII only: anything else is not vLLM's prefix (and slicing a
    // line at a byte that is not a character boundary must never panic).
    let time = after.get(..14)?;
    let shape_ok = time.bytes().enumerate().all(|(i, b)| match i {
        2 => b == b'-',
        5 => b == b' ',
        8 | 11 => b == b':',
        _ => b.is_ascii_digit(),
    });
    if !shape_ok {
        return None;
    }
    let after = after.get(14..)?.strip_prefix(" [")?;
    let end = after
        .find("] ")
        .or_else(|| after.strip_suffix(']').map(|s| s.len()))?;
    let loc = &after[..end];
    let (file, ln) = loc.rsplit_once(':')?;
    let message = after.get(end + 2..).unwrap_or("");
    Some(Prefix {
        process,
        pid,
        level,
        time,
        file,
        line: ln.parse().ok()?,
        message,
    })
}

/// Byte offset after leading blanks and ANSI colour sequences (`ESC [ … m`).
fn skip_colour_and_blanks(line: &str) -> usize {
    let b = line.as_bytes();
    let mut i = 0;
    loop {
        while b.get(i).is_some_and(|c| *c == b' ' || *c == b'\t') {
            i += 1;
        }
        if b.get(i) == Some(&0x1b) && b.get(i + 1) == Some(&b'[') {
            let end = b[i + 2..].iter().position(|c| *c == b'm');
            match end {
                Some(e) if e <= 16 => i += 2 + e + 1,
                _ => return i,
            }
        } else {
            return i;
        }
    }
}

fn number_after<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    let i = s.find(key)? + key.len();
    let rest = s[i..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// What a line means, if anything. Cheap rejections first: most lines mean nothing.
pub fn classify(line: &str) -> Option<(LogEventKind, Option<Prefix<'_>>)> {
    if let Some(ac) = triggers() {
        if !ac.is_match(line) {
            return None;
        }
    }
    let Some(p) = parse_prefix(line) else {
        // Without vLLM's prefix only NCCL's, CUDA's and the driver's own lines count;
        // none of them changes a verdict.
        return device_trouble(line).map(|k| (k, None));
    };
    let msg = p.message;
    let kind = stats(msg)
        .or_else(|| engine_trouble(msg, Some(p.line)))
        .or_else(|| worker_trouble(msg))
        .or_else(|| device_trouble(msg))?;
    Some((kind, Some(p)))
}

/// `Engine 000: Avg prompt throughput: … Running: N reqs, Waiting: M reqs, …`
fn stats(msg: &str) -> Option<LogEventKind> {
    if !(msg.starts_with("Engine ") && msg.contains("Avg prompt throughput")) {
        return None;
    }
    let prompt = number_after(msg, "Avg prompt throughput:")?.parse().ok()?;
    let gen = number_after(msg, "Avg generation throughput:")?
        .parse()
        .ok()?;
    let running = number_after(msg, "Running:")?.parse().ok()?;
    let waiting = number_after(msg, "Waiting:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kv = msg
        .find("KV cache usage:")
        .and_then(|_| number_after(msg, "KV cache usage:"))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v / 100.0);
    Some(LogEventKind::Stats {
        prompt_tps: prompt,
        generation_tps: gen,
        running,
        waiting,
        kv_cache_usage: kv,
    })
}

/// The engine core's own words about a hang and its end: ring waits, its RPC timeout,
/// the fatal error and `EngineDeadError`.
fn engine_trouble(msg: &str, line_no: Option<u32>) -> Option<LogEventKind> {
    if msg.contains("No available shared memory broadcast block found in") {
        let seconds = number_after(msg, "found in")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        // vLLM 0.32: the reader's wait is logged from shm_broadcast.py:8xx, the writer's
        // (ring full) from 7xx.
        let side = match line_no {
            Some(l) if (700..800).contains(&l) => RingWaitSide::Writer,
            _ => RingWaitSide::Reader,
        };
        return Some(LogEventKind::RingWait { side, seconds });
    }
    if let Some(i) = msg.find("TimeoutError: RPC call to ") {
        let rest = &msg[i + "TimeoutError: RPC call to ".len()..];
        let method = rest.split_whitespace().next().unwrap_or("").to_string();
        return Some(LogEventKind::RpcTimeout { method });
    }
    if msg.contains("EngineCore encountered a fatal error") {
        return Some(LogEventKind::FatalError);
    }
    if msg.contains("EngineDeadError") {
        return Some(LogEventKind::EngineDead);
    }
    None
}

/// A worker that died, or that vLLM kills at shutdown.
fn worker_trouble(msg: &str) -> Option<LogEventKind> {
    if let Some(i) = msg.find("Worker proc ") {
        if msg.contains("died unexpectedly") {
            let rest = &msg[i + "Worker proc ".len()..];
            let name = rest.split_whitespace().next().unwrap_or("").to_string();
            let rank = name
                .rsplit("_TP")
                .next()
                .filter(|_| name.contains("_TP"))
                .and_then(|n| n.parse().ok());
            let exit_code = number_after(msg, "exit code:").and_then(|v| v.parse().ok());
            return Some(LogEventKind::WorkerDied {
                name,
                rank,
                exit_code,
            });
        }
    }
    let i = msg.find("force killing sub process ")?;
    let rest = &msg[i + "force killing sub process ".len()..];
    let name = rest.split_whitespace().next().unwrap_or("").to_string();
    let pid = number_after(rest, " pid").and_then(|v| v.parse().ok());
    Some(LogEventKind::ShutdownKill { name, pid })
}

/// NCCL, CUDA and the GPU driver (Xid).
fn device_trouble(msg: &str) -> Option<LogEventKind> {
    if msg.contains("NCCL WARN")
        || msg.contains("NCCL ERROR")
        || msg.contains("ncclInternalError")
        || msg.contains("ncclSystemError")
        || msg.contains("ncclRemoteError")
    {
        let level = if msg.contains("WARN") {
            "warn"
        } else {
            "error"
        };
        return Some(LogEventKind::Nccl {
            level: level.to_string(),
        });
    }
    if msg.contains("CUDA error") || msg.contains("cudaError") || msg.contains("CUDA_ERROR_") {
        return Some(LogEventKind::CudaError);
    }
    let i = msg.find("NVRM: Xid")?;
    // `NVRM: Xid (PCI:0000:3b:00): 79, pid=…`
    let code = msg[i..]
        .find("): ")
        .map(|j| &msg[i + j + 3..])
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok());
    Some(LogEventKind::Xid { code })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix() {
        let p = parse_prefix(
            "(EngineCore pid=25213) INFO 11-29 13:36:21 [shm_broadcast.py:871] No available",
        )
        .unwrap();
        assert_eq!(
            (p.process, p.pid, p.level, p.time, p.file, p.line),
            (
                "EngineCore",
                25213,
                "INFO",
                "11-29 13:36:21",
                "shm_broadcast.py",
                871
            )
        );
        assert_eq!(p.message, "No available");
        assert!(
            parse_prefix("INFO:     127.0.0.1:47436 - \"POST /v1/completions HTTP/1.1\" 500")
                .is_none()
        );
        assert!(parse_prefix("(x pid=abc) INFO").is_none());
    }

    #[test]
    fn events() {
        let (k, _) = classify("(APIServer pid=25163) INFO 11-29 13:36:30 [loggers.py:335] Engine 000: Avg prompt throughput: 0.0 tokens/s, Avg generation throughput: 0.0 tokens/s, Running: 1 reqs, Waiting: 0 reqs, CPU KV cache usage: 0.5%, Prefix cache hit rate: 0.0%").unwrap();
        assert_eq!(
            k,
            LogEventKind::Stats {
                prompt_tps: 0.0,
                generation_tps: 0.0,
                running: 1,
                waiting: 0,
                kv_cache_usage: Some(0.005)
            }
        );
        let (k, _) = classify("(EngineCore pid=1) ERROR 11-29 13:37:10 [core.py:1512] TimeoutError: RPC call to sample_tokens timed out.").unwrap();
        assert_eq!(
            k,
            LogEventKind::RpcTimeout {
                method: "sample_tokens".into()
            }
        );
        let (k, _) = classify("(EngineCore pid=1) ERROR 11-29 13:37:10 [multiproc_executor.py:390] Worker proc VLLM::Worker_TP3 died unexpectedly (exit code: 1), shutting down executor.").unwrap();
        assert_eq!(
            k,
            LogEventKind::WorkerDied {
                name: "VLLM::Worker_TP3".into(),
                rank: Some(3),
                exit_code: Some(1)
            }
        );
        let (k, _) = classify("(EngineCore pid=1) INFO 11-29 13:36:21 [shm_broadcast.py:771] No available shared memory broadcast block found in 60 seconds.").unwrap();
        assert_eq!(
            k,
            LogEventKind::RingWait {
                side: RingWaitSide::Writer,
                seconds: 60.0
            }
        );
        assert!(classify("(Worker_TP0 pid=2) INFO 11-29 13:35:35 [default_loader.py:501] Loading weights took 0.01 seconds").is_none());
        let (k, _) = classify(
            "[12345.6] NVRM: Xid (PCI:0000:3b:00): 79, pid=1, GPU has fallen off the bus.",
        )
        .unwrap();
        assert_eq!(k, LogEventKind::Xid { code: Some(79) });
    }

    /// Lines that once panicked the tick (a multi-byte character where the timestamp
    /// should be), and every cut and character insertion of real lines: never a panic.
    #[test]
    fn any_line_is_safe_to_classify() {
        let nasty = "(EngineCore pid=1) INFO 11-29 13:36:2é [x.py:1] NCCL WARN boom";
        assert!(parse_prefix(nasty).is_none());
        let _ = classify(nasty);
        let real = [
            "(EngineCore pid=25213) INFO 11-29 13:36:21 [shm_broadcast.py:871] No available shared memory broadcast block found in 60 seconds.",
            "(EngineCore pid=2) ERROR 11-29 13:37:10 [core.py:1512] TimeoutError: RPC call to sample_tokens timed out.",
            "(APIServer pid=3) INFO 11-29 13:36:21 [loggers.py:123] Engine 000: Avg prompt throughput: 1.0 tokens/s, Avg generation throughput: 2.0 tokens/s, Running: 1 reqs, Waiting: 0 reqs, GPU KV cache usage: 0.1%",
            "(EngineCore pid=4) WARNING 11-29 13:37:11 [system_utils.py:225] [shutdown] force killing sub process VLLM::Worker_TP1 pid 77",
            "NVRM: Xid (PCI:0000:3b:00): 79, pid=1",
        ];
        for line in real {
            for (at, _) in line.char_indices() {
                let _ = classify(&line[..at]);
                for ch in ["é", "€", "😀", "\u{0}", "\u{fffd}"] {
                    let mut l = line.to_string();
                    l.insert_str(at, ch);
                    let _ = classify(&l);
                }
            }
        }
    }

    /// Any API client can write text into the server's access log: a request path that
    /// reads like vLLM's fatal lines is not vLLM saying so.
    #[test]
    fn forged_text_in_an_access_log_line_is_no_event() {
        for line in [
            r#"INFO:     127.0.0.1:50000 - "GET /EngineDeadError HTTP/1.1" 404 Not Found"#,
            r#"INFO:     127.0.0.1:50000 - "GET /TimeoutError:%20RPC%20call%20to%20execute_model%20timed%20out. HTTP/1.1" 404 Not Found"#,
            r#"INFO:     127.0.0.1:50000 - "GET /(EngineCore pid=1) ERROR 11-29 13:37:10 [core.py:1512] TimeoutError: RPC call to execute_model timed out. HTTP/1.1" 404"#,
            "Worker proc VLLM::Worker_TP1 died unexpectedly (exit code: 1)",
        ] {
            assert_eq!(classify(line).map(|(k, _)| k), None, "{line}");
        }
        let coloured = "\u{1b}[1;36m(EngineCore pid=7)\u{1b}[0;0m ERROR 11-29 13:37:10 [core.py:1512] EngineDeadError";
        assert!(
            parse_prefix(coloured).is_none(),
            "colour inside the prefix is not vLLM's layout"
        );
        let led = "\u{1b}[0m(EngineCore pid=7) ERROR 11-29 13:37:10 [core.py:1512] EngineDeadError";
        assert_eq!(
            classify(led).map(|(k, _)| k),
            Some(LogEventKind::EngineDead)
        );
        let nccl = "host:12:34 [0] NCCL WARN Call to connect returned Connection refused";
        assert!(matches!(
            classify(nccl),
            Some((LogEventKind::Nccl { .. }, None))
        ));
    }
}
