//! One thread per receiver: it writes each notification to the receiver's queue, sends
//! the oldest, and waits with a growing, jittered backoff while the receiver is down, slow
//! or failing. Nothing here runs on the tick: a receiver that hangs for its whole timeout
//! delays only its own queue.

use super::format::{alertmanager_url, request, signature};
use super::queue::{DiskQueue, Queued};
use crate::clock::now_ms;
use crate::config::alerts::{shown_url, HookFormat, Receiver};
use crate::metrics::notify::NotifyMetrics;
use std::sync::mpsc::{Receiver as Inbox, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How often an idle thread wakes to keep its queue's age gauge current.
const IDLE_WAKE: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

pub struct Delivery {
    pub receiver: Receiver,
    pub queue: DiskQueue,
    pub metrics: NotifyMetrics,
    pub retry_max: Duration,
    pub repeat_ms: i64,
}

/// What one try came to.
enum Tried {
    Sent,
    /// The receiver refused it for good (a 4xx other than 408 and 429).
    Rejected(String),
    Failed(String),
}

impl Delivery {
    pub fn run(mut self, inbox: Inbox<Queued>) {
        let client = match reqwest::blocking::Client::builder()
            .timeout(self.receiver.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hangwatch/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(receiver = %self.receiver.name, error = %e, "cannot build an HTTP client: notifications stay queued");
                return;
            }
        };
        self.probe(&client);
        let mut backoff = Duration::ZERO;
        let mut next_try = Instant::now();
        let mut failing = false;
        loop {
            let wait = if self.queue.is_empty() {
                IDLE_WAKE
            } else {
                next_try.saturating_duration_since(Instant::now())
            };
            match inbox.recv_timeout(wait) {
                Ok(q) => {
                    self.take(q);
                    while let Ok(q) = inbox.try_recv() {
                        self.take(q);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The agent is stopping: what waits stays on disk for the next start.
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.gauge();
            if Instant::now() < next_try {
                continue;
            }
            let Some(front) = self.queue.front() else {
                continue;
            };
            match self.try_send(&client, front) {
                Tried::Sent => {
                    if failing {
                        tracing::info!(receiver = %self.receiver.name, "receiver answers again");
                    }
                    failing = false;
                    backoff = Duration::ZERO;
                    self.done("sent");
                }
                Tried::Rejected(why) => {
                    tracing::error!(receiver = %self.receiver.name, url = %shown_url(&self.receiver.url), "notification refused, not retried: {why}");
                    self.done("rejected");
                }
                Tried::Failed(why) => {
                    self.metrics.count(&self.receiver.name, "failed", 1);
                    backoff = (backoff * 2).clamp(FIRST_BACKOFF, self.retry_max);
                    next_try = Instant::now() + jitter(backoff);
                    if !failing {
                        tracing::warn!(receiver = %self.receiver.name, url = %shown_url(&self.receiver.url), "notification not delivered, will retry: {why}");
                    }
                    failing = true;
                }
            }
            self.gauge();
        }
    }

    /// At start, an Alertmanager receiver is asked whether its API is where the `url`
    /// says (`GET …/api/v2/status`, which posts nothing): a wrong path is said now, in
    /// words, not only when the first incident's notice is refused. Other formats are
    /// not probed: a test post would page someone.
    fn probe(&self, client: &reqwest::blocking::Client) {
        if self.receiver.format != HookFormat::Alertmanager {
            return;
        }
        let alerts = alertmanager_url(&self.receiver.url);
        let status = format!("{}/status", alerts.trim_end_matches("/alerts"));
        let shown = shown_url(&self.receiver.url);
        match client.get(&status).send() {
            Ok(r) if r.status().is_success() => {
                tracing::info!(receiver = %self.receiver.name, url = %shown, "Alertmanager answers");
            }
            Ok(r) if r.status().as_u16() == 404 => tracing::error!(
                receiver = %self.receiver.name,
                url = %shown,
                "no Alertmanager API at this url (404 for /api/v2/status): notifications will be refused; set url to the Alertmanager's root, e.g. http://alertmanager:9093"
            ),
            Ok(r) => {
                tracing::warn!(receiver = %self.receiver.name, url = %shown, status = r.status().as_u16(), "Alertmanager's status check failed")
            }
            Err(e) => {
                tracing::warn!(receiver = %self.receiver.name, url = %shown, error = %e, "Alertmanager not reachable now; notifications will be retried")
            }
        }
    }

    /// Queues a notification; a re-post is skipped while the incident has one waiting.
    fn take(&mut self, q: Queued) {
        if q.refresh && self.queue.holds_incident(&q.notice.incident_id) {
            return;
        }
        match self.queue.push(q) {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(receiver = %self.receiver.name, dropped = n, "notification queue full: oldest dropped");
                self.metrics.count(&self.receiver.name, "dropped", n as u64);
            }
            Err(e) => {
                tracing::error!(receiver = %self.receiver.name, error = %e, "cannot queue a notification");
                self.metrics.count(&self.receiver.name, "dropped", 1);
            }
        }
    }

    fn done(&mut self, result: &str) {
        self.metrics.count(&self.receiver.name, result, 1);
        if let Err(e) = self.queue.pop() {
            // Left on disk it would be sent again after a restart: say so loudly.
            tracing::error!(receiver = %self.receiver.name, error = %e, "cannot remove a delivered notification from the queue");
        }
    }

    fn gauge(&self) {
        let age = self
            .queue
            .oldest_ms()
            .map(|t| ((now_ms() - t) as f64 / 1000.0).max(0.0))
            .unwrap_or(0.0);
        self.metrics
            .queue(&self.receiver.name, self.queue.len(), age);
    }

    fn try_send(&self, client: &reqwest::blocking::Client, q: &Queued) -> Tried {
        let r = &self.receiver;
        let now = now_ms();
        let req = request(r.format, &r.url, q, now, self.repeat_ms);
        let mut b = client
            .post(&req.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", &q.notice.id)
            .header("X-Hangwatch-Event", q.notice.event.as_str());
        if let Some(key) = &r.secret {
            let ts = (now / 1000).to_string();
            b = b
                .header(
                    "X-Hangwatch-Signature-256",
                    signature(key.expose(), &ts, &req.body),
                )
                .header("X-Hangwatch-Timestamp", ts);
        }
        if let Some(t) = &r.token {
            b = b.bearer_auth(t.expose());
        }
        match b.body(req.body).send() {
            Ok(resp) if resp.status().is_success() => Tried::Sent,
            Ok(resp) => {
                let s = resp.status();
                let why = format!("HTTP {s}");
                if s.is_client_error() && s.as_u16() != 408 && s.as_u16() != 429 {
                    Tried::Rejected(why)
                } else {
                    Tried::Failed(why)
                }
            }
            // reqwest's error names the URL: keep only its kind, the URL may hold a secret.
            Err(e) => Tried::Failed(describe(&e)),
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_request() {
        "request failed"
    } else {
        "failed"
    };
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut last = String::new();
    while let Some(s) = src {
        last = s.to_string();
        src = s.source();
    }
    if last.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {last}")
    }
}

/// Between half and the whole backoff, so that many agents do not retry in step.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() * 0.5)
}
