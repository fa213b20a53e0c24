//! Flash-profile certificates, endpoint discriminators and session key components
//! (RFC 7425 §4.3, §4.4, §4.6). All three are option sequences (RFC 7016 §2.1.3).

use crate::crypto::{
    KeyingNegotiation, KEYING_OPTION_HMAC_NEGOTIATION, KEYING_OPTION_SSEQ_NEGOTIATION,
};
use crate::wire::{option_len, options, write_option};
use crate::wire::{vlu_len, Reader, WireError, Writer};

/// Certificate option: hostname (RFC 7425 §4.3.5).
pub const CERT_HOSTNAME: u64 = 0x00;
/// Certificate option: the endpoint accepts ancillary data (RFC 7425 §4.3.5).
pub const CERT_ACCEPTS_ANCILLARY_DATA: u64 = 0x0A;
/// Certificate option: extra randomness (RFC 7425 §4.3.5).
pub const CERT_EXTRA_RANDOMNESS: u64 = 0x0E;
/// Certificate option: a supported ephemeral Diffie-Hellman group (RFC 7425 §4.3.5).
pub const CERT_SUPPORTED_EPHEMERAL_DH_GROUP: u64 = 0x15;
/// Certificate option: a static Diffie-Hellman public key, group VLU then key (RFC 7425 §4.3.5).
pub const CERT_STATIC_DH_PUBLIC_KEY: u64 = 0x1D;

/// EPD option: required hostname (RFC 7425 §4.4.1).
pub const EPD_REQUIRED_HOSTNAME: u64 = 0x00;
/// EPD option: ancillary data, the `rtmfp://` URL of a client connect (RFC 7425 §4.4.2).
pub const EPD_ANCILLARY_DATA: u64 = 0x0A;
/// EPD option: fingerprint (peer ID) of the target (RFC 7425 §4.4.2.3).
pub const EPD_FINGERPRINT: u64 = 0x0F;

/// Session key component option: ephemeral DH public key, group VLU then key (RFC 7425 §4.6.2).
pub const SKC_EPHEMERAL_DH_PUBLIC_KEY: u64 = 0x0D;
/// Session key component option: extra randomness (RFC 7425 §4.6.2).
pub const SKC_EXTRA_RANDOMNESS: u64 = 0x0E;
/// Session key component option: select the group of the far certificate's static key (RFC 7425 §4.6.2).
pub const SKC_DH_GROUP_SELECT: u64 = 0x1D;
/// Session key component option: HMAC negotiation, flags byte then length VLU (RFC 7425 §4.6.4).
pub const SKC_HMAC_NEGOTIATION: u64 = KEYING_OPTION_HMAC_NEGOTIATION;
/// Session key component option: session sequence number negotiation, flags byte (RFC 7425 §4.6.4).
pub const SKC_SSEQ_NEGOTIATION: u64 = KEYING_OPTION_SSEQ_NEGOTIATION;

/// Length of a fingerprint or peer ID (SHA-256).
pub const FINGERPRINT_LEN: usize = 32;
/// Length of the extra-randomness values we send (as Flash Player and Cumulus do).
pub const EXTRA_RANDOMNESS_LEN: usize = 64;
/// Bytes of extra randomness in a responder's ephemeral certificate (RFC 7425 §4.3.2). 32
/// bytes (256 bits) make every certificate, and so every server peer ID, unique, and keep the
/// RHello within three times the smallest Flash IHello (see `updraft_control::handshake`).
pub const CERT_RANDOMNESS_LEN: usize = 32;
/// Most groups or keys we keep from one certificate; more are ignored.
pub const MAX_CERT_GROUPS: usize = 8;

/// Why a certificate, EPD or key component was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ComponentError {
    /// The option sequence is malformed.
    #[error("malformed option sequence: {0}")]
    Wire(#[from] WireError),
    /// A certificate holds both ephemeral groups and static keys (RFC 7425 §4.3.3).
    #[error("certificate mixes ephemeral groups and static keys")]
    MixedCertificate,
    /// A fingerprint option is not 32 bytes.
    #[error("fingerprint of the wrong length")]
    BadFingerprint,
}

