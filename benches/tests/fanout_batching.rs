//! How the worker batches a subscriber's datagrams (`benches::fanout`, in memory): messages
//! that reach it together share each subscriber's datagram when they fit in one, and each
//! gets its own when they do not.

use benches::fanout::Fanout;

/// Subscribers of the stream.
const SUBSCRIBERS: usize = 4;
/// Bytes of each small audio message: many fit in one datagram.
const SMALL: usize = 40;
/// Bytes of each large audio message: one per datagram.
const LARGE: usize = 1100;

/// Datagrams and messages each subscriber has received so far.
fn tallies(f: &Fanout) -> Vec<(u64, u64)> {
    f.clients
        .iter()
        .skip(1)
        .map(|c| (c.datagrams, c.received))
        .collect()
}

/// Publishes `count` audio messages of `len` bytes at once, runs the worker, and answers how
/// many datagrams and messages each subscriber got for them.
fn publish_together(f: &mut Fanout, count: usize, len: usize) -> Vec<(u64, u64)> {
    // Acknowledgements of what came before go first, so that the worker takes the messages
    // alone (an acknowledgement in the same batch would only delay its sender's datagram).
    f.exchange().expect("exchange");
    let before = tallies(f);
    for _ in 0..count {
        f.publish_audio(len).expect("publish");
    }
    f.exchange().expect("exchange");
    tallies(f)
        .iter()
        .zip(&before)
        .map(|(a, b)| (a.0 - b.0, a.1 - b.1))
        .collect()
}

#[test]
fn small_messages_published_together_share_each_subscribers_datagram() {
    let mut f = Fanout::new(SUBSCRIBERS).expect("set-up");
    let got = publish_together(&mut f, 3, SMALL);
    assert_eq!(
        got,
        vec![(1, 3); SUBSCRIBERS],
        "(datagrams, messages) per subscriber"
    );
}

#[test]
fn a_lone_message_and_large_ones_each_get_their_datagrams() {
    let mut f = Fanout::new(SUBSCRIBERS).expect("set-up");
    assert_eq!(
        publish_together(&mut f, 1, SMALL),
        vec![(1, 1); SUBSCRIBERS]
    );
    assert_eq!(
        publish_together(&mut f, 2, LARGE),
        vec![(2, 2); SUBSCRIBERS]
    );
    assert_eq!(f.published, 4, "the set-up's key frame and three");
    for c in f.clients.iter().skip(1) {
        assert_eq!(c.received, f.published);
    }
}
