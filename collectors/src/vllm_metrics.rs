//! The `vllm_metrics` collector: scrapes each engine's own `/metrics` (the API port from
//! its command line, on loopback) for requests running and the progress counters.
//! "Work outstanding, counters flat" is a stall signal that needs no ring.

use crate::collector::{Collector, Outcome};
use hangwatch_rules::vllm_metrics::VllmMetrics;
use hangwatch_rules::{EngineFacts, Millis, Snapshot};
use std::io::Read;
use std::time::Duration;

pub struct MetricsScraper {
    client: Option<reqwest::blocking::Client>,
    error: Option<String>,
}

impl MetricsScraper {
    pub fn new(timeout: Duration) -> MetricsScraper {
        match reqwest::blocking::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .build()
        {
            Ok(c) => MetricsScraper {
                client: Some(c),
                error: None,
            },
            Err(e) => MetricsScraper {
                client: None,
                error: Some(format!("cannot build an HTTP client: {e}")),
            },
        }
    }

    /// Scrapes every engine with a known port; returns the first error, if any (an
    /// engine whose API is not up yet is not an error worth more than a metric).
    pub fn scrape(&self, engines: &mut [EngineFacts]) -> Option<String> {
        let Some(client) = &self.client else {
            return self.error.clone();
        };
        let mut first_err = None;
        for e in engines.iter_mut() {
            let Some(port) = e.port else { continue };
            let url = format!("http://127.0.0.1:{port}/metrics");
            let body = client
                .get(&url)
                .send()
                .and_then(|r| r.error_for_status())
                .map_err(|e| e.to_string())
                .and_then(read_capped);
            match body {
                Ok(body) => e.vllm_metrics = Some(parse(&body)),
                Err(err) => {
                    if first_err.is_none() {
                        first_err = Some(format!("{}: {url}: {err}", e.id));
                    }
                }
            }
        }
        first_err
    }
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

fn read_capped(r: impl std::io::Read) -> Result<String, String> {
    let mut body = Vec::new();
    r.take(MAX_BODY + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("reading the body: {e}"))?;
    if body.len() as u64 > MAX_BODY {
        return Err(format!("body over {} MiB: not read", MAX_BODY >> 20));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Parses the Prometheus text format, summing each series over its label sets.
pub fn parse(text: &str) -> VllmMetrics {
    let mut m = VllmMetrics::default();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
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
    fn an_endless_body_is_cut_off_not_read() {
        let endless = std::io::repeat(b'x');
        let e = read_capped(endless).expect_err("endless");
        assert!(e.contains("over 4 MiB"), "{e}");
        let ok = read_capped("vllm:num_requests_running 1\n".as_bytes()).expect("small");
        assert_eq!(parse(&ok).running, Some(1.0));
    }

    #[test]
    fn metrics_text() {
        let m = parse("# HELP x\nvllm:num_requests_running{model_name=\"a\"} 2.0\nvllm:num_requests_running{model_name=\"b\"} 1\nvllm:generation_tokens_total{model_name=\"a\"} 1234\nvllm:generation_tokens_created{model_name=\"a\"} 1.7e9\n");
        assert_eq!(m.running, Some(3.0));
        assert_eq!(m.generation_tokens_total, Some(1234.0));
        assert_eq!(m.waiting, None);
    }
}
