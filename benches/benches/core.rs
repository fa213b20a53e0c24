//! Micro-benchmarks of the protocol core: packet parsing, packet crypto, AMF, and the responder
//! handshake. Run with `cargo bench -p benches -- --warm-up-time 1 --measurement-time 3`;
//! figures go to docs/performance.md.

use std::borrow::Cow;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rtmfp::amf::{Object, Value};
use rtmfp::crypto::{
    checksum, encrypt_cbc_zero_iv_many, encrypt_cbc_zero_iv_many_with, finish_sealing,
    Aes128EncKey, Backend, CbcJob, DhGroup, DhKeyPair, HmacMode, NegotiationPolicy, PacketDecoder,
    PacketEncoder, PacketMode, DEFAULT_HMAC_LEN, SSID_LEN,
};
use rtmfp::flash::command::{names, Command, NetCommand, ObjectEncoding};
use rtmfp::flash::message::TcMessage;
use rtmfp::flow::options::OPTION_METADATA;
use rtmfp::flow::payload::Payload;
use rtmfp::ids::FlowId;
use rtmfp::session::flows::SendOptions;
use rtmfp::session::{Role, Session, SessionConfig, SessionParams};
use rtmfp::startup::components::build_url_epd;
use rtmfp::startup::initiator::{Initiator, InitiatorConfig, StartupMessage};
use rtmfp::startup::responder::{
    HelloDisposition, KeyingDisposition, KeyingRequest, Responder, ResponderConfig,
};
use rtmfp::time::Instant;
use rtmfp::wire::{
    write_option, ChunkBody, ChunkIter, Fragment, Mode, PacketHeader, RangeAck, Reader, UserData,
    UserDataFlags, Writer,
};

/// AES-128 session key used by the crypto benchmarks.
const KEY: [u8; 16] = *b"0123456789abcdef";
/// HMAC-SHA256 key used by the HMAC-mode benchmarks.
const HMAC_KEY: [u8; 32] = [0x5A; 32];
/// Size of the media messages that fill the benchmark packets.
const MESSAGE_LEN: usize = 100;
/// User Data chunks in the 1200-byte benchmark packet: 11 of 100-byte messages, one of 11 bytes.
const CHUNKS_IN_1200B: usize = 12;
/// Room for any encrypted datagram of these benchmarks (1200 B + SSID, SSEQ, padding, HMAC).
const DATAGRAM_CAPACITY: usize = 1300;
/// Far session ID written into the benchmark datagrams.
const FAR_SESSION_ID: u32 = 7;

/// A plain session packet of exactly `len` bytes: header with timestamp and echo, then User
/// Data chunks of 100-byte messages, the last one shortened or lengthened to fill the packet.
fn plain_packet(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut w = Writer::new(&mut buf);
    let mut h = PacketHeader::new(Mode::Initiator);
    h.timestamp = Some(1234);
    h.timestamp_echo = Some(1200);
    h.emit(&mut w).unwrap();
    let data = [0x42u8; 2 * MESSAGE_LEN];
    let mut seq = 1;
    while w.position() < len {
        let mut ud = UserData {
            flags: UserDataFlags {
                fragment: Fragment::Whole,
                abandoned: false,
                fin: false,
            },
            flow_id: FlowId(5),
            seq,
            fsn_offset: 1,
            options: None,
            data: &[],
        };
        let overhead = ud.encoded_len();
        let room = (len - w.position()).saturating_sub(overhead);
        // A whole message if another chunk still fits after it, else everything that is left.
        let take = if room >= MESSAGE_LEN + overhead {
            MESSAGE_LEN
        } else {
            room
        };
        ud.data = &data[..take];
        ud.emit(&mut w).unwrap();
        seq += 1;
    }
    let n = w.position();
    assert_eq!(n, len, "benchmark packet size");
    buf
}

/// Parses a plain packet the way the session does: header, then every chunk.
fn parse_packet(packet: &[u8]) -> (PacketHeader, usize) {
    let mut r = Reader::new(packet);
    let h = PacketHeader::parse(&mut r).unwrap();
    let mut n = 0usize;
    for c in ChunkIter::new(r.rest()) {
        n += usize::from(c.is_ok());
    }
    (h, n)
}

