//! Shared harness of the server tests: the `updraft` binary on loopback with its own www
//! root, and a client built on the protocol core's endpoint. Every wait is bounded.
#![allow(dead_code, unused_imports)] // each test file uses part of the harness

pub use std::io::{BufRead, BufReader, Read, Write};
pub use std::net::{SocketAddr, TcpStream, UdpSocket};
pub use std::process::{Child, Command as Process, Stdio};
pub use std::time::{Duration, Instant as WallInstant};

pub use rand_chacha::rand_core::SeedableRng;
pub use rand_chacha::ChaCha20Rng;
pub use rtmfp::amf::{Object, Value};
pub use rtmfp::crypto::{DhGroup, NegotiationPolicy};
pub use rtmfp::endpoint::{Endpoint, EndpointEvent};
pub use rtmfp::flash::command::{Command, ObjectEncoding};
pub use rtmfp::flash::message::{TcMessage, UserControl};
pub use rtmfp::flash::metadata::{FlowMetadata, ReceiveIntent};
pub use rtmfp::ids::FlowId;
pub use rtmfp::session::flows::SendOptions;
pub use rtmfp::session::{Event, SessionConfig, State};
pub use rtmfp::startup::components::build_url_epd;
pub use rtmfp::startup::initiator::InitiatorConfig;
pub use rtmfp::time::Instant;

pub mod live;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Longest [`ServerProcess::wait_logged`] waits for a log line.
pub const LOG_WAIT: Duration = Duration::from_secs(5);

/// A fresh directory under the system temporary directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A new, empty directory whose name contains `tag`.
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("updraft-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A unique temporary file with `text`, removed on drop.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    /// Writes `text` to a new file whose name ends with `name`.
    pub fn new(name: &str, text: &str) -> TempFile {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("updraft-{}-{n}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A running server, killed when the test ends however it ends. Its www root holds the
/// application `live`.
pub struct ServerProcess {
    /// The `updraft` process.
    pub child: Child,
    /// Where it serves.
    pub addr: SocketAddr,
    /// The control process's pid, when it runs as a process.
    pub control_pid: Option<u32>,
    /// Every log line so far.
    pub log: Arc<Mutex<Vec<String>>>,
    _www: TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Whether some log line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// Whether a log line containing `text` arrives within [`LOG_WAIT`]: log lines reach the
    /// test through pipes and a reader thread, a little after what they tell of has happened.
    pub fn wait_logged(&self, text: &str) -> bool {
        let deadline = WallInstant::now() + LOG_WAIT;
        while !self.logged(text) && WallInstant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.logged(text)
    }

    /// Sends `signal` (a `kill` name such as `TERM` or `KILL`) to `pid` with the shell's own
    /// `kill` builtin, so the tests need no procps.
    pub fn signal(pid: u32, signal: &str) {
        let kill = format!("kill -{signal} {pid}");
        assert!(Process::new("sh")
            .args(["-c", &kill])
            .status()
            .unwrap()
            .success());
    }
}

/// Starts `updraft --port 0 --bind 127.0.0.1` and reads the port from its start-up line.
pub fn start_server() -> ServerProcess {
    start_server_with(&[])
}

/// Starts the server with extra arguments (before the loopback port and address).
pub fn start_server_with(extra: &[&str]) -> ServerProcess {
    start_server_on(sample_www("www"), extra)
}

/// Starts the server on the www root `www` with extra arguments.
pub fn start_server_on(www: TempDir, extra: &[&str]) -> ServerProcess {
    let mut command = Process::new(env!("CARGO_BIN_EXE_updraft"));
    command
        .args(["--www", www.0.to_str().unwrap()])
        .args(extra)
        .args(["--port", "0", "--bind", "127.0.0.1"]);
    let server = spawn_server(&mut command, www);
    assert!(server.logged("mode socket"));
    server
}

/// Starts the server with the configuration file `text` and extra arguments; the file is
/// answered with the server, to live as long as it.
pub fn start_server_configured(text: &str, extra: &[&str]) -> (ServerProcess, TempFile) {
    let ini = TempFile::new("server.ini", text);
    let mut args = vec!["--config", ini.0.to_str().unwrap()];
    args.extend_from_slice(extra);
    (start_server_with(&args), ini)
}

/// A `www/` with a root application and `live`, readable by anyone (unprivileged servers
/// and control processes read it too).
pub fn sample_www(tag: &str) -> TempDir {
    let www = TempDir::new(tag);
    std::fs::create_dir_all(www.0.join("live")).unwrap();
    std::fs::write(www.0.join("main.lua"), "-- root application\n").unwrap();
    std::fs::write(www.0.join("live/main.lua"), "-- application live\n").unwrap();
    let mut perms = std::fs::metadata(&www.0).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&www.0, perms).unwrap();
    www
}

/// Runs `command` (a server on `www`), keeps its log and reads its address and control
/// process from the start-up line; panics with what it said if it stops before that line.
pub fn spawn_server(command: &mut Process, www: TempDir) -> ServerProcess {
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .expect("start updraft");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut log = Vec::new();
    let first = lines.by_ref().map_while(Result::ok).find(|l| {
        eprintln!("server: {l}");
        log.push(l.clone());
        l.contains("server peer ID")
    });
    let Some(first) = first else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no start-up line; the server said:\n{}", log.join("\n"));
    };
    let addr = first
        .split("UDP ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    let control_pid = first
        .split("control process ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok());
    let log = Arc::new(Mutex::new(log));
    let sink = Arc::clone(&log);
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            eprintln!("server: {l}");
            sink.lock().unwrap().push(l);
        }
    });
    ServerProcess {
        child,
        addr,
        control_pid,
        log,
        _www: www,
    }
}

