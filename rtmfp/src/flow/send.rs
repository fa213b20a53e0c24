//! The sending side of a flow (RFC 7016 §3.6.2): message queue, fragmentation at transmit time,
//! sequence numbers and the forward sequence number, acknowledgement processing with NAK-based
//! loss detection, retransmission, flow control with buffer probes, partial reliability
//! (abandoning expired messages), FIN, and exception reports.

use core::time::Duration;
use std::collections::VecDeque;

use crate::ids::FlowId;
use crate::params::{
    BUFFER_BLOCK, INITIAL_FAR_WINDOW, NAKS_FOR_LOSS, PERSIST_MAX, PERSIST_MIN, SEND_FLOW_LINGER,
};
use crate::session::lookahead::queue_ends;
use crate::time::Instant;
use crate::wire::{option_len, vlu_len, write_option, Fragment, Writer, CHUNK_HEADER_LEN};

use super::options::{OPTION_METADATA, OPTION_RETURN_ASSOCIATION};
use super::payload::Payload;

/// Growth of the buffer-probe period (RFC 7016 §3.6.2.9.1; rtmfp-cpp uses √2).
const PROBE_BACKOFF: f64 = core::f64::consts::SQRT_2;
/// Bytes of a User Data chunk besides its VLUs, options and data: type, length, flags.
const USER_DATA_FIXED: usize = CHUNK_HEADER_LEN + 1;
/// Room left unused when a new fragment is cut, so that it still fits a packet when it is
/// retransmitted with larger header fields (a timestamp echo, a longer fsnOffset VLU).
const RETRANSMIT_SLACK: usize = 16;
/// Largest queued (not yet acknowledged) bytes per flow; `send_message` refuses beyond it.
pub const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The flow is closing, closed or was rejected.
    #[error("flow closed")]
    Closed,
    /// The queue is full.
    #[error("send queue full")]
    QueueFull,
}

/// An acknowledgement for this flow, from a Range or Bitmap Ack (RFC 7016 §2.3.13, §2.3.14).
#[derive(Debug, Clone, Copy)]
pub struct AckInfo<'a> {
    /// The receiver's window in 1024-byte blocks.
    pub buffer_blocks: u64,
    /// Everything up to this sequence number is acknowledged.
    pub cum_ack: u64,
    /// Inclusive ranges acknowledged above `cum_ack`.
    pub ranges: &'a [(u64, u64)],
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// Newly acknowledged data bytes.
    pub acked_bytes: usize,
    /// The send time of the oldest fragment newly declared lost by NAKs, if any.
    pub lost_sent_at: Option<Instant>,
}

/// One fragment to put on the wire, borrowed from the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentOut<'a> {
    /// Sequence number.
    pub seq: u64,
    /// `seq - forward sequence number`.
    pub fsn_offset: u64,
    /// Position in its message.
    pub fragment: Fragment,
    /// Abandoned: sent without data (RFC 7016 §3.6.2.7).
    pub abandoned: bool,
    /// Last sequence number of the flow.
    pub fin: bool,
    /// The User Data option list to include (metadata and return association), until the flow
    /// is first acknowledged (RFC 7016 §3.6.1.3).
    pub options: Option<&'a [u8]>,
    /// The data, in two parts written one after the other (a payload's inline head and its
    /// shared body; see [`Payload`]).
    pub data: (&'a [u8], &'a [u8]),
}

impl FragmentOut<'_> {
    /// Bytes of data.
    pub fn data_len(&self) -> usize {
        self.data.0.len() + self.data.1.len()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FragState {
    /// Never sent.
    New,
    /// Sent, waiting for an ack.
    InFlight { sent_at: Instant, naks: u32 },
    /// Declared lost: to be retransmitted.
    Lost,
    /// Acknowledged.
    Acked,
}

#[derive(Debug, Clone)]
struct Frag {
    seq: u64,
    message: Payload,
    start: usize,
    end: usize,
    position: Fragment,
    expiry: Option<Instant>,
    abandoned: bool,
    fin: bool,
    state: FragState,
}

impl Frag {
    fn len(&self) -> usize {
        if self.abandoned {
            0
        } else {
            self.end - self.start
        }
    }

    /// What the fragment adds to the flow's running totals.
    fn weight(&self) -> Weight {
        Weight {
            outstanding: if self.state == FragState::Acked {
                0
            } else {
                self.len()
            },
            in_flight: if matches!(self.state, FragState::InFlight { .. }) {
                self.len()
            } else {
                0
            },
            resend: usize::from(
                self.state == FragState::Lost || (self.state == FragState::New && self.abandoned),
            ),
            flying: usize::from(matches!(self.state, FragState::InFlight { .. })),
        }
    }
}

/// Running totals over a flow's fragments, kept up to date on every change so that reading
/// them costs nothing per packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Weight {
    /// Bytes not acknowledged.
    outstanding: usize,
    /// Bytes in flight.
    in_flight: usize,
    /// Fragments waiting to be (re)sent: lost, or abandoned and not yet announced.
    resend: usize,
    /// Fragments in flight, empty ones (FIN, abandonment notices) included.
    flying: usize,
}

impl Weight {
    fn add(&mut self, w: Weight) {
        self.outstanding += w.outstanding;
        self.in_flight += w.in_flight;
        self.resend += w.resend;
        self.flying += w.flying;
    }

    fn sub(&mut self, w: Weight) {
        self.outstanding = self.outstanding.saturating_sub(w.outstanding);
        self.in_flight = self.in_flight.saturating_sub(w.in_flight);
        self.resend = self.resend.saturating_sub(w.resend);
        self.flying = self.flying.saturating_sub(w.flying);
    }
}

#[derive(Debug, Clone)]
struct Queued {
    message: Payload,
    /// Bytes already cut into fragments.
    offset: usize,
    expiry: Option<Instant>,
}

