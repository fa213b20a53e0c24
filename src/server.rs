//! A single-process RTMFP server on one UDP socket: the protocol core's [`Endpoint`] behind a
//! blocking socket, with the NetConnection commands a Flash client needs to connect
//! (`connect`, `setPeerInfo`, `createStream`, `deleteStream`, and `_error` for unknown calls).
//!
//! This is the development server that the README's first command runs. The production data
//! plane (pinned workers on recvmmsg/sendmmsg or AF_XDP, a separate control process, Lua
//! applications, live streams) lives in the `dataplane`, `control` and `scripting` crates as
//! they are built; until then NetStream publish and play are refused with a status that says so.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::Config;
use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rtmfp::crypto::{DhGroup, NegotiationPolicy};
use rtmfp::endpoint::{Endpoint, EndpointEvent};
use rtmfp::flash::command::{status, status_object, Command, NetCommand, ObjectEncoding};
use rtmfp::flash::message::{TcMessage, UserControl};
use rtmfp::flash::metadata::{FlowMetadata, ReceiveIntent};
use rtmfp::ids::FlowId;
use rtmfp::session::flows::SendOptions;
use rtmfp::session::{Event, SessionConfig};
use rtmfp::startup::initiator::InitiatorConfig;
use rtmfp::startup::responder::{Responder, ResponderConfig};
use rtmfp::time::Instant;

/// Longest a shutdown waits for sessions to acknowledge their Close Requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Largest datagram we receive.
const MAX_DATAGRAM: usize = 8192;
/// Longest the loop blocks in `recv_from` without a timer due.
const MAX_IDLE_WAIT: Duration = Duration::from_millis(500);

/// Server options from the command line.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Configuration file (`--config`); otherwise `updraft.ini` or `CumulusServer.ini` in the
    /// working directory, when present.
    pub config: Option<std::path::PathBuf>,
    /// UDP port, overriding the configuration file.
    pub port: Option<u16>,
    /// Address to bind (default `::`, which also takes IPv4 on Linux).
    pub bind: IpAddr,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            config: None,
            port: None,
            bind: IpAddr::from([0u16; 8]),
        }
    }
}

