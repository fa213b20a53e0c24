//! AMF0 and AMF3 (Adobe Action Message Format) values, readers and writers.
//!
//! What it does: a single [`Value`] model that covers every type of both encodings, zero-copy
//! readers ([`amf0::Reader`], [`amf3::Reader`]) over untrusted bytes, and writers
//! ([`amf0::Writer`], [`amf3::Writer`]) that append to a `Vec<u8>`.
//!
//! What it does not do: it does not resolve AMF0 references (0x07 is kept as
//! [`Value::Reference`]), it does not decode externalizable AMF3 classes other than the Flex
//! `ArrayCollection`/`ArrayList`/`ObjectProxy` wrappers, and writers never emit AMF3 object references
//! (only string and trait references).
//!
//! Specs: "Action Message Format -- AMF 0" (Adobe, 2007) and "Action Message Format -- AMF 3"
//! (Adobe, 2013). Section numbers below refer to those documents.
//!
//! Limits on untrusted input: nesting is bounded by [`MAX_DEPTH`]; AMF3 reference resolution
//! copies the referenced value (by decoding it again) and charges the copy to a work budget
//! proportional to the input length ([`WORK_PER_BYTE`], [`WORK_BASE`]); pre-allocation never
//! exceeds what the remaining bytes can hold.
//!
//! AMF0 "switch to AMF3" (marker 0x11): each switched value is decoded (and encoded) with fresh
//! AMF3 reference tables, so readers and writers of this crate always agree.

use std::borrow::Cow;

pub mod amf0;
pub mod amf3;

/// Maximum nesting depth of containers (objects, arrays, vectors, dictionaries) accepted by the
/// readers and writers. Not from the specs: a safety bound for untrusted input.
pub const MAX_DEPTH: usize = 64;

/// Work budget units granted per input byte to an AMF3 reader (each decoded value, including
/// each value re-decoded to resolve a reference, and each vector element costs one unit). Bounds
/// AMF3 "reference bombs".
pub const WORK_PER_BYTE: usize = 8;

/// Work budget units granted to every AMF3 reader regardless of input length.
pub const WORK_BASE: usize = 1024;

/// Flex class whose externalizable body is a single AMF3 value (an array).
// AMF 3 §3.12 (externalizable traits); Flex `flex.messaging.io.ArrayCollection`.
pub const CLASS_ARRAY_COLLECTION: &str = "flex.messaging.io.ArrayCollection";
/// Flex class whose externalizable body is a single AMF3 value (an array).
// Flex `flex.messaging.io.ArrayList` (same body layout as ArrayCollection).
pub const CLASS_ARRAY_LIST: &str = "flex.messaging.io.ArrayList";
/// Flex class whose externalizable body is a single AMF3 value (an object).
// AMF 3 §3.12; Flex `flex.messaging.io.ObjectProxy`.
pub const CLASS_OBJECT_PROXY: &str = "flex.messaging.io.ObjectProxy";

/// Whether `class_name` is an externalizable class whose body this crate can decode (a single
/// AMF3 value).
pub fn is_known_externalizable(class_name: &str) -> bool {
    matches!(
        class_name,
        CLASS_ARRAY_COLLECTION | CLASS_ARRAY_LIST | CLASS_OBJECT_PROXY
    )
}

/// A member of an object or associative array: `(name, value)`.
pub type Member<'a> = (Cow<'a, str>, Value<'a>);

/// An object (AMF0 anonymous/typed object, AMF3 object).
///
/// AMF0 mapping: an anonymous object (0x03) is `class_name: None, sealed: [], dynamic:
/// Some(members)`; a typed object (0x10) is `class_name: Some(name), sealed: members, dynamic:
/// None`. Any other shape is written by the AMF0 writer through the AMF3 switch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object<'a> {
    /// Class name (AMF3 traits class name, AMF0 typed-object class name); `None` = anonymous.
    pub class_name: Option<Cow<'a, str>>,
    /// Sealed members, in trait order.
    pub sealed: Vec<Member<'a>>,
    /// Dynamic members; `None` if the object is not dynamic.
    pub dynamic: Option<Vec<Member<'a>>>,
}

impl<'a> Object<'a> {
    /// An anonymous dynamic object with the given members (the usual AMF0 object).
    pub fn anonymous(members: Vec<Member<'a>>) -> Self {
        Object {
            class_name: None,
            sealed: Vec::new(),
            dynamic: Some(members),
        }
    }

