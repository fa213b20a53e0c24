//! The scripts' own sockets and mails: Cumulus's `createTCPClient`, `createTCPServer`,
//! `createUDPSocket` and `sendMail`. They are blocking std sockets, each open one (and each
//! mail being sent, an SMTP conversation, RFC 5321) with a thread of its own that reads it (or
//! accepts on it) and queues what it got for the control loop, which it wakes through the
//! applications' waker; the loop then hands the receptions to the scripts ([`crate::LuaApps`]'s
//! `poll`). Writes and connects happen on the control loop itself, bounded by
//! [`SEND_TIMEOUT`] and [`CONNECT_TIMEOUT`] (Cumulus connected synchronously too).
//!
//! Only open sockets are kept here (a connected TCP client, a started server, a bound UDP
//! socket, a mail on its way); a script's socket object keeps its number across
//! reconnections.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
    UdpSocket,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mlua::{Lua, Table, Value as LuaValue};
use updraft_control::apps::Waker;

use crate::api::Outbox;

/// Most sockets the scripts may have open at once (each has a thread).
pub const MAX_SOCKETS: usize = 256;
/// Longest a TCP connect may take (name resolution aside): the control loop waits for it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a TCP send may wait for room in the kernel's buffer before it fails.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes a TCP client's `onReception` may leave unconsumed; beyond, it is disconnected.
pub const MAX_PENDING: usize = 1 << 20;
/// Bytes read at once (a UDP datagram's largest size, too).
const READ_CHUNK: usize = 64 * 1024;
/// Receptions queued for the scripts at most; the reading threads wait beyond (back-pressure).
const EVENT_QUEUE: usize = 1024;
/// Most receptions handed to the scripts in one poll, so that a busy socket cannot hold the
/// control loop (the rest wait for the next turn).
const EVENTS_PER_POLL: usize = 256;
/// How often a server's or UDP socket's thread checks whether its socket was closed.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// What a socket's thread got.
#[derive(Debug)]
pub enum Event {
    /// Bytes a TCP client received.
    Data(Vec<u8>),
    /// A datagram a UDP socket received, and where from.
    Datagram(Vec<u8>, SocketAddr),
    /// A TCP client's connection ended: by the peer (`None`), or with an error.
    Closed(Option<String>),
    /// A server accepted a connection.
    Accepted(TcpStream),
    /// A mail went out (`None`), or could not.
    MailSent(Option<String>),
}

/// One open socket.
enum Open {
    Tcp {
        stream: TcpStream,
        /// What `onReception` left unconsumed, to come first in the next reception.
        pending: Vec<u8>,
    },
    Server {
        port: u16,
        stop: Arc<AtomicBool>,
    },
    Udp {
        socket: UdpSocket,
        stop: Arc<AtomicBool>,
        peer: Option<SocketAddr>,
    },
    /// A mail being sent (its thread ends with the [`Event::MailSent`]).
    Mail,
}

struct Entry {
    /// The application whose script opened it (its events run there; its unload closes it).
    app: String,
    /// This opening's number: what a thread of an earlier one still reports is dropped.
    opening: u64,
    open: Open,
}

/// A reception: the socket's number, its opening's, and what it got.
pub type Queued = (u32, u64, Event);

/// A property of a socket, for the scripts (`connected`, `address`, `peerAddress`, `port`,
/// `running`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// A flag.
    Bool(bool),
    /// An address or a port, as text or a number.
    Text(String),
    /// A port.
    Port(u16),
    /// No such property, or not now.
    None,
}

/// The scripts' open sockets.
pub struct Sockets {
    open: HashMap<u32, Entry>,
    last_id: u32,
    last_opening: u64,
    events_tx: Sender<Queued>,
    events_rx: Receiver<Queued>,
    waker: Option<Waker>,
}

impl std::fmt::Debug for Sockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sockets")
            .field("open", &self.open.len())
            .finish_non_exhaustive()
    }
}

impl Default for Sockets {
    fn default() -> Sockets {
        let (events_tx, events_rx) = crossbeam_channel::bounded(EVENT_QUEUE);
        Sockets {
            open: HashMap::new(),
            last_id: 0,
            last_opening: 0,
            events_tx,
            events_rx,
            waker: None,
        }
    }
}

