//! The AF_XDP data plane: choosing it (`--mode auto|socket|xdp`), setting it up on an
//! interface (load the program, open a socket per queue, register them, attach last), and
//! the [`XskIo`] backend a worker runs on.
//!
//! A worker in XDP mode keeps its UDP socket as well: datagrams the program passes to the
//! kernel (a queue without an AF_XDP socket, traffic from this host) still reach it there,
//! and it sends through the socket to any address whose next hop it has not learned yet
//! from a received frame.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

use updraft_bpf::frame::{self, Link};
use updraft_bpf::loader::{Attached, Loaded, XdpMode};
use updraft_bpf::{Filter, Prefix};

use crate::counters::WorkerCounters;
use crate::io::{canonical, BatchIo, MmsgSocket, RxBatch, TxBatch, BATCH};
use crate::sys::{self, Epoll, Interface};
use crate::xsk::{CopyMode, Xsk, XskStats};

/// Which packet I/O the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// Native XDP, then generic XDP, then sockets: the first that works.
    #[default]
    Auto,
    /// `recvmmsg`/`sendmmsg` sockets only.
    Socket,
    /// AF_XDP or fail.
    Xdp,
}

/// Next hops remembered per worker; past this many, the table starts over (a flood of
/// spoofed sources must not grow memory without bound).
const MAX_NEIGHBORS: usize = 1 << 16;
/// Flushes between two reads of the kernel's socket statistics (a system call).
const STATS_EVERY: u32 = 256;

/// Where a peer's datagrams come from at layer 2, and the local address they reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Neighbor {
    link: Link,
    local: IpAddr,
}

/// What an [`XskIo`] counted.
#[derive(Debug, Clone, Copy, Default)]
struct XdpTotals {
    rx: u64,
    tx: u64,
    tx_socket: u64,
    rx_other: u64,
}

/// A worker's packet I/O on an AF_XDP socket, with its UDP socket beside it.
pub struct XskIo {
    xsk: Xsk,
    socket: MmsgSocket,
    epoll: Epoll,
    port: u16,
    neighbors: HashMap<IpAddr, Neighbor>,
    /// Datagrams that leave by the socket this flush.
    spill: Box<TxBatch>,
    /// Which source a receive tries first; it alternates so neither starves the other.
    socket_first: bool,
    totals: XdpTotals,
    kernel: XskStats,
    flushes: u32,
}

impl std::fmt::Debug for XskIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskIo")
            .field("xsk", &self.xsk)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl XskIo {
    /// Pairs an AF_XDP socket with the worker's UDP socket on `port`.
    pub fn new(xsk: Xsk, socket: MmsgSocket, port: u16) -> io::Result<XskIo> {
        let epoll = Epoll::new()?;
        epoll.add(xsk.fd(), 0)?;
        epoll.add(socket.readiness_fd(), 1)?;
        Ok(XskIo {
            xsk,
            socket,
            epoll,
            port,
            neighbors: HashMap::new(),
            spill: Box::default(),
            socket_first: false,
            totals: XdpTotals::default(),
            kernel: XskStats::default(),
            flushes: 0,
        })
    }

    fn recv_xsk(&mut self, batch: &mut RxBatch) -> usize {
        batch.clear();
        let XskIo {
            xsk,
            neighbors,
            totals,
            port,
            ..
        } = self;
        xsk.recv(BATCH as u32, |bytes| match frame::parse_udp(bytes) {
            Ok(d) if d.dest.port() == *port => {
                totals.rx += 1;
                let source = canonical(d.source);
                let neighbor = Neighbor {
                    link: d.link,
                    local: d.dest.ip(),
                };
                if neighbors.get(&source.ip()) != Some(&neighbor) {
                    if neighbors.len() >= MAX_NEIGHBORS {
                        neighbors.clear();
                    }
                    neighbors.insert(source.ip(), neighbor);
                }
                batch.push_copy(source, d.payload);
            }
            _ => totals.rx_other += 1,
        });
        batch.len()
    }
}

