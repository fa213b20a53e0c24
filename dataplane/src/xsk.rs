//! AF_XDP sockets: a UMEM and its four rings (fill, completion, RX, TX) for one queue of one
//! interface, on the `libc` crate (decision 0009 says why not xsk-rs).
//!
//! This is one of the two modules with `unsafe` (the other is [`crate::sys`]): the rings are
//! memory shared with the kernel, read and written through raw pointers with acquire and
//! release ordering on their producer and consumer indices (Documentation/networking/af_xdp.rst).
//! Every block says why it is sound.
//!
//! The UMEM is split in two: half its frames are handed to the kernel through the fill ring
//! for receiving, and return there as soon as a received frame has been read; the other half
//! is a free list for sending, refilled from the completion ring.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::sys::setsockopt_at;

/// Bytes per UMEM frame (a chunk: one packet). 2048 is the smallest the kernel accepts and
/// holds an Ethernet MTU frame with room to spare.
pub const FRAME_SIZE: u32 = 2048;
/// Frames in a UMEM: half for receiving, half for sending (8 MiB per queue).
pub const FRAMES: u32 = 4096;
/// Entries in each ring (a power of two, as the kernel requires).
pub const RING_SIZE: u32 = 2048;
/// Frames the kernel sends per TX wakeup in copy mode (`TX_BATCH_SIZE` in Linux's
/// `net/xdp/xsk.c`); past it the wakeup answers EAGAIN and the rest wait for the next.
pub const COPY_MODE_TX_BUDGET: u32 = 32;
/// Most TX wakeups per flush in copy mode: enough to drain a full ring.
const MAX_TX_WAKEUPS: u32 = RING_SIZE / COPY_MODE_TX_BUDGET + 1;
/// How long a bind keeps retrying a busy queue: a queue stays busy for about a second after
/// its previous socket closed (xdp-notes, pitfall 2).
const BIND_RETRY_FOR: Duration = Duration::from_secs(5);
/// First pause between bind attempts; it doubles up to [`BIND_RETRY_MAX_PAUSE`].
const BIND_RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Longest pause between bind attempts.
const BIND_RETRY_MAX_PAUSE: Duration = Duration::from_millis(320);

/// `SO_BUSY_POLL`: microseconds a blocking receive may busy-poll; non-zero enables busy
/// polling of the socket's NAPI context (`include/uapi/asm-generic/socket.h`).
const SO_BUSY_POLL: libc::c_int = 46;
/// `SO_PREFER_BUSY_POLL`: the socket's busy polling takes the NAPI context over from the
/// softirq or NAPI thread (Linux 5.11; `include/uapi/asm-generic/socket.h`).
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
/// `SO_BUSY_POLL_BUDGET`: packets one busy poll may process (`include/uapi/asm-generic/socket.h`).
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;
/// Packets one busy poll may process: a receive batch's worth.
pub const BUSY_POLL_BUDGET: u32 = 64;

/// How the kernel moves packets between the driver and the UMEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// The driver DMAs straight into the UMEM.
    ZeroCopy,
    /// The kernel copies (any driver, veth included).
    Copy,
}

impl CopyMode {
    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            CopyMode::ZeroCopy => "zero-copy",
            CopyMode::Copy => "copy",
        }
    }
}

/// The kernel's counters of one socket (`struct xdp_statistics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames the kernel dropped for other reasons (a frame too big, for instance).
    pub rx_dropped: u64,
    /// Frames dropped because the RX ring was full (the worker fell behind).
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty (no frame to receive into).
    pub fill_ring_empty: u64,
    /// Invalid descriptors the kernel saw on RX and TX.
    pub invalid_descs: u64,
}

/// One ring mapped from the socket: producer and consumer indices, flags, descriptors.
struct Ring<T> {
    map: NonNull<u8>,
    map_len: usize,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    mask: u32,
    size: u32,
    /// Our copy of the index we own (producer of a producer ring, consumer of a consumer one).
    local: u32,
    /// Our last view of the index the kernel owns.
    cached: u32,
}

