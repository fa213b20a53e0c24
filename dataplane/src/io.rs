//! The batch I/O trait every packet backend implements (sockets here, AF_XDP in
//! [`crate::xdp`]), and the `recvmmsg`/`sendmmsg` socket backend.

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use crate::counters::WorkerCounters;
use crate::sys::{self, Run, Slot};

/// Bytes per datagram buffer. RTMFP packets fit an Ethernet MTU (RFC 7016 §3.5.3.2 keeps
/// session packets small); a longer datagram is received truncated and dropped as malformed.
pub const SLOT_SIZE: usize = 2048;
/// Datagrams per batch.
pub const BATCH: usize = sys::MAX_BATCH;
/// Largest GSO super-datagram: what one UDP datagram can carry.
const GSO_MAX_BYTES: usize = 65_000;

/// Receive buffers of a socket with UDP GRO: pieces big enough for a coalesced train (a GRO
/// buffer is at most one 64 KiB UDP datagram).
const GRO_SLOT_SIZE: usize = 64 * 1024;
/// GRO buffers per batch (their storage, 512 KiB, is allocated once, at the first receive with
/// GRO on): one `recvmmsg` takes up to this many trains.
const GRO_SLOTS: usize = sys::FEW_SLOTS;
/// Most datagrams a batch holds: every GRO buffer full of the kernel's most segments per train
/// (`UDP_GRO_CNT_MAX`, 64), or [`BATCH`] plain ones.
pub const MAX_RX_DATAGRAMS: usize = GRO_SLOTS * 64;

/// A batch of received datagrams, in buffers allocated once. With UDP GRO, one receive buffer
/// may hold a train of datagrams, which the batch lists one by one.
pub struct RxBatch {
    storage: Vec<u8>,
    entries: RxEntries,
    /// The receive that filled the batch found its source empty before the batch was full.
    drained: bool,
}

/// Where each datagram of an [`RxBatch`] lies in its storage (apart from the storage, so that
/// a receive can list datagrams while the kernel's buffers still borrow the storage).
struct RxEntries {
    starts: [usize; MAX_RX_DATAGRAMS],
    lens: [usize; MAX_RX_DATAGRAMS],
    from: [SocketAddr; MAX_RX_DATAGRAMS],
    truncated: [bool; MAX_RX_DATAGRAMS],
    stamps: [Option<Duration>; MAX_RX_DATAGRAMS],
    count: usize,
}

impl RxEntries {
    /// Lists the datagram at `start..start + len` of the storage; false when the batch is full.
    fn push(
        &mut self,
        start: usize,
        len: usize,
        from: SocketAddr,
        truncated: bool,
        stamp: Option<Duration>,
    ) -> bool {
        let i = self.count;
        if i >= MAX_RX_DATAGRAMS {
            return false;
        }
        self.starts[i] = start;
        self.lens[i] = len;
        self.from[i] = from;
        self.truncated[i] = truncated;
        self.stamps[i] = stamp;
        self.count += 1;
        true
    }
}

const NO_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0));

impl Default for RxBatch {
    fn default() -> Self {
        RxBatch {
            storage: vec![0; BATCH * SLOT_SIZE],
            entries: RxEntries {
                starts: [0; MAX_RX_DATAGRAMS],
                lens: [0; MAX_RX_DATAGRAMS],
                from: [NO_ADDR; MAX_RX_DATAGRAMS],
                truncated: [false; MAX_RX_DATAGRAMS],
                stamps: [None; MAX_RX_DATAGRAMS],
                count: 0,
            },
            drained: false,
        }
    }
}

impl RxBatch {
    /// Datagrams in the batch.
    pub fn len(&self) -> usize {
        self.entries.count
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.count == 0
    }

