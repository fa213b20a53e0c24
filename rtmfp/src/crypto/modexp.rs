//! Modular exponentiation for the Diffie-Hellman groups (docs/decisions/0007-dh-arithmetic.md):
//! crypto-bigint's Montgomery arithmetic with a compile-time modulus per group, its
//! constant-time windowed exponentiation for any base, and for the generator a fixed-base comb
//! table built once per group.
//!
//! Timing: the exponentiations run in time independent of the exponent's and the base's values
//! (crypto-bigint's `pow_bounded_exp`, and the comb reads its whole table at every step); only
//! the exponent's bit length shows, which is public for generated keys (their top bit is set).

use std::marker::PhantomData;
use std::sync::OnceLock;

use crypto_bigint::modular::{ConstMontyForm, ConstMontyParams};
use crypto_bigint::{const_monty_params, Limb, Uint, Word, U1024, U2048, U4096};

use super::dh::{DhGroup, DH_GENERATOR, MODP_1024_HEX, MODP_2048_HEX, MODP_4096_HEX};

const_monty_params!(
    Modp1024,
    U1024,
    MODP_1024_HEX,
    "The 1024-bit MODP prime of group 2 in Montgomery form."
);
const_monty_params!(
    Modp2048,
    U2048,
    MODP_2048_HEX,
    "The 2048-bit MODP prime of group 14 in Montgomery form."
);
const_monty_params!(
    Modp4096,
    U4096,
    MODP_4096_HEX,
    "The 4096-bit MODP prime of group 16 in Montgomery form."
);

/// Teeth of the generator's comb: the table has 2^8 = 256 entries (32 KiB for group 2, 128 KiB
/// for group 16), and 2^x costs ⌈bits / 8⌉ squarings, products and table scans (28 for group
/// 2's 224-bit exponents). With the masked scan, 8 teeth beat 6 and 4 in the benchmark
/// `crypto/dh` (`cbig_comb*_ct`) for groups 2 and 14.
const COMB_TEETH: u32 = 8;
/// Entries of the comb table.
const COMB_ENTRIES: usize = 1 << COMB_TEETH;

/// A fixed-base comb for 2^x mod p (Lim and Lee, "More flexible exponentiation with
/// precomputation", 1994, single table): with the exponent's bits split into `COMB_TEETH` runs
/// of `spacing` bits, entry `j` is the product of 2^(2^(k·spacing)) over the set bits `k` of
/// `j`, in Montgomery form. Bit `i` of every run selects one entry at step `i`.
struct Comb<P: ConstMontyParams<LIMBS>, const LIMBS: usize> {
    spacing: u32,
    table: Vec<Uint<LIMBS>>,
    params: PhantomData<P>,
}

impl<P: ConstMontyParams<LIMBS>, const LIMBS: usize> Comb<P, LIMBS> {
    /// Builds the table for exponents of up to `exponent_bits` bits.
    fn new(exponent_bits: u32) -> Self {
        let spacing = exponent_bits.div_ceil(COMB_TEETH);
        let mut teeth = Vec::with_capacity(COMB_TEETH as usize);
        let mut power = generator::<P, LIMBS>();
        for _ in 0..COMB_TEETH {
            teeth.push(power);
            power = power.square_repeat_vartime(spacing);
        }
        let mut table = Vec::with_capacity(COMB_ENTRIES);
        for j in 0..COMB_ENTRIES {
            let entry = teeth
                .iter()
                .enumerate()
                .filter(|(k, _)| j >> k & 1 == 1)
                .fold(ConstMontyForm::<P, LIMBS>::ONE, |acc, (_, tooth)| {
                    acc.mul(tooth)
                });
            table.push(entry.to_montgomery());
        }
        Comb {
            spacing,
            table,
            params: PhantomData,
        }
    }

    /// Exponents up to this many bits are covered.
    fn capacity_bits(&self) -> u32 {
        self.spacing * COMB_TEETH
    }

    /// 2^x mod p, for `x` of at most [`Comb::capacity_bits`] bits.
    fn pow(&self, x: &Uint<LIMBS>) -> Uint<LIMBS> {
        let mut r = ConstMontyForm::<P, LIMBS>::ONE;
        for i in (0..self.spacing).rev() {
            let index = (0..COMB_TEETH).fold(0, |acc, k| acc | bit(x, k * self.spacing + i) << k);
            r = r
                .square()
                .mul(&ConstMontyForm::from_montgomery(self.lookup(index)));
        }
        r.retrieve()
    }

