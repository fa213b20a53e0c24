//! JSON renderings of Flash "TC" messages and AMF values for `updraft inspect`.

use rtmfp::amf::{Member, Value};
use serde_json::{json, Map, Value as Json};

/// Renders an AMF value as JSON (numbers, strings and containers as themselves; the rest tagged).
pub fn amf_json(v: &Value<'_>) -> Json {
    match v {
        Value::Undefined => json!({"undefined": true}),
        Value::Null => Json::Null,
        Value::Boolean(b) => json!(b),
        Value::Number(n) => json!(n),
        Value::Integer(i) => json!(i),
        Value::String(s) => json!(s),
        Value::Date { millis, timezone } => json!({"date_ms": millis, "timezone": timezone}),
        Value::Object(o) => {
            let mut m = members_json(o.members());
            if let Some(class) = &o.class_name {
                m.insert("@class".into(), json!(class));
            }
            Json::Object(m)
        }
        Value::EcmaArray(members) => Json::Object(members_json(members.iter())),
        Value::Array(a) => {
            if a.assoc.is_empty() {
                a.dense.iter().map(amf_json).collect()
            } else {
                json!({"assoc": Json::Object(members_json(a.assoc.iter())), "dense": a.dense.iter().map(amf_json).collect::<Vec<_>>()})
            }
        }
        Value::Xml(s) | Value::XmlDocument(s) => json!({"xml": s}),
        Value::ByteArray(b) => json!({"bytes": hex::encode(b)}),
        Value::VectorInt(v) => json!(v.items),
        Value::VectorUint(v) => json!(v.items),
        Value::VectorDouble(v) => json!(v.items),
        Value::VectorObject(v) => {
            json!({"type": v.type_name, "items": v.items.iter().map(amf_json).collect::<Vec<_>>()})
        }
        Value::Dictionary(d) => d
            .entries
            .iter()
            .map(|(k, v)| json!([amf_json(k), amf_json(v)]))
            .collect(),
        Value::Externalizable(e) => json!({"@class": e.class_name, "body": amf_json(&e.body)}),
        Value::Reference(r) => json!({"reference": r}),
        Value::Unsupported => json!({"unsupported": true}),
    }
}

fn members_json<'v, 'a: 'v>(members: impl Iterator<Item = &'v Member<'a>>) -> Map<String, Json> {
    members.map(|(k, v)| (k.to_string(), amf_json(v))).collect()
}

/// Renders a whole TC message (RFC 7425 §5.1.1): type, timestamp, then the command, data
/// message, user-control event or media header it carries.
pub fn message_json(bytes: &[u8]) -> Json {
    use rtmfp::flash::command::{Command, DataMessage};
    use rtmfp::flash::message::{MessageType, TcMessage, UserControl};

    let tc = match TcMessage::parse(bytes) {
        Ok(tc) => tc,
        Err(e) => {
            return json!({"error": e.to_string(), "len": bytes.len(), "hex": hex_head(bytes)})
        }
    };
    let mut out = json!({"type": format!("0x{:02x}", tc.kind.0), "timestamp": tc.timestamp, "len": tc.payload.len()});
    match tc.kind {
        k if k.is_command() => match Command::parse(&tc) {
            Ok(c) => {
                out["command"] = json!(c.name);
                out["transaction_id"] = json!(c.transaction_id);
                out["command_object"] = amf_json(&c.command_object);
                out["args"] = c.args.iter().map(amf_json).collect();
            }
            Err(e) => {
                // Show what reads before the fault: the name and transaction ID at least
                // (MonaServer2 switches to AMF3 in the middle of an AMF0 object, for example).
                let values = leading_values(tc.kind, tc.payload);
                if let Some(Value::String(name)) = values.first() {
                    out["command"] = json!(name);
                }
                if let Some(txid) = values.get(1).and_then(Value::as_f64) {
                    out["transaction_id"] = json!(txid);
                }
                out["values_before_error"] = values.iter().map(amf_json).collect();
                out["error"] = json!(e.to_string());
                out["hex"] = hex_head(tc.payload);
            }
        },
        k if k.is_data() => match DataMessage::parse(&tc) {
            Ok(d) => {
                out["data"] = json!(d.handler);
                out["values"] = d.values.iter().map(amf_json).collect();
            }
            Err(e) => {
                out["error"] = json!(e.to_string());
                out["hex"] = hex_head(tc.payload);
            }
        },
        MessageType::USER_CONTROL => match UserControl::parse(tc.payload) {
            Ok(uc) => {
                out["event"] = json!(uc.event().0);
                out["user_control"] = json!(format!("{uc:?}"));
            }
            Err(e) => out["error"] = json!(e.to_string()),
        },
        MessageType::AUDIO => {
            if let Some(&h) = tc.payload.first() {
                out["audio_format"] = json!(h >> 4);
            }
        }
        MessageType::VIDEO => {
            if let Some(&h) = tc.payload.first() {
                out["video_frame_type"] = json!(h >> 4);
                out["video_codec"] = json!(h & 0x0F);
            }
        }
        _ => {}
    }
    out
}

/// Bytes shown of a message that does not parse.
const UNPARSED_HEX_LIMIT: usize = 256;

/// The first bytes of an unparsable message, hex.
fn hex_head(bytes: &[u8]) -> Json {
    json!(hex::encode(&bytes[..bytes.len().min(UNPARSED_HEX_LIMIT)]))
}

/// The AMF values of a command or data message up to the first one that does not read
/// (RFC 7425 §5.1.1: AMF3 messages start with a 0x00 format selector, then AMF0).
fn leading_values<'a>(
    kind: rtmfp::flash::message::MessageType,
    payload: &'a [u8],
) -> Vec<Value<'a>> {
    use rtmfp::flash::message::MessageType;
    let body = match kind {
        MessageType::AMF3_COMMAND | MessageType::AMF3_DATA => payload.get(1..).unwrap_or_default(),
        _ => payload,
    };
    let mut reader = rtmfp::amf::amf0::Reader::new(body);
    let mut values = Vec::new();
    while reader.remaining() > 0 {
        match reader.read_value() {
            Ok(v) => values.push(v),
            Err(_) => break,
        }
    }
    values
}
