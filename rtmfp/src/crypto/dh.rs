//! Diffie-Hellman over the MODP groups of the Flash profile (RFC 7425 §4.2, §4.6.2): groups 2,
//! 14 and 16 with generator 2, public-key validation, and group selection.

use std::sync::OnceLock;

use num_bigint::BigUint;
use rand_core::RngCore;

use super::modexp;
use super::CryptoError;

/// Decodes a hex string into bytes at compile time.
const fn hex_bytes<const N: usize>(hex: &str) -> [u8; N] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("not a hex digit"),
        }
    }
    let digits = hex.as_bytes();
    assert!(digits.len() == 2 * N, "hex length does not match");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = (nibble(digits[2 * i]) << 4) | nibble(digits[2 * i + 1]);
        i += 1;
    }
    out
}

/// The generator of every group here (RFC 2409 §6.2; RFC 3526 §3, §5).
pub const DH_GENERATOR: u32 = 2;

/// The 1024-bit prime in hexadecimal, as published.
pub(crate) const MODP_1024_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74",
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437",
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF",
);

/// The 1024-bit MODP prime of group 2 (RFC 2409 §6.2; RFC 7296 Appendix B.2).
pub const MODP_1024_PRIME: [u8; 128] = hex_bytes(MODP_1024_HEX);

/// The 2048-bit prime in hexadecimal, as published.
pub(crate) const MODP_2048_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74",
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437",
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05",
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB",
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718",
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
);

/// The 2048-bit MODP prime of group 14 (RFC 3526 §3).
pub const MODP_2048_PRIME: [u8; 256] = hex_bytes(MODP_2048_HEX);

/// The 4096-bit prime in hexadecimal, as published.
pub(crate) const MODP_4096_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74",
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437",
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05",
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB",
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718",
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33",
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7",
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864",
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2",
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7",
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8",
    "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2",
    "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9",
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF",
);

/// The 4096-bit MODP prime of group 16 (RFC 3526 §5).
pub const MODP_4096_PRIME: [u8; 512] = hex_bytes(MODP_4096_HEX);

/// A public key must be at least 2^24 and at most p − 2^24 (RFC 7425 §4.6.2).
const PUBLIC_KEY_MARGIN_BITS: u32 = 24;
/// A public key must have at least this many one bits and zero bits (RFC 7425 §4.6.2).
const PUBLIC_KEY_MIN_BITS_EACH: u64 = 16;

/// The top bit of the private exponent's first byte is always set, so the exponent has exactly
/// its nominal length (rtmfp-cpp: `BN_rand` with `BN_RAND_TOP_ONE`).
const PRIVATE_EXPONENT_TOP_BIT: u8 = 0x80;

/// A Diffie-Hellman group of the Flash profile (RFC 7425 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DhGroup {
    /// Group 2, 1024-bit MODP (RFC 2409 §6.2). Every Flash-profile end must support it.
    Modp1024,
    /// Group 14, 2048-bit MODP (RFC 3526 §3).
    Modp2048,
    /// Group 16, 4096-bit MODP (RFC 3526 §5).
    Modp4096,
}

impl DhGroup {
    /// Every supported group, strongest first (rtmfp-cpp's preference order).
    pub const ALL: [DhGroup; 3] = [DhGroup::Modp4096, DhGroup::Modp2048, DhGroup::Modp1024];

    /// The group number used on the wire (IKE group IDs: 2, 14, 16).
    pub fn id(self) -> u64 {
        match self {
            DhGroup::Modp1024 => 2,
            DhGroup::Modp2048 => 14,
            DhGroup::Modp4096 => 16,
        }
    }

    /// The group with wire number `id`, if supported.
    pub fn from_id(id: u64) -> Option<DhGroup> {
        DhGroup::ALL.into_iter().find(|g| g.id() == id)
    }

