//! The initiator side of the startup handshake (RFC 7016 §3.5.1.1.1): IHello with retransmission
//! and backoff to every candidate address, Redirect and Cookie Change handling, then IIKeying and
//! the keys from RIKeying.

use core::time::Duration;
use std::net::SocketAddr;

use rand_core::RngCore;

use super::components::{
    build_key_component, build_static_key_certificate, Certificate, ComponentError, DhChoice,
    KeyComponent, EXTRA_RANDOMNESS_LEN,
};
use crate::crypto::{
    derive_session_keys, fingerprint, negotiate, select_group, CryptoError, DhGroup, DhKeyPair,
    KeyingNegotiation, NegotiatedModes, NegotiationPolicy, SessionKeys,
};
use crate::ids::PeerId;
use crate::params::{
    REDIRECT_THRESHOLD, STARTUP_INITIAL_RTX, STARTUP_RTX_BACKOFF_STEP, ULTIMATE_OPEN_TIMEOUT,
};
use crate::time::Instant;

/// Length of the IHello tag we send (Flash Player and rtmfp-cpp use 16 random bytes).
pub const TAG_LEN: usize = 16;

/// Initiator settings.
#[derive(Debug, Clone)]
pub struct InitiatorConfig {
    /// Groups we can key with, strongest first; the strongest one the responder supports wins.
    pub groups: Vec<DhGroup>,
    /// HMAC and SSEQ policy (RFC 7425 §4.6.4).
    pub policy: NegotiationPolicy,
}

impl Default for InitiatorConfig {
    fn default() -> Self {
        InitiatorConfig {
            groups: DhGroup::ALL.to_vec(),
            policy: NegotiationPolicy::FLASH_COMPATIBLE,
        }
    }
}

/// Where the opening session stands (RFC 7016 §3.5.1.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitiatorState {
    /// IHellos are out (S_IHELLO_SENT).
    IHelloSent,
    /// An IIKeying is out (S_KEYING_SENT).
    KeyingSent,
    /// Keyed: the session is open.
    Open,
    /// The ultimate open timeout passed, or keying failed (S_OPEN_FAILED).
    Failed,
}

/// Why the handshake failed or a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InitiatorError {
    /// The message does not belong to this handshake (tag, state or address), and was ignored.
    #[error("not for this handshake")]
    Unexpected,
    /// The responder's certificate or key component is malformed.
    #[error("malformed responder keying: {0}")]
    Malformed(#[from] ComponentError),
    /// No Diffie-Hellman group in common.
    #[error("no common Diffie-Hellman group")]
    NoCommonGroup,
    /// The responder's certificate does not match the fingerprint we asked for.
    #[error("responder fingerprint mismatch")]
    WrongFingerprint,
    /// Crypto failure: bad public key or negotiation.
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    /// The responder chose session ID 0, which is reserved.
    #[error("responder session ID 0")]
    ZeroSessionId,
}

/// A startup message the initiator wants sent, in the default-key startup pseudo-session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupMessage<'a> {
    /// An IHello (RFC 7016 §2.3.2).
    IHello {
        /// The endpoint discriminator.
        epd: &'a [u8],
        /// Our tag.
        tag: &'a [u8; TAG_LEN],
    },
    /// An IIKeying (RFC 7016 §2.3.7).
    IIKeying {
        /// Our receive session ID.
        initiator_session_id: u32,
        /// The cookie echo.
        cookie: &'a [u8],
        /// Our certificate.
        certificate: &'a [u8],
        /// Our session key component.
        skic: &'a [u8],
    },
}

/// The handshake's result.
#[derive(Debug)]
pub struct Established {
    /// The responder's address.
    pub far_address: SocketAddr,
    /// The responder's receive session ID: we send with it.
    pub far_session_id: u32,
    /// The responder's fingerprint (RFC 7425 §4.3.2).
    pub far_peer_id: PeerId,
    /// Derived keys.
    pub keys: SessionKeys,
    /// Negotiated packet modes.
    pub negotiated: NegotiatedModes,
}

#[derive(Debug, Clone)]
struct Candidate {
    addr: SocketAddr,
    next_send: Instant,
    interval: Duration,
}

#[derive(Debug)]
struct Keying {
    responder: SocketAddr,
    cookie: Vec<u8>,
    cookie_changed: bool,
    certificate: Vec<u8>,
    skic: Vec<u8>,
    key_pair: DhKeyPair,
    responder_fingerprint: PeerId,
    responder_static_key: Option<Vec<u8>>,
    next_send: Instant,
    interval: Duration,
}

/// One opening session, from IHello to RIKeying.
#[derive(Debug)]
pub struct Initiator {
    config: InitiatorConfig,
    state: InitiatorState,
    started: Instant,
    epd: Vec<u8>,
    expected_fingerprint: Option<PeerId>,
    tag: [u8; TAG_LEN],
    initiator_session_id: u32,
    candidates: Vec<Candidate>,
    keying: Option<Keying>,
    /// A static identity to key with instead of a per-session key pair.
    identity: Option<DhKeyPair>,
}