/// The first address `host:port` resolves to.
fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

/// `"host:port"` (or `"[v6]:port"`) as an address.
fn address_of(address: &str) -> Result<SocketAddr, String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address} is not host:port"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{address}: bad port"))?;
    resolve(host.trim_start_matches('[').trim_end_matches(']'), port)
}

/// The unspecified address of `peer`'s family, port 0 (what an unbound UDP socket binds to).
fn any_for(peer: SocketAddr) -> SocketAddr {
    let ip = match peer.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

impl Sockets {
    /// Wakes the control loop when a reception is queued.
    pub fn set_waker(&mut self, waker: Waker) {
        self.waker = Some(waker);
    }

    /// A number for a new socket object (no socket yet).
    pub fn new_id(&mut self) -> u32 {
        self.last_id = self.last_id.wrapping_add(1).max(1);
        self.last_id
    }

    fn room(&self, id: u32) -> Result<(), String> {
        if self.open.contains_key(&id) {
            return Err("already open".into());
        }
        if self.open.len() >= MAX_SOCKETS {
            return Err(format!(
                "the scripts have {MAX_SOCKETS} sockets open already"
            ));
        }
        Ok(())
    }

    /// Connects TCP client `id` to `host:port` for application `app` and starts reading.
    pub fn connect(&mut self, id: u32, app: &str, host: &str, port: u16) -> Result<(), String> {
        self.room(id)?;
        let to = resolve(host, port)?;
        let stream = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
        self.adopt(id, app, stream)
    }

    /// Makes `stream` (connected) TCP client `id` of application `app` and starts reading it.
    pub fn adopt(&mut self, id: u32, app: &str, stream: TcpStream) -> Result<(), String> {
        self.room(id)?;
        stream
            .set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let reader = stream.try_clone().map_err(|e| e.to_string())?;
        let opening = self.spawn(id, "tcp", move |r| read_stream(reader, &r))?;
        self.open.insert(
            id,
            Entry {
                app: app.to_string(),
                opening,
                open: Open::Tcp {
                    stream,
                    pending: Vec::new(),
                },
            },
        );
        Ok(())
    }

    /// Sends `mail` (mail object `id` of application `app`) through the SMTP server of
    /// `settings`, on a thread of its own; [`Event::MailSent`] tells how it went.
    pub fn send_mail(
        &mut self,
        id: u32,
        app: &str,
        settings: &SmtpSettings,
        mail: Mail,
    ) -> Result<(), String> {
        self.room(id)?;
        mail.check()?;
        let settings = settings.clone();
        let opening = self.spawn(id, "mail", move |r| {
            r.deliver(Event::MailSent(smtp(&settings, &mail).err()));
        })?;
        self.open.insert(
            id,
            Entry {
                app: app.to_string(),
                opening,
                open: Open::Mail,
            },
        );
        Ok(())
    }

    /// Sends `data` on TCP client `id`: `Err` when it is not connected, else the write's error.
    pub fn send(&mut self, id: u32, data: &[u8]) -> Result<Option<String>, String> {
        match self.open.get_mut(&id) {
            Some(Entry {
                open: Open::Tcp { stream, .. },
                ..
            }) => Ok(stream.write_all(data).err().map(|e| e.to_string())),
            _ => Err("TCPClient not connected".into()),
        }
    }

    /// Starts TCP server `id` of application `app` on `port` (0: any free port), on every
    /// interface as Cumulus did, accepting connections.
    pub fn listen(&mut self, id: u32, app: &str, port: u16) -> Result<(), String> {
        self.room(id)?;
        let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
            .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
            .map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let opening = self.spawn(id, "server", move |r| accept(&listener, &stopped, &r))?;
        self.open.insert(
            id,
            Entry {
                app: app.to_string(),
                opening,
                open: Open::Server { port, stop },
            },
        );
        Ok(())
    }

    /// Binds UDP socket `id` of application `app` to `address` (`"host:port"`) and starts
    /// reading it.
    pub fn bind(
        &mut self,
        id: u32,
        app: &str,
        address: SocketAddr,
        broadcast: bool,
    ) -> Result<(), String> {
        self.room(id)?;
        let socket = UdpSocket::bind(address).map_err(|e| e.to_string())?;
        socket.set_broadcast(broadcast).map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(Some(STOP_CHECK))
            .map_err(|e| e.to_string())?;
        let reader = socket.try_clone().map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let opening = self.spawn(id, "udp", move |r| read_datagrams(&reader, &stopped, &r))?;
        self.open.insert(
            id,
            Entry {
                app: app.to_string(),
                opening,
                open: Open::Udp {
                    socket,
                    stop,
                    peer: None,
                },
            },
        );
        Ok(())
    }

    /// Whether UDP socket `id` is bound.
    pub fn is_bound(&self, id: u32) -> bool {
        matches!(
            self.open.get(&id),
            Some(Entry {
                open: Open::Udp { .. },
                ..
            })
        )
    }

    /// Sends datagrams of UDP socket `id` to `peer` by default (binding it first if needed).
    pub fn udp_connect(
        &mut self,
        id: u32,
        app: &str,
        peer: SocketAddr,
        broadcast: bool,
    ) -> Result<(), String> {
        if !self.is_bound(id) {
            self.bind(id, app, any_for(peer), broadcast)?;
        }
        if let Some(Entry {
            open: Open::Udp { peer: p, .. },
            ..
        }) = self.open.get_mut(&id)
        {
            *p = Some(peer);
        }
        Ok(())
    }

    /// Sends `data` from UDP socket `id` to `to`, or to its default peer (binding it first if
    /// needed).
    pub fn send_to(
        &mut self,
        id: u32,
        app: &str,
        data: &[u8],
        to: Option<SocketAddr>,
        broadcast: bool,
    ) -> Result<(), String> {
        let default = match self.open.get(&id) {
            Some(Entry {
                open: Open::Udp { peer, .. },
                ..
            }) => *peer,
            _ => None,
        };
        let to = to
            .or(default)
            .ok_or("no address to send to: give one, or connect first")?;
        if !self.is_bound(id) {
            self.bind(id, app, any_for(to), broadcast)?;
        }
        match self.open.get(&id) {
            Some(Entry {
                open: Open::Udp { socket, .. },
                ..
            }) => socket
                .send_to(data, to)
                .map(drop)
                .map_err(|e| e.to_string()),
            _ => Err("not a UDP socket".into()),
        }
    }

    /// Closes socket `id` (a TCP client's thread then reports its end).
    pub fn close(&mut self, id: u32) {
        let Some(e) = self.open.remove(&id) else {
            return;
        };
        match e.open {
            Open::Tcp { stream, .. } => {
                let _ = stream.shutdown(Shutdown::Both);
            }
            Open::Server { stop, .. } | Open::Udp { stop, .. } => {
                stop.store(true, Ordering::Relaxed);
            }
            // Its thread finishes the conversation; what it reports then is for no one.
            Open::Mail => {}
        }
    }

    /// Closes every socket of application `app` (it unloads or reloads); answers their
    /// numbers.
    pub fn close_app(&mut self, app: &str) -> Vec<u32> {
        let ids: Vec<u32> = self
            .open
            .iter()
            .filter(|(_, e)| e.app == app)
            .map(|(&id, _)| id)
            .collect();
        for &id in &ids {
            self.close(id);
        }
        ids
    }

    /// What TCP client `id` left unconsumed, followed by `data`; taken.
    pub fn with_pending(&mut self, id: u32, data: Vec<u8>) -> Vec<u8> {
        match self.open.get_mut(&id) {
            Some(Entry {
                open: Open::Tcp { pending, .. },
                ..
            }) if !pending.is_empty() => {
                let mut all = std::mem::take(pending);
                all.extend_from_slice(&data);
                all
            }
            _ => data,
        }
    }

    /// Keeps the last `rest` bytes of `data` for TCP client `id`'s next reception (Cumulus's
    /// `onReception` answer); `Err` (and the client disconnected) past [`MAX_PENDING`].
    pub fn keep(&mut self, id: u32, data: &[u8], rest: usize) -> Result<(), String> {
        if rest > MAX_PENDING {
            self.close(id);
            return Err(format!(
                "onReception left {rest} bytes unconsumed (at most {MAX_PENDING})"
            ));
        }
        if let Some(Entry {
            open: Open::Tcp { pending, .. },
            ..
        }) = self.open.get_mut(&id)
        {
            let rest = rest.min(data.len());
            *pending = data[data.len() - rest..].to_vec();
        }
        Ok(())
    }

    /// A property of socket `id`.
    pub fn info(&self, id: u32, name: &str) -> Info {
        let open = self.open.get(&id).map(|e| &e.open);
        match (name, open) {
            ("connected", open) => Info::Bool(matches!(open, Some(Open::Tcp { .. }))),
            ("running", open) => Info::Bool(matches!(open, Some(Open::Server { .. }))),
            ("port", Some(Open::Server { port, .. })) => Info::Port(*port),
            ("address", Some(Open::Tcp { stream, .. })) => stream
                .local_addr()
                .map_or(Info::None, |a| Info::Text(a.to_string())),
            // An unbound host (the wildcard) reads nil, as in Cumulus.
            ("address", Some(Open::Udp { socket, .. })) => socket
                .local_addr()
                .ok()
                .filter(|a| !a.ip().is_unspecified())
                .map_or(Info::None, |a| Info::Text(a.to_string())),
            ("peerAddress", Some(Open::Tcp { stream, .. })) => stream
                .peer_addr()
                .map_or(Info::None, |a| Info::Text(a.to_string())),
            ("peerAddress", Some(Open::Udp { peer: Some(p), .. })) => Info::Text(p.to_string()),
            _ => Info::None,
        }
    }

    /// Receptions queued since the last call, in order (at most 256 at once, so that a busy
    /// socket cannot hold the control loop).
    pub fn take_events(&mut self) -> Vec<Queued> {
        self.events_rx.try_iter().take(EVENTS_PER_POLL).collect()
    }

    /// The application of socket `id` when `opening` is its current one: a reception of an
    /// earlier opening (the script closed it since) is for no one.
    pub fn current(&self, id: u32, opening: u64) -> Option<String> {
        self.open
            .get(&id)
            .filter(|e| e.opening == opening)
            .map(|e| e.app.clone())
    }

    /// Wakes the control loop again when receptions still wait (more than one poll took).
    pub fn wake_if_waiting(&self) {
        if !self.events_rx.is_empty() {
            if let Some(w) = &self.waker {
                w();
            }
        }
    }

    /// Starts the thread of socket `id`'s new opening, running `body` with what reports its
    /// receptions; answers the opening's number.
    fn spawn(
        &mut self,
        id: u32,
        kind: &str,
        body: impl FnOnce(Report) + Send + 'static,
    ) -> Result<u64, String> {
        self.last_opening += 1;
        let report = Report {
            id,
            opening: self.last_opening,
            tx: self.events_tx.clone(),
            wake: self.waker.clone(),
        };
        std::thread::Builder::new()
            .name(format!("lua-{kind}-{id}"))
            .spawn(move || body(report))
            .map_err(|e| e.to_string())?;
        Ok(self.last_opening)
    }
}

/// How a socket's thread reports what it got.
struct Report {
    id: u32,
    opening: u64,
    tx: Sender<Queued>,
    wake: Option<Waker>,
}

impl Report {
    /// Queues `event`, waiting while the queue is full (back-pressure on the socket), and
    /// wakes the control loop; `false` once the scripts' host is gone.
    fn deliver(&self, event: Event) -> bool {
        let wake = || {
            if let Some(w) = &self.wake {
                w();
            }
        };
        let sent = match self.tx.try_send((self.id, self.opening, event)) {
            Ok(()) => true,
            Err(TrySendError::Full(item)) => {
                // Wake the loop to make room, then wait for it.
                wake();
                self.tx.send(item).is_ok()
            }
            Err(TrySendError::Disconnected(_)) => false,
        };
        wake();
        sent
    }
}

fn read_stream(mut stream: TcpStream, report: &Report) {
    let mut buf = vec![0; READ_CHUNK];
    loop {
        let event = match stream.read(&mut buf) {
            Ok(0) => Event::Closed(None),
            Ok(n) => Event::Data(buf[..n].to_vec()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => Event::Closed(Some(e.to_string())),
        };
        let end = matches!(event, Event::Closed(_));
        if !report.deliver(event) || end {
            return;
        }
    }
}

fn accept(listener: &TcpListener, stop: &AtomicBool, report: &Report) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(false).is_ok() && !report.deliver(Event::Accepted(stream))
                {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(STOP_CHECK),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(socket = report.id, error = %e, "script's TCP server stops accepting");
                return;
            }
        }
    }
}

