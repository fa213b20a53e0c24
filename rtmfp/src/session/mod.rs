//! An open RTMFP session (RFC 7016 §3.5): the state machine from S_OPEN to S_CLOSED, packet
//! timestamps and RTT, ping and keepalive, address mobility, close, and the flows it carries.
//!
//! Sans-IO: [`Session::handle_datagram`] takes a received datagram and the time;
//! [`Session::poll_transmit`] writes the next datagram into the caller's buffer;
//! [`Session::poll_timeout`] and [`Session::handle_timeout`] drive timers;
//! [`Session::poll_event`] yields what the application must see.

pub mod clock;
mod flow_map;
pub mod flows;
#[doc(hidden)]
pub mod fuzzing;
pub mod lookahead;
pub mod mobility;

use core::time::Duration;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::crypto::{Aes128EncKey, CryptoError, PacketDecoder, PacketEncoder, Sealing};
use crate::flow::payload::Payload;
use crate::flow::recv::RecvStats;
use crate::flow::send::SendStats;
use crate::ids::FlowId;
use crate::params::{
    CLOSE_RTX, FARCLOSE_LINGER, MAX_PING_BODY, MAX_SESSION_PACKET, MIN_KEEPALIVE,
    NEARCLOSE_TIMEOUT, SESSION_IDLE_LIMIT,
};
use crate::time::Instant;
use crate::wire::{
    Address, Chunk, ChunkBody, ChunkIter, Close, CloseAck, ForwardedIHello, Mode, PacketHeader,
    Ping, PingReply, Reader, WireError, Writer,
};

use self::clock::{timestamp, TimestampState};
use self::flows::{FlowError, FlowSet, SendOptions};
use self::lookahead::{Lookahead, Visit};
use self::mobility::{Mobility, CHALLENGE_LEN};

/// Keepalive pings a silent far end may leave unanswered before the session is closed
/// (Cumulus and MonaServer give up after 10).
pub const MAX_UNANSWERED_KEEPALIVES: u32 = 10;

/// Which end of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We sent the IHello.
    Initiator,
    /// We answered it.
    Responder,
}

impl Role {
    /// The packet mode this end sends with (RFC 7016 §2.2.4).
    pub fn mode(self) -> Mode {
        match self {
            Role::Initiator => Mode::Initiator,
            Role::Responder => Mode::Responder,
        }
    }

    fn far(self) -> Role {
        match self {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        }
    }
}

/// Session states after opening (RFC 7016 §3.5, §3.5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// S_OPEN.
    Open,
    /// S_NEARCLOSE: we asked to close and retransmit the request every 5 s for up to 90 s.
    NearClose {
        /// When the state was entered.
        since: Instant,
        /// When the Close Request is next due.
        next_close: Instant,
    },
    /// S_FARCLOSE_LINGER: the far end asked to close; we linger 19 s to answer retransmissions.
    FarCloseLinger {
        /// When the state was entered.
        since: Instant,
    },
    /// S_CLOSED.
    Closed,
}

/// Why a session closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// We closed it in order, and the far end acknowledged or the close timed out.
    Local,
    /// The far end closed it in order.
    Remote,
    /// A Close Acknowledgement arrived unasked: an abrupt close by the far end.
    Aborted,
    /// We closed it abruptly.
    LocalAbort,
    /// Nothing was heard for the idle limit, or keepalives went unanswered.
    Idle,
    /// Data went unacknowledged for the retransmission limit.
    RetransmitLimit,
}

