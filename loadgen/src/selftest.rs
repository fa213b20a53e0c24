//! `selftest`: the load generator's own ceiling on this machine, against a null sink and a null
//! source, so that a scenario's result can be told apart from the loadgen's limit.
//!
//! - **Send**: session packets (one User Data chunk of `size` bytes, RFC 7016 §2.3.11) each
//!   encrypted under a session key, as the loadgen's sessions do, and sent in batches
//!   (`sendmmsg`, GSO) to a socket drained by a helper thread.
//! - **Receive**: a helper thread floods the loadgen's socket with such packets, encrypted in
//!   advance; the loadgen receives them (`recvmmsg`, GRO), decrypts and parses each one, as its
//!   sessions do before reassembly and acknowledgement.
//!
//! The helper thread runs on another core when there is one; the measuring thread stays where
//! it was started (`taskset` it to the core a scenario would use).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use rtmfp::crypto::{PacketDecoder, PacketEncoder, PacketMode};
use rtmfp::ids::FlowId;
use rtmfp::wire::{
    ChunkBody, Fragment, Mode, Packet, PacketHeader, UserData, UserDataFlags, Writer,
};
use updraft_dataplane::io::{bind_udp, BatchIo, MmsgSocket, RxBatch, TxBatch};

use crate::report::{Report, Totals};
use crate::scenario::LoadError;

/// `selftest` settings.
#[derive(Debug, Clone)]
pub struct SelftestArgs {
    /// How long each half (send, then receive) runs.
    pub duration: Duration,
    /// Bytes of data per packet.
    pub size: usize,
}

/// The session key of the test packets (any 16 bytes: both ends are here).
const TEST_KEY: [u8; 16] = *b"updraft selftest";
/// The far session ID written into the test packets.
const TEST_SESSION: u32 = 0x5E1F_7E57;
/// Distinct packets the receive half's source cycles through.
const SOURCE_PACKETS: usize = 256;
/// Largest datagram: the loadgen's batch slot.
const MAX_DATAGRAM: usize = updraft_dataplane::io::SLOT_SIZE;

/// One plain session packet carrying `size` bytes of flow data with sequence number `seq`.
fn plain_packet(size: usize, seq: u64) -> Vec<u8> {
    let data = vec![0x5A; size];
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut w = Writer::new(&mut buf);
    let mut header = PacketHeader::new(Mode::Initiator);
    header.timestamp = Some(0);
    let chunk = UserData {
        flags: UserDataFlags {
            fragment: Fragment::Whole,
            abandoned: false,
            fin: false,
        },
        flow_id: FlowId(2),
        seq,
        fsn_offset: 1,
        options: None,
        data: &data,
    };
    if header.emit(&mut w).is_err() || chunk.emit(&mut w).is_err() {
        return Vec::new();
    }
    let n = w.position();
    buf.truncate(n);
    buf
}

/// Pins the calling helper thread to a core other than `avoid`, when the machine has one.
fn pin_elsewhere(avoid: Option<core_affinity::CoreId>) {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if let Some(core) = cores.into_iter().find(|c| Some(*c) != avoid) {
        core_affinity::set_for_current(core);
    }
}

/// The core the calling thread runs on now, if it is pinned to exactly one.
fn current_core() -> Option<core_affinity::CoreId> {
    let cores = core_affinity::get_core_ids()?;
    (cores.len() == 1).then(|| cores[0])
}

/// Runs the send half, then the receive half; `packets_out` and `packets_in` per second in
/// the report are the two ceilings (each half runs `duration`, which is `elapsed`).
pub fn selftest(args: &SelftestArgs) -> Result<Report, LoadError> {
    let size = args.size.clamp(1, 1100);
    let mut report = Report::new("selftest");
    report.show_progress();
    let here = current_core();

    // Send half: a null sink drains a socket on the other core.
    let sink = UdpSocket::bind("127.0.0.1:0")?;
    sink.set_read_timeout(Some(Duration::from_millis(50)))?;
    let sink_addr = sink.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let drain = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            pin_elsewhere(here);
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if sink.recv(&mut buf).is_ok() {
                    n += 1;
                }
            }
            n
        })
    };
    let mut socket = MmsgSocket::new(bind_udp(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Some(8 << 20),
    )?)?;
    let mut encoder = PacketEncoder::new(&TEST_KEY, PacketMode::STARTUP);
    let mut tx = TxBatch::default();
    let plain = plain_packet(size, 1);
    let start = WallInstant::now();
    let mut sent = 0u64;
    while start.elapsed() < args.duration {
        while !tx.is_full() {
            tx.push_with(|buf| {
                let n = encoder.encode(TEST_SESSION, &plain, buf).ok()?;
                Some((sink_addr, n))
            });
        }
        sent += tx.len() as u64;
        socket.send(&mut tx);
        report.sample(
            start.elapsed(),
            Totals {
                packets_out: sent,
                packets_in: 0,
                done: sent,
            },
        );
    }
    let send_time = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _sunk = drain.join().unwrap_or(0);

    // Receive half: a source on the other core floods our socket with encrypted packets.
    let mut socket = MmsgSocket::new(bind_udp(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Some(8 << 20),
    )?)?;
    socket.enable_gro();
    let target = socket.local_addr()?;
    let source_packets: Vec<Vec<u8>> = (0..SOURCE_PACKETS)
        .map(|i| {
            let plain = plain_packet(size, i as u64 + 1);
            let mut out = vec![0u8; MAX_DATAGRAM];
            let n = encoder.encode(TEST_SESSION, &plain, &mut out).unwrap_or(0);
            out.truncate(n);
            out
        })
        .collect();
    let datagram_len = source_packets.first().map_or(0, Vec::len) as u64;
    let packets = source_packets;
    let stop = Arc::new(AtomicBool::new(false));
    let source = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || -> std::io::Result<()> {
            pin_elsewhere(here);
            let mut out = MmsgSocket::new(bind_udp(SocketAddr::from(([127, 0, 0, 1], 0)), None)?)?;
            let mut tx = TxBatch::default();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                while !tx.is_full() {
                    tx.push(target, &packets[i % packets.len()]);
                    i += 1;
                }
                out.send(&mut tx);
            }
            Ok(())
        })
    };
    let mut decoder = PacketDecoder::new(&TEST_KEY, PacketMode::STARTUP);
    let mut rx = RxBatch::default();
    let (mut received, mut parsed) = (0u64, 0u64);
    let start = WallInstant::now();
    while start.elapsed() < args.duration {
        let n = socket.recv(&mut rx).unwrap_or(0);
        for i in 0..n {
            if let Some((_, _, bytes)) = rx.get_mut(i) {
                received += 1;
                if let Ok(d) = decoder.decode(bytes) {
                    if let Ok(p) = Packet::parse(d.packet) {
                        parsed += u64::from(p.chunks().next().is_some());
                    }
                }
            }
        }
        report.sample(
            send_time + start.elapsed(),
            Totals {
                packets_out: sent,
                packets_in: received,
                done: parsed,
            },
        );
    }
    let receive_time = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = source.join();
    report.finish_progress();

    // Both halves ran `duration`; the report's rates are per half.
    report.elapsed = send_time.max(receive_time);
    report.packets_out = sent;
    report.packets_in = parsed;
    report.bytes_out = sent * plain.len() as u64;
    report.bytes_in = received * datagram_len;
    report.expected = received;
    report.delivered = parsed;
    report.lost = received - parsed;
    Ok(report)
}