    /// Whether the receive that filled the batch left its source empty: it returned fewer
    /// datagrams than it had room for, so another receive now would most likely find nothing
    /// and cost a system call for it. False when the backend cannot tell.
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// Records whether the receive that filled the batch left its source empty.
    pub fn set_drained(&mut self, drained: bool) {
        self.drained = drained;
    }

    /// Where datagram `i` lies in the storage.
    fn range(&self, i: usize) -> Option<core::ops::Range<usize>> {
        let e = &self.entries;
        (i < e.count).then(|| e.starts[i]..e.starts[i] + e.lens[i])
    }

    /// The bytes of datagram `i`.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.storage.get(self.range(i)?)
    }

    /// Datagram `i`: its source, whether it was cut short, and its bytes (mutable: sessions
    /// decrypt in place).
    pub fn get_mut(&mut self, i: usize) -> Option<(SocketAddr, bool, &mut [u8])> {
        let range = self.range(i)?;
        Some((
            self.entries.from[i],
            self.entries.truncated[i],
            self.storage.get_mut(range)?,
        ))
    }

    /// When the kernel received datagram `i` (`CLOCK_REALTIME`, since the Unix epoch), on a
    /// socket with [`MmsgSocket::enable_timestamps`]; `None` otherwise.
    pub fn arrived(&self, i: usize) -> Option<Duration> {
        self.entries.stamps[..self.entries.count]
            .get(i)
            .copied()
            .flatten()
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.entries.count = 0;
    }

    /// Appends a copy of `bytes` from `from` in the next free buffer (cut to [`SLOT_SIZE`],
    /// and marked truncated if it was longer); false when the batch is full.
    pub fn push_copy(&mut self, from: SocketAddr, bytes: &[u8]) -> bool {
        let i = self.entries.count;
        if i >= BATCH {
            return false;
        }
        let n = bytes.len().min(SLOT_SIZE);
        self.storage[i * SLOT_SIZE..i * SLOT_SIZE + n].copy_from_slice(&bytes[..n]);
        self.entries
            .push(i * SLOT_SIZE, n, from, n < bytes.len(), None)
    }

    /// Fills the batch from a test or an in-memory source: `(from, bytes)` pairs, at most
    /// [`BATCH`], each cut to [`SLOT_SIZE`].
    pub fn fill_from<'a>(&mut self, datagrams: impl IntoIterator<Item = (SocketAddr, &'a [u8])>) {
        self.entries.count = 0;
        for (from, bytes) in datagrams.into_iter().take(BATCH) {
            self.push_copy(from, bytes);
        }
    }
}

/// A batch of datagrams to send, in buffers allocated once.
pub struct TxBatch {
    storage: Vec<u8>,
    lens: [usize; BATCH],
    to: [SocketAddr; BATCH],
    count: usize,
}

impl Default for TxBatch {
    fn default() -> Self {
        TxBatch {
            storage: vec![0; BATCH * SLOT_SIZE],
            lens: [0; BATCH],
            to: [NO_ADDR; BATCH],
            count: 0,
        }
    }
}

impl TxBatch {
    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether another datagram fits.
    pub fn is_full(&self) -> bool {
        self.count == BATCH
    }

    /// Lets `write` fill the next free buffer; it answers the destination and length, or
    /// `None` to leave the slot free. Returns false when the batch was full.
    pub fn push_with(
        &mut self,
        write: impl FnOnce(&mut [u8]) -> Option<(SocketAddr, usize)>,
    ) -> bool {
        if self.is_full() {
            return false;
        }
        let i = self.count;
        let buf = &mut self.storage[i * SLOT_SIZE..(i + 1) * SLOT_SIZE];
        if let Some((to, len)) = write(buf) {
            self.lens[i] = len.min(SLOT_SIZE);
            self.to[i] = to;
            self.count += 1;
        }
        true
    }

