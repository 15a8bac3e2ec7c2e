//! The `gpu` collector: every GPU's readings through NVML (loaded at run time: a node
//! without a driver reports `unavailable` and the agent runs on). All NVML use sits
//! behind `GpuSource`, so recorded traces can stand in for it in tests.

use hangwatch_rules::gpu::{GpuFacts, GpuProcess};
use hangwatch_rules::Millis;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::Nvml;
use std::collections::BTreeMap;
use std::sync::mpsc;

pub trait GpuSource: Send {
    /// Every GPU now; `Err` when the source failed as a whole (NVML gone, driver reset).
    fn sample(&mut self) -> Result<Vec<GpuFacts>, String>;
}

pub struct NvmlSource {
    nvml: Nvml,
    /// Last process-utilization timestamp per GPU, so each call returns fresh samples.
    last_seen: BTreeMap<u32, u64>,
}

impl NvmlSource {
    pub fn open() -> Result<NvmlSource, String> {
        Nvml::init()
            .map(|nvml| NvmlSource {
                nvml,
                last_seen: BTreeMap::new(),
            })
            .map_err(|e| format!("NVML not available: {e}"))
    }

    pub fn driver(&self) -> String {
        self.nvml
            .sys_driver_version()
            .unwrap_or_else(|_| "?".into())
    }
}

impl GpuSource for NvmlSource {
    fn sample(&mut self) -> Result<Vec<GpuFacts>, String> {
        let n = self
            .nvml
            .device_count()
            .map_err(|e| format!("NVML device count: {e}"))?;
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let d = match self.nvml.device_by_index(i) {
                Ok(d) => d,
                Err(e) => {
                    out.push(GpuFacts {
                        index: i,
                        error: Some(format!("device {i}: {e}")),
                        ..Default::default()
                    });
                    continue;
                }
            };
            let util = d.utilization_rates().ok();
            let mut processes: Vec<GpuProcess> = d
                .running_compute_processes()
                .map(|ps| {
                    ps.into_iter()
                        .map(|p| GpuProcess {
                            pid: p.pid,
                            utilization: None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let since = self.last_seen.get(&i).copied();
            if let Ok(samples) = d.process_utilization_stats(since) {
                for s in samples {
                    self.last_seen
                        .entry(i)
                        .and_modify(|t| *t = (*t).max(s.timestamp))
                        .or_insert(s.timestamp);
                    match processes.iter_mut().find(|p| p.pid == s.pid) {
                        Some(p) => p.utilization = Some(s.sm_util),
                        None => processes.push(GpuProcess {
                            pid: s.pid,
                            utilization: Some(s.sm_util),
                        }),
                    }
                }
            }
            out.push(GpuFacts {
                index: i,
                uuid: d.uuid().unwrap_or_default(),
                name: d.name().unwrap_or_default(),
                utilization: util.as_ref().map(|u| u.gpu),
                memory_utilization: util.as_ref().map(|u| u.memory),
                power_w: d.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
                sm_clock_mhz: d.clock_info(Clock::SM).ok(),
                temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
                throttle_reasons: d.current_throttle_reasons().ok().map(|r| r.bits()),
                memory_used_bytes: d.memory_info().ok().map(|m| m.used),
                gpm: None,
                processes,
                error: None,
            });
        }
        Ok(out)
    }
}

/// An Xid or double-bit ECC error, as NVML's event set reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuEvent {
    pub gpu: u32,
    /// The Xid number; 48 for a double-bit ECC error reported without one.
    pub xid: u64,
    pub at_ms: Millis,
}

/// Watches Xid and double-bit ECC events on a thread of its own (NVML's wait blocks).
pub fn spawn_event_watcher(tx: mpsc::Sender<GpuEvent>) -> Result<(), String> {
    use nvml_wrapper::bitmasks::event::EventTypes;
    std::thread::Builder::new()
        .name("gpu-events".into())
        .spawn(move || {
            let Ok(nvml) = Nvml::init() else { return };
            let Ok(mut set) = nvml.create_event_set() else {
                return;
            };
            let count = nvml.device_count().unwrap_or(0);
            for i in 0..count {
                if let Ok(d) = nvml.device_by_index(i) {
                    let kinds = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR;
                    set = match d.register_events(kinds, set) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::info!(gpu = i, error = %e.error, "GPU Xid events not supported here; not watching them");
                            return;
                        }
                    };
                }
            }
            loop {
                match set.wait(1000) {
                    Ok(ev) => {
                        let gpu = ev.device.index().unwrap_or(u32::MAX);
                        let xid = match ev.event_data {
                            Some(nvml_wrapper::enums::event::XidError::Value(v)) => v,
                            _ => 48,
                        };
                        let at_ms = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_millis() as Millis)
                            .unwrap_or(0);
                        if tx.send(GpuEvent { gpu, xid, at_ms }).is_err() {
                            return;
                        }
                    }
                    Err(nvml_wrapper::error::NvmlError::Timeout) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "GPU event watcher stopped");
                        return;
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the GPU event thread: {e}"))
}
