//! A small reader for classic pcap and pcapng captures that yields the UDP datagrams inside.
//!
//! Supported link types: Ethernet (1), raw IP (101, 12), BSD loopback (0), Linux cooked v1 (113)
//! and v2 (276). IPv4 and IPv6 (without extension headers other than none), UDP only. Anything
//! else is skipped. Malformed input ends the capture with an error; it never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Classic pcap magic, microsecond timestamps, in the writer's byte order.
const PCAP_MAGIC_US: u32 = 0xA1B2_C3D4;
/// Classic pcap magic, nanosecond timestamps.
const PCAP_MAGIC_NS: u32 = 0xA1B2_3C4D;
/// pcapng Section Header Block type.
const PCAPNG_SHB: u32 = 0x0A0D_0D0A;
/// pcapng byte-order magic.
const PCAPNG_BOM: u32 = 0x1A2B_3C4D;
/// pcapng Interface Description Block.
const PCAPNG_IDB: u32 = 1;
/// pcapng Simple Packet Block.
const PCAPNG_SPB: u32 = 3;
/// pcapng Enhanced Packet Block.
const PCAPNG_EPB: u32 = 6;

const LINKTYPE_NULL: u32 = 0;
const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW_OLD: u32 = 12;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_LINUX_SLL2: u32 = 276;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPPROTO_UDP: u8 = 17;
const UDP_HEADER_LEN: usize = 8;
const ETHERNET_HEADER_LEN: usize = 14;
const SLL_HEADER_LEN: usize = 16;
const SLL2_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const IPV4_MIN_HEADER_LEN: usize = 20;

/// One UDP datagram from a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Timestamp in microseconds since the Unix epoch (as recorded).
    pub time_us: u64,
    /// Source address.
    pub source: SocketAddr,
    /// Destination address.
    pub destination: SocketAddr,
    /// The UDP payload.
    pub payload: Vec<u8>,
}

/// Why a capture could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcapError {
    /// Not a pcap or pcapng file.
    #[error("not a pcap or pcapng file")]
    BadMagic,
    /// The file ends inside a record.
    #[error("truncated capture at byte {0}")]
    Truncated(usize),
}

struct Bytes<'a> {
    data: &'a [u8],
    big_endian: bool,
}

impl Bytes<'_> {
    fn u32_at(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.data.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }
    fn u16_at(&self, at: usize) -> Option<u16> {
        let b: [u8; 2] = self.data.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }
}

/// The UDP datagrams of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The datagrams, in capture order.
    pub datagrams: Vec<Datagram>,
    /// Why reading stopped early, if it did: the datagrams before that point are kept.
    pub error: Option<PcapError>,
}

/// Reads every UDP datagram of a pcap or pcapng capture. A file that is not a capture is an
/// error; a capture cut short keeps the datagrams before the cut.
pub fn read_capture(data: &[u8]) -> Result<Capture, PcapError> {
    let magic_le = data
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(PcapError::BadMagic)?;
    let mut datagrams = Vec::new();
    let result = match magic_le {
        PCAPNG_SHB => read_pcapng(data, &mut datagrams),
        m if m == PCAP_MAGIC_US || m == PCAP_MAGIC_NS => {
            read_pcap(data, false, m == PCAP_MAGIC_NS, &mut datagrams)
        }
        m if m.swap_bytes() == PCAP_MAGIC_US || m.swap_bytes() == PCAP_MAGIC_NS => {
            read_pcap(data, true, m.swap_bytes() == PCAP_MAGIC_NS, &mut datagrams)
        }
        _ => return Err(PcapError::BadMagic),
    };
    Ok(Capture {
        datagrams,
        error: result.err(),
    })
}

