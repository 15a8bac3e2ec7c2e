//! Reaching an engine's loopback services (vLLM's `/metrics`, NCCL RAS) when the engine
//! lives in a network namespace of its own, as in a pod: `127.0.0.1` there is not the
//! agent's `127.0.0.1` (docs/containers.md).
//!
//! A socket belongs to the namespace it was created in, whichever thread uses it later.
//! So a short-lived thread enters the engine's namespace (`setns`, needs
//! `CAP_SYS_ADMIN`), connects, hands the connected socket back, and ends — the agent's
//! own threads never leave the host's namespace, even if something fails half-way.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where a process's network namespace is, when it is not the agent's own.
pub fn foreign_netns(proc_root: &Path, pid: u32) -> Option<PathBuf> {
    let theirs = proc_root.join(pid.to_string()).join("ns/net");
    let ours = std::fs::metadata("/proc/self/ns/net").ok()?;
    let t = std::fs::metadata(&theirs).ok()?;
    (t.ino() != ours.ino() || t.dev() != ours.dev()).then_some(theirs)
}

/// Connects to `addr`, inside the namespace `netns` when given.
pub fn connect(netns: Option<&Path>, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let Some(ns) = netns else {
        return TcpStream::connect_timeout(&addr, timeout);
    };
    let ns_file = File::open(ns)?;
    let joined = std::thread::Builder::new()
        .name("netns-connect".into())
        .spawn(move || -> io::Result<TcpStream> {
            // SAFETY: setns on this thread only, with a namespace file we opened; the
            // thread ends right after, so nothing else runs in that namespace.
            let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot enter the engine's network namespace (needs CAP_SYS_ADMIN): {e}"
                    ),
                ));
            }
            TcpStream::connect_timeout(&addr, timeout)
        })?
        .join();
    joined.unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
}

/// A plain `GET` over a connected socket: the status and at most `max` bytes of body,
/// within `timeout` per read and twice `timeout` in all (a peer that trickles bytes
/// cannot hold the tick).
pub fn http_get(
    mut s: TcpStream,
    host: &str,
    path: &str,
    timeout: Duration,
    max: u64,
) -> Result<(u16, String), String> {
    let deadline = Instant::now() + timeout * 2;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("sending the request: {e}"))?;
    let cap = max + 64 * 1024; // the body and its headers
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if Instant::now() > deadline {
            return Err("the answer took too long".into());
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
        if buf.len() as u64 > cap {
            return Err(format!("answer over {} MiB: not read", max >> 20));
        }
    }
    parse_answer(&buf, max)
}

fn parse_answer(buf: &[u8], max: u64) -> Result<(u16, String), String> {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .and_then(|l| l.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or("not an HTTP answer")?;
    let body = &buf[split + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    if body.len() as u64 > max {
        return Err(format!("body over {} MiB: not read", max >> 20));
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A chunked body (an HTTP/1.1 server may send one even to a 1.0 request).
fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let data = b.get(..size).ok_or("chunk cut short")?;
        out.extend_from_slice(data);
        b = b.get(size + 2..).ok_or("chunk cut short")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_plain_and_chunked() {
        let plain = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nvllm:x 1\n";
        assert_eq!(
            parse_answer(plain, 100).unwrap(),
            (200, "vllm:x 1\n".into())
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nvllm\r\n3\r\n:x \r\n2\r\n1\n\r\n0\r\n\r\n";
        assert_eq!(
            parse_answer(chunked, 100).unwrap(),
            (200, "vllm:x 1\n".into())
        );
        assert!(parse_answer(b"garbage", 100).is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n\r\n0123456789", 5).is_err());
        assert_eq!(parse_answer(b"HTTP/1.1 503 No\r\n\r\n", 5).unwrap().0, 503);
    }

    #[test]
    fn our_own_namespace_is_not_foreign() {
        let me = std::process::id();
        assert_eq!(foreign_netns(Path::new("/proc"), me), None);
    }

    #[test]
    fn a_connection_inside_another_namespace_reaches_its_loopback() {
        // A new network namespace held by a child (needs root, as the agent does).
        let mut child = match std::process::Command::new("unshare")
            .args(["--net", "sh", "-c", "ip link set lo up 2>/dev/null; exec python3 -m http.server 18931 --bind 127.0.0.1 >/dev/null 2>&1"])
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("unshare: {e}"),
        };
        let pid = child.id();
        let addr: SocketAddr = "127.0.0.1:18931".parse().expect("addr");
        let mut answer = Err("not tried".to_string());
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(100));
            let Some(ns) = foreign_netns(Path::new("/proc"), pid) else {
                continue;
            };
            answer = connect(Some(&ns), addr, Duration::from_secs(1))
                .map_err(|e| e.to_string())
                .and_then(|s| http_get(s, "127.0.0.1", "/", Duration::from_secs(2), 1 << 20));
            if answer.is_ok() {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let (status, _) = answer.expect("answer from inside the namespace");
        assert_eq!(status, 200);
        // From the host's namespace the same address has nobody listening.
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err());
    }
}
