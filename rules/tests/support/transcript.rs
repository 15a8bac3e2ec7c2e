//! Pinned verdict sequences: a scenario's snapshots are judged by the watch step the agent
//! runs live and in replay, and every change (state, suspects, incident events) becomes a
//! line of a transcript compared with `testdata/pinned/<name>.txt`. A refactoring must
//! leave these files unchanged; a deliberate change of judgement re-blesses them with
//! `HANGWATCH_BLESS=1` and says why in its commit.

use hangwatch_rules::watch::Watch;
use hangwatch_rules::{EngineState, Judge, Millis, Snapshot, Thresholds, Verdict};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Who a verdict names: rank (if any) and role.
type Named = (Option<u32>, hangwatch_rules::Role);

pub struct Transcript {
    watch: Watch,
    last: BTreeMap<String, (EngineState, Vec<Named>)>,
    t0: Option<Millis>,
    lines: Vec<String>,
}

impl Transcript {
    pub fn new() -> Transcript {
        Transcript {
            watch: Watch::new(Thresholds::default()),
            last: BTreeMap::new(),
            t0: None,
            lines: Vec::new(),
        }
    }

    #[allow(dead_code)] // used by the GPU replays, not by the vLLM recordings
    pub fn judge(&self) -> &Judge {
        self.watch.judge()
    }

    /// Judges one snapshot; returns the verdicts so scenario tests keep their asserts.
    pub fn observe(&mut self, snap: &Snapshot) -> Vec<Verdict> {
        let t0 = *self.t0.get_or_insert(snap.at_ms);
        let at = |ms: Millis| format!("+{:.1}s", (ms - t0) as f64 / 1000.0);
        let ticks = self.watch.step(snap);
        for tick in &ticks {
            let v = &tick.verdict;
            let now = (
                v.state,
                v.suspects
                    .iter()
                    .map(|s| (s.rank, s.role))
                    .collect::<Vec<_>>(),
            );
            if self.last.get(&v.engine) != Some(&now) {
                self.lines.push(format!("{} {}", at(v.at_ms), v.headline()));
                self.last.insert(v.engine.clone(), now);
            }
            for ev in &tick.events {
                let i = ev.incident();
                let ranks: Vec<String> = i
                    .suspects
                    .iter()
                    .map(|s| {
                        s.rank
                            .map_or_else(|| s.role.as_str().to_string(), |r| r.to_string())
                    })
                    .collect();
                let reasons: Vec<&str> = i.engine_reasons.iter().map(|r| r.code.as_str()).collect();
                self.lines.push(format!(
                    "{} incident {} {} onset {} suspects [{}] engine reasons [{}]",
                    at(v.at_ms),
                    ev.kind(),
                    i.id,
                    at(i.onset_ms),
                    ranks.join(","),
                    reasons.join(",")
                ));
            }
        }
        ticks.into_iter().map(|t| t.verdict).collect()
    }

    /// Compares with the pinned file (or writes it with `HANGWATCH_BLESS=1`).
    pub fn check_pinned(&self, name: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/pinned")
            .join(format!("{name}.txt"));
        let text = self.lines.join("\n") + "\n";
        if std::env::var_os("HANGWATCH_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            return;
        }
        let pinned = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (bless with HANGWATCH_BLESS=1)", path.display()));
        assert_eq!(
            text,
            pinned,
            "verdict sequence of {name} differs from {}",
            path.display()
        );
    }
}
