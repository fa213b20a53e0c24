//! The binary codec of the messages between the data-plane workers and the control-plane
//! process. They travel over a Unix `SOCK_SEQPACKET` socket, one datagram per message, so a
//! message needs no outer framing. Pure code: no I/O.
//!
//! # Wire format
//!
//! Every message is `[version: u8 = IPC_VERSION][tag: u8][body]`. Worker-to-control messages
//! ([`Up`]) use tags from `0x01`, control-to-worker messages ([`Down`]) tags from `0x81`, so one
//! can never be decoded as the other.
//!
//! In bodies:
//! - integers are big-endian;
//! - byte strings are a `u32` length followed by the bytes;
//! - lists are a `u32` element count followed by the elements;
//! - fixed-size arrays (peer IDs, keys) are raw bytes;
//! - a socket address is `[family: u8 = 4 or 6][4 or 16 bytes of IP][port: u16]`. The IPv6
//!   flow information and scope ID are not carried: they decode as 0;
//! - a boolean is one byte, 0 or 1.
//!
//! The encoding is canonical: [`Up::decode`] and [`Down::decode`] accept only bytes that
//! `encode` produces (no other boolean bytes, no trailing bytes, ...), so whatever decodes
//! re-encodes to the same bytes. Every length
//! and count is checked against its limit and against the remaining input before anything is
//! allocated, and `encode` refuses values over the limits rather than produce bytes that
//! `decode` would reject.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use rtmfp::crypto::{DirectionOptions, SessionKeys, DERIVED_LEN, MAX_HMAC_LEN, MIN_HMAC_LEN};
use rtmfp::flash::message::MessageType;

/// Version byte that starts every message.
pub const IPC_VERSION: u8 = 1;
/// Largest encoded message (fits a `SOCK_SEQPACKET` datagram comfortably).
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Largest UDP datagram carried in [`Up::Startup`] or [`Down::Transmit`].
pub const MAX_DATAGRAM: usize = 8192;
/// Most messages in one [`Down::Reply`] or [`Down::Call`].
pub const MAX_MESSAGES_PER_REPLY: usize = 64;
/// Most sessions in one [`Up::Resync`]; a worker with more sends several.
pub const MAX_RESYNC_SESSIONS: usize = 4096;
/// Largest TC message (an AMF command) carried up in [`Up::Message`] or down in
/// [`Down::Reply`] and [`Down::Call`].
pub const MAX_FLASH_MESSAGE: usize = 128 * 1024;

/// Length of a peer ID (the SHA-256 fingerprint of a certificate).
pub const PEER_ID_LEN: usize = 32;

// Message tags: worker to control from 0x01, control to worker from 0x81.
const TAG_UP_HELLO: u8 = 0x01;
const TAG_UP_RESYNC: u8 = 0x02;
const TAG_UP_STARTUP: u8 = 0x03;
const TAG_UP_MESSAGE: u8 = 0x04;
const TAG_UP_CLOSED: u8 = 0x05;
const TAG_UP_STREAMS: u8 = 0x06;
const TAG_UP_NET_STATES: u8 = 0x07;
const TAG_UP_QOS: u8 = 0x08;
const TAG_UP_GROUP_JOIN: u8 = 0x09;
const TAG_UP_GROUP_LEAVE: u8 = 0x0A;
const TAG_UP_MEDIA: u8 = 0x0B;
const TAG_UP_TIMINGS: u8 = 0x0C;
/// Most entries in one [`Up::Timings`]; a worker sends several when it has more.
pub const MAX_TIMING_ENTRIES: usize = 4096;
/// Bytes of a [`SessionTiming`]: session, RTT, idle time.
const TIMING_ENTRY_LEN: usize = 4 + 4 + 4;
/// Most entries in one [`Up::NetStates`] (each carries an application path of up to
/// [`MAX_APP_PATH`] bytes, so a message stays under [`MAX_MESSAGE`]).
pub const MAX_RESYNC_NET_STATES: usize = 128;
/// Longest application path, in bytes.
pub const MAX_APP_PATH: usize = 1024;
/// Bytes of a [`NetState`] with an empty path: session, path length, next stream.
const MIN_NET_STATE_LEN: usize = 4 + 4 + 4;
/// Most stream entries in one [`Up::Streams`]; a worker sends several when it has more.
pub const MAX_RESYNC_STREAMS: usize = 1024;
/// Most entries in one [`Up::Qos`]; a worker sends several when it has more.
pub const MAX_QOS_ENTRIES: usize = 4096;
/// `none` for [`QosEntry::latency_ms`] on the wire.
const NO_LATENCY: u32 = u32::MAX;
/// Longest stream key (application path and stream name), in bytes.
pub const MAX_STREAM_KEY: usize = 1024;
/// Longest blacklist entry (an address or prefix as text) in [`Down::Blacklist`].
pub const MAX_BLACKLIST_ENTRY: usize = 64;
/// Most peer IDs in one [`Down::GroupMembers`].
pub const MAX_GROUP_MEMBERS: usize = 64;
/// Longest EPD or tag carried in a [`Down::ForwardIHello`] (both come from one IHello).
pub const MAX_HELLO_FIELD: usize = 1024;

const TAG_DOWN_WELCOME: u8 = 0x81;
const TAG_DOWN_TRANSMIT: u8 = 0x82;
const TAG_DOWN_INSTALL: u8 = 0x83;
const TAG_DOWN_REPLY: u8 = 0x84;
const TAG_DOWN_CALL: u8 = 0x85;
const TAG_DOWN_CLOSE: u8 = 0x86;
const TAG_DOWN_KILL: u8 = 0x87;
const TAG_DOWN_STATS: u8 = 0x88;
const TAG_DOWN_PUBLISH: u8 = 0x89;
const TAG_DOWN_UNPUBLISH: u8 = 0x8A;
const TAG_DOWN_ROUTE: u8 = 0x8B;
const TAG_DOWN_PLAY: u8 = 0x8C;
const TAG_DOWN_STOP_PLAY: u8 = 0x8D;
const TAG_DOWN_RECEIVE: u8 = 0x8E;
const TAG_DOWN_NET_STATE: u8 = 0x8F;
const TAG_DOWN_BLACKLIST: u8 = 0x90;
const TAG_DOWN_FORWARD_IHELLO: u8 = 0x91;
const TAG_DOWN_GROUP_MEMBERS: u8 = 0x92;
const TAG_DOWN_SERVER_PUBLISH: u8 = 0x93;
const TAG_DOWN_MEDIA: u8 = 0x94;
const TAG_DOWN_WATCH: u8 = 0x95;
const TAG_DOWN_WRITER: u8 = 0x96;
const TAG_DOWN_CLOSE_WRITER: u8 = 0x97;
/// Most counters in one [`Down::Stats`].
pub const MAX_STATS: usize = 64;
/// Bytes of one counter on the wire.
const STAT_LEN: usize = 8;

/// Address family byte of an IPv4 socket address.
const FAMILY_V4: u8 = 4;
/// Address family byte of an IPv6 socket address.
const FAMILY_V6: u8 = 6;
/// Encoded length of an IPv4 address.
const IPV4_LEN: usize = 4;
/// Encoded length of an IPv6 address.
const IPV6_LEN: usize = 16;

// The two boolean bytes.
const FALSE: u8 = 0;
const TRUE: u8 = 1;

// The bytes of an [`Up::Closed`]'s failure.
const ENDED_IN_ORDER: u8 = 0;
const FAILED_IDLE: u8 = 1;
const FAILED_UNACKNOWLEDGED: u8 = 2;

/// Length of a `u32` length or count prefix.
const PREFIX_LEN: usize = 4;
/// Shortest encoded socket address: family, IPv4 address, port.
const MIN_ADDRESS_LEN: usize = 1 + IPV4_LEN + 2;
/// Shortest encoded [`SessionInfo`]: session ID, peer ID, IPv4 address.
const MIN_SESSION_INFO_LEN: usize = 4 + PEER_ID_LEN + MIN_ADDRESS_LEN;
/// Bytes of a [`StreamEntry`] with an empty key: session, flow, stream, key length, publisher.
const MIN_STREAM_ENTRY_LEN: usize = 4 + 8 + 4 + 4 + 1;
/// Encoded length of a [`QosEntry`].
const QOS_ENTRY_LEN: usize = 4 + 4 + 1 + 4 + 8 + 4 + 4 + 8;

/// Errors of [`Up`] and [`Down`] encoding and decoding.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum IpcError {
    /// The message ends before its structure does.
    #[error("IPC message truncated")]
    Truncated,
    /// The version byte is not [`IPC_VERSION`].
    #[error("IPC version {0}, expected {IPC_VERSION}")]
    BadVersion(u8),
    /// The tag names no message of the expected direction.
    #[error("unknown IPC message tag {0:#04x}")]
    UnknownTag(u8),
    /// A length or count is over its limit. For `what == "message"` when encoding, `len` is the
    /// length the message had reached when it went over.
    #[error("IPC {what} too long: {len} > {max}")]
    TooLong {
        /// What is too long.
        what: &'static str,
        /// Its length or count.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field holds a value outside its domain.
    #[error("invalid IPC value: {0}")]
    BadValue(&'static str),
    /// Bytes follow the end of the message.
    #[error("{0} trailing bytes after the IPC message")]
    TrailingBytes(usize),
}

/// Crypto material for one installed session: a mirror of [`SessionKeys`] and the negotiated
/// modes of both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSecrets {
    /// Keys and nonces derived at the handshake (its `Debug` hides them).
    pub keys: SessionKeys,
    /// What the server sends: HMAC length and session sequence numbers.
    pub send: DirectionOptions,
    /// What the server expects on received packets.
    pub receive: DirectionOptions,
}

