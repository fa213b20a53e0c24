//! Operations: Cumulus-compatible logging, `--daemon` and `--pidfile`, and the `--metrics`
//! HTTP endpoint.

pub mod daemon;
pub mod logging;
pub mod metrics_http;
