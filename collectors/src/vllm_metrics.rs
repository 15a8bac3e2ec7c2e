//! The `vllm_metrics` collector: scrapes each engine's own `/metrics` (the API port from
//! its command line, on loopback) for requests running and the progress counters.
//! "Work outstanding, counters flat" is a stall signal that needs no ring.

use crate::collector::{Collector, Outcome};
use crate::netns;
use hangwatch_rules::vllm_metrics::VllmMetrics;
use hangwatch_rules::{EngineFacts, Millis, Snapshot};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct MetricsScraper {
    timeout: Duration,
    proc_root: PathBuf,
    enter_netns: bool,
    /// Whether the API server itself holds its port, per (pid, port), and when that was
    /// looked at: any local user can listen on a port vLLM failed to take and serve a
    /// `/metrics` that lies.
    holders: std::collections::BTreeMap<(u32, u16), (std::time::Instant, bool)>,
}

/// How long a look at who holds a port is trusted.
const HOLDER_TTL: Duration = Duration::from_secs(30);

impl MetricsScraper {
    /// `enter_netns`: whether an engine in its own network namespace is scraped there.
    pub fn new(timeout: Duration, proc_root: &Path, enter_netns: bool) -> MetricsScraper {
        MetricsScraper {
            timeout,
            proc_root: proc_root.to_path_buf(),
            enter_netns,
            holders: Default::default(),
        }
    }

    /// Whether `pid` holds a listening socket on `port` (looked at every 30 s at most).
    fn held_by(&mut self, pid: u32, port: u16) -> bool {
        let now = std::time::Instant::now();
        if let Some((at, held)) = self.holders.get(&(pid, port)) {
            if now.duration_since(*at) < HOLDER_TTL {
                return *held;
            }
        }
        let held = crate::listens::listens_on(&self.proc_root, pid, port);
        self.holders
            .retain(|_, (at, _)| now.duration_since(*at) < HOLDER_TTL);
        self.holders.insert((pid, port), (now, held));
        held
    }

    /// Scrapes every engine with a known port, on the loopback of the engine's own
    /// network namespace; returns the first error, if any (an engine whose API is not up
    /// yet is not an error worth more than a metric).
    pub fn scrape(&mut self, engines: &mut [EngineFacts]) -> Option<String> {
        let mut first_err = None;
        let mut jobs = Vec::new();
        for (i, e) in engines.iter().enumerate() {
            match self.target(e) {
                Ok(Some(t)) => jobs.push((i, t)),
                Ok(None) => {}
                Err(err) => {
                    first_err.get_or_insert(err);
                }
            }
        }
        for (i, got) in fetch_all(&jobs, self.timeout) {
            let e = &mut engines[i];
            match got {
                Ok(body) => {
                    let replica = (e.dp > 1).then_some(e.dp_rank);
                    e.vllm_metrics = Some(parse_for(&body, replica));
                    e.api_answered = Some(true);
                }
                Err(err) => {
                    e.api_answered = Some(false);
                    first_err.get_or_insert(format!("{}: {err}", e.id));
                }
            }
        }
        first_err
    }

    /// Where an engine's `/metrics` is, if it is to be scraped: its API server must
    /// hold the port, and its network namespace must be one the agent may enter.
    fn target(&mut self, e: &EngineFacts) -> Result<Option<Target>, String> {
        let Some(port) = e.port else { return Ok(None) };
        let pid = e.api_pid.unwrap_or(e.core.pid);
        if !self.held_by(pid, port) {
            return Err(format!(
                "{}: port {port} is not held by its API server (pid {pid}): not scraped",
                e.id
            ));
        }
        let ns = netns::foreign_netns(&self.proc_root, pid);
        if ns.is_some() && !self.enter_netns {
            return Err(format!("{}: in its own network namespace, not entered (kubernetes.enter_network_namespaces is off)", e.id));
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Ok(Some(Target { ns, addr }))
    }
}

/// One engine's `/metrics`: on the loopback of this network namespace (none: ours).
struct Target {
    ns: Option<PathBuf>,
    addr: SocketAddr,
}

/// Engines scraped at once at most.
const SCRAPERS: usize = 16;
/// The whole collector's time in a tick: engines not reached by then wait for the next
/// tick (said), so engines that never answer cannot hold the tick for long.
const BUDGET: Duration = Duration::from_millis(1500);

/// Scrapes every target, up to `SCRAPERS` at once, within `BUDGET`.
fn fetch_all(jobs: &[(usize, Target)], timeout: Duration) -> Vec<(usize, Result<String, String>)> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let deadline = std::time::Instant::now() + BUDGET;
    let per = jobs.len().div_ceil(SCRAPERS);
    let run = move |chunk: &[(usize, Target)]| -> Vec<(usize, Result<String, String>)> {
        chunk
            .iter()
            .map(|(i, t)| {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return (*i, Err("not scraped this tick: the collector's time was spent on slower engines".to_string()));
                }
                (*i, fetch(t, timeout.min(left / 2)))
            })
            .collect()
    };
    let mut chunks = jobs.chunks(per);
    // The first chunk on this thread: one engine costs no thread at all.
    let Some(first) = chunks.next() else {
        return Vec::new();
    };
    std::thread::scope(|sc| {
        let mut handles = Vec::new();
        let mut inline = Vec::new();
        for chunk in chunks {
            match std::thread::Builder::new()
                .name("vllm-metrics".into())
                .spawn_scoped(sc, move || run(chunk))
            {
                Ok(h) => handles.push(h),
                // No thread to be had: scrape these here, still within the budget.
                Err(_) => inline.extend(run(chunk)),
            }
        }
        inline.extend(run(first));
        for h in handles {
            inline.extend(h.join().unwrap_or_default());
        }
        inline
    })
}

