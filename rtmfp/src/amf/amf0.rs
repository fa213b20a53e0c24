//! AMF0 ("Action Message Format -- AMF 0", Adobe) reader and writer.
//!
//! The reader is zero-copy over `&'a [u8]`. An AVM+ marker (0x11) switches one value to AMF3,
//! decoded with fresh AMF3 reference tables. AMF0 references (0x07) are returned unresolved as
//! [`Value::Reference`].
//!
//! The writer emits AMF0 natively where the value has an AMF0 form and switches to AMF3 for the
//! rest (integers, E4X XML, byte arrays, vectors, dictionaries, externalizables, arrays with an
//! associative part, objects with sealed and dynamic members, ...).

use std::borrow::Cow;

use super::{amf3, Array, DecodeError, EncodeError, Member, Object, Value, MAX_DEPTH};

/// number-marker. AMF 0 §2.2.
pub const NUMBER_MARKER: u8 = 0x00;
/// boolean-marker. AMF 0 §2.3.
pub const BOOLEAN_MARKER: u8 = 0x01;
/// string-marker. AMF 0 §2.4.
pub const STRING_MARKER: u8 = 0x02;
/// object-marker (anonymous object). AMF 0 §2.5.
pub const OBJECT_MARKER: u8 = 0x03;
/// movieclip-marker (reserved, not supported). AMF 0 §2.6.
pub const MOVIECLIP_MARKER: u8 = 0x04;
/// null-marker. AMF 0 §2.7.
pub const NULL_MARKER: u8 = 0x05;
/// undefined-marker. AMF 0 §2.8.
pub const UNDEFINED_MARKER: u8 = 0x06;
/// reference-marker. AMF 0 §2.9.
pub const REFERENCE_MARKER: u8 = 0x07;
/// ecma-array-marker. AMF 0 §2.10.
pub const ECMA_ARRAY_MARKER: u8 = 0x08;
/// object-end-marker. AMF 0 §2.11.
pub const OBJECT_END_MARKER: u8 = 0x09;
/// strict-array-marker. AMF 0 §2.12.
pub const STRICT_ARRAY_MARKER: u8 = 0x0A;
/// date-marker. AMF 0 §2.13.
pub const DATE_MARKER: u8 = 0x0B;
/// long-string-marker. AMF 0 §2.14.
pub const LONG_STRING_MARKER: u8 = 0x0C;
/// unsupported-marker. AMF 0 §2.15.
pub const UNSUPPORTED_MARKER: u8 = 0x0D;
/// recordset-marker (reserved, not supported). AMF 0 §2.16.
pub const RECORDSET_MARKER: u8 = 0x0E;
/// xml-document-marker. AMF 0 §2.17.
pub const XML_DOCUMENT_MARKER: u8 = 0x0F;
/// typed-object-marker. AMF 0 §2.18.
pub const TYPED_OBJECT_MARKER: u8 = 0x10;
/// avmplus-object-marker: the next value is AMF3. AMF 0 §3.1.
pub const AVMPLUS_MARKER: u8 = 0x11;