fn read_pcap(
    data: &[u8],
    big_endian: bool,
    nanos: bool,
    out: &mut Vec<Datagram>,
) -> Result<(), PcapError> {
    const GLOBAL_HEADER_LEN: usize = 24;
    const RECORD_HEADER_LEN: usize = 16;
    let b = Bytes { data, big_endian };
    let linktype = b.u32_at(20).ok_or(PcapError::Truncated(20))? & 0x0FFF_FFFF;
    let mut at = GLOBAL_HEADER_LEN;
    while at < data.len() {
        let (Some(sec), Some(frac), Some(incl)) =
            (b.u32_at(at), b.u32_at(at + 4), b.u32_at(at + 8))
        else {
            return Err(PcapError::Truncated(at));
        };
        let start = at + RECORD_HEADER_LEN;
        let end = start
            .checked_add(incl as usize)
            .ok_or(PcapError::Truncated(at))?;
        let frame = data.get(start..end).ok_or(PcapError::Truncated(at))?;
        let frac_us = if nanos {
            u64::from(frac) / 1000
        } else {
            u64::from(frac)
        };
        let time_us = u64::from(sec) * 1_000_000 + frac_us;
        if let Some(d) = parse_frame(linktype, frame, time_us) {
            out.push(d);
        }
        at = end;
    }
    Ok(())
}

fn read_pcapng(data: &[u8], out: &mut Vec<Datagram>) -> Result<(), PcapError> {
    // Per interface: link type and timestamp units per second.
    let mut interfaces: Vec<(u32, u64)> = Vec::new();
    let mut at = 0usize;
    let mut big_endian = false;
    while at < data.len() {
        let le = Bytes {
            data,
            big_endian: false,
        };
        let block_type_le = le.u32_at(at).ok_or(PcapError::Truncated(at))?;
        if block_type_le == PCAPNG_SHB {
            let bom = le.u32_at(at + 8).ok_or(PcapError::Truncated(at))?;
            big_endian = bom != PCAPNG_BOM;
            interfaces.clear();
        }
        let b = Bytes { data, big_endian };
        let block_type = b.u32_at(at).ok_or(PcapError::Truncated(at))?;
        let len = b.u32_at(at + 4).ok_or(PcapError::Truncated(at))? as usize;
        if len < 12 || at.checked_add(len).is_none_or(|e| e > data.len()) {
            return Err(PcapError::Truncated(at));
        }
        match block_type {
            PCAPNG_IDB => {
                let linktype = u32::from(b.u16_at(at + 8).ok_or(PcapError::Truncated(at))?);
                let options = data.get(at + 16..at + len - 4).unwrap_or_default();
                interfaces.push((linktype, ts_units_per_second(&b, options)));
            }
            PCAPNG_EPB => {
                let iface = b.u32_at(at + 8).ok_or(PcapError::Truncated(at))? as usize;
                let hi = b.u32_at(at + 12).ok_or(PcapError::Truncated(at))?;
                let lo = b.u32_at(at + 16).ok_or(PcapError::Truncated(at))?;
                let cap = b.u32_at(at + 20).ok_or(PcapError::Truncated(at))? as usize;
                let frame = data
                    .get(at + 28..(at + 28).saturating_add(cap))
                    .filter(|_| 28 + cap + 4 <= len)
                    .ok_or(PcapError::Truncated(at))?;
                let ts = (u64::from(hi) << 32) | u64::from(lo);
                if let Some(&(lt, units)) = interfaces.get(iface) {
                    if let Some(d) = parse_frame(lt, frame, to_micros(ts, units)) {
                        out.push(d);
                    }
                }
            }
            PCAPNG_SPB => {
                let orig = b.u32_at(at + 8).ok_or(PcapError::Truncated(at))? as usize;
                let cap = orig.min(len.saturating_sub(16));
                let frame = data
                    .get(at + 12..at + 12 + cap)
                    .ok_or(PcapError::Truncated(at))?;
                if let Some(&(lt, _)) = interfaces.first() {
                    if let Some(d) = parse_frame(lt, frame, 0) {
                        out.push(d);
                    }
                }
            }
            _ => {}
        }
        at += len;
    }
    Ok(())
}

/// pcapng IDB option `if_tsresol` (pcapng §4.2).
const PCAPNG_IF_TSRESOL: u16 = 9;
/// pcapng end-of-options option code.
const PCAPNG_OPT_ENDOFOPT: u16 = 0;
/// Default pcapng timestamp resolution: microseconds.
const MICROS_PER_SECOND: u64 = 1_000_000;

