//! The responder side of the startup handshake (RFC 7016 §3.5.1.1.2), stateless until a valid
//! IIKeying: no per-IHello state and no Diffie-Hellman work before the cookie checks out.

use std::net::SocketAddr;

use super::components::{
    build_ephemeral_certificate, build_responder_key_component, build_static_key_certificate,
    Certificate, ComponentError, DhChoice, Epd, KeyComponent, CERT_RANDOMNESS_LEN, FINGERPRINT_LEN,
};
use super::cookie::{CookieCheck, CookieJar, COOKIE_LEN};
use crate::crypto::{
    derive_session_keys, fingerprint, negotiate, CryptoError, DhGroup, DhKeyPair,
    KeyingNegotiation, NegotiatedModes, NegotiationPolicy, SessionKeys,
};
use crate::ids::PeerId;
use crate::time::Instant;

/// Responder settings.
#[derive(Debug, Clone)]
pub struct ResponderConfig {
    /// Groups we implement and advertise, strongest first.
    pub groups: Vec<DhGroup>,
    /// HMAC and SSEQ policy (RFC 7425 §4.6.4).
    pub policy: NegotiationPolicy,
}

impl Default for ResponderConfig {
    fn default() -> Self {
        ResponderConfig {
            groups: DhGroup::ALL.to_vec(),
            policy: NegotiationPolicy::FLASH_COMPATIBLE,
        }
    }
}

/// What to do with an IHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloDisposition<'a> {
    /// Answer with an RHello: echo `tag`, send `cookie` and our certificate (RFC 7016 §2.3.4).
    RHello {
        /// The initiator's tag, to echo.
        tag: &'a [u8],
        /// A cookie bound to the initiator's address.
        cookie: [u8; COOKIE_LEN],
    },
    /// The EPD names another endpoint by fingerprint: the caller may Redirect the initiator or
    /// forward the IHello (RFC 7016 §3.5.1.4, §3.5.1.5), or say nothing.
    Rendezvous {
        /// The peer the initiator looks for.
        peer_id: PeerId,
        /// The initiator's tag.
        tag: &'a [u8],
    },
    /// Not for us: ignore it (RFC 7016 §3.5.1.1.2 permits silence).
    Ignore,
}

/// What to do with an IIKeying.
#[derive(Debug)]
pub enum KeyingDisposition {
    /// The cookie is good: compute the session (see [`Responder::accept`]).
    Accept(KeyingRequest),
    /// The cookie is ours but was made for another address: answer with a Cookie Change sent to
    /// the initiator's session ID (RFC 7016 §3.5.1.2).
    CookieChange {
        /// The initiator session ID to send it to.
        initiator_session_id: u32,
        /// The new cookie, for the new address.
        new_cookie: [u8; COOKIE_LEN],
    },
    /// Drop it, for the reason given.
    Reject(KeyingError),
}

/// Why an IIKeying was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyingError {
    /// The cookie is not ours, or was tampered with.
    #[error("invalid cookie")]
    InvalidCookie,
    /// The cookie is older than its lifetime.
    #[error("expired cookie")]
    ExpiredCookie,
    /// The certificate or key component is malformed.
    #[error("malformed keying: {0}")]
    Malformed(#[from] ComponentError),
    /// No Diffie-Hellman group in common, or the key for it is missing.
    #[error("no common Diffie-Hellman group")]
    NoCommonGroup,
    /// HMAC/SSEQ negotiation failed, or the far key failed validation.
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    /// The initiator session ID is 0, which is reserved (RFC 7016 §2.2.2).
    #[error("initiator session ID 0")]
    ZeroSessionId,
}

/// A checked IIKeying, ready for the Diffie-Hellman step. Owns copies of the fields it needs, so
/// it can be sent to another thread.
#[derive(Debug, Clone)]
pub struct KeyingRequest {
    /// Where the IIKeying came from.
    pub from: SocketAddr,
    /// The initiator's receive session ID.
    pub initiator_session_id: u32,
    /// The initiator's peer ID (fingerprint of its certificate).
    pub peer_id: PeerId,
    /// The group to key with.
    pub group: DhGroup,
    /// The initiator's DH public key for that group.
    pub far_public_key: Vec<u8>,
    /// The initiator's session key component, whole.
    pub skic: Vec<u8>,
    /// The initiator's certificate, whole.
    pub certificate: Vec<u8>,
    /// The initiator's HMAC and SSEQ offers.
    pub far_negotiation: KeyingNegotiation,
}

