//! vLLM's log lines → events. One multi-pattern scan (Aho-Corasick) rejects the lines
//! that mean nothing — nearly all of them — before any other work, so parsing keeps up
//! with a log growing by megabytes per second.
//!
//! Provenance: vLLM writes text that clients control behind its own prefix (with
//! `--enable-log-requests`, stop strings, request ids and the model's output), so an
//! event that can change a verdict is accepted only from the process role and the vLLM
//! source file that emits it, with its words at the start of the message
//! (`SOURCES`; docs/vllm.md, "Which line may say what"). The collector then checks that
//! the pid in the prefix is that role's process of the engine (`logs/owners.rs`).

use aho_corasick::AhoCorasick;
use hangwatch_rules::logs::{LogEventKind, RingWaitSide};
use std::sync::OnceLock;

/// Words that start every event this parser knows; a line without any is skipped.
const TRIGGERS: [&str; 17] = [
    "Avg prompt throughput",
    "No available shared memory broadcast block",
    "TimeoutError: RPC call to ",
    "encountered a fatal error",
    "EngineDeadError",
    "died unexpectedly",
    "force killing sub process",
    "engine core exited unexpectedly",
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

/// Which of an engine's processes wrote a line, from the name in its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Speaker {
    /// `APIServer`, `APIServer_1`
    ApiServer,
    /// `EngineCore`, `EngineCore_DP1`
    EngineCore,
    /// `Worker_TP1`, `VllmWorker`, `Worker_DP0_TP1`
    Worker,
}

impl Speaker {
    pub fn of(process: &str) -> Option<Speaker> {
        if process.starts_with("APIServer") {
            Some(Speaker::ApiServer)
        } else if process.starts_with("EngineCore") {
            Some(Speaker::EngineCore)
        } else if process.contains("Worker") {
            Some(Speaker::Worker)
        } else {
            None
        }
    }
}

/// Who may say what: an event kind, the speakers and source files it is accepted from
/// (no files: any), the level it is logged at (none: any) and the words its message
/// starts with.
struct Source {
    speakers: &'static [Speaker],
    files: &'static [&'static str],
    level: Option<&'static str>,
    starts: &'static [&'static str],
    parse: fn(&str, u32) -> Option<LogEventKind>,
}

const SOURCES: [Source; 8] = [
    Source {
        speakers: &[Speaker::ApiServer],
        files: &["loggers.py"],
        level: None,
        starts: &["Engine "],
        parse: |m, _| stats(m),
    },
    Source {
        speakers: &[Speaker::EngineCore],
        files: &["shm_broadcast.py"],
        level: None,
        starts: &["No available shared memory broadcast block found in"],
        parse: ring_wait,
    },
    Source {
        speakers: &[Speaker::EngineCore],
        files: &["core.py"],
        level: Some("ERROR"),
        starts: &["TimeoutError: RPC call to "],
        parse: |m, _| rpc_timeout(m),
    },
    Source {
        speakers: &[Speaker::EngineCore],
        files: &["core.py"],
        level: Some("ERROR"),
        starts: &["EngineCore encountered a fatal error"],
        parse: |_, _| Some(LogEventKind::FatalError),
    },
    Source {
        speakers: &[Speaker::ApiServer],
        files: &[],
        level: Some("ERROR"),
        starts: &[
            "vllm.v1.engine.exceptions.EngineDeadError",
            "EngineDeadError",
        ],
        parse: |_, _| Some(LogEventKind::EngineDead),
    },
    Source {
        speakers: &[Speaker::EngineCore],
        files: &["multiproc_executor.py"],
        level: Some("ERROR"),
        starts: &["Worker proc "],
        parse: |m, _| worker_died(m),
    },
    Source {
        speakers: &[Speaker::ApiServer, Speaker::EngineCore],
        files: &["system_utils.py"],
        level: None,
        starts: &["[shutdown] force killing sub process "],
        parse: |m, _| shutdown_kill(m),
    },
    Source {
        speakers: &[Speaker::ApiServer],
        files: &["core_client.py"],
        level: Some("WARNING"),
        starts: &["[shutdown] MPClient: engine core exited unexpectedly"],
        parse: |_, _| Some(LogEventKind::CoreExited),
    },
];

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
    let speaker = Speaker::of(p.process)?;
    let kind = vllm_event(&p, speaker).or_else(|| {
        // The API server touches no GPU, and it is the process that logs clients' text.
        (speaker != Speaker::ApiServer)
            .then(|| device_trouble(p.message))
            .flatten()
    })?;
    Some((kind, Some(p)))
}

impl Prefix<'_> {
    /// The role of the process that wrote the line, by the name in its prefix.
    pub fn speaker(&self) -> Option<Speaker> {
        Speaker::of(self.process)
    }
}

/// The event of the first source whose speaker, file, level and opening words match.
fn vllm_event(p: &Prefix<'_>, speaker: Speaker) -> Option<LogEventKind> {
    SOURCES.iter().find_map(|s| {
        let ok = s.speakers.contains(&speaker)
            && (s.files.is_empty() || s.files.contains(&p.file))
            && s.level.is_none_or(|l| l == p.level)
            && s.starts.iter().any(|w| p.message.starts_with(w));
        if ok {
            (s.parse)(p.message, p.line)
        } else {
            None
        }
    })
}

