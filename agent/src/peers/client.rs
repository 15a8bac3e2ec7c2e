//! The follower's sender: a thread of its own, so that a leader's agent that is slow or
//! down never holds the tick. Each report has a deadline; a failure is logged once per
//! leader until it answers again, and nothing is retried (the next tick's report is
//! newer anyway).

use super::{LeaderView, PeerDesk};
use crate::clock::now_ms;
use std::collections::BTreeSet;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One report's deadline, connection included.
const DEADLINE: Duration = Duration::from_millis(1_500);
/// How often the outbox is looked at.
const POLL: Duration = Duration::from_millis(100);

pub fn spawn_client(
    desk: Arc<PeerDesk>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("peers".into())
        .spawn(move || run(&desk, &stop))
}

fn run(desk: &PeerDesk, stop: &AtomicBool) {
    let client = match reqwest::blocking::Client::builder()
        .timeout(DEADLINE)
        .connect_timeout(DEADLINE)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "peers: no HTTP client; peer reports off");
            return;
        }
    };
    let mut failing: BTreeSet<String> = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        for out in desk.take_outbox() {
            match send(&client, desk, &out) {
                Ok(view) => {
                    if failing.remove(&out.to) {
                        tracing::info!(leader = %out.to, "peers: the leader's agent answers again");
                    }
                    desk.answered(&out.report.part.engine, view, now_ms());
                }
                Err(e) => {
                    if failing.insert(out.to.clone()) {
                        tracing::warn!(leader = %out.to, error = %e, "peers: the leader's agent does not answer");
                    }
                }
            }
        }
        // The desk decides when a report is due (`report_interval`); the outbox is
        // looked at often so that a due report leaves within its tick.
        std::thread::sleep(POLL);
    }
}

/// One report, its answer read up to `MAX_ANSWER` bytes.
fn send(
    client: &reqwest::blocking::Client,
    desk: &PeerDesk,
    out: &super::Outgoing,
) -> Result<LeaderView, String> {
    let body = serde_json::to_vec(&out.report).map_err(|e| e.to_string())?;
    let r = client
        .post(format!("http://{}/peers/report", out.to))
        .bearer_auth(desk.token.expose())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .and_then(|r| r.error_for_status())
        .map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    r.take(MAX_ANSWER as u64)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&text).map_err(|e| format!("not an answer: {e}"))
}

/// A leader's answer is a few hundred bytes.
const MAX_ANSWER: usize = 16 * 1024;
