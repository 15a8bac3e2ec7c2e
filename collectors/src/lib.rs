//! Collectors read the world — `/proc`, `/dev/shm` — and turn it into
//! `hangwatch_rules::facts`. They never decide anything; a failure to read is a fact
//! (`error`, `collector_up = 0`), never a panic.

pub mod discovery;
pub mod gpu;
pub mod logs;
pub mod nccl_ras;
pub mod node;
pub mod process;
pub mod rings;
pub mod settings;
pub mod stacks;
pub mod title;
pub mod vllm_metrics;

pub use discovery::{Discovery, EngineLayout};
pub use node::NodeCollector;
pub use process::ProcRoot;
