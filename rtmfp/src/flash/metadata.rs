//! Flash-profile flow metadata: the user data option that names what a flow carries.
//!
//! `TC` flows carry NetConnection/NetStream traffic: `'T' 'C' flags [streamID VLU]`
//! (RFC 7425 §5.1.1; layout as in rtmfp-cpp `TCMetadata`). `GC` flows carry NetGroup
//! bootstrapping (digest §1.14). These are the option *values*: Cumulus compares against the
//! option with its type byte in front (`00 54 43 04 …`); this module sees only `54 43 04 …`.

use super::{read_vlu, write_vlu, FlashError};

/// Signature of a TC (NetConnection/NetStream) flow. RFC 7425 §5.1.1.
pub const TC_SIGNATURE: [u8; 2] = *b"TC";
/// Signature of a GC (NetGroup) flow. Digest §1.10, §1.14.
pub const GC_SIGNATURE: [u8; 2] = *b"GC";
/// TC flags bit: a stream ID follows (required). RFC 7425 §5.1.1 / rtmfp-cpp `TCMetadata`.
pub const TC_FLAG_STREAM_ID: u8 = 0x04;
/// TC flags bit: receive intent is "network" (deliver as received) rather than "sequence".
/// RFC 7425 §5.1.1 / rtmfp-cpp `TCMetadata`.
pub const TC_FLAG_NETWORK_INTENT: u8 = 0x01;

/// How the receiver should deliver a TC flow's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReceiveIntent {
    /// In order, like RTMP.
    #[default]
    Sequence,
    /// As they arrive (out of order allowed).
    Network,
}

/// The metadata of a Flash-profile flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowMetadata<'a> {
    /// A TC flow for NetConnection (stream ID 0) or a NetStream (stream ID N).
    Tc {
        /// The NetStream ID; 0 is the NetConnection.
        stream_id: u64,
        /// Delivery order requested by the sender.
        receive_intent: ReceiveIntent,
    },
    /// A NetGroup flow.
    Gc,
    /// Any other metadata (including empty), kept raw.
    Other(&'a [u8]),
}

impl<'a> FlowMetadata<'a> {
    /// Parses a metadata option value. Bytes that start with `TC` must be valid TC metadata
    /// (stream ID flag set, exactly one VLU, nothing after it); flag bits other than the two
    /// known ones are ignored. Exactly `GC` is [`FlowMetadata::Gc`]; anything else is
    /// [`FlowMetadata::Other`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FlashError> {
        if let Some(rest) = bytes.strip_prefix(&TC_SIGNATURE) {
            let (&flags, rest) = rest.split_first().ok_or(FlashError::UnexpectedEnd)?;
            if flags & TC_FLAG_STREAM_ID == 0 {
                return Err(FlashError::InvalidMetadata);
            }
            let (stream_id, len) = read_vlu(rest)?;
            if len != rest.len() {
                return Err(FlashError::InvalidMetadata);
            }
            let receive_intent = if flags & TC_FLAG_NETWORK_INTENT != 0 {
                ReceiveIntent::Network
            } else {
                ReceiveIntent::Sequence
            };
            return Ok(FlowMetadata::Tc {
                stream_id,
                receive_intent,
            });
        }
        if bytes == GC_SIGNATURE {
            return Ok(FlowMetadata::Gc);
        }
        Ok(FlowMetadata::Other(bytes))
    }

    /// Appends the metadata option value.
    pub fn emit(&self, out: &mut Vec<u8>) {
        match *self {
            FlowMetadata::Tc {
                stream_id,
                receive_intent,
            } => {
                out.extend_from_slice(&TC_SIGNATURE);
                let intent = match receive_intent {
                    ReceiveIntent::Sequence => 0,
                    ReceiveIntent::Network => TC_FLAG_NETWORK_INTENT,
                };
                out.push(TC_FLAG_STREAM_ID | intent);
                write_vlu(out, stream_id);
            }
            FlowMetadata::Gc => out.extend_from_slice(&GC_SIGNATURE),
            FlowMetadata::Other(bytes) => out.extend_from_slice(bytes),
        }
    }

    /// The metadata as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.emit(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden() {
        // Fixture options `0:54430400` (NetConnection) and `0:54430401` (NetStream 1).
        let nc = FlowMetadata::Tc {
            stream_id: 0,
            receive_intent: ReceiveIntent::Sequence,
        };
        assert_eq!(FlowMetadata::parse(&[0x54, 0x43, 0x04, 0x00]), Ok(nc));
        assert_eq!(nc.to_vec(), [0x54, 0x43, 0x04, 0x00]);
        let ns = FlowMetadata::Tc {
            stream_id: 1,
            receive_intent: ReceiveIntent::Sequence,
        };
        assert_eq!(FlowMetadata::parse(&[0x54, 0x43, 0x04, 0x01]), Ok(ns));
        let net = FlowMetadata::Tc {
            stream_id: 130,
            receive_intent: ReceiveIntent::Network,
        };
        assert_eq!(net.to_vec(), [0x54, 0x43, 0x05, 0x81, 0x02]);
        assert_eq!(FlowMetadata::parse(&[0x47, 0x43]), Ok(FlowMetadata::Gc));
        assert_eq!(FlowMetadata::Gc.to_vec(), [0x47, 0x43]);
        assert_eq!(FlowMetadata::parse(&[]), Ok(FlowMetadata::Other(&[])));
        assert_eq!(
            FlowMetadata::parse(b"XY\x01"),
            Ok(FlowMetadata::Other(b"XY\x01"))
        );
    }

    #[test]
    fn malformed_tc() {
        assert_eq!(FlowMetadata::parse(b"TC"), Err(FlashError::UnexpectedEnd));
        assert_eq!(
            FlowMetadata::parse(b"TC\x00\x00"),
            Err(FlashError::InvalidMetadata)
        );
        assert_eq!(
            FlowMetadata::parse(b"TC\x04"),
            Err(FlashError::UnexpectedEnd)
        );
        assert_eq!(
            FlowMetadata::parse(b"TC\x04\x00\x00"),
            Err(FlashError::InvalidMetadata)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn round_trip(stream_id in any::<u64>(), network in any::<bool>()) {
            let m = FlowMetadata::Tc {
                stream_id,
                receive_intent: if network { ReceiveIntent::Network } else { ReceiveIntent::Sequence },
            };
            let bytes = m.to_vec();
            prop_assert_eq!(FlowMetadata::parse(&bytes), Ok(m));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(m) = FlowMetadata::parse(&bytes) {
                let again = m.to_vec();
                prop_assert_eq!(FlowMetadata::parse(&again), Ok(m));
            }
        }
    }
}
