//! Socket-mode packets per second of one data-plane worker. Starts a data plane with one
//! worker on 127.0.0.1 (recvmmsg/sendmmsg) and the control plane as threads of this process,
//! connects K clients (the protocol core's endpoint, each on its own UDP socket, all driven
//! by this thread), has each open a NetConnection flow and send small audio messages as fast
//! as its flow control allows for a bounded time, then reads the worker's counters.
//!
//! The worker answers every packet carrying user data with acknowledgements, so it both
//! receives and sends. The CPU time of the worker thread and of the client thread over the
//! measured window are printed too: on a 2-core machine the single client thread may be what
//! limits the rate.
//!
//! Run with `cargo bench -p benches --bench socket_pps`; figures go to docs/performance.md.

use std::io::{self, Write};
use std::net::UdpSocket;
use std::time::{Duration, Instant as WallInstant};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rtmfp::crypto::{DhGroup, NegotiationPolicy};
use rtmfp::endpoint::{Endpoint, EndpointEvent};
use rtmfp::flash::metadata::{FlowMetadata, ReceiveIntent};
use rtmfp::ids::FlowId;
use rtmfp::session::flows::SendOptions;
use rtmfp::session::SessionConfig;
use rtmfp::startup::components::build_url_epd;
use rtmfp::startup::initiator::InitiatorConfig;
use rtmfp::time::Instant;
use updraft_control::apps::WwwApps;
use updraft_control::handshake::HandshakeLimits;
use updraft_control::service::{self, ServiceConfig};
use updraft_dataplane::counters::WorkerCounters;
use updraft_dataplane::plane::{DataPlane, PlaneConfig};

/// Clients.
const CLIENTS: usize = 4;
/// How long the clients send.
const MEASURE: Duration = Duration::from_secs(5);
/// Longest wait for a client's session to open.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// Longest wait for the server to stop.
const STOP_LIMIT: Duration = Duration::from_secs(6);
/// Kernel socket buffer of the worker socket (the server's default).
const UDP_BUFFER: usize = 4 << 20;
/// Bytes of each message: an RTMP audio message (type, timestamp, body); the endpoint packs
/// about eleven to a packet.
const MESSAGE_LEN: usize = 100;
/// RTMP message type of audio (RFC 7425 §5.1 carries RTMP messages on flows).
const AUDIO: u8 = 0x08;
/// Bytes each client keeps queued on its flow; more waits until acknowledgements free room.
const BACKLOG: usize = 256 * 1024;
/// Largest datagram a client handles.
const DATAGRAM: usize = 2048;
/// The control plane's DH threads (handshakes only happen at start-up here).
const DH_THREADS: usize = 1;
/// Name of the client thread, to find its CPU time.
const CLIENT_THREAD: &str = "pps-clients";
/// Name of the worker thread (set by `DataPlane::start`).
const WORKER_THREAD: &str = "worker-0";

/// One client: an endpoint on its own socket, with at most one session.
struct Client {
    socket: UdpSocket,
    endpoint: Endpoint<ChaCha20Rng>,
    session: Option<u32>,
    flow: Option<FlowId>,
    sent: u64,
    received: u64,
    send_blocked: u64,
}