    /// The prime modulus, big-endian.
    pub fn prime(self) -> &'static [u8] {
        match self {
            DhGroup::Modp1024 => &MODP_1024_PRIME,
            DhGroup::Modp2048 => &MODP_2048_PRIME,
            DhGroup::Modp4096 => &MODP_4096_PRIME,
        }
    }

    /// Length of the prime in bits.
    pub fn prime_bits(self) -> u64 {
        self.prime().len() as u64 * 8
    }

    /// Length of the random private exponent, as rtmfp-cpp chooses it (224, 320 and 480 bits,
    /// about twice each group's strength, RFC 3526 §8).
    pub fn private_exponent_bits(self) -> u64 {
        match self {
            DhGroup::Modp1024 => 224,
            DhGroup::Modp2048 => 320,
            DhGroup::Modp4096 => 480,
        }
    }

    fn modulus(self) -> &'static BigUint {
        static MODULI: [OnceLock<BigUint>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let slot = match self {
            DhGroup::Modp1024 => &MODULI[0],
            DhGroup::Modp2048 => &MODULI[1],
            DhGroup::Modp4096 => &MODULI[2],
        };
        slot.get_or_init(|| BigUint::from_bytes_be(self.prime()))
    }
}

/// Chooses the strongest group that this end supports (`local`) and the far end lists
/// (`remote`, wire group numbers, for example from the far certificate's "supported DH group"
/// or "DH public key" options). Unknown remote numbers are ignored.
pub fn select_group(local: &[DhGroup], remote: impl IntoIterator<Item = u64>) -> Option<DhGroup> {
    remote
        .into_iter()
        .filter_map(DhGroup::from_id)
        .filter(|g| local.contains(g))
        .max_by_key(|g| g.prime_bits())
}

/// Checks a far public key against RFC 7425 §4.6.2: 2^24 ≤ y ≤ p − 2^24, with at least 16 one
/// bits and 16 zero bits. Leading zero bytes are allowed.
pub fn validate_public_key(group: DhGroup, public_key: &[u8]) -> Result<(), CryptoError> {
    parse_public_key(group, public_key).map(|_| ())
}

fn parse_public_key(group: DhGroup, public_key: &[u8]) -> Result<BigUint, CryptoError> {
    let first = public_key
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(public_key.len());
    let significant = public_key.get(first..).unwrap_or_default();
    // Bound the work before any big-number allocation.
    if significant.len() > group.prime().len() {
        return Err(CryptoError::InvalidPublicKey);
    }
    let y = BigUint::from_bytes_be(significant);
    let margin = BigUint::from(1u32) << PUBLIC_KEY_MARGIN_BITS;
    let p = group.modulus();
    if y < margin || &y + &margin > *p {
        return Err(CryptoError::InvalidPublicKey);
    }
    let ones: u64 = significant.iter().map(|b| u64::from(b.count_ones())).sum();
    let zeros = y.bits() - ones;
    if ones < PUBLIC_KEY_MIN_BITS_EACH || zeros < PUBLIC_KEY_MIN_BITS_EACH {
        return Err(CryptoError::InvalidPublicKey);
    }
    Ok(y)
}

/// An ephemeral (or static) Diffie-Hellman key pair in one group.
#[derive(Clone)]
pub struct DhKeyPair {
    group: DhGroup,
    private: BigUint,
    public: Vec<u8>,
}

