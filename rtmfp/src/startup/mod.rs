//! The startup handshake (RFC 7016 §3.5.1) for both roles, with the Flash profile (RFC 7425 §4):
//! stateless cookies, certificates and key components, the responder and the initiator.

pub mod components;
pub mod cookie;
#[doc(hidden)]
pub mod fuzzing;
pub mod initiator;
pub mod responder;

/// Glare resolution (RFC 7016 §3.5.1.3, RFC 7425 §4.3.6): when both ends open a session to each
/// other at once, the far end prevails only if its certificate is lexicographically less than
/// ours. The end that prevails ignores the other's IIKeying; the other aborts its own opening
/// session and answers as responder.
pub fn far_prevails_in_glare(near_certificate: &[u8], far_certificate: &[u8]) -> bool {
    far_certificate < near_certificate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glare_is_decided_by_certificate_order() {
        assert!(far_prevails_in_glare(b"\x02abc", b"\x01zzz"));
        assert!(!far_prevails_in_glare(b"\x01zzz", b"\x02abc"));
        // Exactly one side prevails for distinct certificates.
        let (a, b) = (b"abc".as_slice(), b"abd".as_slice());
        assert_ne!(far_prevails_in_glare(a, b), far_prevails_in_glare(b, a));
    }
}

#[cfg(test)]
mod handshake_tests {
    use std::net::SocketAddr;

    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::components::{build_fingerprint_epd, build_url_epd};
    use super::initiator::{
        Initiator, InitiatorConfig, InitiatorError, InitiatorState, StartupMessage,
    };
    use super::responder::{
        HelloDisposition, KeyingDisposition, KeyingError, Responder, ResponderConfig,
    };
    use crate::crypto::{DhGroup, DhKeyPair, NegotiationPolicy};
    use crate::ids::PeerId;
    use crate::params::{STARTUP_INITIAL_RTX, STARTUP_RTX_BACKOFF_STEP, ULTIMATE_OPEN_TIMEOUT};
    use crate::time::Instant;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn responder(groups: &[DhGroup], policy: NegotiationPolicy) -> Responder {
        let cfg = ResponderConfig {
            groups: groups.to_vec(),
            policy,
        };
        Responder::new(cfg, [1; 32], &[2; 32], Instant::ZERO)
    }

    /// Runs IHello → RHello → IIKeying → RIKeying between the two roles, without the wire.
    fn handshake(
        resp: &Responder,
        init_cfg: InitiatorConfig,
        epd: Vec<u8>,
        expected: Option<PeerId>,
    ) -> Result<(super::initiator::Established, super::responder::Accepted), String> {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let server = addr("127.0.0.1:1935");
        let client = addr("127.0.0.1:40000");
        let now = Instant::from_millis(1000);
        let mut init = Initiator::new(
            now,
            init_cfg,
            epd,
            expected,
            &[server],
            0x0200_0000,
            &mut rng,
        );
        let (dest, msg) = init.poll_transmit(now).ok_or("no IHello")?;
        assert_eq!(dest, server);
        let StartupMessage::IHello { epd, tag } = msg else {
            return Err("not IHello".into());
        };
        let (epd, tag) = (epd.to_vec(), *tag);
        let HelloDisposition::RHello { tag: echo, cookie } =
            resp.on_ihello(now, &client, &epd, &tag)
        else {
            return Err("no RHello".into());
        };
        init.on_rhello(now, server, echo, &cookie, resp.certificate(), &mut rng)
            .map_err(|e| e.to_string())?;
        let (_, msg) = init.poll_transmit(now).ok_or("no IIKeying")?;
        let StartupMessage::IIKeying {
            initiator_session_id,
            cookie,
            certificate,
            skic,
        } = msg
        else {
            return Err("not IIKeying".into());
        };
        let (cookie, certificate, skic) = (cookie.to_vec(), certificate.to_vec(), skic.to_vec());
        let req = match resp.on_iikeying(
            now,
            &client,
            initiator_session_id,
            &cookie,
            &certificate,
            &skic,
        ) {
            KeyingDisposition::Accept(r) => r,
            other => return Err(format!("{other:?}")),
        };
        assert_eq!(
            req.peer_id,
            crate::crypto::fingerprint(&certificate).unwrap()
        );
        let pair = DhKeyPair::generate(req.group, &mut rng);
        let accepted = resp.accept(&req, &pair).map_err(|e| e.to_string())?;
        let est = init
            .on_rikeying(server, 7, &accepted.skrc)
            .map_err(|e| e.to_string())?;
        assert_eq!(init.state(), InitiatorState::Open);
        Ok((est, accepted))
    }

