//! Ethernet/IP/UDP frames, both ways: [`parse_udp`] reads a received frame down to its UDP
//! payload (what the XDP program's [`classify`](crate::classify) judges is the same parse),
//! and [`write_headers`] writes the headers of a reply in front of a payload, for AF_XDP
//! transmit, where no kernel stack fills them in.
//!
//! The layer-2 part of a received frame ([`Link`]: the MAC addresses and VLAN tags) is what a
//! reply to its sender needs: the same tags, the MAC addresses swapped.
//!
//! Parsing never panics and never reads past the frame.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::classify::{
    ETH_HEADER_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_UDP,
    IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN, UDP_HEADER_LEN, VLAN_TAG_LEN,
};

/// Length of a MAC address (IEEE 802).
pub const MAC_LEN: usize = 6;
/// Most VLAN tags read or written (802.1ad: a service tag, then a customer tag).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv4 flags and fragment offset: more-fragments bit and the offset field (RFC 791).
const IPV4_FRAGMENT_MASK: u16 = 0x3FFF;
/// IPv4 "don't fragment" flag (RFC 791), set on what we send: RTMFP sizes its own packets.
const IPV4_DONT_FRAGMENT: u16 = 0x4000;
/// Version 4 and a header of five 32-bit words, no options (RFC 791).
const IPV4_VERSION_IHL: u8 = 0x45;
/// Version 6, traffic class and flow label zero (RFC 8200 §3).
const IPV6_VERSION_WORD: u32 = 0x6000_0000;
/// Hop limit / TTL of what we send (the common default, RFC 1700).
pub const DEFAULT_TTL: u8 = 64;
/// A UDP checksum that computes to zero is sent as all ones (RFC 768; RFC 8200 §8.1).
const UDP_ZERO_CHECKSUM: u16 = 0xFFFF;

/// One 802.1Q or 802.1ad tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VlanTag {
    /// The tag protocol identifier: [`ETH_P_8021Q`] or [`ETH_P_8021AD`].
    pub tpid: u16,
    /// Priority, drop eligibility and VLAN ID.
    pub tci: u16,
}

/// The layer-2 path of a frame, seen from this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Link {
    /// This host's MAC address (the destination of a received frame).
    pub local_mac: [u8; MAC_LEN],
    /// The next hop's MAC address (the source of a received frame).
    pub peer_mac: [u8; MAC_LEN],
    /// VLAN tags, outermost first.
    pub vlan: [Option<VlanTag>; MAX_VLAN_TAGS],
}

impl Link {
    fn tags(&self) -> usize {
        self.vlan.iter().flatten().count()
    }
}

/// A UDP datagram found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Its layer-2 path.
    pub link: Link,
    /// Sender's address and port.
    pub source: SocketAddr,
    /// Receiver's address and port.
    pub dest: SocketAddr,
    /// The UDP payload (Ethernet padding excluded).
    pub payload: &'a [u8],
    /// Where the payload starts in the frame.
    pub payload_offset: usize,
}

/// Why a frame holds no UDP datagram we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame ends inside a header.
    #[error("frame truncated")]
    Truncated,
    /// Neither IPv4 nor IPv6 (after at most two VLAN tags).
    #[error("not IP (EtherType {0:#06x})")]
    NotIp(u16),
    /// The IP header's version does not match its EtherType, or IPv4's IHL is below 5.
    #[error("malformed IP header")]
    BadIpHeader,
    /// IP, but not UDP (or, for IPv6, UDP behind extension headers).
    #[error("not UDP (protocol {0})")]
    NotUdp(u8),
    /// An IPv4 fragment: no UDP header, or only part of the datagram.
    #[error("IPv4 fragment")]
    Fragment,
    /// The UDP length is below the header or beyond the frame.
    #[error("bad UDP length")]
    BadUdpLength,
}

