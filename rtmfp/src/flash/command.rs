//! AMF commands and data messages of TC flows (RFC 7425 §5.1.1, §5.3; RTMP §7.1.1, §7.2), typed
//! views of the NetConnection/NetStream commands a server handles, and builders for its replies.
//!
//! Encodings: an AMF0 command (0x14) or data message (0x12) is a sequence of AMF0 values; the AMF3
//! forms (0x11, 0x0F) are a 0x00 format selector then AMF0 values, any of which may switch to
//! AMF3 with the AVM+ marker. Builders take an [`ObjectEncoding`]: with [`ObjectEncoding::Amf0`]
//! they write an AMF0 message; with [`ObjectEncoding::Amf3`] an AMF3 message whose name and
//! transaction ID are AMF0 and whose other values are all switched to AMF3.

use std::borrow::Cow;

use super::message::{MessageType, TcMessage};
use super::FlashError;
use crate::amf::{amf0, Member, Object, Value};

/// Format selector that starts AMF3 command and data messages. RTMP §7.1.1; RFC 7425 §5.3.3.
pub const AMF3_FORMAT_SELECTOR: u8 = 0x00;

/// `objectEncoding` value of AMF0 clients. RTMP §7.2.1.1.
pub const OBJECT_ENCODING_AMF0: f64 = 0.0;
/// `objectEncoding` value of AMF3 clients. RTMP §7.2.1.1.
pub const OBJECT_ENCODING_AMF3: f64 = 3.0;

/// `play` start value selecting Cumulus's "unbuffered" (unreliable) delivery (a Cumulus
/// extension, digest §1.11).
pub const PLAY_START_UNBUFFERED: f64 = -3000.0;
/// Default `play` start: live, else recorded. RTMP §7.2.2.1.
pub const PLAY_START_DEFAULT: f64 = -2.0;
/// Default `play` duration: play to the end. RTMP §7.2.2.1.
pub const PLAY_DURATION_DEFAULT: f64 = -1.0;

/// Command and handler names. RTMP §7.2; digest §1.11.
pub mod names {
    /// NetConnection.connect.
    pub const CONNECT: &str = "connect";
    /// Flash's report of its local addresses (RFC 7425 §5.3.3 (v) note).
    pub const SET_PEER_INFO: &str = "setPeerInfo";
    /// NetConnection: create a NetStream.
    pub const CREATE_STREAM: &str = "createStream";
    /// NetConnection: delete a NetStream.
    pub const DELETE_STREAM: &str = "deleteStream";
    /// NetStream: start publishing.
    pub const PUBLISH: &str = "publish";
    /// NetStream: start playing.
    pub const PLAY: &str = "play";
    /// NetStream: stop publishing or playing.
    pub const CLOSE_STREAM: &str = "closeStream";
    /// NetStream: mute or unmute audio.
    pub const RECEIVE_AUDIO: &str = "receiveAudio";
    /// NetStream: mute or unmute video.
    pub const RECEIVE_VIDEO: &str = "receiveVideo";
    /// Successful reply.
    pub const RESULT: &str = "_result";
    /// Error reply.
    pub const ERROR: &str = "_error";
    /// Status event.
    pub const ON_STATUS: &str = "onStatus";
    /// Server asks the client to close the NetConnection.
    pub const CLOSE: &str = "close";
    /// Data message: keep the following data as the stream's metadata.
    pub const SET_DATA_FRAME: &str = "@setDataFrame";
    /// Data message: drop the stream's metadata.
    pub const CLEAR_DATA_FRAME: &str = "@clearDataFrame";
    /// Data message: stream metadata.
    pub const ON_META_DATA: &str = "onMetaData";
    /// Data message: sample access rights (audio bool, video bool).
    pub const RTMP_SAMPLE_ACCESS: &str = "|RtmpSampleAccess";
}

/// Status levels and codes sent in `_result`/`_error`/`onStatus` info objects. Digest §1.11.
pub mod status {
    /// Level of a successful status.
    pub const LEVEL_STATUS: &str = "status";
    /// Level of an error status.
    pub const LEVEL_ERROR: &str = "error";
    /// Level of a warning status.
    pub const LEVEL_WARNING: &str = "warning";
    /// The connection was accepted.
    pub const CONNECT_SUCCESS: &str = "NetConnection.Connect.Success";
    /// The connection was refused.
    pub const CONNECT_REJECTED: &str = "NetConnection.Connect.Rejected";
    /// The application name is not valid.
    pub const CONNECT_INVALID_APP: &str = "NetConnection.Connect.InvalidApp";
    /// A remote call failed.
    pub const CALL_FAILED: &str = "NetConnection.Call.Failed";
    /// Publishing started.
    pub const PUBLISH_START: &str = "NetStream.Publish.Start";
    /// The stream name is taken or refused.
    pub const PUBLISH_BAD_NAME: &str = "NetStream.Publish.BadName";
    /// Publishing stopped.
    pub const UNPUBLISH_SUCCESS: &str = "NetStream.Unpublish.Success";
    /// The play list was reset.
    pub const PLAY_RESET: &str = "NetStream.Play.Reset";
    /// Playing started.
    pub const PLAY_START: &str = "NetStream.Play.Start";
    /// Playing stopped.
    pub const PLAY_STOP: &str = "NetStream.Play.Stop";
    /// Playing failed.
    pub const PLAY_FAILED: &str = "NetStream.Play.Failed";
    /// A publisher started publishing the played stream.
    pub const PLAY_PUBLISH_NOTIFY: &str = "NetStream.Play.PublishNotify";
    /// The publisher of the played stream stopped.
    pub const PLAY_UNPUBLISH_NOTIFY: &str = "NetStream.Play.UnpublishNotify";
}

