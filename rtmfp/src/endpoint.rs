//! An endpoint: the startup pseudo-session (session ID 0) and the sessions it opened or
//! accepted, demultiplexed by session ID (RFC 7016 §2.2.2). Both roles: it accepts sessions when
//! given a [`Responder`], and opens them with [`Endpoint::connect`].
//!
//! The server's data plane shards sessions itself and runs the responder in the control plane;
//! this endpoint is the simple, single-threaded composition used by clients, the load generator
//! and the deterministic tests.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use rand_core::RngCore;
use sha2::{Digest, Sha256};

use crate::crypto::{read_session_id, PacketDecoder, PacketEncoder};
use crate::crypto::{DhGroup, DhKeyPair, NegotiationPolicy};
use crate::ids::{PeerId, SessionId};
use crate::params::{MAX_STARTUP_PACKET, REDIRECT_THRESHOLD};
use crate::session::{Event, Role, Session, SessionConfig, SessionParams, Transmit};
use crate::startup::far_prevails_in_glare;
use crate::startup::initiator::{
    Established, Initiator, InitiatorConfig, InitiatorState, StartupMessage,
};
use crate::startup::responder::{HelloDisposition, KeyingDisposition, Responder};
use crate::time::Instant;
use crate::wire::{
    Address, Chunk, ChunkBody, ChunkIter, CookieChange, IHello, IIKeying, Mode, PacketHeader,
    RHello, RIKeying, Reader, Redirect, Writer,
};

/// The signature the Flash profile sends in IIKeying and RIKeying: the single byte "X"
/// (RFC 7425 §4.3.5.1; ignored on receipt).
pub const FLASH_SIGNATURE: &[u8] = b"X";

/// Something that happened on the endpoint, with the session handle it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointEvent {
    /// A session we opened is now open.
    Connected {
        /// The responder's fingerprint.
        peer_id: PeerId,
    },
    /// A session we opened failed to open (ultimate open timeout or keying failure).
    ConnectFailed {
        /// Whether a responder answered the IHello (an RHello came): the failure was then at
        /// the keying stage (no usable RIKeying), otherwise nobody answered at all.
        answered: bool,
    },
    /// The responder accepted a new session.
    Accepted {
        /// The initiator's peer ID.
        peer_id: PeerId,
        /// Its address.
        from: SocketAddr,
    },
    /// An IHello named another endpoint by fingerprint (the caller may redirect or forward it).
    Rendezvous {
        /// The target peer ID.
        peer_id: PeerId,
        /// The initiator's address.
        from: SocketAddr,
        /// The initiator's tag.
        tag: Vec<u8>,
    },
    /// A session event.
    Session(Event),
}

/// Counters of what the endpoint dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams that failed decryption or authentication, or were malformed.
    pub malformed: u64,
    /// Datagrams for a session ID we do not have.
    pub unknown_session: u64,
    /// IIKeyings refused (bad cookie, keying or crypto).
    pub keying_rejected: u64,
    /// Retransmitted IIKeyings answered with the same RIKeying.
    pub rikeying_repeated: u64,
}

struct Accepted {
    near_session_id: u32,
    skic_hash: [u8; 32],
    rikeying: Vec<u8>,
}

/// An RTMFP endpoint with its sessions.
pub struct Endpoint<R: RngCore> {
    rng: R,
    responder: Option<Responder>,
    initiator_config: InitiatorConfig,
    session_config: SessionConfig,
    sessions: HashMap<u32, Session>,
    /// Sessions touched since they last had nothing to send or report (see [`Activity`]);
    /// only these are polled, so an idle session costs nothing per turn.
    activity: Activity,
    opening: HashMap<u32, Initiator>,
    /// IIKeying answers by (address, initiator session ID), to repeat them (RFC 7016 §3.5.1.1.2).
    accepted: HashMap<(SocketAddr, u32), Accepted>,
    startup_out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<(u32, EndpointEvent)>,
    next_session_id: u32,
    startup_encoder: PacketEncoder,
    startup_decoder: PacketDecoder,
    stats: EndpointStats,
}

impl<R: RngCore> core::fmt::Debug for Endpoint<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Endpoint")
            .field("sessions", &self.sessions.len())
            .field("opening", &self.opening.len())
            .finish_non_exhaustive()
    }
}

