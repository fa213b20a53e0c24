//! Chunks (RFC 7016 §2.3): `type(8) | length(16) | payload`.
//!
//! Each chunk has a borrowed view struct whose `parse` reads a payload and whose [`ChunkBody`]
//! implementation writes one back. [`Chunk`] is the sum of all of them plus [`Chunk::Unknown`].
//! Parsing is syntactic only: semantic rules (which mode a chunk is allowed in, `fsnOffset <= seq`,
//! cookie lengths, and so on) belong to the layers above. Emitting either writes the whole chunk or
//! nothing.

use super::address::{Address, AddressIter};
use super::codec::{vlu_bytes_len, vlu_len, Reader, WireError, Writer};
use super::header::Mode;
use super::option::{options, split_option_list, write_marker, MARKER_LEN};
use crate::ids::{FlowId, SessionId};

/// Chunk header: type (8 bits) and payload length (16 bits) (RFC 7016 §2.3).
pub const CHUNK_HEADER_LEN: usize = 3;
/// Largest chunk payload: the length field is 16 bits (RFC 7016 §2.3).
pub const MAX_CHUNK_PAYLOAD: usize = u16::MAX as usize;

/// A chunk type byte (RFC 7016 §2.3), with a named constant for every type we know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkType(pub u8);

impl ChunkType {
    /// Ignore/Padding (RFC 7016 §2.3); skipped by the chunk iterator.
    pub const PADDING: ChunkType = ChunkType(0x00);
    /// Ping (RFC 7016 §2.3.9).
    pub const PING: ChunkType = ChunkType(0x01);
    /// Session Close Request (RFC 7016 §2.3.17).
    pub const CLOSE: ChunkType = ChunkType(0x0C);
    /// Forwarded Initiator Hello (RFC 7016 §2.3.3).
    pub const FORWARDED_IHELLO: ChunkType = ChunkType(0x0F);
    /// User Data (RFC 7016 §2.3.11).
    pub const USER_DATA: ChunkType = ChunkType(0x10);
    /// Next User Data (RFC 7016 §2.3.12).
    pub const NEXT_USER_DATA: ChunkType = ChunkType(0x11);
    /// Buffer Probe (RFC 7016 §2.3.15).
    pub const BUFFER_PROBE: ChunkType = ChunkType(0x18);
    /// Initiator Hello (RFC 7016 §2.3.2).
    pub const IHELLO: ChunkType = ChunkType(0x30);
    /// Initiator Initial Keying (RFC 7016 §2.3.7).
    pub const IIKEYING: ChunkType = ChunkType(0x38);
    /// Ping Reply (RFC 7016 §2.3.10).
    pub const PING_REPLY: ChunkType = ChunkType(0x41);
    /// Session Close Acknowledgement (RFC 7016 §2.3.18).
    pub const CLOSE_ACK: ChunkType = ChunkType(0x4C);
    /// Data Acknowledgement Bitmap (RFC 7016 §2.3.13).
    pub const BITMAP_ACK: ChunkType = ChunkType(0x50);
    /// Data Acknowledgement Ranges (RFC 7016 §2.3.14).
    pub const RANGE_ACK: ChunkType = ChunkType(0x51);
    /// Flow Exception Report (RFC 7016 §2.3.16).
    pub const FLOW_EXCEPTION_REPORT: ChunkType = ChunkType(0x5E);
    /// Responder Hello (RFC 7016 §2.3.4).
    pub const RHELLO: ChunkType = ChunkType(0x70);
    /// Responder Redirect (RFC 7016 §2.3.5).
    pub const REDIRECT: ChunkType = ChunkType(0x71);
    /// Responder Initial Keying (RFC 7016 §2.3.8).
    pub const RIKEYING: ChunkType = ChunkType(0x78);
    /// RHello Cookie Change (RFC 7016 §2.3.6).
    pub const COOKIE_CHANGE: ChunkType = ChunkType(0x79);
    /// Packet Fragment (RFC 7016 §2.3.1).
    pub const PACKET_FRAGMENT: ChunkType = ChunkType(0x7F);
    /// ECN Report (experimental, rtmfp-cpp only; not in RFC 7016).
    pub const ECN_REPORT: ChunkType = ChunkType(0xEC);
    /// Ignore/Padding (RFC 7016 §2.3); the chunk iterator stops at it, as it is the 0xFF fill.
    pub const END_PADDING: ChunkType = ChunkType(0xFF);

    /// The chunk's name, or `"Unknown"`.
    pub fn name(self) -> &'static str {
        match self {
            ChunkType::PADDING | ChunkType::END_PADDING => "Padding",
            ChunkType::PING => "Ping",
            ChunkType::CLOSE => "SessionCloseRequest",
            ChunkType::FORWARDED_IHELLO => "FIHello",
            ChunkType::USER_DATA => "UserData",
            ChunkType::NEXT_USER_DATA => "NextUserData",
            ChunkType::BUFFER_PROBE => "BufferProbe",
            ChunkType::IHELLO => "IHello",
            ChunkType::IIKEYING => "IIKeying",
            ChunkType::PING_REPLY => "PingReply",
            ChunkType::CLOSE_ACK => "SessionCloseAck",
            ChunkType::BITMAP_ACK => "BitmapAck",
            ChunkType::RANGE_ACK => "RangeAck",
            ChunkType::FLOW_EXCEPTION_REPORT => "FlowExceptionReport",
            ChunkType::RHELLO => "RHello",
            ChunkType::REDIRECT => "Redirect",
            ChunkType::RIKEYING => "RIKeying",
            ChunkType::COOKIE_CHANGE => "CookieChange",
            ChunkType::PACKET_FRAGMENT => "PacketFragment",
            ChunkType::ECN_REPORT => "ECNReport",
            _ => "Unknown",
        }
    }

    /// True for the handshake chunks that are allowed only in startup (mode 3) packets: IHello,
    /// RHello, Redirect, Cookie Change, IIKeying and RIKeying (RFC 7016 §2.3.2–§2.3.8).
    pub fn is_startup(self) -> bool {
        matches!(
            self,
            ChunkType::IHELLO
                | ChunkType::RHELLO
                | ChunkType::REDIRECT
                | ChunkType::COOKIE_CHANGE
                | ChunkType::IIKEYING
                | ChunkType::RIKEYING
        )
    }

    /// True for the chunks that are allowed only in an open session (mode 1 or 2): Ping, Ping Reply,
    /// User Data, Next User Data, both acks, Buffer Probe, Flow Exception Report, Close, Close Ack,
    /// Forwarded IHello (RFC 7016 §2.3.3, §2.3.9–§2.3.18) and the ECN Report.
    pub fn is_session(self) -> bool {
        matches!(
            self,
            ChunkType::PING
                | ChunkType::PING_REPLY
                | ChunkType::USER_DATA
                | ChunkType::NEXT_USER_DATA
                | ChunkType::BITMAP_ACK
                | ChunkType::RANGE_ACK
                | ChunkType::BUFFER_PROBE
                | ChunkType::FLOW_EXCEPTION_REPORT
                | ChunkType::CLOSE
                | ChunkType::CLOSE_ACK
                | ChunkType::FORWARDED_IHELLO
                | ChunkType::ECN_REPORT
        )
    }

    /// Whether a chunk of this type may be acted on in a packet of `mode` (RFC 7016 §2.3: a receiver
    /// MUST ignore chunks in a packet of the wrong mode). Packet fragments, padding and unknown types
    /// are reported as allowed in any mode (unknown types are ignored anyway).
    pub fn allowed_in(self, mode: Mode) -> bool {
        if self.is_startup() {
            mode == Mode::Startup
        } else if self.is_session() {
            mode != Mode::Startup
        } else {
            true
        }
    }
}

/// A chunk payload type that can be written. Implemented by every chunk view.
pub trait ChunkBody {
    /// The chunk type byte.
    const TYPE: ChunkType;

    /// Payload size in bytes, without the chunk header.
    fn payload_len(&self) -> usize;

    /// Write the payload only (no chunk header), exactly [`ChunkBody::payload_len`] bytes. Use
    /// [`ChunkBody::emit`] to write a whole chunk.
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError>;

    /// Check that the view holds values the wire can carry and that parse back to it.
    fn validate(&self) -> Result<(), WireError> {
        Ok(())
    }

    /// Whole chunk size, header included.
    fn encoded_len(&self) -> usize {
        CHUNK_HEADER_LEN + self.payload_len()
    }

    /// Write the whole chunk. Writes nothing on error.
    fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        self.validate()?;
        emit_chunk(w, Self::TYPE, self.payload_len(), |w| self.emit_payload(w))
    }
}

