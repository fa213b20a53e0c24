//! The receiving side of a flow (RFC 7016 §3.6.3): duplicate detection, the forward sequence
//! number, reassembly and in-order delivery, a bounded buffer with its advertised window,
//! acknowledgement timing, rejection with an exception code, FIN and linger.

use std::collections::{BTreeMap, VecDeque};

use crate::params::{BUFFER_BLOCK, DELAYED_ACK, OBLIGATORY_ACK_AFTER, RECV_FLOW_LINGER};
use crate::time::Instant;
use crate::wire::Fragment;

/// Most fragments held out of order, whatever their size (empty and abandoned ones take no buffer
/// bytes, so the byte bound alone would not bound memory).
pub const MAX_STORED_FRAGMENTS: usize = 4096;
/// Advertise fewer than this many blocks and the next data is acked at once (RFC 7016 §3.6.3.4.1).
const LOW_WINDOW_BLOCKS: u64 = 2;

/// A fragment as received, from a User Data or Next User Data chunk.
#[derive(Debug, Clone, Copy)]
pub struct FragmentIn<'a> {
    /// Sequence number.
    pub seq: u64,
    /// `seq - forward sequence number`.
    pub fsn_offset: u64,
    /// Position in its message.
    pub fragment: Fragment,
    /// ABN: abandoned; data must be ignored.
    pub abandoned: bool,
    /// FIN: last sequence number of the flow.
    pub fin: bool,
    /// The data.
    pub data: &'a [u8],
}

#[derive(Debug, Clone)]
struct Stored {
    fragment: Fragment,
    abandoned: bool,
    data: Vec<u8>,
}

/// The receive side of one flow.
#[derive(Debug)]
pub struct RecvFlow {
    capacity: usize,
    /// Bytes held: stored fragments, the partial message and delivered-but-unread messages.
    buffered: usize,
    /// Fragments above `cum_ack`, and those at or below it not yet consumed by delivery.
    stored: BTreeMap<u64, Stored>,
    /// Every sequence number up to this one was received, abandoned or skipped.
    cum_ack: u64,
    /// The next sequence number delivery expects.
    next_deliver: u64,
    /// The message being reassembled.
    partial: Option<Vec<u8>>,
    ready: VecDeque<Vec<u8>>,
    fin_seq: Option<u64>,
    completed_at: Option<Instant>,
    finished_reported: bool,
    rejected: Option<u64>,
    ack_now: bool,
    ack_deadline: Option<Instant>,
    data_this_packet: bool,
    packets_since_ack: u32,
    last_advertised: Option<u64>,
    stats: RecvStats,
}

/// What a receive flow has seen, for QoS reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecvStats {
    /// Sequence numbers received for the first time (abandoned ones included).
    pub received: u64,
    /// Sequence numbers given up: skipped by the sender's forward sequence number without
    /// ever arriving, or arriving abandoned (RFC 7016 §3.6.2.7, §3.6.3.2).
    pub lost: u64,
}