impl Client {
    fn new(seed: u64) -> io::Result<Client> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_nonblocking(true)?;
        Ok(Client {
            socket,
            endpoint: Endpoint::new(
                ChaCha20Rng::seed_from_u64(seed),
                None,
                InitiatorConfig {
                    groups: DhGroup::ALL.to_vec(),
                    policy: NegotiationPolicy::FLASH_COMPATIBLE,
                },
                SessionConfig::default(),
            ),
            session: None,
            flow: None,
            sent: 0,
            received: 0,
            send_blocked: 0,
        })
    }

    /// Moves datagrams both ways, events and timers once; never blocks.
    fn pump(&mut self, now: Instant, buf: &mut [u8]) {
        while let Some(t) = self.endpoint.poll_transmit(now, buf) {
            match self.socket.send_to(&buf[..t.len], t.destination) {
                Ok(_) => self.sent += 1,
                Err(_) => self.send_blocked += 1,
            }
        }
        while let Ok((n, from)) = self.socket.recv_from(buf) {
            self.received += 1;
            self.endpoint.handle_datagram(now, from, &mut buf[..n]);
        }
        while let Some((h, e)) = self.endpoint.poll_event() {
            if matches!(e, EndpointEvent::Connected { .. }) {
                self.session = Some(h);
            }
        }
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.endpoint.handle_timeout(now);
        }
    }

    /// Queues messages until the flow holds [`BACKLOG`] bytes.
    fn fill(&mut self, now: Instant, message: &[u8]) {
        let (Some(h), Some(flow)) = (self.session, self.flow) else {
            return;
        };
        let Some(s) = self.endpoint.session_mut(h) else {
            return;
        };
        while s.flow_backlog(flow).is_some_and(|b| b < BACKLOG) {
            if s.send(now, flow, message, SendOptions::default()).is_err() {
                return;
            }
        }
    }
}

/// On-CPU time of this process's thread named `name`, from /proc (schedstat, nanoseconds).
fn thread_cpu(name: &str) -> Option<Duration> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
            return Some(Duration::from_nanos(ns));
        }
    }
    None
}

fn drops(c: &WorkerCounters) -> u64 {
    c.tx_dropped
        + c.drop_truncated
        + c.drop_malformed
        + c.drop_unknown_session
        + c.drop_control_unavailable
        + c.drop_handoff_full
}

fn main() -> io::Result<()> {
    std::thread::Builder::new()
        .name(CLIENT_THREAD.into())
        .spawn(run)?
        .join()
        .map_err(|_| io::Error::other("client thread panicked"))?
}