fn read_datagrams(socket: &UdpSocket, stop: &AtomicBool, report: &Report) {
    let mut buf = vec![0; READ_CHUNK];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                if !report.deliver(Event::Datagram(buf[..n].to_vec(), from)) {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // ICMP errors of earlier sends surface here; the socket stays usable.
            Err(e) => tracing::debug!(socket = report.id, error = %e, "script's UDP socket"),
        }
    }
}

/// A property's value for Lua.
fn info_value(lua: &Lua, info: Info) -> mlua::Result<LuaValue> {
    Ok(match info {
        Info::Bool(b) => LuaValue::Boolean(b),
        Info::Text(t) => LuaValue::String(lua.create_string(&t)?),
        Info::Port(p) => LuaValue::Number(f64::from(p)),
        Info::None => LuaValue::Nil,
    })
}

/// What the socket natives reach: the sockets, and the path of the application whose script
/// runs (`outbox.app`), which a socket opened now belongs to.
#[derive(Clone)]
struct Natives {
    sockets: Arc<Mutex<Sockets>>,
    outbox: Arc<Mutex<Outbox>>,
}

impl Natives {
    /// Runs `f` on the sockets.
    fn run<R>(&self, f: impl FnOnce(&mut Sockets) -> Result<R, String>) -> Result<R, String> {
        let mut sockets = self
            .sockets
            .lock()
            .map_err(|_| "sockets unavailable".to_string())?;
        f(&mut sockets)
    }

