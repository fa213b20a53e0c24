//! Criterion micro-benchmarks for Updraft. The benchmarks themselves live in `benches/benches/`;
//! this library holds what they share.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use criterion::Criterion;

pub mod fanout;

/// The measurement settings every criterion benchmark here starts from: a short warm-up and
/// measurement, so that a whole run takes a few minutes on a shared 2-core machine. The command
/// line may override them.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

/// A distinct client address for session `n` (10.0.0.0/8, 60,000 ports per host), for
/// benchmarks that install many sessions.
pub fn client_address(n: usize) -> SocketAddr {
    const FIRST_PORT: usize = 1024;
    const PORTS: usize = 60_000;
    let host = u32::try_from(n / PORTS).unwrap_or(u32::MAX);
    let port = u16::try_from(FIRST_PORT + n % PORTS).unwrap_or(u16::MAX);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from((10 << 24) | host)), port)
}
