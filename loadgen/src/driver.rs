//! One UDP socket (or AF_XDP socket, `--xdp`) and one `rtmfp` endpoint carrying many client
//! sessions, stepped without blocking.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Instant as WallInstant, SystemTime, UNIX_EPOCH};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rtmfp::amf::{Object, Value};
use rtmfp::crypto::{DhGroup, NegotiationPolicy};
use rtmfp::endpoint::{Endpoint, EndpointEvent};
use rtmfp::flash::command::{names, Command, DataMessage, ObjectEncoding};
use rtmfp::flash::metadata::{FlowMetadata, ReceiveIntent};
use rtmfp::ids::{FlowId, PeerId};
use rtmfp::session::flows::SendOptions;
use rtmfp::session::{Event, SessionConfig};
use rtmfp::startup::components::{build_fingerprint_epd, build_url_epd};
use rtmfp::startup::initiator::InitiatorConfig;
use rtmfp::startup::responder::Responder;
use rtmfp::time::Instant;
use updraft_dataplane::io::{bind_udp, BatchIo, MmsgSocket, RxBatch, TxBatch};
use updraft_dataplane::xdp::{self, PacketIo};

/// Kernel socket buffer of the loadgen's socket: a fanout receives bursts for every subscriber.
const SOCKET_BUFFER: usize = 8 << 20;
/// Receive batches one [`Driver::step`] takes at most.
const RX_BATCHES_PER_STEP: usize = 32;

/// What happened to one session so far.
#[derive(Debug, Default)]
pub struct SessionState {
    /// When its handshake started.
    pub started: Option<Instant>,
    /// When it opened.
    pub opened: Option<Instant>,
    /// It failed to open or closed.
    pub failed: bool,
    /// It failed to open after a responder answered its IHello (no usable RIKeying).
    pub answered: bool,
    /// Messages received, with the flow they came on.
    pub messages: Vec<(FlowId, Vec<u8>)>,
    /// The server's flow that first spoke to us: its NetConnection flow, to which NetStream
    /// flows are associated (RFC 7425 §5.1.2; rtmfp-cpp's tcserver accepts no other flow).
    pub server_flow: Option<FlowId>,
}

/// Many client sessions on one socket.
pub struct Driver {
    socket: PacketIo,
    rx: RxBatch,
    tx: TxBatch,
    endpoint: Endpoint<ChaCha20Rng>,
    epoch: WallInstant,
    /// Every session's state, by handle.
    pub sessions: HashMap<u32, SessionState>,
    /// Datagrams sent.
    pub packets_out: u64,
    /// Datagrams received.
    pub packets_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Keep received messages (a fanout counts them itself and need not keep them).
    pub keep_messages: bool,
    /// Keep a copy of the last this many datagrams sent (the `garbage` scenario replays them).
    pub keep_sent: usize,
    /// Those copies, oldest first.
    pub sent: std::collections::VecDeque<Vec<u8>>,
}

impl Driver {
    /// A driver on a fresh loopback or wildcard socket, offering the DH `groups` (the server
    /// picks the strongest it shares; Flash Player offers group 2 alone) and the
    /// Flash-compatible crypto options (HMAC and session sequence numbers when asked).
    pub fn new(bind: SocketAddr, seed: u64, groups: &[DhGroup]) -> io::Result<Driver> {
        Ok(Driver::on(
            PacketIo::Socket(Driver::socket(bind)?),
            seed,
            groups,
        ))
    }

    /// A driver that is also a peer, as a Flash Player is: one static identity (RFC 7425
    /// §4.3.3) for its sessions to the server and for the P2P sessions it accepts, so the peer
    /// ID the server knows is the one that answers P2P IHellos. It answers Forwarded IHellos
    /// (RFC 7016 §3.5.1.5) with an RHello to the initiator.
    pub fn peer(bind: SocketAddr, seed: u64) -> io::Result<Driver> {
        let mut d = Driver::new(bind, seed, &[DhGroup::Modp1024])?;
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(&seed.to_le_bytes());
        d.endpoint = Endpoint::flash_peer(ChaCha20Rng::seed_from_u64(seed), secret);
        Ok(d)
    }

    /// The peer ID of a [`Driver::peer`].
    pub fn peer_id(&self) -> Option<PeerId> {
        self.endpoint.responder().map(Responder::fingerprint)
    }

    /// Starts a P2P session to `peer` through `server` (rendezvous by peer ID, RFC 7016
    /// §3.5.1.4); answers its handle.
    pub fn open_peer(&mut self, server: SocketAddr, peer: PeerId) -> u32 {
        let now = self.now();
        let h = self
            .endpoint
            .connect(now, build_fingerprint_epd(&peer.0), Some(peer), &[server]);
        self.sessions.entry(h).or_default().started = Some(now);
        h
    }

