//! Three endpoints on a virtual network: P2P introduction through a server (Redirect and
//! Forwarded IHello, RFC 7016 §3.5.1.4–§3.5.1.5), and glare (RFC 7016 §3.5.1.3).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rtmfp::crypto::{DhGroup, NegotiationPolicy};
use rtmfp::endpoint::{Endpoint, EndpointEvent};
use rtmfp::ids::PeerId;
use rtmfp::session::flows::SendOptions;
use rtmfp::session::{Event, SessionConfig};
use rtmfp::startup::components::{build_fingerprint_epd, build_url_epd};
use rtmfp::startup::initiator::InitiatorConfig;
use rtmfp::startup::responder::{Responder, ResponderConfig};
use rtmfp::time::Instant;
use rtmfp::wire::{Address, AddressOrigin};

type Ep = Endpoint<ChaCha20Rng>;
/// A node: its address, its endpoint, and the events it produced.
type Node = (SocketAddr, Ep, Vec<(u32, EndpointEvent)>);

struct Net {
    now: Instant,
    nodes: Vec<Node>,
    in_flight: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
    undeliverable: u64,
}

fn endpoint(seed: u64) -> Ep {
    let policy = NegotiationPolicy::FLASH_COMPATIBLE;
    let groups = vec![DhGroup::Modp1024];
    let responder = Responder::new(
        ResponderConfig {
            groups: groups.clone(),
            policy,
        },
        [seed as u8; 32],
        &[seed as u8; 32],
        Instant::ZERO,
    );
    Endpoint::new(
        ChaCha20Rng::seed_from_u64(seed),
        Some(responder),
        InitiatorConfig { groups, policy },
        SessionConfig::default(),
    )
}

/// An endpoint with a static identity: one certificate for both roles, as Flash Player has.
fn static_endpoint(seed: u64) -> Ep {
    Endpoint::flash_peer(ChaCha20Rng::seed_from_u64(seed), [seed as u8; 32])
}

impl Net {
    fn new(n: usize) -> Net {
        let nodes = (0..n)
            .map(|i| {
                (
                    format!("127.0.0.{}:{}", i + 1, 1935 + i).parse().unwrap(),
                    endpoint(i as u64 + 100),
                    Vec::new(),
                )
            })
            .collect();
        Net {
            now: Instant::from_millis(1000),
            nodes,
            in_flight: BTreeMap::new(),
            seq: 0,
            undeliverable: 0,
        }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].0
    }

    fn flush(&mut self) {
        let mut buf = vec![0u8; 8192];
        let delay = Duration::from_millis(5);
        for i in 0..self.nodes.len() {
            let from = self.nodes[i].0;
            while let Some(t) = self.nodes[i].1.poll_transmit(self.now, &mut buf) {
                self.seq += 1;
                self.in_flight.insert(
                    (self.now + delay, self.seq),
                    (t.destination, from, buf[..t.len].to_vec()),
                );
            }
            while let Some(e) = self.nodes[i].1.poll_event() {
                self.nodes[i].2.push(e);
            }
        }
    }

    fn step(&mut self, limit: Instant) -> bool {
        self.flush();
        let arrival = self.in_flight.keys().next().map(|k| k.0);
        let timer = self.nodes.iter().filter_map(|n| n.1.poll_timeout()).min();
        let Some(next) = arrival.into_iter().chain(timer).min() else {
            return false;
        };
        if next > limit {
            self.now = limit;
            return false;
        }
        self.now = self.now.max(next);
        while let Some(e) = self.in_flight.first_entry() {
            if e.key().0 > self.now {
                break;
            }
            let (to, from, mut bytes) = e.remove();
            match self.nodes.iter_mut().find(|n| n.0 == to) {
                Some(n) => n.1.handle_datagram(self.now, from, &mut bytes),
                None => self.undeliverable += 1,
            }
        }
        let now = self.now;
        for n in self.nodes.iter_mut() {
            if n.1.poll_timeout().is_some_and(|t| t <= now) {
                n.1.handle_timeout(now);
            }
        }
        self.flush();
        true
    }

    fn run_until(&mut self, budget: Duration, mut done: impl FnMut(&mut Net) -> bool) -> bool {
        let limit = self.now + budget;
        for _ in 0..1_000_000 {
            if done(self) {
                return true;
            }
            if !self.step(limit) {
                return done(self);
            }
        }
        false
    }

    fn take_events(&mut self, i: usize) -> Vec<(u32, EndpointEvent)> {
        std::mem::take(&mut self.nodes[i].2)
    }

    /// Connects node `i` to node `j` by URL; answers (handle at i, handle at j).
    fn connect(&mut self, i: usize, j: usize) -> (u32, u32) {
        let to = self.addr(j);
        let now = self.now;
        let h = self.nodes[i]
            .1
            .connect(now, build_url_epd(b"rtmfp://server/app"), None, &[to]);
        let mut accepted = None;
        let from = self.addr(i);
        assert!(self.run_until(Duration::from_secs(10), |n| {
            for (hh, e) in n.nodes[j].2.iter() {
                if matches!(e, EndpointEvent::Accepted { from: f, .. } if *f == from) {
                    accepted = Some(*hh);
                }
            }
            accepted.is_some()
                && n.nodes[i]
                    .2
                    .iter()
                    .any(|(hh, e)| *hh == h && matches!(e, EndpointEvent::Connected { .. }))
        }));
        self.take_events(i);
        self.take_events(j);
        (h, accepted.unwrap())
    }
}