/// A keyed session, as the responder sees it.
#[derive(Debug)]
pub struct Accepted {
    /// Our session key component (SKRC), whole; it goes into the RIKeying.
    pub skrc: Vec<u8>,
    /// Derived keys.
    pub keys: SessionKeys,
    /// Negotiated packet modes.
    pub negotiated: NegotiatedModes,
}

/// The stateless responder.
#[derive(Debug, Clone)]
pub struct Responder {
    config: ResponderConfig,
    cookies: CookieJar,
    certificate: Vec<u8>,
    fingerprint: PeerId,
    /// A static identity: its key is in the certificate and keys every session.
    static_key: Option<DhKeyPair>,
}

impl Responder {
    /// A responder with a fresh certificate (`randomness` goes into its extra-randomness option)
    /// and a cookie secret. `epoch` starts the cookie clock.
    pub fn new(
        config: ResponderConfig,
        cookie_secret: [u8; 32],
        randomness: &[u8; CERT_RANDOMNESS_LEN],
        epoch: Instant,
    ) -> Self {
        let ids: Vec<u64> = config.groups.iter().map(|g| g.id()).collect();
        let certificate = build_ephemeral_certificate(&ids, randomness);
        // Our own certificate is well formed by construction.
        let fingerprint = fingerprint(&certificate).unwrap_or(PeerId([0; 32]));
        Responder {
            config,
            cookies: CookieJar::new(cookie_secret, epoch),
            certificate,
            fingerprint,
            static_key: None,
        }
    }

    /// A responder with a static identity (RFC 7425 §4.3.3, §4.3.4): its certificate holds the
    /// static public key of `key_pair`, exactly as a Flash Player certificate does, so its
    /// fingerprint is the same whether it initiates or responds, and it keys every session with
    /// that key. This is what P2P peers need, and what makes a server pinnable by fingerprint.
    pub fn with_static_key(
        policy: NegotiationPolicy,
        key_pair: DhKeyPair,
        cookie_secret: [u8; 32],
        epoch: Instant,
    ) -> Self {
        let certificate =
            build_static_key_certificate(key_pair.group().id(), key_pair.public_key());
        // Our own certificate is well formed by construction.
        let fingerprint = fingerprint(&certificate).unwrap_or(PeerId([0; 32]));
        Responder {
            config: ResponderConfig {
                groups: vec![key_pair.group()],
                policy,
            },
            cookies: CookieJar::new(cookie_secret, epoch),
            certificate,
            fingerprint,
            static_key: Some(key_pair),
        }
    }

    /// The static identity key pair, if this responder has one.
    pub fn static_key(&self) -> Option<&DhKeyPair> {
        self.static_key.as_ref()
    }

    /// Our certificate, sent in every RHello.
    pub fn certificate(&self) -> &[u8] {
        &self.certificate
    }

    /// Our fingerprint: the server's peer ID (RFC 7425 §4.3.2).
    pub fn fingerprint(&self) -> PeerId {
        self.fingerprint
    }