/// The AMF encoding a client asked for in `connect` (`objectEncoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ObjectEncoding {
    /// AMF0 (`objectEncoding` 0 or absent).
    #[default]
    Amf0,
    /// AMF3 (`objectEncoding` 3).
    Amf3,
}

impl ObjectEncoding {
    /// The encoding for an `objectEncoding` number: 3 is AMF3, anything else AMF0.
    pub fn from_number(n: f64) -> Self {
        if n == OBJECT_ENCODING_AMF3 {
            ObjectEncoding::Amf3
        } else {
            ObjectEncoding::Amf0
        }
    }

    /// The `objectEncoding` number.
    pub fn as_number(self) -> f64 {
        match self {
            ObjectEncoding::Amf0 => OBJECT_ENCODING_AMF0,
            ObjectEncoding::Amf3 => OBJECT_ENCODING_AMF3,
        }
    }
}

/// The AMF0 values of a command or data message payload: the payload itself, or for the AMF3
/// types what follows its format selector (RFC 7425 §5.1.1).
pub fn amf_body(kind: MessageType, payload: &[u8]) -> Result<&[u8], FlashError> {
    if kind == MessageType::AMF0_COMMAND || kind == MessageType::AMF0_DATA {
        Ok(payload)
    } else if kind == MessageType::AMF3_COMMAND || kind == MessageType::AMF3_DATA {
        match payload.split_first() {
            Some((&AMF3_FORMAT_SELECTOR, rest)) => Ok(rest),
            Some((&other, _)) => Err(FlashError::InvalidFormatSelector(other)),
            None => Err(FlashError::UnexpectedEnd),
        }
    } else {
        Err(FlashError::UnexpectedMessageType(kind.0))
    }
}

/// Decodes the AMF values of a command or data message payload.
fn read_values<'a>(kind: MessageType, payload: &'a [u8]) -> Result<Vec<Value<'a>>, FlashError> {
    let body = amf_body(kind, payload)?;
    let mut reader = amf0::Reader::new(body);
    let mut values = Vec::new();
    while reader.remaining() > 0 {
        values.push(reader.read_value()?);
    }
    Ok(values)
}

/// Encodes `head` (name, and transaction ID for commands) in AMF0 and `rest` per `enc`.
fn write_values(
    enc: ObjectEncoding,
    command: bool,
    head: &[Value<'_>],
    rest: &[&Value<'_>],
) -> Result<(MessageType, Vec<u8>), FlashError> {
    let mut out = Vec::new();
    let kind = match (enc, command) {
        (ObjectEncoding::Amf0, true) => MessageType::AMF0_COMMAND,
        (ObjectEncoding::Amf0, false) => MessageType::AMF0_DATA,
        (ObjectEncoding::Amf3, true) => MessageType::AMF3_COMMAND,
        (ObjectEncoding::Amf3, false) => MessageType::AMF3_DATA,
    };
    if enc == ObjectEncoding::Amf3 {
        out.push(AMF3_FORMAT_SELECTOR);
    }
    let mut w = amf0::Writer::new(&mut out);
    for v in head {
        w.write_value(v)?;
    }
    for v in rest {
        match enc {
            ObjectEncoding::Amf0 => w.write_value(v)?,
            ObjectEncoding::Amf3 => w.write_avmplus(v)?,
        }
    }
    Ok((kind, out))
}

/// A status info object: `{level, code, description, ...extra}` in that order.
pub fn status_object<'a>(
    level: &'a str,
    code: &'a str,
    description: &'a str,
    extra: Vec<Member<'a>>,
) -> Value<'a> {
    let mut members = vec![
        (Cow::Borrowed("level"), Value::str(level)),
        (Cow::Borrowed("code"), Value::str(code)),
        (Cow::Borrowed("description"), Value::str(description)),
    ];
    members.extend(extra);
    Value::Object(Object::anonymous(members))
}

/// A command: `name, transactionID, commandObject, args…` (RTMP §7.1.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Command<'a> {
    /// Command name.
    pub name: Cow<'a, str>,
    /// Transaction ID (0 when no reply is expected).
    pub transaction_id: f64,
    /// Command object (usually null; the properties object for `connect`). [`Value::Null`]
    /// when the sender omitted it, as librtmfp does for `setPeerInfo`.
    pub command_object: Value<'a>,
    /// Further arguments.
    pub args: Vec<Value<'a>>,
}

