//! Flash-profile cryptography (RFC 7425 §4; RFC 7016 §2.2.2, §2.2.3).
//!
//! What it does:
//! - the packet cipher: scrambled session IDs, AES-128-CBC with a zero IV, the Internet
//!   checksum or a truncated HMAC-SHA256 trailer, and session sequence numbers with an
//!   anti-replay window ([`PacketEncoder`], [`PacketDecoder`]);
//! - session key derivation from the DH shared secret and the session key components
//!   ([`derive_session_keys`]);
//! - negotiation of the optional HMAC and sequence numbers ([`negotiate`]);
//! - Diffie-Hellman over groups 2, 14 and 16 with public-key validation (feature `dh`);
//! - multi-buffer AES-128-CBC encryption of many sessions' packets at once, for fanout
//!   ([`encrypt_cbc_zero_iv_many`]);
//! - certificate fingerprints, that is Flash peer IDs ([`fingerprint`]).
//!
//! What it does not do: parse or build chunks, certificates or keying components beyond the few
//! options it needs (that is the startup module's job), keep any session state beyond keys and
//! the replay window, or zero key material on drop.

mod checksum;
#[cfg(feature = "dh")]
mod dh;
mod fingerprint;
mod kdf;
#[cfg(feature = "dh")]
mod modexp;
mod multibuf;
mod negotiate;
mod packet;
mod vlu;

pub use checksum::checksum;
#[cfg(feature = "dh")]
pub use dh::{
    select_group, validate_public_key, DhGroup, DhKeyPair, DH_GENERATOR, MODP_1024_PRIME,
    MODP_2048_PRIME, MODP_4096_PRIME,
};
pub use fingerprint::fingerprint;
pub use kdf::{derive_session_keys, SessionKeys, AES_KEY_LEN, DERIVED_LEN};
pub use multibuf::{
    backend, encrypt_cbc_zero_iv_many, encrypt_cbc_zero_iv_many_with, Aes128EncKey, Backend, CbcJob,
};
pub use negotiate::{
    negotiate, DirectionOptions, KeyingNegotiation, NegotiatedModes, NegotiatedOption,
    NegotiationFlags, NegotiationPolicy, OptionPolicy, KEYING_OPTION_HMAC_NEGOTIATION,
    KEYING_OPTION_SSEQ_NEGOTIATION,
};
pub use packet::{
    finish_sealing, read_session_id, write_session_id, Decoded, HmacMode, PacketDecoder,
    PacketEncoder, PacketMode, Sealing, CHECKSUM_LEN, CIPHER_BLOCK_LEN, DEFAULT_HMAC_LEN,
    DEFAULT_KEY, MAX_HMAC_LEN, MIN_DATAGRAM_LEN, MIN_HMAC_LEN, PADDING_BYTE, SSEQ_WINDOW, SSID_LEN,
};

/// Errors of the crypto layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The datagram is shorter than an SSID, one cipher block and the HMAC trailer.
    #[error("datagram too short")]
    TooShort,
    /// The ciphertext is not a multiple of the 16-byte cipher block.
    #[error("ciphertext is not a multiple of the cipher block size")]
    NotBlockAligned,
    /// The decrypted checksum does not match (wrong key or corrupted packet).
    #[error("bad checksum")]
    BadChecksum,
    /// The HMAC trailer does not match.
    #[error("bad HMAC")]
    BadHmac,
    /// The session sequence number is not a valid VLU.
    #[error("malformed session sequence number")]
    BadSequenceNumber,
    /// The session sequence number was already seen or is older than the window.
    #[error("replayed or too old session sequence number {0}")]
    Replay(u64),
    /// The output buffer cannot hold the datagram.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// An HMAC length outside 4..=32 bytes.
    #[error("invalid HMAC length {0}")]
    InvalidHmacLength(u64),
    /// This end requires an option that the far end does not offer.
    #[error("far end does not offer required {0}")]
    NegotiationFailed(NegotiatedOption),
    /// A session key component with a malformed option list.
    #[error("malformed session key component")]
    MalformedComponent,
    /// A certificate with a malformed option list.
    #[error("malformed certificate")]
    MalformedCertificate,
    /// A far DH public key that fails the RFC 7425 §4.6.2 checks.
    #[error("invalid Diffie-Hellman public key")]
    InvalidPublicKey,
    /// A multi-buffer AES backend this CPU cannot run was asked for.
    #[error("AES backend {0} is not available on this CPU")]
    UnavailableBackend(&'static str),
}
