//! The Diffie-Hellman pool: a few threads that finish handshakes (RFC 7425 §4.6), each with a
//! stock of server key pairs made ahead of time while it has nothing else to do, so that a
//! handshake costs one modular exponentiation (the shared secret) instead of two.

use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rtmfp::crypto::{DhGroup, DhKeyPair};
use rtmfp::startup::responder::{Accepted, KeyingError, KeyingRequest, Responder};
use std::sync::Arc;

/// Handshakes waiting for a thread; more are refused (the initiator retries).
pub const QUEUE: usize = 4096;
/// Key pairs each thread keeps ready per group.
pub const STOCK_PER_GROUP: usize = 64;
/// How long an idle thread waits for work before making another key pair.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// A request and where it came from.
#[derive(Debug)]
pub struct Job {
    /// The link (worker) that received the IIKeying.
    pub link: usize,
    /// The checked IIKeying.
    pub request: Box<KeyingRequest>,
}

/// A finished job.
#[derive(Debug)]
pub struct Done {
    /// The link (worker) that received the IIKeying.
    pub link: usize,
    /// The request.
    pub request: Box<KeyingRequest>,
    /// The keyed session, or why not.
    pub result: Result<Accepted, KeyingError>,
}

/// The running pool.
#[derive(Debug)]
pub struct DhPool {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl DhPool {
    /// Starts `threads` threads answering as `responder`; each result goes to `done`.
    pub fn start(
        threads: usize,
        responder: Arc<Responder>,
        groups: &[DhGroup],
        seed: [u8; 32],
        done: Sender<Done>,
        on_done: Arc<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<DhPool> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let done = done.clone();
            let responder = Arc::clone(&responder);
            let groups = groups.to_vec();
            let on_done = Arc::clone(&on_done);
            let mut seed = seed;
            seed[31] ^= i as u8;
            let handle = std::thread::Builder::new()
                .name(format!("dh-{i}"))
                .spawn(move || serve(rx, done, &responder, &groups, seed, &*on_done))?;
            handles.push(handle);
        }
        Ok(DhPool {
            jobs: Some(tx),
            threads: handles,
        })
    }

    /// Queues a job; gives it back when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(tx) => tx.try_send(job).map_err(|e| match e {
                TrySendError::Full(j) | TrySendError::Disconnected(j) => j,
            }),
            None => Err(job),
        }
    }

    /// Jobs waiting.
    pub fn queued(&self) -> usize {
        self.jobs.as_ref().map_or(0, Sender::len)
    }
}

impl Drop for DhPool {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve(
    jobs: Receiver<Job>,
    done: Sender<Done>,
    responder: &Responder,
    groups: &[DhGroup],
    seed: [u8; 32],
    on_done: &(dyn Fn() + Send + Sync),
) {
    let mut rng = ChaCha20Rng::from_seed(seed);
    let mut stock: Vec<(DhGroup, Vec<DhKeyPair>)> =
        groups.iter().map(|&g| (g, Vec::new())).collect();
    loop {
        let wait = if stock.iter().all(|(_, s)| s.len() >= STOCK_PER_GROUP) {
            Duration::from_secs(3600)
        } else {
            IDLE_WAIT
        };
        match jobs.recv_timeout(wait) {
            Ok(job) => {
                let group = job.request.group;
                let pair = stock
                    .iter_mut()
                    .find(|(g, _)| *g == group)
                    .and_then(|(_, s)| s.pop())
                    .unwrap_or_else(|| DhKeyPair::generate(group, &mut rng));
                let result = responder.accept(&job.request, &pair);
                if done
                    .send(Done {
                        link: job.link,
                        request: job.request,
                        result,
                    })
                    .is_err()
                {
                    return;
                }
                on_done();
            }
            Err(RecvTimeoutError::Timeout) => {
                // Idle: top up the emptiest stock (the most used group first).
                if let Some((g, s)) = stock
                    .iter_mut()
                    .filter(|(_, s)| s.len() < STOCK_PER_GROUP)
                    .min_by_key(|(_, s)| s.len())
                {
                    s.push(DhKeyPair::generate(*g, &mut rng));
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
