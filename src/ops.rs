//! Operations: Cumulus-compatible logging, `--daemon` and `--pidfile`, and the `--metrics`
//! HTTP endpoint.
#![allow(dead_code)] // wired into the server in the integration commit

pub mod daemon;
pub mod logging;
pub mod metrics_http;