fn run() -> io::Result<()> {
    let plane = DataPlane::start(PlaneConfig {
        bind: "127.0.0.1:0".parse().map_err(io::Error::other)?,
        workers: 1,
        udp_buffer: Some(UDP_BUFFER),
        session: SessionConfig::default(),
        pin: false,
        seed: [1; 32],
        dump: None,
        mode: updraft_dataplane::xdp::IoMode::Socket,
        interface: None,
        deny: Vec::new(),
        lifetimes: Default::default(),
        busy_poll: None,
    })?;
    let server = plane.local_addr();
    let links = plane.connect_control()?;
    let control = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            service::run(
                links,
                ServiceConfig {
                    identity_seed: [2; 32],
                    dh_seed: [3; 32],
                    dh_threads: DH_THREADS,
                    limits: HandshakeLimits::default(),
                    keepalive_ms: (0, 0),
                    first_stream: 1,
                },
                Box::new(WwwApps::new("/nonexistent")),
            )
        })?;

    let epoch = WallInstant::now();
    let now = || Instant::from_micros(u64::try_from(epoch.elapsed().as_micros()).unwrap_or(0));
    let mut buf = vec![0u8; DATAGRAM];
    let mut clients = (0..CLIENTS as u64)
        .map(|i| Client::new(i + 1))
        .collect::<io::Result<Vec<_>>>()?;
    for c in &mut clients {
        c.endpoint.connect(
            now(),
            build_url_epd(b"rtmfp://127.0.0.1/bench"),
            None,
            &[server],
        );
    }
    let deadline = WallInstant::now() + CONNECT_LIMIT;
    while clients.iter().any(|c| c.session.is_none()) {
        if WallInstant::now() > deadline {
            return Err(io::Error::other("clients did not connect"));
        }
        for c in &mut clients {
            c.pump(now(), &mut buf);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let metadata = FlowMetadata::Tc {
        stream_id: 0,
        receive_intent: ReceiveIntent::Sequence,
    }
    .to_vec();
    for c in &mut clients {
        let h = c.session.ok_or_else(|| io::Error::other("no session"))?;
        let s = c
            .endpoint
            .session_mut(h)
            .ok_or_else(|| io::Error::other("no session"))?;
        c.flow = Some(s.open_flow(&metadata, None).map_err(io::Error::other)?);
    }
    let mut out = io::stdout().lock();
    let received = measure(&plane, &mut clients, &mut buf, &now, MESSAGE_LEN, &mut out)?;

    // Stop: the worker closes the sessions (the clients acknowledge), then the control plane
    // sees its link close.
    plane.shutdown();
    let stop_by = WallInstant::now() + STOP_LIMIT;
    while !plane.finished() && WallInstant::now() < stop_by {
        for c in &mut clients {
            c.pump(now(), &mut buf);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let stopped = plane.finished();
    if stopped {
        plane.join()?;
        while !control.is_finished() && WallInstant::now() < stop_by {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    if !stopped {
        writeln!(out, "(the server did not stop within {STOP_LIMIT:?})")?;
    }
    if received == 0 {
        return Err(io::Error::other("the worker received nothing"));
    }
    Ok(())
}

/// One window of [`MEASURE`] with messages of `len` bytes; prints the figures and answers the
/// packets the worker received.
fn measure(
    plane: &DataPlane,
    clients: &mut [Client],
    buf: &mut [u8],
    now: &impl Fn() -> Instant,
    len: usize,
    out: &mut impl Write,
) -> io::Result<u64> {
    let mut message = vec![0x42u8; len];
    message[0] = AUDIO;
    let before = plane.counters()[0];
    let (worker_cpu0, client_cpu0) = (thread_cpu(WORKER_THREAD), thread_cpu(CLIENT_THREAD));
    let client_sent0: u64 = clients.iter().map(|c| c.sent).sum();
    let client_received0: u64 = clients.iter().map(|c| c.received).sum();
    let blocked0: u64 = clients.iter().map(|c| c.send_blocked).sum();
    let started = WallInstant::now();
    while started.elapsed() < MEASURE {
        let t = now();
        for c in clients.iter_mut() {
            c.fill(t, &message);
            c.pump(t, buf);
        }
    }
    let wall = started.elapsed();
    // The worker publishes its counters once per loop turn, and it is busy: the counters
    // lag by one turn at most.
    let after = plane.counters()[0];
    let (worker_cpu1, client_cpu1) = (thread_cpu(WORKER_THREAD), thread_cpu(CLIENT_THREAD));
    let client_sent = clients.iter().map(|c| c.sent).sum::<u64>() - client_sent0;
    let client_received = clients.iter().map(|c| c.received).sum::<u64>() - client_received0;
    let send_blocked = clients.iter().map(|c| c.send_blocked).sum::<u64>() - blocked0;

    let secs = wall.as_secs_f64();
    let rx = after.rx_packets - before.rx_packets;
    let tx = after.tx_packets - before.tx_packets;
    let rx_bytes = after.rx_bytes - before.rx_bytes;
    writeln!(
        out,
        "{CLIENTS} clients, {len}-B messages, {secs:.2} s on 1 worker (127.0.0.1, recvmmsg/sendmmsg)"
    )?;
    writeln!(
        out,
        "  worker received: {rx} packets = {:.0} packets/s ({:.0} B per datagram)",
        rx as f64 / secs,
        rx_bytes as f64 / rx.max(1) as f64
    )?;
    writeln!(
        out,
        "  worker sent:     {tx} packets = {:.0} packets/s",
        tx as f64 / secs
    )?;
    writeln!(
        out,
        "  worker drops:    {} (malformed {}, unknown session {}, send {})",
        drops(&after) - drops(&before),
        after.drop_malformed - before.drop_malformed,
        after.drop_unknown_session - before.drop_unknown_session,
        after.tx_dropped - before.tx_dropped
    )?;
    writeln!(
        out,
        "  clients sent {client_sent}, received {client_received}; sends refused by the kernel: {send_blocked}"
    )?;
    let cpu = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => format!(
            "{:.2} s ({:.0}% of one core)",
            (b - a).as_secs_f64(),
            100.0 * (b - a).as_secs_f64() / secs
        ),
        _ => "unknown".into(),
    };
    writeln!(
        out,
        "  CPU over the window: worker {}, client thread {}",
        cpu(worker_cpu0, worker_cpu1),
        cpu(client_cpu0, client_cpu1)
    )?;
    Ok(rx)
}