    /// Queues a copy of `bytes` to `to`; false when the batch is full or `bytes` is too long.
    pub fn push(&mut self, to: SocketAddr, bytes: &[u8]) -> bool {
        if bytes.len() > SLOT_SIZE {
            return false;
        }
        self.push_with(|buf| {
            buf[..bytes.len()].copy_from_slice(bytes);
            Some((to, bytes.len()))
        }) && self.count > 0
    }

    /// The queued datagrams.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        (0..self.count).map(|i| {
            (
                self.to[i],
                &self.storage[i * SLOT_SIZE..i * SLOT_SIZE + self.lens[i]],
            )
        })
    }

    /// The queued datagrams, writable in place (to finish them before sending, for instance to
    /// encrypt several sessions' packets together).
    pub fn datagrams_mut(&mut self) -> impl Iterator<Item = &mut [u8]> {
        self.storage
            .chunks_exact_mut(SLOT_SIZE)
            .zip(self.lens)
            .take(self.count)
            .map(|(slot, len)| &mut slot[..len])
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.count = 0;
    }
}

/// What a worker needs from its packet backend.
pub trait BatchIo: Send {
    /// Receives what is waiting, without blocking, into `batch` (replacing its contents), and
    /// records in it whether that emptied the source ([`RxBatch::drained`]). Returns how many
    /// datagrams arrived; 0 when none was waiting.
    fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize>;
    /// Sends every datagram in `batch` and empties it. Returns how many the backend dropped
    /// (a full queue or an unreachable destination); RTMFP retransmits what matters.
    fn send(&mut self, batch: &mut TxBatch) -> usize;
    /// A file descriptor that becomes readable when datagrams wait.
    fn readiness_fd(&self) -> RawFd;
    /// Writes the backend's own counters into `c` (GSO sends, AF_XDP rings); a backend
    /// without any leaves `c` alone.
    fn report(&mut self, c: &mut WorkerCounters) {
        let _ = c;
    }
}

/// A UDP socket driven with `recvmmsg`/`sendmmsg`.
#[derive(Debug)]
pub struct MmsgSocket {
    socket: std::net::UdpSocket,
    dual_stack: bool,
    /// Use UDP GSO for runs of equal-size datagrams to one destination (turned off for good
    /// if the kernel or the device refuses it).
    gso: bool,
    /// GSO sends made.
    gso_sends: u64,
    /// Datagrams those sends carried.
    gso_datagrams: u64,
    /// UDP GRO is on: receives may return trains of datagrams.
    gro: bool,
    /// Receive buffers that held a GRO train.
    gro_trains: u64,
}

impl MmsgSocket {
    /// Wraps a bound socket (blocking, so that sends wait for buffer space instead of
    /// dropping; receives never block).
    pub fn new(socket: std::net::UdpSocket) -> io::Result<MmsgSocket> {
        socket.set_nonblocking(false)?;
        let dual_stack = matches!(socket.local_addr()?, SocketAddr::V6(_));
        Ok(MmsgSocket {
            socket,
            dual_stack,
            gso: true,
            gso_sends: 0,
            gso_datagrams: 0,
            gro: false,
            gro_trains: 0,
        })
    }

    /// Turns UDP GRO on, when the kernel offers it (5.0+): datagrams arriving in trains (GSO
    /// sends, such as a server's fanout to one receiver) then come up in a few large buffers,
    /// split here into datagrams. It pays for a receiver of trains (the load generator); a
    /// server, whose clients each send single datagrams, reads more datagrams per call
    /// without it. Answers whether it is on.
    pub fn enable_gro(&mut self) -> bool {
        match sys::enable_gro(self.socket.as_raw_fd()) {
            Ok(()) => self.gro = true,
            Err(e) => {
                tracing::info!(error = %e, "UDP GRO unavailable; receiving datagrams one by one");
            }
        }
        self.gro
    }

