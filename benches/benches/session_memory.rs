//! Memory per idle session in the data plane. Builds workers on the in-memory backend
//! ([`MemIo`]), installs 100,000 sessions through their control links exactly as the control
//! plane does (`Down::Install` over `SOCK_SEQPACKET`), and prints the live heap bytes per
//! session (counted by a wrapping global allocator), the allocations per session by size, and
//! the resident-set growth.
//!
//! A worker holds at most `SLOTS_PER_WORKER` (65,536) sessions, so the 100,000 sessions are
//! split evenly over two workers, driven in turn on this thread.
//!
//! Run with `cargo bench -p benches --bench session_memory`; figures go to docs/performance.md.
#![allow(unsafe_code)] // the counting global allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtmfp::crypto::{DirectionOptions, PacketDecoder, PacketEncoder, SessionKeys, DERIVED_LEN};
use rtmfp::session::flows::FlowSet;
use rtmfp::session::{Session, SessionConfig};
use socket2::{Domain, Socket, Type};
use updraft_control::ids::{IdAllocator, SLOTS_PER_WORKER};
use updraft_control::ipc::{Down, SessionSecrets, MAX_MESSAGE};
use updraft_dataplane::mem::MemIo;
use updraft_dataplane::worker::{handoff_queues, Shared, Worker, WorkerSetup};

/// Sessions installed in all.
const SESSIONS: usize = 100_000;
/// Longest the installation may take before the run gives up.
const DEADLINE: Duration = Duration::from_secs(120);
/// Size classes of the allocation histogram: powers of two up to 2^(CLASSES-1) bytes and more.
const CLASSES: usize = 17;

/// Live heap bytes, allocations, and a histogram of live allocations by size class (only
/// while `TRACK` is set).
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_BLOCKS: AtomicI64 = AtomicI64::new(0);
static TRACK: AtomicBool = AtomicBool::new(false);
static CLASS_BLOCKS: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];
static CLASS_BYTES: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];

/// The system allocator, counting.
struct Counting;

fn class(size: usize) -> usize {
    (usize::BITS - size.saturating_sub(1).leading_zeros()).min(CLASSES as u32 - 1) as usize
}

