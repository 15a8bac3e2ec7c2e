//! A webhook receiver for the tests: a real HTTP/1.1 server on loopback that records
//! every request and answers as told (a status, or a hang), and can be absent at first
//! (a port reserved but not listened on) to play a receiver that is down.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    /// The body's bytes as they came (what a signature covers).
    pub raw: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    got: Mutex<Vec<Received>>,
    status: AtomicU16,
    hang_ms: AtomicU64,
    stop: AtomicBool,
}

/// Stops listening when dropped.
pub struct HookReceiver {
    pub port: u16,
    state: Arc<State>,
}

impl HookReceiver {
    /// Listens on `port` (127.0.0.1) and answers 200 until told otherwise.
    pub fn start(port: u16) -> HookReceiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(State::default());
        state.status.store(200, Ordering::Relaxed);
        let s = state.clone();
        std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || serve(conn, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HookReceiver { port, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answer every request with this status from now on.
    pub fn answer(&self, status: u16) {
        self.state.status.store(status, Ordering::Relaxed);
    }

    /// Hold every request this long before answering (0: answer at once).
    pub fn hang(&self, d: Duration) {
        self.state
            .hang_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Requests answered so far (any status) on paths starting with `prefix`.
    pub fn got(&self, prefix: &str) -> Vec<Received> {
        self.state
            .got
            .lock()
            .map(|g| {
                g.iter()
                    .filter(|r| r.path.starts_with(prefix))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Requests on `prefix` answered with a 2xx.
    pub fn accepted(&self, prefix: &str) -> Vec<Received> {
        self.got(prefix)
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }
}

impl Drop for HookReceiver {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(conn: TcpStream, s: &State) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut body = vec![0u8; len.min(1 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let hang = s.hang_ms.load(Ordering::Relaxed);
    if hang > 0 {
        std::thread::sleep(Duration::from_millis(hang));
        if client_gave_up(&conn) {
            return; // not received: the sender timed out and will try again
        }
    }
    let status = s.status.load(Ordering::Relaxed);
    let mut conn = conn;
    let answered = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .and_then(|_| conn.flush());
    if answered.is_err() {
        return; // the client gave up (its timeout): not received
    }
    if let Ok(mut g) = s.got.lock() {
        g.push(Received {
            path,
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            raw: body,
            status,
        });
    }
}

/// After a hang: whether the client closed its side (its timeout ran out).
fn client_gave_up(conn: &TcpStream) -> bool {
    if conn.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let gone = match (&*conn).read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    let _ = conn.set_nonblocking(false);
    gone
}
