//! Byte-level codec: a bounds-checked [`Reader`] over borrowed input, a [`Writer`] into a
//! caller-supplied buffer, and the variable length unsigned integer (VLU) of RFC 7016 §2.1.2.
//!
//! Every read is checked: running out of input gives [`WireError::UnexpectedEnd`], never a panic.
//! Every write is checked: running out of room gives [`WireError::BufferTooSmall`] and writes
//! nothing.

/// Longest VLU we accept: 10 bytes carry 70 bits, enough for any `u64` (RFC 7016 §2.1.2: implementations
/// SHOULD handle at least 64-bit values).
pub const MAX_VLU_LEN: usize = 10;

/// VLU continuation flag: more bytes follow (RFC 7016 §2.1.2).
const VLU_MORE: u8 = 0x80;
/// VLU payload bits per byte (RFC 7016 §2.1.2).
const VLU_DIGIT_MASK: u8 = 0x7F;
/// Bits carried per VLU byte (RFC 7016 §2.1.2).
const VLU_DIGIT_BITS: u32 = 7;

/// A wire decoding or encoding error. Small and `Copy` so that it is cheap on the per-packet path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The input ended before the structure did.
    #[error("unexpected end of input")]
    UnexpectedEnd,
    /// A VLU was longer than [`MAX_VLU_LEN`] bytes or its value does not fit in a `u64`.
    #[error("VLU too long or overflows 64 bits")]
    VluTooLong,
    /// The output buffer has no room for what was to be written.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// A field holds a value the protocol forbids, or a value to emit does not fit its field.
    #[error("invalid value for {field}")]
    InvalidValue {
        /// The field concerned.
        field: &'static str,
    },
    /// A chunk is malformed.
    #[error("invalid chunk 0x{kind:02x}: {reason}")]
    InvalidChunk {
        /// The chunk type byte.
        kind: u8,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Number of bytes the VLU encoding of `v` takes (RFC 7016 §2.1.2), between 1 and [`MAX_VLU_LEN`].
pub fn vlu_len(v: u64) -> usize {
    let bits = (u64::BITS - v.leading_zeros()).max(1);
    bits.div_ceil(VLU_DIGIT_BITS) as usize
}

/// A bounds-checked cursor over borrowed input. Reads advance it; a failed read leaves it unchanged.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader positioned at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Read `n` bytes as a borrowed slice.
    pub fn read_bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::UnexpectedEnd)?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or(WireError::UnexpectedEnd)?;
        self.pos = end;
        Ok(out)
    }

    /// Read `N` bytes as an array.
    fn read_array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let bytes = self.read_bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Read one byte.
    pub fn read_u8(&mut self) -> Result<u8, WireError> {
        Ok(u8::from_be_bytes(self.read_array()?))
    }

    /// Read a big-endian 16-bit integer.
    pub fn read_u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.read_array()?))
    }

    /// Read a big-endian 32-bit integer.
    pub fn read_u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.read_array()?))
    }

    /// Read a VLU (RFC 7016 §2.1.2). Fails with [`WireError::VluTooLong`] past [`MAX_VLU_LEN`] bytes
    /// or on overflow, and with [`WireError::UnexpectedEnd`] if the input ends mid-VLU.
    pub fn read_vlu(&mut self) -> Result<u64, WireError> {
        let mut value: u64 = 0;
        let mut pos = self.pos;
        for _ in 0..MAX_VLU_LEN {
            let byte = *self.buf.get(pos).ok_or(WireError::UnexpectedEnd)?;
            pos += 1;
            if value > (u64::MAX >> VLU_DIGIT_BITS) {
                return Err(WireError::VluTooLong);
            }
            value = (value << VLU_DIGIT_BITS) | u64::from(byte & VLU_DIGIT_MASK);
            if byte & VLU_MORE == 0 {
                self.pos = pos;
                return Ok(value);
            }
        }
        Err(WireError::VluTooLong)
    }

    /// Read a VLU length prefix followed by that many bytes.
    pub fn read_vlu_bytes(&mut self) -> Result<&'a [u8], WireError> {
        let start = self.pos;
        let len = self.read_vlu()?;
        let len = usize::try_from(len).map_err(|_| WireError::UnexpectedEnd);
        match len.and_then(|n| self.read_bytes(n)) {
            Ok(bytes) => Ok(bytes),
            Err(e) => {
                self.pos = start;
                Err(e)
            }
        }
    }

    /// Read everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        out
    }
}

