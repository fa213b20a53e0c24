//! A data-plane worker's whole fanout of a live stream, in memory: one publisher and 1,000 (then
//! 2,000) subscribers installed through the worker's control link exactly as the control plane does,
//! the worker on the in-memory backend ([`MemIo`]), so that no socket or kernel is measured.
//! Each iteration the publisher sends one 1100-byte video message; the measured time is the
//! worker's turns that take it in, queue it for every subscriber, write, encrypt and hand over
//! every subscriber's datagram, and take the subscribers' acknowledgements of the previous
//! message. The clients (real `rtmfp` sessions with the far end's keys) decrypt, acknowledge and
//! check what they get outside the measured time.
//!
//! Run with `cargo bench -p benches --bench worker_fanout`; figures go to docs/performance.md.

use std::collections::HashMap;
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
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

/// Subscribers of the stream in each run: issue 4's target and half of it.
const SUBSCRIBERS: [usize; 2] = [1000, 2000];
/// Bytes of each video message's body (one datagram each).
const MESSAGE_LEN: usize = 1100;
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
const AVC_KEY_FRAME: u8 = 0x17;
/// Flash video tag byte: AVC, inter frame.
const AVC_INTER_FRAME: u8 = 0x27;
/// AVC packet type of a coded frame (not a sequence header).
const AVC_NALU: u8 = 1;
/// Most worker turns one step may take before the benchmark gives up.
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
struct Client {
    session: Session,
    server_id: u32,
    stream_flow: FlowId,
    /// Video messages received.
    received: u64,
}

/// The worker, its control link's far end, and the clients (the publisher is client 0).
struct Bench {
    worker: Worker<MemIo>,
    peer: MemPeer,
    control: Socket,
    clients: Vec<Client>,
    by_address: HashMap<SocketAddr, usize>,
    epoch: std::time::Instant,
    encoded: Vec<u8>,
    /// Video messages the publisher has sent.
    published: u64,
}

