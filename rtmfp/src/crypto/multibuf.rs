//! Multi-buffer AES-128-CBC encryption with a zero IV, for live-stream fanout.
//!
//! What it does: encrypts many independent `(key, buffer)` jobs in place, each exactly as
//! `cbc::Encryptor<Aes128>` with a zero IV and no padding would (RFC 7425 §4.6.4). CBC is serial
//! within one buffer, so one buffer at a time leaves the AES unit idle while each round's result
//! comes back; this module interleaves 8 jobs with AES-NI, or 16 with VAES-512 (four jobs per
//! 512-bit register), and refills a lane with the next job as soon as its buffer is done, so
//! jobs of different lengths share the pipeline. The backend is chosen once, at run time
//! ([`backend`]); CPUs without AES-NI, and other architectures, take the portable path (the
//! `cbc` crate, job by job).
//!
//! What it does not do: padding, the checksum, HMAC or the scrambled session ID (the packet
//! encoder's job, [`super::PacketEncoder`]), decryption, or zeroing key material on drop.
//!
//! `unsafe`: this module is an exception to the rule that only I/O modules use `unsafe`
//! (docs/decisions/0008-multibuffer-aes-unsafe.md). The kernels are `#[target_feature]`
//! functions called only after the feature was detected at run time, and the only other unsafe
//! operations are unaligned 16-byte loads and stores through references to `[u8; 16]`.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use super::packet::CIPHER_BLOCK_LEN;
use super::CryptoError;

/// Rounds of AES-128 (FIPS-197 §5, Figure 4: Nr = 10).
const ROUNDS: usize = 10;
/// Round keys of AES-128: one per round and the initial whitening key.
const ROUND_KEYS: usize = ROUNDS + 1;
/// 32-bit words in an AES-128 key (FIPS-197 Nk).
const KEY_WORDS: usize = 4;
/// Bytes in a key-schedule word.
const WORD_LEN: usize = 4;
/// The low byte of the AES field polynomial x^8 + x^4 + x^3 + x + 1 (FIPS-197 §4.2).
const FIELD_POLY_LOW: u8 = 0x1B;
/// Exponent that inverts a non-zero element of GF(2^8): a^254 = a^-1, and 0^254 = 0.
const INVERSE_EXPONENT: u8 = 254;
/// The constant of the S-box affine transformation (FIPS-197 §5.1.1, equation 5.1).
const AFFINE_CONSTANT: u8 = 0x63;
/// First round constant of the key schedule (FIPS-197 §5.2: Rcon[1] = x^0).
const FIRST_RCON: u8 = 0x01;

/// One AES-128 block.
type Block = [u8; CIPHER_BLOCK_LEN];

/// An expanded AES-128 encryption key: the 11 round keys of the FIPS-197 key schedule (176
/// bytes), built once per session and shared by every packet encrypted with it.
#[derive(Clone)]
pub struct Aes128EncKey {
    round_keys: [Block; ROUND_KEYS],
}

impl Aes128EncKey {
    /// Expands `key` (FIPS-197 §5.2). The S-box is computed in constant time (inversion in
    /// GF(2^8) by exponentiation, then the affine map), with no table indexed by key bytes.
    pub fn new(key: &[u8; CIPHER_BLOCK_LEN]) -> Self {
        let mut words = [[0u8; WORD_LEN]; KEY_WORDS * ROUND_KEYS];
        for (word, chunk) in words.iter_mut().zip(key.chunks_exact(WORD_LEN)) {
            word.copy_from_slice(chunk);
        }
        let mut rcon = FIRST_RCON;
        for i in KEY_WORDS..words.len() {
            let mut temp = words[i - 1];
            if i % KEY_WORDS == 0 {
                temp.rotate_left(1);
                for byte in &mut temp {
                    *byte = sub_byte(*byte);
                }
                temp[0] ^= rcon;
                rcon = xtime(rcon);
            }
            for (t, w) in temp.iter_mut().zip(words[i - KEY_WORDS]) {
                *t ^= w;
            }
            words[i] = temp;
        }
        let mut round_keys = [[0u8; CIPHER_BLOCK_LEN]; ROUND_KEYS];
        for (round_key, four) in round_keys.iter_mut().zip(words.chunks_exact(KEY_WORDS)) {
            for (dst, word) in round_key.chunks_exact_mut(WORD_LEN).zip(four) {
                dst.copy_from_slice(word);
            }
        }
        Self { round_keys }
    }

