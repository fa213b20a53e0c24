//! End-to-end known-answer test: every datagram in `../shared/fixtures` (see its README), decoded
//! with the crate's public API only and rendered in `NAME/decoded.tsv`'s notation, must equal the
//! whole line of decoded.tsv.
//!
//! For each datagram: the key is chosen from the capture's sessions (the default key before a
//! session's RIKeying, that session's per-direction key after it); the per-direction keys are
//! derived with [`derive_session_keys`] from S, SKIC and SKRC in `NAME.keys.json` (and checked
//! against its AES and HMAC keys); [`PacketDecoder`] decrypts and verifies the checksum or the
//! HMAC trailer and reads the SSEQ; `wire` parses the header and chunks; and for User Data on TC
//! flows (metadata `TC…` seen in the flow's options, parsed with [`FlowMetadata`]) the messages
//! are reassembled from their fragments and decoded with `flash` ([`TcMessage`], [`Command`],
//! [`DataMessage`], [`UserControl`]) over `amf`. decoded.tsv shows `tc=` on the chunk that
//! carries a message's first fragment (whole or begin), so a fragmented message's rendering is
//! filled in once its last fragment has arrived.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use rtmfp::amf::{amf0, Value as AmfValue};
use rtmfp::crypto::{derive_session_keys, DirectionOptions, NegotiationFlags, PacketDecoder};
use rtmfp::flash::command::{Command, DataMessage, NetCommand, AMF3_FORMAT_SELECTOR};
use rtmfp::flash::message::{MessageType, TcMessage, UserControl};
use rtmfp::flash::metadata::FlowMetadata;
use rtmfp::startup::components::{
    CERT_ACCEPTS_ANCILLARY_DATA, CERT_EXTRA_RANDOMNESS, CERT_STATIC_DH_PUBLIC_KEY,
    CERT_SUPPORTED_EPHEMERAL_DH_GROUP, EPD_ANCILLARY_DATA, EPD_FINGERPRINT, SKC_DH_GROUP_SELECT,
    SKC_EPHEMERAL_DH_PUBLIC_KEY, SKC_EXTRA_RANDOMNESS, SKC_HMAC_NEGOTIATION, SKC_SSEQ_NEGOTIATION,
};
use rtmfp::wire::{options, Chunk, Fragment, Mode, Packet, Reader, UserDataFlags, PADDING_BYTE};
use serde_json::Value;

/// Number of datagrams in all captures together (fixtures README).
const EXPECTED_DATAGRAMS: usize = 390;
/// Datagrams per capture (fixtures README, "Captures").
const EXPECTED_PER_CAPTURE: [(&str, usize); 5] = [
    ("fcclient-p2p-intro", 36),
    ("librtmfp-cumulus-connect", 20),
    ("librtmfp-mona-connect", 23),
    ("tcbench-rpc-tcserver", 12),
    ("tcconn-tcserver-play", 299),
];
/// TC messages decoded, by type: the `tc=` entries of all decoded.tsv files. Audio and video:
/// 52 + 37 in each direction of `tcconn-tcserver-play` (fixtures README).
const EXPECTED_TC_MESSAGES: [(&str, usize); 5] = [
    ("AMF0Command", 43),
    ("AMF0Data", 5),
    ("Audio", 104),
    ("UserControl", 8),
    ("Video", 74),
];
/// How many differing lines a failure shows.
const MISMATCHES_SHOWN: usize = 20;
/// decoded.tsv's columns.
const TSV_COLUMNS: [&str; 9] = [
    "file",
    "ssid_session_id",
    "key",
    "sseq",
    "hmac_len",
    "flags",
    "ts",
    "tse",
    "chunks",
];
/// decoded.tsv's separator between the chunks of a datagram.
const CHUNK_SEPARATOR: &str = " | ";
/// decoded.tsv's key column for the Flash-profile default key (RFC 7425 §4.6).
const DEFAULT_KEY_NAME: &str = "default";
/// decoded.tsv's rendering of an absent field.
const ABSENT: &str = "-";

/// User Data option: User's Per-Flow Metadata (RFC 7016 §2.3.11.1.1).
const OPTION_FLOW_METADATA: u64 = 0x00;

/// How many fingerprint bytes decoded.tsv shows.
const FINGERPRINT_SHOWN: usize = 8;
/// Negotiation flags and their decoded.tsv names, in decoded.tsv's order (RFC 7425 §4.6.4).
const NEGOTIATION_FLAGS: [(NegotiationFlags, &str); 3] = [
    (NegotiationFlags::SEND_ALWAYS, "SND"),
    (NegotiationFlags::SEND_ON_REQUEST, "SOR"),
    (NegotiationFlags::REQUEST, "REQ"),
];

fn fixtures_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures"
    ));
    assert!(
        dir.join("README.md").is_file(),
        "fixtures missing at {}",
        dir.display()
    );
    dir
}