/// A parsed certificate (RFC 7425 §4.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Certificate<'a> {
    /// The hostname option, if any.
    pub hostname: Option<&'a [u8]>,
    /// Whether the endpoint accepts ancillary data.
    pub accepts_ancillary_data: bool,
    /// Supported ephemeral DH groups, in certificate order (at most [`MAX_CERT_GROUPS`]).
    pub ephemeral_groups: Vec<u64>,
    /// Static DH public keys `(group, key)`, in certificate order (at most [`MAX_CERT_GROUPS`]).
    pub static_keys: Vec<(u64, &'a [u8])>,
}

impl<'a> Certificate<'a> {
    /// Parses a certificate. Options after an end marker are not part of the certificate proper
    /// (RFC 7425 §4.3.2) and are ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ComponentError> {
        let mut cert = Certificate::default();
        for opt in options(bytes) {
            let opt = opt?;
            match opt.kind {
                CERT_HOSTNAME => cert.hostname = Some(opt.value),
                CERT_ACCEPTS_ANCILLARY_DATA => cert.accepts_ancillary_data = true,
                CERT_SUPPORTED_EPHEMERAL_DH_GROUP
                    if cert.ephemeral_groups.len() < MAX_CERT_GROUPS =>
                {
                    cert.ephemeral_groups.push(opt.value_vlu()?);
                }
                CERT_STATIC_DH_PUBLIC_KEY => {
                    let mut r = Reader::new(opt.value);
                    let group = r.read_vlu()?;
                    if cert.static_keys.len() < MAX_CERT_GROUPS {
                        cert.static_keys.push((group, r.rest()));
                    }
                }
                _ => {}
            }
        }
        if !cert.ephemeral_groups.is_empty() && !cert.static_keys.is_empty() {
            return Err(ComponentError::MixedCertificate);
        }
        Ok(cert)
    }

    /// The static key for `group`, if the certificate holds one.
    pub fn static_key(&self, group: u64) -> Option<&'a [u8]> {
        self.static_keys
            .iter()
            .find(|(g, _)| *g == group)
            .map(|(_, k)| *k)
    }

    /// Every group this certificate can key with: ephemeral groups or those of its static keys.
    pub fn groups(&self) -> impl Iterator<Item = u64> + '_ {
        self.ephemeral_groups
            .iter()
            .copied()
            .chain(self.static_keys.iter().map(|(g, _)| *g))
    }
}

/// Builds a responder certificate for ephemeral Diffie-Hellman: accepts ancillary data, extra
/// randomness, then one supported-group option per group, strongest first (RFC 7425 §4.3.5).
/// Only groups that are implemented may be listed.
pub fn build_ephemeral_certificate(
    groups: &[u64],
    randomness: &[u8; CERT_RANDOMNESS_LEN],
) -> Vec<u8> {
    let mut len = option_len(CERT_ACCEPTS_ANCILLARY_DATA, 0)
        + option_len(CERT_EXTRA_RANDOMNESS, randomness.len());
    len += groups
        .iter()
        .map(|g| option_len(CERT_SUPPORTED_EPHEMERAL_DH_GROUP, vlu_len(*g)))
        .sum::<usize>();
    let mut out = vec![0u8; len];
    let mut w = Writer::new(&mut out);
    let mut vlu = [0u8; 10];
    let res = (|| -> Result<(), WireError> {
        write_option(&mut w, CERT_ACCEPTS_ANCILLARY_DATA, &[])?;
        write_option(&mut w, CERT_EXTRA_RANDOMNESS, randomness)?;
        for g in groups {
            write_option(
                &mut w,
                CERT_SUPPORTED_EPHEMERAL_DH_GROUP,
                encode_vlu(*g, &mut vlu),
            )?;
        }
        Ok(())
    })();
    debug_assert!(res.is_ok(), "sized exactly");
    out
}

