//! Negotiation of the optional HMAC trailer and session sequence numbers (RFC 7425 §4.6.4),
//! following rtmfp-cpp's rules.
//!
//! Each end puts a flags byte for each option in its session key component (and an HMAC length
//! for HMAC). An end sends the option when it set "send always" itself or the far end set
//! "request"; it expects the option on receive when it requires it or the far end set "send
//! always"; and an end that requires the option fails the handshake if the far end offers
//! neither "send always" nor "send on request".

use super::packet::{DEFAULT_HMAC_LEN, MAX_HMAC_LEN, MIN_HMAC_LEN};
use super::vlu::{read_vlu, OptionItem, OptionReader};
use super::CryptoError;

/// Keying option type: HMAC negotiation, `flags(8) | length VLU` (RFC 7425 §4.6.4;
/// rtmfp-cpp `KEYING_OPTION_HMAC_NEGOTIATION`).
pub const KEYING_OPTION_HMAC_NEGOTIATION: u64 = 0x1A;
/// Keying option type: session sequence number negotiation, `flags(8)` (RFC 7425 §4.6.4;
/// rtmfp-cpp `KEYING_OPTION_SSEQ_NEGOTIATION`).
pub const KEYING_OPTION_SSEQ_NEGOTIATION: u64 = 0x1E;

/// The negotiation flags byte of the HMAC or SSEQ keying option (RFC 7425 §4.6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct NegotiationFlags(pub u8);

impl NegotiationFlags {
    /// No flags: the option is not offered.
    pub const NONE: NegotiationFlags = NegotiationFlags(0x00);
    /// Will send always (RFC 7425 §4.6.4; rtmfp-cpp `KEYING_NEGOTIATE_FLAG_SND`).
    pub const SEND_ALWAYS: NegotiationFlags = NegotiationFlags(0x04);
    /// Will send on request (RFC 7425 §4.6.4; rtmfp-cpp `KEYING_NEGOTIATE_FLAG_SOR`).
    pub const SEND_ON_REQUEST: NegotiationFlags = NegotiationFlags(0x02);
    /// Request: asks the far end to send (RFC 7425 §4.6.4; rtmfp-cpp `KEYING_NEGOTIATE_FLAG_REQ`).
    pub const REQUEST: NegotiationFlags = NegotiationFlags(0x01);

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: NegotiationFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag of `other` is set.
    pub fn intersects(self, other: NegotiationFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// The flags of `self` and of `other`.
    pub fn union(self, other: NegotiationFlags) -> NegotiationFlags {
        NegotiationFlags(self.0 | other.0)
    }
}

/// Which option a negotiation failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NegotiatedOption {
    /// The HMAC trailer.
    Hmac,
    /// Session sequence numbers.
    Sseq,
}

impl core::fmt::Display for NegotiatedOption {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            NegotiatedOption::Hmac => "HMAC",
            NegotiatedOption::Sseq => "session sequence numbers",
        })
    }
}

/// This end's policy for one option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct OptionPolicy {
    /// Send the option on every packet, requested or not.
    pub send_always: bool,
    /// Offer to send the option when the far end requests it.
    pub send_on_request: bool,
    /// Require the option on received packets (and request it).
    pub require: bool,
}

impl OptionPolicy {
    /// The flags this policy offers before seeing the far end's flags.
    pub fn flags(self) -> NegotiationFlags {
        flags(self.send_always, self.send_on_request, self.require)
    }
}

fn flags(send_always: bool, send_on_request: bool, request: bool) -> NegotiationFlags {
    let mut out = NegotiationFlags::NONE;
    if send_always {
        out = out.union(NegotiationFlags::SEND_ALWAYS);
    }
    if send_on_request {
        out = out.union(NegotiationFlags::SEND_ON_REQUEST);
    }
    if request {
        out = out.union(NegotiationFlags::REQUEST);
    }
    out
}

/// This end's policy for both options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NegotiationPolicy {
    /// HMAC trailer policy.
    pub hmac: OptionPolicy,
    /// Length of the HMAC trailer this end sends, 4..=32.
    pub hmac_len: u8,
    /// Session sequence number policy.
    pub sseq: OptionPolicy,
}