/// One scrape, bounded by `timeout` to connect and twice that to read.
fn fetch(t: &Target, timeout: Duration) -> Result<String, String> {
    let inside = if t.ns.is_some() {
        " (in its network namespace)"
    } else {
        ""
    };
    let url = format!("http://{}/metrics{inside}", t.addr);
    netns::connect(t.ns.as_deref(), t.addr, timeout)
        .map_err(|err| format!("{url}: connecting: {err}"))
        .and_then(|s| {
            netns::http_get(s, &t.addr.to_string(), "/metrics", timeout, MAX_BODY)
                .map_err(|err| format!("{url}: {err}"))
        })
        .and_then(|(status, body)| match status {
            200..=299 => Ok(body),
            _ => Err(format!("{url}: HTTP {status}")),
        })
}

impl Collector for MetricsScraper {
    fn name(&self) -> &'static str {
        "vllm_metrics"
    }

    fn collect(&mut self, snap: &mut Snapshot, _now: Millis) -> Outcome {
        match self.scrape(&mut snap.engines) {
            Some(e) => Outcome::failed(e),
            None => Outcome::ok(),
        }
    }
}

/// Most bytes read from one `/metrics` answer: vLLM's is tens of kB; whatever answers on
/// the engine's port must not make the agent grow.
const MAX_BODY: u64 = 4 << 20;

/// Parses the Prometheus text format, summing each series over its label sets.
pub fn parse(text: &str) -> VllmMetrics {
    parse_for(text, None)
}

/// One replica's share of a data-parallel deployment's `/metrics`: vLLM labels each
/// replica's series `engine="<dp rank>"`; series of other replicas are left out (summed,
/// a stuck replica would look as busy as the others).
pub fn parse_for(text: &str, replica: Option<u32>) -> VllmMetrics {
    let mut m = VllmMetrics::default();
    let other = |line: &str| {
        let Some(r) = replica else { return false };
        let Some(at) = line.find("engine=\"") else {
            return false;
        };
        let rest = &line[at + 8..];
        let value = rest.split('"').next().unwrap_or("");
        value != r.to_string()
    };
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() || other(line) {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let slot = match name {
            "vllm:num_requests_running" => &mut m.running,
            "vllm:num_requests_waiting" => &mut m.waiting,
            "vllm:generation_tokens_total" => &mut m.generation_tokens_total,
            "vllm:prompt_tokens_total" => &mut m.prompt_tokens_total,
            "vllm:iteration_tokens_total_count" => &mut m.iteration_tokens_count,
            _ => continue,
        };
        *slot = Some(slot.unwrap_or(0.0) + value);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_reads_its_own_series() {
        let text = "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3\n\
                    vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 5\n";
        assert_eq!(parse_for(text, Some(1)).running, Some(5.0));
        assert_eq!(parse_for(text, Some(0)).running, Some(3.0));
        assert_eq!(parse(text).running, Some(8.0));
    }

    #[test]
    fn an_endless_body_is_cut_off_not_read() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = l.accept() {
                use std::io::Write;
                let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
                let block = [b'x'; 65536];
                while c.write_all(&block).is_ok() {}
            }
        });
        let s = netns::connect(None, addr, Duration::from_secs(1)).expect("connect");
        let e = netns::http_get(s, "x", "/metrics", Duration::from_secs(2), MAX_BODY)
            .expect_err("endless");
        assert!(e.contains("over 4 MiB"), "{e}");
    }

    #[test]
    fn metrics_text() {
        let m = parse("# HELP x\nvllm:num_requests_running{model_name=\"a\"} 2.0\nvllm:num_requests_running{model_name=\"b\"} 1\nvllm:generation_tokens_total{model_name=\"a\"} 1234\nvllm:generation_tokens_created{model_name=\"a\"} 1.7e9\n");
        assert_eq!(m.running, Some(3.0));
        assert_eq!(m.generation_tokens_total, Some(1234.0));
        assert_eq!(m.waiting, None);
    }
}