fn hex_field(value: &Value, name: &str) -> Vec<u8> {
    let text = value[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} is not a string"));
    hex::decode(text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The datagram number of a file name such as `023-r2i.bin`.
fn datagram_number(file: &str) -> u32 {
    file.split('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("datagram file name {file:?}"))
}

/// Rows of a TSV file with a header line, as column-name maps, in file order.
fn read_tsv(path: &Path) -> Vec<HashMap<String, String>> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            header
                .iter()
                .map(|h| h.to_string())
                .zip(l.split('\t').map(String::from))
                .collect()
        })
        .collect()
}

/// Direction of a session datagram, named as in decoded.tsv's key column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Direction {
    InitiatorToResponder,
    ResponderToInitiator,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::InitiatorToResponder => "i2r",
            Direction::ResponderToInitiator => "r2i",
        }
    }
}

/// One session of a capture: its two ends, where its handshake ends, and a decoder per
/// direction with keys derived here.
struct Session {
    initiator: String,
    responder: String,
    /// The RIKeying datagram's number: later datagrams between the two ends use session keys.
    rikeying: u32,
    i2r: PacketDecoder,
    r2i: PacketDecoder,
}

fn direction_options(dir: &Value) -> DirectionOptions {
    let hmac = dir["hmac"].as_bool().expect("hmac flag");
    DirectionOptions {
        hmac_len: hmac.then(|| {
            let len = dir["hmac_len"].as_u64().expect("hmac_len");
            u8::try_from(len).expect("HMAC length fits a byte")
        }),
        sseq: dir["session_sequence_numbers"]
            .as_bool()
            .expect("session_sequence_numbers"),
    }
}

impl Session {
    /// Derives both ends' keys from S, SKIC and SKRC, checks them against the stored AES and HMAC
    /// keys, and builds the decoders: the responder receives i2r, the initiator receives r2i.
    fn from_json(capture: &str, s: &Value) -> Self {
        let secret = hex_field(s, "dh_shared_secret");
        let skic = hex_field(s, "skic");
        let skrc = hex_field(s, "skrc");
        let at_initiator = derive_session_keys(&secret, &skic, &skrc);
        let at_responder = derive_session_keys(&secret, &skrc, &skic);
        let i2r = &s["initiator_to_responder"];
        let r2i = &s["responder_to_initiator"];
        for (dir, sender, receiver) in [
            (i2r, &at_initiator, &at_responder),
            (r2i, &at_responder, &at_initiator),
        ] {
            let aes = hex_field(dir, "aes128_key");
            assert_eq!(sender.send_key().to_vec(), aes, "{capture}: send key");
            assert_eq!(
                receiver.receive_key().to_vec(),
                aes,
                "{capture}: receive key"
            );
            if direction_options(dir).hmac_len.is_some() {
                let key = hex_field(dir, "hmac_sha256_key");
                assert_eq!(sender.tx_hmac_key.to_vec(), key, "{capture}: HMAC key");
                assert_eq!(receiver.rx_hmac_key.to_vec(), key, "{capture}: HMAC key");
            }
        }
        let text = |name: &str| {
            s[name]
                .as_str()
                .unwrap_or_else(|| panic!("{capture}: {name}"))
                .to_string()
        };
        Session {
            initiator: text("initiator"),
            responder: text("responder"),
            rikeying: datagram_number(&text("rikeying_datagram")),
            i2r: at_responder
                .decoder(direction_options(i2r))
                .expect("i2r mode"),
            r2i: at_initiator
                .decoder(direction_options(r2i))
                .expect("r2i mode"),
        }
    }
}

/// The session and direction whose key a datagram uses, or `None` for the default key: a
/// datagram between a session's two ends after its RIKeying (fixtures README, "Facts" 2 and 3:
/// RIKeying itself still uses the default key).
fn session_for(
    sessions: &[Session],
    number: u32,
    src: &str,
    dst: &str,
) -> Option<(usize, Direction)> {
    sessions.iter().enumerate().find_map(|(i, s)| {
        if number <= s.rikeying {
            None
        } else if s.initiator == src && s.responder == dst {
            Some((i, Direction::InitiatorToResponder))
        } else if s.responder == src && s.initiator == dst {
            Some((i, Direction::ResponderToInitiator))
        } else {
            None
        }
    })
}

/// Which field an option list belongs to: the same type code means different things in each.
#[derive(Debug, Clone, Copy)]
enum Field {
    Epd,
    Certificate,
    KeyComponent,
}

fn negotiation_flags(flags: u8) -> String {
    let flags = NegotiationFlags(flags);
    let names: Vec<&str> = NEGOTIATION_FLAGS
        .iter()
        .filter(|(flag, _)| flags.contains(*flag))
        .map(|(_, name)| *name)
        .collect();
    if names.is_empty() {
        "0".into()
    } else {
        names.join("+")
    }
}