impl<'a> Command<'a> {
    /// A command with the given parts.
    pub fn new(
        name: impl Into<Cow<'a, str>>,
        transaction_id: f64,
        command_object: Value<'a>,
        args: Vec<Value<'a>>,
    ) -> Self {
        Command {
            name: name.into(),
            transaction_id,
            command_object,
            args,
        }
    }

    /// Parses an AMF0 (0x14) or AMF3 (0x11) command message.
    pub fn parse(msg: &TcMessage<'a>) -> Result<Self, FlashError> {
        if !msg.kind.is_command() {
            return Err(FlashError::UnexpectedMessageType(msg.kind.0));
        }
        let mut values = read_values(msg.kind, msg.payload)?.into_iter();
        let name = match values.next() {
            Some(Value::String(s)) => s,
            _ => return Err(FlashError::MissingName),
        };
        let transaction_id = values
            .next()
            .as_ref()
            .and_then(Value::as_f64)
            .ok_or(FlashError::MissingTransactionId)?;
        let command_object = values.next().unwrap_or(Value::Null);
        Ok(Command {
            name,
            transaction_id,
            command_object,
            args: values.collect(),
        })
    }

    /// Encodes the message payload; returns the message type to send it with.
    pub fn encode(&self, enc: ObjectEncoding) -> Result<(MessageType, Vec<u8>), FlashError> {
        let head = [
            Value::String(Cow::Borrowed(&self.name)),
            Value::Number(self.transaction_id),
        ];
        let rest: Vec<&Value<'_>> = std::iter::once(&self.command_object)
            .chain(&self.args)
            .collect();
        write_values(enc, true, &head, &rest)
    }

    /// Encodes a whole TC message with the given timestamp.
    pub fn to_message(&self, enc: ObjectEncoding, timestamp: u32) -> Result<Vec<u8>, FlashError> {
        let (kind, payload) = self.encode(enc)?;
        Ok(TcMessage {
            kind,
            timestamp,
            payload: &payload,
        }
        .to_vec())
    }

    /// `_result` for transaction `txn` with a null command object and one info value.
    pub fn result(transaction_id: f64, info: Value<'a>) -> Self {
        Command::new(names::RESULT, transaction_id, Value::Null, vec![info])
    }

    /// `_error` for transaction `txn` with a null command object and one info value.
    pub fn error(transaction_id: f64, info: Value<'a>) -> Self {
        Command::new(names::ERROR, transaction_id, Value::Null, vec![info])
    }

    /// `_result` accepting `connect`: status `NetConnection.Connect.Success` with the client's
    /// `objectEncoding` echoed, then `extra` members.
    pub fn connect_success(
        transaction_id: f64,
        object_encoding: ObjectEncoding,
        description: &'a str,
        extra: Vec<Member<'a>>,
    ) -> Self {
        let mut members = vec![(
            Cow::Borrowed("objectEncoding"),
            Value::Number(object_encoding.as_number()),
        )];
        members.extend(extra);
        Command::result(
            transaction_id,
            status_object(
                status::LEVEL_STATUS,
                status::CONNECT_SUCCESS,
                description,
                members,
            ),
        )
    }

    /// `_error` refusing a command, e.g. `connect` with `NetConnection.Connect.Rejected`.
    pub fn error_status(transaction_id: f64, code: &'a str, description: &'a str) -> Self {
        Command::error(
            transaction_id,
            status_object(status::LEVEL_ERROR, code, description, Vec::new()),
        )
    }

    /// `_result` for `createStream` carrying the new stream ID.
    pub fn create_stream_result(transaction_id: f64, stream_id: f64) -> Self {
        Command::result(transaction_id, Value::Number(stream_id))
    }

    /// `onStatus` (transaction 0, null command object) with an info object.
    pub fn on_status(info: Value<'a>) -> Self {
        Command::new(names::ON_STATUS, 0.0, Value::Null, vec![info])
    }

    /// A server-to-client call: `name, 0, null, args…`.
    pub fn call(name: &'a str, args: Vec<Value<'a>>) -> Self {
        Command::new(name, 0.0, Value::Null, args)
    }

    /// `close`: the server drops the NetConnection.
    pub fn close() -> Self {
        Command::call(names::CLOSE, Vec::new())
    }

