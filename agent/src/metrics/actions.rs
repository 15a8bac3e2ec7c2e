//! Actions on incidents (`[actions]`): every one taken, failed or held back, per engine.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionL {
    pub engine: String,
    /// `exec` or `terminate`.
    pub action: String,
    /// `ok`, `failed`, `timeout`, `killed` (SIGKILL after the grace), `dry_run`,
    /// `skipped` (a guard rail held it back for the whole incident).
    pub result: String,
}

#[derive(Clone, Default)]
pub struct ActionMetrics {
    taken: Family<ActionL, Counter>,
}

impl ActionMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "hangwatch_actions",
            "Actions on incidents per engine, action and result (ok, failed, timeout, killed, dry_run, skipped)",
            self.taken.clone(),
        );
    }

    pub fn count(&self, engine: &str, action: &str, result: &str) {
        self.taken
            .get_or_create(&ActionL {
                engine: engine.to_string(),
                action: action.to_string(),
                result: result.to_string(),
            })
            .inc();
    }
}
