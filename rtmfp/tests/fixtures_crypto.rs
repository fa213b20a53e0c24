//! Known-answer tests of `rtmfp::crypto` against every datagram captured in
//! `../shared/fixtures` (see its README): key derivation from `NAME.keys.json`, negotiation of
//! HMAC and SSEQ, decoding (and byte-exact re-encoding) of all 390 datagrams with the expected
//! values of `NAME/decoded.tsv`, DH group selection, public-key validation and peer IDs.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use rtmfp::crypto::{
    derive_session_keys, fingerprint, negotiate, DirectionOptions, HmacMode, KeyingNegotiation,
    NegotiationFlags, NegotiationPolicy, OptionPolicy, PacketDecoder, PacketEncoder, PacketMode,
};
#[cfg(feature = "dh")]
use rtmfp::crypto::{select_group, validate_public_key, DhGroup};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Number of datagrams in all captures together (fixtures README).
const EXPECTED_DATAGRAMS: usize = 390;
/// Packet header flags (RFC 7016 §2.2.4).
const FLAG_TIMESTAMP: u8 = 0x08;
const FLAG_TIMESTAMP_ECHO: u8 = 0x04;
/// Chunk types (RFC 7016 §2.3).
const CHUNK_IIKEYING: u8 = 0x38;
const CHUNK_RHELLO: u8 = 0x70;
const CHUNK_IHELLO: u8 = 0x30;
/// Certificate option: supported ephemeral DH group (RFC 7425 §4.3; rtmfp-cpp code).
#[cfg(feature = "dh")]
const CERT_OPTION_SUPPORTED_DH_GROUP: u64 = 0x15;
/// Certificate option: static DH public key (RFC 7425 §4.3; rtmfp-cpp code).
#[cfg(feature = "dh")]
const CERT_OPTION_DH_PUBLIC_KEY: u64 = 0x1D;
/// Keying option: ephemeral DH public key (RFC 7425 §4.6; rtmfp-cpp code).
#[cfg(feature = "dh")]
const KEYING_OPTION_DH_PUBLIC_KEY: u64 = 0x0D;
/// Keying option: DH group select (RFC 7425 §4.6; rtmfp-cpp code).
#[cfg(feature = "dh")]
const KEYING_OPTION_DH_GROUP_SELECT: u64 = 0x1D;

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

fn hex_bytes(value: &Value) -> Vec<u8> {
    hex::decode(value.as_str().expect("hex string")).expect("valid hex")
}

fn hex_u32(text: &str) -> u32 {
    u32::from_str_radix(text.trim_start_matches("0x"), 16).expect("hex number")
}

fn vlu(buf: &[u8]) -> (u64, usize) {
    let mut value = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("bad VLU");
}

/// Options before the first marker as (type, value) pairs.
#[cfg(feature = "dh")]
fn options(mut buf: &[u8]) -> Vec<(u64, &[u8])> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (len, n) = vlu(buf);
        if len == 0 {
            break;
        }
        let body = &buf[n..n + len as usize];
        let (kind, k) = vlu(body);
        out.push((kind, &body[k..]));
        buf = &buf[n + len as usize..];
    }
    out
}

/// Reads a VLU-length-prefixed field and answers it with the rest.
fn field(buf: &[u8]) -> (&[u8], &[u8]) {
    let (len, n) = vlu(buf);
    buf[n..].split_at(len as usize)
}

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

fn opt_num(text: &str) -> Option<u64> {
    (text != "-").then(|| text.parse().expect("number"))
}

/// `flags ts [echo]` at the start of a plain packet.
fn header(packet: &[u8]) -> (u8, Option<u16>, Option<u16>, usize) {
    let flags = packet[0];
    let mut at = 1;
    let mut word = |present: bool| {
        present.then(|| {
            let v = u16::from_be_bytes([packet[at], packet[at + 1]]);
            at += 2;
            v
        })
    };
    let ts = word(flags & FLAG_TIMESTAMP != 0);
    let tse = word(flags & FLAG_TIMESTAMP_ECHO != 0);
    (flags, ts, tse, at)
}

/// The first chunk of a startup packet: (type, payload).
fn first_chunk(packet: &[u8]) -> (u8, &[u8]) {
    let (_, _, _, at) = header(packet);
    let kind = packet[at];
    let len = usize::from(u16::from_be_bytes([packet[at + 1], packet[at + 2]]));
    (kind, &packet[at + 3..at + 3 + len])
}

