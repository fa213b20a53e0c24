//! `--dump`: every session packet the workers send and receive, decrypted and decoded into one
//! JSON line of the log (header, chunks, and the Flash message of each whole user-data
//! fragment, as `updraft inspect` shows them).

use std::net::SocketAddr;

use rtmfp::wire::{Chunk, ChunkIter, PacketHeader, Reader};
use serde_json::{json, Value};

use crate::inspect_flash::message_json;

/// The JSON description of one plain packet (flags byte onward).
pub fn packet_json(plain: &[u8]) -> Value {
    let mut r = Reader::new(plain);
    let header = match PacketHeader::parse(&mut r) {
        Ok(h) => h,
        Err(e) => return json!({"error": e.to_string(), "len": plain.len()}),
    };
    let mut chunks = Vec::new();
    for c in ChunkIter::new(r.rest()) {
        let c = match c {
            Ok(c) => c,
            Err(e) => {
                chunks.push(json!({"error": e.to_string()}));
                break;
            }
        };
        let mut v = json!({"type": format!("0x{:02x}", c.kind().0), "name": c.kind().name()});
        match &c {
            Chunk::UserData(u) => {
                v["flow"] = json!(u.flow_id.0);
                v["seq"] = json!(u.seq);
                v["fsn_offset"] = json!(u.fsn_offset);
                v["fragment"] = json!(format!("{:?}", u.flags.fragment));
                v["len"] = json!(u.data.len());
                if u.flags.fragment == rtmfp::wire::Fragment::Whole && !u.flags.abandoned {
                    v["message"] = message_json(u.data);
                }
            }
            Chunk::NextUserData(u) => {
                v["fragment"] = json!(format!("{:?}", u.flags.fragment));
                v["len"] = json!(u.data.len());
                if u.flags.fragment == rtmfp::wire::Fragment::Whole && !u.flags.abandoned {
                    v["message"] = message_json(u.data);
                }
            }
            Chunk::BitmapAck(a) => {
                v["flow"] = json!(a.flow_id.0);
                v["cum_ack"] = json!(a.cum_ack);
            }
            Chunk::RangeAck(a) => {
                v["flow"] = json!(a.flow_id.0);
                v["cum_ack"] = json!(a.cum_ack);
            }
            _ => {}
        }
        chunks.push(v);
    }
    json!({
        "mode": format!("{:?}", header.mode),
        "timestamp": header.timestamp,
        "timestamp_echo": header.timestamp_echo,
        "chunks": chunks,
    })
}

/// Logs one packet (the worker's dump hook).
pub fn log_packet(session: u32, peer: SocketAddr, outgoing: bool, plain: &[u8]) {
    let direction = if outgoing { "out" } else { "in" };
    tracing::info!(
        target: "dump",
        session,
        %peer,
        direction,
        "{}",
        packet_json(plain)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtmfp::wire::{ChunkBody, Mode, Ping, Writer};

    #[test]
    fn a_ping_packet_is_described() {
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        let mut h = PacketHeader::new(Mode::Responder);
        h.timestamp = Some(7);
        h.emit(&mut w).unwrap();
        Ping { body: b"hi" }.emit(&mut w).unwrap();
        let n = w.position();
        let v = packet_json(&buf[..n]);
        assert_eq!(v["timestamp"], 7);
        assert_eq!(v["chunks"][0]["name"], "Ping");
        assert!(packet_json(&[]).get("error").is_some());
    }
}