/// A counter of `/stats`, summed over the workers.
pub fn worker_sum(stats: &serde_json::Value, field: &str) -> u64 {
    stats["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w[field].as_u64().unwrap())
        .sum()
}

/// One HTTP GET on the metrics endpoint; answers the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// A free TCP port on loopback for `--metrics`.
pub fn free_tcp_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A client: the core's endpoint on its own UDP socket.
pub struct Client {
    pub socket: UdpSocket,
    pub endpoint: Endpoint<ChaCha20Rng>,
    pub epoch: WallInstant,
    pub events: Vec<(u32, EndpointEvent)>,
    /// Percentage of received datagrams dropped on purpose (loss injection), and the state of
    /// the generator that picks them.
    pub loss: Option<(u32, ChaCha20Rng)>,
}

/// Metadata of a TC flow for NetStream `stream_id` (0: the NetConnection), in sequence.
pub fn tc_metadata(stream_id: u64) -> Vec<u8> {
    FlowMetadata::Tc {
        stream_id,
        receive_intent: ReceiveIntent::Sequence,
    }
    .to_vec()
}

/// A `connect` to `app` with `objectEncoding` `encoding`.
pub fn connect_message(app: &str, encoding: f64) -> Vec<u8> {
    Command::new(
        "connect",
        1.0,
        Value::Object(Object::anonymous(vec![
            ("app".into(), Value::str(app)),
            ("objectEncoding".into(), Value::Number(encoding)),
        ])),
        vec![],
    )
    .to_message(ObjectEncoding::Amf0, 0)
    .unwrap()
}

impl Client {
    /// A client with a fixed seed.
    pub fn new() -> Client {
        Client::seeded(9)
    }

    /// A client whose randomness comes from `seed`.
    pub fn seeded(seed: u64) -> Client {
        Client::with_groups(seed, DhGroup::ALL.to_vec())
    }

    /// A client offering only `groups` (group 2 alone, as Flash Player uses, keeps handshakes
    /// cheap in tests with many clients).
    pub fn with_groups(seed: u64, groups: Vec<DhGroup>) -> Client {
        Client::bound(seed, groups, "0.0.0.0:0")
    }

    /// [`Client::with_groups`] on a socket bound to `local` (`[::]:0` for IPv6 servers).
    pub fn bound(seed: u64, groups: Vec<DhGroup>, local: &str) -> Client {
        let socket = UdpSocket::bind(local).unwrap();
        let config = InitiatorConfig {
            groups,
            policy: NegotiationPolicy::FLASH_COMPATIBLE,
        };
        Client {
            socket,
            endpoint: Endpoint::new(
                ChaCha20Rng::seed_from_u64(seed),
                None,
                config,
                SessionConfig::default(),
            ),
            epoch: WallInstant::now(),
            events: Vec::new(),
            loss: None,
        }
    }

    /// A client that also accepts sessions from other peers, as Flash Player does: one static
    /// identity (RFC 7425 §4.3.3) for both roles, so the peer ID the server sees is the one it
    /// answers P2P IHellos with.
    pub fn peer(seed: u64) -> Client {
        let mut c = Client::with_groups(seed, vec![DhGroup::Modp1024]);
        c.endpoint = Endpoint::flash_peer(ChaCha20Rng::seed_from_u64(seed), [seed as u8; 32]);
        c
    }

    /// Starts a P2P session to `peer` by asking `server` for it (rendezvous by peer ID, RFC
    /// 7016 §3.5.1.4); answers its handle.
    pub fn open_peer(&mut self, server: SocketAddr, peer: rtmfp::ids::PeerId) -> u32 {
        let now = self.now();
        let epd = rtmfp::startup::components::build_fingerprint_epd(&peer.0);
        self.endpoint.connect(now, epd, Some(peer), &[server])
    }

    /// Steps this client until a datagram from it reaches `other` (a socket standing in for
    /// another server), 5 s at most; answers whether one did.
    pub fn reaches(&mut self, other: &UdpSocket) -> bool {
        other.set_nonblocking(true).unwrap();
        let port = self.socket.local_addr().unwrap().port();
        let mut buf = [0u8; 2048];
        let deadline = WallInstant::now() + Duration::from_secs(5);
        while WallInstant::now() < deadline {
            self.step();
            while let Ok((_, from)) = other.recv_from(&mut buf) {
                if from.port() == port {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// Opens a NetGroup (`GC`) flow on session `h` and sends the join of `group` on it.
    pub fn join_group(&mut self, h: u32, group: rtmfp::flash::netgroup::GroupId) -> FlowId {
        let mut join = Vec::new();
        rtmfp::flash::netgroup::GroupJoin { group_id: group }.emit(&mut join);
        let flow = self
            .endpoint
            .session_mut(h)
            .unwrap()
            .open_flow(&FlowMetadata::Gc.to_vec(), None)
            .unwrap();
        self.send(h, flow, &join);
        flow
    }

    /// Drops `percent` of the datagrams this client receives, from now on.
    pub fn set_loss(&mut self, percent: u32, seed: u64) {
        self.loss = Some((percent, ChaCha20Rng::seed_from_u64(seed)));
    }

    fn lost(&mut self) -> bool {
        use rand_chacha::rand_core::RngCore;
        self.loss
            .as_mut()
            .is_some_and(|(p, rng)| rng.next_u32() % 100 < *p)
    }

    pub fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    /// Opens a session to `addr` for `url`; answers its handle once connected (5 s at most).
    pub fn open(&mut self, addr: SocketAddr, url: &str) -> Option<u32> {
        let now = self.now();
        let h = self
            .endpoint
            .connect(now, build_url_epd(url.as_bytes()), None, &[addr]);
        self.pump(|ev| {
            ev.iter()
                .any(|(hh, e)| *hh == h && matches!(e, EndpointEvent::Connected { .. }))
        })
        .then_some(h)
    }

    /// Opens a flow of session `h` for NetStream `stream_id`, not associated with another.
    pub fn open_stream_flow(&mut self, h: u32, stream_id: u64) -> FlowId {
        self.endpoint
            .session_mut(h)
            .unwrap()
            .open_flow(&tc_metadata(stream_id), None)
            .unwrap()
    }

    /// Opens the NetConnection flow of session `h` and sends `connect` to `app`.
    pub fn connect_app(&mut self, h: u32, app: &str) -> FlowId {
        let now = self.now();
        let s = self.endpoint.session_mut(h).unwrap();
        let flow = s.open_flow(&tc_metadata(0), None).unwrap();
        s.send(
            now,
            flow,
            &connect_message(app, 0.0),
            SendOptions::default(),
        )
        .unwrap();
        flow
    }

    /// Sends `message` on `flow` of session `h`.
    pub fn send(&mut self, h: u32, flow: FlowId, message: &[u8]) {
        let now = self.now();
        self.endpoint
            .session_mut(h)
            .unwrap()
            .send(now, flow, message, SendOptions::default())
            .unwrap();
    }

    /// Waits (bounded) until session `h` has received `n` messages in all.
    pub fn wait_messages(&mut self, h: u32, n: usize) -> bool {
        self.pump(|ev| {
            ev.iter()
                .filter(|(hh, e)| {
                    *hh == h && matches!(e, EndpointEvent::Session(Event::Message { .. }))
                })
                .count()
                >= n
        })
    }

    /// Starts opening a session to `addr` for `url` without waiting; answers its handle.
    pub fn start_open(&mut self, addr: SocketAddr, url: &str) -> u32 {
        let now = self.now();
        self.endpoint
            .connect(now, build_url_epd(url.as_bytes()), None, &[addr])
    }

    /// One non-blocking turn: send what is due, take what arrived, run timers, collect events.
    pub fn step(&mut self) {
        let mut buf = [0u8; 2048];
        let now = self.now();
        while let Some(t) = self.endpoint.poll_transmit(now, &mut buf) {
            let _ = self.socket.send_to(&buf[..t.len], t.destination);
        }
        self.socket.set_nonblocking(true).unwrap();
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            if self.lost() {
                continue;
            }
            let now = self.now();
            self.endpoint.handle_datagram(now, from, &mut buf[..n]);
        }
        self.socket.set_nonblocking(false).unwrap();
        let now = self.now();
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.endpoint.handle_timeout(now);
        }
        while let Some(e) = self.endpoint.poll_event() {
            self.events.push(e);
        }
    }

    /// Whether session `h` has opened.
    pub fn connected(&self, h: u32) -> bool {
        self.events
            .iter()
            .any(|(hh, e)| *hh == h && matches!(e, EndpointEvent::Connected { .. }))
    }

    /// Whether session `h` has closed.
    pub fn closed(&self, h: u32) -> bool {
        self.events
            .iter()
            .any(|(hh, e)| *hh == h && matches!(e, EndpointEvent::Session(Event::Closed { .. })))
    }

    /// Pumps datagrams and timers until `done` or 5 s.
    pub fn pump(&mut self, done: impl FnMut(&[(u32, EndpointEvent)]) -> bool) -> bool {
        self.pump_for(Duration::from_secs(5), done)
    }

    /// Pumps datagrams and timers until `done` or `limit`.
    pub fn pump_for(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&[(u32, EndpointEvent)]) -> bool,
    ) -> bool {
        let deadline = WallInstant::now() + limit;
        let mut buf = vec![0u8; 8192];
        loop {
            let now = self.now();
            while let Some(t) = self.endpoint.poll_transmit(now, &mut buf) {
                let _ = self.socket.send_to(&buf[..t.len], t.destination);
            }
            while let Some(e) = self.endpoint.poll_event() {
                self.events.push(e);
            }
            if done(&self.events) {
                return true;
            }
            if WallInstant::now() >= deadline {
                return false;
            }
            self.socket
                .set_read_timeout(Some(Duration::from_millis(5)))
                .unwrap();
            while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
                let now = self.now();
                self.endpoint.handle_datagram(now, from, &mut buf[..n]);
                self.socket.set_nonblocking(true).unwrap();
            }
            self.socket.set_nonblocking(false).unwrap();
            let now = self.now();
            if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                self.endpoint.handle_timeout(now);
            }
        }
    }

    /// The messages received so far, on every session.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.messages_of(None)
    }

    /// The messages session `h` (or every session) received so far.
    pub fn messages_of(&self, h: Option<u32>) -> Vec<Vec<u8>> {
        self.events
            .iter()
            .filter(|(hh, _)| h.is_none_or(|h| h == *hh))
            .filter_map(|(_, e)| match e {
                EndpointEvent::Session(Event::Message { data, .. }) => Some(data.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A command's name, transaction ID and first argument.
pub fn command_reply(data: &[u8]) -> Option<(String, f64, Value<'static>)> {
    let tc = TcMessage::parse(data).ok()?;
    let c = Command::parse(&tc).ok()?;
    Some((
        c.name.to_string(),
        c.transaction_id,
        c.args.first().cloned().unwrap_or(Value::Null).into_owned(),
    ))
}

/// The `code` of a status object.
pub fn status_code(v: &Value<'_>) -> Option<String> {
    v.get("code").and_then(Value::as_str).map(str::to_string)
}
