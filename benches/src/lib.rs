//! Criterion micro-benchmarks for Updraft. The benchmarks themselves live in `benches/benches/`;
//! this library holds what they share.

use std::time::Duration;

use criterion::Criterion;

/// The measurement settings every criterion benchmark here starts from: a short warm-up and
/// measurement, so that a whole run takes a few minutes on a shared 2-core machine. The command
/// line may override them.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}