impl NegotiationPolicy {
    /// Flash compatible: offer only "send on request" and require nothing. Flash Player,
    /// librtmfp, Cumulus and MonaServer then use neither option, and a peer that requires them
    /// (rtmfp-cpp's tcconn, which sets 0x07) still gets them. Offering 0x00 instead, as Cumulus
    /// does, would make such a peer fail the handshake.
    pub const FLASH_COMPATIBLE: NegotiationPolicy = NegotiationPolicy {
        hmac: OptionPolicy {
            send_always: false,
            send_on_request: true,
            require: false,
        },
        hmac_len: DEFAULT_HMAC_LEN,
        sseq: OptionPolicy {
            send_always: false,
            send_on_request: true,
            require: false,
        },
    };

    /// What rtmfp-cpp's tcserver and tcconn do by default: flags 0x07 for both options (send
    /// always, send on request, require) and a 16-byte HMAC.
    pub const RTMFP_CPP_DEFAULT: NegotiationPolicy = NegotiationPolicy {
        hmac: OptionPolicy {
            send_always: true,
            send_on_request: true,
            require: true,
        },
        hmac_len: DEFAULT_HMAC_LEN,
        sseq: OptionPolicy {
            send_always: true,
            send_on_request: true,
            require: true,
        },
    };

    /// What an initiator puts in its SKIC before it knows the responder's flags.
    pub fn offer(&self) -> KeyingNegotiation {
        KeyingNegotiation {
            hmac: self.hmac.flags(),
            hmac_len: u64::from(self.hmac_len),
            sseq: self.sseq.flags(),
        }
    }
}

impl Default for NegotiationPolicy {
    fn default() -> Self {
        NegotiationPolicy::FLASH_COMPATIBLE
    }
}

/// The negotiation options one session key component carries (RFC 7425 §4.6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct KeyingNegotiation {
    /// HMAC flags; [`NegotiationFlags::NONE`] when the option is absent.
    pub hmac: NegotiationFlags,
    /// HMAC length the sender of the component will use; 0 when absent.
    pub hmac_len: u64,
    /// SSEQ flags; [`NegotiationFlags::NONE`] when the option is absent.
    pub sseq: NegotiationFlags,
}

impl KeyingNegotiation {
    /// Reads the HMAC and SSEQ negotiation options from a session key component (SKIC or
    /// SKRC). Only options before the first marker count; an absent option or an empty value
    /// reads as no flags, as in rtmfp-cpp. A malformed option list is an error.
    pub fn parse(component: &[u8]) -> Result<KeyingNegotiation, CryptoError> {
        let mut out = KeyingNegotiation::default();
        let (mut have_hmac, mut have_sseq) = (false, false);
        for item in OptionReader::new(component) {
            let (item, _) = item.map_err(|()| CryptoError::MalformedComponent)?;
            let OptionItem::Option { kind, value } = item else {
                break;
            };
            let Some((&flags, rest)) = value.split_first() else {
                continue;
            };
            if kind == KEYING_OPTION_HMAC_NEGOTIATION && !have_hmac {
                have_hmac = true;
                out.hmac = NegotiationFlags(flags);
                out.hmac_len = read_vlu(rest).map_or(0, |(len, _)| len);
            } else if kind == KEYING_OPTION_SSEQ_NEGOTIATION && !have_sseq {
                have_sseq = true;
                out.sseq = NegotiationFlags(flags);
            }
        }
        Ok(out)
    }
}

/// Whether one direction uses each option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct DirectionOptions {
    /// `Some(len)` when an HMAC trailer of `len` bytes replaces the checksum.
    pub hmac_len: Option<u8>,
    /// Whether packets carry session sequence numbers.
    pub sseq: bool,
}

/// The outcome of a negotiation, from this end's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NegotiatedModes {
    /// What this end sends.
    pub send: DirectionOptions,
    /// What this end expects on received packets.
    pub receive: DirectionOptions,
    /// The flags a responder puts in its SKRC: "send always" when it will send, "request" when
    /// it expects to receive, as rtmfp-cpp's responder does.
    pub answer: KeyingNegotiation,
}

