//! `updraft inspect`: decodes RTMFP datagrams and prints one JSON object per packet (what Cumulus
//! users know as `--dump`).
//!
//! Startup packets decode with the default key. Session packets decode with keys derived from
//! the IIKeying and RIKeying seen in the input and the responder's DH private key
//! (`--dh-private HEX`), or with keys given directly (`--keys ENC,DEC`: the responder's send and
//! receive keys). A packet that cannot be decoded is reported with the reason, and decoding goes
//! on with the next one.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;

use rtmfp::crypto::{
    derive_session_keys, fingerprint, read_session_id, DhGroup, DhKeyPair, DirectionOptions,
    HmacMode, KeyingNegotiation, NegotiationFlags, PacketDecoder, PacketMode, SessionKeys,
};
use rtmfp::startup::components::{Certificate, KeyComponent};
use rtmfp::wire::{options, Chunk, ChunkIter, Fragment, Mode, PacketHeader, Reader, UserDataFlags};
use serde_json::{json, Map, Value};

use crate::pcap::{read_capture, Datagram};

/// Command-line options of `updraft inspect`.
#[derive(Debug, Default)]
pub struct InspectArgs {
    /// A pcap or pcapng capture.
    pub pcap: Option<String>,
    /// Raw files, one UDP payload each.
    pub raw: Vec<String>,
    /// The responder's DH private key, hex.
    pub dh_private: Option<Vec<u8>>,
    /// The responder's send and receive AES keys.
    pub keys: Option<([u8; 16], [u8; 16])>,
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
                .or_else(|| it.next().cloned())
                .ok_or(format!("{name} needs a value"))
        };
        match flag {
            "--pcap" => out.pcap = Some(value("--pcap")?),
            "--raw" => {
                if let Some(v) = inline.clone() {
                    out.raw.push(v);
                }
                while let Some(f) = it.next_if(|f| !f.starts_with("--")) {
                    out.raw.push(f.clone());
                }
            }
            "--dh-private" => {
                let v = value("--dh-private")?;
                out.dh_private =
                    Some(hex::decode(v.trim()).map_err(|e| format!("--dh-private: {e}"))?);
            }
            "--keys" => {
                let v = value("--keys")?;
                let (e, d) = v
                    .split_once(',')
                    .ok_or("--keys takes ENC,DEC (hex AES-128 keys)")?;
                let parse = |s: &str| -> Result<[u8; 16], String> {
                    let b = hex::decode(s.trim()).map_err(|e| format!("--keys: {e}"))?;
                    <[u8; 16]>::try_from(b.as_slice())
                        .map_err(|_| "--keys: each key is 16 bytes (32 hex digits)".to_string())
                };
                out.keys = Some((parse(e)?, parse(d)?));
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if out.pcap.is_none() && out.raw.is_empty() {
        return Err("give --pcap FILE or --raw FILE...".into());
    }
    Ok(out)
}

/// What we learned from a handshake.
#[derive(Default)]
struct Handshake {
    skic: Vec<u8>,
    initiator_public: Option<(u64, Vec<u8>)>,
    initiator: Option<SocketAddr>,
}

struct SessionCrypto {
    /// Decoder for packets addressed to this session ID.
    decoder: PacketDecoder,
}

/// Decoding state across datagrams.
pub struct Inspector {
    dh_private: Option<Vec<u8>>,
    keys: Option<([u8; 16], [u8; 16])>,
    /// Pending handshakes by initiator session ID.
    handshakes: HashMap<u32, Handshake>,
    /// Decoders by the session ID packets carry.
    sessions: HashMap<u32, SessionCrypto>,
    /// Fragments being reassembled, by (session ID, flow ID).
    reassembly: HashMap<(u32, u64), Vec<u8>>,
    /// Whether a flow carries TC messages, from its metadata, by (session ID, flow ID).
    tc_flows: HashMap<(u32, u64), bool>,
    /// Datagrams seen.
    count: u64,
}

fn negotiation_json(n: &KeyingNegotiation) -> Value {
    json!({"hmac_flags": n.hmac.0, "hmac_len": n.hmac_len, "sseq_flags": n.sseq.0})
}

/// The options one direction uses, by rtmfp-cpp's rule (RFC 7425 §4.6.4): the sender sends when
/// it said "send always" or the receiver said "request".
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

fn mode(key: &[u8; 32], opts: DirectionOptions) -> Option<PacketMode> {
    let hmac = match opts.hmac_len {
        Some(len) => Some(HmacMode::new(*key, len).ok()?),
        None => None,
    };
    Some(PacketMode {
        hmac,
        sseq: opts.sseq,
    })
}

impl Inspector {
    /// A new inspector.
    pub fn new(args: &InspectArgs) -> Self {
        Inspector {
            dh_private: args.dh_private.clone(),
            keys: args.keys,
            handshakes: HashMap::new(),
            sessions: HashMap::new(),
            reassembly: HashMap::new(),
            tc_flows: HashMap::new(),
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
        match self.decode(d, &mut obj) {
            Ok(()) => {}
            Err(reason) => {
                obj.insert("error".into(), json!(reason));
            }
        }
        Value::Object(obj)
    }

    fn decode(&mut self, d: &Datagram, obj: &mut Map<String, Value>) -> Result<(), String> {
        let sid = read_session_id(&d.payload).map_err(|e| e.to_string())?;
        obj.insert("session_id".into(), json!(format!("0x{sid:08x}")));
        let mut datagram = d.payload.clone();
        let mut startup = PacketDecoder::startup();
        // Startup packets (and RIKeying/Cookie Change, sent with the initiator's session ID) use
        // the default key; try it first for session 0 and for unknown IDs.
        let (packet, key) = if sid == 0 || !self.sessions.contains_key(&sid) {
            match startup.decode(&mut datagram) {
                Ok(p) => {
                    obj.insert("sseq".into(), Value::Null);
                    (p.packet.to_vec(), "default")
                }
                Err(e) => {
                    self.try_keys(sid, d);
                    let Some(s) = self.sessions.get_mut(&sid) else {
                        return Err(format!(
                            "no key for session 0x{sid:08x} ({e} with the default key)"
                        ));
                    };
                    let mut datagram = d.payload.clone();
                    let p = s.decoder.decode(&mut datagram).map_err(|e| e.to_string())?;
                    obj.insert("sseq".into(), json!(p.sseq));
                    (p.packet.to_vec(), "session")
                }
            }
        } else {
            let s = self.sessions.get_mut(&sid).ok_or("no session")?;
            let p = s.decoder.decode(&mut datagram).map_err(|e| e.to_string())?;
            obj.insert("sseq".into(), json!(p.sseq));
            (p.packet.to_vec(), "session")
        };
        obj.insert("key".into(), json!(key));
        let mut r = Reader::new(&packet);
        let header = PacketHeader::parse(&mut r).map_err(|e| e.to_string())?;
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
        for c in ChunkIter::new(r.rest()) {
            match c {
                Ok(c) => chunks.push(self.chunk_json(sid, d, &c, &mut ctx)),
                Err(e) => {
                    chunks.push(json!({"error": e.to_string()}));
                    break;
                }
            }
        }
        obj.insert("chunks".into(), Value::Array(chunks));
        Ok(())
    }

    /// With `--keys`, a session ID we have not seen keyed yet gets decoders from the given keys
    /// (checksum mode unless a handshake said otherwise).
    fn try_keys(&mut self, sid: u32, d: &Datagram) {
        let Some((enc, dec)) = self.keys else { return };
        if self.sessions.contains_key(&sid) {
            return;
        }
        // Packets to the responder use its receive key; to the initiator, its send key. Without
        // a handshake we cannot tell which end this session ID belongs to: try both.
        for key in [dec, enc] {
            let mut decoder = PacketDecoder::new(&key, PacketMode::STARTUP);
            let mut copy = d.payload.clone();
            if decoder.decode(&mut copy).is_ok() {
                self.sessions.insert(
                    sid,
                    SessionCrypto {
                        decoder: PacketDecoder::new(&key, PacketMode::STARTUP),
                    },
                );
                return;
            }
        }
    }

    fn on_rikeying(&mut self, isid: u32, rsid: u32, skrc: &[u8], responder: SocketAddr) -> Value {
        let Some(hs) = self.handshakes.remove(&isid) else {
            return json!("no IIKeying seen for this RIKeying");
        };
        let far_neg = KeyingNegotiation::parse(&hs.skic).unwrap_or_default();
        let near_neg = KeyingNegotiation::parse(skrc).unwrap_or_default();
        let to_responder = direction(&far_neg, &near_neg);
        let to_initiator = direction(&near_neg, &far_neg);
        let keys: Option<SessionKeys> = match (&self.dh_private, self.keys) {
            (Some(private), _) => {
                let Ok(component) = KeyComponent::parse(skrc) else {
                    return json!("malformed SKRC");
                };
                let Some((group_id, public)) = component.ephemeral_key else {
                    return json!("SKRC has no ephemeral key");
                };
                let Some(group) = DhGroup::from_id(group_id) else {
                    return json!("unsupported DH group");
                };
                let Ok(pair) = DhKeyPair::from_private(group, private) else {
                    return json!("bad --dh-private");
                };
                if pair.public_key() != public {
                    return json!("--dh-private does not match this RIKeying's public key");
                }
                let Some((_, initiator_public)) = hs.initiator_public.as_ref() else {
                    return json!("no initiator public key");
                };
                match pair.compute_shared_secret(initiator_public) {
                    Ok(s) => Some(derive_session_keys(&s, skrc, &hs.skic)),
                    Err(e) => return json!(format!("shared secret: {e}")),
                }
            }
            (None, Some((enc, dec))) => {
                let (m_r, m_i) = (mode(&[0; 32], to_responder), mode(&[0; 32], to_initiator));
                if to_responder.hmac_len.is_some() || to_initiator.hmac_len.is_some() {
                    return json!("HMAC negotiated: --keys cannot authenticate; use --dh-private");
                }
                if let (Some(m_r), Some(m_i)) = (m_r, m_i) {
                    self.sessions.insert(
                        rsid,
                        SessionCrypto {
                            decoder: PacketDecoder::new(&dec, m_r),
                        },
                    );
                    self.sessions.insert(
                        isid,
                        SessionCrypto {
                            decoder: PacketDecoder::new(&enc, m_i),
                        },
                    );
                }
                None
            }
            (None, None) => None,
        };
        let mut out = json!({
            "initiator_session_id": format!("0x{isid:08x}"),
            "responder_session_id": format!("0x{rsid:08x}"),
            "responder": responder.to_string(),
            "initiator": hs.initiator.map(|a| a.to_string()),
        });
        if let Some(keys) = keys {
            let (Some(m_r), Some(m_i)) = (
                mode(&keys.rx_hmac_key, to_responder),
                mode(&keys.tx_hmac_key, to_initiator),
            ) else {
                return json!("invalid negotiated HMAC length");
            };
            self.sessions.insert(
                rsid,
                SessionCrypto {
                    decoder: PacketDecoder::new(&keys.receive_key(), m_r),
                },
            );
            self.sessions.insert(
                isid,
                SessionCrypto {
                    decoder: PacketDecoder::new(&keys.send_key(), m_i),
                },
            );
            out["initiator_to_responder_key"] = json!(hex::encode(keys.receive_key()));
            out["responder_to_initiator_key"] = json!(hex::encode(keys.send_key()));
            out["initiator_to_responder_hmac"] = json!(to_responder.hmac_len);
            out["initiator_to_responder_sseq"] = json!(to_responder.sseq);
            out["responder_to_initiator_hmac"] = json!(to_initiator.hmac_len);
            out["responder_to_initiator_sseq"] = json!(to_initiator.sseq);
        }
        out
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
                if let Ok(fp) = fingerprint(k.certificate) {
                    v["peer_id"] = json!(hex::encode(fp.0));
                }
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
                self.handshakes.insert(
                    isid,
                    Handshake {
                        skic: k.skic.to_vec(),
                        initiator_public: public,
                        initiator: Some(d.source),
                    },
                );
            }
            Chunk::RIKeying(k) => {
                let rsid = k.responder_session_id.0;
                v["responder_session_id"] = json!(format!("0x{rsid:08x}"));
                v["skrc"] = component_json(k.skrc);
                v["signature"] = json!(hex::encode(k.signature));
                v["session"] = self.on_rikeying(sid, rsid, k.skrc, d.source);
            }
            Chunk::Ping(p) => v["body"] = json!(hex::encode(p.body)),
            Chunk::PingReply(p) => v["body"] = json!(hex::encode(p.body)),
            Chunk::UserData(u) => {
                *ctx = Some((u.flow_id.0, u.seq, u.fsn_offset));
                v["flow"] = json!(u.flow_id.0);
                v["seq"] = json!(u.seq);
                v["fsn_offset"] = json!(u.fsn_offset);
                self.user_data_json(sid, &mut v, u.flow_id.0, u.flags, u.options, u.data);
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
                self.user_data_json(sid, &mut v, flow, n.flags, n.options, n.data);
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
        sid: u32,
        v: &mut Value,
        flow: u64,
        flags: UserDataFlags,
        opts: Option<&[u8]>,
        data: &[u8],
    ) {
        v["fragment"] = json!(format!("{:?}", flags.fragment).to_lowercase());
        v["abandoned"] = json!(flags.abandoned);
        v["fin"] = json!(flags.fin);
        if let Some(opts) = opts {
            if let Some(Ok(meta)) = options(opts).find(|o| o.as_ref().is_ok_and(|o| o.kind == 0)) {
                let is_tc = rtmfp::flash::metadata::FlowMetadata::parse(meta.value)
                    .is_ok_and(|m| matches!(m, rtmfp::flash::metadata::FlowMetadata::Tc { .. }));
                self.tc_flows.insert((sid, flow), is_tc);
            }
            v["options"] = options(opts)
                .map(|o| match o {
                    Ok(o) => json!({"type": o.kind, "value": hex::encode(o.value)}),
                    Err(e) => json!({"error": e.to_string()}),
                })
                .collect();
        }
        v["data_len"] = json!(data.len());
        if flags.abandoned {
            self.reassembly.remove(&(sid, flow));
            return;
        }
        let message = match flags.fragment {
            Fragment::Whole => Some(data.to_vec()),
            Fragment::Begin => {
                self.reassembly.insert((sid, flow), data.to_vec());
                None
            }
            Fragment::Middle => {
                if let Some(buf) = self.reassembly.get_mut(&(sid, flow)) {
                    buf.extend_from_slice(data);
                }
                None
            }
            Fragment::End => self.reassembly.remove(&(sid, flow)).map(|mut buf| {
                buf.extend_from_slice(data);
                buf
            }),
        };
        if let Some(m) = message {
            if self.tc_flows.get(&(sid, flow)).copied().unwrap_or(false) {
                v["message"] = crate::inspect_flash::message_json(&m);
            } else {
                v["message_hex"] = json!(hex::encode(m.get(..m.len().min(64)).unwrap_or_default()));
            }
        }
    }
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

/// Runs `updraft inspect`; answers the process exit code.
pub fn run(args: &[String]) -> u8 {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("updraft inspect: {e}\nusage: updraft inspect (--pcap FILE | --raw FILE...) [--dh-private HEX] [--keys ENC,DEC]");
            return 2;
        }
    };
    let datagrams: Vec<Datagram> = if let Some(path) = &args.pcap {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("updraft inspect: {path}: {e}");
                return 2;
            }
        };
        match read_capture(&data) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("updraft inspect: {path}: {e}");
                return 2;
            }
        }
    } else {
        let unspecified: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut out = Vec::new();
        for path in &args.raw {
            match std::fs::read(path) {
                Ok(payload) => out.push(Datagram {
                    time_us: 0,
                    source: unspecified,
                    destination: unspecified,
                    payload,
                }),
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
    for d in &datagrams {
        // A closed pipe (`| head`) ends the output quietly.
        if writeln!(out, "{}", inspector.inspect(d)).is_err() {
            return 0;
        }
    }
    if out.flush().is_err() {
        return 0;
    }
    0
}
