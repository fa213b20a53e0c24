//! Where a session's next piece of work will read, so that a caller about to work on many
//! sessions in turn (a media message for every subscriber, a batch of acknowledgements) can
//! ask the memory system for the next sessions' cache lines while it works on this one.
//!
//! A server's fanout visits thousands of sessions, each of whose state has left the cache
//! since its last visit; each visit then waits for one cache miss after another, since each
//! address is read from the line before it (the session, its flow table, a flow, a queue
//! slot). The three [`Lookahead`] stages follow that chain one link at a time: a caller
//! working on session `i` runs [`Lookahead::Fields`] for session `i + 3`, [`Lookahead::Heap`]
//! for `i + 2` and [`Lookahead::Flows`] for `i + 1`, so that each stage reads only lines an
//! earlier stage asked for, and the misses of three sessions overlap with useful work.
//!
//! This module only names addresses; it reads nothing it does not say it reads, and has no
//! `unsafe`. Asking the processor for them is the caller's business (the data plane's
//! `prefetch` module).

use core::mem::size_of;

use std::collections::VecDeque;

use crate::ids::FlowId;

/// What a visit does: each needs only its own half of the session's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Sends datagrams (a media message, a transmit poll): the packet encoder's key.
    Send,
    /// Takes received datagrams: the packet decoder's key.
    Receive,
}

/// One stage of the chain of reads a session's next piece of work makes (see the module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookahead {
    /// The session's own hot fields (state, addresses, timers, the flow set) and the hot
    /// fields of the packet encoder (to send) or decoder (to receive, with its round keys).
    /// Reads nothing: the addresses are computed from the session's own.
    Fields(Visit),
    /// What those fields point to: the send flows' table and, to send, the encoder's shared
    /// expanded key. Reads the fields.
    Heap(Visit),
    /// The queue slots a send on our send flow `Some(flow)` (or, with `None`, an
    /// acknowledgement for any send flow with something queued or in flight) reads and
    /// writes. Reads the send flows' table.
    Flows(Option<FlowId>),
}

/// Gives `span` the bytes of `value`: where it starts and how long it is.
pub(crate) fn span_of<T>(value: &T, span: &mut impl FnMut(*const u8, usize)) {
    span((value as *const T).cast(), size_of::<T>());
}

/// Gives `span` the slot at the front of `queue` (what is acknowledged or sent next) and the
/// slot just past its back (where the next item goes): reads the queue's header only. A queue
/// with no buffer yet names nothing.
pub(crate) fn queue_ends<T>(queue: &VecDeque<T>, span: &mut impl FnMut(*const u8, usize)) {
    if queue.capacity() == 0 {
        return;
    }
    let (front, back) = queue.as_slices();
    span(front.as_ptr().cast(), size_of::<T>());
    // Past the back: the end of the second slice when the ring wrapped, of the first when not.
    // When the first ends at the buffer's end (or the queue is full), the push lands at the
    // buffer's start, or in a new buffer, which the slices do not show: the span named is then
    // just past the buffer, which costs one wasted prefetch (a prefetch never faults).
    let tail = if back.is_empty() {
        front.as_ptr().wrapping_add(front.len())
    } else {
        back.as_ptr().wrapping_add(back.len())
    };
    span(tail.cast(), size_of::<T>());
}

