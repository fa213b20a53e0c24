//! Diffie-Hellman arithmetic side by side (docs/decisions/0007-dh-arithmetic.md): the server's
//! two modular exponentiations per handshake, key generation (2^x mod p) and the shared secret
//! (y^x mod p), for groups 2 and 14, with
//! - `num_bigint`: `BigUint::modpow`, what `DhKeyPair` used before;
//! - `num_bigint_comb`: a fixed-base comb table for the generator, `BigUint` products reduced
//!   with `%`;
//! - `cbig_pow`: crypto-bigint's constant-time windowed `pow_bounded_exp` in Montgomery form;
//! - `cbig_comb{4,6,8}_ct` / `cbig_comb{4,6,8}_vartime`: the fixed-base comb with 4, 6 or 8
//!   teeth over crypto-bigint Montgomery products, with a constant-time table scan (every entry
//!   read, masked) or a direct (secret-indexed) lookup;
//! - `dh_keypair`: what `rtmfp::crypto::DhKeyPair` does now (`rtmfp/src/crypto/modexp.rs`:
//!   `cbig_pow` for the shared secret, the 8-teeth constant-time comb with a compile-time
//!   modulus for key generation).
//!
//! Run with `cargo bench -p benches --bench dh -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
use crypto_bigint::{Odd, Uint, U1024, U2048};
use num_bigint::BigUint;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rtmfp::crypto::{DhGroup, DhKeyPair};

/// The generator of every MODP group.
const GENERATOR: u32 = 2;

/// A fixed-base comb for 2^x mod p with `TEETH` teeth: entry `j` is the product over the set
/// bits `k` of `j` of 2^(2^(k·spacing)), so 2^x costs `spacing` squarings and products.
struct Comb<const LIMBS: usize> {
    params: FixedMontyParams<LIMBS>,
    teeth: u32,
    spacing: u32,
    table: Vec<FixedMontyForm<LIMBS>>,
}

impl<const LIMBS: usize> Comb<LIMBS> {
    fn new(prime: &[u8], exponent_bits: u32, teeth: u32) -> Self {
        let params = monty_params::<LIMBS>(prime);
        let spacing = exponent_bits.div_ceil(teeth);
        let g = FixedMontyForm::new(&Uint::from_u32(GENERATOR), &params);
        let mut tooth = Vec::new();
        let mut base = g;
        for _ in 0..teeth {
            tooth.push(base);
            base = base.square_repeat_vartime(spacing);
        }
        let one = FixedMontyForm::one(&params);
        let table = (0..1usize << teeth)
            .map(|j| {
                tooth
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| j >> k & 1 == 1)
                    .fold(one, |acc, (_, t)| acc.mul(t))
            })
            .collect();
        Comb {
            params,
            teeth,
            spacing,
            table,
        }
    }

    fn index(&self, x: &Uint<LIMBS>, i: u32) -> usize {
        (0..self.teeth).fold(0usize, |acc, k| {
            acc | usize::from(x.bit_vartime(k * self.spacing + i)) << k
        })
    }

    fn pow_vartime(&self, x: &Uint<LIMBS>) -> Uint<LIMBS> {
        let mut r = FixedMontyForm::one(&self.params);
        for i in (0..self.spacing).rev() {
            r = r.square().mul(&self.table[self.index(x, i)]);
        }
        r.retrieve()
    }

    fn pow_ct(&self, x: &Uint<LIMBS>) -> Uint<LIMBS> {
        let mut r = FixedMontyForm::one(&self.params);
        for i in (0..self.spacing).rev() {
            let idx = self.index(x, i) as u64;
            let mut t = [0u64; LIMBS];
            for (j, e) in (0u64..).zip(&self.table) {
                // All ones when j == idx, without a branch on idx.
                let d = j ^ idx;
                let mask = ((d | d.wrapping_neg()) >> 63).wrapping_sub(1);
                for (o, w) in t.iter_mut().zip(e.as_montgomery().as_words()) {
                    *o |= w & mask;
                }
            }
            let t = FixedMontyForm::from_montgomery(Uint::from_words(t), &self.params);
            r = r.square().mul(&t);
        }
        r.retrieve()
    }
}

fn monty_params<const LIMBS: usize>(prime: &[u8]) -> FixedMontyParams<LIMBS> {
    let p = Odd::new(Uint::<LIMBS>::from_be_slice(prime)).expect("the MODP primes are odd");
    FixedMontyParams::new_vartime(p)
}

/// `bytes` right-aligned into a `Uint`.
fn uint<const LIMBS: usize>(bytes: &[u8]) -> Uint<LIMBS> {
    let mut buf = vec![0u8; Uint::<LIMBS>::BYTES];
    buf[Uint::<LIMBS>::BYTES - bytes.len()..].copy_from_slice(bytes);
    Uint::from_be_slice(&buf)
}

/// The comb with `BigUint` products reduced by `%`.
struct BigComb {
    p: BigUint,
    teeth: u32,
    spacing: u32,
    table: Vec<BigUint>,
}