/// A bounds-checked cursor that writes into a caller-supplied buffer. A failed write writes nothing.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// A writer positioned at the start of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes written so far (same as [`Writer::position`]).
    pub fn len(&self) -> usize {
        self.pos
    }

    /// True when nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Room left in the buffer.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Fail with [`WireError::BufferTooSmall`] unless `n` more bytes fit.
    pub fn ensure(&self, n: usize) -> Result<(), WireError> {
        if n <= self.remaining() {
            Ok(())
        } else {
            Err(WireError::BufferTooSmall)
        }
    }

    /// Write a byte slice.
    pub fn put_bytes(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let end = self
            .pos
            .checked_add(bytes.len())
            .ok_or(WireError::BufferTooSmall)?;
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(WireError::BufferTooSmall)?;
        dst.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    /// Write `n` copies of `byte`.
    pub fn put_fill(&mut self, byte: u8, n: usize) -> Result<(), WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::BufferTooSmall)?;
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(WireError::BufferTooSmall)?;
        dst.fill(byte);
        self.pos = end;
        Ok(())
    }

    /// Write one byte.
    pub fn put_u8(&mut self, v: u8) -> Result<(), WireError> {
        self.put_bytes(&[v])
    }

    /// Write a big-endian 16-bit integer.
    pub fn put_u16(&mut self, v: u16) -> Result<(), WireError> {
        self.put_bytes(&v.to_be_bytes())
    }

    /// Write a big-endian 32-bit integer.
    pub fn put_u32(&mut self, v: u32) -> Result<(), WireError> {
        self.put_bytes(&v.to_be_bytes())
    }

    /// Write a VLU in its shortest form (RFC 7016 §2.1.2).
    pub fn put_vlu(&mut self, v: u64) -> Result<(), WireError> {
        let len = vlu_len(v);
        let mut out = [0u8; MAX_VLU_LEN];
        for (i, slot) in out.iter_mut().take(len).enumerate() {
            let shift = VLU_DIGIT_BITS * (len - 1 - i) as u32;
            // Truncation to the low 7 bits is the encoding.
            let digit = ((v >> shift) as u8) & VLU_DIGIT_MASK;
            *slot = if i + 1 < len { digit | VLU_MORE } else { digit };
        }
        self.put_bytes(&out[..len])
    }

    /// Write a VLU length prefix followed by `bytes`.
    pub fn put_vlu_bytes(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.ensure(vlu_len(bytes.len() as u64) + bytes.len())?;
        self.put_vlu(bytes.len() as u64)?;
        self.put_bytes(bytes)
    }

    /// Overwrite two bytes at an earlier position `at` with a big-endian 16-bit integer.
    pub fn patch_u16(&mut self, at: usize, v: u16) -> Result<(), WireError> {
        let end = at
            .checked_add(2)
            .filter(|&e| e <= self.pos)
            .ok_or(WireError::BufferTooSmall)?;
        let dst = self.buf.get_mut(at..end).ok_or(WireError::BufferTooSmall)?;
        dst.copy_from_slice(&v.to_be_bytes());
        Ok(())
    }

    /// The bytes written so far.
    pub fn written(&self) -> &[u8] {
        self.buf.get(..self.pos).unwrap_or_default()
    }

    /// The bytes written so far, mutable (e.g. to compute a checksum in place).
    pub fn written_mut(&mut self) -> &mut [u8] {
        self.buf.get_mut(..self.pos).unwrap_or_default()
    }
}