/// Builds an initiator certificate holding one static DH public key, as Flash Player does
/// (`81 02 1D 02 <128-byte key>` for group 2, RFC 7425 §4.3.5).
pub fn build_static_key_certificate(group: u64, public_key: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(vlu_len(group) + public_key.len());
    let mut vlu = [0u8; 10];
    value.extend_from_slice(encode_vlu(group, &mut vlu));
    value.extend_from_slice(public_key);
    option_vec(&[(CERT_STATIC_DH_PUBLIC_KEY, &value)])
}

/// A parsed endpoint discriminator (RFC 7425 §4.4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Epd<'a> {
    /// Required hostname, if any.
    pub hostname: Option<&'a [u8]>,
    /// Ancillary data: the `rtmfp://host/app` URL of a client connect.
    pub ancillary_data: Option<&'a [u8]>,
    /// Target fingerprint (peer ID). A fingerprint always wins (RFC 7425 §4.4.3).
    pub fingerprint: Option<&'a [u8; FINGERPRINT_LEN]>,
}

impl<'a> Epd<'a> {
    /// Parses an EPD.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ComponentError> {
        let mut epd = Epd::default();
        for opt in options(bytes) {
            let opt = opt?;
            match opt.kind {
                EPD_REQUIRED_HOSTNAME => epd.hostname = Some(opt.value),
                EPD_ANCILLARY_DATA => epd.ancillary_data = Some(opt.value),
                EPD_FINGERPRINT => {
                    let fp = <&[u8; FINGERPRINT_LEN]>::try_from(opt.value)
                        .map_err(|_| ComponentError::BadFingerprint)?;
                    epd.fingerprint = Some(fp);
                }
                _ => {}
            }
        }
        Ok(epd)
    }
}

/// Builds a client-connect EPD carrying the URL as ancillary data (RFC 7425 §4.4.2).
pub fn build_url_epd(url: &[u8]) -> Vec<u8> {
    option_vec(&[(EPD_ANCILLARY_DATA, url)])
}

/// Builds the canonical fingerprint EPD `21 0F <32 bytes>` (RFC 7425 §4.4.4).
pub fn build_fingerprint_epd(fingerprint: &[u8; FINGERPRINT_LEN]) -> Vec<u8> {
    option_vec(&[(EPD_FINGERPRINT, fingerprint)])
}

/// A parsed session key component, SKIC or SKRC (RFC 7425 §4.6.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyComponent<'a> {
    /// Ephemeral DH public key `(group, key)`.
    pub ephemeral_key: Option<(u64, &'a [u8])>,
    /// Selected group of the far certificate's static key.
    pub group_select: Option<u64>,
}

impl<'a> KeyComponent<'a> {
    /// Parses the Diffie-Hellman part of a session key component; the HMAC and SSEQ options are
    /// read by [`KeyingNegotiation::parse`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ComponentError> {
        let mut c = KeyComponent::default();
        for opt in options(bytes) {
            let opt = opt?;
            let mut r = Reader::new(opt.value);
            match opt.kind {
                SKC_EPHEMERAL_DH_PUBLIC_KEY => {
                    let group = r.read_vlu()?;
                    c.ephemeral_key = Some((group, r.rest()));
                }
                SKC_DH_GROUP_SELECT => c.group_select = Some(r.read_vlu()?),
                _ => {}
            }
        }
        Ok(c)
    }

    /// The group this component keys with, whichever way it names it.
    pub fn group(&self) -> Option<u64> {
        self.ephemeral_key.map(|(g, _)| g).or(self.group_select)
    }
}

/// How a key component names its Diffie-Hellman key.
#[derive(Debug, Clone, Copy)]
pub enum DhChoice<'a> {
    /// Select the group of a static key in the sender's certificate.
    GroupSelect(u64),
    /// Carry an ephemeral public key.
    Ephemeral(u64, &'a [u8]),
    /// No Diffie-Hellman option: the sender's key is the static key in its certificate
    /// (a responder with a static identity, RFC 7425 §4.3.3, §4.6.2).
    InCertificate,
}

