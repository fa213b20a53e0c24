//! NetGroup bootstrapping messages on `GC` flows (digest §1.14; Cumulus `FlowGroup`,
//! MonaServer2, fluder/rtmfp-reversed names `GroupJoin`/`BestPeer`).
//!
//! These are raw flow messages, without the TC type/timestamp header.

use sha2::{Digest, Sha256};

use super::{read_vlu, write_vlu, FlashError};
use crate::ids::PeerId;

/// Message type of a group join (client to server). Digest §1.14.
pub const GROUP_JOIN: u8 = 0x01;
/// Message type of a group member introduction (server to client). Digest §1.14.
pub const GROUP_MEMBER: u8 = 0x0B;
/// Type of a join's option that carries groupspec-derived bytes to hash into the group ID
/// (older Flash versions). Digest §1.14.
pub const GROUP_SPEC_HASH_FLAG: u8 = 0x10;
/// Type of a join's option that carries the 32-byte group ID itself, as Flash Player and
/// librtmfp send it (`01 21 15 <group ID>`). Cumulus reads the ID after any type but
/// [`GROUP_SPEC_HASH_FLAG`].
pub const GROUP_ID_OPTION: u8 = 0x15;
/// Length of a group ID and of a peer ID (SHA-256). Digest §1.2.
pub const GROUP_ID_LEN: usize = 32;

/// A NetGroup group ID (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub [u8; GROUP_ID_LEN]);

/// A parsed group join: `0x01` and one option, `VLU(len) | type | value` (len counts the type
/// byte). Type [`GROUP_SPEC_HASH_FLAG`]: the group ID is SHA-256 of the value; any other type
/// (Flash and librtmfp send [`GROUP_ID_OPTION`]): the value starts with the 32-byte group ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupJoin {
    /// The group being joined.
    pub group_id: GroupId,
}

impl GroupJoin {
    /// Parses a join message. Bytes after the option are ignored.
    pub fn parse(bytes: &[u8]) -> Result<Self, FlashError> {
        let (&kind, rest) = bytes.split_first().ok_or(FlashError::UnexpectedEnd)?;
        if kind != GROUP_JOIN {
            return Err(FlashError::InvalidGroupMessage);
        }
        let (len, n) = read_vlu(rest)?;
        let len = usize::try_from(len).map_err(|_| FlashError::UnexpectedEnd)?;
        let option = n
            .checked_add(len)
            .and_then(|end| rest.get(n..end))
            .ok_or(FlashError::UnexpectedEnd)?;
        let group_id = match option.split_first() {
            Some((&GROUP_SPEC_HASH_FLAG, spec)) => GroupId(Sha256::digest(spec).into()),
            Some((_, value)) => GroupId(
                value
                    .get(..GROUP_ID_LEN)
                    .and_then(|id| id.try_into().ok())
                    .ok_or(FlashError::InvalidGroupMessage)?,
            ),
            None => return Err(FlashError::InvalidGroupMessage),
        };
        Ok(GroupJoin { group_id })
    }

    /// Appends a join message carrying the 32-byte group ID, as Flash Player sends it.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(GROUP_JOIN);
        write_vlu(out, GROUP_ID_LEN as u64 + 1);
        out.push(GROUP_ID_OPTION);
        out.extend_from_slice(&self.group_id.0);
    }

    /// Appends a join message in the older form: groupspec-derived bytes, which the receiver
    /// hashes into the group ID.
    pub fn emit_hashed(spec: &[u8], out: &mut Vec<u8>) {
        out.push(GROUP_JOIN);
        write_vlu(out, spec.len() as u64 + 1);
        out.push(GROUP_SPEC_HASH_FLAG);
        out.extend_from_slice(spec);
    }
}

/// Appends a member message `0x0B | peer ID`, telling the receiver about one group member.
pub fn emit_member(peer: &PeerId, out: &mut Vec<u8>) {
    out.push(GROUP_MEMBER);
    out.extend_from_slice(&peer.0);
}

