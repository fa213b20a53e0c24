//! Updraft data plane: packet I/O backends behind one batch trait (AF_XDP, recvmmsg/sendmmsg),
//! pinned workers, session shards, publications and fanout.
//!
//! Not implemented yet: this crate is filled by the server issue (socket mode) and the kernel-bypass
//! issue (AF_XDP). It deliberately exports nothing until then.
