//! The real vLLM engine (CPU build, the suite's `tiny` model): the environment every
//! test starts it with, and load — completions from a few threads until dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Completion requests in a loop from a few threads, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub done: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(port: u16, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, done) = (stop.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) && n < 10_000 {
                        if complete(port) {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            done,
            threads,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One completion from the real engine's `tiny` model; whether it answered 200.
pub fn complete(port: u16) -> bool {
    let body = r#"{"model":"tiny","prompt":"the quick brown fox","max_tokens":48}"#;
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        std::thread::sleep(Duration::from_millis(200));
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// The settings every test's `vllm serve` runs with (`docs/vllm.md`, "A real engine on a
/// CPU-only machine"): offline, loopback, a small KV cache, vLLM's ring warning every
/// 10 s; `threads_bind` pins its OpenMP threads.
pub fn cpu_engine_env(cmd: &mut std::process::Command, threads_bind: &str) {
    cmd.env("VLLM_CPU_OMP_THREADS_BIND", threads_bind)
        .env("VLLM_CPU_KVCACHE_SPACE", "1")
        .env("VLLM_HOST_IP", "127.0.0.1")
        .env("GLOO_SOCKET_IFNAME", "lo")
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .env("VLLM_NO_USAGE_STATS", "1")
        .env("VLLM_RINGBUFFER_WARNING_INTERVAL", "10");
}