    /// Runs `f` on the sockets with the running application's path (what opens a socket).
    fn run_as<R>(
        &self,
        f: impl FnOnce(&mut Sockets, &str) -> Result<R, String>,
    ) -> Result<R, String> {
        let app = self
            .outbox
            .lock()
            .map(|o| o.app.clone())
            .unwrap_or_default();
        self.run(|s| f(s, &app))
    }
}

/// Adds the socket functions to the prelude's `native` table `n`: each socket object of the
/// prelude calls them with its number.
pub(crate) fn natives(
    lua: &Lua,
    n: &Table,
    sockets: &Arc<Mutex<Sockets>>,
    outbox: &Arc<Mutex<Outbox>>,
    smtp: SmtpSettings,
) -> mlua::Result<()> {
    let host = Natives {
        sockets: Arc::clone(sockets),
        outbox: Arc::clone(outbox),
    };
    let lua_error = mlua::Error::RuntimeError;
    let h = host.clone();
    n.set(
        "socketNew",
        lua.create_function(move |_, ()| Ok(h.run(|s| Ok(s.new_id())).unwrap_or(0)))?,
    )?;
    // TCPClient:connect(host, port): nil, or the error.
    let h = host.clone();
    n.set(
        "tcpConnect",
        lua.create_function(move |_, (id, to, port): (u32, String, u16)| {
            Ok(h.run_as(|s, app| s.connect(id, app, &to, port)).err())
        })?,
    )?;
    // TCPClient:send(data): an error when not connected; nil, or the write's error.
    let h = host.clone();
    n.set(
        "tcpSend",
        lua.create_function(move |_, (id, data): (u32, mlua::String)| {
            h.run(|s| s.send(id, &data.as_bytes())).map_err(lua_error)
        })?,
    )?;
    // TCPServer:start(port): whether it listens.
    let h = host.clone();
    n.set(
        "tcpListen",
        lua.create_function(move |_, (id, port): (u32, u16)| {
            let started = h.run_as(|s, app| {
                s.listen(id, app, port)
                    .inspect_err(|e| tracing::warn!(app, port, error = %e, "TCPServer:start"))
            });
            Ok(started.is_ok())
        })?,
    )?;
    // UDPSocket:bind(address): nil, or the error.
    let h = host.clone();
    n.set(
        "udpBind",
        lua.create_function(move |_, (id, address, broadcast): (u32, String, bool)| {
            let to = address_of(&address);
            Ok(to
                .and_then(|to| h.run_as(|s, app| s.bind(id, app, to, broadcast)))
                .err())
        })?,
    )?;
    // UDPSocket:connect(address): an error on failure.
    let h = host.clone();
    n.set(
        "udpConnect",
        lua.create_function(move |_, (id, address, broadcast): (u32, String, bool)| {
            let to = address_of(&address);
            to.and_then(|to| h.run_as(|s, app| s.udp_connect(id, app, to, broadcast)))
                .map_err(lua_error)
        })?,
    )?;
    // UDPSocket:send(data[, address]): an error on failure.
    let h = host.clone();
    n.set(
        "udpSend",
        lua.create_function(
            move |_, (id, data, address, broadcast): (u32, mlua::String, Option<String>, bool)| {
                let to = address.as_deref().map(address_of).transpose();
                to.and_then(|to| {
                    h.run_as(|s, app| s.send_to(id, app, &data.as_bytes(), to, broadcast))
                })
                .map_err(lua_error)
            },
        )?,
    )?;
    // cumulus:sendMail(sender, subject, content, recipient...): an error when it cannot start.
    let h = host.clone();
    n.set(
        "sendMail",
        lua.create_function(
            move |_,
                  (id, sender, subject, content, recipients): (
                u32,
                String,
                String,
                String,
                Vec<String>,
            )| {
                let mail = Mail {
                    sender,
                    subject,
                    content,
                    recipients,
                };
                h.run_as(|s, app| s.send_mail(id, app, &smtp, mail))
                    .map_err(lua_error)
            },
        )?,
    )?;
    // disconnect(), stop(), close().
    let h = host.clone();
    n.set(
        "socketClose",
        lua.create_function(move |_, id: u32| {
            let _ = h.run(|s| {
                s.close(id);
                Ok(())
            });
            Ok(())
        })?,
    )?;
    n.set(
        "socketInfo",
        lua.create_function(move |lua, (id, name): (u32, String)| {
            let info = host.run(|s| Ok(s.info(id, &name))).unwrap_or(Info::None);
            info_value(lua, info)
        })?,
    )?;
    Ok(())
}

