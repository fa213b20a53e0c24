//! Plain packets (RFC 7016 §2.2.4): a header followed by chunks and 0xFF padding.
//!
//! This is the packet after the crypto layer removed the scrambled session ID, the SSEQ, the
//! checksum or HMAC, and decrypted it. Chunk iteration follows the padding rules of RFC 7016 §2.3
//! and the Flash profile: it stops when fewer than 3 bytes remain, at a chunk of type 0xFF, or when a
//! chunk's declared length runs past the end; type 0x00 padding chunks are skipped. Every chunk
//! takes at least 3 bytes, so the number of chunks is bounded by the packet size and no count limit
//! is needed.

use super::chunk::{Chunk, ChunkType, CHUNK_HEADER_LEN};
use super::codec::{Reader, WireError, Writer};
use super::header::PacketHeader;

/// AES block size: the Flash-profile plaintext is padded to a multiple of this (RFC 7425 §4.6).
pub const CIPHER_BLOCK_LEN: usize = 16;
/// Padding byte that fills the plaintext to a block boundary; it reads as the Ignore/Padding chunk
/// type 0xFF (RFC 7016 §2.3, RFC 7425 §4.6).
pub const PADDING_BYTE: u8 = 0xFF;
/// Size of the Flash-profile checksum in front of the packet when HMAC is not used (RFC 7425 §4.6).
pub const FLASH_CHECKSUM_LEN: usize = 2;

/// A parsed plain packet: its header and the bytes that follow (chunks and padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The packet header.
    pub header: PacketHeader,
    /// Everything after the header: chunks, then padding.
    pub body: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Parse a plain packet's header. The chunks are read lazily with [`Packet::chunks`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let header = PacketHeader::parse(&mut r)?;
        Ok(Packet {
            header,
            body: r.rest(),
        })
    }

    /// The parsed chunks, in order.
    pub fn chunks(&self) -> ChunkIter<'a> {
        ChunkIter::new(self.body)
    }

    /// The chunks as raw `(type, payload)` pairs, in order.
    pub fn raw_chunks(&self) -> RawChunks<'a> {
        RawChunks::new(self.body)
    }
}

/// Iterator over the raw chunks of a packet body, as `(type, payload)`, applying the padding rules.
#[derive(Debug, Clone)]
pub struct RawChunks<'a> {
    reader: Reader<'a>,
    done: bool,
}

impl<'a> RawChunks<'a> {
    /// Iterate over the chunks in `body` (the bytes after the packet header).
    pub fn new(body: &'a [u8]) -> Self {
        RawChunks {
            reader: Reader::new(body),
            done: false,
        }
    }

    /// The bytes after the last chunk returned so far; once iteration has ended, the trailing
    /// padding (or whatever could not be framed as a chunk).
    pub fn rest(&self) -> &'a [u8] {
        self.reader.clone().rest()
    }

    fn stop(&mut self) -> Option<(ChunkType, &'a [u8])> {
        self.done = true;
        None
    }
}

impl<'a> Iterator for RawChunks<'a> {
    type Item = (ChunkType, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if self.reader.remaining() < CHUNK_HEADER_LEN {
                return self.stop();
            }
            let mut r = self.reader.clone();
            let kind = ChunkType(r.read_u8().ok()?);
            if kind == ChunkType::END_PADDING {
                return self.stop();
            }
            let len = usize::from(r.read_u16().ok()?);
            let Ok(payload) = r.read_bytes(len) else {
                return self.stop();
            };
            self.reader = r;
            if kind != ChunkType::PADDING {
                return Some((kind, payload));
            }
        }
        None
    }
}

/// Iterator over the parsed chunks of a packet body. A chunk whose payload is malformed yields an
/// error and iteration continues with the next chunk (the framing is intact).
#[derive(Debug, Clone)]
pub struct ChunkIter<'a> {
    raw: RawChunks<'a>,
}

impl<'a> ChunkIter<'a> {
    /// Iterate over the chunks in `body` (the bytes after the packet header).
    pub fn new(body: &'a [u8]) -> Self {
        ChunkIter {
            raw: RawChunks::new(body),
        }
    }
}

impl<'a> Iterator for ChunkIter<'a> {
    type Item = Result<Chunk<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (kind, payload) = self.raw.next()?;
        Some(Chunk::parse(kind, payload))
    }
}

