//! AMF3 ("Action Message Format -- AMF 3", Adobe) reader and writer.
//!
//! The [`Reader`] keeps the three AMF3 reference tables (strings, objects, traits) for the life of
//! the reader. The object table holds positions, not values: an object reference is resolved by
//! decoding the referenced value again, so the copy is charged to a work budget proportional to
//! the input length and counts towards the nesting bound [`MAX_DEPTH`] where it is placed; a
//! reference to an object still being decoded is a [`DecodeError::CyclicReference`].
//!
//! The [`Writer`] emits string and trait references; it never emits object references.

use std::borrow::Cow;
use std::collections::HashMap;

use super::{
    is_known_externalizable, Array, DecodeError, Dictionary, EncodeError, Externalizable, Member,
    Object, ObjectVector, Value, Vector, MAX_DEPTH, WORK_BASE, WORK_PER_BYTE,
};

// Type markers, AMF 3 §3.1.
/// undefined-marker. AMF 3 §3.2.
pub const UNDEFINED_MARKER: u8 = 0x00;
/// null-marker. AMF 3 §3.3.
pub const NULL_MARKER: u8 = 0x01;
/// false-marker. AMF 3 §3.4.
pub const FALSE_MARKER: u8 = 0x02;
/// true-marker. AMF 3 §3.5.
pub const TRUE_MARKER: u8 = 0x03;
/// integer-marker. AMF 3 §3.6.
pub const INTEGER_MARKER: u8 = 0x04;
/// double-marker. AMF 3 §3.7.
pub const DOUBLE_MARKER: u8 = 0x05;
/// string-marker. AMF 3 §3.8.
pub const STRING_MARKER: u8 = 0x06;
/// xml-doc-marker (legacy XMLDocument). AMF 3 §3.9.
pub const XML_DOC_MARKER: u8 = 0x07;
/// date-marker. AMF 3 §3.10.
pub const DATE_MARKER: u8 = 0x08;
/// array-marker. AMF 3 §3.11.
pub const ARRAY_MARKER: u8 = 0x09;
/// object-marker. AMF 3 §3.12.
pub const OBJECT_MARKER: u8 = 0x0A;
/// xml-marker (E4X XML). AMF 3 §3.13.
pub const XML_MARKER: u8 = 0x0B;
/// byte-array-marker. AMF 3 §3.14.
pub const BYTE_ARRAY_MARKER: u8 = 0x0C;
/// vector-int-marker. AMF 3 §3.15.
pub const VECTOR_INT_MARKER: u8 = 0x0D;
/// vector-uint-marker. AMF 3 §3.15.
pub const VECTOR_UINT_MARKER: u8 = 0x0E;
/// vector-double-marker. AMF 3 §3.15.
pub const VECTOR_DOUBLE_MARKER: u8 = 0x0F;
/// vector-object-marker. AMF 3 §3.15.
pub const VECTOR_OBJECT_MARKER: u8 = 0x10;
/// dictionary-marker. AMF 3 §3.16.
pub const DICTIONARY_MARKER: u8 = 0x11;

/// Largest U29 value. AMF 3 §1.3.1.
pub const U29_MAX: u32 = 0x1FFF_FFFF;
/// Smallest integer encodable with the integer-marker (29-bit signed). AMF 3 §3.6.
pub const INTEGER_MIN: i32 = -(1 << 28);
/// Largest integer encodable with the integer-marker (29-bit signed). AMF 3 §3.6.
pub const INTEGER_MAX: i32 = (1 << 28) - 1;

/// Low bit of a U29 header: 1 = inline value, 0 = reference. AMF 3 §3.8, §3.10–§3.16.
const INLINE_FLAG: u32 = 0x01;
/// Second bit of an object header: 1 = inline traits, 0 = traits reference. AMF 3 §3.12.
const TRAITS_INLINE_FLAG: u32 = 0x02;
/// Third bit of an object header with inline traits: externalizable. AMF 3 §3.12.
const TRAITS_EXT_FLAG: u32 = 0x04;
/// Fourth bit of an object header with inline traits: dynamic. AMF 3 §3.12.
const TRAITS_DYNAMIC_FLAG: u32 = 0x08;
/// Shift of the sealed member count in an object header. AMF 3 §3.12.
const TRAITS_COUNT_SHIFT: u32 = 4;
/// Shift of the trait index in a traits reference. AMF 3 §3.12.
const TRAITS_REF_SHIFT: u32 = 2;
/// Sign bit of a 29-bit integer. AMF 3 §3.6.
const INTEGER_SIGN_BIT: u32 = 0x1000_0000;
/// 2^29, to sign-extend 29-bit integers. AMF 3 §3.6.
const INTEGER_MODULUS: i64 = 0x2000_0000;
/// The empty string (inline, length 0): ends dynamic members and the associative part of an
/// array. AMF 3 §3.8 (UTF-8-empty).
const EMPTY_STRING: u8 = 0x01;

/// An entry of the object reference table: where the value's marker is, and whether its
/// decoding has finished (a reference to an unfinished value is cyclic).
#[derive(Debug, Clone, Copy)]
struct Slot {
    pos: usize,
    done: bool,
}