/// A VLU followed by the rest of the value: `g<group>/<n>B`, as for DH public keys.
fn group_and_key(value: &[u8]) -> String {
    let mut r = Reader::new(value);
    let group = r.read_vlu().expect("DH group");
    format!("g{group}/{}B", r.remaining())
}

/// An option list (EPD, certificate or key component) in decoded.tsv's notation.
fn render_options(field: Field, bytes: &[u8]) -> String {
    let mut list = options(bytes);
    let rendered: Vec<String> = list
        .by_ref()
        .map(|o| {
            let o = o.expect("well-formed option");
            let vlu = || o.value_vlu().expect("VLU option value");
            let text = match (field, o.kind) {
                (Field::Epd, EPD_ANCILLARY_DATA) => format!(
                    "(ancillary-data)='{}'",
                    std::str::from_utf8(o.value).expect("UTF-8 URL")
                ),
                (Field::Epd, EPD_FINGERPRINT) => {
                    let shown = o.value.get(..FINGERPRINT_SHOWN).expect("fingerprint");
                    format!("(fingerprint)={}...", hex::encode(shown))
                }
                (Field::Certificate, CERT_ACCEPTS_ANCILLARY_DATA) => {
                    assert!(o.value.is_empty(), "accepts-ancillary-data has no value");
                    "(accepts-ancillary-data)".into()
                }
                (Field::Certificate, CERT_SUPPORTED_EPHEMERAL_DH_GROUP) => {
                    format!("(supported-dh-group):g{}", vlu())
                }
                (Field::Certificate, CERT_STATIC_DH_PUBLIC_KEY) => {
                    format!("(static-dh-public-key):{}", group_and_key(o.value))
                }
                (Field::Certificate, CERT_EXTRA_RANDOMNESS)
                | (Field::KeyComponent, SKC_EXTRA_RANDOMNESS) => {
                    format!("(extra-randomness)/{}B", o.value.len())
                }
                (Field::KeyComponent, SKC_DH_GROUP_SELECT) => {
                    format!("(dh-group-select):g{}", vlu())
                }
                (Field::KeyComponent, SKC_EPHEMERAL_DH_PUBLIC_KEY) => {
                    format!("(dh-public-key):{}", group_and_key(o.value))
                }
                (Field::KeyComponent, SKC_HMAC_NEGOTIATION) => {
                    let mut r = Reader::new(o.value);
                    let flags = r.read_u8().expect("HMAC flags");
                    let len = r.read_vlu().expect("HMAC length");
                    format!("(hmac-negotiation):{}/len{len}", negotiation_flags(flags))
                }
                (Field::KeyComponent, SKC_SSEQ_NEGOTIATION) => {
                    let flags = Reader::new(o.value).read_u8().expect("SSEQ flags");
                    format!("(sseq-negotiation):{}", negotiation_flags(flags))
                }
                (field, kind) => panic!("{field:?} option 0x{kind:02x} is in no fixture"),
            };
            format!("0x{:02x}{text}", o.kind)
        })
        .collect();
    assert!(!list.marker_seen(), "no fixture option list has a marker");
    rendered.join(",")
}

/// Where a chunk's rendering lives: (line index in the capture, chunk index in the line).
type Slot = (usize, usize);

/// One chunk in decoded.tsv notation: the wire fields, then for User Data the TC message (once
/// decoded) and the data size.
struct ChunkText {
    head: String,
    tc: Option<String>,
    data_len: Option<usize>,
}

impl ChunkText {
    fn render(&self) -> String {
        let mut s = self.head.clone();
        if let Some(tc) = &self.tc {
            write!(s, " tc={tc}").unwrap();
        }
        if let Some(len) = self.data_len {
            write!(s, " data={len}B").unwrap();
        }
        s
    }
}

/// One datagram's rendering: the header columns and the chunks.
struct LineText {
    file: String,
    columns: Vec<String>,
    chunks: Vec<ChunkText>,
}

impl LineText {
    fn render(&self) -> String {
        let chunks: Vec<String> = self.chunks.iter().map(ChunkText::render).collect();
        let mut cols = vec![self.file.clone()];
        cols.extend(self.columns.iter().cloned());
        cols.push(chunks.join(CHUNK_SEPARATOR));
        cols.join("\t")
    }
}

/// A received fragment waiting for the rest of its message.
struct Piece {
    fragment: Fragment,
    data: Vec<u8>,
    slot: Slot,
}

/// What a receiver keeps per flow: the metadata from the flow's options and the fragments of
/// messages not yet complete (RFC 7016 §3.6.3.3).
#[derive(Default)]
struct FlowState {
    metadata: Option<Vec<u8>>,
    pieces: BTreeMap<u64, Piece>,
}

