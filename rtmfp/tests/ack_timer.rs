//! A session's timer follows its receive flows' delayed acks: after one packet of data the
//! timer is the delayed-ack deadline (RFC 7016 §3.6.3.4.5), and once that ack has gone out,
//! even from a poll made past the deadline without the timer being run, the deadline is gone
//! from the timer. (The session keeps the receive flows' earliest deadline between changes;
//! debug builds also check it against the flows on every poll.)

mod common;

use std::net::SocketAddr;

use rtmfp::params::DELAYED_ACK;
use rtmfp::session::flows::SendOptions;
use rtmfp::session::{Role, Session, SessionConfig};
use rtmfp::time::Instant;

/// Both directions' key.
const KEY: [u8; 16] = *b"delayed-ack-test";
/// The sender's receive session ID.
const SENDER_ID: u32 = 5;
/// The receiver's receive session ID.
const RECEIVER_ID: u32 = 6;
/// Room for any datagram.
const DATAGRAM: usize = 2048;
/// Per-flow metadata of the flow under test.
const METADATA: &[u8] = b"TC\x04\x00";

fn session(role: Role, near: u32, far: u32) -> Session {
    common::keyed_session(&KEY, role, near, far, SessionConfig::default())
}

#[test]
fn a_delayed_ack_sent_late_leaves_the_timer() {
    let mut sender = session(Role::Initiator, SENDER_ID, RECEIVER_ID);
    let mut receiver = session(Role::Responder, RECEIVER_ID, SENDER_ID);
    let now = Instant::ZERO;
    let flow = sender.open_flow(METADATA, None).expect("flow");
    // A first packet of a new flow is acknowledged at once (RFC 7016 §3.6.3.4.1): get that
    // out of the way, then send the packet whose ack is delayed.
    let mut buf = [0u8; DATAGRAM];
    for message in [&b"first"[..], &b"second"[..]] {
        sender
            .send(now, flow, message, SendOptions::default())
            .expect("send");
        let t = sender.poll_transmit(now, &mut buf).expect("a datagram");
        let from = SocketAddr::from(([127, 0, 0, 1], 40001));
        receiver
            .handle_datagram(now, from, &mut buf[..t.len])
            .expect("decoded");
        while receiver.poll_event().is_some() {}
        while receiver.poll_transmit(now, &mut buf).is_some() {}
    }
    let deadline = now + DELAYED_ACK;
    assert_eq!(receiver.poll_timeout(), Some(deadline), "the delayed ack");
    // Polled late, without running the timer: the ack goes out with this datagram.
    let late = deadline + DELAYED_ACK;
    assert!(receiver.poll_transmit(late, &mut buf).is_some(), "the ack");
    assert!(
        receiver.poll_timeout().is_none_or(|t| t > late),
        "the sent ack's deadline is gone: {:?}",
        receiver.poll_timeout()
    );
}