    /// The cipher key itself: the first round key.
    fn cipher_key(&self) -> &Block {
        &self.round_keys[0]
    }
}

impl std::fmt::Debug for Aes128EncKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Aes128EncKey(..)")
    }
}

/// Multiplication by x in GF(2^8), without a branch on the value.
const fn xtime(a: u8) -> u8 {
    let carry = (a >> 7).wrapping_neg();
    (a << 1) ^ (FIELD_POLY_LOW & carry)
}

/// Multiplication in GF(2^8), without branches or indexing on the values.
const fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0;
    let mut bit = 0;
    while bit < u8::BITS {
        product ^= a & (b & 1).wrapping_neg();
        a = xtime(a);
        b >>= 1;
        bit += 1;
    }
    product
}

/// The AES S-box (FIPS-197 §5.1.1): the multiplicative inverse, then the affine map. Branches
/// only on the public exponent, so it runs in constant time for every byte.
const fn sub_byte(a: u8) -> u8 {
    let mut inverse = 1u8;
    let mut bit = u8::BITS;
    while bit > 0 {
        bit -= 1;
        inverse = gf_mul(inverse, inverse);
        if (INVERSE_EXPONENT >> bit) & 1 == 1 {
            inverse = gf_mul(inverse, a);
        }
    }
    inverse
        ^ inverse.rotate_left(1)
        ^ inverse.rotate_left(2)
        ^ inverse.rotate_left(3)
        ^ inverse.rotate_left(4)
        ^ AFFINE_CONSTANT
}

/// One CBC encryption job: an expanded AES-128 key, and a buffer encrypted in place (length a
/// multiple of 16), zero IV.
#[derive(Debug)]
pub struct CbcJob<'a> {
    /// The session's expanded key.
    pub key: &'a Aes128EncKey,
    /// The plaintext, replaced by its ciphertext. Its length must be a multiple of 16 bytes; it
    /// may be empty.
    pub data: &'a mut [u8],
}

/// An implementation of [`encrypt_cbc_zero_iv_many`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// 16 jobs at a time: four per 512-bit register, VAES and AVX-512F.
    Vaes512,
    /// 8 jobs at a time, one per 128-bit register, AES-NI.
    AesNi,
    /// One job at a time with the `cbc` and `aes` crates.
    Portable,
}

impl Backend {
    /// Every backend, fastest first.
    pub const ALL: [Backend; 3] = [Backend::Vaes512, Backend::AesNi, Backend::Portable];

    /// The backend's name: `"vaes512"`, `"aesni"` or `"portable"`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Vaes512 => "vaes512",
            Backend::AesNi => "aesni",
            Backend::Portable => "portable",
        }
    }

    /// Whether this CPU can run the backend (detected at run time).
    pub fn is_available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Vaes512 => {
                std::arch::is_x86_feature_detected!("vaes")
                    && std::arch::is_x86_feature_detected!("avx512f")
            }
            #[cfg(target_arch = "x86_64")]
            Backend::AesNi => std::arch::is_x86_feature_detected!("aes"),
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Vaes512 | Backend::AesNi => false,
            Backend::Portable => true,
        }
    }

    /// The fastest backend this CPU can run, detected once.
    fn detected() -> Backend {
        static DETECTED: OnceLock<Backend> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            Backend::ALL
                .into_iter()
                .find(|b| b.is_available())
                .unwrap_or(Backend::Portable)
        })
    }
}

/// The name of the backend [`encrypt_cbc_zero_iv_many`] uses on this CPU: `"vaes512"`,
/// `"aesni"` or `"portable"` (detected once).
pub fn backend() -> &'static str {
    Backend::detected().name()
}