impl FlowState {
    fn is_tc(&self) -> bool {
        let metadata = self.metadata.as_deref().unwrap_or_default();
        matches!(
            FlowMetadata::parse(metadata).expect("valid flow metadata"),
            FlowMetadata::Tc { .. }
        )
    }

    /// Takes one non-abandoned fragment; returns a message it completes, with the slot of the
    /// message's first fragment.
    fn accept(
        &mut self,
        seq: u64,
        fragment: Fragment,
        data: &[u8],
        slot: Slot,
    ) -> Option<(Slot, Vec<u8>)> {
        if fragment == Fragment::Whole {
            return Some((slot, data.to_vec()));
        }
        self.pieces.entry(seq).or_insert_with(|| Piece {
            fragment,
            data: data.to_vec(),
            slot,
        });
        // Back to the message's begin fragment, then forward to its end, with no gap.
        let mut begin = seq;
        loop {
            match self.pieces.get(&begin)?.fragment {
                Fragment::Begin => break,
                // The end of an earlier message: this fragment's begin is missing.
                Fragment::End if begin != seq => return None,
                _ => begin = begin.checked_sub(1)?,
            }
        }
        let mut end = begin;
        loop {
            end = end.checked_add(1)?;
            match self.pieces.get(&end)?.fragment {
                Fragment::Middle => {}
                Fragment::End => break,
                Fragment::Begin | Fragment::Whole => return None,
            }
        }
        let slot = self.pieces[&begin].slot;
        let mut message = Vec::new();
        for s in begin..=end {
            let piece = self.pieces.remove(&s).expect("checked above");
            message.extend_from_slice(&piece.data);
        }
        Some((slot, message))
    }
}

/// A decoded TC message: its type for the summary, its decoded.tsv text, and what the typed
/// `flash` views say about it (for the README facts). `malformed` is the error of a command
/// whose name and transaction ID decode but whose later values do not.
struct TcDecoded {
    kind: String,
    text: String,
    fact: Option<String>,
    malformed: Option<String>,
}

/// `AMF0` for the AMF0 message types, `AMF3` for those with the AMF3 format selector.
fn amf_prefix(kind: MessageType) -> &'static str {
    if kind == MessageType::AMF0_COMMAND || kind == MessageType::AMF0_DATA {
        "AMF0"
    } else {
        "AMF3"
    }
}

/// Decodes a whole TC message (RFC 7425 §5.1.1) with the `flash` module.
fn decode_tc(bytes: &[u8]) -> Result<TcDecoded, String> {
    let msg = TcMessage::parse(bytes).map_err(|e| e.to_string())?;
    let amf = amf_prefix(msg.kind);
    let mut malformed = None;
    let (kind, text, fact) = if msg.kind.is_command() {
        let cmd = match Command::parse(&msg) {
            Ok(cmd) => cmd,
            Err(e) => {
                // Keep what precedes the bad value, as a lenient receiver would.
                malformed = Some(e.to_string());
                command_head(&msg)?
            }
        };
        let fact = match cmd.net_command().map_err(|e| e.to_string())? {
            NetCommand::Connect(c) => Some(format!("connect app={:?}", c.app())),
            NetCommand::SetPeerInfo(addresses) => {
                Some(format!("setPeerInfo {}", addresses.join(" ")))
            }
            NetCommand::Play(p) => Some(format!("play {}", p.name)),
            NetCommand::Publish { name, .. } => Some(format!("publish {name:?}")),
            _ => None,
        };
        let text = format!("{amf}Command({},{:?})", cmd.name, cmd.transaction_id);
        (format!("{amf}Command"), text, fact)
    } else if msg.kind.is_data() {
        let data = DataMessage::parse(&msg).map_err(|e| e.to_string())?;
        let fact = data
            .set_data_frame()
            .map(|(name, _)| format!("{} {name}", data.handler));
        let text = format!("{amf}Data({})", data.handler);
        (format!("{amf}Data"), text, fact)
    } else if msg.kind == MessageType::USER_CONTROL {
        let event = UserControl::parse(msg.payload).map_err(|e| e.to_string())?;
        let fact = match event {
            UserControl::SetKeepalive { server_ms, peer_ms } => {
                Some(format!("keepalive {server_ms}/{peer_ms}"))
            }
            _ => None,
        };
        let text = format!("UserControl(event {})", event.event().0);
        ("UserControl".into(), text, fact)
    } else if msg.kind == MessageType::AUDIO {
        ("Audio".into(), "Audio".into(), None)
    } else if msg.kind == MessageType::VIDEO {
        ("Video".into(), "Video".into(), None)
    } else {
        return Err(format!(
            "TC message type 0x{:02x} is in no fixture",
            msg.kind.0
        ));
    };
    Ok(TcDecoded {
        kind,
        text,
        fact,
        malformed,
    })
}

