//! A data-plane worker's whole fanout of a live stream, in memory (`benches::fanout`): one
//! publisher and 1,000 (then 2,000) subscribers installed through the worker's control link
//! exactly as the control plane does, the worker on the in-memory backend, so that no socket or
//! kernel is measured.
//! Each iteration the publisher sends one 1100-byte video message; the measured time is the
//! worker's turns that take it in, queue it for every subscriber, write, encrypt and hand over
//! every subscriber's datagram, and take the subscribers' acknowledgements of the previous
//! message. The clients (real `rtmfp` sessions with the far end's keys) decrypt, acknowledge and
//! check what they get outside the measured time.
//!
//! Run with `cargo bench -p benches --bench worker_fanout`; figures go to docs/performance.md.

use std::hint::black_box;
use std::time::Duration;

use benches::fanout::{Fanout, AVC_INTER_FRAME};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

/// Subscribers of the stream in each run: issue 4's target and half of it.
const SUBSCRIBERS: [usize; 2] = [1000, 2000];
/// Bytes of each video message's body (one datagram each).
const MESSAGE_LEN: usize = 1100;

fn worker_fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    g.sample_size(20);
    for subscribers in SUBSCRIBERS {
        run(&mut g, subscribers);
    }
    g.finish();
}

/// One publisher to `subscribers`, checked at the end: every subscriber got every message.
fn run(g: &mut BenchmarkGroup<'_, WallTime>, subscribers: usize) {
    let mut bench = Fanout::new(subscribers).expect("bench set up");
    g.throughput(Throughput::Elements(subscribers as u64));
    g.bench_function(format!("worker_{MESSAGE_LEN}B_x{subscribers}"), |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                bench
                    .publish_video(AVC_INTER_FRAME, MESSAGE_LEN)
                    .expect("publish");
                bench.deliver_from_clients();
                let start = std::time::Instant::now();
                bench.turn_until_idle().expect("worker turns");
                spent += start.elapsed();
                bench.drain_control();
                bench.receive_at_clients().expect("clients receive");
            }
            spent
        })
    });
    // Every subscriber got every message published (the key frame of the set-up, and one per
    // iteration when this size was not filtered out): the figure measured whole fanouts.
    for (n, c) in bench.clients.iter().enumerate().skip(1) {
        assert_eq!(
            c.received, bench.published,
            "subscriber {n} missed messages"
        );
    }
    black_box(&bench.clients);
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! {
        name = benches;
        config = benches::config();
        targets = worker_fanout
    }
}
use group::benches;
criterion_main!(benches);