    /// The value of the first member (sealed, then dynamic) named `name`.
    pub fn get(&self, name: &str) -> Option<&Value<'a>> {
        self.members().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// All members, sealed first, then dynamic.
    pub fn members(&self) -> impl Iterator<Item = &Member<'a>> {
        self.sealed
            .iter()
            .chain(self.dynamic.iter().flat_map(|d| d.iter()))
    }
}

/// An array: AMF0 strict array (dense part only) or AMF3 array (associative and dense parts).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Array<'a> {
    /// Associative (string-keyed) part, in order (AMF3 only).
    pub assoc: Vec<Member<'a>>,
    /// Dense part, indices 0..n.
    pub dense: Vec<Value<'a>>,
}

/// A typed AMF3 vector.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Vector<T> {
    /// Whether the vector has a fixed length.
    pub fixed: bool,
    /// Elements.
    pub items: Vec<T>,
}

/// An AMF3 `Vector.<Object>`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObjectVector<'a> {
    /// Whether the vector has a fixed length.
    pub fixed: bool,
    /// Element type name (`"*"` for any type).
    pub type_name: Cow<'a, str>,
    /// Elements.
    pub items: Vec<Value<'a>>,
}

/// An AMF3 dictionary.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dictionary<'a> {
    /// Whether the keys are weakly referenced.
    pub weak_keys: bool,
    /// Entries `(key, value)`, in order.
    pub entries: Vec<(Value<'a>, Value<'a>)>,
}

/// An AMF3 externalizable object of a known Flex wrapper class, whose body is one AMF3 value.
#[derive(Debug, Clone, PartialEq)]
pub struct Externalizable<'a> {
    /// Class name, one for which [`is_known_externalizable`] holds.
    pub class_name: Cow<'a, str>,
    /// The wrapped value (an array for ArrayCollection/ArrayList, an object for ObjectProxy).
    pub body: Box<Value<'a>>,
}