impl<R: RngCore> Endpoint<R> {
    /// An endpoint as Flash Player is one: a static identity (RFC 7425 §4.3.3), so one
    /// certificate and one peer ID for its sessions as initiator and as responder (what P2P
    /// needs: the peer ID a server knows answers P2P IHellos), DH group 2 and the
    /// Flash-compatible crypto options. `cookie_secret` keys its stateless cookies.
    pub fn flash_peer(mut rng: R, cookie_secret: [u8; 32]) -> Self {
        let policy = NegotiationPolicy::FLASH_COMPATIBLE;
        let identity = DhKeyPair::generate(DhGroup::Modp1024, &mut rng);
        let responder = Responder::with_static_key(policy, identity, cookie_secret, Instant::ZERO);
        Endpoint::new(
            rng,
            Some(responder),
            InitiatorConfig {
                groups: vec![DhGroup::Modp1024],
                policy,
            },
            SessionConfig::default(),
        )
    }

    /// An endpoint that accepts sessions when `responder` is given and can open sessions.
    pub fn new(
        rng: R,
        responder: Option<Responder>,
        initiator_config: InitiatorConfig,
        session_config: SessionConfig,
    ) -> Self {
        Endpoint {
            rng,
            responder,
            initiator_config,
            session_config,
            sessions: HashMap::new(),
            activity: Activity::default(),
            opening: HashMap::new(),
            accepted: HashMap::new(),
            startup_out: VecDeque::new(),
            events: VecDeque::new(),
            next_session_id: 1,
            startup_encoder: PacketEncoder::startup(),
            startup_decoder: PacketDecoder::startup(),
            stats: EndpointStats::default(),
        }
    }

    /// Drop counters.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// Our responder, if we accept sessions.
    pub fn responder(&self) -> Option<&Responder> {
        self.responder.as_ref()
    }

    fn allocate_session_id(&mut self) -> u32 {
        loop {
            let id = self.next_session_id;
            self.next_session_id = self.next_session_id.wrapping_add(1).max(1);
            if !self.sessions.contains_key(&id) && !self.opening.contains_key(&id) {
                return id;
            }
        }
    }

    /// Starts opening a session to the endpoint named by `epd` at `addresses`; answers its
    /// handle (our receive session ID).
    pub fn connect(
        &mut self,
        now: Instant,
        epd: Vec<u8>,
        expected_fingerprint: Option<PeerId>,
        addresses: &[SocketAddr],
    ) -> u32 {
        let id = self.allocate_session_id();
        let mut init = Initiator::new(
            now,
            self.initiator_config.clone(),
            epd,
            expected_fingerprint,
            addresses,
            id,
            &mut self.rng,
        );
        // With a static identity, we present the same certificate as initiator and as
        // responder: one peer ID (RFC 7425 §4.3.2), as Flash P2P requires.
        if let Some(identity) = self.responder.as_ref().and_then(Responder::static_key) {
            init.set_identity(identity.clone());
        }
        self.opening.insert(id, init);
        id
    }

    /// For a session still opening: whether a responder answered its IHello yet (an RHello
    /// came, keying is under way). `None` when `handle` is not opening.
    pub fn opening_answered(&self, handle: u32) -> Option<bool> {
        self.opening.get(&handle).map(Initiator::was_answered)
    }

    /// A session by handle.
    pub fn session(&self, handle: u32) -> Option<&Session> {
        self.sessions.get(&handle)
    }

    /// A session by handle, to send on it or close it.
    pub fn session_mut(&mut self, handle: u32) -> Option<&mut Session> {
        if self.sessions.contains_key(&handle) {
            self.activity.touch(handle);
        }
        self.sessions.get_mut(&handle)
    }

