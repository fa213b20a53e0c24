//! `updraft inspect`: decodes RTMFP datagrams and prints one JSON object per packet (what Cumulus
//! users know as `--dump`).
//!
//! Startup packets decode with the default key. Session packets decode with keys derived from
//! the IIKeying and RIKeying seen in the input and the responder's DH private key
//! (`--dh-private HEX`), or with keys given directly (`--keys ENC,DEC[,HMAC_ENC,HMAC_DEC]`: the
//! responder's send and receive keys). A packet that cannot be decoded is reported with the
//! reason, and decoding goes on with the next one.
//!
//! Sessions are told apart by session ID and destination address, since different sessions
//! may use the same session ID (rtmfp-cpp gives every initiator 0x02000000). Every packet is
//! decoded on its own: a duplicate in the capture decodes again instead of failing the replay
//! check, and fragments are reassembled by sequence number, so retransmissions and reordering
//! do not garble messages.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;

use rtmfp::crypto::{
    derive_session_keys, fingerprint, read_session_id, DhGroup, DhKeyPair, DirectionOptions,
    HmacMode, KeyingNegotiation, NegotiationFlags, PacketDecoder, PacketMode, SessionKeys,
    AES_KEY_LEN, DEFAULT_HMAC_LEN, DERIVED_LEN, MAX_HMAC_LEN, MIN_HMAC_LEN,
};
use rtmfp::startup::components::{Certificate, KeyComponent};
use rtmfp::wire::{
    options, Chunk, Fragment, Mode, PacketHeader, RawChunks, Reader, UserDataFlags, PADDING_BYTE,
};
use serde_json::{json, Map, Value};

use crate::pcap::{read_capture, Datagram};

/// The usage text of `updraft inspect`.
pub const USAGE: &str = "usage: updraft inspect (--pcap FILE | --raw FILE...) [--dh-private HEX[,HEX...]] [--keys ENC,DEC[,HMAC_ENC,HMAC_DEC]]
  --pcap FILE       a pcap or pcapng capture (UDP over IPv4/IPv6)
  --raw FILE...     files holding one UDP payload each
  --dh-private HEX  the responder's DH private key (big-endian hex); several, comma-separated,
                    for several sessions. Session keys are derived from the IIKeying and
                    RIKeying in the input.
  --keys ENC,DEC    the responder's AES-128 send and receive keys (32 hex digits each). When the
                    session negotiated HMAC, add its HMAC-SHA256 send and receive keys
                    (64 hex digits each). Without a handshake in the input, the checksum mode
                    or HMAC with session sequence numbers is assumed.
Prints one JSON object per datagram.";

/// Command-line options of `updraft inspect`.
#[derive(Debug, Default)]
pub struct InspectArgs {
    /// A pcap or pcapng capture.
    pub pcap: Option<String>,
    /// Raw files, one UDP payload each.
    pub raw: Vec<String>,
    /// The responder's DH private keys, big-endian.
    pub dh_private: Vec<Vec<u8>>,
    /// Keys given directly.
    pub keys: Option<GivenKeys>,
}

/// Session keys given with `--keys`, from the responder's point of view.
#[derive(Debug, Clone, Copy)]
pub struct GivenKeys {
    /// AES key of packets the responder sends.
    pub encrypt: [u8; AES_KEY_LEN],
    /// AES key of packets the responder receives.
    pub decrypt: [u8; AES_KEY_LEN],
    /// HMAC-SHA256 keys (send, receive), when given.
    pub hmac: Option<([u8; DERIVED_LEN], [u8; DERIVED_LEN])>,
}

fn hex_key<const N: usize>(flag: &str, s: &str) -> Result<[u8; N], String> {
    let b = hex::decode(s.trim()).map_err(|e| format!("{flag}: {e}"))?;
    <[u8; N]>::try_from(b.as_slice())
        .map_err(|_| format!("{flag}: expected {N} bytes ({} hex digits)", 2 * N))
}

/// Parses the arguments after `inspect`.
pub fn parse_args(args: &[String]) -> Result<InspectArgs, String> {
    let mut out = InspectArgs::default();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next_if(|v| !v.starts_with("--")).cloned())
                .ok_or(format!("{name} needs a value"))
        };
        match flag {
            "--pcap" => {
                if out.pcap.is_some() {
                    return Err("--pcap given twice".into());
                }
                out.pcap = Some(value("--pcap")?);
            }
            "--raw" => {
                let before = out.raw.len();
                if let Some(v) = inline.clone() {
                    out.raw.push(v);
                }
                while let Some(f) = it.next_if(|f| !f.starts_with("--")) {
                    out.raw.push(f.clone());
                }
                if out.raw.len() == before {
                    return Err("--raw needs at least one file".into());
                }
            }
            "--dh-private" => {
                for v in value("--dh-private")?.split(',') {
                    let key = hex::decode(v.trim()).map_err(|e| format!("--dh-private: {e}"))?;
                    if key.iter().all(|&b| b == 0) {
                        return Err("--dh-private: the key is empty or zero".into());
                    }
                    out.dh_private.push(key);
                }
            }
            "--keys" => {
                let v = value("--keys")?;
                let parts: Vec<&str> = v.split(',').collect();
                let keys = match parts.as_slice() {
                    [e, d] => GivenKeys {
                        encrypt: hex_key("--keys", e)?,
                        decrypt: hex_key("--keys", d)?,
                        hmac: None,
                    },
                    [e, d, he, hd] => GivenKeys {
                        encrypt: hex_key("--keys", e)?,
                        decrypt: hex_key("--keys", d)?,
                        hmac: Some((hex_key("--keys", he)?, hex_key("--keys", hd)?)),
                    },
                    _ => return Err("--keys takes ENC,DEC or ENC,DEC,HMAC_ENC,HMAC_DEC".into()),
                };
                out.keys = Some(keys);
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    match (&out.pcap, out.raw.is_empty()) {
        (None, true) => Err("give --pcap FILE or --raw FILE...".into()),
        (Some(_), false) => Err("give either --pcap or --raw, not both".into()),
        _ => Ok(out),
    }
}

/// Which way a session packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Initiator to responder.
    I2r,
    /// Responder to initiator.
    R2i,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::I2r => "i2r",
            Direction::R2i => "r2i",
        }
    }
}

