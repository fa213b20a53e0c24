//! Socket addresses as RTMFP encodes them (RFC 7016 §2.1.5): `flags(8) | IPv4 (4) or IPv6 (16) |
//! port(16)`, used by Redirect and Forwarded IHello chunks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::codec::{Reader, WireError, Writer};

/// Address flag: the address is IPv6 (RFC 7016 §2.1.5).
const FLAG_IPV6: u8 = 0x80;
/// Address flag bits holding the origin (RFC 7016 §2.1.5).
const ORIGIN_MASK: u8 = 0x03;
/// Bytes of an IPv4 address (RFC 7016 §2.1.5).
const IPV4_LEN: usize = 4;
/// Bytes of an IPv6 address (RFC 7016 §2.1.5).
const IPV6_LEN: usize = 16;
/// Flags byte plus port (RFC 7016 §2.1.5).
const FLAGS_AND_PORT_LEN: usize = 3;

/// Where an address came from (RFC 7016 §2.1.5). Advisory only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AddressOrigin {
    /// Origin unknown (0).
    #[default]
    Unknown = 0,
    /// Local or reported by the endpoint itself (1).
    Local = 1,
    /// Observed as a packet's source address (2).
    Observed = 2,
    /// A relay, peer introduction point or proxy (3).
    Relay = 3,
}

impl AddressOrigin {
    /// Decode the low two bits of an address flags byte.
    pub fn from_bits(bits: u8) -> Self {
        match bits & ORIGIN_MASK {
            1 => AddressOrigin::Local,
            2 => AddressOrigin::Observed,
            3 => AddressOrigin::Relay,
            _ => AddressOrigin::Unknown,
        }
    }
}

/// A socket address with its origin tag (RFC 7016 §2.1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address {
    /// IP address and port. IPv6 flow info and scope ID are not carried on the wire (emitted as
    /// nothing, parsed as 0).
    pub addr: SocketAddr,
    /// Where the address came from.
    pub origin: AddressOrigin,
}

impl Address {
    /// An address with the given origin.
    pub fn new(addr: SocketAddr, origin: AddressOrigin) -> Self {
        Address { addr, origin }
    }

    /// Read an address. Reserved flag bits (0x7C) are ignored.
    pub fn parse(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let mut tmp = r.clone();
        let flags = tmp.read_u8()?;
        let ip = if flags & FLAG_IPV6 != 0 {
            let b = tmp.read_bytes(IPV6_LEN)?;
            let mut octets = [0u8; IPV6_LEN];
            octets.copy_from_slice(b);
            IpAddr::V6(Ipv6Addr::from(octets))
        } else {
            let b = tmp.read_bytes(IPV4_LEN)?;
            let mut octets = [0u8; IPV4_LEN];
            octets.copy_from_slice(b);
            IpAddr::V4(Ipv4Addr::from(octets))
        };
        let port = tmp.read_u16()?;
        *r = tmp;
        Ok(Address {
            addr: SocketAddr::new(ip, port),
            origin: AddressOrigin::from_bits(flags),
        })
    }

    /// Encoded size: 7 bytes for IPv4, 19 for IPv6.
    pub fn encoded_len(&self) -> usize {
        FLAGS_AND_PORT_LEN
            + if self.addr.is_ipv6() {
                IPV6_LEN
            } else {
                IPV4_LEN
            }
    }

    /// Write the address, with reserved flag bits zero. Writes nothing if it does not fit.
    pub fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.ensure(self.encoded_len())?;
        let origin = self.origin as u8;
        match self.addr.ip() {
            IpAddr::V4(ip) => {
                w.put_u8(origin)?;
                w.put_bytes(&ip.octets())?;
            }
            IpAddr::V6(ip) => {
                w.put_u8(FLAG_IPV6 | origin)?;
                w.put_bytes(&ip.octets())?;
            }
        }
        w.put_u16(self.addr.port())
    }
}

/// Iterator over a run of addresses filling a field (the tail of a Redirect, RFC 7016 §2.3.5). Stops
/// after the first error.
#[derive(Debug, Clone)]
pub struct AddressIter<'a> {
    reader: Reader<'a>,
    failed: bool,
}

impl<'a> AddressIter<'a> {
    /// Iterate over the addresses in `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        AddressIter {
            reader: Reader::new(bytes),
            failed: false,
        }
    }
}

impl Iterator for AddressIter<'_> {
    type Item = Result<Address, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.reader.is_empty() {
            return None;
        }
        let item = Address::parse(&mut self.reader);
        self.failed = item.is_err();
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::arb::arb_address;
    use proptest::prelude::*;

    fn parse(bytes: &[u8]) -> Result<Address, WireError> {
        Address::parse(&mut Reader::new(bytes))
    }

    fn emit(a: &Address) -> Vec<u8> {
        let mut buf = [0u8; 32];
        let mut w = Writer::new(&mut buf);
        a.emit(&mut w).unwrap();
        assert_eq!(w.len(), a.encoded_len());
        w.written().to_vec()
    }

    #[test]
    fn ipv4_observed() {
        // The reply address of the forwarded IHello in fixture fcclient-p2p-intro 018.
        let bytes = [0x02, 127, 0, 0, 1, 0x80, 0xB5];
        let a = parse(&bytes).unwrap();
        assert_eq!(a.addr, "127.0.0.1:32949".parse().unwrap());
        assert_eq!(a.origin, AddressOrigin::Observed);
        assert_eq!(emit(&a), bytes);
    }

    #[test]
    fn ipv6_with_origins() {
        let mut bytes = vec![0x83];
        bytes.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        bytes.extend_from_slice(&[0xDC, 0x11]);
        let a = parse(&bytes).unwrap();
        assert_eq!(a.addr, "[fd00::2]:56337".parse().unwrap());
        assert_eq!(a.origin, AddressOrigin::Relay);
        assert_eq!(emit(&a), bytes);
        bytes[0] = 0x81;
        assert_eq!(parse(&bytes).unwrap().origin, AddressOrigin::Local);
    }

    #[test]
    fn reserved_bits_ignored_and_cleared() {
        let a = parse(&[0x7C, 10, 0, 0, 1, 0x07, 0x8F]).unwrap();
        assert_eq!(a.addr, "10.0.0.1:1935".parse().unwrap());
        assert_eq!(a.origin, AddressOrigin::Unknown);
        assert_eq!(emit(&a), [0x00, 10, 0, 0, 1, 0x07, 0x8F]);
    }

    #[test]
    fn truncated_and_iteration() {
        assert_eq!(parse(&[0x80, 0, 0]), Err(WireError::UnexpectedEnd));
        assert_eq!(parse(&[0x01, 1, 2, 3, 4, 5]), Err(WireError::UnexpectedEnd));
        let bytes = [0x01, 1, 2, 3, 4, 0, 5, 0x02, 5, 6, 7, 8, 0, 9, 0x00];
        let mut it = AddressIter::new(&bytes);
        assert_eq!(
            it.next().unwrap().unwrap().addr,
            "1.2.3.4:5".parse().unwrap()
        );
        assert_eq!(it.next().unwrap().unwrap().origin, AddressOrigin::Observed);
        assert_eq!(it.next(), Some(Err(WireError::UnexpectedEnd)));
        assert_eq!(it.next(), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn address_round_trip(a in arb_address()) {
            let bytes = emit(&a);
            prop_assert_eq!(bytes.len(), a.encoded_len());
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(Address::parse(&mut r), Ok(a));
            prop_assert!(r.is_empty());
        }
    }
}