fn decode_startup(path: &Path) -> Vec<u8> {
    let mut bytes = fs::read(path).expect("datagram");
    let decoded = PacketDecoder::startup()
        .decode(&mut bytes)
        .expect("startup datagram");
    decoded.packet.to_vec()
}

fn direction_options(dir: &Value) -> DirectionOptions {
    let hmac_len = dir["hmac"]
        .as_bool()
        .unwrap()
        .then(|| u8::try_from(dir["hmac_len"].as_u64().unwrap()).unwrap());
    DirectionOptions {
        hmac_len,
        sseq: dir["session_sequence_numbers"].as_bool().unwrap(),
    }
}

fn packet_mode(dir: &Value) -> PacketMode {
    let options = direction_options(dir);
    PacketMode {
        hmac: options.hmac_len.map(|len| {
            HmacMode::new(hex_bytes(&dir["hmac_sha256_key"]).try_into().unwrap(), len).unwrap()
        }),
        sseq: options.sseq,
    }
}

/// The policy an end followed, read back from the flags it sent.
fn policy_from(flags: KeyingNegotiation) -> NegotiationPolicy {
    let option = |f: NegotiationFlags| OptionPolicy {
        send_always: f.contains(NegotiationFlags::SEND_ALWAYS),
        send_on_request: f.contains(NegotiationFlags::SEND_ON_REQUEST),
        require: f.contains(NegotiationFlags::REQUEST),
    };
    NegotiationPolicy {
        hmac: option(flags.hmac),
        hmac_len: u8::try_from(flags.hmac_len).unwrap_or(16).clamp(4, 32),
        sseq: option(flags.sseq),
    }
}

#[cfg(feature = "dh")]
/// Groups a certificate lists, as "supported DH group" or "DH public key" options, with the
/// keys of the latter.
fn cert_groups(cert: &[u8]) -> Vec<(u64, Option<&[u8]>)> {
    options(cert)
        .into_iter()
        .filter_map(|(kind, value)| match kind {
            CERT_OPTION_SUPPORTED_DH_GROUP => Some((vlu(value).0, None)),
            CERT_OPTION_DH_PUBLIC_KEY => {
                let (group, n) = vlu(value);
                Some((group, Some(&value[n..])))
            }
            _ => None,
        })
        .collect()
}

/// The initiator's and the responder's peer IDs of one session.
type SessionPeerIds = (Vec<u8>, Vec<u8>);

struct Session {
    json: Value,
    initiator: String,
    responder: String,
    i2r: PacketDecoder,
    r2i: PacketDecoder,
    i2r_encoder: PacketEncoder,
    r2i_encoder: PacketEncoder,
}

fn check_keys(name: &str, s: &Value) {
    let secret = hex_bytes(&s["dh_shared_secret"]);
    assert_eq!(
        secret.len() as u64,
        s["dh_shared_secret_len"].as_u64().unwrap()
    );
    assert_ne!(secret[0], 0, "{name}: S is minimal big-endian");
    let skic = hex_bytes(&s["skic"]);
    let skrc = hex_bytes(&s["skrc"]);
    let i2r = &s["initiator_to_responder"];
    let r2i = &s["responder_to_initiator"];

    let initiator = derive_session_keys(&secret, &skic, &skrc);
    let responder = derive_session_keys(&secret, &skrc, &skic);
    assert_eq!(
        initiator.send_key().to_vec(),
        hex_bytes(&i2r["aes128_key"]),
        "{name}"
    );
    assert_eq!(
        initiator.receive_key().to_vec(),
        hex_bytes(&r2i["aes128_key"]),
        "{name}"
    );
    assert_eq!(
        responder.send_key().to_vec(),
        hex_bytes(&r2i["aes128_key"]),
        "{name}"
    );
    assert_eq!(
        responder.receive_key().to_vec(),
        hex_bytes(&i2r["aes128_key"]),
        "{name}"
    );
    assert_eq!(
        initiator.near_nonce.to_vec(),
        hex_bytes(&s["initiator_nonce"]),
        "{name}"
    );
    assert_eq!(
        initiator.far_nonce.to_vec(),
        hex_bytes(&s["responder_nonce"]),
        "{name}"
    );
    assert_eq!(
        responder.near_nonce.to_vec(),
        hex_bytes(&s["responder_nonce"]),
        "{name}"
    );
    if i2r["hmac"].as_bool().unwrap() {
        let key = hex_bytes(&i2r["hmac_sha256_key"]);
        assert_eq!(initiator.tx_hmac_key.to_vec(), key, "{name}");
        assert_eq!(responder.rx_hmac_key.to_vec(), key, "{name}");
    }
    if r2i["hmac"].as_bool().unwrap() {
        let key = hex_bytes(&r2i["hmac_sha256_key"]);
        assert_eq!(initiator.rx_hmac_key.to_vec(), key, "{name}");
        assert_eq!(responder.tx_hmac_key.to_vec(), key, "{name}");
    }

    // Negotiation: each end's flags, fed back through `negotiate`, give the modes used.
    let skic_flags = KeyingNegotiation::parse(&skic).unwrap();
    let skrc_flags = KeyingNegotiation::parse(&skrc).unwrap();
    let at_initiator = negotiate(&policy_from(skic_flags), &skrc_flags).unwrap();
    let at_responder = negotiate(&policy_from(skrc_flags), &skic_flags).unwrap();
    assert_eq!(at_initiator.send, direction_options(i2r), "{name}");
    assert_eq!(at_initiator.receive, direction_options(r2i), "{name}");
    assert_eq!(at_responder.send, direction_options(r2i), "{name}");
    assert_eq!(at_responder.receive, direction_options(i2r), "{name}");
}