/// Something the application must see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The far end opened a flow to us.
    FlowOpened {
        /// The flow.
        flow: FlowId,
        /// Its per-flow metadata (RFC 7016 §2.3.11.1.1).
        metadata: Vec<u8>,
        /// The send flow of ours it answers, if it has a Return Flow Association.
        associated: Option<FlowId>,
    },
    /// A whole message arrived on a receive flow.
    Message {
        /// The flow.
        flow: FlowId,
        /// The message.
        data: Vec<u8>,
    },
    /// A receive flow finished (FIN received and everything delivered).
    FlowFinished {
        /// The flow.
        flow: FlowId,
    },
    /// The far end rejected one of our send flows (RFC 7016 §2.3.16).
    FlowRejected {
        /// Our send flow.
        flow: FlowId,
        /// The exception code.
        code: u64,
    },
    /// A Forwarded IHello arrived (RFC 7016 §3.5.1.5): someone wants to reach us.
    ForwardedIHello {
        /// Its endpoint discriminator.
        epd: Vec<u8>,
        /// Where to answer.
        reply_to: SocketAddr,
        /// The initiator's tag.
        tag: Vec<u8>,
    },
    /// The far end's address changed and was validated (RFC 7016 §3.5.4.2).
    AddressChanged {
        /// The old address.
        from: SocketAddr,
        /// The new address.
        to: SocketAddr,
    },
    /// A copy of a plain packet (header and chunks, RFC 7016 §2.2.4), when dumping is on
    /// ([`Session::set_dump`]): for logs and debugging, never in normal operation.
    Packet {
        /// Whether we sent it (else we received it).
        outgoing: bool,
        /// The decrypted packet, flags byte onward.
        plain: Vec<u8>,
    },
    /// The session is closed; no more events follow.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// A datagram written by [`Session::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// Its length at the start of the caller's buffer.
    pub len: usize,
}

/// Why a datagram was refused. The session is unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Decryption or authentication failed.
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    /// The plain packet is malformed.
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    /// The datagram is addressed to another session ID.
    #[error("wrong session ID")]
    WrongSession,
    /// The packet mode is not the far end's (RFC 7016 §2.2.4).
    #[error("wrong packet mode")]
    WrongMode,
    /// The session is closed.
    #[error("session closed")]
    Closed,
    /// A flow-level protocol error.
    #[error("flow: {0}")]
    Flow(#[from] FlowError),
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Ping the far end after this much silence (clamped to at least 5 s); `None` disables it.
    pub keepalive: Option<Duration>,
    /// Close after this much silence.
    pub idle_limit: Duration,
    /// Largest plain packet to send.
    pub max_packet: usize,
    /// Receive buffer per flow, in bytes.
    pub flow_receive_buffer: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            keepalive: None,
            idle_limit: SESSION_IDLE_LIMIT,
            max_packet: MAX_SESSION_PACKET,
            flow_receive_buffer: flows::DEFAULT_RECEIVE_BUFFER,
        }
    }
}

/// Everything a session needs at birth, from the handshake.
#[derive(Debug)]
pub struct SessionParams {
    /// Our end.
    pub role: Role,
    /// Our receive session ID.
    pub near_session_id: u32,
    /// The far end's receive session ID: we send with it.
    pub far_session_id: u32,
    /// The far end's address.
    pub far_address: SocketAddr,
    /// Send crypto.
    pub encoder: PacketEncoder,
    /// Receive crypto.
    pub decoder: PacketDecoder,
    /// A random per-session secret for address mobility challenges.
    pub mobility_secret: [u8; 32],
}

/// A Forwarded IHello waiting to be sent.
#[derive(Debug, Clone)]
struct PendingForward {
    epd: Vec<u8>,
    reply_to: Address,
    tag: Vec<u8>,
}

/// Most Forwarded IHellos queued per session; more are dropped (the initiator retries).
pub const MAX_PENDING_FORWARDS: usize = 8;

