//! AMF values to Lua values and back, with the Cumulus conventions
//! (`cumulus-compat.md` §2.3, "AMF ↔ Lua conventions"):
//! - a Date is a table with `__time` (milliseconds since the epoch);
//! - a ByteArray is a table with `__raw` (the bytes);
//! - a typed object carries its class in `__type`;
//! - a Dictionary is a table of its entries with `__size` (and `__mode = "k"` for weak keys);
//! - an array is a table whose sequence is the dense part and whose string keys are the
//!   associative part.
//!
//! Both directions stop at [`MAX_DEPTH`] levels of nesting. From Lua, a table met again inside
//! itself becomes `null`, and one conversion reads at most [`MAX_NODES`] values and
//! [`MAX_BYTES`] bytes of strings (a table reachable many times, a graph of rooms and clients,
//! would otherwise expand exponentially); past that, values become `null`. A Lua value with no
//! AMF form (a function, a coroutine) becomes `null`.

use std::borrow::Cow;

use mlua::{Lua, Table, Value as LuaValue};
use rtmfp::amf::{Array, Dictionary, Member, Object, Value, MAX_DEPTH};

/// Key of a Date's milliseconds.
const TIME_KEY: &str = "__time";
/// Key of a ByteArray's bytes.
const RAW_KEY: &str = "__raw";
/// Key of a typed object's class name.
const TYPE_KEY: &str = "__type";
/// Key of a Dictionary's entry count.
const SIZE_KEY: &str = "__size";
/// Key of a weak-keyed Dictionary's mode.
const MODE_KEY: &str = "__mode";

/// The Lua form of an AMF value.
pub fn to_lua(lua: &Lua, v: &Value<'_>) -> mlua::Result<LuaValue> {
    to_lua_at(lua, v, 0)
}

fn to_lua_at(lua: &Lua, v: &Value<'_>, depth: usize) -> mlua::Result<LuaValue> {
    if depth > MAX_DEPTH {
        return Ok(LuaValue::Nil);
    }
    let deeper = |v: &Value<'_>| to_lua_at(lua, v, depth + 1);
    let members = |t: &Table, members: &[Member<'_>]| -> mlua::Result<()> {
        for (k, v) in members {
            t.raw_set(k.as_ref(), deeper(v)?)?;
        }
        Ok(())
    };
    Ok(match v {
        Value::Undefined | Value::Null | Value::Reference(_) | Value::Unsupported => LuaValue::Nil,
        Value::Boolean(b) => LuaValue::Boolean(*b),
        Value::Number(n) => LuaValue::Number(*n),
        Value::Integer(i) => LuaValue::Number(f64::from(*i)),
        Value::String(s) | Value::Xml(s) | Value::XmlDocument(s) => {
            LuaValue::String(lua.create_string(s.as_bytes())?)
        }
        Value::Date { millis, .. } => {
            let t = lua.create_table()?;
            t.raw_set(TIME_KEY, *millis)?;
            LuaValue::Table(t)
        }
        Value::ByteArray(b) => {
            let t = lua.create_table()?;
            t.raw_set(RAW_KEY, lua.create_string(b.as_ref())?)?;
            LuaValue::Table(t)
        }
        Value::Object(o) => {
            let t = lua.create_table()?;
            if let Some(class) = &o.class_name {
                t.raw_set(TYPE_KEY, class.as_ref())?;
            }
            members(&t, &o.sealed)?;
            if let Some(d) = &o.dynamic {
                members(&t, d)?;
            }
            LuaValue::Table(t)
        }
        Value::EcmaArray(m) => {
            let t = lua.create_table()?;
            members(&t, m)?;
            LuaValue::Table(t)
        }
        Value::Array(a) => {
            let t = lua.create_table()?;
            members(&t, &a.assoc)?;
            sequence(&t, a.dense.iter().map(deeper))?;
            LuaValue::Table(t)
        }
        Value::VectorInt(v) => numbers(lua, v.items.iter().map(|&i| f64::from(i)))?,
        Value::VectorUint(v) => numbers(lua, v.items.iter().map(|&i| f64::from(i)))?,
        Value::VectorDouble(v) => numbers(lua, v.items.iter().copied())?,
        Value::VectorObject(v) => {
            let t = lua.create_table()?;
            sequence(&t, v.items.iter().map(deeper))?;
            LuaValue::Table(t)
        }
        Value::Dictionary(d) => {
            let t = lua.create_table()?;
            for (k, v) in &d.entries {
                let key = deeper(k)?;
                if !key.is_nil() {
                    t.raw_set(key, deeper(v)?)?;
                }
            }
            t.raw_set(SIZE_KEY, d.entries.len())?;
            if d.weak_keys {
                t.raw_set(MODE_KEY, "k")?;
            }
            LuaValue::Table(t)
        }
        Value::Externalizable(e) => deeper(&e.body)?,
    })
}

