//! Micro-benchmarks of the protocol core: packet parsing, packet crypto, AMF, and the responder
//! handshake. Run with `cargo bench -p benches`; figures go to docs/performance.md.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rtmfp::crypto::{
    DhGroup, DhKeyPair, NegotiationPolicy, PacketDecoder, PacketEncoder, PacketMode,
};
use rtmfp::ids::FlowId;
use rtmfp::startup::components::build_url_epd;
use rtmfp::startup::initiator::{Initiator, InitiatorConfig, StartupMessage};
use rtmfp::startup::responder::{HelloDisposition, KeyingDisposition, Responder, ResponderConfig};
use rtmfp::time::Instant;
use rtmfp::wire::{
    ChunkBody, ChunkIter, Fragment, Mode, PacketHeader, Reader, UserData, UserDataFlags, Writer,
};

const KEY: [u8; 16] = *b"0123456789abcdef";

/// A plain 1200-byte session packet: header, then User Data chunks of 100-byte messages.
fn plain_packet(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut w = Writer::new(&mut buf);
    let mut h = PacketHeader::new(Mode::Initiator);
    h.timestamp = Some(1234);
    h.timestamp_echo = Some(1200);
    h.emit(&mut w).unwrap();
    let data = [0x42u8; 100];
    let mut seq = 1;
    loop {
        let ud = UserData {
            flags: UserDataFlags {
                fragment: Fragment::Whole,
                abandoned: false,
                fin: false,
            },
            flow_id: FlowId(5),
            seq,
            fsn_offset: 1,
            options: None,
            data: &data,
        };
        if ud.emit(&mut w).is_err() {
            break;
        }
        seq += 1;
    }
    let n = w.position();
    buf.truncate(n);
    buf
}

fn wire(c: &mut Criterion) {
    let packet = plain_packet(1200);
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Bytes(packet.len() as u64));
    g.bench_function("parse_chunks_1200B", |b| {
        b.iter(|| {
            let mut r = Reader::new(black_box(&packet));
            let h = PacketHeader::parse(&mut r).unwrap();
            let mut n = 0usize;
            for c in ChunkIter::new(r.rest()) {
                n += c.is_ok() as usize;
            }
            black_box((h, n))
        })
    });
    g.finish();
}

fn crypto(c: &mut Criterion) {
    let mut g = c.benchmark_group("crypto");
    for size in [100usize, 1200] {
        let packet = plain_packet(size);
        let mut enc = PacketEncoder::new(&KEY, PacketMode::STARTUP);
        let mut datagram = vec![0u8; 1300];
        let n = enc.encode(7, &packet, &mut datagram).unwrap();
        datagram.truncate(n);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("encrypt_{size}B"), |b| {
            let mut out = vec![0u8; 1300];
            b.iter(|| black_box(enc.encode(7, black_box(&packet), &mut out).unwrap()))
        });
        g.bench_function(format!("decrypt_{size}B"), |b| {
            let mut dec = PacketDecoder::new(&KEY, PacketMode::STARTUP);
            b.iter_batched_ref(
                || datagram.clone(),
                |d| black_box(dec.decode(d).map(|p| p.packet.len()).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("session");
    let server: SocketAddr = "127.0.0.1:1935".parse().unwrap();
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let policy = NegotiationPolicy::FLASH_COMPATIBLE;
    let responder = Responder::new(
        ResponderConfig {
            groups: vec![DhGroup::Modp1024],
            policy,
        },
        [1; 32],
        &[2; 64],
        Instant::ZERO,
    );
    let now = Instant::from_millis(10);
    // One initiator's IIKeying, replayed against the responder: cookie check, parsing, one DH
    // key pair, the shared secret and the key derivation, as a server does per connect.
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut init = Initiator::new(
        now,
        InitiatorConfig {
            groups: vec![DhGroup::Modp1024],
            policy,
        },
        build_url_epd(b"rtmfp://127.0.0.1/"),
        None,
        &[server],
        2,
        &mut rng,
    );
    let tag = match init.poll_transmit(now).unwrap().1 {
        StartupMessage::IHello { tag, .. } => *tag,
        StartupMessage::IIKeying { .. } => unreachable!(),
    };
    let HelloDisposition::RHello { cookie, .. } =
        responder.on_ihello(now, &client, &[0x01, 0x0A], &tag)
    else {
        unreachable!()
    };
    init.on_rhello(
        now,
        server,
        &tag,
        &cookie,
        responder.certificate(),
        &mut rng,
    )
    .unwrap();
    let (cert, skic) = match init.poll_transmit(now).unwrap().1 {
        StartupMessage::IIKeying {
            certificate, skic, ..
        } => (certificate.to_vec(), skic.to_vec()),
        StartupMessage::IHello { .. } => unreachable!(),
    };
    g.bench_function("responder_handshake_dh_group2", |b| {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        b.iter(|| {
            let HelloDisposition::RHello { cookie, .. } =
                responder.on_ihello(now, &client, &[0x01, 0x0A], &tag)
            else {
                unreachable!()
            };
            let KeyingDisposition::Accept(req) =
                responder.on_iikeying(now, &client, 2, &cookie, &cert, &skic)
            else {
                unreachable!()
            };
            let pair = DhKeyPair::generate(req.group, &mut rng);
            black_box(responder.accept(&req, &pair).unwrap())
        })
    });
    g.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, wire, crypto, handshake);
}
use group::benches;
criterion_main!(benches);