/// Decoded traits. AMF 3 §3.12.
#[derive(Debug, Clone)]
struct Traits<'a> {
    class_name: &'a str,
    sealed: Vec<&'a str>,
    dynamic: bool,
    externalizable: bool,
}

/// A zero-copy AMF3 reader over untrusted bytes, with the AMF3 reference tables.
#[derive(Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    strings: Vec<&'a str>,
    objects: Vec<Slot>,
    traits: Vec<Traits<'a>>,
    budget: usize,
    base_depth: usize,
    /// Nesting of reference replays; while non-zero, no table grows (the replayed values were
    /// already entered, at the same indices, when first decoded).
    replaying: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `data` with empty reference tables and a work budget of
    /// `WORK_BASE + WORK_PER_BYTE * data.len()`.
    pub fn new(data: &'a [u8]) -> Self {
        Self::with_depth(data, 0)
    }

    /// A reader whose top-level values sit at nesting depth `depth` (used by the AMF0 reader for
    /// the AMF3 switch).
    pub(crate) fn with_depth(data: &'a [u8], depth: usize) -> Self {
        Reader {
            data,
            pos: 0,
            strings: Vec::new(),
            objects: Vec::new(),
            traits: Vec::new(),
            budget: WORK_BASE.saturating_add(WORK_PER_BYTE.saturating_mul(data.len())),
            base_depth: depth,
            replaying: 0,
        }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// Reads one value. After an error the reader's state is unspecified (stop reading).
    pub fn read_value(&mut self) -> Result<Value<'a>, DecodeError> {
        self.value(self.base_depth)
    }

    fn charge(&mut self, units: usize) -> Result<(), DecodeError> {
        self.budget = self
            .budget
            .checked_sub(units)
            .ok_or(DecodeError::BudgetExceeded)?;
        Ok(())
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

    fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_be_bytes(self.array()?))
    }

    /// U29: 1 to 4 bytes, the first three carrying 7 bits and a continuation flag, the fourth 8
    /// bits. AMF 3 §1.3.1.
    fn u29(&mut self) -> Result<u32, DecodeError> {
        let mut v: u32 = 0;
        for _ in 0..3 {
            let b = self.u8()?;
            if b & 0x80 == 0 {
                return Ok((v << 7) | u32::from(b));
            }
            v = (v << 7) | u32::from(b & 0x7F);
        }
        let b = self.u8()?;
        Ok((v << 8) | u32::from(b))
    }

    /// Element count or byte length from an inline header, capped so pre-allocation never
    /// exceeds what the remaining bytes could hold at `min_size` bytes per element.
    fn capacity(&self, count: u32, min_size: usize) -> usize {
        usize::try_from(count)
            .unwrap_or(usize::MAX)
            .min(self.remaining() / min_size.max(1))
    }

    /// UTF-8-vr: a string or a string reference. AMF 3 §1.3.2, §3.8.
    fn string(&mut self) -> Result<&'a str, DecodeError> {
        let h = self.u29()?;
        if h & INLINE_FLAG == 0 {
            let idx = usize::try_from(h >> 1).map_err(|_| DecodeError::InvalidReference)?;
            return self
                .strings
                .get(idx)
                .copied()
                .ok_or(DecodeError::InvalidReference);
        }
        let s = self.utf8(h >> 1)?;
        if !s.is_empty() && self.replaying == 0 {
            self.strings.push(s);
        }
        Ok(s)
    }

    fn utf8(&mut self, len: u32) -> Result<&'a str, DecodeError> {
        let len = usize::try_from(len).map_err(|_| DecodeError::UnexpectedEnd)?;
        std::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// Reads the U29 header of an object-table type: `Ok(bits)` for an inline value (the header
    /// shifted right by one), `Err(value)` for a resolved reference.
    ///
    /// A reference is resolved by decoding the referenced value again from its position, at the
    /// current depth: the copy costs its full size in work budget and depth, and the reader
    /// keeps no decoded values in its tables.
    fn header(&mut self, depth: usize) -> Result<Result<u32, Value<'a>>, DecodeError> {
        let h = self.u29()?;
        if h & INLINE_FLAG != 0 {
            return Ok(Ok(h >> 1));
        }
        let slot = usize::try_from(h >> 1)
            .ok()
            .and_then(|idx| self.objects.get(idx))
            .copied()
            .ok_or(DecodeError::InvalidReference)?;
        if !slot.done {
            return Err(DecodeError::CyclicReference);
        }
        let resume = self.pos;
        self.pos = slot.pos;
        self.replaying += 1;
        let value = self.value(depth);
        self.replaying -= 1;
        self.pos = resume;
        Ok(Err(value?))
    }

    /// Reserves an object-table slot for the value whose marker is at `start` (none while
    /// replaying).
    fn reserve(&mut self, start: usize) -> Option<usize> {
        if self.replaying > 0 {
            return None;
        }
        self.objects.push(Slot {
            pos: start,
            done: false,
        });
        Some(self.objects.len() - 1)
    }

    /// Marks a reserved slot as decoded and returns the value.
    fn fill(&mut self, idx: Option<usize>, value: Value<'a>) -> Value<'a> {
        if let Some(slot) = idx.and_then(|i| self.objects.get_mut(i)) {
            slot.done = true;
        }
        value
    }

    /// Enters an already complete value (no children) into the object table.
    fn push_complete(&mut self, start: usize, value: Value<'a>) -> Value<'a> {
        let idx = self.reserve(start);
        self.fill(idx, value)
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::DepthExceeded);
        }
        self.charge(1)?;
        let start = self.pos;
        let marker = self.u8()?;
        Ok(match marker {
            UNDEFINED_MARKER => Value::Undefined,
            NULL_MARKER => Value::Null,
            FALSE_MARKER => Value::Boolean(false),
            TRUE_MARKER => Value::Boolean(true),
            INTEGER_MARKER => {
                let u = self.u29()?;
                let i = if u & INTEGER_SIGN_BIT != 0 {
                    i64::from(u) - INTEGER_MODULUS
                } else {
                    i64::from(u)
                };
                Value::Integer(i32::try_from(i).map_err(|_| DecodeError::Invalid)?)
            }
            DOUBLE_MARKER => Value::Number(self.f64()?),
            STRING_MARKER => Value::String(Cow::Borrowed(self.string()?)),
            XML_DOC_MARKER | XML_MARKER => match self.header(depth)? {
                Err(v) => v,
                Ok(len) => {
                    let s = Cow::Borrowed(self.utf8(len)?);
                    let v = if marker == XML_MARKER {
                        Value::Xml(s)
                    } else {
                        Value::XmlDocument(s)
                    };
                    self.push_complete(start, v)
                }
            },
            DATE_MARKER => match self.header(depth)? {
                Err(v) => v,
                Ok(_) => {
                    let millis = self.f64()?;
                    self.push_complete(
                        start,
                        Value::Date {
                            millis,
                            timezone: 0,
                        },
                    )
                }
            },
            ARRAY_MARKER => match self.header(depth)? {
                Err(v) => v,
                Ok(count) => self.array_body(start, count, depth)?,
            },
            OBJECT_MARKER => match self.header(depth)? {
                Err(v) => v,
                Ok(bits) => self.object_body(start, bits, depth)?,
            },
            BYTE_ARRAY_MARKER => match self.header(depth)? {
                Err(v) => v,
                Ok(len) => {
                    let len = usize::try_from(len).map_err(|_| DecodeError::UnexpectedEnd)?;
                    let bytes = self.take(len)?;
                    self.push_complete(start, Value::ByteArray(Cow::Borrowed(bytes)))
                }
            },
            VECTOR_INT_MARKER | VECTOR_UINT_MARKER | VECTOR_DOUBLE_MARKER => {
                match self.header(depth)? {
                    Err(v) => v,
                    Ok(count) => self.number_vector(start, marker, count)?,
                }
            }
            VECTOR_OBJECT_MARKER => match self.header(depth)? {
                Err(v) => v,
                Ok(count) => {
                    let idx = self.reserve(start);
                    let fixed = self.u8()? != 0;
                    let type_name = Cow::Borrowed(self.string()?);
                    let mut items = Vec::with_capacity(self.capacity(count, 1));
                    for _ in 0..count {
                        items.push(self.value(depth + 1)?);
                    }
                    let v = Value::VectorObject(ObjectVector {
                        fixed,
                        type_name,
                        items,
                    });
                    self.fill(idx, v)
                }
            },
            DICTIONARY_MARKER => match self.header(depth)? {
                Err(v) => v,
                Ok(count) => {
                    let idx = self.reserve(start);
                    let weak_keys = self.u8()? != 0;
                    let mut entries = Vec::with_capacity(self.capacity(count, 2));
                    for _ in 0..count {
                        let k = self.value(depth + 1)?;
                        let v = self.value(depth + 1)?;
                        entries.push((k, v));
                    }
                    let v = Value::Dictionary(Dictionary { weak_keys, entries });
                    self.fill(idx, v)
                }
            },
            other => return Err(DecodeError::UnknownMarker(other)),
        })
    }

    /// Array body after the header: associative part ended by the empty string, then `count`
    /// dense values. AMF 3 §3.11.
    fn array_body(
        &mut self,
        start: usize,
        count: u32,
        depth: usize,
    ) -> Result<Value<'a>, DecodeError> {
        let idx = self.reserve(start);
        let mut assoc = Vec::new();
        loop {
            let key = self.string()?;
            if key.is_empty() {
                break;
            }
            let v = self.value(depth + 1)?;
            assoc.push((Cow::Borrowed(key), v));
        }
        let mut dense = Vec::with_capacity(self.capacity(count, 1));
        for _ in 0..count {
            dense.push(self.value(depth + 1)?);
        }
        Ok(self.fill(idx, Value::Array(Array { assoc, dense })))
    }

    /// Object body after the inline flag: traits (inline or by reference), then sealed values,
    /// then dynamic members, or an externalizable body. AMF 3 §3.12.
    fn object_body(
        &mut self,
        start: usize,
        bits: u32,
        depth: usize,
    ) -> Result<Value<'a>, DecodeError> {
        let h = (bits << 1) | INLINE_FLAG;
        let idx = self.reserve(start);
        let traits = if h & TRAITS_INLINE_FLAG == 0 {
            let t = usize::try_from(h >> TRAITS_REF_SHIFT)
                .ok()
                .and_then(|i| self.traits.get(i))
                .ok_or(DecodeError::InvalidReference)?
                .clone();
            self.charge(t.sealed.len())?;
            t
        } else if h & TRAITS_EXT_FLAG != 0 {
            let t = Traits {
                class_name: self.string()?,
                sealed: Vec::new(),
                dynamic: false,
                externalizable: true,
            };
            if self.replaying == 0 {
                self.traits.push(t.clone());
            }
            t
        } else {
            let dynamic = h & TRAITS_DYNAMIC_FLAG != 0;
            let count = h >> TRAITS_COUNT_SHIFT;
            let class_name = self.string()?;
            let mut sealed = Vec::with_capacity(self.capacity(count, 1));
            for _ in 0..count {
                sealed.push(self.string()?);
            }
            let t = Traits {
                class_name,
                sealed,
                dynamic,
                externalizable: false,
            };
            if self.replaying == 0 {
                self.traits.push(t.clone());
            }
            t
        };
        if traits.externalizable {
            if !is_known_externalizable(traits.class_name) {
                return Err(DecodeError::UnknownExternalizable(
                    traits.class_name.to_owned(),
                ));
            }
            let body = self.value(depth + 1)?;
            let v = Value::Externalizable(Externalizable {
                class_name: Cow::Borrowed(traits.class_name),
                body: Box::new(body),
            });
            return Ok(self.fill(idx, v));
        }
        let mut sealed = Vec::with_capacity(traits.sealed.len());
        for name in &traits.sealed {
            sealed.push((Cow::Borrowed(*name), self.value(depth + 1)?));
        }
        let dynamic = if traits.dynamic {
            let mut members = Vec::new();
            loop {
                let key = self.string()?;
                if key.is_empty() {
                    break;
                }
                members.push((Cow::Borrowed(key), self.value(depth + 1)?));
            }
            Some(members)
        } else {
            None
        };
        let class_name =
            (!traits.class_name.is_empty()).then_some(Cow::Borrowed(traits.class_name));
        let v = Value::Object(Object {
            class_name,
            sealed,
            dynamic,
        });
        Ok(self.fill(idx, v))
    }

    /// `Vector.<int>`, `Vector.<uint>` or `Vector.<Number>` body. AMF 3 §3.15.
    fn number_vector(
        &mut self,
        start: usize,
        marker: u8,
        count: u32,
    ) -> Result<Value<'a>, DecodeError> {
        let size = if marker == VECTOR_DOUBLE_MARKER { 8 } else { 4 };
        let fixed = self.u8()? != 0;
        let n = usize::try_from(count).map_err(|_| DecodeError::UnexpectedEnd)?;
        let bytes = self.take(n.checked_mul(size).ok_or(DecodeError::UnexpectedEnd)?)?;
        self.charge(n)?;
        let v = match marker {
            VECTOR_INT_MARKER => Value::VectorInt(Vector {
                fixed,
                items: bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            }),
            VECTOR_UINT_MARKER => Value::VectorUint(Vector {
                fixed,
                items: bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            }),
            _ => Value::VectorDouble(Vector {
                fixed,
                items: bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            }),
        };
        Ok(self.push_complete(start, v))
    }
}

