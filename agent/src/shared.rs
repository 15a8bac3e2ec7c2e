//! What the tick loop shares with the HTTP server: the metrics, one lock for a
//! consistent scrape, and when the loop last ticked (for `/healthz`).

use crate::metrics::Metrics;
use std::sync::atomic::AtomicI64;
use std::sync::Mutex;
use std::time::Duration;

/// What the tick loop shares with the HTTP server.
pub struct Shared {
    pub metrics: Metrics,
    /// Held while a tick updates the metrics and while a scrape encodes them.
    pub lock: Mutex<()>,
    pub last_tick_ms: AtomicI64,
    pub interval: Duration,
}
