//! TC message framing (`type(8) | timestamp(32) | payload`, RFC 7425 §5.1.1) and RTMP user
//! control events carried in type 0x04 messages.

use super::FlashError;

/// An RTMP message type as carried in a TC message. RFC 7425 §5.1.1 (RTMP message types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType(pub u8);

impl MessageType {
    /// Protocol control: set chunk size (unused with RTMFP). RTMP §5.4.1.
    pub const SET_CHUNK_SIZE: MessageType = MessageType(0x01);
    /// Protocol control: abort (unused with RTMFP). RTMP §5.4.2.
    pub const ABORT: MessageType = MessageType(0x02);
    /// Protocol control: acknowledgement (unused with RTMFP). RTMP §5.4.3.
    pub const ACKNOWLEDGEMENT: MessageType = MessageType(0x03);
    /// User control event. RTMP §6.2; RFC 7425 §5.2 (flow sync), §5.3.4 (keepalive).
    pub const USER_CONTROL: MessageType = MessageType(0x04);
    /// Protocol control: window acknowledgement size (unused with RTMFP). RTMP §5.4.4.
    pub const WINDOW_ACK_SIZE: MessageType = MessageType(0x05);
    /// Protocol control: set peer bandwidth (unused with RTMFP). RTMP §5.4.5.
    pub const SET_PEER_BANDWIDTH: MessageType = MessageType(0x06);
    /// Audio: an FLV audio tag body. RTMP §7.1.4.
    pub const AUDIO: MessageType = MessageType(0x08);
    /// Video: an FLV video tag body. RTMP §7.1.5.
    pub const VIDEO: MessageType = MessageType(0x09);
    /// AMF3 data message (`0x00` then AMF0 values). RTMP §7.1.2.
    pub const AMF3_DATA: MessageType = MessageType(0x0F);
    /// AMF3 shared object message (not supported). RTMP §7.1.3.
    pub const AMF3_SHARED_OBJECT: MessageType = MessageType(0x10);
    /// AMF3 command message (`0x00` then AMF0 values). RTMP §7.1.1; RFC 7425 §5.3.3.
    pub const AMF3_COMMAND: MessageType = MessageType(0x11);
    /// AMF0 data message. RTMP §7.1.2.
    pub const AMF0_DATA: MessageType = MessageType(0x12);
    /// AMF0 shared object message (not supported). RTMP §7.1.3.
    pub const AMF0_SHARED_OBJECT: MessageType = MessageType(0x13);
    /// AMF0 command message. RTMP §7.1.1.
    pub const AMF0_COMMAND: MessageType = MessageType(0x14);
    /// Aggregate message (should not be used with RTMFP). RTMP §7.1.6.
    pub const AGGREGATE: MessageType = MessageType(0x16);

    /// Whether this is an AMF0 or AMF3 command message.
    pub fn is_command(self) -> bool {
        self == Self::AMF0_COMMAND || self == Self::AMF3_COMMAND
    }

    /// Whether this is an AMF0 or AMF3 data message.
    pub fn is_data(self) -> bool {
        self == Self::AMF0_DATA || self == Self::AMF3_DATA
    }
}

/// Length of the TC message header: type (1) and timestamp (4). RFC 7425 §5.1.1.
pub const TC_HEADER_LEN: usize = 5;

/// A TC message: a borrowed view of one flow message of a TC flow. RFC 7425 §5.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcMessage<'a> {
    /// RTMP message type.
    pub kind: MessageType,
    /// Timestamp in milliseconds.
    pub timestamp: u32,
    /// The message body.
    pub payload: &'a [u8],
}