    /// A typed view of the NetConnection/NetStream commands a server handles; commands with
    /// other names are [`NetCommand::Other`].
    pub fn net_command(&self) -> Result<NetCommand<'_, 'a>, FlashError> {
        let first = self.args.first();
        Ok(match self.name.as_ref() {
            names::CONNECT => NetCommand::Connect(Connect {
                object: &self.command_object,
                args: &self.args,
            }),
            names::SET_PEER_INFO => NetCommand::SetPeerInfo(
                std::iter::once(&self.command_object)
                    .chain(&self.args)
                    .filter_map(Value::as_str)
                    .collect(),
            ),
            names::CREATE_STREAM => NetCommand::CreateStream,
            names::DELETE_STREAM => NetCommand::DeleteStream(
                first
                    .and_then(Value::as_f64)
                    .ok_or(FlashError::BadArguments(names::DELETE_STREAM))?,
            ),
            names::PUBLISH => {
                let name = match first {
                    Some(Value::String(s)) => Some(s.as_ref()),
                    Some(Value::Null | Value::Undefined | Value::Boolean(false)) | None => None,
                    Some(_) => return Err(FlashError::BadArguments(names::PUBLISH)),
                };
                NetCommand::Publish {
                    name,
                    publish_type: self.args.get(1).and_then(Value::as_str),
                }
            }
            names::PLAY => {
                let name = first
                    .and_then(Value::as_str)
                    .ok_or(FlashError::BadArguments(names::PLAY))?;
                let number = |i: usize, default: f64| {
                    self.args.get(i).and_then(Value::as_f64).unwrap_or(default)
                };
                NetCommand::Play(Play {
                    name,
                    start: number(1, PLAY_START_DEFAULT),
                    duration: number(2, PLAY_DURATION_DEFAULT),
                    reset: self.args.get(3).and_then(Value::as_bool).unwrap_or(true),
                })
            }
            names::CLOSE_STREAM => NetCommand::CloseStream,
            names::RECEIVE_AUDIO => NetCommand::ReceiveAudio(
                first
                    .and_then(Value::as_bool)
                    .ok_or(FlashError::BadArguments(names::RECEIVE_AUDIO))?,
            ),
            names::RECEIVE_VIDEO => NetCommand::ReceiveVideo(
                first
                    .and_then(Value::as_bool)
                    .ok_or(FlashError::BadArguments(names::RECEIVE_VIDEO))?,
            ),
            _ => NetCommand::Other,
        })
    }
}

/// Typed view of a known NetConnection/NetStream command. Digest §1.11.
#[derive(Debug, Clone, PartialEq)]
pub enum NetCommand<'r, 'a> {
    /// `connect(properties, args…)`.
    Connect(Connect<'r, 'a>),
    /// `setPeerInfo(address…)`: the client's local addresses, `"a.b.c.d:port"` or
    /// `"[v6]:port"`.
    SetPeerInfo(Vec<&'r str>),
    /// `createStream()`.
    CreateStream,
    /// `deleteStream(streamID)`.
    DeleteStream(f64),
    /// `publish(name, type)`; `name` is `None` for `publish(null)`/`publish(false)` (stop).
    Publish {
        /// Stream name.
        name: Option<&'r str>,
        /// `"live"`, `"record"` or `"append"`, if given.
        publish_type: Option<&'r str>,
    },
    /// `play(name, start, duration, reset)`.
    Play(Play<'r>),
    /// `closeStream()`.
    CloseStream,
    /// `receiveAudio(flag)`.
    ReceiveAudio(bool),
    /// `receiveVideo(flag)`.
    ReceiveVideo(bool),
    /// Any other command (application RPC).
    Other,
}

/// Arguments of `play`, with the RTMP defaults filled in. RTMP §7.2.2.1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Play<'r> {
    /// Stream name.
    pub name: &'r str,
    /// Start: -2 live else recorded, -1 live only, >= 0 recorded from that time (ms);
    /// [`PLAY_START_UNBUFFERED`] is a Cumulus extension.
    pub start: f64,
    /// Duration in ms; -1 to the end.
    pub duration: f64,
    /// Whether to flush previous playlists.
    pub reset: bool,
}

/// Typed accessors on a `connect` command object. Digest §1.11.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Connect<'r, 'a> {
    object: &'r Value<'a>,
    args: &'r [Value<'a>],
}

impl<'r, 'a> Connect<'r, 'a> {
    /// A property of the command object.
    pub fn property(&self, name: &str) -> Option<&'r Value<'a>> {
        self.object.get(name)
    }

    fn string(&self, name: &str) -> Option<&'r str> {
        self.property(name).and_then(Value::as_str)
    }

    /// `app`: the application name.
    pub fn app(&self) -> Option<&'r str> {
        self.string("app")
    }

    /// `tcUrl`: the URL the client connected to.
    pub fn tc_url(&self) -> Option<&'r str> {
        self.string("tcUrl")
    }

    /// `flashVer`, e.g. `"WIN 11,7,700,202"`.
    pub fn flash_ver(&self) -> Option<&'r str> {
        self.string("flashVer")
    }

    /// `swfUrl`.
    pub fn swf_url(&self) -> Option<&'r str> {
        self.string("swfUrl")
    }

    /// `pageUrl`.
    pub fn page_url(&self) -> Option<&'r str> {
        self.string("pageUrl")
    }

    /// `fpad`: whether a proxy is used.
    pub fn fpad(&self) -> Option<bool> {
        self.property("fpad").and_then(Value::as_bool)
    }

    /// `capabilities`.
    pub fn capabilities(&self) -> Option<f64> {
        self.property("capabilities").and_then(Value::as_f64)
    }

    /// `audioCodecs` bit mask.
    pub fn audio_codecs(&self) -> Option<f64> {
        self.property("audioCodecs").and_then(Value::as_f64)
    }

    /// `videoCodecs` bit mask.
    pub fn video_codecs(&self) -> Option<f64> {
        self.property("videoCodecs").and_then(Value::as_f64)
    }

    /// `objectEncoding` (AMF0 when absent).
    pub fn object_encoding(&self) -> ObjectEncoding {
        self.property("objectEncoding")
            .and_then(Value::as_f64)
            .map_or(ObjectEncoding::Amf0, ObjectEncoding::from_number)
    }

    /// Extra `connect` arguments after the command object.
    pub fn args(&self) -> &'r [Value<'a>] {
        self.args
    }
}

