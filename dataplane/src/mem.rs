//! An in-memory packet backend for tests and benchmarks: a [`Worker`](crate::worker::Worker)
//! driven through [`MemIo`] receives the datagrams its [`MemPeer`] delivers and leaves what it
//! sends with the peer, without a socket or the kernel in between.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::io::{BatchIo, RxBatch, TxBatch, BATCH};
use crate::sys::EventFd;

/// A datagram and the address it came from or goes to.
pub type Datagram = (SocketAddr, Vec<u8>);

/// What the two ends share.
#[derive(Debug)]
struct Queues {
    /// Datagrams waiting to be received, oldest first.
    inbox: Mutex<VecDeque<Datagram>>,
    /// Datagrams sent, oldest first, until the peer takes them.
    sent: Mutex<Vec<Datagram>>,
    /// Readable while `inbox` is not empty.
    ready: EventFd,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The queues hold plain data: a panic elsewhere leaves them consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The backend end, given to a worker: receives what the peer delivered, records what it sends.
#[derive(Debug)]
pub struct MemIo {
    queues: Arc<Queues>,
}

/// The other end, kept by the test or benchmark: delivers datagrams, takes what was sent.
#[derive(Debug, Clone)]
pub struct MemPeer {
    queues: Arc<Queues>,
}

impl MemIo {
    /// A connected backend and peer, both empty.
    pub fn pair() -> io::Result<(MemIo, MemPeer)> {
        let queues = Arc::new(Queues {
            inbox: Mutex::new(VecDeque::new()),
            sent: Mutex::new(Vec::new()),
            ready: EventFd::new()?,
        });
        Ok((
            MemIo {
                queues: Arc::clone(&queues),
            },
            MemPeer { queues },
        ))
    }
}

impl MemPeer {
    /// Queues `bytes` for the backend to receive as coming from `from`, and makes its
    /// readiness descriptor readable.
    pub fn deliver(&self, from: SocketAddr, bytes: &[u8]) {
        let mut inbox = lock(&self.queues.inbox);
        inbox.push_back((from, bytes.to_vec()));
        // Woken under the lock, so a receive that empties the queue cannot miss it.
        self.queues.ready.wake();
    }

    /// Datagrams delivered and not received yet.
    pub fn pending(&self) -> usize {
        lock(&self.queues.inbox).len()
    }

    /// Takes every datagram the backend has sent so far, oldest first.
    pub fn take_sent(&self) -> Vec<Datagram> {
        std::mem::take(&mut *lock(&self.queues.sent))
    }
}

impl BatchIo for MemIo {
    fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        let mut inbox = lock(&self.queues.inbox);
        let n = inbox.len().min(BATCH);
        batch.fill_from(inbox.range(..n).map(|(from, bytes)| (*from, &bytes[..])));
        inbox.drain(..n);
        batch.set_drained(inbox.is_empty());
        if inbox.is_empty() {
            self.queues.ready.clear();
        }
        Ok(n)
    }

    fn send(&mut self, batch: &mut TxBatch) -> usize {
        lock(&self.queues.sent).extend(batch.iter().map(|(to, bytes)| (to, bytes.to_vec())));
        batch.clear();
        0
    }

    fn readiness_fd(&self) -> RawFd {
        self.queues.ready.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::poll_readable;
    use std::time::Duration;

    fn readable(io: &MemIo) -> bool {
        let mut ready = [false];
        poll_readable(&[io.readiness_fd()], Duration::ZERO, &mut ready).unwrap();
        ready[0]
    }

    #[test]
    fn delivers_in_batches_and_records_sends() {
        let (mut io, peer) = MemIo::pair().unwrap();
        let from: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        assert!(!readable(&io));
        for i in 0..(BATCH + 3) {
            peer.deliver(from, &[i as u8; 10]);
        }
        assert!(readable(&io));
        let mut rx = RxBatch::default();
        assert_eq!(io.recv(&mut rx).unwrap(), BATCH);
        assert_eq!(rx.get_mut(0).unwrap().2, &[0u8; 10]);
        assert_eq!(peer.pending(), 3);
        assert!(readable(&io), "still readable while datagrams wait");
        assert_eq!(io.recv(&mut rx).unwrap(), 3);
        let (addr, cut, bytes) = rx.get_mut(2).unwrap();
        assert_eq!(
            (addr, cut, &*bytes),
            (from, false, &[BATCH as u8 + 2; 10][..])
        );
        assert!(!readable(&io));
        assert_eq!(io.recv(&mut rx).unwrap(), 0);

        let mut tx = TxBatch::default();
        assert!(tx.push(from, b"one"));
        assert!(tx.push(from, b"two"));
        assert_eq!(io.send(&mut tx), 0);
        assert!(tx.is_empty());
        assert_eq!(
            peer.take_sent(),
            vec![(from, b"one".to_vec()), (from, b"two".to_vec())]
        );
        assert!(peer.take_sent().is_empty());
    }

    #[test]
    fn a_worker_on_memory_installs_sessions_and_counts_datagrams() {
        use crate::worker::{handoff_queues, Shared, Worker, WorkerSetup};
        use socket2::{Domain, Socket, Type};
        use std::io::Write;
        use updraft_control::ids::IdAllocator;
        use updraft_control::ipc::Down;

        let (io, peer) = MemIo::pair().unwrap();
        let shared = Arc::new(Shared::new(1).unwrap());
        let (mut handoff_in, handoff_out) = handoff_queues(1);
        let (link_tx, links) = crossbeam_channel::bounded(1);
        let (worker_end, control_end) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        link_tx.send(worker_end).unwrap();
        let mut worker = Worker::new(WorkerSetup {
            index: 0,
            io,
            handoff_in: handoff_in.remove(0),
            handoff_out,
            links,
            shared: Arc::clone(&shared),
            session_config: rtmfp::session::SessionConfig::default(),
            seed: [1; 32],
            epoch: std::time::Instant::now(),
            dump: None,
            media_in: crossbeam_channel::bounded(1).1,
            media_out: Vec::new(),
            lifetimes: crate::worker::MediaLifetimes::default(),
        });
        let mut ids = IdAllocator::new(0);
        let session_id = ids.allocate().unwrap();
        let install = Down::Install {
            session_id,
            far_session_id: 9,
            address: "192.0.2.7:4000".parse().unwrap(),
            peer_id: [3; 32],
            secrets: crate::worker::test_secrets(),
        };
        let mut msg = Vec::new();
        install.encode(&mut msg).unwrap();
        (&control_end).write_all(&msg).unwrap();
        // A datagram too short for a session ID, and one for a session nobody has.
        let from: SocketAddr = "192.0.2.8:4000".parse().unwrap();
        peer.deliver(from, &[1, 2]);
        peer.deliver(from, &[0x55; 40]);
        for _ in 0..3 {
            worker.turn().unwrap();
        }
        let c = shared.counters[0].load();
        assert_eq!(c.sessions_open, 1);
        assert_eq!(c.rx_packets, 2);
        assert_eq!(c.drop_malformed + c.drop_unknown_session, 2);
        assert_eq!(peer.pending(), 0);
    }
}
