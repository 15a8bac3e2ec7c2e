//! Collectors read the world — `/proc`, `/dev/shm` — and turn it into
//! `hangwatch_rules::facts`. They never decide anything; a failure to read is a fact
//! (`error`, `collector_up = 0`), never a panic.

pub mod capped;
pub mod collector;
pub mod discovery;
pub mod engines;
pub mod evidence;
pub mod gpu;
pub mod links;
pub mod listens;
pub mod logs;
pub mod naming;
pub mod nccl_ras;
pub mod netns;
pub mod pod;
pub mod process;
pub mod rings;
pub mod safe_open;
pub mod scrub;
pub mod settings;
pub mod stacks;
pub mod title;
pub mod vllm_metrics;

pub use collector::{Collector, Outcome, Runner};
pub use discovery::{Discovery, EngineLayout};
pub use engines::NodeLook;
pub use process::ProcRoot;