impl Initiator {
    /// Starts opening a session to the endpoint named by `epd` at the `candidates` addresses.
    /// `initiator_session_id` is our receive session ID (non-zero). `expected_fingerprint` is
    /// the target's fingerprint when the EPD names one.
    pub fn new(
        now: Instant,
        config: InitiatorConfig,
        epd: Vec<u8>,
        expected_fingerprint: Option<PeerId>,
        candidates: &[SocketAddr],
        initiator_session_id: u32,
        rng: &mut impl RngCore,
    ) -> Self {
        let mut tag = [0u8; TAG_LEN];
        rng.fill_bytes(&mut tag);
        let candidates = candidates
            .iter()
            .take(REDIRECT_THRESHOLD)
            .map(|&addr| Candidate {
                addr,
                next_send: now,
                interval: STARTUP_INITIAL_RTX,
            })
            .collect();
        Initiator {
            config,
            state: InitiatorState::IHelloSent,
            started: now,
            epd,
            expected_fingerprint,
            tag,
            initiator_session_id,
            candidates,
            keying: None,
            identity: None,
        }
    }

    /// Keys with `identity`, a static key pair, instead of one made per session, so that our
    /// certificate and fingerprint (peer ID) are the same in every session and in the RHellos
    /// we send as responder (see [`super::responder::Responder::with_static_key`]). Call before
    /// the RHello arrives.
    pub fn set_identity(&mut self, identity: DhKeyPair) {
        self.identity = Some(identity);
    }

    /// Whether a responder answered (an RHello was accepted, so keying began): a failure after
    /// this was at the keying stage (no RIKeying), before it at the hello stage (no RHello).
    pub fn was_answered(&self) -> bool {
        self.keying.is_some()
    }

    /// Where the handshake stands.
    pub fn state(&self) -> InitiatorState {
        self.state
    }

    /// Our IHello tag.
    pub fn tag(&self) -> &[u8; TAG_LEN] {
        &self.tag
    }

    /// Our receive session ID.
    pub fn initiator_session_id(&self) -> u32 {
        self.initiator_session_id
    }

    /// The responder we are keying with, once an RHello was accepted.
    pub fn responder_address(&self) -> Option<SocketAddr> {
        self.keying.as_ref().map(|k| k.responder)
    }

    /// Our certificate, once keying started.
    pub fn certificate(&self) -> Option<&[u8]> {
        self.keying.as_ref().map(|k| k.certificate.as_slice())
    }