/// Write a chunk header for `payload_len` bytes, then the payload through `body`; nothing on error.
fn emit_chunk(
    w: &mut Writer<'_>,
    kind: ChunkType,
    payload_len: usize,
    body: impl FnOnce(&mut Writer<'_>) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let len = u16::try_from(payload_len).map_err(|_| WireError::InvalidValue {
        field: "chunk length",
    })?;
    w.ensure(CHUNK_HEADER_LEN + payload_len)?;
    w.put_u8(kind.0)?;
    w.put_u16(len)?;
    let start = w.position();
    body(w)?;
    debug_assert_eq!(
        w.position() - start,
        payload_len,
        "{} payload length",
        kind.name()
    );
    Ok(())
}

/// Packet Fragment (RFC 7016 §2.3.1): a piece of a plain packet too large for the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketFragment<'a> {
    /// More fragments follow (flag 0x80).
    pub more: bool,
    /// Identifies the packet being fragmented.
    pub packet_id: u64,
    /// Index of this fragment; the first is 0.
    pub fragment_num: u64,
    /// The fragment bytes (never empty).
    pub fragment: &'a [u8],
}

/// Packet Fragment flag: more fragments follow (RFC 7016 §2.3.1).
const FRAGMENT_MORE: u8 = 0x80;
/// Size of a flags byte (Packet Fragment, User Data; RFC 7016 §2.3.1, §2.3.11).
const FLAGS_LEN: usize = 1;
/// Size of a session ID field (IIKeying, RIKeying; RFC 7016 §2.3.7, §2.3.8).
const SESSION_ID_LEN: usize = 4;
/// Size of the ECN Report payload (rtmfp-cpp, experimental).
const ECN_REPORT_LEN: usize = 1;
/// Acknowledged sequence numbers per bitmap byte (RFC 7016 §2.3.13).
const BITS_PER_BITMAP_BYTE: u64 = 8;

impl<'a> PacketFragment<'a> {
    /// Parse a Packet Fragment payload. Reserved flag bits are ignored.
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let flags = r.read_u8()?;
        let packet_id = r.read_vlu()?;
        let fragment_num = r.read_vlu()?;
        let fragment = r.rest();
        if fragment.is_empty() {
            return Err(WireError::InvalidChunk {
                kind: ChunkType::PACKET_FRAGMENT.0,
                reason: "empty fragment",
            });
        }
        Ok(PacketFragment {
            more: flags & FRAGMENT_MORE != 0,
            packet_id,
            fragment_num,
            fragment,
        })
    }
}

impl ChunkBody for PacketFragment<'_> {
    const TYPE: ChunkType = ChunkType::PACKET_FRAGMENT;
    fn payload_len(&self) -> usize {
        FLAGS_LEN + vlu_len(self.packet_id) + vlu_len(self.fragment_num) + self.fragment.len()
    }
    fn validate(&self) -> Result<(), WireError> {
        if self.fragment.is_empty() {
            return Err(WireError::InvalidValue {
                field: "packet fragment",
            });
        }
        Ok(())
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_u8(if self.more { FRAGMENT_MORE } else { 0 })?;
        w.put_vlu(self.packet_id)?;
        w.put_vlu(self.fragment_num)?;
        w.put_bytes(self.fragment)
    }
}

/// Initiator Hello (RFC 7016 §2.3.2): `epdLen VLU | EPD | tag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IHello<'a> {
    /// Endpoint discriminator (an option sequence, RFC 7425 §4.4).
    pub epd: &'a [u8],
    /// Initiator tag (the rest of the chunk; Flash uses 16 bytes).
    pub tag: &'a [u8],
}

impl<'a> IHello<'a> {
    /// Parse an IHello payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let epd = r.read_vlu_bytes()?;
        Ok(IHello { epd, tag: r.rest() })
    }
}

impl ChunkBody for IHello<'_> {
    const TYPE: ChunkType = ChunkType::IHELLO;
    fn payload_len(&self) -> usize {
        vlu_bytes_len(self.epd.len()) + self.tag.len()
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_vlu_bytes(self.epd)?;
        w.put_bytes(self.tag)
    }
}

/// Forwarded Initiator Hello (RFC 7016 §2.3.3): `epdLen VLU | EPD | replyAddress | tag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedIHello<'a> {
    /// Endpoint discriminator of the original IHello.
    pub epd: &'a [u8],
    /// Where the original IHello came from.
    pub reply_address: Address,
    /// The original initiator tag (rest of the chunk).
    pub tag: &'a [u8],
}

impl<'a> ForwardedIHello<'a> {
    /// Parse a Forwarded IHello payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let epd = r.read_vlu_bytes()?;
        let reply_address = Address::parse(&mut r)?;
        Ok(ForwardedIHello {
            epd,
            reply_address,
            tag: r.rest(),
        })
    }
}

impl ChunkBody for ForwardedIHello<'_> {
    const TYPE: ChunkType = ChunkType::FORWARDED_IHELLO;
    fn payload_len(&self) -> usize {
        vlu_bytes_len(self.epd.len()) + self.reply_address.encoded_len() + self.tag.len()
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_vlu_bytes(self.epd)?;
        self.reply_address.emit(w)?;
        w.put_bytes(self.tag)
    }
}

/// Responder Hello (RFC 7016 §2.3.4): `tagLen VLU | tagEcho | cookieLen VLU | cookie | certificate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RHello<'a> {
    /// Echo of the IHello tag.
    pub tag_echo: &'a [u8],
    /// Responder cookie, to be echoed in IIKeying.
    pub cookie: &'a [u8],
    /// Responder certificate (the rest of the chunk; an option sequence in the Flash profile).
    pub certificate: &'a [u8],
}

impl<'a> RHello<'a> {
    /// Parse an RHello payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let tag_echo = r.read_vlu_bytes()?;
        let cookie = r.read_vlu_bytes()?;
        Ok(RHello {
            tag_echo,
            cookie,
            certificate: r.rest(),
        })
    }
}

impl ChunkBody for RHello<'_> {
    const TYPE: ChunkType = ChunkType::RHELLO;
    fn payload_len(&self) -> usize {
        vlu_bytes_len(self.tag_echo.len())
            + vlu_bytes_len(self.cookie.len())
            + self.certificate.len()
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_vlu_bytes(self.tag_echo)?;
        w.put_vlu_bytes(self.cookie)?;
        w.put_bytes(self.certificate)
    }
}

/// Responder Redirect (RFC 7016 §2.3.5): `tagLen VLU | tagEcho | Address*`. With no addresses it is
/// an "Implied Redirect" to the packet's source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect<'a> {
    /// Echo of the IHello tag.
    pub tag_echo: &'a [u8],
    /// The encoded addresses (checked when parsed); iterate with [`Redirect::addresses`].
    pub addresses: &'a [u8],
}

impl<'a> Redirect<'a> {
    /// Parse a Redirect payload, checking every address.
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let tag_echo = r.read_vlu_bytes()?;
        let addresses = r.rest();
        AddressIter::new(addresses).try_for_each(|a| a.map(drop))?;
        Ok(Redirect {
            tag_echo,
            addresses,
        })
    }

    /// The redirect addresses, in order.
    pub fn addresses(&self) -> AddressIter<'a> {
        AddressIter::new(self.addresses)
    }

    /// Encoded size of a Redirect chunk (header included) with this tag and these addresses.
    pub fn encoded_len_with(tag_echo: &[u8], addresses: &[Address]) -> usize {
        CHUNK_HEADER_LEN
            + vlu_bytes_len(tag_echo.len())
            + addresses.iter().map(Address::encoded_len).sum::<usize>()
    }

    /// Write a Redirect chunk from a tag echo and a list of addresses. Writes nothing on error.
    pub fn emit_with(
        w: &mut Writer<'_>,
        tag_echo: &[u8],
        addresses: &[Address],
    ) -> Result<(), WireError> {
        let len = Self::encoded_len_with(tag_echo, addresses) - CHUNK_HEADER_LEN;
        emit_chunk(w, ChunkType::REDIRECT, len, |w| {
            w.put_vlu_bytes(tag_echo)?;
            addresses.iter().try_for_each(|a| a.emit(w))
        })
    }
}

impl ChunkBody for Redirect<'_> {
    const TYPE: ChunkType = ChunkType::REDIRECT;
    fn payload_len(&self) -> usize {
        vlu_bytes_len(self.tag_echo.len()) + self.addresses.len()
    }
    fn validate(&self) -> Result<(), WireError> {
        self.addresses().try_for_each(|a| a.map(drop))
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_vlu_bytes(self.tag_echo)?;
        w.put_bytes(self.addresses)
    }
}

/// RHello Cookie Change (RFC 7016 §2.3.6): `oldCookieLen VLU | oldCookie | newCookie`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieChange<'a> {
    /// The cookie the initiator echoed.
    pub old_cookie: &'a [u8],
    /// The cookie to use instead (rest of the chunk).
    pub new_cookie: &'a [u8],
}

impl<'a> CookieChange<'a> {
    /// Parse a Cookie Change payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let old_cookie = r.read_vlu_bytes()?;
        Ok(CookieChange {
            old_cookie,
            new_cookie: r.rest(),
        })
    }
}