/// The name and transaction ID of a command whose later values do not decode, read value by
/// value with [`amf0::Reader`].
fn command_head<'a>(msg: &TcMessage<'a>) -> Result<Command<'a>, String> {
    let body = if msg.kind == MessageType::AMF3_COMMAND {
        match msg.payload.split_first() {
            Some((&AMF3_FORMAT_SELECTOR, rest)) => rest,
            _ => return Err("AMF3 command without its format selector".into()),
        }
    } else {
        msg.payload
    };
    let mut reader = amf0::Reader::new(body);
    let name = match reader.read_value().map_err(|e| e.to_string())? {
        AmfValue::String(name) => name,
        other => return Err(format!("command name {other:?}")),
    };
    let transaction_id = reader
        .read_value()
        .map_err(|e| e.to_string())?
        .as_f64()
        .ok_or("transaction ID is not a number")?;
    Ok(Command::new(
        name,
        transaction_id,
        AmfValue::Null,
        Vec::new(),
    ))
}

/// The decoded.tsv text of the User Data fields the wire layer decodes.
fn user_data_fields(head: &mut String, flags: UserDataFlags, opts: Option<&[u8]>) {
    let position = match flags.fragment {
        Fragment::Whole => "whole",
        Fragment::Begin => "begin",
        Fragment::Middle => "middle",
        Fragment::End => "end",
    };
    write!(head, " {position}").unwrap();
    if flags.abandoned {
        head.push_str(" ABN");
    }
    if flags.fin {
        head.push_str(" FIN");
    }
    if let Some(list) = opts {
        let rendered: Vec<String> = options(list)
            .map(|o| {
                let o = o.expect("well-formed option");
                format!("{}:{}", o.kind, hex::encode(o.value))
            })
            .collect();
        write!(head, " opts=[{}]", rendered.join(",")).unwrap();
    }
}

/// Flows are per session and direction (RFC 7016 §3.6: flow IDs belong to the sender).
type FlowKey = (usize, Direction, u64);

/// Everything decoded from one capture.
#[derive(Default)]
struct Capture {
    /// The decoded lines, in datagram order, with decoded.tsv's line for each.
    lines: Vec<(LineText, String)>,
    startup: usize,
    session: usize,
    tc_by_kind: BTreeMap<String, usize>,
    facts: Vec<String>,
    /// Commands whose values after the transaction ID do not decode: `file: name: error`.
    malformed: Vec<String>,
    /// Messages still incomplete at the end of the capture, on non-TC flows.
    incomplete: usize,
}

/// The decoder's state while it walks a capture.
struct CaptureDecoder {
    name: String,
    sessions: Vec<Session>,
    flows: HashMap<FlowKey, FlowState>,
    out: Capture,
}

/// Where a User Data fragment sits and what it carries.
struct Fragmentary<'a> {
    flow: FlowKey,
    seq: u64,
    flags: UserDataFlags,
    options: Option<&'a [u8]>,
    data: &'a [u8],
    slot: Slot,
}

impl CaptureDecoder {
    /// Takes one User Data fragment: records the flow's metadata, reassembles, and returns the
    /// TC message it completes (with the slot that shows it) on a TC flow.
    fn user_data(&mut self, what: &str, f: Fragmentary<'_>) -> Option<(Slot, TcDecoded)> {
        let flow = self.flows.entry(f.flow).or_default();
        for o in f.options.map(options).into_iter().flatten() {
            let o = o.unwrap_or_else(|e| panic!("{what}: {e}"));
            if o.kind == OPTION_FLOW_METADATA {
                match &flow.metadata {
                    Some(seen) => assert_eq!(seen, o.value, "{what}: metadata changed"),
                    None => flow.metadata = Some(o.value.to_vec()),
                }
            }
        }
        if f.flags.abandoned {
            // RFC 7016 §2.3.11: data of an abandoned fragment must be ignored.
            return None;
        }
        let (slot, message) = flow.accept(f.seq, f.flags.fragment, f.data, f.slot)?;
        if !flow.is_tc() {
            return None;
        }
        let tc = decode_tc(&message)
            .unwrap_or_else(|e| panic!("{what}: TC message {}: {e}", hex::encode(&message)));
        Some((slot, tc))
    }

    fn datagram(&mut self, dir: &Path, row: &HashMap<String, String>, expected: String) {
        let file = row["file"].as_str();
        let what = format!("{}/{file}", self.name);
        let src = format!("{}:{}", row["src"], row["sport"]);
        let dst = format!("{}:{}", row["dst"], row["dport"]);
        let mut bytes = fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{what}: {e}"));

        let keyed = session_for(&self.sessions, datagram_number(file), &src, &dst);
        let mut startup = PacketDecoder::startup();
        let (decoder, key_name) = match keyed {
            None => (&mut startup, DEFAULT_KEY_NAME),
            Some((i, Direction::InitiatorToResponder)) => (
                &mut self.sessions[i].i2r,
                Direction::InitiatorToResponder.name(),
            ),
            Some((i, Direction::ResponderToInitiator)) => (
                &mut self.sessions[i].r2i,
                Direction::ResponderToInitiator.name(),
            ),
        };
        let hmac_len = decoder.mode().hmac.as_ref().map(|h| h.trailer_len());
        let decoded = decoder
            .decode(&mut bytes)
            .unwrap_or_else(|e| panic!("{what}: decoding with key {key_name}: {e}"));
        let packet = Packet::parse(decoded.packet).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            packet.header.mode == Mode::Startup,
            keyed.is_none(),
            "{what}: startup mode exactly with the default key"
        );
        if keyed.is_some() {
            self.out.session += 1;
        } else {
            self.out.startup += 1;
        }

