//! The flows of one session (RFC 7016 §3.6): demultiplexing User Data to receive flows, acks to
//! send flows, and filling outgoing packets with acks, exception reports, buffer probes and data
//! under the session's congestion controller. Per-flow state machines live in [`crate::flow`];
//! this module converts between them and wire chunks.

use core::cell::Cell;
use core::time::Duration;
use std::collections::VecDeque;

use crate::flow::congestion::Congestion;
use crate::flow::options::{classify_options, FlowOptions};
use crate::flow::payload::Payload;
use crate::flow::recv::{FragmentIn, RecvFlow, RecvStats};
use crate::flow::rtt::RttEstimator;
pub use crate::flow::send::SendError;
use crate::flow::send::{AckInfo, SendFlow, SendStats};
use crate::ids::FlowId;
use crate::params::{MAX_FLOW_METADATA, SESSION_RETRANSMIT_LIMIT};
use crate::time::Instant;
use crate::wire::{
    options, BitmapAck, BufferProbe, ChunkBody, FlowExceptionReport, NextUserData, RangeAck,
    SplitData, UserData, UserDataFlags, WireError, Writer,
};

use super::flow_map::FlowMap;
use super::Event;

/// Default receive buffer per flow (rtmfp-cpp and Cumulus use about 128 KiB).
pub const DEFAULT_RECEIVE_BUFFER: usize = 128 * 1024;
/// Most receive flows the far end may open at once; beyond it new flows are rejected.
pub const MAX_RECEIVE_FLOWS: usize = 256;
/// Most send flows we keep open at once.
pub const MAX_SEND_FLOWS: usize = 1024;
/// Most ack ranges sent per flow.
pub const MAX_ACK_RANGES: usize = 32;
/// User Data option types (RFC 7016 §2.3.11.1), defined with the rest of the options' rules.
pub use crate::flow::options::{OPTION_METADATA, OPTION_RETURN_ASSOCIATION};
/// Exception code for flows the implementation rejects by itself (RFC 7016 §3.6.3.7).
pub const AUTOMATIC_REJECTION: u64 = 0;

/// A flow-level error for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// No such flow.
    #[error("unknown flow")]
    UnknownFlow,
    /// The flow is closed or closing.
    #[error("flow closed")]
    FlowClosed,
    /// Metadata too long (RFC 7016 §2.3.11.1.1).
    #[error("metadata too long")]
    MetadataTooLong,
    /// Too many flows.
    #[error("too many flows")]
    TooManyFlows,
    /// The flow's send queue is full.
    #[error("send queue full")]
    QueueFull,
    /// A User Data chunk is malformed at the flow level (fsnOffset above seq, seq 0).
    #[error("invalid user data: {0}")]
    Invalid(&'static str),
}

impl From<SendError> for FlowError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Closed => FlowError::FlowClosed,
            SendError::QueueFull => FlowError::QueueFull,
        }
    }
}

/// Data went unacknowledged for the session retransmission limit: the far end is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitLimit;

/// How a message is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// Abandon the message instead of sending or retransmitting it after this time.
    pub expiry: Option<Instant>,
}

/// The User Data context within one packet, for Next User Data chunks (RFC 7016 §2.3.12).
#[derive(Debug, Clone, Copy, Default)]
pub struct UserDataContext {
    last: Option<(FlowId, u64, u64)>,
}