impl ChunkBody for CookieChange<'_> {
    const TYPE: ChunkType = ChunkType::COOKIE_CHANGE;
    fn payload_len(&self) -> usize {
        vlu_bytes_len(self.old_cookie.len()) + self.new_cookie.len()
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_vlu_bytes(self.old_cookie)?;
        w.put_bytes(self.new_cookie)
    }
}

/// Initiator Initial Keying (RFC 7016 §2.3.7): `initiatorSessionID u32 | cookieLen VLU | cookieEcho |
/// certLen VLU | certificate | skicLen VLU | SKIC | signature`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IIKeying<'a> {
    /// The session ID the initiator will receive on (ISID).
    pub initiator_session_id: SessionId,
    /// Echo of the RHello cookie.
    pub cookie_echo: &'a [u8],
    /// Initiator certificate (its SHA-256 is the Flash peer ID).
    pub certificate: &'a [u8],
    /// Session key initiator component (an option sequence in the Flash profile).
    pub skic: &'a [u8],
    /// Signature (rest of the chunk; the Flash profile sends `0x58`).
    pub signature: &'a [u8],
}

impl<'a> IIKeying<'a> {
    /// Parse an IIKeying payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let initiator_session_id = SessionId(r.read_u32()?);
        let cookie_echo = r.read_vlu_bytes()?;
        let certificate = r.read_vlu_bytes()?;
        let skic = r.read_vlu_bytes()?;
        Ok(IIKeying {
            initiator_session_id,
            cookie_echo,
            certificate,
            skic,
            signature: r.rest(),
        })
    }
}

impl ChunkBody for IIKeying<'_> {
    const TYPE: ChunkType = ChunkType::IIKEYING;
    fn payload_len(&self) -> usize {
        SESSION_ID_LEN
            + vlu_bytes_len(self.cookie_echo.len())
            + vlu_bytes_len(self.certificate.len())
            + vlu_bytes_len(self.skic.len())
            + self.signature.len()
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_u32(self.initiator_session_id.0)?;
        w.put_vlu_bytes(self.cookie_echo)?;
        w.put_vlu_bytes(self.certificate)?;
        w.put_vlu_bytes(self.skic)?;
        w.put_bytes(self.signature)
    }
}

/// Responder Initial Keying (RFC 7016 §2.3.8): `responderSessionID u32 | skrcLen VLU | SKRC |
/// signature`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RIKeying<'a> {
    /// The session ID the responder will receive on (RSID).
    pub responder_session_id: SessionId,
    /// Session key responder component (an option sequence in the Flash profile).
    pub skrc: &'a [u8],
    /// Signature (rest of the chunk; the Flash profile sends `0x58`).
    pub signature: &'a [u8],
}

impl<'a> RIKeying<'a> {
    /// Parse an RIKeying payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let responder_session_id = SessionId(r.read_u32()?);
        let skrc = r.read_vlu_bytes()?;
        Ok(RIKeying {
            responder_session_id,
            skrc,
            signature: r.rest(),
        })
    }
}

impl ChunkBody for RIKeying<'_> {
    const TYPE: ChunkType = ChunkType::RIKEYING;
    fn payload_len(&self) -> usize {
        SESSION_ID_LEN + vlu_bytes_len(self.skrc.len()) + self.signature.len()
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_u32(self.responder_session_id.0)?;
        w.put_vlu_bytes(self.skrc)?;
        w.put_bytes(self.signature)
    }
}

/// Ping (RFC 7016 §2.3.9): an arbitrary body to be echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping<'a> {
    /// The message to echo (may be empty).
    pub body: &'a [u8],
}

impl ChunkBody for Ping<'_> {
    const TYPE: ChunkType = ChunkType::PING;
    fn payload_len(&self) -> usize {
        self.body.len()
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_bytes(self.body)
    }
}

/// Ping Reply (RFC 7016 §2.3.10): the Ping body, unaltered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingReply<'a> {
    /// The echoed message.
    pub body: &'a [u8],
}

impl ChunkBody for PingReply<'_> {
    const TYPE: ChunkType = ChunkType::PING_REPLY;
    fn payload_len(&self) -> usize {
        self.body.len()
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_bytes(self.body)
    }
}

/// User Data flag: an option list follows the header fields (RFC 7016 §2.3.11).
const UD_FLAG_OPT: u8 = 0x80;
/// User Data flag bits holding the fragment position (RFC 7016 §2.3.11).
const UD_FRA_MASK: u8 = 0x30;
/// FRA value: whole message (RFC 7016 §2.3.11).
const UD_FRA_WHOLE: u8 = 0x00;
/// FRA value: first fragment (RFC 7016 §2.3.11).
const UD_FRA_BEGIN: u8 = 0x10;
/// FRA value: last fragment (RFC 7016 §2.3.11).
const UD_FRA_END: u8 = 0x20;
/// FRA value: middle fragment (RFC 7016 §2.3.11).
const UD_FRA_MIDDLE: u8 = 0x30;
/// User Data flag: abandoned (RFC 7016 §2.3.11).
const UD_FLAG_ABN: u8 = 0x02;
/// User Data flag: final sequence number of the flow (RFC 7016 §2.3.11).
const UD_FLAG_FIN: u8 = 0x01;

/// Where a User Data fragment sits in its message (RFC 7016 §2.3.11, FRA bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Fragment {
    /// The whole message (0x00).
    #[default]
    Whole = UD_FRA_WHOLE,
    /// The first fragment; more follow (0x10).
    Begin = UD_FRA_BEGIN,
    /// The last fragment (0x20).
    End = UD_FRA_END,
    /// A middle fragment (0x30).
    Middle = UD_FRA_MIDDLE,
}

impl Fragment {
    /// Decode the FRA bits of a flags byte.
    pub fn from_bits(flags: u8) -> Self {
        match flags & UD_FRA_MASK {
            UD_FRA_BEGIN => Fragment::Begin,
            UD_FRA_END => Fragment::End,
            UD_FRA_MIDDLE => Fragment::Middle,
            _ => Fragment::Whole,
        }
    }
}

/// Decoded User Data flags, except OPT, which is carried by the presence of options
/// (RFC 7016 §2.3.11). Reserved bits are ignored when parsing and zero when emitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UserDataFlags {
    /// Fragment position.
    pub fragment: Fragment,
    /// ABN: the fragment is abandoned; any data present must be ignored.
    pub abandoned: bool,
    /// FIN: this is the last sequence number of the flow.
    pub fin: bool,
}

impl UserDataFlags {
    /// Decode a flags byte (the OPT bit is not part of the result).
    pub fn from_bits(flags: u8) -> Self {
        UserDataFlags {
            fragment: Fragment::from_bits(flags),
            abandoned: flags & UD_FLAG_ABN != 0,
            fin: flags & UD_FLAG_FIN != 0,
        }
    }

    /// Encode the flags byte, with OPT set if `has_options`.
    pub fn to_bits(self, has_options: bool) -> u8 {
        let mut f = self.fragment as u8;
        if has_options {
            f |= UD_FLAG_OPT;
        }
        if self.abandoned {
            f |= UD_FLAG_ABN;
        }
        if self.fin {
            f |= UD_FLAG_FIN;
        }
        f
    }
}

/// Read the optional option list of a User Data or Next User Data chunk; returns the options
/// without their marker.
fn read_user_data_options<'a>(
    flags: u8,
    r: &mut Reader<'a>,
) -> Result<Option<&'a [u8]>, WireError> {
    if flags & UD_FLAG_OPT == 0 {
        return Ok(None);
    }
    let (list, after) = split_option_list(r.rest())?;
    *r = Reader::new(after);
    Ok(Some(list))
}

/// Encoded size of an optional option list plus its marker.
fn user_data_options_len(opts: Option<&[u8]>) -> usize {
    opts.map_or(0, |o| o.len() + MARKER_LEN)
}

/// Check that an option list (without marker) is well formed and holds no marker.
fn validate_user_data_options(opts: Option<&[u8]>) -> Result<(), WireError> {
    if let Some(list) = opts {
        let mut it = options(list);
        it.by_ref().try_for_each(|o| o.map(drop))?;
        if it.marker_seen() {
            return Err(WireError::InvalidValue {
                field: "user data options",
            });
        }
    }
    Ok(())
}

/// Write an optional option list followed by its marker.
fn write_user_data_options(w: &mut Writer<'_>, opts: Option<&[u8]>) -> Result<(), WireError> {
    if let Some(list) = opts {
        w.put_bytes(list)?;
        write_marker(w)?;
    }
    Ok(())
}

/// User Data (RFC 7016 §2.3.11): `flags | flowID VLU | seq VLU | fsnOffset VLU | [options 00] | data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserData<'a> {
    /// Decoded flags.
    pub flags: UserDataFlags,
    /// The sending flow.
    pub flow_id: FlowId,
    /// Sequence number of this fragment.
    pub seq: u64,
    /// `seq - fsnOffset` is the forward sequence number.
    pub fsn_offset: u64,
    /// The option list without its end marker, present when the OPT flag was set; iterate it with
    /// [`options`](crate::wire::options).
    pub options: Option<&'a [u8]>,
    /// The fragment's data.
    pub data: &'a [u8],
}