/// The send side of one flow.
///
/// Laid out in declaration order (`repr(C)`), grouped by who reads what: a server's fanout
/// passes over each subscriber's stream flow three times per message (queuing it, sending it,
/// taking the ack), and each pass should read few cache lines.
#[derive(Debug)]
#[repr(C)]
pub struct SendFlow {
    // Queuing a message reads these (and so does sending it).
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    /// Totals over `frags`.
    totals: Weight,
    exception: Option<u64>,
    /// No queued message expires before this (a lower bound; `None` when none can expire).
    queue_expiry: Option<Instant>,
    closing: bool,
    options_acked: bool,
    // Sending and acknowledgements read these.
    /// Fragments with a sequence number, oldest first, from the first not yet acknowledged.
    frags: VecDeque<Frag>,
    next_seq: u64,
    /// No fragment before this sequence number is live (unacknowledged and not abandoned):
    /// where the search for the forward sequence number resumes.
    live_from: u64,
    far_window: usize,
    completed_at: Option<Instant>,
    /// No fragment expires before this (a lower bound), so expiry checks can be skipped until
    /// then.
    next_expiry: Option<Instant>,
    /// No fragment in flight was sent before this (a lower bound; `None` when none is in
    /// flight). The retransmission timer runs from it, so that [`Self::poll_timeout`] costs
    /// O(1) instead of a scan of every fragment for every packet; a stale bound fires the timer
    /// early once, and [`Self::handle_timeout`] sets it exactly.
    oldest_sent: Option<Instant>,
    fin_seq: Option<u64>,
    probe_next: Option<Instant>,
    stats: SendStats,
    // Seldom read.
    id: FlowId,
    probe_interval: Duration,
    options: Vec<u8>,
}

/// What a send flow has sent and lost, for QoS reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Fragments transmitted, retransmissions included.
    pub sent: u64,
    /// Transmissions declared lost: by NAKs, by timeout, or abandoned while in flight
    /// (RFC 7016 §3.6.2.5, §3.6.2.6, §3.6.2.7).
    pub lost: u64,
}

impl SendFlow {
    /// A new flow with its metadata and optional return flow association.
    pub fn new(id: FlowId, metadata: Vec<u8>, associated: Option<FlowId>) -> Self {
        let mut len = option_len(OPTION_METADATA, metadata.len());
        if let Some(a) = associated {
            len += option_len(OPTION_RETURN_ASSOCIATION, vlu_len(a.0));
        }
        let mut options = vec![0u8; len];
        let mut w = Writer::new(&mut options);
        let mut vlu = [0u8; 10];
        // Sized exactly above, so these writes succeed.
        let _ = write_option(&mut w, OPTION_METADATA, &metadata);
        if let Some(a) = associated {
            let n = vlu_len(a.0);
            let _ = Writer::new(&mut vlu[..n]).put_vlu(a.0);
            let _ = write_option(&mut w, OPTION_RETURN_ASSOCIATION, &vlu[..n]);
        }
        SendFlow {
            id,
            options,
            queue: VecDeque::new(),
            queued_bytes: 0,
            frags: VecDeque::new(),
            next_seq: 1,
            far_window: INITIAL_FAR_WINDOW,
            options_acked: false,
            closing: false,
            fin_seq: None,
            completed_at: None,
            exception: None,
            probe_next: None,
            probe_interval: PERSIST_MIN,
            stats: SendStats::default(),
            totals: Weight::default(),
            next_expiry: None,
            queue_expiry: None,
            oldest_sent: None,
            live_from: 1,
        }
    }

    /// What the flow has sent and lost so far.
    pub fn stats(&self) -> SendStats {
        self.stats
    }

    /// The flow ID.
    pub fn id(&self) -> FlowId {
        self.id
    }

    /// Whether the flow still accepts messages.
    pub fn is_open(&self) -> bool {
        !self.closing && self.exception.is_none()
    }

    /// Queues a message (copied once). With `expiry`, it is abandoned after that time.
    pub fn send_message(
        &mut self,
        now: Instant,
        data: &[u8],
        expiry: Option<Instant>,
    ) -> Result<(), SendError> {
        self.check_room(data.len())?;
        self.send_payload(now, Payload::copy_from(data), expiry)
    }

    /// Queues a message without copying its bytes (see [`Payload`]). With `expiry`, it is
    /// abandoned after that time.
    pub fn send_payload(
        &mut self,
        _now: Instant,
        message: Payload,
        expiry: Option<Instant>,
    ) -> Result<(), SendError> {
        self.check_room(message.len())?;
        self.queued_bytes += message.len();
        if let Some(e) = expiry {
            self.queue_expiry = Some(self.queue_expiry.map_or(e, |q| q.min(e)));
        }
        self.queue.push_back(Queued {
            message,
            offset: 0,
            expiry,
        });
        Ok(())
    }

    fn check_room(&self, len: usize) -> Result<(), SendError> {
        if !self.is_open() {
            return Err(SendError::Closed);
        }
        if self.unacked_bytes().saturating_add(len) > MAX_QUEUED_BYTES {
            return Err(SendError::QueueFull);
        }
        Ok(())
    }

    /// Closes the flow: FIN after the queued data (RFC 7016 §3.6.2.8).
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// Bytes queued or sent and not yet acknowledged.
    pub fn unacked_bytes(&self) -> usize {
        self.queued_bytes + self.totals.outstanding
    }

    /// Gives `span` the slots this flow's next send, queued message and acknowledgement use:
    /// both ends of its message queue and of its fragments (see [`crate::session::lookahead`];
    /// the flow's own fields are in its session's flow table). Reads the queues' headers.
    pub fn lookahead(&self, span: &mut impl FnMut(*const u8, usize)) {
        queue_ends(&self.queue, span);
        queue_ends(&self.frags, span);
    }

