//! Stateless responder cookies (RFC 7016 §3.5.1.1.2, §3.5.1.2).
//!
//! A responder keeps no state for an IHello: everything needed to validate the IIKeying that follows
//! is in the cookie. Layout (64 bytes, because librtmfp and Flash-era clients reject any other
//! length):
//!
//! ```text
//! version(1) | issued(4, seconds since the jar's epoch) | mac1(27) | mac2(32)
//! mac1 = HMAC-SHA256(secret, "1" | version | issued)[..27]        authenticates the cookie
//! mac2 = HMAC-SHA256(secret, "2" | version | issued | address)      binds it to the initiator address
//! ```
//!
//! A cookie whose `mac1` verifies but whose `mac2` does not was made by us for another address: the
//! initiator's address changed, and the responder answers with a Cookie Change (RFC 7016 §3.5.1.2).

use core::time::Duration;
use std::net::SocketAddr;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::params::COOKIE_LIFETIME;
use crate::time::Instant;

/// Cookie length. Cumulus, MonaServer and librtmfp accept only 64-byte cookies.
pub const COOKIE_LEN: usize = 64;
/// Version byte of the cookie layout above.
const COOKIE_VERSION: u8 = 1;
const MAC1_LEN: usize = 27;
const ISSUED_OFFSET: usize = 1;
const MAC1_OFFSET: usize = 5;
const MAC2_OFFSET: usize = MAC1_OFFSET + MAC1_LEN;
/// Domain-separation labels for the two MACs.
const MAC1_LABEL: u8 = b'1';
const MAC2_LABEL: u8 = b'2';
/// Address family tags inside the MAC input.
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

type HmacSha256 = Hmac<Sha256>;
/// SHA-256 block size, the HMAC key block (RFC 2104 §2).
const HMAC_BLOCK: usize = 64;

/// The outcome of checking an echoed cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieCheck {
    /// Authentic, fresh, and made for this address.
    Valid,
    /// Authentic and fresh, but made for another address: answer with a Cookie Change
    /// (RFC 7016 §3.5.1.2).
    WrongAddress,
    /// Authentic but older than the cookie lifetime.
    Expired,
    /// Not one of ours (wrong length, version or MAC).
    Invalid,
}

/// Makes and checks stateless cookies with a secret key.
#[derive(Clone)]
pub struct CookieJar {
    secret: [u8; 32],
    epoch: Instant,
    lifetime: Duration,
}