impl core::fmt::Debug for DhKeyPair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print the private exponent.
        f.debug_struct("DhKeyPair")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl DhKeyPair {
    /// Generates a key pair: a random private exponent of
    /// [`DhGroup::private_exponent_bits`] bits with its top bit set (as rtmfp-cpp does), and
    /// the public key 2^x mod p.
    pub fn generate(group: DhGroup, rng: &mut impl RngCore) -> DhKeyPair {
        let mut bytes = vec![0u8; group.private_exponent_bits().div_ceil(8) as usize];
        rng.fill_bytes(&mut bytes);
        if let Some(top) = bytes.first_mut() {
            *top |= PRIVATE_EXPONENT_TOP_BIT;
        }
        let private = BigUint::from_bytes_be(&bytes);
        let public = modexp::pow_generator(group, &bytes);
        bytes.fill(0);
        DhKeyPair {
            group,
            private,
            public,
        }
    }

    /// Rebuilds a key pair from a known private exponent (big-endian bytes), for example to
    /// decode a captured session whose responder key is known (`updraft inspect --dh-private`).
    /// Refuses an exponent of zero or one not below the prime.
    pub fn from_private(group: DhGroup, private_be: &[u8]) -> Result<DhKeyPair, CryptoError> {
        let private = BigUint::from_bytes_be(private_be);
        if private.bits() == 0 || &private >= group.modulus() {
            return Err(CryptoError::InvalidPublicKey);
        }
        let public = modexp::pow_generator(group, &private.to_bytes_be());
        Ok(DhKeyPair {
            group,
            private,
            public,
        })
    }

    /// The group of this key pair.
    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// The public key as minimal big-endian bytes (no leading zeros).
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// Validates the far public key (RFC 7425 §4.6.2) and answers the shared secret
    /// `far_public ^ private mod p` as minimal big-endian bytes (RFC 7425 §4.6.5).
    pub fn compute_shared_secret(&self, far_public: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let y = parse_public_key(self.group, far_public)?;
        let mut private = self.private.to_bytes_be();
        let secret = modexp::pow(self.group, &y.to_bytes_be(), &private);
        private.fill(0);
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    const COMMON_HEAD: &str = "ffffffffffffffffc90fdaa22168c234c4c6628b80dc1cd1";
    const COMMON_TAIL: &str = "ffffffffffffffff";

    #[test]
    fn from_private_reproduces_a_generated_pair() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let a = DhKeyPair::generate(DhGroup::Modp1024, &mut rng);
        let b = DhKeyPair::from_private(DhGroup::Modp1024, &a.private.to_bytes_be()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert!(DhKeyPair::from_private(DhGroup::Modp1024, &[]).is_err());
        assert!(DhKeyPair::from_private(DhGroup::Modp1024, &MODP_1024_PRIME).is_err());
    }

    #[test]
    fn primes_have_the_published_shape() {
        for (group, bits) in [
            (DhGroup::Modp1024, 1024),
            (DhGroup::Modp2048, 2048),
            (DhGroup::Modp4096, 4096),
        ] {
            let p = group.modulus();
            assert_eq!(p.bits(), bits);
            assert_eq!(group.prime_bits(), bits);
            let hex = hex::encode(group.prime());
            assert!(hex.starts_with(COMMON_HEAD), "{group:?}");
            assert!(hex.ends_with(COMMON_TAIL), "{group:?}");
        }
        // The three primes share their leading digits of pi and differ after.
        assert!(hex::encode(MODP_1024_PRIME).ends_with("49286651ece65381ffffffffffffffff"));
        assert!(hex::encode(MODP_2048_PRIME).ends_with("15728e5a8aacaa68ffffffffffffffff"));
        assert!(hex::encode(MODP_4096_PRIME).ends_with("4df435c934063199ffffffffffffffff"));
    }

    #[test]
    fn primes_pass_fermat_test() {
        // A transcription error would almost surely make the modulus composite.
        for group in [DhGroup::Modp1024, DhGroup::Modp2048] {
            let p = group.modulus();
            let one = BigUint::from(1u32);
            assert_eq!(BigUint::from(3u32).modpow(&(p - &one), p), one, "{group:?}");
        }
    }

    #[test]
    fn group_ids_and_selection() {
        assert_eq!(DhGroup::from_id(2), Some(DhGroup::Modp1024));
        assert_eq!(DhGroup::from_id(14), Some(DhGroup::Modp2048));
        assert_eq!(DhGroup::from_id(16), Some(DhGroup::Modp4096));
        assert_eq!(DhGroup::from_id(5), None);
        // Cumulus advertises 2, 5, 14.
        assert_eq!(
            select_group(&DhGroup::ALL, [2, 5, 14]),
            Some(DhGroup::Modp2048)
        );
        assert_eq!(
            select_group(&[DhGroup::Modp1024], [2, 5, 14]),
            Some(DhGroup::Modp1024)
        );
        assert_eq!(
            select_group(&DhGroup::ALL, [16, 14, 2]),
            Some(DhGroup::Modp4096)
        );
        assert_eq!(select_group(&[DhGroup::Modp2048], [2, 16]), None);
        assert_eq!(select_group(&DhGroup::ALL, [5, 1]), None);
    }

    #[test]
    fn two_key_pairs_agree() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for group in [DhGroup::Modp1024, DhGroup::Modp2048, DhGroup::Modp4096] {
            let a = DhKeyPair::generate(group, &mut rng);
            let b = DhKeyPair::generate(group, &mut rng);
            assert_eq!(a.group(), group);
            assert_ne!(a.public_key(), b.public_key());
            assert!(a.public_key().len() <= group.prime().len());
            assert_ne!(a.public_key().first(), Some(&0));
            let s1 = a.compute_shared_secret(b.public_key()).unwrap();
            let s2 = b.compute_shared_secret(a.public_key()).unwrap();
            assert_eq!(s1, s2);
            assert_ne!(s1.first(), Some(&0), "minimal big-endian");
            // Leading zero padding of the far key is accepted.
            let mut padded = vec![0, 0];
            padded.extend_from_slice(b.public_key());
            assert_eq!(a.compute_shared_secret(&padded).unwrap(), s1);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(8))]

        /// Key pairs and shared secrets are what num-bigint's `modpow` gives.
        #[test]
        fn key_pairs_match_modpow(seed in proptest::prelude::any::<u64>()) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            for group in DhGroup::ALL {
                let p = group.modulus();
                let a = DhKeyPair::generate(group, &mut rng);
                let b = DhKeyPair::generate(group, &mut rng);
                let two = BigUint::from(DH_GENERATOR);
                proptest::prop_assert_eq!(a.public_key(), two.modpow(&a.private, p).to_bytes_be());
                let y = BigUint::from_bytes_be(b.public_key());
                proptest::prop_assert_eq!(
                    a.compute_shared_secret(b.public_key()).unwrap(),
                    y.modpow(&a.private, p).to_bytes_be()
                );
                let again = DhKeyPair::from_private(group, &a.private.to_bytes_be()).unwrap();
                proptest::prop_assert_eq!(again.public_key(), a.public_key());
            }
        }
    }

    #[test]
    fn private_exponent_length() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for group in DhGroup::ALL {
            let pair = DhKeyPair::generate(group, &mut rng);
            assert_eq!(pair.private.bits(), group.private_exponent_bits());
        }
    }

    #[test]
    fn bad_public_keys_are_rejected() {
        let group = DhGroup::Modp1024;
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let pair = DhKeyPair::generate(group, &mut rng);
        let p = group.modulus();
        let one = BigUint::from(1u32);
        let margin = &one << 24u32;
        let bad: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![1],
            vec![0xff, 0xff, 0xff],
            (&margin - &one).to_bytes_be(),
            // 2^24 itself has a single one bit.
            margin.to_bytes_be(),
            (p - &one).to_bytes_be(),
            p.to_bytes_be(),
            (p + &one).to_bytes_be(),
            (p - &margin + &one).to_bytes_be(),
            vec![0xff; 128],
            vec![0xff; 129],
            // Many one bits, too few zero bits: 2^40 − 1 shifted to have 8 zero bits.
            ((&one << 40u32) - &one).to_bytes_be(),
            // Many zero bits, too few one bits.
            ((&one << 1000u32) + (&one << 500u32) + &one).to_bytes_be(),
        ];
        for key in bad {
            assert_eq!(
                pair.compute_shared_secret(&key),
                Err(CryptoError::InvalidPublicKey),
                "{}",
                hex::encode(&key)
            );
        }
        // The extremes of the range are accepted when their bits are mixed enough.
        let low = (&margin + BigUint::from(0x5555_5555_5555u64)).to_bytes_be();
        assert!(validate_public_key(group, &low).is_ok());
        let high = (p - &margin - BigUint::from(0xaaaa_aaaa_aaaau64)).to_bytes_be();
        assert!(validate_public_key(group, &high).is_ok());
        assert!(validate_public_key(group, &(p - &margin).to_bytes_be()).is_ok());
    }
}