/// The flows of a session, with the session-wide RTT and congestion state.
#[derive(Debug)]
pub struct FlowSet {
    send: FlowMap<SendFlow>,
    recv: FlowMap<RecvFlow>,
    next_send_flow: u64,
    receive_buffer: usize,
    rtt: RttEstimator,
    congestion: Congestion,
    events: VecDeque<Event>,
    /// Round-robin cursor over send flows, so that one busy flow does not starve the others.
    cursor: FlowId,
    /// When unacknowledged data was first outstanding without progress.
    stalled_since: Option<Instant>,
    /// A receive flow changed since [`Self::poll_event`] last found none with a message or
    /// an end to report: it looks again only then, not for every poll.
    recv_pending: bool,
    /// A receive flow may have an ack to send, now or at its delayed-ack deadline: set by
    /// everything that changes a receive flow, cleared when [`Self::write_chunks`] finds none
    /// with one, so that a packet does not look through idle receive flows.
    acks_scheduled: bool,
    /// The earliest receive-flow timer, kept by [`Self::poll_timeout`] until a receive flow
    /// changes (`None`: to be found again), so that a session's timer does not read every
    /// receive flow after each datagram it sends or acknowledgement it takes.
    recv_deadline: Cell<Option<Option<Instant>>>,
}

impl FlowSet {
    /// An empty set whose receive flows get `receive_buffer` bytes each.
    pub fn new(receive_buffer: usize) -> Self {
        FlowSet {
            send: FlowMap::default(),
            recv: FlowMap::default(),
            next_send_flow: 1,
            receive_buffer,
            rtt: RttEstimator::default(),
            congestion: Congestion::default(),
            events: VecDeque::new(),
            cursor: FlowId(0),
            stalled_since: None,
            recv_pending: false,
            acks_scheduled: false,
            recv_deadline: Cell::new(None),
        }
    }

