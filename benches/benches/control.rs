//! The control plane's cost of one complete server-side handshake, through
//! `updraft_control::handshake::Handshakes` exactly as the service drives it: `on_startup` for
//! the IHello (cookie and RHello), `on_startup` for the IIKeying (cookie check, certificate and
//! SKIC parsing, rate limit), `Responder::accept` with a key pair taken from a pool made ahead
//! of time (what `updraft_control::dh` does), and `Handshakes::complete` (RIKeying, RIKeying
//! memory). Also the cost of one key pair, which the pool pays off the packet path.
//!
//! Run with `cargo bench -p benches --bench control`; figures go to docs/performance.md.

use std::cell::Cell;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rtmfp::crypto::{DhGroup, DhKeyPair, NegotiationPolicy, PacketEncoder};
use rtmfp::endpoint::{startup_packet, FLASH_SIGNATURE};
use rtmfp::ids::SessionId;
use rtmfp::startup::components::build_url_epd;
use rtmfp::startup::initiator::{Initiator, InitiatorConfig, StartupMessage};
use rtmfp::startup::responder::{HelloDisposition, Responder};
use rtmfp::time::Instant;
use rtmfp::wire::{IHello, IIKeying};
use updraft_control::handshake::{Action, HandshakeLimits, Handshakes};
use updraft_control::service::responder_for;

/// The URL clients connect to (an ancillary-data EPD, RFC 7425 §4.4.2).
const SERVER_URL: &[u8] = b"rtmfp://127.0.0.1/live";
/// The server's identity seed.
const IDENTITY: [u8; 32] = [7; 32];
/// Distinct initiators (certificates and DH keys) per group; each iteration takes the next.
const CLIENTS: usize = 16;
/// Server key pairs made ahead of time per group, as the DH pool keeps them.
const POOL: usize = 64;
/// Session ID handed to `complete` (worker 0, generation 1, slot 1).
const SESSION_ID: u32 = 0x0001_0001;
/// Time between two simulated connects: 5,000 handshakes per second.
const ARRIVAL_MICROS: u64 = 200;

/// What one initiator puts in its startup packets, apart from the cookie.
struct ClientKeys {
    tag: Vec<u8>,
    certificate: Vec<u8>,
    skic: Vec<u8>,
    initiator_session_id: u32,
}

/// Runs initiator `i` up to its IIKeying against `responder` (outside any timing).
fn client_keys(responder: &Responder, group: DhGroup, epd: &[u8], i: usize) -> ClientKeys {
    let server: SocketAddr = "127.0.0.1:1935".parse().expect("literal address");
    let from = client_address(i as u64);
    let now = Instant::ZERO;
    let mut rng = ChaCha20Rng::seed_from_u64(1000 + i as u64);
    let initiator_session_id = u32::try_from(i + 1).unwrap_or(u32::MAX);
    let mut init = Initiator::new(
        now,
        InitiatorConfig {
            groups: vec![group],
            policy: NegotiationPolicy::FLASH_COMPATIBLE,
        },
        epd.to_vec(),
        None,
        &[server],
        initiator_session_id,
        &mut rng,
    );
    let Some((_, StartupMessage::IHello { tag, .. })) = init.poll_transmit(now) else {
        panic!("the initiator starts with an IHello")
    };
    let tag = tag.to_vec();
    let HelloDisposition::RHello { cookie, .. } = responder.on_ihello(now, &from, epd, &tag) else {
        panic!("IHello refused")
    };
    init.on_rhello(
        now,
        server,
        &tag,
        &cookie,
        responder.certificate(),
        &mut rng,
    )
    .expect("RHello accepted");
    let Some((
        _,
        StartupMessage::IIKeying {
            certificate, skic, ..
        },
    )) = init.poll_transmit(now)
    else {
        panic!("the initiator answers an RHello with an IIKeying")
    };
    ClientKeys {
        tag,
        certificate: certificate.to_vec(),
        skic: skic.to_vec(),
        initiator_session_id,
    }
}

