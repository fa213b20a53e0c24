//! The Flash "TC" layer of RFC 7425 §5: flow metadata, TC messages, user control events,
//! NetConnection/NetStream commands and NetGroup bootstrapping messages.
//!
//! What it does: parses and emits the bytes carried by RTMFP flows in the Flash profile: the
//! `TC`/`GC` flow metadata ([`metadata`]), the `type | timestamp | payload` message framing and
//! user control events ([`message`]), AMF commands and data messages with typed views of the
//! NetConnection/NetStream commands and builders for the server's replies ([`command`]), and the
//! NetGroup join and member messages ([`netgroup`]).
//!
//! What it does not do: no flow or session state, no routing of commands to applications, no
//! media processing. It decides nothing; it only reads and writes messages.

use thiserror::Error;

use crate::amf::{DecodeError, EncodeError};

pub mod command;
pub mod message;
pub mod metadata;
pub mod netgroup;

/// Runs every parser of this module over `data` (as flow metadata, a TC message and its
/// command, data or user-control payload, and NetGroup join and member messages), and checks
/// that what parses re-encodes to what parses the same. For fuzzing; panics on a bug.
#[doc(hidden)]
pub fn fuzz_flash(data: &[u8]) {
    if let Ok(m) = metadata::FlowMetadata::parse(data) {
        assert_eq!(
            metadata::FlowMetadata::parse(&m.to_vec()),
            Ok(m),
            "flow metadata must round-trip"
        );
    }
    if let Ok(msg) = message::TcMessage::parse(data) {
        if let Ok(c) = command::Command::parse(&msg) {
            let _ = c.net_command();
        }
        let _ = command::DataMessage::parse(&msg);
        let _ = message::UserControl::parse(msg.payload);
    }
    if let Ok(join) = netgroup::GroupJoin::parse(data) {
        let mut out = Vec::new();
        join.emit(&mut out);
        assert_eq!(
            netgroup::GroupJoin::parse(&out),
            Ok(join),
            "join must round-trip"
        );
    }
    if let Ok(peer) = netgroup::parse_member(data) {
        let mut out = Vec::new();
        netgroup::emit_member(&peer, &mut out);
        assert_eq!(out, data, "member must round-trip byte for byte");
    }
}

/// Maximum encoded length of a VLU accepted by this module: 10 bytes carry 70 bits, enough for
/// any `u64` (RFC 7016 §2.1.2 says implementations SHOULD handle at least 64-bit values).
pub const MAX_VLU_LEN: usize = 10;

/// Errors from parsing or emitting Flash-profile messages.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum FlashError {
    /// The bytes ended inside a field.
    #[error("unexpected end of Flash message")]
    UnexpectedEnd,
    /// A VLU longer than [`MAX_VLU_LEN`] bytes or larger than `u64`.
    #[error("invalid VLU")]
    InvalidVlu,
    /// `TC` metadata without the stream ID flag, or with trailing bytes.
    #[error("invalid TC flow metadata")]
    InvalidMetadata,
    /// A message of a type this parser does not handle (e.g. a command parser given audio).
    #[error("unexpected TC message type 0x{0:02x}")]
    UnexpectedMessageType(u8),
    /// An AMF3 command or data message whose first byte is not the 0x00 format selector.
    #[error("AMF3 message does not start with 0x00 (found 0x{0:02x})")]
    InvalidFormatSelector(u8),
    /// The command or handler name is missing or not a string.
    #[error("missing command name")]
    MissingName,
    /// The command transaction ID is missing or not a number.
    #[error("missing transaction ID")]
    MissingTransactionId,
    /// A known command whose arguments have the wrong types.
    #[error("bad arguments for {0}")]
    BadArguments(&'static str),
    /// A user control event shorter than its fixed fields.
    #[error("truncated user control event {0}")]
    InvalidUserControl(u16),
    /// A NetGroup message with an unknown type or a malformed group ID.
    #[error("invalid NetGroup message")]
    InvalidGroupMessage,
    /// AMF decoding failed.
    #[error("AMF: {0}")]
    Decode(#[from] DecodeError),
    /// AMF encoding failed.
    #[error("AMF: {0}")]
    Encode(#[from] EncodeError),
}

/// Reads a VLU (RFC 7016 §2.1.2) from the front of `bytes`: `(value, encoded length)`.
pub(crate) fn read_vlu(bytes: &[u8]) -> Result<(u64, usize), FlashError> {
    let mut v: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(MAX_VLU_LEN) {
        if v > u64::MAX >> 7 {
            return Err(FlashError::InvalidVlu);
        }
        v = (v << 7) | u64::from(b & 0x7F);
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    if bytes.len() >= MAX_VLU_LEN {
        Err(FlashError::InvalidVlu)
    } else {
        Err(FlashError::UnexpectedEnd)
    }
}

/// Appends `v` as a minimal VLU (RFC 7016 §2.1.2).
pub(crate) fn write_vlu(out: &mut Vec<u8>, v: u64) {
    let mut groups = [0u8; MAX_VLU_LEN];
    let mut n = 0;
    let mut rest = v;
    loop {
        groups[n] = (rest & 0x7F) as u8;
        n += 1;
        rest >>= 7;
        if rest == 0 {
            break;
        }
    }
    for i in (0..n).rev() {
        let more = if i > 0 { 0x80 } else { 0 };
        out.push(groups[i] | more);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn vlu_known_answers() {
        // Digest §1.17: 81 02 = 130, ff 7f = 16383, 00 = 0.
        assert_eq!(read_vlu(&[0x81, 0x02]), Ok((130, 2)));
        assert_eq!(read_vlu(&[0xFF, 0x7F, 0xAA]), Ok((16383, 2)));
        assert_eq!(read_vlu(&[0x00]), Ok((0, 1)));
        let mut out = Vec::new();
        write_vlu(&mut out, 130);
        assert_eq!(out, [0x81, 0x02]);
        assert_eq!(read_vlu(&[0x81]), Err(FlashError::UnexpectedEnd));
        assert_eq!(read_vlu(&[]), Err(FlashError::UnexpectedEnd));
        assert_eq!(read_vlu(&[0x80; 11]), Err(FlashError::InvalidVlu));
        // 2^64 does not fit.
        assert_eq!(
            read_vlu(&[0x82, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
            Err(FlashError::InvalidVlu)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// The fuzz target's checks hold on random bytes, and on bytes behind each message
        /// type and join form, so that the parsers' deeper paths are reached.
        #[test]
        fn the_parsers_never_panic_and_round_trip(
            lead in prop_oneof![
                Just(vec![]),
                Just(vec![0x14, 0, 0, 0, 0]),
                Just(vec![0x11, 0, 0, 0, 0, 0]),
                Just(vec![0x12, 0, 0, 0, 0]),
                Just(vec![0x04, 0, 0, 0, 0]),
                Just(vec![0x01, 0x21, 0x15]),
                Just(vec![0x01]),
                Just(vec![0x0B]),
                Just(b"TC\x04".to_vec()),
                Just(b"GC".to_vec()),
            ],
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut data = lead;
            data.extend_from_slice(&body);
            fuzz_flash(&data);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn vlu_round_trip(v in any::<u64>()) {
            let mut out = Vec::new();
            write_vlu(&mut out, v);
            prop_assert!(out.len() <= MAX_VLU_LEN);
            prop_assert_eq!(read_vlu(&out), Ok((v, out.len())));
        }
    }
}