impl BatchIo for XskIo {
    fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        self.socket_first = !self.socket_first;
        if self.socket_first {
            let n = self.socket.recv(batch)?;
            if n > 0 {
                return Ok(n);
            }
            Ok(self.recv_xsk(batch))
        } else {
            let n = self.recv_xsk(batch);
            if n > 0 {
                return Ok(n);
            }
            self.socket.recv(batch)
        }
    }

    fn send(&mut self, batch: &mut TxBatch) -> usize {
        for (to, bytes) in batch.iter() {
            let sent = self.neighbors.get(&to.ip()).is_some_and(|n| {
                let header = frame::header_len(&n.link, to.ip());
                let source = SocketAddr::new(n.local, self.port);
                self.xsk.send_with(|buf| {
                    buf.get_mut(header..header + bytes.len())?
                        .copy_from_slice(bytes);
                    frame::write_headers(buf, &n.link, source, to, bytes.len())
                })
            });
            if sent {
                self.totals.tx += 1;
            } else {
                self.totals.tx_socket += 1;
                self.spill.push(to, bytes);
            }
        }
        batch.clear();
        self.xsk.flush();
        self.flushes = self.flushes.wrapping_add(1);
        if self.flushes.is_multiple_of(STATS_EVERY) {
            self.refresh_stats();
        }
        if self.spill.is_empty() {
            0
        } else {
            self.socket.send(&mut self.spill)
        }
    }

    fn readiness_fd(&self) -> RawFd {
        self.epoll.fd()
    }

    fn report(&mut self, c: &mut WorkerCounters) {
        self.socket.report(c);
        c.xdp_queue = u64::from(self.xsk.queue()) + 1;
        c.xdp_rx = self.totals.rx;
        c.xdp_tx = self.totals.tx;
        c.xdp_tx_via_socket = self.totals.tx_socket;
        c.xdp_rx_other = self.totals.rx_other;
        c.xdp_fill_ring_empty = self.kernel.fill_ring_empty;
        c.xdp_rx_dropped = self.kernel.rx_dropped + self.kernel.rx_ring_full;
        c.xdp_invalid_descs = self.kernel.invalid_descs;
    }
}

impl XskIo {
    fn refresh_stats(&mut self) {
        match self.xsk.stats() {
            Ok(s) => self.kernel = s,
            Err(e) => tracing::debug!(error = %e, "AF_XDP statistics unavailable"),
        }
    }
}

/// A worker's packet I/O: a socket, or AF_XDP with a socket beside it.
#[derive(Debug)]
pub enum PacketIo {
    /// `recvmmsg`/`sendmmsg`.
    Socket(MmsgSocket),
    /// AF_XDP (boxed: its UMEM bookkeeping is large).
    Xdp(Box<XskIo>),
}

impl BatchIo for PacketIo {
    fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        match self {
            PacketIo::Socket(s) => s.recv(batch),
            PacketIo::Xdp(x) => x.recv(batch),
        }
    }

    fn send(&mut self, batch: &mut TxBatch) -> usize {
        match self {
            PacketIo::Socket(s) => s.send(batch),
            PacketIo::Xdp(x) => x.send(batch),
        }
    }

    fn readiness_fd(&self) -> RawFd {
        match self {
            PacketIo::Socket(s) => s.readiness_fd(),
            PacketIo::Xdp(x) => x.readiness_fd(),
        }
    }

    fn report(&mut self, c: &mut WorkerCounters) {
        match self {
            PacketIo::Socket(s) => s.report(c),
            PacketIo::Xdp(x) => x.report(c),
        }
    }
}

/// The program attached to an interface, with one AF_XDP socket per served queue.
#[derive(Debug)]
pub struct XdpSetup {
    /// The sockets, queue `i` at index `i`; each goes to worker `i`.
    pub sockets: Vec<Xsk>,
    /// The loaded program (its maps: deny lists, counters).
    pub program: Loaded,
    /// The attachment; dropping it detaches the program.
    pub attached: Attached,
    /// The interface.
    pub interface: Interface,
    /// Receive queues the interface has.
    pub queues: u32,
}

