//! Session key derivation (RFC 7425 §4.6.5): AES keys, HMAC keys and nonces from the DH shared
//! secret and the two session key components.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::negotiate::DirectionOptions;
use super::packet::{HmacMode, PacketDecoder, PacketEncoder, PacketMode};
use super::CryptoError;

/// Length of an HMAC-SHA256 output, and of every derived value here.
pub const DERIVED_LEN: usize = 32;
/// Length of an AES-128 key: the first bytes of the derived encrypt or decrypt value
/// (RFC 7425 §4.6.5).
pub const AES_KEY_LEN: usize = 16;

/// HMAC-SHA256(key, msg).
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; DERIVED_LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// Everything one end derives for a session (RFC 7425 §4.6.5), from its own point of view:
/// "near" is this end, "far" is the other.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// `HMAC-SHA256(S, HMAC-SHA256(SKfc, SKnc))`: the first 16 bytes are the AES send key.
    pub encrypt: [u8; DERIVED_LEN],
    /// `HMAC-SHA256(S, HMAC-SHA256(SKnc, SKfc))`: the first 16 bytes are the AES receive key.
    pub decrypt: [u8; DERIVED_LEN],
    /// `HMAC-SHA256(S, encrypt)`: the HMAC key for packets this end sends.
    pub tx_hmac_key: [u8; DERIVED_LEN],
    /// `HMAC-SHA256(S, decrypt)`: the HMAC key for packets this end receives.
    pub rx_hmac_key: [u8; DERIVED_LEN],
    /// `HMAC-SHA256(S, SKnc)`: the near nonce.
    pub near_nonce: [u8; DERIVED_LEN],
    /// `HMAC-SHA256(S, SKfc)`: the far nonce.
    pub far_nonce: [u8; DERIVED_LEN],
}

impl core::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print key material.
        f.debug_struct("SessionKeys").finish_non_exhaustive()
    }
}

impl SessionKeys {
    /// The AES-128 key for packets this end sends.
    pub fn send_key(&self) -> [u8; AES_KEY_LEN] {
        first_16(&self.encrypt)
    }

    /// The AES-128 key for packets this end receives.
    pub fn receive_key(&self) -> [u8; AES_KEY_LEN] {
        first_16(&self.decrypt)
    }

    /// The send mode for the negotiated send options: the HMAC uses [`Self::tx_hmac_key`].
    pub fn send_mode(&self, options: DirectionOptions) -> Result<PacketMode, CryptoError> {
        mode(self.tx_hmac_key, options)
    }

    /// The receive mode for the negotiated receive options: the HMAC uses
    /// [`Self::rx_hmac_key`].
    pub fn receive_mode(&self, options: DirectionOptions) -> Result<PacketMode, CryptoError> {
        mode(self.rx_hmac_key, options)
    }

    /// A packet encoder for this end's sending direction.
    pub fn encoder(&self, options: DirectionOptions) -> Result<PacketEncoder, CryptoError> {
        Ok(PacketEncoder::new(
            &self.send_key(),
            self.send_mode(options)?,
        ))
    }

    /// A packet decoder for this end's receiving direction.
    pub fn decoder(&self, options: DirectionOptions) -> Result<PacketDecoder, CryptoError> {
        Ok(PacketDecoder::new(
            &self.receive_key(),
            self.receive_mode(options)?,
        ))
    }
}

fn first_16(value: &[u8; DERIVED_LEN]) -> [u8; AES_KEY_LEN] {
    let mut key = [0u8; AES_KEY_LEN];
    key.copy_from_slice(&value[..AES_KEY_LEN]);
    key
}

fn mode(hmac_key: [u8; DERIVED_LEN], options: DirectionOptions) -> Result<PacketMode, CryptoError> {
    let hmac = match options.hmac_len {
        Some(len) => Some(HmacMode::new(hmac_key, len)?),
        None => None,
    };
    Ok(PacketMode {
        hmac,
        sseq: options.sseq,
    })
}

