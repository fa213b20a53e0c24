//! Round-trip checks over arbitrary input, shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`)
//! and by the corpus replay test. They panic when an invariant breaks; that is their purpose. They
//! allocate scratch buffers, so they are not for the packet path.

use super::chunk::{BitmapAck, Chunk, ChunkBody, RangeAck, Redirect, CHUNK_HEADER_LEN};
use super::codec::{Reader, Writer};
use super::header::{PacketHeader, MAX_HEADER_LEN};
use super::option::{options, RawOption};
use super::packet::{emit_packet, packet_len, Packet, RawChunks};

/// Parse `data` as a plain packet. If the header parses, check that it and every chunk that parses
/// re-emit and re-parse to the same value, and that the whole packet re-emits to the same chunks.
pub fn fuzz_packet(data: &[u8]) {
    let Ok(packet) = Packet::parse(data) else {
        return;
    };
    let mut hbuf = [0u8; MAX_HEADER_LEN];
    let mut w = Writer::new(&mut hbuf);
    packet.header.emit(&mut w).expect("header re-emits");
    assert_eq!(w.len(), packet.header.encoded_len());
    assert_eq!(
        PacketHeader::parse(&mut Reader::new(w.written())),
        Ok(packet.header)
    );

    fuzz_chunks(packet.body);

    let chunks: Vec<Chunk<'_>> = packet.chunks().filter_map(Result::ok).collect();
    let len = packet_len(&packet.header, &chunks);
    assert!(
        len <= data.len(),
        "re-emitted packet is not longer than the original"
    );
    let mut buf = vec![0u8; len];
    let mut w = Writer::new(&mut buf);
    emit_packet(&mut w, &packet.header, &chunks).expect("packet re-emits");
    let again = Packet::parse(w.written()).expect("re-emitted packet parses");
    assert_eq!(again.header, packet.header);
    let reparsed: Vec<Chunk<'_>> = again
        .chunks()
        .map(|c| c.expect("chunk re-parses"))
        .collect();
    assert_eq!(reparsed, chunks);
}

/// Parse `data` as a packet body (chunks and padding). Check that every chunk that parses re-emits
/// to at most its original size and re-parses to the same value, and that its inner structures
/// (options, addresses, acknowledged ranges) survive a round trip through their own emitters.
pub fn fuzz_chunks(data: &[u8]) {
    let mut buf = vec![0u8; data.len() + CHUNK_HEADER_LEN];
    for (kind, payload) in RawChunks::new(data) {
        let Ok(chunk) = Chunk::parse(kind, payload) else {
            continue;
        };
        assert_eq!(chunk.kind(), kind);
        assert!(chunk.encoded_len() <= CHUNK_HEADER_LEN + payload.len());
        let mut w = Writer::new(&mut buf);
        chunk.emit(&mut w).expect("parsed chunk re-emits");
        assert_eq!(w.len(), chunk.encoded_len());
        let mut raw = RawChunks::new(w.written());
        let (k, p) = raw.next().expect("re-emitted chunk is framed");
        assert_eq!(Chunk::parse(k, p), Ok(chunk));
        check_inner(&chunk);
    }
}

/// Round-trip the structures inside a chunk through their own emitters.
fn check_inner(chunk: &Chunk<'_>) {
    match chunk {
        Chunk::UserData(ud) => check_options(ud.options),
        Chunk::NextUserData(ud) => check_options(ud.options),
        Chunk::Redirect(r) => {
            let addrs: Vec<_> = r
                .addresses()
                .map(|a| a.expect("checked when parsed"))
                .collect();
            let mut buf = vec![0u8; Redirect::encoded_len_with(r.tag_echo, &addrs)];
            let mut w = Writer::new(&mut buf);
            Redirect::emit_with(&mut w, r.tag_echo, &addrs).expect("redirect re-emits");
            let (_, p) = RawChunks::new(w.written()).next().expect("framed");
            // Compare decoded addresses: reserved flag bits are dropped on emit.
            let again = Redirect::parse(p).expect("re-parses");
            assert_eq!(again.tag_echo, r.tag_echo);
            let again: Vec<_> = again.addresses().map(|a| a.expect("valid")).collect();
            assert_eq!(again, addrs);
        }
        Chunk::RangeAck(ack) => {
            let ranges: Vec<_> = ack.ranges().collect();
            let len =
                RangeAck::encoded_len_for(ack.flow_id, ack.buffer_blocks, ack.cum_ack, &ranges)
                    .expect("parsed ranges are ordered");
            assert!(len <= ack.encoded_len());
            let mut buf = vec![0u8; len];
            let mut w = Writer::new(&mut buf);
            let n = RangeAck::emit_from_ranges(
                &mut w,
                ack.flow_id,
                ack.buffer_blocks,
                ack.cum_ack,
                &ranges,
                false,
            )
            .expect("range ack re-emits");
            assert_eq!(n, ranges.len());
            let (_, p) = RawChunks::new(w.written()).next().expect("framed");
            let again = RangeAck::parse(p).expect("re-parses");
            assert_eq!(again.ranges().collect::<Vec<_>>(), ranges);
        }
        Chunk::BitmapAck(ack) => {
            let ranges: Vec<_> = ack.ranges().collect();
            let len =
                BitmapAck::encoded_len_for(ack.flow_id, ack.buffer_blocks, ack.cum_ack, &ranges)
                    .expect("parsed ranges are ordered");
            assert!(len <= ack.encoded_len());
            let mut buf = vec![0u8; len];
            let mut w = Writer::new(&mut buf);
            BitmapAck::emit_from_ranges(
                &mut w,
                ack.flow_id,
                ack.buffer_blocks,
                ack.cum_ack,
                &ranges,
            )
            .expect("bitmap ack re-emits");
            let (_, p) = RawChunks::new(w.written()).next().expect("framed");
            let again = BitmapAck::parse(p).expect("re-parses");
            assert_eq!(again.ranges().collect::<Vec<_>>(), ranges);
        }
        _ => {}
    }
}

/// Every option of a User Data option list re-emits and re-parses to itself.
fn check_options(list: Option<&[u8]>) {
    let Some(list) = list else { return };
    for opt in options(list) {
        let opt: RawOption<'_> = opt.expect("checked when parsed");
        let mut buf = vec![0u8; opt.encoded_len()];
        let mut w = Writer::new(&mut buf);
        opt.emit(&mut w).expect("option re-emits");
        assert_eq!(options(w.written()).next(), Some(Ok(opt)));
    }
}
