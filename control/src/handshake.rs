//! The handshake service (RFC 7016 §3.5.1, RFC 7425 §4): startup datagrams in, RHello,
//! Cookie Change and RIKeying out, keyed sessions to install. No state is kept for an IHello
//! (stateless cookies); a valid IIKeying costs one Diffie-Hellman computation, done on the
//! [`crate::dh`] pool off this thread.
//!
//! Hostile-input rules enforced here:
//! - an RHello is never more than [`AMPLIFICATION_FACTOR`] times the datagram that caused it,
//!   or [`MIN_ANSWER_BUDGET`] bytes for a short datagram, a limited number of times per source
//!   address (decision 0011);
//! - IIKeyings are rate-limited per source address ([`RateLimiter`]);
//! - no session is keyed beyond `max_sessions`;
//! - a retransmitted IIKeying gets the same RIKeying, without new DH work
//!   (RFC 7016 §3.5.1.1.2).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rtmfp::crypto::{PacketDecoder, PacketEncoder};
use rtmfp::endpoint::{cookie_change_packet, startup_packet, startup_packet_with, FLASH_SIGNATURE};
use rtmfp::ids::SessionId;
use rtmfp::params::REDIRECT_THRESHOLD;
use rtmfp::startup::components::Epd;
use rtmfp::startup::cookie::COOKIE_LEN;
use rtmfp::startup::responder::{
    Accepted, HelloDisposition, KeyingDisposition, KeyingError, KeyingRequest, Responder,
};
use rtmfp::time::Instant;
use rtmfp::wire::{
    Address, Chunk, ChunkIter, Mode, PacketHeader, RHello, RIKeying, Reader, Redirect,
};
use sha2::{Digest, Sha256};

use crate::ipc::{SessionSecrets, MAX_HELLO_FIELD};

/// An answer to a startup datagram is at most this many times its size, so the server cannot
/// be used to amplify a spoofed flood.
pub const AMPLIFICATION_FACTOR: usize = 3;
/// What the answers to one startup datagram may always take, however short it is, within
/// [`SHORT_ANSWER_RATE`] per source address: one RHello with a 16-byte tag echo and this
/// server's certificate (148 bytes). librtmfp (the RTMFP library of ffmpeg) sends 36-byte
/// IHellos, to which no RHello with the 64-byte cookie it requires fits three times over.
pub const MIN_ANSWER_BUDGET: usize = 160;
/// Short datagrams per second one source address may have answered with up to
/// [`MIN_ANSWER_BUDGET`] bytes, sustained (a client retries its IHello a few times).
pub const SHORT_ANSWER_RATE: f64 = 10.0;
/// How many it may have answered at once.
pub const SHORT_ANSWER_BURST: f64 = 20.0;
/// How long an RIKeying is kept to answer a retransmitted IIKeying (the initiator's open
/// timeout, RFC 7016 §3.5.1.1.1, bounds how long it retransmits).
const ACCEPTED_MEMORY: Duration = rtmfp::params::ULTIMATE_OPEN_TIMEOUT;
/// Most (source, tag) pairs whose IHellos are counted for [`Action::Hello`] and
/// [`Action::Rendezvous`].
const MAX_HELLO_ATTEMPTS: usize = 4096;
/// Most remembered RIKeyings; older ones are forgotten first when full.
const MAX_ACCEPTED: usize = 65_536;
/// Most source addresses the rate limiter tracks at once.
const MAX_TRACKED_SOURCES: usize = 65_536;

/// Handshake limits.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// IIKeyings per second per source address, sustained.
    pub rate: f64,
    /// IIKeyings a source address may send at once.
    pub burst: f64,
    /// Most sessions the server keeps.
    pub max_sessions: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            rate: 200.0,
            burst: 400.0,
            max_sessions: 200_000,
        }
    }
}

/// Handshake counters, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandshakeStats {
    /// IHellos received.
    pub ihello: u64,
    /// RHellos sent.
    pub rhello: u64,
    /// IHellos naming another peer by its peer ID (P2P rendezvous, RFC 7016 §3.5.1.4).
    pub rendezvous: u64,
    /// Of those, the ones whose peer was connected: a Redirect went to the initiator and a
    /// Forwarded IHello to the peer.
    pub introduced: u64,
    /// Of those, the ones whose peer is not connected here (not answered, as Cumulus does).
    pub rendezvous_unknown: u64,
    /// Answers withheld because they would exceed [`AMPLIFICATION_FACTOR`].
    pub amplification_refused: u64,
    /// IIKeyings received.
    pub iikeying: u64,
    /// Cookie Changes sent.
    pub cookie_change: u64,
    /// IIKeyings with an invalid or expired cookie.
    pub failed_cookie: u64,
    /// IIKeyings refused for their certificate, key or crypto options.
    pub failed_keying: u64,
    /// IIKeyings and rendezvous requests over the per-address rate.
    pub failed_rate_limited: u64,
    /// IIKeyings refused because the server is full.
    pub failed_max_sessions: u64,
    /// IIKeyings dropped because the Diffie-Hellman pool was saturated.
    pub failed_busy: u64,
    /// Sessions keyed.
    pub completed: u64,
    /// Retransmitted IIKeyings answered with the same RIKeying.
    pub repeated: u64,
    /// Startup datagrams that did not decode.
    pub malformed: u64,
}