        let dash = |v: Option<String>| v.unwrap_or_else(|| ABSENT.to_string());
        let columns = vec![
            format!("0x{:08x}", decoded.session_id),
            key_name.to_string(),
            dash(decoded.sseq.map(|v| v.to_string())),
            dash(hmac_len.map(|v| v.to_string())),
            format!("0x{:02x}", packet.header.flags()),
            dash(packet.header.timestamp.map(|v| v.to_string())),
            dash(packet.header.timestamp_echo.map(|v| v.to_string())),
        ];
        let line_index = self.out.lines.len();
        let mut chunks = Vec::new();
        let mut completed = Vec::new();
        // Flow and sequence number of the last User Data chunk, which Next User Data continues
        // (RFC 7016 §2.3.12).
        let mut context: Option<(u64, u64)> = None;
        for (chunk_index, chunk) in packet.chunks().enumerate() {
            let chunk = chunk.unwrap_or_else(|e| panic!("{what}: chunk {chunk_index}: {e}"));
            assert!(
                chunk.kind().allowed_in(packet.header.mode),
                "{what}: {chunk:?} in {:?}",
                packet.header.mode
            );
            let slot = (line_index, chunk_index);
            let mut head = format!("0x{:02x} {}", chunk.kind().0, chunk.kind().name());
            let mut data_len = None;
            let fragment = match &chunk {
                Chunk::UserData(ud) => {
                    write!(
                        head,
                        " flow={} seq={} fsnOff={}",
                        ud.flow_id.0, ud.seq, ud.fsn_offset
                    )
                    .unwrap();
                    user_data_fields(&mut head, ud.flags, ud.options);
                    context = Some((ud.flow_id.0, ud.seq));
                    data_len = Some(ud.data.len());
                    Some((ud.flow_id.0, ud.seq, ud.flags, ud.options, ud.data))
                }
                Chunk::NextUserData(nd) => {
                    let (flow, previous) =
                        context.unwrap_or_else(|| panic!("{what}: Next User Data first"));
                    let seq = previous + 1;
                    write!(head, " flow={flow} seq={seq}").unwrap();
                    user_data_fields(&mut head, nd.flags, nd.options);
                    context = Some((flow, seq));
                    data_len = Some(nd.data.len());
                    Some((flow, seq, nd.flags, nd.options, nd.data))
                }
                other => {
                    render_other(&what, &mut head, other);
                    None
                }
            };
            if let Some((flow, seq, flags, options, data)) = fragment {
                let (session, direction) =
                    keyed.unwrap_or_else(|| panic!("{what}: User Data outside a session"));
                let f = Fragmentary {
                    flow: (session, direction, flow),
                    seq,
                    flags,
                    options,
                    data,
                    slot,
                };
                completed.extend(self.user_data(&what, f));
            }
            chunks.push(ChunkText {
                head,
                tc: None,
                data_len,
            });
        }
        // Only 0xFF padding follows the chunks (RFC 7016 §2.2.4).
        let mut raw = packet.raw_chunks();
        raw.by_ref().for_each(drop);
        assert!(
            raw.rest().iter().all(|&b| b == PADDING_BYTE),
            "{what}: padding"
        );

        self.out.lines.push((
            LineText {
                file: file.to_string(),
                columns,
                chunks,
            },
            expected,
        ));
        for ((line, chunk), tc) in completed {
            *self.out.tc_by_kind.entry(tc.kind).or_default() += 1;
            self.out.facts.extend(tc.fact);
            if let Some(error) = tc.malformed {
                let file = &self.out.lines[line].0.file;
                let name = tc.text.clone();
                self.out
                    .malformed
                    .push(format!("{}/{file}: {name}: {error}", self.name));
            }
            let target = &mut self.out.lines[line].0.chunks[chunk];
            assert!(
                target.tc.is_none(),
                "{what}: two messages start in one chunk"
            );
            target.tc = Some(tc.text);
        }
    }
}