    /// Bytes in flight (sent, not acknowledged, not declared lost).
    pub fn in_flight_bytes(&self) -> usize {
        self.totals.in_flight
    }

    /// Applies `change` to fragment `i`, keeping the totals right.
    fn update(&mut self, i: usize, change: impl FnOnce(&mut Frag)) {
        if let Some(f) = self.frags.get_mut(i) {
            let before = f.weight();
            change(f);
            let after = f.weight();
            self.totals.sub(before);
            self.totals.add(after);
        }
    }

    /// Appends a fragment, keeping the totals right.
    fn push_frag(&mut self, f: Frag) {
        self.totals.add(f.weight());
        self.frags.push_back(f);
    }

    fn note_expiry(&mut self, expiry: Option<Instant>) {
        if let Some(e) = expiry {
            self.next_expiry = Some(self.next_expiry.map_or(e, |n| n.min(e)));
        }
    }

    /// The index of fragment `seq`: fragments carry consecutive sequence numbers.
    fn index_of(&self, seq: u64) -> Option<usize> {
        let first = self.frags.front()?.seq;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.frags.get(i).filter(|f| f.seq == seq).map(|_| i)
    }

    /// The forward sequence number: everything at or below it is acknowledged or abandoned.
    ///
    /// Amortised O(1): a fragment acknowledged or abandoned stays so, so the first live one
    /// is found from where the last search stopped.
    fn fsn(&mut self) -> u64 {
        let front = self.frags.front().map_or(self.next_seq, |f| f.seq);
        // Everything before the front was acknowledged and dropped.
        self.live_from = self.live_from.max(front);
        while let Some(i) = self.index_of(self.live_from) {
            let f = &self.frags[i];
            if f.state != FragState::Acked && !f.abandoned {
                break;
            }
            self.live_from += 1;
        }
        self.live_from.min(self.next_seq).saturating_sub(1)
    }

    /// Abandons expired messages: their fragments go out as ABN, without data, and queued parts
    /// are dropped (RFC 7016 §3.6.2.7).
    fn abandon_expired(&mut self, now: Instant) {
        // Fragments and the queue are scanned only once the earliest of their expiries may
        // have come.
        if self.next_expiry.is_some_and(|e| e <= now) {
            self.abandon_expired_fragments(now);
        }
        if self.queue_expiry.is_some_and(|e| e <= now) {
            self.abandon_expired_queue(now);
        }
    }

    fn abandon_expired_fragments(&mut self, now: Instant) {
        let mut next: Option<Instant> = None;
        for i in 0..self.frags.len() {
            let f = &self.frags[i];
            if f.abandoned || f.state == FragState::Acked {
                continue;
            }
            match f.expiry {
                Some(e) if e <= now => {
                    let in_flight = matches!(f.state, FragState::InFlight { .. });
                    self.stats.lost += u64::from(in_flight);
                    self.update(i, |f| {
                        f.abandoned = true;
                        if in_flight {
                            f.state = FragState::Lost;
                        }
                    });
                }
                Some(e) => next = Some(next.map_or(e, |n| n.min(e))),
                None => {}
            }
        }
        self.next_expiry = next;
    }

    /// Drops the expired messages of the queue, wherever they are (audio and video expiries
    /// interleave), and sets the queue's expiry bound exactly. Called once that bound is due.
    fn abandon_expired_queue(&mut self, now: Instant) {
        let expired = |q: &Queued| q.expiry.is_some_and(|e| e <= now);
        // Only the front message can be partly sent. It gets one abandoned end fragment, so
        // that the receiver's reassembly of it ends.
        let partly_sent = self
            .queue
            .front()
            .is_some_and(|q| q.offset > 0 && expired(q));
        if let Some(q) = partly_sent.then(|| self.queue.pop_front()).flatten() {
            self.queued_bytes = self.queued_bytes.saturating_sub(q.message.len() - q.offset);
            let seq = self.take_seq();
            self.push_frag(Frag {
                seq,
                message: q.message,
                start: 0,
                end: 0,
                position: Fragment::End,
                expiry: q.expiry,
                abandoned: true,
                fin: false,
                state: FragState::New,
            });
        }
        // The others were never sent: the receiver never learns of them.
        let mut dropped = 0;
        self.queue.retain(|q| {
            let gone = expired(q);
            if gone {
                dropped += q.message.len() - q.offset;
            }
            !gone
        });
        self.queued_bytes = self.queued_bytes.saturating_sub(dropped);
        self.queue_expiry = self.queue.iter().filter_map(|q| q.expiry).min();
    }

    fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    fn suspended(&self) -> bool {
        self.far_window == 0 && self.exception.is_none()
    }