/// What we learned from an IIKeying.
struct Handshake {
    skic: Vec<u8>,
    initiator_public: Option<(u64, Vec<u8>)>,
    /// The responder's certificate, from the RHello whose cookie the IIKeying echoes.
    responder_certificate: Option<Vec<u8>>,
    peer_id: Option<String>,
}

/// A decoder for the packets of one session direction.
struct SessionEntry {
    /// Where these packets go; unspecified for raw files.
    destination: SocketAddr,
    direction: Option<Direction>,
    decoder: PacketDecoder,
}

/// Largest number of fragments kept per flow while waiting for the rest of a message.
const MAX_PENDING_FRAGMENTS: usize = 4096;

/// Reassembly and TC state of one flow.
#[derive(Default)]
struct FlowState {
    /// Whether the flow carries TC messages, from its metadata (RFC 7425 §5.1.1).
    tc: bool,
    /// Fragments by sequence number, waiting for the rest of their message.
    fragments: BTreeMap<u64, (Fragment, Vec<u8>)>,
}

/// A flow: session ID, destination, flow ID.
type FlowKey = (u32, SocketAddr, u64);

/// Decoding state across datagrams.
pub struct Inspector {
    dh_private: Vec<Vec<u8>>,
    keys: Option<GivenKeys>,
    /// Handshakes by initiator session ID and initiator address.
    handshakes: HashMap<(u32, SocketAddr), Handshake>,
    /// Responder certificates by the cookie of their RHello.
    rhello_certificates: HashMap<Vec<u8>, Vec<u8>>,
    /// Decoders by the session ID packets carry, newest last.
    sessions: HashMap<u32, Vec<SessionEntry>>,
    /// Why a session ID has no keys.
    no_keys: HashMap<u32, String>,
    flows: HashMap<FlowKey, FlowState>,
    /// Datagrams seen.
    count: u64,
}

fn negotiation_json(n: &KeyingNegotiation) -> Value {
    json!({"hmac_flags": n.hmac.0, "hmac_len": n.hmac_len, "sseq_flags": n.sseq.0})
}

/// The options one direction uses, from the two key components (RFC 7425 §4.6.4): the sender
/// sends an option when its flags say "send always" or the receiver's say "request"; the HMAC
/// length is the sender's.
fn direction(sender: &KeyingNegotiation, receiver: &KeyingNegotiation) -> DirectionOptions {
    let hmac = sender.hmac.contains(NegotiationFlags::SEND_ALWAYS)
        || receiver.hmac.contains(NegotiationFlags::REQUEST);
    let sseq = sender.sseq.contains(NegotiationFlags::SEND_ALWAYS)
        || receiver.sseq.contains(NegotiationFlags::REQUEST);
    DirectionOptions {
        hmac_len: hmac.then(|| u8::try_from(sender.hmac_len).unwrap_or(0)),
        sseq,
    }
}

fn packet_mode(hmac_key: Option<[u8; 32]>, opts: DirectionOptions) -> Result<PacketMode, String> {
    let hmac = match (opts.hmac_len, hmac_key) {
        (None, _) => None,
        (Some(len), Some(key)) => Some(HmacMode::new(key, len).map_err(|e| e.to_string())?),
        (Some(_), None) => {
            return Err("HMAC negotiated, but --keys has no HMAC keys: give --keys ENC,DEC,HMAC_ENC,HMAC_DEC or --dh-private".into())
        }
    };
    Ok(PacketMode {
        hmac,
        sseq: opts.sseq,
    })
}

fn direction_json(aes: &[u8], hmac_key: Option<&[u8]>, opts: DirectionOptions) -> Value {
    json!({
        "aes128_key": hex::encode(aes),
        "hmac": opts.hmac_len.is_some(),
        "hmac_len": opts.hmac_len,
        "hmac_sha256_key": opts.hmac_len.and(hmac_key).map(hex::encode),
        "session_sequence_numbers": opts.sseq,
    })
}

/// Big-endian bytes without leading zeros.
fn minimal(b: &[u8]) -> &[u8] {
    let zeros = b.iter().take_while(|&&x| x == 0).count();
    &b[zeros..]
}

/// A decrypted datagram.
struct Found {
    packet: Vec<u8>,
    /// "default" or "session".
    key: &'static str,
    direction: Option<Direction>,
    sseq: Option<u64>,
}

impl Found {
    fn startup(packet: Vec<u8>) -> Self {
        Found {
            packet,
            key: "default",
            direction: None,
            sseq: None,
        }
    }

    fn session(packet: Vec<u8>, direction: Option<Direction>, sseq: Option<u64>) -> Self {
        Found {
            packet,
            key: "session",
            direction,
            sseq,
        }
    }
}