/// `Engine 000: Avg prompt throughput: … Running: N reqs, Waiting: M reqs, …`
fn stats(msg: &str) -> Option<LogEventKind> {
    let rest = msg.strip_prefix("Engine ")?;
    let (engine_no, rest) = rest.split_once(": ")?;
    if engine_no.is_empty() || !engine_no.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !rest.starts_with("Avg prompt throughput:") {
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

/// `No available shared memory broadcast block found in N seconds.` vLLM 0.32 logs the
/// reader's wait (the engine core waiting for a reply) from shm_broadcast.py:8xx and the
/// writer's (ring full) from 7xx.
fn ring_wait(msg: &str, line_no: u32) -> Option<LogEventKind> {
    let seconds = number_after(msg, "found in")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let side = if (700..800).contains(&line_no) {
        RingWaitSide::Writer
    } else {
        RingWaitSide::Reader
    };
    Some(LogEventKind::RingWait { side, seconds })
}

/// `TimeoutError: RPC call to <method> timed out.`
fn rpc_timeout(msg: &str) -> Option<LogEventKind> {
    let rest = msg.strip_prefix("TimeoutError: RPC call to ")?;
    let method = rest.split_whitespace().next().unwrap_or("");
    let method: String = method.chars().take(64).collect();
    Some(LogEventKind::RpcTimeout { method })
}

/// `Worker proc VLLM::Worker_TP3 died unexpectedly (exit code: 1), shutting down executor.`
fn worker_died(msg: &str) -> Option<LogEventKind> {
    let rest = msg.strip_prefix("Worker proc ")?;
    let (name, after) = rest.split_once(' ')?;
    if !after.starts_with("died unexpectedly") || name.len() > 64 {
        return None;
    }
    let rank = name.rsplit_once("_TP").and_then(|(_, n)| n.parse().ok());
    let exit_code = number_after(after, "exit code:").and_then(|v| v.parse().ok());
    Some(LogEventKind::WorkerDied {
        name: name.to_string(),
        rank,
        exit_code,
    })
}

/// `[shutdown] force killing sub process VLLM::Worker_TP1 pid 25231`
fn shutdown_kill(msg: &str) -> Option<LogEventKind> {
    let rest = msg.strip_prefix("[shutdown] force killing sub process ")?;
    let name = rest.split_whitespace().next().unwrap_or("");
    let name: String = name.chars().take(64).collect();
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
        let led = "\u{1b}[0m(APIServer pid=7) ERROR 11-29 13:37:10 [async_llm.py:906] vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.";
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

    /// With `--enable-log-requests` vLLM writes clients' stop strings, request ids and
    /// the model's output behind its own prefix; none of that is vLLM speaking.
    #[test]
    fn client_text_behind_vllms_prefix_is_no_event() {
        let phrases = [
            "EngineDeadError",
            "vllm.v1.engine.exceptions.EngineDeadError: x",
            "TimeoutError: RPC call to execute_model timed out.",
            "Worker proc VLLM::Worker_TP1 died unexpectedly (exit code: 1)",
            "[shutdown] force killing sub process VLLM::Worker_TP1 pid 7",
            "No available shared memory broadcast block found in 60 seconds.",
            "EngineCore encountered a fatal error.",
            "Engine 000: Avg prompt throughput: 0.0 tokens/s, Avg generation throughput: 0.0 tokens/s, Running: 9 reqs",
        ];
        for phrase in phrases {
            for line in [
                format!("(APIServer pid=7) INFO 12-06 10:00:00 [logger.py:49] Received request cmpl-{phrase}: params: SamplingParams(n=1, stop=['{phrase}'])"),
                format!("(APIServer pid=7) INFO 12-06 10:00:00 [logger.py:72] Generated response cmpl-1: output: '{phrase}'"),
                format!("(APIServer pid=7) WARNING 12-06 10:00:00 [protocol.py:91] The following fields were present in the request but ignored: {{'{phrase}'}}"),
                // Its words at the start, but from a file or a process that never says them.
                format!("(APIServer pid=7) ERROR 12-06 10:00:00 [serving.py:1] {phrase}").replace("EngineDead", "x"),
                format!("(Worker_TP0 pid=7) ERROR 12-06 10:00:00 [core.py:1512] {phrase}"),
                format!("(EngineCore pid=7) INFO 12-06 10:00:00 [logger.py:49] {phrase}"),
                format!("(Someone pid=7) ERROR 12-06 10:00:00 [core.py:1512] {phrase}"),
            ] {
                assert_eq!(classify(&line).map(|(k, _)| k), None, "{line}");
            }
        }
        // The same words where vLLM writes them are events.
        let real = [
            "(APIServer pid=7) ERROR 12-06 10:00:00 [async_llm.py:906] vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.",
            "(EngineCore pid=7) ERROR 12-06 10:00:00 [core.py:1512] TimeoutError: RPC call to execute_model timed out.",
            "(EngineCore pid=7) ERROR 12-06 10:00:00 [multiproc_executor.py:390] Worker proc VLLM::Worker_TP1 died unexpectedly (exit code: 1), shutting down executor.",
            "(APIServer pid=7) WARNING 12-06 10:00:00 [system_utils.py:225] [shutdown] force killing sub process VLLM::Worker_TP1 pid 8",
            "(EngineCore_DP1 pid=7) INFO 12-06 10:00:00 [shm_broadcast.py:871] No available shared memory broadcast block found in 60 seconds.",
        ];
        for line in real {
            assert!(classify(line).is_some(), "{line}");
        }
        // The traceback line that quotes the timeout is not the timeout.
        let quoted = "(EngineCore pid=7) ERROR 11-29 13:37:10 [core.py:1512]     raise TimeoutError(f\"RPC call to {method} timed out.\") from e";
        assert_eq!(classify(quoted), None);
    }
}