impl<'a> UserData<'a> {
    /// Parse a User Data payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let flags = r.read_u8()?;
        let flow_id = FlowId(r.read_vlu()?);
        let seq = r.read_vlu()?;
        let fsn_offset = r.read_vlu()?;
        let options = read_user_data_options(flags, &mut r)?;
        Ok(UserData {
            flags: UserDataFlags::from_bits(flags),
            flow_id,
            seq,
            fsn_offset,
            options,
            data: r.rest(),
        })
    }

    /// The forward sequence number `seq - fsnOffset`, or `None` if fsnOffset exceeds seq.
    pub fn forward_sequence_number(&self) -> Option<u64> {
        self.seq.checked_sub(self.fsn_offset)
    }
}

impl ChunkBody for UserData<'_> {
    const TYPE: ChunkType = ChunkType::USER_DATA;
    fn payload_len(&self) -> usize {
        FLAGS_LEN
            + vlu_len(self.flow_id.0)
            + vlu_len(self.seq)
            + vlu_len(self.fsn_offset)
            + user_data_options_len(self.options)
            + self.data.len()
    }
    fn validate(&self) -> Result<(), WireError> {
        validate_user_data_options(self.options)
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_u8(self.flags.to_bits(self.options.is_some()))?;
        w.put_vlu(self.flow_id.0)?;
        w.put_vlu(self.seq)?;
        w.put_vlu(self.fsn_offset)?;
        write_user_data_options(w, self.options)?;
        w.put_bytes(self.data)
    }
}

/// A User Data or Next User Data chunk whose data is written in two pieces: the chunk's own
/// `data`, then `tail`. The wire bytes are those of the chunk with the two concatenated; it lets
/// a fragment of a shared payload (an inline head and a shared body) go into a packet without an
/// intermediate copy. Data is the last field of both chunk types (RFC 7016 §2.3.11, §2.3.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitData<'a, C> {
    /// The chunk, holding the first piece of the data.
    pub chunk: C,
    /// The rest of the data.
    pub tail: &'a [u8],
}

impl<C: ChunkBody + UserDataLike> ChunkBody for SplitData<'_, C> {
    const TYPE: ChunkType = C::TYPE;
    fn payload_len(&self) -> usize {
        self.chunk.payload_len() + self.tail.len()
    }
    fn validate(&self) -> Result<(), WireError> {
        self.chunk.validate()
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        self.chunk.emit_payload(w)?;
        w.put_bytes(self.tail)
    }
}

/// The chunks whose payload ends with their data, so that more data can follow it
/// ([`SplitData`]).
pub trait UserDataLike {}
impl UserDataLike for UserData<'_> {}
impl UserDataLike for NextUserData<'_> {}

/// Next User Data (RFC 7016 §2.3.12): `flags | [options 00] | data`, continuing the flow of the
/// preceding User Data or Next User Data chunk in the same packet with sequence number + 1 (and
/// fsnOffset + 1). The caller tracks that context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextUserData<'a> {
    /// Decoded flags.
    pub flags: UserDataFlags,
    /// The option list without its end marker, present when the OPT flag was set.
    pub options: Option<&'a [u8]>,
    /// The fragment's data.
    pub data: &'a [u8],
}

impl<'a> NextUserData<'a> {
    /// Parse a Next User Data payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let flags = r.read_u8()?;
        let options = read_user_data_options(flags, &mut r)?;
        Ok(NextUserData {
            flags: UserDataFlags::from_bits(flags),
            options,
            data: r.rest(),
        })
    }
}

impl ChunkBody for NextUserData<'_> {
    const TYPE: ChunkType = ChunkType::NEXT_USER_DATA;
    fn payload_len(&self) -> usize {
        FLAGS_LEN + user_data_options_len(self.options) + self.data.len()
    }
    fn validate(&self) -> Result<(), WireError> {
        validate_user_data_options(self.options)
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_u8(self.flags.to_bits(self.options.is_some()))?;
        write_user_data_options(w, self.options)?;
        w.put_bytes(self.data)
    }
}

/// Read the common head of both acknowledgement chunks: flow ID, buffer blocks, cumulative ack.
fn read_ack_head(r: &mut Reader<'_>) -> Result<(FlowId, u64, u64), WireError> {
    Ok((FlowId(r.read_vlu()?), r.read_vlu()?, r.read_vlu()?))
}

/// Encoded size of the common acknowledgement head.
fn ack_head_len(flow_id: FlowId, buffer_blocks: u64, cum_ack: u64) -> usize {
    vlu_len(flow_id.0) + vlu_len(buffer_blocks) + vlu_len(cum_ack)
}

/// Check that `ranges` are ascending, disjoint, separated by at least one missing sequence number,
/// and all above `cum_ack + 1` (RFC 7016 §2.3.13, §2.3.14). Yields `(gap - 1, len - 1)` per range,
/// i.e. the Range Ack pair.
fn range_pairs(
    cum_ack: u64,
    ranges: &[(u64, u64)],
) -> impl Iterator<Item = Result<(u64, u64), WireError>> + '_ {
    let mut cursor = cum_ack;
    ranges.iter().map(move |&(from, to)| {
        let bad = WireError::InvalidValue {
            field: "ack ranges",
        };
        let lowest = cursor.checked_add(2).ok_or(bad)?;
        if from < lowest || to < from {
            return Err(bad);
        }
        cursor = to;
        Ok((from - lowest, to - from))
    })
}

/// Data Acknowledgement Bitmap (RFC 7016 §2.3.13): `flowID VLU | bufferBlocksAvailable VLU |
/// cumulativeAck VLU | bitmap`. Bit k of bitmap byte i acknowledges `cumAck + 2 + 8·i + k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapAck<'a> {
    /// The flow being acknowledged (the far end's sending flow).
    pub flow_id: FlowId,
    /// Receive window in 1024-byte blocks.
    pub buffer_blocks: u64,
    /// Everything from 0 to this sequence number is acknowledged.
    pub cum_ack: u64,
    /// The bitmap bytes.
    pub bitmap: &'a [u8],
}

impl<'a> BitmapAck<'a> {
    /// Parse a Bitmap Ack payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let (flow_id, buffer_blocks, cum_ack) = read_ack_head(&mut r)?;
        Ok(BitmapAck {
            flow_id,
            buffer_blocks,
            cum_ack,
            bitmap: r.rest(),
        })
    }

    /// The acknowledged ranges above `cum_ack` (`0..=cum_ack` is acknowledged too), as inclusive
    /// `(from, to)` pairs in ascending order. Bits past `u64::MAX` are ignored.
    pub fn ranges(&self) -> BitmapRanges<'a> {
        BitmapRanges {
            bitmap: self.bitmap,
            base: self.cum_ack.checked_add(2),
            bit: 0,
        }
    }

    /// Encoded size of a Bitmap Ack chunk (header included) for these ranges, or an error if the
    /// ranges are not ascending, disjoint and above `cum_ack + 1`.
    pub fn encoded_len_for(
        flow_id: FlowId,
        buffer_blocks: u64,
        cum_ack: u64,
        ranges: &[(u64, u64)],
    ) -> Result<usize, WireError> {
        Ok(CHUNK_HEADER_LEN
            + ack_head_len(flow_id, buffer_blocks, cum_ack)
            + Self::bitmap_len(cum_ack, ranges)?)
    }

    fn bitmap_len(cum_ack: u64, ranges: &[(u64, u64)]) -> Result<usize, WireError> {
        range_pairs(cum_ack, ranges).try_for_each(|p| p.map(drop))?;
        match ranges.last() {
            None => Ok(0),
            Some(&(_, to)) => {
                // Validated above: to >= cum_ack + 2.
                let bits = to - cum_ack - 1;
                usize::try_from(bits.div_ceil(BITS_PER_BITMAP_BYTE)).map_err(|_| {
                    WireError::InvalidValue {
                        field: "ack ranges",
                    }
                })
            }
        }
    }

    /// Write a Bitmap Ack chunk from a list of received ranges above `cum_ack + 1` (ascending,
    /// disjoint, inclusive). Writes nothing on error.
    pub fn emit_from_ranges(
        w: &mut Writer<'_>,
        flow_id: FlowId,
        buffer_blocks: u64,
        cum_ack: u64,
        ranges: &[(u64, u64)],
    ) -> Result<(), WireError> {
        let bitmap_len = Self::bitmap_len(cum_ack, ranges)?;
        let len = ack_head_len(flow_id, buffer_blocks, cum_ack) + bitmap_len;
        emit_chunk(w, ChunkType::BITMAP_ACK, len, |w| {
            w.put_vlu(flow_id.0)?;
            w.put_vlu(buffer_blocks)?;
            w.put_vlu(cum_ack)?;
            let mut ranges = ranges.iter().peekable();
            for byte_index in 0..bitmap_len as u64 {
                let mut byte = 0u8;
                for k in 0..BITS_PER_BITMAP_BYTE {
                    // Bits past u64::MAX stay clear.
                    let Some(seq) = cum_ack
                        .checked_add(2)
                        .and_then(|base| base.checked_add(byte_index * BITS_PER_BITMAP_BYTE + k))
                    else {
                        continue;
                    };
                    while ranges.peek().is_some_and(|&&(_, to)| to < seq) {
                        ranges.next();
                    }
                    if ranges.peek().is_some_and(|&&(from, _)| from <= seq) {
                        byte |= 1 << k;
                    }
                }
                w.put_u8(byte)?;
            }
            Ok(())
        })
    }
}

