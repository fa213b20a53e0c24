//! Address mobility validation (RFC 7016 §3.5.4.2): before sending to a new source address, ping
//! it with a marked, timestamped, keyed challenge, and switch only when the matching reply comes
//! back from that address.

use std::net::SocketAddr;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::params::MOBILITY_MAX_AGE;
use crate::time::Instant;

/// First byte of a mobility ping body (rtmfp-cpp uses 'M').
pub const MOBILITY_MARK: u8 = b'M';
/// Length of the MAC in a challenge.
const MAC_LEN: usize = 16;
/// Challenge layout: mark(1) | issued micros(8) | MAC(16).
pub const CHALLENGE_LEN: usize = 1 + 8 + MAC_LEN;
/// SHA-256 block size, the HMAC key block (RFC 2104 §2).
const HMAC_BLOCK: usize = 64;

/// Makes and checks mobility challenges with a per-session secret.
#[derive(Clone)]
pub struct Mobility {
    secret: [u8; 32],
    /// Issue time of the newest challenge accepted, so older replies cannot roll back.
    last_accepted: Option<Instant>,
    /// When we last sent a challenge (at most one per second).
    last_sent: Option<Instant>,
}

impl core::fmt::Debug for Mobility {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mobility")
            .field("last_accepted", &self.last_accepted)
            .finish_non_exhaustive()
    }
}

impl Mobility {
    /// A validator keyed with `secret`.
    pub fn new(secret: [u8; 32]) -> Self {
        Mobility {
            secret,
            last_accepted: None,
            last_sent: None,
        }
    }

    fn mac(&self, issued: u64, addr: &SocketAddr) -> [u8; 32] {
        let mut key = [0u8; HMAC_BLOCK];
        key[..self.secret.len()].copy_from_slice(&self.secret);
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&key.into());
        mac.update(&issued.to_be_bytes());
        match addr {
            SocketAddr::V4(a) => mac.update(&a.ip().octets()),
            SocketAddr::V6(a) => mac.update(&a.ip().octets()),
        }
        mac.update(&addr.port().to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A challenge for `addr`, unless one was sent less than a second ago.
    pub fn challenge(&mut self, now: Instant, addr: &SocketAddr) -> Option<[u8; CHALLENGE_LEN]> {
        if let Some(last) = self.last_sent {
            if now.saturating_duration_since(last) < crate::params::MOBILITY_PING_INTERVAL {
                return None;
            }
        }
        self.last_sent = Some(now);
        let issued = now.as_micros();
        let mut body = [0u8; CHALLENGE_LEN];
        body[0] = MOBILITY_MARK;
        body[1..9].copy_from_slice(&issued.to_be_bytes());
        body[9..].copy_from_slice(&self.mac(issued, addr)[..MAC_LEN]);
        Some(body)
    }

    /// Checks a Ping Reply body that arrived from `from` at `now`. True when it answers one of our
    /// challenges for that address, is at most 120 s old and newer than the last accepted one.
    pub fn verify(&mut self, now: Instant, from: &SocketAddr, body: &[u8]) -> bool {
        let Ok(body) = <&[u8; CHALLENGE_LEN]>::try_from(body) else {
            return false;
        };
        if body[0] != MOBILITY_MARK {
            return false;
        }
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&body[1..9]);
        let issued_at = Instant::from_micros(u64::from_be_bytes(issued));
        let expected = self.mac(issued_at.as_micros(), from);
        let diff = expected[..MAC_LEN]
            .iter()
            .zip(&body[9..])
            .fold(0u8, |a, (x, y)| a | (x ^ y));
        if diff != 0
            || issued_at > now
            || now.saturating_duration_since(issued_at) > MOBILITY_MAX_AGE
        {
            return false;
        }
        if self.last_accepted.is_some_and(|last| issued_at <= last) {
            return false;
        }
        self.last_accepted = Some(issued_at);
        true
    }

    /// True if a Ping Reply body looks like a mobility answer (so it is not a keepalive answer).
    pub fn is_challenge(body: &[u8]) -> bool {
        body.len() == CHALLENGE_LEN && body.first() == Some(&MOBILITY_MARK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;

    #[test]
    fn challenge_round_trip_only_from_its_address() {
        let a: SocketAddr = "10.0.0.1:5".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:5".parse().unwrap();
        let mut m = Mobility::new([3; 32]);
        let t = Instant::from_millis(10_000);
        let c = m.challenge(t, &a).unwrap();
        assert!(
            m.challenge(t + Duration::from_millis(500), &a).is_none(),
            "rate limited"
        );
        assert!(!m.verify(t, &b, &c), "wrong address");
        assert!(m.verify(t + Duration::from_millis(30), &a, &c));
        assert!(
            !m.verify(t + Duration::from_millis(31), &a, &c),
            "replay not newer"
        );
    }

    #[test]
    fn stale_or_forged_replies_fail() {
        let a: SocketAddr = "[::1]:9".parse().unwrap();
        let mut m = Mobility::new([3; 32]);
        let t = Instant::from_millis(1000);
        let c = m.challenge(t, &a).unwrap();
        assert!(!m.verify(t + MOBILITY_MAX_AGE + Duration::from_secs(1), &a, &c));
        let mut forged = c;
        forged[12] ^= 1;
        assert!(!m.verify(t, &a, &forged));
        assert!(!m.verify(t, &a, &c[..10]));
    }
}
