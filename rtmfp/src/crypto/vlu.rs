//! A small private VLU and option-list reader for the crypto module (RFC 7016 §2.1.2, §2.1.3).
//!
//! The wire module has its own codec; crypto keeps this one so that it depends on nothing else in
//! the crate. Every read is bounds-checked and a VLU is at most [`MAX_VLU_LEN`] bytes long.

/// Bits of value carried by each VLU byte (RFC 7016 §2.1.2).
const VLU_BITS_PER_BYTE: u32 = 7;
/// A VLU byte with this bit set is followed by another (RFC 7016 §2.1.2).
const VLU_CONTINUE: u8 = 0x80;
/// The value bits of a VLU byte (RFC 7016 §2.1.2).
const VLU_VALUE_MASK: u8 = 0x7F;
/// Longest VLU we accept: ten 7-bit groups hold any `u64` (RFC 7016 §2.1.2: at least 64 bits).
pub(crate) const MAX_VLU_LEN: usize = 10;

/// Reads a VLU at the start of `buf`. Answers the value and the number of bytes it used, or
/// `None` when it is truncated, longer than [`MAX_VLU_LEN`], or does not fit in a `u64`.
pub(crate) fn read_vlu(buf: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().take(MAX_VLU_LEN).enumerate() {
        if value.leading_zeros() < VLU_BITS_PER_BYTE {
            return None;
        }
        value = (value << VLU_BITS_PER_BYTE) | u64::from(byte & VLU_VALUE_MASK);
        if byte & VLU_CONTINUE == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Number of bytes the VLU encoding of `value` takes (RFC 7016 §2.1.2).
pub(crate) fn vlu_len(value: u64) -> usize {
    let significant = u64::BITS - value.leading_zeros();
    // At least one byte, even for zero.
    (significant.max(1)).div_ceil(VLU_BITS_PER_BYTE) as usize
}

/// Writes the VLU encoding of `value` at the start of `out`. Answers the number of bytes
/// written, or `None` when `out` is too short.
pub(crate) fn write_vlu(value: u64, out: &mut [u8]) -> Option<usize> {
    let len = vlu_len(value);
    let dst = out.get_mut(..len)?;
    for (i, byte) in dst.iter_mut().enumerate() {
        let shift = VLU_BITS_PER_BYTE * (len - 1 - i) as u32;
        let group = ((value >> shift) as u8) & VLU_VALUE_MASK;
        *byte = if i + 1 < len {
            group | VLU_CONTINUE
        } else {
            group
        };
    }
    Some(len)
}

/// One element of an option list (RFC 7016 §2.1.3, §2.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OptionItem<'a> {
    /// A zero-length option: the end-of-list marker.
    Marker,
    /// An option with its type and value.
    Option {
        /// The option type.
        kind: u64,
        /// The option value (may be empty).
        value: &'a [u8],
    },
}

/// Walks an option list: `length VLU | type VLU | value`, where the length covers the type and
/// the value (RFC 7016 §2.1.3). It yields each element with the offset just past it, and stops
/// after the first malformed element, which it reports as `Err(())`.
pub(crate) struct OptionReader<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> OptionReader<'a> {
    /// Starts reading options at the beginning of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        OptionReader {
            buf,
            pos: 0,
            failed: false,
        }
    }

    fn read_one(&mut self) -> Option<(OptionItem<'a>, usize)> {
        let rest = self.buf.get(self.pos..)?;
        let (len, len_len) = read_vlu(rest)?;
        let body_start = len_len;
        if len == 0 {
            return Some((OptionItem::Marker, self.pos + len_len));
        }
        let len = usize::try_from(len).ok()?;
        let body_end = body_start.checked_add(len)?;
        let body = rest.get(body_start..body_end)?;
        let (kind, kind_len) = read_vlu(body)?;
        let value = body.get(kind_len..)?;
        Some((OptionItem::Option { kind, value }, self.pos + body_end))
    }
}

impl<'a> Iterator for OptionReader<'a> {
    type Item = Result<(OptionItem<'a>, usize), ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        match self.read_one() {
            Some((item, end)) => {
                self.pos = end;
                Some(Ok((item, end)))
            }
            None => {
                self.failed = true;
                Some(Err(()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn digest_vectors() {
        // rtmfp.md §1.17: `81 02` = 130, `ff 7f` = 16383, `00` = 0.
        assert_eq!(read_vlu(&[0x81, 0x02]), Some((130, 2)));
        assert_eq!(read_vlu(&[0xff, 0x7f]), Some((16383, 2)));
        assert_eq!(read_vlu(&[0x00]), Some((0, 1)));
        let mut out = [0u8; MAX_VLU_LEN];
        assert_eq!(write_vlu(130, &mut out), Some(2));
        assert_eq!(&out[..2], &[0x81, 0x02]);
    }

    #[test]
    fn rejects_truncated_overlong_and_overflowing() {
        assert_eq!(read_vlu(&[]), None);
        assert_eq!(read_vlu(&[0x80]), None);
        assert_eq!(read_vlu(&[0x80; 11]), None);
        // 2^64 needs 65 bits: 0x82 followed by nine 0x80 and a final 0x00.
        let mut too_big = [0x80u8; 10];
        too_big[0] = 0x82;
        too_big[9] = 0x00;
        assert_eq!(read_vlu(&too_big), None);
        let mut max = [0xffu8; 10];
        max[0] = 0x81;
        max[9] = 0x7f;
        assert_eq!(read_vlu(&max), Some((u64::MAX, 10)));
        assert_eq!(write_vlu(130, &mut [0u8; 1]), None);
    }

    #[test]
    fn option_reader_walks_a_list() {
        // `02 15 02` (type 0x15, value 02), marker, `01 0A` (type 0x0A, empty value).
        let list = [0x02, 0x15, 0x02, 0x00, 0x01, 0x0a];
        let items: Vec<_> = OptionReader::new(&list).collect();
        assert_eq!(
            items,
            vec![
                Ok((
                    OptionItem::Option {
                        kind: 0x15,
                        value: &[0x02][..]
                    },
                    3
                )),
                Ok((OptionItem::Marker, 4)),
                Ok((
                    OptionItem::Option {
                        kind: 0x0a,
                        value: &[][..]
                    },
                    6
                )),
            ]
        );
        // Length runs past the end.
        let items: Vec<_> = OptionReader::new(&[0x05, 0x15]).collect();
        assert_eq!(items, vec![Err(())]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn vlu_round_trip(value in any::<u64>()) {
            let mut out = [0u8; MAX_VLU_LEN];
            let n = write_vlu(value, &mut out).unwrap();
            prop_assert_eq!(n, vlu_len(value));
            prop_assert_eq!(read_vlu(&out[..n]), Some((value, n)));
        }

        #[test]
        fn option_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let items: Vec<_> = OptionReader::new(&bytes).collect();
            let mut end = 0;
            for (i, item) in items.iter().enumerate() {
                match item {
                    Ok((_, e)) => {
                        prop_assert!(*e > end && *e <= bytes.len());
                        end = *e;
                    }
                    // An error ends the walk.
                    Err(()) => prop_assert_eq!(i + 1, items.len()),
                }
            }
        }
    }
}