/// Timestamp units per second of an interface, from its `if_tsresol` option: 10^-n seconds,
/// or 2^-n when the top bit is set. Microseconds when absent or unusable.
fn ts_units_per_second(b: &Bytes<'_>, options: &[u8]) -> u64 {
    let opts = Bytes {
        data: options,
        big_endian: b.big_endian,
    };
    let mut at = 0;
    while let (Some(code), Some(len)) = (opts.u16_at(at), opts.u16_at(at + 2)) {
        if code == PCAPNG_OPT_ENDOFOPT {
            break;
        }
        if code == PCAPNG_IF_TSRESOL && len == 1 {
            let Some(&v) = options.get(at + 4) else { break };
            let units = if v & 0x80 != 0 {
                1u64.checked_shl(u32::from(v & 0x7F))
            } else {
                10u64.checked_pow(u32::from(v))
            };
            return units.filter(|&u| u > 0).unwrap_or(MICROS_PER_SECOND);
        }
        at += 4 + usize::from(len).div_ceil(4) * 4;
    }
    MICROS_PER_SECOND
}

/// A timestamp in `units` per second, in microseconds.
fn to_micros(ts: u64, units: u64) -> u64 {
    u64::try_from(u128::from(ts) * u128::from(MICROS_PER_SECOND) / u128::from(units))
        .unwrap_or(u64::MAX)
}

fn parse_frame(linktype: u32, frame: &[u8], time_us: u64) -> Option<Datagram> {
    let ip = match linktype {
        LINKTYPE_ETHERNET => {
            let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
            let mut off = ETHERNET_HEADER_LEN;
            if ethertype == ETHERTYPE_VLAN {
                ethertype = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
                off += 4;
            }
            if ethertype != ETHERTYPE_IPV4 && ethertype != ETHERTYPE_IPV6 {
                return None;
            }
            frame.get(off..)?
        }
        LINKTYPE_RAW | LINKTYPE_RAW_OLD => frame,
        LINKTYPE_NULL => frame.get(4..)?,
        LINKTYPE_LINUX_SLL => frame.get(SLL_HEADER_LEN..)?,
        LINKTYPE_LINUX_SLL2 => frame.get(SLL2_HEADER_LEN..)?,
        _ => return None,
    };
    parse_ip(ip, time_us)
}