/// Sets `t[1..]` to `items`, in order.
fn sequence(t: &Table, items: impl Iterator<Item = mlua::Result<LuaValue>>) -> mlua::Result<()> {
    for (i, v) in items.enumerate() {
        t.raw_set(i + 1, v?)?;
    }
    Ok(())
}

fn numbers(lua: &Lua, items: impl Iterator<Item = f64>) -> mlua::Result<LuaValue> {
    let t = lua.create_table()?;
    sequence(&t, items.map(|n| Ok(LuaValue::Number(n))))?;
    Ok(LuaValue::Table(t))
}

/// Most values one conversion from Lua reads.
pub const MAX_NODES: usize = 100_000;
/// Most bytes of strings one conversion from Lua reads (four times the largest control-plane
/// message: more could not be sent anyway).
pub const MAX_BYTES: usize = 1 << 20;

/// The AMF form of a Lua value.
pub fn from_lua(v: &LuaValue) -> Value<'static> {
    FromLua::new().value(v)
}

/// A conversion from Lua with its budget: several values converted by one share it.
#[derive(Debug)]
pub struct FromLua {
    nodes: usize,
    bytes: usize,
    /// The tables being converted, outermost first (a table met again is a cycle).
    path: Vec<*const std::ffi::c_void>,
}

impl Default for FromLua {
    fn default() -> Self {
        FromLua::new()
    }
}

impl FromLua {
    /// A conversion with the whole budget.
    pub fn new() -> FromLua {
        FromLua {
            nodes: MAX_NODES,
            bytes: MAX_BYTES,
            path: Vec::new(),
        }
    }

    /// Bytes of strings read so far.
    pub fn bytes_read(&self) -> usize {
        MAX_BYTES - self.bytes
    }

    /// The AMF form of `v`, within what is left of the budget.
    pub fn value(&mut self, v: &LuaValue) -> Value<'static> {
        self.at(v, 0)
    }

    fn text(&mut self, s: &mlua::String) -> Option<Cow<'static, str>> {
        let n = s.as_bytes().len();
        if n > self.bytes {
            self.bytes = 0;
            return None;
        }
        self.bytes -= n;
        Some(Cow::Owned(s.to_string_lossy()))
    }

    fn at(&mut self, v: &LuaValue, depth: usize) -> Value<'static> {
        if depth > MAX_DEPTH || self.nodes == 0 {
            return Value::Null;
        }
        self.nodes -= 1;
        match v {
            LuaValue::Boolean(b) => Value::Boolean(*b),
            #[allow(clippy::cast_precision_loss, reason = "Lua 5.1 numbers are doubles")]
            LuaValue::Integer(i) => Value::Number(*i as f64),
            LuaValue::Number(n) => Value::Number(*n),
            LuaValue::String(s) => self.text(s).map_or(Value::Null, Value::String),
            LuaValue::Table(t) => {
                let id = t.to_pointer();
                if self.path.contains(&id) {
                    return Value::Null;
                }
                self.path.push(id);
                let v = self.table(t, depth);
                self.path.pop();
                v
            }
            _ => Value::Null,
        }
    }
}