    /// Handles of the open sessions.
    pub fn session_handles(&self) -> impl Iterator<Item = u32> + '_ {
        self.sessions.keys().copied()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<(u32, EndpointEvent)> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        let mut closed = None;
        let mut found = None;
        // Sessions before `ev_from` were found with nothing to report since their last touch.
        for i in self.activity.ev_from..self.activity.touched.len() {
            self.activity.ev_from = i;
            let (id, _, ev_idle) = self.activity.touched[i];
            if ev_idle {
                continue;
            }
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            if let Some(e) = s.poll_event() {
                if matches!(e, Event::Closed { .. }) {
                    closed = Some(id);
                }
                found = Some((id, EndpointEvent::Session(e)));
                break;
            }
            self.activity.touched[i].2 = true;
        }
        if found.is_none() {
            self.activity.ev_from = self.activity.touched.len();
            self.activity.settle(&self.sessions);
        }
        if let Some(id) = closed {
            self.accepted.retain(|_, a| a.near_session_id != id);
        }
        found
    }

    /// Counts and logs (at debug level) a datagram dropped as malformed.
    fn malformed(&mut self, from: SocketAddr, reason: &dyn core::fmt::Display) {
        self.stats.malformed += 1;
        tracing::debug!(%from, %reason, "malformed datagram dropped");
    }

    /// Counts and logs (at debug level) a refused IIKeying.
    fn keying_rejected(&mut self, from: SocketAddr, reason: &dyn core::fmt::Display) {
        self.stats.keying_rejected += 1;
        tracing::debug!(%from, %reason, "IIKeying refused");
    }

    /// Handles a datagram from `from`, decrypting in place.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        let sid = match read_session_id(datagram) {
            Ok(sid) => sid,
            Err(e) => return self.malformed(from, &e),
        };
        if sid != SessionId::STARTUP.0 && !self.opening.contains_key(&sid) {
            match self.sessions.get_mut(&sid) {
                Some(s) => {
                    let result = s.handle_datagram(now, from, datagram);
                    self.activity.touch(sid);
                    if let Err(e) = result {
                        self.malformed(from, &e);
                    }
                }
                None => {
                    self.stats.unknown_session += 1;
                    tracing::debug!(%from, session_id = sid, "datagram for an unknown session dropped");
                }
            }
            return;
        }
        self.handle_startup(now, from, sid, datagram);
    }

    fn handle_startup(&mut self, now: Instant, from: SocketAddr, sid: u32, datagram: &mut [u8]) {
        let decoded = match self.startup_decoder.decode(datagram) {
            Ok(d) => d,
            Err(e) => return self.malformed(from, &e),
        };
        let mut r = Reader::new(decoded.packet);
        let header = match PacketHeader::parse(&mut r) {
            Ok(h) => h,
            Err(e) => return self.malformed(from, &e),
        };
        if header.mode != Mode::Startup {
            return self.malformed(from, &"session-mode packet with the startup key");
        }
        for chunk in ChunkIter::new(r.rest()) {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    self.malformed(from, &e);
                    break;
                }
            };
            match chunk {
                Chunk::IHello(h) if sid == 0 => self.on_ihello(now, from, h.epd, h.tag),
                Chunk::IIKeying(k) if sid == 0 => self.on_iikeying(now, from, &k),
                Chunk::RHello(h) if sid == 0 => {
                    let rng = &mut self.rng;
                    if let Some(init) = self
                        .opening
                        .values_mut()
                        .find(|i| i.tag()[..] == *h.tag_echo)
                    {
                        let _ = init.on_rhello(now, from, h.tag_echo, h.cookie, h.certificate, rng);
                    }
                }
                Chunk::Redirect(rd) if sid == 0 => {
                    if let Some(init) = self
                        .opening
                        .values_mut()
                        .find(|i| i.tag()[..] == *rd.tag_echo)
                    {
                        let addrs = rd.addresses().filter_map(Result::ok).map(|a| a.addr);
                        let _ = init.on_redirect(now, from, rd.tag_echo, addrs);
                    }
                }
                Chunk::CookieChange(cc) => {
                    if let Some(init) = self.opening.get_mut(&sid) {
                        let _ = init.on_cookie_change(now, cc.old_cookie, cc.new_cookie);
                    }
                }
                Chunk::RIKeying(k) => self.on_rikeying(now, from, sid, &k),
                // Other chunks are not allowed in startup packets and are ignored (RFC 7016 §2.3).
                _ => {}
            }
        }
    }

    fn on_ihello(&mut self, now: Instant, from: SocketAddr, epd: &[u8], tag: &[u8]) {
        let Some(responder) = &self.responder else {
            return;
        };
        match responder.on_ihello(now, &from, epd, tag) {
            HelloDisposition::RHello { tag, cookie } => {
                let chunk = RHello {
                    tag_echo: tag,
                    cookie: &cookie,
                    certificate: responder.certificate(),
                };
                let packet = startup_packet(&mut self.startup_encoder, now, 0, &chunk);
                if let Some(p) = packet {
                    self.startup_out.push_back((from, p));
                }
            }
            HelloDisposition::Rendezvous { peer_id, tag } => {
                self.events.push_back((
                    0,
                    EndpointEvent::Rendezvous {
                        peer_id,
                        from,
                        tag: tag.to_vec(),
                    },
                ));
            }
            HelloDisposition::Ignore => {}
        }
    }

    /// Answers a Forwarded IHello received on one of our sessions as if the IHello had come
    /// from `reply_to` (RFC 7016 §3.5.1.5). Does nothing unless we accept sessions.
    pub fn answer_forwarded_ihello(
        &mut self,
        now: Instant,
        reply_to: SocketAddr,
        epd: &[u8],
        tag: &[u8],
    ) {
        let Some(responder) = &self.responder else {
            return;
        };
        if let HelloDisposition::RHello { tag, cookie } =
            responder.on_forwarded_ihello(now, &reply_to, epd, tag)
        {
            let chunk = RHello {
                tag_echo: tag,
                cookie: &cookie,
                certificate: responder.certificate(),
            };
            if let Some(p) = startup_packet(&mut self.startup_encoder, now, 0, &chunk) {
                self.startup_out.push_back((reply_to, p));
            }
        }
    }

    /// Answers an IHello (typically a [`EndpointEvent::Rendezvous`]) with a Redirect listing
    /// `addresses`; none means "the address this came from" (RFC 7016 §2.3.5, §3.5.1.4).
    pub fn redirect(&mut self, now: Instant, to: SocketAddr, tag: &[u8], addresses: &[Address]) {
        let addresses = &addresses[..addresses.len().min(REDIRECT_THRESHOLD)];
        let packet = startup_packet_with(&mut self.startup_encoder, now, 0, |w| {
            Redirect::emit_with(w, tag, addresses).is_ok()
        });
        if let Some(p) = packet {
            self.startup_out.push_back((to, p));
        }
    }

    fn on_iikeying(&mut self, now: Instant, from: SocketAddr, k: &IIKeying<'_>) {
        let isid = k.initiator_session_id.0;
        let skic_hash: [u8; 32] = Sha256::digest(k.skic).into();
        // A retransmitted IIKeying gets the same RIKeying (RFC 7016 §3.5.1.1.2).
        if let Some(a) = self.accepted.get(&(from, isid)) {
            if a.skic_hash == skic_hash && self.sessions.contains_key(&a.near_session_id) {
                self.stats.rikeying_repeated += 1;
                self.startup_out.push_back((from, a.rikeying.clone()));
            }
            return;
        }
        // Glare (RFC 7016 §3.5.1.3, RFC 7425 §4.3.6): we are opening a session to the same
        // address. The far end prevails only if its certificate sorts before ours.
        let glare = self.opening.iter().find_map(|(&id, i)| {
            (i.state() == InitiatorState::KeyingSent && i.responder_address() == Some(from))
                .then(|| (id, i.certificate().map(<[u8]>::to_vec)))
        });
        if let Some((id, Some(near_cert))) = glare {
            if !far_prevails_in_glare(&near_cert, k.certificate) {
                return;
            }
            self.opening.remove(&id);
            let failed = EndpointEvent::ConnectFailed { answered: true };
            self.events.push_back((id, failed));
        }
        let Some(responder) = &self.responder else {
            return;
        };
        let request =
            match responder.on_iikeying(now, &from, isid, k.cookie_echo, k.certificate, k.skic) {
                KeyingDisposition::Accept(req) => req,
                KeyingDisposition::CookieChange {
                    initiator_session_id,
                    new_cookie,
                } => {
                    let encoder = &mut self.startup_encoder;
                    let (old, new) = (k.cookie_echo, &new_cookie[..]);
                    if let Some(p) =
                        cookie_change_packet(encoder, now, initiator_session_id, old, new)
                    {
                        self.startup_out.push_back((from, p));
                    }
                    return;
                }
                KeyingDisposition::Reject(e) => return self.keying_rejected(from, &e),
            };
        // A static identity keys with its own pair; otherwise a fresh ephemeral one.
        let ephemeral;
        let key_pair = match responder.static_key() {
            Some(pair) => pair,
            None => {
                ephemeral = DhKeyPair::generate(request.group, &mut self.rng);
                &ephemeral
            }
        };
        let accepted = match responder.accept(&request, key_pair) {
            Ok(a) => a,
            Err(e) => return self.keying_rejected(from, &e),
        };
        let (encoder, decoder) = match (
            accepted.keys.encoder(accepted.negotiated.send),
            accepted.keys.decoder(accepted.negotiated.receive),
        ) {
            (Ok(e), Ok(d)) => (e, d),
            (Err(e), _) | (_, Err(e)) => return self.keying_rejected(from, &e),
        };
        let rsid = self.allocate_session_id();
        let chunk = RIKeying {
            responder_session_id: SessionId(rsid),
            skrc: &accepted.skrc,
            signature: FLASH_SIGNATURE,
        };
        let Some(rikeying) = startup_packet(&mut self.startup_encoder, now, isid, &chunk) else {
            return;
        };
        let session = self.new_session(now, Role::Responder, rsid, isid, from, encoder, decoder);
        self.sessions.insert(rsid, session);
        self.activity.touch(rsid);
        self.accepted.insert(
            (from, isid),
            Accepted {
                near_session_id: rsid,
                skic_hash,
                rikeying: rikeying.clone(),
            },
        );
        self.startup_out.push_back((from, rikeying));
        self.events.push_back((
            rsid,
            EndpointEvent::Accepted {
                peer_id: request.peer_id,
                from,
            },
        ));
    }

    fn on_rikeying(&mut self, now: Instant, from: SocketAddr, sid: u32, k: &RIKeying<'_>) {
        let Some(init) = self.opening.get_mut(&sid) else {
            return;
        };
        let Ok(est) = init.on_rikeying(from, k.responder_session_id.0, k.skrc) else {
            return;
        };
        self.opening.remove(&sid);
        self.open_initiated(now, sid, est);
    }

    /// A new open session with a fresh mobility secret.
    #[allow(clippy::too_many_arguments)]
    fn new_session(
        &mut self,
        now: Instant,
        role: Role,
        near_session_id: u32,
        far_session_id: u32,
        far_address: SocketAddr,
        encoder: PacketEncoder,
        decoder: PacketDecoder,
    ) -> Session {
        let mut mobility_secret = [0u8; 32];
        self.rng.fill_bytes(&mut mobility_secret);
        let params = SessionParams {
            role,
            near_session_id,
            far_session_id,
            far_address,
            encoder,
            decoder,
            mobility_secret,
        };
        Session::new(now, params, self.session_config.clone())
    }

    fn open_initiated(&mut self, now: Instant, sid: u32, est: Established) {
        let (Ok(encoder), Ok(decoder)) = (
            est.keys.encoder(est.negotiated.send),
            est.keys.decoder(est.negotiated.receive),
        ) else {
            let failed = EndpointEvent::ConnectFailed { answered: true };
            self.events.push_back((sid, failed));
            return;
        };
        let session = self.new_session(
            now,
            Role::Initiator,
            sid,
            est.far_session_id,
            est.far_address,
            encoder,
            decoder,
        );
        self.sessions.insert(sid, session);
        self.activity.touch(sid);
        self.events.push_back((
            sid,
            EndpointEvent::Connected {
                peer_id: est.far_peer_id,
            },
        ));
    }

    /// Writes the next datagram into `buf`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((dest, p)) = self.startup_out.pop_front() {
            let n = p.len().min(buf.len());
            buf[..n].copy_from_slice(&p[..n]);
            return Some(Transmit {
                destination: dest,
                len: n,
            });
        }
        let ids: Vec<u32> = if self.opening.is_empty() {
            Vec::new()
        } else {
            self.opening.keys().copied().collect()
        };
        for id in ids {
            let Some(init) = self.opening.get_mut(&id) else {
                continue;
            };
            let msg = init
                .poll_transmit(now)
                .map(|(dest, m)| (dest, owned_message(&m)));
            if let Some((dest, m)) = msg {
                let packet = match &m {
                    OwnedStartup::IHello { epd, tag } => {
                        startup_packet(&mut self.startup_encoder, now, 0, &IHello { epd, tag })
                    }
                    OwnedStartup::IIKeying {
                        isid,
                        cookie,
                        certificate,
                        skic,
                    } => startup_packet(
                        &mut self.startup_encoder,
                        now,
                        0,
                        &IIKeying {
                            initiator_session_id: SessionId(*isid),
                            cookie_echo: cookie,
                            certificate,
                            skic,
                            signature: FLASH_SIGNATURE,
                        },
                    ),
                };
                if let Some(p) = packet {
                    let n = p.len().min(buf.len());
                    buf[..n].copy_from_slice(&p[..n]);
                    return Some(Transmit {
                        destination: dest,
                        len: n,
                    });
                }
            }
        }
        // Sessions before `tx_from` were found with nothing to send since their last touch:
        // a datagram costs one session poll, not one per touched session.
        for i in self.activity.tx_from..self.activity.touched.len() {
            self.activity.tx_from = i;
            let (id, tx_idle, _) = self.activity.touched[i];
            if tx_idle {
                continue;
            }
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            if let Some(t) = s.poll_transmit(now, buf) {
                return Some(t);
            }
            self.activity.touched[i].1 = true;
        }
        self.activity.tx_from = self.activity.touched.len();
        self.activity.settle(&self.sessions);
        None
    }

    /// The earliest time [`Self::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let a = self
            .opening
            .values()
            .filter_map(Initiator::poll_timeout)
            .min();
        // Settled sessions by their cached deadline; touched ones as they are now.
        let settled = self.activity.deadlines.first().map(|d| d.0);
        let touched = self
            .activity
            .touched
            .iter()
            .filter_map(|t| self.sessions.get(&t.0))
            .filter_map(Session::poll_timeout)
            .min();
        a.into_iter().chain(settled).chain(touched).min()
    }

    /// Runs timers due at `now`; forgets closed sessions whose events were all delivered.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut failed = Vec::new();
        for (&id, init) in self.opening.iter_mut() {
            init.handle_timeout(now);
            if init.state() == InitiatorState::Failed {
                failed.push((id, init.was_answered()));
            }
        }
        for (id, answered) in failed {
            self.opening.remove(&id);
            self.events
                .push_back((id, EndpointEvent::ConnectFailed { answered }));
        }
        // Sessions whose deadline has come join the touched ones; only those are run.
        while let Some(&(deadline, id)) = self.activity.deadlines.first() {
            if deadline > now {
                break;
            }
            self.activity.touch(id);
        }
        for i in 0..self.activity.touched.len() {
            let id = self.activity.touched[i].0;
            if let Some(s) = self.sessions.get_mut(&id) {
                s.handle_timeout(now);
            }
            self.activity.touched[i].1 = false;
            self.activity.touched[i].2 = false;
        }
        self.activity.tx_from = 0;
        self.activity.ev_from = 0;
    }

    /// Forgets a closed session (after its `Closed` event was seen).
    pub fn remove_closed(&mut self, handle: u32) {
        if self
            .sessions
            .get(&handle)
            .is_some_and(|s| s.state() == crate::session::State::Closed)
        {
            self.sessions.remove(&handle);
            self.activity.forget(handle);
        }
    }
}