    /// Table entry `index`, reading every entry so the time and memory accesses do not depend
    /// on `index`.
    fn lookup(&self, index: Word) -> Uint<LIMBS> {
        let mut out = [0 as Word; LIMBS];
        for (j, entry) in (0..).zip(&self.table) {
            let mask = eq_mask(j, index);
            for (o, w) in out.iter_mut().zip(entry.as_words()) {
                *o |= w & mask;
            }
        }
        Uint::from_words(out)
    }
}

/// All ones when `a == b`, else zero, without a branch on the values.
fn eq_mask(a: Word, b: Word) -> Word {
    let d = a ^ b;
    // The top bit of d | −d is set exactly when d ≠ 0.
    let nonzero = (d | d.wrapping_neg()) >> (Word::BITS - 1);
    nonzero.wrapping_sub(1)
}

/// Bit `index` of `x` (0 past the end), as 0 or 1.
fn bit<const LIMBS: usize>(x: &Uint<LIMBS>, index: u32) -> Word {
    let word = (index / Word::BITS) as usize;
    x.as_words()
        .get(word)
        .map_or(0, |w| w >> (index % Word::BITS) & 1)
}

/// The generator 2 in Montgomery form.
fn generator<P: ConstMontyParams<LIMBS>, const LIMBS: usize>() -> ConstMontyForm<P, LIMBS> {
    ConstMontyForm::new(&Uint::from_word(Word::from(DH_GENERATOR)))
}

/// `bytes` (big-endian) as a `Uint`; callers pass values below the modulus, so they fit. Any
/// excess leading bytes would be dropped.
fn uint_from_be<const LIMBS: usize>(bytes: &[u8]) -> Uint<LIMBS> {
    let size = LIMBS * Limb::BYTES;
    let mut buf = vec![0u8; size];
    let take = bytes.len().min(size);
    buf[size - take..].copy_from_slice(&bytes[bytes.len() - take..]);
    Uint::from_be_slice(&buf)
}

/// `x` as minimal big-endian bytes (one zero byte for zero), as `BigUint::to_bytes_be` gives.
fn minimal_be<const LIMBS: usize>(x: &Uint<LIMBS>) -> Vec<u8> {
    let bytes = x.to_be_bytes();
    let bytes: &[u8] = bytes.as_ref();
    let first = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    bytes[first..].to_vec()
}

/// Number of significant bits of big-endian `bytes`.
fn bit_length(bytes: &[u8]) -> u32 {
    let Some(first) = bytes.iter().position(|&b| b != 0) else {
        return 0;
    };
    let bits = (bytes.len() - first) as u32 * u8::BITS;
    bits - bytes[first].leading_zeros()
}

fn pow_generator_in<P: ConstMontyParams<LIMBS>, const LIMBS: usize>(
    comb: &'static OnceLock<Comb<P, LIMBS>>,
    group: DhGroup,
    exponent: &[u8],
) -> Vec<u8> {
    let comb = comb.get_or_init(|| Comb::new(group.private_exponent_bits() as u32));
    let x = uint_from_be::<LIMBS>(exponent);
    let bits = bit_length(exponent);
    let result = if bits <= comb.capacity_bits() {
        comb.pow(&x)
    } else {
        generator::<P, LIMBS>().pow_bounded_exp(&x, bits).retrieve()
    };
    minimal_be(&result)
}

fn pow_in<P: ConstMontyParams<LIMBS>, const LIMBS: usize>(base: &[u8], exponent: &[u8]) -> Vec<u8> {
    let y = ConstMontyForm::<P, LIMBS>::new(&uint_from_be(base));
    let x = uint_from_be::<LIMBS>(exponent);
    minimal_be(&y.pow_bounded_exp(&x, bit_length(exponent)).retrieve())
}

/// 2^x mod p for the group's prime, `x` big-endian and below p; minimal big-endian result.
pub(crate) fn pow_generator(group: DhGroup, exponent: &[u8]) -> Vec<u8> {
    static COMB_1024: OnceLock<Comb<Modp1024, { U1024::LIMBS }>> = OnceLock::new();
    static COMB_2048: OnceLock<Comb<Modp2048, { U2048::LIMBS }>> = OnceLock::new();
    static COMB_4096: OnceLock<Comb<Modp4096, { U4096::LIMBS }>> = OnceLock::new();
    match group {
        DhGroup::Modp1024 => pow_generator_in(&COMB_1024, group, exponent),
        DhGroup::Modp2048 => pow_generator_in(&COMB_2048, group, exponent),
        DhGroup::Modp4096 => pow_generator_in(&COMB_4096, group, exponent),
    }
}

