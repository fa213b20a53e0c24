//! Sans-IO RTMFP core: RFC 7016 (Secure Real-Time Media Flow Protocol) with the Flash profile of
//! RFC 7425.
//!
//! What it does: wire encoding and decoding of packets and chunks, Flash-profile packet crypto and key
//! derivation, the startup handshake for both roles, the session state machine, flows (reliability,
//! fragmentation, acks, flow and congestion control), Flash "TC" messages and AMF0/AMF3.
//!
//! What it does not do: no sockets, no threads, and no clock reads. Time comes in as an argument
//! ([`time::Instant`]), datagrams go in and out as byte slices, and randomness is injected.

pub mod amf;
pub mod crypto;
pub mod endpoint;
pub mod flash;
pub mod flow;
pub mod ids;
pub mod params;
pub mod session;
pub mod startup;
pub mod time;
pub mod wire;