/// Which sessions need polling. A session is touched by anything that can change it (a
/// datagram, a timer, `session_mut`); it settles once a `poll_transmit` and a `poll_event`
/// pass have both found nothing in it, and then waits, with its deadline cached, for the
/// next touch or for its deadline.
#[derive(Debug, Default)]
struct Activity {
    /// Touched sessions: (handle, nothing to send, nothing to report).
    touched: Vec<(u32, bool, bool)>,
    /// Position of each touched session in `touched`.
    index: HashMap<u32, usize>,
    /// Settled sessions by deadline.
    deadlines: std::collections::BTreeSet<(Instant, u32)>,
    /// The cached deadline of each settled session.
    deadline_of: HashMap<u32, Instant>,
    /// Every entry of `touched` before this one has nothing to send.
    tx_from: usize,
    /// Every entry of `touched` before this one has nothing to report.
    ev_from: usize,
}

impl Activity {
    fn touch(&mut self, id: u32) {
        if let Some(d) = self.deadline_of.remove(&id) {
            self.deadlines.remove(&(d, id));
        }
        match self.index.get(&id) {
            Some(&i) => {
                self.touched[i].1 = false;
                self.touched[i].2 = false;
                self.tx_from = self.tx_from.min(i);
                self.ev_from = self.ev_from.min(i);
            }
            None => {
                let i = self.touched.len();
                self.index.insert(id, i);
                self.touched.push((id, false, false));
                self.tx_from = self.tx_from.min(i);
                self.ev_from = self.ev_from.min(i);
            }
        }
    }

