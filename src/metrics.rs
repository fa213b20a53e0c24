//! What `--metrics` serves: each worker's counters as Prometheus text (`/metrics`) and JSON
//! (`/stats`).

use std::sync::Arc;

use updraft_bpf::loader::VerdictCounts;
use updraft_control::service::{CONTROL_STATS, CONTROL_STATS_LEVELS};
use updraft_dataplane::counters::WorkerCounters;
use updraft_dataplane::media::Qos;
use updraft_dataplane::worker::Shared;

use crate::ops::metrics_http::{MetricsSource, PromWriter};

/// Counters that are levels, not totals.
const GAUGES: [&str; 3] = ["sessions_open", "publications", "subscribers"];

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
        let io = self.shared.io_report();
        w.gauge(
            "updraft_xdp_mode",
            "1 when the workers run on AF_XDP, 0 on sockets.",
            &[],
            if io.xdp { 1.0 } else { 0.0 },
        );
        if let Some(v) = io.verdicts {
            for (verdict, value) in verdict_fields(&v) {
                w.counter(
                    "updraft_xdp_verdicts_total",
                    "Frames the XDP program judged, by verdict.",
                    &[("verdict", verdict)],
                    value,
                );
            }
        }
        for (i, value) in self.shared.control_stats().into_iter().enumerate() {
            let Some(name) = CONTROL_STATS.get(i) else {
                break;
            };
            let metric = format!("updraft_control_{name}");
            let help = format!("Control plane: {}.", name.replace('_', " "));
            if CONTROL_STATS_LEVELS.contains(&i) {
                #[allow(clippy::cast_precision_loss)]
                w.gauge(&metric, &help, &[], value as f64);
            } else {
                w.counter(&format!("{metric}_total"), &help, &[], value);
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
        let snapshot = self.snapshot();
        let sessions: u64 = snapshot.iter().map(|c| c.sessions_open).sum();
        let publications: u64 = snapshot.iter().map(|c| c.publications).sum();
        let subscribers: u64 = snapshot.iter().map(|c| c.subscribers).sum();
        let control: serde_json::Map<String, serde_json::Value> = CONTROL_STATS
            .iter()
            .zip(self.shared.control_stats())
            .map(|(k, v)| ((*k).to_string(), serde_json::Value::from(v)))
            .collect();
        let streams: Vec<serde_json::Value> = self
            .shared
            .stream_reports()
            .into_iter()
            .map(|r| {
                let subs: Vec<serde_json::Value> = r
                    .subscribers
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "session": s.session_id,
                            "delivered": s.delivered,
                            "droppedFrames": s.dropped,
                            "backlog": s.backlog,
                            "rtt_ms": s.rtt_ms,
                            "qos": qos_json(&s.qos),
                            "fragmentsSent": s.fragments.sent,
                            "fragmentsLost": s.fragments.lost,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": r.key,
                    "worker": r.worker,
                    "published": r.published,
                    "messages": r.messages,
                    "bytes": r.bytes,
                    "byteRate": r.qos.byte_rate,
                    "qos": qos_json(&r.qos),
                    "fragmentsReceived": r.fragments.received,
                    "fragmentsLost": r.fragments.lost,
                    "subscribers": subs,
                })
            })
            .collect();
        let io = self.shared.io_report();
        let verdicts = io.verdicts.map(|v| {
            serde_json::Value::Object(
                verdict_fields(&v)
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), serde_json::Value::from(*v)))
                    .collect(),
            )
        });
        serde_json::json!({
            "mode": if io.xdp { "xdp" } else { "socket" },
            "io": io.description,
            "xdpVerdicts": verdicts,
            "sessions": sessions,
            "publications": publications,
            "subscribers": subscribers,
            "workers": workers,
            "control": control,
            "streams": streams,
        })
        .to_string()
    }
}

/// The XDP program's verdicts by name.
fn verdict_fields(v: &VerdictCounts) -> [(&'static str, u64); 5] {
    [
        ("pass", v.pass),
        ("drop_denied", v.drop_denied),
        ("drop_malformed", v.drop_malformed),
        ("redirect", v.redirect),
        ("redirect_empty", v.redirect_empty),
    ]
}

/// A QoS record with Cumulus's Lua field names.
fn qos_json(q: &Qos) -> serde_json::Value {
    serde_json::json!({
        "lostRate": q.lost_rate,
        "byteRate": q.byte_rate,
        "congestionRate": q.congestion_rate,
        "latency": q.latency_ms,
        "droppedFrames": q.dropped_frames,
    })
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
        let at = |name: &str| CONTROL_STATS.iter().position(|n| *n == name).unwrap();
        shared.control_stats[at("handshake_completed")]
            .store(4, std::sync::atomic::Ordering::Relaxed);
        shared.control_stats[at("sessions")].store(2, std::sync::atomic::Ordering::Relaxed);
        shared
            .control_stats_len
            .store(CONTROL_STATS.len(), std::sync::atomic::Ordering::Relaxed);
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
        assert_eq!(json["control"]["handshake_completed"], 4);
        assert!(
            text.contains("updraft_control_handshake_completed_total 4"),
            "{text}"
        );
        assert!(text.contains("updraft_control_sessions 2"), "{text}");
        assert!(text.contains("updraft_xdp_mode 0"), "{text}");
        assert_eq!(json["mode"], "socket");
        m.shared.io.lock().unwrap().verdicts = Some(VerdictCounts {
            redirect: 7,
            ..VerdictCounts::default()
        });
        let text = m.prometheus();
        assert!(
            text.contains("updraft_xdp_verdicts_total{verdict=\"redirect\"} 7"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&m.json()).unwrap();
        assert_eq!(json["xdpVerdicts"]["redirect"], 7);
    }
}