    #[test]
    fn flash_compatible_handshake_derives_mirrored_keys() {
        let resp = responder(&[DhGroup::Modp1024], NegotiationPolicy::FLASH_COMPATIBLE);
        let cfg = InitiatorConfig {
            groups: vec![DhGroup::Modp1024],
            policy: NegotiationPolicy::FLASH_COMPATIBLE,
        };
        let (est, acc) =
            handshake(&resp, cfg, build_url_epd(b"rtmfp://localhost/app"), None).unwrap();
        assert_eq!(est.keys.send_key(), acc.keys.receive_key());
        assert_eq!(est.keys.receive_key(), acc.keys.send_key());
        assert_eq!(est.keys.near_nonce, acc.keys.far_nonce);
        assert_eq!(est.far_peer_id, resp.fingerprint());
        assert_eq!(est.far_session_id, 7);
        // Neither side asked for HMAC or SSEQ.
        assert_eq!(est.negotiated.send.hmac_len, None);
        assert!(!acc.negotiated.receive.sseq);
    }

    #[test]
    fn strongest_common_group_and_hmac_sseq_when_required() {
        let resp = responder(&DhGroup::ALL, NegotiationPolicy::RTMFP_CPP_DEFAULT);
        let cfg = InitiatorConfig {
            groups: vec![DhGroup::Modp1024, DhGroup::Modp2048],
            policy: NegotiationPolicy::RTMFP_CPP_DEFAULT,
        };
        let (est, acc) = handshake(&resp, cfg, build_url_epd(b"rtmfp://h/"), None).unwrap();
        assert_eq!(est.keys.send_key(), acc.keys.receive_key());
        assert_eq!(est.negotiated.send.hmac_len, Some(16));
        assert_eq!(acc.negotiated.receive.hmac_len, Some(16));
        assert!(est.negotiated.send.sseq && acc.negotiated.receive.sseq);
        assert!(est.negotiated.receive.sseq && acc.negotiated.send.sseq);
    }

    #[test]
    fn no_common_group_fails_at_rhello() {
        let resp = responder(&[DhGroup::Modp2048], NegotiationPolicy::FLASH_COMPATIBLE);
        let cfg = InitiatorConfig {
            groups: vec![DhGroup::Modp1024],
            policy: NegotiationPolicy::FLASH_COMPATIBLE,
        };
        let err = handshake(&resp, cfg, build_url_epd(b"x"), None).unwrap_err();
        assert!(err.contains("no common"), "{err}");
    }

    #[test]
    fn fingerprint_epd_selects_the_responder_or_asks_for_rendezvous() {
        let resp = responder(&[DhGroup::Modp1024], NegotiationPolicy::FLASH_COMPATIBLE);
        let me = resp.fingerprint();
        let cfg = InitiatorConfig {
            groups: vec![DhGroup::Modp1024],
            policy: NegotiationPolicy::FLASH_COMPATIBLE,
        };
        handshake(&resp, cfg, build_fingerprint_epd(&me.0), Some(me)).unwrap();
        let other = [9u8; 32];
        let d = resp.on_ihello(
            Instant::ZERO,
            &addr("1.2.3.4:5"),
            &build_fingerprint_epd(&other),
            b"tag",
        );
        assert_eq!(
            d,
            HelloDisposition::Rendezvous {
                peer_id: PeerId(other),
                tag: b"tag"
            }
        );
        // A forwarded IHello selects us only by our own fingerprint.
        let fwd = resp.on_forwarded_ihello(
            Instant::ZERO,
            &addr("1.2.3.4:5"),
            &build_url_epd(b"x"),
            b"t",
        );
        assert_eq!(fwd, HelloDisposition::Ignore);
        let fwd = resp.on_forwarded_ihello(
            Instant::ZERO,
            &addr("1.2.3.4:5"),
            &build_fingerprint_epd(&me.0),
            b"t",
        );
        assert!(matches!(fwd, HelloDisposition::RHello { .. }));
    }