impl BigComb {
    fn new(prime: &[u8], exponent_bits: u32, teeth: u32) -> Self {
        let p = BigUint::from_bytes_be(prime);
        let spacing = exponent_bits.div_ceil(teeth);
        let mut tooth = Vec::new();
        let mut base = BigUint::from(GENERATOR);
        for _ in 0..teeth {
            tooth.push(base.clone());
            base = base.modpow(&(BigUint::from(1u32) << spacing), &p);
        }
        let table = (0..1usize << teeth)
            .map(|j| {
                tooth
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| j >> k & 1 == 1)
                    .fold(BigUint::from(1u32), |acc, (_, t)| acc * t % &p)
            })
            .collect();
        BigComb {
            p,
            teeth,
            spacing,
            table,
        }
    }

    fn pow(&self, x: &BigUint) -> BigUint {
        let mut r = BigUint::from(1u32);
        for i in (0..self.spacing).rev() {
            let idx = (0..self.teeth).fold(0usize, |acc, k| {
                acc | usize::from(x.bit(u64::from(k * self.spacing + i))) << k
            });
            r = &r * &r % &self.p;
            r = r * &self.table[idx] % &self.p;
        }
        r
    }
}

fn group_bench<const LIMBS: usize>(c: &mut Criterion, group: DhGroup, name: &str) {
    let mut g = c.benchmark_group(format!("crypto/dh/{name}"));
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let bits = group.private_exponent_bits() as u32;
    let mut private = vec![0u8; bits.div_ceil(8) as usize];
    rng.fill_bytes(&mut private);
    private[0] |= 0x80;
    let far = DhKeyPair::generate(group, &mut rng);
    let far_public = far.public_key().to_vec();

    let p = BigUint::from_bytes_be(group.prime());
    let x = BigUint::from_bytes_be(&private);
    let y = BigUint::from_bytes_be(&far_public);
    let two = BigUint::from(GENERATOR);
    let expected_public = two.modpow(&x, &p);
    let expected_shared = y.modpow(&x, &p);
    g.bench_function("num_bigint/keygen", |b| {
        b.iter(|| black_box(&two).modpow(black_box(&x), &p))
    });
    g.bench_function("num_bigint/shared", |b| {
        b.iter(|| black_box(&y).modpow(black_box(&x), &p))
    });

    for teeth in [4u32, 8] {
        let comb = BigComb::new(group.prime(), bits, teeth);
        assert_eq!(comb.pow(&x), expected_public);
        g.bench_function(format!("num_bigint_comb{teeth}/keygen"), |b| {
            b.iter(|| comb.pow(black_box(&x)))
        });
    }

    let params = monty_params::<LIMBS>(group.prime());
    let xu = uint::<LIMBS>(&private);
    let yu = uint::<LIMBS>(&far_public);
    let gm = FixedMontyForm::new(&Uint::from_u32(GENERATOR), &params);
    let ym = FixedMontyForm::new(&yu, &params);
    let to_big = |u: Uint<LIMBS>| BigUint::from_bytes_be(u.to_be_bytes().as_ref());
    assert_eq!(
        to_big(gm.pow_bounded_exp(&xu, bits).retrieve()),
        expected_public
    );
    assert_eq!(
        to_big(ym.pow_bounded_exp(&xu, bits).retrieve()),
        expected_shared
    );
    assert_eq!(
        to_big(ym.pow_amm_bounded_exp(&xu, bits).retrieve()),
        expected_shared
    );
    g.bench_function("cbig_pow/keygen", |b| {
        b.iter(|| {
            black_box(&gm)
                .pow_bounded_exp(black_box(&xu), bits)
                .retrieve()
        })
    });
    g.bench_function("cbig_pow/shared", |b| {
        b.iter(|| {
            black_box(&ym)
                .pow_bounded_exp(black_box(&xu), bits)
                .retrieve()
        })
    });
    g.bench_function("cbig_pow_amm/shared", |b| {
        b.iter(|| {
            black_box(&ym)
                .pow_amm_bounded_exp(black_box(&xu), bits)
                .retrieve()
        })
    });
    for teeth in [4u32, 6, 8] {
        let comb = Comb::<LIMBS>::new(group.prime(), bits, teeth);
        assert_eq!(to_big(comb.pow_ct(&xu)), expected_public);
        assert_eq!(to_big(comb.pow_vartime(&xu)), expected_public);
        g.bench_function(format!("cbig_comb{teeth}_ct/keygen"), |b| {
            b.iter(|| comb.pow_ct(black_box(&xu)))
        });
        g.bench_function(format!("cbig_comb{teeth}_vartime/keygen"), |b| {
            b.iter(|| comb.pow_vartime(black_box(&xu)))
        });
    }

    g.bench_function("dh_keypair/keygen", |b| {
        b.iter(|| DhKeyPair::generate(group, &mut rng))
    });
    g.bench_function("dh_keypair/shared", |b| {
        b.iter(|| far.compute_shared_secret(black_box(&far_public)))
    });
    g.finish();
}

fn dh(c: &mut Criterion) {
    group_bench::<{ U1024::LIMBS }>(c, DhGroup::Modp1024, "group2");
    group_bench::<{ U2048::LIMBS }>(c, DhGroup::Modp2048, "group14");
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, dh);
}
criterion_main!(group::benches);
