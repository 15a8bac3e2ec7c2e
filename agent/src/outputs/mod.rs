//! Outputs: everything the agent tells the world after a tick — its own log lines,
//! Prometheus metrics, bundles. Each output sees the same view of the tick; a new way
//! to tell people (a webhook, Alertmanager) is one more `Output`.

pub mod bundles;
pub mod log;
pub mod metrics;

use crate::context::{Arrivals, Records};
use hangwatch_rules::gpu::GpuVerdict;
use hangwatch_rules::incident::Incident;
use hangwatch_rules::watch::{EngineTick, Watch};
use hangwatch_rules::{Millis, Snapshot};
use std::collections::BTreeMap;

/// What the judge decided that an output may read — the open incidents and each GPU's
/// class — and nothing of its workings.
#[derive(Clone, Copy)]
pub struct Decided<'a>(&'a Watch);

impl<'a> Decided<'a> {
    pub fn of(watch: &'a Watch) -> Decided<'a> {
        Decided(watch)
    }

    pub fn open_incident(&self, engine: &str) -> Option<&'a Incident> {
        self.0.open_incident(engine)
    }

    pub fn gpu_verdicts(&self) -> &'a BTreeMap<u32, GpuVerdict> {
        self.0.judge().gpu_verdicts()
    }
}

/// One tick as the outputs see it.
pub struct TickView<'a> {
    pub now: Millis,
    pub snap: &'a Snapshot,
    pub ticks: &'a [EngineTick],
    pub decided: Decided<'a>,
    pub records: Records<'a>,
    pub arrivals: &'a Arrivals,
    /// Engines whose evidence brought new stacks this tick.
    pub fresh_stacks: &'a [String],
    /// Bundles a person asked for (`POST /capture`), ready to write.
    pub captures: &'a [(hangwatch_rules::incident::Incident, crate::bundle::Trigger)],
    /// Seconds the tick took until the outputs (collect, judge, context).
    pub tick_seconds: f64,
}

pub trait Output: Send {
    fn emit(&mut self, view: &TickView<'_>);
}