/// Where mails go (the configuration's `smtp` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    /// `smtp.host` (default `localhost`).
    pub host: String,
    /// `smtp.port` (default 25).
    pub port: u16,
    /// `smtp.timeout`: how long each step of the conversation may take (default 60 s).
    pub timeout: Duration,
}

impl SmtpSettings {
    /// The settings of the configuration's `smtp` section (`host`, `port`, `timeout` in
    /// seconds); what is missing or unreadable takes Cumulus's default.
    pub fn from_section(section: Option<&std::collections::BTreeMap<String, String>>) -> Self {
        let get = |k: &str| section.and_then(|s| s.get(k)).map(|v| v.trim());
        SmtpSettings {
            host: get("host")
                .filter(|h| !h.is_empty())
                .unwrap_or("localhost")
                .to_string(),
            port: get("port").and_then(|p| p.parse().ok()).unwrap_or(25),
            timeout: Duration::from_secs(get("timeout").and_then(|t| t.parse().ok()).unwrap_or(60)),
        }
    }
}

/// A mail a script sends (`cumulus:sendMail(sender, subject, content, recipient...)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The sender's address.
    pub sender: String,
    /// The subject.
    pub subject: String,
    /// The text.
    pub content: String,
    /// The recipients' addresses.
    pub recipients: Vec<String>,
}

