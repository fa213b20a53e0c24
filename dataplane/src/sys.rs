//! The system calls the socket data plane needs and `std` does not offer: `recvmmsg`,
//! `sendmmsg`, `poll`, `eventfd`, interface lookup and `setns`. This is one of the two places
//! in the workspace with `unsafe` (the other is the AF_XDP ring code); every block says why
//! it is sound.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// One datagram's place in a batch: its buffer, and for receive its length and source.
pub struct Slot<'a> {
    /// The bytes (receive: capacity; send: the datagram).
    pub buf: &'a mut [u8],
    /// Receive: the datagram's length (0 when the slot was not filled).
    pub len: usize,
    /// Receive: the source; send: the destination.
    pub addr: SocketAddr,
    /// Receive: the datagram was longer than the buffer and was cut.
    pub truncated: bool,
    /// Receive: with UDP GRO on, the size of the datagrams the kernel coalesced into this
    /// buffer (all of it but the last one, which may be shorter); `None` for one datagram.
    pub segment: Option<u16>,
    /// Receive: with timestamps on ([`enable_timestamps`]), when the kernel received the
    /// datagram (`CLOCK_REALTIME`, since the Unix epoch).
    pub stamp: Option<Duration>,
}

/// `SOL_UDP`: the socket option level of UDP (Linux `include/linux/socket.h`).
const SOL_UDP: libc::c_int = 17;
/// `UDP_GRO`: receive coalesced datagrams, with their size in a control message (Linux
/// `include/uapi/linux/udp.h`, kernel 5.0+).
const UDP_GRO: libc::c_int = 104;
/// Control buffer per received message, in 8-byte words: room for one `UDP_GRO` message
/// (`CMSG_SPACE(sizeof(int))` = 24 bytes on 64-bit Linux) and one `SCM_TIMESTAMPNS`
/// (`CMSG_SPACE(sizeof(struct timespec))` = 32 bytes).
const CONTROL_WORDS: usize = 8;

/// Asks the kernel to coalesce received UDP datagrams (`UDP_GRO`); [`recv_batch`] then reports
/// each buffer's segment size. Fails on kernels without it.
pub fn enable_gro(fd: RawFd) -> io::Result<()> {
    setsockopt_at(fd, SOL_UDP, UDP_GRO, &ON)
}

/// Asks the kernel to stamp every datagram it receives on `fd` with its arrival time
/// (`SO_TIMESTAMPNS`, socket(7)); [`recv_batch`] then reports it in each slot's `stamp`.
pub fn enable_timestamps(fd: RawFd) -> io::Result<()> {
    setsockopt_at(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &ON)
}

/// The value that turns a boolean socket option on.
const ON: libc::c_int = 1;

/// Sets socket option `name` at `level` of `fd` to `value` (setsockopt(2)).
pub(crate) fn setsockopt_at<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the length given; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Fills `slots` from `fd` with one `recvmmsg(MSG_DONTWAIT)`. Returns how many were filled;
/// `WouldBlock` when none was waiting.
pub fn recv_batch(fd: RawFd, slots: &mut [Slot<'_>]) -> io::Result<usize> {
    // The message headers are zeroed for every call: a few slots (UDP GRO receives into a few
    // large buffers) take small arrays, instead of clearing room for a whole batch.
    if slots.len() <= FEW_SLOTS {
        recv_batch_in::<FEW_SLOTS>(fd, slots)
    } else {
        recv_batch_in::<MAX_BATCH>(fd, slots)
    }
}

/// Slots up to which [`recv_batch`] uses small header arrays.
pub(crate) const FEW_SLOTS: usize = 8;

/// [`recv_batch`] with header arrays for `N` messages.
fn recv_batch_in<const N: usize>(fd: RawFd, slots: &mut [Slot<'_>]) -> io::Result<usize> {
    let n = slots.len().min(N);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: all-zero bytes are a valid value for these plain C structs.
    let mut names: [libc::sockaddr_storage; N] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; N] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; N] = unsafe { zeroed() };
    // 8-byte words, so that each buffer is aligned for `cmsghdr`.
    let mut controls = [[0u64; CONTROL_WORDS]; N];
    for i in 0..n {
        iovs[i].iov_base = slots[i].buf.as_mut_ptr().cast();
        iovs[i].iov_len = slots[i].buf.len();
        hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        hdrs[i].msg_hdr.msg_control = controls[i].as_mut_ptr().cast();
        hdrs[i].msg_hdr.msg_controllen = size_of::<[u64; CONTROL_WORDS]>() as _;
    }
    // SAFETY: `hdrs[..n]` point at `iovs`, `names` and `controls`, which live until the call
    // returns, and each iovec covers exactly one slot's buffer, borrowed mutably for this call.
    // The kernel writes at most `iov_len` bytes, `msg_namelen` bytes of address and
    // `msg_controllen` bytes of control messages.
    let got = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = got as usize;
    for i in 0..got {
        slots[i].len = hdrs[i].msg_len as usize;
        slots[i].truncated = hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        slots[i].addr = from_storage(&names[i]).unwrap_or(UNSPECIFIED);
        (slots[i].segment, slots[i].stamp) = control_messages(&hdrs[i].msg_hdr);
    }
    Ok(got)
}