/// A zero-copy AMF0 reader over untrusted bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// The bytes not yet consumed.
    pub fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or(&[])
    }

    /// Reads one value. After an error the position is unspecified (stop reading).
    pub fn read_value(&mut self) -> Result<Value<'a>, DecodeError> {
        self.value(0)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::UnexpectedEnd)?;
        let bytes = self
            .data
            .get(self.pos..end)
            .ok_or(DecodeError::UnexpectedEnd)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_be_bytes(self.array()?))
    }

    fn utf8(&mut self, len: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// UTF-8 with a 16-bit length. AMF 0 §1.3.
    fn short_string(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.u16()?;
        self.utf8(usize::from(len))
    }

    /// UTF-8-long with a 32-bit length. AMF 0 §1.3.
    fn long_string(&mut self) -> Result<&'a str, DecodeError> {
        let len = usize::try_from(self.u32()?).map_err(|_| DecodeError::UnexpectedEnd)?;
        self.utf8(len)
    }

    /// Object properties up to the empty-name + object-end terminator. AMF 0 §2.5, §2.11.
    fn members(&mut self, depth: usize) -> Result<Vec<Member<'a>>, DecodeError> {
        let mut members = Vec::new();
        loop {
            let key = self.short_string()?;
            if key.is_empty() && self.data.get(self.pos) == Some(&OBJECT_END_MARKER) {
                self.pos += 1;
                return Ok(members);
            }
            let v = self.value(depth + 1)?;
            members.push((Cow::Borrowed(key), v));
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::DepthExceeded);
        }
        let marker = self.u8()?;
        Ok(match marker {
            NUMBER_MARKER => Value::Number(self.f64()?),
            BOOLEAN_MARKER => Value::Boolean(self.u8()? != 0),
            STRING_MARKER => Value::String(Cow::Borrowed(self.short_string()?)),
            OBJECT_MARKER => Value::Object(Object::anonymous(self.members(depth)?)),
            NULL_MARKER => Value::Null,
            UNDEFINED_MARKER => Value::Undefined,
            REFERENCE_MARKER => Value::Reference(self.u16()?),
            ECMA_ARRAY_MARKER => {
                // The associative count is only a hint; the terminator ends the array.
                self.u32()?;
                Value::EcmaArray(self.members(depth)?)
            }
            STRICT_ARRAY_MARKER => {
                let count = self.u32()?;
                let cap = usize::try_from(count)
                    .unwrap_or(usize::MAX)
                    .min(self.remaining());
                let mut dense = Vec::with_capacity(cap);
                for _ in 0..count {
                    dense.push(self.value(depth + 1)?);
                }
                Value::Array(Array {
                    assoc: Vec::new(),
                    dense,
                })
            }
            DATE_MARKER => {
                let millis = self.f64()?;
                let timezone = i16::from_be_bytes(self.array()?);
                Value::Date { millis, timezone }
            }
            LONG_STRING_MARKER => Value::String(Cow::Borrowed(self.long_string()?)),
            UNSUPPORTED_MARKER => Value::Unsupported,
            XML_DOCUMENT_MARKER => Value::XmlDocument(Cow::Borrowed(self.long_string()?)),
            TYPED_OBJECT_MARKER => {
                let class = self.short_string()?;
                Value::Object(Object {
                    class_name: Some(Cow::Borrowed(class)),
                    sealed: self.members(depth)?,
                    dynamic: None,
                })
            }
            AVMPLUS_MARKER => {
                let mut r = amf3::Reader::with_depth(self.rest(), depth);
                let v = r.read_value()?;
                self.pos += r.position();
                v
            }
            OBJECT_END_MARKER => return Err(DecodeError::Invalid),
            other => return Err(DecodeError::UnknownMarker(other)),
        })
    }
}

/// An AMF0 writer appending to a `Vec<u8>`.
///
/// On error nothing of the failed value stays in the output.
#[derive(Debug)]
pub struct Writer<'w> {
    out: &'w mut Vec<u8>,
}

impl<'w> Writer<'w> {
    /// A writer appending to `out`.
    pub fn new(out: &'w mut Vec<u8>) -> Self {
        Writer { out }
    }

    /// Appends one value, natively where it has an AMF0 form, otherwise through the AVM+ marker
    /// as AMF3 (with fresh AMF3 reference tables).
    pub fn write_value(&mut self, v: &Value<'_>) -> Result<(), EncodeError> {
        let len = self.out.len();
        self.value(v, 0).inspect_err(|_| self.out.truncate(len))
    }

    /// Appends one value through the AVM+ marker as AMF3 (fresh AMF3 reference tables), whatever
    /// its type. AMF 0 §3.1.
    pub fn write_avmplus(&mut self, v: &Value<'_>) -> Result<(), EncodeError> {
        let len = self.out.len();
        self.out.push(AVMPLUS_MARKER);
        amf3::Writer::new(self.out)
            .write_value(v)
            .inspect_err(|_| self.out.truncate(len))
    }