impl FromLua {
    fn table(&mut self, t: &Table, depth: usize) -> Value<'static> {
        let field = |k: &str| t.raw_get::<LuaValue>(k).unwrap_or(LuaValue::Nil);
        if let LuaValue::String(raw) = field(RAW_KEY) {
            let n = raw.as_bytes().len();
            if n > self.bytes {
                self.bytes = 0;
                return Value::Null;
            }
            self.bytes -= n;
            return Value::ByteArray(Cow::Owned(raw.as_bytes().to_vec()));
        }
        if let Some(millis) = number(&field(TIME_KEY)) {
            return Value::Date {
                millis,
                timezone: 0,
            };
        }
        let class = match field(TYPE_KEY) {
            LuaValue::String(s) => self.text(&s),
            _ => None,
        };
        let dictionary = number(&field(SIZE_KEY)).is_some();
        let len = t.raw_len();
        let mut named: Vec<Member<'static>> = Vec::new();
        let mut entries = Vec::new();
        for pair in t.clone().pairs::<LuaValue, LuaValue>() {
            if self.nodes == 0 {
                break;
            }
            let Ok((k, v)) = pair else { continue };
            match &k {
                LuaValue::String(s) => {
                    let Some(name) = self.text(s) else { continue };
                    if matches!(name.as_ref(), TYPE_KEY | SIZE_KEY | MODE_KEY) {
                        continue;
                    }
                    let value = self.at(&v, depth + 1);
                    if dictionary {
                        entries.push((Value::String(name), value));
                    } else {
                        named.push((name, value));
                    }
                }
                _ if dictionary => {
                    let key = self.at(&k, depth + 1);
                    entries.push((key, self.at(&v, depth + 1)));
                }
                // The sequence part is read in order below.
                _ => {}
            }
        }
        if dictionary {
            let weak_keys =
                matches!(field(MODE_KEY), LuaValue::String(s) if s.as_bytes().contains(&b'k'));
            return Value::Dictionary(Dictionary { weak_keys, entries });
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        if len > 0 && class.is_none() {
            // At most what the budget can read: the rest would be nulls.
            let dense = (1..=len.min(self.nodes))
                .map(|i| {
                    let v = t.raw_get::<LuaValue>(i).unwrap_or(LuaValue::Nil);
                    self.at(&v, depth + 1)
                })
                .collect();
            return Value::Array(Array {
                assoc: named,
                dense,
            });
        }
        Value::Object(match class {
            Some(class) => Object {
                class_name: Some(class),
                sealed: Vec::new(),
                dynamic: Some(named),
            },
            None => Object::anonymous(named),
        })
    }
}