/// A data message: `handler, values…` (RTMP §7.1.2), e.g. `@setDataFrame, "onMetaData", {…}`.
#[derive(Debug, Clone, PartialEq)]
pub struct DataMessage<'a> {
    /// Handler name.
    pub handler: Cow<'a, str>,
    /// Values after the handler name.
    pub values: Vec<Value<'a>>,
}

impl<'a> DataMessage<'a> {
    /// Parses an AMF0 (0x12) or AMF3 (0x0F) data message.
    pub fn parse(msg: &TcMessage<'a>) -> Result<Self, FlashError> {
        if !msg.kind.is_data() {
            return Err(FlashError::UnexpectedMessageType(msg.kind.0));
        }
        let mut values = read_values(msg.kind, msg.payload)?.into_iter();
        let handler = match values.next() {
            Some(Value::String(s)) => s,
            _ => return Err(FlashError::MissingName),
        };
        Ok(DataMessage {
            handler,
            values: values.collect(),
        })
    }

    /// Encodes the message payload; returns the message type to send it with.
    pub fn encode(&self, enc: ObjectEncoding) -> Result<(MessageType, Vec<u8>), FlashError> {
        let head = [Value::String(Cow::Borrowed(&self.handler))];
        let rest: Vec<&Value<'_>> = self.values.iter().collect();
        write_values(enc, false, &head, &rest)
    }

    /// Encodes a whole TC message with the given timestamp.
    pub fn to_message(&self, enc: ObjectEncoding, timestamp: u32) -> Result<Vec<u8>, FlashError> {
        let (kind, payload) = self.encode(enc)?;
        Ok(TcMessage {
            kind,
            timestamp,
            payload: &payload,
        }
        .to_vec())
    }