impl ChunkBody for BitmapAck<'_> {
    const TYPE: ChunkType = ChunkType::BITMAP_ACK;
    fn payload_len(&self) -> usize {
        ack_head_len(self.flow_id, self.buffer_blocks, self.cum_ack) + self.bitmap.len()
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_vlu(self.flow_id.0)?;
        w.put_vlu(self.buffer_blocks)?;
        w.put_vlu(self.cum_ack)?;
        w.put_bytes(self.bitmap)
    }
}

/// Iterator over the ranges acknowledged by a Bitmap Ack's bitmap.
#[derive(Debug, Clone)]
pub struct BitmapRanges<'a> {
    bitmap: &'a [u8],
    /// Sequence number of bit 0, or `None` if it overflows.
    base: Option<u64>,
    /// Next bit to look at.
    bit: u64,
}

impl BitmapRanges<'_> {
    fn is_set(&self, bit: u64) -> bool {
        let byte = usize::try_from(bit / BITS_PER_BITMAP_BYTE)
            .ok()
            .and_then(|i| self.bitmap.get(i));
        byte.is_some_and(|b| b & (1 << (bit % BITS_PER_BITMAP_BYTE)) != 0)
    }
}

impl Iterator for BitmapRanges<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let base = self.base?;
        let total = (self.bitmap.len() as u64).saturating_mul(BITS_PER_BITMAP_BYTE);
        while self.bit < total && !self.is_set(self.bit) {
            self.bit += 1;
        }
        if self.bit >= total {
            return None;
        }
        let start = self.bit;
        while self.bit < total && self.is_set(self.bit) {
            self.bit += 1;
        }
        let from = base.checked_add(start);
        let to = base.checked_add(self.bit - 1);
        match (from, to) {
            (Some(from), Some(to)) => Some((from, to)),
            (Some(from), None) => {
                self.base = None;
                Some((from, u64::MAX))
            }
            _ => {
                self.base = None;
                None
            }
        }
    }
}

/// Data Acknowledgement Ranges (RFC 7016 §2.3.14): `flowID VLU | bufferBlocksAvailable VLU |
/// cumulativeAck VLU | {holesMinusOne VLU, receivedMinusOne VLU}*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeAck<'a> {
    /// The flow being acknowledged (the far end's sending flow).
    pub flow_id: FlowId,
    /// Receive window in 1024-byte blocks.
    pub buffer_blocks: u64,
    /// Everything from 0 to this sequence number is acknowledged.
    pub cum_ack: u64,
    /// The encoded range pairs; iterate with [`RangeAck::ranges`].
    pub pairs: &'a [u8],
}

impl<'a> RangeAck<'a> {
    /// Parse a Range Ack payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let (flow_id, buffer_blocks, cum_ack) = read_ack_head(&mut r)?;
        Ok(RangeAck {
            flow_id,
            buffer_blocks,
            cum_ack,
            pairs: r.rest(),
        })
    }

    /// The acknowledged ranges above `cum_ack` (`0..=cum_ack` is acknowledged too), as inclusive
    /// `(from, to)` pairs in ascending order. A truncated last pair is ignored (RFC 7016 §2.3.14);
    /// iteration also stops at a malformed VLU or at a range past `u64::MAX`.
    pub fn ranges(&self) -> RangeAckRanges<'a> {
        RangeAckRanges {
            reader: Reader::new(self.pairs),
            cursor: Some(self.cum_ack),
        }
    }

    /// Encoded size of a Range Ack chunk (header included) carrying all of `ranges`, or an error if
    /// they are not ascending, disjoint and above `cum_ack + 1`.
    pub fn encoded_len_for(
        flow_id: FlowId,
        buffer_blocks: u64,
        cum_ack: u64,
        ranges: &[(u64, u64)],
    ) -> Result<usize, WireError> {
        let mut len = CHUNK_HEADER_LEN + ack_head_len(flow_id, buffer_blocks, cum_ack);
        for pair in range_pairs(cum_ack, ranges) {
            let (holes, received) = pair?;
            len += vlu_len(holes) + vlu_len(received);
        }
        Ok(len)
    }

    /// Write a Range Ack chunk from a list of received ranges above `cum_ack + 1` (ascending,
    /// disjoint, inclusive `(from, to)`; the session's receive buffer). With `truncate`, writes as
    /// many leading ranges as fit in `w.remaining()` (RFC 7016 §3.6.3.4.2: an ack may be truncated);
    /// without it, fails with [`WireError::BufferTooSmall`] unless all fit. Returns the number of
    /// ranges written. Writes nothing on error.
    pub fn emit_from_ranges(
        w: &mut Writer<'_>,
        flow_id: FlowId,
        buffer_blocks: u64,
        cum_ack: u64,
        ranges: &[(u64, u64)],
        truncate: bool,
    ) -> Result<usize, WireError> {
        let head = ack_head_len(flow_id, buffer_blocks, cum_ack);
        let room = w
            .remaining()
            .saturating_sub(CHUNK_HEADER_LEN)
            .min(MAX_CHUNK_PAYLOAD);
        if head > room {
            return Err(WireError::BufferTooSmall);
        }
        let mut len = head;
        let mut count = 0;
        for pair in range_pairs(cum_ack, ranges) {
            let (holes, received) = pair?;
            let pair_len = vlu_len(holes) + vlu_len(received);
            if len + pair_len > room {
                if truncate {
                    break;
                }
                return Err(WireError::BufferTooSmall);
            }
            len += pair_len;
            count += 1;
        }
        let written = ranges.get(..count).unwrap_or_default();
        emit_chunk(w, ChunkType::RANGE_ACK, len, |w| {
            w.put_vlu(flow_id.0)?;
            w.put_vlu(buffer_blocks)?;
            w.put_vlu(cum_ack)?;
            for pair in range_pairs(cum_ack, written) {
                let (holes, received) = pair?;
                w.put_vlu(holes)?;
                w.put_vlu(received)?;
            }
            Ok(())
        })?;
        Ok(count)
    }
}

impl ChunkBody for RangeAck<'_> {
    const TYPE: ChunkType = ChunkType::RANGE_ACK;
    fn payload_len(&self) -> usize {
        ack_head_len(self.flow_id, self.buffer_blocks, self.cum_ack) + self.pairs.len()
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_vlu(self.flow_id.0)?;
        w.put_vlu(self.buffer_blocks)?;
        w.put_vlu(self.cum_ack)?;
        w.put_bytes(self.pairs)
    }
}

/// Iterator over the ranges acknowledged by a Range Ack.
#[derive(Debug, Clone)]
pub struct RangeAckRanges<'a> {
    reader: Reader<'a>,
    /// Highest sequence number acknowledged so far, or `None` once iteration has ended.
    cursor: Option<u64>,
}

impl Iterator for RangeAckRanges<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let cursor = self.cursor.take()?;
        let holes = self.reader.read_vlu().ok()?;
        let received = self.reader.read_vlu().ok()?;
        let from = cursor.checked_add(holes)?.checked_add(2)?;
        let to = from.checked_add(received)?;
        self.cursor = Some(to);
        Some((from, to))
    }
}

/// Buffer Probe (RFC 7016 §2.3.15): `flowID VLU`; asks for an immediate ack of that flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferProbe {
    /// The flow being probed (the near end's sending flow, the far end's receiving flow).
    pub flow_id: FlowId,
}

impl BufferProbe {
    /// Parse a Buffer Probe payload. Trailing bytes are ignored.
    pub fn parse(payload: &[u8]) -> Result<Self, WireError> {
        Ok(BufferProbe {
            flow_id: FlowId(Reader::new(payload).read_vlu()?),
        })
    }
}

impl ChunkBody for BufferProbe {
    const TYPE: ChunkType = ChunkType::BUFFER_PROBE;
    fn payload_len(&self) -> usize {
        vlu_len(self.flow_id.0)
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_vlu(self.flow_id.0)
    }
}

/// Flow Exception Report (RFC 7016 §2.3.16): `flowID VLU | exception VLU`; the receiver rejects the
/// flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowExceptionReport {
    /// The rejected flow (the far end's receiving flow).
    pub flow_id: FlowId,
    /// Exception code; 0 for automatic rejections.
    pub exception: u64,
}