    /// Smoothed RTT, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt()
    }

    /// Feeds an RTT sample from a timestamp echo (RFC 7016 §3.5.2.2).
    pub fn on_rtt_sample(&mut self, rtt: Duration) {
        self.rtt.on_sample(rtt);
    }

    /// Notes a time-critical reverse notification (RFC 7016 §3.5.2.1).
    pub fn on_time_critical_reverse(&mut self, now: Instant) {
        self.congestion.on_time_critical_reverse(now);
    }

    /// Opens a send flow.
    pub fn open_send_flow(
        &mut self,
        metadata: &[u8],
        associated: Option<FlowId>,
    ) -> Result<FlowId, FlowError> {
        if metadata.len() > MAX_FLOW_METADATA {
            return Err(FlowError::MetadataTooLong);
        }
        if self.send.len() >= MAX_SEND_FLOWS {
            return Err(FlowError::TooManyFlows);
        }
        let id = FlowId(self.next_send_flow);
        self.next_send_flow += 1;
        self.send
            .insert(id, SendFlow::new(id, metadata.to_vec(), associated));
        Ok(id)
    }

    /// Queues a message.
    pub fn send(
        &mut self,
        now: Instant,
        flow: FlowId,
        data: &[u8],
        opts: SendOptions,
    ) -> Result<(), FlowError> {
        let f = self.send.get_mut(flow).ok_or(FlowError::UnknownFlow)?;
        f.send_message(now, data, opts.expiry)
            .map_err(FlowError::from)
    }

    /// Queues a message on a send flow without copying its bytes (see [`Payload`]).
    pub fn send_payload(
        &mut self,
        now: Instant,
        flow: FlowId,
        payload: Payload,
        opts: SendOptions,
    ) -> Result<(), FlowError> {
        let f = self.send.get_mut(flow).ok_or(FlowError::UnknownFlow)?;
        f.send_payload(now, payload, opts.expiry)
            .map_err(FlowError::from)
    }

    /// Closes a send flow after its queued data.
    pub fn close_send_flow(&mut self, flow: FlowId) -> Result<(), FlowError> {
        self.send
            .get_mut(flow)
            .ok_or(FlowError::UnknownFlow)?
            .close();
        Ok(())
    }

    /// Rejects a receive flow.
    pub fn reject_receive_flow(&mut self, flow: FlowId, code: u64) -> Result<(), FlowError> {
        self.recv_pending = true;
        self.acks_scheduled = true;
        self.recv_mut()
            .get_mut(flow)
            .ok_or(FlowError::UnknownFlow)?
            .reject(code);
        Ok(())
    }

    /// Bytes not yet acknowledged on a send flow.
    pub fn backlog(&self, flow: FlowId) -> Option<usize> {
        self.send.get(flow).map(SendFlow::unacked_bytes)
    }

    /// Gives `span` the used part of the send flows' table ([`Lookahead::Heap`]).
    ///
    /// [`Lookahead::Heap`]: super::lookahead::Lookahead::Heap
    pub(crate) fn lookahead_table(&self, span: &mut impl FnMut(*const u8, usize)) {
        let table = self.send.as_slice();
        span(table.as_ptr().cast(), core::mem::size_of_val(table));
    }

    /// Gives `span` the queue slots of send flow `flow`, or of every send flow with something
    /// queued or in flight ([`Lookahead::Flows`]).
    ///
    /// [`Lookahead::Flows`]: super::lookahead::Lookahead::Flows
    pub(crate) fn lookahead_flows(
        &self,
        flow: Option<FlowId>,
        span: &mut impl FnMut(*const u8, usize),
    ) {
        match flow {
            Some(flow) => {
                if let Some(f) = self.send.get(flow) {
                    f.lookahead(span);
                }
            }
            // An acknowledgement or a transmit touches only the flows with something queued
            // or in flight: an idle flow's buffers would cost a miss for nothing.
            None => self
                .send
                .values()
                .filter(|f| f.unacked_bytes() > 0)
                .for_each(|f| f.lookahead(span)),
        }
    }

    /// Send flow `flow` (for tests that look inside it).
    #[cfg(test)]
    pub(crate) fn send_flow(&self, flow: FlowId) -> Option<&SendFlow> {
        self.send.get(flow)
    }

    /// What the send flow `flow` has sent and lost.
    pub fn send_stats(&self, flow: FlowId) -> Option<SendStats> {
        self.send.get(flow).map(SendFlow::stats)
    }

    /// What the receive flow `flow` has received and lost.
    pub fn recv_stats(&self, flow: FlowId) -> Option<RecvStats> {
        self.recv.get(flow).map(RecvFlow::stats)
    }

    /// Aborts every flow (the session left S_OPEN).
    pub fn abort_all(&mut self) {
        self.send.clear();
        self.recv_mut().clear();
    }

    /// The next flow event.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        if !self.recv_pending {
            return None;
        }
        for (id, f) in self.recv_mut().iter_mut() {
            if let Some(data) = f.poll_message() {
                return Some(Event::Message { flow: id, data });
            }
            if f.take_finished() {
                return Some(Event::FlowFinished { flow: id });
            }
        }
        self.recv_pending = false;
        None
    }

    /// A User Data chunk.
    pub fn on_user_data(
        &mut self,
        now: Instant,
        ctx: &mut UserDataContext,
        ud: UserData<'_>,
    ) -> Result<(), FlowError> {
        ctx.last = Some((ud.flow_id, ud.seq, ud.fsn_offset));
        self.on_fragment(
            now,
            ud.flow_id,
            ud.seq,
            ud.fsn_offset,
            ud.flags,
            ud.options,
            ud.data,
        )
    }

    /// A Next User Data chunk: same flow, seq + 1, fsnOffset + 1 (RFC 7016 §2.3.12).
    pub fn on_next_user_data(
        &mut self,
        now: Instant,
        ctx: &mut UserDataContext,
        nud: NextUserData<'_>,
    ) -> Result<(), FlowError> {
        let (flow, seq, fsn) = ctx
            .last
            .ok_or(FlowError::Invalid("Next User Data first in packet"))?;
        let (seq, fsn) = (seq.saturating_add(1), fsn.saturating_add(1));
        ctx.last = Some((flow, seq, fsn));
        self.on_fragment(now, flow, seq, fsn, nud.flags, nud.options, nud.data)
    }

    #[allow(clippy::too_many_arguments)]
    fn on_fragment(
        &mut self,
        now: Instant,
        flow: FlowId,
        seq: u64,
        fsn_offset: u64,
        flags: UserDataFlags,
        opts: Option<&[u8]>,
        data: &[u8],
    ) -> Result<(), FlowError> {
        // RFC 7016 §2.3.11: fsnOffset ≤ seq. (MonaServer sends ABN+FIN at seq 0: tolerated.)
        if fsn_offset > seq {
            return Err(FlowError::Invalid("fsnOffset above sequence number"));
        }
        if !self.recv.contains_key(flow) {
            self.open_receive_flow(flow, opts);
        }
        self.recv_pending = true;
        self.acks_scheduled = true;
        let Some(f) = self.recv_mut().get_mut(flow) else {
            return Ok(());
        };
        f.on_fragment(
            now,
            FragmentIn {
                seq,
                fsn_offset,
                fragment: flags.fragment,
                abandoned: flags.abandoned,
                fin: flags.fin,
                data,
            },
        );
        Ok(())
    }

    fn open_receive_flow(&mut self, flow: FlowId, opts: Option<&[u8]>) {
        let mut parsed: Vec<(u64, &[u8])> = Vec::new();
        let mut malformed = false;
        for o in options(opts.unwrap_or_default()) {
            match o {
                Ok(o) => parsed.push((o.kind, o.value)),
                Err(_) => malformed = true,
            }
        }
        let mut f = RecvFlow::new(self.receive_buffer);
        let classified = classify_options(&parsed);
        let mut reject = malformed || self.recv.len() >= MAX_RECEIVE_FLOWS;
        let (metadata, associated) = match classified {
            Ok(FlowOptions {
                metadata: Some(m),
                associated,
            }) => (m.to_vec(), associated.map(FlowId)),
            // Every flow MUST have metadata; a mandatory unknown option rejects it
            // (RFC 7016 §2.3.11.1).
            _ => {
                reject = true;
                (Vec::new(), None)
            }
        };
        // A return association must name one of our open send flows (RFC 7016 §2.3.11.1.2).
        if let Some(a) = associated {
            if !self.send.get(a).is_some_and(SendFlow::is_open) {
                reject = true;
            }
        }
        if reject {
            f.reject(AUTOMATIC_REJECTION);
        } else {
            self.events.push_back(Event::FlowOpened {
                flow,
                metadata,
                associated,
            });
        }
        self.recv_mut().insert(flow, f);
    }

    /// Marks that a packet with user data arrived (delayed-ack counting, RFC 7016 §3.6.3.4.4).
    pub fn on_packet_with_user_data(&mut self, now: Instant) {
        self.acks_scheduled = true;
        for f in self.recv_mut().values_mut() {
            f.on_packet_with_user_data(now);
        }
    }

    fn on_ack(
        &mut self,
        now: Instant,
        flow: FlowId,
        buffer_blocks: u64,
        cum_ack: u64,
        ranges: &[(u64, u64)],
    ) {
        let Some(f) = self.send.get_mut(flow) else {
            return;
        };
        let outcome = f.on_ack(
            now,
            AckInfo {
                buffer_blocks,
                cum_ack,
                ranges,
            },
        );
        if outcome.acked_bytes > 0 {
            self.stalled_since = None;
            self.congestion.on_ack(outcome.acked_bytes, now);
        }
        if let Some(sent_at) = outcome.lost_sent_at {
            self.congestion.on_loss(sent_at, now);
        }
        self.congestion.on_ack_received();
    }

    /// A Range Ack.
    pub fn on_range_ack(&mut self, now: Instant, ack: RangeAck<'_>) {
        self.on_ack_ranges(
            now,
            ack.flow_id,
            ack.buffer_blocks,
            ack.cum_ack,
            ack.ranges(),
        );
    }

    /// A Bitmap Ack.
    pub fn on_bitmap_ack(&mut self, now: Instant, ack: BitmapAck<'_>) {
        self.on_ack_ranges(
            now,
            ack.flow_id,
            ack.buffer_blocks,
            ack.cum_ack,
            ack.ranges(),
        );
    }

    /// Collects up to [`MAX_ACK_RANGES`] ranges of either ack chunk, without allocating.
    fn on_ack_ranges(
        &mut self,
        now: Instant,
        flow: FlowId,
        buffer_blocks: u64,
        cum_ack: u64,
        ranges: impl Iterator<Item = (u64, u64)>,
    ) {
        let mut buf = [(0u64, 0u64); MAX_ACK_RANGES];
        let mut n = 0;
        for (slot, r) in buf.iter_mut().zip(ranges) {
            *slot = r;
            n += 1;
        }
        self.on_ack(now, flow, buffer_blocks, cum_ack, &buf[..n]);
    }

    /// A Buffer Probe: ack that flow at once (RFC 7016 §3.6.3.6).
    pub fn on_buffer_probe(&mut self, flow: FlowId) {
        self.acks_scheduled = true;
        if let Some(f) = self.recv_mut().get_mut(flow) {
            f.on_buffer_probe();
        }
    }

    /// A Flow Exception Report for one of our send flows (RFC 7016 §3.6.2.10).
    pub fn on_exception(&mut self, flow: FlowId, code: u64) {
        if let Some(f) = self.send.get_mut(flow) {
            if f.on_exception(code) {
                self.events.push_back(Event::FlowRejected { flow, code });
            }
        }
    }

    /// The earliest flow timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let erto = self.rtt.erto();
        let send = self
            .send
            .values()
            .filter_map(|f| f.poll_timeout(erto))
            .min();
        let recv = match self.recv_deadline.get() {
            Some(kept) => {
                debug_assert_eq!(kept, self.recv_timeout(), "a receive flow changed unseen");
                kept
            }
            None => {
                let found = self.recv_timeout();
                self.recv_deadline.set(Some(found));
                found
            }
        };
        let stall = self.stalled_since.map(|s| s + SESSION_RETRANSMIT_LIMIT);
        [send, recv, stall].into_iter().flatten().min()
    }

    /// The receive flows, for a change: forgets their kept earliest timer (see
    /// [`Self::recv_deadline`]), so that no change can leave it stale. Every change to a
    /// receive flow goes through here.
    fn recv_mut(&mut self) -> &mut FlowMap<RecvFlow> {
        self.recv_deadline.set(None);
        &mut self.recv
    }

    /// The earliest timer of the receive flows.
    fn recv_timeout(&self) -> Option<Instant> {
        self.recv.values().filter_map(RecvFlow::poll_timeout).min()
    }

    /// Runs flow timers; `Err` when data went unacknowledged for the retransmission limit.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), RetransmitLimit> {
        let erto = self.rtt.erto();
        let mut timed_out = false;
        for f in self.send.values_mut() {
            timed_out |= f.handle_timeout(now, erto);
        }
        if timed_out {
            self.rtt.on_timeout();
            self.congestion.on_timeout(now);
            self.stalled_since.get_or_insert(now);
        }
        self.recv_pending = true;
        self.acks_scheduled = true;
        for f in self.recv_mut().values_mut() {
            f.handle_timeout(now);
        }
        self.send.retain(|_, f| !f.is_finished(now));
        self.recv_mut().retain(|_, f| !f.is_finished(now));
        match self.stalled_since {
            Some(s) if now.saturating_duration_since(s) >= SESSION_RETRANSMIT_LIMIT => {
                Err(RetransmitLimit)
            }
            _ => Ok(()),
        }
    }

    /// Whether [`Self::write_chunks`] might write anything at `now`: true whenever it would
    /// (a superset, read without changing anything).
    pub fn may_write(&self, now: Instant) -> bool {
        self.acks_scheduled || self.send.values().any(|f| f.may_write(now))
    }

    /// Writes acks (each preceded by its flow's exception report), buffer probes, then data, as
    /// room and the congestion window allow.
    pub fn write_chunks(&mut self, now: Instant, w: &mut Writer<'_>) {
        self.write_acks(now, w);
        self.write_probes(now, w);
        self.write_data(now, w);
    }

    fn write_acks(&mut self, now: Instant, w: &mut Writer<'_>) {
        // Every test run in debug checks that no change to a receive flow missed the flag.
        debug_assert!(self.acks_scheduled || self.recv.values().all(|f| !f.ack_scheduled()));
        if !self.acks_scheduled {
            return;
        }
        let mut scheduled = false;
        for (id, f) in self.recv_mut().iter_mut() {
            if !f.ack_due(now) {
                scheduled |= f.ack_scheduled();
                continue;
            }
            let mut ranges = [(0u64, 0u64); MAX_ACK_RANGES];
            if let Some(code) = f.rejection() {
                if (FlowExceptionReport {
                    flow_id: id,
                    exception: code,
                })
                .emit(w)
                .is_err()
                {
                    return;
                }
            }
            let n = f.ack_ranges(&mut ranges);
            let emitted = RangeAck::emit_from_ranges(
                w,
                id,
                f.buffer_blocks(),
                f.cum_ack(),
                &ranges[..n],
                true,
            );
            match emitted {
                Ok(_) => f.on_ack_sent(now),
                Err(WireError::BufferTooSmall) => return,
                Err(_) => f.on_ack_sent(now),
            }
        }
        self.acks_scheduled = scheduled;
    }

    fn write_probes(&mut self, now: Instant, w: &mut Writer<'_>) {
        let erto = self.rtt.erto();
        for (id, f) in self.send.iter_mut() {
            if f.probe_due(now) {
                if (BufferProbe { flow_id: id }).emit(w).is_err() {
                    return;
                }
                f.on_probe_sent(now, erto);
            }
        }
    }

    fn write_data(&mut self, now: Instant, w: &mut Writer<'_>) {
        let mut prev: Option<(FlowId, u64, u64)> = None;
        let mut wrote_data = false;
        // Bytes in flight on every flow, summed once per packet and kept up to date as this
        // packet's fragments go out (a flow's poll may abandon some of its own).
        let mut in_flight: usize = self.send.values().map(SendFlow::in_flight_bytes).sum();
        // Round robin from the cursor: the flows at or after it, then those before it (no flow
        // is added or removed while a packet is written, so positions stay put).
        let flows = self.send.len();
        let start = self.send.position_from(self.cursor);
        for i in (start..flows).chain(0..start.min(flows)) {
            loop {
                let allowance = self.congestion.allowance(in_flight);
                let Some((id, f)) = self.send.at_mut(i) else {
                    break;
                };
                let before = f.in_flight_bytes();
                let Some(frag) = f.poll_fragment(now, w.remaining(), allowance) else {
                    in_flight = in_flight - before + f.in_flight_bytes();
                    break;
                };
                let flags = UserDataFlags {
                    fragment: frag.fragment,
                    abandoned: frag.abandoned,
                    fin: frag.fin,
                };
                let continues = frag.options.is_none()
                    && prev.is_some_and(|(pf, ps, po)| {
                        pf == id && ps + 1 == frag.seq && po + 1 == frag.fsn_offset
                    });
                let (data, tail) = frag.data;
                let res = if continues {
                    SplitData {
                        chunk: NextUserData {
                            flags,
                            options: None,
                            data,
                        },
                        tail,
                    }
                    .emit(w)
                } else {
                    SplitData {
                        chunk: UserData {
                            flags,
                            flow_id: id,
                            seq: frag.seq,
                            fsn_offset: frag.fsn_offset,
                            options: frag.options,
                            data,
                        },
                        tail,
                    }
                    .emit(w)
                };
                let (seq, fsn) = (frag.seq, frag.fsn_offset);
                if res.is_err() {
                    // poll_fragment sized the chunk to fit, so this does not happen; stop here.
                    break;
                }
                f.on_fragment_sent(now, seq);
                in_flight = in_flight - before + f.in_flight_bytes();
                prev = Some((id, seq, fsn));
                wrote_data = true;
                self.cursor = id;
            }
        }
        if wrote_data {
            self.congestion.on_data_packet_sent();
        }
    }
}