fn wire(c: &mut Criterion) {
    let packet = plain_packet(1200);
    assert_eq!(parse_packet(&packet).1, CHUNKS_IN_1200B, "chunks parsed");
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Bytes(packet.len() as u64));
    // The null-cipher variant of crypto/decrypt_then_parse_1200B.
    g.bench_function("parse_chunks_1200B", |b| {
        b.iter(|| black_box(parse_packet(black_box(&packet))))
    });
    g.finish();
}

/// The HMAC mode a session negotiates with an rtmfp-cpp peer: 16-byte trailer and SSEQ.
fn hmac_mode() -> PacketMode {
    PacketMode {
        hmac: Some(HmacMode::new(HMAC_KEY, DEFAULT_HMAC_LEN).unwrap()),
        sseq: true,
    }
}

/// One encrypted datagram of `packet` under `mode`.
fn encrypt(mode: PacketMode, packet: &[u8]) -> Vec<u8> {
    let mut enc = PacketEncoder::new(&KEY, mode);
    let mut datagram = vec![0u8; DATAGRAM_CAPACITY];
    let n = enc.encode(FAR_SESSION_ID, packet, &mut datagram).unwrap();
    datagram.truncate(n);
    datagram
}

fn crypto(c: &mut Criterion) {
    let mut g = c.benchmark_group("crypto");
    for size in [100usize, 1200] {
        let packet = plain_packet(size);
        let datagram = encrypt(PacketMode::STARTUP, &packet);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("checksum_{size}B"), |b| {
            b.iter(|| black_box(checksum(black_box(&packet))))
        });
        g.bench_function(format!("encrypt_{size}B"), |b| {
            let mut enc = PacketEncoder::new(&KEY, PacketMode::STARTUP);
            let mut out = vec![0u8; DATAGRAM_CAPACITY];
            b.iter(|| black_box(enc.encode(FAR_SESSION_ID, black_box(&packet), &mut out)))
        });
        g.bench_function(format!("decrypt_{size}B"), |b| {
            let mut dec = PacketDecoder::new(&KEY, PacketMode::STARTUP);
            // Decryption is in place: every iteration gets a fresh copy, made outside the timing.
            b.iter_batched_ref(
                || datagram.clone(),
                |d| black_box(dec.decode(d).map(|p| p.packet.len()).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }

    let packet = plain_packet(1200);
    let datagram = encrypt(PacketMode::STARTUP, &packet);
    let mut check = datagram.clone();
    let decoded = PacketDecoder::new(&KEY, PacketMode::STARTUP)
        .decode(&mut check)
        .unwrap();
    assert_eq!(
        parse_packet(decoded.packet).1,
        CHUNKS_IN_1200B,
        "chunks parsed"
    );
    g.throughput(Throughput::Bytes(packet.len() as u64));
    g.bench_function("decrypt_then_parse_1200B", |b| {
        let mut dec = PacketDecoder::new(&KEY, PacketMode::STARTUP);
        b.iter_batched_ref(
            || datagram.clone(),
            |d| black_box(parse_packet(dec.decode(d).unwrap().packet)),
            BatchSize::SmallInput,
        )
    });

    let datagram = encrypt(hmac_mode(), &packet);
    g.bench_function("encrypt_hmac16_sseq_1200B", |b| {
        let mut enc = PacketEncoder::new(&KEY, hmac_mode());
        let mut out = vec![0u8; DATAGRAM_CAPACITY];
        b.iter(|| black_box(enc.encode(FAR_SESSION_ID, black_box(&packet), &mut out)))
    });
    g.bench_function("decrypt_hmac16_sseq_1200B", |b| {
        // The anti-replay window refuses a second copy of one SSEQ, so every iteration gets a
        // fresh decoder as well as a fresh datagram, both made outside the timing.
        let dec = PacketDecoder::new(&KEY, hmac_mode());
        b.iter_batched_ref(
            || (dec.clone(), datagram.clone()),
            |(dec, d)| black_box(dec.decode(d).map(|p| p.packet.len()).unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Subscribers of one live stream served by one core in the fanout benchmark: one packet each,
/// every one under its own session key.
const FANOUT_SUBSCRIBERS: usize = 64;

/// Live-stream fanout: one packet encrypted for each of 64 subscribers with distinct keys, one at
/// a time with the `cbc` crate (as `PacketEncoder` does) against the multi-buffer kernel on every
/// backend this CPU has. The throughput counts the bytes of all 64 packets.
fn cbc_encrypt_fanout(c: &mut Criterion) {
    use aes::cipher::{block_padding::NoPadding, BlockEncryptMut, InnerIvInit, KeyInit};
    type CbcEncryptor = cbc::Encryptor<aes::Aes128Enc>;
    const ZERO_IV: [u8; 16] = [0; 16];

    let raw_keys: Vec<[u8; 16]> = (0..FANOUT_SUBSCRIBERS)
        .map(|i| {
            let mut key = KEY;
            key[0] = i as u8;
            key
        })
        .collect();
    let ciphers: Vec<aes::Aes128Enc> = raw_keys
        .iter()
        .map(|k| aes::Aes128Enc::new(k.into()))
        .collect();
    let keys: Vec<Aes128EncKey> = raw_keys.iter().map(Aes128EncKey::new).collect();

    let mut g = c.benchmark_group("crypto/cbc_encrypt_fanout");
    // 100 B and 1200 B packets, padded to the cipher block as the packet encoder pads them.
    for (size, padded) in [(100usize, 112usize), (1200, 1200)] {
        let mut buffers = vec![vec![0x42u8; padded]; FANOUT_SUBSCRIBERS];
        g.throughput(Throughput::Bytes((padded * FANOUT_SUBSCRIBERS) as u64));
        g.bench_function(format!("serial_{size}B_x{FANOUT_SUBSCRIBERS}"), |b| {
            b.iter(|| {
                for (cipher, buf) in ciphers.iter().zip(&mut buffers) {
                    CbcEncryptor::inner_iv_init(cipher.clone(), &ZERO_IV.into())
                        .encrypt_padded_mut::<NoPadding>(buf, padded)
                        .unwrap();
                }
                black_box(&mut buffers);
            })
        });
        for backend in Backend::ALL.into_iter().filter(|b| b.is_available()) {
            let name = format!("multibuf_{}_{size}B_x{FANOUT_SUBSCRIBERS}", backend.name());
            g.bench_function(name, |b| {
                b.iter(|| {
                    let mut jobs: Vec<CbcJob<'_>> = keys
                        .iter()
                        .zip(&mut buffers)
                        .map(|(key, data)| CbcJob { key, data })
                        .collect();
                    encrypt_cbc_zero_iv_many_with(backend, black_box(&mut jobs)).unwrap();
                })
            });
        }
    }
    g.finish();
}

/// A `connect` TC message as Flash Player sends it: AMF0 command, the properties object with
/// the members Flash fills in, no further arguments.
fn connect_message() -> Vec<u8> {
    let member = |name: &'static str, value: Value<'static>| (Cow::Borrowed(name), value);
    let properties = Object::anonymous(vec![
        member("app", Value::str("live")),
        member("flashVer", Value::str("WIN 32,0,0,465")),
        member(
            "swfUrl",
            Value::str("https://media.example.com/player/player.swf"),
        ),
        member("tcUrl", Value::str("rtmfp://media.example.com/live")),
        member("fpad", Value::Boolean(false)),
        member("capabilities", Value::Number(239.0)),
        member("audioCodecs", Value::Number(3575.0)),
        member("videoCodecs", Value::Number(252.0)),
        member("videoFunction", Value::Number(1.0)),
        member(
            "pageUrl",
            Value::str("https://media.example.com/watch/index.html"),
        ),
        member("objectEncoding", Value::Number(3.0)),
    ]);
    Command::new(names::CONNECT, 1.0, Value::Object(properties), Vec::new())
        .to_message(ObjectEncoding::Amf0, 0)
        .unwrap()
}

fn amf(c: &mut Criterion) {
    let message = connect_message();
    let mut g = c.benchmark_group("amf");
    g.throughput(Throughput::Bytes(message.len() as u64));
    g.bench_function("decode_connect", |b| {
        b.iter(|| {
            let msg = TcMessage::parse(black_box(&message)).unwrap();
            let cmd = Command::parse(&msg).unwrap();
            let NetCommand::Connect(connect) = cmd.net_command().unwrap() else {
                unreachable!("not a connect")
            };
            black_box((
                connect.app().map(str::len),
                connect.tc_url().map(str::len),
                connect.object_encoding(),
            ))
        })
    });
    g.finish();
}

/// A responder and one initiator's IHello tag, certificate and SKIC for `group`: what a server
/// receives per connect, ready to be replayed.
struct HandshakeFixture {
    responder: Responder,
    client: SocketAddr,
    now: Instant,
    epd: Vec<u8>,
    tag: Vec<u8>,
    cert: Vec<u8>,
    skic: Vec<u8>,
}

/// The URL the initiator connects to; its IHello carries it as an ancillary-data EPD
/// (RFC 7425 §4.4.2).
const SERVER_URL: &[u8] = b"rtmfp://127.0.0.1/live";
/// The initiator's session ID in IIKeying.
const INITIATOR_SESSION_ID: u32 = 2;

impl HandshakeFixture {
    fn new(group: DhGroup) -> Self {
        let server: SocketAddr = "127.0.0.1:1935".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let policy = NegotiationPolicy::FLASH_COMPATIBLE;
        let responder = Responder::new(
            ResponderConfig {
                groups: vec![group],
                policy,
            },
            [1; 32],
            &[2; 32],
            Instant::ZERO,
        );
        let now = Instant::from_millis(10);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let epd = build_url_epd(SERVER_URL);
        let mut init = Initiator::new(
            now,
            InitiatorConfig {
                groups: vec![group],
                policy,
            },
            epd.clone(),
            None,
            &[server],
            INITIATOR_SESSION_ID,
            &mut rng,
        );
        let tag = match init.poll_transmit(now).unwrap().1 {
            StartupMessage::IHello { tag, .. } => tag.to_vec(),
            StartupMessage::IIKeying { .. } => unreachable!("IIKeying before RHello"),
        };
        let HelloDisposition::RHello { cookie, .. } = responder.on_ihello(now, &client, &epd, &tag)
        else {
            unreachable!("IHello refused")
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
            StartupMessage::IHello { .. } => unreachable!("IHello after RHello"),
        };
        HandshakeFixture {
            responder,
            client,
            now,
            epd,
            tag,
            cert,
            skic,
        }
    }

    /// The responder's cheap steps: IHello to a fresh cookie, then the IIKeying check.
    fn keying_request(&self) -> KeyingRequest {
        let HelloDisposition::RHello { cookie, .. } =
            self.responder
                .on_ihello(self.now, &self.client, &self.epd, &self.tag)
        else {
            unreachable!("IHello refused")
        };
        let KeyingDisposition::Accept(req) = self.responder.on_iikeying(
            self.now,
            &self.client,
            INITIATOR_SESSION_ID,
            &cookie,
            &self.cert,
            &self.skic,
        ) else {
            unreachable!("IIKeying refused")
        };
        req
    }
}

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("session");
    // Milliseconds per iteration: flat sampling with few samples keeps the run short.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(20);
    for (name, group) in [
        ("group2", DhGroup::Modp1024),
        ("group14", DhGroup::Modp2048),
    ] {
        let fixture = HandshakeFixture::new(group);
        // Per connect: cookie, IIKeying parsing, a fresh DH key pair, the shared secret and the
        // key derivation.
        g.bench_function(format!("responder_handshake_dh_{name}"), |b| {
            let mut rng = ChaCha20Rng::seed_from_u64(2);
            b.iter(|| {
                let req = fixture.keying_request();
                let pair = DhKeyPair::generate(req.group, &mut rng);
                black_box(fixture.responder.accept(&req, &pair).unwrap())
            })
        });
        // The same with the key pair made ahead of time (a pool filled off the packet path):
        // one modexp per connect instead of two.
        g.bench_function(format!("responder_handshake_pooled_pair_{name}"), |b| {
            let pair = DhKeyPair::generate(group, &mut ChaCha20Rng::seed_from_u64(3));
            b.iter(|| {
                let req = fixture.keying_request();
                black_box(fixture.responder.accept(&req, &pair).unwrap())
            })
        });
    }
    g.finish();
}

/// Subscribers of the session-path fanout benchmark: enough that their state does not stay in
/// the core's private caches, as in a dense server.
const PATH_SUBSCRIBERS: usize = 1000;
/// Datagrams encrypted together, as the worker does per send batch (`updraft_dataplane::io::BATCH`).
const PATH_BATCH: usize = 64;
/// Room for one datagram of the session path.
const PATH_DATAGRAM: usize = 1500;
/// The fanout benchmark's message interval: a 2 Mbit/s stream of 1100-byte messages.
const PATH_INTERVAL: Duration = Duration::from_micros(4400);
/// Flash message header in front of each subscriber's copy: type and rebased timestamp.
const PATH_HEAD: [u8; 5] = [0x09, 0, 0, 0, 0];
/// Lifetime of each media message (partial reliability), as the worker gives video.
const PATH_LIFETIME: Duration = Duration::from_secs(3);
/// The receive window the far end advertises, in 1024-byte blocks.
const PATH_WINDOW_BLOCKS: u64 = 1024;

/// One subscriber of the session-path benchmark: the server's session, its media flow (beside
/// an idle one, and an idle flow from the client), and the far end's encoder for the
/// acknowledgements it sends.
struct PathSubscriber {
    session: Session,
    flow: FlowId,
    far: PacketEncoder,
    acked: u64,
    ack: Vec<u8>,
}

impl PathSubscriber {
    fn new(i: usize) -> PathSubscriber {
        let mut send = KEY;
        send[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let mut receive = send;
        receive[15] ^= 0xFF;
        let mut session = Session::new(
            Instant::ZERO,
            SessionParams {
                role: Role::Responder,
                near_session_id: u32::try_from(i + 1).unwrap(),
                far_session_id: FAR_SESSION_ID,
                far_address: SocketAddr::from(([127, 0, 0, 1], 40000)),
                encoder: PacketEncoder::new(&send, PacketMode::STARTUP),
                decoder: PacketDecoder::new(&receive, PacketMode::STARTUP),
                mobility_secret: [2; 32],
            },
            SessionConfig::default(),
        );
        // The NetConnection's flow, idle while the stream plays, as in a server's sessions.
        session.open_flow(b"TC\x04\x00\x00", None).unwrap();
        let flow = session.open_flow(b"TC\x04\x00\x01", None).unwrap();
        let mut sub = PathSubscriber {
            session,
            flow,
            far: PacketEncoder::new(&receive, PacketMode::STARTUP),
            acked: 0,
            ack: Vec::with_capacity(PATH_DATAGRAM),
        };
        sub.open_client_flow();
        sub
    }

    /// The client's NetConnection flow, as a server's session has one: a message on it,
    /// received, taken and acknowledged, after which it stays idle.
    fn open_client_flow(&mut self) {
        let mut opts = [0u8; 16];
        let mut w = Writer::new(&mut opts);
        write_option(&mut w, OPTION_METADATA, b"TC\x04\x00\x00").unwrap();
        let opts_len = w.position();
        let mut plain = [0u8; PATH_DATAGRAM];
        let mut w = Writer::new(&mut plain);
        let mut header = PacketHeader::new(Mode::Initiator);
        header.timestamp = Some(0);
        header.emit(&mut w).unwrap();
        UserData {
            flags: UserDataFlags {
                fragment: Fragment::Whole,
                abandoned: false,
                fin: false,
            },
            flow_id: FlowId(2),
            seq: 1,
            fsn_offset: 1,
            options: Some(&opts[..opts_len]),
            data: b"\x14\x00\x00\x00\x00connect",
        }
        .emit(&mut w)
        .unwrap();
        let len = w.position();
        let mut datagram = vec![0u8; PATH_DATAGRAM];
        let n = self
            .far
            .encode(self.session.near_session_id(), &plain[..len], &mut datagram)
            .unwrap();
        let from = self.session.far_address();
        self.session
            .handle_datagram(Instant::ZERO, from, &mut datagram[..n])
            .unwrap();
        while self.session.poll_event().is_some() {}
        let mut out = [0u8; PATH_DATAGRAM];
        while self
            .session
            .poll_transmit(Instant::ZERO, &mut out)
            .is_some()
        {}
    }

    /// The far end's Range Ack of every message so far (one datagram per message of this
    /// benchmark), encrypted as it would arrive.
    fn make_ack(&mut self, now: Instant) {
        let mut plain = [0u8; PATH_DATAGRAM];
        let mut w = Writer::new(&mut plain);
        let mut header = PacketHeader::new(Mode::Initiator);
        header.timestamp = Some(rtmfp::session::clock::timestamp(now));
        header.emit(&mut w).unwrap();
        RangeAck::emit_from_ranges(
            &mut w,
            self.flow,
            PATH_WINDOW_BLOCKS,
            self.acked,
            &[],
            false,
        )
        .unwrap();
        let len = w.position();
        self.ack.resize(PATH_DATAGRAM, 0);
        let n = self
            .far
            .encode(self.session.near_session_id(), &plain[..len], &mut self.ack)
            .unwrap();
        self.ack.truncate(n);
    }
}

/// The server's whole per-subscriber path of a live stream's fanout, as the worker runs it:
/// each subscriber's acknowledgement is received, one shared message is queued on every
/// subscriber's flow, every session is polled for datagrams until it has none (the worker's
/// loop) and its next timeout asked, and the datagrams are encrypted 64 at a time with the
/// multi-buffer kernel. The far ends' acknowledgements are made outside the measured
/// time; sockets are not involved (their cost is measured end to end by the loadgen).
fn fanout_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    g.sample_size(30);
    for size in [100usize, 1100] {
        let body: Arc<[u8]> = vec![0x42u8; size].into();
        let mut subs: Vec<PathSubscriber> =
            (0..PATH_SUBSCRIBERS).map(PathSubscriber::new).collect();
        let mut bufs = vec![[0u8; PATH_DATAGRAM]; PATH_BATCH];
        let mut spare = [0u8; PATH_DATAGRAM];
        let mut now = Instant::ZERO;
        g.throughput(Throughput::Elements(PATH_SUBSCRIBERS as u64));
        g.bench_function(format!("session_path_{size}B_x{PATH_SUBSCRIBERS}"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    now = now + PATH_INTERVAL;
                    for s in &mut subs {
                        s.make_ack(now);
                    }
                    let start = std::time::Instant::now();
                    for s in &mut subs {
                        let from = s.session.far_address();
                        s.session.handle_datagram(now, from, &mut s.ack).unwrap();
                    }
                    for s in &mut subs {
                        let payload = Payload::new(&PATH_HEAD, Arc::clone(&body), 0..size).unwrap();
                        let expiry = Some(now + PATH_LIFETIME);
                        s.session
                            .send_payload(now, s.flow, payload, SendOptions { expiry })
                            .unwrap();
                    }
                    for batch in subs.chunks_mut(PATH_BATCH) {
                        let mut keys = Vec::with_capacity(PATH_BATCH);
                        let mut lens = [0usize; PATH_BATCH];
                        for ((s, buf), len) in batch.iter_mut().zip(&mut bufs).zip(&mut lens) {
                            // Keys pair with buffers by position: every subscriber has one.
                            let (t, key) = s
                                .session
                                .poll_transmit_deferred(now, buf)
                                .expect("one datagram per subscriber");
                            *len = t.len;
                            keys.push(key.unwrap());
                            s.acked += 1;
                            // As the worker does: poll until the session has nothing more, then
                            // re-arm its timer.
                            assert!(s.session.poll_transmit_deferred(now, &mut spare).is_none());
                            black_box(s.session.poll_timeout());
                        }
                        let mut jobs: Vec<CbcJob<'_>> = keys
                            .iter()
                            .zip(bufs.iter_mut().zip(lens))
                            .map(|(key, (buf, len))| CbcJob {
                                key,
                                data: &mut buf[SSID_LEN..len],
                            })
                            .collect();
                        encrypt_cbc_zero_iv_many(&mut jobs).unwrap();
                        for (buf, len) in bufs.iter_mut().zip(lens).take(keys.len()) {
                            finish_sealing(&mut buf[..len]).unwrap();
                        }
                    }
                    spent += start.elapsed();
                }
                spent
            })
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
        targets = wire, crypto, cbc_encrypt_fanout, fanout_path, amf, handshake
    }
}
use group::benches;
criterion_main!(benches);