fn be16(bytes: &[u8], at: usize) -> Result<u16, FrameError> {
    let b = bytes
        .get(at..at.checked_add(2).ok_or(FrameError::Truncated)?)
        .ok_or(FrameError::Truncated)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

fn mac(bytes: &[u8], at: usize) -> Result<[u8; MAC_LEN], FrameError> {
    bytes
        .get(at..at + MAC_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(FrameError::Truncated)
}

/// Reads Ethernet, up to two VLAN tags, IPv4 (unfragmented) or IPv6 (UDP as the first next
/// header), and UDP.
pub fn parse_udp(frame: &[u8]) -> Result<Datagram<'_>, FrameError> {
    let mut link = Link {
        local_mac: mac(frame, 0)?,
        peer_mac: mac(frame, MAC_LEN)?,
        vlan: [None; MAX_VLAN_TAGS],
    };
    let mut ether_type = be16(frame, 2 * MAC_LEN)?;
    let mut at = ETH_HEADER_LEN;
    for slot in &mut link.vlan {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        *slot = Some(VlanTag {
            tpid: ether_type,
            tci: be16(frame, at)?,
        });
        ether_type = be16(frame, at + 2)?;
        at += VLAN_TAG_LEN;
    }
    let (source, dest, udp_at) = match ether_type {
        ETH_P_IPV4 => {
            let ip = frame
                .get(at..at + IPV4_MIN_HEADER_LEN)
                .ok_or(FrameError::Truncated)?;
            let ihl = usize::from(ip[0] & 0x0F) * 4;
            if ip[0] >> 4 != 4 || ihl < IPV4_MIN_HEADER_LEN {
                return Err(FrameError::BadIpHeader);
            }
            if ip[9] != IPPROTO_UDP {
                return Err(FrameError::NotUdp(ip[9]));
            }
            if be16(ip, 6)? & IPV4_FRAGMENT_MASK != 0 {
                return Err(FrameError::Fragment);
            }
            let source = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dest = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (IpAddr::V4(source), IpAddr::V4(dest), at + ihl)
        }
        ETH_P_IPV6 => {
            let ip = frame
                .get(at..at + IPV6_HEADER_LEN)
                .ok_or(FrameError::Truncated)?;
            if ip[0] >> 4 != 6 {
                return Err(FrameError::BadIpHeader);
            }
            if ip[6] != IPPROTO_UDP {
                return Err(FrameError::NotUdp(ip[6]));
            }
            let mut source = [0u8; 16];
            source.copy_from_slice(&ip[8..24]);
            let mut dest = [0u8; 16];
            dest.copy_from_slice(&ip[24..40]);
            (
                IpAddr::V6(Ipv6Addr::from(source)),
                IpAddr::V6(Ipv6Addr::from(dest)),
                at + IPV6_HEADER_LEN,
            )
        }
        other => return Err(FrameError::NotIp(other)),
    };
    let udp = frame
        .get(udp_at..udp_at + UDP_HEADER_LEN)
        .ok_or(FrameError::Truncated)?;
    let udp_len = usize::from(be16(udp, 4)?);
    // The UDP length says where the payload ends (Ethernet may pad short frames).
    if udp_len < UDP_HEADER_LEN || udp_at + udp_len > frame.len() {
        return Err(FrameError::BadUdpLength);
    }
    let payload_offset = udp_at + UDP_HEADER_LEN;
    Ok(Datagram {
        link,
        source: SocketAddr::new(source, be16(udp, 0)?),
        dest: SocketAddr::new(dest, be16(udp, 2)?),
        payload: &frame[payload_offset..udp_at + udp_len],
        payload_offset,
    })
}

/// Bytes of headers [`write_headers`] puts before the payload of a datagram to `dest`
/// over `link` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn header_len(link: &Link, dest: IpAddr) -> usize {
    let ip = match dest.to_canonical() {
        IpAddr::V4(_) => IPV4_MIN_HEADER_LEN,
        IpAddr::V6(_) => IPV6_HEADER_LEN,
    };
    ETH_HEADER_LEN + link.tags() * VLAN_TAG_LEN + ip + UDP_HEADER_LEN
}

