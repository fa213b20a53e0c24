//! Updraft load generator: real RTMFP initiators built on the `rtmfp` core (many sessions on
//! one UDP socket, multiplexed by session ID), scenarios, and latency histograms.
//!
//! Scenarios: `connect` (a handshake storm), `rpc` (calls in flight), `fanout` (one publisher,
//! many subscribers, latency measured from send times carried in the payload to each
//! datagram's kernel receive timestamp), `publish` (many publishers and their viewers), `churn`
//! (sessions coming and going), `rendezvous` (P2P introductions) and `garbage` (malformed,
//! replayed and truncated datagrams while a session keeps calling). Each returns a [`Report`].

pub mod driver;
pub mod report;
pub mod scenario;
pub mod selftest;

pub use report::Report;