/// Write a packet header followed by `chunks`. Writes nothing on error.
pub fn emit_packet(
    w: &mut Writer<'_>,
    header: &PacketHeader,
    chunks: &[Chunk<'_>],
) -> Result<(), WireError> {
    w.ensure(packet_len(header, chunks))?;
    header.emit(w)?;
    chunks.iter().try_for_each(|c| c.emit(w))
}

/// Encoded size of a packet header followed by `chunks`, without padding.
pub fn packet_len(header: &PacketHeader, chunks: &[Chunk<'_>]) -> usize {
    header.encoded_len() + chunks.iter().map(Chunk::encoded_len).sum::<usize>()
}

/// Number of padding bytes that bring `prefix_len + packet_len` to a multiple of
/// [`CIPHER_BLOCK_LEN`]. In the Flash profile without HMAC the prefix is the 2-byte checksum
/// ([`FLASH_CHECKSUM_LEN`]), plus the SSEQ VLU when session sequence numbers are used; the crypto
/// layer knows which.
pub fn pad_len(prefix_len: usize, packet_len: usize) -> usize {
    let rem = (prefix_len + packet_len) % CIPHER_BLOCK_LEN;
    (CIPHER_BLOCK_LEN - rem) % CIPHER_BLOCK_LEN
}

/// Append 0xFF padding to what `w` holds so that `prefix_len + w.len()` is a multiple of
/// [`CIPHER_BLOCK_LEN`] (see [`pad_len`]). Returns the number of bytes added; writes nothing if they
/// do not fit.
pub fn write_padding(w: &mut Writer<'_>, prefix_len: usize) -> Result<usize, WireError> {
    let n = pad_len(prefix_len, w.len());
    w.put_fill(PADDING_BYTE, n)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::FlowId;
    use crate::wire::arb::{arb_chunk, arb_header};
    use crate::wire::chunk::{BufferProbe, Ping, PingReply};
    use crate::wire::header::Mode;
    use proptest::prelude::*;

    #[test]
    fn padding_rules() {
        // Header 0x0b + timestamp, a Ping, then every padding shape.
        let base = [0x0b, 0x00, 0x01, 0x01, 0x00, 0x01, 0xAA];
        let ping = Chunk::Ping(Ping { body: &[0xAA] });
        for pad in [
            &[][..],
            &[0xFF],
            &[0xFF, 0xFF],
            &[0xFF, 0xFF, 0xFF],
            &[0xFF; 13],
        ] {
            let bytes: Vec<u8> = base.iter().chain(pad).copied().collect();
            let p = Packet::parse(&bytes).unwrap();
            assert_eq!(p.header.mode, Mode::Startup);
            assert_eq!(p.header.timestamp, Some(1));
            assert_eq!(p.chunks().collect::<Vec<_>>(), vec![Ok(ping)]);
        }
        // 0x00 padding chunks are skipped; a length past the end stops iteration.
        let body = [
            0x00, 0x00, 0x01, 0x99, 0x41, 0x00, 0x00, 0x18, 0x00, 0x01, 0x07, 0x01, 0x00, 0x09,
        ];
        let chunks: Vec<_> = ChunkIter::new(&body).collect();
        assert_eq!(
            chunks,
            vec![
                Ok(Chunk::PingReply(PingReply { body: &[] })),
                Ok(Chunk::BufferProbe(BufferProbe { flow_id: FlowId(7) })),
            ]
        );
        let mut raw = RawChunks::new(&body);
        assert_eq!(raw.by_ref().count(), 2);
        assert_eq!(raw.rest(), &[0x01, 0x00, 0x09]);
        assert_eq!(raw.next(), None);
        // Padding is left over after the last chunk.
        let mut raw = RawChunks::new(&[0x0C, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(raw.next(), Some((ChunkType::CLOSE, &[][..])));
        assert_eq!(raw.next(), None);
        assert_eq!(raw.rest(), &[0xFF; 4]);
        // A malformed chunk yields an error and iteration continues.
        let body = [0x18, 0x00, 0x01, 0x81, 0x01, 0x00, 0x00];
        let chunks: Vec<_> = ChunkIter::new(&body).collect();
        assert_eq!(
            chunks,
            vec![
                Err(WireError::UnexpectedEnd),
                Ok(Chunk::Ping(Ping { body: &[] }))
            ]
        );
        // A forbidden mode fails the packet.
        assert!(Packet::parse(&[0x08, 0, 0]).is_err());
    }

    #[test]
    fn pad_to_blocks() {
        assert_eq!(pad_len(2, 14), 0);
        assert_eq!(pad_len(2, 15), 15);
        assert_eq!(pad_len(0, 1), 15);
        let mut buf = [0u8; 32];
        let mut w = Writer::new(&mut buf);
        let header = PacketHeader {
            timestamp: Some(5),
            ..PacketHeader::new(Mode::Responder)
        };
        emit_packet(&mut w, &header, &[Chunk::Ping(Ping { body: &[1, 2] })]).unwrap();
        assert_eq!(w.len(), 3 + 5);
        assert_eq!(write_padding(&mut w, FLASH_CHECKSUM_LEN), Ok(6));
        assert_eq!((FLASH_CHECKSUM_LEN + w.len()) % CIPHER_BLOCK_LEN, 0);
        assert!(w.written().ends_with(&[0xFF; 6]));
        let p = Packet::parse(w.written()).unwrap();
        assert_eq!(p.chunks().count(), 1);
        let mut small = [0u8; 4];
        let mut w = Writer::new(&mut small);
        assert!(emit_packet(&mut w, &header, &[Chunk::Ping(Ping { body: &[1, 2] })]).is_err());
        assert!(w.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn packet_round_trip(h in arb_header(),
                             chunks in proptest::collection::vec(arb_chunk(), 0..6),
                             prefix in 0usize..20) {
            let len = packet_len(&h, &chunks);
            let mut buf = vec![0u8; len + CIPHER_BLOCK_LEN];
            let mut w = Writer::new(&mut buf);
            emit_packet(&mut w, &h, &chunks).unwrap();
            prop_assert_eq!(w.len(), len);
            write_padding(&mut w, prefix).unwrap();
            prop_assert_eq!((prefix + w.len()) % CIPHER_BLOCK_LEN, 0);
            let p = Packet::parse(w.written()).unwrap();
            prop_assert_eq!(p.header, h);
            let parsed: Vec<_> = p.chunks().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(parsed, chunks);
        }
    }
}