/// The decoded.tsv text of a chunk other than User Data.
fn render_other(what: &str, s: &mut String, chunk: &Chunk<'_>) {
    match chunk {
        Chunk::IHello(h) => write!(
            s,
            " epd=[{}] tag={}B",
            render_options(Field::Epd, h.epd),
            h.tag.len()
        ),
        Chunk::ForwardedIHello(h) => write!(
            s,
            " epd=[{}] tag={}B reply={}/origin{}",
            render_options(Field::Epd, h.epd),
            h.tag.len(),
            h.reply_address.addr,
            h.reply_address.origin as u8
        ),
        Chunk::RHello(h) => write!(
            s,
            " tag={}B cookie={}B cert={}B[{}]",
            h.tag_echo.len(),
            h.cookie.len(),
            h.certificate.len(),
            render_options(Field::Certificate, h.certificate)
        ),
        Chunk::IIKeying(k) => write!(
            s,
            " isid=0x{:08x} cookie={}B cert={}B[{}] skic={}B[{}] sig={}",
            k.initiator_session_id.0,
            k.cookie_echo.len(),
            k.certificate.len(),
            render_options(Field::Certificate, k.certificate),
            k.skic.len(),
            render_options(Field::KeyComponent, k.skic),
            hex::encode(k.signature)
        ),
        Chunk::RIKeying(k) => write!(
            s,
            " rsid=0x{:08x} skrc={}B[{}] sig={}",
            k.responder_session_id.0,
            k.skrc.len(),
            render_options(Field::KeyComponent, k.skrc),
            hex::encode(k.signature)
        ),
        Chunk::Redirect(r) => {
            let addresses: Vec<String> = r
                .addresses()
                .map(|a| {
                    let a = a.unwrap_or_else(|e| panic!("{what}: address: {e}"));
                    format!("{}/origin{}", a.addr, a.origin as u8)
                })
                .collect();
            write!(
                s,
                " tag={}B addrs={}",
                r.tag_echo.len(),
                addresses.join(",")
            )
        }
        Chunk::RangeAck(ack) => {
            // decoded.tsv shows no ranges, and no fixture ack has any.
            assert_eq!(ack.ranges().count(), 0, "{what}: ack ranges");
            write!(
                s,
                " flow={} buf={} cumAck={}",
                ack.flow_id.0, ack.buffer_blocks, ack.cum_ack
            )
        }
        Chunk::FlowExceptionReport(r) => write!(s, " flow={} code={}", r.flow_id.0, r.exception),
        Chunk::EcnReport(_) | Chunk::Close(_) | Chunk::CloseAck(_) => Ok(()),
        other => panic!("{what}: chunk {other:?} is in no fixture"),
    }
    .unwrap();
}

/// Decodes every datagram of capture `name` in order.
fn decode_capture(root: &Path, name: &str) -> Capture {
    let dir = root.join(name);
    let keys_path = root.join(format!("{name}.keys.json"));
    let keys: Value = serde_json::from_str(
        &fs::read_to_string(&keys_path).unwrap_or_else(|e| panic!("{}: {e}", keys_path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", keys_path.display()));
    let sessions = keys["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: sessions"))
        .iter()
        .map(|s| Session::from_json(name, s))
        .collect();

    let tsv_path = dir.join("decoded.tsv");
    let tsv = fs::read_to_string(&tsv_path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut expected_lines = tsv.lines().filter(|l| !l.is_empty());
    let header: Vec<&str> = expected_lines.next().expect("header").split('\t').collect();
    assert_eq!(header, TSV_COLUMNS, "{name}: decoded.tsv columns");
    let expected: HashMap<&str, &str> = expected_lines
        .map(|l| (l.split('\t').next().expect("file column"), l))
        .collect();

    let index = read_tsv(&dir.join("index.tsv"));
    let bins = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".bin"))
        })
        .count();
    assert_eq!(index.len(), bins, "{name}: index.tsv lists every datagram");
    assert_eq!(
        expected.len(),
        bins,
        "{name}: decoded.tsv has every datagram"
    );

    let mut decoder = CaptureDecoder {
        name: name.to_string(),
        sessions,
        flows: HashMap::new(),
        out: Capture::default(),
    };
    for row in &index {
        let file = row["file"].as_str();
        let line = expected
            .get(file)
            .unwrap_or_else(|| panic!("{name}/{file}: not in decoded.tsv"));
        decoder.datagram(&dir, row, line.to_string());
    }
    for flow in decoder.flows.values() {
        let begins = flow
            .pieces
            .values()
            .filter(|p| p.fragment == Fragment::Begin)
            .count();
        if begins > 0 {
            assert!(!flow.is_tc(), "{name}: a TC message never completed");
        }
        decoder.out.incomplete += begins;
    }
    decoder.out
}