/// The one's-complement sum of `bytes` as big-endian 16-bit words (RFC 1071), a trailing
/// odd byte padded with zero, added to `sum` (at most 0x1FFFF); the result is at most 0xFFFF.
/// It adds 32-bit words into 64 bits and folds at the end, which RFC 1071 §2 (B) allows: the
/// sum is the same modulo 0xFFFF.
fn ones_sum(sum: u32, bytes: &[u8]) -> u32 {
    let mut acc = u64::from(sum);
    let mut words = bytes.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_be_bytes(tail));
    // 64 → 32 → 16 bits, end-around carries included.
    acc = (acc & 0xFFFF_FFFF) + (acc >> 32);
    acc = (acc & 0xFFFF_FFFF) + (acc >> 32);
    acc = (acc & 0xFFFF) + (acc >> 16);
    acc = (acc & 0xFFFF) + (acc >> 16);
    acc as u32
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes Ethernet (to `link.peer_mac`, from `link.local_mac`), `link`'s VLAN tags, IPv4 or
/// IPv6, and UDP headers with their checksums in front of a payload of `payload_len` bytes
/// that is already in `buf` at [`header_len`]. Returns the frame's length; `None` when the
/// addresses are of different families, the payload does not fit `buf`, or it is too long
/// for one UDP datagram.
pub fn write_headers(
    buf: &mut [u8],
    link: &Link,
    source: SocketAddr,
    dest: SocketAddr,
    payload_len: usize,
) -> Option<usize> {
    let (src_ip, dst_ip) = (source.ip().to_canonical(), dest.ip().to_canonical());
    let header = header_len(link, dst_ip);
    let total = header.checked_add(payload_len)?;
    let udp_len = u16::try_from(UDP_HEADER_LEN + payload_len).ok()?;
    let frame = buf.get_mut(..total)?;
    frame[..MAC_LEN].copy_from_slice(&link.peer_mac);
    frame[MAC_LEN..2 * MAC_LEN].copy_from_slice(&link.local_mac);
    let mut at = 2 * MAC_LEN;
    for tag in link.vlan.iter().flatten() {
        frame[at..at + 2].copy_from_slice(&tag.tpid.to_be_bytes());
        frame[at + 2..at + 4].copy_from_slice(&tag.tci.to_be_bytes());
        at += VLAN_TAG_LEN;
    }
    let udp_at = header - UDP_HEADER_LEN;
    // The pseudo-header's sum (RFC 768; RFC 8200 §8.1).
    let pseudo = match (src_ip, dst_ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame[at..at + 2].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
            let ip_at = at + 2;
            let total_len = u16::try_from(IPV4_MIN_HEADER_LEN)
                .ok()?
                .checked_add(udp_len)?;
            let ip = &mut frame[ip_at..ip_at + IPV4_MIN_HEADER_LEN];
            ip[0] = IPV4_VERSION_IHL;
            ip[1] = 0;
            ip[2..4].copy_from_slice(&total_len.to_be_bytes());
            // Identification: unused with don't-fragment set (RFC 6864 §4.1).
            ip[4..6].fill(0);
            ip[6..8].copy_from_slice(&IPV4_DONT_FRAGMENT.to_be_bytes());
            ip[8] = DEFAULT_TTL;
            ip[9] = IPPROTO_UDP;
            ip[10..12].fill(0);
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let checksum = fold(ones_sum(0, ip));
            ip[10..12].copy_from_slice(&checksum.to_be_bytes());
            let sum = ones_sum(0, &s.octets());
            let sum = ones_sum(sum, &d.octets());
            ones_sum(sum, &[0, IPPROTO_UDP])
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            frame[at..at + 2].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
            let ip_at = at + 2;
            let ip = &mut frame[ip_at..ip_at + IPV6_HEADER_LEN];
            ip[0..4].copy_from_slice(&IPV6_VERSION_WORD.to_be_bytes());
            ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
            ip[6] = IPPROTO_UDP;
            ip[7] = DEFAULT_TTL;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            let sum = ones_sum(0, &s.octets());
            let sum = ones_sum(sum, &d.octets());
            ones_sum(sum, &[0, IPPROTO_UDP])
        }
        _ => return None,
    };
    let udp = &mut frame[udp_at..];
    udp[0..2].copy_from_slice(&source.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dest.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[6..8].fill(0);
    // The UDP length appears in the pseudo-header too.
    let sum = ones_sum(pseudo, &udp_len.to_be_bytes());
    let checksum = match fold(ones_sum(sum, udp)) {
        0 => UDP_ZERO_CHECKSUM,
        c => c,
    };
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());
    Some(total)
}

