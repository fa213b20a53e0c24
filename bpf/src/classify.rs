//! The XDP program's decision, in Rust: the reference the C program (`src/xdp_rtmfp.bpf.c`) is
//! checked against, and what the socket path can apply to the same configuration.
//!
//! For each frame: anything that is not IPv4 or IPv6 UDP to one of the configured ports passes
//! to the kernel untouched (ARP, SSH, ICMP...); a source in the deny list is dropped; a UDP
//! payload that cannot be an RTMFP datagram is dropped; the rest is redirected to the AF_XDP
//! socket of the receiving queue (and passes if that queue has none).
//!
//! The frame is read by [`frame::parse_udp`], which never panics and never reads past it.

use std::net::{IpAddr, Ipv6Addr};

use crate::frame;

/// Ethernet header: destination, source, EtherType (IEEE 802.3).
pub const ETH_HEADER_LEN: usize = 14;
/// An 802.1Q tag: TCI and the inner EtherType.
pub const VLAN_TAG_LEN: usize = 4;
/// EtherType of IPv4 (RFC 894).
pub const ETH_P_IPV4: u16 = 0x0800;
/// EtherType of IPv6 (RFC 2464).
pub const ETH_P_IPV6: u16 = 0x86DD;
/// EtherType of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad (QinQ) service tag.
pub const ETH_P_8021AD: u16 = 0x88A8;
/// Shortest IPv4 header (RFC 791: IHL 5).
pub const IPV4_MIN_HEADER_LEN: usize = 20;
/// The fixed IPv6 header (RFC 8200 §3).
pub const IPV6_HEADER_LEN: usize = 40;
/// The UDP header (RFC 768).
pub const UDP_HEADER_LEN: usize = 8;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// Shortest RTMFP datagram: the scrambled session ID and one cipher block (RFC 7016 §2.2.2).
pub const RTMFP_MIN_LEN: usize = 20;
/// Bytes before the cipher blocks: the scrambled session ID (RFC 7016 §2.2.2).
pub const RTMFP_SSID_LEN: usize = 4;
/// AES block size: an RTMFP datagram's ciphertext is whole blocks (RFC 7425 §4.6.4).
pub const RTMFP_BLOCK_LEN: usize = 16;
/// Most UDP ports the program serves.
pub const MAX_PORTS: usize = 8;

/// What the program does with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// To the kernel stack, untouched.
    Pass,
    /// Dropped: a denied source.
    DropDenied,
    /// Dropped: UDP to our port that cannot be RTMFP.
    DropMalformed,
    /// To the AF_XDP socket of the receiving queue.
    Redirect,
}

/// An IPv4 or IPv6 prefix of the deny list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    /// The network address.
    pub addr: IpAddr,
    /// Leading bits that must match (clamped to the address length).
    pub len: u8,
}

impl Prefix {
    /// Whether `ip` falls in the prefix (addresses of the other family never do).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let len = u32::from(self.len.min(32));
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let len = u32::from(self.len.min(128));
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Why a text is not a prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IPv4 or IPv6 address or prefix (such as 192.0.2.0/24 or 2001:db8::/32)")]
pub struct PrefixError(pub String);

impl std::str::FromStr for Prefix {
    type Err = PrefixError;