impl FlowExceptionReport {
    /// Parse a Flow Exception Report payload. Trailing bytes are ignored.
    pub fn parse(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        Ok(FlowExceptionReport {
            flow_id: FlowId(r.read_vlu()?),
            exception: r.read_vlu()?,
        })
    }
}

impl ChunkBody for FlowExceptionReport {
    const TYPE: ChunkType = ChunkType::FLOW_EXCEPTION_REPORT;
    fn payload_len(&self) -> usize {
        vlu_len(self.flow_id.0) + vlu_len(self.exception)
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_vlu(self.flow_id.0)?;
        w.put_vlu(self.exception)
    }
}

/// Session Close Request (RFC 7016 §2.3.17): empty payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Close;

impl ChunkBody for Close {
    const TYPE: ChunkType = ChunkType::CLOSE;
    fn payload_len(&self) -> usize {
        0
    }
    fn emit_payload(&self, _w: &mut Writer<'_>) -> Result<(), WireError> {
        Ok(())
    }
}

/// Session Close Acknowledgement (RFC 7016 §2.3.18): empty payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CloseAck;

impl ChunkBody for CloseAck {
    const TYPE: ChunkType = ChunkType::CLOSE_ACK;
    fn payload_len(&self) -> usize {
        0
    }
    fn emit_payload(&self, _w: &mut Writer<'_>) -> Result<(), WireError> {
        Ok(())
    }
}

/// ECN Report (experimental, rtmfp-cpp only): one byte, the count of ECN-CE marked packets
/// received, modulo 256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcnReport {
    /// ECN-CE count mod 256.
    pub ce_count: u8,
}

impl EcnReport {
    /// Parse an ECN Report payload. Trailing bytes are ignored.
    pub fn parse(payload: &[u8]) -> Result<Self, WireError> {
        Ok(EcnReport {
            ce_count: Reader::new(payload).read_u8()?,
        })
    }
}

impl ChunkBody for EcnReport {
    const TYPE: ChunkType = ChunkType::ECN_REPORT;
    fn payload_len(&self) -> usize {
        ECN_REPORT_LEN
    }
    fn emit_payload(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put_u8(self.ce_count)
    }
}