/// Key of the writer's traits table.
type TraitsKey = (String, Vec<String>, bool, bool);

/// An AMF3 writer appending to a `Vec<u8>`, with string and trait reference tables.
///
/// On error nothing of the failed value stays in the output or the reference tables.
#[derive(Debug)]
pub struct Writer<'w> {
    out: &'w mut Vec<u8>,
    strings: HashMap<String, u32>,
    traits: HashMap<TraitsKey, u32>,
    base_depth: usize,
}

impl<'w> Writer<'w> {
    /// A writer appending to `out`, with empty reference tables.
    pub fn new(out: &'w mut Vec<u8>) -> Self {
        Self::with_depth(out, 0)
    }

    /// A writer whose top-level values sit at nesting depth `depth` (AMF0 switch).
    pub(crate) fn with_depth(out: &'w mut Vec<u8>, depth: usize) -> Self {
        Writer {
            out,
            strings: HashMap::new(),
            traits: HashMap::new(),
            base_depth: depth,
        }
    }

    /// Appends one value.
    ///
    /// AMF0-only variants: [`Value::EcmaArray`] is written as an array with only an associative
    /// part; [`Value::Reference`] and [`Value::Unsupported`] are
    /// [`EncodeError::NotRepresentable`]. A date's time zone is dropped; an integer outside the
    /// 29-bit range is written as a double.
    pub fn write_value(&mut self, v: &Value<'_>) -> Result<(), EncodeError> {
        let (len, strings, traits) = (self.out.len(), self.strings.len(), self.traits.len());
        self.value(v, self.base_depth).inspect_err(|_| {
            // Entries are numbered in insertion order: drop those the failed value added.
            self.out.truncate(len);
            self.strings.retain(|_, idx| (*idx as usize) < strings);
            self.traits.retain(|_, idx| (*idx as usize) < traits);
        })
    }