/// A distinct client address for each `n`: 10.0.0.0/8, port 1024 and up.
fn client_address(n: u64) -> SocketAddr {
    const HOSTS: u64 = 1 << 24;
    const FIRST_PORT: u64 = 1024;
    let host = (n % HOSTS) as u32;
    let port = (FIRST_PORT + n / HOSTS) as u16;
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from((10 << 24) | host)), port)
}

/// One connect as the server receives it: the IHello and IIKeying datagrams from one address.
struct Connect {
    now: Instant,
    from: SocketAddr,
    ihello: Vec<u8>,
    iikeying: Vec<u8>,
}

/// Builds connect `n` with the keys of client `n % CLIENTS`, a fresh address and the cookie
/// the server gives that address (cookies are stateless, so asking the responder for one
/// leaves no trace in `Handshakes`).
fn connect(responder: &Responder, epd: &[u8], clients: &[ClientKeys], n: u64) -> Connect {
    let c = &clients[(n % clients.len() as u64) as usize];
    let now = Instant::from_micros(n * ARRIVAL_MICROS);
    let from = client_address(n);
    let HelloDisposition::RHello { cookie, .. } = responder.on_ihello(now, &from, epd, &c.tag)
    else {
        panic!("IHello refused")
    };
    let mut enc = PacketEncoder::startup();
    let ihello = startup_packet(&mut enc, now, 0, &IHello { epd, tag: &c.tag }).expect("fits");
    let iikeying = startup_packet(
        &mut enc,
        now,
        0,
        &IIKeying {
            initiator_session_id: SessionId(c.initiator_session_id),
            cookie_echo: &cookie,
            certificate: &c.certificate,
            skic: &c.skic,
            signature: FLASH_SIGNATURE,
        },
    )
    .expect("fits");
    Connect {
        now,
        from,
        ihello,
        iikeying,
    }
}

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("control/handshake");
    // Hundreds of microseconds per iteration: flat sampling with few samples.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(20);
    let epd = build_url_epd(SERVER_URL);
    for (name, group) in [
        ("group2", DhGroup::Modp1024),
        ("group14", DhGroup::Modp2048),
    ] {
        let responder = Arc::new(responder_for(IDENTITY));
        let clients: Vec<ClientKeys> = (0..CLIENTS)
            .map(|i| client_keys(&responder, group, &epd, i))
            .collect();
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let pool: Vec<DhKeyPair> = (0..POOL)
            .map(|_| DhKeyPair::generate(group, &mut rng))
            .collect();
        // Limits that never refuse: every iteration is a complete handshake.
        let limits = HandshakeLimits {
            rate: f64::MAX,
            burst: f64::MAX,
            max_sessions: usize::MAX,
        };
        let mut server = Handshakes::new(Arc::clone(&responder), limits);
        let next = Cell::new(0u64);
        let mut out = Vec::new();
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    next.set(next.get() + 1);
                    connect(&responder, &epd, &clients, next.get())
                },
                |mut connect| {
                    out.clear();
                    server.on_startup(connect.now, 0, connect.from, &mut connect.ihello, &mut out);
                    let Some(Action::Transmit { .. }) = out.pop() else {
                        panic!("no RHello")
                    };
                    server.on_startup(
                        connect.now,
                        0,
                        connect.from,
                        &mut connect.iikeying,
                        &mut out,
                    );
                    let Some(Action::Compute(request)) = out.pop() else {
                        panic!("IIKeying not accepted")
                    };
                    let pair = &pool[(next.get() % POOL as u64) as usize];
                    let result = server.responder().accept(&request, pair);
                    let keyed = server.complete(connect.now, &request, result, Some(SESSION_ID));
                    black_box(keyed.expect("keyed"))
                },
                BatchSize::SmallInput,
            )
        });
        let stats = server.stats();
        assert_eq!(stats.completed, stats.iikeying, "every IIKeying keyed");
        assert_eq!(
            stats.repeated, 0,
            "nothing answered from the RIKeying memory"
        );
        // What the pool pays per pair, off the packet path.
        g.bench_function(format!("keypair_{name}"), |b| {
            b.iter(|| black_box(DhKeyPair::generate(group, &mut rng)))
        });
    }
    g.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! {
        name = benches;
        config = benches::config();
        targets = handshake
    }
}
use group::benches;
criterion_main!(benches);