    /// Has the kernel stamp each datagram with its arrival time ([`RxBatch::arrived`]): a load
    /// generator times deliveries by it, without its own queueing. Answers whether it is on.
    /// The first socket on a host to ask turns stamping on a few milliseconds later; until
    /// then the kernel stamps datagrams when they are read (later, never earlier).
    pub fn enable_timestamps(&mut self) -> bool {
        match sys::enable_timestamps(self.socket.as_raw_fd()) {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(error = %e, "receive timestamps unavailable");
                false
            }
        }
    }

    /// Receive buffers so far that held a train of datagrams coalesced by UDP GRO.
    pub fn gro_trains(&self) -> u64 {
        self.gro_trains
    }

    /// GSO sends made so far (each carried several datagrams).
    pub fn gso_sends(&self) -> u64 {
        self.gso_sends
    }

    /// Splits `list[from..]` into runs (GSO trains while GSO is on, single datagrams
    /// otherwise) in `runs`; answers how many.
    fn plan_runs(&self, list: &[(&[u8], SocketAddr)], from: usize, runs: &mut [Run]) -> usize {
        let mut n = 0;
        let mut i = from;
        while i < list.len() && n < runs.len() {
            let count = if self.gso {
                Self::gso_run(&list[i..])
            } else {
                1
            };
            runs[n] = Run { first: i, count };
            n += 1;
            i += count;
        }
        n
    }

    /// Length of the GSO run starting at `list[0]`: datagrams to the same destination, all of
    /// the first one's size except a shorter last one.
    fn gso_run(list: &[(&[u8], SocketAddr)]) -> usize {
        let Some(&(first, to)) = list.first() else {
            return 0;
        };
        let size = first.len();
        let mut n = 1;
        let mut total = size;
        while n < list.len().min(sys::MAX_GSO_SEGMENTS) {
            let (d, t) = list[n];
            if t != to || d.len() > size || total + d.len() > GSO_MAX_BYTES {
                break;
            }
            n += 1;
            total += d.len();
            if d.len() < size {
                break;
            }
        }
        n
    }

    /// Receives into `N` buffers of `slot_size` bytes of the batch's storage, listing every
    /// datagram (each of a GRO train apart).
    fn recv_into<const N: usize>(
        &mut self,
        batch: &mut RxBatch,
        slot_size: usize,
    ) -> io::Result<usize> {
        let entries = &mut batch.entries;
        entries.count = 0;
        let mut chunks = batch.storage.chunks_exact_mut(slot_size);
        let mut slots: [Slot<'_>; N] = std::array::from_fn(|_| Slot {
            buf: chunks.next().unwrap_or_default(),
            len: 0,
            addr: NO_ADDR,
            truncated: false,
            segment: None,
            stamp: None,
        });
        let (n, drained) = match sys::recv_batch(self.socket.as_raw_fd(), &mut slots) {
            Ok(n) => (n, n < N),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => (0, false),
            Err(e) => return Err(e),
        };
        batch.drained = drained;
        for (i, s) in slots[..n].iter().enumerate() {
            let base = i * slot_size;
            let from = canonical(s.addr);
            match s.segment.map(usize::from) {
                // A GRO train: every segment but the last is `size` bytes.
                Some(size) if size > 0 && s.len > size => {
                    self.gro_trains += 1;
                    let mut at = 0;
                    while at < s.len {
                        let end = (at + size).min(s.len);
                        let last = end == s.len;
                        if !entries.push(base + at, end - at, from, last && s.truncated, s.stamp) {
                            break;
                        }
                        at = end;
                    }
                }
                _ => {
                    entries.push(base, s.len.min(slot_size), from, s.truncated, s.stamp);
                }
            }
        }
        Ok(entries.count)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// IPv4-mapped IPv6 source addresses (from a dual-stack socket) as plain IPv4, so a client has
/// one address whichever socket family saw it.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