    /// For `@setDataFrame`: the inner handler name (usually `onMetaData`) and its value.
    pub fn set_data_frame(&self) -> Option<(&str, &Value<'a>)> {
        if self.handler != names::SET_DATA_FRAME {
            return None;
        }
        let name = self.values.first()?.as_str()?;
        Some((name, self.values.get(1)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amf::strategy::{amf0_value, amf3_value, finite};
    use crate::amf::{fixtures, Array};
    use proptest::prelude::*;

    fn msg(hex_msg: &str) -> Vec<u8> {
        hex::decode(hex_msg).expect("hex")
    }

    #[test]
    fn real_connect_librtmfp() {
        let bytes = msg(fixtures::LIBRTMFP_CONNECT);
        let m = TcMessage::parse(&bytes).expect("message");
        assert_eq!(m.kind, MessageType::AMF0_COMMAND);
        let cmd = Command::parse(&m).expect("command");
        assert_eq!(cmd.name, "connect");
        assert_eq!(cmd.transaction_id, 0.0);
        let NetCommand::Connect(c) = cmd.net_command().expect("view") else {
            panic!("not connect");
        };
        assert_eq!(c.app(), Some("live"));
        assert_eq!(c.tc_url(), Some("rtmfp://127.0.0.1:19361"));
        assert_eq!(c.flash_ver(), Some("WIN 20,0,0,286"));
        assert_eq!(c.swf_url(), Some(""));
        assert_eq!(c.page_url(), Some(""));
        assert_eq!(c.fpad(), Some(false));
        assert_eq!(c.capabilities(), Some(235.0));
        assert_eq!(c.audio_codecs(), Some(3575.0));
        assert_eq!(c.video_codecs(), Some(252.0));
        assert_eq!(c.object_encoding(), ObjectEncoding::Amf3);
        assert!(c.args().is_empty());
        // Re-encoding reproduces the captured message.
        assert_eq!(
            cmd.to_message(ObjectEncoding::Amf0, 0).expect("encode"),
            bytes
        );
    }

    #[test]
    fn real_set_peer_info() {
        let bytes = msg(fixtures::LIBRTMFP_SET_PEER_INFO);
        let cmd = Command::parse(&TcMessage::parse(&bytes).expect("message")).expect("command");
        assert_eq!(
            cmd.net_command(),
            Ok(NetCommand::SetPeerInfo(vec![
                "192.0.2.2:48464",
                "[fd00::2]:43049"
            ]))
        );
    }

    #[test]
    fn cumulus_connect_result_is_reproduced() {
        // Cumulus answered librtmfp's connect (txn 0, objectEncoding 3) in AMF0.
        let expected = msg(fixtures::CUMULUS_CONNECT_RESULT);
        let reply = Command::connect_success(
            0.0,
            ObjectEncoding::Amf3,
            "Connection succeeded",
            vec![(
                Cow::Borrowed("message"),
                Value::str("hello from CumulusServer"),
            )],
        );
        assert_eq!(
            reply.to_message(ObjectEncoding::Amf0, 0).expect("encode"),
            expected
        );
    }

    #[test]
    fn connect_result_flow_amf0_client() {
        // rtmfp-cpp tcconn connects with objectEncoding 0 and txn 1.
        let bytes = msg(fixtures::TCCONN_CONNECT);
        let cmd = Command::parse(&TcMessage::parse(&bytes).expect("message")).expect("command");
        let NetCommand::Connect(c) = cmd.net_command().expect("view") else {
            panic!("not connect");
        };
        assert_eq!(c.app(), Some("live"));
        assert_eq!(c.tc_url(), Some("rtmfp://127.0.0.1:19350/live"));
        let enc = c.object_encoding();
        assert_eq!(enc, ObjectEncoding::Amf0);
        let reply = Command::connect_success(cmd.transaction_id, enc, "you connected!", vec![]);
        let out = reply.to_message(enc, 0).expect("encode");
        let m = TcMessage::parse(&out).expect("message");
        assert_eq!(m.kind, MessageType::AMF0_COMMAND);
        let parsed = Command::parse(&m).expect("command");
        assert_eq!(parsed.name, names::RESULT);
        assert_eq!(parsed.transaction_id, 1.0);
        assert_eq!(parsed.command_object, Value::Null);
        let info = &parsed.args[0];
        assert_eq!(info.get("level"), Some(&Value::str(status::LEVEL_STATUS)));
        assert_eq!(info.get("code"), Some(&Value::str(status::CONNECT_SUCCESS)));
        assert_eq!(info.get("objectEncoding"), Some(&Value::Number(0.0)));
    }

    #[test]
    fn connect_result_flow_amf3_client() {
        let bytes = msg(fixtures::LIBRTMFP_CONNECT);
        let cmd = Command::parse(&TcMessage::parse(&bytes).expect("message")).expect("command");
        let NetCommand::Connect(c) = cmd.net_command().expect("view") else {
            panic!("not connect");
        };
        let enc = c.object_encoding();
        assert_eq!(enc, ObjectEncoding::Amf3);
        let reply = Command::connect_success(cmd.transaction_id, enc, "ok", vec![]);
        let out = reply.to_message(enc, 7).expect("encode");
        // 0x11 message, 0x00 selector, AMF0 name and txn, then AVM+-switched values.
        let mut expected = vec![0x11, 0, 0, 0, 7, 0x00];
        expected.extend_from_slice(&[0x02, 0x00, 0x07]);
        expected.extend_from_slice(b"_result");
        expected.extend_from_slice(&[0x00, 0, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[0x11, 0x01, 0x11, 0x0A, 0x0B, 0x01]);
        assert_eq!(out[..expected.len()], expected[..]);
        let m = TcMessage::parse(&out).expect("message");
        let parsed = Command::parse(&m).expect("command");
        assert_eq!(parsed, reply);
        assert_eq!(
            parsed.args[0].get("objectEncoding"),
            Some(&Value::Number(3.0))
        );
    }

    #[test]
    fn golden_replies() {
        // createStream _result: "_result", 2.0, null, 1.0.
        let out = Command::create_stream_result(2.0, 1.0)
            .to_message(ObjectEncoding::Amf0, 0)
            .expect("encode");
        let mut expected = vec![0x14, 0, 0, 0, 0, 0x02, 0x00, 0x07];
        expected.extend_from_slice(b"_result");
        expected.extend_from_slice(&[0x00, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x05]);
        expected.extend_from_slice(&[0x00, 0x3F, 0xF0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(out, expected);
        // The tcserver fixture's createStream reply is 34 bytes.
        assert_eq!(out.len(), 34);

        let (kind, payload) = Command::close()
            .encode(ObjectEncoding::Amf0)
            .expect("encode");
        assert_eq!(kind, MessageType::AMF0_COMMAND);
        let mut expected = vec![0x02, 0x00, 0x05];
        expected.extend_from_slice(b"close");
        expected.extend_from_slice(&[0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x05]);
        assert_eq!(payload, expected);

        let on_status = Command::on_status(status_object(
            status::LEVEL_STATUS,
            status::PLAY_START,
            "Started playing s1",
            vec![],
        ));
        let out = on_status
            .to_message(ObjectEncoding::Amf0, 0)
            .expect("encode");
        let parsed = Command::parse(&TcMessage::parse(&out).expect("message")).expect("command");
        assert_eq!(parsed, on_status);
        assert_eq!(
            parsed.args[0].get("code").and_then(Value::as_str),
            Some(status::PLAY_START)
        );

        let err = Command::error_status(1.0, status::CONNECT_REJECTED, "no");
        assert_eq!(err.name, names::ERROR);
        assert_eq!(
            err.args[0].get("level"),
            Some(&Value::str(status::LEVEL_ERROR))
        );
        let call = Command::call("onRelay", vec![Value::str("x")]);
        assert_eq!(call.transaction_id, 0.0);
        assert_eq!(call.command_object, Value::Null);
    }

    fn command(name: &str, args: Vec<Value<'static>>) -> Command<'static> {
        Command::new(name.to_owned(), 0.0, Value::Null, args)
    }

    #[test]
    fn net_stream_views() {
        let c = command("publish", vec![Value::str("s1"), Value::str("live")]);
        assert_eq!(
            c.net_command(),
            Ok(NetCommand::Publish {
                name: Some("s1"),
                publish_type: Some("live")
            })
        );
        let c = command("publish", vec![Value::Boolean(false)]);
        assert_eq!(
            c.net_command(),
            Ok(NetCommand::Publish {
                name: None,
                publish_type: None
            })
        );
        let c = command("publish", vec![Value::Number(1.0)]);
        assert_eq!(c.net_command(), Err(FlashError::BadArguments("publish")));
        let c = command("play", vec![Value::str("s1")]);
        assert_eq!(
            c.net_command(),
            Ok(NetCommand::Play(Play {
                name: "s1",
                start: PLAY_START_DEFAULT,
                duration: PLAY_DURATION_DEFAULT,
                reset: true
            }))
        );
        let c = command(
            "play",
            vec![
                Value::str("s1"),
                Value::Number(PLAY_START_UNBUFFERED),
                Value::Integer(5),
                Value::Boolean(false),
            ],
        );
        assert_eq!(
            c.net_command(),
            Ok(NetCommand::Play(Play {
                name: "s1",
                start: -3000.0,
                duration: 5.0,
                reset: false
            }))
        );
        assert_eq!(
            command("play", vec![]).net_command(),
            Err(FlashError::BadArguments("play"))
        );
        assert_eq!(
            command("closeStream", vec![]).net_command(),
            Ok(NetCommand::CloseStream)
        );
        assert_eq!(
            command("createStream", vec![]).net_command(),
            Ok(NetCommand::CreateStream)
        );
        assert_eq!(
            command("deleteStream", vec![Value::Number(1.0)]).net_command(),
            Ok(NetCommand::DeleteStream(1.0))
        );
        assert_eq!(
            command("receiveAudio", vec![Value::Boolean(false)]).net_command(),
            Ok(NetCommand::ReceiveAudio(false))
        );
        assert_eq!(
            command("receiveVideo", vec![Value::Boolean(true)]).net_command(),
            Ok(NetCommand::ReceiveVideo(true))
        );
        assert_eq!(
            command("receiveVideo", vec![]).net_command(),
            Err(FlashError::BadArguments("receiveVideo"))
        );
        assert_eq!(
            command("myRpc", vec![]).net_command(),
            Ok(NetCommand::Other)
        );
    }

    #[test]
    fn golden_play_amf0() {
        // play("s1") as an AMF0 command on a NetStream flow: "play", 0, null, "s1".
        let mut bytes = vec![0x14, 0, 0, 0, 0, 0x02, 0x00, 0x04];
        bytes.extend_from_slice(b"play");
        bytes.extend_from_slice(&[0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x05, 0x02, 0x00, 0x02]);
        bytes.extend_from_slice(b"s1");
        let cmd = Command::parse(&TcMessage::parse(&bytes).expect("message")).expect("command");
        assert_eq!(cmd, command("play", vec![Value::str("s1")]));
        assert_eq!(
            cmd.to_message(ObjectEncoding::Amf0, 0).expect("encode"),
            bytes
        );
    }

    #[test]
    fn amf3_command_with_switches() {
        // setPeerInfo as Flash sends it: 0x11, selector 0, AMF0 name/txn/null, AVM+ strings.
        let mut bytes = vec![0x11, 0, 0, 0, 0, 0x00, 0x02, 0x00, 0x0B];
        bytes.extend_from_slice(b"setPeerInfo");
        bytes.extend_from_slice(&[0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x05, 0x11, 0x06, 0x1B]);
        bytes.extend_from_slice(b"10.0.0.1:1935");
        let cmd = Command::parse(&TcMessage::parse(&bytes).expect("message")).expect("command");
        assert_eq!(
            cmd.net_command(),
            Ok(NetCommand::SetPeerInfo(vec!["10.0.0.1:1935"]))
        );
        let bad = [0x11, 0, 0, 0, 0, 0x01];
        assert_eq!(
            Command::parse(&TcMessage::parse(&bad).expect("message")),
            Err(FlashError::InvalidFormatSelector(1))
        );
        let audio = [0x08, 0, 0, 0, 0, 0xAF];
        assert_eq!(
            Command::parse(&TcMessage::parse(&audio).expect("message")),
            Err(FlashError::UnexpectedMessageType(0x08))
        );
        let no_txn = [0x14, 0, 0, 0, 0, 0x02, 0x00, 0x01, b'x'];
        assert_eq!(
            Command::parse(&TcMessage::parse(&no_txn).expect("message")),
            Err(FlashError::MissingTransactionId)
        );
        let no_name = [0x14, 0, 0, 0, 0, 0x05];
        assert_eq!(
            Command::parse(&TcMessage::parse(&no_name).expect("message")),
            Err(FlashError::MissingName)
        );
    }

    #[test]
    fn set_data_frame() {
        // @setDataFrame, "onMetaData", ECMA array {width: 640}.
        let mut bytes = vec![0x12, 0, 0, 0, 0, 0x02, 0x00, 0x0D];
        bytes.extend_from_slice(b"@setDataFrame");
        bytes.extend_from_slice(&[0x02, 0x00, 0x0A]);
        bytes.extend_from_slice(b"onMetaData");
        bytes.extend_from_slice(&[0x08, 0, 0, 0, 1, 0x00, 0x05]);
        bytes.extend_from_slice(b"width");
        bytes.extend_from_slice(&[0x00, 0x40, 0x84, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x09]);
        let m = TcMessage::parse(&bytes).expect("message");
        let d = DataMessage::parse(&m).expect("data");
        let (name, meta) = d.set_data_frame().expect("setDataFrame");
        assert_eq!(name, names::ON_META_DATA);
        assert_eq!(meta.get("width"), Some(&Value::Number(640.0)));
        assert_eq!(
            d.to_message(ObjectEncoding::Amf0, 0).expect("encode"),
            bytes
        );
        let other = DataMessage {
            handler: Cow::Borrowed(names::RTMP_SAMPLE_ACCESS),
            values: vec![Value::Boolean(true), Value::Boolean(true)],
        };
        assert_eq!(other.set_data_frame(), None);
        let out = other.to_message(ObjectEncoding::Amf3, 0).expect("encode");
        assert_eq!(out[0], MessageType::AMF3_DATA.0);
        assert_eq!(
            DataMessage::parse(&TcMessage::parse(&out).expect("m")),
            Ok(other)
        );
    }

    fn encoding_and_args(
    ) -> impl Strategy<Value = (ObjectEncoding, Value<'static>, Vec<Value<'static>>)> {
        prop_oneof![
            (amf0_value(), proptest::collection::vec(amf0_value(), 0..3)).prop_map(|(o, a)| (
                ObjectEncoding::Amf0,
                o,
                a
            )),
            (amf3_value(), proptest::collection::vec(amf3_value(), 0..3)).prop_map(|(o, a)| (
                ObjectEncoding::Amf3,
                o,
                a
            )),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn command_round_trip(name in "[a-zA-Z_@|]{1,12}", txn in finite(),
                              (enc, object, args) in encoding_and_args(), ts in any::<u32>()) {
            let cmd = Command::new(name, txn, object, args);
            let bytes = cmd.to_message(enc, ts).expect("encode");
            let m = TcMessage::parse(&bytes).expect("message");
            prop_assert_eq!(m.timestamp, ts);
            prop_assert_eq!(Command::parse(&m).expect("parse"), cmd);
        }

        #[test]
        fn data_round_trip(handler in "[a-zA-Z_@|]{1,12}",
                           (enc, first, rest) in encoding_and_args()) {
            let mut values = vec![first];
            values.extend(rest);
            let d = DataMessage { handler: Cow::Owned(handler), values };
            let bytes = d.to_message(enc, 0).expect("encode");
            let m = TcMessage::parse(&bytes).expect("message");
            prop_assert!(m.kind.is_data());
            prop_assert_eq!(DataMessage::parse(&m).expect("parse"), d);
        }

        #[test]
        fn parse_never_panics(kind in prop_oneof![Just(0x11u8), Just(0x14), Just(0x0F), Just(0x12)],
                              payload in proptest::collection::vec(any::<u8>(), 0..48)) {
            let m = TcMessage { kind: MessageType(kind), timestamp: 0, payload: &payload };
            if let Ok(cmd) = Command::parse(&m) {
                prop_assert!(m.kind.is_command());
                let _view = cmd.net_command();
            }
            if let Ok(d) = DataMessage::parse(&m) {
                prop_assert!(m.kind.is_data());
                prop_assert!(d.values.len() < payload.len());
            }
        }
    }

    #[test]
    fn array_args_survive_amf0() {
        let cmd = command(
            "rpc",
            vec![Value::Array(Array {
                assoc: vec![],
                dense: vec![Value::Integer(1)],
            })],
        );
        let bytes = cmd.to_message(ObjectEncoding::Amf0, 0).expect("encode");
        let m = TcMessage::parse(&bytes).expect("message");
        assert_eq!(Command::parse(&m).expect("parse"), cmd);
    }
}
