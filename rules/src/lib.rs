//! hangwatch's pure core: the facts collectors report, the signals read from them, the
//! judge that turns snapshots into verdicts, and the incident life cycle.
//!
//! No I/O, no clock, no threads: everything here is a function of recorded facts, so
//! every rule is testable with a table of snapshots and replayable from a recording.

mod decide;
pub mod facts;
pub mod gpu;
pub mod incident;
pub mod judge;
pub mod last_words;
pub mod lint;
pub mod lockstep;
pub mod logs;
pub mod position;
pub mod ras;
mod remote;
pub mod shape;
pub mod signals;
pub mod stacks;
pub mod thresholds;
pub mod time;
pub mod verdict;
pub mod vllm_metrics;
pub mod watch;
mod weigh;

pub use facts::*;
pub use incident::{Incident, IncidentEvent, IncidentTracker};
pub use judge::Judge;
pub use thresholds::Thresholds;
pub use verdict::{EngineState, Reason, ReasonCode, Suspect, Verdict};