/// The decoders of a keyed session and what to print about it.
struct SessionSetup {
    /// Initiator to responder: decoder and keys JSON.
    i2r: (PacketDecoder, Value),
    /// Responder to initiator: decoder and keys JSON.
    r2i: (PacketDecoder, Value),
    /// Which option the keys came from.
    source: &'static str,
    /// More members for the session JSON.
    extra: Map<String, Value>,
}

/// The outcome of trying one decoder.
enum Attempt {
    Decoded { packet: Vec<u8>, sseq: Option<u64> },
    Failed(String),
}

/// Decodes a copy of `payload` with a fresh copy of `decoder` (no replay state).
fn attempt(decoder: &PacketDecoder, payload: &[u8]) -> Attempt {
    let mut copy = payload.to_vec();
    match decoder.clone().decode(&mut copy) {
        Ok(p) => Attempt::Decoded {
            packet: p.packet.to_vec(),
            sseq: p.sseq,
        },
        Err(e) => Attempt::Failed(e.to_string()),
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

impl Inspector {
    /// A new inspector.
    pub fn new(args: &InspectArgs) -> Self {
        Inspector {
            dh_private: args.dh_private.clone(),
            keys: args.keys,
            handshakes: HashMap::new(),
            rhello_certificates: HashMap::new(),
            sessions: HashMap::new(),
            no_keys: HashMap::new(),
            flows: HashMap::new(),
            count: 0,
        }
    }

    /// Decodes one datagram into a JSON object.
    pub fn inspect(&mut self, d: &Datagram) -> Value {
        self.count += 1;
        let mut obj = Map::new();
        obj.insert("n".into(), json!(self.count));
        obj.insert("time_us".into(), json!(d.time_us));
        obj.insert("src".into(), json!(d.source.to_string()));
        obj.insert("dst".into(), json!(d.destination.to_string()));
        obj.insert("len".into(), json!(d.payload.len()));
        if let Err(reason) = self.decode(d, &mut obj) {
            obj.insert("error".into(), json!(reason));
        }
        Value::Object(obj)
    }

    /// Finds the key for a datagram: session decoders for its destination, then the default key
    /// (startup packets, and RIKeying and Cookie Change, which carry the initiator's session
    /// ID), then the session's decoders for other destinations (address mobility, raw files),
    /// then the `--keys` guesses. Answers the packet, its key name, direction and SSEQ.
    fn decrypt(&mut self, sid: u32, d: &Datagram) -> Result<Found, String> {
        let default_result = attempt(&PacketDecoder::startup(), &d.payload);
        if sid == 0 {
            return match default_result {
                Attempt::Decoded { packet, .. } => Ok(Found::startup(packet)),
                Attempt::Failed(e) => Err(format!("startup packet: {e} with the default key")),
            };
        }
        let entries = self
            .sessions
            .get(&sid)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let (matching, others): (Vec<&SessionEntry>, Vec<&SessionEntry>) = entries
            .iter()
            .rev()
            .partition(|e| e.destination == d.destination);
        let mut first_error = None;
        for e in &matching {
            match attempt(&e.decoder, &d.payload) {
                Attempt::Decoded { packet, sseq } => {
                    return Ok(Found::session(packet, e.direction, sseq))
                }
                Attempt::Failed(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        if let Attempt::Decoded { packet, .. } = default_result {
            return Ok(Found::startup(packet));
        }
        for e in &others {
            match attempt(&e.decoder, &d.payload) {
                Attempt::Decoded { packet, sseq } => {
                    return Ok(Found::session(packet, e.direction, sseq))
                }
                Attempt::Failed(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        if let Some(found) = self.guess_keys(sid, d) {
            return Ok(found);
        }
        Err(match (first_error, self.no_keys.get(&sid)) {
            (Some(e), _) => {
                format!("session 0x{sid:08x}: {e} with the session keys (and with the default key)")
            }
            (None, Some(reason)) => format!("no keys for session 0x{sid:08x}: {reason}"),
            (None, None) if self.keys.is_some() => format!(
                "session 0x{sid:08x}: neither the --keys keys nor the default key decode it"
            ),
            (None, None) => format!(
                "no keys for session 0x{sid:08x} (not a startup packet: bad checksum with the default key); give --dh-private or --keys"
            ),
        })
    }

    /// With `--keys` and no handshake for this session ID: tries both keys, in the checksum
    /// mode with and without SSEQ and, with HMAC keys, HMAC with SSEQ at every valid trailer
    /// length (the default first). The first that decodes is kept for the session.
    fn guess_keys(&mut self, sid: u32, d: &Datagram) -> Option<Found> {
        let keys = self.keys?;
        let candidates = [
            (keys.decrypt, keys.hmac.map(|h| h.1), Direction::I2r),
            (keys.encrypt, keys.hmac.map(|h| h.0), Direction::R2i),
        ];
        let lengths = std::iter::once(DEFAULT_HMAC_LEN)
            .chain((MIN_HMAC_LEN..=MAX_HMAC_LEN).filter(|&l| l != DEFAULT_HMAC_LEN));
        for (aes, hmac_key, dir) in candidates {
            let mut modes = vec![
                PacketMode::STARTUP,
                PacketMode {
                    hmac: None,
                    sseq: true,
                },
            ];
            if let Some(key) = hmac_key {
                modes.extend(lengths.clone().filter_map(|len| {
                    Some(PacketMode {
                        hmac: Some(HmacMode::new(key, len).ok()?),
                        sseq: true,
                    })
                }));
            }
            for mode in modes {
                let decoder = PacketDecoder::new(&aes, mode);
                if let Attempt::Decoded { packet, sseq } = attempt(&decoder, &d.payload) {
                    self.add_session(sid, d.destination, Some(dir), decoder);
                    return Some(Found::session(packet, Some(dir), sseq));
                }
            }
        }
        None
    }

    fn add_session(
        &mut self,
        sid: u32,
        destination: SocketAddr,
        direction: Option<Direction>,
        decoder: PacketDecoder,
    ) {
        let entries = self.sessions.entry(sid).or_default();
        // A new session to the same known address replaces the old one; raw files have no
        // addresses, so there every session is kept.
        if destination != unspecified() {
            entries.retain(|e| e.destination != destination);
        }
        entries.push(SessionEntry {
            destination,
            direction,
            decoder,
        });
        self.no_keys.remove(&sid);
    }

    fn decode(&mut self, d: &Datagram, obj: &mut Map<String, Value>) -> Result<(), String> {
        let sid = read_session_id(&d.payload).map_err(|e| e.to_string())?;
        obj.insert("session_id".into(), json!(format!("0x{sid:08x}")));
        let found = self.decrypt(sid, d)?;
        obj.insert("key".into(), json!(found.key));
        if let Some(dir) = found.direction {
            obj.insert("direction".into(), json!(dir.name()));
        }
        obj.insert("sseq".into(), json!(found.sseq));
        let mut r = Reader::new(&found.packet);
        let header = PacketHeader::parse(&mut r).map_err(|e| format!("packet header: {e}"))?;
        obj.insert("flags".into(), json!(format!("0x{:02x}", header.flags())));
        obj.insert(
            "mode".into(),
            json!(match header.mode {
                Mode::Initiator => "initiator",
                Mode::Responder => "responder",
                Mode::Startup => "startup",
            }),
        );
        obj.insert("time_critical".into(), json!(header.time_critical));
        obj.insert(
            "time_critical_reverse".into(),
            json!(header.time_critical_reverse),
        );
        obj.insert("timestamp".into(), json!(header.timestamp));
        obj.insert("timestamp_echo".into(), json!(header.timestamp_echo));
        let mut chunks = Vec::new();
        let mut ctx: Option<(u64, u64, u64)> = None;
        let mut raw = RawChunks::new(r.rest());
        for (kind, payload) in raw.by_ref() {
            match Chunk::parse(kind, payload) {
                Ok(c) => chunks.push(self.chunk_json(sid, d, &c, &mut ctx)),
                Err(e) => chunks.push(json!({
                    "type": format!("0x{:02x}", kind.0),
                    "name": kind.name(),
                    "error": e.to_string(),
                    "payload": hex::encode(payload),
                })),
            }
        }
        obj.insert("chunks".into(), Value::Array(chunks));
        // After the chunks comes only 0xFF padding (RFC 7016 §2.2.4); anything else is a
        // truncated or malformed chunk.
        let rest = raw.rest();
        let junk = rest.len()
            - rest
                .iter()
                .rev()
                .take_while(|&&b| b == PADDING_BYTE)
                .count();
        let rest = &rest[..junk];
        if !rest.is_empty() {
            obj.insert(
                "trailing".into(),
                json!({"error": "bytes after the last chunk that are neither a chunk nor padding", "hex": hex::encode(rest)}),
            );
        }
        Ok(())
    }

    /// The responder's DH public key for this handshake: the ephemeral key in the SKRC, or the
    /// static key in the responder's certificate for the group the SKIC selected.
    fn responder_public(hs: &Handshake, skrc: &KeyComponent<'_>) -> Result<(u64, Vec<u8>), String> {
        if let Some((group, key)) = skrc.ephemeral_key {
            return Ok((group, key.to_vec()));
        }
        let group = KeyComponent::parse(&hs.skic)
            .ok()
            .and_then(|c| c.group())
            .ok_or("neither the SKRC nor the SKIC names a DH group")?;
        let cert = hs.responder_certificate.as_deref().ok_or(
            "the SKRC has no DH public key and no RHello with the responder's certificate was seen",
        )?;
        Certificate::parse(cert)
            .ok()
            .and_then(|c| c.static_key(group).map(<[u8]>::to_vec))
            .map(|k| (group, k))
            .ok_or_else(|| format!("the SKRC has no DH public key and the responder's certificate has no static key for group {group}"))
    }

    /// Derives the session keys from `--dh-private` (RFC 7425 §4.6.5), from the responder's
    /// point of view.
    fn derive(&self, hs: &Handshake, skrc: &[u8]) -> Result<SessionKeys, String> {
        let component = KeyComponent::parse(skrc).map_err(|e| format!("malformed SKRC: {e}"))?;
        let (group_id, public) = Self::responder_public(hs, &component)?;
        let group =
            DhGroup::from_id(group_id).ok_or_else(|| format!("unsupported DH group {group_id}"))?;
        let pair = self
            .dh_private
            .iter()
            .filter_map(|p| DhKeyPair::from_private(group, p).ok())
            .find(|pair| pair.public_key() == minimal(&public))
            .ok_or_else(|| {
                format!("--dh-private does not match the responder's public key for DH group {group_id}")
            })?;
        let (_, initiator_public) = hs
            .initiator_public
            .as_ref()
            .ok_or("the IIKeying has no initiator DH public key")?;
        let shared = pair
            .compute_shared_secret(initiator_public)
            .map_err(|e| format!("shared secret: {e}"))?;
        Ok(derive_session_keys(&shared, skrc, &hs.skic))
    }

    /// Sets up the decoders of a session from its RIKeying; answers what it printed about the
    /// session. `initiator` is where the RIKeying went, `responder` where it came from.
    fn on_rikeying(
        &mut self,
        sid: u32,
        rsid: u32,
        skrc: &[u8],
        responder: SocketAddr,
        initiator: SocketAddr,
    ) -> Value {
        // The RIKeying goes to the initiator's session ID (RFC 7016 §2.2.2); should it carry 0,
        // the handshake is found by the initiator's address alone. Without addresses (raw
        // files), any handshake of this session ID.
        let hs = self
            .handshakes
            .get_key_value(&(sid, initiator))
            .or_else(|| {
                self.handshakes
                    .iter()
                    .find(|((s, a), _)| if sid == 0 { *a == initiator } else { *s == sid })
            });
        let isid = hs.map_or(sid, |((s, _), _)| *s);
        let hs = hs.map(|(_, h)| h);
        let mut out = json!({
            "initiator_session_id": format!("0x{isid:08x}"),
            "responder_session_id": format!("0x{rsid:08x}"),
            "responder": responder.to_string(),
            "initiator": initiator.to_string(),
        });
        let result = match hs {
            None => Err("no IIKeying seen for this RIKeying".to_string()),
            Some(hs) => {
                out["initiator_peer_id"] = json!(hs.peer_id);
                self.keys_for(hs, skrc)
            }
        };
        match result {
            Ok(setup) => {
                out["keys_from"] = json!(setup.source);
                out["initiator_to_responder"] = setup.i2r.1;
                out["responder_to_initiator"] = setup.r2i.1;
                for (k, v) in setup.extra {
                    out[k] = v;
                }
                self.add_session(rsid, responder, Some(Direction::I2r), setup.i2r.0);
                self.add_session(isid, initiator, Some(Direction::R2i), setup.r2i.0);
            }
            Err(reason) => {
                out["error"] = json!(reason);
                self.no_keys.insert(rsid, reason.clone());
                self.no_keys.insert(isid, reason);
            }
        }
        out
    }

    /// The decoders for both directions of a session, from `--dh-private` or else `--keys`.
    fn keys_for(&self, hs: &Handshake, skrc: &[u8]) -> Result<SessionSetup, String> {
        let initiator_neg = KeyingNegotiation::parse(&hs.skic).unwrap_or_default();
        let responder_neg = KeyingNegotiation::parse(skrc).unwrap_or_default();
        let to_responder = direction(&initiator_neg, &responder_neg);
        let to_initiator = direction(&responder_neg, &initiator_neg);
        let mut reasons = Vec::new();
        if !self.dh_private.is_empty() {
            let setup = self.derive(hs, skrc).and_then(|keys| {
                let (i2r_aes, r2i_aes) = (keys.receive_key(), keys.send_key());
                let m_i2r = packet_mode(Some(keys.rx_hmac_key), to_responder)?;
                let m_r2i = packet_mode(Some(keys.tx_hmac_key), to_initiator)?;
                let mut extra = Map::new();
                extra.insert("initiator_nonce".into(), json!(hex::encode(keys.far_nonce)));
                extra.insert(
                    "responder_nonce".into(),
                    json!(hex::encode(keys.near_nonce)),
                );
                Ok(SessionSetup {
                    i2r: (
                        PacketDecoder::new(&i2r_aes, m_i2r),
                        direction_json(&i2r_aes, Some(&keys.rx_hmac_key), to_responder),
                    ),
                    r2i: (
                        PacketDecoder::new(&r2i_aes, m_r2i),
                        direction_json(&r2i_aes, Some(&keys.tx_hmac_key), to_initiator),
                    ),
                    source: "--dh-private",
                    extra,
                })
            });
            match setup {
                Ok(setup) => return Ok(setup),
                Err(e) => reasons.push(e),
            }
        }
        if let Some(k) = self.keys {
            let (hmac_send, hmac_receive) = (k.hmac.map(|h| h.0), k.hmac.map(|h| h.1));
            let modes = packet_mode(hmac_receive, to_responder)
                .and_then(|m_i2r| Ok((m_i2r, packet_mode(hmac_send, to_initiator)?)));
            match modes {
                Ok((m_i2r, m_r2i)) => {
                    return Ok(SessionSetup {
                        i2r: (
                            PacketDecoder::new(&k.decrypt, m_i2r),
                            direction_json(
                                &k.decrypt,
                                hmac_receive.as_ref().map(|h| &h[..]),
                                to_responder,
                            ),
                        ),
                        r2i: (
                            PacketDecoder::new(&k.encrypt, m_r2i),
                            direction_json(
                                &k.encrypt,
                                hmac_send.as_ref().map(|h| &h[..]),
                                to_initiator,
                            ),
                        ),
                        source: "--keys",
                        extra: Map::new(),
                    })
                }
                Err(e) => reasons.push(e),
            }
        }
        if reasons.is_empty() {
            reasons.push("give --dh-private or --keys to decode this session".into());
        }
        Err(reasons.join("; "))
    }

    fn chunk_json(
        &mut self,
        sid: u32,
        d: &Datagram,
        c: &Chunk<'_>,
        ctx: &mut Option<(u64, u64, u64)>,
    ) -> Value {
        let kind = format!("0x{:02x}", c.kind().0);
        let name = c.kind().name();
        let mut v = json!({"type": kind, "name": name});
        match c {
            Chunk::IHello(h) => {
                v["epd"] = epd_json(h.epd);
                v["tag"] = json!(hex::encode(h.tag));
            }
            Chunk::ForwardedIHello(f) => {
                v["epd"] = epd_json(f.epd);
                v["reply_address"] = json!(f.reply_address.addr.to_string());
                v["tag"] = json!(hex::encode(f.tag));
            }
            Chunk::RHello(h) => {
                v["tag_echo"] = json!(hex::encode(h.tag_echo));
                v["cookie"] = json!(hex::encode(h.cookie));
                v["certificate"] = cert_json(h.certificate);
                if let Ok(fp) = fingerprint(h.certificate) {
                    v["responder_fingerprint"] = json!(hex::encode(fp.0));
                }
                self.rhello_certificates
                    .insert(h.cookie.to_vec(), h.certificate.to_vec());
            }
            Chunk::Redirect(r) => {
                v["tag_echo"] = json!(hex::encode(r.tag_echo));
                v["addresses"] = r
                    .addresses()
                    .map(|a| a.map_or(json!("malformed"), |a| json!({"address": a.addr.to_string(), "origin": format!("{:?}", a.origin)})))
                    .collect();
            }
            Chunk::CookieChange(cc) => {
                v["old_cookie"] = json!(hex::encode(cc.old_cookie));
                v["new_cookie"] = json!(hex::encode(cc.new_cookie));
            }
            Chunk::IIKeying(k) => {
                let isid = k.initiator_session_id.0;
                v["initiator_session_id"] = json!(format!("0x{isid:08x}"));
                v["cookie_echo"] = json!(hex::encode(k.cookie_echo));
                v["certificate"] = cert_json(k.certificate);
                let peer_id = fingerprint(k.certificate).ok().map(|fp| hex::encode(fp.0));
                v["peer_id"] = json!(peer_id);
                v["skic"] = component_json(k.skic);
                v["signature"] = json!(hex::encode(k.signature));
                let cert = Certificate::parse(k.certificate).ok();
                let comp = KeyComponent::parse(k.skic).ok();
                let public = comp.and_then(|c| match (c.ephemeral_key, c.group_select) {
                    (Some((g, key)), _) => Some((g, key.to_vec())),
                    (None, Some(g)) => cert
                        .as_ref()
                        .and_then(|c| c.static_key(g))
                        .map(|k| (g, k.to_vec())),
                    (None, None) => None,
                });
                let responder_certificate = self.rhello_certificates.get(k.cookie_echo).cloned();
                self.handshakes.insert(
                    (isid, d.source),
                    Handshake {
                        skic: k.skic.to_vec(),
                        initiator_public: public,
                        responder_certificate,
                        peer_id,
                    },
                );
            }
            Chunk::RIKeying(k) => {
                let rsid = k.responder_session_id.0;
                v["responder_session_id"] = json!(format!("0x{rsid:08x}"));
                v["skrc"] = component_json(k.skrc);
                v["signature"] = json!(hex::encode(k.signature));
                v["session"] = self.on_rikeying(sid, rsid, k.skrc, d.source, d.destination);
            }
            Chunk::Ping(p) => v["body"] = json!(hex::encode(p.body)),
            Chunk::PingReply(p) => v["body"] = json!(hex::encode(p.body)),
            Chunk::UserData(u) => {
                *ctx = Some((u.flow_id.0, u.seq, u.fsn_offset));
                v["flow"] = json!(u.flow_id.0);
                v["seq"] = json!(u.seq);
                v["fsn_offset"] = json!(u.fsn_offset);
                self.user_data_json(
                    (sid, d.destination, u.flow_id.0),
                    &mut v,
                    u.seq,
                    u.flags,
                    u.options,
                    u.data,
                );
            }
            Chunk::NextUserData(n) => {
                let Some((flow, seq, fsn)) = ctx.map(|(f, s, o)| (f, s + 1, o + 1)) else {
                    v["error"] = json!("Next User Data without a preceding User Data");
                    return v;
                };
                *ctx = Some((flow, seq, fsn));
                v["flow"] = json!(flow);
                v["seq"] = json!(seq);
                v["fsn_offset"] = json!(fsn);
                self.user_data_json(
                    (sid, d.destination, flow),
                    &mut v,
                    seq,
                    n.flags,
                    n.options,
                    n.data,
                );
            }
            Chunk::RangeAck(a) => {
                v["flow"] = json!(a.flow_id.0);
                v["buffer_blocks"] = json!(a.buffer_blocks);
                v["cum_ack"] = json!(a.cum_ack);
                v["ranges"] = a.ranges().map(|(f, t)| json!([f, t])).collect();
            }
            Chunk::BitmapAck(a) => {
                v["flow"] = json!(a.flow_id.0);
                v["buffer_blocks"] = json!(a.buffer_blocks);
                v["cum_ack"] = json!(a.cum_ack);
                v["ranges"] = a.ranges().map(|(f, t)| json!([f, t])).collect();
            }
            Chunk::BufferProbe(p) => v["flow"] = json!(p.flow_id.0),
            Chunk::FlowExceptionReport(x) => {
                v["flow"] = json!(x.flow_id.0);
                v["code"] = json!(x.exception);
            }
            Chunk::EcnReport(e) => v["ce_count"] = json!(e.ce_count),
            Chunk::PacketFragment(f) => {
                v["more"] = json!(f.more);
                v["packet_id"] = json!(f.packet_id);
                v["fragment_num"] = json!(f.fragment_num);
                v["len"] = json!(f.fragment.len());
            }
            Chunk::Unknown { payload, .. } => v["payload"] = json!(hex::encode(payload)),
            Chunk::Close(_) | Chunk::CloseAck(_) => {}
        }
        v
    }

    fn user_data_json(
        &mut self,
        key: FlowKey,
        v: &mut Value,
        seq: u64,
        flags: UserDataFlags,
        opts: Option<&[u8]>,
        data: &[u8],
    ) {
        v["fragment"] = json!(format!("{:?}", flags.fragment).to_lowercase());
        v["abandoned"] = json!(flags.abandoned);
        v["fin"] = json!(flags.fin);
        let flow = self.flows.entry(key).or_default();
        if let Some(opts) = opts {
            if let Some(Ok(meta)) = options(opts).find(|o| o.as_ref().is_ok_and(|o| o.kind == 0)) {
                let parsed = rtmfp::flash::metadata::FlowMetadata::parse(meta.value);
                flow.tc = matches!(parsed, Ok(rtmfp::flash::metadata::FlowMetadata::Tc { .. }));
            }
            v["options"] = options(opts)
                .map(|o| match o {
                    Ok(o) => json!({"type": o.kind, "value": hex::encode(o.value)}),
                    Err(e) => json!({"error": e.to_string()}),
                })
                .collect();
        }
        v["data_len"] = json!(data.len());
        // An abandoned sequence number carries no data (RFC 7016 §2.3.11).
        if flags.abandoned {
            return;
        }
        let message = match flags.fragment {
            Fragment::Whole => Some(data.to_vec()),
            fragment => {
                flow.fragments.insert(seq, (fragment, data.to_vec()));
                let message = take_message(&mut flow.fragments, seq);
                while flow.fragments.len() > MAX_PENDING_FRAGMENTS {
                    flow.fragments.pop_first();
                }
                message
            }
        };
        let Some(m) = message else { return };
        if flow.tc {
            v["message"] = crate::inspect_flash::message_json(&m);
        } else {
            v["message_len"] = json!(m.len());
            v["message_hex"] = json!(hex::encode(m.get(..m.len().min(64)).unwrap_or_default()));
        }
    }
}

/// Takes the whole message that the fragment at `seq` completes, if the fragments from its
/// Begin to its End are all there (RFC 7016 §3.6.3.3).
fn take_message(fragments: &mut BTreeMap<u64, (Fragment, Vec<u8>)>, seq: u64) -> Option<Vec<u8>> {
    let mut begin = seq;
    loop {
        match fragments.get(&begin)?.0 {
            Fragment::Begin => break,
            Fragment::Middle => begin = begin.checked_sub(1)?,
            Fragment::End if begin == seq => begin = begin.checked_sub(1)?,
            Fragment::End | Fragment::Whole => return None,
        }
    }
    let mut end = seq;
    loop {
        match fragments.get(&end)?.0 {
            Fragment::End => break,
            Fragment::Middle => end = end.checked_add(1)?,
            Fragment::Begin if end == begin => end = end.checked_add(1)?,
            Fragment::Begin | Fragment::Whole => return None,
        }
    }
    let mut message = Vec::new();
    for s in begin..=end {
        let (_, data) = fragments.remove(&s)?;
        message.extend_from_slice(&data);
    }
    Some(message)
}

fn epd_json(epd: &[u8]) -> Value {
    options(epd)
        .map(|o| match o {
            Ok(o) if o.kind == 0x0A => {
                json!({"type": o.kind, "ancillary_data": String::from_utf8_lossy(o.value)})
            }
            Ok(o) => json!({"type": o.kind, "value": hex::encode(o.value)}),
            Err(e) => json!({"error": e.to_string()}),
        })
        .collect()
}

fn cert_json(cert: &[u8]) -> Value {
    let opts: Vec<Value> = options(cert)
        .map(|o| match o {
            Ok(o) => json!({"type": o.kind, "len": o.value.len(), "value": hex::encode(o.value.get(..o.value.len().min(8)).unwrap_or_default())}),
            Err(e) => json!({"error": e.to_string()}),
        })
        .collect();
    json!({"len": cert.len(), "options": opts})
}

fn component_json(c: &[u8]) -> Value {
    let neg = KeyingNegotiation::parse(c)
        .map(|n| negotiation_json(&n))
        .unwrap_or(Value::Null);
    let comp = KeyComponent::parse(c).ok();
    json!({
        "len": c.len(),
        "dh_group": comp.and_then(|c| c.group()),
        "negotiation": neg,
    })
}

/// Runs `updraft inspect`; answers the process exit code: 0, 1 when a capture is cut short
/// (the datagrams before the cut are printed), 2 for bad arguments or unreadable files.
pub fn run(args: &[String]) -> u8 {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("updraft inspect: {e}\n{USAGE}");
            return 2;
        }
    };
    let mut status = 0;
    // Each datagram with the raw file it came from.
    let datagrams: Vec<(Datagram, Option<&str>)> = if let Some(path) = &args.pcap {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("updraft inspect: {path}: {e}");
                return 2;
            }
        };
        let capture = match read_capture(&data) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("updraft inspect: {path}: {e}");
                return 2;
            }
        };
        if let Some(e) = capture.error {
            eprintln!("updraft inspect: {path}: {e}; decoding the datagrams before it");
            status = 1;
        }
        capture.datagrams.into_iter().map(|d| (d, None)).collect()
    } else {
        let mut out = Vec::new();
        for path in &args.raw {
            match std::fs::read(path) {
                Ok(payload) => out.push((
                    Datagram {
                        time_us: 0,
                        source: unspecified(),
                        destination: unspecified(),
                        payload,
                    },
                    Some(path.as_str()),
                )),
                Err(e) => {
                    eprintln!("updraft inspect: {path}: {e}");
                    return 2;
                }
            }
        }
        out
    };
    let mut inspector = Inspector::new(&args);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (d, file) in &datagrams {
        let mut line = inspector.inspect(d);
        if let Some(file) = file {
            line["file"] = json!(file);
        }
        // A closed pipe (`| head`) ends the output quietly.
        if writeln!(out, "{line}").is_err() {
            return status;
        }
    }
    if out.flush().is_err() {
        return status;
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtmfp::crypto::PacketEncoder;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");
    /// librtmfp-cumulus-connect.keys.json: responder send and receive keys.
    const CUMULUS_ENC: &str = "5584e5e9dbe9bb0480a3ad80ff6798c2";
    const CUMULUS_DEC: &str = "f949687af1db0004a8340522b2c670a0";

    fn cumulus() -> Vec<Datagram> {
        let pcap = std::fs::read(format!("{FIXTURES}/librtmfp-cumulus-connect.pcap")).unwrap();
        read_capture(&pcap).unwrap().datagrams
    }

    fn args() -> InspectArgs {
        parse_args(&[
            "--raw".into(),
            "x".into(),
            "--keys".into(),
            format!("{CUMULUS_ENC},{CUMULUS_DEC}"),
        ])
        .unwrap()
    }

    /// Every plaintext byte of every session packet of a real capture, changed and encrypted
    /// again with the session keys, so that the chunk, flow and AMF parsers see it: no panic,
    /// one object per datagram.
    #[test]
    fn mutated_plaintext_never_panics() {
        let datagrams = cumulus();
        let keys = args().keys.unwrap();
        for (i, original) in datagrams.iter().enumerate().skip(4) {
            let key = if original.destination.port() == 19361 {
                keys.decrypt
            } else {
                keys.encrypt
            };
            let mut copy = original.payload.clone();
            let decoded = PacketDecoder::new(&key, PacketMode::STARTUP)
                .decode(&mut copy)
                .expect("fixture decodes");
            let (sid, plain) = (decoded.session_id, decoded.packet.to_vec());
            for at in 0..plain.len() {
                for flip in [0x01, 0x80, 0xFF] {
                    let mut inspector = Inspector::new(&args());
                    // The handshake, so that flows and keys are set up as in the capture.
                    for d in &datagrams[..4] {
                        inspector.inspect(d);
                    }
                    let mut mutated = plain.clone();
                    mutated[at] ^= flip;
                    let mut encoder = PacketEncoder::new(&key, PacketMode::STARTUP);
                    let mut out = vec![0u8; encoder.encoded_len(mutated.len())];
                    let n = encoder.encode(sid, &mutated, &mut out).unwrap();
                    out.truncate(n);
                    let d = Datagram {
                        payload: out,
                        ..original.clone()
                    };
                    let v = inspector.inspect(&d);
                    assert!(v.is_object(), "datagram {i} byte {at}");
                    // Whatever the damage, the session key still decodes it.
                    assert_eq!(v["key"], "session", "datagram {i} byte {at}: {v}");
                }
            }
        }
    }

    #[test]
    fn take_message_goes_by_sequence_number() {
        let mut f = BTreeMap::new();
        f.insert(5, (Fragment::Middle, b"b".to_vec()));
        assert_eq!(take_message(&mut f, 5), None);
        f.insert(6, (Fragment::End, b"c".to_vec()));
        assert_eq!(take_message(&mut f, 6), None);
        f.insert(4, (Fragment::Begin, b"a".to_vec()));
        assert_eq!(take_message(&mut f, 4), Some(b"abc".to_vec()));
        assert!(f.is_empty());
        // A gap keeps the pieces; an End before a Begin is not joined across.
        f.insert(1, (Fragment::Begin, b"x".to_vec()));
        f.insert(3, (Fragment::End, b"z".to_vec()));
        assert_eq!(take_message(&mut f, 3), None);
        f.insert(u64::MAX, (Fragment::End, vec![]));
        assert_eq!(take_message(&mut f, u64::MAX), None);
        f.insert(0, (Fragment::Middle, vec![]));
        assert_eq!(take_message(&mut f, 0), None);
        assert_eq!(f.len(), 4);
    }

    #[test]
    fn direction_follows_the_component_flags() {
        let flash = KeyingNegotiation {
            hmac: NegotiationFlags(0x02),
            hmac_len: 10,
            sseq: NegotiationFlags(0x02),
        };
        let cumulus = KeyingNegotiation::default();
        let cpp = KeyingNegotiation {
            hmac: NegotiationFlags(0x07),
            hmac_len: 16,
            sseq: NegotiationFlags(0x07),
        };
        assert_eq!(direction(&flash, &cumulus), DirectionOptions::default());
        assert_eq!(direction(&cumulus, &flash), DirectionOptions::default());
        let both = DirectionOptions {
            hmac_len: Some(16),
            sseq: true,
        };
        assert_eq!(direction(&cpp, &cpp), both);
        // A requesting receiver makes a send-on-request sender use its own length.
        assert_eq!(
            direction(&flash, &cpp),
            DirectionOptions {
                hmac_len: Some(10),
                sseq: true
            }
        );
    }
}