impl<'a> TcMessage<'a> {
    /// Parses a whole flow message.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FlashError> {
        let (&kind, rest) = bytes.split_first().ok_or(FlashError::UnexpectedEnd)?;
        let ts = rest.get(..4).ok_or(FlashError::UnexpectedEnd)?;
        let payload = rest.get(4..).ok_or(FlashError::UnexpectedEnd)?;
        Ok(TcMessage {
            kind: MessageType(kind),
            timestamp: u32::from_be_bytes([ts[0], ts[1], ts[2], ts[3]]),
            payload,
        })
    }

    /// Appends the message.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.reserve(TC_HEADER_LEN + self.payload.len());
        out.push(self.kind.0);
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(self.payload);
    }

    /// The message as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.emit(&mut out);
        out
    }
}

/// User control event type, RTMP §6.2 / §7.1.7 and RFC 7425 §5.2, §5.3.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventType(pub u16);

impl EventType {
    /// Stream Begin (stream ID). RTMP §7.1.7.
    pub const STREAM_BEGIN: EventType = EventType(0);
    /// Stream EOF (stream ID). RTMP §7.1.7.
    pub const STREAM_EOF: EventType = EventType(1);
    /// Stream Dry (stream ID). RTMP §7.1.7.
    pub const STREAM_DRY: EventType = EventType(2);
    /// Set Buffer Length (stream ID, milliseconds). RTMP §7.1.7.
    pub const SET_BUFFER_LENGTH: EventType = EventType(3);
    /// Stream Is Recorded (stream ID). RTMP §7.1.7.
    pub const STREAM_IS_RECORDED: EventType = EventType(4);
    /// Ping request (not used over RTMFP). RTMP §7.1.7.
    pub const PING_REQUEST: EventType = EventType(6);
    /// Ping response (not used over RTMFP). RTMP §7.1.7.
    pub const PING_RESPONSE: EventType = EventType(7);
    /// Flow synchronization (sync ID, count). RFC 7425 §5.2.
    pub const FLOW_SYNC: EventType = EventType(0x22);
    /// Set keepalive periods (server ms, peer ms). RFC 7425 §5.3.4.
    pub const SET_KEEPALIVE: EventType = EventType(0x29);
}

/// A user control event (the payload of a [`MessageType::USER_CONTROL`] message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserControl<'a> {
    /// The stream is ready. RTMP §7.1.7.
    StreamBegin(u32),
    /// Playback of the stream ended. RTMP §7.1.7.
    StreamEof(u32),
    /// No more data on the stream for now. RTMP §7.1.7.
    StreamDry(u32),
    /// The client's buffer length for a stream. RTMP §7.1.7.
    SetBufferLength {
        /// Stream ID.
        stream_id: u32,
        /// Buffer length in milliseconds.
        buffer_ms: u32,
    },
    /// The stream is a recorded stream. RTMP §7.1.7.
    StreamIsRecorded(u32),
    /// Hold delivery until `count` flows reach sync point `sync_id`. RFC 7425 §5.2.
    FlowSync {
        /// Sync point identifier.
        sync_id: u32,
        /// Number of flows that carry this sync point.
        count: u32,
    },
    /// Keepalive periods the client should use. RFC 7425 §5.3.4.
    SetKeepalive {
        /// Keepalive period towards the server, in milliseconds.
        server_ms: u32,
        /// Keepalive period towards peers, in milliseconds.
        peer_ms: u32,
    },
    /// Any other event, kept raw.
    Other {
        /// Event type.
        event: EventType,
        /// Event data after the type.
        data: &'a [u8],
    },
}