/// Builds a session key component: DH choice, extra randomness (if given), HMAC and SSEQ
/// negotiation (RFC 7425 §4.6.2, §4.6.4). The order follows Flash Player's SKIC.
pub fn build_key_component(
    dh: DhChoice<'_>,
    randomness: Option<&[u8; EXTRA_RANDOMNESS_LEN]>,
    negotiation: KeyingNegotiation,
) -> Vec<u8> {
    build_component(dh, randomness, negotiation, false)
}

/// Builds a responder's session key component (SKRC) in the order Cumulus and MonaServer send
/// it, which Flash Player has always accepted: HMAC and SSEQ negotiation first, then the DH
/// choice (digest §1.7). librtmfp accepts only that layout: it checks the first seven bytes
/// (`03 1A 00 00 02 1E 00` when nothing is negotiated) and reads the server's public key at
/// byte 11. Option order carries no meaning in RFC 7425 §4.6.2, so every client reads it.
pub fn build_responder_key_component(dh: DhChoice<'_>, negotiation: KeyingNegotiation) -> Vec<u8> {
    build_component(dh, None, negotiation, true)
}

fn build_component(
    dh: DhChoice<'_>,
    randomness: Option<&[u8; EXTRA_RANDOMNESS_LEN]>,
    negotiation: KeyingNegotiation,
    negotiation_first: bool,
) -> Vec<u8> {
    let mut vlu = [0u8; 10];
    let dh_opt: Option<(u64, Vec<u8>)> = match dh {
        DhChoice::GroupSelect(g) => Some((SKC_DH_GROUP_SELECT, encode_vlu(g, &mut vlu).to_vec())),
        DhChoice::Ephemeral(g, key) => {
            let mut v = encode_vlu(g, &mut vlu).to_vec();
            v.extend_from_slice(key);
            Some((SKC_EPHEMERAL_DH_PUBLIC_KEY, v))
        }
        DhChoice::InCertificate => None,
    };
    let mut hmac_v = vec![negotiation.hmac.0];
    hmac_v.extend_from_slice(encode_vlu(negotiation.hmac_len, &mut vlu));
    let sseq_v = [negotiation.sseq.0];
    let negotiation_opts = [
        (SKC_HMAC_NEGOTIATION, &hmac_v[..]),
        (SKC_SSEQ_NEGOTIATION, &sseq_v[..]),
    ];
    let mut opts: Vec<(u64, &[u8])> = Vec::with_capacity(4);
    if negotiation_first {
        opts.extend_from_slice(&negotiation_opts);
    }
    opts.extend(dh_opt.iter().map(|(k, v)| (*k, v.as_slice())));
    if let Some(r) = randomness {
        opts.push((SKC_EXTRA_RANDOMNESS, r));
    }
    if !negotiation_first {
        opts.extend_from_slice(&negotiation_opts);
    }
    option_vec(&opts)
}

/// Encodes `v` as a VLU into `buf`, returning the used part.
fn encode_vlu(v: u64, buf: &mut [u8; 10]) -> &[u8] {
    let n = vlu_len(v);
    let mut w = Writer::new(&mut buf[..]);
    // A 10-byte buffer holds any u64 VLU (RFC 7016 §2.1.2).
    let _ = w.put_vlu(v);
    &buf[..n]
}