/// The `UDP_GRO` segment size and the `SCM_TIMESTAMPNS` arrival time among the control
/// messages `recvmmsg` wrote into `msg`.
fn control_messages(msg: &libc::msghdr) -> (Option<u16>, Option<Duration>) {
    let (mut segment, mut stamp) = (None, None);
    // SAFETY: `msg` was filled by `recvmmsg`: `msg_control` points at a live control buffer of
    // which the kernel wrote `msg_controllen` bytes, and CMSG_FIRSTHDR/CMSG_NXTHDR stay within
    // them (they return null past the end).
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: non-null `cmsg` points at a whole `cmsghdr` inside the control buffer.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == SOL_UDP && header.cmsg_type == UDP_GRO {
            // SAFETY: a UDP_GRO message carries one int after its header (kernel
            // `udp_cmsg_recv`); the data may be unaligned, hence `read_unaligned`.
            let size =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()) };
            segment = u16::try_from(size).ok().filter(|&s| s > 0);
        } else if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_TIMESTAMPNS
        {
            // SAFETY: an SCM_TIMESTAMPNS message carries one `struct timespec` after its header
            // (socket(7)); the data may be unaligned, hence `read_unaligned`.
            let t =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>()) };
            stamp = u64::try_from(t.tv_sec)
                .ok()
                .zip(u32::try_from(t.tv_nsec).ok())
                .map(|(s, ns)| Duration::new(s, ns));
        }
        // SAFETY: as for CMSG_FIRSTHDR: the next header or null, within the buffer.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    (segment, stamp)
}

/// One message of a [`send_runs`] call: `count` datagrams of the list from `first` on, all to
/// the first one's destination. Two or more go as one UDP GSO train (Linux `UDP_SEGMENT`,
/// kernel 4.18+), which the kernel splits into one datagram per segment: every datagram but the
/// last must then be as long as the first, and the last no longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Index of the run's first datagram in the list.
    pub first: usize,
    /// Datagrams in the run: 1 to [`MAX_GSO_SEGMENTS`].
    pub count: usize,
}

