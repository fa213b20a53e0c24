//! Known-answer tests against real captures (`../shared/fixtures/`, see its README) and the replay of
//! the committed fuzz corpora.
//!
//! For every startup datagram (decoded.tsv key `default`), the test decrypts it with the public
//! Flash-profile default key (here, in the test only; crypto is another module's job), checks the
//! checksum and the unscrambled session ID, parses it with this module, renders what it found in
//! decoded.tsv's notation and compares the whole line: flags, timestamp, echo, and for each chunk
//! its type, name, field sizes, session IDs, option lists of EPDs, certificates and key components,
//! signature and redirect addresses.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, KeyIvInit};

use super::*;

/// The fixtures folder, `../shared` relative to the repository root.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures");
/// Flash-profile default key (RFC 7425 §4.6).
const DEFAULT_KEY: &[u8; 16] = b"Adobe Systems 02";
/// Size of the scrambled session ID in front of the ciphertext (RFC 7016 §2.2.2).
const SSID_LEN: usize = 4;

/// RFC 1071 Internet checksum.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(c.get(1).copied().unwrap_or(0)))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn internet_checksum_vector() {
    // docs/rtmfp.md §1.17.
    assert_eq!(internet_checksum(&[1, 2, 3, 4, 5]), 0xF6F9);
}

/// Decrypt a startup datagram. Returns the unscrambled session ID and the plaintext.
fn decrypt_default(datagram: &[u8]) -> (u32, Vec<u8>) {
    let (ssid, ct) = datagram.split_at(SSID_LEN);
    assert!(
        ct.len() >= 16 && ct.len() % 16 == 0,
        "ciphertext is whole blocks"
    );
    let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let session_id = word(ssid) ^ word(&ct[0..4]) ^ word(&ct[4..8]);
    let mut pt = ct.to_vec();
    cbc::Decryptor::<aes::Aes128>::new(DEFAULT_KEY.into(), &[0u8; 16].into())
        .decrypt_padded_mut::<NoPadding>(&mut pt)
        .expect("whole blocks");
    (session_id, pt)
}

/// Render a flags byte of an HMAC or SSEQ negotiation option the way decoded.tsv does.
fn negotiation_flags(f: u8) -> String {
    let names: Vec<&str> = [(0x04, "SND"), (0x02, "SOR"), (0x01, "REQ")]
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        "0".into()
    } else {
        names.join("+")
    }
}

/// Which field an option sequence belongs to; the same type code means different things in each.
#[derive(Clone, Copy)]
enum Field {
    Epd,
    Certificate,
    KeyComponent,
}

/// Render an option sequence (no marker in any fixture) as decoded.tsv does.
fn render_options(field: Field, bytes: &[u8]) -> String {
    let mut it = options(bytes);
    let rendered: Vec<String> = it
        .by_ref()
        .map(|o| {
            let o = o.expect("well-formed option");
            let mut value = Reader::new(o.value);
            let name = match (field, o.kind) {
                (Field::Epd, 0x0A) => {
                    format!(
                        "(ancillary-data)='{}'",
                        std::str::from_utf8(o.value).unwrap()
                    )
                }
                (Field::Epd, 0x0F) => {
                    format!("(fingerprint)={}...", hex::encode(&o.value[..8]))
                }
                (Field::Certificate, 0x0A) => {
                    assert!(o.value.is_empty());
                    "(accepts-ancillary-data)".into()
                }
                (Field::Certificate, 0x15) => {
                    format!("(supported-dh-group):g{}", o.value_vlu().unwrap())
                }
                (Field::Certificate, 0x1D) => {
                    let g = value.read_vlu().unwrap();
                    format!("(static-dh-public-key):g{g}/{}B", value.remaining())
                }
                (Field::Certificate | Field::KeyComponent, 0x0E) => {
                    format!("(extra-randomness)/{}B", o.value.len())
                }
                (Field::KeyComponent, 0x1D) => {
                    format!("(dh-group-select):g{}", o.value_vlu().unwrap())
                }
                (Field::KeyComponent, 0x0D) => {
                    let g = value.read_vlu().unwrap();
                    format!("(dh-public-key):g{g}/{}B", value.remaining())
                }
                (Field::KeyComponent, 0x1A) => {
                    let f = value.read_u8().unwrap();
                    format!(
                        "(hmac-negotiation):{}/len{}",
                        negotiation_flags(f),
                        value.read_vlu().unwrap()
                    )
                }
                (Field::KeyComponent, 0x1E) => {
                    format!(
                        "(sseq-negotiation):{}",
                        negotiation_flags(value.read_u8().unwrap())
                    )
                }
                _ => panic!("option 0x{:02x} not in any fixture", o.kind),
            };
            format!("0x{:02x}{name}", o.kind)
        })
        .collect();
    assert!(!it.marker_seen(), "no fixture field has a marker");
    rendered.join(",")
}

/// Render one chunk as decoded.tsv does.
fn render_chunk(c: &Chunk<'_>) -> String {
    let mut s = format!("0x{:02x} {}", c.kind().0, c.kind().name());
    match c {
        Chunk::IHello(h) => {
            write!(
                s,
                " epd=[{}] tag={}B",
                render_options(Field::Epd, h.epd),
                h.tag.len()
            )
            .unwrap();
        }
        Chunk::RHello(h) => write!(
            s,
            " tag={}B cookie={}B cert={}B[{}]",
            h.tag_echo.len(),
            h.cookie.len(),
            h.certificate.len(),
            render_options(Field::Certificate, h.certificate)
        )
        .unwrap(),
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
        )
        .unwrap(),
        Chunk::RIKeying(k) => write!(
            s,
            " rsid=0x{:08x} skrc={}B[{}] sig={}",
            k.responder_session_id.0,
            k.skrc.len(),
            render_options(Field::KeyComponent, k.skrc),
            hex::encode(k.signature)
        )
        .unwrap(),
        Chunk::Redirect(r) => {
            let addrs: Vec<String> = r
                .addresses()
                .map(|a| {
                    let a = a.unwrap();
                    format!("{}/origin{}", a.addr, a.origin as u8)
                })
                .collect();
            write!(s, " tag={}B addrs={}", r.tag_echo.len(), addrs.join(",")).unwrap();
        }
        other => panic!("chunk {other:?} not expected in a startup packet"),
    }
    s
}