/// Applies one option's rule; answers (send, receive) or `None` when it must fail.
fn negotiate_option(policy: OptionPolicy, far: NegotiationFlags) -> Option<(bool, bool)> {
    let far_offers =
        far.intersects(NegotiationFlags::SEND_ALWAYS.union(NegotiationFlags::SEND_ON_REQUEST));
    if policy.require && !far_offers {
        return None;
    }
    let send = policy.send_always || far.contains(NegotiationFlags::REQUEST);
    let receive = policy.require || far.contains(NegotiationFlags::SEND_ALWAYS);
    Some((send, receive))
}

fn checked_hmac_len(len: u64) -> Result<u8, CryptoError> {
    u8::try_from(len)
        .ok()
        .filter(|len| (MIN_HMAC_LEN..=MAX_HMAC_LEN).contains(len))
        .ok_or(CryptoError::InvalidHmacLength(len))
}

/// Negotiates the send and receive modes of this end from its policy and the far end's
/// negotiation options (from its SKIC when this end responds, its SKRC when this end initiates).
pub fn negotiate(
    policy: &NegotiationPolicy,
    far: &KeyingNegotiation,
) -> Result<NegotiatedModes, CryptoError> {
    let (hmac_send, hmac_receive) = negotiate_option(policy.hmac, far.hmac)
        .ok_or(CryptoError::NegotiationFailed(NegotiatedOption::Hmac))?;
    let (sseq_send, sseq_receive) = negotiate_option(policy.sseq, far.sseq)
        .ok_or(CryptoError::NegotiationFailed(NegotiatedOption::Sseq))?;
    let send_hmac_len = if hmac_send {
        Some(checked_hmac_len(u64::from(policy.hmac_len))?)
    } else {
        None
    };
    let receive_hmac_len = if hmac_receive {
        Some(checked_hmac_len(far.hmac_len)?)
    } else {
        None
    };
    let answer_hmac = answer_flags(hmac_send, policy.hmac.send_on_request, hmac_receive);
    Ok(NegotiatedModes {
        send: DirectionOptions {
            hmac_len: send_hmac_len,
            sseq: sseq_send,
        },
        receive: DirectionOptions {
            hmac_len: receive_hmac_len,
            sseq: sseq_receive,
        },
        answer: KeyingNegotiation {
            hmac: answer_hmac,
            hmac_len: if answer_hmac == NegotiationFlags::NONE {
                0
            } else {
                u64::from(policy.hmac_len)
            },
            sseq: answer_flags(sseq_send, policy.sseq.send_on_request, sseq_receive),
        },
    })
}