fn be32(bytes: &[u8], at: usize, event: u16) -> Result<u32, FlashError> {
    let b = at
        .checked_add(4)
        .and_then(|end| bytes.get(at..end))
        .ok_or(FlashError::InvalidUserControl(event))?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

impl<'a> UserControl<'a> {
    /// Parses a user control payload (`u16 event | data`). Bytes after the known fields of a
    /// known event are ignored.
    pub fn parse(payload: &'a [u8]) -> Result<Self, FlashError> {
        let ev = payload.get(..2).ok_or(FlashError::UnexpectedEnd)?;
        let event = EventType(u16::from_be_bytes([ev[0], ev[1]]));
        let data = payload.get(2..).unwrap_or(&[]);
        let e = event.0;
        Ok(match event {
            EventType::STREAM_BEGIN => UserControl::StreamBegin(be32(data, 0, e)?),
            EventType::STREAM_EOF => UserControl::StreamEof(be32(data, 0, e)?),
            EventType::STREAM_DRY => UserControl::StreamDry(be32(data, 0, e)?),
            EventType::STREAM_IS_RECORDED => UserControl::StreamIsRecorded(be32(data, 0, e)?),
            EventType::SET_BUFFER_LENGTH => UserControl::SetBufferLength {
                stream_id: be32(data, 0, e)?,
                buffer_ms: be32(data, 4, e)?,
            },
            EventType::FLOW_SYNC => UserControl::FlowSync {
                sync_id: be32(data, 0, e)?,
                count: be32(data, 4, e)?,
            },
            EventType::SET_KEEPALIVE => UserControl::SetKeepalive {
                server_ms: be32(data, 0, e)?,
                peer_ms: be32(data, 4, e)?,
            },
            _ => UserControl::Other { event, data },
        })
    }

    /// The event type.
    pub fn event(&self) -> EventType {
        match self {
            UserControl::StreamBegin(_) => EventType::STREAM_BEGIN,
            UserControl::StreamEof(_) => EventType::STREAM_EOF,
            UserControl::StreamDry(_) => EventType::STREAM_DRY,
            UserControl::SetBufferLength { .. } => EventType::SET_BUFFER_LENGTH,
            UserControl::StreamIsRecorded(_) => EventType::STREAM_IS_RECORDED,
            UserControl::FlowSync { .. } => EventType::FLOW_SYNC,
            UserControl::SetKeepalive { .. } => EventType::SET_KEEPALIVE,
            UserControl::Other { event, .. } => *event,
        }
    }

    /// Appends the user control payload (without the TC message header).
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.event().0.to_be_bytes());
        match *self {
            UserControl::StreamBegin(id)
            | UserControl::StreamEof(id)
            | UserControl::StreamDry(id)
            | UserControl::StreamIsRecorded(id) => out.extend_from_slice(&id.to_be_bytes()),
            UserControl::SetBufferLength {
                stream_id: a,
                buffer_ms: b,
            }
            | UserControl::FlowSync {
                sync_id: a,
                count: b,
            }
            | UserControl::SetKeepalive {
                server_ms: a,
                peer_ms: b,
            } => {
                out.extend_from_slice(&a.to_be_bytes());
                out.extend_from_slice(&b.to_be_bytes());
            }
            UserControl::Other { data, .. } => out.extend_from_slice(data),
        }
    }

    /// A whole TC message (type 0x04, the given timestamp) carrying this event.
    pub fn to_message(&self, timestamp: u32) -> Vec<u8> {
        let mut payload = Vec::new();
        self.emit(&mut payload);
        TcMessage {
            kind: MessageType::USER_CONTROL,
            timestamp,
            payload: &payload,
        }
        .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_tc_message() {
        let bytes = [0x08, 0x00, 0x00, 0x01, 0x02, 0xAF, 0x01];
        let m = TcMessage::parse(&bytes).expect("parse");
        assert_eq!(m.kind, MessageType::AUDIO);
        assert_eq!(m.timestamp, 0x0102);
        assert_eq!(m.payload, [0xAF, 0x01]);
        assert_eq!(m.to_vec(), bytes);
        let empty = TcMessage::parse(&[0x09, 0, 0, 0, 0]).expect("parse");
        assert_eq!(empty.payload, [0u8; 0]);
        assert_eq!(
            TcMessage::parse(&[0x14, 0, 0, 0]),
            Err(FlashError::UnexpectedEnd)
        );
        assert_eq!(TcMessage::parse(&[]), Err(FlashError::UnexpectedEnd));
    }

    #[test]
    fn golden_user_control() {
        // Cumulus fixture (librtmfp-cumulus-connect 015-s2c): FlowSync id 0, count 3, timestamp 0.
        let sync = [0x04, 0, 0, 0, 0, 0x00, 0x22, 0, 0, 0, 0, 0, 0, 0, 3];
        let m = TcMessage::parse(&sync).expect("parse");
        assert_eq!(m.kind, MessageType::USER_CONTROL);
        let ev = UserControl::parse(m.payload).expect("event");
        assert_eq!(
            ev,
            UserControl::FlowSync {
                sync_id: 0,
                count: 3
            }
        );
        assert_eq!(ev.to_message(0), sync);

        let cases: [(&[u8], UserControl<'_>); 6] = [
            (&[0, 0, 0, 0, 0, 1], UserControl::StreamBegin(1)),
            (&[0, 1, 0, 0, 0, 2], UserControl::StreamEof(2)),
            (&[0, 2, 0, 0, 0, 3], UserControl::StreamDry(3)),
            (
                &[0, 3, 0, 0, 0, 1, 0, 0, 0x0B, 0xB8],
                UserControl::SetBufferLength {
                    stream_id: 1,
                    buffer_ms: 3000,
                },
            ),
            (&[0, 4, 0, 0, 0, 1], UserControl::StreamIsRecorded(1)),
            (
                &[0, 0x29, 0, 0, 0x3A, 0x98, 0, 0, 0x4E, 0x20],
                UserControl::SetKeepalive {
                    server_ms: 15000,
                    peer_ms: 20000,
                },
            ),
        ];
        for (bytes, ev) in cases {
            assert_eq!(UserControl::parse(bytes), Ok(ev));
            let mut out = Vec::new();
            ev.emit(&mut out);
            assert_eq!(out, bytes);
        }
        assert_eq!(
            UserControl::parse(&[0, 6, 1, 2]),
            Ok(UserControl::Other {
                event: EventType::PING_REQUEST,
                data: &[1, 2]
            })
        );
        assert_eq!(
            UserControl::parse(&[0, 3, 0, 0, 0, 1]),
            Err(FlashError::InvalidUserControl(3))
        );
        assert_eq!(UserControl::parse(&[0]), Err(FlashError::UnexpectedEnd));
    }

    fn user_control() -> impl Strategy<Value = (u8, u32, u32, u16, Vec<u8>)> {
        (
            0u8..8,
            any::<u32>(),
            any::<u32>(),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..8),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn tc_message_round_trip(kind in any::<u8>(), timestamp in any::<u32>(),
                                 payload in proptest::collection::vec(any::<u8>(), 0..32)) {
            let m = TcMessage { kind: MessageType(kind), timestamp, payload: &payload };
            let bytes = m.to_vec();
            prop_assert_eq!(TcMessage::parse(&bytes), Ok(m));
        }

        #[test]
        fn user_control_round_trip((which, a, b, other, data) in user_control()) {
            let ev = match which {
                0 => UserControl::StreamBegin(a),
                1 => UserControl::StreamEof(a),
                2 => UserControl::StreamDry(a),
                3 => UserControl::SetBufferLength { stream_id: a, buffer_ms: b },
                4 => UserControl::StreamIsRecorded(a),
                5 => UserControl::FlowSync { sync_id: a, count: b },
                6 => UserControl::SetKeepalive { server_ms: a, peer_ms: b },
                _ => UserControl::Other {
                    // Keep clear of the event types that have typed variants.
                    event: EventType(other.max(0x100)),
                    data: &data,
                },
            };
            let msg = ev.to_message(a);
            let parsed = TcMessage::parse(&msg).expect("message");
            prop_assert_eq!(parsed.kind, MessageType::USER_CONTROL);
            prop_assert_eq!(UserControl::parse(parsed.payload), Ok(ev));
        }

        #[test]
        fn user_control_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            if let Ok(ev) = UserControl::parse(&bytes) {
                let mut out = Vec::new();
                ev.emit(&mut out);
                prop_assert!(bytes.starts_with(&out));
                prop_assert_eq!(UserControl::parse(&out), Ok(ev));
            }
        }
    }
}