    /// The next fragment to send, if any fits in `room` bytes of chunk (header included) and the
    /// congestion `allowance` permits new bytes. The caller emits it, then calls
    /// [`Self::on_fragment_sent`]. Retransmissions come first, then new data, then FIN.
    pub fn poll_fragment(
        &mut self,
        now: Instant,
        room: usize,
        allowance: usize,
    ) -> Option<FragmentOut<'_>> {
        if self.ended() {
            return None;
        }
        self.abandon_expired(now);
        // Nothing to retransmit, queued or to finish: answered before the fragments are looked
        // at, so that a session's idle flows cost little on every packet it sends.
        if !self.has_data_to_send() {
            return None;
        }
        let fsn = self.fsn();
        let opts_len = if self.options_acked {
            0
        } else {
            self.options.len() + 1
        };
        // Retransmissions and abandoned notices first (looked for only when there are some).
        let idx = if self.totals.resend == 0 {
            None
        } else {
            self.frags.iter().position(|f| {
                f.state == FragState::Lost || (f.state == FragState::New && f.abandoned)
            })
        };
        if let Some(i) = idx {
            let f = &self.frags[i];
            let overhead = USER_DATA_FIXED
                + vlu_len(self.id.0)
                + vlu_len(f.seq)
                + vlu_len(f.seq.saturating_sub(fsn))
                + opts_len;
            if overhead + f.len() > room || (f.len() > 0 && allowance < f.len()) {
                return None;
            }
            return Some(self.fragment_out(i, fsn));
        }
        if self.suspended() || self.in_flight_bytes() >= self.far_window || allowance == 0 {
            return None;
        }
        let seq = self.next_seq;
        let overhead =
            USER_DATA_FIXED + vlu_len(self.id.0) + vlu_len(seq) + vlu_len(seq - fsn) + opts_len;
        if overhead > room {
            // Not even the chunk's header fits: an empty message (or a FIN) waits too.
            return None;
        }
        if let Some(q) = self.queue.front() {
            let remaining = q.message.len() - q.offset;
            let window_room = self.far_window - self.in_flight_bytes();
            let max_data = room
                .saturating_sub(overhead + RETRANSMIT_SLACK)
                .min(allowance)
                .min(window_room);
            if max_data == 0 && remaining > 0 {
                return None;
            }
            let take = remaining.min(max_data);
            let start = q.offset;
            let end = start + take;
            let first = start == 0;
            let last = end == q.message.len();
            let position = match (first, last) {
                (true, true) => Fragment::Whole,
                (true, false) => Fragment::Begin,
                (false, true) => Fragment::End,
                (false, false) => Fragment::Middle,
            };
            let (message, expiry) = (q.message.clone(), q.expiry);
            self.queued_bytes = self.queued_bytes.saturating_sub(take);
            if last {
                self.queue.pop_front();
                if self.queue.is_empty() {
                    self.queue_expiry = None;
                }
            } else if let Some(q) = self.queue.front_mut() {
                q.offset = end;
            }
            let fin = last && self.closing && self.queue.is_empty();
            let seq = self.take_seq();
            if fin {
                self.fin_seq = Some(seq);
            }
            self.note_expiry(expiry);
            self.push_frag(Frag {
                seq,
                message,
                start,
                end,
                position,
                expiry,
                abandoned: false,
                fin,
                state: FragState::New,
            });
            let i = self.frags.len() - 1;
            return Some(self.fragment_out(i, fsn));
        }
        if self.closing && self.fin_seq.is_none() {
            let seq = self.take_seq();
            self.fin_seq = Some(seq);
            self.push_frag(Frag {
                seq,
                message: Payload::copy_from(&[]),
                start: 0,
                end: 0,
                position: Fragment::Whole,
                expiry: None,
                abandoned: false,
                fin: true,
                state: FragState::New,
            });
            let i = self.frags.len() - 1;
            return Some(self.fragment_out(i, fsn));
        }
        None
    }

    fn fragment_out(&self, i: usize, fsn: u64) -> FragmentOut<'_> {
        let f = &self.frags[i];
        FragmentOut {
            seq: f.seq,
            // An abandoned fragment the forward sequence number already passed carries offset 0:
            // a Forward Sequence Number Update (RFC 7016 §3.6.2.7.1).
            fsn_offset: f.seq.saturating_sub(fsn),
            fragment: f.position,
            abandoned: f.abandoned,
            fin: f.fin,
            options: (!self.options_acked).then_some(self.options.as_slice()),
            data: if f.abandoned {
                (&[], &[])
            } else {
                f.message.slices(f.start, f.end)
            },
        }
    }

    /// Records that the fragment `seq` returned by [`Self::poll_fragment`] was sent at `now`.
    pub fn on_fragment_sent(&mut self, now: Instant, seq: u64) {
        if let Some(i) = self.index_of(seq) {
            self.stats.sent += 1;
            // `now` never goes back, so an older bound stays a bound.
            self.oldest_sent.get_or_insert(now);
            self.update(i, |f| {
                f.state = FragState::InFlight {
                    sent_at: now,
                    naks: 0,
                }
            });
        }
    }

    /// Processes an acknowledgement (RFC 7016 §3.6.2.4, §3.6.2.5).
    pub fn on_ack(&mut self, now: Instant, ack: AckInfo<'_>) -> AckOutcome {
        let mut out = AckOutcome::default();
        self.options_acked = true;
        self.far_window = usize::try_from(ack.buffer_blocks)
            .unwrap_or(usize::MAX)
            .saturating_mul(BUFFER_BLOCK);
        if self.far_window > 0 {
            self.probe_next = None;
            self.probe_interval = PERSIST_MIN;
        }
        let acked =
            |seq: u64| seq <= ack.cum_ack || ack.ranges.iter().any(|&(a, b)| a <= seq && seq <= b);
        // Nothing above the highest sequence number the ack names changes: the scan stops
        // there, so an ack costs the fragments it covers, not the whole window.
        let top = ack
            .ranges
            .iter()
            .map(|&(_, b)| b)
            .fold(ack.cum_ack, u64::max);
        let mut highest_acked = None;
        for i in 0..self.frags.len() {
            let f = &self.frags[i];
            if f.seq > top {
                break;
            }
            if f.state != FragState::Acked && f.state != FragState::New && acked(f.seq) {
                out.acked_bytes += f.len();
                highest_acked = Some(f.seq);
                self.update(i, |f| f.state = FragState::Acked);
            }
        }
        // A fragment sent before an acknowledged one and still unacknowledged gets a NAK;
        // three make it lost (RFC 7016 §3.6.2.5).
        if let Some(h) = highest_acked {
            for i in 0..self.frags.len() {
                let f = &self.frags[i];
                if f.seq >= h {
                    break;
                }
                if let FragState::InFlight { sent_at, naks } = f.state {
                    let naks = naks + 1;
                    if naks >= NAKS_FOR_LOSS {
                        self.stats.lost += 1;
                        out.lost_sent_at = Some(
                            out.lost_sent_at
                                .map_or(sent_at, |t: Instant| t.min(sent_at)),
                        );
                        self.update(i, |f| f.state = FragState::Lost);
                    } else {
                        self.update(i, |f| f.state = FragState::InFlight { sent_at, naks });
                    }
                }
            }
        }
        while self
            .frags
            .front()
            .is_some_and(|f| f.state == FragState::Acked)
        {
            self.frags.pop_front();
        }
        if self.frags.is_empty() {
            self.next_expiry = None;
        }
        if self.totals.flying == 0 {
            self.oldest_sent = None;
        }
        if let Some(fin) = self.fin_seq {
            if self.completed_at.is_none() && acked(fin) && self.frags.is_empty() {
                self.completed_at = Some(now);
            }
        }
        out
    }

    /// When the flow next needs [`Self::handle_timeout`] or has a probe due. O(1): it may
    /// answer early (from lower bounds), never late.
    pub fn poll_timeout(&self, erto: Duration) -> Option<Instant> {
        if self.exception.is_some() {
            return None;
        }
        if let Some(done) = self.completed_at {
            return Some(done + SEND_FLOW_LINGER);
        }
        let rto = self.oldest_sent.map(|t| t + erto);
        let probe = if self.suspended() {
            self.probe_next
        } else {
            None
        };
        [rto, self.next_expiry, self.queue_expiry, probe]
            .into_iter()
            .flatten()
            .min()
    }

    /// Retransmission timeout: every fragment in flight for at least ERTO is lost. Answers
    /// whether anything timed out.
    pub fn handle_timeout(&mut self, now: Instant, erto: Duration) -> bool {
        let mut any = false;
        // The oldest send time of what stays in flight, found in the same pass.
        let mut oldest: Option<Instant> = None;
        for i in 0..self.frags.len() {
            if let FragState::InFlight { sent_at, .. } = self.frags[i].state {
                if sent_at + erto <= now {
                    self.stats.lost += 1;
                    any = true;
                    self.update(i, |f| f.state = FragState::Lost);
                } else {
                    oldest = Some(oldest.map_or(sent_at, |o| o.min(sent_at)));
                }
            }
        }
        self.abandon_expired(now);
        // Abandoning may end some of those flights: what is left is still a lower bound.
        self.oldest_sent = oldest.filter(|_| self.totals.flying > 0);
        any
    }

    /// Whether [`Self::probe_due`] or [`Self::poll_fragment`] might give something at `now`:
    /// true whenever either would (a superset, read without changing anything), so that a
    /// session with nothing to send learns it without writing a packet.
    pub fn may_write(&self, now: Instant) -> bool {
        let probe = self.probe_wanted() && self.probe_next.is_none_or(|t| now >= t);
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        // poll_fragment's early answers, before and after the abandonment it runs first (which
        // may turn expired fragments into abandonment notices to send).
        let data = !self.ended()
            && (self.has_data_to_send() || due(self.next_expiry) || due(self.queue_expiry));
        probe || data
    }

    /// The flow was rejected or has completed: it sends nothing more.
    fn ended(&self) -> bool {
        self.exception.is_some() || self.completed_at.is_some()
    }

    /// Something to retransmit (or to announce as abandoned), queued, or a FIN to send.
    fn has_data_to_send(&self) -> bool {
        self.totals.resend > 0 || !self.queue.is_empty() || (self.closing && self.fin_seq.is_none())
    }

    /// The window is zero and there is data: Buffer Probes go out on their timer.
    fn probe_wanted(&self) -> bool {
        self.suspended() && !(self.queue.is_empty() && self.frags.is_empty())
    }

    /// Whether a Buffer Probe is due (RFC 7016 §3.6.2.9.1): the window is zero and there is data.
    /// The first probe MAY go at once when the window drops to zero.
    pub fn probe_due(&mut self, now: Instant) -> bool {
        if !self.probe_wanted() {
            return false;
        }
        now >= *self.probe_next.get_or_insert(now)
    }

    /// A Buffer Probe was sent: the period grows by √2, from max(1 s, ERTO) up to max(60 s, ERTO).
    pub fn on_probe_sent(&mut self, now: Instant, erto: Duration) {
        let floor = PERSIST_MIN.max(erto);
        let ceiling = PERSIST_MAX.max(erto);
        let interval = self.probe_interval.max(floor).min(ceiling);
        self.probe_next = Some(now + interval);
        self.probe_interval = interval.mul_f64(PROBE_BACKOFF).min(ceiling);
    }

    /// A Flow Exception Report: the receiver rejected the flow; stop sending (RFC 7016 §3.6.2.10).
    /// Answers true the first time.
    pub fn on_exception(&mut self, code: u64) -> bool {
        if self.exception.is_some() {
            return false;
        }
        self.exception = Some(code);
        self.queue.clear();
        self.queued_bytes = 0;
        self.frags.clear();
        self.totals = Weight::default();
        self.next_expiry = None;
        self.queue_expiry = None;
        self.oldest_sent = None;
        true
    }

    /// The exception code the receiver reported, if any.
    pub fn exception(&self) -> Option<u64> {
        self.exception
    }

    /// Whether the flow is done: FIN acknowledged and lingered, or rejected.
    pub fn is_finished(&self, now: Instant) -> bool {
        self.exception.is_some()
            || self
                .completed_at
                .is_some_and(|t| now >= t + SEND_FLOW_LINGER)
    }

    /// Whether FIN was acknowledged.
    pub fn is_complete(&self) -> bool {
        self.completed_at.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::payload::MAX_PAYLOAD_HEAD;
    use std::sync::Arc;

    const ROOM: usize = 1100;
    const ERTO: Duration = Duration::from_millis(250);

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn flow() -> SendFlow {
        SendFlow::new(FlowId(3), b"TC\x04\x00".to_vec(), Some(FlowId(2)))
    }

    /// Sends everything that fits; answers (seq, fsn_offset, fragment, abandoned, fin, len, options?).
    fn drain(f: &mut SendFlow, now: Instant) -> Vec<(u64, u64, Fragment, bool, bool, usize, bool)> {
        drain_data(f, now, ROOM)
            .into_iter()
            .map(|d| (d.0, d.1, d.2, d.3, d.4, d.5.len(), d.6))
            .collect()
    }

    fn ack(
        f: &mut SendFlow,
        now: Instant,
        blocks: u64,
        cum: u64,
        ranges: &[(u64, u64)],
    ) -> AckOutcome {
        f.on_ack(
            now,
            AckInfo {
                buffer_blocks: blocks,
                cum_ack: cum,
                ranges,
            },
        )
    }

    #[test]
    fn lookahead_names_both_ends_of_the_queues() {
        use crate::session::lookahead::testing::{covers, spans};
        let mut f = flow();
        for _ in 0..3 {
            f.send_message(t(0), &[1; 500], None).unwrap();
        }
        // One message cut into its fragment and sent; two still queued.
        assert!(f.poll_fragment(t(0), 600, usize::MAX).is_some());
        let named = spans(|s| f.lookahead(&mut |p, l| s(p, l)));
        assert!(covers(&named, f.queue.front().unwrap()));
        assert!(covers(&named, f.frags.front().unwrap()));
        f.send_message(t(0), &[2; 500], None).unwrap();
        assert!(
            covers(&named, f.queue.back().unwrap()),
            "the next push's slot"
        );
    }

    #[test]
    fn an_empty_message_waits_for_room_for_its_chunk_header() {
        // Found by review: with no room for a chunk header, an empty message was given a
        // sequence number that could not be written, and was never sent.
        let mut f = flow();
        f.send_message(t(0), &[], None).unwrap();
        assert!(f.poll_fragment(t(0), 2, usize::MAX).is_none());
        let frag = f.poll_fragment(t(0), 1200, usize::MAX).expect("fits now");
        assert_eq!(frag.seq, 1);
    }

    #[test]
    fn fragments_messages_and_sends_options_until_first_ack() {
        let mut f = flow();
        f.send_message(t(0), &[1; 3000], None).unwrap();
        f.send_message(t(0), &[2; 10], None).unwrap();
        let sent = drain(&mut f, t(0));
        let kinds: Vec<Fragment> = sent.iter().map(|s| s.2).collect();
        assert_eq!(
            kinds,
            vec![
                Fragment::Begin,
                Fragment::Middle,
                Fragment::End,
                Fragment::Whole
            ]
        );
        assert_eq!(sent.iter().map(|s| s.5).sum::<usize>(), 3010);
        assert!(
            sent.iter().all(|s| s.6),
            "options ride on every fragment until acked"
        );
        assert_eq!(
            sent.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(
            sent.iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![1, 2, 3, 4],
            "FSN stays 0"
        );
        let out = ack(&mut f, t(50), 64, 4, &[]);
        assert_eq!(out.acked_bytes, 3010);
        f.send_message(t(50), &[3; 10], None).unwrap();
        let sent = drain(&mut f, t(50));
        assert_eq!(sent, vec![(5, 1, Fragment::Whole, false, false, 10, false)]);
        assert_eq!(f.unacked_bytes(), 10);
    }

    /// A fragment as `poll_fragment` handed it out: (seq, fsn offset, position, abandoned, fin,
    /// data, options?).
    type Sent = (u64, u64, Fragment, bool, bool, Vec<u8>, bool);

    /// Everything `poll_fragment` hands out with `room`, sent at once.
    fn drain_data(f: &mut SendFlow, now: Instant, room: usize) -> Vec<Sent> {
        let mut out = Vec::new();
        while let Some(fr) = f.poll_fragment(now, room, usize::MAX) {
            out.push((
                fr.seq,
                fr.fsn_offset,
                fr.fragment,
                fr.abandoned,
                fr.fin,
                [fr.data.0, fr.data.1].concat(),
                fr.options.is_some(),
            ));
            let seq = fr.seq;
            f.on_fragment_sent(now, seq);
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn a_shared_payload_fragments_as_its_bytes_would(
            messages in proptest::collection::vec(
                (
                    proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..=MAX_PAYLOAD_HEAD),
                    proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..3000),
                    0usize..40,
                ),
                1..6,
            ),
            room in 60usize..1300,
        ) {
            // One flow gets each message as a copy, the other as a head and a shared body
            // range that starts `skip` bytes in: the same fragments come out.
            let mut copied = flow();
            let mut shared = flow();
            for (head, body, skip) in &messages {
                let skip = (*skip).min(body.len());
                let whole: Vec<u8> = head.iter().chain(&body[skip..]).copied().collect();
                copied.send_message(t(0), &whole, None).unwrap();
                let payload = Payload::new(head, Arc::from(&body[..]), skip..body.len()).unwrap();
                shared.send_payload(t(0), payload, None).unwrap();
            }
            proptest::prop_assert_eq!(copied.unacked_bytes(), shared.unacked_bytes());
            proptest::prop_assert_eq!(drain_data(&mut copied, t(0), room), drain_data(&mut shared, t(0), room));
            // Retransmissions too.
            copied.handle_timeout(t(10_000), ERTO);
            shared.handle_timeout(t(10_000), ERTO);
            proptest::prop_assert_eq!(
                drain_data(&mut copied, t(10_000), room),
                drain_data(&mut shared, t(10_000), room)
            );
        }
    }

    impl SendFlow {
        /// The totals recomputed from the fragments, to check the running ones.
        fn recount(&self) -> Weight {
            let mut w = Weight::default();
            for f in &self.frags {
                w.add(f.weight());
            }
            w
        }

        /// `(unacked_bytes, in_flight_bytes)` summed afresh from the queue and the fragments'
        /// states, independently of the running totals and of `Frag::weight`.
        fn recount_bytes(&self) -> (usize, usize) {
            let queued: usize = self.queue.iter().map(|q| q.message.len() - q.offset).sum();
            let live = |f: &&Frag| !f.abandoned;
            let unacked: usize = self
                .frags
                .iter()
                .filter(live)
                .filter(|f| f.state != FragState::Acked)
                .map(|f| f.end - f.start)
                .sum();
            let in_flight: usize = self
                .frags
                .iter()
                .filter(live)
                .filter(|f| matches!(f.state, FragState::InFlight { .. }))
                .map(|f| f.end - f.start)
                .sum();
            (queued + unacked, in_flight)
        }

        /// The flow's next timer computed afresh from every fragment and queued message: what
        /// [`SendFlow::poll_timeout`] may answer early, never late.
        fn exact_timeout(&self, erto: Duration) -> Option<Instant> {
            if self.exception.is_some() {
                return None;
            }
            if let Some(done) = self.completed_at {
                return Some(done + SEND_FLOW_LINGER);
            }
            let rto = self
                .frags
                .iter()
                .filter_map(|f| match f.state {
                    FragState::InFlight { sent_at, .. } => Some(sent_at + erto),
                    _ => None,
                })
                .min();
            let expiry = self
                .frags
                .iter()
                .filter(|f| !f.abandoned && f.state != FragState::Acked)
                .filter_map(|f| f.expiry)
                .chain(self.queue.iter().filter_map(|q| q.expiry))
                .min();
            let probe = if self.suspended() {
                self.probe_next
            } else {
                None
            };
            [rto, expiry, probe].into_iter().flatten().min()
        }

        /// The forward sequence number found by a scan from the first fragment.
        fn fsn_by_scan(&self) -> u64 {
            self.frags
                .iter()
                .find(|f| f.state != FragState::Acked && !f.abandoned)
                .map_or(self.next_seq, |f| f.seq)
                .saturating_sub(1)
        }

        /// Whether `next_expiry` is a lower bound of every live fragment's expiry.
        fn expiry_bound_holds(&self) -> bool {
            self.frags
                .iter()
                .filter(|f| !f.abandoned && f.state != FragState::Acked)
                .filter_map(|f| f.expiry)
                .all(|e| self.next_expiry.is_some_and(|n| n <= e))
        }
    }

    /// One step of a random flow history.
    #[derive(Debug, Clone)]
    enum Op {
        Send(usize, Option<u64>),
        Drain(usize),
        Ack(u64, Vec<(u64, u64)>),
        Timeout,
        Wait(u64),
        Close,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0usize..4000, proptest::option::of(50u64..3000)).prop_map(|(n, e)| Op::Send(n, e)),
            (40usize..1300).prop_map(Op::Drain),
            (
                0u64..40,
                proptest::collection::vec((0u64..40, 0u64..4), 0..3)
            )
                .prop_map(|(cum, r)| Op::Ack(
                    cum,
                    r.into_iter().map(|(a, l)| (a, a + l)).collect()
                )),
            Just(Op::Timeout),
            (1u64..400).prop_map(Op::Wait),
            Just(Op::Close),
        ]
    }

    proptest::proptest! {
        #[test]
        fn running_totals_match_a_recount(ops in proptest::collection::vec(op(), 1..60)) {
            let mut f = flow();
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Send(n, e) => {
                        let expiry = e.map(|e| t(now + e));
                        if n % 2 == 0 {
                            let _ = f.send_message(t(now), &vec![1; n], expiry);
                        } else {
                            // A shared payload whose range starts mid-body.
                            let body: Arc<[u8]> = Arc::from(vec![2; n + 7]);
                            let p = Payload::new(&[3; 5], body, 7..n + 7).unwrap();
                            let _ = f.send_payload(t(now), p, expiry);
                        }
                    }
                    Op::Drain(room) => {
                        while let Some(fr) = f.poll_fragment(t(now), room, usize::MAX) {
                            let seq = fr.seq;
                            f.on_fragment_sent(t(now), seq);
                        }
                    }
                    Op::Ack(cum, ranges) => {
                        f.on_ack(t(now), AckInfo { buffer_blocks: 64, cum_ack: cum, ranges: &ranges });
                    }
                    Op::Timeout => {
                        f.handle_timeout(t(now), ERTO);
                        // The timer was run: it is not due again at once (no busy loop), unless
                        // exactly so (a Buffer Probe waiting to go).
                        let next = f.poll_timeout(ERTO);
                        proptest::prop_assert!(
                            next.is_none_or(|n| n > t(now) || Some(n) == f.exact_timeout(ERTO)),
                            "timer {:?} due again at {} ms (exact {:?})", next, now, f.exact_timeout(ERTO)
                        );
                    }
                    Op::Wait(ms) => now += ms,
                    Op::Close => f.close(),
                }
                // The O(1) timer is never later than the one a full scan gives.
                if let Some(exact) = f.exact_timeout(ERTO) {
                    proptest::prop_assert!(
                        f.poll_timeout(ERTO).is_some_and(|b| b <= exact),
                        "timer {:?} later than {:?}", f.poll_timeout(ERTO), exact
                    );
                }
                proptest::prop_assert_eq!(f.fsn_by_scan(), f.fsn());
                proptest::prop_assert_eq!(f.totals, f.recount());
                proptest::prop_assert_eq!(
                    (f.unacked_bytes(), f.in_flight_bytes()),
                    f.recount_bytes()
                );
                proptest::prop_assert!(f.expiry_bound_holds());
            }
        }
    }

    #[test]
    fn three_naks_make_a_loss_and_the_fragment_is_resent() {
        let mut f = flow();
        for i in 0..5u8 {
            f.send_message(t(0), &[i; 100], None).unwrap();
        }
        drain(&mut f, t(0));
        // Seq 1 missing; 2, 3, 4 acked one by one: three NAKs for 1.
        assert_eq!(ack(&mut f, t(10), 64, 0, &[(2, 2)]).lost_sent_at, None);
        assert_eq!(ack(&mut f, t(11), 64, 0, &[(2, 3)]).lost_sent_at, None);
        assert_eq!(
            ack(&mut f, t(12), 64, 0, &[(2, 4)]).lost_sent_at,
            Some(t(0))
        );
        let resent = drain(&mut f, t(12));
        assert_eq!(resent.len(), 1);
        assert_eq!(resent[0].0, 1);
        assert_eq!(resent[0].5, 100);
        // QoS: six transmissions, one declared lost.
        assert_eq!(f.stats(), SendStats { sent: 6, lost: 1 });
    }

    #[test]
    fn rto_retransmits_everything_in_flight() {
        let mut f = flow();
        f.send_message(t(0), &[7; 2500], None).unwrap();
        assert_eq!(drain(&mut f, t(0)).len(), 3);
        assert_eq!(f.poll_timeout(ERTO), Some(t(0) + ERTO));
        assert!(!f.handle_timeout(t(100), ERTO));
        assert!(f.handle_timeout(t(250), ERTO));
        let again = drain(&mut f, t(250));
        assert_eq!(again.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(f.stats(), SendStats { sent: 6, lost: 3 });
    }

    #[test]
    fn zero_window_suspends_and_probes_back_off() {
        let mut f = flow();
        f.send_message(t(0), &[1; 100], None).unwrap();
        drain(&mut f, t(0));
        ack(&mut f, t(10), 0, 1, &[]);
        f.send_message(t(10), &[2; 100], None).unwrap();
        assert!(
            drain(&mut f, t(10)).is_empty(),
            "no new data into a zero window"
        );
        // The first probe may go at once; then 1 s, then √2 s, ...
        assert!(f.probe_due(t(10)));
        f.on_probe_sent(t(10), ERTO);
        assert!(!f.probe_due(t(500)));
        assert_eq!(f.poll_timeout(ERTO), Some(t(1010)));
        assert!(f.probe_due(t(1010)));
        f.on_probe_sent(t(1010), ERTO);
        assert_eq!(
            f.poll_timeout(ERTO),
            Some(t(1010) + Duration::from_secs(1).mul_f64(PROBE_BACKOFF))
        );
        // An ack that opens the window ends the suspension.
        ack(&mut f, t(2000), 8, 1, &[]);
        assert!(!f.probe_due(t(5000)));
        assert_eq!(drain(&mut f, t(2000)).len(), 1);
    }

    #[test]
    fn probe_period_never_below_erto_nor_above_sixty_seconds() {
        let mut f = flow();
        f.send_message(t(0), &[1; 10], None).unwrap();
        drain(&mut f, t(0));
        ack(&mut f, t(1), 0, 1, &[]);
        f.send_message(t(1), &[2; 10], None).unwrap();
        let big_erto = Duration::from_secs(5);
        f.on_probe_sent(t(1), big_erto);
        assert_eq!(
            f.poll_timeout(big_erto)
                .map(|x| x.saturating_duration_since(t(1))),
            Some(big_erto)
        );
        let mut now = t(1);
        let mut last = Duration::ZERO;
        for _ in 0..40 {
            f.on_probe_sent(now, ERTO);
            let next = f.poll_timeout(ERTO).unwrap();
            last = next.saturating_duration_since(now);
            assert!((PERSIST_MIN..=PERSIST_MAX).contains(&last));
            now = next;
        }
        assert_eq!(last, PERSIST_MAX);
    }

    #[test]
    fn expired_messages_are_abandoned_and_fin_completes() {
        let mut f = flow();
        f.send_message(t(0), &[1; 2000], Some(t(100))).unwrap();
        let first = drain(&mut f, t(0));
        assert_eq!(first.len(), 2);
        // Lost, then expired: it goes out again as ABN without data, not as data.
        assert!(f.handle_timeout(t(300), ERTO));
        let abn = drain(&mut f, t(300));
        assert_eq!(abn.len(), 2);
        assert!(abn.iter().all(|s| s.3 && s.5 == 0));
        // A queued message that expires before it is sent never gets a sequence number.
        f.send_message(t(300), &[2; 10], Some(t(301))).unwrap();
        f.close();
        let fin = drain(&mut f, t(400));
        assert_eq!(fin.len(), 1);
        assert!(fin[0].4, "FIN");
        assert_eq!(fin[0].5, 0);
        assert_eq!(fin[0].0, 3);
        assert_eq!(
            fin[0].1, 1,
            "abandoned fragments are behind the forward sequence number"
        );
        assert!(f.send_message(t(400), b"late", None).is_err());
        ack(&mut f, t(450), 64, 3, &[]);
        assert!(f.is_complete());
        assert!(!f.is_finished(t(451)));
        assert!(f.is_finished(t(450) + SEND_FLOW_LINGER));
    }

    #[test]
    fn exception_report_stops_the_flow() {
        let mut f = flow();
        f.send_message(t(0), &[1; 10], None).unwrap();
        drain(&mut f, t(0));
        assert!(f.on_exception(7));
        assert!(!f.on_exception(7), "reported once");
        assert_eq!(f.exception(), Some(7));
        assert!(f.send_message(t(1), b"x", None).is_err());
        assert!(f.poll_fragment(t(1), ROOM, usize::MAX).is_none());
        assert!(f.is_finished(t(1)));
    }

    #[test]
    fn queue_is_bounded() {
        let mut f = flow();
        let big = vec![0u8; 1024 * 1024];
        for _ in 0..16 {
            f.send_message(t(0), &big, None).unwrap();
        }
        assert_eq!(f.send_message(t(0), b"x", None), Err(SendError::QueueFull));
    }
}