/// The flags answering one option: none at all (and, for HMAC, no length) when neither
/// direction uses it, as Cumulus and MonaServer answer: the outcome is the same (nobody asked),
/// and librtmfp accepts nothing else (digest §1.7).
fn answer_flags(send: bool, send_on_request: bool, receive: bool) -> NegotiationFlags {
    if send || receive {
        flags(send, send_on_request, receive)
    } else {
        NegotiationFlags::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NONE: DirectionOptions = DirectionOptions {
        hmac_len: None,
        sseq: false,
    };

    fn far(hmac: u8, hmac_len: u64, sseq: u8) -> KeyingNegotiation {
        KeyingNegotiation {
            hmac: NegotiationFlags(hmac),
            hmac_len,
            sseq: NegotiationFlags(sseq),
        }
    }

    #[test]
    fn flags_of_presets() {
        let flash = NegotiationPolicy::FLASH_COMPATIBLE.offer();
        assert_eq!(
            (flash.hmac.0, flash.hmac_len, flash.sseq.0),
            (0x02, 16, 0x02)
        );
        let cpp = NegotiationPolicy::RTMFP_CPP_DEFAULT.offer();
        assert_eq!((cpp.hmac.0, cpp.hmac_len, cpp.sseq.0), (0x07, 16, 0x07));
    }

    #[test]
    fn flash_compatible_against_flash_and_librtmfp() {
        // Flash Player 11.7 SKIC: `03 1A 00 00`, `02 1E 00`. librtmfp: `03 1A 02 0A`, `02 1E 02`.
        for far in [far(0, 0, 0), far(0x02, 10, 0x02)] {
            let modes = negotiate(&NegotiationPolicy::FLASH_COMPATIBLE, &far).unwrap();
            assert_eq!((modes.send, modes.receive), (NONE, NONE));
            // Nothing used either way: answered `03 1A 00 00`, `02 1E 00`, as Cumulus and
            // MonaServer answer, the only SKRC librtmfp accepts.
            assert_eq!(modes.answer, KeyingNegotiation::default());
        }
    }

    #[test]
    fn flash_compatible_answers_a_requiring_peer() {
        let modes = negotiate(&NegotiationPolicy::FLASH_COMPATIBLE, &far(0x07, 16, 0x07)).unwrap();
        let both = DirectionOptions {
            hmac_len: Some(16),
            sseq: true,
        };
        assert_eq!((modes.send, modes.receive), (both, both));
        assert_eq!(modes.answer.hmac, NegotiationFlags(0x07));
    }

    #[test]
    fn requiring_end_fails_without_an_offer() {
        let policy = NegotiationPolicy::RTMFP_CPP_DEFAULT;
        assert_eq!(
            negotiate(&policy, &far(0x01, 16, 0x07)),
            Err(CryptoError::NegotiationFailed(NegotiatedOption::Hmac))
        );
        assert_eq!(
            negotiate(&policy, &far(0x02, 16, 0x00)),
            Err(CryptoError::NegotiationFailed(NegotiatedOption::Sseq))
        );
        // Send-on-request is enough: the requiring end's own REQ makes the far end send.
        let modes = negotiate(&policy, &far(0x02, 8, 0x02)).unwrap();
        assert_eq!(
            modes.receive,
            DirectionOptions {
                hmac_len: Some(8),
                sseq: true
            }
        );
    }

    #[test]
    fn bad_far_hmac_length_is_rejected_only_when_used() {
        let policy = NegotiationPolicy::FLASH_COMPATIBLE;
        assert_eq!(
            negotiate(&policy, &far(0x04, 3, 0)),
            Err(CryptoError::InvalidHmacLength(3))
        );
        assert_eq!(
            negotiate(&policy, &far(0x04, 33, 0)),
            Err(CryptoError::InvalidHmacLength(33))
        );
        assert!(negotiate(&policy, &far(0x02, 0, 0)).is_ok());
    }

    #[test]
    fn parse_components() {
        // rtmfp-cpp SKRC head: `02 1E 07`, `03 1A 07 10`, then a marker-free rest.
        let skrc = [0x02, 0x1e, 0x07, 0x03, 0x1a, 0x07, 0x10, 0x02, 0x0d, 0x10];
        assert_eq!(KeyingNegotiation::parse(&skrc), Ok(far(0x07, 16, 0x07)));
        assert_eq!(KeyingNegotiation::parse(&[]), Ok(far(0, 0, 0)));
        // Options after a marker do not count.
        assert_eq!(
            KeyingNegotiation::parse(&[0x00, 0x02, 0x1e, 0x07]),
            Ok(far(0, 0, 0))
        );
        assert_eq!(
            KeyingNegotiation::parse(&[0x05, 0x1e]),
            Err(CryptoError::MalformedComponent)
        );
    }

    fn option_policy() -> impl Strategy<Value = OptionPolicy> {
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(a, b, c)| OptionPolicy {
            send_always: a,
            send_on_request: b,
            require: c,
        })
    }

    fn policy() -> impl Strategy<Value = NegotiationPolicy> {
        (
            option_policy(),
            MIN_HMAC_LEN..=MAX_HMAC_LEN,
            option_policy(),
        )
            .prop_map(|(hmac, hmac_len, sseq)| NegotiationPolicy {
                hmac,
                hmac_len,
                sseq,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Initiator offers, responder negotiates and answers, initiator negotiates: when both
        /// succeed, what each end sends is exactly what the other expects.
        #[test]
        fn ends_agree(initiator in policy(), responder in policy()) {
            let r = negotiate(&responder, &initiator.offer());
            let i = r.as_ref().ok().map(|r| negotiate(&initiator, &r.answer));
            if let (Ok(r), Some(Ok(i))) = (r, i) {
                prop_assert_eq!(i.send, r.receive);
                prop_assert_eq!(i.receive, r.send);
            }
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = KeyingNegotiation::parse(&bytes);
        }
    }
}
