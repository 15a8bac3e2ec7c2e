//! vLLM's own `/metrics`, reduced to the series that show progress. The text parser is
//! the collector's (`hangwatch_collectors::vllm_metrics`); this is the fact it yields.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct VllmMetrics {
    pub running: Option<f64>,
    pub waiting: Option<f64>,
    pub generation_tokens_total: Option<f64>,
    pub prompt_tokens_total: Option<f64>,
    pub iteration_tokens_count: Option<f64>,
}

/// vLLM's counters that grow with every step's work: when one changes, a step finished.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Progress {
    pub generation_tokens: Option<f64>,
    pub prompt_tokens: Option<f64>,
    pub iterations: Option<f64>,
}

impl VllmMetrics {
    /// The progress counters, for "did anything move".
    pub fn progress(&self) -> Progress {
        Progress {
            generation_tokens: self.generation_tokens_total,
            prompt_tokens: self.prompt_tokens_total,
            iterations: self.iteration_tokens_count,
        }
    }
}