    /// [`Driver::new`] on an AF_XDP socket on queue 0 of `interface`, with the XDP program
    /// attached there for the socket's port while the driver lives (the kernel socket stays
    /// beside it, for the first datagrams to a server whose next hop is not known yet).
    pub fn with_xdp(
        interface: &str,
        bind: SocketAddr,
        seed: u64,
        groups: &[DhGroup],
    ) -> io::Result<Driver> {
        let io = xdp::single_socket(interface, Driver::socket(bind)?).map_err(io::Error::other)?;
        Ok(Driver::on(PacketIo::Xdp(Box::new(io)), seed, groups))
    }

    fn socket(bind: SocketAddr) -> io::Result<MmsgSocket> {
        let mut socket = MmsgSocket::new(bind_udp(bind, Some(SOCKET_BUFFER))?)?;
        // A subscriber receives trains (a video frame in several datagrams): take them whole.
        socket.enable_gro();
        // Deliveries are timed by when they arrived, not by when this driver got to them.
        socket.enable_timestamps();
        Ok(socket)
    }

    /// Datagrams received and sent through AF_XDP rings (0, 0 on a kernel socket).
    pub fn ring_totals(&self) -> (u64, u64) {
        match &self.socket {
            PacketIo::Socket(_) => (0, 0),
            PacketIo::Xdp(x) => x.ring_totals(),
        }
    }

    fn on(socket: PacketIo, seed: u64, groups: &[DhGroup]) -> Driver {
        let config = InitiatorConfig {
            groups: groups.to_vec(),
            policy: NegotiationPolicy::FLASH_COMPATIBLE,
        };
        Driver {
            socket,
            rx: RxBatch::default(),
            tx: TxBatch::default(),
            endpoint: Endpoint::new(
                ChaCha20Rng::seed_from_u64(seed),
                None,
                config,
                SessionConfig::default(),
            ),
            epoch: WallInstant::now(),
            sessions: HashMap::new(),
            packets_out: 0,
            packets_in: 0,
            bytes_out: 0,
            bytes_in: 0,
            keep_messages: true,
            keep_sent: 0,
            sent: std::collections::VecDeque::new(),
        }
    }

    /// The driver's clock.
    pub fn now(&self) -> Instant {
        Instant::from_micros(u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// Starts a session to `server` for `url`; answers its handle.
    pub fn open(&mut self, server: SocketAddr, url: &str) -> u32 {
        let now = self.now();
        let h = self
            .endpoint
            .connect(now, build_url_epd(url.as_bytes()), None, &[server]);
        self.sessions.entry(h).or_default().started = Some(now);
        h
    }

    /// Opens a TC flow on session `h` for NetStream `stream_id` (0: the NetConnection).
    pub fn open_flow(&mut self, h: u32, stream_id: u64) -> Option<FlowId> {
        let meta = FlowMetadata::Tc {
            stream_id,
            receive_intent: ReceiveIntent::Sequence,
        }
        .to_vec();
        // NetStream flows answer the server's NetConnection flow, as Flash Player's do.
        let associated = if stream_id == 0 {
            None
        } else {
            self.sessions.get(&h).and_then(|s| s.server_flow)
        };
        self.endpoint
            .session_mut(h)?
            .open_flow(&meta, associated)
            .ok()
    }

    /// Sends `message` on `flow` of session `h`, with an optional lifetime.
    pub fn send(
        &mut self,
        h: u32,
        flow: FlowId,
        message: &[u8],
        lifetime: Option<std::time::Duration>,
    ) -> bool {
        let now = self.now();
        let expiry = lifetime.map(|d| now + d);
        self.endpoint
            .session_mut(h)
            .is_some_and(|s| s.send(now, flow, message, SendOptions { expiry }).is_ok())
    }

    /// Sends at once what the sessions have queued ([`Self::send`] only queues; [`Self::step`]
    /// sends too).
    pub fn flush(&mut self) {
        let now = self.now();
        self.transmit(now);
    }

    /// Whether a responder answered the IHello of any session that did not open (failed, or
    /// still opening): a failure at the keying stage rather than at the hello stage.
    pub fn any_answered(&self) -> bool {
        self.sessions.iter().any(|(&h, s)| {
            s.opened.is_none() && (s.answered || self.endpoint.opening_answered(h) == Some(true))
        })
    }

    /// The socket's descriptor, to wait for it with others.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.socket.readiness_fd()
    }

    /// Bytes queued on `flow` of session `h` and not yet acknowledged.
    pub fn backlog(&self, h: u32, flow: FlowId) -> usize {
        self.endpoint
            .session(h)
            .and_then(|s| s.flow_backlog(flow))
            .unwrap_or(0)
    }

    /// One turn: send what is due, take what arrived, run timers; calls `on_message` for every
    /// message received (`session`, `flow`, bytes, and when the datagram that completed it
    /// arrived: the kernel's receive timestamp where the socket has them, else when its batch
    /// was read), so that a delivery's latency leaves out the time this driver's own work kept
    /// the datagram waiting.
    pub fn step(&mut self, mut on_message: impl FnMut(u32, FlowId, &[u8], Instant)) {
        let now = self.now();
        self.transmit(now);
        // Batches of datagrams, one clock read per batch; at most RX_BATCHES_PER_STEP, so that
        // timers and the caller get their turn under a flood.
        for _ in 0..RX_BATCHES_PER_STEP {
            let n = self.socket.recv(&mut self.rx).unwrap_or(0);
            if n == 0 {
                break;
            }
            let now = self.now();
            // The kernel stamps arrivals on the realtime clock: each stamp's age on that clock,
            // taken from `now`, puts it on this driver's clock.
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            for i in 0..n {
                let arrived = self.rx.arrived(i).map_or(now, |stamp| {
                    let age = u64::try_from(wall.saturating_sub(stamp).as_micros()).unwrap_or(0);
                    Instant::from_micros(now.as_micros().saturating_sub(age))
                });
                if let Some((from, truncated, bytes)) = self.rx.get_mut(i) {
                    self.packets_in += 1;
                    self.bytes_in += bytes.len() as u64;
                    if !truncated {
                        self.endpoint.handle_datagram(now, from, bytes);
                        self.take_events(now, arrived, &mut on_message);
                    }
                }
            }
            self.transmit(now);
            // A short batch emptied the socket: asking again would most likely cost a system
            // call for nothing (with a socket per session, one per socket per sweep).
            if self.rx.drained() {
                break;
            }
        }
        let now = self.now();
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.endpoint.handle_timeout(now);
        }
        self.take_events(now, now, &mut on_message);
    }