/// One live session of a worker, reported in [`Up::Resync`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session ID the worker receives on (the server's).
    pub session_id: u32,
    /// The peer ID of the client.
    pub peer_id: [u8; PEER_ID_LEN],
    /// The client's current address.
    pub address: SocketAddr,
}

/// How one publisher or subscriber of a stream did over the last report period, for the
/// applications (Cumulus's `QOS` objects: `lostRate`, `byteRate`, `congestionRate`,
/// `latency`, `droppedFrames`). Rates are in parts per million, so the message stays exact
/// and comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QosEntry {
    /// The client's session.
    pub session_id: u32,
    /// The stream.
    pub stream: u32,
    /// Whether the client publishes the stream (else it plays it).
    pub publisher: bool,
    /// Share of fragments lost, in millionths.
    pub lost_ppm: u32,
    /// Bytes per second of media.
    pub byte_rate: u64,
    /// Share of media messages dropped for lack of capacity, in millionths.
    pub congestion_ppm: u32,
    /// Half the smoothed round-trip time, in milliseconds, once measured (below `u32::MAX`,
    /// which the wire uses for none).
    pub latency_ms: Option<u32>,
    /// Media messages dropped since the start.
    pub dropped_frames: u64,
}

/// How a session's link is doing, for the applications (Cumulus's `client.ping` and
/// `client.elapsedFromReception`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTiming {
    /// The session.
    pub session_id: u32,
    /// The smoothed round-trip time, in milliseconds (0 until measured).
    pub rtt_ms: u32,
    /// Milliseconds since the session last received a packet, at the report.
    pub idle_ms: u32,
}

/// A stream this worker serves: reported after a control restart so that the new control
/// plane knows who publishes and who plays what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The client's session.
    pub session_id: u32,
    /// The client's NetStream flow.
    pub flow: u64,
    /// The stream's number.
    pub stream: u32,
    /// The stream's key (application path and name).
    pub key: String,
    /// Publisher (else player).
    pub publisher: bool,
}

/// The NetConnection state of a session that the control plane leaves with its worker, so
/// that a restarted control plane knows it again: the application it connected to and the
/// next NetStream ID it will get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetState {
    /// The session.
    pub session_id: u32,
    /// The application path it connected to.
    pub app: String,
    /// The next `createStream` result.
    pub next_stream: u32,
}

/// Why a session failed instead of ending by a close (Cumulus's `onFailed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing was heard from the far end for the idle limit, or it left our keepalives
    /// unanswered (RFC 7016 §3.5.4).
    Idle,
    /// What we sent went unacknowledged for the retransmission limit (RFC 7016 §3.5.3).
    Unacknowledged,
}

impl Failure {
    /// The error text applications get.
    pub fn describe(self) -> &'static str {
        match self {
            Failure::Idle => "Timeout: nothing heard from the client",
            Failure::Unacknowledged => "Timeout: the client acknowledged nothing we sent",
        }
    }
}

/// Which of a publication's messages the applications watch: `onAudioPacket`,
/// `onVideoPacket`, `onDataPacket` (a set of kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MediaEvents(u8);

impl MediaEvents {
    /// None.
    pub const NONE: MediaEvents = MediaEvents(0);
    /// Audio messages (RFC 7425 §5.1.1 type 8).
    pub const AUDIO: MediaEvents = MediaEvents(1);
    /// Video messages (type 9).
    pub const VIDEO: MediaEvents = MediaEvents(2);
    /// Data messages (types 15 and 18).
    pub const DATA: MediaEvents = MediaEvents(4);
    /// Every kind.
    pub const ALL: MediaEvents = MediaEvents(7);

    /// The set with these bits; `None` for bits that name no kind.
    pub fn from_bits(bits: u8) -> Option<MediaEvents> {
        (bits & !Self::ALL.0 == 0).then_some(MediaEvents(bits))
    }

    /// The bits.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The kind of a TC message of type `kind` (none for what is not media).
    pub fn of(kind: MessageType) -> MediaEvents {
        match kind {
            MessageType::AUDIO => Self::AUDIO,
            MessageType::VIDEO => Self::VIDEO,
            MessageType::AMF0_DATA | MessageType::AMF3_DATA => Self::DATA,
            _ => Self::NONE,
        }
    }

    /// Whether this set holds any of `other`'s kinds.
    pub fn intersects(self, other: MediaEvents) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Both sets' kinds.
    #[must_use]
    pub fn with(self, other: MediaEvents) -> MediaEvents {
        MediaEvents(self.0 | other.0)
    }
}

/// A message from a worker to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Up {
    /// The first message on a link.
    Hello {
        /// The protocol revision the worker speaks.
        version: u16,
        /// The worker's index.
        worker: u8,
        /// How many workers the data plane runs.
        workers: u8,
        /// The worker's process ID.
        pid: u32,
    },
    /// Sessions the worker holds, sent after it (re)connects; at most [`MAX_RESYNC_SESSIONS`]
    /// per message.
    Resync {
        /// The live sessions.
        sessions: Vec<SessionInfo>,
    },
    /// A datagram received with session ID 0 (a handshake packet), still encrypted.
    Startup {
        /// Where it came from.
        from: SocketAddr,
        /// The whole datagram, at most [`MAX_DATAGRAM`] bytes.
        datagram: Vec<u8>,
    },
    /// A TC command message a client sent on one of its flows.
    Message {
        /// The session it arrived on.
        session_id: u32,
        /// The flow it arrived on.
        flow: u64,
        /// The stream the flow belongs to.
        stream_id: u64,
        /// The message, at most [`MAX_FLASH_MESSAGE`] bytes.
        data: Vec<u8>,
    },
    /// Every session's [`SessionTiming`], once a second; at most [`MAX_TIMING_ENTRIES`] per
    /// message.
    Timings {
        /// The entries.
        entries: Vec<SessionTiming>,
    },
    /// A message a publisher sent on a publication whose [`MediaEvents`] the applications
    /// watch (see [`Down::Watch`]), as it came (before any change for the audience).
    Media {
        /// The publisher's session.
        session_id: u32,
        /// The stream.
        stream: u32,
        /// The TC message, at most [`MAX_FLASH_MESSAGE`] bytes.
        message: Vec<u8>,
    },
    /// A session has ended (closed by either side, or timed out).
    Closed {
        /// The ended session.
        session_id: u32,
        /// Why it failed, when it did not end by a close of either side.
        failure: Option<Failure>,
    },
    /// A client joined a NetGroup on one of its `GC` flows (digest §1.14).
    GroupJoin {
        /// The session.
        session_id: u32,
        /// The client's `GC` flow.
        flow: u64,
        /// The group.
        group_id: [u8; PEER_ID_LEN],
        /// Reported again to a restarted control plane (after `Resync`): a membership to
        /// restore, not a join to answer.
        restored: bool,
    },
    /// A client's `GC` flow ended: it left that flow's group.
    GroupLeave {
        /// The session.
        session_id: u32,
        /// The client's `GC` flow.
        flow: u64,
    },
    /// The streams this worker publishes and plays, after a (re)connect (follows `Resync`).
    Streams {
        /// The entries.
        entries: Vec<StreamEntry>,
    },
    /// The NetConnection state of the worker's sessions, after a (re)connect (follows
    /// `Streams`).
    NetStates {
        /// The entries.
        entries: Vec<NetState>,
    },
    /// The QoS of the publishers and subscribers on this worker over the last report period
    /// (once a second); at most [`MAX_QOS_ENTRIES`] per message.
    Qos {
        /// The entries.
        entries: Vec<QosEntry>,
    },
}