/// Parses `data` as a frame; a datagram that parses, written back from the receiver's side,
/// must parse to the same datagram, and the classifier must judge any frame. Shared by the
/// cargo-fuzz target `frame` and the corpus replay test; panics on a bug.
#[doc(hidden)]
pub fn fuzz_frame(data: &[u8]) {
    let Ok(d) = parse_udp(data) else {
        return;
    };
    assert!(d.payload_offset + d.payload.len() <= data.len());
    let filter = crate::Filter {
        ports: vec![d.dest.port()],
        deny: Vec::new(),
    };
    let verdict = filter.classify(data);
    assert_ne!(
        verdict,
        crate::Verdict::Pass,
        "a UDP datagram to a served port"
    );
    let back = Link {
        local_mac: d.link.peer_mac,
        peer_mac: d.link.local_mac,
        vlan: d.link.vlan,
    };
    let header = header_len(&back, d.dest.ip());
    let mut buf = vec![0; header + d.payload.len()];
    buf[header..].copy_from_slice(d.payload);
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (source, dest) = (canonical(d.source), canonical(d.dest));
    let Some(n) = write_headers(&mut buf, &back, d.source, d.dest, d.payload.len()) else {
        // IPv4-mapped addresses are IPv4 to `write_headers`: an IPv6 frame with one mapped
        // and one native address (which no stack sends, RFC 4291 §2.5.5.2) has no single
        // family to be written back in. Anything else must fit.
        assert_ne!(source.is_ipv4(), dest.is_ipv4(), "a parsed datagram fits");
        return;
    };
    let again = parse_udp(&buf[..n]).expect("a written frame parses");
    assert_eq!(again.link, d.link);
    assert_eq!((again.source, again.dest), (source, dest));
    assert_eq!(again.payload, d.payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn link(tags: usize) -> Link {
        let mut vlan = [None; MAX_VLAN_TAGS];
        let tpids = [ETH_P_8021AD, ETH_P_8021Q];
        for (i, slot) in vlan.iter_mut().enumerate().take(tags) {
            *slot = Some(VlanTag {
                tpid: tpids[i],
                tci: 0x2007 + i as u16,
            });
        }
        Link {
            local_mac: [2, 0, 0, 0, 0, 1],
            peer_mac: [2, 0, 0, 0, 0, 2],
            vlan,
        }
    }

    /// Writes `payload` from `source` to `dest` and returns the frame.
    fn frame(link: &Link, source: SocketAddr, dest: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let header = header_len(link, dest.ip());
        let mut buf = vec![0xEE; header + payload.len() + 7];
        buf[header..header + payload.len()].copy_from_slice(payload);
        let n = write_headers(&mut buf, link, source, dest, payload.len()).expect("fits");
        assert_eq!(n, header + payload.len());
        buf.truncate(n);
        buf
    }

    /// A checksum over a region that holds its own checksum sums to all ones (RFC 1071).
    fn verifies(sum: u32) -> bool {
        fold(sum) == 0
    }

    /// Checks the IP header and UDP checksums of a frame from [`write_headers`].
    fn checksums_hold(f: &[u8]) -> bool {
        let d = parse_udp(f).expect("a datagram");
        let udp_at = d.payload_offset - UDP_HEADER_LEN;
        let udp = &f[udp_at..];
        let len = u16::try_from(udp.len()).unwrap().to_be_bytes();
        let (pseudo, ip_ok) = match (d.source.ip(), d.dest.ip()) {
            (IpAddr::V4(s), IpAddr::V4(dst)) => {
                let ip = &f[udp_at - IPV4_MIN_HEADER_LEN..udp_at];
                let sum = ones_sum(ones_sum(0, &s.octets()), &dst.octets());
                (ones_sum(sum, &[0, IPPROTO_UDP]), verifies(ones_sum(0, ip)))
            }
            (IpAddr::V6(s), IpAddr::V6(dst)) => {
                let sum = ones_sum(ones_sum(0, &s.octets()), &dst.octets());
                (ones_sum(sum, &[0, IPPROTO_UDP]), true)
            }
            _ => unreachable!("one family"),
        };
        ip_ok && verifies(ones_sum(ones_sum(pseudo, &len), udp))
    }

    /// Every committed seed passes the fuzz invariants, and most are datagrams.
    #[test]
    fn replays_fuzz_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/frame");
        let (mut n, mut datagrams) = (0, 0);
        for entry in std::fs::read_dir(dir).expect("corpus directory") {
            let data = std::fs::read(entry.expect("corpus entry").path()).expect("corpus file");
            fuzz_frame(&data);
            n += 1;
            datagrams += usize::from(parse_udp(&data).is_ok());
        }
        assert!(n > 0 && datagrams * 2 > n, "{datagrams} datagrams of {n}");
    }

    #[test]
    fn a_known_ipv4_header_has_the_rfc_1071_checksum() {
        // The worked example of many a textbook: 45 00 00 73 00 00 40 00 40 11 .. ..
        // c0 a8 00 01 c0 a8 00 c7 has the checksum b8 61.
        let ip = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(fold(ones_sum(0, &ip)), 0xb861);
    }

    #[test]
    fn replies_parse_back_with_their_link_addresses_and_payload() {
        let pairs: [(SocketAddr, SocketAddr); 3] = [
            (
                "10.1.0.1:1935".parse().unwrap(),
                "10.1.0.2:40000".parse().unwrap(),
            ),
            (
                "[2001:db8::1]:1935".parse().unwrap(),
                "[2001:db8::2]:5".parse().unwrap(),
            ),
            // IPv4-mapped addresses are IPv4 on the wire.
            (
                "[::ffff:10.1.0.1]:1935".parse().unwrap(),
                "[::ffff:10.1.0.2]:7".parse().unwrap(),
            ),
        ];
        for (source, dest) in pairs {
            for tags in 0..=MAX_VLAN_TAGS {
                for len in [0, 1, 20, 1200] {
                    let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                    let l = link(tags);
                    let f = frame(&l, source, dest, &payload);
                    assert!(checksums_hold(&f));
                    let d = parse_udp(&f).unwrap();
                    // Received at the peer: the MAC addresses are the other way round.
                    assert_eq!(d.link.local_mac, l.peer_mac);
                    assert_eq!(d.link.peer_mac, l.local_mac);
                    assert_eq!(d.link.vlan, l.vlan);
                    assert_eq!(d.source.ip(), source.ip().to_canonical());
                    assert_eq!(d.dest.ip(), dest.ip().to_canonical());
                    assert_eq!(
                        (d.source.port(), d.dest.port()),
                        (source.port(), dest.port())
                    );
                    assert_eq!(d.payload, &payload[..]);
                }
            }
        }
    }

    #[test]
    fn what_does_not_fit_is_refused() {
        let l = link(1);
        let (s, d): (SocketAddr, SocketAddr) =
            ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
        let mut small = [0u8; 60];
        assert_eq!(write_headers(&mut small, &l, s, d, 20), None);
        let six: SocketAddr = "[2001:db8::2]:2".parse().unwrap();
        let mut buf = [0u8; 2048];
        assert_eq!(
            write_headers(&mut buf, &l, s, six, 10),
            None,
            "mixed families"
        );
        let mut huge = vec![0u8; 70_000];
        assert_eq!(
            write_headers(&mut huge, &l, s, d, 65_530),
            None,
            "over 64 KiB"
        );
    }

    #[test]
    fn frames_that_are_not_udp_datagrams_get_their_reason() {
        let (s, d): (SocketAddr, SocketAddr) =
            ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
        let good = frame(&link(0), s, d, &[1; 30]);
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse_udp(&arp), Err(FrameError::NotIp(0x0806)));
        let mut tcp = good.clone();
        tcp[ETH_HEADER_LEN + 9] = 6;
        assert_eq!(parse_udp(&tcp), Err(FrameError::NotUdp(6)));
        let mut frag = good.clone();
        frag[ETH_HEADER_LEN + 6] = 0x20;
        assert_eq!(parse_udp(&frag), Err(FrameError::Fragment));
        let mut ihl = good.clone();
        ihl[ETH_HEADER_LEN] = 0x44;
        assert_eq!(parse_udp(&ihl), Err(FrameError::BadIpHeader));
        let mut long = good.clone();
        let udp_len = ETH_HEADER_LEN + IPV4_MIN_HEADER_LEN + 4;
        long[udp_len..udp_len + 2].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(parse_udp(&long), Err(FrameError::BadUdpLength));
        for n in 0..good.len() {
            assert!(parse_udp(&good[..n]).is_err(), "cut at {n}");
        }
        // Ethernet padding is not payload.
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 9]);
        assert_eq!(parse_udp(&padded).unwrap().payload, &[1; 30]);
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_what_it_reads_writes_back(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            fuzz_frame(&bytes);
        }

        #[test]
        fn the_wide_sum_is_the_rfc_1071_sum(
            start in 0u32..0x1_FFFF,
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            // The definition: 16-bit words, end-around carry after each.
            let mut reference = start;
            for w in bytes.chunks(2) {
                let word = u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]));
                reference += word;
                while reference > 0xFFFF {
                    reference = (reference & 0xFFFF) + (reference >> 16);
                }
            }
            while reference > 0xFFFF {
                reference = (reference & 0xFFFF) + (reference >> 16);
            }
            prop_assert_eq!(fold(ones_sum(start, &bytes)), fold(reference));
        }

        #[test]
        fn written_frames_round_trip(
            v6 in any::<bool>(),
            src in any::<[u8; 16]>(),
            dst in any::<[u8; 16]>(),
            ports in any::<(u16, u16)>(),
            tags in 0..=MAX_VLAN_TAGS,
            tci in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..1500),
        ) {
            let (s, d) = if v6 {
                (IpAddr::V6(Ipv6Addr::from(src)), IpAddr::V6(Ipv6Addr::from(dst)))
            } else {
                let v4 = |b: [u8; 16]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
                (v4(src), v4(dst))
            };
            let (s, d) = (SocketAddr::new(s, ports.0), SocketAddr::new(d, ports.1));
            let mut l = link(tags);
            for t in l.vlan.iter_mut().flatten() {
                t.tci = tci;
            }
            let f = frame(&l, s, d, &payload);
            prop_assert!(checksums_hold(&f));
            let got = parse_udp(&f).unwrap();
            prop_assert_eq!(got.source, SocketAddr::new(s.ip().to_canonical(), s.port()));
            prop_assert_eq!(got.dest, SocketAddr::new(d.ip().to_canonical(), d.port()));
            prop_assert_eq!(got.link.vlan, l.vlan);
            prop_assert_eq!(got.payload, &payload[..]);
        }
    }
}
