//! Options and option lists (RFC 7016 §2.1.3, §2.1.4).
//!
//! An option is `length VLU | type VLU | value`, where the length covers the type and the value. A
//! length of 0 is the end marker. An option list is options closed by a marker (User Data options,
//! RFC 7016 §2.3.11); certificates, endpoint discriminators and session key components of the Flash
//! profile are option sequences that run to the end of their field and may have no marker (RFC 7425
//! §4.3, §4.4). [`Options`] handles both: it stops at a marker or at the end of its input.

use super::codec::{vlu_len, Reader, WireError, Writer};

/// The end-of-list marker: an option length of 0 (RFC 7016 §2.1.3).
pub const MARKER: u8 = 0x00;
/// Encoded size of the marker (RFC 7016 §2.1.3).
pub const MARKER_LEN: usize = 1;

/// One option, borrowed from its packet (RFC 7016 §2.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawOption<'a> {
    /// The option type.
    pub kind: u64,
    /// The option value: everything after the type, up to the option length.
    pub value: &'a [u8],
}

impl<'a> RawOption<'a> {
    /// Read the value as a single VLU, ignoring anything after it (used for DH groups and the Return
    /// Flow Association, RFC 7016 §2.3.11.1.2, RFC 7425 §4.3.4).
    pub fn value_vlu(&self) -> Result<u64, WireError> {
        Reader::new(self.value).read_vlu()
    }

    /// Encoded size of this option.
    pub fn encoded_len(&self) -> usize {
        option_len(self.kind, self.value.len())
    }

    /// Write this option.
    pub fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        write_option(w, self.kind, self.value)
    }
}

/// Iterator over an option sequence. It stops after the end marker or at the end of its input, and
/// stops after yielding the first error.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    reader: Reader<'a>,
    marker_seen: bool,
    /// Where the end marker starts (valid once `marker_seen`); a marker may be a non-minimal
    /// VLU of more than one byte (`80 00`).
    marker_at: usize,
    failed: bool,
}

/// Iterate over the options in `bytes`, up to a marker or the end of `bytes`.
pub fn options(bytes: &[u8]) -> Options<'_> {
    Options {
        reader: Reader::new(bytes),
        marker_seen: false,
        marker_at: 0,
        failed: false,
    }
}

impl<'a> Options<'a> {
    /// True once the iterator has consumed an end marker.
    pub fn marker_seen(&self) -> bool {
        self.marker_seen
    }

    /// Bytes consumed so far, including the marker once seen.
    pub fn consumed(&self) -> usize {
        self.reader.position()
    }