fn account(size: usize, sign: i64) {
    let bytes = sign * i64::try_from(size).unwrap_or(i64::MAX);
    LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed);
    LIVE_BLOCKS.fetch_add(sign, Ordering::Relaxed);
    if TRACK.load(Ordering::Relaxed) {
        CLASS_BLOCKS[class(size)].fetch_add(sign, Ordering::Relaxed);
        CLASS_BYTES[class(size)].fetch_add(bytes, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the `GlobalAlloc`
// contract; the counting touches only atomics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size(), 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on unchanged.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) };
        account(layout.size(), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` and `layout` come from this allocator, i.e. from `System`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(layout.size(), -1);
            account(new_size, 1);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The resident set size, in bytes, from /proc/self/status.
fn rss_bytes() -> Option<i64> {
    const KIB: i64 = 1024;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * KIB)
}

/// Any keys: the sessions are never used, only held.
fn keys() -> SessionKeys {
    SessionKeys {
        encrypt: [1; DERIVED_LEN],
        decrypt: [2; DERIVED_LEN],
        tx_hmac_key: [3; DERIVED_LEN],
        rx_hmac_key: [4; DERIVED_LEN],
        near_nonce: [5; DERIVED_LEN],
        far_nonce: [6; DERIVED_LEN],
    }
}

fn main() -> io::Result<()> {
    // `cargo bench` passes `--bench`; this binary takes no options.
    let workers = SESSIONS.div_ceil(SLOTS_PER_WORKER);
    let per_worker = SESSIONS / workers;
    let shared = Arc::new(Shared::new(workers)?);
    let (handoff_rx, handoff_tx) = handoff_queues(workers);
    let epoch = Instant::now();
    let mut set = Vec::new();
    let mut peers = Vec::new();
    for (i, handoff_in) in handoff_rx.into_iter().enumerate() {
        let index = u8::try_from(i).map_err(io::Error::other)?;
        let (io, peer) = MemIo::pair()?;
        let (link_tx, links) = crossbeam_channel::bounded(1);
        let (worker_end, control_end) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None)?;
        link_tx.send(worker_end).map_err(io::Error::other)?;
        control_end.set_nonblocking(true)?;
        let mut worker = Worker::new(WorkerSetup {
            index,
            io,
            handoff_in,
            handoff_out: handoff_tx.clone(),
            links,
            shared: Arc::clone(&shared),
            session_config: SessionConfig::default(),
            seed: [index; 32],
            epoch,
            dump: None,
            media_in: crossbeam_channel::bounded(1).1,
            media_out: Vec::new(),
            lifetimes: Default::default(),
        });
        // Attach the link (the worker says Hello and Resync) before counting.
        worker.turn()?;
        set.push((worker, control_end, IdAllocator::new(index)));
        peers.push(peer);
    }
    let mut scratch = vec![0u8; MAX_MESSAGE + 1];
    for (_, control_end, _) in &set {
        // Drain the Hello and Resync, so the links start empty.
        let mut reader = control_end;
        while reader.read(&mut scratch).is_ok() {}
    }
    let mut encoded = Vec::with_capacity(MAX_MESSAGE);

    let rss_before = rss_bytes();
    let bytes_before = LIVE_BYTES.load(Ordering::Relaxed);
    let blocks_before = LIVE_BLOCKS.load(Ordering::Relaxed);
    TRACK.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut n = 0;
    for (w, (worker, control_end, ids)) in set.iter_mut().enumerate() {
        for _ in 0..per_worker {
            let session_id = ids.allocate().ok_or_else(|| io::Error::other("no ID"))?;
            let msg = Down::Install {
                session_id,
                far_session_id: u32::try_from(n + 1).unwrap_or(u32::MAX),
                address: benches::client_address(n),
                peer_id: [7; 32],
                secrets: SessionSecrets {
                    keys: keys(),
                    send: DirectionOptions::default(),
                    receive: DirectionOptions::default(),
                },
            };
            encoded.clear();
            msg.encode(&mut encoded).map_err(io::Error::other)?;
            drop(msg);
            // The link holds a few hundred messages: let the worker read when it is full.
            loop {
                match control_end.send(&encoded) {
                    Ok(_) => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => worker.turn()?,
                    Err(e) => return Err(e),
                }
                if started.elapsed() > DEADLINE {
                    return Err(io::Error::other("installation too slow"));
                }
            }
            n += 1;
        }
        while shared.counters[w].load().sessions_open < per_worker as u64 {
            worker.turn()?;
            if started.elapsed() > DEADLINE {
                return Err(io::Error::other("installation too slow"));
            }
        }
    }
    // One more turn each, with nothing to do, so any deferred work is done.
    for (worker, _, _) in &mut set {
        worker.turn()?;
    }
    TRACK.store(false, Ordering::Relaxed);
    let took = started.elapsed();
    let bytes = LIVE_BYTES.load(Ordering::Relaxed) - bytes_before;
    let blocks = LIVE_BLOCKS.load(Ordering::Relaxed) - blocks_before;
    let rss = rss_before.zip(rss_bytes()).map(|(a, b)| b - a);
    let open: u64 = shared.counters.iter().map(|c| c.load().sessions_open).sum();
    let sent: usize = peers.iter().map(|p| p.take_sent().len()).sum();
    let total = SESSIONS as f64;

    let mut out = io::stdout().lock();
    writeln!(
        out,
        "sessions open: {open} over {workers} workers (installed in {:.2} s); datagrams sent: {sent}",
        took.as_secs_f64()
    )?;
    writeln!(
        out,
        "live heap: {bytes} B for {SESSIONS} sessions = {:.0} B per session, {:.1} allocations per session",
        bytes as f64 / total,
        blocks as f64 / total
    )?;
    match rss {
        Some(r) => writeln!(
            out,
            "RSS growth: {r} B = {:.0} B per session",
            r as f64 / total
        )?,
        None => writeln!(out, "RSS growth: /proc/self/status unreadable")?,
    }
    writeln!(
        out,
        "size_of: Session {} B, of which PacketEncoder {} B, PacketDecoder {} B, FlowSet {} B, \
         SessionConfig {} B",
        size_of::<Session>(),
        size_of::<PacketEncoder>(),
        size_of::<PacketDecoder>(),
        size_of::<FlowSet>(),
        size_of::<SessionConfig>(),
    )?;
    writeln!(
        out,
        "live allocations made while installing, by size class:"
    )?;
    writeln!(
        out,
        "{:>12} {:>12} {:>14} {:>14}",
        "size <=", "per session", "bytes", "B per session"
    )?;
    for c in 0..CLASSES {
        let b = CLASS_BLOCKS[c].load(Ordering::Relaxed);
        let by = CLASS_BYTES[c].load(Ordering::Relaxed);
        if b == 0 && by == 0 {
            continue;
        }
        let label = if c + 1 == CLASSES {
            "larger".to_string()
        } else {
            (1u64 << c).to_string()
        };
        writeln!(
            out,
            "{label:>12} {:>12.2} {by:>14} {:>14.0}",
            b as f64 / total,
            by as f64 / total
        )?;
    }
    if open != SESSIONS as u64 {
        return Err(io::Error::other("not every session was installed"));
    }
    Ok(())
}