impl XdpSetup {
    /// The one line that says what was chosen.
    pub fn describe(&self) -> String {
        let copy = self
            .sockets
            .first()
            .map_or(CopyMode::Copy, Xsk::mode)
            .name();
        format!(
            "AF_XDP on {} ({} XDP, {copy} mode, {} of {} receive queues with a socket)",
            self.interface.name,
            self.attached.mode().name(),
            self.sockets.len(),
            self.queues
        )
    }
}

/// Why XDP was not set up.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// Nothing to attach to.
    #[error("{0}")]
    NoInterface(String),
    /// The program could not be loaded or attached.
    #[error(transparent)]
    Program(#[from] updraft_bpf::loader::LoadError),
    /// An AF_XDP socket could not be opened.
    #[error("AF_XDP socket on {interface} queue {queue}: {error}")]
    Socket {
        /// The interface.
        interface: String,
        /// The queue.
        queue: u32,
        /// What the kernel said.
        error: io::Error,
    },
}

/// Finds the interface to attach to: `name` if given, else the one holding `bind`'s address.
pub fn choose_interface(name: Option<&str>, bind: IpAddr) -> Result<Interface, XdpError> {
    let all = sys::interface_addresses()
        .map_err(|e| XdpError::NoInterface(format!("cannot list interfaces: {e}")))?;
    if let Some(name) = name {
        return all
            .into_iter()
            .map(|(i, _)| i)
            .find(|i| i.name == name)
            .ok_or_else(|| XdpError::NoInterface(format!("no interface named {name}")));
    }
    let bind = canonical(SocketAddr::new(bind, 0)).ip();
    if bind.is_unspecified() {
        return Err(XdpError::NoInterface(
            "bound to a wildcard address, which names no interface (give --interface or --bind \
             an address of one)"
                .to_string(),
        ));
    }
    all.into_iter()
        .find(|(_, a)| *a == Some(bind))
        .map(|(i, _)| i)
        .ok_or_else(|| XdpError::NoInterface(format!("no interface has the address {bind}")))
}

/// Receive queues of `interface` (its `queues/rx-*` in sysfs; 1 when sysfs does not say).
pub fn rx_queues(interface: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{interface}/queues"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// Sets up XDP on `interface` for `port`: loads the program with the deny list, opens an
/// AF_XDP socket on each of the first `workers` queues and registers it, then attaches the
/// program, natively if the driver can, else in generic mode. Anything that fails undoes
/// what came before (the sockets close, the program unloads): nothing stays on the interface.
pub fn setup(
    interface: Interface,
    port: u16,
    workers: usize,
    deny: &[Prefix],
) -> Result<XdpSetup, XdpError> {
    let program = Loaded::load(&Filter {
        ports: vec![port],
        deny: deny.to_vec(),
    })?;
    let queues = rx_queues(&interface.name);
    let served = queues
        .min(u32::try_from(workers).unwrap_or(u32::MAX))
        .min(updraft_bpf::loader::MAX_QUEUES);
    let mut sockets = Vec::new();
    for queue in 0..served {
        let xsk = Xsk::open(interface.index, queue).map_err(|error| XdpError::Socket {
            interface: interface.name.clone(),
            queue,
            error,
        })?;
        program.set_socket(queue, xsk.fd())?;
        sockets.push(xsk);
    }
    let attached = match program.attach(interface.index, XdpMode::Native) {
        Ok(a) => a,
        Err(native) => {
            tracing::debug!(error = %native, "native XDP refused; trying generic XDP");
            program.attach(interface.index, XdpMode::Generic)?
        }
    };
    Ok(XdpSetup {
        sockets,
        program,
        attached,
        interface,
        queues,
    })
}
