//! End-to-end tests of `updraft inspect`: the fixture captures (shared/fixtures), key derivation
//! from `--dh-private` on handshakes made here with the rtmfp crate, `--keys`, and bad input.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rtmfp::amf::{Object, Value as Amf};
use rtmfp::crypto::{
    derive_session_keys, negotiate, DhGroup, DhKeyPair, KeyingNegotiation, NegotiationPolicy,
    PacketEncoder, SessionKeys,
};
use rtmfp::flash::command::{Command, ObjectEncoding};
use rtmfp::flash::metadata::{FlowMetadata, ReceiveIntent};
use rtmfp::ids::{FlowId, SessionId};
use rtmfp::startup::components::{
    build_static_key_certificate, build_url_epd, Certificate, CERT_RANDOMNESS_LEN,
    EXTRA_RANDOMNESS_LEN, SKC_EXTRA_RANDOMNESS, SKC_HMAC_NEGOTIATION, SKC_SSEQ_NEGOTIATION,
};
use rtmfp::startup::initiator::{Initiator, InitiatorConfig, StartupMessage};
use rtmfp::startup::responder::{HelloDisposition, KeyingDisposition, Responder, ResponderConfig};
use rtmfp::time::Instant;
use rtmfp::wire::{
    write_option, ChunkBody, Fragment, IHello, IIKeying, Mode, PacketHeader, RHello, RIKeying,
    UserData, UserDataFlags, Writer,
};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");
const CAPTURES: [&str; 5] = [
    "tcconn-tcserver-play",
    "tcbench-rpc-tcserver",
    "librtmfp-mona-connect",
    "fcclient-p2p-intro",
    "librtmfp-cumulus-connect",
];

struct Run {
    status: i32,
    lines: Vec<Value>,
    stderr: String,
}