impl Mail {
    /// Refuses what would break the SMTP conversation or the headers (a line break in an
    /// address or the subject would let a script's caller write commands or headers).
    fn check(&self) -> Result<(), String> {
        if self.recipients.is_empty() {
            return Err("sendMail: no recipient".into());
        }
        let line = |s: &str| !s.contains(['\r', '\n']);
        if !(line(&self.sender) && line(&self.subject) && self.recipients.iter().all(|r| line(r))) {
            return Err("sendMail: a line break in an address or the subject".into());
        }
        Ok(())
    }

    /// The message: headers, a blank line, the text with CRLF line ends and every line that
    /// starts with a dot doubled (RFC 5321 §4.5.2), then the end of data.
    fn data(&self) -> String {
        let mut out = format!(
            "From: {}\r\nTo: {}\r\nSubject: {}\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\n",
            self.sender,
            self.recipients.join(", "),
            self.subject
        );
        for line in self.content.replace("\r\n", "\n").split('\n') {
            if line.starts_with('.') {
                out.push('.');
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str(".\r\n");
        out
    }
}

/// One SMTP reply (RFC 5321 §4.2): its code, after any continuation lines.
fn smtp_reply(r: &mut impl std::io::BufRead) -> Result<u16, String> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("the SMTP server closed the connection".into());
        }
        let code = line
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("not an SMTP reply: {}", line.trim_end()))?;
        // "250-..." continues; "250 ..." (or a bare code) ends the reply.
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(code);
        }
    }
}

