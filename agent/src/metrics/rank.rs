//! The rank family: per rank of each live engine its lag, whether the judge names it,
//! what it is doing in a late step, and its CPU time. Cleared and set afresh each tick,
//! so a rank (or an engine) that is gone leaves no series.

use super::labels::{ActivityL, RankL, RoleL};
use super::FGauge;
use hangwatch_rules::signals::activity::Doing;
use hangwatch_rules::{EngineFacts, Role, Verdict};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Default)]
pub struct RankMetrics {
    lag: Family<RankL, FGauge>,
    suspect: Family<RankL, Gauge>,
    activity: Family<ActivityL, Gauge>,
    cpu: Family<RankL, FGauge>,
    process_suspect: Family<RoleL, Gauge>,
}

impl RankMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "hangwatch_rank_lag_seconds",
            "How long a rank has been behind the others (0 when it is not)",
            self.lag.clone(),
        );
        r.register(
            "hangwatch_rank_suspect",
            "1 while the judge names this rank as the cause of a stall",
            self.suspect.clone(),
        );
        r.register(
            "hangwatch_rank_activity",
            "1 for what the rank is doing while a step is late (computing, compiling, collective, pipeline_wait, waiting_for_rpc, waiting_on_gpu, blocked, stopped, unknown)",
            self.activity.clone(),
        );
        r.register(
            "hangwatch_process_suspect",
            "1 while the judge names a process that is no rank (role engine_core, api_server) as the cause of a stall",
            self.process_suspect.clone(),
        );
        r.register(
            "hangwatch_rank_cpu_seconds",
            "CPU seconds (user + system) the rank's process has used",
            self.cpu.clone(),
        );
    }

    pub fn clear(&self) {
        self.lag.clear();
        self.suspect.clear();
        self.activity.clear();
        self.cpu.clear();
        self.process_suspect.clear();
    }

    /// The ranks' CPU time, from the facts (also while the engine starts).
    pub fn observe_engine(&self, e: &EngineFacts) {
        for r in &e.ranks {
            self.cpu
                .get_or_create(&rank_l(&e.id, r.rank))
                .set(r.process.cpu_seconds);
        }
    }

    /// A live engine's ranks as the judge saw them.
    pub fn observe_verdict(&self, v: &Verdict) {
        for (rank, lag) in &v.rank_lag_seconds {
            let l = rank_l(&v.engine, *rank);
            self.lag.get_or_create(&l).set(*lag);
            let named = v.suspects.iter().any(|s| s.is_rank(*rank));
            self.suspect.get_or_create(&l).set(i64::from(named));
        }
        // Every engine has both series (0 or 1), so an alert can tell "named none".
        for role in [Role::EngineCore, Role::ApiServer] {
            let named = v
                .suspects
                .iter()
                .any(|s| s.rank.is_none() && s.role == role);
            self.process_suspect
                .get_or_create(&RoleL {
                    engine: v.engine.clone(),
                    role: role.as_str().to_string(),
                })
                .set(i64::from(named));
        }
        for a in &v.rank_activity {
            for d in Doing::ALL {
                self.activity
                    .get_or_create(&ActivityL {
                        engine: v.engine.clone(),
                        rank: a.rank.to_string(),
                        activity: d.as_str().to_string(),
                    })
                    .set(i64::from(d == a.doing));
            }
        }
    }
}

fn rank_l(engine: &str, rank: u32) -> RankL {
    RankL {
        engine: engine.to_string(),
        rank: rank.to_string(),
    }
}
