//! A sliding one-minute window of calls: rate limits for the HTTP API and the
//! notifiers.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Calls in the last minute (a sliding window).
#[derive(Default)]
pub struct CallWindow(Mutex<VecDeque<i64>>);

impl CallWindow {
    /// Counts a call at `now_ms`; false when `max` calls were already made this minute.
    pub fn admit(&self, now_ms: i64, max: usize) -> bool {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        while q.front().is_some_and(|t| now_ms - t >= 60_000) {
            q.pop_front();
        }
        if q.len() >= max {
            return false;
        }
        q.push_back(now_ms);
        true
    }
}
