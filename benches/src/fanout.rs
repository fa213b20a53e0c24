//! A data-plane worker's whole fanout of a live stream, in memory: one publisher and its
//! subscribers installed through the worker's control link exactly as the control plane does,
//! the worker on the in-memory backend ([`MemIo`]), so that no socket or kernel is involved.
//! The clients are real `rtmfp` sessions with the far end's keys. The `worker_fanout` benchmark
//! times the worker's turns with it; tests check what the subscribers get.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use rtmfp::crypto::{DirectionOptions, SessionKeys, DERIVED_LEN};
use rtmfp::flash::message::{MessageType, TcMessage};
use rtmfp::flash::metadata::{FlowMetadata, ReceiveIntent};
use rtmfp::ids::FlowId;
use rtmfp::session::flows::SendOptions;
use rtmfp::session::{Event, Role, Session, SessionConfig, SessionParams};
use rtmfp::time::Instant;
use socket2::{Domain, Socket, Type};
use updraft_control::ids::IdAllocator;
use updraft_control::ipc::{Down, SessionSecrets, MAX_MESSAGE};
use updraft_dataplane::mem::{MemIo, MemPeer};
use updraft_dataplane::worker::{handoff_queues, Shared, Worker, WorkerSetup};

use crate::client_address;

/// Flash audio tag byte: AAC, 44 kHz, 16-bit, stereo.
const AAC_TAG: u8 = 0xAF;
/// AAC packet type of a raw frame (not a sequence header).
const AAC_RAW: u8 = 1;

/// The NetStream ID every client uses for its stream flow.
const NET_STREAM: u64 = 1;
/// The control plane's number for the stream.
const STREAM: u32 = 7;
/// The stream's key.
const STREAM_KEY: &str = "live/bench";
/// The server's address as the clients see it (only used as their sessions' far address).
const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1935);
/// Room for any datagram.
const DATAGRAM: usize = 2048;
/// Flash video tag byte: AVC, key frame.
pub const AVC_KEY_FRAME: u8 = 0x17;
/// Flash video tag byte: AVC, inter frame.
pub const AVC_INTER_FRAME: u8 = 0x27;
/// AVC packet type of a coded frame (not a sequence header).
const AVC_NALU: u8 = 1;
/// Bytes of the set-up's key frame.
const KEY_FRAME_LEN: usize = 1100;
/// Most worker turns one step may take before the harness gives up.
const MAX_TURNS: usize = 10_000;

/// The keys of session `n`, as the server holds them.
fn server_keys(n: usize) -> SessionKeys {
    let mut k = [0u8; DERIVED_LEN];
    k[..8].copy_from_slice(&(n as u64).to_be_bytes());
    let mut encrypt = k;
    encrypt[31] = 1;
    let mut decrypt = k;
    decrypt[31] = 2;
    SessionKeys {
        encrypt,
        decrypt,
        tx_hmac_key: [3; DERIVED_LEN],
        rx_hmac_key: [4; DERIVED_LEN],
        near_nonce: [5; DERIVED_LEN],
        far_nonce: [6; DERIVED_LEN],
    }
}

/// The same keys from the client's side.
fn client_keys(n: usize) -> SessionKeys {
    let s = server_keys(n);
    SessionKeys {
        encrypt: s.decrypt,
        decrypt: s.encrypt,
        tx_hmac_key: s.rx_hmac_key,
        rx_hmac_key: s.tx_hmac_key,
        near_nonce: s.far_nonce,
        far_nonce: s.near_nonce,
    }
}

/// One client: its session with the server and its NetStream flow.
pub struct Client {
    session: Session,
    server_id: u32,
    stream_flow: FlowId,
    /// Audio and video messages received.
    pub received: u64,
    /// Datagrams the worker sent this client.
    pub datagrams: u64,
}

/// The worker, its control link's far end, and the clients (the publisher is client 0).
pub struct Fanout {
    worker: Worker<MemIo>,
    peer: MemPeer,
    control: Socket,
    /// The publisher (client 0), then the subscribers.
    pub clients: Vec<Client>,
    by_address: HashMap<SocketAddr, usize>,
    epoch: std::time::Instant,
    encoded: Vec<u8>,
    /// Audio and video messages the publisher has sent.
    pub published: u64,
}