/// An AMF0 or AMF3 value. Strings and byte arrays borrow from the input where possible.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// `undefined` (AMF0 0x06, AMF3 0x00).
    Undefined,
    /// `null` (AMF0 0x05, AMF3 0x01).
    Null,
    /// Boolean (AMF0 0x01, AMF3 0x02/0x03).
    Boolean(bool),
    /// IEEE 754 double (AMF0 0x00, AMF3 0x05).
    Number(f64),
    /// AMF3 29-bit signed integer (AMF3 0x04); values outside the 29-bit range are written as
    /// doubles.
    Integer(i32),
    /// String (AMF0 0x02 and long string 0x0C, AMF3 0x06).
    String(Cow<'a, str>),
    /// Date: milliseconds since the Unix epoch (UTC), plus the AMF0 time zone field (reserved,
    /// minutes; not carried by AMF3, which reads it as 0).
    Date {
        /// Milliseconds since 1970-01-01T00:00:00Z.
        millis: f64,
        /// AMF0 time zone (S16, reserved, should be 0).
        timezone: i16,
    },
    /// Object (AMF0 0x03 and typed object 0x10, AMF3 0x0A).
    Object(Object<'a>),
    /// AMF0 ECMA (associative) array 0x08.
    EcmaArray(Vec<Member<'a>>),
    /// AMF0 strict array 0x0A, AMF3 array 0x09.
    Array(Array<'a>),
    /// AMF3 E4X XML 0x0B.
    Xml(Cow<'a, str>),
    /// Legacy XML document (AMF0 0x0F, AMF3 0x07).
    XmlDocument(Cow<'a, str>),
    /// AMF3 ByteArray 0x0C.
    ByteArray(Cow<'a, [u8]>),
    /// AMF3 `Vector.<int>` 0x0D.
    VectorInt(Vector<i32>),
    /// AMF3 `Vector.<uint>` 0x0E.
    VectorUint(Vector<u32>),
    /// AMF3 `Vector.<Number>` 0x0F.
    VectorDouble(Vector<f64>),
    /// AMF3 `Vector.<Object>` 0x10.
    VectorObject(ObjectVector<'a>),
    /// AMF3 Dictionary 0x11.
    Dictionary(Dictionary<'a>),
    /// AMF3 externalizable object of a known Flex wrapper class.
    Externalizable(Externalizable<'a>),
    /// AMF0 reference 0x07: index into the AMF0 object table (not resolved).
    Reference(u16),
    /// AMF0 "unsupported" 0x0D.
    Unsupported,
}

impl<'a> Value<'a> {
    /// A string value borrowing `s`.
    pub fn str(s: &'a str) -> Self {
        Value::String(Cow::Borrowed(s))
    }

    /// The string, if this is a [`Value::String`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number, if this is a [`Value::Number`] or [`Value::Integer`].
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            Value::Integer(i) => Some(f64::from(*i)),
            _ => None,
        }
    }

    /// The boolean, if this is a [`Value::Boolean`].
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// The object, if this is a [`Value::Object`].
    pub fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// Looks up a named member of an object, ECMA array or associative array part.
    pub fn get(&self, name: &str) -> Option<&Value<'a>> {
        match self {
            Value::Object(o) => o.get(name),
            Value::EcmaArray(m) => m.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            Value::Array(a) => a.assoc.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Converts every borrowed string and byte array into an owned one.
    pub fn into_owned(self) -> Value<'static> {
        fn s(c: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(c.into_owned())
        }
        fn members(m: Vec<Member<'_>>) -> Vec<Member<'static>> {
            m.into_iter().map(|(k, v)| (s(k), v.into_owned())).collect()
        }
        match self {
            Value::Undefined => Value::Undefined,
            Value::Null => Value::Null,
            Value::Boolean(b) => Value::Boolean(b),
            Value::Number(n) => Value::Number(n),
            Value::Integer(i) => Value::Integer(i),
            Value::String(x) => Value::String(s(x)),
            Value::Date { millis, timezone } => Value::Date { millis, timezone },
            Value::Object(o) => Value::Object(Object {
                class_name: o.class_name.map(s),
                sealed: members(o.sealed),
                dynamic: o.dynamic.map(members),
            }),
            Value::EcmaArray(m) => Value::EcmaArray(members(m)),
            Value::Array(a) => Value::Array(Array {
                assoc: members(a.assoc),
                dense: a.dense.into_iter().map(Value::into_owned).collect(),
            }),
            Value::Xml(x) => Value::Xml(s(x)),
            Value::XmlDocument(x) => Value::XmlDocument(s(x)),
            Value::ByteArray(b) => Value::ByteArray(Cow::Owned(b.into_owned())),
            Value::VectorInt(v) => Value::VectorInt(v),
            Value::VectorUint(v) => Value::VectorUint(v),
            Value::VectorDouble(v) => Value::VectorDouble(v),
            Value::VectorObject(v) => Value::VectorObject(ObjectVector {
                fixed: v.fixed,
                type_name: s(v.type_name),
                items: v.items.into_iter().map(Value::into_owned).collect(),
            }),
            Value::Dictionary(d) => Value::Dictionary(Dictionary {
                weak_keys: d.weak_keys,
                entries: d
                    .entries
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
            }),
            Value::Externalizable(e) => Value::Externalizable(Externalizable {
                class_name: s(e.class_name),
                body: Box::new(e.body.into_owned()),
            }),
            Value::Reference(r) => Value::Reference(r),
            Value::Unsupported => Value::Unsupported,
        }
    }
}

/// Errors from decoding AMF0 or AMF3.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a value.
    #[error("unexpected end of AMF data")]
    UnexpectedEnd,
    /// An unknown or unsupported type marker.
    #[error("unknown AMF marker 0x{0:02x}")]
    UnknownMarker(u8),
    /// A string was not valid UTF-8.
    #[error("invalid UTF-8 in AMF string")]
    InvalidUtf8,
    /// An AMF3 string, object or trait reference points outside its table.
    #[error("invalid AMF3 reference")]
    InvalidReference,
    /// An AMF3 object reference points at an object still being decoded.
    #[error("cyclic AMF3 object reference")]
    CyclicReference,
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("AMF nesting deeper than {MAX_DEPTH}")]
    DepthExceeded,
    /// Decoding would materialize more values than the work budget allows.
    #[error("AMF3 work budget exceeded")]
    BudgetExceeded,
    /// An externalizable AMF3 class whose body format is unknown.
    #[error("unknown externalizable AMF3 class {0:?}")]
    UnknownExternalizable(String),
    /// A field has a value the spec does not allow (e.g. a boolean byte in a vector header).
    #[error("invalid AMF encoding")]
    Invalid,
}

/// Errors from encoding AMF0 or AMF3.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The value has no representation in the target encoding (e.g. an AMF0 reference in AMF3).
    #[error("value not representable in {0}")]
    NotRepresentable(&'static str),
    /// A string, array or vector is longer than the encoding's length field allows.
    #[error("length too large for the AMF encoding")]
    TooLong,
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("AMF nesting deeper than {MAX_DEPTH}")]
    DepthExceeded,
}

/// Reads AMF0 values from `data` until the end or the first error, re-encodes what parsed,
/// re-reads it, and asserts the re-encoding is stable. For fuzzing; panics on a bug.
#[doc(hidden)]
pub fn fuzz_amf0(data: &[u8]) {
    let mut reader = amf0::Reader::new(data);
    let mut values = Vec::new();
    while reader.remaining() > 0 {
        match reader.read_value() {
            Ok(v) => values.push(v),
            Err(_) => break,
        }
    }
    let mut first = Vec::new();
    {
        let mut w = amf0::Writer::new(&mut first);
        for v in &values {
            w.write_value(v)
                .expect("a parsed AMF0 value must re-encode");
        }
    }
    let mut reader = amf0::Reader::new(&first);
    let mut again = Vec::new();
    for _ in &values {
        again.push(reader.read_value().expect("re-encoded AMF0 must parse"));
    }
    assert_eq!(reader.remaining(), 0, "re-encoded AMF0 has trailing bytes");
    let mut second = Vec::new();
    {
        let mut w = amf0::Writer::new(&mut second);
        for v in &again {
            w.write_value(v)
                .expect("a re-parsed AMF0 value must re-encode");
        }
    }
    assert_eq!(first, second, "AMF0 re-encoding is not stable");
    assert_eq!(values.len(), again.len());
}

/// Reads AMF3 values from `data` (one reader, shared reference tables) until the end or the
/// first error, re-encodes what parsed, re-reads it, and asserts the re-encoding is stable. For
/// fuzzing; panics on a bug.
#[doc(hidden)]
pub fn fuzz_amf3(data: &[u8]) {
    let mut reader = amf3::Reader::new(data);
    let mut values = Vec::new();
    while reader.remaining() > 0 {
        match reader.read_value() {
            Ok(v) => values.push(v),
            Err(_) => break,
        }
    }
    let mut first = Vec::new();
    {
        let mut w = amf3::Writer::new(&mut first);
        for v in &values {
            w.write_value(v)
                .expect("a parsed AMF3 value must re-encode");
        }
    }
    let mut reader = amf3::Reader::new(&first);
    let mut again = Vec::new();
    for _ in &values {
        again.push(reader.read_value().expect("re-encoded AMF3 must parse"));
    }
    assert_eq!(reader.remaining(), 0, "re-encoded AMF3 has trailing bytes");
    let mut second = Vec::new();
    {
        let mut w = amf3::Writer::new(&mut second);
        for v in &again {
            w.write_value(v)
                .expect("a re-parsed AMF3 value must re-encode");
        }
    }
    assert_eq!(first, second, "AMF3 re-encoding is not stable");
}

#[cfg(test)]
pub(crate) mod strategy {
    //! Proptest strategies for [`Value`], shared by the AMF0, AMF3 and flash tests.
    use super::*;
    use proptest::prelude::*;

    /// Finite doubles (NaN would break `PartialEq`-based round-trip checks).
    pub fn finite() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<i32>().prop_map(f64::from),
            -1.0e300f64..1.0e300,
            Just(0.0),
            Just(-0.5)
        ]
    }

    fn text() -> impl Strategy<Value = Cow<'static, str>> {
        "[a-zA-Z0-9_.é ]{0,12}".prop_map(Cow::Owned)
    }

    fn key() -> impl Strategy<Value = Cow<'static, str>> {
        // Non-empty: AMF3 uses the empty string as the end of dynamic members.
        "[a-z][a-zA-Z0-9]{0,6}".prop_map(Cow::Owned)
    }

    fn class() -> impl Strategy<Value = Cow<'static, str>> {
        "[a-z]{1,5}(\\.[A-Z][a-z]{0,5})?".prop_map(Cow::Owned)
    }

    /// Scalars common to AMF0 and AMF3 (with the AMF3 integer range).
    fn scalar() -> impl Strategy<Value = Value<'static>> {
        prop_oneof![
            Just(Value::Undefined),
            Just(Value::Null),
            any::<bool>().prop_map(Value::Boolean),
            finite().prop_map(Value::Number),
            (-(1i32 << 28)..(1i32 << 28)).prop_map(Value::Integer),
            text().prop_map(Value::String),
            finite().prop_map(|millis| Value::Date {
                millis,
                timezone: 0
            }),
            text().prop_map(Value::Xml),
            text().prop_map(Value::XmlDocument),
            proptest::collection::vec(any::<u8>(), 0..8)
                .prop_map(|b| Value::ByteArray(Cow::Owned(b))),
            (any::<bool>(), proptest::collection::vec(any::<i32>(), 0..4))
                .prop_map(|(fixed, items)| Value::VectorInt(Vector { fixed, items })),
            (any::<bool>(), proptest::collection::vec(any::<u32>(), 0..4))
                .prop_map(|(fixed, items)| Value::VectorUint(Vector { fixed, items })),
            (any::<bool>(), proptest::collection::vec(finite(), 0..4))
                .prop_map(|(fixed, items)| Value::VectorDouble(Vector { fixed, items })),
        ]
    }

    fn members(
        inner: impl Strategy<Value = Value<'static>> + Clone,
    ) -> impl Strategy<Value = Vec<Member<'static>>> {
        proptest::collection::vec((key(), inner), 0..4)
    }

    /// Containers common to AMF0 and AMF3.
    fn containers(
        inner: impl Strategy<Value = Value<'static>> + Clone + 'static,
    ) -> impl Strategy<Value = Value<'static>> {
        prop_oneof![
            (
                proptest::option::of(class()),
                members(inner.clone()),
                proptest::option::of(members(inner.clone()))
            )
                .prop_map(|(class_name, sealed, dynamic)| Value::Object(Object {
                    class_name,
                    sealed,
                    dynamic
                })),
            (
                members(inner.clone()),
                proptest::collection::vec(inner.clone(), 0..4)
            )
                .prop_map(|(assoc, dense)| Value::Array(Array { assoc, dense })),
            (
                any::<bool>(),
                class(),
                proptest::collection::vec(inner.clone(), 0..3)
            )
                .prop_map(|(fixed, type_name, items)| Value::VectorObject(
                    ObjectVector {
                        fixed,
                        type_name,
                        items
                    }
                )),
            (
                any::<bool>(),
                proptest::collection::vec((inner.clone(), inner.clone()), 0..3)
            )
                .prop_map(|(weak_keys, entries)| Value::Dictionary(Dictionary {
                    weak_keys,
                    entries
                })),
            members(inner.clone()).prop_map(|m| Value::Externalizable(Externalizable {
                class_name: Cow::Borrowed(CLASS_OBJECT_PROXY),
                body: Box::new(Value::Object(Object::anonymous(m))),
            })),
        ]
    }

    /// Values representable in AMF3 (everything except the AMF0-only variants and non-zero
    /// time zones).
    pub fn amf3_value() -> impl Strategy<Value = Value<'static>> {
        scalar().prop_recursive(4, 48, 4, |inner| containers(inner).boxed())
    }

    /// Values the AMF0 writer round-trips: AMF0-native containers (anonymous and typed objects,
    /// ECMA arrays, strict arrays) over AMF0-only leaves and arbitrary AMF3 values (which the
    /// writer emits through the AMF3 switch).
    pub fn amf0_value() -> impl Strategy<Value = Value<'static>> {
        let leaf = prop_oneof![
            4 => amf3_value(),
            1 => any::<u16>().prop_map(Value::Reference),
            1 => Just(Value::Unsupported),
            1 => (finite(), any::<i16>()).prop_map(|(millis, timezone)| Value::Date { millis, timezone }),
        ];
        leaf.prop_recursive(3, 32, 4, |inner| {
            prop_oneof![
                members(inner.clone()).prop_map(|m| Value::Object(Object::anonymous(m))),
                (class(), members(inner.clone())).prop_map(|(c, sealed)| Value::Object(Object {
                    class_name: Some(c),
                    sealed,
                    dynamic: None
                })),
                members(inner.clone()).prop_map(Value::EcmaArray),
                proptest::collection::vec(inner, 0..4).prop_map(|dense| Value::Array(Array {
                    assoc: Vec::new(),
                    dense
                })),
            ]
            .boxed()
        })
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Whole TC messages (`type | timestamp | AMF0 payload`) decrypted from the captures in
    //! `shared/fixtures` (keys from the matching `.keys.json`), as hex.

    /// `connect` sent by librtmfp (Flash-like client): capture librtmfp-cumulus-connect, datagram 005-c2s.
    pub const LIBRTMFP_CONNECT: &str = "\
        1400000000020007636f6e6e6563740000000000000000000300036170700200046c6976650008666c617368\
        56657202000e57494e2032302c302c302c323836000673776655726c0200000005746355726c02001772746d\
        66703a2f2f3132372e302e302e313a31393336310004667061640100000c6361706162696c69746965730040\
        6d600000000000000b617564696f436f646563730040abee0000000000000b766964656f436f646563730040\
        6f800000000000000d766964656f46756e6374696f6e003ff000000000000000077061676555726c02000000\
        0e6f626a656374456e636f64696e67004008000000000000000009";

    /// `setPeerInfo` sent by librtmfp: capture librtmfp-cumulus-connect, datagram 007-c2s.
    pub const LIBRTMFP_SET_PEER_INFO: &str = "\
        140000000002000b73657450656572496e666f00000000000000000002000f3139322e302e322e323a343834\
        363402000f5b666430303a3a325d3a3433303439";

    /// `_result` for `connect` sent by Cumulus: capture librtmfp-cumulus-connect, datagram 006-s2c.
    pub const CUMULUS_CONNECT_RESULT: &str = "\
        14000000000200075f726573756c74000000000000000000050300056c6576656c0200067374617475730004\
        636f646502001d4e6574436f6e6e656374696f6e2e436f6e6e6563742e53756363657373000b646573637269\
        7074696f6e020014436f6e6e656374696f6e20737563636565646564000e6f626a656374456e636f64696e67\
        00400800000000000000076d65737361676502001868656c6c6f2066726f6d2043756d756c75735365727665\
        72000009";

    /// `connect` sent by rtmfp-cpp tcconn: capture tcconn-tcserver-play, datagram 005-c2s.
    pub const TCCONN_CONNECT: &str = "\
        1400000000020007636f6e6e656374003ff00000000000000300036170700200046c697665000b617564696f\
        436f646563730040efffe0000000000012617564696f466f75724363496e666f4d61700300012a0040140000\
        000000000000090006636170734578004008000000000000000a666f757243634c6973740a00000001020001\
        2a000e6f626a656374456e636f64696e670000000000000000000005746355726c02001c72746d66703a2f2f\
        3132372e302e302e313a31393335302f6c697665000b766964656f436f646563730040efffe0000000000012\
        766964656f466f75724363496e666f4d61700300012a004014000000000000000009000009";

    /// `_result` for `connect` sent by rtmfp-cpp tcserver: capture tcconn-tcserver-play, datagram 007-s2c.
    pub const TCSERVER_CONNECT_RESULT: &str = "\
        14000000000200075f726573756c74003ff000000000000005030012617564696f466f75724363496e666f4d\
        61700300012a00401000000000000000000900066361707345780000000000000000000004636f646502001d\
        4e6574436f6e6e656374696f6e2e436f6e6e6563742e53756363657373000c636f6e6e656374696f6e494402\
        0040373065373237623833323336333765626631306531396334376165306361333965396430343562373636\
        63626261346535623262316164653832326636326537000b6465736372697074696f6e02000e796f7520636f\
        6e6e656374656421000a666f757243634c6973740a000000010200012a00056c6576656c0200067374617475\
        73000e6f626a656374456e636f64696e67000000000000000000001173657276657246696e6765727072696e\
        7402004035356335623562386263663561343532316131396137396164326462303061656638336436363764\
        3136323530656235336436623361376534323466633935360012766964656f466f75724363496e666f4d6170\
        0300012a004010000000000000000009000009";
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn corpus(name: &str) -> Vec<Vec<u8>> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "empty corpus {}", dir.display());
        files
            .iter()
            .map(|p| std::fs::read(p).expect("read corpus file"))
            .collect()
    }

    #[test]
    fn replay_amf0_corpus() {
        for data in corpus("amf0") {
            fuzz_amf0(&data);
        }
    }

    #[test]
    fn replay_amf3_corpus() {
        for data in corpus("amf3") {
            fuzz_amf3(&data);
        }
    }

    #[test]
    fn accessors() {
        let v = Value::Object(Object::anonymous(vec![
            (Cow::Borrowed("app"), Value::str("live")),
            (Cow::Borrowed("n"), Value::Integer(3)),
        ]));
        assert_eq!(v.get("app").and_then(Value::as_str), Some("live"));
        assert_eq!(v.get("n").and_then(Value::as_f64), Some(3.0));
        assert_eq!(v.get("x"), None);
        assert_eq!(v.clone().into_owned(), v);
        assert!(is_known_externalizable(CLASS_ARRAY_COLLECTION));
        assert!(!is_known_externalizable("com.example.Foo"));
    }
}