    /// Decides what to do with an IHello from `from` (RFC 7016 §3.5.1.1.2). Keeps no state.
    pub fn on_ihello<'a>(
        &self,
        now: Instant,
        from: &SocketAddr,
        epd: &[u8],
        tag: &'a [u8],
    ) -> HelloDisposition<'a> {
        let Ok(epd) = Epd::parse(epd) else {
            return HelloDisposition::Ignore;
        };
        // A fingerprint always wins (RFC 7425 §4.4.3).
        if let Some(fp) = epd.fingerprint {
            if fp == &self.fingerprint.0 {
                return self.rhello(now, from, tag);
            }
            return HelloDisposition::Rendezvous {
                peer_id: PeerId(*fp),
                tag,
            };
        }
        if epd.ancillary_data.is_some() {
            return self.rhello(now, from, tag);
        }
        HelloDisposition::Ignore
    }

    /// Answers a Forwarded IHello received in an open session: the reply goes to `reply_to`
    /// exactly as if the IHello had come from there (RFC 7016 §3.5.1.5). Only a fingerprint EPD
    /// naming us selects us (RFC 7425 §4.4.2.3).
    pub fn on_forwarded_ihello<'a>(
        &self,
        now: Instant,
        reply_to: &SocketAddr,
        epd: &[u8],
        tag: &'a [u8],
    ) -> HelloDisposition<'a> {
        match Epd::parse(epd) {
            Ok(Epd {
                fingerprint: Some(fp),
                ..
            }) if fp == &self.fingerprint.0 => self.rhello(now, reply_to, tag),
            _ => HelloDisposition::Ignore,
        }
    }

    fn rhello<'a>(&self, now: Instant, to: &SocketAddr, tag: &'a [u8]) -> HelloDisposition<'a> {
        HelloDisposition::RHello {
            tag,
            cookie: self.cookies.make(now, to),
        }
    }

    /// Checks an IIKeying from `from` (RFC 7016 §3.5.1.1.2, §3.5.1.2). Cheap: no DH work.
    pub fn on_iikeying(
        &self,
        now: Instant,
        from: &SocketAddr,
        initiator_session_id: u32,
        cookie: &[u8],
        certificate: &[u8],
        skic: &[u8],
    ) -> KeyingDisposition {
        match self.cookies.check(now, from, cookie) {
            CookieCheck::Valid => {}
            CookieCheck::WrongAddress => {
                return KeyingDisposition::CookieChange {
                    initiator_session_id,
                    new_cookie: self.cookies.make(now, from),
                }
            }
            CookieCheck::Expired => return KeyingDisposition::Reject(KeyingError::ExpiredCookie),
            CookieCheck::Invalid => return KeyingDisposition::Reject(KeyingError::InvalidCookie),
        }
        match self.check_keying(from, initiator_session_id, certificate, skic) {
            Ok(req) => KeyingDisposition::Accept(req),
            Err(e) => KeyingDisposition::Reject(e),
        }
    }

    fn check_keying(
        &self,
        from: &SocketAddr,
        initiator_session_id: u32,
        certificate: &[u8],
        skic: &[u8],
    ) -> Result<KeyingRequest, KeyingError> {
        if initiator_session_id == 0 {
            return Err(KeyingError::ZeroSessionId);
        }
        let cert = Certificate::parse(certificate)?;
        let component = KeyComponent::parse(skic)?;
        let (group_id, far_key) = match (component.ephemeral_key, component.group_select) {
            (Some((g, key)), _) => (g, key),
            (None, Some(g)) => (g, cert.static_key(g).ok_or(KeyingError::NoCommonGroup)?),
            (None, None) => return Err(KeyingError::NoCommonGroup),
        };
        let group = self
            .config
            .groups
            .iter()
            .copied()
            .find(|g| g.id() == group_id)
            .ok_or(KeyingError::NoCommonGroup)?;
        // Check negotiation now, so that a hopeless IIKeying costs no DH.
        let far_negotiation = KeyingNegotiation::parse(skic)?;
        negotiate(&self.config.policy, &far_negotiation)?;
        Ok(KeyingRequest {
            from: *from,
            initiator_session_id,
            peer_id: fingerprint(certificate)?,
            group,
            far_public_key: far_key.to_vec(),
            skic: skic.to_vec(),
            certificate: certificate.to_vec(),
            far_negotiation,
        })
    }

    /// The Diffie-Hellman step: validates the initiator's key, computes the shared secret with
    /// `key_pair` (an ephemeral pair for the request's group, made ahead of time; a responder
    /// with a static identity uses its own pair instead), builds our SKRC and derives the session
    /// keys (RFC 7425 §4.6). This is the expensive part; run it off the packet path.
    pub fn accept(
        &self,
        request: &KeyingRequest,
        key_pair: &DhKeyPair,
    ) -> Result<Accepted, KeyingError> {
        // A static identity keys with its own pair; its public key is in our certificate.
        let (key_pair, dh) = match &self.static_key {
            Some(pair) => (pair, DhChoice::InCertificate),
            None => (
                key_pair,
                DhChoice::Ephemeral(request.group.id(), key_pair.public_key()),
            ),
        };
        if key_pair.group() != request.group {
            return Err(KeyingError::NoCommonGroup);
        }
        let shared = key_pair.compute_shared_secret(&request.far_public_key)?;
        let negotiated = negotiate(&self.config.policy, &request.far_negotiation)?;
        let skrc = build_responder_key_component(dh, negotiated.answer);
        let keys = derive_session_keys(&shared, &skrc, &request.skic);
        Ok(Accepted {
            skrc,
            keys,
            negotiated,
        })
    }
}

/// The length of a fingerprint, re-exported for callers matching EPDs.
pub const PEER_ID_LEN: usize = FINGERPRINT_LEN;
