//! The only notion of time the rules know: milliseconds carried by the snapshots.
//!
//! The rules never read a clock, so a recording judged again gives the verdicts the live
//! run gave. Everything that needs "now" takes it from `Snapshot::at_ms`.

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Whole seconds of a duration in milliseconds, for the sentences people read.
pub fn secs(ms: Millis) -> f64 {
    ms as f64 / 1000.0
}