fn inspect(args: &[&str]) -> Run {
    let out = Process::new(env!("CARGO_BIN_EXE_updraft"))
        .arg("inspect")
        .args(args)
        .output()
        .expect("run updraft");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    Run {
        status: out.status.code().expect("exit code"),
        lines: stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn pcap(name: &str) -> String {
    format!("{FIXTURES}/{name}.pcap")
}

/// The rows of `decoded.tsv`, header skipped.
fn decoded_tsv(name: &str) -> Vec<Vec<String>> {
    std::fs::read_to_string(format!("{FIXTURES}/{name}/decoded.tsv"))
        .expect("decoded.tsv")
        .lines()
        .skip(1)
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn keys_json(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(format!("{FIXTURES}/{name}.keys.json")).expect("keys.json"),
    )
    .expect("keys.json is JSON")
}

/// `--keys` for one session of `keys.json`: the responder's send key, receive key and, with
/// HMAC, the HMAC keys in the same order.
fn keys_arg(session: &Value) -> String {
    let (r2i, i2r) = (
        &session["responder_to_initiator"],
        &session["initiator_to_responder"],
    );
    let mut parts = vec![
        r2i["aes128_key"].as_str().unwrap(),
        i2r["aes128_key"].as_str().unwrap(),
    ];
    if let (Some(s), Some(r)) = (
        r2i["hmac_sha256_key"].as_str(),
        i2r["hmac_sha256_key"].as_str(),
    ) {
        parts.extend([s, r]);
    }
    parts.join(",")
}

fn chunk_names(line: &Value) -> Vec<String> {
    line["chunks"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| c["type"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_fixture_datagram_gives_one_line_with_its_session_id() {
    let mut total = 0;
    for name in CAPTURES {
        let tsv = decoded_tsv(name);
        let run = inspect(&["--pcap", &pcap(name)]);
        assert_eq!(run.status, 0, "{name}: {}", run.stderr);
        assert_eq!(run.lines.len(), tsv.len(), "{name}");
        let mut error_seen = false;
        let mut decoded_after_error = false;
        for (line, row) in run.lines.iter().zip(&tsv) {
            let what = format!("{name} {}", row[0]);
            assert_eq!(line["session_id"], row[1].as_str(), "{what}");
            if row[2] == "default" {
                assert_eq!(line["key"], "default", "{what}: {line}");
                assert!(line.get("error").is_none(), "{what}: {line}");
                assert_eq!(line["mode"], "startup", "{what}");
                assert_eq!(line["flags"], row[5].as_str(), "{what}");
                let types: Vec<String> = row[8].split(" | ").map(|c| c[..4].to_string()).collect();
                assert_eq!(chunk_names(line), types, "{what}");
                decoded_after_error |= error_seen;
            } else {
                let error = line["error"]
                    .as_str()
                    .expect("session datagram without keys");
                assert!(
                    error.contains("no keys for session") && error.contains("--dh-private"),
                    "{what}: {error}"
                );
                error_seen = true;
            }
        }
        if name == "tcconn-tcserver-play" || name == "fcclient-p2p-intro" {
            // The second handshake comes after session datagrams that could not be decoded.
            assert!(decoded_after_error, "{name}");
        }
        total += run.lines.len();
    }
    assert_eq!(total, 390);
}

#[test]
fn peer_ids_and_fingerprints_match_the_fixture_readme() {
    let run = inspect(&["--pcap", &pcap("fcclient-p2p-intro")]);
    let iikeying: Vec<&str> = run
        .lines
        .iter()
        .flat_map(|l| l["chunks"].as_array().into_iter().flatten())
        .filter(|c| c["name"] == "IIKeying")
        .map(|c| c["peer_id"].as_str().unwrap())
        .collect();
    // The target (tcconn) keys with the server, then fcclient keys with the target.
    assert_eq!(iikeying.len(), 2);
    assert!(iikeying[0].starts_with("72a09000"), "{iikeying:?}");
    assert!(iikeying[0].ends_with("3fe0a"), "{iikeying:?}");
    assert!(iikeying[1].starts_with("1c8e0f68"), "{iikeying:?}");
    assert!(iikeying[1].ends_with("a285"), "{iikeying:?}");
}

/// Every session datagram of every fixture decodes with `--keys` of its session (HMAC keys
/// included where HMAC was negotiated), with the direction, SSEQ, flags, chunk types and TC
/// command names of `decoded.tsv`.
#[test]
fn keys_decode_every_session_datagram_of_every_fixture() {
    let mut decoded_total = 0;
    for name in CAPTURES {
        let tsv = decoded_tsv(name);
        let mut decoded = vec![false; tsv.len()];
        for session in keys_json(name)["sessions"].as_array().unwrap() {
            let run = inspect(&["--pcap", &pcap(name), "--keys", &keys_arg(session)]);
            assert_eq!(run.status, 0, "{}", run.stderr);
            assert_eq!(run.lines.len(), tsv.len());
            for (i, (line, row)) in run.lines.iter().zip(&tsv).enumerate() {
                if row[2] == "default" || line["key"] != "session" {
                    continue;
                }
                let what = format!("{name} {}", row[0]);
                assert!(!decoded[i], "{what} decoded with two sessions' keys");
                decoded[i] = true;
                assert_eq!(line["direction"], row[2].as_str(), "{what}");
                let sseq = line["sseq"].as_u64().map_or("-".into(), |s| s.to_string());
                assert_eq!(sseq, row[3], "{what}");
                assert_eq!(line["flags"], row[5].as_str(), "{what}");
                let ts = line["timestamp"]
                    .as_u64()
                    .map_or("-".into(), |s| s.to_string());
                assert_eq!(ts, row[6], "{what}");
                let chunks: Vec<&str> = row[8].split(" | ").collect();
                assert_eq!(
                    chunk_names(line),
                    chunks.iter().map(|c| &c[..4]).collect::<Vec<_>>(),
                    "{what}"
                );
                for (c, text) in line["chunks"].as_array().unwrap().iter().zip(&chunks) {
                    for (tag, field) in [("tc=AMF0Command(", "command"), ("tc=AMF0Data(", "data")] {
                        if let Some(rest) = text.split(tag).nth(1) {
                            let name = rest.split([',', ')']).next().unwrap();
                            assert_eq!(c["message"][field], name, "{what}: {c}");
                        }
                    }
                }
            }
            // Keys of this session and the startup datagrams: the keys were printed.
            let rikeying = run
                .lines
                .iter()
                .flat_map(|l| l["chunks"].as_array().into_iter().flatten())
                .filter(|c| c["name"] == "RIKeying")
                .map(|c| &c["session"])
                .find(|s| s["responder_session_id"] == session["responder_session_id"])
                .expect("RIKeying");
            if rikeying.get("error").is_none() {
                for dir in ["initiator_to_responder", "responder_to_initiator"] {
                    assert_eq!(rikeying[dir]["aes128_key"], session[dir]["aes128_key"]);
                    assert_eq!(rikeying[dir]["hmac_len"], session[dir]["hmac_len"]);
                    assert_eq!(
                        rikeying[dir]["session_sequence_numbers"],
                        session[dir]["session_sequence_numbers"]
                    );
                }
            }
        }
        for (row, done) in tsv.iter().zip(&decoded) {
            assert_eq!(*done, row[2] != "default", "{name} {}", row[0]);
        }
        decoded_total += decoded.iter().filter(|d| **d).count();
    }
    assert_eq!(decoded_total, 359);
}

#[test]
fn tcconn_media_messages_are_all_reassembled() {
    let name = "tcconn-tcserver-play";
    // Session 0 is the player (media from the server), session 1 the publisher (media to it):
    // 37 video and 52 audio messages each way, one of each way fragmented.
    for (session, direction) in keys_json(name)["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(["r2i", "i2r"])
    {
        let run = inspect(&["--pcap", &pcap(name), "--keys", &keys_arg(session)]);
        let count = |kind: &str| {
            run.lines
                .iter()
                .filter(|l| l["direction"] == direction)
                .flat_map(|l| l["chunks"].as_array().into_iter().flatten())
                .filter(|c| c["message"]["type"] == kind)
                .count()
        };
        assert_eq!((count("0x09"), count("0x08")), (37, 52), "{direction}");
    }
}

fn messages(run: &Run) -> Vec<&Value> {
    run.lines
        .iter()
        .flat_map(|l| l["chunks"].as_array().into_iter().flatten())
        .filter_map(|c| c.get("message"))
        .collect()
}

fn command<'a>(messages: &[&'a Value], name: &str) -> &'a Value {
    messages
        .iter()
        .find(|m| m["command"] == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn keys_decode_amf_values_of_the_cumulus_and_mona_sessions() {
    for (name, app, tc_url, play_status) in [
        (
            "librtmfp-cumulus-connect",
            "live",
            "rtmfp://127.0.0.1:19361",
            "NetStream.Play.Reset",
        ),
        (
            "librtmfp-mona-connect",
            "live",
            "rtmfp://127.0.0.1:19370/live",
            "NetStream.Play.Reset",
        ),
    ] {
        let session = &keys_json(name)["sessions"][0];
        let run = inspect(&["--pcap", &pcap(name), "--keys", &keys_arg(session)]);
        assert!(run.lines.iter().all(|l| l.get("error").is_none()), "{name}");
        let m = messages(&run);
        let connect = command(&m, "connect");
        assert_eq!(connect["transaction_id"], 0.0, "{name}");
        assert_eq!(connect["command_object"]["app"], app, "{name}");
        assert_eq!(connect["command_object"]["tcUrl"], tc_url, "{name}");
        let result = command(&m, "_result");
        if name == "librtmfp-mona-connect" {
            // MonaServer2 switches to AMF3 inside the AMF0 status object (`11 0a 0b 01` after
            // objectEncoding): the name and transaction ID still come out, with the reason.
            assert_eq!(result["transaction_id"], 0.0);
            assert!(
                result["error"].as_str().unwrap().contains("AMF"),
                "{result}"
            );
            assert_eq!(result["values_before_error"][0], "_result");
        } else {
            assert_eq!(
                result["args"][0]["code"], "NetConnection.Connect.Success",
                "{name}"
            );
        }
        let peer_info = command(&m, "setPeerInfo");
        let port = session["initiator"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap();
        assert_eq!(
            peer_info["command_object"],
            format!("192.0.2.2:{port}"),
            "{name}"
        );
        command(&m, "createStream");
        assert_eq!(command(&m, "play")["args"][0], "s1", "{name}");
        let statuses: Vec<&Value> = m
            .iter()
            .filter(|m| m["command"] == "onStatus")
            .map(|m| &m["args"][0]["code"])
            .collect();
        assert!(
            statuses.contains(&&Value::from(play_status)),
            "{name}: {statuses:?}"
        );
    }
}

#[test]
fn keys_without_hmac_keys_say_why_hmac_sessions_do_not_decode() {
    let session = &keys_json("tcbench-rpc-tcserver")["sessions"][0];
    let full = keys_arg(session);
    let aes_only: Vec<&str> = full.split(',').take(2).collect();
    let run = inspect(&[
        "--pcap",
        &pcap("tcbench-rpc-tcserver"),
        "--keys",
        &aes_only.join(","),
    ]);
    assert_eq!(run.status, 0);
    assert_eq!(run.lines.len(), 12);
    for line in &run.lines[4..] {
        let error = line["error"].as_str().expect("no HMAC key, no decoding");
        assert!(error.contains("HMAC negotiated"), "{error}");
        assert!(error.contains("HMAC_ENC,HMAC_DEC"), "{error}");
    }
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("updraft-inspect-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    /// Writes one file per datagram; answers their paths.
    fn write(&self, datagrams: &[Vec<u8>]) -> Vec<String> {
        datagrams
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let path = self.0.join(format!("{:03}.bin", i + 1));
                std::fs::write(&path, d).expect("write datagram");
                path.to_str().unwrap().to_string()
            })
            .collect()
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const ISID: u32 = 0x0200_0000;
const RSID: u32 = 0x0000_0007;

/// A handshake and a few session packets made with the rtmfp crate.
struct Made {
    datagrams: Vec<Vec<u8>>,
    responder_keys: SessionKeys,
    responder_send_hmac: Option<u8>,
    initiator_peer_id: String,
}

fn emit(chunk: &impl ChunkBody, out: &mut Vec<u8>) {
    let mut buf = vec![0u8; chunk.encoded_len()];
    let mut w = Writer::new(&mut buf);
    chunk.emit(&mut w).expect("emit chunk");
    out.extend_from_slice(w.written());
}

fn packet(header: PacketHeader, chunks: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; header.encoded_len()];
    let mut w = Writer::new(&mut buf);
    header.emit(&mut w).expect("emit header");
    let mut p = w.written().to_vec();
    p.extend_from_slice(chunks);
    p
}

fn seal(encoder: &mut PacketEncoder, session_id: u32, plain: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; encoder.encoded_len(plain.len())];
    let n = encoder.encode(session_id, plain, &mut out).expect("encode");
    out.truncate(n);
    out
}

fn startup(session_id: u32, chunk: &impl ChunkBody) -> Vec<u8> {
    let mut c = Vec::new();
    emit(chunk, &mut c);
    let mut header = PacketHeader::new(Mode::Startup);
    header.timestamp = Some(100);
    seal(
        &mut PacketEncoder::startup(),
        session_id,
        &packet(header, &c),
    )
}

fn tc_options() -> Vec<u8> {
    let meta = FlowMetadata::Tc {
        stream_id: 0,
        receive_intent: ReceiveIntent::Sequence,
    }
    .to_vec();
    let mut buf = [0u8; 32];
    let mut w = Writer::new(&mut buf);
    write_option(&mut w, 0, &meta).expect("metadata option");
    w.written().to_vec()
}

fn user_data(seq: u64, fragment: Fragment, options: Option<&[u8]>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    emit(
        &UserData {
            flags: UserDataFlags {
                fragment,
                abandoned: false,
                fin: false,
            },
            flow_id: FlowId(2),
            seq,
            fsn_offset: seq,
            options,
            data,
        },
        &mut out,
    );
    out
}

/// Runs a handshake between the crate's initiator and responder, the responder keyed with
/// `private` in `group`, then sends `connect` (split in two fragments when `fragmented`) and a
/// `_result` back.
fn make_session(policy: NegotiationPolicy, group: DhGroup, private: &[u8]) -> Made {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let now = Instant::from_millis(10_000);
    let server: SocketAddr = "127.0.0.1:1935".parse().unwrap();
    let client: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let responder = Responder::new(
        ResponderConfig {
            groups: vec![group],
            policy,
        },
        [3; 32],
        &[5; CERT_RANDOMNESS_LEN],
        now,
    );
    let mut initiator = Initiator::new(
        now,
        InitiatorConfig {
            groups: vec![group],
            policy,
        },
        build_url_epd(b"rtmfp://127.0.0.1/myapp"),
        None,
        &[server],
        ISID,
        &mut rng,
    );
    let mut datagrams = Vec::new();

    let Some((_, StartupMessage::IHello { epd, tag })) = initiator.poll_transmit(now) else {
        panic!("no IHello");
    };
    let (epd, tag) = (epd.to_vec(), *tag);
    datagrams.push(startup(
        0,
        &IHello {
            epd: &epd,
            tag: &tag,
        },
    ));

    let HelloDisposition::RHello { cookie, .. } = responder.on_ihello(now, &client, &epd, &tag)
    else {
        panic!("no RHello");
    };
    datagrams.push(startup(
        0,
        &RHello {
            tag_echo: &tag,
            cookie: &cookie,
            certificate: responder.certificate(),
        },
    ));
    initiator
        .on_rhello(
            now,
            server,
            &tag,
            &cookie,
            responder.certificate(),
            &mut rng,
        )
        .expect("RHello accepted");

    let Some((
        _,
        StartupMessage::IIKeying {
            cookie,
            certificate,
            skic,
            ..
        },
    )) = initiator.poll_transmit(now)
    else {
        panic!("no IIKeying");
    };
    let (cookie, certificate, skic) = (cookie.to_vec(), certificate.to_vec(), skic.to_vec());
    datagrams.push(startup(
        0,
        &IIKeying {
            initiator_session_id: SessionId(ISID),
            cookie_echo: &cookie,
            certificate: &certificate,
            skic: &skic,
            signature: &[0x58],
        },
    ));
    let KeyingDisposition::Accept(request) =
        responder.on_iikeying(now, &client, ISID, &cookie, &certificate, &skic)
    else {
        panic!("IIKeying refused");
    };
    let pair = DhKeyPair::from_private(group, private).expect("private key");
    let accepted = responder.accept(&request, &pair).expect("accept");
    // RIKeying goes to the initiator's session ID, with the default key (RFC 7016 §3.5.1.1.2).
    datagrams.push(startup(
        ISID,
        &RIKeying {
            responder_session_id: SessionId(RSID),
            skrc: &accepted.skrc,
            signature: &[0x58],
        },
    ));
    let established = initiator
        .on_rikeying(server, RSID, &accepted.skrc)
        .expect("RIKeying accepted");
    assert_eq!(established.keys.send_key(), accepted.keys.receive_key());

    let mut to_responder = established
        .keys
        .encoder(established.negotiated.send)
        .expect("initiator encoder");
    let mut to_initiator = accepted
        .keys
        .encoder(accepted.negotiated.send)
        .expect("responder encoder");
    let connect = Command::new(
        "connect",
        1.0,
        Amf::Object(Object::anonymous(vec![
            ("app".into(), Amf::str("myapp")),
            ("tcUrl".into(), Amf::str("rtmfp://127.0.0.1/myapp")),
        ])),
        vec![],
    )
    .to_message(ObjectEncoding::Amf0, 0)
    .expect("connect");
    let options = tc_options();
    let mut header = PacketHeader::new(Mode::Initiator);
    header.timestamp = Some(200);
    // connect, in two fragments, the End first: reassembly goes by sequence number.
    let (first, second) = connect.split_at(connect.len() / 2);
    datagrams.push(seal(
        &mut to_responder,
        RSID,
        &packet(header, &user_data(2, Fragment::End, None, second)),
    ));
    datagrams.push(seal(
        &mut to_responder,
        RSID,
        &packet(
            header,
            &user_data(1, Fragment::Begin, Some(&options), first),
        ),
    ));
    let result = Command::new(
        "_result",
        1.0,
        Amf::Null,
        vec![Amf::Object(Object::anonymous(vec![(
            "code".into(),
            Amf::str("NetConnection.Connect.Success"),
        )]))],
    )
    .to_message(ObjectEncoding::Amf0, 0)
    .expect("_result");
    let mut header = PacketHeader::new(Mode::Responder);
    header.timestamp = Some(300);
    datagrams.push(seal(
        &mut to_initiator,
        ISID,
        &packet(
            header,
            &user_data(1, Fragment::Whole, Some(&options), &result),
        ),
    ));
    Made {
        datagrams,
        responder_send_hmac: accepted.negotiated.send.hmac_len,
        responder_keys: accepted.keys,
        initiator_peer_id: hex::encode(request.peer_id.0),
    }
}

/// A fixed responder private key: 1024 bits with the top bit set, like a generated one.
fn fixed_private(seed: u8) -> Vec<u8> {
    let mut key: Vec<u8> = (0..128u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(seed))
        .collect();
    key[0] |= 0x80;
    key
}

fn check_dh_private(policy: NegotiationPolicy, group: DhGroup, label: &str) {
    let private = fixed_private(11);
    let made = make_session(policy, group, &private);
    let dir = TempDir::new(label);
    let files = dir.write(&made.datagrams);
    let private_hex = hex::encode(&private);
    let mut args = vec!["--raw"];
    args.extend(files.iter().map(String::as_str));
    args.extend(["--dh-private", &private_hex]);
    let run = inspect(&args);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.lines.len(), 7);
    for (line, file) in run.lines.iter().zip(&files) {
        assert_eq!(line["file"], file.as_str());
        assert!(line.get("error").is_none(), "{line}");
    }
    for line in &run.lines[..4] {
        assert_eq!(line["key"], "default", "{line}");
    }
    assert_eq!(run.lines[2]["chunks"][0]["peer_id"], made.initiator_peer_id);
    let session = &run.lines[3]["chunks"][0]["session"];
    assert_eq!(session["keys_from"], "--dh-private");
    assert_eq!(session["initiator_peer_id"], made.initiator_peer_id);
    let k = &made.responder_keys;
    let i2r = &session["initiator_to_responder"];
    let r2i = &session["responder_to_initiator"];
    assert_eq!(i2r["aes128_key"], hex::encode(k.receive_key()));
    assert_eq!(r2i["aes128_key"], hex::encode(k.send_key()));
    assert_eq!(session["responder_nonce"], hex::encode(k.near_nonce));
    assert_eq!(session["initiator_nonce"], hex::encode(k.far_nonce));
    assert_eq!(r2i["hmac_len"], serde_json::json!(made.responder_send_hmac));
    if made.responder_send_hmac.is_some() {
        assert_eq!(r2i["hmac_sha256_key"], hex::encode(k.tx_hmac_key));
        assert_eq!(i2r["hmac_sha256_key"], hex::encode(k.rx_hmac_key));
    }
    for line in &run.lines[4..] {
        assert_eq!(line["key"], "session", "{line}");
    }
    assert_eq!(run.lines[4]["direction"], "i2r");
    assert_eq!(run.lines[6]["direction"], "r2i");
    let sseq: Vec<&Value> = run.lines[4..].iter().map(|l| &l["sseq"]).collect();
    if made.responder_send_hmac.is_some() {
        // HMAC and SSEQ: the initiator's two packets are 0 and 1, the responder's first is 0.
        assert_eq!(sseq, [&Value::from(0), &Value::from(1), &Value::from(0)]);
    } else {
        assert!(sseq.iter().all(|s| s.is_null()));
    }
    // The End fragment alone is no message; the Begin completes it.
    assert!(run.lines[4]["chunks"][0].get("message").is_none());
    let connect = &run.lines[5]["chunks"][0]["message"];
    assert_eq!(connect["command"], "connect");
    assert_eq!(connect["transaction_id"], 1.0);
    assert_eq!(connect["command_object"]["app"], "myapp");
    let result = &run.lines[6]["chunks"][0]["message"];
    assert_eq!(result["args"][0]["code"], "NetConnection.Connect.Success");

    // The wrong private key: the session is reported, with the reason, and nothing panics.
    let wrong = hex::encode(fixed_private(12));
    let mut args = vec!["--raw"];
    args.extend(files.iter().map(String::as_str));
    args.extend(["--dh-private", &wrong]);
    let run = inspect(&args);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.lines.len(), 7);
    let session = &run.lines[3]["chunks"][0]["session"];
    let reason = session["error"].as_str().expect("no keys");
    assert!(reason.contains("--dh-private does not match"), "{reason}");
    for line in &run.lines[4..] {
        let error = line["error"].as_str().expect("undecodable");
        assert!(error.contains("--dh-private does not match"), "{error}");
    }
    drop(dir);
}

#[test]
fn dh_private_derives_the_keys_of_a_flash_compatible_session() {
    check_dh_private(
        NegotiationPolicy::FLASH_COMPATIBLE,
        DhGroup::Modp1024,
        "flash",
    );
}

#[test]
fn dh_private_authenticates_an_hmac_and_sseq_session() {
    check_dh_private(
        NegotiationPolicy::RTMFP_CPP_DEFAULT,
        DhGroup::Modp2048,
        "hmac",
    );
}

#[test]
fn keys_with_hmac_keys_decode_a_made_hmac_session_without_its_handshake() {
    let private = fixed_private(21);
    let made = make_session(
        NegotiationPolicy::RTMFP_CPP_DEFAULT,
        DhGroup::Modp1024,
        &private,
    );
    let dir = TempDir::new("hmac-keys");
    // Session packets only: the mode is guessed (HMAC with SSEQ).
    let files = dir.write(&made.datagrams[4..]);
    let k = &made.responder_keys;
    let keys = [
        hex::encode(k.send_key()),
        hex::encode(k.receive_key()),
        hex::encode(k.tx_hmac_key),
        hex::encode(k.rx_hmac_key),
    ]
    .join(",");
    let mut args = vec!["--raw"];
    args.extend(files.iter().map(String::as_str));
    args.extend(["--keys", &keys]);
    let run = inspect(&args);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let directions: Vec<&Value> = run.lines.iter().map(|l| &l["direction"]).collect();
    assert_eq!(directions, ["i2r", "i2r", "r2i"]);
    assert_eq!(messages(&run)[0]["command"], "connect");
    assert!(dir.path().exists());
}

#[test]
fn bad_arguments_exit_2_with_the_usage() {
    for args in [
        &[][..],
        &["--pcap"],
        &["--raw"],
        &["--frobnicate"],
        &["--pcap", "a.pcap", "--raw", "b.bin"],
        &["--pcap", "a.pcap", "--keys", "00"],
        &["--pcap", "a.pcap", "--keys", "zz,00"],
        &[
            "--pcap",
            "a.pcap",
            "--keys",
            "00112233445566778899aabbccddeeff",
        ],
        &["--pcap", "a.pcap", "--dh-private", "xyz"],
        &["--pcap", "a.pcap", "--dh-private", "0000"],
    ] {
        let run = inspect(args);
        assert_eq!(run.status, 2, "{args:?}");
        assert!(
            run.stderr.contains("usage: updraft inspect"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(run.lines.is_empty());
    }
    let out = Process::new(env!("CARGO_BIN_EXE_updraft"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn missing_files_exit_2_naming_them() {
    let dir = TempDir::new("missing");
    let missing = dir.path().join("nothing-here.pcap");
    let missing = missing.to_str().unwrap();
    for flag in ["--pcap", "--raw"] {
        let run = inspect(&[flag, missing]);
        assert_eq!(run.status, 2);
        assert!(run.stderr.contains(missing), "{}", run.stderr);
    }
    let not_a_capture = dir.write(&[b"hello, not a capture".to_vec()]);
    let run = inspect(&["--pcap", &not_a_capture[0]]);
    assert_eq!(run.status, 2);
    assert!(run.stderr.contains("not a pcap"), "{}", run.stderr);
}

#[test]
fn garbage_datagrams_give_one_error_line_each() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut garbage: Vec<Vec<u8>> = vec![vec![], vec![1, 2, 3], vec![0; 20], vec![0xFF; 37]];
    for len in [20, 36, 100, 1200] {
        let mut d = vec![0u8; len];
        rand_chacha::rand_core::RngCore::fill_bytes(&mut rng, &mut d);
        garbage.push(d);
    }
    // Valid startup packets with garbage inside: a malformed IHello (its EPD length runs past
    // the chunk), then a chunk whose length runs past the packet.
    let mut header = PacketHeader::new(Mode::Startup);
    header.timestamp = Some(1);
    for chunks in [[0x30, 0x00, 0x01, 0x40], [0x30, 0x00, 0x40, 0x01]] {
        let plain = packet(header, &chunks);
        garbage.push(seal(&mut PacketEncoder::startup(), 0, &plain));
    }
    let dir = TempDir::new("garbage");
    let files = dir.write(&garbage);
    let mut args = vec!["--raw"];
    args.extend(files.iter().map(String::as_str));
    args.extend([
        "--keys",
        "00112233445566778899aabbccddeeff,ffeeddccbbaa99887766554433221100",
    ]);
    let run = inspect(&args);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.lines.len(), garbage.len());
    let n = garbage.len();
    for line in &run.lines[..n - 2] {
        assert!(
            line["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{line}"
        );
    }
    let malformed = &run.lines[n - 2];
    assert_eq!(malformed["key"], "default");
    assert_eq!(malformed["chunks"][0]["name"], "IHello");
    assert!(malformed["chunks"][0]["error"].is_string(), "{malformed}");
    let cut = &run.lines[n - 1];
    assert_eq!(cut["chunks"], serde_json::json!([]));
    assert_eq!(cut["trailing"]["hex"], "30004001", "{cut}");

    // A capture cut in the middle of a record: the datagrams before it, then exit 1.
    let whole = std::fs::read(pcap("librtmfp-cumulus-connect")).unwrap();
    let cut = dir.write(&[whole[..whole.len() - 30].to_vec()]);
    let run = inspect(&["--pcap", &cut[0]]);
    assert_eq!(run.status, 1);
    assert_eq!(run.lines.len(), 19);
    assert!(run.stderr.contains("truncated"), "{}", run.stderr);
}

/// Like rtmfp-cpp in P2P (fixture fcclient-p2p-intro, datagram 023): the responder's DH key is
/// the static key in its RHello certificate, and its SKRC carries none. `--dh-private` is that
/// static key's private part.
#[test]
fn dh_private_works_with_a_static_responder_key() {
    let group = DhGroup::Modp1024;
    let private = fixed_private(31);
    let pair = DhKeyPair::from_private(group, &private).unwrap();
    let policy = NegotiationPolicy::RTMFP_CPP_DEFAULT;
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let now = Instant::from_millis(1);
    let server: SocketAddr = "127.0.0.1:1935".parse().unwrap();
    let certificate = build_static_key_certificate(group.id(), pair.public_key());
    let mut initiator = Initiator::new(
        now,
        InitiatorConfig {
            groups: vec![group],
            policy,
        },
        build_url_epd(b"rtmfp://peer"),
        None,
        &[server],
        ISID,
        &mut rng,
    );
    let Some((_, StartupMessage::IHello { tag, .. })) = initiator.poll_transmit(now) else {
        panic!("no IHello");
    };
    let tag = *tag;
    let cookie = [9u8; 64];
    let mut datagrams = vec![startup(
        0,
        &RHello {
            tag_echo: &tag,
            cookie: &cookie,
            certificate: &certificate,
        },
    )];
    initiator
        .on_rhello(now, server, &tag, &cookie, &certificate, &mut rng)
        .unwrap();
    let Some((
        _,
        StartupMessage::IIKeying {
            certificate: init_cert,
            skic,
            ..
        },
    )) = initiator.poll_transmit(now)
    else {
        panic!("no IIKeying");
    };
    let (init_cert, skic) = (init_cert.to_vec(), skic.to_vec());
    datagrams.push(startup(
        0,
        &IIKeying {
            initiator_session_id: SessionId(ISID),
            cookie_echo: &cookie,
            certificate: &init_cert,
            skic: &skic,
            signature: &[0x58],
        },
    ));
    // The responder's SKRC: negotiation answer and extra randomness, no DH key.
    let answer = negotiate(&policy, &KeyingNegotiation::parse(&skic).unwrap())
        .unwrap()
        .answer;
    let mut buf = [0u8; 128];
    let mut w = Writer::new(&mut buf);
    write_option(&mut w, SKC_SSEQ_NEGOTIATION, &[answer.sseq.0]).unwrap();
    write_option(&mut w, SKC_HMAC_NEGOTIATION, &[answer.hmac.0, 16]).unwrap();
    write_option(&mut w, SKC_EXTRA_RANDOMNESS, &[7; EXTRA_RANDOMNESS_LEN]).unwrap();
    let skrc = w.written().to_vec();
    datagrams.push(startup(
        ISID,
        &RIKeying {
            responder_session_id: SessionId(RSID),
            skrc: &skrc,
            signature: &[0x58],
        },
    ));
    let initiator_key = Certificate::parse(&init_cert)
        .unwrap()
        .static_key(group.id())
        .unwrap()
        .to_vec();
    let shared = pair.compute_shared_secret(&initiator_key).unwrap();
    let keys = derive_session_keys(&shared, &skrc, &skic);
    let established = initiator.on_rikeying(server, RSID, &skrc).unwrap();
    assert_eq!(established.keys.receive_key(), keys.send_key());
    let mut to_responder = established
        .keys
        .encoder(established.negotiated.send)
        .unwrap();
    let connect = Command::new("connect", 1.0, Amf::Null, vec![])
        .to_message(ObjectEncoding::Amf0, 0)
        .unwrap();
    let header = PacketHeader::new(Mode::Initiator);
    datagrams.push(seal(
        &mut to_responder,
        RSID,
        &packet(
            header,
            &user_data(1, Fragment::Whole, Some(&tc_options()), &connect),
        ),
    ));

    let dir = TempDir::new("static");
    let files = dir.write(&datagrams);
    let private_hex = format!(
        "{},{}",
        hex::encode(fixed_private(1)),
        hex::encode(&private)
    );
    let mut args = vec!["--raw"];
    args.extend(files.iter().map(String::as_str));
    args.extend(["--dh-private", &private_hex]);
    let run = inspect(&args);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let session = &run.lines[2]["chunks"][0]["session"];
    assert_eq!(
        session["initiator_to_responder"]["aes128_key"],
        hex::encode(keys.receive_key()),
        "{session}"
    );
    assert_eq!(session["initiator_to_responder"]["hmac_len"], 16);
    let last = &run.lines[3];
    assert_eq!(last["key"], "session", "{last}");
    assert_eq!(last["sseq"], 0);
    assert_eq!(last["chunks"][0]["message"]["command"], "connect");
}

/// An RIKeying sent with session ID 0 instead of the initiator's: the handshake is found by
/// the initiator's address (here none: raw files), and the session still decodes.
#[test]
fn rikeying_with_session_id_zero_still_keys_the_session() {
    let private = fixed_private(41);
    let mut made = make_session(
        NegotiationPolicy::FLASH_COMPATIBLE,
        DhGroup::Modp1024,
        &private,
    );
    let mut copy = made.datagrams[3].clone();
    let plain = rtmfp::crypto::PacketDecoder::startup()
        .decode(&mut copy)
        .unwrap()
        .packet
        .to_vec();
    made.datagrams[3] = seal(&mut PacketEncoder::startup(), 0, &plain);
    let dir = TempDir::new("rikeying-zero");
    let files = dir.write(&made.datagrams);
    let private_hex = hex::encode(&private);
    let mut args = vec!["--raw"];
    args.extend(files.iter().map(String::as_str));
    args.extend(["--dh-private", &private_hex]);
    let run = inspect(&args);
    assert_eq!(run.lines[3]["session_id"], "0x00000000");
    let session = &run.lines[3]["chunks"][0]["session"];
    assert_eq!(session["initiator_session_id"], "0x02000000", "{session}");
    for line in &run.lines[4..] {
        assert_eq!(line["key"], "session", "{line}");
    }
}