    /// Takes the endpoint's events as of `now`, calling `on_message` for every message with
    /// `arrived`, when the datagram that brought it arrived.
    fn take_events(
        &mut self,
        now: Instant,
        arrived: Instant,
        on_message: &mut impl FnMut(u32, FlowId, &[u8], Instant),
    ) {
        while let Some((h, e)) = self.endpoint.poll_event() {
            let state = self.sessions.entry(h).or_default();
            match e {
                EndpointEvent::Connected { .. } => state.opened = Some(now),
                EndpointEvent::ConnectFailed { answered } => {
                    state.failed = true;
                    state.answered = answered;
                }
                EndpointEvent::Session(Event::Closed { .. }) => state.failed = true,
                EndpointEvent::Session(Event::ForwardedIHello { epd, reply_to, tag }) => {
                    self.endpoint
                        .answer_forwarded_ihello(now, reply_to, &epd, &tag);
                }
                EndpointEvent::Session(Event::Message { flow, data }) => {
                    state.server_flow.get_or_insert(flow);
                    on_message(h, flow, &data, arrived);
                    if self.keep_messages {
                        state.messages.push((flow, data));
                    }
                }
                _ => {}
            }
        }
    }

    /// Sends `bytes` as one datagram from this driver's socket, outside any session.
    pub fn send_raw(&mut self, to: SocketAddr, bytes: &[u8]) {
        if self.tx.push(to, bytes) {
            self.packets_out += 1;
            self.bytes_out += bytes.len() as u64;
        }
        self.socket.send(&mut self.tx);
    }

    /// Closes session `h` in order (Close Request, RFC 7016 §3.5.5).
    pub fn close(&mut self, h: u32) {
        let now = self.now();
        if let Some(s) = self.endpoint.session_mut(h) {
            s.close(now);
        }
    }

    /// Forgets what is kept of session `h` (a churn scenario would otherwise grow without end).
    pub fn forget(&mut self, h: u32) {
        self.sessions.remove(&h);
        self.endpoint.remove_closed(h);
    }