fn parse_ip(ip: &[u8], time_us: u64) -> Option<Datagram> {
    let version = ip.first()? >> 4;
    let (src, dst, udp) = match version {
        4 => {
            let ihl = usize::from(ip.first()? & 0x0F) * 4;
            if ihl < IPV4_MIN_HEADER_LEN || *ip.get(9)? != IPPROTO_UDP {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?);
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(16..20)?).ok()?);
            (
                IpAddr::V4(src),
                IpAddr::V4(dst),
                ip.get(ihl..total.min(ip.len()))?,
            )
        }
        6 => {
            if *ip.get(6)? != IPPROTO_UDP {
                return None;
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(8..24)?).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(24..40)?).ok()?);
            (IpAddr::V6(src), IpAddr::V6(dst), ip.get(IPV6_HEADER_LEN..)?)
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let ulen = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    let payload = udp.get(UDP_HEADER_LEN..ulen.min(udp.len()))?;
    Some(Datagram {
        time_us,
        source: SocketAddr::new(src, sport),
        destination: SocketAddr::new(dst, dport),
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");

    #[test]
    fn every_fixture_capture_matches_its_datagram_files() {
        let mut total = 0;
        for name in [
            "tcconn-tcserver-play",
            "tcbench-rpc-tcserver",
            "librtmfp-mona-connect",
            "fcclient-p2p-intro",
            "librtmfp-cumulus-connect",
        ] {
            let pcap = std::fs::read(format!("{FIXTURES}/{name}.pcap")).expect("fixture pcap");
            let capture = read_capture(&pcap).unwrap();
            assert_eq!(capture.error, None, "{name}");
            let datagrams = capture.datagrams;
            let mut files: Vec<_> = std::fs::read_dir(format!("{FIXTURES}/{name}"))
                .unwrap()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "bin"))
                .collect();
            files.sort();
            assert_eq!(datagrams.len(), files.len(), "{name}");
            for (d, f) in datagrams.iter().zip(&files) {
                assert_eq!(d.payload, std::fs::read(f).unwrap(), "{}", f.display());
            }
            total += datagrams.len();
        }
        assert_eq!(total, 390);
    }

    #[test]
    fn pcapng_with_one_epb() {
        // SHB (28 bytes), IDB (Ethernet, 20 bytes), EPB with a 42+3-byte UDP frame.
        let mut f = Vec::new();
        f.extend_from_slice(&PCAPNG_SHB.to_le_bytes());
        f.extend_from_slice(&28u32.to_le_bytes());
        f.extend_from_slice(&PCAPNG_BOM.to_le_bytes());
        f.extend_from_slice(&[1, 0, 0, 0]);
        f.extend_from_slice(&u64::MAX.to_le_bytes());
        f.extend_from_slice(&28u32.to_le_bytes());
        f.extend_from_slice(&PCAPNG_IDB.to_le_bytes());
        f.extend_from_slice(&20u32.to_le_bytes());
        f.extend_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&20u32.to_le_bytes());
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let mut ip = vec![
            0x45,
            0,
            0,
            31,
            0,
            0,
            0,
            0,
            64,
            IPPROTO_UDP,
            0,
            0,
            127,
            0,
            0,
            1,
            127,
            0,
            0,
            2,
        ];
        ip.extend_from_slice(&[0x07, 0x8F, 0x30, 0x39, 0, 11, 0, 0, b'a', b'b', b'c']);
        frame.extend_from_slice(&ip);
        let pad = (4 - frame.len() % 4) % 4;
        let blen = (32 + frame.len() + pad) as u32;
        f.extend_from_slice(&PCAPNG_EPB.to_le_bytes());
        f.extend_from_slice(&blen.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&5u32.to_le_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.extend_from_slice(&frame);
        f.extend(std::iter::repeat_n(0, pad));
        f.extend_from_slice(&blen.to_le_bytes());
        let d = read_capture(&f).unwrap().datagrams;
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].payload, b"abc");
        assert_eq!(d[0].source, "127.0.0.1:1935".parse().unwrap());
        assert_eq!(d[0].destination, "127.0.0.2:12345".parse().unwrap());
        assert_eq!(d[0].time_us, 5);
    }

    #[test]
    fn pcapng_timestamp_resolution() {
        let mut opts = Vec::new();
        opts.extend_from_slice(&PCAPNG_IF_TSRESOL.to_le_bytes());
        opts.extend_from_slice(&1u16.to_le_bytes());
        opts.extend_from_slice(&[9, 0, 0, 0]);
        opts.extend_from_slice(&[0, 0, 0, 0]);
        let b = Bytes {
            data: &[],
            big_endian: false,
        };
        assert_eq!(ts_units_per_second(&b, &opts), 1_000_000_000);
        assert_eq!(to_micros(1_500_000_000, 1_000_000_000), 1_500_000);
        opts[4] = 0x80 | 10;
        assert_eq!(ts_units_per_second(&b, &opts), 1024);
        opts[4] = 0xFF;
        assert_eq!(ts_units_per_second(&b, &opts), MICROS_PER_SECOND);
        opts[4] = 200;
        assert_eq!(ts_units_per_second(&b, &opts), MICROS_PER_SECOND);
        assert_eq!(ts_units_per_second(&b, &opts[..3]), MICROS_PER_SECOND);
        assert_eq!(ts_units_per_second(&b, &[]), MICROS_PER_SECOND);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(read_capture(b""), Err(PcapError::BadMagic));
        assert_eq!(
            read_capture(b"\x00\x01\x02\x03\x04"),
            Err(PcapError::BadMagic)
        );
        let mut p = PCAP_MAGIC_US.to_le_bytes().to_vec();
        p.extend_from_slice(&[0u8; 20]);
        p.extend_from_slice(&[1, 2, 3]);
        let cut = read_capture(&p).unwrap();
        assert_eq!(cut.datagrams, vec![]);
        assert_eq!(cut.error, Some(PcapError::Truncated(24)));
        // A capture cut inside its second record keeps the first datagram.
        let whole = std::fs::read(format!("{FIXTURES}/tcbench-rpc-tcserver.pcap")).unwrap();
        let all = read_capture(&whole).unwrap().datagrams;
        let first_record_end = 24 + 16 + 14 + 20 + 8 + all[0].payload.len();
        let cut = read_capture(&whole[..first_record_end + 10]).unwrap();
        assert_eq!(cut.datagrams, all[..1].to_vec());
        assert_eq!(cut.error, Some(PcapError::Truncated(first_record_end)));
    }
}