/// Helpers for the tests of the modules that name spans.
#[cfg(test)]
pub(crate) mod testing {
    /// Every span a call names, as (start address, length).
    pub(crate) fn spans(
        name: impl FnOnce(&mut dyn FnMut(*const u8, usize)),
    ) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        name(&mut |start, len| out.push((start as usize, len)));
        out
    }

    /// Whether one of `spans` holds all of `value`.
    pub(crate) fn covers<T>(spans: &[(usize, usize)], value: &T) -> bool {
        let at = value as *const T as usize;
        let len = core::mem::size_of::<T>();
        spans.iter().any(|&(s, l)| s <= at && at + len <= s + l)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{covers, spans};
    use super::*;

    use crate::crypto::{PacketDecoder, PacketEncoder, PacketMode};
    use crate::session::flows::SendOptions;
    use crate::session::{Role, Session, SessionConfig, SessionParams};
    use crate::time::Instant;

    #[test]
    fn a_queue_names_its_front_and_where_the_next_push_lands() {
        // Two items going round a ring of four slots: not wrapped, ending at the buffer's end,
        // wrapped.
        let mut q: VecDeque<u64> = VecDeque::with_capacity(4);
        let cap = q.capacity();
        q.extend([1, 2]);
        let mut checked = 0;
        for round in 0..2 * cap {
            let named = spans(|s| queue_ends(&q, &mut |p, l| s(p, l)));
            assert!(covers(&named, q.front().unwrap()), "round {round}");
            let (front, back) = q.as_slices();
            let at_buffer_end = back.is_empty() && q.len() < cap && {
                let end = front.as_ptr_range().end;
                q.push_back(0);
                let landed = !core::ptr::eq(q.back().unwrap(), end);
                q.pop_back();
                landed
            };
            q.push_back(9);
            // Where the ring wraps exactly at the back, the slot named is past the buffer.
            if !at_buffer_end {
                assert!(covers(&named, q.back().unwrap()), "round {round}");
                checked += 1;
            }
            q.pop_front();
        }
        assert!(
            checked >= 2 * cap - 2,
            "the ring wrapped at its back too often: {checked}"
        );
        // No buffer: nothing to ask for.
        let empty: VecDeque<u64> = VecDeque::new();
        assert!(spans(|s| queue_ends(&empty, &mut |p, l| s(p, l))).is_empty());
    }

    #[test]
    fn a_session_names_its_fields_then_its_heap_then_its_flows() {
        let key = [7; 16];
        let mut session = Session::new(
            Instant::ZERO,
            SessionParams {
                role: Role::Responder,
                near_session_id: 1,
                far_session_id: 2,
                far_address: ([127, 0, 0, 1], 40000).into(),
                encoder: PacketEncoder::new(&key, PacketMode::STARTUP),
                decoder: PacketDecoder::new(&key, PacketMode::STARTUP),
                mobility_secret: [2; 32],
            },
            SessionConfig::default(),
        );
        let flow = session.open_flow(b"meta", None).unwrap();
        let other = session.open_flow(b"other", None).unwrap();
        let idle = session.open_flow(b"idle", None).unwrap();
        for f in [flow, other] {
            session
                .send(Instant::ZERO, f, &[1; 100], SendOptions::default())
                .unwrap();
        }

        // Fields: within the session's own bytes, and a small part of them (not the cold bulk:
        // the ping body, the keys' software schedules), its flow set among them; the encoder's
        // fields to send, the decoder's to receive, never both.
        let base = &session as *const Session as usize;
        let end = base + size_of::<Session>();
        let named = |stage| spans(|s| session.lookahead(stage, &mut |p, l| s(p, l)));
        for visit in [Visit::Send, Visit::Receive] {
            let fields = named(Lookahead::Fields(visit));
            assert!(fields.iter().all(|&(s, l)| s >= base && s + l <= end));
            let bytes: usize = fields.iter().map(|&(_, l)| l).sum();
            assert!(
                bytes < size_of::<Session>() / 3,
                "{visit:?}: {bytes} bytes named"
            );
            assert!(covers(&fields, &session.flows));
            assert!(covers(&fields, &session.last_received));
            assert!(covers(&fields, &session.far_address));
            // Every transmit poll reads the mobility probe first.
            assert!(covers(&fields, &session.mobility_probe));
            let keys = [
                spans(|s| session.encoder.lookahead_fields(&mut |p, l| s(p, l))),
                spans(|s| session.decoder.lookahead_fields(&mut |p, l| s(p, l))),
            ];
            let (used, unused) = match visit {
                Visit::Send => (&keys[0], &keys[1]),
                Visit::Receive => (&keys[1], &keys[0]),
            };
            assert!(used.iter().all(|s| fields.contains(s)), "{visit:?}");
            assert!(!unused.iter().any(|s| fields.contains(s)), "{visit:?}");
        }

        // Heap: the send flow table (every flow's struct), and the shared key to send only.
        let key = session.encoder.multi_key().unwrap();
        for visit in [Visit::Send, Visit::Receive] {
            let heap = named(Lookahead::Heap(visit));
            for f in [flow, other, idle] {
                assert!(covers(&heap, session.flows.send_flow(f).unwrap()));
            }
            assert_eq!(covers(&heap, key), visit == Visit::Send, "{visit:?}");
        }

        // Flows: the queue slots (SendFlow's own test) of one flow, or of every flow with
        // something to send or acknowledge (not the idle one).
        let one = spans(|s| session.lookahead(Lookahead::Flows(Some(flow)), &mut |p, l| s(p, l)));
        let all = spans(|s| session.lookahead(Lookahead::Flows(None), &mut |p, l| s(p, l)));
        let of = |f| {
            spans(|s| {
                session
                    .flows
                    .send_flow(f)
                    .unwrap()
                    .lookahead(&mut |p, l| s(p, l))
            })
        };
        assert_eq!(one, of(flow));
        assert_eq!(all, [of(flow), of(other)].concat());
        assert_ne!(of(flow), of(other));
    }
}