fn fixtures_dir() -> PathBuf {
    let dir = PathBuf::from(FIXTURES);
    assert!(
        dir.is_dir(),
        "fixtures folder {} is missing: the known-answer tests need ../shared/fixtures next to the \
         repository",
        dir.display()
    );
    dir
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn startup_packets_match_decoded_tsv() {
    let mut checked = 0;
    let mut seen_types = std::collections::BTreeSet::new();
    for capture in sorted_entries(&fixtures_dir())
        .into_iter()
        .filter(|p| p.is_dir())
    {
        let tsv = fs::read_to_string(capture.join("decoded.tsv")).expect("decoded.tsv");
        let mut lines = tsv.lines();
        let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
        assert_eq!(
            header,
            [
                "file",
                "ssid_session_id",
                "key",
                "sseq",
                "hmac_len",
                "flags",
                "ts",
                "tse",
                "chunks"
            ]
        );
        for line in lines {
            let cols: Vec<&str> = line.split('\t').collect();
            let [file, sid, key, sseq, hmac, flags, ts, tse, chunks] = cols[..] else {
                panic!("bad line {line:?}")
            };
            if key != "default" {
                continue;
            }
            let what = format!("{}/{file}", capture.display());
            assert_eq!(
                (sseq, hmac),
                ("-", "-"),
                "{what}: startup packets have neither"
            );
            let datagram = fs::read(capture.join(file)).expect("datagram");
            let (session_id, plain) = decrypt_default(&datagram);
            assert_eq!(format!("0x{session_id:08x}"), sid, "{what}: session ID");
            let (sum, packet) = plain.split_at(FLASH_CHECKSUM_LEN);
            assert_eq!(
                u16::from_be_bytes([sum[0], sum[1]]),
                internet_checksum(packet),
                "{what}"
            );

            let p = Packet::parse(packet).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(format!("0x{:02x}", packet[0]), flags, "{what}: flags byte");
            assert_eq!(
                format!("0x{:02x}", p.header.flags()),
                flags,
                "{what}: decoded flags"
            );
            assert_eq!(p.header.mode, Mode::Startup, "{what}");
            let opt = |v: Option<u16>| v.map_or("-".to_string(), |v| v.to_string());
            assert_eq!(opt(p.header.timestamp), ts, "{what}: timestamp");
            assert_eq!(opt(p.header.timestamp_echo), tse, "{what}: echo");

            let parsed: Vec<Chunk<'_>> = p
                .chunks()
                .map(|c| c.unwrap_or_else(|e| panic!("{what}: {e}")))
                .collect();
            let rendered: Vec<String> = parsed.iter().map(render_chunk).collect();
            assert_eq!(rendered.join(" | "), chunks, "{what}: chunks");
            for c in &parsed {
                assert!(c.kind().allowed_in(Mode::Startup));
                seen_types.insert(c.kind());
            }

            // Only 0xFF padding follows the chunks, and it ends on a block boundary.
            let mut raw = p.raw_chunks();
            raw.by_ref().for_each(drop);
            assert!(
                raw.rest().iter().all(|&b| b == PADDING_BYTE),
                "{what}: padding"
            );
            assert_eq!(
                raw.rest().len(),
                pad_len(FLASH_CHECKSUM_LEN, packet.len() - raw.rest().len())
            );

            // Re-emitting the parsed packet gives back the original bytes, padding included.
            let mut buf = vec![0u8; packet.len()];
            let mut w = Writer::new(&mut buf);
            emit_packet(&mut w, &p.header, &parsed).unwrap();
            write_padding(&mut w, FLASH_CHECKSUM_LEN).unwrap();
            assert_eq!(w.written(), packet, "{what}: re-emitted bytes");
            checked += 1;
        }
    }
    // 24 session-ID-0 datagrams plus 7 RIKeyings (fixtures README, "Facts" 1 and 2).
    assert_eq!(checked, 31, "startup datagrams checked");
    let expected = [
        ChunkType::IHELLO,
        ChunkType::IIKEYING,
        ChunkType::RHELLO,
        ChunkType::REDIRECT,
        ChunkType::RIKEYING,
    ];
    assert_eq!(seen_types.into_iter().collect::<Vec<_>>(), expected);
}

#[test]
fn replays_fuzz_corpus() {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus"));
    for (target, run) in [
        ("packet", fuzzing::fuzz_packet as fn(&[u8])),
        ("chunks", fuzzing::fuzz_chunks),
    ] {
        let dir = root.join(target);
        assert!(dir.is_dir(), "fuzz corpus {} is missing", dir.display());
        let files = sorted_entries(&dir);
        assert!(!files.is_empty(), "fuzz corpus {} is empty", dir.display());
        for file in files {
            run(&fs::read(&file).unwrap());
        }
    }
}

#[test]
fn fuzz_helpers_accept_garbage() {
    for data in [
        &[][..],
        &[0x0b],
        &[0x00, 0x00],
        &[0x4e, 0x10, 0x00, 0x01, 0x80],
        &[0xFF; 7],
    ] {
        fuzzing::fuzz_packet(data);
        fuzzing::fuzz_chunks(data);
    }
}
