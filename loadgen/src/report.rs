//! The result of a scenario: counts, rates and latency percentiles, as a table and as JSON.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

/// Highest latency recorded, in microseconds (longer ones are clamped).
const MAX_LATENCY_US: u64 = 60_000_000;

/// What a scenario measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario's name.
    pub scenario: &'static str,
    /// How long it ran.
    pub elapsed: Duration,
    /// Sessions that opened.
    pub sessions_ok: u64,
    /// Sessions that failed to open or closed early.
    pub sessions_failed: u64,
    /// Datagrams sent and received, and their bytes.
    pub packets_out: u64,
    /// Datagrams received.
    pub packets_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Messages expected at the receivers (fanout).
    pub expected: u64,
    /// Messages received.
    pub delivered: u64,
    /// Messages expected and never received.
    pub lost: u64,
    /// Messages received where they should not have been (another stream's media).
    pub misdelivered: u64,
    /// Latencies in microseconds (handshake time for `connect`, end-to-end for `fanout`).
    pub latency: Histogram<u64>,
}

impl Report {
    /// An empty report.
    pub fn new(scenario: &'static str) -> Report {
        Report {
            scenario,
            elapsed: Duration::ZERO,
            sessions_ok: 0,
            sessions_failed: 0,
            packets_out: 0,
            packets_in: 0,
            bytes_out: 0,
            bytes_in: 0,
            expected: 0,
            delivered: 0,
            lost: 0,
            misdelivered: 0,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .unwrap_or_else(|_| unreachable!("valid bounds")),
        }
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let _ = self.latency.record(us.clamp(1, MAX_LATENCY_US));
    }

    fn rate(&self, n: u64) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let n = n as f64;
        n / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    fn percentile_ms(&self, q: f64) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let us = self.latency.value_at_quantile(q) as f64;
        us / 1000.0
    }

    /// The machine-readable summary.
    pub fn json(&self) -> serde_json::Value {
        #[allow(clippy::cast_precision_loss)]
        let max_ms = self.latency.max() as f64 / 1000.0;
        json!({
            "scenario": self.scenario,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "sessions_ok": self.sessions_ok,
            "sessions_failed": self.sessions_failed,
            "packets_out": self.packets_out,
            "packets_in": self.packets_in,
            "packets_out_per_s": self.rate(self.packets_out),
            "packets_in_per_s": self.rate(self.packets_in),
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
            "expected": self.expected,
            "delivered": self.delivered,
            "lost": self.lost,
            "misdelivered": self.misdelivered,
            "latency_samples": self.latency.len(),
            "latency_ms": {
                "p50": self.percentile_ms(0.5),
                "p90": self.percentile_ms(0.9),
                "p99": self.percentile_ms(0.99),
                "p99.9": self.percentile_ms(0.999),
                "max": max_ms,
            },
        })
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let j = self.json();
        let l = &j["latency_ms"];
        format!(
            "scenario        {}\n\
             elapsed         {:.2} s\n\
             sessions        {} ok, {} failed\n\
             packets out/in  {} / {} ({:.0} / {:.0} per s)\n\
             bytes out/in    {} / {}\n\
             messages        {} expected, {} delivered, {} lost, {} misdelivered\n\
             latency (ms)    p50 {} p90 {} p99 {} p99.9 {} max {} ({} samples)\n",
            self.scenario,
            self.elapsed.as_secs_f64(),
            self.sessions_ok,
            self.sessions_failed,
            self.packets_out,
            self.packets_in,
            self.rate(self.packets_out),
            self.rate(self.packets_in),
            self.bytes_out,
            self.bytes_in,
            self.expected,
            self.delivered,
            self.lost,
            self.misdelivered,
            l["p50"],
            l["p90"],
            l["p99"],
            l["p99.9"],
            l["max"],
            self.latency.len(),
        )
    }
}
