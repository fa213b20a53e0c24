//! The 16-bit Internet checksum used by the Flash profile when HMAC is not negotiated
//! (RFC 1071; RFC 7425 §4.6.4).

/// Computes the RFC 1071 Internet checksum of `data`: the ones' complement of the ones'
/// complement sum of its big-endian 16-bit words, with an odd trailing byte padded with zero.
///
/// The bytes `01 02 03 04 05` give `0xF6F9`.
pub fn checksum(data: &[u8]) -> u16 {
    // RFC 1071 §2 (B), (C): the sum is independent of byte order and may be taken over wider
    // words in parallel, then folded. Little-endian 64-bit words are split into their 32-bit
    // halves, summed into u64 lanes (no carry is lost for any slice shorter than 16 GiB), and the
    // folded 16-bit sum, in little-endian order, is swapped back at the end: no byte swap per
    // word, so the loop vectorises.
    let mut sums = [0u64; LANES];
    let mut blocks = data.chunks_exact(LANES * WORD);
    for block in &mut blocks {
        for (sum, word) in sums.iter_mut().zip(block.chunks_exact(WORD)) {
            let w = u64::from_le_bytes(word.try_into().unwrap_or_default());
            *sum += (w & u64::from(u32::MAX)) + (w >> 32);
        }
    }
    let mut sum: u64 = sums.iter().sum();
    let mut pairs = blocks.remainder().chunks_exact(2);
    for pair in &mut pairs {
        sum += u64::from(u16::from_le_bytes([pair[0], pair[1]]));
    }
    if let Some(&last) = pairs.remainder().first() {
        // The odd trailing byte is the high byte of a big-endian word padded with zero.
        sum += u64::from(last);
    }
    while sum > u64::from(u16::MAX) {
        sum = (sum & u64::from(u16::MAX)) + (sum >> 16);
    }
    !(sum as u16).swap_bytes()
}

/// Bytes per word of the wide sum.
const WORD: usize = 8;
/// Words summed side by side.
const LANES: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain RFC 1071 definition, one 16-bit word at a time.
    fn reference(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn digest_vector() {
        // rtmfp.md §1.17.
        assert_eq!(checksum(&[0x01, 0x02, 0x03, 0x04, 0x05]), 0xF6F9);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2, so the checksum is 220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        assert_eq!(checksum(&[]), 0xffff);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn matches_reference(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(checksum(&data), reference(&data));
        }
    }
}
