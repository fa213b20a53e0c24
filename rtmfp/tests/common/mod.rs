//! A deterministic two-endpoint harness: a virtual clock, a seeded network with loss,
//! duplication, reordering and an MTU, and no sockets or sleeps.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rtmfp::crypto::{DhGroup, NegotiationPolicy, PacketDecoder, PacketEncoder, PacketMode};
use rtmfp::endpoint::{Endpoint, EndpointEvent};
use rtmfp::session::{Role, Session, SessionConfig, SessionParams};
use rtmfp::startup::components::build_url_epd;
use rtmfp::startup::initiator::InitiatorConfig;
use rtmfp::startup::responder::{Responder, ResponderConfig};
use rtmfp::time::Instant;

/// Network impairments, each a probability in [0, 1] or a bound.
#[derive(Debug, Clone, Copy)]
pub struct Impairments {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplication: f64,
    /// Probability that a datagram gets extra delay (and so may be reordered).
    pub reorder: f64,
    /// One-way base delay.
    pub delay: Duration,
    /// Largest extra delay for reordered datagrams.
    pub reorder_delay: Duration,
    /// Datagrams larger than this are dropped.
    pub mtu: usize,
}

impl Default for Impairments {
    fn default() -> Self {
        Impairments {
            loss: 0.0,
            duplication: 0.0,
            reorder: 0.0,
            delay: Duration::from_millis(10),
            reorder_delay: Duration::from_millis(30),
            mtu: 1500,
        }
    }
}

/// Counters of what the network did.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub too_big: u64,
}

type Ep = Endpoint<ChaCha20Rng>;

/// Two endpoints, a virtual clock and the datagrams in flight.
pub struct Pair {
    pub now: Instant,
    pub server: Ep,
    pub client: Ep,
    pub server_addr: SocketAddr,
    pub client_addr: SocketAddr,
    pub net: Impairments,
    pub stats: NetStats,
    rng: ChaCha20Rng,
    /// (arrival time, sequence) → (destination, source, bytes).
    in_flight: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
    pub server_events: Vec<(u32, EndpointEvent)>,
    pub client_events: Vec<(u32, EndpointEvent)>,
}

/// Group 2 keeps the tests fast; the handshake tests cover the others.
pub fn fast_groups() -> Vec<DhGroup> {
    vec![DhGroup::Modp1024]
}

impl Pair {
    pub fn new(seed: u64, net: Impairments, policy: NegotiationPolicy) -> Pair {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let mut randomness = [0u8; 32];
        rng.fill_bytes(&mut randomness);
        let responder = Responder::new(
            ResponderConfig {
                groups: fast_groups(),
                policy,
            },
            secret,
            &randomness,
            Instant::ZERO,
        );
        let server = Endpoint::new(
            ChaCha20Rng::seed_from_u64(seed.wrapping_add(1)),
            Some(responder),
            InitiatorConfig {
                groups: fast_groups(),
                policy,
            },
            SessionConfig::default(),
        );
        let client = Endpoint::new(
            ChaCha20Rng::seed_from_u64(seed.wrapping_add(2)),
            None,
            InitiatorConfig {
                groups: fast_groups(),
                policy,
            },
            SessionConfig::default(),
        );
        Pair {
            now: Instant::from_millis(1_000),
            server,
            client,
            server_addr: "127.0.0.1:1935".parse().unwrap(),
            client_addr: "127.0.0.1:50000".parse().unwrap(),
            net,
            stats: NetStats::default(),
            rng,
            in_flight: BTreeMap::new(),
            seq: 0,
            server_events: Vec::new(),
            client_events: Vec::new(),
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        self.stats.sent += 1;
        if bytes.len() > self.net.mtu {
            self.stats.too_big += 1;
            return;
        }
        if self.chance(self.net.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.chance(self.net.duplication) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.net.delay;
            if self.chance(self.net.reorder) {
                let extra = self.rng.next_u64() % (self.net.reorder_delay.as_micros() as u64 + 1);
                delay += Duration::from_micros(extra);
            }
            self.seq += 1;
            self.in_flight
                .insert((self.now + delay, self.seq), (to, from, bytes.to_vec()));
        }
    }

    /// Moves every datagram each endpoint wants to send into the network.
    fn flush(&mut self) {
        let mut buf = vec![0u8; 8192];
        loop {
            let mut any = false;
            while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
                let bytes = buf[..t.len].to_vec();
                self.send(self.server_addr, t.destination, &bytes);
                any = true;
            }
            while let Some(t) = self.client.poll_transmit(self.now, &mut buf) {
                let bytes = buf[..t.len].to_vec();
                self.send(self.client_addr, t.destination, &bytes);
                any = true;
            }
            if !any {
                break;
            }
        }
    }