    fn u29(&mut self, v: u32) -> Result<(), EncodeError> {
        // AMF 3 §1.3.1.
        if v < 0x80 {
            self.out.push(v as u8);
        } else if v < 0x4000 {
            self.out
                .extend_from_slice(&[(v >> 7) as u8 | 0x80, (v & 0x7F) as u8]);
        } else if v < 0x20_0000 {
            self.out.extend_from_slice(&[
                (v >> 14) as u8 | 0x80,
                ((v >> 7) & 0x7F) as u8 | 0x80,
                (v & 0x7F) as u8,
            ]);
        } else if v <= U29_MAX {
            self.out.extend_from_slice(&[
                (v >> 22) as u8 | 0x80,
                ((v >> 15) & 0x7F) as u8 | 0x80,
                ((v >> 8) & 0x7F) as u8 | 0x80,
                (v & 0xFF) as u8,
            ]);
        } else {
            return Err(EncodeError::TooLong);
        }
        Ok(())
    }

    /// An inline header: `len << 1 | 1`.
    fn inline(&mut self, len: usize) -> Result<(), EncodeError> {
        let len = u32::try_from(len).map_err(|_| EncodeError::TooLong)?;
        if len > U29_MAX >> 1 {
            return Err(EncodeError::TooLong);
        }
        self.u29((len << 1) | INLINE_FLAG)
    }