/// Encodes a sequence of options with no end marker.
fn option_vec(opts: &[(u64, &[u8])]) -> Vec<u8> {
    let len = opts.iter().map(|(k, v)| option_len(*k, v.len())).sum();
    let mut out = vec![0u8; len];
    let mut w = Writer::new(&mut out);
    for (k, v) in opts {
        // Sized exactly above.
        let _ = write_option(&mut w, *k, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::NegotiationPolicy;

    #[test]
    fn flash_style_certificate_layout() {
        let key = [0xAB; 128];
        let cert = build_static_key_certificate(2, &key);
        assert_eq!(&cert[..4], &[0x81, 0x02, 0x1D, 0x02]);
        assert_eq!(cert.len(), 132);
        let parsed = Certificate::parse(&cert).unwrap();
        assert_eq!(parsed.static_key(2), Some(&key[..]));
        assert_eq!(parsed.groups().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn ephemeral_certificate_layout() {
        let cert = build_ephemeral_certificate(&[16, 14, 2], &[9; 32]);
        assert_eq!(&cert[..2], &[0x01, 0x0A]);
        // Option length 33: the type byte and 32 bytes of randomness.
        assert_eq!(&cert[2..4], &[0x21, 0x0E]);
        assert_eq!(
            &cert[4 + CERT_RANDOMNESS_LEN..],
            &[0x02, 0x15, 0x10, 0x02, 0x15, 0x0E, 0x02, 0x15, 0x02]
        );
        let parsed = Certificate::parse(&cert).unwrap();
        assert!(parsed.accepts_ancillary_data);
        assert_eq!(parsed.ephemeral_groups, vec![16, 14, 2]);
    }

    #[test]
    fn mixed_certificate_is_refused() {
        let mut cert = build_ephemeral_certificate(&[2], &[0; 32]);
        cert.extend_from_slice(&build_static_key_certificate(2, &[1; 8]));
        assert_eq!(
            Certificate::parse(&cert),
            Err(ComponentError::MixedCertificate)
        );
    }

    #[test]
    fn epd_forms() {
        let fp = [7u8; 32];
        let e = build_fingerprint_epd(&fp);
        assert_eq!(&e[..2], &[0x21, 0x0F]);
        assert_eq!(Epd::parse(&e).unwrap().fingerprint, Some(&fp));
        let u = build_url_epd(b"rtmfp://127.0.0.1/live");
        assert_eq!(
            Epd::parse(&u).unwrap().ancillary_data,
            Some(&b"rtmfp://127.0.0.1/live"[..])
        );
        // An empty ancillary data option (root app), as librtmfp sends it.
        assert_eq!(
            Epd::parse(&[0x01, 0x0A]).unwrap().ancillary_data,
            Some(&b""[..])
        );
        assert!(Epd::parse(&[0x03, 0x0F, 1, 2]).is_err());
    }

    #[test]
    fn flash_skic_layout_round_trips() {
        let skic = build_key_component(
            DhChoice::GroupSelect(2),
            Some(&[5; 64]),
            KeyingNegotiation::default(),
        );
        // Flash 11.7 SKIC: 02 1D 02 | 41 0E <64> | 03 1A 00 00 | 02 1E 00 (76 bytes).
        assert_eq!(skic.len(), 76);
        assert_eq!(&skic[..5], &[0x02, 0x1D, 0x02, 0x41, 0x0E]);
        assert_eq!(&skic[69..], &[0x03, 0x1A, 0x00, 0x00, 0x02, 0x1E, 0x00]);
        let c = KeyComponent::parse(&skic).unwrap();
        assert_eq!(c.group(), Some(2));
        assert_eq!(
            KeyingNegotiation::parse(&skic).unwrap(),
            KeyingNegotiation::default()
        );
    }

    #[test]
    fn a_responder_component_has_cumulus_s_layout() {
        // Cumulus's SKRC: 03 1A 00 00 | 02 1E 00 | 81 02 0D 02 <128-byte key> (139 bytes), the
        // layout librtmfp checks byte for byte (digest §1.7).
        let skrc = build_responder_key_component(
            DhChoice::Ephemeral(2, &[7; 128]),
            KeyingNegotiation::default(),
        );
        assert_eq!(skrc.len(), 139);
        assert_eq!(
            &skrc[..11],
            &[0x03, 0x1A, 0x00, 0x00, 0x02, 0x1E, 0x00, 0x81, 0x02, 0x0D, 0x02]
        );
        assert_eq!(&skrc[11..], &[7; 128]);
        let c = KeyComponent::parse(&skrc).unwrap();
        assert_eq!(c.ephemeral_key, Some((2, &[7u8; 128][..])));
        assert_eq!(
            KeyingNegotiation::parse(&skrc).unwrap(),
            KeyingNegotiation::default()
        );
        // A negotiated answer is carried the same way (rtmfp-cpp clients ask for HMAC).
        let offer = NegotiationPolicy::RTMFP_CPP_DEFAULT.offer();
        let skrc = build_responder_key_component(DhChoice::Ephemeral(14, &[3; 256]), offer);
        assert_eq!(KeyingNegotiation::parse(&skrc).unwrap(), offer);
        assert_eq!(
            KeyComponent::parse(&skrc).unwrap().ephemeral_key,
            Some((14, &[3u8; 256][..]))
        );
    }

    #[test]
    fn ephemeral_component_carries_key() {
        let skrc = build_key_component(
            DhChoice::Ephemeral(14, &[3; 256]),
            None,
            NegotiationPolicy::RTMFP_CPP_DEFAULT.offer(),
        );
        let c = KeyComponent::parse(&skrc).unwrap();
        assert_eq!(c.ephemeral_key, Some((14, &[3u8; 256][..])));
        assert_eq!(
            KeyingNegotiation::parse(&skrc).unwrap(),
            NegotiationPolicy::RTMFP_CPP_DEFAULT.offer()
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::crypto::NegotiationFlags;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn ephemeral_certificate_round_trips(groups in proptest::collection::vec(0u64..100_000, 0..MAX_CERT_GROUPS), r in any::<[u8; 32]>()) {
            let cert = build_ephemeral_certificate(&groups, &r);
            let parsed = Certificate::parse(&cert).unwrap();
            prop_assert!(parsed.accepts_ancillary_data);
            prop_assert_eq!(parsed.ephemeral_groups, groups);
        }

        #[test]
        fn static_key_certificate_round_trips(group in any::<u64>(), key in proptest::collection::vec(any::<u8>(), 0..600)) {
            let cert = build_static_key_certificate(group, &key);
            let parsed = Certificate::parse(&cert).unwrap();
            prop_assert_eq!(parsed.static_key(group), Some(&key[..]));
        }

        #[test]
        fn key_component_round_trips(
            group in any::<u64>(),
            key in proptest::collection::vec(any::<u8>(), 0..600),
            ephemeral in any::<bool>(),
            with_randomness in any::<bool>(),
            hmac in 0u8..8, hmac_len in 0u64..64, sseq in 0u8..8,
        ) {
            let dh = if ephemeral { DhChoice::Ephemeral(group, &key) } else { DhChoice::GroupSelect(group) };
            let neg = KeyingNegotiation { hmac: NegotiationFlags(hmac), hmac_len, sseq: NegotiationFlags(sseq) };
            let c = build_key_component(dh, with_randomness.then_some(&[7u8; EXTRA_RANDOMNESS_LEN]), neg);
            let parsed = KeyComponent::parse(&c).unwrap();
            prop_assert_eq!(parsed.group(), Some(group));
            if ephemeral {
                prop_assert_eq!(parsed.ephemeral_key, Some((group, &key[..])));
            } else {
                prop_assert_eq!(parsed.group_select, Some(group));
            }
            prop_assert_eq!(KeyingNegotiation::parse(&c).unwrap(), neg);
        }

        #[test]
        fn epd_round_trips(url in proptest::collection::vec(any::<u8>(), 0..300), fp in any::<[u8; 32]>()) {
            let u = build_url_epd(&url);
            prop_assert_eq!(Epd::parse(&u).unwrap().ancillary_data, Some(&url[..]));
            let f = build_fingerprint_epd(&fp);
            prop_assert_eq!(Epd::parse(&f).unwrap().fingerprint, Some(&fp));
        }

        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Certificate::parse(&bytes);
            let _ = Epd::parse(&bytes);
            let _ = KeyComponent::parse(&bytes);
        }
    }
}