    /// Removes the touched session at `i`, keeping the index right.
    fn untouch_at(&mut self, i: usize) -> u32 {
        let (id, ..) = self.touched.swap_remove(i);
        self.index.remove(&id);
        if let Some(moved) = self.touched.get(i) {
            self.index.insert(moved.0, i);
            // The entry moved into `i` may still have work: poll it again.
            self.tx_from = self.tx_from.min(i);
            self.ev_from = self.ev_from.min(i);
        }
        id
    }

    fn forget(&mut self, id: u32) {
        if let Some(d) = self.deadline_of.remove(&id) {
            self.deadlines.remove(&(d, id));
        }
        if let Some(&i) = self.index.get(&id) {
            self.untouch_at(i);
        }
    }

    /// Settles the touched sessions found idle by both polls.
    fn settle(&mut self, sessions: &HashMap<u32, Session>) {
        let mut i = 0;
        while i < self.touched.len() {
            let (_, tx_idle, ev_idle) = self.touched[i];
            if tx_idle && ev_idle {
                let id = self.untouch_at(i);
                if let Some(d) = sessions.get(&id).and_then(Session::poll_timeout) {
                    self.deadlines.insert((d, id));
                    self.deadline_of.insert(id, d);
                }
            } else {
                i += 1;
            }
        }
    }
}

