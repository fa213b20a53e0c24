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
    /// The attachment and program of a lone socket ([`single_socket`]); a server's plane
    /// holds its own. Declared in that order: the link goes first.
    _program: Option<(Attached, Loaded)>,
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
            _program: None,
        })
    }

    /// What went through the rings so far: frames received for the port, frames sent.
    pub fn ring_totals(&self) -> (u64, u64) {
        (self.totals.rx, self.totals.tx)
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
        let n = if self.socket_first {
            match self.socket.recv(batch)? {
                0 => self.recv_xsk(batch),
                n => n,
            }
        } else {
            match self.recv_xsk(batch) {
                0 => self.socket.recv(batch)?,
                n => n,
            }
        };
        // Datagrams from one source say nothing of the other: drained only when both were.
        batch.set_drained(n == 0);
        Ok(n)
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
    /// Preferred busy polling of the sockets, in microseconds.
    pub busy_poll: Option<u32>,
}

impl XdpSetup {
    /// The one line that says what was chosen.
    pub fn describe(&self) -> String {
        let copy = self
            .sockets
            .first()
            .map_or(CopyMode::Copy, Xsk::mode)
            .name();
        let busy = self
            .busy_poll
            .map_or(String::new(), |us| format!(", busy polling {us} µs"));
        format!(
            "AF_XDP on {} ({} XDP, {copy} mode, {} of {} receive queues with a socket{busy})",
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

/// Finds the interface to attach to: `name` if given, else the one holding `bind`'s address,
/// else (a wildcard bind, with `--mode xdp`) the one the default route leaves by.
pub fn choose_interface(name: Option<&str>, bind: IpAddr) -> Result<Interface, XdpError> {
    let all = sys::interface_addresses()
        .map_err(|e| XdpError::NoInterface(format!("cannot list interfaces: {e}")))?;
    let by_name = |name: &str| {
        all.iter()
            .map(|(i, _)| i)
            .find(|i| i.name == name)
            .cloned()
            .ok_or_else(|| XdpError::NoInterface(format!("no interface named {name}")))
    };
    if let Some(name) = name {
        return by_name(name);
    }
    let bind = canonical(SocketAddr::new(bind, 0)).ip();
    if bind.is_unspecified() {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let name = default_route(&read(ROUTES_V4), &read(ROUTES_V6)).ok_or_else(|| {
            XdpError::NoInterface(
                "bound to a wildcard address and there is no default route to name an \
                 interface (give --interface, or --bind an address of one)"
                    .to_string(),
            )
        })?;
        return by_name(&name);
    }
    all.iter()
        .find(|(_, a)| *a == Some(bind))
        .map(|(i, _)| i.clone())
        .ok_or_else(|| XdpError::NoInterface(format!("no interface has the address {bind}")))
}

/// The kernel's IPv4 routing table (`Iface Destination Gateway Flags RefCnt Use Metric Mask
/// ...`, addresses in hexadecimal).
const ROUTES_V4: &str = "/proc/net/route";
/// The kernel's IPv6 routing table (destination, prefix length, source, its length, next hop,
/// metric, reference count, use, flags, interface).
const ROUTES_V6: &str = "/proc/net/ipv6_route";
/// `RTF_UP`: the route is usable (`linux/route.h`).
const RTF_UP: u32 = 0x0001;

/// The interface of the default route with the lowest metric, IPv4 first, from the text of
/// `/proc/net/route` and `/proc/net/ipv6_route`; the loopback device never counts.
pub fn default_route(v4: &str, v6: &str) -> Option<String> {
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    let ipv4 = v4.lines().skip(1).filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (iface, dest, flags, metric, mask) =
            (f.first()?, f.get(1)?, f.get(3)?, f.get(6)?, f.get(7)?);
        let default = hex(dest)? == 0 && hex(mask)? == 0 && hex(flags)? & RTF_UP != 0;
        default.then(|| {
            (
                metric.parse::<u32>().ok().unwrap_or(u32::MAX),
                (*iface).to_string(),
            )
        })
    });
    let ipv6 = v6.lines().filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dest, len, metric, flags, iface) =
            (f.first()?, f.get(1)?, f.get(5)?, f.get(8)?, f.get(9)?);
        let default =
            dest.bytes().all(|b| b == b'0') && hex(len)? == 0 && hex(flags)? & RTF_UP != 0;
        default.then(|| (hex(metric).unwrap_or(u32::MAX), (*iface).to_string()))
    });
    let best = |routes: &mut dyn Iterator<Item = (u32, String)>| {
        routes
            .filter(|(_, i)| i != "lo")
            .min_by_key(|(m, _)| *m)
            .map(|(_, i)| i)
    };
    best(&mut { ipv4 }).or_else(|| best(&mut { ipv6 }))
}