    #[test]
    fn wrong_fingerprint_in_rhello_is_refused() {
        let resp = responder(&[DhGroup::Modp1024], NegotiationPolicy::FLASH_COMPATIBLE);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let server = addr("127.0.0.1:1935");
        let mut init = Initiator::new(
            Instant::ZERO,
            InitiatorConfig::default(),
            build_fingerprint_epd(&[5; 32]),
            Some(PeerId([5; 32])),
            &[server],
            1,
            &mut rng,
        );
        let tag = *init.tag();
        let r = init.on_rhello(
            Instant::ZERO,
            server,
            &tag,
            &[0; 64],
            resp.certificate(),
            &mut rng,
        );
        assert_eq!(r, Err(InitiatorError::WrongFingerprint));
    }

    #[test]
    fn cookie_change_for_a_moved_initiator_then_bad_cookies_are_rejected() {
        let resp = responder(&[DhGroup::Modp1024], NegotiationPolicy::FLASH_COMPATIBLE);
        let now = Instant::from_millis(5);
        let a = addr("10.0.0.1:1000");
        let b = addr("10.0.0.1:2000");
        let HelloDisposition::RHello { cookie, .. } =
            resp.on_ihello(now, &a, &build_url_epd(b"u"), b"t")
        else {
            panic!("no RHello")
        };
        match resp.on_iikeying(now, &b, 3, &cookie, &[], &[]) {
            KeyingDisposition::CookieChange {
                initiator_session_id,
                new_cookie,
            } => {
                assert_eq!(initiator_session_id, 3);
                assert_ne!(new_cookie, cookie);
            }
            other => panic!("{other:?}"),
        }
        let mut forged = cookie;
        forged[10] ^= 1;
        assert!(matches!(
            resp.on_iikeying(now, &a, 3, &forged, &[], &[]),
            KeyingDisposition::Reject(KeyingError::InvalidCookie)
        ));
        let late = now + ULTIMATE_OPEN_TIMEOUT + core::time::Duration::from_secs(2);
        assert!(matches!(
            resp.on_iikeying(late, &a, 3, &cookie, &[], &[]),
            KeyingDisposition::Reject(KeyingError::ExpiredCookie)
        ));
        // A valid cookie with garbage keying is refused without any DH work.
        assert!(matches!(
            resp.on_iikeying(now, &a, 3, &cookie, &[0xff], &[0xff]),
            KeyingDisposition::Reject(_)
        ));
        assert!(matches!(
            resp.on_iikeying(now, &a, 0, &cookie, &[], &[]),
            KeyingDisposition::Reject(KeyingError::ZeroSessionId)
        ));
    }