/// IIKeying and RHello of a session: peer IDs, group selection and public keys.
fn check_startup(name: &str, dir: &Path, rows: &[Row], s: &Value) -> (Vec<u8>, Vec<u8>) {
    // IIKeying: isid u32, cookie, certificate, SKIC, signature (RFC 7016 §2.3.7).
    let packet = decode_startup(&dir.join(s["iikeying_datagram"].as_str().unwrap()));
    let (kind, payload) = first_chunk(&packet);
    assert_eq!(kind, CHUNK_IIKEYING, "{name}");
    let isid = u32::from_be_bytes(payload[..4].try_into().unwrap());
    assert_eq!(
        isid,
        hex_u32(s["initiator_session_id"].as_str().unwrap()),
        "{name}"
    );
    let (_cookie, rest) = field(&payload[4..]);
    let (initiator_cert, rest) = field(rest);
    let (skic, _signature) = field(rest);
    assert_eq!(skic, hex_bytes(&s["skic"]).as_slice(), "{name}");
    let peer_id = fingerprint(initiator_cert).unwrap();
    assert_eq!(
        peer_id.0,
        <[u8; 32]>::from(Sha256::digest(initiator_cert)),
        "{name}"
    );

    // The responder's RHello to this initiator: tag, cookie, certificate (RFC 7016 §2.3.4).
    let rhello = rows
        .iter()
        .find(|r| {
            r.chunks.starts_with("0x70 ") && r.src == s["responder"] && r.dst == s["initiator"]
        })
        .expect("RHello for the session");
    let packet = decode_startup(&dir.join(&rhello.file));
    let (kind, payload) = first_chunk(&packet);
    assert_eq!(kind, CHUNK_RHELLO, "{name}");
    let (_tag, rest) = field(payload);
    let (_cookie, responder_cert) = field(rest);
    let responder_id = fingerprint(responder_cert).unwrap();
    assert_eq!(
        responder_id.0,
        <[u8; 32]>::from(Sha256::digest(responder_cert)),
        "{name}"
    );

    #[cfg(feature = "dh")]
    check_groups(name, initiator_cert, responder_cert, skic, s);
    (peer_id.0.to_vec(), responder_id.0.to_vec())
}