/// One AF_XDP socket on queue 0 of `interface` beside `socket`, with the program loaded for
/// `socket`'s port and attached (native, else generic) for as long as the answer lives: what a
/// client such as the loadgen needs. Datagrams for the port that arrive on other queues reach
/// `socket` through the kernel.
pub fn single_socket(interface: &str, socket: MmsgSocket) -> Result<XskIo, XdpError> {
    let interface = choose_interface(Some(interface), IpAddr::from([0u8; 4]))?;
    let name = interface.name.clone();
    let port = socket
        .local_addr()
        .map_err(|error| XdpError::Socket {
            interface: name.clone(),
            queue: 0,
            error,
        })?
        .port();
    let XdpSetup {
        mut sockets,
        program,
        attached,
        ..
    } = setup(interface, port, 1, &[], None)?;
    let xsk = sockets.pop().ok_or_else(|| XdpError::Socket {
        interface: name.clone(),
        queue: 0,
        error: io::Error::other("no AF_XDP socket was opened"),
    })?;
    let mut io = XskIo::new(xsk, socket, port).map_err(|error| XdpError::Socket {
        interface: name,
        queue: 0,
        error,
    })?;
    io._program = Some((attached, program));
    Ok(io)
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

/// The interface's NAPI deferral (`napi_defer_hard_irqs`, `gro_flush_timeout` in
/// nanoseconds), from sysfs; `None` when sysfs does not say.
pub fn napi_deferral(interface: &str) -> Option<(u32, u64)> {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{interface}/{name}"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let defer = u32::try_from(read("napi_defer_hard_irqs")?).ok()?;
    Some((defer, read("gro_flush_timeout")?))
}

/// Sets up XDP on `interface` for `port`: loads the program with the deny list, opens an
/// AF_XDP socket on each of the first `workers` queues and registers it (with preferred
/// busy polling of `busy_poll` microseconds, if given), then attaches the program, natively if
/// the driver can, else in generic mode. Anything that fails undoes what came before (the
/// sockets close, the program unloads): nothing stays on the interface.
pub fn setup(
    interface: Interface,
    port: u16,
    workers: usize,
    deny: &[Prefix],
    busy_poll: Option<u32>,
) -> Result<XdpSetup, XdpError> {
    if busy_poll.is_some() {
        match napi_deferral(&interface.name) {
            Some((defer, timeout)) if defer > 0 && timeout > 0 => {}
            _ => tracing::warn!(
                interface = %interface.name,
                "xdpBusyPoll: the interface's NAPI deferral is off, so its NAPI thread or \
                 softirq keeps competing with the workers; set \
                 /sys/class/net/{}/napi_defer_hard_irqs (e.g. 2) and gro_flush_timeout \
                 (e.g. 200000)",
                interface.name
            ),
        }
    }
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
        let mut xsk = Xsk::open(interface.index, queue).map_err(|error| XdpError::Socket {
            interface: interface.name.clone(),
            queue,
            error,
        })?;
        if let Some(usecs) = busy_poll {
            xsk.prefer_busy_poll(usecs)
                .map_err(|error| XdpError::Socket {
                    interface: interface.name.clone(),
                    queue,
                    error,
                })?;
        }
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
        busy_poll,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth1\t00000000\t0102A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
        eth0\t00000000\t010011AC\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
        eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
    const V6: &str = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
        fe800000000000000000000000000001 00000400 00000001 00000000 00000003 wan0\n\
        00000000000000000000000000000001 80 00000000000000000000000000000000 00 \
        00000000000000000000000000000000 00000000 00000002 00000000 80200001 lo\n";

    #[test]
    fn the_default_route_with_the_lowest_metric_names_the_interface() {
        assert_eq!(default_route(V4, V6).as_deref(), Some("eth0"));
        // No IPv4 default: the IPv6 one.
        let only_net = V4
            .lines()
            .take(1)
            .chain(V4.lines().skip(3))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(default_route(&only_net, V6).as_deref(), Some("wan0"));
        // A route that is down, or none at all, or garbage: none.
        let down = V4.replace("0003", "0002");
        assert_eq!(default_route(&down, ""), None);
        assert_eq!(default_route("", ""), None);
        assert_eq!(default_route("Iface\nnot a route\n\t\n", "zz 00\n"), None);
    }
}
