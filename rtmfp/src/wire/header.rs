//! The packet header (RFC 7016 §2.2.4): `flags(8) [timestamp(16)] [timestampEcho(16)]`.

use super::codec::{Reader, WireError, Writer};

/// Flag: time critical, the sender is sending time-critical data (RFC 7016 §2.2.4).
const FLAG_TC: u8 = 0x80;
/// Flag: time critical reverse notification (RFC 7016 §2.2.4).
const FLAG_TCR: u8 = 0x40;
/// Flag: a 16-bit timestamp follows (RFC 7016 §2.2.4).
const FLAG_TS: u8 = 0x08;
/// Flag: a 16-bit timestamp echo follows (RFC 7016 §2.2.4).
const FLAG_TSE: u8 = 0x04;
/// Flag bits holding the mode (RFC 7016 §2.2.4).
const MODE_MASK: u8 = 0x03;

/// Size of the flags byte (RFC 7016 §2.2.4).
const FLAGS_LEN: usize = 1;
/// Size of the timestamp and of the timestamp echo (RFC 7016 §2.2.4).
const TIMESTAMP_LEN: usize = 2;
/// Largest header: flags and both timestamps (RFC 7016 §2.2.4).
pub const MAX_HEADER_LEN: usize = FLAGS_LEN + 2 * TIMESTAMP_LEN;

/// Packet mode (RFC 7016 §2.2.4). Mode 0 is forbidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Sent by the session initiator (1).
    Initiator = 1,
    /// Sent by the session responder (2).
    Responder = 2,
    /// Startup (handshake) packet (3).
    Startup = 3,
}

impl Mode {
    /// Decode the mode bits of a flags byte. Mode 0 is an error.
    pub fn from_bits(bits: u8) -> Result<Self, WireError> {
        match bits & MODE_MASK {
            1 => Ok(Mode::Initiator),
            2 => Ok(Mode::Responder),
            3 => Ok(Mode::Startup),
            _ => Err(WireError::InvalidValue {
                field: "packet mode",
            }),
        }
    }
}

/// A decoded packet header (RFC 7016 §2.2.4). Reserved bits (0x30) are ignored when parsing and zero
/// when emitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketHeader {
    /// TC: the sender is sending time-critical data.
    pub time_critical: bool,
    /// TCR: the sender has recently received time-critical data.
    pub time_critical_reverse: bool,
    /// Packet mode.
    pub mode: Mode,
    /// Sender's 250 Hz timestamp, if present.
    pub timestamp: Option<u16>,
    /// Echo of the far end's timestamp, if present.
    pub timestamp_echo: Option<u16>,
}

impl PacketHeader {
    /// A header for `mode` with no flags and no timestamps.
    pub fn new(mode: Mode) -> Self {
        PacketHeader {
            time_critical: false,
            time_critical_reverse: false,
            mode,
            timestamp: None,
            timestamp_echo: None,
        }
    }

    /// Read a header.
    pub fn parse(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let mut tmp = r.clone();
        let flags = tmp.read_u8()?;
        let mode = Mode::from_bits(flags)?;
        let timestamp = if flags & FLAG_TS != 0 {
            Some(tmp.read_u16()?)
        } else {
            None
        };
        let timestamp_echo = if flags & FLAG_TSE != 0 {
            Some(tmp.read_u16()?)
        } else {
            None
        };
        *r = tmp;
        Ok(PacketHeader {
            time_critical: flags & FLAG_TC != 0,
            time_critical_reverse: flags & FLAG_TCR != 0,
            mode,
            timestamp,
            timestamp_echo,
        })
    }

    /// The flags byte this header encodes to.
    pub fn flags(&self) -> u8 {
        let mut f = self.mode as u8;
        if self.time_critical {
            f |= FLAG_TC;
        }
        if self.time_critical_reverse {
            f |= FLAG_TCR;
        }
        if self.timestamp.is_some() {
            f |= FLAG_TS;
        }
        if self.timestamp_echo.is_some() {
            f |= FLAG_TSE;
        }
        f
    }

    /// Encoded size: 1, 3 or 5 bytes.
    pub fn encoded_len(&self) -> usize {
        FLAGS_LEN
            + TIMESTAMP_LEN * usize::from(self.timestamp.is_some())
            + TIMESTAMP_LEN * usize::from(self.timestamp_echo.is_some())
    }

    /// Write the header. Writes nothing if it does not fit.
    pub fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.ensure(self.encoded_len())?;
        w.put_u8(self.flags())?;
        if let Some(ts) = self.timestamp {
            w.put_u16(ts)?;
        }
        if let Some(tse) = self.timestamp_echo {
            w.put_u16(tse)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::arb::arb_header;
    use proptest::prelude::*;

    fn parse(bytes: &[u8]) -> Result<PacketHeader, WireError> {
        PacketHeader::parse(&mut Reader::new(bytes))
    }

    #[test]
    fn observed_flag_values() {
        // docs/rtmfp.md §1.3: handshake 0x0b, Flash client data 0x8d, server 0x4e / 0x4a.
        let h = parse(&[0x0b, 0x00, 0x4C]).unwrap();
        assert_eq!(h.mode, Mode::Startup);
        assert_eq!(h.timestamp, Some(76));
        assert_eq!(h.timestamp_echo, None);
        assert!(!h.time_critical && !h.time_critical_reverse);
        let h = parse(&[0x8d, 0x01, 0x02, 0x03, 0x04]).unwrap();
        assert!(h.time_critical);
        assert_eq!(h.mode, Mode::Initiator);
        assert_eq!(
            (h.timestamp, h.timestamp_echo),
            (Some(0x0102), Some(0x0304))
        );
        let h = parse(&[0x4a, 0, 1]).unwrap();
        assert!(h.time_critical_reverse);
        assert_eq!(h.mode, Mode::Responder);
        assert_eq!(h.flags(), 0x4a);
        // Neither timestamp (RFC 7016 §3.5.2.2: receivers must accept it).
        let h = parse(&[0x01]).unwrap();
        assert_eq!(h.encoded_len(), 1);
        assert_eq!(h, PacketHeader::new(Mode::Initiator));
    }

    #[test]
    fn forbidden_mode_and_truncation() {
        assert_eq!(
            parse(&[0x0c, 0, 0, 0, 0]),
            Err(WireError::InvalidValue {
                field: "packet mode"
            })
        );
        assert_eq!(parse(&[0x0d, 0, 0, 0]), Err(WireError::UnexpectedEnd));
        assert_eq!(parse(&[]), Err(WireError::UnexpectedEnd));
    }

    #[test]
    fn reserved_bits_ignored() {
        let h = parse(&[0x3b, 0, 7]).unwrap();
        assert_eq!(h.flags(), 0x0b);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn header_round_trip(h in arb_header()) {
            let mut buf = [0u8; MAX_HEADER_LEN];
            let mut w = Writer::new(&mut buf);
            h.emit(&mut w).unwrap();
            prop_assert_eq!(w.len(), h.encoded_len());
            let mut r = Reader::new(w.written());
            prop_assert_eq!(PacketHeader::parse(&mut r), Ok(h));
            prop_assert!(r.is_empty());
        }
    }
}