impl HandshakeStats {
    /// `(name, value)` of every counter.
    pub fn fields(&self) -> [(&'static str, u64); 16] {
        [
            ("ihello", self.ihello),
            ("rhello", self.rhello),
            ("rendezvous", self.rendezvous),
            ("introduced", self.introduced),
            ("rendezvous_unknown", self.rendezvous_unknown),
            ("amplification_refused", self.amplification_refused),
            ("iikeying", self.iikeying),
            ("cookie_change", self.cookie_change),
            ("failed_cookie", self.failed_cookie),
            ("failed_keying", self.failed_keying),
            ("failed_rate_limited", self.failed_rate_limited),
            ("failed_max_sessions", self.failed_max_sessions),
            ("failed_busy", self.failed_busy),
            ("completed", self.completed),
            ("repeated", self.repeated),
            ("malformed", self.malformed),
        ]
    }
}

/// What to do about a startup datagram.
#[derive(Debug)]
pub enum Action {
    /// Send `datagram` to `to` from the worker that received the startup datagram.
    Transmit {
        /// Destination.
        to: SocketAddr,
        /// The datagram, encrypted.
        datagram: Vec<u8>,
    },
    /// Run the Diffie-Hellman step for this request, then call [`Handshakes::complete`].
    Compute(Box<KeyingRequest>),
    /// An IHello for `url` (its `rtmfp://` EPD) while the applications want to choose (see
    /// [`Handshakes::ask_applications`]): answer with [`Handshakes::redirect`] to where they
    /// send the client, or with [`Handshakes::rhello`].
    Hello {
        /// The initiator.
        from: SocketAddr,
        /// The URL it asks for.
        url: String,
        /// The initiator's tag, to echo.
        tag: Vec<u8>,
        /// The cookie for the RHello.
        cookie: [u8; COOKIE_LEN],
        /// Bytes the answer may take.
        budget: usize,
        /// How many IHellos with this tag came from `from` lately, this one included.
        attempts: u32,
    },
    /// An IHello looks for another peer: see [`Rendezvous`].
    Rendezvous(Rendezvous),
}

/// An IHello from `from` looks for another peer (RFC 7016 §3.5.1.4): if `peer_id` is
/// connected, answer with [`Handshakes::redirect`] and forward the IHello into its session;
/// otherwise call [`Handshakes::unknown_peer`].
#[derive(Debug)]
pub struct Rendezvous {
    /// The initiator.
    pub from: SocketAddr,
    /// The peer it looks for.
    pub peer_id: [u8; 32],
    /// The initiator's tag, to echo.
    pub tag: Vec<u8>,
    /// Bytes the answer may take (the datagram's amplification budget that is left).
    pub budget: usize,
    /// How many IHellos with this tag came from `from` lately, this one included.
    pub attempts: u32,
}

/// A keyed session, ready to install.
#[derive(Debug)]
pub struct Keyed {
    /// The initiator's session ID (we send with it).
    pub far_session_id: u32,
    /// The initiator's address.
    pub address: SocketAddr,
    /// The initiator's peer ID.
    pub peer_id: [u8; 32],
    /// Keys and packet modes.
    pub secrets: SessionSecrets,
    /// The RIKeying datagram to send.
    pub rikeying: Vec<u8>,
}

struct Remembered {
    skic_hash: [u8; 32],
    rikeying: Vec<u8>,
    at: Instant,
}

/// Per-source token buckets for IIKeying.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    /// `rate` per second sustained, `burst` at once.
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            rate,
            burst,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `ip` at `now`; false when its bucket is empty.
    pub fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        if self.buckets.len() >= MAX_TRACKED_SOURCES && !self.buckets.contains_key(&ip) {
            // Forget sources whose buckets have refilled: they are as if new.
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= MAX_TRACKED_SOURCES {
                return false;
            }
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((self.burst, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * self.rate;
        *tokens = (*tokens + refill).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The handshake state machine of the control plane.
pub struct Handshakes {
    responder: Arc<Responder>,
    encoder: PacketEncoder,
    decoder: PacketDecoder,
    limits: HandshakeLimits,
    limiter: RateLimiter,
    /// Rendezvous requests per source address: each makes the server send a Redirect and a
    /// peer send an RHello to the requester, so a flood of them is cut like one of IIKeyings.
    rendezvous_limiter: RateLimiter,
    /// Short startup datagrams per source address answered with up to [`MIN_ANSWER_BUDGET`]
    /// bytes (more than [`AMPLIFICATION_FACTOR`] times their size).
    short_limiter: RateLimiter,
    /// IHellos are passed to the applications ([`Action::Hello`]).
    ask_applications: bool,
    /// IHellos per (source, tag) passed on as [`Action::Hello`] or [`Action::Rendezvous`],
    /// oldest first (at most [`MAX_HELLO_ATTEMPTS`]).
    attempts: HashMap<(SocketAddr, Vec<u8>), u32>,
    attempts_order: VecDeque<(SocketAddr, Vec<u8>)>,
    accepted: HashMap<(SocketAddr, u32), Remembered>,
    /// The keys of `accepted`, oldest first, to forget in O(1).
    accepted_order: VecDeque<(Instant, (SocketAddr, u32))>,
    pending: HashSet<(SocketAddr, u32)>,
    stats: HandshakeStats,
}

impl std::fmt::Debug for Handshakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshakes")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Handshakes {
    /// A service answering as `responder`.
    pub fn new(responder: Arc<Responder>, limits: HandshakeLimits) -> Handshakes {
        Handshakes {
            responder,
            encoder: PacketEncoder::startup(),
            decoder: PacketDecoder::startup(),
            limits,
            limiter: RateLimiter::new(limits.rate, limits.burst),
            rendezvous_limiter: RateLimiter::new(limits.rate, limits.burst),
            short_limiter: RateLimiter::new(SHORT_ANSWER_RATE, SHORT_ANSWER_BURST),
            ask_applications: false,
            attempts: HashMap::new(),
            attempts_order: VecDeque::new(),
            accepted: HashMap::new(),
            accepted_order: VecDeque::new(),
            pending: HashSet::new(),
            stats: HandshakeStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> HandshakeStats {
        self.stats
    }

    /// The responder.
    pub fn responder(&self) -> &Arc<Responder> {
        &self.responder
    }

    /// A Redirect (RFC 7016 §2.3.5) for the initiator at `to` listing `addresses` (at most
    /// [`REDIRECT_THRESHOLD`]) within `budget` bytes (the amplification limit): the last
    /// addresses are left out until it fits; none fitting is a refusal, counted.
    pub fn redirect(
        &mut self,
        now: Instant,
        to: SocketAddr,
        tag: &[u8],
        addresses: &[Address],
        budget: usize,
    ) -> Option<Vec<u8>> {
        let mut n = addresses.len().min(REDIRECT_THRESHOLD);
        while n > 0 {
            let packet = startup_packet_with(&mut self.encoder, now, 0, |w| {
                Redirect::emit_with(w, tag, &addresses[..n]).is_ok()
            })?;
            if packet.len() <= budget {
                return Some(packet);
            }
            n -= 1;
        }
        self.stats.amplification_refused += 1;
        tracing::debug!(%to, budget, "Redirect withheld: amplification");
        None
    }

    /// Whether IHellos for a URL go to the applications first (Cumulus's `onHandshake`, which
    /// may redirect the client elsewhere) as [`Action::Hello`]. Off, they are answered at once.
    pub fn ask_applications(&mut self, on: bool) {
        self.ask_applications = on;
    }

    /// The RHello for an [`Action::Hello`] the applications did not redirect, within `budget`
    /// (counted as an RHello, or as withheld).
    pub fn rhello(
        &mut self,
        now: Instant,
        to: SocketAddr,
        tag: &[u8],
        cookie: &[u8; COOKIE_LEN],
        budget: usize,
    ) -> Option<Vec<u8>> {
        let chunk = RHello {
            tag_echo: tag,
            cookie,
            certificate: self.responder.certificate(),
        };
        let p = startup_packet(&mut self.encoder, now, 0, &chunk)?;
        if p.len() > budget {
            self.stats.amplification_refused += 1;
            tracing::debug!(%to, rhello = p.len(), budget, "RHello withheld: amplification");
            return None;
        }
        self.stats.rhello += 1;
        Some(p)
    }

    /// Counts an IHello with `tag` from `from`; answers how many came (bounded memory: the
    /// oldest are forgotten first).
    fn attempt(&mut self, from: SocketAddr, tag: &[u8]) -> u32 {
        let key = (from, tag.to_vec());
        if let Some(n) = self.attempts.get_mut(&key) {
            *n = n.saturating_add(1);
            return *n;
        }
        if self.attempts_order.len() >= MAX_HELLO_ATTEMPTS {
            if let Some(old) = self.attempts_order.pop_front() {
                self.attempts.remove(&old);
            }
        }
        self.attempts_order.push_back(key.clone());
        self.attempts.insert(key, 1);
        1
    }

    /// Counts an introduction made (a Redirect to the initiator, the IHello forwarded to the
    /// peer).
    pub fn introduced(&mut self) {
        self.stats.introduced += 1;
    }

    /// Counts a rendezvous for a peer that is not connected here.
    pub fn unknown_peer(&mut self) {
        self.stats.rendezvous_unknown += 1;
    }

    /// Handles a startup datagram from `from`; `live` is how many sessions exist now.
    pub fn on_startup(
        &mut self,
        now: Instant,
        live: usize,
        from: SocketAddr,
        datagram: &mut [u8],
        out: &mut Vec<Action>,
    ) {
        // One budget for everything this datagram makes us send, however many chunks it has.
        let mut budget = datagram.len().saturating_mul(AMPLIFICATION_FACTOR);
        if budget < MIN_ANSWER_BUDGET && self.short_limiter.allow(now, from.ip()) {
            budget = MIN_ANSWER_BUDGET;
        }
        let Ok(decoded) = self.decoder.decode(datagram) else {
            self.stats.malformed += 1;
            return;
        };
        if decoded.session_id != SessionId::STARTUP.0 {
            self.stats.malformed += 1;
            return;
        }
        let mut r = Reader::new(decoded.packet);
        match PacketHeader::parse(&mut r) {
            Ok(h) if h.mode == Mode::Startup => {}
            _ => {
                self.stats.malformed += 1;
                return;
            }
        }
        for chunk in ChunkIter::new(r.rest()) {
            match chunk {
                Ok(Chunk::IHello(h)) => {
                    self.stats.ihello += 1;
                    self.on_ihello(now, from, h.epd, h.tag, &mut budget, out);
                }
                Ok(Chunk::IIKeying(k)) => {
                    self.stats.iikeying += 1;
                    self.on_iikeying(now, live, from, &k, out);
                }
                // Other chunks have no business in a startup packet to a server (RFC 7016 §2.3).
                Ok(_) => {}
                Err(_) => {
                    self.stats.malformed += 1;
                    break;
                }
            }
        }
    }

    fn on_ihello(
        &mut self,
        now: Instant,
        from: SocketAddr,
        epd: &[u8],
        tag: &[u8],
        budget: &mut usize,
        out: &mut Vec<Action>,
    ) {
        match self.responder.on_ihello(now, &from, epd, tag) {
            HelloDisposition::RHello { .. } if *budget == 0 => {
                self.stats.amplification_refused += 1;
            }
            HelloDisposition::RHello { tag, cookie }
                if self.ask_applications && tag.len() <= MAX_HELLO_FIELD =>
            {
                let url = Epd::parse(epd)
                    .ok()
                    .and_then(|e| e.ancillary_data)
                    .map(|u| String::from_utf8_lossy(u).into_owned())
                    .unwrap_or_default();
                let attempts = self.attempt(from, tag);
                out.push(Action::Hello {
                    from,
                    url,
                    tag: tag.to_vec(),
                    cookie,
                    budget: *budget,
                    attempts,
                });
                // The answer, decided later, takes what is left of the datagram's budget:
                // nothing else in it is answered.
                *budget = 0;
            }
            HelloDisposition::RHello { tag, cookie } => {
                if let Some(p) = self.rhello(now, from, tag, &cookie, *budget) {
                    *budget -= p.len();
                    out.push(Action::Transmit {
                        to: from,
                        datagram: p,
                    });
                }
            }
            HelloDisposition::Rendezvous { peer_id, tag } => {
                self.stats.rendezvous += 1;
                // A tag longer than a forwarded IHello may carry gets no introduction, and
                // a datagram one at most.
                if *budget == 0 {
                    self.stats.amplification_refused += 1;
                    return;
                }
                if tag.len() > MAX_HELLO_FIELD {
                    self.stats.malformed += 1;
                    return;
                }
                if !self.rendezvous_limiter.allow(now, from.ip()) {
                    self.stats.failed_rate_limited += 1;
                    return;
                }
                let attempts = self.attempt(from, tag);
                out.push(Action::Rendezvous(Rendezvous {
                    from,
                    peer_id: peer_id.0,
                    tag: tag.to_vec(),
                    budget: *budget,
                    attempts,
                }));
                // The Redirect takes what is left of the datagram's budget (one introduction
                // per datagram).
                *budget = 0;
            }
            HelloDisposition::Ignore => {}
        }
    }

    fn on_iikeying(
        &mut self,
        now: Instant,
        live: usize,
        from: SocketAddr,
        k: &rtmfp::wire::IIKeying<'_>,
        out: &mut Vec<Action>,
    ) {
        let isid = k.initiator_session_id.0;
        let skic_hash: [u8; 32] = Sha256::digest(k.skic).into();
        if let Some(r) = self.accepted.get(&(from, isid)) {
            if r.skic_hash == skic_hash {
                self.stats.repeated += 1;
                out.push(Action::Transmit {
                    to: from,
                    datagram: r.rikeying.clone(),
                });
            }
            return;
        }
        if self.pending.contains(&(from, isid)) {
            // Still computing: the answer is on its way.
            return;
        }
        let request =
            match self
                .responder
                .on_iikeying(now, &from, isid, k.cookie_echo, k.certificate, k.skic)
            {
                KeyingDisposition::Accept(req) => req,
                KeyingDisposition::CookieChange {
                    initiator_session_id,
                    new_cookie,
                } => {
                    // RFC 7016 §3.5.1.2: a good cookie from another address.
                    let (old, new) = (k.cookie_echo, &new_cookie[..]);
                    if let Some(p) =
                        cookie_change_packet(&mut self.encoder, now, initiator_session_id, old, new)
                    {
                        self.stats.cookie_change += 1;
                        out.push(Action::Transmit {
                            to: from,
                            datagram: p,
                        });
                    }
                    return;
                }
                KeyingDisposition::Reject(e) => {
                    match e {
                        KeyingError::InvalidCookie | KeyingError::ExpiredCookie => {
                            self.stats.failed_cookie += 1
                        }
                        _ => self.stats.failed_keying += 1,
                    }
                    tracing::debug!(%from, error = %e, "IIKeying refused");
                    return;
                }
            };
        if !self.limiter.allow(now, from.ip()) {
            self.stats.failed_rate_limited += 1;
            return;
        }
        if live + self.pending.len() >= self.limits.max_sessions {
            self.stats.failed_max_sessions += 1;
            return;
        }
        self.pending.insert((from, isid));
        out.push(Action::Compute(Box::new(request)));
    }

    /// The DH pool could not take `request`: forget it (the initiator retries).
    pub fn busy(&mut self, request: &KeyingRequest) {
        self.pending
            .remove(&(request.from, request.initiator_session_id));
        self.stats.failed_busy += 1;
    }

    /// The Diffie-Hellman step finished for `request`: builds the RIKeying naming
    /// `session_id` and what the worker needs to install the session. `None` when keying
    /// failed or `session_id` is `None` (no room).
    pub fn complete(
        &mut self,
        now: Instant,
        request: &KeyingRequest,
        result: Result<Accepted, KeyingError>,
        session_id: Option<u32>,
    ) -> Option<Keyed> {
        let key = (request.from, request.initiator_session_id);
        self.pending.remove(&key);
        let accepted = match result {
            Ok(a) => a,
            Err(e) => {
                self.stats.failed_keying += 1;
                tracing::debug!(from = %request.from, error = %e, "keying failed");
                return None;
            }
        };
        let Some(session_id) = session_id else {
            self.stats.failed_max_sessions += 1;
            return None;
        };
        let chunk = RIKeying {
            responder_session_id: SessionId(session_id),
            skrc: &accepted.skrc,
            signature: FLASH_SIGNATURE,
        };
        let rikeying =
            startup_packet(&mut self.encoder, now, request.initiator_session_id, &chunk)?;
        self.remember(
            now,
            key,
            Sha256::digest(&request.skic).into(),
            rikeying.clone(),
        );
        self.stats.completed += 1;
        Some(Keyed {
            far_session_id: request.initiator_session_id,
            address: request.from,
            peer_id: request.peer_id.0,
            secrets: SessionSecrets {
                keys: accepted.keys,
                send: accepted.negotiated.send,
                receive: accepted.negotiated.receive,
            },
            rikeying,
        })
    }

    fn remember(
        &mut self,
        now: Instant,
        key: (SocketAddr, u32),
        skic_hash: [u8; 32],
        rikeying: Vec<u8>,
    ) {
        // Forget what is too old, and the oldest when full: O(1) per handshake.
        while let Some(&(at, k)) = self.accepted_order.front() {
            let expired = now.saturating_duration_since(at) >= ACCEPTED_MEMORY;
            if !expired && self.accepted.len() < MAX_ACCEPTED {
                break;
            }
            self.accepted_order.pop_front();
            if self.accepted.get(&k).is_some_and(|r| r.at == at) {
                self.accepted.remove(&k);
            }
        }
        self.accepted_order.push_back((now, key));
        self.accepted.insert(
            key,
            Remembered {
                skic_hash,
                rikeying,
                at: now,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use rtmfp::crypto::{DhGroup, DhKeyPair, NegotiationPolicy};
    use rtmfp::startup::components::{build_fingerprint_epd, build_url_epd};
    use rtmfp::startup::initiator::{Initiator, InitiatorConfig, StartupMessage};
    use rtmfp::startup::responder::ResponderConfig;
    use rtmfp::wire::{AddressOrigin, ChunkBody, IHello, IIKeying};

    fn responder() -> Arc<Responder> {
        Arc::new(Responder::new(
            ResponderConfig {
                groups: DhGroup::ALL.to_vec(),
                policy: NegotiationPolicy::FLASH_COMPATIBLE,
            },
            [9; 32],
            &[3; 32],
            Instant::ZERO,
        ))
    }

    fn encode(msg: &StartupMessage<'_>) -> Vec<u8> {
        let mut enc = PacketEncoder::startup();
        match msg {
            StartupMessage::IHello { epd, tag } => {
                startup_packet(&mut enc, Instant::ZERO, 0, &IHello { epd, tag: &tag[..] }).unwrap()
            }
            StartupMessage::IIKeying {
                initiator_session_id,
                cookie,
                certificate,
                skic,
            } => startup_packet(
                &mut enc,
                Instant::ZERO,
                0,
                &IIKeying {
                    initiator_session_id: SessionId(*initiator_session_id),
                    cookie_echo: cookie,
                    certificate,
                    skic,
                    signature: FLASH_SIGNATURE,
                },
            )
            .unwrap(),
        }
    }

    /// Runs an initiator against the service up to the RIKeying; answers the actions of the
    /// IIKeying step.
    fn handshake(
        h: &mut Handshakes,
        from: SocketAddr,
        seed: u8,
    ) -> (Initiator, Vec<Action>, Vec<u8>) {
        let mut rng = ChaCha20Rng::from_seed([seed; 32]);
        let now = Instant::from_millis(10);
        let mut init = Initiator::new(
            now,
            InitiatorConfig::default(),
            build_url_epd(b"rtmfp://server/app"),
            None,
            &[from],
            7,
            &mut rng,
        );
        let (_, hello) = init.poll_transmit(now).unwrap();
        let mut dg = encode(&hello);
        let mut out = Vec::new();
        h.on_startup(now, 0, from, &mut dg, &mut out);
        let Some(Action::Transmit { datagram, .. }) = out.pop() else {
            panic!("no RHello")
        };
        let mut rhello = datagram;
        let decoded = PacketDecoder::startup().decode(&mut rhello).unwrap();
        let mut r = Reader::new(decoded.packet);
        PacketHeader::parse(&mut r).unwrap();
        let Some(Ok(Chunk::RHello(rh))) = ChunkIter::new(r.rest()).next() else {
            panic!("not an RHello")
        };
        init.on_rhello(now, from, rh.tag_echo, rh.cookie, rh.certificate, &mut rng)
            .unwrap();
        let (_, keying) = init.poll_transmit(now).unwrap();
        let dg = encode(&keying);
        let mut copy = dg.clone();
        h.on_startup(now, 0, from, &mut copy, &mut out);
        (init, out, dg)
    }

    #[test]
    fn a_full_handshake_keys_both_ends_alike_and_repeats_the_rikeying() {
        let mut h = Handshakes::new(responder(), HandshakeLimits::default());
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let (mut init, out, iikeying) = handshake(&mut h, from, 1);
        let [Action::Compute(req)] = &out[..] else {
            panic!("{out:?}")
        };
        let pair = DhKeyPair::generate(req.group, &mut ChaCha20Rng::from_seed([5; 32]));
        let result = h.responder().accept(req, &pair);
        let keyed = h
            .complete(Instant::from_millis(20), req, result, Some(0x0101_0001))
            .unwrap();
        // The initiator accepts our RIKeying and derives the mirror keys.
        let mut rik = keyed.rikeying.clone();
        let decoded = PacketDecoder::startup().decode(&mut rik).unwrap();
        assert_eq!(decoded.session_id, 7);
        let mut r = Reader::new(decoded.packet);
        PacketHeader::parse(&mut r).unwrap();
        let Some(Ok(Chunk::RIKeying(k))) = ChunkIter::new(r.rest()).next() else {
            panic!()
        };
        assert_eq!(k.responder_session_id.0, 0x0101_0001);
        let est = init
            .on_rikeying(from, k.responder_session_id.0, k.skrc)
            .unwrap();
        assert_eq!(est.keys.encrypt, keyed.secrets.keys.decrypt);
        assert_eq!(est.keys.decrypt, keyed.secrets.keys.encrypt);
        // A retransmitted IIKeying gets the same RIKeying and no new DH work.
        let mut again = iikeying.clone();
        let mut out = Vec::new();
        h.on_startup(Instant::from_millis(30), 1, from, &mut again, &mut out);
        let [Action::Transmit { datagram, .. }] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(datagram, &keyed.rikeying);
        assert_eq!(h.stats().repeated, 1);
        assert_eq!(h.stats().completed, 1);
    }

    #[test]
    fn pending_keyings_are_not_computed_twice_and_limits_apply() {
        let mut h = Handshakes::new(
            responder(),
            HandshakeLimits {
                rate: 1.0,
                burst: 1.0,
                max_sessions: 10,
            },
        );
        let from: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let (_, out, iikeying) = handshake(&mut h, from, 2);
        assert!(matches!(&out[..], [Action::Compute(_)]));
        let mut again = iikeying.clone();
        let mut out = Vec::new();
        h.on_startup(Instant::from_millis(11), 0, from, &mut again, &mut out);
        assert!(out.is_empty(), "a pending IIKeying is not computed twice");
        // Another handshake from the same address within the second is rate-limited.
        let (_, out, _) = handshake(&mut h, "127.0.0.1:4002".parse().unwrap(), 3);
        assert!(out.is_empty());
        assert_eq!(h.stats().failed_rate_limited, 1);
        // A full server refuses.
        let mut full = Handshakes::new(
            responder(),
            HandshakeLimits {
                max_sessions: 0,
                ..HandshakeLimits::default()
            },
        );
        let (_, out, _) = handshake(&mut full, from, 4);
        assert!(out.is_empty());
        assert_eq!(full.stats().failed_max_sessions, 1);
    }

    #[test]
    fn short_ihellos_get_one_rhello_a_limited_number_of_times_then_three_times_their_size() {
        let mut h = Handshakes::new(responder(), HandshakeLimits::default());
        let from: SocketAddr = "127.0.0.1:4003".parse().unwrap();
        // A 36-byte IHello, as librtmfp sends: a short ancillary-data EPD and a 16-byte tag.
        let epd = build_url_epd(b"live");
        let dg = encode(&StartupMessage::IHello {
            epd: &epd,
            tag: &[1; 16],
        });
        let len = dg.len();
        assert_eq!(len, 36);
        let mut out = Vec::new();
        let burst = SHORT_ANSWER_BURST as usize;
        for _ in 0..burst + 5 {
            h.on_startup(Instant::ZERO, 0, from, &mut dg.clone(), &mut out);
        }
        // The burst is answered, within the floor; then only what fits three times the
        // request, which no RHello does.
        let sizes: Vec<usize> = out
            .iter()
            .map(|a| match a {
                Action::Transmit { datagram, .. } => datagram.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes.len(), burst, "{sizes:?}");
        assert!(sizes
            .iter()
            .all(|&n| n > AMPLIFICATION_FACTOR * len && n <= MIN_ANSWER_BUDGET));
        assert_eq!(h.stats().rhello, burst as u64);
        assert_eq!(h.stats().amplification_refused, 5);
        // Another source has its own allowance.
        out.clear();
        h.on_startup(
            Instant::ZERO,
            0,
            "127.0.0.2:4003".parse().unwrap(),
            &mut dg.clone(),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        // A request long enough is answered within three times its size, every time.
        let long_epd = build_url_epd(b"rtmfp://server.example/live/a-longer-application-path");
        let long = encode(&StartupMessage::IHello {
            epd: &long_epd,
            tag: &[1; 16],
        });
        out.clear();
        for _ in 0..5 {
            h.on_startup(Instant::ZERO, 0, from, &mut long.clone(), &mut out);
        }
        assert_eq!(out.len(), 5);
        for a in &out {
            if let Action::Transmit { datagram, .. } = a {
                assert!(datagram.len() <= AMPLIFICATION_FACTOR * long.len());
            }
        }
    }

    #[test]
    fn librtmfp_s_captured_ihello_is_answered() {
        // The first datagram of the `librtmfp-cumulus-connect` capture (shared/fixtures): a
        // 36-byte IHello from librtmfp, whose RHello does not fit three times over.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/librtmfp-cumulus-connect/001-c2s.bin"
        );
        let Ok(mut dg) = std::fs::read(path) else {
            panic!("fixture {path} missing");
        };
        assert_eq!(dg.len(), 36);
        let mut h = Handshakes::new(responder(), HandshakeLimits::default());
        let mut out = Vec::new();
        h.on_startup(
            Instant::from_millis(1),
            0,
            "127.0.0.1:48464".parse().unwrap(),
            &mut dg,
            &mut out,
        );
        let [Action::Transmit { datagram, .. }] = &out[..] else {
            panic!("{out:?} {:?}", h.stats())
        };
        assert!(datagram.len() <= MIN_ANSWER_BUDGET);
        assert_eq!(h.stats().rhello, 1);
    }

    #[test]
    fn many_ihellos_in_one_datagram_share_one_budget() {
        let mut h = Handshakes::new(responder(), HandshakeLimits::default());
        let from: SocketAddr = "127.0.0.1:4005".parse().unwrap();
        let epd = build_url_epd(b"rtmfp://a/");
        let mut enc = PacketEncoder::startup();
        let tag = [1u8; 16];
        let hello = IHello {
            epd: &epd,
            tag: &tag[..],
        };
        let mut dg = rtmfp::endpoint::startup_packet_with(&mut enc, Instant::ZERO, 0, |w| {
            (0..40).all(|_| hello.emit(w).is_ok())
        })
        .unwrap();
        let len = dg.len();
        let mut out = Vec::new();
        h.on_startup(Instant::ZERO, 0, from, &mut dg, &mut out);
        assert!(
            answered_at_most(&out) <= AMPLIFICATION_FACTOR * len,
            "{out:?} for {len}"
        );
        assert!(h.stats().amplification_refused > 0);
    }

    /// Bytes the actions for one datagram may send: their datagrams, and the budgets given to
    /// the answers decided later.
    fn answered_at_most(out: &[Action]) -> usize {
        out.iter()
            .map(|a| match a {
                Action::Transmit { datagram, .. } => datagram.len(),
                Action::Rendezvous(Rendezvous { budget, .. }) | Action::Hello { budget, .. } => {
                    *budget
                }
                Action::Compute(_) => 0,
            })
            .sum()
    }

    #[test]
    fn many_rendezvous_or_application_hellos_in_one_datagram_share_one_budget() {
        let epd = build_fingerprint_epd(&[7; 32]);
        let url = build_url_epd(b"rtmfp://a/");
        for (epd, ask) in [(&epd, false), (&url, true)] {
            let mut h = Handshakes::new(responder(), HandshakeLimits::default());
            h.ask_applications(ask);
            let from: SocketAddr = "127.0.0.1:4006".parse().unwrap();
            let mut enc = PacketEncoder::startup();
            let tag = [1u8; 16];
            let hello = IHello { epd, tag: &tag[..] };
            let mut dg = rtmfp::endpoint::startup_packet_with(&mut enc, Instant::ZERO, 0, |w| {
                (0..20).all(|_| hello.emit(w).is_ok())
            })
            .unwrap();
            let len = dg.len();
            let mut out = Vec::new();
            h.on_startup(Instant::ZERO, 0, from, &mut dg, &mut out);
            assert_eq!(out.len(), 1, "one answer per datagram: {out:?}");
            assert!(answered_at_most(&out) <= AMPLIFICATION_FACTOR * len);
        }
    }

    #[test]
    fn an_ihello_for_another_peer_asks_for_an_introduction_within_limits() {
        let limits = HandshakeLimits {
            rate: 1.0,
            burst: 2.0,
            max_sessions: 10,
        };
        let mut h = Handshakes::new(responder(), limits);
        let from: SocketAddr = "127.0.0.1:4010".parse().unwrap();
        let now = Instant::from_millis(5);
        let target = [7u8; 32];
        let epd = build_fingerprint_epd(&target);
        let tag = [5u8; 16];
        let dg = encode(&StartupMessage::IHello {
            epd: &epd,
            tag: &tag,
        });
        let mut out = Vec::new();
        h.on_startup(now, 0, from, &mut dg.clone(), &mut out);
        let [Action::Rendezvous(Rendezvous {
            from: f,
            peer_id,
            tag: t,
            budget,
            attempts: 1,
        })] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!((*f, peer_id, &t[..]), (from, &target, &tag[..]));
        assert_eq!(*budget, AMPLIFICATION_FACTOR * dg.len());
        // The Redirect echoes the tag and lists the addresses in order (RFC 7016 §2.3.5).
        let addresses = [
            Address::new("192.0.2.1:1935".parse().unwrap(), AddressOrigin::Observed),
            Address::new("10.0.0.2:5000".parse().unwrap(), AddressOrigin::Local),
        ];
        let mut p = h.redirect(now, from, &tag, &addresses, *budget).unwrap();
        assert!(p.len() <= *budget);
        let decoded = PacketDecoder::startup().decode(&mut p).unwrap();
        assert_eq!(decoded.session_id, 0);
        let mut r = Reader::new(decoded.packet);
        assert_eq!(PacketHeader::parse(&mut r).unwrap().mode, Mode::Startup);
        let Some(Ok(Chunk::Redirect(redirect))) = ChunkIter::new(r.rest()).next() else {
            panic!("not a Redirect")
        };
        assert_eq!(redirect.tag_echo, &tag);
        let listed: Vec<Address> = redirect.addresses().map(Result::unwrap).collect();
        assert_eq!(listed, addresses);
        // A smaller budget leaves the last addresses out; too small a one withholds it.
        let mut p = h.redirect(now, from, &tag, &addresses, 40).unwrap();
        assert!(p.len() <= 40);
        let decoded = PacketDecoder::startup().decode(&mut p).unwrap();
        let mut r = Reader::new(decoded.packet);
        PacketHeader::parse(&mut r).unwrap();
        let Some(Ok(Chunk::Redirect(redirect))) = ChunkIter::new(r.rest()).next() else {
            panic!("not a Redirect")
        };
        let listed: Vec<Address> = redirect.addresses().map(Result::unwrap).collect();
        assert_eq!(listed, addresses[..1]);
        assert!(h.redirect(now, from, &tag, &addresses, 20).is_none());
        assert_eq!(h.stats().amplification_refused, 1);
        h.introduced();
        assert_eq!(h.stats().introduced, 1);
        // Per source address, requests are rate-limited like IIKeyings (burst 2 here).
        for _ in 0..3 {
            h.on_startup(now, 0, from, &mut dg.clone(), &mut out);
        }
        assert_eq!(h.stats().rendezvous, 4);
        assert_eq!(h.stats().failed_rate_limited, 2);
        h.unknown_peer();
        assert_eq!(h.stats().rendezvous_unknown, 1);
        // An IHello naming the server's own peer ID is an ordinary one: RHello.
        let own = build_fingerprint_epd(&h.responder().fingerprint().0);
        out.clear();
        let mut dg = encode(&StartupMessage::IHello {
            epd: &own,
            tag: &tag,
        });
        h.on_startup(now, 0, from, &mut dg, &mut out);
        assert!(matches!(&out[..], [Action::Transmit { .. }]));
        assert_eq!(h.stats().rhello, 1);
    }

    #[test]
    fn ihellos_go_to_the_applications_when_they_ask_and_are_counted_per_tag() {
        let mut h = Handshakes::new(responder(), HandshakeLimits::default());
        let from: SocketAddr = "127.0.0.1:4020".parse().unwrap();
        let epd = build_url_epd(b"rtmfp://server.example/app?lb=1");
        let hello = |tag: u8| {
            encode(&StartupMessage::IHello {
                epd: &epd,
                tag: &[tag; 16],
            })
        };
        let mut out = Vec::new();
        h.ask_applications(true);
        for _ in 0..2 {
            h.on_startup(Instant::ZERO, 0, from, &mut hello(1), &mut out);
        }
        h.on_startup(Instant::ZERO, 0, from, &mut hello(2), &mut out);
        let asked: Vec<(String, u32)> = out
            .iter()
            .map(|a| match a {
                Action::Hello { url, attempts, .. } => (url.clone(), *attempts),
                other => panic!("{other:?}"),
            })
            .collect();
        let url = "rtmfp://server.example/app?lb=1".to_string();
        assert_eq!(asked, [(url.clone(), 1), (url.clone(), 2), (url, 1)]);
        assert_eq!(h.stats().rhello, 0);
        // Not redirected: the RHello is built from what the action carries.
        let Action::Hello {
            tag,
            cookie,
            budget,
            ..
        } = &out[0]
        else {
            unreachable!()
        };
        let p = h.rhello(Instant::ZERO, from, tag, cookie, *budget).unwrap();
        assert!(p.len() <= *budget);
        assert_eq!(h.stats().rhello, 1);
        // Off again: answered at once.
        h.ask_applications(false);
        out.clear();
        h.on_startup(Instant::ZERO, 0, from, &mut hello(1), &mut out);
        assert!(matches!(&out[..], [Action::Transmit { .. }]));
    }

    #[test]
    fn garbage_is_counted_not_answered() {
        let mut h = Handshakes::new(responder(), HandshakeLimits::default());
        let from: SocketAddr = "127.0.0.1:4004".parse().unwrap();
        let mut out = Vec::new();
        for len in [0usize, 4, 16, 40, 200] {
            let mut junk = vec![0x5Au8; len];
            h.on_startup(Instant::ZERO, 0, from, &mut junk, &mut out);
        }
        assert!(out.is_empty());
        assert!(h.stats().malformed >= 4);
    }

    #[test]
    fn remembered_rikeyings_are_bounded_and_expire() {
        let mut h = Handshakes::new(responder(), HandshakeLimits::default());
        let at = |ms| Instant::from_millis(ms);
        for i in 0..(MAX_ACCEPTED as u32 + 10) {
            h.remember(at(1), ("127.0.0.1:1".parse().unwrap(), i), [0; 32], vec![1]);
        }
        assert_eq!(h.accepted.len(), MAX_ACCEPTED);
        assert!(!h
            .accepted
            .contains_key(&("127.0.0.1:1".parse().unwrap(), 0)));
        let later = at(1) + ACCEPTED_MEMORY;
        h.remember(later, ("127.0.0.1:2".parse().unwrap(), 1), [0; 32], vec![1]);
        assert_eq!(
            h.accepted.len(),
            1,
            "everything older than the memory is forgotten"
        );
    }

    #[test]
    fn rate_limiter_refills() {
        let mut l = RateLimiter::new(10.0, 2.0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(l.allow(Instant::ZERO, ip));
        assert!(l.allow(Instant::ZERO, ip));
        assert!(!l.allow(Instant::ZERO, ip));
        assert!(l.allow(Instant::from_millis(100), ip));
        assert!(l.allow(Instant::ZERO, "10.0.0.2".parse().unwrap()));
    }
}