/// Sends `command` (unless empty) and checks that the reply's code is one of `expected`.
fn smtp_step(
    w: &mut TcpStream,
    r: &mut impl std::io::BufRead,
    command: &str,
    expected: &[u16],
) -> Result<(), String> {
    if !command.is_empty() {
        w.write_all(command.as_bytes())
            .and_then(|()| w.write_all(b"\r\n"))
            .map_err(|e| e.to_string())?;
    }
    let code = smtp_reply(r)?;
    if expected.contains(&code) {
        Ok(())
    } else {
        let what = command.split(':').next().filter(|c| !c.is_empty());
        Err(format!(
            "SMTP server answered {code} to {}",
            what.unwrap_or("the mail")
        ))
    }
}

/// One SMTP conversation (RFC 5321 §3.3) delivering `mail`.
fn smtp(settings: &SmtpSettings, mail: &Mail) -> Result<(), String> {
    let to = resolve(&settings.host, settings.port)?;
    let mut w = TcpStream::connect_timeout(&to, settings.timeout).map_err(|e| e.to_string())?;
    w.set_read_timeout(Some(settings.timeout))
        .and_then(|()| w.set_write_timeout(Some(settings.timeout)))
        .map_err(|e| e.to_string())?;
    let mut r = std::io::BufReader::new(w.try_clone().map_err(|e| e.to_string())?);
    smtp_step(&mut w, &mut r, "", &[220])?;
    smtp_step(&mut w, &mut r, "HELO updraft", &[250])?;
    smtp_step(
        &mut w,
        &mut r,
        &format!("MAIL FROM:<{}>", mail.sender),
        &[250],
    )?;
    for rcpt in &mail.recipients {
        smtp_step(&mut w, &mut r, &format!("RCPT TO:<{rcpt}>"), &[250, 251])?;
    }
    smtp_step(&mut w, &mut r, "DATA", &[354])?;
    w.write_all(mail.data().as_bytes())
        .map_err(|e| e.to_string())?;
    smtp_step(&mut w, &mut r, "", &[250])?;
    // The mail is accepted; how the goodbye goes does not matter.
    let _ = smtp_step(&mut w, &mut r, "QUIT", &[221]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_replies_with_continuations_end_at_the_last_line() {
        let mut r =
            std::io::Cursor::new(b"250-first\r\n250-second\r\n250 last\r\n354 go\r\n".to_vec());
        assert_eq!(smtp_reply(&mut r), Ok(250));
        assert_eq!(smtp_reply(&mut r), Ok(354));
        assert!(smtp_reply(&mut r).is_err(), "the end");
        let mut bad = std::io::Cursor::new(b"2x0 what\r\n".to_vec());
        assert!(smtp_reply(&mut bad).is_err());
    }

    #[test]
    fn settings_take_cumulus_defaults() {
        assert_eq!(
            SmtpSettings::from_section(None),
            SmtpSettings {
                host: "localhost".into(),
                port: 25,
                timeout: Duration::from_secs(60)
            }
        );
        let section = std::collections::BTreeMap::from([
            ("host".to_string(), " mail.example ".to_string()),
            ("port".to_string(), "2525".to_string()),
            ("timeout".to_string(), "soon".to_string()),
        ]);
        let s = SmtpSettings::from_section(Some(&section));
        assert_eq!(
            (s.host.as_str(), s.port, s.timeout),
            ("mail.example", 2525, Duration::from_secs(60))
        );
    }

    proptest::proptest! {
        /// Whatever a server answers, reading it never panics.
        #[test]
        fn any_reply_is_read_or_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let mut r = std::io::Cursor::new(bytes);
            for _ in 0..8 {
                if smtp_reply(&mut r).is_err() {
                    break;
                }
            }
        }
    }
}
