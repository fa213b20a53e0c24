//! Fuzzing entry point for an open session, shared by the cargo-fuzz target `session` and the
//! corpus replay test. Not part of the API.

use core::time::Duration;
use std::net::SocketAddr;

use super::{Role, Session, SessionConfig, SessionParams};
use crate::crypto::{PacketDecoder, PacketEncoder, PacketMode};
use crate::time::Instant;

/// The fuzz session's key, both directions.
const KEY: [u8; 16] = *b"updraft-fuzz-key";
/// The fuzz session's receive session ID.
const NEAR_SESSION_ID: u32 = 7;
/// Largest datagram the entry point builds.
const MAX_DATAGRAM: usize = 2048;

/// Feeds arbitrary bytes to an open responder session. The first byte picks the path: even, the
/// rest is a datagram as received (almost always refused by the crypto layer); odd, the rest is
/// a plain packet (flags onward) that is encrypted with the session's key first, so that header,
/// chunk, flow, ack and reassembly handling are all reached. Between datagrams and after them the
/// session's outputs and timers run. Nothing may panic. Answers how many events the packets
/// produced (before the final timers), so that tests can see they were really processed.
pub fn fuzz_session(data: &[u8]) -> usize {
    let Some((&selector, rest)) = data.split_first() else {
        return 0;
    };
    let mut events = 0;
    let far: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 40000));
    let mut session = Session::new(
        Instant::ZERO,
        SessionParams {
            role: Role::Responder,
            near_session_id: NEAR_SESSION_ID,
            far_session_id: 3,
            far_address: far,
            encoder: PacketEncoder::new(&KEY, PacketMode::STARTUP),
            decoder: PacketDecoder::new(&KEY, PacketMode::STARTUP),
            mobility_secret: [1; 32],
        },
        SessionConfig::default(),
    );
    let mut out = [0u8; MAX_DATAGRAM];
    let mut now = Instant::from_millis(10);
    // Several packets per input: split on a 0xFE 0xFE separator.
    for (i, piece) in rest.split(|&b| b == 0xFE).enumerate() {
        let mut datagram = [0u8; MAX_DATAGRAM];
        let len = if selector % 2 == 0 {
            let n = piece.len().min(MAX_DATAGRAM);
            datagram[..n].copy_from_slice(&piece[..n]);
            n
        } else {
            let mut enc = PacketEncoder::new(&KEY, PacketMode::STARTUP);
            let piece = &piece[..piece.len().min(1400)];
            match enc.encode(NEAR_SESSION_ID, piece, &mut datagram) {
                Ok(n) => n,
                Err(_) => continue,
            }
        };
        // Every other packet comes from a new address, to exercise mobility.
        let from = if i % 2 == 0 {
            far
        } else {
            SocketAddr::from(([127, 0, 0, 2], 40001))
        };
        let _ = session.handle_datagram(now, from, &mut datagram[..len]);
        while session.poll_transmit(now, &mut out).is_some() {}
        while session.poll_event().is_some() {
            events += 1;
        }
        now = now + Duration::from_millis(50);
        if session.poll_timeout().is_some_and(|t| t <= now) {
            session.handle_timeout(now);
        }
    }
    // Let every timer run out: the session must close cleanly.
    for _ in 0..64 {
        let Some(t) = session.poll_timeout() else {
            break;
        };
        now = now.max(t);
        session.handle_timeout(now);
        while session.poll_transmit(now, &mut out).is_some() {}
        while session.poll_event().is_some() {}
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_fuzz_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/session");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("corpus directory") {
            let path = entry.unwrap().path();
            let events = fuzz_session(&std::fs::read(&path).unwrap());
            // The connect seed opens a flow and delivers its message.
            if path.ends_with("connect") {
                assert!(events >= 2, "connect seed produced {events} events");
            }
            n += 1;
        }
        assert!(n > 0, "empty corpus");
    }
}