fn wire_destination(dual_stack: bool, to: SocketAddr) -> SocketAddr {
    match (dual_stack, to) {
        (true, SocketAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => to,
    }
}

impl BatchIo for MmsgSocket {
    fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        if self.gro {
            if batch.storage.len() < GRO_SLOTS * GRO_SLOT_SIZE {
                batch.storage.resize(GRO_SLOTS * GRO_SLOT_SIZE, 0);
            }
            self.recv_into::<GRO_SLOTS>(batch, GRO_SLOT_SIZE)
        } else {
            self.recv_into::<BATCH>(batch, SLOT_SIZE)
        }
    }

    fn send(&mut self, batch: &mut TxBatch) -> usize {
        let mut list: [(&[u8], SocketAddr); BATCH] = [(&[], NO_ADDR); BATCH];
        for (slot, (to, bytes)) in list.iter_mut().zip(batch.iter()) {
            *slot = (bytes, wire_destination(self.dual_stack, to));
        }
        let list = &list[..batch.count];
        // Runs of datagrams to one destination go as GSO trains, everything in one sendmmsg.
        let mut runs = [Run { first: 0, count: 0 }; BATCH];
        let mut n_runs = self.plan_runs(list, 0, &mut runs);
        let mut done = 0;
        let mut dropped = 0;
        while done < n_runs {
            match sys::send_runs(self.socket.as_raw_fd(), list, &runs[done..n_runs]) {
                Ok(0) => {
                    dropped += runs[done..n_runs].iter().map(|r| r.count).sum::<usize>();
                    break;
                }
                Ok(n) => {
                    for r in &runs[done..done + n] {
                        if r.count > 1 {
                            self.gso_sends += 1;
                            self.gso_datagrams += r.count as u64;
                        }
                    }
                    done += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let failed = runs[done];
                    // Only "not supported here" turns GSO off for good (and the rest goes
                    // again datagram by datagram); a firewall or routing error concerns this
                    // destination alone, which is skipped.
                    if failed.count > 1
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EINVAL | libc::EOPNOTSUPP | libc::EIO | libc::ENOPROTOOPT)
                        )
                    {
                        tracing::info!(error = %e, "UDP GSO unavailable; sending datagrams one by one");
                        self.gso = false;
                        n_runs = self.plan_runs(list, failed.first, &mut runs);
                        done = 0;
                    } else {
                        tracing::debug!(to = %list[failed.first].1, error = %e, "send failed");
                        dropped += failed.count;
                        done += 1;
                    }
                }
            }
        }
        batch.clear();
        dropped
    }

    fn readiness_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    fn report(&mut self, c: &mut WorkerCounters) {
        c.tx_gso_sends = self.gso_sends;
        c.tx_gso_datagrams = self.gso_datagrams;
    }
}

/// Binds one socket of an `SO_REUSEPORT` group on `addr`, with `buffer` bytes of kernel
/// receive and send buffer when given. IPv6 sockets also take IPv4 (dual stack).
pub fn bind_reuseport(addr: SocketAddr, buffer: Option<usize>) -> io::Result<std::net::UdpSocket> {
    bind_with(addr, buffer, true)
}

/// Binds a socket of its own on `addr` (no `SO_REUSEPORT`: with port 0 the kernel may hand a
/// reuse-port socket a port another such socket already holds, and the two would share its
/// datagrams), with `buffer` bytes of kernel buffers when given. Dual stack for IPv6.
pub fn bind_udp(addr: SocketAddr, buffer: Option<usize>) -> io::Result<std::net::UdpSocket> {
    bind_with(addr, buffer, false)
}

