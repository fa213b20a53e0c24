//! What `--metrics` serves: each worker's counters as Prometheus text (`/metrics`) and JSON
//! (`/stats`).

use std::sync::Arc;

use updraft_dataplane::counters::WorkerCounters;
use updraft_dataplane::worker::Shared;

use crate::ops::metrics_http::{MetricsSource, PromWriter};

/// Counters that are levels, not totals.
const GAUGES: [&str; 1] = ["sessions_open"];

/// The data plane's counters, read at each request.
pub struct PlaneMetrics {
    shared: Arc<Shared>,
}

impl PlaneMetrics {
    /// Metrics over the workers sharing `shared`.
    pub fn new(shared: Arc<Shared>) -> PlaneMetrics {
        PlaneMetrics { shared }
    }

    fn snapshot(&self) -> Vec<WorkerCounters> {
        self.shared.counters.iter().map(|c| c.load()).collect()
    }
}

impl MetricsSource for PlaneMetrics {
    fn prometheus(&self) -> String {
        let workers = self.snapshot();
        let mut w = PromWriter::new();
        let Some(first) = workers.first() else {
            return w.finish();
        };
        for (k, (name, _)) in first.fields().iter().enumerate() {
            let metric = format!("updraft_{name}");
            let help = format!("Data-plane {} per worker.", name.replace('_', " "));
            for (i, c) in workers.iter().enumerate() {
                let label = i.to_string();
                let value = c.fields()[k].1;
                if GAUGES.contains(name) {
                    #[allow(clippy::cast_precision_loss)]
                    w.gauge(&metric, &help, &[("worker", &label)], value as f64);
                } else {
                    w.counter(
                        &format!("{metric}_total"),
                        &help,
                        &[("worker", &label)],
                        value,
                    );
                }
            }
        }
        w.finish()
    }

    fn json(&self) -> String {
        let workers: Vec<serde_json::Value> = self
            .snapshot()
            .iter()
            .map(|c| {
                serde_json::Value::Object(
                    c.fields()
                        .iter()
                        .map(|(k, v)| ((*k).to_string(), serde_json::Value::from(*v)))
                        .collect(),
                )
            })
            .collect();
        let sessions: u64 = self.snapshot().iter().map(|c| c.sessions_open).sum();
        serde_json::json!({ "sessions": sessions, "workers": workers }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_cover_every_worker() {
        let shared = Arc::new(Shared::new(2).unwrap());
        shared.counters[1].publish(&WorkerCounters {
            rx_packets: 9,
            sessions_open: 3,
            ..WorkerCounters::default()
        });
        let m = PlaneMetrics::new(shared);
        let text = m.prometheus();
        assert!(
            text.contains("updraft_rx_packets_total{worker=\"1\"} 9"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE updraft_sessions_open gauge"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&m.json()).unwrap();
        assert_eq!(json["sessions"], 3);
        assert_eq!(json["workers"][1]["rx_packets"], 9);
    }
}
