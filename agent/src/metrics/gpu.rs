//! The GPU family: each GPU's class, utilization, power, and the Xid errors NVML
//! reported. Cleared and set afresh each tick (a GPU that vanished leaves nothing).

use super::labels::{GpuL, GpuStateL, XidL};
use hangwatch_rules::gpu::{GpuClass, GpuFacts, GpuVerdict};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

#[derive(Default)]
pub struct GpuMetrics {
    state: Family<GpuStateL, Gauge>,
    util: Family<GpuL, Gauge<f64, AtomicU64>>,
    power: Family<GpuL, Gauge<f64, AtomicU64>>,
    xid: Family<XidL, Counter>,
}

impl GpuMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "hangwatch_gpu_state",
            "1 for the GPU's class: busy, idle, spin (waiting in a collective), unknown",
            self.state.clone(),
        );
        r.register(
            "hangwatch_gpu_utilization_ratio",
            "NVML utilization.gpu, 0..1",
            self.util.clone(),
        );
        r.register(
            "hangwatch_gpu_power_watts",
            "GPU power draw",
            self.power.clone(),
        );
        r.register(
            "hangwatch_gpu_xid_errors",
            "Xid (and double-bit ECC) errors NVML reported",
            self.xid.clone(),
        );
    }

    pub fn observe(&self, gpus: &[GpuFacts], classes: &BTreeMap<u32, GpuVerdict>) {
        self.state.clear();
        self.util.clear();
        self.power.clear();
        for g in gpus {
            let l = GpuL {
                gpu: g.index.to_string(),
            };
            if let Some(u) = g.utilization {
                self.util.get_or_create(&l).set(f64::from(u) / 100.0);
            }
            if let Some(p) = g.power_w {
                self.power.get_or_create(&l).set(p);
            }
            let class = classes.get(&g.index).map(|v| v.class);
            for c in GpuClass::ALL {
                self.state
                    .get_or_create(&GpuStateL {
                        gpu: g.index.to_string(),
                        state: c.as_str().to_string(),
                    })
                    .set(i64::from(class == Some(c)));
            }
        }
    }

    pub fn xid(&self, gpu: u32, xid: u64) {
        self.xid
            .get_or_create(&XidL {
                gpu: gpu.to_string(),
                xid: xid.to_string(),
            })
            .inc();
    }
}