/// DH group selection and public-key validation on the session's startup material.
#[cfg(feature = "dh")]
fn check_groups(name: &str, initiator_cert: &[u8], responder_cert: &[u8], skic: &[u8], s: &Value) {
    // Group selection: the initiator's groups are those of its static keys.
    let local: Vec<DhGroup> = cert_groups(initiator_cert)
        .iter()
        .map(|(g, _)| DhGroup::from_id(*g).expect("supported group"))
        .collect();
    let remote: Vec<u64> = cert_groups(responder_cert)
        .iter()
        .map(|(g, _)| *g)
        .collect();
    let chosen = select_group(&local, remote.iter().copied()).expect("common group");
    let dh_group = s["dh_group"].as_u64().unwrap();
    assert_eq!(chosen.id(), dh_group, "{name}");
    let skic_options = options(skic);
    let selected = skic_options
        .iter()
        .find(|(k, _)| *k == KEYING_OPTION_DH_GROUP_SELECT || *k == KEYING_OPTION_DH_PUBLIC_KEY)
        .map(|(_, v)| vlu(v).0)
        .expect("SKIC names a group");
    assert_eq!(selected, dh_group, "{name}");

    // Every DH public key on the wire for the chosen group passes RFC 7425 §4.6.2.
    for (group, key) in cert_groups(initiator_cert)
        .into_iter()
        .chain(cert_groups(responder_cert))
    {
        if let (Some(group), Some(key)) = (DhGroup::from_id(group), key) {
            validate_public_key(group, key).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    for (kind, value) in options(&hex_bytes(&s["skrc"])) {
        if kind == KEYING_OPTION_DH_PUBLIC_KEY {
            let (group, n) = vlu(value);
            assert_eq!(group, dh_group, "{name}");
            validate_public_key(chosen, &value[n..]).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

struct Row {
    file: String,
    src: String,
    dst: String,
    ssid_session_id: u32,
    key: String,
    sseq: Option<u64>,
    hmac_len: Option<u64>,
    flags: u8,
    ts: Option<u64>,
    tse: Option<u64>,
    chunks: String,
}

fn load_rows(dir: &Path) -> Vec<Row> {
    let index: HashMap<String, (String, String)> = read_tsv(&dir.join("index.tsv"))
        .into_iter()
        .map(|r| {
            let src = format!("{}:{}", r["src"], r["sport"]);
            let dst = format!("{}:{}", r["dst"], r["dport"]);
            (r["file"].clone(), (src, dst))
        })
        .collect();
    read_tsv(&dir.join("decoded.tsv"))
        .into_iter()
        .map(|r| {
            let (src, dst) = index[&r["file"]].clone();
            Row {
                file: r["file"].clone(),
                src,
                dst,
                ssid_session_id: hex_u32(&r["ssid_session_id"]),
                key: r["key"].clone(),
                sseq: opt_num(&r["sseq"]),
                hmac_len: opt_num(&r["hmac_len"]),
                flags: u8::from_str_radix(r["flags"].trim_start_matches("0x"), 16).unwrap(),
                ts: opt_num(&r["ts"]),
                tse: opt_num(&r["tse"]),
                chunks: r["chunks"].clone(),
            }
        })
        .collect()
}

/// Decodes one datagram, checks it against its row, and re-encodes it byte for byte.
fn check_datagram(name: &str, dir: &Path, row: &Row, sessions: &mut [Session]) {
    let original = fs::read(dir.join(&row.file)).expect("datagram");
    let mut bytes = original.clone();
    let mut startup_decoder = PacketDecoder::startup();
    let mut startup_encoder = PacketEncoder::startup();
    let (decoder, encoder) = match row.key.as_str() {
        "default" => (&mut startup_decoder, &mut startup_encoder),
        direction => {
            let i2r = direction == "i2r";
            assert!(
                i2r || direction == "r2i",
                "{name}/{}: key {direction}",
                row.file
            );
            let (from, to) = if i2r {
                (&row.src, &row.dst)
            } else {
                (&row.dst, &row.src)
            };
            let session = sessions
                .iter_mut()
                .find(|s| &s.initiator == from && &s.responder == to)
                .unwrap_or_else(|| panic!("{name}/{}: no session", row.file));
            // Each end sends with the far end's session ID (RFC 7016 §2.2.2).
            let far_id = if i2r {
                "responder_session_id"
            } else {
                "initiator_session_id"
            };
            assert_eq!(
                row.ssid_session_id,
                hex_u32(session.json[far_id].as_str().unwrap())
            );
            if i2r {
                (&mut session.i2r, &mut session.i2r_encoder)
            } else {
                (&mut session.r2i, &mut session.r2i_encoder)
            }
        }
    };
    let hmac_len = decoder
        .mode()
        .hmac
        .as_ref()
        .map(|h| u64::from(h.trailer_len()));
    let decoded = decoder
        .decode(&mut bytes)
        .unwrap_or_else(|e| panic!("{name}/{}: {e}", row.file));
    assert_eq!(
        decoded.session_id, row.ssid_session_id,
        "{name}/{}",
        row.file
    );
    assert_eq!(decoded.sseq, row.sseq, "{name}/{}", row.file);
    assert_eq!(hmac_len, row.hmac_len, "{name}/{}", row.file);
    let (flags, ts, tse, _) = header(decoded.packet);
    assert_eq!(flags, row.flags, "{name}/{}", row.file);
    assert_eq!(ts.map(u64::from), row.ts, "{name}/{}", row.file);
    assert_eq!(tse.map(u64::from), row.tse, "{name}/{}", row.file);

    // The encoder reproduces the captured datagram exactly (zero IV, same padding).
    if let Some(sseq) = decoded.sseq {
        encoder.set_next_sseq(sseq);
    }
    let mut out = vec![0u8; original.len()];
    let n = encoder
        .encode(decoded.session_id, decoded.packet, &mut out)
        .unwrap();
    assert_eq!(&out[..n], &original[..], "{name}/{}: re-encoding", row.file);
}

#[test]
fn all_fixture_datagrams() {
    let root = fixtures_dir();
    let mut names: Vec<String> = fs::read_dir(&root)
        .expect("fixtures dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|f| f.strip_suffix(".keys.json").map(String::from))
        .collect();
    names.sort();
    assert_eq!(names.len(), 5, "captures: {names:?}");

    let mut checked = 0;
    let mut sessions_checked = 0;
    let mut peer_ids: HashMap<String, Vec<SessionPeerIds>> = HashMap::new();
    for name in &names {
        let dir = root.join(name);
        let json: Value = serde_json::from_str(
            &fs::read_to_string(root.join(format!("{name}.keys.json"))).unwrap(),
        )
        .unwrap();
        let rows = load_rows(&dir);
        let mut sessions = Vec::new();
        for s in json["sessions"].as_array().expect("sessions") {
            check_keys(name, s);
            let ids = check_startup(name, &dir, &rows, s);
            peer_ids.entry(name.clone()).or_default().push(ids);
            let i2r = &s["initiator_to_responder"];
            let r2i = &s["responder_to_initiator"];
            let key = |d: &Value| -> [u8; 16] { hex_bytes(&d["aes128_key"]).try_into().unwrap() };
            sessions.push(Session {
                json: s.clone(),
                initiator: s["initiator"].as_str().unwrap().to_string(),
                responder: s["responder"].as_str().unwrap().to_string(),
                i2r: PacketDecoder::new(&key(i2r), packet_mode(i2r)),
                r2i: PacketDecoder::new(&key(r2i), packet_mode(r2i)),
                i2r_encoder: PacketEncoder::new(&key(i2r), packet_mode(i2r)),
                r2i_encoder: PacketEncoder::new(&key(r2i), packet_mode(r2i)),
            });
            sessions_checked += 1;
        }
        let bins = fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".bin")
            })
            .count();
        assert_eq!(rows.len(), bins, "{name}: every datagram has a row");
        for row in &rows {
            check_datagram(name, &dir, row, &mut sessions);
            checked += 1;
        }
    }
    println!(
        "checked {checked} datagrams in {} captures, {sessions_checked} sessions",
        names.len()
    );
    assert_eq!(checked, EXPECTED_DATAGRAMS);
    assert_eq!(sessions_checked, 7);

    // P2P capture: the README's peer IDs, and the fingerprint EPD of the introduction IHello.
    let p2p = &peer_ids["fcclient-p2p-intro"];
    let hex_of = |id: &[u8]| hex::encode(id);
    let (target_id, _server_id) = &p2p[0];
    let (fcclient_id, responder_id) = &p2p[1];
    assert!(hex_of(target_id).starts_with("72a09000") && hex_of(target_id).ends_with("3fe0a"));
    assert_eq!(
        responder_id, target_id,
        "the P2P responder's RHello certificate is the target's"
    );
    assert!(hex_of(fcclient_id).starts_with("1c8e0f68") && hex_of(fcclient_id).ends_with("a285"));
    let ihello = decode_startup(&root.join("fcclient-p2p-intro/016-c2s.bin"));
    let (kind, payload) = first_chunk(&ihello);
    assert_eq!(kind, CHUNK_IHELLO);
    let (epd, _tag) = field(payload);
    assert_eq!(&epd[..2], &[0x21, 0x0f]);
    assert_eq!(&epd[2..], target_id.as_slice());
}