/// Parses `--port N` and `--bind ADDR`.
pub fn parse_args(args: &[String]) -> Result<ServerOptions, String> {
    let mut o = ServerOptions::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or(format!("{flag} needs a value"))
        };
        match flag {
            "--port" => o.port = Some(value()?.parse().map_err(|e| format!("--port: {e}"))?),
            "--config" => o.config = Some(value()?.into()),
            "--bind" => o.bind = value()?.parse().map_err(|e| format!("--bind: {e}"))?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

/// NetConnection state of one session.
#[derive(Debug, Default)]
struct Client {
    /// Our reply flow for each of the client's flows.
    replies: HashMap<FlowId, FlowId>,
    /// The NetStream ID of each of the client's TC flows (0: the NetConnection).
    streams: HashMap<FlowId, u64>,
    /// The client's first NetConnection control flow (TC metadata, stream ID 0).
    control: Option<FlowId>,
    next_stream_id: f64,
}

/// The server: an endpoint and its clients.
pub struct Server {
    endpoint: Endpoint<ChaCha20Rng>,
    clients: HashMap<u32, Client>,
    epoch: std::time::Instant,
    /// Keepalive periods sent after `setPeerInfo`, in milliseconds (server, peer)
    /// (RFC 7425 §5.3.4; `keepAliveServer`, `keepAlivePeer`).
    keepalive_ms: (u32, u32),
}

impl Server {
    /// A server with a fresh certificate and cookie secret from `seed_rng`.
    pub fn new(mut seed_rng: ChaCha20Rng, config: &Config) -> Server {
        let mut secret = [0u8; 32];
        seed_rng.fill_bytes(&mut secret);
        let mut randomness = [0u8; 64];
        seed_rng.fill_bytes(&mut randomness);
        let responder = Responder::new(
            ResponderConfig {
                groups: DhGroup::ALL.to_vec(),
                policy: NegotiationPolicy::FLASH_COMPATIBLE,
            },
            secret,
            &randomness,
            Instant::ZERO,
        );
        let mut endpoint_seed = [0u8; 32];
        seed_rng.fill_bytes(&mut endpoint_seed);
        Server {
            endpoint: Endpoint::new(
                ChaCha20Rng::from_seed(endpoint_seed),
                Some(responder),
                InitiatorConfig::default(),
                SessionConfig::default(),
            ),
            clients: HashMap::new(),
            epoch: std::time::Instant::now(),
            keepalive_ms: (
                millis(config.keepalive_server),
                millis(config.keepalive_peer),
            ),
        }
    }

    /// The server's peer ID (fingerprint of its certificate).
    pub fn fingerprint(&self) -> String {
        self.endpoint
            .responder()
            .map(|r| hex_string(&r.fingerprint().0))
            .unwrap_or_default()
    }

    fn now(&self) -> Instant {
        Instant::from_micros(u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// Serves on `socket` until an I/O error other than a timeout, or until `stop` is set: then
    /// every session is closed in order (Close Request, RFC 7016 §3.5.5) and the call returns
    /// once all are closed or [`SHUTDOWN_GRACE`] has passed.
    pub fn serve(&mut self, socket: &UdpSocket, stop: &AtomicBool) -> std::io::Result<()> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut stopping_since: Option<std::time::Instant> = None;
        loop {
            if stop.load(Ordering::Relaxed) && stopping_since.is_none() {
                stopping_since = Some(std::time::Instant::now());
                let now = self.now();
                let handles: Vec<u32> = self.endpoint.session_handles().collect();
                tracing::info!(
                    sessions = handles.len(),
                    "shutting down: closing every session"
                );
                for h in handles {
                    if let Some(s) = self.endpoint.session_mut(h) {
                        s.close(now);
                    }
                }
            }
            if let Some(since) = stopping_since {
                if self.endpoint.session_handles().next().is_none()
                    || since.elapsed() >= SHUTDOWN_GRACE
                {
                    return Ok(());
                }
            }
            let now = self.now();
            let wait = self
                .endpoint
                .poll_timeout()
                .map_or(MAX_IDLE_WAIT, |t| {
                    t.saturating_duration_since(now).min(MAX_IDLE_WAIT)
                })
                .max(Duration::from_millis(1));
            socket.set_read_timeout(Some(wait))?;
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let now = self.now();
                    self.endpoint
                        .handle_datagram(now, canonical(from), &mut buf[..n]);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            // A signal (SIGTERM) interrupted the wait: the loop checks it.
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
            let now = self.now();
            if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                self.endpoint.handle_timeout(now);
            }
            self.process_events(now);
            while let Some(t) = self.endpoint.poll_transmit(now, &mut buf) {
                // A send error (unreachable peer, full buffer) loses one datagram; RTMFP
                // retransmits, so it is not fatal.
                if let Err(e) =
                    socket.send_to(&buf[..t.len], destination_for(socket, t.destination))
                {
                    tracing::debug!(to = %t.destination, error = %e, "send failed");
                }
            }
        }
    }

    fn process_events(&mut self, now: Instant) {
        while let Some((handle, event)) = self.endpoint.poll_event() {
            match event {
                EndpointEvent::Accepted { peer_id, from } => {
                    tracing::info!(session = handle, %from, peer = %hex_string(&peer_id.0), "session opened");
                    self.clients.insert(
                        handle,
                        Client {
                            next_stream_id: 1.0,
                            ..Client::default()
                        },
                    );
                }
                EndpointEvent::Session(Event::Message { flow, data }) => {
                    self.on_message(now, handle, flow, &data)
                }
                EndpointEvent::Session(Event::FlowOpened { flow, metadata, .. }) => {
                    if let Ok(FlowMetadata::Tc { stream_id, .. }) = FlowMetadata::parse(&metadata) {
                        let client = self.clients.entry(handle).or_default();
                        client.streams.insert(flow, stream_id);
                        if stream_id == 0 && client.control.is_none() {
                            client.control = Some(flow);
                        }
                    } else {
                        // NetGroup and unknown flows are not served yet: reject them
                        // (RFC 7016 §3.6.3.7, automatic rejection code 0).
                        if let Some(s) = self.endpoint.session_mut(handle) {
                            let _ = s.reject_flow(flow, 0);
                        }
                    }
                }
                EndpointEvent::Session(Event::Closed { reason }) => {
                    tracing::info!(session = handle, ?reason, "session closed");
                    self.clients.remove(&handle);
                    self.endpoint.remove_closed(handle);
                }
                _ => {}
            }
        }
    }

    fn on_message(&mut self, now: Instant, handle: u32, flow: FlowId, data: &[u8]) {
        let Ok(tc) = TcMessage::parse(data) else {
            return;
        };
        if !tc.kind.is_command() {
            return;
        }
        let Ok(cmd) = Command::parse(&tc) else { return };
        let replies: Vec<Vec<u8>> = match cmd.net_command() {
            Ok(NetCommand::Connect(c)) => {
                let enc = c.object_encoding();
                tracing::info!(session = handle, app = c.app().unwrap_or(""), encoding = ?enc, "connect");
                let result = Command::connect_success(
                    cmd.transaction_id,
                    enc,
                    "Connection succeeded.",
                    vec![],
                );
                result
                    .to_message(ObjectEncoding::Amf0, 0)
                    .into_iter()
                    .collect()
            }
            Ok(NetCommand::SetPeerInfo(addrs)) => {
                tracing::debug!(session = handle, addresses = ?addrs, "setPeerInfo");
                let ka = UserControl::SetKeepalive {
                    server_ms: self.keepalive_ms.0,
                    peer_ms: self.keepalive_ms.1,
                };
                vec![ka.to_message(0)]
            }
            Ok(NetCommand::CreateStream) => {
                let client = self.clients.entry(handle).or_default();
                let id = client.next_stream_id.max(1.0);
                client.next_stream_id = id + 1.0;
                Command::create_stream_result(cmd.transaction_id, id)
                    .to_message(ObjectEncoding::Amf0, 0)
                    .into_iter()
                    .collect()
            }
            Ok(NetCommand::DeleteStream(_)) | Ok(NetCommand::CloseStream) => Vec::new(),
            Ok(NetCommand::Publish { .. }) => refuse_stream(status::PUBLISH_BAD_NAME),
            Ok(NetCommand::Play(_)) => refuse_stream(status::PLAY_FAILED),
            _ if cmd.transaction_id != 0.0 => {
                let description = format!("Method '{}' not found", cmd.name);
                Command::error(
                    cmd.transaction_id,
                    status_object(
                        status::LEVEL_ERROR,
                        status::CALL_FAILED,
                        &description,
                        vec![],
                    ),
                )
                .to_message(ObjectEncoding::Amf0, 0)
                .into_iter()
                .collect()
            }
            _ => Vec::new(),
        };
        if replies.is_empty() {
            return;
        }
        let Some(session) = self.endpoint.session_mut(handle) else {
            return;
        };
        let client = self.clients.entry(handle).or_default();
        let reply_flow = match client.replies.get(&flow) {
            Some(f) => *f,
            None => {
                // Reply on a flow with the same metadata (RFC 7425 §5.1), returned on the
                // client's NetConnection control flow (RFC 7016 §2.3.11.1.2): rtmfp-cpp
                // clients accept only flows associated with their control flow, and
                // tcserver associates its NetStream flows the same way.
                let stream_id = client.streams.get(&flow).copied().unwrap_or(0);
                let associated = client.control.filter(|_| stream_id != 0).unwrap_or(flow);
                let metadata = FlowMetadata::Tc {
                    stream_id,
                    receive_intent: ReceiveIntent::Sequence,
                };
                let Ok(f) = session.open_flow(&metadata.to_vec(), Some(associated)) else {
                    return;
                };
                client.replies.insert(flow, f);
                f
            }
        };
        for r in replies {
            let _ = session.send(now, reply_flow, &r, SendOptions::default());
        }
    }
}

/// An `onStatus` error for NetStream commands this build does not serve yet.
fn refuse_stream(code: &str) -> Vec<Vec<u8>> {
    let description = "Live streaming is not available in this build of Updraft yet.";
    Command::on_status(status_object(
        status::LEVEL_ERROR,
        code,
        description,
        Vec::new(),
    ))
    .to_message(ObjectEncoding::Amf0, 0)
    .into_iter()
    .collect()
}

/// IPv4-mapped IPv6 source addresses (from a dual-stack socket) as plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// On a dual-stack IPv6 socket, IPv4 destinations are written as IPv4-mapped addresses.
fn destination_for(socket: &UdpSocket, dest: SocketAddr) -> SocketAddr {
    match (socket.local_addr(), dest) {
        (Ok(SocketAddr::V6(_)), SocketAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => dest,
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the server; answers the exit code.
pub fn run(args: &[String]) -> u8 {
    let opts = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("updraft: {e}");
            return 2;
        }
    };
    let config = match Config::discover(opts.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("updraft: {e}");
            return 2;
        }
    };
    let port = opts.port.unwrap_or(config.port);
    let socket = match UdpSocket::bind((opts.bind, port)) {
        Ok(s) => s,
        Err(e) if opts.bind.is_unspecified() && opts.bind.is_ipv6() => {
            // No IPv6 on this host: serve IPv4 only.
            eprintln!("updraft: IPv6 unavailable ({e}); binding 0.0.0.0");
            match UdpSocket::bind((IpAddr::from([0u8; 4]), port)) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("updraft: cannot bind UDP port {port}: {e}");
                    return 2;
                }
            }
        }
        Err(e) => {
            eprintln!("updraft: cannot bind UDP {}:{port}: {e}", opts.bind);
            return 2;
        }
    };
    let mut seed = [0u8; 32];
    if let Err(e) = getrandom::getrandom(&mut seed) {
        eprintln!("updraft: no system randomness: {e}");
        return 1;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("UPDRAFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let mut server = Server::new(ChaCha20Rng::from_seed(seed), &config);
    let local = socket
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    eprintln!(
        "updraft {}: mode single-process socket, 1 worker, UDP {local}, server peer ID {}",
        env!("CARGO_PKG_VERSION"),
        server.fingerprint()
    );
    if let Some(path) = &config.source {
        tracing::info!(file = %path.display(), "configuration read");
    }
    // Settings this single-process server does not act on yet: said, never silently dropped.
    if config.threads > 1 {
        tracing::warn!(
            threads = config.threads,
            "threads is not used: this server runs one worker"
        );
    }
    if config.udp_buffer_size.is_some() {
        tracing::warn!("udpBufferSize is not applied yet: the operating system's default is used");
    }
    if config.sections.contains_key("logs") {
        tracing::warn!("logs.* is not applied yet: logs go to standard error");
    }
    // SIGTERM and SIGINT ask for an orderly shutdown.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("updraft: cannot handle signal {signal}: {e}");
            return 1;
        }
    }
    match server.serve(&socket, &stop) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("updraft: {e}");
            1
        }
    }
}