/// Length of a VLU length prefix plus the bytes it covers.
pub(crate) fn vlu_bytes_len(len: usize) -> usize {
    vlu_len(len as u64) + len
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vlu(bytes: &[u8]) -> Result<u64, WireError> {
        Reader::new(bytes).read_vlu()
    }

    #[test]
    fn vlu_digest_examples() {
        // docs/rtmfp.md §1.17, RFC 7016 §2.1.2.
        assert_eq!(vlu(&[0x81, 0x02]), Ok(130));
        assert_eq!(vlu(&[0xff, 0x7f]), Ok(16383));
        assert_eq!(vlu(&[0x00]), Ok(0));
        let mut buf = [0u8; 4];
        let mut w = Writer::new(&mut buf);
        w.put_vlu(130).unwrap();
        w.put_vlu(16383).unwrap();
        assert_eq!(w.written(), &[0x81, 0x02, 0xff, 0x7f]);
    }

    #[test]
    fn vlu_limits() {
        let mut max = [0xffu8; 10];
        max[0] = 0x81;
        max[9] = 0x7f;
        assert_eq!(vlu(&max), Ok(u64::MAX));
        assert_eq!(vlu_len(u64::MAX), 10);
        // One bit too many overflows.
        let mut over = max;
        over[0] = 0x82;
        assert_eq!(vlu(&over), Err(WireError::VluTooLong));
        // Eleven bytes are too long even if they encode a small value.
        let mut long = [0x80u8; 11];
        long[10] = 0x01;
        assert_eq!(vlu(&long), Err(WireError::VluTooLong));
        // Truncated.
        assert_eq!(vlu(&[0x81]), Err(WireError::UnexpectedEnd));
        assert_eq!(vlu(&[]), Err(WireError::UnexpectedEnd));
    }

    #[test]
    fn failed_read_leaves_position() {
        let mut r = Reader::new(&[0x01, 0x02, 0x03]);
        assert_eq!(r.read_u8(), Ok(1));
        assert_eq!(r.read_u32(), Err(WireError::UnexpectedEnd));
        assert_eq!(r.position(), 1);
        assert_eq!(r.read_vlu_bytes(), Err(WireError::UnexpectedEnd));
        assert_eq!(r.position(), 1);
        assert_eq!(r.read_u16(), Ok(0x0203));
        assert!(r.is_empty());
        assert_eq!(r.rest(), &[] as &[u8]);
    }

    #[test]
    fn failed_write_writes_nothing() {
        let mut buf = [0u8; 3];
        let mut w = Writer::new(&mut buf);
        w.put_u16(0xabcd).unwrap();
        assert_eq!(w.put_u16(1), Err(WireError::BufferTooSmall));
        assert_eq!(w.put_vlu(130), Err(WireError::BufferTooSmall));
        assert_eq!(w.written(), &[0xab, 0xcd]);
        assert_eq!(w.remaining(), 1);
        w.patch_u16(0, 0x1234).unwrap();
        assert_eq!(w.patch_u16(1, 0), Err(WireError::BufferTooSmall));
        assert_eq!(w.written(), &[0x12, 0x34]);
        w.written_mut()[1] = 0x35;
        assert_eq!(w.written(), &[0x12, 0x35]);
        w.put_fill(0xFF, 1).unwrap();
        assert_eq!(w.put_fill(0xFF, 1), Err(WireError::BufferTooSmall));
        assert_eq!(w.written(), &[0x12, 0x35, 0xFF]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn vlu_round_trip(v in any::<u64>()) {
            let mut buf = [0u8; MAX_VLU_LEN];
            let mut w = Writer::new(&mut buf);
            w.put_vlu(v).unwrap();
            prop_assert_eq!(w.len(), vlu_len(v));
            let mut r = Reader::new(w.written());
            prop_assert_eq!(r.read_vlu(), Ok(v));
            prop_assert!(r.is_empty());
        }

        #[test]
        fn integers_round_trip(a in any::<u8>(), b in any::<u16>(), c in any::<u32>(),
                               d in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut buf = [0u8; 64];
            let mut w = Writer::new(&mut buf);
            w.put_u8(a).unwrap();
            w.put_u16(b).unwrap();
            w.put_u32(c).unwrap();
            w.put_vlu_bytes(&d).unwrap();
            let mut r = Reader::new(w.written());
            prop_assert_eq!(r.read_u8(), Ok(a));
            prop_assert_eq!(r.read_u16(), Ok(b));
            prop_assert_eq!(r.read_u32(), Ok(c));
            prop_assert_eq!(r.read_vlu_bytes(), Ok(&d[..]));
            prop_assert!(r.is_empty());
        }

        #[test]
        fn vlu_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut r = Reader::new(&bytes);
            if let Ok(v) = r.read_vlu() {
                prop_assert!(r.position() <= MAX_VLU_LEN);
                prop_assert!(vlu_len(v) <= r.position());
            }
        }
    }
}