    /// The next startup message due at `now`, with its destination; retransmission backs off by
    /// 1.5 s per attempt per address (RFC 7016 §3.5.1.1.1).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, StartupMessage<'_>)> {
        match self.state {
            InitiatorState::IHelloSent => {
                let c = self.candidates.iter_mut().find(|c| c.next_send <= now)?;
                c.next_send = now + c.interval;
                c.interval += STARTUP_RTX_BACKOFF_STEP;
                let addr = c.addr;
                Some((
                    addr,
                    StartupMessage::IHello {
                        epd: &self.epd,
                        tag: &self.tag,
                    },
                ))
            }
            InitiatorState::KeyingSent => {
                let k = self.keying.as_mut()?;
                if k.next_send > now {
                    return None;
                }
                k.next_send = now + k.interval;
                k.interval += STARTUP_RTX_BACKOFF_STEP;
                Some((
                    k.responder,
                    StartupMessage::IIKeying {
                        initiator_session_id: self.initiator_session_id,
                        cookie: &k.cookie,
                        certificate: &k.certificate,
                        skic: &k.skic,
                    },
                ))
            }
            InitiatorState::Open | InitiatorState::Failed => None,
        }
    }

    /// When [`Self::handle_timeout`] or [`Self::poll_transmit`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self.started + ULTIMATE_OPEN_TIMEOUT;
        let next = match self.state {
            InitiatorState::IHelloSent => self.candidates.iter().map(|c| c.next_send).min(),
            InitiatorState::KeyingSent => self.keying.as_ref().map(|k| k.next_send),
            InitiatorState::Open | InitiatorState::Failed => return None,
        };
        Some(next.map_or(deadline, |n| n.min(deadline)))
    }

    /// Fails the handshake once the ultimate open timeout has passed (RFC 7016 §3.5.1.1.1).
    pub fn handle_timeout(&mut self, now: Instant) {
        let opening = matches!(
            self.state,
            InitiatorState::IHelloSent | InitiatorState::KeyingSent
        );
        if opening && now.saturating_duration_since(self.started) >= ULTIMATE_OPEN_TIMEOUT {
            self.state = InitiatorState::Failed;
        }
    }

    /// Handles an RHello from `from` (RFC 7016 §3.5.1.1.1): the first matching one wins; the
    /// others are ignored. Generates our key pair for the strongest common group.
    pub fn on_rhello(
        &mut self,
        now: Instant,
        from: SocketAddr,
        tag_echo: &[u8],
        cookie: &[u8],
        responder_certificate: &[u8],
        rng: &mut impl RngCore,
    ) -> Result<(), InitiatorError> {
        if self.state != InitiatorState::IHelloSent || tag_echo != self.tag {
            return Err(InitiatorError::Unexpected);
        }
        let responder_fingerprint = fingerprint(responder_certificate)?;
        if self
            .expected_fingerprint
            .is_some_and(|fp| fp != responder_fingerprint)
        {
            return Err(InitiatorError::WrongFingerprint);
        }
        let cert = Certificate::parse(responder_certificate)?;
        let key_pair = match &self.identity {
            Some(identity) if cert.groups().any(|g| g == identity.group().id()) => identity.clone(),
            Some(_) => return Err(InitiatorError::NoCommonGroup),
            None => {
                let group = select_group(&self.config.groups, cert.groups())
                    .ok_or(InitiatorError::NoCommonGroup)?;
                DhKeyPair::generate(group, rng)
            }
        };
        let group = key_pair.group();
        // Flash Player style: the certificate holds the static key (made for this session unless
        // we have an identity), and the SKIC selects its group (RFC 7425 §4.3.5, §4.6.2).
        let certificate = build_static_key_certificate(group.id(), key_pair.public_key());
        let mut randomness = [0u8; EXTRA_RANDOMNESS_LEN];
        rng.fill_bytes(&mut randomness);
        let skic = build_key_component(
            DhChoice::GroupSelect(group.id()),
            Some(&randomness),
            self.config.policy.offer(),
        );
        self.keying = Some(Keying {
            responder: from,
            cookie: cookie.to_vec(),
            cookie_changed: false,
            certificate,
            skic,
            key_pair,
            responder_fingerprint,
            responder_static_key: cert.static_key(group.id()).map(<[u8]>::to_vec),
            next_send: now,
            interval: STARTUP_INITIAL_RTX,
        });
        self.state = InitiatorState::KeyingSent;
        Ok(())
    }

    /// Handles a Redirect (RFC 7016 §3.5.1.1.1, §3.5.1.4): adds its addresses to the candidates
    /// while there are fewer than 24; an empty list means the sender's address (`from`).
    pub fn on_redirect(
        &mut self,
        now: Instant,
        from: SocketAddr,
        tag_echo: &[u8],
        addresses: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<(), InitiatorError> {
        if self.state != InitiatorState::IHelloSent || tag_echo != self.tag {
            return Err(InitiatorError::Unexpected);
        }
        let mut any = false;
        for addr in addresses {
            any = true;
            self.add_candidate(now, addr);
        }
        if !any {
            self.add_candidate(now, from);
        }
        Ok(())
    }

    fn add_candidate(&mut self, now: Instant, addr: SocketAddr) {
        if self.candidates.len() < REDIRECT_THRESHOLD
            && !self.candidates.iter().any(|c| c.addr == addr)
        {
            self.candidates.push(Candidate {
                addr,
                next_send: now,
                interval: STARTUP_INITIAL_RTX,
            });
        }
    }

    /// Handles a Cookie Change (RFC 7016 §3.5.1.2): at most once per session, replace the cookie
    /// and resend the IIKeying at once.
    pub fn on_cookie_change(
        &mut self,
        now: Instant,
        old_cookie: &[u8],
        new_cookie: &[u8],
    ) -> Result<(), InitiatorError> {
        let k = self.keying.as_mut().ok_or(InitiatorError::Unexpected)?;
        if self.state != InitiatorState::KeyingSent || k.cookie_changed || k.cookie != old_cookie {
            return Err(InitiatorError::Unexpected);
        }
        k.cookie = new_cookie.to_vec();
        k.cookie_changed = true;
        k.next_send = now;
        Ok(())
    }

    /// Handles the RIKeying (RFC 7016 §3.5.1.1.1): computes the shared secret and the keys.
    /// On success the handshake is over.
    pub fn on_rikeying(
        &mut self,
        from: SocketAddr,
        responder_session_id: u32,
        skrc: &[u8],
    ) -> Result<Established, InitiatorError> {
        let k = self.keying.as_ref().ok_or(InitiatorError::Unexpected)?;
        if self.state != InitiatorState::KeyingSent || from != k.responder {
            return Err(InitiatorError::Unexpected);
        }
        if responder_session_id == 0 {
            return Err(InitiatorError::ZeroSessionId);
        }
        let component = KeyComponent::parse(skrc)?;
        let group = k.key_pair.group();
        let far_key = match component.ephemeral_key {
            Some((g, key)) if g == group.id() => key,
            Some(_) => return Err(InitiatorError::NoCommonGroup),
            None => k
                .responder_static_key
                .as_deref()
                .ok_or(InitiatorError::NoCommonGroup)?,
        };
        let shared = k.key_pair.compute_shared_secret(far_key)?;
        let negotiated = negotiate(&self.config.policy, &KeyingNegotiation::parse(skrc)?)?;
        let keys = derive_session_keys(&shared, &k.skic, skrc);
        let far_peer_id = k.responder_fingerprint;
        self.state = InitiatorState::Open;
        Ok(Established {
            far_address: from,
            far_session_id: responder_session_id,
            far_peer_id,
            keys,
            negotiated,
        })
    }
}
