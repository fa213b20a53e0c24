//! Updraft load generator: real RTMFP initiators built on the `rtmfp` core (many sessions on
//! one UDP socket, multiplexed by session ID), scenarios, and latency histograms.
//!
//! Scenarios so far: `connect` (a handshake storm) and `fanout` (one publisher, many
//! subscribers, latency measured from send times carried in the payload to each datagram's
//! kernel receive timestamp). Each returns a [`Report`].

pub mod driver;
pub mod report;
pub mod scenario;
pub mod selftest;

pub use report::Report;