    /// `ADDRESS/LENGTH`, or an address alone (the whole address).
    fn from_str(s: &str) -> Result<Prefix, PrefixError> {
        let bad = || PrefixError(s.to_string());
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(bad)?,
        };
        Ok(Prefix { addr, len })
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// What the program is configured with: its ports and the deny list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// UDP destination ports served (at most [`MAX_PORTS`] are used).
    pub ports: Vec<u16>,
    /// Sources dropped before anything else is looked at.
    pub deny: Vec<Prefix>,
}

/// Whether a UDP payload of `len` bytes can be an RTMFP datagram: the session ID and whole
/// cipher blocks, at least one (RFC 7016 §2.2.2, RFC 7425 §4.6.4). HMAC trailers (rtmfp-cpp)
/// break the rule; the program is for Flash-profile sessions.
pub fn rtmfp_len_ok(len: usize) -> bool {
    len >= RTMFP_MIN_LEN && (len - RTMFP_SSID_LEN).is_multiple_of(RTMFP_BLOCK_LEN)
}

impl Filter {
    /// The verdict for one Ethernet frame.
    pub fn classify(&self, frame: &[u8]) -> Verdict {
        // Not a UDP datagram we can read (not IP, not UDP, a fragment, truncated): the
        // kernel's to judge.
        let Ok(udp) = frame::parse_udp(frame) else {
            return Verdict::Pass;
        };
        if !self
            .ports
            .iter()
            .take(MAX_PORTS)
            .any(|&p| p == udp.dest.port())
        {
            return Verdict::Pass;
        }
        if self.deny.iter().any(|p| p.contains(udp.source.ip())) {
            return Verdict::DropDenied;
        }
        if !rtmfp_len_ok(udp.payload.len()) {
            return Verdict::DropMalformed;
        }
        Verdict::Redirect
    }
}

/// An Ethernet frame carrying a UDP datagram of `payload` bytes (0xAB) from `source` (port
/// 40000) to `port`, over IPv4 (to 10.0.0.1) or IPv6 (to ::1) after `tags` 802.1Q tags:
/// for tests of the classifier and of the program, and for sending test traffic.
pub fn udp_frame(source: IpAddr, port: u16, payload: usize, tags: usize) -> Vec<u8> {
    const SOURCE_PORT: u16 = 40000;
    const TTL: u8 = 64;
    const VLAN_ID: [u8; 2] = [0, 7];
    let mut f = vec![0u8; 12];
    for _ in 0..tags {
        f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        f.extend_from_slice(&VLAN_ID);
    }
    let udp_len = u16::try_from(UDP_HEADER_LEN + payload).unwrap_or(u16::MAX);
    match source {
        IpAddr::V4(s) => {
            f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
            let total = (IPV4_MIN_HEADER_LEN as u16).saturating_add(udp_len);
            // Version 4, IHL 5; don't-fragment set, no fragment offset.
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&[0, 1, 0x40, 0, TTL, IPPROTO_UDP, 0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&[10, 0, 0, 1]);
        }
        IpAddr::V6(s) => {
            f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&udp_len.to_be_bytes());
            f.extend_from_slice(&[IPPROTO_UDP, TTL]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        }
    }
    f.extend_from_slice(&SOURCE_PORT.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend(std::iter::repeat_n(0xAB, payload));
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PORT: u16 = 1935;

    fn filter() -> Filter {
        Filter {
            ports: vec![PORT],
            deny: vec![
                Prefix {
                    addr: "192.0.2.0".parse().unwrap(),
                    len: 24,
                },
                Prefix {
                    addr: "2001:db8::".parse().unwrap(),
                    len: 32,
                },
            ],
        }
    }

    #[test]
    fn rtmfp_to_our_port_is_redirected_and_the_rest_judged() {
        let f = filter();
        let v4: IpAddr = "198.51.100.7".parse().unwrap();
        let v6: IpAddr = "2001:db9::1".parse().unwrap();
        for src in [v4, v6] {
            for tags in 0..=2 {
                // 4 + 16·k bytes: RTMFP-shaped.
                assert_eq!(
                    f.classify(&udp_frame(src, PORT, 4 + 16 * 5, tags)),
                    Verdict::Redirect
                );
                assert_eq!(
                    f.classify(&udp_frame(src, PORT, RTMFP_MIN_LEN, tags)),
                    Verdict::Redirect
                );
                // Too short, or not whole blocks.
                assert_eq!(
                    f.classify(&udp_frame(src, PORT, 19, tags)),
                    Verdict::DropMalformed
                );
                assert_eq!(
                    f.classify(&udp_frame(src, PORT, 4 + 16 * 5 + 1, tags)),
                    Verdict::DropMalformed
                );
                // Another port: not ours.
                assert_eq!(f.classify(&udp_frame(src, 53, 4 + 16, tags)), Verdict::Pass);
            }
        }
        // Denied sources, both families, whatever the payload.
        for src in ["192.0.2.200", "2001:db8:1::9"] {
            let src: IpAddr = src.parse().unwrap();
            assert_eq!(
                f.classify(&udp_frame(src, PORT, 4 + 16, 0)),
                Verdict::DropDenied
            );
            assert_eq!(f.classify(&udp_frame(src, PORT, 3, 0)), Verdict::DropDenied);
            assert_eq!(
                f.classify(&udp_frame(src, 22, 3, 0)),
                Verdict::Pass,
                "other ports untouched"
            );
        }
    }

    #[test]
    fn non_udp_fragments_and_truncated_frames_pass() {
        let f = filter();
        let src: IpAddr = "198.51.100.7".parse().unwrap();
        let good = udp_frame(src, PORT, 36, 0);
        // ARP.
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(f.classify(&arp), Verdict::Pass);
        // TCP.
        let mut tcp = good.clone();
        tcp[ETH_HEADER_LEN + 9] = 6;
        assert_eq!(f.classify(&tcp), Verdict::Pass);
        // A fragment (more-fragments bit), and a later fragment (offset).
        let mut frag = good.clone();
        frag[ETH_HEADER_LEN + 6] = 0x20;
        assert_eq!(f.classify(&frag), Verdict::Pass);
        let mut later = good.clone();
        later[ETH_HEADER_LEN + 7] = 0x10;
        assert_eq!(f.classify(&later), Verdict::Pass);
        // Cut anywhere before the end of the UDP payload: nothing to judge.
        for n in 0..good.len() {
            assert_eq!(f.classify(&good[..n]), Verdict::Pass, "cut at {n}");
        }
        // Ethernet padding after the datagram does not count as payload.
        let mut padded = udp_frame(src, PORT, 20, 0);
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(f.classify(&padded), Verdict::Redirect);
        // IPv4 options (IHL 6) move the UDP header.
        let mut opts = udp_frame(src, PORT, 20, 0);
        opts[ETH_HEADER_LEN] = 0x46;
        opts.splice(ETH_HEADER_LEN + 20..ETH_HEADER_LEN + 20, [1, 1, 1, 1]);
        assert_eq!(f.classify(&opts), Verdict::Redirect);
    }

    #[test]
    fn prefixes_match_by_their_leading_bits() {
        let p = Prefix {
            addr: "10.1.0.0".parse().unwrap(),
            len: 16,
        };
        assert!(p.contains("10.1.255.3".parse().unwrap()));
        assert!(!p.contains("10.2.0.1".parse().unwrap()));
        assert!(
            !p.contains("::ffff:10.1.0.1".parse().unwrap()),
            "families do not mix"
        );
        let all = Prefix {
            addr: "::".parse().unwrap(),
            len: 0,
        };
        assert!(all.contains("2001:db8::1".parse().unwrap()));
        let host = Prefix {
            addr: "2001:db8::1".parse().unwrap(),
            len: 200,
        };
        assert!(host.contains("2001:db8::1".parse().unwrap()));
        assert!(!host.contains("2001:db8::2".parse().unwrap()));
    }

    #[test]
    fn prefixes_parse_and_print() {
        let p: Prefix = "192.0.2.0/24".parse().unwrap();
        assert_eq!(p.to_string(), "192.0.2.0/24");
        let host: Prefix = " 2001:db8::1 ".parse().unwrap();
        assert_eq!(host.len, 128);
        assert_eq!("10.0.0.1".parse::<Prefix>().unwrap().len, 32);
        for bad in [
            "",
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0/8",
            "host",
            "10.0.0.0/x",
        ] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn classify_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = filter().classify(&bytes);
        }

        #[test]
        fn the_length_rule_is_the_rfc_layout(len in 0usize..2000) {
            // The session ID, then one or more whole blocks: 20, 36, 52...
            let layouts: Vec<usize> = (1..200).map(|blocks| 4 + 16 * blocks).collect();
            prop_assert_eq!(rtmfp_len_ok(len), layouts.contains(&len));
        }
    }
}
