//! The `nccl_ras` collector: a client for NCCL's RAS text protocol (NCCL ≥ 2.24 runs a
//! RAS thread in every process; docs/gpu.md): `CLIENT PROTOCOL 2`, `SET FORMAT json`,
//! `STATUS`, then the server closes. Asked only while an engine is suspected, and for
//! its bundle; every step is bounded by a timeout.

use hangwatch_rules::ras::RasStatus;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_ADDR: &str = "127.0.0.1:28028";

/// NCCL RAS's answer: parsed, as JSON text, and the human report.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RasAnswer {
    pub status: Option<RasStatus>,
    pub json: String,
    pub text: String,
    pub error: Option<String>,
}

fn connect(addr: &str, netns: Option<&Path>, timeout: Duration) -> Result<TcpStream, String> {
    let sa: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| format!("NCCL RAS address {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("NCCL RAS address {addr}: no address"))?;
    let s = crate::netns::connect(netns, sa, timeout)
        .map_err(|e| format!("NCCL RAS at {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// The most a RAS answer may take: thousands of ranks' status fit with room to spare.
const ANSWER_CAP: u64 = 4 << 20;
/// A protocol line (greeting, acknowledgement) longer than this is not NCCL's.
const LINE_CAP: u64 = 4096;

/// One protocol line, at most `LINE_CAP` bytes: a peer that never sends a newline
/// cannot make the agent buffer for ever.
fn read_line_capped(r: &mut impl BufRead, what: &str) -> Result<String, String> {
    let mut line = String::new();
    r.take(LINE_CAP)
        .read_line(&mut line)
        .map_err(|e| format!("NCCL RAS {what}: {e}"))?;
    Ok(line)
}

/// One conversation: the commands, then everything until the server closes — at most
/// `ANSWER_CAP` bytes and twice `timeout` in all (a peer that trickles bytes keeps
/// each read alive, not the conversation).
fn converse(
    addr: &str,
    netns: Option<&Path>,
    json: bool,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = std::time::Instant::now() + timeout * 2;
    let mut s = connect(addr, netns, timeout)?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    s.write_all(b"CLIENT PROTOCOL 2\n")
        .map_err(|e| e.to_string())?;
    let line = read_line_capped(&mut r, "hello")?;
    if !line.starts_with("SERVER PROTOCOL") {
        return Err(format!("NCCL RAS: unexpected greeting {:?}", line.trim()));
    }
    if json {
        s.write_all(b"SET FORMAT json\n")
            .map_err(|e| e.to_string())?;
        read_line_capped(&mut r, "format")?;
        s.write_all(b"STATUS\n").map_err(|e| e.to_string())?;
    } else {
        s.write_all(b"VERBOSE STATUS\n")
            .map_err(|e| e.to_string())?;
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        if std::time::Instant::now() > deadline {
            return Err(format!("NCCL RAS status: no end within {:?}", timeout * 2));
        }
        let room = ANSWER_CAP.saturating_sub(out.len() as u64) as usize;
        if room == 0 {
            return Err(format!(
                "NCCL RAS status: answer longer than {ANSWER_CAP} bytes"
            ));
        }
        let want = room.min(buf.len());
        match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("NCCL RAS status: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Lenient parse: unknown fields are ignored, missing ones tolerated, and trailing
/// commas (emitted by some NCCL versions) removed before parsing.
pub fn parse_status(text: &str) -> Result<RasStatus, String> {
    let start = text.find('{').ok_or("NCCL RAS: no JSON in the answer")?;
    let body = &text[start..];
    match serde_json::from_str::<RasStatus>(body) {
        Ok(s) => Ok(s),
        Err(_) => {
            let cleaned = strip_trailing_commas(body);
            serde_json::from_str::<RasStatus>(&cleaned).map_err(|e| format!("NCCL RAS JSON: {e}"))
        }
    }
}

/// Drops commas right before `}` or `]` outside strings. Works on bytes: every byte it
/// looks at is ASCII, and a multi-byte character passes through whole.
fn strip_trailing_commas(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut in_str = false;
    for (i, &c) in b.iter().enumerate() {
        if c == b'"' && (i == 0 || b[i - 1] != b'\\') {
            in_str = !in_str;
        }
        if c == b',' && !in_str {
            let next = b[i + 1..].iter().find(|c| !c.is_ascii_whitespace());
            if matches!(next, Some(b'}') | Some(b']')) {
                continue;
            }
        }
        out.push(c);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Asks RAS for its JSON status and its human report.
/// `netns`: the engine's network namespace when it is not the agent's (a pod), where
/// NCCL RAS's loopback address lives.
pub fn query(addr: &str, netns: Option<&Path>, timeout: Duration) -> RasAnswer {
    let mut a = RasAnswer::default();
    match converse(addr, netns, true, timeout) {
        Ok(j) => {
            match parse_status(&j) {
                Ok(s) => a.status = Some(s),
                Err(e) => a.error = Some(e),
            }
            a.json = j;
        }
        Err(e) => {
            a.error = Some(e);
            return a;
        }
    }
    match converse(addr, netns, false, timeout) {
        Ok(t) => a.text = t,
        Err(e) => a.text = format!("(verbose status failed: {e})"),
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn lenient_parse() {
        let s = parse_status("{\"communicators\": [{\"hash\": \"0x1\", \"ranks\": [{\"rank\": 0, \"pid\": 7, \"collective_counts\": {\"AllReduce\": 3,},},],}], \"new_field\": 1,}").unwrap();
        assert_eq!(
            s.communicators[0].ranks[0].collective_counts["AllReduce"],
            3
        );
        assert!(parse_status("no json").is_err());
    }

    /// A stand-in server speaking the protocol as recorded (h200x1-nccl-ras-one-process).
    #[test]
    fn speaks_the_protocol() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                s.write_all(b"SERVER PROTOCOL 2\n").unwrap();
                line.clear();
                r.read_line(&mut line).unwrap();
                if line.starts_with("SET FORMAT") {
                    s.write_all(b"OK\n").unwrap();
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    s.write_all(b"{\"nccl_version\": \"2.28.9\", \"communicators\": [{\"hash\": \"0xa\", \"ranks\": [{\"rank\": 0, \"pid\": 42, \"collective_counts\": {\"AllReduce\": 5}}]}]}\n").unwrap();
                } else {
                    s.write_all(b"NCCL version 2.28.9\nJob summary\n").unwrap();
                }
            }
        });
        let a = query(&addr, None, Duration::from_secs(2));
        assert!(a.error.is_none(), "{:?}", a.error);
        assert_eq!(a.status.unwrap().communicators[0].ranks[0].pid, Some(42));
        assert!(a.text.contains("Job summary"));
        let refused = query("127.0.0.1:1", None, Duration::from_millis(300));
        assert!(refused.error.is_some());
    }
}