impl Fanout {
    /// A worker with a publisher and `subscribers` playing its stream, which has had its first
    /// key frame.
    pub fn new(subscribers: usize) -> io::Result<Fanout> {
        let shared = Arc::new(Shared::new(1)?);
        let (mut handoff_in, handoff_out) = handoff_queues(1);
        let (io, peer) = MemIo::pair()?;
        let (link_tx, links) = crossbeam_channel::bounded(1);
        let (worker_end, control) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None)?;
        link_tx.send(worker_end).map_err(io::Error::other)?;
        control.set_nonblocking(true)?;
        let epoch = std::time::Instant::now();
        let worker = Worker::new(WorkerSetup {
            index: 0,
            io,
            handoff_in: handoff_in.remove(0),
            handoff_out,
            links,
            shared,
            session_config: SessionConfig::default(),
            seed: [9; 32],
            epoch,
            dump: None,
            media_in: crossbeam_channel::bounded(1).1,
            media_out: Vec::new(),
            lifetimes: Default::default(),
        });
        let mut fanout = Fanout {
            worker,
            peer,
            control,
            clients: Vec::new(),
            by_address: HashMap::new(),
            epoch,
            encoded: Vec::with_capacity(MAX_MESSAGE),
            published: 0,
        };
        fanout.worker.turn()?;
        fanout.drain_control();
        let mut ids = IdAllocator::new(0);
        for n in 0..=subscribers {
            let server_id = ids.allocate().ok_or_else(|| io::Error::other("no ID"))?;
            let near = u32::try_from(n + 1).map_err(io::Error::other)?;
            fanout.down(&Down::Install {
                session_id: server_id,
                far_session_id: near,
                address: client_address(n),
                peer_id: [7; 32],
                secrets: SessionSecrets {
                    keys: server_keys(n),
                    send: DirectionOptions::default(),
                    receive: DirectionOptions::default(),
                },
            })?;
            let keys = client_keys(n);
            let mut session = Session::new(
                fanout.now(),
                SessionParams {
                    role: Role::Initiator,
                    near_session_id: near,
                    far_session_id: server_id,
                    far_address: SERVER,
                    encoder: keys
                        .encoder(DirectionOptions::default())
                        .map_err(io::Error::other)?,
                    decoder: keys
                        .decoder(DirectionOptions::default())
                        .map_err(io::Error::other)?,
                    mobility_secret: [1; 32],
                },
                SessionConfig::default(),
            );
            let metadata = FlowMetadata::Tc {
                stream_id: NET_STREAM,
                receive_intent: ReceiveIntent::Sequence,
            }
            .to_vec();
            let stream_flow = session
                .open_flow(&metadata, None)
                .map_err(io::Error::other)?;
            fanout.by_address.insert(client_address(n), n);
            fanout.clients.push(Client {
                session,
                server_id,
                stream_flow,
                received: 0,
                datagrams: 0,
            });
        }
        fanout.turn_until_idle()?;
        // Every client opens its NetStream flow with a first message (the server sees the flow
        // and its NetStream ID); then the control plane makes client 0 the publisher and the
        // others its subscribers.
        for c in &mut fanout.clients {
            let now = Instant::from_millis(fanout.epoch.elapsed().as_millis() as u64);
            c.session
                .send(
                    now,
                    c.stream_flow,
                    &[0x14, 0, 0, 0, 0],
                    SendOptions::default(),
                )
                .map_err(io::Error::other)?;
        }
        fanout.exchange()?;
        let publisher = &fanout.clients[0];
        let publish = Down::Publish {
            session_id: publisher.server_id,
            flow: publisher.stream_flow.0,
            stream: STREAM,
            key: STREAM_KEY.into(),
        };
        fanout.down(&publish)?;
        for i in 1..=subscribers {
            let c = &fanout.clients[i];
            let play = Down::Play {
                session_id: c.server_id,
                flow: c.stream_flow.0,
                stream: STREAM,
                unbuffered: false,
                key: STREAM_KEY.into(),
            };
            fanout.down(&play)?;
        }
        fanout.turn_until_idle()?;
        fanout.exchange()?;
        // A key frame first: subscribers start at one.
        fanout.publish_video(AVC_KEY_FRAME, KEY_FRAME_LEN)?;
        fanout.exchange()?;
        Ok(fanout)
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.epoch.elapsed().as_millis() as u64)
    }

    /// Sends a control-plane message to the worker.
    fn down(&mut self, msg: &Down) -> io::Result<()> {
        self.encoded.clear();
        msg.encode(&mut self.encoded).map_err(io::Error::other)?;
        for _ in 0..MAX_TURNS {
            match (&self.control).write(&self.encoded) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.worker.turn()?;
                    self.drain_control();
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("control link stuck"))
    }

    /// Reads and drops what the worker reports to the control plane.
    pub fn drain_control(&mut self) {
        let mut scratch = vec![0u8; MAX_MESSAGE + 1];
        while (&self.control).read(&mut scratch).is_ok() {}
    }

    /// Runs the worker until it has taken every datagram delivered to it.
    pub fn turn_until_idle(&mut self) -> io::Result<()> {
        // One turn reads control messages and sends what is due even with no datagram.
        self.worker.turn()?;
        for _ in 0..MAX_TURNS {
            if self.peer.pending() == 0 {
                return Ok(());
            }
            self.worker.turn()?;
        }
        Err(io::Error::other("worker stuck"))
    }

    /// The publisher sends one video message of `len` bytes whose tag byte is `tag`.
    pub fn publish_video(&mut self, tag: u8, len: usize) -> io::Result<()> {
        let mut body = vec![0x42u8; len.max(2)];
        body[0] = tag;
        body[1] = AVC_NALU;
        self.publish(MessageType::VIDEO, &body)
    }

    /// The publisher sends one audio message of `len` bytes (AAC frames).
    pub fn publish_audio(&mut self, len: usize) -> io::Result<()> {
        let mut body = vec![0x42u8; len.max(2)];
        body[0] = AAC_TAG;
        body[1] = AAC_RAW;
        self.publish(MessageType::AUDIO, &body)
    }

    /// The publisher queues one message; [`Self::deliver_from_clients`] sends it.
    fn publish(&mut self, kind: MessageType, body: &[u8]) -> io::Result<()> {
        let now = self.now();
        let message = TcMessage {
            kind,
            timestamp: u32::try_from(self.epoch.elapsed().as_millis()).unwrap_or(0),
            payload: body,
        }
        .to_vec();
        let publisher = &mut self.clients[0];
        publisher
            .session
            .send(now, publisher.stream_flow, &message, SendOptions::default())
            .map_err(io::Error::other)?;
        self.published += 1;
        Ok(())
    }

    /// Every client sends what it has (data, acknowledgements) to the worker.
    pub fn deliver_from_clients(&mut self) {
        let now = self.now();
        let mut buf = [0u8; DATAGRAM];
        for (n, c) in self.clients.iter_mut().enumerate() {
            while let Some(t) = c.session.poll_transmit(now, &mut buf) {
                self.peer.deliver(client_address(n), &buf[..t.len]);
            }
        }
    }

    /// Every client takes what the worker sent it.
    pub fn receive_at_clients(&mut self) -> io::Result<()> {
        let now = self.now();
        for (to, mut bytes) in self.peer.take_sent() {
            let Some(&n) = self.by_address.get(&to) else {
                return Err(io::Error::other(format!("datagram to unknown {to}")));
            };
            let c = &mut self.clients[n];
            c.datagrams += 1;
            c.session
                .handle_datagram(now, to, &mut bytes)
                .map_err(io::Error::other)?;
            while let Some(ev) = c.session.poll_event() {
                if let Event::Message { data, .. } = ev {
                    if TcMessage::parse(&data)
                        .is_ok_and(|m| m.kind == MessageType::VIDEO || m.kind == MessageType::AUDIO)
                    {
                        c.received += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Clients send, the worker turns, clients receive: one round trip of everything pending.
    pub fn exchange(&mut self) -> io::Result<()> {
        self.deliver_from_clients();
        self.turn_until_idle()?;
        self.drain_control();
        self.receive_at_clients()
    }
}