/// Any chunk, as a borrowed view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// 0x7F Packet Fragment.
    PacketFragment(PacketFragment<'a>),
    /// 0x30 IHello.
    IHello(IHello<'a>),
    /// 0x0F Forwarded IHello.
    ForwardedIHello(ForwardedIHello<'a>),
    /// 0x70 RHello.
    RHello(RHello<'a>),
    /// 0x71 Redirect.
    Redirect(Redirect<'a>),
    /// 0x79 RHello Cookie Change.
    CookieChange(CookieChange<'a>),
    /// 0x38 IIKeying.
    IIKeying(IIKeying<'a>),
    /// 0x78 RIKeying.
    RIKeying(RIKeying<'a>),
    /// 0x01 Ping.
    Ping(Ping<'a>),
    /// 0x41 Ping Reply.
    PingReply(PingReply<'a>),
    /// 0x10 User Data.
    UserData(UserData<'a>),
    /// 0x11 Next User Data.
    NextUserData(NextUserData<'a>),
    /// 0x50 Bitmap Ack.
    BitmapAck(BitmapAck<'a>),
    /// 0x51 Range Ack.
    RangeAck(RangeAck<'a>),
    /// 0x18 Buffer Probe.
    BufferProbe(BufferProbe),
    /// 0x5E Flow Exception Report.
    FlowExceptionReport(FlowExceptionReport),
    /// 0x0C Session Close Request.
    Close(Close),
    /// 0x4C Session Close Acknowledgement.
    CloseAck(CloseAck),
    /// 0xEC ECN Report.
    EcnReport(EcnReport),
    /// A chunk of a type we do not know (RFC 7016 §2.3: a receiver MUST ignore it). [`Chunk::parse`]
    /// never yields this for a known type.
    Unknown {
        /// The chunk type.
        kind: ChunkType,
        /// The raw payload.
        payload: &'a [u8],
    },
}

/// Apply `$body` to the view inside every known variant of a [`Chunk`].
macro_rules! with_body {
    ($chunk:expr, $c:ident => $body:expr, unknown($k:ident, $p:ident) => $unknown:expr) => {
        match $chunk {
            Chunk::PacketFragment($c) => $body,
            Chunk::IHello($c) => $body,
            Chunk::ForwardedIHello($c) => $body,
            Chunk::RHello($c) => $body,
            Chunk::Redirect($c) => $body,
            Chunk::CookieChange($c) => $body,
            Chunk::IIKeying($c) => $body,
            Chunk::RIKeying($c) => $body,
            Chunk::Ping($c) => $body,
            Chunk::PingReply($c) => $body,
            Chunk::UserData($c) => $body,
            Chunk::NextUserData($c) => $body,
            Chunk::BitmapAck($c) => $body,
            Chunk::RangeAck($c) => $body,
            Chunk::BufferProbe($c) => $body,
            Chunk::FlowExceptionReport($c) => $body,
            Chunk::Close($c) => $body,
            Chunk::CloseAck($c) => $body,
            Chunk::EcnReport($c) => $body,
            Chunk::Unknown {
                kind: $k,
                payload: $p,
            } => $unknown,
        }
    };
}

/// The chunk type of a view (helper for [`with_body`]).
fn type_of<C: ChunkBody>(_: &C) -> ChunkType {
    C::TYPE
}

impl<'a> Chunk<'a> {
    /// Parse the payload of a chunk of type `kind`. Unknown types (including padding) give
    /// [`Chunk::Unknown`]. Trailing bytes after fixed-size payloads (Buffer Probe, Flow Exception
    /// Report, Close, Close Ack, ECN Report) are ignored.
    pub fn parse(kind: ChunkType, payload: &'a [u8]) -> Result<Self, WireError> {
        Ok(match kind {
            ChunkType::PACKET_FRAGMENT => Chunk::PacketFragment(PacketFragment::parse(payload)?),
            ChunkType::IHELLO => Chunk::IHello(IHello::parse(payload)?),
            ChunkType::FORWARDED_IHELLO => Chunk::ForwardedIHello(ForwardedIHello::parse(payload)?),
            ChunkType::RHELLO => Chunk::RHello(RHello::parse(payload)?),
            ChunkType::REDIRECT => Chunk::Redirect(Redirect::parse(payload)?),
            ChunkType::COOKIE_CHANGE => Chunk::CookieChange(CookieChange::parse(payload)?),
            ChunkType::IIKEYING => Chunk::IIKeying(IIKeying::parse(payload)?),
            ChunkType::RIKEYING => Chunk::RIKeying(RIKeying::parse(payload)?),
            ChunkType::PING => Chunk::Ping(Ping { body: payload }),
            ChunkType::PING_REPLY => Chunk::PingReply(PingReply { body: payload }),
            ChunkType::USER_DATA => Chunk::UserData(UserData::parse(payload)?),
            ChunkType::NEXT_USER_DATA => Chunk::NextUserData(NextUserData::parse(payload)?),
            ChunkType::BITMAP_ACK => Chunk::BitmapAck(BitmapAck::parse(payload)?),
            ChunkType::RANGE_ACK => Chunk::RangeAck(RangeAck::parse(payload)?),
            ChunkType::BUFFER_PROBE => Chunk::BufferProbe(BufferProbe::parse(payload)?),
            ChunkType::FLOW_EXCEPTION_REPORT => {
                Chunk::FlowExceptionReport(FlowExceptionReport::parse(payload)?)
            }
            ChunkType::CLOSE => Chunk::Close(Close),
            ChunkType::CLOSE_ACK => Chunk::CloseAck(CloseAck),
            ChunkType::ECN_REPORT => Chunk::EcnReport(EcnReport::parse(payload)?),
            _ => Chunk::Unknown { kind, payload },
        })
    }

    /// The chunk type.
    pub fn kind(&self) -> ChunkType {
        with_body!(self, c => type_of(c), unknown(k, _p) => *k)
    }

    /// Whole chunk size, header included.
    pub fn encoded_len(&self) -> usize {
        with_body!(self, c => c.encoded_len(), unknown(_k, p) => CHUNK_HEADER_LEN + p.len())
    }

    /// Write the whole chunk. Writes nothing on error.
    pub fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        with_body!(self, c => c.emit(w), unknown(k, p) => emit_chunk(w, *k, p.len(), |w| w.put_bytes(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::address::AddressOrigin;
    use crate::wire::arb::arb_chunk;
    use proptest::prelude::*;

    /// Split a whole chunk (header included) into type and payload, checking its length field.
    fn split(bytes: &[u8]) -> (ChunkType, &[u8]) {
        let mut r = Reader::new(bytes);
        let kind = ChunkType(r.read_u8().unwrap());
        let len = r.read_u16().unwrap() as usize;
        assert_eq!(len, r.remaining(), "length field");
        (kind, r.rest())
    }

    fn parse(bytes: &[u8]) -> Chunk<'_> {
        let (kind, payload) = split(bytes);
        Chunk::parse(kind, payload).unwrap()
    }

    fn emit(c: &Chunk<'_>) -> Vec<u8> {
        let mut buf = vec![0u8; c.encoded_len() + 8];
        let mut w = Writer::new(&mut buf);
        c.emit(&mut w).unwrap();
        assert_eq!(w.len(), c.encoded_len());
        w.written().to_vec()
    }

    /// All sequence numbers an ack acknowledges, expanded (small examples only).
    fn acked(cum_ack: u64, ranges: impl Iterator<Item = (u64, u64)>) -> Vec<u64> {
        (0..=cum_ack)
            .chain(ranges.flat_map(|(a, b)| a..=b))
            .collect()
    }

    #[test]
    fn bitmap_ack_digest_example() {
        // docs/rtmfp.md §1.8 (RFC 7016 §2.3.13 example).
        let bytes = [0x50, 0x00, 0x05, 0x05, 0x7f, 0x10, 0x79, 0x06];
        let Chunk::BitmapAck(ack) = parse(&bytes) else {
            panic!("not a bitmap ack")
        };
        assert_eq!(ack.flow_id, FlowId(5));
        assert_eq!(ack.buffer_blocks, 127);
        assert_eq!(ack.cum_ack, 16);
        assert_eq!(
            ack.ranges().collect::<Vec<_>>(),
            vec![(18, 18), (21, 24), (27, 28)]
        );
        let expected: Vec<u64> = (0..=16).chain([18, 21, 22, 23, 24, 27, 28]).collect();
        assert_eq!(acked(ack.cum_ack, ack.ranges()), expected);
        assert_eq!(emit(&Chunk::BitmapAck(ack)), bytes);
        // The same acks built from ranges give the same bytes.
        let mut buf = [0u8; 16];
        let mut w = Writer::new(&mut buf);
        let ranges = [(18, 18), (21, 24), (27, 28)];
        BitmapAck::emit_from_ranges(&mut w, FlowId(5), 127, 16, &ranges).unwrap();
        assert_eq!(w.written(), bytes);
        assert_eq!(
            BitmapAck::encoded_len_for(FlowId(5), 127, 16, &ranges),
            Ok(bytes.len())
        );
    }

    #[test]
    fn range_ack_digest_example() {
        // docs/rtmfp.md §1.8 (RFC 7016 §2.3.14 example).
        let bytes = [0x51, 0x00, 0x07, 0x05, 0x7f, 0x10, 0x00, 0x00, 0x01, 0x03];
        let Chunk::RangeAck(ack) = parse(&bytes) else {
            panic!("not a range ack")
        };
        assert_eq!(
            (ack.flow_id, ack.buffer_blocks, ack.cum_ack),
            (FlowId(5), 127, 16)
        );
        assert_eq!(ack.ranges().collect::<Vec<_>>(), vec![(18, 18), (21, 24)]);
        let expected: Vec<u64> = (0..=16).chain([18, 21, 22, 23, 24]).collect();
        assert_eq!(acked(ack.cum_ack, ack.ranges()), expected);
        let mut buf = [0u8; 16];
        let mut w = Writer::new(&mut buf);
        let n =
            RangeAck::emit_from_ranges(&mut w, FlowId(5), 127, 16, &[(18, 18), (21, 24)], false)
                .unwrap();
        assert_eq!(n, 2);
        assert_eq!(w.written(), bytes);
    }

    #[test]
    fn range_ack_truncated_last_pair_ignored() {
        // The example with a third pair cut after its first VLU, and one cut inside a VLU.
        for tail in [&[0x02][..], &[0x02, 0x81][..], &[0x81][..]] {
            let mut payload = vec![0x05, 0x7f, 0x10, 0x00, 0x00, 0x01, 0x03];
            payload.extend_from_slice(tail);
            let ack = RangeAck::parse(&payload).unwrap();
            assert_eq!(ack.ranges().collect::<Vec<_>>(), vec![(18, 18), (21, 24)]);
        }
    }

    #[test]
    fn range_ack_overflow_stops() {
        let mut payload = vec![0x01, 0x01];
        payload.extend_from_slice(&[0x81, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7d]);
        payload.extend_from_slice(&[0x00, 0x00, 0x00, 0x00]);
        let ack = RangeAck::parse(&payload).unwrap();
        assert_eq!(ack.cum_ack, u64::MAX - 2);
        assert_eq!(ack.ranges().collect::<Vec<_>>(), vec![(u64::MAX, u64::MAX)]);
    }

    #[test]
    fn range_ack_emit_truncates_to_fit() {
        let ranges: Vec<(u64, u64)> = (0..100).map(|i| (20 + 4 * i, 21 + 4 * i)).collect();
        let mut buf = [0u8; 20];
        let mut w = Writer::new(&mut buf);
        assert_eq!(
            RangeAck::emit_from_ranges(&mut w, FlowId(2), 64, 10, &ranges, false),
            Err(WireError::BufferTooSmall)
        );
        assert!(w.is_empty());
        let n = RangeAck::emit_from_ranges(&mut w, FlowId(2), 64, 10, &ranges, true).unwrap();
        // 3 header + 3 head bytes leave 14 bytes: 7 pairs of two one-byte VLUs.
        assert_eq!(n, 7);
        assert_eq!(w.len(), 20);
        let Chunk::RangeAck(ack) = parse(w.written()) else {
            panic!("not a range ack")
        };
        assert_eq!(ack.ranges().collect::<Vec<_>>(), ranges[..7]);
        // Not even the head fits.
        let mut tiny = [0u8; 5];
        let mut w = Writer::new(&mut tiny);
        assert_eq!(
            RangeAck::emit_from_ranges(&mut w, FlowId(2), 64, 10, &ranges, true),
            Err(WireError::BufferTooSmall)
        );
    }

    #[test]
    fn ack_ranges_must_be_ordered() {
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        let bad = WireError::InvalidValue {
            field: "ack ranges",
        };
        for ranges in [&[(16, 16)][..], &[(20, 19)][..], &[(20, 22), (23, 24)][..]] {
            assert_eq!(
                RangeAck::emit_from_ranges(&mut w, FlowId(1), 1, 15, ranges, true),
                Err(bad)
            );
            assert_eq!(
                BitmapAck::emit_from_ranges(&mut w, FlowId(1), 1, 15, ranges),
                Err(bad)
            );
        }
        assert!(w.is_empty());
    }

    #[test]
    fn user_data_fixture_shapes() {
        // A TC flow's first fragment: flow 2, seq 1, fsnOffset 1, metadata "TC 04 00" option, then data
        // (shape of fixture tcbench-rpc-tcserver 005).
        let bytes = [
            0x10, 0x00, 0x0c, 0x80, 0x02, 0x01, 0x01, 0x05, 0x00, 0x54, 0x43, 0x04, 0x00, 0x00,
            0x14,
        ];
        let Chunk::UserData(ud) = parse(&bytes) else {
            panic!("not user data")
        };
        assert_eq!(ud.flow_id, FlowId(2));
        assert_eq!((ud.seq, ud.fsn_offset), (1, 1));
        assert_eq!(ud.forward_sequence_number(), Some(0));
        assert_eq!(ud.flags, UserDataFlags::default());
        let opts: Vec<_> = options(ud.options.unwrap())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(opts.len(), 1);
        assert_eq!(
            (opts[0].kind, opts[0].value),
            (0, &[0x54, 0x43, 0x04, 0x00][..])
        );
        assert_eq!(ud.data, &[0x14]);
        assert_eq!(emit(&Chunk::UserData(ud)), bytes);
        // MonaServer2's ABN+FIN at seq 0, fsnOffset 0, no data (fixture librtmfp-mona-connect 011).
        let Chunk::UserData(ud) = parse(&[0x10, 0x00, 0x04, 0x03, 0x03, 0x00, 0x00]) else {
            panic!("not user data")
        };
        assert!(ud.flags.abandoned && ud.flags.fin);
        assert_eq!(
            (ud.flow_id, ud.seq, ud.fsn_offset, ud.options),
            (FlowId(3), 0, 0, None)
        );
        // Fragment positions and reserved bits.
        for (bits, frag) in [
            (0x00, Fragment::Whole),
            (0x10, Fragment::Begin),
            (0x20, Fragment::End),
            (0x30, Fragment::Middle),
        ] {
            let f = UserDataFlags::from_bits(bits | 0x4C);
            assert_eq!(f.fragment, frag);
            assert_eq!(f.to_bits(false), bits);
        }
        // OPT set but no marker.
        assert_eq!(
            UserData::parse(&[0x80, 0x02, 0x01, 0x01, 0x02, 0x00]),
            Err(WireError::UnexpectedEnd)
        );
        // Next User Data with options.
        let nud = NextUserData::parse(&[0x90, 0x02, 0x0A, 0x05, 0x00, 0xAB]).unwrap();
        assert_eq!(nud.flags.fragment, Fragment::Begin);
        assert_eq!(nud.options, Some(&[0x02, 0x0A, 0x05][..]));
        assert_eq!(nud.data, &[0xAB]);
    }

    #[test]
    fn user_data_options_with_marker_inside_rejected_on_emit() {
        let ud = UserData {
            flags: UserDataFlags::default(),
            flow_id: FlowId(1),
            seq: 1,
            fsn_offset: 1,
            options: Some(&[0x00, 0x01, 0x05]),
            data: &[],
        };
        let mut buf = [0u8; 32];
        let mut w = Writer::new(&mut buf);
        assert!(ud.emit(&mut w).is_err());
        assert!(w.is_empty());
    }

    #[test]
    fn startup_chunk_layouts() {
        let ihello = [0x30, 0x00, 0x05, 0x02, 0x01, 0x0A, 0xAA, 0xBB];
        let Chunk::IHello(h) = parse(&ihello) else {
            panic!("not an IHello")
        };
        assert_eq!((h.epd, h.tag), (&[0x01, 0x0A][..], &[0xAA, 0xBB][..]));
        let iik = [
            0x38, 0x00, 0x0d, 0x02, 0x00, 0x00, 0x00, 0x01, 0xC0, 0x02, 0xD0, 0xD1, 0x01, 0xE0,
            0x58, 0x59,
        ];
        let Chunk::IIKeying(k) = parse(&iik) else {
            panic!("not IIKeying")
        };
        assert_eq!(k.initiator_session_id, SessionId(0x0200_0000));
        assert_eq!(k.cookie_echo, &[0xC0]);
        assert_eq!(k.certificate, &[0xD0, 0xD1]);
        assert_eq!(k.skic, &[0xE0]);
        assert_eq!(k.signature, &[0x58, 0x59]);
        assert_eq!(emit(&Chunk::IIKeying(k)), iik);
        // Cookie length running past the end.
        assert_eq!(
            RHello::parse(&[0x01, 0xAA, 0x05, 0x01]),
            Err(WireError::UnexpectedEnd)
        );
        // Redirect with one address, and an implied redirect.
        let red = [0x01, 0xAA, 0x00, 127, 0, 0, 1, 0x93, 0x1F];
        let r = Redirect::parse(&red).unwrap();
        let addrs: Vec<_> = r.addresses().collect::<Result<_, _>>().unwrap();
        assert_eq!(
            addrs,
            vec![Address::new(
                "127.0.0.1:37663".parse().unwrap(),
                AddressOrigin::Unknown
            )]
        );
        assert_eq!(
            Redirect::parse(&[0x01, 0xAA]).unwrap().addresses().count(),
            0
        );
        assert!(Redirect::parse(&[0x01, 0xAA, 0x00, 1]).is_err());
        let mut buf = [0u8; 32];
        let mut w = Writer::new(&mut buf);
        Redirect::emit_with(&mut w, &[0xAA], &addrs).unwrap();
        assert_eq!(w.len(), Redirect::encoded_len_with(&[0xAA], &addrs));
        assert_eq!(split(w.written()), (ChunkType::REDIRECT, &red[..]));
        // Empty packet fragment is invalid.
        assert!(PacketFragment::parse(&[0x80, 0x01, 0x00]).is_err());
    }

    #[test]
    fn types_and_modes() {
        assert_eq!(ChunkType::RHELLO.name(), "RHello");
        assert_eq!(ChunkType(0x99).name(), "Unknown");
        assert!(ChunkType::IIKEYING.allowed_in(Mode::Startup));
        assert!(!ChunkType::IIKEYING.allowed_in(Mode::Responder));
        assert!(ChunkType::USER_DATA.allowed_in(Mode::Initiator));
        assert!(!ChunkType::FORWARDED_IHELLO.allowed_in(Mode::Startup));
        assert!(ChunkType::PACKET_FRAGMENT.allowed_in(Mode::Startup));
        assert_eq!(
            Chunk::parse(ChunkType::CLOSE, &[1, 2]),
            Ok(Chunk::Close(Close))
        );
        assert_eq!(
            Chunk::parse(ChunkType::ECN_REPORT, &[]),
            Err(WireError::UnexpectedEnd)
        );
        let unknown = Chunk::parse(ChunkType(0x99), &[1, 2]).unwrap();
        assert_eq!(unknown.kind(), ChunkType(0x99));
        assert_eq!(emit(&unknown), [0x99, 0x00, 0x02, 1, 2]);
    }

    #[test]
    fn emit_is_all_or_nothing() {
        let c = Chunk::Ping(Ping {
            body: &[1, 2, 3, 4],
        });
        let mut buf = [0u8; 6];
        let mut w = Writer::new(&mut buf);
        assert_eq!(c.emit(&mut w), Err(WireError::BufferTooSmall));
        assert!(w.is_empty());
        let big = vec![0u8; MAX_CHUNK_PAYLOAD + 1];
        let mut buf = vec![0u8; big.len() + 8];
        let mut w = Writer::new(&mut buf);
        assert!(Chunk::Ping(Ping { body: &big }).emit(&mut w).is_err());
        assert!(w.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn split_data_writes_the_concatenation(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            cut in any::<proptest::sample::Index>(),
            seq in 1u64..1_000_000,
            next in any::<bool>(),
        ) {
            let at = cut.index(data.len() + 1);
            let (a, b) = data.split_at(at);
            let flags = UserDataFlags { fragment: Fragment::Middle, abandoned: false, fin: false };
            let emit_one = |c: &dyn Fn(&mut Writer<'_>) -> Result<(), WireError>| {
                let mut buf = vec![0u8; 1024];
                let mut w = Writer::new(&mut buf);
                c(&mut w).unwrap();
                let n = w.position();
                buf.truncate(n);
                buf
            };
            let (whole, split) = if next {
                (
                    emit_one(&|w| NextUserData { flags, options: None, data: &data }.emit(w)),
                    emit_one(&|w| SplitData {
                        chunk: NextUserData { flags, options: None, data: a },
                        tail: b,
                    }
                    .emit(w)),
                )
            } else {
                let chunk = |data| UserData {
                    flags,
                    flow_id: FlowId(5),
                    seq,
                    fsn_offset: 1,
                    options: Some(&b"\x04\x00TC\x04"[..]),
                    data,
                };
                (
                    emit_one(&|w| chunk(&data).emit(w)),
                    emit_one(&|w| SplitData { chunk: chunk(a), tail: b }.emit(w)),
                )
            };
            prop_assert_eq!(whole, split);
        }

        #[test]
        fn chunk_round_trip(c in arb_chunk()) {
            let bytes = emit(&c);
            let (kind, payload) = split(&bytes);
            prop_assert_eq!(kind, c.kind());
            prop_assert_eq!(Chunk::parse(kind, payload), Ok(c));
        }

        #[test]
        fn range_ack_from_ranges_round_trip(
            cum_ack in 0u64..1_000_000,
            steps in proptest::collection::vec((0u64..300, 0u64..300), 0..40),
            flow in any::<u64>(), blocks in any::<u64>(),
        ) {
            let mut ranges = Vec::new();
            let mut cursor = cum_ack;
            for (gap, len) in steps {
                let from = cursor + gap + 2;
                ranges.push((from, from + len));
                cursor = from + len;
            }
            let mut buf = vec![0u8; 1024];
            let mut w = Writer::new(&mut buf);
            let n = RangeAck::emit_from_ranges(&mut w, FlowId(flow), blocks, cum_ack, &ranges, false)
                .unwrap();
            prop_assert_eq!(n, ranges.len());
            prop_assert_eq!(
                RangeAck::encoded_len_for(FlowId(flow), blocks, cum_ack, &ranges), Ok(w.len()));
            let Chunk::RangeAck(ack) = parse(w.written()) else { panic!("not a range ack") };
            prop_assert_eq!((ack.flow_id, ack.buffer_blocks, ack.cum_ack), (FlowId(flow), blocks, cum_ack));
            prop_assert_eq!(ack.ranges().collect::<Vec<_>>(), ranges.clone());

            let mut buf = vec![0u8; 16 * 1024];
            let mut w = Writer::new(&mut buf);
            BitmapAck::emit_from_ranges(&mut w, FlowId(flow), blocks, cum_ack, &ranges).unwrap();
            prop_assert_eq!(
                BitmapAck::encoded_len_for(FlowId(flow), blocks, cum_ack, &ranges), Ok(w.len()));
            let Chunk::BitmapAck(ack) = parse(w.written()) else { panic!("not a bitmap ack") };
            prop_assert_eq!(ack.cum_ack, cum_ack);
            prop_assert_eq!(ack.ranges().collect::<Vec<_>>(), ranges);
        }

        #[test]
        fn chunk_parser_never_panics(kind in any::<u8>(),
                                     payload in proptest::collection::vec(any::<u8>(), 0..48)) {
            if let Ok(c) = Chunk::parse(ChunkType(kind), &payload) {
                prop_assert!(c.encoded_len() <= CHUNK_HEADER_LEN + payload.len());
            }
        }
    }
}