impl Bench {
    fn new(subscribers: usize) -> io::Result<Bench> {
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
        let mut bench = Bench {
            worker,
            peer,
            control,
            clients: Vec::new(),
            by_address: HashMap::new(),
            epoch,
            encoded: Vec::with_capacity(MAX_MESSAGE),
            published: 0,
        };
        bench.worker.turn()?;
        bench.drain_control();
        let mut ids = IdAllocator::new(0);
        for n in 0..=subscribers {
            let server_id = ids.allocate().ok_or_else(|| io::Error::other("no ID"))?;
            let near = u32::try_from(n + 1).map_err(io::Error::other)?;
            bench.down(&Down::Install {
                session_id: server_id,
                far_session_id: near,
                address: benches::client_address(n),
                peer_id: [7; 32],
                secrets: SessionSecrets {
                    keys: server_keys(n),
                    send: DirectionOptions::default(),
                    receive: DirectionOptions::default(),
                },
            })?;
            let keys = client_keys(n);
            let mut session = Session::new(
                bench.now(),
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
            bench.by_address.insert(benches::client_address(n), n);
            bench.clients.push(Client {
                session,
                server_id,
                stream_flow,
                received: 0,
            });
        }
        bench.turn_until_idle()?;
        // Every client opens its NetStream flow with a first message (the server sees the flow
        // and its NetStream ID); then the control plane makes client 0 the publisher and the
        // others its subscribers.
        for c in &mut bench.clients {
            let now = Instant::from_millis(bench.epoch.elapsed().as_millis() as u64);
            c.session
                .send(
                    now,
                    c.stream_flow,
                    &[0x14, 0, 0, 0, 0],
                    SendOptions::default(),
                )
                .map_err(io::Error::other)?;
        }
        bench.exchange()?;
        let publisher = &bench.clients[0];
        let publish = Down::Publish {
            session_id: publisher.server_id,
            flow: publisher.stream_flow.0,
            stream: STREAM,
            key: STREAM_KEY.into(),
        };
        bench.down(&publish)?;
        for i in 1..=subscribers {
            let c = &bench.clients[i];
            let play = Down::Play {
                session_id: c.server_id,
                flow: c.stream_flow.0,
                stream: STREAM,
                unbuffered: false,
                key: STREAM_KEY.into(),
            };
            bench.down(&play)?;
        }
        bench.turn_until_idle()?;
        bench.exchange()?;
        // A key frame first: subscribers start at one.
        bench.publish(AVC_KEY_FRAME)?;
        bench.exchange()?;
        Ok(bench)
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
    fn drain_control(&mut self) {
        let mut scratch = vec![0u8; MAX_MESSAGE + 1];
        while (&self.control).read(&mut scratch).is_ok() {}
    }

    /// Runs the worker until it has taken every datagram delivered to it.
    fn turn_until_idle(&mut self) -> io::Result<()> {
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

    /// The publisher sends one video message whose tag byte is `tag`.
    fn publish(&mut self, tag: u8) -> io::Result<()> {
        let mut body = vec![0x42u8; MESSAGE_LEN];
        body[0] = tag;
        body[1] = AVC_NALU;
        let now = self.now();
        let message = TcMessage {
            kind: MessageType::VIDEO,
            timestamp: u32::try_from(self.epoch.elapsed().as_millis()).unwrap_or(0),
            payload: &body,
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
    fn deliver_from_clients(&mut self) {
        let now = self.now();
        let mut buf = [0u8; DATAGRAM];
        for (n, c) in self.clients.iter_mut().enumerate() {
            while let Some(t) = c.session.poll_transmit(now, &mut buf) {
                self.peer.deliver(benches::client_address(n), &buf[..t.len]);
            }
        }
    }

    /// Every client takes what the worker sent it.
    fn receive_at_clients(&mut self) -> io::Result<()> {
        let now = self.now();
        for (to, mut bytes) in self.peer.take_sent() {
            let Some(&n) = self.by_address.get(&to) else {
                return Err(io::Error::other(format!("datagram to unknown {to}")));
            };
            let c = &mut self.clients[n];
            c.session
                .handle_datagram(now, to, &mut bytes)
                .map_err(io::Error::other)?;
            while let Some(ev) = c.session.poll_event() {
                if let Event::Message { data, .. } = ev {
                    if TcMessage::parse(&data).is_ok_and(|m| m.kind == MessageType::VIDEO) {
                        c.received += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Clients send, the worker turns, clients receive: one round trip of everything pending.
    fn exchange(&mut self) -> io::Result<()> {
        self.deliver_from_clients();
        self.turn_until_idle()?;
        self.drain_control();
        self.receive_at_clients()
    }
}

fn worker_fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    g.sample_size(20);
    for subscribers in SUBSCRIBERS {
        run(&mut g, subscribers);
    }
    g.finish();
}

/// One publisher to `subscribers`, checked at the end: every subscriber got every message.
fn run(g: &mut BenchmarkGroup<'_, WallTime>, subscribers: usize) {
    let mut bench = Bench::new(subscribers).expect("bench set up");
    g.throughput(Throughput::Elements(subscribers as u64));
    g.bench_function(format!("worker_{MESSAGE_LEN}B_x{subscribers}"), |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                bench.publish(AVC_INTER_FRAME).expect("publish");
                bench.deliver_from_clients();
                let start = std::time::Instant::now();
                bench.turn_until_idle().expect("worker turns");
                spent += start.elapsed();
                bench.drain_control();
                bench.receive_at_clients().expect("clients receive");
            }
            spent
        })
    });
    // Every subscriber got every message published (the key frame of the set-up, and one per
    // iteration when this size was not filtered out): the figure measured whole fanouts.
    for (n, c) in bench.clients.iter().enumerate().skip(1) {
        assert_eq!(
            c.received, bench.published,
            "subscriber {n} missed messages"
        );
    }
    black_box(&bench.clients);
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! {
        name = benches;
        config = benches::config();
        targets = worker_fanout
    }
}
use group::benches;
criterion_main!(benches);