/// Parses a member message `0x0B | peer ID`.
pub fn parse_member(bytes: &[u8]) -> Result<PeerId, FlashError> {
    match bytes.split_first() {
        Some((&GROUP_MEMBER, id)) => Ok(PeerId(
            id.try_into().map_err(|_| FlashError::InvalidGroupMessage)?,
        )),
        Some(_) => Err(FlashError::InvalidGroupMessage),
        None => Err(FlashError::UnexpectedEnd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_join() {
        // librtmfp's join (`RTMFPWriter::writeGroupConnect`): 01 21 15 <group ID>.
        let id = [0xAB; 32];
        let mut bytes = vec![0x01, 0x21, 0x15];
        bytes.extend_from_slice(&id);
        assert_eq!(
            GroupJoin::parse(&bytes),
            Ok(GroupJoin {
                group_id: GroupId(id)
            })
        );
        let mut out = Vec::new();
        GroupJoin {
            group_id: GroupId(id),
        }
        .emit(&mut out);
        assert_eq!(out, bytes);
        // Cumulus takes the ID after any type but 0x10, even one starting with 0x10.
        let mut other = vec![0x01, 0x21, 0x07];
        other.extend_from_slice(&[GROUP_SPEC_HASH_FLAG; 32]);
        assert_eq!(
            GroupJoin::parse(&other),
            Ok(GroupJoin {
                group_id: GroupId([GROUP_SPEC_HASH_FLAG; 32])
            })
        );

        // Hashed form: SHA-256("abc") (FIPS 180-2 example).
        let hashed = [0x01, 0x04, 0x10, b'a', b'b', b'c'];
        let expected =
            hex::decode("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
                .expect("hex");
        let join = GroupJoin::parse(&hashed).expect("join");
        assert_eq!(join.group_id.0[..], expected[..]);
        let mut out = Vec::new();
        GroupJoin::emit_hashed(b"abc", &mut out);
        assert_eq!(out, hashed);
    }

    #[test]
    fn bad_join() {
        assert_eq!(GroupJoin::parse(&[]), Err(FlashError::UnexpectedEnd));
        assert_eq!(
            GroupJoin::parse(&[0x02, 0x00]),
            Err(FlashError::InvalidGroupMessage)
        );
        assert_eq!(
            GroupJoin::parse(&[0x01, 0x05, 0x10]),
            Err(FlashError::UnexpectedEnd)
        );
        // An empty option, and an ID option shorter than an ID.
        assert_eq!(
            GroupJoin::parse(&[0x01, 0x00]),
            Err(FlashError::InvalidGroupMessage)
        );
        assert_eq!(
            GroupJoin::parse(&[0x01, 0x02, 0x15, 0xBB]),
            Err(FlashError::InvalidGroupMessage)
        );
        assert_eq!(
            GroupJoin::parse(&[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            Err(FlashError::InvalidVlu)
        );
    }

    #[test]
    fn golden_member() {
        let peer = PeerId([0x5A; 32]);
        let mut out = Vec::new();
        emit_member(&peer, &mut out);
        assert_eq!(out.len(), 33);
        assert_eq!(out[0], 0x0B);
        assert_eq!(parse_member(&out), Ok(peer));
        assert_eq!(
            parse_member(&out[..32]),
            Err(FlashError::InvalidGroupMessage)
        );
        assert_eq!(parse_member(&[0x01]), Err(FlashError::InvalidGroupMessage));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn round_trip(id in any::<[u8; 32]>(), spec in proptest::collection::vec(any::<u8>(), 0..200)) {
            let join = GroupJoin { group_id: GroupId(id) };
            let mut out = Vec::new();
            join.emit(&mut out);
            prop_assert_eq!(GroupJoin::parse(&out), Ok(join));
            let mut out = Vec::new();
            GroupJoin::emit_hashed(&spec, &mut out);
            let hashed: [u8; 32] = Sha256::digest(&spec).into();
            prop_assert_eq!(GroupJoin::parse(&out), Ok(GroupJoin { group_id: GroupId(hashed) }));
            let mut out = Vec::new();
            emit_member(&PeerId(id), &mut out);
            prop_assert_eq!(parse_member(&out), Ok(PeerId(id)));
        }
    }
}
