//! The agent's clock. The rules never read one (time comes in snapshots); the agent
//! stamps each snapshot here. It reads the wall clock once, at start, and advances by the
//! monotonic clock from then on: a wall-clock jump (NTP step, an operator's `date -s`)
//! can neither make every rank look minutes late nor hide a lag, and `/healthz` cannot
//! be fooled by one either. Timestamps stay readable wall times (they drift from the
//! wall clock only by the jumps the wall clock made).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where a clock's two readings come from; a test stands in for the system.
pub trait Sources {
    fn wall_ms(&self) -> i64;
    fn monotonic(&self) -> Duration;
}

pub struct System {
    started: Instant,
}

impl Sources for System {
    fn wall_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    fn monotonic(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Wall time at the first reading, advanced by the monotonic clock.
pub struct Anchored<S: Sources> {
    sources: S,
    wall_at_start: i64,
    mono_at_start: Duration,
}

impl<S: Sources> Anchored<S> {
    pub fn new(sources: S) -> Anchored<S> {
        Anchored {
            wall_at_start: sources.wall_ms(),
            mono_at_start: sources.monotonic(),
            sources,
        }
    }

    pub fn now_ms(&self) -> i64 {
        let since = self.sources.monotonic().saturating_sub(self.mono_at_start);
        self.wall_at_start + since.as_millis() as i64
    }
}

/// Milliseconds since the Unix epoch, now, on the agent's clock.
pub fn now_ms() -> i64 {
    static CLOCK: OnceLock<Anchored<System>> = OnceLock::new();
    CLOCK
        .get_or_init(|| {
            Anchored::new(System {
                started: Instant::now(),
            })
        })
        .now_ms()
}

/// RFC 3339 in UTC, for the times people and machines read (bundles, replay).
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangwatch_rules::watch::Watch;
    use hangwatch_rules::{EngineState, Snapshot, Thresholds};
    use std::cell::Cell;

    /// A wall clock an operator can set, beside a monotonic clock that only goes on.
    struct Jumpy {
        wall: Cell<i64>,
        mono: Cell<Duration>,
    }

    impl Sources for &Jumpy {
        fn wall_ms(&self) -> i64 {
            self.wall.get()
        }
        fn monotonic(&self) -> Duration {
            self.mono.get()
        }
    }

    #[test]
    fn wall_clock_jumps_neither_open_nor_hide_an_incident() {
        let src = Jumpy {
            wall: Cell::new(1_800_000_000_000),
            mono: Cell::new(Duration::from_secs(5)),
        };
        let clock = Anchored::new(&src);
        let facts = r#"{"id":"vllm-1","model":null,"port":1,"api_pid":null,
            "core":{"pid":10,"state":"sleeping","wchan":"poll_schedule_timeout"},
            "tp":1,"pp":1,"dp":1,"dp_rank":0,"output_rank":0,
            "execute_timeout_seconds":300.0,"ranks":[]}"#;
        let engine: hangwatch_rules::EngineFacts = serde_json::from_str(facts).expect("facts");
        let mut watch = Watch::new(Thresholds::default());
        let mut opened = 0;
        let mut last = 0;
        // Busy, moving engine (core CPU grows) for 60 ticks while the wall clock jumps
        // an hour forward, then two hours back.
        for tick in 0..60u64 {
            src.mono.set(src.mono.get() + Duration::from_secs(1));
            if tick == 20 {
                src.wall.set(src.wall.get() + 3_600_000);
            }
            if tick == 40 {
                src.wall.set(src.wall.get() - 7_200_000);
            }
            let now = clock.now_ms();
            assert!(now > last, "time goes on: {now} after {last}");
            assert_eq!(now - 1_800_000_000_000, (tick as i64 + 1) * 1000);
            last = now;
            let mut e = engine.clone();
            e.core.cpu_seconds = tick as f64;
            let snap = Snapshot {
                at_ms: now,
                engines: vec![e],
                ..Default::default()
            };
            for t in watch.step(&snap) {
                assert_ne!(t.verdict.state, EngineState::Stalled, "tick {tick}");
                opened += t.events.len();
            }
        }
        assert_eq!(opened, 0);
    }
}