fn number(v: &LuaValue) -> Option<f64> {
    match v {
        LuaValue::Number(n) => Some(*n),
        #[allow(clippy::cast_precision_loss, reason = "Lua 5.1 numbers are doubles")]
        LuaValue::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(lua: &Lua, v: &Value<'_>) -> Value<'static> {
        from_lua(&to_lua(lua, v).unwrap())
    }

    #[test]
    fn scalars_and_strings_round_trip() {
        let lua = Lua::new();
        for v in [
            Value::Boolean(true),
            Value::Number(1.5),
            Value::String("héllo".into()),
            Value::Null,
        ] {
            assert_eq!(round_trip(&lua, &v), v);
        }
        assert_eq!(round_trip(&lua, &Value::Integer(-7)), Value::Number(-7.0));
        assert_eq!(round_trip(&lua, &Value::Undefined), Value::Null);
    }

    #[test]
    fn cumulus_conventions_round_trip() {
        let lua = Lua::new();
        let date = Value::Date {
            millis: 1_700_000_000_123.0,
            timezone: 0,
        };
        assert_eq!(round_trip(&lua, &date), date);
        let bytes = Value::ByteArray(Cow::Borrowed(&[0, 1, 255]));
        assert_eq!(round_trip(&lua, &bytes), bytes);
        let typed = Value::Object(Object {
            class_name: Some("Point".into()),
            sealed: Vec::new(),
            dynamic: Some(vec![("x".into(), Value::Number(1.0))]),
        });
        assert_eq!(round_trip(&lua, &typed), typed);
        let array = Value::Array(Array {
            assoc: vec![("name".into(), Value::String("a".into()))],
            dense: vec![Value::Number(1.0), Value::Boolean(false)],
        });
        assert_eq!(round_trip(&lua, &array), array);
        let dict = Value::Dictionary(Dictionary {
            weak_keys: true,
            entries: vec![(Value::Number(3.0), Value::String("three".into()))],
        });
        assert_eq!(round_trip(&lua, &dict), dict);
    }

    #[test]
    fn objects_keep_their_members_in_name_order() {
        let lua = Lua::new();
        let t: Table = lua
            .load("return { b = 2, a = { 1, 2 }, c = 'x' }")
            .eval()
            .unwrap();
        let v = from_lua(&LuaValue::Table(t));
        let o = v.as_object().expect("an object");
        let names: Vec<&str> = o.members().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(o.get("b"), Some(&Value::Number(2.0)));
        assert_eq!(
            o.get("a"),
            Some(&Value::Array(Array {
                assoc: Vec::new(),
                dense: vec![Value::Number(1.0), Value::Number(2.0)]
            }))
        );
    }

    #[test]
    fn a_table_containing_itself_is_cut_where_it_recurs() {
        let lua = Lua::new();
        let t: Table = lua
            .load("local t = { x = 1 }; t.self = t; return t")
            .eval()
            .unwrap();
        let v = from_lua(&LuaValue::Table(t));
        assert_eq!(v.get("self"), Some(&Value::Null));
        assert_eq!(v.get("x"), Some(&Value::Number(1.0)));
    }

    #[test]
    fn a_table_reachable_many_times_costs_at_most_the_budget() {
        // 40 levels, each holding the next twice: 2^40 paths if expanded.
        let lua = Lua::new();
        let t: Table = lua
            .load(
                "local t = { leaf = string.rep('x', 1000) } \
                 for i = 1, 40 do t = { a = t, b = t } end return t",
            )
            .eval()
            .unwrap();
        let started = std::time::Instant::now();
        let mut c = FromLua::new();
        let v = c.value(&LuaValue::Table(t));
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        assert!(v.get("a").is_some());
        assert!(c.bytes_read() <= MAX_BYTES);
    }

    /// AMF values a client may send: scalars, strings, dates, byte arrays and nested objects
    /// and arrays (dense parts without `null`, which a Lua sequence cannot hold).
    fn value() -> impl proptest::strategy::Strategy<Value = Value<'static>> {
        use proptest::prelude::*;
        let key = "[a-z_]{1,6}";
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Boolean),
            (-1.0e12f64..1.0e12).prop_map(Value::Number),
            any::<i32>().prop_map(Value::Integer),
            "\\PC{0,12}".prop_map(|s| Value::String(s.into())),
            (0f64..4.0e12).prop_map(|millis| Value::Date {
                millis,
                timezone: 0
            }),
            proptest::collection::vec(any::<u8>(), 0..8)
                .prop_map(|b| Value::ByteArray(Cow::Owned(b))),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            let member = (key.prop_map(Cow::Owned), inner.clone());
            prop_oneof![
                (
                    proptest::option::of("[A-Z][a-z]{0,5}"),
                    proptest::collection::vec(member.clone(), 0..5)
                )
                    .prop_map(|(class, members)| Value::Object(Object {
                        class_name: class.map(Cow::Owned),
                        sealed: Vec::new(),
                        dynamic: Some(members),
                    })),
                (
                    proptest::collection::vec(member, 0..3),
                    proptest::collection::vec(
                        inner.prop_filter("no null in a sequence", |v| {
                            !matches!(v, Value::Null)
                        }),
                        0..5
                    )
                )
                    .prop_map(|(assoc, dense)| Value::Array(Array { assoc, dense })),
            ]
        })
    }

    proptest::proptest! {
        /// A value's Lua form read back is a fixed point: what a script hands back unchanged
        /// is what it was given (after the first conversion's normalisation: integers become
        /// numbers, duplicate member names collapse, members come in name order).
        #[test]
        fn the_lua_form_read_back_is_a_fixed_point(v in value()) {
            let lua = Lua::new();
            let once = from_lua(&to_lua(&lua, &v).unwrap());
            let twice = from_lua(&to_lua(&lua, &once).unwrap());
            proptest::prop_assert_eq!(once, twice);
        }
    }

    #[test]
    fn functions_have_no_amf_form() {
        let lua = Lua::new();
        let f: LuaValue = lua.load("return function() end").eval().unwrap();
        assert_eq!(from_lua(&f), Value::Null);
    }
}
