//! The `gpu` collector: every GPU's readings through NVML (loaded at run time: a node
//! without a driver reports `unavailable` and the agent runs on). All NVML use sits
//! behind `GpuSource`, so recorded traces can stand in for it in tests.

use crate::collector::{Collector, Outcome};
use hangwatch_rules::gpu::{GpuFacts, GpuProcess, XidEvent};
use hangwatch_rules::Millis;
use hangwatch_rules::Snapshot;
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

/// Watches Xid and double-bit ECC events on a thread of its own (NVML's wait blocks).
pub fn spawn_event_watcher(tx: mpsc::Sender<XidEvent>) -> Result<(), String> {
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
                        if tx.send(XidEvent { gpu, xid, at_ms }).is_err() {
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

/// How often a missing NVML is looked for again.
const RETRY_MS: Millis = 60_000;

/// The `gpu` collector: NVML when present (looked for again every minute), its Xid
/// events into the snapshot. A missing or failing NVML makes it report down; the
/// runner says so once per change.
pub struct GpuCollector {
    source: Option<Box<dyn GpuSource>>,
    last_try_ms: Option<Millis>,
    /// Why NVML could not be opened, while it cannot.
    missing: Option<String>,
    events: Option<mpsc::Receiver<XidEvent>>,
}

impl Default for GpuCollector {
    fn default() -> Self {
        GpuCollector::new()
    }
}

impl GpuCollector {
    pub fn new() -> GpuCollector {
        GpuCollector {
            source: None,
            last_try_ms: None,
            missing: None,
            events: None,
        }
    }

    /// A collector over another source (recorded traces, a scripted failure).
    pub fn with_source(source: Box<dyn GpuSource>) -> GpuCollector {
        GpuCollector {
            source: Some(source),
            last_try_ms: Some(0),
            missing: None,
            events: None,
        }
    }

    fn open(&mut self, now: Millis) {
        if self.source.is_some() || self.last_try_ms.is_some_and(|t| now - t < RETRY_MS) {
            return;
        }
        self.last_try_ms = Some(now);
        match NvmlSource::open() {
            Ok(s) => {
                tracing::info!(driver = %s.driver(), "NVML opened: reading GPUs");
                self.source = Some(Box::new(s));
                self.missing = None;
                let (tx, rx) = mpsc::channel();
                if spawn_event_watcher(tx).is_ok() {
                    self.events = Some(rx);
                }
            }
            Err(e) => {
                self.missing = Some(format!(
                    "{e}; GPU evidence off (looked for again every minute)"
                ))
            }
        }
    }
}

impl Collector for GpuCollector {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn collect(&mut self, snap: &mut Snapshot, now: Millis) -> Outcome {
        self.open(now);
        if let Some(rx) = &self.events {
            snap.xids.extend(rx.try_iter());
        }
        let Some(src) = &mut self.source else {
            return Outcome::failed(self.missing.clone().unwrap_or_default());
        };
        match src.sample() {
            Ok(g) => {
                snap.gpus = g;
                Outcome::ok()
            }
            Err(e) => Outcome::failed(format!(
                "NVML failing: {e}; GPU evidence off until it answers"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::Runner;

    /// NVML cannot fail on demand here: a scripted source behind the same trait stands
    /// in for a driver that fails mid-run and a GPU that falls off the bus.
    struct Scripted(Vec<Result<Vec<GpuFacts>, String>>);

    impl GpuSource for Scripted {
        fn sample(&mut self) -> Result<Vec<GpuFacts>, String> {
            if self.0.is_empty() {
                return Err("script over".into());
            }
            self.0.remove(0)
        }
    }

    fn gpu(index: u32, error: Option<&str>) -> GpuFacts {
        GpuFacts {
            index,
            utilization: error.is_none().then_some(50),
            error: error.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn nvml_failing_mid_run_and_a_vanished_gpu_are_reported_not_fatal() {
        let mut r = Runner::new();
        r.add(Box::new(GpuCollector::with_source(Box::new(Scripted(
            vec![
                Ok(vec![gpu(0, None), gpu(1, None)]),
                Err("NVML: GPU is lost".into()),
                Ok(vec![gpu(0, None), gpu(1, Some("device 1: GPU is lost"))]),
            ],
        )))));
        let mut looks = Vec::new();
        for t in 1..=3 {
            let mut s = Snapshot::default();
            r.run(&mut s, t * 1000);
            looks.push((s.gpus, s.collectors.remove(0)));
        }
        assert_eq!(looks[0].0.len(), 2);
        assert!(looks[0].1.up);
        assert!(looks[1].0.is_empty());
        assert!(!looks[1].1.up);
        assert_eq!(
            looks[1].1.error.as_deref(),
            Some("NVML failing: NVML: GPU is lost; GPU evidence off until it answers")
        );
        assert!(looks[2].1.up, "answers again");
        assert_eq!(
            looks[2].0[1].error.as_deref(),
            Some("device 1: GPU is lost")
        );
    }
}