/// A message from the control plane to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "messages are decoded one at a time and handled at once, not stored in bulk"
)]
pub enum Down {
    /// The answer to [`Up::Hello`].
    Welcome {
        /// The protocol revision the control plane speaks.
        version: u16,
    },
    /// Send a datagram as is (a handshake answer, already encrypted).
    Transmit {
        /// The destination.
        to: SocketAddr,
        /// The datagram, at most [`MAX_DATAGRAM`] bytes.
        datagram: Vec<u8>,
    },
    /// Install a session whose handshake the control plane completed.
    Install {
        /// The session ID the worker receives on.
        session_id: u32,
        /// The session ID the client receives on.
        far_session_id: u32,
        /// The client's address.
        address: SocketAddr,
        /// The client's peer ID.
        peer_id: [u8; PEER_ID_LEN],
        /// Keys and modes.
        secrets: SessionSecrets,
    },
    /// Send messages on the reply flow of the client's `flow`.
    Reply {
        /// The session.
        session_id: u32,
        /// The client's flow being answered.
        flow: u64,
        /// The messages, at most [`MAX_MESSAGES_PER_REPLY`] of at most [`MAX_FLASH_MESSAGE`]
        /// bytes each.
        messages: Vec<Vec<u8>>,
    },
    /// Send server-to-client messages on the NetConnection flow.
    Call {
        /// The session.
        session_id: u32,
        /// The messages, with the limits of [`Down::Reply`].
        messages: Vec<Vec<u8>>,
    },
    /// Send server-to-client messages on the application's flow writer `writer` of the
    /// session (`writer:newFlowWriter()`): a NetConnection flow of its own, opened at its first
    /// message.
    Writer {
        /// The session.
        session_id: u32,
        /// The applications' number for the writer.
        writer: u32,
        /// The messages, with the limits of [`Down::Reply`].
        messages: Vec<Vec<u8>>,
    },
    /// Close the application's flow writer `writer` of the session, in order.
    CloseWriter {
        /// The session.
        session_id: u32,
        /// The applications' number for the writer.
        writer: u32,
    },
    /// Close the session in order (Close Request).
    Close {
        /// The session.
        session_id: u32,
    },
    /// Abort the session without a close exchange.
    Kill {
        /// The session.
        session_id: u32,
    },
    /// The client's NetStream `flow` of `session_id` now publishes stream `stream`: its audio,
    /// video and data messages feed the stream's subscribers.
    Publish {
        /// The publisher's session (on this worker).
        session_id: u32,
        /// The client's NetStream flow carrying the media.
        flow: u64,
        /// The stream (a control-plane number for the stream name).
        stream: u32,
        /// The stream's key (application path and name), reported back after a control restart.
        key: String,
    },
    /// The server itself now publishes stream `stream` here: an application's publication
    /// (`cumulus:publish`), fed by [`Down::Media`], with no session behind it.
    ServerPublish {
        /// The stream.
        stream: u32,
        /// The stream's key (application path and name).
        key: String,
    },
    /// A media message an application pushes into stream `stream`, published here
    /// (`publication:pushAudioPacket`, `pushVideoPacket`, `pushDataPacket`): a whole TC
    /// message (type, timestamp, body; RFC 7425 §5.1.1), fed to the stream's subscribers as
    /// its publisher's would be.
    Media {
        /// The stream.
        stream: u32,
        /// The message, at most [`MAX_FLASH_MESSAGE`] bytes.
        message: Vec<u8>,
    },
    /// Report the publisher's messages of these kinds on stream `stream`, published here, as
    /// [`Up::Media`] (the applications' `onAudioPacket`, `onVideoPacket`, `onDataPacket`).
    Watch {
        /// The stream.
        stream: u32,
        /// The kinds; none stops the reports.
        events: MediaEvents,
    },
    /// Stream `stream` is no longer published here.
    Unpublish {
        /// The stream.
        stream: u32,
    },
    /// Forward (or stop forwarding) what stream `stream` publishes on this worker to
    /// `worker`, which has subscribers of it.
    Route {
        /// The stream.
        stream: u32,
        /// The subscribers' worker.
        worker: u8,
        /// Whether to add the route (else remove it).
        add: bool,
    },
    /// The client's NetStream `flow` of `session_id` plays stream `stream`.
    Play {
        /// The subscriber's session (on this worker).
        session_id: u32,
        /// The client's NetStream flow that asked to play.
        flow: u64,
        /// The stream.
        stream: u32,
        /// Start at the next key frame instead of the cached one (Cumulus's `play(name, -3000)`).
        unbuffered: bool,
        /// The stream's key, reported back after a control restart.
        key: String,
    },
    /// Stop playing on the client's NetStream `flow` of `session_id`.
    StopPlay {
        /// The subscriber's session.
        session_id: u32,
        /// The client's NetStream flow.
        flow: u64,
    },
    /// Keep this NetConnection state of the session (see [`NetState`]).
    NetState(NetState),
    /// `receiveAudio` / `receiveVideo` on the client's NetStream `flow` of `session_id`.
    Receive {
        /// The subscriber's session.
        session_id: u32,
        /// The client's NetStream flow.
        flow: u64,
        /// Video (else audio).
        video: bool,
        /// Whether to receive it.
        enabled: bool,
    },
    /// An application edits the blacklist (`addToBlacklist`, `removeFromBlacklist`): sent to
    /// worker 0, which hands it to the data plane.
    Blacklist {
        /// Add (else remove).
        add: bool,
        /// The address or prefix, as text (`192.0.2.7`, `2001:db8::/32`).
        prefix: String,
    },
    /// Forward an IHello into a session (RFC 7016 §2.3.3, §3.5.1.5): the client answers the
    /// initiator at `reply_to` directly, opening its NAT to it (P2P rendezvous).
    ForwardIHello {
        /// The session of the peer the initiator looks for.
        session_id: u32,
        /// The endpoint discriminator naming that peer, at most [`MAX_HELLO_FIELD`] bytes.
        epd: Vec<u8>,
        /// Where the client answers the initiator: where its IHello came from, or one of the
        /// addresses it reported with `setPeerInfo`.
        reply_to: SocketAddr,
        /// `reply_to` is the initiator's public address (origin "observed"), not a reported
        /// one (origin "local"), RFC 7016 §2.1.5.
        reply_public: bool,
        /// The initiator's tag, at most [`MAX_HELLO_FIELD`] bytes.
        tag: Vec<u8>,
    },
    /// Tell a client about members of the NetGroup it joined on its `GC` flow `flow`: one
    /// message `0x0B | peer ID` each on the flow's return flow (digest §1.14).
    GroupMembers {
        /// The session.
        session_id: u32,
        /// The client's `GC` flow.
        flow: u64,
        /// The members' peer IDs, at most [`MAX_GROUP_MEMBERS`].
        peers: Vec<[u8; PEER_ID_LEN]>,
    },
    /// The control plane's counters, in the order of
    /// `crate::service::CONTROL_STATS` (sent periodically to worker 0, for the metrics).
    Stats {
        /// The values.
        values: Vec<u64>,
    },
}

impl Up {
    /// Appends the encoding of this message to `out`. On error, `out` is left as it was.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), IpcError> {
        encode_with(out, |w| self.write(w))
    }

    /// Decodes one whole message.
    pub fn decode(bytes: &[u8]) -> Result<Up, IpcError> {
        let (tag, mut r) = Reader::open(bytes)?;
        let up = match tag {
            TAG_UP_HELLO => Up::Hello {
                version: r.u16()?,
                worker: r.u8()?,
                workers: r.u8()?,
                pid: r.u32()?,
            },
            TAG_UP_RESYNC => {
                let n = r.count("sessions", MAX_RESYNC_SESSIONS, MIN_SESSION_INFO_LEN)?;
                let mut sessions = Vec::with_capacity(n);
                for _ in 0..n {
                    sessions.push(SessionInfo {
                        session_id: r.u32()?,
                        peer_id: r.array()?,
                        address: r.address()?,
                    });
                }
                Up::Resync { sessions }
            }
            TAG_UP_NET_STATES => {
                let n = r.count("net states", MAX_RESYNC_NET_STATES, MIN_NET_STATE_LEN)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(r.net_state()?);
                }
                Up::NetStates { entries }
            }
            TAG_UP_STREAMS => {
                let n = r.count("streams", MAX_RESYNC_STREAMS, MIN_STREAM_ENTRY_LEN)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(StreamEntry {
                        session_id: r.u32()?,
                        flow: r.u64()?,
                        stream: r.u32()?,
                        key: r.string("stream key", MAX_STREAM_KEY)?,
                        publisher: r.bool("publisher")?,
                    });
                }
                Up::Streams { entries }
            }
            TAG_UP_QOS => {
                let n = r.count("QoS entries", MAX_QOS_ENTRIES, QOS_ENTRY_LEN)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(QosEntry {
                        session_id: r.u32()?,
                        stream: r.u32()?,
                        publisher: r.bool("publisher")?,
                        lost_ppm: r.u32()?,
                        byte_rate: r.u64()?,
                        congestion_ppm: r.u32()?,
                        latency_ms: Some(r.u32()?).filter(|&l| l != NO_LATENCY),
                        dropped_frames: r.u64()?,
                    });
                }
                Up::Qos { entries }
            }
            TAG_UP_TIMINGS => {
                let n = r.count("timings", MAX_TIMING_ENTRIES, TIMING_ENTRY_LEN)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(SessionTiming {
                        session_id: r.u32()?,
                        rtt_ms: r.u32()?,
                        idle_ms: r.u32()?,
                    });
                }
                Up::Timings { entries }
            }
            TAG_UP_STARTUP => Up::Startup {
                from: r.address()?,
                datagram: r.bytes("datagram", MAX_DATAGRAM)?.to_vec(),
            },
            TAG_UP_MESSAGE => Up::Message {
                session_id: r.u32()?,
                flow: r.u64()?,
                stream_id: r.u64()?,
                data: r.bytes("flash message", MAX_FLASH_MESSAGE)?.to_vec(),
            },
            TAG_UP_MEDIA => Up::Media {
                session_id: r.u32()?,
                stream: r.u32()?,
                message: r.bytes("media message", MAX_FLASH_MESSAGE)?.to_vec(),
            },
            TAG_UP_CLOSED => Up::Closed {
                session_id: r.u32()?,
                failure: match r.u8()? {
                    ENDED_IN_ORDER => None,
                    FAILED_IDLE => Some(Failure::Idle),
                    FAILED_UNACKNOWLEDGED => Some(Failure::Unacknowledged),
                    _ => return Err(IpcError::BadValue("session failure")),
                },
            },
            TAG_UP_GROUP_JOIN => Up::GroupJoin {
                session_id: r.u32()?,
                flow: r.u64()?,
                group_id: r.array()?,
                restored: r.bool("group join restored")?,
            },
            TAG_UP_GROUP_LEAVE => Up::GroupLeave {
                session_id: r.u32()?,
                flow: r.u64()?,
            },
            other => return Err(IpcError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(up)
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), IpcError> {
        match self {
            Up::Hello {
                version,
                worker,
                workers,
                pid,
            } => {
                w.u8(TAG_UP_HELLO)?;
                w.u16(*version)?;
                w.u8(*worker)?;
                w.u8(*workers)?;
                w.u32(*pid)
            }
            Up::Resync { sessions } => {
                w.u8(TAG_UP_RESYNC)?;
                w.count("sessions", sessions.len(), MAX_RESYNC_SESSIONS)?;
                for s in sessions {
                    w.u32(s.session_id)?;
                    w.put(&s.peer_id)?;
                    w.address(&s.address)?;
                }
                Ok(())
            }
            Up::Startup { from, datagram } => {
                w.u8(TAG_UP_STARTUP)?;
                w.address(from)?;
                w.bytes("datagram", datagram, MAX_DATAGRAM)
            }
            Up::Message {
                session_id,
                flow,
                stream_id,
                data,
            } => {
                w.u8(TAG_UP_MESSAGE)?;
                w.u32(*session_id)?;
                w.u64(*flow)?;
                w.u64(*stream_id)?;
                w.bytes("flash message", data, MAX_FLASH_MESSAGE)
            }
            Up::Media {
                session_id,
                stream,
                message,
            } => {
                w.u8(TAG_UP_MEDIA)?;
                w.u32(*session_id)?;
                w.u32(*stream)?;
                w.bytes("media message", message, MAX_FLASH_MESSAGE)
            }
            Up::Closed {
                session_id,
                failure,
            } => {
                w.u8(TAG_UP_CLOSED)?;
                w.u32(*session_id)?;
                w.u8(match failure {
                    None => ENDED_IN_ORDER,
                    Some(Failure::Idle) => FAILED_IDLE,
                    Some(Failure::Unacknowledged) => FAILED_UNACKNOWLEDGED,
                })
            }
            Up::GroupJoin {
                session_id,
                flow,
                group_id,
                restored,
            } => {
                w.u8(TAG_UP_GROUP_JOIN)?;
                w.u32(*session_id)?;
                w.u64(*flow)?;
                w.put(group_id)?;
                w.bool(*restored)
            }
            Up::GroupLeave { session_id, flow } => {
                w.u8(TAG_UP_GROUP_LEAVE)?;
                w.u32(*session_id)?;
                w.u64(*flow)
            }
            Up::NetStates { entries } => {
                w.u8(TAG_UP_NET_STATES)?;
                w.count("net states", entries.len(), MAX_RESYNC_NET_STATES)?;
                entries.iter().try_for_each(|e| w.net_state(e))
            }
            Up::Qos { entries } => {
                w.u8(TAG_UP_QOS)?;
                w.count("QoS entries", entries.len(), MAX_QOS_ENTRIES)?;
                for e in entries {
                    w.u32(e.session_id)?;
                    w.u32(e.stream)?;
                    w.bool(e.publisher)?;
                    w.u32(e.lost_ppm)?;
                    w.u64(e.byte_rate)?;
                    w.u32(e.congestion_ppm)?;
                    w.u32(e.latency_ms.unwrap_or(NO_LATENCY))?;
                    w.u64(e.dropped_frames)?;
                }
                Ok(())
            }
            Up::Timings { entries } => {
                w.u8(TAG_UP_TIMINGS)?;
                w.count("timings", entries.len(), MAX_TIMING_ENTRIES)?;
                for e in entries {
                    w.u32(e.session_id)?;
                    w.u32(e.rtt_ms)?;
                    w.u32(e.idle_ms)?;
                }
                Ok(())
            }
            Up::Streams { entries } => {
                w.u8(TAG_UP_STREAMS)?;
                w.count("streams", entries.len(), MAX_RESYNC_STREAMS)?;
                for e in entries {
                    w.u32(e.session_id)?;
                    w.u64(e.flow)?;
                    w.u32(e.stream)?;
                    w.bytes("stream key", e.key.as_bytes(), MAX_STREAM_KEY)?;
                    w.bool(e.publisher)?;
                }
                Ok(())
            }
        }
    }
}

