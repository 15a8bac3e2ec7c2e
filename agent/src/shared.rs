//! What the tick loop shares with the HTTP server: the metrics, one lock for a
//! consistent scrape, and when the loop last ticked (for `/healthz`).

use crate::config::alerts::Secret;
use crate::metrics::Metrics;
use crate::status::StatusSource;
pub use crate::window::CallWindow;
use std::sync::atomic::AtomicI64;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// What the tick loop shares with the HTTP server.
pub struct Shared {
    pub metrics: Metrics,
    /// Held while a tick updates the metrics and while a scrape encodes them.
    pub lock: Mutex<()>,
    pub last_tick_ms: AtomicI64,
    pub interval: Duration,
    /// What `GET /status` renders, as of the last tick.
    pub status: Mutex<Arc<StatusSource>>,
    /// Where `POST /capture` hands its requests to the tick (none: capture disabled).
    pub captures: Option<Mutex<mpsc::Sender<CaptureRequest>>>,
    /// The bearer token `POST /capture` requires.
    pub capture_token: Option<Secret>,
    /// When `POST /capture` was last called with the token, for its rate limit.
    pub capture_calls: CallWindow,
    /// When it was last called without it: a window of their own.
    pub capture_denials: CallWindow,
    /// The peer exchange of deployments across nodes (none: `[peers]` off).
    pub peers: Option<Arc<crate::peers::PeerDesk>>,
}

/// A person's request for a bundle of an engine, answered by the tick.
pub struct CaptureRequest {
    pub engine: String,
    pub reply: mpsc::SyncSender<CaptureAnswer>,
}

/// The HTTP status and JSON body to answer with.
pub struct CaptureAnswer {
    pub status: u16,
    pub body: serde_json::Value,
}
