//! Updraft load generator: real RTMFP initiators built on `rtmfp`, scenarios, latency histograms.
//!
//! Not implemented yet: this crate is filled by the loadgen issue. It exports nothing until then.
