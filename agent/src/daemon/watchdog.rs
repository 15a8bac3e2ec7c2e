//! The agent's own health, told to whoever supervises it. Under systemd
//! (`Type=notify`, `WatchdogSec=`) it says READY once the tick loop runs and pets the
//! watchdog after every tick that completed, so a tick loop that hangs is killed and
//! restarted by systemd. Without systemd a guard thread does the same: a tick loop
//! silent for `STALL_LIMIT` (or 10 intervals, if longer) ends the process with status 70.

use crate::shared::Shared;
use std::sync::Arc;
use std::time::Duration;

/// Longest silence of the tick loop before the process gives up on itself.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Tells systemd the agent is up (a no-op without `NOTIFY_SOCKET`).
pub fn ready() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not tell systemd that hangwatch is ready");
    }
}

/// After a tick that completed: the loop is alive.
pub fn pet() {
    // Without NOTIFY_SOCKET this returns at once; a failing socket is not worth a line
    // per tick (systemd says itself when the watchdog fires).
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
}

/// Starts the guard: it exits the process when no tick completed for the limit.
pub fn spawn_guard(shared: Arc<Shared>, now: fn() -> i64) -> std::io::Result<()> {
    // Test-only: a shorter limit, so the suite need not wait a minute.
    let limit = std::env::var("HANGWATCH_TEST_STALL_LIMIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_else(|| STALL_LIMIT.max(shared.interval * 10));
    let limit_ms = limit.as_millis() as i64;
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let last = shared
                .last_tick_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            if last > 0 && now() - last > limit_ms {
                tracing::error!(
                    silent_s = (now() - last) / 1000,
                    "the tick loop has not completed a tick for {} s: exiting so that hangwatch is restarted",
                    limit.as_secs()
                );
                std::process::exit(70);
            }
        })?;
    Ok(())
}
