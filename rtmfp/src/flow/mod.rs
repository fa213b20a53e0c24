//! Flows (RFC 7016 §3.6) and the session-wide reliability machinery they share (RFC 7016 §3.5.2):
//! RTT estimation, congestion control, the send and receive sides of a flow, and User Data
//! option semantics. Sans-IO; the session layer converts between these types and wire chunks.

pub mod congestion;
pub mod options;
pub mod payload;
pub mod recv;
pub mod rtt;
pub mod send;
