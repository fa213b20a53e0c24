//! Wire encoding of RTMFP plain packets (RFC 7016 §2): VLUs, options, addresses, the packet header
//! and every chunk.
//!
//! What it does: zero-copy parsing into borrowed views ([`Packet`], [`Chunk`] and one struct per
//! chunk), and emitters that write into a caller-supplied buffer through a [`Writer`], without
//! allocating. Parsers never panic and never allocate; VLUs are limited to [`MAX_VLU_LEN`] bytes.
//!
//! What it does not do: no crypto (scrambled session IDs, checksums, HMAC, SSEQ and AES belong to
//! the crypto layer, which hands this module the decrypted packet), and no semantics (allowed modes,
//! sequence-number rules and option meanings belong to the startup, session and flow layers).

mod address;
mod chunk;
mod codec;
#[doc(hidden)]
pub mod fuzzing;
mod header;
mod option;
mod packet;

#[cfg(test)]
mod arb;
#[cfg(test)]
mod known_answers;

pub use address::{Address, AddressIter, AddressOrigin};
pub use chunk::{
    BitmapAck, BitmapRanges, BufferProbe, Chunk, ChunkBody, ChunkType, Close, CloseAck,
    CookieChange, EcnReport, FlowExceptionReport, ForwardedIHello, Fragment, IHello, IIKeying,
    NextUserData, PacketFragment, Ping, PingReply, RHello, RIKeying, RangeAck, RangeAckRanges,
    Redirect, SplitData, UserData, UserDataFlags, UserDataLike, CHUNK_HEADER_LEN,
    MAX_CHUNK_PAYLOAD,
};
pub use codec::{vlu_len, Reader, WireError, Writer, MAX_VLU_LEN};
pub use header::{Mode, PacketHeader, MAX_HEADER_LEN};
pub use option::{
    option_len, options, split_option_list, validate_options, vlu_option_len, write_marker,
    write_option, write_vlu_option, Options, RawOption, MARKER, MARKER_LEN,
};
pub use packet::{
    emit_packet, packet_len, pad_len, write_padding, ChunkIter, Packet, RawChunks,
    CIPHER_BLOCK_LEN, FLASH_CHECKSUM_LEN, PADDING_BYTE,
};
