//! GPUs as facts, and what a GPU's readings say about the rank on it: busy, idle, or
//! spinning — a kernel waiting in a collective for a peer (measured on H200, docs/gpu.md:
//! utilization ~100 % at idle power, DRAM bandwidth ~0).

use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct GpuFacts {
    pub index: u32,
    #[serde(default)]
    pub uuid: String,
    #[serde(default)]
    pub name: String,
    /// `utilization.gpu`, percent of time a kernel ran.
    pub utilization: Option<u32>,
    pub memory_utilization: Option<u32>,
    pub power_w: Option<f64>,
    pub sm_clock_mhz: Option<u32>,
    pub temperature_c: Option<u32>,
    pub throttle_reasons: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    /// GPM (Hopper and later): SM activity, SM occupancy, DRAM bandwidth, percent.
    pub gpm: Option<[f64; 3]>,
    /// Compute processes (host pids) and their utilization when NVML reports it.
    #[serde(default)]
    pub processes: Vec<GpuProcess>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An Xid or double-bit ECC error, as NVML's event set reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct XidEvent {
    pub gpu: u32,
    /// The Xid number; 48 for a double-bit ECC error reported without one.
    pub xid: u64,
    pub at_ms: Millis,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GpuProcess {
    pub pid: u32,
    pub utilization: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum GpuClass {
    Busy,
    Idle,
    /// Utilization ~100 % at idle power: a kernel polling for a peer.
    Spin,
    Unknown,
}

impl GpuClass {
    pub const ALL: [GpuClass; 4] = [
        GpuClass::Busy,
        GpuClass::Idle,
        GpuClass::Spin,
        GpuClass::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GpuClass::Busy => "busy",
            GpuClass::Idle => "idle",
            GpuClass::Spin => "spin",
            GpuClass::Unknown => "unknown",
        }
    }
}

/// Power above the learned idle power that still counts as "idle power" for a spin:
/// measured spin 123 W against idle 118–121 W at working clocks, but the lowest idle
/// reading (deep idle, 345 MHz) was 79 W — so the margin is relative and generous;
/// real work is 450–670 W.
const SPIN_POWER_FACTOR: f64 = 1.8;

/// One reading, classified. `idle_w`: the lowest power this GPU was seen at while idle.
pub fn classify_sample(g: &GpuFacts, idle_w: Option<f64>) -> GpuClass {
    let Some(util) = g.utilization else {
        return GpuClass::Unknown;
    };
    if util <= 5 {
        return GpuClass::Idle;
    }
    if util >= 90 {
        if let Some([sm, _occ, dram]) = g.gpm {
            // GPM tells it directly: little SM activity, no DRAM traffic.
            if dram < 1.0 && sm < 40.0 {
                return GpuClass::Spin;
            }
            return GpuClass::Busy;
        }
        return match (g.power_w, idle_w) {
            (Some(p), Some(idle)) if p <= idle * SPIN_POWER_FACTOR => GpuClass::Spin,
            (Some(_), Some(_)) => GpuClass::Busy,
            _ => GpuClass::Unknown,
        };
    }
    GpuClass::Busy
}

/// Per-GPU classification with hysteresis: a new class is taken only when two
/// consecutive readings agree, so one odd sample flips nothing.
#[derive(Debug, Default)]
pub struct GpuClassifier {
    state: BTreeMap<String, GpuState>,
}

#[derive(Debug, Clone)]
struct GpuState {
    idle_w: Option<f64>,
    class: GpuClass,
    since_ms: Millis,
    candidate: Option<GpuClass>,
}

/// Key of a GPU across ticks: its UUID, or its index when NVML gave none.
pub fn gpu_key(g: &GpuFacts) -> String {
    if g.uuid.is_empty() {
        format!("gpu{}", g.index)
    } else {
        g.uuid.clone()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GpuVerdict {
    pub index: u32,
    pub class: GpuClass,
    pub since_ms: Millis,
    pub idle_power_w: Option<f64>,
}

impl GpuClassifier {
    pub fn observe(&mut self, gpus: &[GpuFacts], now: Millis) -> BTreeMap<u32, GpuVerdict> {
        let mut out = BTreeMap::new();
        for g in gpus {
            let st = self.state.entry(gpu_key(g)).or_insert(GpuState {
                idle_w: None,
                class: GpuClass::Unknown,
                since_ms: now,
                candidate: None,
            });
            if g.utilization.is_some_and(|u| u <= 5) {
                if let Some(p) = g.power_w {
                    st.idle_w = Some(st.idle_w.map_or(p, |i| i.min(p)));
                }
            }
            let c = classify_sample(g, st.idle_w);
            if c == st.class {
                st.candidate = None;
            } else if st.candidate == Some(c) || st.class == GpuClass::Unknown {
                st.class = c;
                st.since_ms = now;
                st.candidate = None;
            } else {
                st.candidate = Some(c);
            }
            out.insert(
                g.index,
                GpuVerdict {
                    index: g.index,
                    class: st.class,
                    since_ms: st.since_ms,
                    idle_power_w: st.idle_w,
                },
            );
        }
        out
    }
}

/// The GPU each pid runs on (NVML's host pids: no trust in CUDA_VISIBLE_DEVICES).
pub fn gpu_of_pids(gpus: &[GpuFacts]) -> BTreeMap<u32, u32> {
    let mut m = BTreeMap::new();
    for g in gpus {
        for p in &g.processes {
            m.insert(p.pid, g.index);
        }
    }
    m
}

/// What the GPUs of an engine's ranks say, given each rank's class.
#[derive(Clone, Debug, PartialEq)]
pub enum GpuFinding {
    /// The others spin in a collective; this rank's GPU is idle: it is the one missing.
    IdleWhileOthersSpin { rank: u32, others: Vec<u32> },
    /// Every rank spins: nobody local is missing (desync, or a peer on another node).
    CollectiveWedge { ranks: Vec<u32> },
}

pub fn gpu_finding(classes: &BTreeMap<u32, GpuClass>) -> Option<GpuFinding> {
    let known: Vec<(u32, GpuClass)> = classes
        .iter()
        .filter(|(_, c)| **c != GpuClass::Unknown)
        .map(|(r, c)| (*r, *c))
        .collect();
    if known.len() < 2 {
        return None;
    }
    let spin: Vec<u32> = known
        .iter()
        .filter(|(_, c)| *c == GpuClass::Spin)
        .map(|(r, _)| *r)
        .collect();
    let idle: Vec<u32> = known
        .iter()
        .filter(|(_, c)| *c == GpuClass::Idle)
        .map(|(r, _)| *r)
        .collect();
    if idle.len() == 1 && !spin.is_empty() && spin.len() + 1 == known.len() {
        return Some(GpuFinding::IdleWhileOthersSpin {
            rank: idle[0],
            others: spin,
        });
    }
    if spin.len() == known.len() {
        return Some(GpuFinding::CollectiveWedge { ranks: spin });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(util: u32, power: f64) -> GpuFacts {
        GpuFacts {
            utilization: Some(util),
            power_w: Some(power),
            ..Default::default()
        }
    }

    #[test]
    fn h200_signatures() {
        assert_eq!(classify_sample(&g(97, 636.0), Some(79.0)), GpuClass::Busy);
        assert_eq!(classify_sample(&g(100, 123.0), Some(79.0)), GpuClass::Spin);
        assert_eq!(classify_sample(&g(100, 123.0), Some(119.0)), GpuClass::Spin);
        assert_eq!(classify_sample(&g(0, 120.0), Some(79.0)), GpuClass::Idle);
        assert_eq!(classify_sample(&g(100, 123.0), None), GpuClass::Unknown);
        let mut gpm = g(100, 130.0);
        gpm.gpm = Some([18.0, 4.8, 0.0]);
        assert_eq!(classify_sample(&gpm, None), GpuClass::Spin);
        gpm.gpm = Some([86.0, 11.0, 4.3]);
        assert_eq!(classify_sample(&gpm, None), GpuClass::Busy);
    }

    #[test]
    fn one_odd_reading_flips_nothing() {
        let mut c = GpuClassifier::default();
        c.observe(&[g(0, 80.0)], 0);
        assert_eq!(c.observe(&[g(97, 600.0)], 1000)[&0].class, GpuClass::Idle);
        assert_eq!(c.observe(&[g(0, 80.0)], 2000)[&0].class, GpuClass::Idle);
        c.observe(&[g(97, 600.0)], 3000);
        let v = c.observe(&[g(97, 600.0)], 4000);
        assert_eq!(v[&0].class, GpuClass::Busy);
        assert_eq!(v[&0].since_ms, 4000);
    }

    #[test]
    fn findings() {
        let m = BTreeMap::from([(0, GpuClass::Spin), (1, GpuClass::Idle)]);
        assert_eq!(
            gpu_finding(&m),
            Some(GpuFinding::IdleWhileOthersSpin {
                rank: 1,
                others: vec![0]
            })
        );
        let m = BTreeMap::from([(0, GpuClass::Spin), (1, GpuClass::Spin)]);
        assert_eq!(
            gpu_finding(&m),
            Some(GpuFinding::CollectiveWedge { ranks: vec![0, 1] })
        );
        let m = BTreeMap::from([(0, GpuClass::Busy), (1, GpuClass::Busy)]);
        assert_eq!(gpu_finding(&m), None);
        let m = BTreeMap::from([(0, GpuClass::Idle), (1, GpuClass::Idle)]);
        assert_eq!(gpu_finding(&m), None);
    }
}
