//! One way to run every collector, the way node_exporter runs its collectors: each has a
//! name, adds what it sees to the tick's snapshot, and reports how it fared. The runner
//! times each one, records its success as a `CollectorReport` in the snapshot (so it is
//! recorded, exported and bundled), and says each problem once instead of every tick.

use hangwatch_rules::{CollectorReport, Millis, Snapshot};
use std::collections::BTreeMap;
use std::time::Instant;

/// How one run of a collector went.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The collector could not do its job this tick (`collector_up` 0).
    pub error: Option<String>,
    /// Things worth a log line that do not make the collector fail (one engine's
    /// unreadable environment, a ring that vanished).
    pub problems: Vec<String>,
}

impl Outcome {
    pub fn ok() -> Outcome {
        Outcome::default()
    }

    pub fn failed(error: impl Into<String>) -> Outcome {
        Outcome {
            error: Some(error.into()),
            problems: Vec::new(),
        }
    }
}

pub trait Collector: Send {
    /// The `collector` label of its metrics.
    fn name(&self) -> &'static str;
    fn collect(&mut self, snap: &mut Snapshot, now: Millis) -> Outcome;
}

/// A repeated problem is said again after this long.
const SAY_AGAIN_MS: Millis = 60_000;

#[derive(Default)]
pub struct Runner {
    collectors: Vec<Box<dyn Collector>>,
    /// The error last said per collector: said when it changes, and when it clears.
    errors: BTreeMap<&'static str, String>,
    /// When each problem was last said.
    problems: BTreeMap<String, Millis>,
}

impl Runner {
    pub fn new() -> Runner {
        Runner::default()
    }

    pub fn add(&mut self, c: Box<dyn Collector>) {
        self.collectors.push(c);
    }

    /// Runs every collector in the order added (later ones see what earlier ones found).
    pub fn run(&mut self, snap: &mut Snapshot, now: Millis) {
        for c in &mut self.collectors {
            let started = Instant::now();
            let outcome = c.collect(snap, now);
            let name = c.name();
            snap.collectors.push(CollectorReport {
                name: name.to_string(),
                up: outcome.error.is_none(),
                duration_seconds: started.elapsed().as_secs_f64(),
                error: outcome.error.clone(),
            });
            let error = outcome.error.clone();
            match outcome.error {
                Some(e) if self.errors.get(name) != Some(&e) => {
                    tracing::warn!(collector = name, "{e}");
                    self.errors.insert(name, e);
                }
                Some(_) => {}
                None => {
                    if self.errors.remove(name).is_some() {
                        tracing::info!(collector = name, "collector {name} works again");
                    }
                }
            }
            // A problem that is also the collector's error was said as the error.
            for p in outcome
                .problems
                .into_iter()
                .filter(|p| error.as_ref() != Some(p))
            {
                let due = self
                    .problems
                    .get(&p)
                    .is_none_or(|&t| now - t >= SAY_AGAIN_MS);
                if due {
                    tracing::warn!(collector = name, "{p}");
                    self.problems.insert(p, now);
                }
            }
        }
        self.problems.retain(|_, t| now - *t < 10 * SAY_AGAIN_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flaky(Vec<Outcome>);

    impl Collector for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn collect(&mut self, _: &mut Snapshot, _: Millis) -> Outcome {
            if self.0.is_empty() {
                Outcome::ok()
            } else {
                self.0.remove(0)
            }
        }
    }

    #[test]
    fn reports_success_failure_and_says_each_error_once() {
        let mut r = Runner::new();
        r.add(Box::new(Flaky(vec![
            Outcome::failed("down"),
            Outcome::failed("down"),
            Outcome::ok(),
        ])));
        let mut ups = Vec::new();
        for t in 0..3 {
            let mut s = Snapshot::default();
            r.run(&mut s, t * 1000);
            ups.push((s.collectors[0].up, s.collectors[0].error.clone()));
            if t < 2 {
                assert_eq!(r.errors.get("flaky").map(String::as_str), Some("down"));
            }
        }
        assert_eq!(
            ups,
            vec![
                (false, Some("down".into())),
                (false, Some("down".into())),
                (true, None)
            ]
        );
        assert!(r.errors.is_empty(), "cleared once it works again");
    }
}