/// One open session.
///
/// Laid out in declaration order (`repr(C)`): what every packet sent or received reads comes
/// first, so that a server's fanout, touching thousands of sessions per media message, reads
/// a few adjacent cache lines of each instead of fields strewn over its 3.5 KB; the seldom
/// used bulk (the ping body, the mobility secret) comes last.
#[repr(C)]
pub struct Session {
    state: State,
    last_received: Instant,
    last_keepalive_sent: Option<Instant>,
    near_session_id: u32,
    far_session_id: u32,
    unanswered_keepalives: u32,
    role: Role,
    keepalive_due: bool,
    close_due: bool,
    close_ack_due: bool,
    /// Copy every plain packet into an [`Event::Packet`].
    dump: bool,
    /// The length of the ping body to echo ([`Self::ping_body`]), when a Ping awaits its reply.
    ping_reply: Option<usize>,
    far_address: SocketAddr,
    /// A validated-pending new address and the challenge to send it (read by every transmit).
    mobility_probe: Option<(SocketAddr, [u8; CHALLENGE_LEN])>,
    config: SessionConfig,
    timestamps: TimestampState,
    events: VecDeque<Event>,
    /// Forwarded IHellos to send (RFC 7016 §3.5.1.5), oldest first, bounded.
    forwards: VecDeque<PendingForward>,
    /// The last of the fields every packet reads ([`Lookahead::Fields`]).
    flows: FlowSet,
    encoder: PacketEncoder,
    decoder: PacketDecoder,
    /// The body of the last Ping, echoed by the Ping Reply ([`Self::ping_reply`]).
    ping_body: [u8; MAX_PING_BODY],
    mobility: Mobility,
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("near_session_id", &self.near_session_id)
            .field("far_session_id", &self.far_session_id)
            .field("far_address", &self.far_address)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session that has just opened at `now`.
    pub fn new(now: Instant, params: SessionParams, config: SessionConfig) -> Self {
        let max_packet = config.max_packet.min(MAX_SESSION_PACKET);
        let config = SessionConfig {
            max_packet,
            ..config
        };
        Session {
            role: params.role,
            state: State::Open,
            near_session_id: params.near_session_id,
            far_session_id: params.far_session_id,
            far_address: params.far_address,
            encoder: params.encoder,
            decoder: params.decoder,
            flows: FlowSet::new(config.flow_receive_buffer),
            config,
            timestamps: TimestampState::default(),
            mobility: Mobility::new(params.mobility_secret),
            mobility_probe: None,
            events: VecDeque::new(),
            last_received: now,
            last_keepalive_sent: None,
            unanswered_keepalives: 0,
            ping_reply: None,
            ping_body: [0; MAX_PING_BODY],
            forwards: VecDeque::new(),
            keepalive_due: false,
            close_due: false,
            close_ack_due: false,
            dump: false,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Our receive session ID.
    pub fn near_session_id(&self) -> u32 {
        self.near_session_id
    }

    /// The far end's receive session ID.
    pub fn far_session_id(&self) -> u32 {
        self.far_session_id
    }

    /// The far end's current (validated) address.
    pub fn far_address(&self) -> SocketAddr {
        self.far_address
    }

    /// When the last packet arrived (the session's start before any).
    pub fn last_received(&self) -> Instant {
        self.last_received
    }

    /// The smoothed RTT, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.flows.srtt()
    }

    /// Sets the keepalive period (RFC 7425 §5.3.4; at least 5 s).
    pub fn set_keepalive(&mut self, period: Option<Duration>) {
        self.config.keepalive = period.map(|p| p.max(MIN_KEEPALIVE));
    }

    /// Opens a send flow with `metadata`, optionally answering the far end's receive flow
    /// `associated` (RFC 7016 §2.3.11.1.2). Fails unless the session is open.
    pub fn open_flow(
        &mut self,
        metadata: &[u8],
        associated: Option<FlowId>,
    ) -> Result<FlowId, SessionError> {
        if self.state != State::Open {
            return Err(SessionError::Closed);
        }
        Ok(self.flows.open_send_flow(metadata, associated)?)
    }

    /// Queues a message on a send flow. With `expiry`, the message is abandoned instead of being
    /// (re)transmitted after that time (partial reliability, RFC 7016 §3.6.2.7).
    pub fn send(
        &mut self,
        now: Instant,
        flow: FlowId,
        data: &[u8],
        options: SendOptions,
    ) -> Result<(), SessionError> {
        if self.state != State::Open {
            return Err(SessionError::Closed);
        }
        Ok(self.flows.send(now, flow, data, options)?)
    }

    /// Like [`send`](Self::send), without copying the message: `payload` shares its body with
    /// every other session it is queued on (live-stream fanout).
    pub fn send_payload(
        &mut self,
        now: Instant,
        flow: FlowId,
        payload: Payload,
        options: SendOptions,
    ) -> Result<(), SessionError> {
        if self.state != State::Open {
            return Err(SessionError::Closed);
        }
        Ok(self.flows.send_payload(now, flow, payload, options)?)
    }

    /// Closes a send flow in order: FIN after its queued data (RFC 7016 §3.6.2.8).
    pub fn close_flow(&mut self, flow: FlowId) -> Result<(), SessionError> {
        Ok(self.flows.close_send_flow(flow)?)
    }

    /// Rejects a receive flow with an exception code (RFC 7016 §3.6.3.7).
    pub fn reject_flow(&mut self, flow: FlowId, code: u64) -> Result<(), SessionError> {
        Ok(self.flows.reject_receive_flow(flow, code)?)
    }

    /// Gives `span` the memory that stage `stage` of this session's next send or received
    /// datagram reads (see [`lookahead`]): a caller about to visit many sessions asks for it
    /// ahead of each visit.
    pub fn lookahead(&self, stage: Lookahead, span: &mut impl FnMut(*const u8, usize)) {
        match stage {
            Lookahead::Fields(visit) => {
                // The fields every packet reads lead the struct, up to the flow set.
                let hot = core::mem::offset_of!(Session, flows) + core::mem::size_of::<FlowSet>();
                span((self as *const Session).cast(), hot);
                match visit {
                    Visit::Send => self.encoder.lookahead_fields(span),
                    Visit::Receive => self.decoder.lookahead_fields(span),
                }
            }
            Lookahead::Heap(visit) => {
                self.flows.lookahead_table(span);
                if visit == Visit::Send {
                    self.encoder.lookahead_heap(span);
                }
            }
            Lookahead::Flows(flow) => self.flows.lookahead_flows(flow, span),
        }
    }

    /// Bytes queued but not yet acknowledged on a send flow (for back-pressure).
    pub fn flow_backlog(&self, flow: FlowId) -> Option<usize> {
        self.flows.backlog(flow)
    }

    /// What our send flow `flow` has sent and lost (for QoS reports).
    pub fn send_flow_stats(&self, flow: FlowId) -> Option<SendStats> {
        self.flows.send_stats(flow)
    }

    /// What the far end's flow `flow` has delivered to us and what it lost (for QoS reports).
    pub fn recv_flow_stats(&self, flow: FlowId) -> Option<RecvStats> {
        self.flows.recv_stats(flow)
    }

    /// Forwards an IHello to the far end inside this session, so that it answers the initiator
    /// at `reply_to` directly (RFC 7016 §2.3.3, §3.5.1.5). Bounded; extra ones are dropped, and
    /// the initiator's IHello retransmissions make new ones.
    pub fn forward_ihello(&mut self, epd: &[u8], reply_to: Address, tag: &[u8]) {
        if self.state == State::Open && self.forwards.len() < MAX_PENDING_FORWARDS {
            self.forwards.push_back(PendingForward {
                epd: epd.to_vec(),
                reply_to,
                tag: tag.to_vec(),
            });
        }
    }

    /// Turns packet dumping on or off: every packet sent or received is copied, decrypted,
    /// into an [`Event::Packet`].
    pub fn set_dump(&mut self, on: bool) {
        self.dump = on;
    }

    /// Starts an orderly close (RFC 7016 §3.5.5): S_NEARCLOSE, flows aborted, Close Request now
    /// and every 5 s.
    pub fn close(&mut self, now: Instant) {
        if self.state == State::Open {
            self.flows.abort_all();
            self.state = State::NearClose {
                since: now,
                next_close: now,
            };
            self.close_due = true;
        }
    }

    /// Closes abruptly: one Close Acknowledgement, then S_CLOSED (RFC 7016 §3.5.5).
    pub fn abort(&mut self) {
        if self.state != State::Closed {
            self.close_ack_due = true;
            self.enter_closed(CloseReason::LocalAbort);
        }
    }

    fn enter_closed(&mut self, reason: CloseReason) {
        if self.state != State::Closed {
            self.flows.abort_all();
            self.state = State::Closed;
            self.events.push_back(Event::Closed { reason });
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        self.flows.poll_event()
    }

    /// Handles a datagram addressed to this session, received from `from` at `now`. Decrypts in
    /// place. A refused datagram leaves the session as it was.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &mut [u8],
    ) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Err(SessionError::Closed);
        }
        let decoded = self.decoder.decode(datagram)?;
        if decoded.session_id != self.near_session_id {
            return Err(SessionError::WrongSession);
        }
        let packet = &*decoded.packet;
        if self.dump {
            self.events.push_back(Event::Packet {
                outgoing: false,
                plain: packet.to_vec(),
            });
        }
        let mut r = Reader::new(packet);
        let header = PacketHeader::parse(&mut r)?;
        // RFC 7016 §2.2.4: the far end's packets carry its mode; chunks in a packet of the wrong
        // mode are ignored.
        if header.mode != self.role.far().mode() {
            return Err(SessionError::WrongMode);
        }
        self.last_received = now;
        self.unanswered_keepalives = 0;
        if let Some(ts) = header.timestamp {
            self.timestamps.on_far_timestamp(now, ts);
        }
        if let Some(echo) = header.timestamp_echo {
            if let Some(rtt) = TimestampState::rtt_sample(now, echo) {
                self.flows.on_rtt_sample(rtt);
            }
        }
        if header.time_critical {
            self.flows.on_time_critical_reverse(now);
        }
        if from != self.far_address && self.mobility_probe.is_none() {
            if let Some(challenge) = self.mobility.challenge(now, &from) {
                self.mobility_probe = Some((from, challenge));
            }
        }
        let body = r.rest();
        let mut user_data_seen = false;
        let mut ctx = flows::UserDataContext::default();
        for chunk in ChunkIter::new(body) {
            // A malformed chunk ends the packet; what came before it stands (RFC 7016 §2.3).
            let Ok(chunk) = chunk else { break };
            match chunk {
                Chunk::Ping(p) => self.on_ping(p.body),
                Chunk::PingReply(p) => self.on_ping_reply(now, from, p.body),
                Chunk::UserData(ud) if self.state == State::Open => {
                    user_data_seen = true;
                    self.flows.on_user_data(now, &mut ctx, ud)?;
                }
                Chunk::NextUserData(nud) if self.state == State::Open => {
                    user_data_seen = true;
                    self.flows.on_next_user_data(now, &mut ctx, nud)?;
                }
                Chunk::RangeAck(ack) if self.state == State::Open => {
                    self.flows.on_range_ack(now, ack)
                }
                Chunk::BitmapAck(ack) if self.state == State::Open => {
                    self.flows.on_bitmap_ack(now, ack)
                }
                Chunk::BufferProbe(p) if self.state == State::Open => {
                    self.flows.on_buffer_probe(p.flow_id)
                }
                Chunk::FlowExceptionReport(x) if self.state == State::Open => {
                    self.flows.on_exception(x.flow_id, x.exception)
                }
                Chunk::Close(_) => self.on_close_request(now),
                Chunk::CloseAck(_) => self.on_close_ack(),
                Chunk::ForwardedIHello(f) if self.state == State::Open => {
                    self.events.push_back(Event::ForwardedIHello {
                        epd: f.epd.to_vec(),
                        reply_to: f.reply_address.addr,
                        tag: f.tag.to_vec(),
                    });
                }
                // Startup chunks, chunks not allowed in this state, and unknown chunks are
                // ignored (RFC 7016 §2.3).
                _ => {}
            }
        }
        if user_data_seen {
            self.flows.on_packet_with_user_data(now);
        }
        Ok(())
    }

    fn on_ping(&mut self, body: &[u8]) {
        // RFC 7016 §3.5.4: answer with the body unaltered, as soon as possible. A body over the
        // size we answer is ignored (rtmfp-cpp limit).
        if let Some(echo) = self.ping_body.get_mut(..body.len()) {
            echo.copy_from_slice(body);
            self.ping_reply = Some(body.len());
        }
    }

    fn on_ping_reply(&mut self, now: Instant, from: SocketAddr, body: &[u8]) {
        if Mobility::is_challenge(body) {
            if from != self.far_address && self.mobility.verify(now, &from, body) {
                let old = self.far_address;
                self.far_address = from;
                self.events.push_back(Event::AddressChanged {
                    from: old,
                    to: from,
                });
            }
            return;
        }
        self.unanswered_keepalives = 0;
    }

    fn on_close_request(&mut self, now: Instant) {
        // RFC 7016 §3.5.5: answer every Close Request with a Close Ack.
        self.close_ack_due = true;
        if self.state == State::Open {
            self.flows.abort_all();
            self.state = State::FarCloseLinger { since: now };
        }
    }

    fn on_close_ack(&mut self) {
        let reason = match self.state {
            State::NearClose { .. } => CloseReason::Local,
            State::FarCloseLinger { .. } => CloseReason::Remote,
            _ => CloseReason::Aborted,
        };
        self.enter_closed(reason);
    }

    /// The earliest time [`Self::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let state_deadline = match self.state {
            State::Closed => return None,
            State::NearClose { since, next_close } => {
                Some(next_close.min(since + NEARCLOSE_TIMEOUT))
            }
            State::FarCloseLinger { since } => Some(since + FARCLOSE_LINGER),
            State::Open => None,
        };
        let idle = Some(self.last_received + self.config.idle_limit);
        let keepalive = self.next_keepalive();
        let flows = if self.state == State::Open {
            self.flows.poll_timeout()
        } else {
            None
        };
        [state_deadline, idle, keepalive, flows]
            .into_iter()
            .flatten()
            .min()
    }

    fn next_keepalive(&self) -> Option<Instant> {
        if self.state != State::Open {
            return None;
        }
        let period = self.config.keepalive?;
        let base = self
            .last_keepalive_sent
            .map_or(self.last_received, |s| s.max(self.last_received));
        Some(base + period)
    }

    /// Runs the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Closed => return,
            State::NearClose { since, next_close } => {
                if now >= since + NEARCLOSE_TIMEOUT {
                    self.enter_closed(CloseReason::Local);
                    return;
                }
                if now >= next_close {
                    self.close_due = true;
                    self.state = State::NearClose {
                        since,
                        next_close: now + CLOSE_RTX,
                    };
                }
            }
            State::FarCloseLinger { since } => {
                if now >= since + FARCLOSE_LINGER {
                    self.enter_closed(CloseReason::Remote);
                    return;
                }
            }
            State::Open => {}
        }
        if now.saturating_duration_since(self.last_received) >= self.config.idle_limit {
            self.enter_closed(CloseReason::Idle);
            return;
        }
        if self.state != State::Open {
            return;
        }
        if self.next_keepalive().is_some_and(|t| now >= t) {
            if self.unanswered_keepalives >= MAX_UNANSWERED_KEEPALIVES {
                self.close_ack_due = true;
                self.enter_closed(CloseReason::Idle);
                return;
            }
            self.keepalive_due = true;
            self.last_keepalive_sent = Some(now);
            self.unanswered_keepalives += 1;
        }
        if self.flows.handle_timeout(now).is_err() {
            // The retransmission limit passed: the far end is gone.
            self.close_ack_due = true;
            self.enter_closed(CloseReason::RetransmitLimit);
        }
    }

    /// Writes the next datagram due at `now` into `buf` and says where it goes, or `None` when
    /// there is nothing to send. Call it until it answers `None`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let (transmit, _) = self.next_transmit(now, buf, false)?;
        Some(transmit)
    }

    /// Like [`poll_transmit`](Self::poll_transmit), but may leave the datagram's encryption to
    /// the caller, so that packets of many sessions are encrypted together by the multi-buffer
    /// kernel ([`crate::crypto::encrypt_cbc_zero_iv_many`]). With `Some(key)`, the caller must
    /// encrypt `buf[SSID_LEN..len]` in place with `key` and then call
    /// [`crate::crypto::finish_sealing`] on `buf[..len]` before sending it; with `None` the
    /// datagram is complete (HMAC mode, RFC 7425 §4.6.4, seals at once).
    pub fn poll_transmit_deferred(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(Transmit, Option<Arc<Aes128EncKey>>)> {
        self.next_transmit(now, buf, true)
    }

    fn next_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        defer: bool,
    ) -> Option<(Transmit, Option<Arc<Aes128EncKey>>)> {
        if let Some((addr, challenge)) = self.mobility_probe.take() {
            if self.state == State::Open {
                if let Some((len, key)) = self.write_packet(now, buf, defer, |_, w| {
                    (Ping { body: &challenge }).emit(w).is_ok()
                }) {
                    let transmit = Transmit {
                        destination: addr,
                        len,
                    };
                    return Some((transmit, key));
                }
            }
        }
        if self.state == State::Closed && !self.close_ack_due {
            return None;
        }
        // Most polls after a datagram, or after an acknowledgement came in, find nothing to
        // send: a check that reads a few flags and each send flow's first cache line answers
        // them without writing a packet. Debug builds write the packet anyway and check that
        // the answer was right.
        let may = self.may_fill(now);
        if !may && !cfg!(debug_assertions) {
            return None;
        }
        let destination = self.far_address;
        let written = self.write_packet(now, buf, defer, |s, w| s.fill_packet(now, w));
        debug_assert!(may || written.is_none(), "may_fill missed a packet");
        let (len, key) = written?;
        Some((Transmit { destination, len }, key))
    }

    /// Whether [`Self::fill_packet`] might write anything at `now`: true whenever it would (a
    /// superset, read without changing anything).
    fn may_fill(&self, now: Instant) -> bool {
        self.close_ack_due
            || self.ping_reply.is_some()
            || self.close_due
            || !self.forwards.is_empty()
            || self.keepalive_due
            || (self.state == State::Open && self.flows.may_write(now))
    }

    /// Writes control chunks, then flow chunks, into `w`; true if anything was written.
    fn fill_packet(&mut self, now: Instant, w: &mut Writer<'_>) -> bool {
        let start = w.position();
        if self.close_ack_due && CloseAck.emit(w).is_ok() {
            self.close_ack_due = false;
        }
        if let Some(len) = self.ping_reply.take() {
            let body = self.ping_body.get(..len).unwrap_or_default();
            if (PingReply { body }).emit(w).is_err() {
                self.ping_reply = Some(len);
            }
        }
        if self.close_due && Close.emit(w).is_ok() {
            self.close_due = false;
        }
        while let Some(f) = self.forwards.front() {
            let chunk = ForwardedIHello {
                epd: &f.epd,
                reply_address: f.reply_to,
                tag: &f.tag,
            };
            if chunk.emit(w).is_err() {
                break;
            }
            self.forwards.pop_front();
        }
        if self.keepalive_due && (Ping { body: &[] }).emit(w).is_ok() {
            self.keepalive_due = false;
        }
        if self.state == State::Open {
            self.flows.write_chunks(now, w);
        }
        w.position() > start
    }

    /// Assembles one packet with header, lets `fill` write chunks (false: nothing to send), and
    /// encrypts it into `buf`. The packet is written straight into its place in the datagram,
    /// not copied. With `defer`, the answer may carry the key the caller must encrypt with (see
    /// [`Self::poll_transmit_deferred`]).
    fn write_packet(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        defer: bool,
        fill: impl FnOnce(&mut Self, &mut Writer<'_>) -> bool,
    ) -> Option<(usize, Option<Arc<Aes128EncKey>>)> {
        let at = self.encoder.packet_offset();
        let limit = self
            .config
            .max_packet
            .min(MAX_SESSION_PACKET)
            .min(self.encoder.max_packet_len(buf.len()));
        let mut header = PacketHeader::new(self.role.mode());
        header.timestamp = Some(timestamp(now));
        let mut ts_state = self.timestamps.clone();
        header.timestamp_echo = ts_state.echo_for_send(now);
        let mut w = Writer::new(buf.get_mut(at..at + limit)?);
        header.emit(&mut w).ok()?;
        if !fill(self, &mut w) {
            return None;
        }
        self.timestamps = ts_state;
        let len = w.position();
        if self.dump {
            self.events.push_back(Event::Packet {
                outgoing: true,
                plain: buf[at..at + len].to_vec(),
            });
        }
        if !defer {
            let len = self
                .encoder
                .encode_in_place(self.far_session_id, len, buf)
                .ok()?;
            return Some((len, None));
        }
        match self
            .encoder
            .encode_deferred_in_place(self.far_session_id, len, buf)
            .ok()?
        {
            Sealing::Sealed(len) => Some((len, None)),
            Sealing::Unsealed { len, key } => Some((len, Some(key))),
        }
    }
}