    fn key(&mut self, s: &str) -> Result<(), EncodeError> {
        let len = u16::try_from(s.len()).map_err(|_| EncodeError::TooLong)?;
        self.out.extend_from_slice(&len.to_be_bytes());
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn long(&mut self, s: &str) -> Result<(), EncodeError> {
        let len = u32::try_from(s.len()).map_err(|_| EncodeError::TooLong)?;
        self.out.extend_from_slice(&len.to_be_bytes());
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn members(&mut self, m: &[Member<'_>], depth: usize) -> Result<(), EncodeError> {
        for (k, v) in m {
            self.key(k)?;
            self.value(v, depth + 1)?;
        }
        // Empty name then object-end. AMF 0 §2.5, §2.11.
        self.out.extend_from_slice(&[0, 0, OBJECT_END_MARKER]);
        Ok(())
    }

    fn value(&mut self, v: &Value<'_>, depth: usize) -> Result<(), EncodeError> {
        if depth > MAX_DEPTH {
            return Err(EncodeError::DepthExceeded);
        }
        match v {
            Value::Number(n) => {
                self.out.push(NUMBER_MARKER);
                self.out.extend_from_slice(&n.to_be_bytes());
            }
            Value::Boolean(b) => self.out.extend_from_slice(&[BOOLEAN_MARKER, u8::from(*b)]),
            Value::String(s) if u16::try_from(s.len()).is_ok() => {
                self.out.push(STRING_MARKER);
                self.key(s)?;
            }
            Value::String(s) => {
                self.out.push(LONG_STRING_MARKER);
                self.long(s)?;
            }
            Value::Object(Object {
                class_name: None,
                sealed,
                dynamic: Some(members),
            }) if sealed.is_empty() => {
                self.out.push(OBJECT_MARKER);
                self.members(members, depth)?;
            }
            Value::Object(Object {
                class_name: Some(class),
                sealed,
                dynamic: None,
            }) if u16::try_from(class.len()).is_ok() => {
                self.out.push(TYPED_OBJECT_MARKER);
                self.key(class)?;
                self.members(sealed, depth)?;
            }
            Value::Null => self.out.push(NULL_MARKER),
            Value::Undefined => self.out.push(UNDEFINED_MARKER),
            Value::Reference(idx) => {
                self.out.push(REFERENCE_MARKER);
                self.out.extend_from_slice(&idx.to_be_bytes());
            }
            Value::EcmaArray(m) => {
                self.out.push(ECMA_ARRAY_MARKER);
                let count = u32::try_from(m.len()).map_err(|_| EncodeError::TooLong)?;
                self.out.extend_from_slice(&count.to_be_bytes());
                self.members(m, depth)?;
            }
            Value::Array(a) if a.assoc.is_empty() => {
                self.out.push(STRICT_ARRAY_MARKER);
                let count = u32::try_from(a.dense.len()).map_err(|_| EncodeError::TooLong)?;
                self.out.extend_from_slice(&count.to_be_bytes());
                for item in &a.dense {
                    self.value(item, depth + 1)?;
                }
            }
            Value::Date { millis, timezone } => {
                self.out.push(DATE_MARKER);
                self.out.extend_from_slice(&millis.to_be_bytes());
                self.out.extend_from_slice(&timezone.to_be_bytes());
            }
            Value::XmlDocument(s) => {
                self.out.push(XML_DOCUMENT_MARKER);
                self.long(s)?;
            }
            Value::Unsupported => self.out.push(UNSUPPORTED_MARKER),
            Value::Integer(_)
            | Value::Object(_)
            | Value::Array(_)
            | Value::Xml(_)
            | Value::ByteArray(_)
            | Value::VectorInt(_)
            | Value::VectorUint(_)
            | Value::VectorDouble(_)
            | Value::VectorObject(_)
            | Value::Dictionary(_)
            | Value::Externalizable(_) => {
                self.out.push(AVMPLUS_MARKER);
                amf3::Writer::with_depth(self.out, depth).write_value(v)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::super::strategy::amf0_value;
    use super::*;
    use proptest::prelude::*;

    fn read_one(bytes: &[u8]) -> Result<Value<'_>, DecodeError> {
        let mut r = Reader::new(bytes);
        let v = r.read_value()?;
        assert_eq!(r.remaining(), 0, "trailing bytes");
        Ok(v)
    }

    fn write_one(v: &Value<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        Writer::new(&mut out).write_value(v).expect("encode");
        out
    }

    fn golden(bytes: &[u8], v: Value<'_>) {
        assert_eq!(read_one(bytes).expect("decode"), v, "decode {bytes:02x?}");
        assert_eq!(write_one(&v), bytes, "encode {v:?}");
    }

    fn s(x: &str) -> Cow<'_, str> {
        Cow::Borrowed(x)
    }

    #[test]
    fn golden_markers() {
        golden(&[0x00, 0x40, 0x08, 0, 0, 0, 0, 0, 0], Value::Number(3.0));
        golden(&[0x01, 0x01], Value::Boolean(true));
        golden(&[0x01, 0x00], Value::Boolean(false));
        golden(&[0x02, 0x00, 0x02, b'h', b'i'], Value::str("hi"));
        golden(
            &[0x03, 0x00, 0x01, b'a', 0x05, 0x00, 0x00, 0x09],
            Value::Object(Object::anonymous(vec![(s("a"), Value::Null)])),
        );
        golden(&[0x05], Value::Null);
        golden(&[0x06], Value::Undefined);
        golden(&[0x07, 0x01, 0x02], Value::Reference(0x0102));
        golden(
            &[0x08, 0, 0, 0, 1, 0x00, 0x01, b'k', 0x06, 0x00, 0x00, 0x09],
            Value::EcmaArray(vec![(s("k"), Value::Undefined)]),
        );
        golden(
            &[0x0A, 0, 0, 0, 2, 0x05, 0x01, 0x00],
            Value::Array(Array {
                assoc: vec![],
                dense: vec![Value::Null, Value::Boolean(false)],
            }),
        );
        golden(
            &[0x0B, 0x42, 0x71, 0, 0, 0, 0, 0, 0, 0xFF, 0xC4],
            Value::Date {
                millis: f64::from_be_bytes([0x42, 0x71, 0, 0, 0, 0, 0, 0]),
                timezone: -60,
            },
        );
        golden(&[0x0D], Value::Unsupported);
        golden(
            &[0x0F, 0, 0, 0, 3, b'<', b'a', b'>'],
            Value::XmlDocument(s("<a>")),
        );
        golden(
            &[
                0x10, 0x00, 0x01, b'C', 0x00, 0x01, b'x', 0x05, 0x00, 0x00, 0x09,
            ],
            Value::Object(Object {
                class_name: Some(s("C")),
                sealed: vec![(s("x"), Value::Null)],
                dynamic: None,
            }),
        );
        // AVM+ switch: AMF3 integer 5, AMF3 byte array.
        golden(&[0x11, 0x04, 0x05], Value::Integer(5));
        golden(
            &[0x11, 0x0C, 0x03, 0x7F],
            Value::ByteArray(Cow::Borrowed(&[0x7F])),
        );
    }

    #[test]
    fn long_string() {
        let text = "x".repeat(70_000);
        let v = Value::str(&text);
        let bytes = write_one(&v);
        assert_eq!(bytes[..5], [0x0C, 0x00, 0x01, 0x11, 0x70]);
        assert_eq!(read_one(&bytes), Ok(v));
        // A short long-string reads as a plain string.
        assert_eq!(read_one(&[0x0C, 0, 0, 0, 1, b'a']), Ok(Value::str("a")));
    }

    #[test]
    fn avmplus_values_use_fresh_tables() {
        // Two switched strings: the second is written inline again, not as a reference.
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out);
        let arr = Value::Array(Array {
            assoc: vec![(s("k"), Value::Null)],
            dense: vec![],
        });
        w.write_value(&arr).expect("encode");
        w.write_value(&arr).expect("encode");
        let one = [0x11, 0x09, 0x01, 0x03, b'k', 0x01, 0x01];
        assert_eq!(out, [one, one].concat());
        let mut r = Reader::new(&out);
        assert_eq!(r.read_value(), Ok(arr.clone()));
        assert_eq!(r.read_value(), Ok(arr));
        assert_eq!(r.remaining(), 0);
        // Forced switch of a value that has an AMF0 form.
        let mut out = Vec::new();
        Writer::new(&mut out)
            .write_avmplus(&Value::str("a"))
            .expect("encode");
        assert_eq!(out, [0x11, 0x06, 0x03, b'a']);
    }

    /// Decodes a captured AMF0 command payload and checks that re-encoding gives the same bytes.
    fn real_command(hex_msg: &str) -> Vec<Value<'static>> {
        let msg = hex::decode(hex_msg).expect("hex");
        // TC message header: type 0x14 (AMF0 command) and a 32-bit timestamp.
        assert_eq!(msg[0], 0x14);
        let payload = &msg[5..];
        let mut r = Reader::new(payload);
        let mut values = Vec::new();
        while r.remaining() > 0 {
            values.push(r.read_value().expect("decode").into_owned());
        }
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out);
        for v in &values {
            w.write_value(v).expect("encode");
        }
        assert_eq!(out, payload);
        values
    }

    #[test]
    fn real_librtmfp_connect() {
        let v = real_command(fixtures::LIBRTMFP_CONNECT);
        assert_eq!(v[0], Value::str("connect"));
        assert_eq!(v[1], Value::Number(0.0));
        let obj = &v[2];
        assert_eq!(obj.get("app"), Some(&Value::str("live")));
        assert_eq!(obj.get("flashVer"), Some(&Value::str("WIN 20,0,0,286")));
        assert_eq!(
            obj.get("tcUrl"),
            Some(&Value::str("rtmfp://127.0.0.1:19361"))
        );
        assert_eq!(obj.get("fpad"), Some(&Value::Boolean(false)));
        assert_eq!(obj.get("objectEncoding"), Some(&Value::Number(3.0)));
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn real_tcconn_connect_and_results() {
        let v = real_command(fixtures::TCCONN_CONNECT);
        assert_eq!(v[1], Value::Number(1.0));
        assert_eq!(
            v[2].get("fourCcList"),
            Some(&Value::Array(Array {
                assoc: vec![],
                dense: vec![Value::str("*")]
            }))
        );
        let r = real_command(fixtures::TCSERVER_CONNECT_RESULT);
        assert_eq!(r[0], Value::str("_result"));
        assert_eq!(
            r[3].get("code"),
            Some(&Value::str("NetConnection.Connect.Success"))
        );
        let r = real_command(fixtures::CUMULUS_CONNECT_RESULT);
        assert_eq!(r[2], Value::Null);
        assert_eq!(r[3].get("objectEncoding"), Some(&Value::Number(3.0)));
        // librtmfp omits the command object: the addresses follow the transaction ID.
        let p = real_command(fixtures::LIBRTMFP_SET_PEER_INFO);
        assert_eq!(p[2], Value::str("192.0.2.2:48464"));
        assert_eq!(p[3], Value::str("[fd00::2]:43049"));
    }

    #[test]
    fn bad_input() {
        assert_eq!(read_one(&[]), Err(DecodeError::UnexpectedEnd));
        assert_eq!(read_one(&[0x04]), Err(DecodeError::UnknownMarker(0x04)));
        assert_eq!(read_one(&[0x0E]), Err(DecodeError::UnknownMarker(0x0E)));
        assert_eq!(read_one(&[0x09]), Err(DecodeError::Invalid));
        assert_eq!(read_one(&[0x12]), Err(DecodeError::UnknownMarker(0x12)));
        assert_eq!(read_one(&[0x02, 0x00]), Err(DecodeError::UnexpectedEnd));
        assert_eq!(
            read_one(&[0x02, 0x00, 0x01, 0xC3]),
            Err(DecodeError::InvalidUtf8)
        );
        // Strict array declaring 2^32-1 elements with none present.
        assert_eq!(
            read_one(&[0x0A, 0xFF, 0xFF, 0xFF, 0xFF]),
            Err(DecodeError::UnexpectedEnd)
        );
        // Unterminated object.
        assert_eq!(
            read_one(&[0x03, 0x00, 0x01, b'a', 0x05]),
            Err(DecodeError::UnexpectedEnd)
        );
        let mut deep = [0x0A, 0, 0, 0, 1].repeat(MAX_DEPTH + 2);
        deep.push(0x05);
        assert_eq!(read_one(&deep), Err(DecodeError::DepthExceeded));
    }

    #[test]
    fn failed_write_leaves_output_unchanged() {
        let mut out = vec![0xAA];
        let bad = Value::Array(Array {
            assoc: vec![],
            dense: vec![
                Value::Integer(1),
                Value::Dictionary(super::super::Dictionary {
                    weak_keys: false,
                    entries: vec![(Value::Unsupported, Value::Null)],
                }),
            ],
        });
        let mut w = Writer::new(&mut out);
        assert!(w.write_value(&bad).is_err());
        assert!(w.write_avmplus(&bad).is_err());
        assert_eq!(out, [0xAA]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trip(values in proptest::collection::vec(amf0_value(), 1..4)) {
            let mut out = Vec::new();
            let mut w = Writer::new(&mut out);
            for v in &values {
                w.write_value(v).expect("encode");
            }
            let mut r = Reader::new(&out);
            for v in &values {
                prop_assert_eq!(&r.read_value().expect("decode"), v);
            }
            prop_assert_eq!(r.remaining(), 0);
            super::super::fuzz_amf0(&out);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            super::super::fuzz_amf0(&data);
        }
    }
}
