//! The 16-bit Internet checksum used by the Flash profile when HMAC is not negotiated
//! (RFC 1071; RFC 7425 §4.6.4).

/// Computes the RFC 1071 Internet checksum of `data`: the ones' complement of the ones'
/// complement sum of its big-endian 16-bit words, with an odd trailing byte padded with zero.
///
/// The bytes `01 02 03 04 05` give `0xF6F9`.
pub fn checksum(data: &[u8]) -> u16 {
    // RFC 1071 §2 (B), (C): the sum is independent of byte order and may be taken in parallel
    // lanes, then folded. Little-endian 16-bit words are summed into 32-bit lanes (which the
    // compiler turns into vector adds of zero-extended words), each span of blocks short enough
    // that no lane can overflow, and the folded 16-bit sum, in little-endian order, is swapped
    // back at the end: no byte swap per word.
    let mut sum: u64 = 0;
    let mut spans = data.chunks(SPAN_BLOCKS * BLOCK);
    for span in &mut spans {
        let mut lanes = [0u32; LANES];
        let mut blocks = span.chunks_exact(BLOCK);
        for block in &mut blocks {
            for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(2)) {
                *lane += u32::from(u16::from_le_bytes([word[0], word[1]]));
            }
        }
        sum += lanes.iter().map(|&l| u64::from(l)).sum::<u64>();
        let mut pairs = blocks.remainder().chunks_exact(2);
        for pair in &mut pairs {
            sum += u64::from(u16::from_le_bytes([pair[0], pair[1]]));
        }
        if let Some(&last) = pairs.remainder().first() {
            // Only the last span can be odd: the odd trailing byte is the high byte of a
            // big-endian word padded with zero.
            sum += u64::from(last);
        }
    }
    while sum > u64::from(u16::MAX) {
        sum = (sum & u64::from(u16::MAX)) + (sum >> 16);
    }
    !(sum as u16).swap_bytes()
}

/// 16-bit words summed side by side, one per 32-bit lane.
const LANES: usize = 16;
/// Bytes of one block: a word for each lane.
const BLOCK: usize = LANES * 2;
/// Blocks summed before the lanes are folded: each adds at most `u16::MAX` to a lane, so a
/// span cannot overflow one.
const SPAN_BLOCKS: usize = (u32::MAX / u16::MAX as u32) as usize;

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

    #[test]
    fn lanes_do_not_overflow_on_long_inputs() {
        // All-ones words fill every lane to its limit in the first span; a second span and an
        // odd tail follow.
        let data = vec![0xff; SPAN_BLOCKS * BLOCK + BLOCK + 3];
        assert_eq!(checksum(&data), reference(&data));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn matches_reference(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(checksum(&data), reference(&data));
        }

        #[test]
        fn matches_reference_for_datagram_sizes(data in proptest::collection::vec(any::<u8>(), 1100..1600)) {
            prop_assert_eq!(checksum(&data), reference(&data));
        }
    }
}