    #[test]
    fn ihello_backoff_redirect_and_open_timeout() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let s1 = addr("127.0.0.1:1");
        let t0 = Instant::from_millis(100);
        let mut init = Initiator::new(
            t0,
            InitiatorConfig::default(),
            build_url_epd(b"u"),
            None,
            &[s1],
            9,
            &mut rng,
        );
        let tag = *init.tag();
        assert!(init.poll_transmit(t0).is_some());
        assert!(init.poll_transmit(t0).is_none());
        assert_eq!(init.poll_timeout(), Some(t0 + STARTUP_INITIAL_RTX));
        let t1 = t0 + STARTUP_INITIAL_RTX;
        assert!(init.poll_transmit(t1).is_some());
        assert_eq!(
            init.poll_timeout(),
            Some(t1 + STARTUP_INITIAL_RTX + STARTUP_RTX_BACKOFF_STEP)
        );
        // A Redirect adds candidates, each sent at once; an empty one means the sender.
        let s2 = addr("127.0.0.1:2");
        init.on_redirect(t1, s1, &tag, [s2]).unwrap();
        assert_eq!(init.poll_transmit(t1).map(|(d, _)| d), Some(s2));
        let s3 = addr("127.0.0.1:3");
        init.on_redirect(t1, s3, &tag, []).unwrap();
        assert_eq!(init.poll_transmit(t1).map(|(d, _)| d), Some(s3));
        assert_eq!(
            init.on_redirect(t1, s3, b"other-tag", []),
            Err(InitiatorError::Unexpected)
        );
        init.handle_timeout(t0 + ULTIMATE_OPEN_TIMEOUT);
        assert_eq!(init.state(), InitiatorState::Failed);
        assert!(init.poll_transmit(t0 + ULTIMATE_OPEN_TIMEOUT).is_none());
    }

    #[test]
    fn initiator_follows_one_cookie_change_then_refuses_more() {
        let resp = responder(&[DhGroup::Modp1024], NegotiationPolicy::FLASH_COMPATIBLE);
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let server = addr("127.0.0.1:1935");
        let t0 = Instant::from_millis(10);
        let cfg = InitiatorConfig {
            groups: vec![DhGroup::Modp1024],
            policy: NegotiationPolicy::FLASH_COMPATIBLE,
        };
        let mut init = Initiator::new(t0, cfg, build_url_epd(b"u"), None, &[server], 5, &mut rng);
        let tag = *init.tag();
        let old = [1u8; 64];
        init.on_rhello(t0, server, &tag, &old, resp.certificate(), &mut rng)
            .unwrap();
        assert!(init.poll_transmit(t0).is_some());
        assert!(init.poll_transmit(t0).is_none());
        let new = [2u8; 64];
        assert_eq!(
            init.on_cookie_change(t0, &[9u8; 64], &new),
            Err(InitiatorError::Unexpected),
            "old cookie must match"
        );
        init.on_cookie_change(t0, &old, &new).unwrap();
        match init.poll_transmit(t0) {
            Some((_, StartupMessage::IIKeying { cookie, .. })) => assert_eq!(cookie, &new[..]),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            init.on_cookie_change(t0, &new, &[3u8; 64]),
            Err(InitiatorError::Unexpected),
            "only once"
        );
    }

    #[test]
    fn static_identities_key_with_the_certificate_keys() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let policy = NegotiationPolicy::FLASH_COMPATIBLE;
        let server_key = DhKeyPair::generate(DhGroup::Modp1024, &mut rng);
        let resp = Responder::with_static_key(policy, server_key.clone(), [3; 32], Instant::ZERO);
        let cert = super::components::Certificate::parse(resp.certificate()).unwrap();
        assert_eq!(cert.static_key(2), Some(server_key.public_key()));
        let server = addr("127.0.0.1:1935");
        let client = addr("127.0.0.1:40000");
        let now = Instant::from_millis(1);
        let cfg = InitiatorConfig {
            groups: vec![DhGroup::Modp1024],
            policy,
        };
        let mut init = Initiator::new(
            now,
            cfg,
            build_url_epd(b"u"),
            Some(resp.fingerprint()),
            &[server],
            2,
            &mut rng,
        );
        let identity = DhKeyPair::generate(DhGroup::Modp1024, &mut rng);
        init.set_identity(identity.clone());
        let tag = *init.tag();
        let HelloDisposition::RHello { cookie, .. } =
            resp.on_ihello(now, &client, &build_url_epd(b"u"), &tag)
        else {
            panic!("no RHello")
        };
        init.on_rhello(now, server, &tag, &cookie, resp.certificate(), &mut rng)
            .unwrap();
        let Some((
            _,
            StartupMessage::IIKeying {
                certificate, skic, ..
            },
        )) = init.poll_transmit(now)
        else {
            panic!("no IIKeying")
        };
        // Our certificate is the identity's: the same in every session.
        assert_eq!(
            certificate,
            super::components::build_static_key_certificate(2, identity.public_key()).as_slice()
        );
        let (certificate, skic) = (certificate.to_vec(), skic.to_vec());
        let KeyingDisposition::Accept(req) =
            resp.on_iikeying(now, &client, 2, &cookie, &certificate, &skic)
        else {
            panic!("refused")
        };
        // The pair passed in is ignored: a static responder keys with its own.
        let unused = DhKeyPair::generate(DhGroup::Modp1024, &mut rng);
        let acc = resp.accept(&req, &unused).unwrap();
        assert_eq!(
            super::components::KeyComponent::parse(&acc.skrc)
                .unwrap()
                .ephemeral_key,
            None
        );
        let est = init.on_rikeying(server, 9, &acc.skrc).unwrap();
        assert_eq!(est.keys.send_key(), acc.keys.receive_key());
        assert_eq!(est.keys.receive_key(), acc.keys.send_key());
    }
}