/// Encrypts every job's buffer in place with AES-128-CBC and a zero IV, on the fastest backend
/// of this CPU. The result is byte for byte that of the `cbc` crate, job by job.
///
/// Fails with [`CryptoError::NotBlockAligned`], before encrypting anything, when a buffer's
/// length is not a multiple of 16.
pub fn encrypt_cbc_zero_iv_many(jobs: &mut [CbcJob<'_>]) -> Result<(), CryptoError> {
    encrypt_cbc_zero_iv_many_with(Backend::detected(), jobs)
}

/// [`encrypt_cbc_zero_iv_many`] on a chosen backend (for tests and benchmarks).
///
/// Fails with [`CryptoError::UnavailableBackend`] when this CPU cannot run `backend`, and with
/// [`CryptoError::NotBlockAligned`] when a buffer's length is not a multiple of 16; in both
/// cases nothing is encrypted.
pub fn encrypt_cbc_zero_iv_many_with(
    backend: Backend,
    jobs: &mut [CbcJob<'_>],
) -> Result<(), CryptoError> {
    if jobs.iter().any(|j| j.data.len() % CIPHER_BLOCK_LEN != 0) {
        return Err(CryptoError::NotBlockAligned);
    }
    if !backend.is_available() {
        return Err(CryptoError::UnavailableBackend(backend.name()));
    }
    match backend {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `is_available` detected VAES and AVX-512F on this CPU just above, the target
        // features `encrypt_vaes512` is compiled for.
        Backend::Vaes512 => unsafe { x86::encrypt_vaes512(jobs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `is_available` detected AES-NI on this CPU just above, the target feature
        // `encrypt_aesni` is compiled for.
        Backend::AesNi => unsafe { x86::encrypt_aesni(jobs) },
        _ => encrypt_portable(jobs),
    }
    Ok(())
}

/// The portable backend: the `cbc` crate, one job after the other. The `aes::Aes128Enc` is
/// rebuilt from the first round key for every job, which keeps [`Aes128EncKey`] at 176 bytes;
/// this path only runs where AES-NI is missing.
fn encrypt_portable(jobs: &mut [CbcJob<'_>]) {
    use aes::cipher::{block_padding::NoPadding, BlockEncryptMut, InnerIvInit, KeyInit};

    const ZERO_IV: Block = [0; CIPHER_BLOCK_LEN];
    for job in jobs {
        let cipher = aes::Aes128Enc::new(job.key.cipher_key().into());
        let len = job.data.len();
        // The lengths were checked to be multiples of the block size, so NoPadding never fails;
        // an error would leave the buffer as it was.
        let _ = cbc::Encryptor::<aes::Aes128Enc>::inner_iv_init(cipher, &ZERO_IV.into())
            .encrypt_padded_mut::<NoPadding>(job.data, len);
    }
}

// The kernels index parallel per-lane arrays (state, chain, keys, buffers) by lane and round,
// as the algorithm reads; iterator chains over four arrays at once would hide that.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AES-NI and VAES-512 kernels. A lane holds one job: its round keys, the previous
    //! ciphertext block (the CBC chain, zero at the start) and the rest of its buffer. Every
    //! step encrypts one block in every lane, interleaving the lanes round by round; an idle
    //! lane computes on zeros and stores nothing.

    use core::arch::x86_64::{
        __m128i, __m512i, _mm512_aesenc_epi128, _mm512_aesenclast_epi128,
        _mm512_extracti32x4_epi32, _mm512_inserti32x4, _mm512_setzero_si512, _mm512_xor_si512,
        _mm512_zextsi128_si512, _mm_aesenc_si128, _mm_aesenclast_si128, _mm_loadu_si128,
        _mm_setzero_si128, _mm_storeu_si128, _mm_xor_si128,
    };
    use std::mem::take;

    use super::{Aes128EncKey, Block, CbcJob, CIPHER_BLOCK_LEN, ROUNDS, ROUND_KEYS};

    /// Lanes of the AES-NI kernel: one per 128-bit register. Zen 4 and recent Intel cores
    /// issue two AESENC per cycle with a latency of 4, so 8 independent blocks fill the unit.
    const AESNI_LANES: usize = 8;
    /// Blocks in one 512-bit register.
    const BLOCKS_PER_ZMM: usize = 4;
    /// Registers of the VAES-512 kernel; 16 lanes in all.
    const VAES_REGISTERS: usize = 4;
    /// Lanes of the VAES-512 kernel.
    const VAES_LANES: usize = BLOCKS_PER_ZMM * VAES_REGISTERS;

    /// Loads one block.
    #[inline(always)]
    fn load(block: &Block) -> __m128i {
        // SAFETY: `block` is a reference to 16 readable bytes; `_mm_loadu_si128` has no
        // alignment requirement, and SSE2 is part of the x86-64 baseline.
        unsafe { _mm_loadu_si128(block.as_ptr().cast()) }
    }

    /// Stores one block.
    #[inline(always)]
    fn store(block: &mut Block, value: __m128i) {
        // SAFETY: `block` is an exclusive reference to 16 writable bytes; `_mm_storeu_si128`
        // has no alignment requirement, and SSE2 is part of the x86-64 baseline.
        unsafe { _mm_storeu_si128(block.as_mut_ptr().cast(), value) }
    }

    /// A job's round keys as registers.
    #[inline(always)]
    fn round_keys(key: &Aes128EncKey) -> [__m128i; ROUND_KEYS] {
        key.round_keys.each_ref().map(load)
    }

    /// A lane's job: the blocks of its buffer not yet encrypted. Empty when the lane is idle.
    type Lane<'j> = &'j mut [Block];

    /// Gives every finished or idle lane the next job that has data, and answers the keys of
    /// the lanes that got one. Lanes stay empty (idle) once the jobs are all handed out.
    #[inline(always)]
    fn refill<'j, 'k, const N: usize>(
        lanes: &mut [Lane<'j>; N],
        queue: &mut impl Iterator<Item = (&'k Aes128EncKey, Lane<'j>)>,
    ) -> [Option<&'k Aes128EncKey>; N] {
        let mut started = [None; N];
        for (lane, started) in lanes.iter_mut().zip(&mut started) {
            if lane.is_empty() {
                if let Some((key, data)) = queue.find(|(_, data)| !data.is_empty()) {
                    *lane = data;
                    *started = Some(key);
                }
            }
        }
        started
    }

    /// Splits off the blocks every busy lane encrypts before the next refill: as many as the
    /// shortest busy lane has left, so no lane finishes in the middle of a run. Idle lanes get
    /// an empty run. Answers the runs and their length, 0 when every lane is idle.
    #[inline(always)]
    fn next_run<'j, const N: usize>(lanes: &mut [Lane<'j>; N]) -> ([Lane<'j>; N], usize) {
        let run = lanes
            .iter()
            .map(|lane| lane.len())
            .filter(|&len| len > 0)
            .min()
            .unwrap_or(0);
        let runs = lanes.each_mut().map(|lane| {
            let len = run.min(lane.len());
            let (head, tail) = take(lane).split_at_mut(len);
            *lane = tail;
            head
        });
        (runs, run)
    }

    /// The jobs as a queue of `(key, blocks)`.
    fn queue<'j, 'k>(
        jobs: &'j mut [CbcJob<'k>],
    ) -> impl Iterator<Item = (&'k Aes128EncKey, Lane<'j>)> {
        jobs.iter_mut()
            .map(|job| (job.key, job.data.as_chunks_mut::<CIPHER_BLOCK_LEN>().0))
    }

    /// AES-NI: 8 lanes of 128 bits.
    ///
    /// # Safety
    /// The CPU must support AES-NI.
    #[target_feature(enable = "aes,sse2")]
    pub(super) unsafe fn encrypt_aesni(jobs: &mut [CbcJob<'_>]) {
        let zero = _mm_setzero_si128();
        let mut queue = queue(jobs);
        let mut lanes: [Lane<'_>; AESNI_LANES] = Default::default();
        let mut keys = [[zero; ROUND_KEYS]; AESNI_LANES];
        let mut chain = [zero; AESNI_LANES];
        loop {
            for (l, key) in refill(&mut lanes, &mut queue).into_iter().enumerate() {
                if let Some(key) = key {
                    keys[l] = round_keys(key);
                    chain[l] = zero;
                }
            }
            let (runs, run) = next_run(&mut lanes);
            if run == 0 {
                return;
            }
            for i in 0..run {
                let mut state = [zero; AESNI_LANES];
                for l in 0..AESNI_LANES {
                    let plain = runs[l].get(i).map_or(zero, load);
                    state[l] = _mm_xor_si128(_mm_xor_si128(plain, chain[l]), keys[l][0]);
                }
                for round in 1..ROUNDS {
                    for l in 0..AESNI_LANES {
                        state[l] = _mm_aesenc_si128(state[l], keys[l][round]);
                    }
                }
                for l in 0..AESNI_LANES {
                    chain[l] = _mm_aesenclast_si128(state[l], keys[l][ROUNDS]);
                    if let Some(block) = runs[l].get_mut(i) {
                        store(block, chain[l]);
                    }
                }
            }
        }
    }

    /// Puts a block into 128-bit lane `slot` (0..4) of `v`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn insert(v: __m512i, slot: usize, block: __m128i) -> __m512i {
        match slot {
            0 => _mm512_inserti32x4::<0>(v, block),
            1 => _mm512_inserti32x4::<1>(v, block),
            2 => _mm512_inserti32x4::<2>(v, block),
            _ => _mm512_inserti32x4::<3>(v, block),
        }
    }

    /// Takes the block in 128-bit lane `slot` (0..4) of `v`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn extract(v: __m512i, slot: usize) -> __m128i {
        match slot {
            0 => _mm512_extracti32x4_epi32::<0>(v),
            1 => _mm512_extracti32x4_epi32::<1>(v),
            2 => _mm512_extracti32x4_epi32::<2>(v),
            _ => _mm512_extracti32x4_epi32::<3>(v),
        }
    }

    /// VAES-512: 16 lanes, four per 512-bit register; lane `l` is slot `l % 4` of register
    /// `l / 4`.
    ///
    /// # Safety
    /// The CPU must support VAES and AVX-512F.
    #[target_feature(enable = "vaes,avx512f")]
    pub(super) unsafe fn encrypt_vaes512(jobs: &mut [CbcJob<'_>]) {
        let zero = _mm512_setzero_si512();
        let mut queue = queue(jobs);
        let mut lanes: [Lane<'_>; VAES_LANES] = Default::default();
        let mut keys = [[zero; ROUND_KEYS]; VAES_REGISTERS];
        let mut chain = [zero; VAES_REGISTERS];
        loop {
            for (l, key) in refill(&mut lanes, &mut queue).into_iter().enumerate() {
                if let Some(key) = key {
                    let (reg, slot) = (l / BLOCKS_PER_ZMM, l % BLOCKS_PER_ZMM);
                    for (k, round_key) in keys[reg].iter_mut().zip(&key.round_keys) {
                        *k = insert(*k, slot, load(round_key));
                    }
                    chain[reg] = insert(chain[reg], slot, _mm_setzero_si128());
                }
            }
            let (runs, run) = next_run(&mut lanes);
            if run == 0 {
                return;
            }
            for i in 0..run {
                let mut state = [zero; VAES_REGISTERS];
                for reg in 0..VAES_REGISTERS {
                    let lane = reg * BLOCKS_PER_ZMM;
                    let block =
                        |slot: usize| runs[lane + slot].get(i).map_or(_mm_setzero_si128(), load);
                    let plain = _mm512_zextsi128_si512(block(0));
                    let plain = _mm512_inserti32x4::<1>(plain, block(1));
                    let plain = _mm512_inserti32x4::<2>(plain, block(2));
                    let plain = _mm512_inserti32x4::<3>(plain, block(3));
                    state[reg] =
                        _mm512_xor_si512(_mm512_xor_si512(plain, chain[reg]), keys[reg][0]);
                }
                for round in 1..ROUNDS {
                    for reg in 0..VAES_REGISTERS {
                        state[reg] = _mm512_aesenc_epi128(state[reg], keys[reg][round]);
                    }
                }
                for reg in 0..VAES_REGISTERS {
                    chain[reg] = _mm512_aesenclast_epi128(state[reg], keys[reg][ROUNDS]);
                    for slot in 0..BLOCKS_PER_ZMM {
                        if let Some(block) = runs[reg * BLOCKS_PER_ZMM + slot].get_mut(i) {
                            store(block, extract(chain[reg], slot));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use aes::cipher::{block_padding::NoPadding, BlockEncryptMut, InnerIvInit, KeyInit};
    use proptest::prelude::*;

    use super::*;

    type CbcEncryptor = cbc::Encryptor<aes::Aes128Enc>;

    /// FIPS-197 Appendix A.1: the cipher key.
    const A1_KEY: &str = "2b7e151628aed2a6abf7158809cf4f3c";
    /// FIPS-197 Appendix A.1: w[40..44], the last round key.
    const A1_LAST_ROUND_KEY: &str = "d014f9a8c9ee2589e13f0cc8b6630ca6";
    /// FIPS-197 Appendix A.1: w[4..8], the first expanded round key.
    const A1_ROUND_KEY_1: &str = "a0fafe1788542cb123a339392a6c7605";
    /// FIPS-197 Appendix C.1: key, plaintext and ciphertext of AES-128.
    const C1_KEY: &str = "000102030405060708090a0b0c0d0e0f";
    const C1_PLAIN: &str = "00112233445566778899aabbccddeeff";
    const C1_CIPHER: &str = "69c4e0d86a7b0430d8cdb78070b4c55a";
    /// NIST SP 800-38A F.2.1, CBC-AES128.Encrypt.
    const F21_IV: &str = "000102030405060708090a0b0c0d0e0f";
    const F21_PLAIN: &str = concat!(
        "6bc1bee22e409f96e93d7e117393172a",
        "ae2d8a571e03ac9c9eb76fac45af8e51",
        "30c81c46a35ce411e5fbc1191a0a52ef",
        "f69f2445df4f9b17ad2b417be66c3710"
    );
    const F21_CIPHER: &str = concat!(
        "7649abac8119b246cee98e9b12e9197d",
        "5086cb9b507219ee95db113a917678b2",
        "73bed6b8e3c1743b7116e69e22229516",
        "3ff1caa1681fac09120eca307586e1a7"
    );
    /// Longest buffer of the property tests: a 1500-byte datagram's ciphertext, rounded up.
    const MAX_TEST_BLOCKS: usize = 94;
    /// Largest batch of the property tests.
    const MAX_TEST_JOBS: usize = 40;

    fn hex16(s: &str) -> Block {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    fn available() -> Vec<Backend> {
        Backend::ALL
            .into_iter()
            .filter(|b| b.is_available())
            .collect()
    }

    /// The reference: the `cbc` crate with a zero IV.
    fn reference(key: &Block, data: &[u8]) -> Vec<u8> {
        let mut out = data.to_vec();
        CbcEncryptor::inner_iv_init(aes::Aes128Enc::new(key.into()), &[0u8; 16].into())
            .encrypt_padded_mut::<NoPadding>(&mut out, data.len())
            .unwrap();
        out
    }

    /// Encrypts `(key, plaintext)` pairs on `backend` and answers the ciphertexts.
    fn run(backend: Backend, inputs: &[(Block, Vec<u8>)]) -> Vec<Vec<u8>> {
        let keys: Vec<Aes128EncKey> = inputs.iter().map(|(k, _)| Aes128EncKey::new(k)).collect();
        let mut buffers: Vec<Vec<u8>> = inputs.iter().map(|(_, d)| d.clone()).collect();
        let mut jobs: Vec<CbcJob<'_>> = keys
            .iter()
            .zip(&mut buffers)
            .map(|(key, data)| CbcJob { key, data })
            .collect();
        encrypt_cbc_zero_iv_many_with(backend, &mut jobs).unwrap();
        buffers
    }

    #[test]
    fn sbox_spot_values() {
        // FIPS-197 Figure 7: S(00) = 63, S(01) = 7c, S(53) = ed, S(ff) = 16.
        assert_eq!(sub_byte(0x00), 0x63);
        assert_eq!(sub_byte(0x01), 0x7c);
        assert_eq!(sub_byte(0x53), 0xed);
        assert_eq!(sub_byte(0xff), 0x16);
    }

    #[test]
    fn fips197_a1_key_expansion() {
        let key = Aes128EncKey::new(&hex16(A1_KEY));
        assert_eq!(hex::encode(key.round_keys[0]), A1_KEY);
        assert_eq!(hex::encode(key.round_keys[1]), A1_ROUND_KEY_1);
        assert_eq!(hex::encode(key.round_keys[ROUNDS]), A1_LAST_ROUND_KEY);
    }

    #[test]
    fn backend_is_the_fastest_available() {
        assert_eq!(backend(), available()[0].name());
        assert!(Backend::Portable.is_available());
    }

    #[test]
    fn fips197_c1_single_block_on_every_backend() {
        for b in available() {
            let out = run(b, &[(hex16(C1_KEY), hex::decode(C1_PLAIN).unwrap())]);
            assert_eq!(hex::encode(&out[0]), C1_CIPHER, "{}", b.name());
        }
    }

    #[test]
    fn sp800_38a_f21_on_every_backend() {
        // With a zero IV, XORing the IV into the first plaintext block is CBC with that IV.
        let mut plain = hex::decode(F21_PLAIN).unwrap();
        for (p, iv) in plain.iter_mut().zip(hex16(F21_IV)) {
            *p ^= iv;
        }
        for b in available() {
            // Alone, and in the middle of a batch of other keys and lengths.
            let mut inputs: Vec<(Block, Vec<u8>)> = (0..20u8)
                .map(|i| ([i; 16], vec![i; 16 * usize::from(i % 5)]))
                .collect();
            inputs.insert(9, (hex16(A1_KEY), plain.clone()));
            let alone = run(b, &inputs[9..10]);
            let batch = run(b, &inputs);
            assert_eq!(hex::encode(&alone[0]), F21_CIPHER, "{}", b.name());
            assert_eq!(hex::encode(&batch[9]), F21_CIPHER, "{}", b.name());
        }
    }

    #[test]
    fn misaligned_length_encrypts_nothing() {
        let key = Aes128EncKey::new(&[7; 16]);
        let mut a = vec![1u8; 32];
        let mut b = vec![2u8; 33];
        for backend in available() {
            let mut jobs = [
                CbcJob {
                    key: &key,
                    data: &mut a,
                },
                CbcJob {
                    key: &key,
                    data: &mut b,
                },
            ];
            assert_eq!(
                encrypt_cbc_zero_iv_many_with(backend, &mut jobs),
                Err(CryptoError::NotBlockAligned)
            );
            assert_eq!(a, vec![1u8; 32]);
            assert_eq!(b, vec![2u8; 33]);
        }
    }

    #[test]
    fn empty_batch_and_empty_buffers() {
        for b in available() {
            assert_eq!(run(b, &[]), Vec::<Vec<u8>>::new());
            let inputs = vec![
                ([1; 16], Vec::new()),
                ([2; 16], vec![3; 48]),
                ([4; 16], Vec::new()),
            ];
            let out = run(b, &inputs);
            assert!(out[0].is_empty() && out[2].is_empty());
            assert_eq!(out[1], reference(&[2; 16], &[3; 48]));
        }
    }

    fn job() -> impl Strategy<Value = (Block, Vec<u8>)> {
        (any::<Block>(), 1..=MAX_TEST_BLOCKS).prop_flat_map(|(key, blocks)| {
            proptest::collection::vec(any::<u8>(), blocks * CIPHER_BLOCK_LEN)
                .prop_map(move |data| (key, data))
        })
    }

    proptest! {
        #[test]
        fn every_backend_matches_the_cbc_crate(
            inputs in proptest::collection::vec(job(), 1..=MAX_TEST_JOBS)
        ) {
            let expected: Vec<Vec<u8>> = inputs.iter().map(|(k, d)| reference(k, d)).collect();
            for b in available() {
                prop_assert_eq!(&run(b, &inputs), &expected, "{}", b.name());
            }
        }
    }
}
