//! A follower node's part whose leader is gone: its workers' connections to the rest of
//! the deployment closed (measured: all of them within 0.5 s of the leader's death) and
//! they wait for an RPC that never comes, holding their memory and GPUs until someone
//! stops them (`docs/multi-node.md`, "Orphans"). Told once it has lasted `ORPHAN_MS`.

use super::{Board, Findings, Seen, Signal};
use crate::facts::Executor;
use crate::time::{secs, Millis};
use crate::verdict::ReasonCode;

/// How long a part must be without any connection to be an orphan (a connection that
/// is re-made in between — a reconnect — clears it).
pub const ORPHAN_MS: Millis = 10_000;

#[derive(Debug, Default)]
pub struct OrphanSignal {
    /// The part had connections once: it was part of a running deployment.
    tied: bool,
    /// Since when it has none.
    loose_since: Option<Millis>,
}

impl Signal for OrphanSignal {
    fn observe(&mut self, b: &mut Board<'_>) {
        if b.engine.executor != Executor::Follower {
            return;
        }
        match b.engine.links {
            Some(0) if self.tied => {
                self.loose_since.get_or_insert(b.now);
            }
            Some(n) if n > 0 => {
                self.tied = true;
                self.loose_since = None;
            }
            _ => {}
        }
    }

    fn reasons(&self, s: &Seen<'_>, f: &mut Findings) {
        let Some(since) = self.loose_since else {
            return;
        };
        let age = s.now - since;
        if age < ORPHAN_MS {
            return;
        }
        let detail = format!(
            "orphaned: no connection to the rest of the deployment for {:.0} s (its leader is gone); its workers wait for good and hold their memory and GPUs: stop this node's vllm serve",
            secs(age)
        );
        f.engine(ReasonCode::Orphaned, detail, since);
        f.engine_conclusive = true;
    }
}
