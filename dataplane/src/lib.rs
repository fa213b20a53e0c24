//! Updraft data plane: packet I/O behind one batch trait ([`io::BatchIo`]; sockets, and
//! [`mem::MemIo`] in memory for tests and benchmarks), pinned workers
//! that each own a shard of sessions ([`worker`]), and the start-up of a set of workers on
//! `SO_REUSEPORT` sockets ([`plane`]), and AF_XDP: the rings ([`xsk`]) and the backend and
//! its set-up on an interface ([`xdp`]).

pub mod counters;
pub mod deny;
pub mod io;
pub mod media;
pub mod mem;
pub mod plane;
pub mod prefetch;
pub mod sys;
pub mod wheel;
pub mod worker;
pub mod xdp;
pub mod xsk;