impl core::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CookieJar")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl CookieJar {
    /// A jar with the given secret, whose cookie clock starts at `epoch`.
    pub fn new(secret: [u8; 32], epoch: Instant) -> Self {
        CookieJar {
            secret,
            epoch,
            lifetime: COOKIE_LIFETIME,
        }
    }

    fn issued_secs(&self, now: Instant) -> u32 {
        let secs = now.saturating_duration_since(self.epoch).as_secs();
        u32::try_from(secs).unwrap_or(u32::MAX)
    }

    fn mac(&self, label: u8, head: &[u8], addr: Option<&SocketAddr>) -> [u8; 32] {
        // A key shorter than the SHA-256 block is zero-padded to it (RFC 2104 §2), so the
        // block-sized constructor, which cannot fail, computes the same MAC.
        let mut key = [0u8; HMAC_BLOCK];
        key[..self.secret.len()].copy_from_slice(&self.secret);
        let mut mac = <HmacSha256 as KeyInit>::new(&key.into());
        mac.update(&[label]);
        mac.update(head);
        if let Some(addr) = addr {
            match addr {
                SocketAddr::V4(a) => {
                    mac.update(&[FAMILY_V4]);
                    mac.update(&a.ip().octets());
                }
                SocketAddr::V6(a) => {
                    mac.update(&[FAMILY_V6]);
                    mac.update(&a.ip().octets());
                }
            }
            mac.update(&addr.port().to_be_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    /// Makes a cookie for an initiator at `addr`.
    pub fn make(&self, now: Instant, addr: &SocketAddr) -> [u8; COOKIE_LEN] {
        let mut c = [0u8; COOKIE_LEN];
        c[0] = COOKIE_VERSION;
        c[ISSUED_OFFSET..MAC1_OFFSET].copy_from_slice(&self.issued_secs(now).to_be_bytes());
        let mac1 = self.mac(MAC1_LABEL, &c[..MAC1_OFFSET], None);
        c[MAC1_OFFSET..MAC2_OFFSET].copy_from_slice(&mac1[..MAC1_LEN]);
        let mac2 = self.mac(MAC2_LABEL, &c[..MAC1_OFFSET], Some(addr));
        c[MAC2_OFFSET..].copy_from_slice(&mac2);
        c
    }

    /// Checks a cookie echoed by an initiator at `addr`.
    pub fn check(&self, now: Instant, addr: &SocketAddr, cookie: &[u8]) -> CookieCheck {
        let Ok(c) = <&[u8; COOKIE_LEN]>::try_from(cookie) else {
            return CookieCheck::Invalid;
        };
        if c[0] != COOKIE_VERSION {
            return CookieCheck::Invalid;
        }
        let head = &c[..MAC1_OFFSET];
        let mac1 = self.mac(MAC1_LABEL, head, None);
        if !ct_eq(&mac1[..MAC1_LEN], &c[MAC1_OFFSET..MAC2_OFFSET]) {
            return CookieCheck::Invalid;
        }
        let mut issued = [0u8; 4];
        issued.copy_from_slice(&c[ISSUED_OFFSET..MAC1_OFFSET]);
        let issued = u64::from(u32::from_be_bytes(issued));
        let now_secs = u64::from(self.issued_secs(now));
        if issued > now_secs || now_secs - issued > self.lifetime.as_secs() {
            return CookieCheck::Expired;
        }
        let mac2 = self.mac(MAC2_LABEL, head, Some(addr));
        if ct_eq(&mac2, &c[MAC2_OFFSET..]) {
            CookieCheck::Valid
        } else {
            CookieCheck::WrongAddress
        }
    }
}

/// Constant-time equality of two byte strings of equal length.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn valid_for_its_address_only() {
        let jar = CookieJar::new([7; 32], Instant::ZERO);
        let now = Instant::from_millis(10_000);
        let c = jar.make(now, &addr("127.0.0.1:5000"));
        assert_eq!(c.len(), COOKIE_LEN);
        assert_eq!(
            jar.check(now, &addr("127.0.0.1:5000"), &c),
            CookieCheck::Valid
        );
        assert_eq!(
            jar.check(now, &addr("127.0.0.1:5001"), &c),
            CookieCheck::WrongAddress
        );
        assert_eq!(
            jar.check(now, &addr("[::1]:5000"), &c),
            CookieCheck::WrongAddress
        );
    }

    #[test]
    fn expires_after_lifetime_not_before() {
        let jar = CookieJar::new([7; 32], Instant::ZERO);
        let a = addr("10.0.0.1:1");
        let c = jar.make(Instant::ZERO, &a);
        let just_in = Instant::ZERO + COOKIE_LIFETIME;
        assert_eq!(jar.check(just_in, &a, &c), CookieCheck::Valid);
        let late = just_in + Duration::from_secs(1);
        assert_eq!(jar.check(late, &a, &c), CookieCheck::Expired);
    }

    #[test]
    fn forged_or_truncated_cookies_are_invalid() {
        let jar = CookieJar::new([7; 32], Instant::ZERO);
        let other = CookieJar::new([8; 32], Instant::ZERO);
        let a = addr("10.0.0.1:1");
        let c = other.make(Instant::ZERO, &a);
        assert_eq!(jar.check(Instant::ZERO, &a, &c), CookieCheck::Invalid);
        let mine = jar.make(Instant::ZERO, &a);
        assert_eq!(
            jar.check(Instant::ZERO, &a, &mine[..63]),
            CookieCheck::Invalid
        );
        for i in 0..COOKIE_LEN {
            let mut bad = mine;
            bad[i] ^= 0x01;
            assert_ne!(
                jar.check(Instant::ZERO, &a, &bad),
                CookieCheck::Valid,
                "byte {i}"
            );
        }
    }
}