/// Sends `runs` of `list` (each entry one whole datagram and its destination) with one
/// `sendmmsg`: single datagrams and GSO trains together, so that a batch of trains (one per
/// subscriber of a video frame) costs one system call. At most [`MAX_BATCH`] runs and
/// [`MAX_BATCH`] datagrams per call; returns how many runs the kernel took, the first ones.
/// An error is the first run's (`WouldBlock` when the socket buffer is full).
pub fn send_runs(fd: RawFd, list: &[(&[u8], SocketAddr)], runs: &[Run]) -> io::Result<usize> {
    // Runs past the datagram limit, or naming datagrams outside `list`, wait for another call.
    let mut n = 0;
    let mut datagrams = 0;
    for r in runs.iter().take(MAX_BATCH) {
        if r.count == 0
            || r.count > MAX_GSO_SEGMENTS
            || r.first + r.count > list.len()
            || datagrams + r.count > MAX_BATCH
        {
            break;
        }
        datagrams += r.count;
        n += 1;
    }
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: all-zero bytes are a valid value for these plain C structs.
    let mut names: [libc::sockaddr_storage; MAX_BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
    // Room for one control message holding a u16 per run, 8-byte aligned.
    let mut controls = [[0u64; GSO_CONTROL_WORDS]; MAX_BATCH];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    debug_assert!(space <= size_of::<[u64; GSO_CONTROL_WORDS]>());
    let mut next_iov = 0;
    for (k, r) in runs[..n].iter().enumerate() {
        let to = list[r.first].1;
        for (iov, &(buf, _)) in iovs[next_iov..next_iov + r.count]
            .iter_mut()
            .zip(&list[r.first..r.first + r.count])
        {
            iov.iov_base = buf.as_ptr() as *mut libc::c_void;
            iov.iov_len = buf.len();
        }
        let name_len = to_storage(to, &mut names[k]);
        let msg = &mut hdrs[k].msg_hdr;
        msg.msg_name = (&mut names[k] as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = name_len;
        msg.msg_iov = &mut iovs[next_iov];
        msg.msg_iovlen = r.count;
        next_iov += r.count;
        if r.count > 1 {
            let segment = u16::try_from(list[r.first].0.len()).unwrap_or(u16::MAX);
            msg.msg_control = controls[k].as_mut_ptr().cast();
            msg.msg_controllen = space;
            // SAFETY: `msg` points at a control buffer of `space` bytes, enough for one header
            // and a u16 (CMSG_SPACE); CMSG_FIRSTHDR is therefore non-null and CMSG_DATA inside
            // the buffer.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(msg);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
            }
        }
    }
    // SAFETY: `hdrs[..n]` point at `iovs`, `names` and `controls`, which outlive the call; the
    // kernel only reads the buffers (`iov_base` is cast from a shared slice and never written).
    let sent = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// 8-byte words of control buffer per GSO message: a `cmsghdr` and its u16.
const GSO_CONTROL_WORDS: usize = 4;

/// Most segments in one GSO send (the kernel's limit is 64, `UDP_MAX_SEGMENTS`).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Sets a socket's kernel receive and send buffers to `bytes`, beyond the system maximum
/// (`net.core.rmem_max`) when the process has `CAP_NET_ADMIN` (`SO_RCVBUFFORCE`, Linux
/// `asm-generic/socket.h`); otherwise as far as the maximum allows.
pub fn force_buffer_sizes(fd: RawFd, bytes: usize) -> io::Result<()> {
    /// `SO_SNDBUFFORCE` (Linux `asm-generic/socket.h`).
    const SO_SNDBUFFORCE: libc::c_int = 32;
    /// `SO_RCVBUFFORCE` (Linux `asm-generic/socket.h`).
    const SO_RCVBUFFORCE: libc::c_int = 33;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (forced, plain) in [
        (SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for opt in [forced, plain] {
            match setsockopt_at(fd, libc::SOL_SOCKET, opt, &value) {
                Ok(()) => break,
                Err(e) if opt == plain => return Err(e),
                Err(_) => {}
            }
        }
    }
    Ok(())
}

/// Most datagrams one `recvmmsg` or `sendmmsg` call handles here.
pub const MAX_BATCH: usize = 64;

const UNSPECIFIED: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`, which is smaller than
            // and no more aligned than `sockaddr_storage`.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a `sockaddr_in6`, as above.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_storage(addr: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: `sockaddr_in` fits in and is no more aligned than `sockaddr_storage`.
            let a = unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            a.sin_family = libc::AF_INET as libc::sa_family_t;
            a.sin_port = v4.port().to_be();
            a.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: `sockaddr_in6` fits in and is no more aligned than `sockaddr_storage`.
            let a =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            a.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            a.sin6_port = v6.port().to_be();
            a.sin6_flowinfo = v6.flowinfo();
            a.sin6_addr.s6_addr = v6.ip().octets();
            a.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// An epoll set: which of many sockets are readable, in time proportional to the ready ones
/// (the load generator drives thousands of sockets, one per session).
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

/// Events one [`Epoll::wait`] takes at most.
const EPOLL_EVENTS: usize = 256;

impl Epoll {
    /// A new, empty set.
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The set's own descriptor: readable when a watched descriptor is (so one set can stand
    /// for several in a `poll`).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Watches `fd` for readability (level-triggered); `wait` reports it as `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `event` is a live, initialised epoll_event the kernel only reads.
        let rc =
            unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for readable descriptors and puts their tokens in `ready`
    /// (replacing its contents; at most 256 at a time). An interrupted wait reports none.
    pub fn wait(&self, ready: &mut Vec<u64>, timeout: Duration) -> io::Result<()> {
        ready.clear();
        // SAFETY: all-zero bytes are a valid epoll_event.
        let mut events: [libc::epoll_event; EPOLL_EVENTS] = unsafe { zeroed() };
        // Nanosecond timeouts (`epoll_pwait2`, Linux 5.11): a millisecond rounding would wake
        // early and spin, or late.
        let timeout = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
        };
        // SAFETY: `events` is a writable array of EPOLL_EVENTS entries and `timeout` a valid
        // timespec, both outliving the call; a null signal mask leaves the mask alone.
        let n = unsafe {
            libc::epoll_pwait2(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                EPOLL_EVENTS as libc::c_int,
                &timeout,
                std::ptr::null(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        ready.extend(events[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

/// Waits until one of `fds` is readable or `timeout` passes. Returns which were readable.
/// An interrupted wait (a signal) returns with nothing readable.
pub fn poll_readable(fds: &[RawFd], timeout: Duration, ready: &mut [bool]) -> io::Result<()> {
    const MAX_FDS: usize = 8;
    let n = fds.len().min(MAX_FDS).min(ready.len());
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX_FDS];
    for (p, &fd) in pfds.iter_mut().zip(&fds[..n]) {
        p.fd = fd;
        p.events = libc::POLLIN;
    }
    // Round up: a sub-millisecond wait must not become a busy poll(0).
    let ms = libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfds[..n]` is a valid, initialised array that lives across the call.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, ms) };
    ready.iter_mut().for_each(|r| *r = false);
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(())
        } else {
            Err(e)
        };
    }
    for i in 0..n {
        ready[i] = pfds[i].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    }
    Ok(())
}

/// A Linux eventfd: a counter other threads bump to wake a worker out of `poll`.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A non-blocking, close-on-exec eventfd.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain system call with constant flags.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nothing else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wakes the waiter (never blocks; a saturated counter is already a wake-up).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an fd we own.
        let _ = unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast(),
                size_of::<u64>(),
            )
        };
    }

    /// Resets the counter after a wake-up.
    pub fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from an fd we own; non-blocking.
        let _ = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                size_of::<u64>(),
            )
        };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Takes ownership of the sockets this process inherited from its parent, which named them on
/// the command line (the control-plane links). Callable once per process, with distinct
/// descriptors, so that no descriptor ends up with two owners.
pub fn claim_inherited_sockets(fds: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
    static CLAIMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let mut unique = fds.to_vec();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() != fds.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a link descriptor is named twice",
        ));
    }
    for &fd in fds {
        check_inherited_socket(fd)?;
    }
    if CLAIMED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the inherited links were claimed already",
        ));
    }
    Ok(fds
        .iter()
        // SAFETY: each fd is open and a socket (checked above), was inherited at exec, is
        // distinct from the others, and is claimed once per process (the flag above): nothing
        // else in this process owns it.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect())
}

/// Fails unless `fd` is an open socket above the standard streams.
fn check_inherited_socket(fd: RawFd) -> io::Result<()> {
    const FIRST_INHERITED: RawFd = 3;
    if fd < FIRST_INHERITED {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is a standard stream, not a link"),
        ));
    }
    // SAFETY: fstat writes a `stat` for a valid fd or fails; the buffer is ours.
    let mut st: libc::stat = unsafe { zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is not a socket"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn batch_round_trip_over_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = b.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100 + i as usize]).collect();
        let batch: Vec<(&[u8], SocketAddr)> = payloads.iter().map(|p| (&p[..], to)).collect();
        let runs: Vec<Run> = (0..10).map(|first| Run { first, count: 1 }).collect();
        assert_eq!(send_runs(a.as_raw_fd(), &batch, &runs).unwrap(), 10);
        let mut bufs = vec![[0u8; 256]; 16];
        let mut got = 0;
        let mut ready = [false];
        for _ in 0..100 {
            poll_readable(&[b.as_raw_fd()], Duration::from_millis(100), &mut ready).unwrap();
            let mut slots: Vec<Slot<'_>> = bufs[got..]
                .iter_mut()
                .map(|b| Slot {
                    buf: &mut b[..],
                    len: 0,
                    addr: UNSPECIFIED,
                    truncated: false,
                    segment: None,
                    stamp: None,
                })
                .collect();
            match recv_batch(b.as_raw_fd(), &mut slots) {
                Ok(n) => {
                    for s in &slots[..n] {
                        assert_eq!(s.addr, a.local_addr().unwrap());
                        assert!(!s.truncated);
                    }
                    let lens: Vec<usize> = slots[..n].iter().map(|s| s.len).collect();
                    drop(slots);
                    for (k, len) in lens.into_iter().enumerate() {
                        assert_eq!(&bufs[got + k][..len], &payloads[got + k][..]);
                    }
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            if got == 10 {
                break;
            }
        }
        assert_eq!(got, 10);
    }

    #[test]
    fn truncation_and_ipv6_addresses_are_reported() {
        let Ok(b) = UdpSocket::bind("[::1]:0") else {
            eprintln!("skipped: no IPv6 loopback on this host");
            return;
        };
        let a = UdpSocket::bind("[::1]:0").unwrap();
        a.send_to(&[7u8; 300], b.local_addr().unwrap()).unwrap();
        let mut ready = [false];
        poll_readable(&[b.as_raw_fd()], Duration::from_secs(2), &mut ready).unwrap();
        assert!(ready[0]);
        let mut buf = [0u8; 100];
        let mut slots = [Slot {
            buf: &mut buf,
            len: 0,
            addr: UNSPECIFIED,
            truncated: false,
            segment: None,
            stamp: None,
        }];
        assert_eq!(recv_batch(b.as_raw_fd(), &mut slots).unwrap(), 1);
        assert!(slots[0].truncated);
        assert_eq!(slots[0].addr, a.local_addr().unwrap());
    }

    #[test]
    fn one_call_sends_gso_trains_and_single_datagrams_together() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (to_b, to_c) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        // To b: a train of 4 × 1000 + 300; to c: one datagram; to b again: a train of 3 × 500.
        let data: Vec<(Vec<u8>, SocketAddr)> = [
            (1000, to_b),
            (1000, to_b),
            (1000, to_b),
            (1000, to_b),
            (300, to_b),
            (77, to_c),
            (500, to_b),
            (500, to_b),
            (500, to_b),
        ]
        .iter()
        .enumerate()
        .map(|(i, &(n, to))| (vec![i as u8; n], to))
        .collect();
        let list: Vec<(&[u8], SocketAddr)> = data.iter().map(|(d, to)| (&d[..], *to)).collect();
        let runs = [
            Run { first: 0, count: 5 },
            Run { first: 5, count: 1 },
            Run { first: 6, count: 3 },
        ];
        assert_eq!(send_runs(a.as_raw_fd(), &list, &runs).unwrap(), 3);
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 2048];
        for i in [0, 1, 2, 3, 4, 6, 7, 8] {
            let (n, from) = b.recv_from(&mut buf).unwrap();
            assert_eq!(from, a.local_addr().unwrap());
            assert_eq!(&buf[..n], &data[i].0[..], "datagram {i}");
        }
        let (n, _) = c.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &data[5].0[..]);
        // Runs beyond the list, or empty, are not sent.
        assert_eq!(
            send_runs(a.as_raw_fd(), &list, &[Run { first: 8, count: 2 }]).unwrap(),
            0
        );
        assert_eq!(
            send_runs(a.as_raw_fd(), &list, &[Run { first: 0, count: 0 }]).unwrap(),
            0
        );
    }

    #[test]
    fn buffers_grow_as_asked() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        force_buffer_sizes(a.as_raw_fd(), 1 << 20).unwrap();
        let s = socket2::SockRef::from(&a);
        let root = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if root || rmem_max >= 1 << 20 {
            assert!(s.recv_buffer_size().unwrap() >= 1 << 20);
            assert!(s.send_buffer_size().unwrap() >= 1 << 20);
        } else {
            eprintln!("skipped: not root and net.core.rmem_max is {rmem_max}");
        }
    }

    #[test]
    fn epoll_reports_only_the_readable_sockets() {
        let sockets: Vec<std::net::UdpSocket> = (0..40)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let epoll = Epoll::new().unwrap();
        for (i, s) in sockets.iter().enumerate() {
            epoll.add(s.as_raw_fd(), i as u64).unwrap();
        }
        let mut ready = Vec::new();
        epoll.wait(&mut ready, Duration::ZERO).unwrap();
        assert!(ready.is_empty());
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in [3usize, 17, 39] {
            sender
                .send_to(b"x", sockets[i].local_addr().unwrap())
                .unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while ready.len() < 3 && std::time::Instant::now() < deadline {
            epoll.wait(&mut ready, Duration::from_millis(100)).unwrap();
        }
        ready.sort_unstable();
        assert_eq!(ready, vec![3, 17, 39]);
    }

    #[test]
    fn eventfd_wakes_poll() {
        let e = EventFd::new().unwrap();
        let mut ready = [false];
        poll_readable(&[e.as_raw_fd()], Duration::ZERO, &mut ready).unwrap();
        assert!(!ready[0]);
        e.wake();
        poll_readable(&[e.as_raw_fd()], Duration::from_secs(1), &mut ready).unwrap();
        assert!(ready[0]);
        e.clear();
        poll_readable(&[e.as_raw_fd()], Duration::ZERO, &mut ready).unwrap();
        assert!(!ready[0]);
    }

    #[test]
    fn claiming_refuses_non_sockets() {
        assert!(check_inherited_socket(0).is_err());
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let fd = f.as_raw_fd();
        assert!(check_inherited_socket(fd).is_err());
        assert!(claim_inherited_sockets(&[fd, fd]).is_err(), "named twice");
    }
}

/// A network interface, as AF_XDP needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its name (`eth0`).
    pub name: String,
    /// Its index.
    pub index: u32,
    /// The loopback device.
    pub loopback: bool,
}

/// The interfaces of this network namespace with their addresses (`getifaddrs`).
pub fn interface_addresses() -> io::Result<Vec<(Interface, Option<std::net::IpAddr>)>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `list` is a writable pointer; on success the kernel-side list is ours until
    // freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: `ifa_name` is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
        // SAFETY: `name` is NUL-terminated; if_nametoindex only reads it.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        let addr = if entry.ifa_addr.is_null() {
            None
        } else {
            // SAFETY: a non-null `ifa_addr` points to a sockaddr of the family it names; only
            // AF_INET and AF_INET6 are read, each within its own size.
            let family = unsafe { (*entry.ifa_addr).sa_family } as libc::c_int;
            match family {
                libc::AF_INET | libc::AF_INET6 => {
                    // SAFETY: as above; `sockaddr_storage` is read only as the family's type.
                    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
                    let len = if family == libc::AF_INET {
                        size_of::<libc::sockaddr_in>()
                    } else {
                        size_of::<libc::sockaddr_in6>()
                    };
                    // SAFETY: `ifa_addr` holds `len` readable bytes (its family's size), and
                    // `storage` has room for them.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            entry.ifa_addr.cast::<u8>(),
                            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                            len,
                        )
                    };
                    from_storage(&storage).map(|a| a.ip())
                }
                _ => None,
            }
        };
        out.push((
            Interface {
                name: name.to_string_lossy().into_owned(),
                index,
                loopback: entry.ifa_flags & libc::IFF_LOOPBACK as libc::c_uint != 0,
            },
            addr,
        ));
    }
    // SAFETY: `list` came from getifaddrs and is freed once; no reference into it remains.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// Creates a thread-local entry into the network namespace at `path` (`/run/netns/NAME`):
/// the calling thread moves there (`setns`), and sockets it creates from then on belong to
/// it. For tests that drive a client inside a namespace of their own.
pub fn enter_netns(path: &std::path::Path) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    // SAFETY: setns takes a descriptor we hold open across the call and a flag.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