    /// The bytes after the end marker, once the marker has been reached (otherwise `None`).
    pub fn after_marker(&self) -> Option<&'a [u8]> {
        self.marker_seen.then(|| self.reader.clone().rest())
    }

    fn read_one(&mut self) -> Result<Option<RawOption<'a>>, WireError> {
        let before = self.reader.position();
        let len = self.reader.read_vlu()?;
        if len == 0 {
            self.marker_seen = true;
            self.marker_at = before;
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| WireError::UnexpectedEnd)?;
        let body = self.reader.read_bytes(len)?;
        let mut body = Reader::new(body);
        let kind = body.read_vlu()?;
        Ok(Some(RawOption {
            kind,
            value: body.rest(),
        }))
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<RawOption<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.marker_seen || self.failed || self.reader.is_empty() {
            return None;
        }
        match self.read_one() {
            Ok(opt) => opt.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Split a marker-terminated option list (RFC 7016 §2.1.4) off the front of `bytes`, checking every
/// option. Returns the options without the marker, and the bytes after the marker.
pub fn split_option_list(bytes: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let mut it = options(bytes);
    for opt in it.by_ref() {
        opt?;
    }
    let after = it.after_marker().ok_or(WireError::UnexpectedEnd)?;
    let list = bytes.get(..it.marker_at).ok_or(WireError::UnexpectedEnd)?;
    Ok((list, after))
}

/// Check that `bytes` is a well-formed option sequence (a marker, if any, may be followed by more
/// bytes, which are not checked).
pub fn validate_options(bytes: &[u8]) -> Result<(), WireError> {
    options(bytes).try_for_each(|o| o.map(drop))
}

/// Encoded size of an option of type `kind` with a value of `value_len` bytes (RFC 7016 §2.1.3).
pub fn option_len(kind: u64, value_len: usize) -> usize {
    let inner = vlu_len(kind) + value_len;
    vlu_len(inner as u64) + inner
}

/// Write one option (RFC 7016 §2.1.3). Writes nothing if it does not fit.
pub fn write_option(w: &mut Writer<'_>, kind: u64, value: &[u8]) -> Result<(), WireError> {
    w.ensure(option_len(kind, value.len()))?;
    w.put_vlu((vlu_len(kind) + value.len()) as u64)?;
    w.put_vlu(kind)?;
    w.put_bytes(value)
}

/// Encoded size of an option whose value is the single VLU `value`.
pub fn vlu_option_len(kind: u64, value: u64) -> usize {
    option_len(kind, vlu_len(value))
}

/// Write an option whose value is the single VLU `value` (e.g. a Return Flow Association,
/// RFC 7016 §2.3.11.1.2). Writes nothing if it does not fit.
pub fn write_vlu_option(w: &mut Writer<'_>, kind: u64, value: u64) -> Result<(), WireError> {
    w.ensure(vlu_option_len(kind, value))?;
    w.put_vlu((vlu_len(kind) + vlu_len(value)) as u64)?;
    w.put_vlu(kind)?;
    w.put_vlu(value)
}

/// Write the end-of-list marker (RFC 7016 §2.1.3).
pub fn write_marker(w: &mut Writer<'_>) -> Result<(), WireError> {
    w.put_u8(MARKER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn flash_server_certificate_has_no_marker() {
        // Cumulus certificate layout (docs/rtmfp.md §1.5), shortened randomness.
        let cert = [0x01, 0x0A, 0x03, 0x0E, 0xAA, 0xBB, 0x02, 0x15, 0x02];
        let opts: Vec<_> = options(&cert).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            opts,
            vec![
                RawOption {
                    kind: 0x0A,
                    value: &[]
                },
                RawOption {
                    kind: 0x0E,
                    value: &[0xAA, 0xBB]
                },
                RawOption {
                    kind: 0x15,
                    value: &[0x02]
                },
            ]
        );
        assert_eq!(opts[2].value_vlu(), Ok(2));
        let mut it = options(&cert);
        it.by_ref().for_each(drop);
        assert!(!it.marker_seen());
        assert_eq!(it.after_marker(), None);
        assert_eq!(split_option_list(&cert), Err(WireError::UnexpectedEnd));
    }

    #[test]
    fn user_data_option_list_with_marker() {
        // Flash "TC" metadata option, a return flow association, marker, then data.
        let bytes = [
            0x04, 0x00, b'T', b'C', 0x04, 0x02, 0x0A, 0x02, 0x00, 0x14, 0x15,
        ];
        let (list, data) = split_option_list(&bytes).unwrap();
        assert_eq!(list, &bytes[..8]);
        assert_eq!(data, &[0x14, 0x15]);
        let opts: Vec<_> = options(list).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            opts[0],
            RawOption {
                kind: 0,
                value: b"TC\x04"
            }
        );
        assert_eq!(opts[1].kind, 0x0A);
        assert_eq!(opts[1].value_vlu(), Ok(2));
        let mut it = options(&bytes);
        assert_eq!(it.by_ref().count(), 2);
        assert_eq!(it.after_marker(), Some(&[0x14u8, 0x15][..]));
    }

    #[test]
    fn malformed_options() {
        // Length runs past the end.
        assert_eq!(
            options(&[0x05, 0x01]).next(),
            Some(Err(WireError::UnexpectedEnd))
        );
        // Type VLU runs past the option length.
        assert_eq!(
            options(&[0x01, 0x81, 0x01]).next(),
            Some(Err(WireError::UnexpectedEnd))
        );
        // The iterator stops after an error.
        let mut it = options(&[0x05]);
        assert!(matches!(it.next(), Some(Err(_))));
        assert_eq!(it.next(), None);
        assert!(validate_options(&[0x02, 0x0A, 0x01, 0x05]).is_err());
        // An empty list is a lone marker.
        assert_eq!(
            split_option_list(&[0x00, 0x09]),
            Ok((&[][..], &[0x09u8][..]))
        );
    }

    #[test]
    fn emitters() {
        let mut buf = [0u8; 16];
        let mut w = Writer::new(&mut buf);
        write_option(&mut w, 0x0E, &[1, 2, 3]).unwrap();
        write_vlu_option(&mut w, 0x0A, 130).unwrap();
        write_marker(&mut w).unwrap();
        assert_eq!(
            w.written(),
            &[0x04, 0x0E, 1, 2, 3, 0x03, 0x0A, 0x81, 0x02, 0x00]
        );
        assert_eq!(option_len(0x0E, 3), 5);
        assert_eq!(vlu_option_len(0x0A, 130), 4);
        let mut small = [0u8; 4];
        let mut w = Writer::new(&mut small);
        assert_eq!(
            write_option(&mut w, 0x0E, &[1, 2, 3]),
            Err(WireError::BufferTooSmall)
        );
        assert!(w.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn option_list_round_trip(
            opts in proptest::collection::vec(
                (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..200)), 0..6),
            tail in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut buf = vec![0u8; 2048];
            let mut w = Writer::new(&mut buf);
            let mut expected_len = 0;
            for (kind, value) in &opts {
                write_option(&mut w, *kind, value).unwrap();
                expected_len += option_len(*kind, value.len());
            }
            prop_assert_eq!(w.len(), expected_len);
            write_marker(&mut w).unwrap();
            w.put_bytes(&tail).unwrap();
            let (list, after) = split_option_list(w.written()).unwrap();
            prop_assert_eq!(list.len(), expected_len);
            prop_assert_eq!(after, &tail[..]);
            let parsed: Vec<_> = options(list).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(parsed.len(), opts.len());
            for (p, (kind, value)) in parsed.iter().zip(&opts) {
                prop_assert_eq!(p.kind, *kind);
                prop_assert_eq!(p.value, &value[..]);
            }
        }

        #[test]
        fn option_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut total = 0usize;
            for o in options(&bytes) {
                match o {
                    Ok(o) => total += o.encoded_len(),
                    Err(_) => break,
                }
            }
            prop_assert!(total <= bytes.len());
            let _ = split_option_list(&bytes);
        }
    }

    #[test]
    fn a_non_minimal_marker_is_not_part_of_the_list() {
        // Found by the `chunks` fuzzer: the marker `80 00` is a two-byte VLU 0.
        let bytes = [0x05, 0x00, b'T', b'C', 0x04, 0x00, 0x80, 0x00, 0xAA];
        let (list, after) = split_option_list(&bytes).unwrap();
        assert_eq!(list, &bytes[..6]);
        assert_eq!(after, &[0xAA]);
        validate_options(list).unwrap();
    }
}