impl Down {
    /// Appends the encoding of this message to `out`. On error, `out` is left as it was.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), IpcError> {
        encode_with(out, |w| self.write(w))
    }

    /// Decodes one whole message.
    pub fn decode(bytes: &[u8]) -> Result<Down, IpcError> {
        let (tag, mut r) = Reader::open(bytes)?;
        let down = match tag {
            TAG_DOWN_WELCOME => Down::Welcome { version: r.u16()? },
            TAG_DOWN_TRANSMIT => Down::Transmit {
                to: r.address()?,
                datagram: r.bytes("datagram", MAX_DATAGRAM)?.to_vec(),
            },
            TAG_DOWN_INSTALL => Down::Install {
                session_id: r.u32()?,
                far_session_id: r.u32()?,
                address: r.address()?,
                peer_id: r.array()?,
                secrets: r.secrets()?,
            },
            TAG_DOWN_REPLY => Down::Reply {
                session_id: r.u32()?,
                flow: r.u64()?,
                messages: r.messages()?,
            },
            TAG_DOWN_CALL => Down::Call {
                session_id: r.u32()?,
                messages: r.messages()?,
            },
            TAG_DOWN_WRITER => Down::Writer {
                session_id: r.u32()?,
                writer: r.u32()?,
                messages: r.messages()?,
            },
            TAG_DOWN_CLOSE_WRITER => Down::CloseWriter {
                session_id: r.u32()?,
                writer: r.u32()?,
            },
            TAG_DOWN_CLOSE => Down::Close {
                session_id: r.u32()?,
            },
            TAG_DOWN_KILL => Down::Kill {
                session_id: r.u32()?,
            },
            TAG_DOWN_PUBLISH => Down::Publish {
                session_id: r.u32()?,
                flow: r.u64()?,
                stream: r.u32()?,
                key: r.string("stream key", MAX_STREAM_KEY)?,
            },
            TAG_DOWN_UNPUBLISH => Down::Unpublish { stream: r.u32()? },
            TAG_DOWN_SERVER_PUBLISH => Down::ServerPublish {
                stream: r.u32()?,
                key: r.string("stream key", MAX_STREAM_KEY)?,
            },
            TAG_DOWN_WATCH => Down::Watch {
                stream: r.u32()?,
                events: MediaEvents::from_bits(r.u8()?)
                    .ok_or(IpcError::BadValue("media events"))?,
            },
            TAG_DOWN_MEDIA => Down::Media {
                stream: r.u32()?,
                message: r.bytes("media message", MAX_FLASH_MESSAGE)?.to_vec(),
            },
            TAG_DOWN_BLACKLIST => Down::Blacklist {
                add: r.bool("blacklist add")?,
                prefix: r.string("blacklist entry", MAX_BLACKLIST_ENTRY)?,
            },
            TAG_DOWN_FORWARD_IHELLO => Down::ForwardIHello {
                session_id: r.u32()?,
                epd: r.bytes("EPD", MAX_HELLO_FIELD)?.to_vec(),
                reply_to: r.address()?,
                reply_public: r.bool("reply address public")?,
                tag: r.bytes("tag", MAX_HELLO_FIELD)?.to_vec(),
            },
            TAG_DOWN_ROUTE => Down::Route {
                stream: r.u32()?,
                worker: r.u8()?,
                add: r.bool("route add")?,
            },
            TAG_DOWN_PLAY => Down::Play {
                session_id: r.u32()?,
                flow: r.u64()?,
                stream: r.u32()?,
                unbuffered: r.bool("unbuffered")?,
                key: r.string("stream key", MAX_STREAM_KEY)?,
            },
            TAG_DOWN_NET_STATE => Down::NetState(r.net_state()?),
            TAG_DOWN_RECEIVE => Down::Receive {
                session_id: r.u32()?,
                flow: r.u64()?,
                video: r.bool("receive video")?,
                enabled: r.bool("receive enabled")?,
            },
            TAG_DOWN_STOP_PLAY => Down::StopPlay {
                session_id: r.u32()?,
                flow: r.u64()?,
            },
            TAG_DOWN_GROUP_MEMBERS => {
                let session_id = r.u32()?;
                let flow = r.u64()?;
                let n = r.count("group members", MAX_GROUP_MEMBERS, PEER_ID_LEN)?;
                let mut peers = Vec::with_capacity(n);
                for _ in 0..n {
                    peers.push(r.array()?);
                }
                Down::GroupMembers {
                    session_id,
                    flow,
                    peers,
                }
            }
            TAG_DOWN_STATS => {
                let n = r.count("stats", MAX_STATS, STAT_LEN)?;
                let mut values = Vec::with_capacity(n);
                for _ in 0..n {
                    values.push(r.u64()?);
                }
                Down::Stats { values }
            }
            other => return Err(IpcError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(down)
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), IpcError> {
        match self {
            Down::Welcome { version } => {
                w.u8(TAG_DOWN_WELCOME)?;
                w.u16(*version)
            }
            Down::Transmit { to, datagram } => {
                w.u8(TAG_DOWN_TRANSMIT)?;
                w.address(to)?;
                w.bytes("datagram", datagram, MAX_DATAGRAM)
            }
            Down::Install {
                session_id,
                far_session_id,
                address,
                peer_id,
                secrets,
            } => {
                w.u8(TAG_DOWN_INSTALL)?;
                w.u32(*session_id)?;
                w.u32(*far_session_id)?;
                w.address(address)?;
                w.put(peer_id)?;
                w.secrets(secrets)
            }
            Down::Reply {
                session_id,
                flow,
                messages,
            } => {
                w.u8(TAG_DOWN_REPLY)?;
                w.u32(*session_id)?;
                w.u64(*flow)?;
                w.messages(messages)
            }
            Down::Call {
                session_id,
                messages,
            } => {
                w.u8(TAG_DOWN_CALL)?;
                w.u32(*session_id)?;
                w.messages(messages)
            }
            Down::Writer {
                session_id,
                writer,
                messages,
            } => {
                w.u8(TAG_DOWN_WRITER)?;
                w.u32(*session_id)?;
                w.u32(*writer)?;
                w.messages(messages)
            }
            Down::CloseWriter { session_id, writer } => {
                w.u8(TAG_DOWN_CLOSE_WRITER)?;
                w.u32(*session_id)?;
                w.u32(*writer)
            }
            Down::Close { session_id } => {
                w.u8(TAG_DOWN_CLOSE)?;
                w.u32(*session_id)
            }
            Down::Kill { session_id } => {
                w.u8(TAG_DOWN_KILL)?;
                w.u32(*session_id)
            }
            Down::Publish {
                session_id,
                flow,
                stream,
                key,
            } => {
                w.u8(TAG_DOWN_PUBLISH)?;
                w.u32(*session_id)?;
                w.u64(*flow)?;
                w.u32(*stream)?;
                w.bytes("stream key", key.as_bytes(), MAX_STREAM_KEY)
            }
            Down::Unpublish { stream } => {
                w.u8(TAG_DOWN_UNPUBLISH)?;
                w.u32(*stream)
            }
            Down::ServerPublish { stream, key } => {
                w.u8(TAG_DOWN_SERVER_PUBLISH)?;
                w.u32(*stream)?;
                w.bytes("stream key", key.as_bytes(), MAX_STREAM_KEY)
            }
            Down::Watch { stream, events } => {
                w.u8(TAG_DOWN_WATCH)?;
                w.u32(*stream)?;
                w.u8(events.bits())
            }
            Down::Media { stream, message } => {
                w.u8(TAG_DOWN_MEDIA)?;
                w.u32(*stream)?;
                w.bytes("media message", message, MAX_FLASH_MESSAGE)
            }
            Down::Blacklist { add, prefix } => {
                w.u8(TAG_DOWN_BLACKLIST)?;
                w.bool(*add)?;
                w.bytes("blacklist entry", prefix.as_bytes(), MAX_BLACKLIST_ENTRY)
            }
            Down::ForwardIHello {
                session_id,
                epd,
                reply_to,
                reply_public,
                tag,
            } => {
                w.u8(TAG_DOWN_FORWARD_IHELLO)?;
                w.u32(*session_id)?;
                w.bytes("EPD", epd, MAX_HELLO_FIELD)?;
                w.address(reply_to)?;
                w.bool(*reply_public)?;
                w.bytes("tag", tag, MAX_HELLO_FIELD)
            }
            Down::Route {
                stream,
                worker,
                add,
            } => {
                w.u8(TAG_DOWN_ROUTE)?;
                w.u32(*stream)?;
                w.u8(*worker)?;
                w.bool(*add)
            }
            Down::Play {
                session_id,
                flow,
                stream,
                unbuffered,
                key,
            } => {
                w.u8(TAG_DOWN_PLAY)?;
                w.u32(*session_id)?;
                w.u64(*flow)?;
                w.u32(*stream)?;
                w.bool(*unbuffered)?;
                w.bytes("stream key", key.as_bytes(), MAX_STREAM_KEY)
            }
            Down::NetState(state) => {
                w.u8(TAG_DOWN_NET_STATE)?;
                w.net_state(state)
            }
            Down::Receive {
                session_id,
                flow,
                video,
                enabled,
            } => {
                w.u8(TAG_DOWN_RECEIVE)?;
                w.u32(*session_id)?;
                w.u64(*flow)?;
                w.bool(*video)?;
                w.bool(*enabled)
            }
            Down::StopPlay { session_id, flow } => {
                w.u8(TAG_DOWN_STOP_PLAY)?;
                w.u32(*session_id)?;
                w.u64(*flow)
            }
            Down::GroupMembers {
                session_id,
                flow,
                peers,
            } => {
                w.u8(TAG_DOWN_GROUP_MEMBERS)?;
                w.u32(*session_id)?;
                w.u64(*flow)?;
                w.count("group members", peers.len(), MAX_GROUP_MEMBERS)?;
                peers.iter().try_for_each(|p| w.put(p))
            }
            Down::Stats { values } => {
                w.u8(TAG_DOWN_STATS)?;
                w.count("stats", values.len(), MAX_STATS)?;
                values.iter().try_for_each(|v| w.u64(*v))
            }
        }
    }
}

/// Writes the version byte and then the rest through `body`; undoes everything on error.
fn encode_with(
    out: &mut Vec<u8>,
    body: impl FnOnce(&mut Writer<'_>) -> Result<(), IpcError>,
) -> Result<(), IpcError> {
    let start = out.len();
    let mut w = Writer { out, start };
    let result = w.u8(IPC_VERSION).and_then(|()| body(&mut w));
    if result.is_err() {
        w.out.truncate(start);
    }
    result
}

/// Appends to a buffer, never letting the message (from `start`) grow over [`MAX_MESSAGE`].
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), IpcError> {
        let len = (self.out.len() - self.start).saturating_add(bytes.len());
        if len > MAX_MESSAGE {
            return Err(IpcError::TooLong {
                what: "message",
                len,
                max: MAX_MESSAGE,
            });
        }
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn u8(&mut self, v: u8) -> Result<(), IpcError> {
        self.put(&[v])
    }

    fn u16(&mut self, v: u16) -> Result<(), IpcError> {
        self.put(&v.to_be_bytes())
    }

    fn u32(&mut self, v: u32) -> Result<(), IpcError> {
        self.put(&v.to_be_bytes())
    }

    fn u64(&mut self, v: u64) -> Result<(), IpcError> {
        self.put(&v.to_be_bytes())
    }

    fn bool(&mut self, v: bool) -> Result<(), IpcError> {
        self.u8(if v { TRUE } else { FALSE })
    }

    /// A `u32` length or count prefix, after checking `len` against `max`.
    fn count(&mut self, what: &'static str, len: usize, max: usize) -> Result<(), IpcError> {
        let too_long = IpcError::TooLong { what, len, max };
        if len > max {
            return Err(too_long);
        }
        self.u32(u32::try_from(len).map_err(|_| too_long)?)
    }

    fn bytes(&mut self, what: &'static str, data: &[u8], max: usize) -> Result<(), IpcError> {
        self.count(what, data.len(), max)?;
        self.put(data)
    }

    fn address(&mut self, address: &SocketAddr) -> Result<(), IpcError> {
        match address.ip() {
            IpAddr::V4(ip) => {
                self.u8(FAMILY_V4)?;
                self.put(&ip.octets())?;
            }
            IpAddr::V6(ip) => {
                self.u8(FAMILY_V6)?;
                self.put(&ip.octets())?;
            }
        }
        self.u16(address.port())
    }

    fn options(&mut self, options: &DirectionOptions) -> Result<(), IpcError> {
        match options.hmac_len {
            Some(len) if (MIN_HMAC_LEN..=MAX_HMAC_LEN).contains(&len) => {
                self.bool(true)?;
                self.u8(len)?;
            }
            Some(_) => return Err(IpcError::BadValue("HMAC length")),
            None => {
                self.bool(false)?;
                self.u8(0)?;
            }
        }
        self.bool(options.sseq)
    }

    fn secrets(&mut self, secrets: &SessionSecrets) -> Result<(), IpcError> {
        let k = &secrets.keys;
        for key in [
            &k.encrypt,
            &k.decrypt,
            &k.tx_hmac_key,
            &k.rx_hmac_key,
            &k.near_nonce,
            &k.far_nonce,
        ] {
            self.put(key)?;
        }
        self.options(&secrets.send)?;
        self.options(&secrets.receive)
    }

    fn net_state(&mut self, n: &NetState) -> Result<(), IpcError> {
        self.u32(n.session_id)?;
        self.bytes("application path", n.app.as_bytes(), MAX_APP_PATH)?;
        self.u32(n.next_stream)
    }

    fn messages(&mut self, messages: &[Vec<u8>]) -> Result<(), IpcError> {
        self.count("messages", messages.len(), MAX_MESSAGES_PER_REPLY)?;
        for m in messages {
            self.bytes("flash message", m, MAX_FLASH_MESSAGE)?;
        }
        Ok(())
    }
}

/// Reads a message front to back; every read checks the remaining length first.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the overall length and the version byte; answers the tag and a reader on the body.
    fn open(bytes: &'a [u8]) -> Result<(u8, Reader<'a>), IpcError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(IpcError::TooLong {
                what: "message",
                len: bytes.len(),
                max: MAX_MESSAGE,
            });
        }
        let mut r = Reader { rest: bytes };
        let version = r.u8()?;
        if version != IPC_VERSION {
            return Err(IpcError::BadVersion(version));
        }
        let tag = r.u8()?;
        Ok((tag, r))
    }

    fn finish(self) -> Result<(), IpcError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(IpcError::TrailingBytes(n)),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], IpcError> {
        if n > self.rest.len() {
            return Err(IpcError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], IpcError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(IpcError::Truncated)?;
        self.rest = tail;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, IpcError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, IpcError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, IpcError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, IpcError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, IpcError> {
        match self.u8()? {
            FALSE => Ok(false),
            TRUE => Ok(true),
            _ => Err(IpcError::BadValue(what)),
        }
    }

    /// A `u32` length or count prefix, checked against `max` and against the remaining input
    /// (each element takes at least `min_element_len` bytes). Only then may a caller allocate.
    fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_element_len: usize,
    ) -> Result<usize, IpcError> {
        let raw = self.u32()?;
        let len = usize::try_from(raw).unwrap_or(usize::MAX);
        if len > max {
            return Err(IpcError::TooLong { what, len, max });
        }
        if len.saturating_mul(min_element_len) > self.rest.len() {
            return Err(IpcError::Truncated);
        }
        Ok(len)
    }

    fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], IpcError> {
        let len = self.count(what, max, 1)?;
        self.take(len)
    }

    fn net_state(&mut self) -> Result<NetState, IpcError> {
        Ok(NetState {
            session_id: self.u32()?,
            app: self.string("application path", MAX_APP_PATH)?,
            next_stream: self.u32()?,
        })
    }

    fn string(&mut self, what: &'static str, max: usize) -> Result<String, IpcError> {
        let bytes = self.bytes(what, max)?;
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| IpcError::BadValue(what))
    }

    fn address(&mut self) -> Result<SocketAddr, IpcError> {
        match self.u8()? {
            FAMILY_V4 => {
                let ip = Ipv4Addr::from(self.array::<IPV4_LEN>()?);
                Ok(SocketAddr::from((ip, self.u16()?)))
            }
            FAMILY_V6 => {
                let ip = Ipv6Addr::from(self.array::<IPV6_LEN>()?);
                Ok(SocketAddr::V6(SocketAddrV6::new(ip, self.u16()?, 0, 0)))
            }
            _ => Err(IpcError::BadValue("address family")),
        }
    }

    fn options(&mut self) -> Result<DirectionOptions, IpcError> {
        let has_hmac = self.bool("HMAC presence")?;
        let len = self.u8()?;
        let hmac_len = match has_hmac {
            true if (MIN_HMAC_LEN..=MAX_HMAC_LEN).contains(&len) => Some(len),
            true => return Err(IpcError::BadValue("HMAC length")),
            false if len == 0 => None,
            false => return Err(IpcError::BadValue("HMAC length without HMAC")),
        };
        Ok(DirectionOptions {
            hmac_len,
            sseq: self.bool("session sequence numbers")?,
        })
    }

    fn secrets(&mut self) -> Result<SessionSecrets, IpcError> {
        let keys = SessionKeys {
            encrypt: self.array::<DERIVED_LEN>()?,
            decrypt: self.array()?,
            tx_hmac_key: self.array()?,
            rx_hmac_key: self.array()?,
            near_nonce: self.array()?,
            far_nonce: self.array()?,
        };
        Ok(SessionSecrets {
            keys,
            send: self.options()?,
            receive: self.options()?,
        })
    }

    fn messages(&mut self) -> Result<Vec<Vec<u8>>, IpcError> {
        let n = self.count("messages", MAX_MESSAGES_PER_REPLY, PREFIX_LEN)?;
        let mut messages = Vec::with_capacity(n);
        for _ in 0..n {
            messages.push(self.bytes("flash message", MAX_FLASH_MESSAGE)?.to_vec());
        }
        Ok(messages)
    }
}