    /// UTF-8-vr, by reference when the string was already written. AMF 3 §1.3.2.
    fn string(&mut self, s: &str) -> Result<(), EncodeError> {
        if s.is_empty() {
            self.out.push(EMPTY_STRING);
            return Ok(());
        }
        if let Some(&idx) = self.strings.get(s) {
            return self.u29(idx << 1);
        }
        self.inline(s.len())?;
        self.out.extend_from_slice(s.as_bytes());
        let idx = u32::try_from(self.strings.len()).map_err(|_| EncodeError::TooLong)?;
        self.strings.insert(s.to_owned(), idx);
        Ok(())
    }

    fn key(&mut self, k: &str) -> Result<(), EncodeError> {
        if k.is_empty() {
            // The empty string ends the member list. AMF 3 §3.11, §3.12.
            return Err(EncodeError::NotRepresentable("AMF3 (empty member name)"));
        }
        self.string(k)
    }

    fn members(&mut self, m: &[Member<'_>], depth: usize) -> Result<(), EncodeError> {
        for (k, v) in m {
            self.key(k)?;
            self.value(v, depth + 1)?;
        }
        self.out.push(EMPTY_STRING);
        Ok(())
    }

    /// Object traits, inline or by reference. AMF 3 §3.12.
    fn traits(
        &mut self,
        class_name: &str,
        sealed: &[&str],
        dynamic: bool,
        externalizable: bool,
    ) -> Result<(), EncodeError> {
        let key: TraitsKey = (
            class_name.to_owned(),
            sealed.iter().map(|s| (*s).to_owned()).collect(),
            dynamic,
            externalizable,
        );
        if let Some(&idx) = self.traits.get(&key) {
            if idx > U29_MAX >> TRAITS_REF_SHIFT {
                return Err(EncodeError::TooLong);
            }
            return self.u29((idx << TRAITS_REF_SHIFT) | INLINE_FLAG);
        }
        let idx = u32::try_from(self.traits.len()).map_err(|_| EncodeError::TooLong)?;
        self.traits.insert(key, idx);
        if externalizable {
            self.u29(INLINE_FLAG | TRAITS_INLINE_FLAG | TRAITS_EXT_FLAG)?;
        } else {
            let count = u32::try_from(sealed.len()).map_err(|_| EncodeError::TooLong)?;
            if count > U29_MAX >> TRAITS_COUNT_SHIFT {
                return Err(EncodeError::TooLong);
            }
            let flags = if dynamic { TRAITS_DYNAMIC_FLAG } else { 0 };
            self.u29((count << TRAITS_COUNT_SHIFT) | flags | TRAITS_INLINE_FLAG | INLINE_FLAG)?;
        }
        self.string(class_name)?;
        for name in sealed {
            self.string(name)?;
        }
        Ok(())
    }

    fn value(&mut self, v: &Value<'_>, depth: usize) -> Result<(), EncodeError> {
        if depth > MAX_DEPTH {
            return Err(EncodeError::DepthExceeded);
        }
        match v {
            Value::Undefined => self.out.push(UNDEFINED_MARKER),
            Value::Null => self.out.push(NULL_MARKER),
            Value::Boolean(false) => self.out.push(FALSE_MARKER),
            Value::Boolean(true) => self.out.push(TRUE_MARKER),
            Value::Integer(i) if (INTEGER_MIN..=INTEGER_MAX).contains(i) => {
                self.out.push(INTEGER_MARKER);
                self.u29((*i as u32) & U29_MAX)?;
            }
            Value::Integer(i) => {
                self.out.push(DOUBLE_MARKER);
                self.out.extend_from_slice(&f64::from(*i).to_be_bytes());
            }
            Value::Number(n) => {
                self.out.push(DOUBLE_MARKER);
                self.out.extend_from_slice(&n.to_be_bytes());
            }
            Value::String(s) => {
                self.out.push(STRING_MARKER);
                self.string(s)?;
            }
            Value::Date { millis, .. } => {
                self.out.push(DATE_MARKER);
                self.u29(INLINE_FLAG)?;
                self.out.extend_from_slice(&millis.to_be_bytes());
            }
            Value::Xml(s) | Value::XmlDocument(s) => {
                let marker = if matches!(v, Value::Xml(_)) {
                    XML_MARKER
                } else {
                    XML_DOC_MARKER
                };
                self.out.push(marker);
                self.inline(s.len())?;
                self.out.extend_from_slice(s.as_bytes());
            }
            Value::ByteArray(b) => {
                self.out.push(BYTE_ARRAY_MARKER);
                self.inline(b.len())?;
                self.out.extend_from_slice(b);
            }
            Value::EcmaArray(m) => {
                self.out.push(ARRAY_MARKER);
                self.inline(0)?;
                self.members(m, depth)?;
            }
            Value::Array(a) => {
                self.out.push(ARRAY_MARKER);
                self.inline(a.dense.len())?;
                self.members(&a.assoc, depth)?;
                for item in &a.dense {
                    self.value(item, depth + 1)?;
                }
            }
            Value::Object(o) => {
                self.out.push(OBJECT_MARKER);
                let names: Vec<&str> = o.sealed.iter().map(|(k, _)| k.as_ref()).collect();
                self.traits(
                    o.class_name.as_deref().unwrap_or(""),
                    &names,
                    o.dynamic.is_some(),
                    false,
                )?;
                for (_, v) in &o.sealed {
                    self.value(v, depth + 1)?;
                }
                if let Some(d) = &o.dynamic {
                    self.members(d, depth)?;
                }
            }
            Value::Externalizable(e) => {
                if !is_known_externalizable(&e.class_name) {
                    return Err(EncodeError::NotRepresentable(
                        "AMF3 (unknown externalizable class)",
                    ));
                }
                self.out.push(OBJECT_MARKER);
                self.traits(&e.class_name, &[], false, true)?;
                self.value(&e.body, depth + 1)?;
            }
            Value::VectorInt(vec) => {
                self.vector_header(VECTOR_INT_MARKER, vec.items.len(), vec.fixed)?;
                for x in &vec.items {
                    self.out.extend_from_slice(&x.to_be_bytes());
                }
            }
            Value::VectorUint(vec) => {
                self.vector_header(VECTOR_UINT_MARKER, vec.items.len(), vec.fixed)?;
                for x in &vec.items {
                    self.out.extend_from_slice(&x.to_be_bytes());
                }
            }
            Value::VectorDouble(vec) => {
                self.vector_header(VECTOR_DOUBLE_MARKER, vec.items.len(), vec.fixed)?;
                for x in &vec.items {
                    self.out.extend_from_slice(&x.to_be_bytes());
                }
            }
            Value::VectorObject(vec) => {
                self.vector_header(VECTOR_OBJECT_MARKER, vec.items.len(), vec.fixed)?;
                self.string(&vec.type_name)?;
                for x in &vec.items {
                    self.value(x, depth + 1)?;
                }
            }
            Value::Dictionary(d) => {
                self.out.push(DICTIONARY_MARKER);
                self.inline(d.entries.len())?;
                self.out.push(u8::from(d.weak_keys));
                for (k, v) in &d.entries {
                    self.value(k, depth + 1)?;
                    self.value(v, depth + 1)?;
                }
            }
            Value::Reference(_) | Value::Unsupported => {
                return Err(EncodeError::NotRepresentable("AMF3"));
            }
        }
        Ok(())
    }

    fn vector_header(&mut self, marker: u8, len: usize, fixed: bool) -> Result<(), EncodeError> {
        self.out.push(marker);
        self.inline(len)?;
        self.out.push(u8::from(fixed));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::strategy::amf3_value;
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

    /// Golden bytes for one value: decodes to `v` and `v` encodes to the bytes.
    fn golden(bytes: &[u8], v: Value<'_>) {
        assert_eq!(read_one(bytes).expect("decode"), v, "decode {bytes:02x?}");
        assert_eq!(write_one(&v), bytes, "encode {v:?}");
    }

    fn s(x: &str) -> Cow<'_, str> {
        Cow::Borrowed(x)
    }

    #[test]
    fn golden_scalars() {
        golden(&[0x00], Value::Undefined);
        golden(&[0x01], Value::Null);
        golden(&[0x02], Value::Boolean(false));
        golden(&[0x03], Value::Boolean(true));
        golden(&[0x04, 0x00], Value::Integer(0));
        golden(&[0x04, 0x7F], Value::Integer(127));
        golden(&[0x04, 0x81, 0x00], Value::Integer(128));
        golden(&[0x04, 0xFF, 0x7F], Value::Integer(16383));
        golden(&[0x04, 0x81, 0x80, 0x00], Value::Integer(16384));
        golden(&[0x04, 0xBF, 0xFF, 0xFF, 0xFF], Value::Integer(INTEGER_MAX));
        golden(&[0x04, 0xC0, 0x80, 0x80, 0x00], Value::Integer(INTEGER_MIN));
        golden(&[0x04, 0xFF, 0xFF, 0xFF, 0xFF], Value::Integer(-1));
        golden(&[0x05, 0x3F, 0xF0, 0, 0, 0, 0, 0, 0], Value::Number(1.0));
        golden(&[0x06, 0x01], Value::str(""));
        golden(&[0x06, 0x07, b'a', b'b', b'c'], Value::str("abc"));
        golden(&[0x07, 0x05, b'<', b'a'], Value::XmlDocument(s("<a")));
        golden(&[0x0B, 0x05, b'<', b'b'], Value::Xml(s("<b")));
        golden(
            &[0x08, 0x01, 0x42, 0x71, 0, 0, 0, 0, 0, 0],
            Value::Date {
                millis: f64::from_be_bytes([0x42, 0x71, 0, 0, 0, 0, 0, 0]),
                timezone: 0,
            },
        );
        golden(
            &[0x0C, 0x07, 1, 2, 3],
            Value::ByteArray(Cow::Borrowed(&[1, 2, 3])),
        );
    }

    #[test]
    fn integer_out_of_range_is_double() {
        let bytes = write_one(&Value::Integer(INTEGER_MAX + 1));
        assert_eq!(
            read_one(&bytes),
            Ok(Value::Number(f64::from(INTEGER_MAX + 1)))
        );
    }

    #[test]
    fn golden_containers() {
        // Array: 2 dense, one associative member "k" => 1.
        golden(
            &[
                0x09, 0x05, 0x03, b'k', 0x04, 0x01, 0x01, 0x04, 0x02, 0x06, 0x03, b'x',
            ],
            Value::Array(Array {
                assoc: vec![(s("k"), Value::Integer(1))],
                dense: vec![Value::Integer(2), Value::str("x")],
            }),
        );
        // Anonymous dynamic object {a: true}: traits 0x0B = dynamic, 0 sealed, class "".
        golden(
            &[0x0A, 0x0B, 0x01, 0x03, b'a', 0x03, 0x01],
            Value::Object(Object::anonymous(vec![(s("a"), Value::Boolean(true))])),
        );
        // Sealed typed object "C" {x: null}: traits 0x13 = 1 sealed, not dynamic.
        golden(
            &[0x0A, 0x13, 0x03, b'C', 0x03, b'x', 0x01],
            Value::Object(Object {
                class_name: Some(s("C")),
                sealed: vec![(s("x"), Value::Null)],
                dynamic: None,
            }),
        );
        golden(
            &[0x0D, 0x05, 0x01, 0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF],
            Value::VectorInt(Vector {
                fixed: true,
                items: vec![1, -1],
            }),
        );
        golden(
            &[0x0E, 0x03, 0x00, 0xFF, 0xFF, 0xFF, 0xFF],
            Value::VectorUint(Vector {
                fixed: false,
                items: vec![u32::MAX],
            }),
        );
        golden(
            &[0x0F, 0x03, 0x00, 0x3F, 0xF0, 0, 0, 0, 0, 0, 0],
            Value::VectorDouble(Vector {
                fixed: false,
                items: vec![1.0],
            }),
        );
        golden(
            &[0x10, 0x05, 0x00, 0x03, b'*', 0x01, 0x06, 0x05, b'h', b'i'],
            Value::VectorObject(ObjectVector {
                fixed: false,
                type_name: s("*"),
                items: vec![Value::Null, Value::str("hi")],
            }),
        );
        golden(
            &[0x11, 0x03, 0x01, 0x06, 0x03, b'k', 0x04, 0x05],
            Value::Dictionary(Dictionary {
                weak_keys: true,
                entries: vec![(Value::str("k"), Value::Integer(5))],
            }),
        );
    }

    #[test]
    fn golden_externalizable_array_collection() {
        let mut bytes = vec![0x0A, 0x07, 0x43];
        bytes.extend_from_slice(super::super::CLASS_ARRAY_COLLECTION.as_bytes());
        bytes.extend_from_slice(&[0x09, 0x03, 0x01, 0x04, 0x07]);
        golden(
            &bytes,
            Value::Externalizable(Externalizable {
                class_name: s(super::super::CLASS_ARRAY_COLLECTION),
                body: Box::new(Value::Array(Array {
                    assoc: vec![],
                    dense: vec![Value::Integer(7)],
                })),
            }),
        );
    }

    #[test]
    fn unknown_externalizable_is_typed_error() {
        let bytes = [0x0A, 0x07, 0x07, b'a', b'.', b'B', 0x01];
        assert_eq!(
            read_one(&bytes),
            Err(DecodeError::UnknownExternalizable("a.B".into()))
        );
    }

    #[test]
    fn writer_uses_string_and_trait_references() {
        let obj = |n: i32| {
            Value::Object(Object {
                class_name: Some(s("P")),
                sealed: vec![(s("x"), Value::Integer(n))],
                dynamic: None,
            })
        };
        let v = Value::Array(Array {
            assoc: vec![],
            dense: vec![Value::str("rep"), Value::str("rep"), obj(1), obj(2)],
        });
        let bytes = write_one(&v);
        assert_eq!(
            bytes,
            [
                0x09, 0x09, 0x01, // array, 4 dense, no assoc
                0x06, 0x07, b'r', b'e', b'p', // "rep" (string 0)
                0x06, 0x00, // string ref 0
                0x0A, 0x13, 0x03, b'P', 0x03, b'x', 0x04, 0x01, // traits 0: P{x}
                0x0A, 0x01, 0x04, 0x02, // traits ref 0
            ]
        );
        assert_eq!(read_one(&bytes), Ok(v));
    }

    #[test]
    fn object_reference_is_copied() {
        // [ "s" bytes, ref to object 1 ]: array(0) containing bytearray(1) and a reference to 1.
        let bytes = [0x09, 0x05, 0x01, 0x0C, 0x03, 0xAA, 0x0C, 0x02];
        let ba = Value::ByteArray(Cow::Borrowed(&[0xAA]));
        assert_eq!(
            read_one(&bytes),
            Ok(Value::Array(Array {
                assoc: vec![],
                dense: vec![ba.clone(), ba],
            }))
        );
    }

    #[test]
    fn bad_references() {
        assert_eq!(read_one(&[0x06, 0x00]), Err(DecodeError::InvalidReference));
        assert_eq!(read_one(&[0x09, 0x00]), Err(DecodeError::InvalidReference));
        assert_eq!(read_one(&[0x0A, 0x01]), Err(DecodeError::InvalidReference));
        // An array containing a reference to itself.
        assert_eq!(
            read_one(&[0x09, 0x03, 0x01, 0x09, 0x00]),
            Err(DecodeError::CyclicReference)
        );
    }

    #[test]
    fn reference_bomb_hits_budget() {
        // Outer array of 20 arrays; array k holds 4 references to array k-1.
        let levels = 20u8;
        let mut bytes = vec![0x09, (levels << 1) | 1, 0x01, 0x09, 0x01, 0x01];
        for k in 1..levels {
            bytes.extend_from_slice(&[0x09, 0x09, 0x01]);
            // Object table: outer = 0, array j = j + 1.
            for _ in 0..4 {
                bytes.extend_from_slice(&[0x09, k << 1]);
            }
        }
        assert_eq!(read_one(&bytes), Err(DecodeError::BudgetExceeded));
    }

    #[test]
    fn depth_is_bounded() {
        let mut bytes = vec![];
        for _ in 0..=MAX_DEPTH + 1 {
            bytes.extend_from_slice(&[0x09, 0x03, 0x01]);
        }
        bytes.push(0x01);
        assert_eq!(read_one(&bytes), Err(DecodeError::DepthExceeded));
        let mut v = Value::Null;
        for _ in 0..=MAX_DEPTH {
            v = Value::Array(Array {
                assoc: vec![],
                dense: vec![v],
            });
        }
        let mut out = Vec::new();
        assert_eq!(
            Writer::new(&mut out).write_value(&v),
            Err(EncodeError::DepthExceeded)
        );
    }

    #[test]
    fn huge_declared_counts_do_not_allocate() {
        for marker in [0x09, 0x0D, 0x0E, 0x0F, 0x10, 0x11] {
            let bytes = [marker, 0xBF, 0xFF, 0xFF, 0xFF, 0x00];
            assert!(read_one(&bytes).is_err());
        }
        assert_eq!(
            read_one(&[0x0A, 0x83, 0xFF, 0xFF, 0xF3, 0x01]),
            Err(DecodeError::UnexpectedEnd)
        );
    }

    #[test]
    fn truncation_and_bad_input() {
        assert_eq!(read_one(&[]), Err(DecodeError::UnexpectedEnd));
        assert_eq!(read_one(&[0x12]), Err(DecodeError::UnknownMarker(0x12)));
        assert_eq!(read_one(&[0x06, 0x03, 0xFF]), Err(DecodeError::InvalidUtf8));
        assert_eq!(read_one(&[0x05, 0x00]), Err(DecodeError::UnexpectedEnd));
        // A failed value leaves neither bytes nor table entries behind.
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out);
        let bad = Value::Array(Array {
            assoc: vec![],
            dense: vec![Value::str("s"), Value::Reference(1)],
        });
        assert_eq!(
            w.write_value(&bad),
            Err(EncodeError::NotRepresentable("AMF3"))
        );
        w.write_value(&Value::str("s")).expect("encode");
        assert_eq!(out, [0x06, 0x03, b's']);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trip(values in proptest::collection::vec(amf3_value(), 1..4)) {
            // Several values through one writer and one reader, so references span values.
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
            super::super::fuzz_amf3(&out);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            super::super::fuzz_amf3(&data);
        }
    }
}
