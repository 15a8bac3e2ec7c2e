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

impl VllmMetrics {
    /// The progress counters, for "did anything move".
    pub fn progress(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        (
            self.generation_tokens_total,
            self.prompt_tokens_total,
            self.iteration_tokens_count,
        )
    }
}