/// Decodes `data` as [`Up`] and as [`Down`]; whatever decodes must re-encode to exactly `data`
/// (the encoding is canonical) and decode again to the same value, and nothing decodes as both.
/// Shared by the cargo-fuzz target `ipc` and the corpus replay test; panics on a bug.
#[doc(hidden)]
pub fn fuzz_ipc(data: &[u8]) {
    let up = Up::decode(data);
    let down = Down::decode(data);
    assert!(
        !(up.is_ok() && down.is_ok()),
        "one message decoded in both directions"
    );
    if let Ok(up) = up {
        let mut out = Vec::new();
        up.encode(&mut out).expect("a decoded Up must re-encode");
        assert_eq!(out, data, "Up re-encoding differs");
        assert_eq!(Up::decode(&out), Ok(up), "Up round trip differs");
    }
    if let Ok(down) = down {
        let mut out = Vec::new();
        down.encode(&mut out)
            .expect("a decoded Down must re-encode");
        assert_eq!(out, data, "Down re-encoding differs");
        assert_eq!(Down::decode(&out), Ok(down), "Down round trip differs");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn encode_up(up: &Up) -> Vec<u8> {
        let mut out = Vec::new();
        up.encode(&mut out).expect("encodable");
        out
    }

    fn encode_down(down: &Down) -> Vec<u8> {
        let mut out = Vec::new();
        down.encode(&mut out).expect("encodable");
        out
    }

    fn keys(seed: u8) -> SessionKeys {
        SessionKeys {
            encrypt: [seed; DERIVED_LEN],
            decrypt: [seed.wrapping_add(1); DERIVED_LEN],
            tx_hmac_key: [seed.wrapping_add(2); DERIVED_LEN],
            rx_hmac_key: [seed.wrapping_add(3); DERIVED_LEN],
            near_nonce: [seed.wrapping_add(4); DERIVED_LEN],
            far_nonce: [seed.wrapping_add(5); DERIVED_LEN],
        }
    }

    fn install(send: DirectionOptions) -> Down {
        Down::Install {
            session_id: 1,
            far_session_id: 2,
            address: SocketAddr::from(([192, 0, 2, 1], 1935)),
            peer_id: [9; PEER_ID_LEN],
            secrets: SessionSecrets {
                keys: keys(0x10),
                send,
                receive: DirectionOptions::default(),
            },
        }
    }

    /// The documented format, byte by byte.
    #[test]
    fn hello_encoding() {
        let hello = Up::Hello {
            version: 0x0102,
            worker: 3,
            workers: 4,
            pid: 0x0506_0708,
        };
        let bytes = encode_up(&hello);
        assert_eq!(
            bytes,
            [
                IPC_VERSION, // version
                0x01,        // tag: Hello
                0x01,
                0x02, // version
                0x03, // worker
                0x04, // workers
                0x05,
                0x06,
                0x07,
                0x08, // pid
            ]
        );
        assert_eq!(Up::decode(&bytes), Ok(hello));
    }

    /// The documented format, byte by byte, with an IPv4 and an IPv6 address.
    #[test]
    fn transmit_encoding() {
        let v4 = Down::Transmit {
            to: SocketAddr::from(([192, 0, 2, 1], 1935)),
            datagram: vec![0xAA, 0xBB, 0xCC],
        };
        let bytes = encode_down(&v4);
        assert_eq!(
            bytes,
            [
                IPC_VERSION, // version
                0x82,        // tag: Transmit
                0x04,        // family
                192,
                0,
                2,
                1, // IPv4 address
                0x07,
                0x8F, // port 1935
                0x00,
                0x00,
                0x00,
                0x03, // datagram length
                0xAA,
                0xBB,
                0xCC, // datagram
            ]
        );
        assert_eq!(Down::decode(&bytes), Ok(v4));

        let v6 = Down::Transmit {
            to: SocketAddr::from((Ipv6Addr::LOCALHOST, 0x1234)),
            datagram: Vec::new(),
        };
        let mut expected = vec![IPC_VERSION, 0x82, 0x06];
        expected.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        expected.extend_from_slice(&[0x12, 0x34, 0, 0, 0, 0]);
        assert_eq!(encode_down(&v6), expected);
        assert_eq!(Down::decode(&expected), Ok(v6));
    }

    #[test]
    fn encode_appends() {
        let mut out = vec![0xEE];
        Down::Kill { session_id: 7 }.encode(&mut out).unwrap();
        assert_eq!(out, [0xEE, IPC_VERSION, 0x87, 0, 0, 0, 7]);
    }

    /// Asserts that `encode` fails with `TooLong { what, len, max }` and leaves a buffer that
    /// already held a byte as it was.
    fn assert_too_long(
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), IpcError>,
        what: &'static str,
        len: usize,
        max: usize,
    ) {
        let mut out = vec![0x55];
        assert_eq!(encode(&mut out), Err(IpcError::TooLong { what, len, max }));
        assert_eq!(out, [0x55]);
    }

    #[test]
    fn over_limit_encodes_are_too_long_and_leave_the_buffer_alone() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let too_long_datagram = vec![0; MAX_DATAGRAM + 1];
        assert_too_long(
            |out| {
                Up::Startup {
                    from: addr,
                    datagram: too_long_datagram.clone(),
                }
                .encode(out)
            },
            "datagram",
            MAX_DATAGRAM + 1,
            MAX_DATAGRAM,
        );
        assert_too_long(
            |out| {
                Down::Transmit {
                    to: addr,
                    datagram: too_long_datagram,
                }
                .encode(out)
            },
            "datagram",
            MAX_DATAGRAM + 1,
            MAX_DATAGRAM,
        );
        assert_too_long(
            |out| {
                Up::Message {
                    session_id: 1,
                    flow: 2,
                    stream_id: 3,
                    data: vec![0; MAX_FLASH_MESSAGE + 1],
                }
                .encode(out)
            },
            "flash message",
            MAX_FLASH_MESSAGE + 1,
            MAX_FLASH_MESSAGE,
        );
        let session = SessionInfo {
            session_id: 1,
            peer_id: [0; PEER_ID_LEN],
            address: addr,
        };
        assert_too_long(
            |out| {
                Up::Resync {
                    sessions: vec![session; MAX_RESYNC_SESSIONS + 1],
                }
                .encode(out)
            },
            "sessions",
            MAX_RESYNC_SESSIONS + 1,
            MAX_RESYNC_SESSIONS,
        );
        assert_too_long(
            |out| {
                Down::Call {
                    session_id: 1,
                    messages: vec![Vec::new(); MAX_MESSAGES_PER_REPLY + 1],
                }
                .encode(out)
            },
            "messages",
            MAX_MESSAGES_PER_REPLY + 1,
            MAX_MESSAGES_PER_REPLY,
        );
        assert_too_long(
            |out| {
                Down::Reply {
                    session_id: 1,
                    flow: 2,
                    messages: vec![vec![0; MAX_FLASH_MESSAGE + 1]],
                }
                .encode(out)
            },
            "flash message",
            MAX_FLASH_MESSAGE + 1,
            MAX_FLASH_MESSAGE,
        );
        // Each message is within its limit, but together they exceed MAX_MESSAGE: the second
        // one is refused. Version, tag, session ID, flow, count, then two length-prefixed
        // messages.
        assert_too_long(
            |out| {
                Down::Reply {
                    session_id: 1,
                    flow: 2,
                    messages: vec![vec![0; MAX_FLASH_MESSAGE]; 2],
                }
                .encode(out)
            },
            "message",
            1 + 1 + 4 + 8 + PREFIX_LEN + 2 * (PREFIX_LEN + MAX_FLASH_MESSAGE),
            MAX_MESSAGE,
        );
    }

    #[test]
    fn limits_themselves_are_accepted() {
        let session = SessionInfo {
            session_id: u32::MAX,
            peer_id: [0xFF; PEER_ID_LEN],
            address: SocketAddr::from((Ipv6Addr::UNSPECIFIED, u16::MAX)),
        };
        let resync = Up::Resync {
            sessions: vec![session; MAX_RESYNC_SESSIONS],
        };
        let bytes = encode_up(&resync);
        assert!(bytes.len() <= MAX_MESSAGE);
        assert_eq!(Up::decode(&bytes), Ok(resync));

        let message = Up::Message {
            session_id: 1,
            flow: u64::MAX,
            stream_id: u64::MAX,
            data: vec![0x5A; MAX_FLASH_MESSAGE],
        };
        assert_eq!(Up::decode(&encode_up(&message)), Ok(message));

        let call = Down::Call {
            session_id: 1,
            messages: vec![vec![1, 2, 3]; MAX_MESSAGES_PER_REPLY],
        };
        assert_eq!(Down::decode(&encode_down(&call)), Ok(call));
    }

    #[test]
    fn bad_hmac_lengths_are_refused() {
        for len in [0, MIN_HMAC_LEN - 1, MAX_HMAC_LEN + 1, u8::MAX] {
            let bad = install(DirectionOptions {
                hmac_len: Some(len),
                sseq: false,
            });
            let mut out = Vec::new();
            assert_eq!(bad.encode(&mut out), Err(IpcError::BadValue("HMAC length")));
            assert!(out.is_empty());
        }
    }

    /// Where the send options of an encoded [`install`] start: version, tag, two session IDs,
    /// an IPv4 address, the peer ID and six keys.
    const INSTALL_SEND_OPTIONS: usize = 2 + 4 + 4 + MIN_ADDRESS_LEN + PEER_ID_LEN + 6 * DERIVED_LEN;

    #[test]
    fn non_canonical_option_bytes_are_refused() {
        let good = encode_down(&install(DirectionOptions {
            hmac_len: Some(MIN_HMAC_LEN),
            sseq: true,
        }));
        assert_eq!(
            good[INSTALL_SEND_OPTIONS..INSTALL_SEND_OPTIONS + 3],
            [TRUE, MIN_HMAC_LEN, TRUE]
        );
        for (options, expected) in [
            ([2, MIN_HMAC_LEN, TRUE], "HMAC presence"),
            ([TRUE, MIN_HMAC_LEN - 1, TRUE], "HMAC length"),
            ([TRUE, MAX_HMAC_LEN + 1, TRUE], "HMAC length"),
            ([FALSE, MIN_HMAC_LEN, TRUE], "HMAC length without HMAC"),
            ([TRUE, MIN_HMAC_LEN, 2], "session sequence numbers"),
        ] {
            let mut bad = good.clone();
            bad[INSTALL_SEND_OPTIONS..INSTALL_SEND_OPTIONS + 3].copy_from_slice(&options);
            assert_eq!(Down::decode(&bad), Err(IpcError::BadValue(expected)));
        }
    }

    #[test]
    fn bad_address_family_is_refused() {
        let mut bytes = encode_up(&Up::Startup {
            from: SocketAddr::from(([10, 0, 0, 1], 5)),
            datagram: vec![1],
        });
        bytes[2] = 5;
        assert_eq!(
            Up::decode(&bytes),
            Err(IpcError::BadValue("address family"))
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode_up(&Up::Closed {
            session_id: 3,
            failure: None,
        });
        bytes.extend_from_slice(&[0, 0]);
        assert_eq!(Up::decode(&bytes), Err(IpcError::TrailingBytes(2)));
        let mut bytes = encode_down(&Down::Welcome { version: 1 });
        bytes.push(0);
        assert_eq!(Down::decode(&bytes), Err(IpcError::TrailingBytes(1)));
    }

    #[test]
    fn an_unknown_failure_is_refused() {
        let mut bytes = encode_up(&Up::Closed {
            session_id: 3,
            failure: Some(Failure::Unacknowledged),
        });
        *bytes.last_mut().unwrap() = FAILED_UNACKNOWLEDGED + 1;
        assert_eq!(
            Up::decode(&bytes),
            Err(IpcError::BadValue("session failure"))
        );
    }

    #[test]
    fn unknown_tags_are_refused() {
        assert_eq!(
            Up::decode(&[IPC_VERSION, 0x00]),
            Err(IpcError::UnknownTag(0x00))
        );
        assert_eq!(
            Up::decode(&[IPC_VERSION, 0x7F, 1, 2]),
            Err(IpcError::UnknownTag(0x7F))
        );
        // Each direction refuses the other's tags.
        let close = encode_down(&Down::Close { session_id: 1 });
        assert_eq!(
            Up::decode(&close),
            Err(IpcError::UnknownTag(TAG_DOWN_CLOSE))
        );
        let closed = encode_up(&Up::Closed {
            session_id: 1,
            failure: Some(Failure::Idle),
        });
        assert_eq!(
            Down::decode(&closed),
            Err(IpcError::UnknownTag(TAG_UP_CLOSED))
        );
    }

    #[test]
    fn huge_lengths_are_refused_before_allocating() {
        // A Startup whose datagram length claims 4 GiB, with no bytes behind it.
        let mut bytes = vec![IPC_VERSION, TAG_UP_STARTUP, FAMILY_V4, 1, 2, 3, 4, 0, 1];
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            Up::decode(&bytes),
            Err(IpcError::TooLong {
                what: "datagram",
                len: u32::MAX as usize,
                max: MAX_DATAGRAM,
            })
        );
        // A Resync claiming the maximum number of sessions with none present.
        let mut bytes = vec![IPC_VERSION, TAG_UP_RESYNC];
        bytes.extend_from_slice(&(MAX_RESYNC_SESSIONS as u32).to_be_bytes());
        assert_eq!(Up::decode(&bytes), Err(IpcError::Truncated));
        // A Call claiming the maximum number of messages with one present.
        let mut bytes = vec![IPC_VERSION, TAG_DOWN_CALL, 0, 0, 0, 1];
        bytes.extend_from_slice(&(MAX_MESSAGES_PER_REPLY as u32).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(Down::decode(&bytes), Err(IpcError::Truncated));
    }

    #[test]
    fn oversized_input_is_refused() {
        let bytes = vec![0; MAX_MESSAGE + 1];
        let expected = Some(IpcError::TooLong {
            what: "message",
            len: MAX_MESSAGE + 1,
            max: MAX_MESSAGE,
        });
        assert_eq!(Up::decode(&bytes).err(), expected);
        assert_eq!(Down::decode(&bytes).err(), expected);
    }

    #[test]
    fn empty_input_is_truncated() {
        assert_eq!(Up::decode(&[]), Err(IpcError::Truncated));
        assert_eq!(Down::decode(&[IPC_VERSION]), Err(IpcError::Truncated));
    }

    /// Every committed seed decodes in exactly one direction and passes the fuzz invariants.
    #[test]
    fn replays_fuzz_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/ipc");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("corpus directory") {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            assert!(
                Up::decode(&data).is_ok() || Down::decode(&data).is_ok(),
                "{} is not a valid message",
                path.display()
            );
            fuzz_ipc(&data);
            n += 1;
        }
        assert!(n > 0, "empty corpus");
    }

    fn arb_address() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; IPV4_LEN]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::from((Ipv4Addr::from(ip), port))),
            (any::<[u8; IPV6_LEN]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port))),
        ]
    }

    fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..=max)
    }

    fn arb_options() -> impl Strategy<Value = DirectionOptions> {
        (
            proptest::option::of(MIN_HMAC_LEN..=MAX_HMAC_LEN),
            any::<bool>(),
        )
            .prop_map(|(hmac_len, sseq)| DirectionOptions { hmac_len, sseq })
    }

    fn arb_secrets() -> impl Strategy<Value = SessionSecrets> {
        (
            any::<[[u8; DERIVED_LEN]; 6]>(),
            arb_options(),
            arb_options(),
        )
            .prop_map(
                |([e, d, tx, rx, near, far], send, receive)| SessionSecrets {
                    keys: SessionKeys {
                        encrypt: e,
                        decrypt: d,
                        tx_hmac_key: tx,
                        rx_hmac_key: rx,
                        near_nonce: near,
                        far_nonce: far,
                    },
                    send,
                    receive,
                },
            )
    }

    /// Flash message lists within the count limit; the messages are kept short so that a whole
    /// list stays under [`MAX_MESSAGE`] (the per-message limit is tested separately).
    fn arb_messages() -> impl Strategy<Value = Vec<Vec<u8>>> {
        vec(arb_bytes(256), 0..=MAX_MESSAGES_PER_REPLY)
    }

    fn arb_up() -> impl Strategy<Value = Up> {
        let session = (any::<u32>(), any::<[u8; PEER_ID_LEN]>(), arb_address()).prop_map(
            |(session_id, peer_id, address)| SessionInfo {
                session_id,
                peer_id,
                address,
            },
        );
        prop_oneof![
            (any::<u16>(), any::<u8>(), any::<u8>(), any::<u32>()).prop_map(
                |(version, worker, workers, pid)| Up::Hello {
                    version,
                    worker,
                    workers,
                    pid,
                }
            ),
            vec(session, 0..64).prop_map(|sessions| Up::Resync { sessions }),
            (arb_address(), arb_bytes(MAX_DATAGRAM))
                .prop_map(|(from, datagram)| Up::Startup { from, datagram }),
            (any::<u32>(), any::<u64>(), any::<u64>(), arb_bytes(2048)).prop_map(
                |(session_id, flow, stream_id, data)| Up::Message {
                    session_id,
                    flow,
                    stream_id,
                    data,
                }
            ),
            (
                any::<u32>(),
                prop_oneof![
                    Just(None),
                    Just(Some(Failure::Idle)),
                    Just(Some(Failure::Unacknowledged))
                ]
            )
                .prop_map(|(session_id, failure)| Up::Closed {
                    session_id,
                    failure
                }),
            (
                any::<u32>(),
                any::<u64>(),
                any::<[u8; PEER_ID_LEN]>(),
                any::<bool>()
            )
                .prop_map(|(session_id, flow, group_id, restored)| Up::GroupJoin {
                    session_id,
                    flow,
                    group_id,
                    restored
                }),
            (any::<u32>(), any::<u64>())
                .prop_map(|(session_id, flow)| Up::GroupLeave { session_id, flow }),
            (any::<u32>(), any::<u32>(), arb_bytes(2048)).prop_map(
                |(session_id, stream, message)| Up::Media {
                    session_id,
                    stream,
                    message
                }
            ),
            vec(
                (
                    any::<u32>(),
                    any::<u64>(),
                    any::<u32>(),
                    "\\PC{0,30}",
                    any::<bool>()
                )
                    .prop_map(|(session_id, flow, stream, key, publisher)| {
                        StreamEntry {
                            session_id,
                            flow,
                            stream,
                            key,
                            publisher,
                        }
                    }),
                0..8
            )
            .prop_map(|entries| Up::Streams { entries }),
            vec(
                (
                    any::<(u32, u32, bool, u32)>(),
                    any::<(u64, u32, u64)>(),
                    proptest::option::of(0..u32::MAX)
                )
                    .prop_map(
                        |(
                            (session_id, stream, publisher, lost_ppm),
                            (byte_rate, congestion_ppm, dropped_frames),
                            latency_ms,
                        )| QosEntry {
                            session_id,
                            stream,
                            publisher,
                            lost_ppm,
                            byte_rate,
                            congestion_ppm,
                            latency_ms,
                            dropped_frames,
                        }
                    ),
                0..8
            )
            .prop_map(|entries| Up::Qos { entries }),
            vec(
                any::<(u32, u32, u32)>().prop_map(|(session_id, rtt_ms, idle_ms)| SessionTiming {
                    session_id,
                    rtt_ms,
                    idle_ms
                }),
                0..8
            )
            .prop_map(|entries| Up::Timings { entries }),
            vec(
                (any::<u32>(), "\\PC{0,30}", any::<u32>()).prop_map(
                    |(session_id, app, next_stream)| {
                        NetState {
                            session_id,
                            app,
                            next_stream,
                        }
                    }
                ),
                0..8
            )
            .prop_map(|entries| Up::NetStates { entries }),
        ]
    }

    fn arb_down() -> impl Strategy<Value = Down> {
        prop_oneof![
            any::<u16>().prop_map(|version| Down::Welcome { version }),
            (arb_address(), arb_bytes(MAX_DATAGRAM))
                .prop_map(|(to, datagram)| Down::Transmit { to, datagram }),
            (
                any::<u32>(),
                any::<u32>(),
                arb_address(),
                any::<[u8; PEER_ID_LEN]>(),
                arb_secrets(),
            )
                .prop_map(|(session_id, far_session_id, address, peer_id, secrets)| {
                    Down::Install {
                        session_id,
                        far_session_id,
                        address,
                        peer_id,
                        secrets,
                    }
                }),
            (any::<u32>(), any::<u64>(), arb_messages()).prop_map(
                |(session_id, flow, messages)| Down::Reply {
                    session_id,
                    flow,
                    messages,
                }
            ),
            (any::<u32>(), arb_messages()).prop_map(|(session_id, messages)| Down::Call {
                session_id,
                messages
            }),
            (any::<u32>(), any::<u32>(), arb_messages()).prop_map(
                |(session_id, writer, messages)| Down::Writer {
                    session_id,
                    writer,
                    messages
                }
            ),
            any::<(u32, u32)>()
                .prop_map(|(session_id, writer)| Down::CloseWriter { session_id, writer }),
            any::<u32>().prop_map(|session_id| Down::Close { session_id }),
            any::<u32>().prop_map(|session_id| Down::Kill { session_id }),
            vec(any::<u64>(), 0..=MAX_STATS).prop_map(|values| Down::Stats { values }),
            (
                any::<u32>(),
                any::<u64>(),
                vec(any::<[u8; PEER_ID_LEN]>(), 0..=MAX_GROUP_MEMBERS)
            )
                .prop_map(|(session_id, flow, peers)| Down::GroupMembers {
                    session_id,
                    flow,
                    peers
                }),
            (any::<u32>(), any::<u64>(), any::<u32>(), "[a-z/]{0,40}").prop_map(
                |(session_id, flow, stream, key)| Down::Publish {
                    session_id,
                    flow,
                    stream,
                    key,
                }
            ),
            any::<u32>().prop_map(|stream| Down::Unpublish { stream }),
            (any::<u32>(), "[a-z/]{0,40}")
                .prop_map(|(stream, key)| Down::ServerPublish { stream, key }),
            (any::<u32>(), arb_bytes(2048))
                .prop_map(|(stream, message)| Down::Media { stream, message }),
            (any::<u32>(), 0..=MediaEvents::ALL.bits()).prop_map(|(stream, bits)| Down::Watch {
                stream,
                events: MediaEvents::from_bits(bits).unwrap()
            }),
            (any::<bool>(), "\\PC{0,16}").prop_map(|(add, prefix)| Down::Blacklist { add, prefix }),
            (
                any::<u32>(),
                arb_bytes(64),
                arb_address(),
                any::<bool>(),
                arb_bytes(MAX_HELLO_FIELD)
            )
                .prop_map(|(session_id, epd, reply_to, reply_public, tag)| {
                    Down::ForwardIHello {
                        session_id,
                        epd,
                        reply_to,
                        reply_public,
                        tag,
                    }
                }),
            (any::<u32>(), any::<u8>(), any::<bool>()).prop_map(|(stream, worker, add)| {
                Down::Route {
                    stream,
                    worker,
                    add,
                }
            }),
            (
                any::<u32>(),
                any::<u64>(),
                any::<u32>(),
                any::<bool>(),
                "\\PC{0,20}"
            )
                .prop_map(|(session_id, flow, stream, unbuffered, key)| Down::Play {
                    session_id,
                    flow,
                    stream,
                    unbuffered,
                    key,
                }),
            (any::<u32>(), "[a-z/]{0,20}", any::<u32>()).prop_map(
                |(session_id, app, next_stream)| {
                    Down::NetState(NetState {
                        session_id,
                        app,
                        next_stream,
                    })
                }
            ),
            (any::<u32>(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
                |(session_id, flow, video, enabled)| Down::Receive {
                    session_id,
                    flow,
                    video,
                    enabled,
                }
            ),
            (any::<u32>(), any::<u64>())
                .prop_map(|(session_id, flow)| Down::StopPlay { session_id, flow }),
        ]
    }

    /// Decodes in one direction, dropping the value.
    type Decode = fn(&[u8]) -> Result<(), IpcError>;

    fn decode_up(bytes: &[u8]) -> Result<(), IpcError> {
        Up::decode(bytes).map(drop)
    }

    fn decode_down(bytes: &[u8]) -> Result<(), IpcError> {
        Down::decode(bytes).map(drop)
    }

    /// Either direction's message, encoded, with the decoder of its direction.
    fn arb_encoding() -> impl Strategy<Value = (Vec<u8>, Decode)> {
        prop_oneof![
            arb_up().prop_map(|up| (encode_up(&up), decode_up as Decode)),
            arb_down().prop_map(|down| (encode_down(&down), decode_down as Decode)),
        ]
    }

    proptest! {
        #[test]
        fn up_round_trips(up in arb_up()) {
            let bytes = encode_up(&up);
            prop_assert!(bytes.len() <= MAX_MESSAGE);
            prop_assert_eq!(Up::decode(&bytes), Ok(up));
            fuzz_ipc(&bytes);
        }

        #[test]
        fn down_round_trips(down in arb_down()) {
            let bytes = encode_down(&down);
            prop_assert!(bytes.len() <= MAX_MESSAGE);
            prop_assert_eq!(Down::decode(&bytes), Ok(down));
            fuzz_ipc(&bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..2048)) {
            fuzz_ipc(&data);
        }

        /// Arbitrary bodies behind a valid version and tag reach the field parsers.
        #[test]
        fn arbitrary_bodies_never_panic(
            tag in prop_oneof![TAG_UP_HELLO..=TAG_UP_TIMINGS, TAG_DOWN_WELCOME..=TAG_DOWN_CLOSE_WRITER],
            body in vec(any::<u8>(), 0..512),
        ) {
            let mut data = vec![IPC_VERSION, tag];
            data.extend_from_slice(&body);
            fuzz_ipc(&data);
        }

        #[test]
        fn every_truncation_is_refused((bytes, decode) in arb_encoding()) {
            prop_assert_eq!(decode(&bytes), Ok(()));
            for len in 0..bytes.len() {
                prop_assert_eq!(decode(&bytes[..len]), Err(IpcError::Truncated));
            }
        }

        #[test]
        fn another_version_is_refused(
            (bytes, decode) in arb_encoding(),
            version in any::<u8>().prop_filter("not the current version", |v| *v != IPC_VERSION),
        ) {
            let mut bytes = bytes;
            bytes[0] = version;
            prop_assert_eq!(decode(&bytes), Err(IpcError::BadVersion(version)));
        }
    }
}
