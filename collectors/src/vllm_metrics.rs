//! The `vllm_metrics` collector: scrapes each engine's own `/metrics` (the API port from
//! its command line, on loopback) for requests running and the progress counters.
//! "Work outstanding, counters flat" is a stall signal that needs no ring.

use hangwatch_rules::logs::VllmMetrics;
use hangwatch_rules::EngineFacts;
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
            match client
                .get(&url)
                .send()
                .and_then(|r| r.error_for_status())
                .and_then(|r| r.text())
            {
                Ok(body) => e.vllm_metrics = Some(VllmMetrics::parse(&body)),
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