/// Derives the session keys of one end (RFC 7425 §4.6.5).
///
/// `shared_secret` is the DH shared secret S as minimal big-endian bytes; `near_component` is
/// the session key component this end sent (SKIC for the initiator, SKRC for the responder) and
/// `far_component` the one it received, both as whole byte strings.
pub fn derive_session_keys(
    shared_secret: &[u8],
    near_component: &[u8],
    far_component: &[u8],
) -> SessionKeys {
    let encrypt = hmac_sha256(shared_secret, &hmac_sha256(far_component, near_component));
    let decrypt = hmac_sha256(shared_secret, &hmac_sha256(near_component, far_component));
    SessionKeys {
        encrypt,
        decrypt,
        tx_hmac_key: hmac_sha256(shared_secret, &encrypt),
        rx_hmac_key: hmac_sha256(shared_secret, &decrypt),
        near_nonce: hmac_sha256(shared_secret, near_component),
        far_nonce: hmac_sha256(shared_secret, far_component),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 4231 §4 test cases 1–4, 6 and 7: (key, data, HMAC-SHA-256).
    const RFC4231: [(&str, &str, &str); 6] = [
        (
            "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
            "4869205468657265",
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        (
            "4a656665",
            "7768617420646f2079612077616e7420666f72206e6f7468696e673f",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        (
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "dddddddddddddddddddddddddddddddddddddddddddddddddd\
             dddddddddddddddddddddddddddddddddddddddddddddddddd",
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        ),
        (
            "0102030405060708090a0b0c0d0e0f10111213141516171819",
            "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd\
             cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
            "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        ),
        (
            // Test case 6: a 131-byte key, larger than the block size.
            "aa*131",
            "54657374205573696e67204c6172676572205468616e20426c6f636b2d53697a65204b6579202d2048617368204b6579204669727374",
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
        (
            // Test case 7: a large key and large data.
            "aa*131",
            "5468697320697320612074657374207573696e672061206c6172676572207468616e20626c6f636b2d73697a65206b657920616e642061206c6172676572207468616e20626c6f636b2d73697a6520646174612e20546865206b6579206e6565647320746f20626520686173686564206265666f7265206265696e6720757365642062792074686520484d414320616c676f726974686d2e",
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        ),
    ];

    #[test]
    fn rfc4231_hmac_sha256() {
        for (key, data, expected) in RFC4231 {
            // Test cases 6 and 7 use 131 bytes of 0xaa as the key.
            let key = if key == "aa*131" {
                vec![0xaa; 131]
            } else {
                hex::decode(key).unwrap()
            };
            let out = hmac_sha256(&key, &hex::decode(data).unwrap());
            assert_eq!(hex::encode(out), expected);
        }
    }

    #[test]
    fn rfc4231_case5_truncated() {
        // Test case 5: output truncated to 128 bits. The packet HMAC trailer is truncated the
        // same way, and verified in constant time by `verify_truncated_left`.
        let key = [0x0c; 20];
        let data = b"Test With Truncation";
        let out = hmac_sha256(&key, data);
        assert_eq!(hex::encode(&out[..16]), "a3b6167473100ee06e0c796c2955552b");
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&key)
            .unwrap()
            .chain_update(data);
        assert!(mac.clone().verify_truncated_left(&out[..16]).is_ok());
        let mut wrong = out;
        wrong[15] ^= 1;
        assert!(mac.verify_truncated_left(&wrong[..16]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn both_ends_agree(
            secret in proptest::collection::vec(any::<u8>(), 1..130),
            skic in proptest::collection::vec(any::<u8>(), 0..80),
            skrc in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let initiator = derive_session_keys(&secret, &skic, &skrc);
            let responder = derive_session_keys(&secret, &skrc, &skic);
            prop_assert_eq!(initiator.encrypt, responder.decrypt);
            prop_assert_eq!(initiator.decrypt, responder.encrypt);
            prop_assert_eq!(initiator.tx_hmac_key, responder.rx_hmac_key);
            prop_assert_eq!(initiator.rx_hmac_key, responder.tx_hmac_key);
            prop_assert_eq!(initiator.near_nonce, responder.far_nonce);
            prop_assert_eq!(initiator.far_nonce, responder.near_nonce);
            prop_assert_eq!(initiator.send_key(), responder.receive_key());
        }
    }

    #[test]
    fn encoder_and_decoder_from_keys_interoperate() {
        let initiator = derive_session_keys(b"secret", b"skic", b"skrc");
        let responder = derive_session_keys(b"secret", b"skrc", b"skic");
        let options = DirectionOptions {
            hmac_len: Some(16),
            sseq: true,
        };
        let mut enc = initiator.encoder(options).unwrap();
        let mut dec = responder.decoder(options).unwrap();
        let mut out = [0u8; 64];
        let n = enc.encode(3, &[0x8d, 1, 2], &mut out).unwrap();
        let d = dec.decode(&mut out[..n]).unwrap();
        assert_eq!((d.session_id, d.sseq), (3, Some(0)));
        assert_eq!(&d.packet[..3], &[0x8d, 1, 2]);
        let bad = DirectionOptions {
            hmac_len: Some(2),
            sseq: false,
        };
        assert_eq!(
            initiator.encoder(bad).err(),
            Some(CryptoError::InvalidHmacLength(2))
        );
    }
}