/// Writes one startup packet holding `chunk`, for session ID `sid`, under the default key
/// (RFC 7016 §2.2.2, RFC 7425 §4.6.3). Used by the server's handshake service.
pub fn startup_packet<C: ChunkBody>(
    encoder: &mut PacketEncoder,
    now: Instant,
    sid: u32,
    chunk: &C,
) -> Option<Vec<u8>> {
    startup_packet_with(encoder, now, sid, |w| chunk.emit(w).is_ok())
}

/// A Cookie Change (RFC 7016 §2.3.6, §3.5.1.2) for the initiator session
/// `initiator_session_id`, whose good cookie came from another address.
pub fn cookie_change_packet(
    encoder: &mut PacketEncoder,
    now: Instant,
    initiator_session_id: u32,
    old_cookie: &[u8],
    new_cookie: &[u8],
) -> Option<Vec<u8>> {
    let chunk = CookieChange {
        old_cookie,
        new_cookie,
    };
    startup_packet(encoder, now, initiator_session_id, &chunk)
}

/// Writes one startup packet whose chunks `fill` writes, for session ID `sid`, under the
/// default key.
pub fn startup_packet_with(
    encoder: &mut PacketEncoder,
    now: Instant,
    sid: u32,
    fill: impl FnOnce(&mut Writer<'_>) -> bool,
) -> Option<Vec<u8>> {
    let mut plain = [0u8; MAX_STARTUP_PACKET];
    let mut w = Writer::new(&mut plain);
    let mut header = PacketHeader::new(Mode::Startup);
    header.timestamp = Some(crate::session::clock::timestamp(now));
    header.emit(&mut w).ok()?;
    if !fill(&mut w) {
        return None;
    }
    let len = w.position();
    let mut out = vec![0u8; encoder.encoded_len(len)];
    let n = encoder.encode(sid, &plain[..len], &mut out).ok()?;
    out.truncate(n);
    Some(out)
}

enum OwnedStartup {
    IHello {
        epd: Vec<u8>,
        tag: Vec<u8>,
    },
    IIKeying {
        isid: u32,
        cookie: Vec<u8>,
        certificate: Vec<u8>,
        skic: Vec<u8>,
    },
}

fn owned_message(m: &StartupMessage<'_>) -> OwnedStartup {
    match m {
        StartupMessage::IHello { epd, tag } => OwnedStartup::IHello {
            epd: epd.to_vec(),
            tag: tag.to_vec(),
        },
        StartupMessage::IIKeying {
            initiator_session_id,
            cookie,
            certificate,
            skic,
        } => OwnedStartup::IIKeying {
            isid: *initiator_session_id,
            cookie: cookie.to_vec(),
            certificate: certificate.to_vec(),
            skic: skic.to_vec(),
        },
    }
}