#[test]
fn server_introduces_a_peer_with_redirect_and_forwarded_ihello() {
    let mut net = Net::new(3);
    let (server, a, b) = (0, 1, 2);
    let (_a_at_s, _) = net.connect(a, server);
    let (_, b_at_s) = net.connect(b, server);
    let b_id: PeerId = net.nodes[b].1.responder().unwrap().fingerprint();

    // A asks the server for B by peer ID.
    let now = net.now;
    let s_addr = net.addr(server);
    let p2p = net.nodes[a]
        .1
        .connect(now, build_fingerprint_epd(&b_id.0), Some(b_id), &[s_addr]);
    assert!(net.run_until(Duration::from_secs(5), |n| n.nodes[server]
        .2
        .iter()
        .any(|(_, e)| matches!(e, EndpointEvent::Rendezvous { .. }))));
    let (peer_id, from, tag) = net
        .take_events(server)
        .into_iter()
        .find_map(|(_, e)| match e {
            EndpointEvent::Rendezvous { peer_id, from, tag } => Some((peer_id, from, tag)),
            _ => None,
        })
        .unwrap();
    assert_eq!(peer_id, b_id);
    assert_eq!(from, net.addr(a));
    // The server redirects A to B's observed address and forwards the IHello to B.
    let now = net.now;
    let b_addr = Address::new(net.addr(b), AddressOrigin::Observed);
    net.nodes[server].1.redirect(now, from, &tag, &[b_addr]);
    let epd = build_fingerprint_epd(&b_id.0);
    net.nodes[server]
        .1
        .session_mut(b_at_s)
        .unwrap()
        .forward_ihello(&epd, Address::new(from, AddressOrigin::Observed), &tag);
    // B sees the Forwarded IHello and answers A directly.
    assert!(
        net.run_until(Duration::from_secs(5), |n| n.nodes[b].2.iter().any(
            |(_, e)| matches!(e, EndpointEvent::Session(Event::ForwardedIHello { .. }))
        ))
    );
    let (fepd, reply_to, ftag) = net
        .take_events(b)
        .into_iter()
        .find_map(|(_, e)| match e {
            EndpointEvent::Session(Event::ForwardedIHello { epd, reply_to, tag }) => {
                Some((epd, reply_to, tag))
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (fepd.as_slice(), reply_to, ftag.as_slice()),
        (epd.as_slice(), net.addr(a), tag.as_slice())
    );
    let now = net.now;
    net.nodes[b]
        .1
        .answer_forwarded_ihello(now, reply_to, &fepd, &ftag);
    // A and B open a session of their own.
    assert!(net.run_until(Duration::from_secs(10), |n| n.nodes[a]
        .2
        .iter()
        .any(|(h, e)| *h == p2p
            && matches!(e, EndpointEvent::Connected { peer_id } if *peer_id == b_id))));
    assert!(net.nodes[b]
        .2
        .iter()
        .any(|(_, e)| matches!(e, EndpointEvent::Accepted { from, .. } if *from == net.addr(a))));
    // And it carries data.
    let now = net.now;
    let b_addr = net.addr(b);
    let s = net.nodes[a].1.session_mut(p2p).unwrap();
    assert_eq!(s.far_address(), b_addr);
    let flow = s.open_flow(b"TC\x04\x01", None).unwrap();
    s.send(now, flow, b"hello peer", SendOptions::default())
        .unwrap();
    assert!(net.run_until(Duration::from_secs(5), |n| n.nodes[b]
        .2
        .iter()
        .any(|(_, e)| matches!(e, EndpointEvent::Session(Event::Message { data, .. }) if data == b"hello peer"))));
}

#[test]
fn glare_leaves_exactly_one_session() {
    let mut net = Net::new(2);
    let (x, y) = (0, 1);
    let now = net.now;
    let (ax, ay) = (net.addr(x), net.addr(y));
    // Both open to each other at the same instant.
    let hx = net.nodes[x]
        .1
        .connect(now, build_url_epd(b"rtmfp://peer/"), None, &[ay]);
    let hy = net.nodes[y]
        .1
        .connect(now, build_url_epd(b"rtmfp://peer/"), None, &[ax]);
    net.run_until(Duration::from_secs(20), |_| false);
    let ex = net.take_events(x);
    let ey = net.take_events(y);
    let connected = |ev: &[(u32, EndpointEvent)], h: u32| {
        ev.iter()
            .any(|(hh, e)| *hh == h && matches!(e, EndpointEvent::Connected { .. }))
    };
    let failed = |ev: &[(u32, EndpointEvent)], h: u32| {
        ev.iter()
            .any(|(hh, e)| *hh == h && matches!(e, EndpointEvent::ConnectFailed { .. }))
    };
    // One side's opening session prevailed; the other gave it up and answered as responder.
    assert!(connected(&ex, hx) ^ connected(&ey, hy), "x {ex:?} y {ey:?}");
    assert!(failed(&ex, hx) ^ failed(&ey, hy));
    assert_eq!(net.nodes[x].1.session_handles().count(), 1);
    assert_eq!(net.nodes[y].1.session_handles().count(), 1);
}

#[test]
fn with_static_identities_the_peer_id_the_server_sees_reaches_the_peer() {
    let mut net = Net::new(3);
    let (server, a, b) = (0, 1, 2);
    net.nodes[a].1 = static_endpoint(7);
    net.nodes[b].1 = static_endpoint(8);
    net.connect(a, server);
    // The peer ID the server records for B is the fingerprint of B's certificate…
    let now = net.now;
    let s_addr = net.addr(server);
    let h = net.nodes[b]
        .1
        .connect(now, build_url_epd(b"rtmfp://server/app"), None, &[s_addr]);
    let b_addr = net.addr(b);
    let mut seen = None;
    assert!(net.run_until(Duration::from_secs(10), |n| {
        seen = n.nodes[server].2.iter().find_map(|(hh, e)| match e {
            EndpointEvent::Accepted { peer_id, from } if *from == b_addr => Some((*hh, *peer_id)),
            _ => None,
        });
        seen.is_some()
            && n.nodes[b]
                .2
                .iter()
                .any(|(hh, e)| *hh == h && matches!(e, EndpointEvent::Connected { .. }))
    }));
    let (b_at_s, b_id) = seen.unwrap();
    // … and the same one B answers P2P IHellos with.
    assert_eq!(b_id, net.nodes[b].1.responder().unwrap().fingerprint());
    net.take_events(server);
    // A asks for B by that peer ID, pinned: the server forwards, B answers, A keys with B's
    // static key from its certificate.
    let now = net.now;
    let epd = build_fingerprint_epd(&b_id.0);
    let p2p = net.nodes[a]
        .1
        .connect(now, epd.clone(), Some(b_id), &[s_addr]);
    assert!(net.run_until(Duration::from_secs(5), |n| n.nodes[server]
        .2
        .iter()
        .any(|(_, e)| matches!(e, EndpointEvent::Rendezvous { .. }))));
    let (from, tag) = net
        .take_events(server)
        .into_iter()
        .find_map(|(_, e)| match e {
            EndpointEvent::Rendezvous { from, tag, .. } => Some((from, tag)),
            _ => None,
        })
        .unwrap();
    net.nodes[server]
        .1
        .session_mut(b_at_s)
        .unwrap()
        .forward_ihello(&epd, Address::new(from, AddressOrigin::Observed), &tag);
    assert!(
        net.run_until(Duration::from_secs(5), |n| n.nodes[b].2.iter().any(
            |(_, e)| matches!(e, EndpointEvent::Session(Event::ForwardedIHello { .. }))
        ))
    );
    let now = net.now;
    net.nodes[b]
        .1
        .answer_forwarded_ihello(now, from, &epd, &tag);
    assert!(net.run_until(Duration::from_secs(10), |n| n.nodes[a]
        .2
        .iter()
        .any(|(hh, e)| *hh == p2p
            && matches!(e, EndpointEvent::Connected { peer_id } if *peer_id == b_id))));
    // B sees A under A's one peer ID too.
    let a_id = net.nodes[a].1.responder().unwrap().fingerprint();
    assert!(net.nodes[b]
        .2
        .iter()
        .any(|(_, e)| matches!(e, EndpointEvent::Accepted { peer_id, .. } if *peer_id == a_id)));
}
