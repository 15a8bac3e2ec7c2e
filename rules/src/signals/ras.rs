//! NCCL RAS evidence: a rank that launched fewer collectives than its peers is the one
//! they wait for; ranks ahead on different communicators are a desync. What RAS answers
//! and its limits are in `docs/gpu.md` ("NCCL RAS").

use super::Findings;
use crate::facts::{EngineFacts, RankFacts};
use crate::ras::{ras_finding, RasFinding, RasStatus};
use crate::time::Millis;
use crate::verdict::ReasonCode;

#[derive(Debug, Default)]
pub struct RasSignal {
    /// The latest answer during the current stall: (when, status).
    latest: Option<(Millis, RasStatus)>,
}

impl RasSignal {
    pub fn observe(&mut self, engine: &EngineFacts, now: Millis) {
        if let Some(r) = &engine.nccl_ras {
            self.latest = Some((now, r.clone()));
        }
    }

    pub fn clear(&mut self) {
        self.latest = None;
    }

    pub fn reasons(&self, ranks: &[RankFacts], f: &mut Findings) {
        let Some((at, status)) = &self.latest else {
            return;
        };
        match ras_finding(status) {
            Some(RasFinding::Laggard {
                pid,
                communicator,
                op,
                behind,
            }) => {
                if let Some(r) = ranks
                    .iter()
                    .find(|r| r.process.pid == pid || r.process.ns_pid == Some(pid))
                {
                    let detail = format!(
                        "NCCL RAS: {behind} {op} behind the other ranks on communicator {communicator}"
                    );
                    f.rank(r.rank, ReasonCode::RasLaggard, detail, *at);
                    f.conclude(r.rank);
                }
            }
            Some(RasFinding::Desync { detail }) => f.engine(
                ReasonCode::RasDesync,
                format!("NCCL RAS: desync, no single laggard: {detail}"),
                *at,
            ),
            None => {}
        }
    }
}

/// Asked only about a step already late: its reasons come in the weigh phase.
impl super::Signal for RasSignal {
    fn observe(&mut self, b: &mut super::Board<'_>) {
        RasSignal::observe(self, b.engine, b.now);
    }
}