#[test]
fn every_fixture_datagram_decodes_to_its_decoded_tsv_line() {
    let root = fixtures_dir();
    let mut names: Vec<String> = fs::read_dir(&root)
        .expect("fixtures dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|f| f.strip_suffix(".keys.json").map(String::from))
        .collect();
    names.sort();
    let expected_names: Vec<&str> = EXPECTED_PER_CAPTURE.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, expected_names, "captures");

    let mut total = 0;
    let mut mismatches = Vec::new();
    let mut tc_by_kind: BTreeMap<String, usize> = BTreeMap::new();
    let mut facts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut malformed = Vec::new();
    for (name, expected_count) in EXPECTED_PER_CAPTURE {
        let capture = decode_capture(&root, name);
        for (line, expected) in &capture.lines {
            let actual = line.render();
            if actual != *expected {
                mismatches.push(format!(
                    "{name}/{}:\n  expected: {expected}\n  actual:   {actual}",
                    line.file
                ));
            }
        }
        let tc: usize = capture.tc_by_kind.values().sum();
        println!(
            "{name}: {} datagrams ({} startup, {} session), {tc} TC messages {:?}, {} incomplete \
             non-TC messages",
            capture.lines.len(),
            capture.startup,
            capture.session,
            capture.tc_by_kind,
            capture.incomplete
        );
        assert_eq!(capture.lines.len(), expected_count, "{name}: datagrams");
        total += capture.lines.len();
        for (kind, n) in capture.tc_by_kind {
            *tc_by_kind.entry(kind).or_default() += n;
        }
        facts.insert(name.to_string(), capture.facts);
        malformed.extend(capture.malformed);
    }
    assert!(
        mismatches.is_empty(),
        "{} of {total} datagrams differ from decoded.tsv (first {MISMATCHES_SHOWN}):\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(MISMATCHES_SHOWN)].join("\n")
    );
    println!("all {total} datagrams match decoded.tsv; TC messages by type: {tc_by_kind:?}");
    assert_eq!(total, EXPECTED_DATAGRAMS);
    let expected_tc: BTreeMap<String, usize> = EXPECTED_TC_MESSAGES
        .iter()
        .map(|(k, n)| (k.to_string(), *n))
        .collect();
    assert_eq!(tc_by_kind, expected_tc, "TC messages by type");

    // One command in all captures is not valid AMF0 after its transaction ID: MonaServer2's
    // connect `_result` puts an AMF3-switched value (marker 0x11) where the status object's next
    // property name belongs. Everything else decodes completely.
    println!("malformed commands: {malformed:?}");
    assert_eq!(malformed.len(), 1, "malformed commands: {malformed:?}");
    assert!(
        malformed[0].starts_with("librtmfp-mona-connect/007-s2c.bin: AMF0Command(_result,0.0): "),
        "malformed commands: {malformed:?}"
    );

    // What the typed `flash` views read from the commands, against the fixtures README.
    for (name, list) in &facts {
        println!("{name}: {list:?}");
    }
    let has = |name: &str, fact: &str| {
        assert!(
            facts[name].iter().any(|f| f == fact),
            "{name}: {fact:?} not among {:?}",
            facts[name]
        );
    };
    has("tcconn-tcserver-play", "play s1");
    has("tcconn-tcserver-play", "publish Some(\"s1\")");
    has("tcconn-tcserver-play", "@setDataFrame onMetaData");
    has(
        "librtmfp-mona-connect",
        "setPeerInfo 192.0.2.2:51438 [fd00::2]:56337",
    );
    has("librtmfp-mona-connect", "play s1");
    has(
        "librtmfp-cumulus-connect",
        "setPeerInfo 192.0.2.2:48464 [fd00::2]:43049",
    );
    has("librtmfp-cumulus-connect", "play s1");
}

/// The fixtures deliver fragments in order; the reassembler also handles reordering, gaps and
/// stray ends.
#[test]
fn reassembly_handles_reordering_and_gaps() {
    let mut flow = FlowState::default();
    // A message of three fragments arriving end, begin, middle: complete at the last one, shown
    // at the begin fragment's slot.
    assert_eq!(flow.accept(7, Fragment::End, b"c", (2, 0)), None);
    assert_eq!(flow.accept(5, Fragment::Begin, b"a", (0, 1)), None);
    assert_eq!(
        flow.accept(6, Fragment::Middle, b"b", (1, 0)),
        Some(((0, 1), b"abc".to_vec()))
    );
    assert!(flow.pieces.is_empty());
    // A whole message needs nothing else.
    assert_eq!(
        flow.accept(8, Fragment::Whole, b"w", (3, 0)),
        Some(((3, 0), b"w".to_vec()))
    );
    // A middle fragment after an end whose begin is missing stays pending; so does a begin
    // followed by a gap.
    assert_eq!(flow.accept(10, Fragment::End, b"x", (4, 0)), None);
    assert_eq!(flow.accept(11, Fragment::Middle, b"y", (4, 1)), None);
    assert_eq!(flow.accept(13, Fragment::Begin, b"p", (5, 0)), None);
    assert_eq!(flow.accept(15, Fragment::End, b"r", (6, 0)), None);
    assert_eq!(flow.pieces.len(), 4);
}