/// base^x mod p for the group's prime, `base` and `x` big-endian and below p; minimal
/// big-endian result.
pub(crate) fn pow(group: DhGroup, base: &[u8], exponent: &[u8]) -> Vec<u8> {
    match group {
        DhGroup::Modp1024 => pow_in::<Modp1024, { U1024::LIMBS }>(base, exponent),
        DhGroup::Modp2048 => pow_in::<Modp2048, { U2048::LIMBS }>(base, exponent),
        DhGroup::Modp4096 => pow_in::<Modp4096, { U4096::LIMBS }>(base, exponent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_bigint::BigUint;
    use proptest::prelude::*;

    fn reference(group: DhGroup, base: &BigUint, exponent: &BigUint) -> Vec<u8> {
        base.modpow(exponent, &BigUint::from_bytes_be(group.prime()))
            .to_bytes_be()
    }

    /// A random value of `bits` bits at most, big-endian, from proptest's bytes.
    fn truncate(mut bytes: Vec<u8>, bits: u64) -> Vec<u8> {
        bytes.truncate(bits.div_ceil(8) as usize);
        bytes
    }

    fn group() -> impl Strategy<Value = DhGroup> {
        prop_oneof![
            Just(DhGroup::Modp1024),
            Just(DhGroup::Modp2048),
            Just(DhGroup::Modp4096)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn generator_powers_match_modpow(
            group in group(),
            bytes in proptest::collection::vec(any::<u8>(), 60),
            top in any::<bool>(),
        ) {
            // Exponents of the generated length, with or without their top bit set.
            let mut x = truncate(bytes, group.private_exponent_bits());
            if top {
                x[0] |= 0x80;
            }
            let expected = reference(group, &BigUint::from(DH_GENERATOR), &BigUint::from_bytes_be(&x));
            prop_assert_eq!(pow_generator(group, &x), expected);
        }

        #[test]
        fn powers_match_modpow(
            group in group(),
            base in proptest::collection::vec(any::<u8>(), 512),
            exponent in proptest::collection::vec(any::<u8>(), 512),
            exponent_bits in 1u64..=480,
        ) {
            let p = BigUint::from_bytes_be(group.prime());
            let y = BigUint::from_bytes_be(&base) % &p;
            let x = BigUint::from_bytes_be(&truncate(exponent, exponent_bits));
            let expected = reference(group, &y, &x);
            prop_assert_eq!(pow(group, &y.to_bytes_be(), &x.to_bytes_be()), expected);
        }

        #[test]
        fn long_generator_exponents_match_modpow(
            group in group(),
            bytes in proptest::collection::vec(any::<u8>(), 512),
        ) {
            // Past the comb's capacity, as `DhKeyPair::from_private` may be given.
            let p = BigUint::from_bytes_be(group.prime());
            let x = BigUint::from_bytes_be(&bytes) % &p;
            let expected = reference(group, &BigUint::from(DH_GENERATOR), &x);
            prop_assert_eq!(pow_generator(group, &x.to_bytes_be()), expected);
        }
    }

    #[test]
    fn edge_exponents_and_bases() {
        for group in DhGroup::ALL {
            let p = BigUint::from_bytes_be(group.prime());
            let two = BigUint::from(DH_GENERATOR);
            let p_minus_1 = &p - 1u32;
            for x in [
                BigUint::from(0u32),
                BigUint::from(1u32),
                (BigUint::from(1u32) << group.private_exponent_bits()) - 1u32,
                p_minus_1.clone(),
            ] {
                assert_eq!(
                    pow_generator(group, &x.to_bytes_be()),
                    reference(group, &two, &x),
                    "{group:?}"
                );
                for y in [BigUint::from(0u32), BigUint::from(1u32), p_minus_1.clone()] {
                    assert_eq!(
                        pow(group, &y.to_bytes_be(), &x.to_bytes_be()),
                        reference(group, &y, &x),
                        "{group:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn masks_and_bits() {
        assert_eq!(eq_mask(5, 5), Word::MAX);
        assert_eq!(eq_mask(5, 4), 0);
        assert_eq!(eq_mask(0, Word::MAX), 0);
        let x = Uint::<2>::from_words([1, 1 << 3]);
        assert_eq!(bit(&x, 0), 1);
        assert_eq!(bit(&x, 1), 0);
        assert_eq!(bit(&x, Word::BITS + 3), 1);
        assert_eq!(bit(&x, 2 * Word::BITS), 0);
        assert_eq!(bit_length(&[0, 0, 0x10, 0]), 13);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(minimal_be(&Uint::<2>::ZERO), vec![0]);
        assert_eq!(minimal_be(&x), vec![8, 0, 0, 0, 0, 0, 0, 0, 1]);
    }
}
