//! One tick of collection for the whole node: discovery, process state, ring flags.

use crate::discovery::Discovery;
use crate::process::ProcRoot;
use crate::rings::read_site;
use hangwatch_rules::{CollectorReport, EngineFacts, Millis};
use std::time::Instant;

pub struct NodeCollector {
    discovery: Discovery,
}

/// What one tick of collection gives: the engines, how each collector fared, and
/// problems worth a log line.
pub struct Collected {
    pub engines: Vec<EngineFacts>,
    pub reports: Vec<CollectorReport>,
    pub problems: Vec<String>,
}

impl NodeCollector {
    pub fn new(proc: ProcRoot) -> NodeCollector {
        NodeCollector {
            discovery: Discovery::new(proc),
        }
    }

    pub fn collect(&mut self, now_ms: Millis) -> Collected {
        let t0 = Instant::now();
        let layouts = self.discovery.scan(now_ms);
        let discovery_s = t0.elapsed().as_secs_f64();
        let mut problems: Vec<String> = Vec::new();

        let t1 = Instant::now();
        let mut ring_errors = Vec::new();
        let mut engines = Vec::with_capacity(layouts.len());
        for layout in layouts {
            problems.extend(layout.problems.iter().cloned());
            let mut facts = layout.facts;
            facts.rings = layout.sites.iter().map(read_site).collect();
            if let Some(err) = facts.rings.iter().find_map(|r| r.error.clone()) {
                // A vanished or resized segment: look for the engine's rings afresh.
                self.discovery.invalidate_rings(facts.core.pid);
                ring_errors.push(format!("{}: {err}", facts.id));
            }
            engines.push(facts);
        }
        let rings_s = t1.elapsed().as_secs_f64();
        let reports = vec![
            CollectorReport {
                name: "discovery".into(),
                up: true,
                duration_seconds: discovery_s,
                error: None,
            },
            CollectorReport {
                name: "rings".into(),
                up: ring_errors.is_empty(),
                duration_seconds: rings_s,
                error: ring_errors.first().cloned(),
            },
        ];
        problems.extend(ring_errors);
        Collected {
            engines,
            reports,
            problems,
        }
    }
}