impl<T: Copy> Ring<T> {
    /// Maps the ring at page offset `pgoff` of socket `fd`, laid out as `off` says.
    fn map(fd: RawFd, off: &libc::xdp_ring_offset, size: u32, pgoff: u64) -> io::Result<Ring<T>> {
        let map_len = usize::try_from(off.desc)
            .ok()
            .and_then(|d| d.checked_add(size as usize * size_of::<T>()))
            .ok_or_else(|| io::Error::other("ring offsets out of range"))?;
        let pgoff = libc::off_t::try_from(pgoff).map_err(|_| io::Error::other("ring offset"))?;
        // SAFETY: a fresh shared mapping of the socket's ring; no Rust reference aliases it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = ptr.cast::<u8>();
        let at = |offset: u64| -> io::Result<NonNull<u8>> {
            let offset = usize::try_from(offset).map_err(|_| io::Error::other("ring offset"))?;
            if offset >= map_len {
                return Err(io::Error::other("ring offset past its mapping"));
            }
            // SAFETY: `offset` is inside the mapping of `map_len` bytes starting at `base`.
            NonNull::new(unsafe { base.add(offset) }).ok_or_else(|| io::Error::other("null"))
        };
        let ring = (|| {
            Ok(Ring {
                map: NonNull::new(base).ok_or_else(|| io::Error::other("null mapping"))?,
                map_len,
                producer: at(off.producer)?.cast(),
                consumer: at(off.consumer)?.cast(),
                flags: at(off.flags)?.cast(),
                descs: at(off.desc)?.cast(),
                mask: size - 1,
                size,
                local: 0,
                cached: 0,
            })
        })();
        if ring.is_err() {
            // SAFETY: the mapping made above, not referenced by anything.
            unsafe { libc::munmap(ptr, map_len) };
        }
        ring
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: the kernel keeps the index at this aligned offset of the live mapping, and
        // only ever accesses it atomically, as we do.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    /// Whether the kernel asked to be woken (XDP_RING_NEED_WAKEUP).
    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`: the flags word of the live mapping, accessed atomically.
        let flags = unsafe { self.flags.as_ref() };
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: `index & mask` < size, and the mapping holds `size` descriptors at `descs`.
        unsafe { self.descs.as_ptr().add((index & self.mask) as usize) }
    }

    // Producer side (fill and TX rings): we own `producer`, the kernel `consumer`.

    /// Free entries, looking again at the kernel's consumer index when fewer than `want`.
    fn free(&mut self, want: u32) -> u32 {
        let free = self.size - self.local.wrapping_sub(self.cached);
        if free >= want {
            return free;
        }
        self.cached = self.consumer().load(Ordering::Acquire);
        self.size - self.local.wrapping_sub(self.cached)
    }

    /// Writes `value` at the next free entry; the caller checked [`Ring::free`].
    fn put(&mut self, value: T) {
        // SAFETY: the entry is free (between the kernel's consumer and our producer), so the
        // kernel does not read it until `publish`.
        unsafe { self.slot(self.local).write(value) };
        self.local = self.local.wrapping_add(1);
    }

    /// Entries published that the kernel has not consumed yet.
    fn unconsumed(&mut self) -> u32 {
        self.cached = self.consumer().load(Ordering::Acquire);
        self.local.wrapping_sub(self.cached)
    }

    /// Makes the entries written so far visible to the kernel.
    fn publish(&self) {
        self.producer().store(self.local, Ordering::Release);
    }

    // Consumer side (RX and completion rings): the kernel owns `producer`, we `consumer`.

    /// Entries ready to read, at most `max`.
    fn ready(&mut self, max: u32) -> u32 {
        let mut n = self.cached.wrapping_sub(self.local);
        if n == 0 {
            self.cached = self.producer().load(Ordering::Acquire);
            n = self.cached.wrapping_sub(self.local);
        }
        n.min(max)
    }

    /// The entry `i` places after the next unread one; the caller checked [`Ring::ready`].
    fn peek(&self, i: u32) -> T {
        // SAFETY: the entry is between our consumer and the kernel's producer: written by the
        // kernel before its release store, which our acquire load observed.
        unsafe { self.slot(self.local.wrapping_add(i)).read() }
    }

    /// Gives `n` read entries back to the kernel.
    fn release(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        self.consumer().store(self.local, Ordering::Release);
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: our own mapping, made in `Ring::map`; nothing borrows it past `self`.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

/// The UMEM: anonymous memory registered with the socket.
struct Umem {
    area: NonNull<u8>,
    len: usize,
}

impl Umem {
    fn new(len: usize) -> io::Result<Umem> {
        // SAFETY: a fresh private anonymous mapping; nothing aliases it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Umem {
            area: NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("null mapping"))?,
            len,
        })
    }

    /// Bytes `addr..addr + len` of the UMEM, if inside it.
    fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(addr).ok()?;
        if start.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: the range is inside the mapping. The frame is ours (read from the RX ring,
        // not yet given back through the fill ring), so the kernel does not write it meanwhile.
        Some(unsafe { std::slice::from_raw_parts(self.area.as_ptr().add(start), len) })
    }

    /// The whole frame at `addr`, writable, if inside the UMEM.
    fn frame_mut(&mut self, addr: u64) -> Option<&mut [u8]> {
        let start = usize::try_from(addr).ok()?;
        if start.checked_add(FRAME_SIZE as usize)? > self.len {
            return None;
        }
        // SAFETY: inside the mapping; the frame is on our free list (not in any ring), so the
        // kernel neither reads nor writes it, and `&mut self` makes the borrow unique.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.area.as_ptr().add(start), FRAME_SIZE as usize)
        })
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the socket that registered it is closed after the rings
        // (field order of `Xsk`), and the kernel keeps its own reference to pinned pages.
        unsafe { libc::munmap(self.area.as_ptr().cast(), self.len) };
    }
}

/// An AF_XDP socket bound to one queue, with its UMEM and rings.
pub struct Xsk {
    // Field order is drop order: rings, then the UMEM, then the socket.
    fill: Ring<u64>,
    completion: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    umem: Umem,
    fd: OwnedFd,
    /// Frames free for sending.
    free_tx: Vec<u64>,
    /// Descriptors put on the TX ring since the last [`Xsk::flush`].
    tx_pending: u32,
    /// Whether syscalls busy-poll the NAPI context ([`Xsk::prefer_busy_poll`]).
    busy_poll: bool,
    mode: CopyMode,
    ifindex: u32,
    queue: u32,
}

// SAFETY: the raw pointers are to mappings owned by this value alone; moving it to another
// thread moves that ownership (a worker takes it to its own thread and keeps it there).
unsafe impl Send for Xsk {}

impl std::fmt::Debug for Xsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xsk")
            .field("ifindex", &self.ifindex)
            .field("queue", &self.queue)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn setsockopt<T>(fd: RawFd, name: libc::c_int, value: &T) -> io::Result<()> {
    setsockopt_at(fd, libc::SOL_XDP, name, value)
}

fn getsockopt<T>(fd: RawFd, name: libc::c_int) -> io::Result<T> {
    // SAFETY: the option structs are plain integers, for which all-zero bytes are valid.
    let mut value: T = unsafe { zeroed() };
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is writable for `len` bytes and outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            name,
            (&mut value as *mut T).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<T>() {
        return Err(io::Error::other("the kernel answered an older layout"));
    }
    Ok(value)
}

impl Xsk {
    /// Opens an AF_XDP socket on queue `queue` of interface `ifindex`: zero-copy when the
    /// driver offers it, else copy mode; need_wakeup on. A busy queue (a socket closed less
    /// than a second ago) is retried with backoff for a few seconds.
    pub fn open(ifindex: u32, queue: u32) -> io::Result<Xsk> {
        let started = Instant::now();
        let mut pause = BIND_RETRY_PAUSE;
        loop {
            match Self::open_once(ifindex, queue) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    if started.elapsed() >= BIND_RETRY_FOR {
                        return Err(e);
                    }
                    tracing::debug!(ifindex, queue, "AF_XDP queue busy; retrying");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(BIND_RETRY_MAX_PAUSE);
                }
                other => return other,
            }
        }
    }

    fn open_once(ifindex: u32, queue: u32) -> io::Result<Xsk> {
        match Self::create(ifindex, queue, CopyMode::ZeroCopy) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EPROTONOSUPPORT | libc::EINVAL)
                ) =>
            {
                Self::create(ifindex, queue, CopyMode::Copy)
            }
            other => other,
        }
    }

    fn create(ifindex: u32, queue: u32, mode: CopyMode) -> io::Result<Xsk> {
        // SAFETY: socket() takes no pointers; a non-negative result is a new descriptor.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem = Umem::new(FRAMES as usize * FRAME_SIZE as usize)?;
        // SAFETY: all-zero bytes are a valid xdp_umem_reg (plain integers).
        let mut reg: libc::xdp_umem_reg = unsafe { zeroed() };
        reg.addr = umem.area.as_ptr() as u64;
        reg.len = umem.len as u64;
        reg.chunk_size = FRAME_SIZE;
        setsockopt(raw, libc::XDP_UMEM_REG, &reg)?;
        setsockopt(raw, libc::XDP_UMEM_FILL_RING, &RING_SIZE)?;
        setsockopt(raw, libc::XDP_UMEM_COMPLETION_RING, &RING_SIZE)?;
        setsockopt(raw, libc::XDP_RX_RING, &RING_SIZE)?;
        setsockopt(raw, libc::XDP_TX_RING, &RING_SIZE)?;
        let off: libc::xdp_mmap_offsets = getsockopt(raw, libc::XDP_MMAP_OFFSETS)?;
        let mut fill = Ring::<u64>::map(raw, &off.fr, RING_SIZE, libc::XDP_UMEM_PGOFF_FILL_RING)?;
        let completion = Ring::<u64>::map(
            raw,
            &off.cr,
            RING_SIZE,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
        )?;
        let rx = Ring::map(raw, &off.rx, RING_SIZE, libc::XDP_PGOFF_RX_RING as u64)?;
        let tx = Ring::map(raw, &off.tx, RING_SIZE, libc::XDP_PGOFF_TX_RING as u64)?;
        // The first half of the frames receive, the second half send.
        let receive_frames = (FRAMES / 2).min(RING_SIZE);
        for i in 0..receive_frames {
            fill.put(u64::from(i) * u64::from(FRAME_SIZE));
        }
        fill.publish();
        let free_tx = (receive_frames..FRAMES)
            .map(|i| u64::from(i) * u64::from(FRAME_SIZE))
            .collect();
        let flags = match mode {
            CopyMode::ZeroCopy => libc::XDP_ZEROCOPY,
            CopyMode::Copy => libc::XDP_COPY,
        } | libc::XDP_USE_NEED_WAKEUP;
        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `addr` is a live sockaddr_xdp of the length given; the kernel only reads it.
        let rc = unsafe {
            libc::bind(
                raw,
                (&addr as *const libc::sockaddr_xdp).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Xsk {
            fill,
            completion,
            rx,
            tx,
            umem,
            fd,
            free_tx,
            tx_pending: 0,
            busy_poll: false,
            mode,
            ifindex,
            queue,
        })
    }

    /// The socket, for the XSKMAP and for readiness.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Copy or zero-copy, as the bind settled.
    pub fn mode(&self) -> CopyMode {
        self.mode
    }

    /// The queue this socket is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Makes this socket's syscalls run the receive queue's NAPI poll themselves (preferred
    /// busy polling): the worker does the receive-side kernel work in its own context instead
    /// of waiting for a softirq or NAPI thread. With the device's `napi_defer_hard_irqs` and
    /// `gro_flush_timeout` set, the NAPI thread then runs only when the worker has been away
    /// for longer than that timeout.
    pub fn prefer_busy_poll(&mut self, usecs: u32) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        let on: libc::c_int = 1;
        let usecs = libc::c_int::try_from(usecs).unwrap_or(libc::c_int::MAX);
        let budget = libc::c_int::try_from(BUSY_POLL_BUDGET).unwrap_or(libc::c_int::MAX);
        setsockopt_at(fd, libc::SOL_SOCKET, SO_PREFER_BUSY_POLL, &on)?;
        setsockopt_at(fd, libc::SOL_SOCKET, SO_BUSY_POLL, &usecs)?;
        setsockopt_at(fd, libc::SOL_SOCKET, SO_BUSY_POLL_BUDGET, &budget)?;
        self.busy_poll = true;
        Ok(())
    }

    /// Reads up to `max` received frames, handing each to `each`, and gives their buffers
    /// back to the kernel. Returns how many were read. With busy polling, a ring holding
    /// fewer than `max` first has the NAPI poll run (one non-blocking receive call).
    pub fn recv(&mut self, max: u32, mut each: impl FnMut(&[u8])) -> u32 {
        if self.busy_poll && self.rx.ready(max) < max {
            self.kick_rx();
            self.rx.cached = self.rx.producer().load(Ordering::Acquire);
        }
        let n = self.rx.ready(max);
        if n == 0 {
            self.wake_fill_if_asked();
            return 0;
        }
        // Every frame read goes back to the fill ring, which has room: the kernel holds at
        // most the receive frames, and the fill ring has an entry for each.
        let room = self.fill.free(n);
        for i in 0..n {
            let desc = self.rx.peek(i);
            if let Some(frame) = self.umem.bytes(desc.addr, desc.len as usize) {
                each(frame);
            }
            if i < room {
                // Aligned chunks: the frame's start is its address rounded down.
                self.fill.put(desc.addr & !u64::from(FRAME_SIZE - 1));
            }
        }
        self.rx.release(n);
        self.fill.publish();
        self.wake_fill_if_asked();
        n
    }

    /// With need_wakeup, a driver whose fill ring ran dry waits for a syscall to start
    /// receiving again.
    fn wake_fill_if_asked(&self) {
        if self.fill.needs_wakeup() {
            self.kick_rx();
        }
    }

    fn kick_rx(&self) {
        // SAFETY: a zero-length receive with null buffers is the documented wakeup; nothing
        // is written.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }

    /// Takes back the frames the kernel has finished sending.
    fn reclaim(&mut self) {
        let n = self.completion.ready(RING_SIZE);
        for i in 0..n {
            self.free_tx.push(self.completion.peek(i));
        }
        if n > 0 {
            self.completion.release(n);
        }
    }

    /// Queues one frame: `write` fills a free frame and answers its length (`None` leaves it
    /// unused). Answers false when no frame or TX ring entry was free (after reclaiming what
    /// the kernel finished): the caller sends another way or drops.
    pub fn send_with(&mut self, write: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        if self.free_tx.is_empty() {
            self.reclaim();
        }
        if self.tx.free(1) == 0 {
            return false;
        }
        let Some(addr) = self.free_tx.pop() else {
            return false;
        };
        let Some(len) = self.umem.frame_mut(addr).and_then(write) else {
            // Not written (it does not fit a frame): the caller sends it another way.
            self.free_tx.push(addr);
            return false;
        };
        self.tx.put(libc::xdp_desc {
            addr,
            len: u32::try_from(len.min(FRAME_SIZE as usize)).unwrap_or(FRAME_SIZE),
            options: 0,
        });
        self.tx_pending += 1;
        true
    }

    /// Publishes the frames queued by [`Xsk::send_with`] and wakes the kernel to send them.
    /// Zero-copy needs a wakeup only when the ring asks. Copy mode always needs one, and the
    /// kernel sends at most [`COPY_MODE_TX_BUDGET`] frames per wakeup, so it is woken until
    /// the ring is drained (at most a ring's worth of wakeups; the rest go at the next flush).
    pub fn flush(&mut self) {
        if self.tx_pending > 0 {
            self.tx.publish();
            self.tx_pending = 0;
        }
        if self.mode == CopyMode::Copy {
            for _ in 0..MAX_TX_WAKEUPS {
                if self.tx.unconsumed() == 0 || !self.wake_tx() {
                    break;
                }
                self.reclaim();
            }
        } else if self.tx.needs_wakeup() {
            self.wake_tx();
        }
        self.reclaim();
    }

    /// The TX wakeup; answers false when the kernel refused for a reason other than being
    /// busy with this ring (EAGAIN: budget spent or completion ring full, try again).
    fn wake_tx(&self) -> bool {
        // SAFETY: a zero-length send with a null buffer is the documented TX wakeup.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if rc >= 0 {
            return true;
        }
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::WouldBlock {
            return true;
        }
        // ENOBUFS, ENETDOWN...: what is left goes at a later flush.
        tracing::trace!(%error, "AF_XDP TX wakeup");
        false
    }

    /// The kernel's counters for this socket.
    pub fn stats(&self) -> io::Result<XskStats> {
        let s: libc::xdp_statistics = getsockopt(self.fd.as_raw_fd(), libc::XDP_STATISTICS)?;
        Ok(XskStats {
            rx_dropped: s.rx_dropped,
            rx_ring_full: s.rx_ring_full,
            fill_ring_empty: s.rx_fill_ring_empty_descs,
            invalid_descs: s.rx_invalid_descs + s.tx_invalid_descs,
        })
    }
}