    /// Closes every session in order (Close Request, RFC 7016 §3.5.5) and keeps stepping for
    /// at most `linger`, so that the server frees them at once.
    pub fn close_all(&mut self, linger: std::time::Duration) {
        let now = self.now();
        let handles: Vec<u32> = self.sessions.keys().copied().collect();
        for h in handles {
            if let Some(s) = self.endpoint.session_mut(h) {
                s.close(now);
            }
        }
        let deadline = WallInstant::now() + linger;
        while WallInstant::now() < deadline {
            self.step(|_, _, _, _| {});
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Sends what the sessions have, in batches.
    fn transmit(&mut self, now: Instant) {
        loop {
            let endpoint = &mut self.endpoint;
            let mut sent = None;
            self.tx.push_with(|buf| {
                let t = endpoint.poll_transmit(now, buf)?;
                sent = Some(t.len);
                Some((t.destination, t.len))
            });
            match sent {
                Some(len) => {
                    self.packets_out += 1;
                    self.bytes_out += len as u64;
                    if self.keep_sent > 0 {
                        if let Some((_, d)) = self.tx.iter().last() {
                            if self.sent.len() == self.keep_sent {
                                self.sent.pop_front();
                            }
                            self.sent.push_back(d.to_vec());
                        }
                    }
                    if self.tx.is_full() {
                        self.socket.send(&mut self.tx);
                    }
                }
                None => break,
            }
        }
        if !self.tx.is_empty() {
            self.socket.send(&mut self.tx);
        }
    }

    /// Sessions open.
    pub fn opened(&self) -> usize {
        self.sessions
            .values()
            .filter(|s| s.opened.is_some())
            .count()
    }

    /// Sessions that failed.
    pub fn failed(&self) -> usize {
        self.sessions.values().filter(|s| s.failed).count()
    }
}

/// A `connect` to `app` with `objectEncoding` 3 (Cumulus requires it; AMF0 servers echo it).
pub fn connect_message(app: &str) -> Vec<u8> {
    Command::new(
        "connect",
        1.0,
        Value::Object(Object::anonymous(vec![
            ("app".into(), Value::str(app)),
            ("objectEncoding".into(), Value::Number(3.0)),
        ])),
        vec![],
    )
    .to_message(ObjectEncoding::Amf0, 0)
    .unwrap_or_default()
}

/// `@setDataFrame onMetaData {…}` for a stream of `size`-byte video messages at `kbps` kbit/s.
pub fn set_data_frame(size: usize, kbps: u64) -> Vec<u8> {
    #[allow(clippy::cast_precision_loss)]
    let (rate, fps) = (kbps as f64, (kbps * 1000) as f64 / (size.max(1) * 8) as f64);
    DataMessage {
        handler: names::SET_DATA_FRAME.into(),
        values: vec![
            Value::str("onMetaData"),
            Value::Object(Object::anonymous(vec![
                ("videodatarate".into(), Value::Number(rate)),
                ("framerate".into(), Value::Number(fps)),
            ])),
        ],
    }
    // As Flash Player sends it: AMF3 data (0x0F) carrying AMF0 values; Cumulus reads no other.
    .to_message(ObjectEncoding::Amf3, 0)
    .unwrap_or_default()
}

/// A command with transaction 0 (no answer expected) or `txn`.
pub fn command(name: &str, txn: f64, args: Vec<Value<'_>>) -> Vec<u8> {
    Command::new(name, txn, Value::Null, args)
        .to_message(ObjectEncoding::Amf0, 0)
        .unwrap_or_default()
}

/// The status code of an `onStatus`/`_result`/`_error` message, if it is one.
pub fn status_code(message: &[u8]) -> Option<String> {
    let tc = rtmfp::flash::message::TcMessage::parse(message).ok()?;
    let c = Command::parse(&tc).ok()?;
    Some(c.args.first()?.get("code")?.as_str()?.to_string())
}

/// The number a `_result` answer to transaction `txn` carries (`createStream`'s stream ID).
pub fn result_number(message: &[u8], txn: f64) -> Option<f64> {
    let tc = rtmfp::flash::message::TcMessage::parse(message).ok()?;
    let c = Command::parse(&tc).ok()?;
    #[allow(clippy::float_cmp)]
    let answers = c.name == "_result" && c.transaction_id == txn;
    answers.then(|| c.args.first()?.as_f64())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_data_frame_is_an_amf3_data_message_flash_style() {
        let m = set_data_frame(1100, 2000);
        let tc = rtmfp::flash::message::TcMessage::parse(&m).unwrap();
        assert_eq!(tc.kind, rtmfp::flash::message::MessageType::AMF3_DATA);
        let d = DataMessage::parse(&tc).unwrap();
        assert_eq!(d.handler, names::SET_DATA_FRAME);
        let (name, meta) = d.set_data_frame().unwrap();
        assert_eq!(name, "onMetaData");
        assert_eq!(
            meta.get("videodatarate").and_then(Value::as_f64),
            Some(2000.0)
        );
    }
}
