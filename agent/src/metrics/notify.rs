//! Notification delivery, per receiver: what happened to each try, and how much waits.
//! The delivery threads hold clones of these families (they are shared handles), so
//! they count without taking the tick's lock.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverL {
    pub receiver: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverResultL {
    pub receiver: String,
    /// `sent`, `failed` (will be tried again), `rejected` (a 4xx answer: not retried),
    /// `dropped` (the queue was full).
    pub result: String,
}

#[derive(Clone, Default)]
pub struct NotifyMetrics {
    results: Family<ReceiverResultL, Counter>,
    depth: Family<ReceiverL, Gauge>,
    oldest: Family<ReceiverL, Gauge<f64, AtomicU64>>,
}

impl NotifyMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "hangwatch_notifications",
            "Notification tries per receiver and result (sent, failed, rejected, dropped)",
            self.results.clone(),
        );
        r.register(
            "hangwatch_notification_queue_depth",
            "Notifications waiting for a receiver",
            self.depth.clone(),
        );
        r.register(
            "hangwatch_notification_queue_oldest_seconds",
            "Age of the oldest notification waiting for a receiver (0 when none waits)",
            self.oldest.clone(),
        );
    }

    pub fn count(&self, receiver: &str, result: &str, n: u64) {
        self.results
            .get_or_create(&ReceiverResultL {
                receiver: receiver.to_string(),
                result: result.to_string(),
            })
            .inc_by(n);
    }

    pub fn queue(&self, receiver: &str, depth: usize, oldest_seconds: f64) {
        let l = ReceiverL {
            receiver: receiver.to_string(),
        };
        self.depth.get_or_create(&l).set(depth as i64);
        self.oldest.get_or_create(&l).set(oldest_seconds);
    }

    /// Every result shows from the start (at 0), so a rate over it works before the first
    /// failure.
    pub fn announce(&self, receiver: &str) {
        for result in ["sent", "failed", "rejected", "dropped"] {
            self.count(receiver, result, 0);
        }
        self.queue(receiver, 0, 0.0);
    }
}