fn bind_with(
    addr: SocketAddr,
    buffer: Option<usize>,
    reuse_port: bool,
) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if let Some(bytes) = buffer {
        sys::force_buffer_sizes(std::os::fd::AsRawFd::as_raw_fd(&s), bytes)?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn mmsg_socket_moves_a_batch_both_ways() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), Some(1 << 20)).unwrap();
        let b = bind_udp("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let to = b.local_addr().unwrap();
        let mut a = MmsgSocket::new(a).unwrap();
        let mut b = MmsgSocket::new(b).unwrap();
        let mut tx = TxBatch::default();
        for i in 0..40u8 {
            assert!(tx.push(to, &[i; 1000]));
        }
        assert_eq!(a.send(&mut tx), 0);
        assert!(tx.is_empty());
        let mut rx = RxBatch::default();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 40 && Instant::now() < deadline {
            let mut ready = [false];
            sys::poll_readable(&[b.readiness_fd()], Duration::from_millis(50), &mut ready).unwrap();
            let n = b.recv(&mut rx).unwrap();
            for i in 0..n {
                let (from, cut, bytes) = rx.get_mut(i).unwrap();
                assert_eq!(from, a.local_addr().unwrap());
                assert!(!cut);
                got.push(bytes[0]);
            }
        }
        assert_eq!(got, (0..40).collect::<Vec<u8>>());
    }

    #[test]
    fn a_receive_says_whether_it_emptied_the_socket() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let b = bind_udp("127.0.0.1:0".parse().unwrap(), Some(1 << 20)).unwrap();
        let to = b.local_addr().unwrap();
        let mut a = MmsgSocket::new(a).unwrap();
        let mut b = MmsgSocket::new(b).unwrap();
        // A batch and three more datagrams wait (no GRO: one buffer each).
        const EXTRA: usize = 3;
        let mut tx = TxBatch::default();
        for round in [BATCH, EXTRA] {
            for i in 0..round {
                assert!(tx.push(to, &[i as u8; 100]));
            }
            assert_eq!(a.send(&mut tx), 0);
        }
        let mut rx = RxBatch::default();
        let mut ready = [false];
        sys::poll_readable(&[b.readiness_fd()], Duration::from_secs(5), &mut ready).unwrap();
        // Loopback queues a datagram before its send returns; the bounded wait is for a slow
        // host only.
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut got, mut total) = (Vec::new(), 0);
        while total < BATCH + EXTRA && Instant::now() < deadline {
            let n = b.recv(&mut rx).unwrap();
            total += n;
            got.push((n, rx.drained()));
        }
        assert_eq!(
            got.first(),
            Some(&(BATCH, false)),
            "a full batch may have left more"
        );
        assert_eq!(got.get(1), Some(&(EXTRA, true)), "a short one emptied it");
        assert_eq!(b.recv(&mut rx).unwrap(), 0);
        assert!(rx.drained(), "an empty receive found nothing");
    }

    #[test]
    fn runs_to_one_destination_go_out_by_gso_in_order() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut a = MmsgSocket::new(a).unwrap();
        let mut tx = TxBatch::default();
        // b gets 3 × 500 + 200 (one GSO run), then c one datagram, then b 2 more of 700.
        let plan: Vec<(SocketAddr, usize)> = [500, 500, 500, 200]
            .into_iter()
            .map(|n| (b.local_addr().unwrap(), n))
            .chain([(c.local_addr().unwrap(), 100)])
            .chain([700, 700].into_iter().map(|n| (b.local_addr().unwrap(), n)))
            .collect();
        for (k, (to, n)) in plan.iter().enumerate() {
            assert!(tx.push(*to, &vec![k as u8; *n]));
        }
        assert_eq!(a.send(&mut tx), 0);
        assert!(a.gso_sends() >= 1, "GSO used on loopback");
        for sock in [&b, &c] {
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        let mut buf = [0u8; 2048];
        for (k, (to, n)) in plan.iter().enumerate() {
            let sock = if *to == b.local_addr().unwrap() {
                &b
            } else {
                &c
            };
            let (got, _) = sock.recv_from(&mut buf).unwrap();
            assert_eq!((got, buf[0]), (*n, k as u8), "datagram {k}");
        }
    }

    #[test]
    fn a_gro_receiver_splits_gso_trains_back_into_datagrams() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let b = bind_udp("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to_b = b.local_addr().unwrap();
        let mut a = MmsgSocket::new(a).unwrap();
        let mut b = MmsgSocket::new(b).unwrap();
        let gro = b.enable_gro();
        // A train of 5 × 1000 + 300 (one GSO send), a lone 90 from another socket, then a
        // second train of 40 × 1200: every datagram comes out alone, in order, from its sender.
        let mut tx = TxBatch::default();
        let mut plan: Vec<usize> = vec![1000, 1000, 1000, 1000, 1000, 300];
        for (k, n) in plan.iter().enumerate() {
            assert!(tx.push(to_b, &vec![k as u8; *n]));
        }
        assert_eq!(a.send(&mut tx), 0);
        c.send_to(&[0xCC; 90], to_b).unwrap();
        let second: Vec<usize> = vec![1200; 40];
        for (k, n) in second.iter().enumerate() {
            assert!(tx.push(to_b, &vec![(plan.len() + k) as u8; *n]));
        }
        assert_eq!(a.send(&mut tx), 0);
        plan.extend(&second);
        let mut got: Vec<(SocketAddr, usize, u8)> = Vec::new();
        let mut rx = RxBatch::default();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while got.len() < plan.len() + 1 && std::time::Instant::now() < deadline {
            let n = b.recv(&mut rx).unwrap();
            for i in 0..n {
                let (from, truncated, bytes) = rx.get_mut(i).unwrap();
                assert!(!truncated);
                got.push((from, bytes.len(), bytes[0]));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let from_a: Vec<(usize, u8)> = got
            .iter()
            .filter(|g| g.0 != c.local_addr().unwrap())
            .map(|g| (g.1, g.2))
            .collect();
        let expected: Vec<(usize, u8)> = plan
            .iter()
            .enumerate()
            .map(|(k, n)| (*n, k as u8))
            .collect();
        assert_eq!(from_a, expected);
        assert_eq!(
            got.iter()
                .filter(|g| g.0 == c.local_addr().unwrap())
                .map(|g| (g.1, g.2))
                .collect::<Vec<_>>(),
            vec![(90, 0xCC)]
        );
        if gro {
            assert!(
                b.gro_trains() >= 1,
                "loopback delivers GSO trains whole to a GRO socket"
            );
        } else {
            eprintln!("UDP GRO unavailable on this kernel: checked the plain path only");
        }
    }

    #[test]
    fn one_gro_receive_takes_several_trains() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let b = bind_udp("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let to_b = b.local_addr().unwrap();
        let mut a = MmsgSocket::new(a).unwrap();
        let mut b = MmsgSocket::new(b).unwrap();
        if !b.enable_gro() {
            eprintln!("skipped: UDP GRO unavailable on this kernel");
            return;
        }
        // Six trains of three, each its own GSO send: all waiting before the receive.
        let mut tx = TxBatch::default();
        for train in 0..6u8 {
            for k in 0..3u8 {
                assert!(tx.push(to_b, &[train * 3 + k; 500]));
            }
            assert_eq!(a.send(&mut tx), 0);
        }
        let mut rx = RxBatch::default();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut n = 0;
        while n == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            n = b.recv(&mut rx).unwrap();
        }
        // Loopback delivers sends in order and whole: one receive takes every train.
        assert_eq!(n, 18);
        assert_eq!(b.gro_trains(), 6);
        let firsts: Vec<u8> = (0..n).map(|i| rx.get_mut(i).unwrap().2[0]).collect();
        assert_eq!(firsts, (0..18).collect::<Vec<u8>>());
    }

    #[test]
    fn receive_timestamps_say_when_each_datagram_arrived() {
        let since_epoch = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
        };
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let plain = bind_udp("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let stamped = bind_udp("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let mut plain = MmsgSocket::new(plain).unwrap();
        let mut stamped = MmsgSocket::new(stamped).unwrap();
        assert!(stamped.enable_timestamps());
        let to = stamped.local_addr().unwrap();
        let mut rx = RxBatch::default();
        // The kernel turns arrival stamping on a little after the first socket asks (a deferred
        // static-key switch); until then it stamps datagrams as they are read. So a few rounds
        // are allowed for the stamps to become arrival times.
        let mut at_arrival = false;
        for round in 0..STAMP_ROUNDS {
            let before = since_epoch();
            sender.send_to(&[7; 100], to).unwrap();
            sender.send_to(&[8; 100], to).unwrap();
            // Read after a pause: arrival stamps are then well before the reading time.
            std::thread::sleep(STAMP_PAUSE);
            let reading = since_epoch();
            assert_eq!(stamped.recv(&mut rx).unwrap(), 2, "round {round}");
            let read = since_epoch();
            let stamps = [rx.arrived(0), rx.arrived(1)];
            assert_eq!(rx.arrived(2), None, "past the batch's end");
            for t in stamps {
                let t = t.expect("a stamped datagram");
                assert!(
                    t >= before && t <= read,
                    "{t:?} outside {before:?}..{read:?}"
                );
            }
            if stamps
                .iter()
                .flatten()
                .all(|&t| t + STAMP_PAUSE / 2 < reading)
            {
                at_arrival = true;
                break;
            }
        }
        assert!(at_arrival, "every stamp was the reading time");
        sender
            .send_to(&[9; 100], plain.local_addr().unwrap())
            .unwrap();
        std::thread::sleep(STAMP_PAUSE);
        assert_eq!(plain.recv(&mut rx).unwrap(), 1);
        assert_eq!(rx.arrived(0), None, "a socket without timestamps");
    }

    /// Rounds [`receive_timestamps_say_when_each_datagram_arrived`] may take.
    const STAMP_ROUNDS: usize = 20;
    /// How long each round's datagrams wait before they are read.
    const STAMP_PAUSE: Duration = Duration::from_millis(50);

    #[test]
    fn dual_stack_sockets_report_ipv4_clients_as_ipv4() {
        let Ok(s) = bind_udp("[::]:0".parse().unwrap(), None) else {
            eprintln!("skipped: no IPv6 on this host");
            return;
        };
        let port = s.local_addr().unwrap().port();
        let mut server = MmsgSocket::new(s).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"hello", ("127.0.0.1", port)).unwrap();
        let mut rx = RxBatch::default();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut from = None;
        while from.is_none() && Instant::now() < deadline {
            let mut ready = [false];
            sys::poll_readable(
                &[server.readiness_fd()],
                Duration::from_millis(50),
                &mut ready,
            )
            .unwrap();
            if server.recv(&mut rx).unwrap() > 0 {
                from = rx.get_mut(0).map(|d| d.0);
            }
        }
        assert_eq!(from, Some(client.local_addr().unwrap()));
        // And the answer reaches the IPv4 client through the IPv6 socket.
        let mut tx = TxBatch::default();
        tx.push(client.local_addr().unwrap(), b"back");
        assert_eq!(server.send(&mut tx), 0);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"back");
    }

    #[test]
    fn tx_batch_refuses_when_full_and_rx_fill_truncates() {
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut tx = TxBatch::default();
        for _ in 0..BATCH {
            assert!(tx.push(to, b"x"));
        }
        assert!(!tx.push(to, b"x"));
        assert!(!TxBatch::default().push(to, &[0; SLOT_SIZE + 1]));
        let mut rx = RxBatch::default();
        let big = vec![1u8; SLOT_SIZE + 10];
        rx.fill_from([(to, &big[..]), (to, &b"ok"[..])]);
        assert_eq!(rx.len(), 2);
        assert!(rx.get_mut(0).unwrap().1);
        assert_eq!(rx.get_mut(1).unwrap().2, b"ok");
        assert!(rx.get_mut(2).is_none());
    }
}
