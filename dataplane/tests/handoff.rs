//! Two workers on the in-memory backend: a datagram for worker 1's session that arrives at
//! worker 0 (a NAT rebinding, a changed RSS hash) is handed to worker 1 through the bounded
//! queue, and worker 1 answers it.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use rtmfp::crypto::{
    DirectionOptions, PacketDecoder, PacketEncoder, PacketMode, SessionKeys, DERIVED_LEN,
};
use rtmfp::session::SessionConfig;
use rtmfp::wire::{Chunk, ChunkBody, ChunkIter, Mode, PacketHeader, Ping, Reader, Writer};
use socket2::{Domain, Socket, Type};
use updraft_control::ids::{IdAllocator, SessionIdParts};
use updraft_control::ipc::{Down, SessionSecrets};
use updraft_dataplane::mem::{MemIo, MemPeer};
use updraft_dataplane::worker::{handoff_queues, Shared, Worker, WorkerSetup};

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

#[test]
fn a_datagram_at_the_wrong_worker_reaches_its_owner() {
    const WORKERS: usize = 2;
    let shared = Arc::new(Shared::new(WORKERS).unwrap());
    let (handoff_in, handoff_out) = handoff_queues(WORKERS);
    let mut workers = Vec::new();
    let mut peers: Vec<MemPeer> = Vec::new();
    let mut controls = Vec::new();
    for (i, handoff_in) in handoff_in.into_iter().enumerate() {
        let (io, peer) = MemIo::pair().unwrap();
        let (link_tx, links) = crossbeam_channel::bounded(1);
        let (worker_end, control_end) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        link_tx.send(worker_end).unwrap();
        workers.push(Worker::new(WorkerSetup {
            index: i as u8,
            io,
            handoff_in,
            handoff_out: handoff_out.clone(),
            links,
            shared: Arc::clone(&shared),
            session_config: SessionConfig::default(),
            seed: [i as u8; 32],
            epoch: std::time::Instant::now(),
            dump: None,
            media_in: crossbeam_channel::bounded(1).1,
            media_out: Vec::new(),
            lifetimes: Default::default(),
        }));
        peers.push(peer);
        controls.push(control_end);
    }
    // The control plane installs a session on worker 1.
    let session_id = IdAllocator::new(1).allocate().unwrap();
    assert_eq!(SessionIdParts::of(session_id).worker, 1);
    let client: SocketAddr = "192.0.2.7:4000".parse().unwrap();
    let install = Down::Install {
        session_id,
        far_session_id: 9,
        address: client,
        peer_id: [3; 32],
        secrets: SessionSecrets {
            keys: keys(),
            send: DirectionOptions::default(),
            receive: DirectionOptions::default(),
        },
    };
    let mut msg = Vec::new();
    install.encode(&mut msg).unwrap();
    (&controls[1]).write_all(&msg).unwrap();
    for w in workers.iter_mut() {
        w.turn().unwrap();
    }
    assert_eq!(shared.counters[1].load().sessions_open, 1);

    // The client pings, but its datagram lands on worker 0.
    let mut plain = [0u8; 64];
    let mut w = Writer::new(&mut plain);
    let mut header = PacketHeader::new(Mode::Initiator);
    header.timestamp = Some(1);
    header.emit(&mut w).unwrap();
    Ping {
        body: b"are you there",
    }
    .emit(&mut w)
    .unwrap();
    let n = w.position();
    let mut encoder = PacketEncoder::new(&keys().receive_key(), PacketMode::default());
    let mut datagram = vec![0u8; encoder.encoded_len(n)];
    let len = encoder
        .encode(session_id, &plain[..n], &mut datagram)
        .unwrap();
    peers[0].deliver(client, &datagram[..len]);
    for _ in 0..3 {
        for w in workers.iter_mut() {
            w.turn().unwrap();
        }
    }
    let (c0, c1) = (shared.counters[0].load(), shared.counters[1].load());
    assert_eq!((c0.handoff_out, c1.handoff_in), (1, 1));
    assert_eq!(
        c0.drop_unknown_session + c0.drop_malformed + c1.drop_malformed,
        0
    );
    // Worker 1 answers from its own socket with a Ping Reply echoing the body.
    assert!(peers[0].take_sent().is_empty());
    let sent = peers[1].take_sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (to, mut reply) = sent.into_iter().next().unwrap();
    assert_eq!(to, client);
    let mut decoder = PacketDecoder::new(&keys().send_key(), PacketMode::default());
    let decoded = decoder.decode(&mut reply).unwrap();
    assert_eq!(decoded.session_id, 9);
    let mut r = Reader::new(decoded.packet);
    PacketHeader::parse(&mut r).unwrap();
    let echoed = ChunkIter::new(r.rest())
        .any(|c| matches!(c, Ok(Chunk::PingReply(p)) if p.body == b"are you there"));
    assert!(echoed);
}
