//! The result of a scenario: counts, rates and latency percentiles, as a table and as JSON.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

/// Highest latency recorded, in microseconds (longer ones are clamped).
const MAX_LATENCY_US: u64 = 60_000_000;
/// How often a running scenario takes a sample for the progress line and the plot.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One interval of a run, for `--plot`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the scenario started, at the end of the interval.
    pub t: f64,
    /// Datagrams sent per second over the interval.
    pub out_per_s: f64,
    /// Datagrams received per second over the interval.
    pub in_per_s: f64,
    /// Latency percentiles of the interval, in milliseconds (0 without samples).
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
}

/// One line of a plot: its name, its colour and what it draws.
type Line = (&'static str, &'static str, fn(&Sample) -> f64);

/// Counters a scenario passes to [`Report::sample`]: totals since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Datagrams sent.
    pub packets_out: u64,
    /// Datagrams received.
    pub packets_in: u64,
    /// Messages (or sessions, or calls) done.
    pub done: u64,
}

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
    /// Of the datagrams received, those that came through an AF_XDP ring (`--xdp`).
    pub ring_in: u64,
    /// Of the datagrams sent, those that left through an AF_XDP ring.
    pub ring_out: u64,
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
    /// One sample per [`SAMPLE_EVERY`] while the scenario ran.
    pub series: Vec<Sample>,
    /// Latencies of the current interval.
    interval: Histogram<u64>,
    /// When and at what totals the current interval began.
    interval_start: (Duration, Totals),
    /// The live progress line, on a terminal only.
    progress: Option<indicatif::ProgressBar>,
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
            ring_in: 0,
            ring_out: 0,
            packets_in: 0,
            bytes_out: 0,
            bytes_in: 0,
            expected: 0,
            delivered: 0,
            lost: 0,
            misdelivered: 0,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .unwrap_or_else(|_| unreachable!("valid bounds")),
            series: Vec::new(),
            interval: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .unwrap_or_else(|_| unreachable!("valid bounds")),
            interval_start: (Duration::ZERO, Totals::default()),
            progress: None,
        }
    }

    /// Shows a live progress line on standard error when it is a terminal (nothing
    /// otherwise, so that scripts and CI logs stay clean).
    pub fn show_progress(&mut self) {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            self.progress = Some(bar);
        }
    }

    /// Whether [`Self::sample`] at `elapsed` would take a sample.
    pub fn sample_due(&self, elapsed: Duration) -> bool {
        elapsed.saturating_sub(self.interval_start.0) >= SAMPLE_EVERY
    }

    /// Ends an interval at `elapsed` with the scenario's `totals`, if [`SAMPLE_EVERY`] has
    /// passed since the last: appends a [`Sample`] and refreshes the progress line.
    pub fn sample(&mut self, elapsed: Duration, totals: Totals) {
        let (since, last) = self.interval_start;
        let span = elapsed.saturating_sub(since);
        if span < SAMPLE_EVERY {
            return;
        }
        #[allow(clippy::cast_precision_loss)]
        let per_s = |now: u64, then: u64| now.saturating_sub(then) as f64 / span.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let ms = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let sample = Sample {
            t: elapsed.as_secs_f64(),
            out_per_s: per_s(totals.packets_out, last.packets_out),
            in_per_s: per_s(totals.packets_in, last.packets_in),
            p50_ms: ms(&self.interval, 0.5),
            p99_ms: ms(&self.interval, 0.99),
        };
        if let Some(bar) = &self.progress {
            bar.set_message(format!(
                "{}: {:.0} out/s, {:.0} in/s, {} done, p50 {:.1} ms, p99 {:.1} ms",
                self.scenario,
                sample.out_per_s,
                sample.in_per_s,
                totals.done,
                sample.p50_ms,
                sample.p99_ms
            ));
            bar.tick();
        }
        self.series.push(sample);
        self.interval.reset();
        self.interval_start = (elapsed, totals);
    }

    /// Removes the progress line (before the final table is printed).
    pub fn finish_progress(&mut self) {
        if let Some(bar) = self.progress.take() {
            bar.finish_and_clear();
        }
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let _ = self.latency.record(us.clamp(1, MAX_LATENCY_US));
        let _ = self.interval.record(us.clamp(1, MAX_LATENCY_US));
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
            "xdp_packets_in": self.ring_in,
            "xdp_packets_out": self.ring_out,
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
            "series": self.series.iter().map(|s| json!({
                "t": s.t,
                "out_per_s": s.out_per_s,
                "in_per_s": s.in_per_s,
                "p50_ms": s.p50_ms,
                "p99_ms": s.p99_ms,
            })).collect::<Vec<_>>(),
        })
    }

    /// Throughput and latency over time as an SVG drawing (`--plot`): datagrams per second
    /// out and in, and the p50 and p99 latency of each interval.
    pub fn svg(&self) -> String {
        const WIDTH: f64 = 800.0;
        const PANEL: f64 = 240.0;
        const MARGIN: f64 = 60.0;
        let t_max = self.series.last().map_or(1.0, |s| s.t).max(1.0);
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
             font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" \
             height=\"100%\" fill=\"white\"/>\n<text x=\"{MARGIN}\" y=\"20\">updraft-loadgen \
             {name}: {secs:.1} s</text>\n",
            w = WIDTH + 2.0 * MARGIN,
            h = 2.0 * PANEL + 3.0 * MARGIN,
            name = self.scenario,
            secs = self.elapsed.as_secs_f64(),
        );
        let panels: [(&str, [Line; 2]); 2] = [
            (
                "datagrams/s",
                [
                    ("out", "#1f77b4", |s| s.out_per_s),
                    ("in", "#2ca02c", |s| s.in_per_s),
                ],
            ),
            (
                "latency ms",
                [
                    ("p50", "#ff7f0e", |s| s.p50_ms),
                    ("p99", "#d62728", |s| s.p99_ms),
                ],
            ),
        ];
        for (i, (label, lines)) in panels.iter().enumerate() {
            #[allow(clippy::cast_precision_loss)]
            let top = MARGIN + i as f64 * (PANEL + MARGIN);
            let y_max = self
                .series
                .iter()
                .flat_map(|s| lines.iter().map(move |l| (l.2)(s)))
                .fold(0.0f64, f64::max)
                .max(f64::EPSILON);
            out.push_str(&format!(
                "<rect x=\"{MARGIN}\" y=\"{top}\" width=\"{WIDTH}\" height=\"{PANEL}\" \
                 fill=\"none\" stroke=\"#888\"/>\n<text x=\"5\" y=\"{ty}\">{y_max:.1}</text>\n\
                 <text x=\"5\" y=\"{by}\">0</text>\n<text x=\"{MARGIN}\" y=\"{ly}\">{label}</text>\n\
                 <text x=\"{rx}\" y=\"{by2}\" text-anchor=\"end\">{t_max:.0} s</text>\n",
                ty = top + 12.0,
                by = top + PANEL,
                ly = top - 6.0,
                rx = MARGIN + WIDTH,
                by2 = top + PANEL + 16.0,
            ));
            for (k, (name, color, value)) in lines.iter().enumerate() {
                let points: Vec<String> = self
                    .series
                    .iter()
                    .map(|s| {
                        let x = MARGIN + s.t / t_max * WIDTH;
                        let y = top + PANEL - value(s) / y_max * PANEL;
                        format!("{x:.1},{y:.1}")
                    })
                    .collect();
                #[allow(clippy::cast_precision_loss)]
                let lx = MARGIN + 120.0 + k as f64 * 80.0;
                out.push_str(&format!(
                    "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" \
                     points=\"{}\"/>\n<text x=\"{lx}\" y=\"{y}\" fill=\"{color}\">{name}</text>\n",
                    points.join(" "),
                    y = top - 6.0,
                ));
            }
        }
        out.push_str("</svg>\n");
        out
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let j = self.json();
        let l = &j["latency_ms"];
        let mut table = format!(
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
        );
        if self.ring_in + self.ring_out > 0 {
            table.push_str(&format!(
                "AF_XDP rings    {} in / {} out\n",
                self.ring_in, self.ring_out
            ));
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_taken_once_per_interval_with_its_own_rates_and_percentiles() {
        let mut r = Report::new("fanout");
        let totals = |out, inn, done| Totals {
            packets_out: out,
            packets_in: inn,
            done,
        };
        r.record(Duration::from_millis(4));
        r.sample(Duration::from_millis(500), totals(10, 10, 1));
        assert!(r.series.is_empty(), "not a whole interval yet");
        r.sample(Duration::from_millis(1000), totals(1000, 2000, 5));
        r.record(Duration::from_millis(30));
        r.sample(Duration::from_millis(3000), totals(3000, 2000, 9));
        assert_eq!(r.series.len(), 2);
        let (a, b) = (r.series[0], r.series[1]);
        assert_eq!((a.t, a.out_per_s, a.in_per_s), (1.0, 1000.0, 2000.0));
        assert!((3.9..4.1).contains(&a.p50_ms), "{a:?}");
        // The second interval: 2 s, 2000 datagrams out, none in, only the 30 ms sample.
        assert_eq!((b.t, b.out_per_s, b.in_per_s), (3.0, 1000.0, 0.0));
        assert!((29.0..31.0).contains(&b.p99_ms), "{b:?}");
        // The whole run keeps both latencies.
        assert_eq!(r.latency.len(), 2);
        let svg = r.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("updraft-loadgen fanout"));
    }
}