impl RecvFlow {
    /// A receive flow with a buffer of `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        RecvFlow {
            capacity,
            buffered: 0,
            stored: BTreeMap::new(),
            cum_ack: 0,
            next_deliver: 1,
            partial: None,
            ready: VecDeque::new(),
            fin_seq: None,
            completed_at: None,
            finished_reported: false,
            rejected: None,
            // A new flow is acknowledged at once (RFC 7016 §3.6.3.4.1).
            ack_now: true,
            ack_deadline: None,
            data_this_packet: false,
            packets_since_ack: 0,
            last_advertised: None,
            stats: RecvStats::default(),
        }
    }

    /// What the flow has received and lost so far.
    pub fn stats(&self) -> RecvStats {
        self.stats
    }

    /// Handles a fragment.
    pub fn on_fragment(&mut self, now: Instant, f: FragmentIn<'_>) {
        self.data_this_packet = true;
        if self.rejected.is_some() || self.completed_at.is_some() {
            // Not RF_OPEN: acknowledge at once (RFC 7016 §3.6.3.2).
            self.ack_now = true;
            return;
        }
        let gap_before = self.has_gap();
        let fsn = f.seq.saturating_sub(f.fsn_offset);
        if f.seq <= self.cum_ack || self.stored.contains_key(&f.seq) {
            // Duplicate.
            self.ack_now = true;
            self.skip_to(fsn);
            return;
        }
        self.stats.received += 1;
        if f.abandoned {
            self.ack_now = true;
            self.stats.lost += 1;
        }
        if f.fin && self.fin_seq.is_none() {
            self.fin_seq = Some(f.seq);
            self.ack_now = true;
        }
        let data: &[u8] = if f.abandoned { &[] } else { f.data };
        // Data beyond the buffer is dropped; the sender will retransmit it when the window opens.
        if self.buffered + data.len() > self.capacity || self.stored.len() >= MAX_STORED_FRAGMENTS {
            self.ack_now = true;
            self.skip_to(fsn);
            return;
        }
        self.buffered += data.len();
        self.stored.insert(
            f.seq,
            Stored {
                fragment: f.fragment,
                abandoned: f.abandoned,
                data: data.to_vec(),
            },
        );
        self.skip_to(fsn);
        self.advance();
        self.deliver();
        if gap_before || self.has_gap() {
            self.ack_now = true;
        }
        if self.available() < BUFFER_BLOCK {
            self.ack_now = true;
        }
        if self.last_advertised.is_some_and(|b| b < LOW_WINDOW_BLOCKS) {
            self.ack_now = true;
        }
        self.check_complete(now);
    }

    fn has_gap(&self) -> bool {
        self.stored
            .range(self.cum_ack.saturating_add(1)..)
            .next()
            .is_some()
    }

    fn available(&self) -> usize {
        self.capacity.saturating_sub(self.buffered)
    }

    /// The sender will not resend anything at or below `fsn`: treat it as received.
    fn skip_to(&mut self, fsn: u64) {
        if fsn > self.cum_ack {
            // Sequence numbers the sender gave up on before they arrived.
            let skipped = fsn - self.cum_ack;
            let held = self.stored.range(self.cum_ack + 1..=fsn).count() as u64;
            self.stats.lost += skipped.saturating_sub(held);
            self.cum_ack = fsn;
            self.advance();
            self.deliver();
        }
    }

    fn advance(&mut self) {
        while self.stored.contains_key(&(self.cum_ack + 1)) {
            self.cum_ack += 1;
        }
    }

    /// Delivers whole messages from the fragments at or below `cum_ack`, in order.
    fn deliver(&mut self) {
        while let Some((&seq, _)) = self.stored.first_key_value() {
            if seq > self.cum_ack {
                break;
            }
            let Some(s) = self.stored.remove(&seq) else {
                break;
            };
            if seq != self.next_deliver {
                // A hole was skipped: the message being reassembled is lost.
                self.drop_partial();
            }
            self.next_deliver = seq + 1;
            self.consume(s);
        }
        if self.next_deliver <= self.cum_ack {
            // Sequence numbers up to cum_ack were skipped without fragments.
            self.drop_partial();
            self.next_deliver = self.cum_ack + 1;
        }
    }

    fn drop_partial(&mut self) {
        if let Some(p) = self.partial.take() {
            self.buffered = self.buffered.saturating_sub(p.len());
        }
    }

    fn consume(&mut self, s: Stored) {
        if s.abandoned {
            self.drop_partial();
            return;
        }
        match s.fragment {
            Fragment::Whole => {
                self.drop_partial();
                self.ready.push_back(s.data);
            }
            Fragment::Begin => {
                self.drop_partial();
                self.partial = Some(s.data);
            }
            Fragment::Middle => match self.partial.as_mut() {
                Some(p) => p.extend_from_slice(&s.data),
                None => self.buffered = self.buffered.saturating_sub(s.data.len()),
            },
            Fragment::End => match self.partial.take() {
                Some(mut p) => {
                    p.extend_from_slice(&s.data);
                    self.ready.push_back(p);
                }
                None => self.buffered = self.buffered.saturating_sub(s.data.len()),
            },
        }
    }

    fn check_complete(&mut self, now: Instant) {
        if self.completed_at.is_none() && self.fin_seq.is_some_and(|fin| self.cum_ack >= fin) {
            self.completed_at = Some(now);
            self.ack_now = true;
        }
    }

    /// Marks the end of a packet: delayed-ack counting (RFC 7016 §3.6.3.4.4, §3.6.3.4.5).
    pub fn on_packet_with_user_data(&mut self, now: Instant) {
        if !core::mem::take(&mut self.data_this_packet) {
            return;
        }
        self.packets_since_ack += 1;
        if self.packets_since_ack >= OBLIGATORY_ACK_AFTER {
            self.ack_now = true;
        } else if self.ack_deadline.is_none() {
            self.ack_deadline = Some(now + DELAYED_ACK);
        }
    }

    /// A Buffer Probe: acknowledge at once (RFC 7016 §3.6.3.6).
    pub fn on_buffer_probe(&mut self) {
        self.ack_now = true;
    }

    /// Rejects the flow: data is dropped and every ack is preceded by an exception report
    /// (RFC 7016 §3.6.3.7).
    pub fn reject(&mut self, code: u64) {
        if self.rejected.is_none() {
            self.rejected = Some(code);
            self.stored.clear();
            self.partial = None;
            self.ready.clear();
            self.buffered = 0;
            self.ack_now = true;
        }
    }

    /// The rejection code, if rejected.
    pub fn rejection(&self) -> Option<u64> {
        self.rejected
    }

    /// Whether an ack is to go out, now or at the delayed-ack deadline.
    pub fn ack_scheduled(&self) -> bool {
        self.ack_now || self.ack_deadline.is_some()
    }

    /// Whether an ack should go out now.
    pub fn ack_due(&self, now: Instant) -> bool {
        self.ack_now || self.ack_deadline.is_some_and(|d| now >= d)
    }

    /// The cumulative ack.
    pub fn cum_ack(&self) -> u64 {
        self.cum_ack
    }

    /// The received ranges above the cumulative ack, as many as fit in `out`.
    pub fn ack_ranges(&self, out: &mut [(u64, u64)]) -> usize {
        let mut n = 0;
        let mut cur: Option<(u64, u64)> = None;
        for &seq in self
            .stored
            .range(self.cum_ack.saturating_add(2)..)
            .map(|(k, _)| k)
        {
            match cur {
                Some((a, b)) if seq == b + 1 => cur = Some((a, seq)),
                Some(r) => {
                    if n == out.len() {
                        return n;
                    }
                    out[n] = r;
                    n += 1;
                    cur = Some((seq, seq));
                }
                None => cur = Some((seq, seq)),
            }
        }
        if let Some(r) = cur {
            if n < out.len() {
                out[n] = r;
                n += 1;
            }
        }
        n
    }

    /// The window to advertise, in 1024-byte blocks, rounded up; at least one while the flow is
    /// open, so that it cannot deadlock (RFC 7016 §3.6.3.5); zero when rejected.
    pub fn buffer_blocks(&self) -> u64 {
        if self.rejected.is_some() || self.capacity == 0 {
            return 0;
        }
        (self.available().div_ceil(BUFFER_BLOCK) as u64).max(1)
    }

    /// An ack was sent at `now`.
    pub fn on_ack_sent(&mut self, _now: Instant) {
        self.ack_now = false;
        self.ack_deadline = None;
        self.packets_since_ack = 0;
        self.last_advertised = Some(self.buffer_blocks());
    }

    /// The next whole message, in order.
    pub fn poll_message(&mut self) -> Option<Vec<u8>> {
        let m = self.ready.pop_front()?;
        self.buffered = self.buffered.saturating_sub(m.len());
        Some(m)
    }

    /// True once, when FIN arrived and every message before it was delivered.
    pub fn take_finished(&mut self) -> bool {
        if self.completed_at.is_some() && self.ready.is_empty() && !self.finished_reported {
            self.finished_reported = true;
            return true;
        }
        false
    }

    /// The delayed-ack deadline or the end of the linger.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let linger = self.completed_at.map(|t| t + RECV_FLOW_LINGER);
        [self.ack_deadline, linger].into_iter().flatten().min()
    }

    /// Runs the delayed-ack timer.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ack_deadline.is_some_and(|d| now >= d) {
            self.ack_now = true;
        }
    }

    /// Whether the flow has lingered long enough after completion to be forgotten
    /// (RFC 7016 §3.6.3.8).
    pub fn is_finished(&self, now: Instant) -> bool {
        self.completed_at
            .is_some_and(|t| now >= t + RECV_FLOW_LINGER)
            && self.ready.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn frag(seq: u64, fsn_offset: u64, fragment: Fragment, data: &[u8]) -> FragmentIn<'_> {
        FragmentIn {
            seq,
            fsn_offset,
            fragment,
            abandoned: false,
            fin: false,
            data,
        }
    }

    fn ranges(f: &RecvFlow) -> Vec<(u64, u64)> {
        let mut r = [(0, 0); 8];
        let n = f.ack_ranges(&mut r);
        r[..n].to_vec()
    }

    #[test]
    fn reassembles_in_order_from_reordered_fragments() {
        let mut f = RecvFlow::new(64 * 1024);
        f.on_fragment(t(0), frag(3, 3, Fragment::End, b"c"));
        f.on_fragment(t(0), frag(1, 1, Fragment::Begin, b"a"));
        assert_eq!(f.cum_ack(), 1);
        assert_eq!(ranges(&f), vec![(3, 3)]);
        assert_eq!(f.poll_message(), None);
        f.on_fragment(t(0), frag(2, 2, Fragment::Middle, b"b"));
        assert_eq!(f.cum_ack(), 3);
        assert_eq!(f.poll_message(), Some(b"abc".to_vec()));
        assert_eq!(f.poll_message(), None);
    }

    #[test]
    fn ack_timing_follows_the_rfc() {
        let mut f = RecvFlow::new(64 * 1024);
        // New flow: immediate ack.
        f.on_fragment(t(0), frag(1, 1, Fragment::Whole, b"x"));
        f.on_packet_with_user_data(t(0));
        assert!(f.ack_due(t(0)));
        f.on_ack_sent(t(0));
        // In order: delayed 200 ms ...
        f.on_fragment(t(10), frag(2, 1, Fragment::Whole, b"x"));
        f.on_packet_with_user_data(t(10));
        assert!(!f.ack_due(t(10)));
        assert_eq!(f.poll_timeout(), Some(t(210)));
        f.handle_timeout(t(210));
        assert!(f.ack_due(t(210)));
        f.on_ack_sent(t(210));
        // ... or at the second packet.
        f.on_fragment(t(300), frag(3, 1, Fragment::Whole, b"x"));
        f.on_packet_with_user_data(t(300));
        f.on_fragment(t(301), frag(4, 1, Fragment::Whole, b"x"));
        f.on_packet_with_user_data(t(301));
        assert!(f.ack_due(t(301)));
        f.on_ack_sent(t(301));
        // A gap: immediate; a duplicate: immediate.
        f.on_fragment(t(400), frag(6, 2, Fragment::Whole, b"x"));
        assert!(f.ack_due(t(400)));
        f.on_ack_sent(t(400));
        f.on_fragment(t(401), frag(6, 2, Fragment::Whole, b"x"));
        assert!(f.ack_due(t(401)));
        f.on_ack_sent(t(401));
        // A buffer probe: immediate.
        f.on_buffer_probe();
        assert!(f.ack_due(t(402)));
    }

    #[test]
    fn forward_sequence_number_skips_holes_and_drops_broken_messages() {
        let mut f = RecvFlow::new(64 * 1024);
        f.on_fragment(t(0), frag(1, 1, Fragment::Begin, b"a"));
        // 2 never comes; 4 says everything up to 3 is done (fsnOffset 1).
        f.on_fragment(t(0), frag(4, 1, Fragment::Whole, b"w"));
        assert_eq!(f.cum_ack(), 4);
        assert_eq!(f.poll_message(), Some(b"w".to_vec()));
        assert_eq!(f.poll_message(), None);
        // QoS: two received, 2 and 3 given up.
        assert_eq!(
            f.stats(),
            RecvStats {
                received: 2,
                lost: 2
            }
        );
        // An abandoned fragment counts as lost; a duplicate counts for nothing.
        let mut abandoned = frag(5, 0, Fragment::Whole, b"");
        abandoned.abandoned = true;
        f.on_fragment(t(0), abandoned);
        f.on_fragment(t(0), frag(4, 1, Fragment::Whole, b"w"));
        assert_eq!(
            f.stats(),
            RecvStats {
                received: 3,
                lost: 3
            }
        );
        // A huge forward jump costs nothing.
        f.on_fragment(t(0), frag(u64::MAX / 2, 1, Fragment::Whole, b"z"));
        assert_eq!(f.cum_ack(), u64::MAX / 2);
        assert_eq!(f.poll_message(), Some(b"z".to_vec()));
    }

    #[test]
    fn buffer_bounds_memory_and_window_reopens_when_read() {
        let mut f = RecvFlow::new(4 * BUFFER_BLOCK);
        assert_eq!(f.buffer_blocks(), 4);
        for seq in 1..=4 {
            f.on_fragment(t(0), frag(seq, 1, Fragment::Whole, &[0; BUFFER_BLOCK]));
        }
        // Full: advertise 1 block (never 0 while open), and drop what does not fit.
        assert_eq!(f.buffer_blocks(), 1);
        f.on_fragment(t(0), frag(5, 1, Fragment::Whole, &[0; 10]));
        assert_eq!(f.cum_ack(), 4);
        while f.poll_message().is_some() {}
        assert_eq!(f.buffer_blocks(), 4);
        // Many empty fragments out of order cannot grow memory without bound.
        for seq in (10..100_000).step_by(2) {
            f.on_fragment(t(0), frag(seq, 6, Fragment::Whole, &[]));
        }
        assert!(f.stored.len() <= MAX_STORED_FRAGMENTS);
    }

    #[test]
    fn rejection_and_fin() {
        let mut f = RecvFlow::new(1024);
        f.reject(5);
        assert_eq!(f.rejection(), Some(5));
        assert_eq!(f.buffer_blocks(), 0);
        f.on_fragment(t(0), frag(1, 1, Fragment::Whole, b"x"));
        assert_eq!(f.poll_message(), None);
        assert!(f.ack_due(t(0)));

        let mut f = RecvFlow::new(1024);
        f.on_fragment(
            t(0),
            FragmentIn {
                fin: true,
                ..frag(2, 2, Fragment::Whole, b"b")
            },
        );
        assert!(!f.take_finished());
        f.on_fragment(t(1), frag(1, 1, Fragment::Whole, b"a"));
        assert!(!f.take_finished(), "messages first");
        assert_eq!(f.poll_message(), Some(b"a".to_vec()));
        assert_eq!(f.poll_message(), Some(b"b".to_vec()));
        assert!(f.take_finished());
        assert!(!f.take_finished());
        assert!(!f.is_finished(t(2)));
        assert!(f.is_finished(t(1) + RECV_FLOW_LINGER));
    }
}