    fn collect_events(&mut self) {
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(e);
        }
        while let Some(e) = self.client.poll_event() {
            self.client_events.push(e);
        }
    }

    /// Advances to the next thing that happens (a delivery or a timer), at most until `limit`.
    /// Returns false when nothing is left to happen before `limit`.
    pub fn step(&mut self, limit: Instant) -> bool {
        self.flush();
        self.collect_events();
        let next_arrival = self.in_flight.keys().next().map(|k| k.0);
        let next_timer = [self.server.poll_timeout(), self.client.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = [next_arrival, next_timer].into_iter().flatten().min() else {
            return false;
        };
        if next > limit {
            self.now = limit;
            return false;
        }
        self.now = self.now.max(next);
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (to, from, mut bytes) = entry.remove();
            self.stats.delivered += 1;
            if to == self.server_addr {
                self.server.handle_datagram(self.now, from, &mut bytes);
            } else if to == self.client_addr {
                self.client.handle_datagram(self.now, from, &mut bytes);
            }
        }
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
        }
        if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
            self.client.handle_timeout(self.now);
        }
        self.flush();
        self.collect_events();
        true
    }

    /// Steps until `done` holds or `budget` of virtual time passes; answers whether it held.
    pub fn run_until(&mut self, budget: Duration, mut done: impl FnMut(&mut Pair) -> bool) -> bool {
        let limit = self.now + budget;
        let mut steps = 0u64;
        loop {
            if done(self) {
                return true;
            }
            steps += 1;
            assert!(steps < 5_000_000, "harness step bound exceeded");
            if !self.step(limit) {
                return done(self);
            }
        }
    }

    /// Opens a session from the client to the server; answers (client handle, server handle).
    pub fn connect(&mut self) -> (u32, u32) {
        let epd = build_url_epd(b"rtmfp://127.0.0.1/app");
        let server_addr = self.server_addr;
        let handle = self.client.connect(self.now, epd, None, &[server_addr]);
        let ok = self.run_until(Duration::from_secs(60), |p| {
            p.client_events
                .iter()
                .any(|(h, e)| *h == handle && matches!(e, EndpointEvent::Connected { .. }))
        });
        assert!(
            ok,
            "handshake did not complete; client events {:?}",
            self.client_events
        );
        let server_handle = self
            .server_events
            .iter()
            .find_map(|(h, e)| matches!(e, EndpointEvent::Accepted { .. }).then_some(*h))
            .expect("server accepted");
        (handle, server_handle)
    }
}

/// A URL EPD for tests.
pub fn url_epd() -> Vec<u8> {
    build_url_epd(b"rtmfp://127.0.0.1/app")
}

/// The far address of a [`keyed_session`].
pub fn keyed_far() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000))
}

/// A session opened at time zero without a handshake, with `key` as its startup-mode key in
/// both directions (so two sessions with their IDs swapped read each other's datagrams), its
/// far end at [`keyed_far`].
pub fn keyed_session(
    key: &[u8; 16],
    role: Role,
    near_session_id: u32,
    far_session_id: u32,
    config: SessionConfig,
) -> Session {
    Session::new(
        Instant::ZERO,
        SessionParams {
            role,
            near_session_id,
            far_session_id,
            far_address: keyed_far(),
            encoder: PacketEncoder::new(key, PacketMode::STARTUP),
            decoder: PacketDecoder::new(key, PacketMode::STARTUP),
            mobility_secret: [2; 32],
        },
        config,
    )
}
