//! A data-plane worker: one thread, one packet backend, one shard of sessions, one timer wheel,
//! one link to the control plane. It runs to completion: receive a batch, decrypt and advance
//! sessions, send a batch.
//!
//! Session IDs name their owner (`updraft_control::ids`): a datagram for another worker's
//! session is handed to that worker through a bounded queue. Startup datagrams (session ID 0)
//! go to the control plane, which answers with datagrams to send and keyed sessions to install.
//! NetConnection commands go up to the control plane; its replies come back down.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::mem::offset_of;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rtmfp::crypto::{
    encrypt_cbc_zero_iv_many, finish_sealing, read_session_id, Aes128EncKey, CbcJob, SSID_LEN,
};
use rtmfp::flash::message::{MessageType, TcMessage, UserControl, TC_HEADER_LEN};
use rtmfp::flash::metadata::{FlowMetadata, ReceiveIntent};
use rtmfp::flash::netgroup::{emit_member, GroupJoin};
use rtmfp::flow::payload::Payload;
use rtmfp::flow::recv::RecvStats;
use rtmfp::flow::send::SendStats;
use rtmfp::ids::{FlowId, PeerId};
use rtmfp::session::flows::{SendOptions, AUTOMATIC_REJECTION};
use rtmfp::session::lookahead::{Lookahead, Visit};
use rtmfp::session::{CloseReason, Event, Role, Session, SessionConfig, SessionParams};
use rtmfp::time::Instant;
use rtmfp::wire::{Address, AddressOrigin};
use socket2::Socket;
use updraft_control::ids::SessionIdParts;
use updraft_control::ipc::{
    Down, Failure, MediaEvents, NetState, SessionInfo, SessionTiming, StreamEntry, Up, IPC_VERSION,
    MAX_MESSAGE, MAX_QOS_ENTRIES, MAX_RESYNC_NET_STATES, MAX_RESYNC_SESSIONS, MAX_RESYNC_STREAMS,
    MAX_STATS, MAX_TIMING_ENTRIES,
};

use crate::counters::{SharedCounters, WorkerCounters};
use crate::deny::{DenyList, DenyView};
use crate::io::{BatchIo, RxBatch, TxBatch, BATCH, SLOT_SIZE};
use crate::media::{
    classify, prepare, timestamp, MediaItem, MediaKind, Qos, StreamCache, StreamReport,
    SubscriberReport,
};
use crate::prefetch::prefetch;
use crate::sys::{poll_readable, EventFd};
use crate::wheel::TimerWheel;
use updraft_bpf::Prefix;

/// Longest a worker sleeps without looking at its stop flag.
const MAX_WAIT: Duration = Duration::from_millis(100);
/// How far ahead (in wheel ticks) a worker looks for its next deadline before sleeping.
const WAIT_HORIZON_TICKS: u64 = 25;
/// Receive batches per loop turn before the worker looks at timers and its control link.
const RX_BATCHES_PER_TURN: usize = 16;
/// Control messages read per loop turn.
const CONTROL_MESSAGES_PER_TURN: usize = 256;
/// Capacity of each worker's handoff queue, in datagrams.
pub const HANDOFF_QUEUE: usize = 1024;
/// Longest a session asked to close waits for its last replies to be acknowledged.
/// Most blacklist edits waiting for the supervisor; more are dropped (a script in a loop
/// cannot grow the queue without bound).
const MAX_BLACKLIST_REQUESTS: usize = 4096;
const CLOSE_FLUSH_LIMIT: Duration = Duration::from_secs(5);
/// Longest a shutdown waits for sessions to acknowledge their Close Requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A datagram that arrived at the wrong worker, on its way to the owner. Carried by value:
/// the bounded queue stores it in place, so a handoff allocates nothing.
pub struct Handoff {
    from: SocketAddr,
    len: usize,
    data: [u8; SLOT_SIZE],
}

/// What the workers of one server share.
#[derive(Debug)]
pub struct Shared {
    /// Each worker's published counters.
    pub counters: Vec<SharedCounters>,
    /// Each worker's wake-up (other workers and the supervisor bump it).
    pub wakers: Vec<EventFd>,
    /// Set to shut down: sessions are closed in order, then workers return.
    pub stop: AtomicBool,
    /// Workers still running.
    pub running: AtomicUsize,
    /// The control plane's latest counters (`Down::Stats`), as reported to worker 0.
    pub control_stats: Vec<AtomicU64>,
    /// How many of `control_stats` the latest report filled.
    pub control_stats_len: AtomicUsize,
    /// Each worker's latest stream reports (replaced once per [`REPORT_PERIOD`]; never locked
    /// on the packet path).
    pub streams: Vec<Mutex<Vec<StreamReport>>>,
    /// The packet I/O in use, for the metrics (set at start, refreshed by the supervisor).
    pub io: Mutex<IoReport>,
    /// The blacklist: sources whose datagrams the workers drop.
    pub deny: DenyList,
    /// Blacklist edits the applications asked for (`Down::Blacklist`, add or remove), for the
    /// supervisor to apply to the blacklist and the XDP program (see
    /// `DataPlane::apply_blacklist_requests`). Locked only for those rare messages.
    pub blacklist_requests: Mutex<Vec<(bool, Prefix)>>,
}

/// The packet I/O the workers use, as the metrics show it.
#[derive(Debug, Clone, Default)]
pub struct IoReport {
    /// AF_XDP (else sockets).
    pub xdp: bool,
    /// What was chosen and why (the start-up log line).
    pub description: String,
    /// The XDP program's verdict counters, in XDP mode.
    pub verdicts: Option<updraft_bpf::loader::VerdictCounts>,
}

impl Shared {
    /// State for `workers` workers.
    pub fn new(workers: usize) -> io::Result<Shared> {
        Ok(Shared {
            counters: (0..workers).map(|_| SharedCounters::default()).collect(),
            wakers: (0..workers)
                .map(|_| EventFd::new())
                .collect::<io::Result<_>>()?,
            stop: AtomicBool::new(false),
            running: AtomicUsize::new(workers),
            control_stats: (0..MAX_STATS).map(|_| AtomicU64::new(0)).collect(),
            control_stats_len: AtomicUsize::new(0),
            streams: (0..workers).map(|_| Mutex::new(Vec::new())).collect(),
            io: Mutex::new(IoReport::default()),
            deny: DenyList::new(&[]),
            blacklist_requests: Mutex::new(Vec::new()),
        })
    }

    /// The control plane's latest counters.
    pub fn control_stats(&self) -> Vec<u64> {
        let n = self
            .control_stats_len
            .load(Ordering::Relaxed)
            .min(MAX_STATS);
        self.control_stats[..n]
            .iter()
            .map(|v| v.load(Ordering::Relaxed))
            .collect()
    }

    /// Every worker's latest stream reports.
    pub fn stream_reports(&self) -> Vec<StreamReport> {
        self.streams
            .iter()
            .flat_map(|m| m.lock().map(|v| v.clone()).unwrap_or_default())
            .collect()
    }

    /// The packet I/O in use.
    pub fn io_report(&self) -> IoReport {
        self.io.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Asks every worker to shut down.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wakers.iter().for_each(EventFd::wake);
    }
}

/// The queues between workers: each worker's receiver and every worker's sender.
pub fn handoff_queues(workers: usize) -> (Vec<Receiver<Handoff>>, Vec<Sender<Handoff>>) {
    let (tx, rx): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| crossbeam_channel::bounded(HANDOFF_QUEUE))
        .unzip();
    (rx, tx)
}

/// Receives a copy of every plain packet when dumping (`--dump`): session ID, peer address,
/// whether it was sent (else received), and the decrypted packet.
pub type DumpHook = fn(u32, SocketAddr, bool, &[u8]);

/// How a worker is set up.
pub struct WorkerSetup<IO: BatchIo> {
    /// This worker's index (the owner byte of its session IDs).
    pub index: u8,
    /// The packet backend.
    pub io: IO,
    /// Datagrams other workers hand to this one.
    pub handoff_in: Receiver<Handoff>,
    /// Every worker's handoff queue, by index.
    pub handoff_out: Vec<Sender<Handoff>>,
    /// New control-plane links (the first, and one after each control restart).
    pub links: Receiver<Socket>,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Session settings.
    pub session_config: SessionConfig,
    /// Seed for mobility secrets.
    pub seed: [u8; 32],
    /// A clock epoch shared by all workers.
    pub epoch: std::time::Instant,
    /// Where to dump packets, if anywhere.
    pub dump: Option<DumpHook>,
    /// Media other workers forward to this one.
    pub media_in: Receiver<MediaItem>,
    /// Every worker's media queue, by index.
    pub media_out: Vec<Sender<MediaItem>>,
    /// Lifetimes of the media sent to subscribers.
    pub lifetimes: MediaLifetimes,
}

/// One session and the flow bookkeeping the NetConnection layer needs.
///
/// Laid out in declaration order (`repr(C)`): what the worker reads for every datagram and
/// every media message comes first, right before the session's own hot fields (see
/// [`Session`]), so that a fanout reads adjacent cache lines of each subscriber, and
/// [`Worker::prefetch_session`] names them as one span.
#[repr(C)]
struct Entry {
    id: u32,
    dirty: bool,
    armed: Option<Instant>,
    /// Close once everything sent has been acknowledged, or at this deadline.
    close_when_flushed: Option<Instant>,
    /// Our reply flow for each of the client's flows.
    replies: Vec<(FlowId, FlowId)>,
    /// The NetStream ID of each of the client's TC flows (0: the NetConnection).
    streams: Vec<(FlowId, u64)>,
    /// The client's first NetConnection control flow.
    control: Option<FlowId>,
    /// The client's NetGroup (`GC`) flows (digest §1.14), and the group each joined with the
    /// worker's join number (kept for a restarted control plane, which gets them in order).
    groups: Vec<(FlowId, Option<Joined>)>,
    /// The applications' flow writers (`writer:newFlowWriter()`): their number and our flow.
    writers: Vec<(u32, FlowId)>,
    session: Session,
    peer_id: [u8; 32],
    /// NetConnection state kept for a restarted control plane.
    net_state: Option<NetState>,
}

/// The group a NetGroup flow joined, and the worker's number for that join.
type Joined = ([u8; 32], u64);

impl Entry {
    /// Our reply flow for the client's `flow`, if one was opened.
    fn reply_of(&self, flow: FlowId) -> Option<FlowId> {
        self.replies.iter().find(|r| r.0 == flow).map(|r| r.1)
    }

    /// Our flow for the applications' writer `writer`, opened now if it is new: a NetConnection
    /// flow (`TC`, stream 0) answering the client's control flow, like our NetConnection
    /// replies (RFC 7425 §5.1.1). `None` before the client's NetConnection, or past
    /// [`MAX_WRITERS_PER_SESSION`].
    fn writer_flow(&mut self, writer: u32) -> Option<FlowId> {
        if let Some(&(_, f)) = self.writers.iter().find(|w| w.0 == writer) {
            return Some(f);
        }
        if self.writers.len() >= MAX_WRITERS_PER_SESSION {
            return None;
        }
        let metadata = FlowMetadata::Tc {
            stream_id: 0,
            receive_intent: ReceiveIntent::Sequence,
        };
        let f = self
            .session
            .open_flow(&metadata.to_vec(), Some(self.control?))
            .ok()?;
        self.writers.push((writer, f));
        Some(f)
    }

    /// Our reply flow for the client's `flow`, opened on first use: same metadata (RFC 7425
    /// §5.1), associated with the client's NetConnection flow (RFC 7016 §2.3.11.1.2), since
    /// rtmfp-cpp clients accept only flows associated with their control flow.
    fn reply_flow(&mut self, flow: FlowId) -> Option<FlowId> {
        if let Some(r) = self.reply_of(flow) {
            return Some(r);
        }
        let stream_id = self.streams.iter().find(|s| s.0 == flow).map_or(0, |s| s.1);
        // A NetGroup flow's answers go on a `GC` flow associated with it (as Cumulus does).
        let group = self.groups.iter().any(|g| g.0 == flow);
        let associated = self
            .control
            .filter(|_| stream_id != 0 && !group)
            .unwrap_or(flow);
        let metadata = if group {
            FlowMetadata::Gc
        } else {
            FlowMetadata::Tc {
                stream_id,
                receive_intent: ReceiveIntent::Sequence,
            }
        };
        let f = self
            .session
            .open_flow(&metadata.to_vec(), Some(associated))
            .ok()?;
        self.replies.push((flow, f));
        Some(f)
    }
}

/// A lookahead stage ([`Lookahead`]), naming the worker's part of it too.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// The entry's and session's fields.
    Fields,
    /// What they point to: the reply flows, the send flow table, the key.
    Heap,
    /// The send flow slots: the subscriber's reply flow, or every send flow.
    Flows,
}

/// Why a session that closed for `reason` failed: a timeout is a failure (Cumulus's
/// `onFailed`), a close by either side is not.
fn failure_of(reason: CloseReason) -> Option<Failure> {
    match reason {
        CloseReason::Idle => Some(Failure::Idle),
        CloseReason::RetransmitLimit => Some(Failure::Unacknowledged),
        CloseReason::Local
        | CloseReason::Remote
        | CloseReason::Aborted
        | CloseReason::LocalAbort => None,
    }
}

/// When the datagrams of a message queued for a subscriber are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// At once, while the subscriber's state is still in cache: nothing else for it follows.
    Now,
    /// At the session's next service: more messages follow, which may share its datagrams.
    Later,
}

/// A subscriber of a stream on this worker.
#[derive(Debug)]
struct Subscriber {
    session_id: u32,
    /// The client's NetStream flow that asked to play (our reply flow carries the media).
    flow: FlowId,
    /// The stream timestamp that is 0 for this subscriber.
    base: Option<u32>,
    /// Video waits for the next key frame (joined without one cached, or fell behind).
    waiting_keyframe: bool,
    delivered: u64,
    dropped: u64,
    /// Media messages dropped because it was behind (congestion).
    behind: u64,
    /// Media bytes queued to it.
    bytes: u64,
    /// The counters above at the last stream report.
    reported: SubscriberMarks,
    /// `receiveAudio` / `receiveVideo`.
    audio: bool,
    video: bool,
}

/// A stream as one worker sees it.
#[derive(Debug, Default)]
struct StreamState {
    cache: StreamCache,
    subscribers: Vec<Subscriber>,
    /// Workers to forward to (when published here).
    routes: Vec<u8>,
    /// Routes that lost messages to a full queue and owe their worker a gap mark.
    gapped: Vec<u8>,
    published: bool,
    /// Published by the server itself (an application's `cumulus:publish`), not a session.
    by_server: bool,
    /// The kinds of the publisher's messages its application watches (sent up as they come).
    events: MediaEvents,
    /// Application path and name, reported to a restarted control plane.
    key: String,
    messages: u64,
    bytes: u64,
    /// Messages that could not be forwarded to another worker (its queue was full).
    forward_drops: u64,
    /// Forward attempts (one per message and route).
    forwards: u64,
    /// `bytes`, `forwards`, `forward_drops` and the publisher's receive-flow statistics at the
    /// last report.
    reported: PublicationMarks,
}

/// Counters of a subscriber at the last stream report, to turn totals into rates.
#[derive(Debug, Default, Clone, Copy)]
struct SubscriberMarks {
    delivered: u64,
    dropped: u64,
    behind: u64,
    bytes: u64,
    send: SendStats,
}

/// Counters of a publication at the last stream report, to turn totals into rates.
#[derive(Debug, Default, Clone, Copy)]
struct PublicationMarks {
    bytes: u64,
    forwards: u64,
    forward_drops: u64,
    recv: RecvStats,
}

impl StreamState {
    /// A publication of `key` starts here, by a session or (`by_server`) by the server itself:
    /// nothing of an earlier one is kept.
    fn start(&mut self, key: String, by_server: bool) {
        self.published = true;
        self.by_server = by_server;
        self.key = key;
        self.cache.clear();
        self.restart_clock();
    }

    /// A new publisher (or none): its clock has nothing to do with the last one, so every
    /// subscriber restarts at 0 from its next key frame.
    fn restart_clock(&mut self) {
        for sub in self.subscribers.iter_mut() {
            sub.base = None;
            sub.waiting_keyframe = true;
        }
    }
}

/// Half a round-trip time in whole milliseconds: Cumulus's `latency`.
fn half_ms(rtt: Duration) -> u64 {
    u64::try_from(rtt.as_millis() / 2).unwrap_or(u64::MAX)
}

/// Queues `item` for worker `to` and marks it to be woken at the end of the turn; answers
/// whether the queue took it.
fn forward(
    media_out: &[Sender<MediaItem>],
    wake_pending: &mut [bool],
    to: u8,
    item: MediaItem,
) -> bool {
    let sent = media_out
        .get(usize::from(to))
        .is_some_and(|q| q.try_send(item).is_ok());
    if sent {
        wake_pending[usize::from(to)] = true;
    }
    sent
}

/// Default lifetime of audio messages: later, they are abandoned rather than sent (RFC 7016
/// §3.6.2.3).
pub const DEFAULT_AUDIO_LIFETIME: Duration = Duration::from_secs(2);
/// Default lifetime of video messages.
pub const DEFAULT_VIDEO_LIFETIME: Duration = Duration::from_secs(3);

/// How long a subscriber's audio and video messages may wait (queued, or unacknowledged and
/// retransmitted) before they are abandoned: partial reliability (RFC 7016 §3.6.2.3). Headers
/// and data messages never expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaLifetimes {
    /// Audio frames.
    pub audio: Duration,
    /// Video frames.
    pub video: Duration,
}

impl Default for MediaLifetimes {
    fn default() -> Self {
        MediaLifetimes {
            audio: DEFAULT_AUDIO_LIFETIME,
            video: DEFAULT_VIDEO_LIFETIME,
        }
    }
}
/// A subscriber with more than this many bytes not yet acknowledged is behind: its video is
/// dropped up to the next key frame (whole frames, never part of a group of pictures) and its
/// audio until it catches up. A slow subscriber never slows the others.
pub const MAX_SUBSCRIBER_BACKLOG: usize = 256 * 1024;
/// Most NetGroup (`GC`) flows one session may have open; more are rejected.
const MAX_GROUP_FLOWS: usize = 16;
/// A one-byte media item that tells a worker messages of the stream were lost on the way
/// (no TC message is one byte long).
const GAP_MARK: [u8; 1] = [0];
/// Most bytes waiting for room on the control link.
pub const MAX_OUTBOX_BYTES: usize = 64 << 20;
/// Most messages waiting for room on the control link; more are dropped and counted.
pub const MAX_OUTBOX: usize = 65_536;
/// Longest a worker sleeps while its outbox waits for room on the control link.
const OUTBOX_RETRY: Duration = Duration::from_millis(1);
/// How often a worker publishes its stream reports.
pub const REPORT_PERIOD: Duration = Duration::from_secs(1);
/// Media items taken from other workers per loop turn.
const MEDIA_ITEMS_PER_TURN: usize = 4096;
/// The lookahead stages run ahead of a visit to one session after another, each this many
/// sessions ahead (rtmfp's `session::lookahead`): each stage reads what the one before asked
/// for, a visit earlier, and one visit (a subscriber's message, a datagram) outlasts a miss.
const LOOKAHEAD: [(usize, Stage); 3] = [(3, Stage::Fields), (2, Stage::Heap), (1, Stage::Flows)];
/// Sessions a turn visits for the timing report (Cumulus's `client.ping`): a pass over a
/// worker's sessions is spread over turns.
const TIMINGS_PER_TURN: usize = 1024;
/// Most flow writers the applications may open on one session (`writer:newFlowWriter()`);
/// messages for more are dropped.
pub const MAX_WRITERS_PER_SESSION: usize = 16;
/// Capacity of each worker's queue of media from other workers.
pub const MEDIA_QUEUE: usize = 8192;

/// The media queues between workers: each worker's receiver and every worker's sender.
pub fn media_queues(workers: usize) -> (Vec<Receiver<MediaItem>>, Vec<Sender<MediaItem>>) {
    let (tx, rx): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| crossbeam_channel::bounded(MEDIA_QUEUE))
        .unzip();
    (rx, tx)
}

/// A running worker.
pub struct Worker<IO: BatchIo> {
    index: u8,
    io: IO,
    rx: Option<Box<RxBatch>>,
    tx: TxBatch,
    /// Datagrams of `tx` left for [`Worker::seal`]: their index and their session's key.
    unsealed: Vec<(usize, Arc<Aes128EncKey>)>,
    table: Vec<Option<Box<Entry>>>,
    wheel: TimerWheel,
    dirty: Vec<u16>,
    link: Option<Socket>,
    links: Receiver<Socket>,
    handoff_in: Receiver<Handoff>,
    handoff_out: Vec<Sender<Handoff>>,
    /// This worker's copy of the blacklist, refreshed once per turn.
    deny: DenyView,
    shared: Arc<Shared>,
    session_config: SessionConfig,
    lifetimes: MediaLifetimes,
    rng: ChaCha20Rng,
    epoch: std::time::Instant,
    counters: WorkerCounters,
    up_buf: Vec<u8>,
    down_buf: Vec<u8>,
    fired: Vec<(Instant, u32)>,
    events: Vec<Event>,
    dump: Option<DumpHook>,
    media_in: Receiver<MediaItem>,
    media_out: Vec<Sender<MediaItem>>,
    /// Workers to wake at the end of this turn (media was queued for them).
    wake_pending: Vec<bool>,
    streams: HashMap<u32, StreamState>,
    /// The stream each publishing (session, client flow) feeds.
    publishing: HashMap<(u32, u64), u32>,
    /// The same by (session, NetStream ID): what media on any flow of that NetStream feeds.
    publishing_ns: HashMap<(u32, u64), u32>,
    /// Last flow-synchronisation ID sent.
    sync_id: u32,
    last_report: std::time::Instant,
    /// The next table slot of the sessions' timing report under way (see
    /// [`Worker::report_timings`]), and the entries gathered so far.
    timings_cursor: Option<usize>,
    timings: Vec<SessionTiming>,
    /// Messages for the control plane waiting for room on the link.
    outbox: VecDeque<Vec<u8>>,
    /// Bytes in `outbox`.
    outbox_bytes: usize,
    /// NetGroup joins taken so far (numbers them).
    group_joins: u64,
}

impl<IO: BatchIo> Worker<IO> {
    /// A worker from its setup.
    pub fn new(setup: WorkerSetup<IO>) -> Worker<IO> {
        Worker {
            index: setup.index,
            io: setup.io,
            rx: Some(Box::default()),
            tx: TxBatch::default(),
            unsealed: Vec::with_capacity(BATCH),
            table: Vec::new(),
            wheel: TimerWheel::new(),
            dirty: Vec::new(),
            link: None,
            links: setup.links,
            handoff_in: setup.handoff_in,
            handoff_out: setup.handoff_out,
            deny: DenyView::of(&setup.shared.deny),
            shared: setup.shared,
            session_config: setup.session_config,
            lifetimes: setup.lifetimes,
            rng: ChaCha20Rng::from_seed(setup.seed),
            epoch: setup.epoch,
            counters: WorkerCounters::default(),
            up_buf: Vec::with_capacity(MAX_MESSAGE),
            down_buf: vec![0; MAX_MESSAGE + 1],
            fired: Vec::new(),
            events: Vec::new(),
            dump: setup.dump,
            wake_pending: vec![false; setup.media_out.len()],
            media_in: setup.media_in,
            media_out: setup.media_out,
            streams: HashMap::new(),
            publishing: HashMap::new(),
            publishing_ns: HashMap::new(),
            sync_id: 0,
            last_report: std::time::Instant::now(),
            timings_cursor: None,
            timings: Vec::new(),
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            group_joins: 0,
        }
    }

    fn now(&self) -> Instant {
        Instant::from_micros(u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// Runs until shut down: then closes every session (bounded by [`SHUTDOWN_GRACE`]).
    pub fn run(mut self) -> io::Result<()> {
        let mut stopping_since: Option<std::time::Instant> = None;
        let result = loop {
            if self.shared.stop.load(Ordering::Relaxed) && stopping_since.is_none() {
                stopping_since = Some(std::time::Instant::now());
                self.close_all();
            }
            if let Some(since) = stopping_since {
                if self.counters.sessions_open == 0 || since.elapsed() >= SHUTDOWN_GRACE {
                    break Ok(());
                }
            }
            if let Err(e) = self.turn() {
                break Err(e);
            }
        };
        self.shared.counters[usize::from(self.index)].publish(&self.counters);
        self.shared.running.fetch_sub(1, Ordering::Relaxed);
        result
    }

    /// One loop turn: wait, receive, control messages, timers, transmit.
    pub fn turn(&mut self) -> io::Result<()> {
        let now = self.now();
        let mut wait = self
            .wheel
            .next_deadline(now, WAIT_HORIZON_TICKS)
            .map_or(MAX_WAIT, |t| t.saturating_duration_since(now).min(MAX_WAIT));
        if !self.flush_outbox() {
            wait = wait.min(OUTBOX_RETRY);
        }
        let waker = &self.shared.wakers[usize::from(self.index)];
        let link_fd = self.link.as_ref().map_or(-1, |l| l.as_raw_fd());
        let mut ready = [false; 3];
        if self.tx.is_empty() && self.dirty.is_empty() {
            poll_readable(
                &[self.io.readiness_fd(), waker.as_raw_fd(), link_fd],
                wait,
                &mut ready,
            )?;
        }
        waker.clear();
        self.deny.refresh(&self.shared.deny);
        while let Ok(link) = self.links.try_recv() {
            self.attach(link);
        }
        while let Ok(h) = self.handoff_in.try_recv() {
            self.counters.handoff_in += 1;
            let mut data = h.data;
            let now = self.now();
            self.on_datagram(now, h.from, false, &mut data[..h.len]);
        }
        for i in 1..=MEDIA_ITEMS_PER_TURN {
            let Ok(item) = self.media_in.try_recv() else {
                break;
            };
            self.counters.media_in += 1;
            let now = self.now();
            let flush = if i < MEDIA_ITEMS_PER_TURN && !self.media_in.is_empty() {
                Flush::Later
            } else {
                Flush::Now
            };
            self.on_media(now, item.stream, item.message, false, flush);
        }
        for _ in 0..RX_BATCHES_PER_TURN {
            // Moved out while its datagrams are handled (a pointer move: building a new batch
            // would allocate and zero 128 KiB).
            let Some(mut rx) = self.rx.take() else {
                break;
            };
            let n = self.io.recv(&mut rx);
            let n = match n {
                Ok(n) if n > 0 => n,
                other => {
                    self.rx = Some(rx);
                    other?;
                    break;
                }
            };
            let now = self.now();
            for i in 0..n {
                self.look_ahead(i, Visit::Receive, |j| {
                    let id = read_session_id(rx.get(j)?).ok()?;
                    let parts = SessionIdParts::of(id);
                    (id != 0 && parts.worker == self.index).then_some((parts.slot, None))
                });
                if let Some((from, truncated, bytes)) = rx.get_mut(i) {
                    self.counters.rx_packets += 1;
                    self.counters.rx_bytes += bytes.len() as u64;
                    if self.deny.denies(from.ip()) {
                        self.counters.drop_denied += 1;
                        continue;
                    }
                    self.on_datagram(now, from, truncated, bytes);
                }
            }
            self.rx = Some(rx);
            self.service_dirty(now);
            if n < crate::io::BATCH {
                break;
            }
        }
        self.read_control();
        let now = self.now();
        self.expire_timers(now);
        self.service_dirty(now);
        self.flush();
        if self.last_report.elapsed() >= REPORT_PERIOD {
            self.report_streams();
            // A new pass over the sessions' timings, unless one is still under way.
            self.timings_cursor.get_or_insert(0);
        }
        self.report_timings(now);
        self.counters.publications = self.streams.values().filter(|s| s.published).count() as u64;
        self.counters.subscribers = self
            .streams
            .values()
            .map(|s| s.subscribers.len() as u64)
            .sum();
        for (w, pending) in self.wake_pending.iter_mut().enumerate() {
            if std::mem::take(pending) {
                self.shared.wakers[w].wake();
            }
        }
        self.io.report(&mut self.counters);
        self.shared.counters[usize::from(self.index)].publish(&self.counters);
        Ok(())
    }

    fn attach(&mut self, link: Socket) {
        if let Err(e) = link.set_nonblocking(true) {
            tracing::warn!(worker = self.index, error = %e, "control link unusable");
            return;
        }
        self.link = Some(link);
        // What waited for the old control plane is moot: the new one gets a resync.
        self.outbox.clear();
        self.outbox_bytes = 0;
        self.end_server_streams();
        // The new control process's applications say what they watch on new publications.
        for state in self.streams.values_mut() {
            state.events = MediaEvents::NONE;
        }
        self.counters.control_links += 1;
        let workers = u8::try_from(self.shared.wakers.len()).unwrap_or(u8::MAX);
        self.send_up(&Up::Hello {
            version: u16::from(IPC_VERSION),
            worker: self.index,
            workers,
            pid: std::process::id(),
        });
        // Tell the (possibly new) control plane which sessions live here.
        let live: Vec<SessionInfo> = self
            .table
            .iter()
            .flatten()
            .map(|e| SessionInfo {
                session_id: e.id,
                peer_id: e.peer_id,
                address: e.session.far_address(),
            })
            .collect();
        for chunk in live.chunks(MAX_RESYNC_SESSIONS) {
            self.send_up(&Up::Resync {
                sessions: chunk.to_vec(),
            });
        }
        if live.is_empty() {
            self.send_up(&Up::Resync {
                sessions: Vec::new(),
            });
        }
        // And which streams it publishes and plays, so that the directory survives.
        let mut entries: Vec<StreamEntry> = self
            .publishing
            .iter()
            .map(|(&(session_id, flow), &stream)| StreamEntry {
                session_id,
                flow,
                stream,
                key: self
                    .streams
                    .get(&stream)
                    .map(|s| s.key.clone())
                    .unwrap_or_default(),
                publisher: true,
            })
            .collect();
        for (&stream, state) in &self.streams {
            entries.extend(state.subscribers.iter().map(|sub| StreamEntry {
                session_id: sub.session_id,
                flow: sub.flow.0,
                stream,
                key: state.key.clone(),
                publisher: false,
            }));
        }
        for chunk in entries.chunks(MAX_RESYNC_STREAMS) {
            self.send_up(&Up::Streams {
                entries: chunk.to_vec(),
            });
        }
        // And what the previous control plane knew of each NetConnection.
        let states: Vec<NetState> = self
            .table
            .iter()
            .flatten()
            .filter_map(|e| e.net_state.clone())
            .collect();
        for chunk in states.chunks(MAX_RESYNC_NET_STATES) {
            self.send_up(&Up::NetStates {
                entries: chunk.to_vec(),
            });
        }
        // And the NetGroups its sessions joined, in the order they joined on this worker.
        let mut joins: Vec<(u64, Up)> = self
            .table
            .iter()
            .flatten()
            .flat_map(|e| {
                e.groups.iter().filter_map(|&(flow, group)| {
                    group.map(|(group_id, n)| {
                        (
                            n,
                            Up::GroupJoin {
                                session_id: e.id,
                                flow: flow.0,
                                group_id,
                                restored: true,
                            },
                        )
                    })
                })
            })
            .collect();
        joins.sort_by_key(|j| j.0);
        for (_, join) in &joins {
            self.send_up(join);
        }
        tracing::info!(
            worker = self.index,
            sessions = live.len(),
            "control link up"
        );
    }

    /// Sends a message to the control plane, in order. When the link is full the message
    /// waits in a bounded outbox, flushed every turn; nothing is dropped unless the outbox
    /// overflows or the link is down.
    fn send_up(&mut self, msg: &Up) -> bool {
        if self.link.is_none() {
            self.counters.control_up_dropped += 1;
            return false;
        }
        self.up_buf.clear();
        if msg.encode(&mut self.up_buf).is_err() {
            self.counters.control_up_dropped += 1;
            return false;
        }
        if self.flush_outbox() {
            match self.try_send_up() {
                Ok(true) => return true,
                Ok(false) => {}
                Err(()) => return false,
            }
        }
        // A full outbox drops what a client can retry, never a `Closed`: a lost one would
        // leave the session's ID and published names taken in the control plane.
        let full = self.outbox.len() >= MAX_OUTBOX
            || self.outbox_bytes + self.up_buf.len() > MAX_OUTBOX_BYTES;
        if full && !matches!(msg, Up::Closed { .. }) {
            self.counters.control_up_dropped += 1;
            return false;
        }
        self.outbox_bytes += self.up_buf.len();
        self.outbox.push_back(self.up_buf.clone());
        true
    }

    /// Sends `up_buf`: `Ok(false)` when the link is full, `Err` when it is lost.
    fn try_send_up(&mut self) -> Result<bool, ()> {
        let Some(link) = &self.link else {
            return Err(());
        };
        match link.send_with_flags(&self.up_buf, libc::MSG_NOSIGNAL) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => {
                tracing::warn!(worker = self.index, error = %e, "control link lost");
                self.link = None;
                self.counters.control_up_dropped += 1 + self.outbox.len() as u64;
                self.outbox.clear();
                self.outbox_bytes = 0;
                Err(())
            }
        }
    }

    /// Sends what waits in the outbox; answers whether it is empty now.
    fn flush_outbox(&mut self) -> bool {
        while let Some(front) = self.outbox.front() {
            let Some(link) = &self.link else {
                self.counters.control_up_dropped += self.outbox.len() as u64;
                self.outbox.clear();
                self.outbox_bytes = 0;
                return true;
            };
            match link.send_with_flags(front, libc::MSG_NOSIGNAL) {
                Ok(_) => {
                    self.outbox_bytes -= front.len();
                    self.outbox.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    tracing::warn!(worker = self.index, error = %e, "control link lost");
                    self.link = None;
                    self.counters.control_up_dropped += self.outbox.len() as u64;
                    self.outbox.clear();
                    self.outbox_bytes = 0;
                    return true;
                }
            }
        }
        true
    }

    fn read_control(&mut self) {
        for _ in 0..CONTROL_MESSAGES_PER_TURN {
            let Some(link) = &self.link else { return };
            let mut reader = link;
            match reader.read(&mut self.down_buf) {
                Ok(0) => {
                    tracing::warn!(worker = self.index, "control link closed");
                    self.link = None;
                    return;
                }
                Ok(n) => {
                    let buf = std::mem::take(&mut self.down_buf);
                    match Down::decode(&buf[..n]) {
                        Ok(msg) => self.on_down(msg),
                        Err(e) => {
                            self.counters.control_down_malformed += 1;
                            tracing::debug!(worker = self.index, error = %e, "bad control message");
                        }
                    }
                    self.down_buf = buf;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(worker = self.index, error = %e, "control link lost");
                    self.link = None;
                    return;
                }
            }
        }
    }

    fn on_down(&mut self, msg: Down) {
        let now = self.now();
        match msg {
            Down::Welcome { .. } => {}
            Down::NetState(state) => {
                if let Some(slot) = self.slot_of(state.session_id) {
                    if let Some(e) = self.entry_mut(slot) {
                        e.net_state = Some(state);
                    }
                }
            }
            Down::Publish {
                session_id,
                flow,
                stream,
                key,
            } => {
                if let Some(slot) = self.slot_of(session_id) {
                    // A NetStream's audio, video and data may come on flows of their own
                    // (rtmfp-cpp's tcpublish opens one per track): media is recognised by
                    // the NetStream ID in each flow's metadata.
                    let ns = self.table[usize::from(slot)]
                        .as_ref()
                        .and_then(|e| e.streams.iter().find(|s| s.0 == FlowId(flow)))
                        .map_or(0, |s| s.1);
                    if ns != 0 {
                        self.publishing_ns.insert((session_id, ns), stream);
                    }
                    // A new publish on the same NetStream replaces the previous one.
                    if let Some(old) = self.publishing.insert((session_id, flow), stream) {
                        if old != stream {
                            self.unpublish(old);
                        }
                    }
                    self.streams.entry(stream).or_default().start(key, false);
                }
            }
            Down::ServerPublish { stream, key } => {
                self.streams.entry(stream).or_default().start(key, true);
            }
            // It follows its stream's Publish; a stream gone meanwhile is not made again.
            Down::Watch { stream, events } => {
                if let Some(state) = self.streams.get_mut(&stream) {
                    state.events = events;
                }
            }
            Down::Media { stream, message } => {
                let published = self.streams.get(&stream).is_some_and(|s| s.published);
                match published.then(|| prepare(message)).flatten() {
                    Some(message) => {
                        self.counters.media_pushed += 1;
                        self.on_media(now, stream, message, true, Flush::Now);
                    }
                    None => self.counters.drop_media_pushed += 1,
                }
            }
            Down::Unpublish { stream } => self.unpublish(stream),
            Down::Route {
                stream,
                worker,
                add,
            } => {
                let state = self.streams.entry(stream).or_default();
                let known = state.routes.contains(&worker);
                state.routes.retain(|&w| w != worker);
                if add && worker != self.index {
                    state.routes.push(worker);
                    if !known {
                        // A new audience worker starts from this cache, like a late joiner.
                        for message in state.cache.replay() {
                            let item = MediaItem {
                                stream,
                                message: Arc::clone(message),
                            };
                            if forward(&self.media_out, &mut self.wake_pending, worker, item) {
                                self.counters.media_out += 1;
                            } else {
                                self.counters.drop_media_queue_full += 1;
                            }
                        }
                    }
                }
            }
            Down::Play {
                session_id,
                flow,
                stream,
                unbuffered,
                key,
            } => {
                // Only for a live session on one of its NetStream flows: a Play that crossed
                // the session's close must not leave a subscriber behind for the next owner
                // of the session ID.
                let valid = self.slot_of(session_id).is_some_and(|slot| {
                    self.table[usize::from(slot)]
                        .as_ref()
                        .is_some_and(|e| e.streams.iter().any(|s| s.0 == FlowId(flow) && s.1 != 0))
                });
                if valid {
                    self.stop_flow(session_id, FlowId(flow));
                    self.streams.entry(stream).or_default().key = key;
                    self.play(now, session_id, FlowId(flow), stream, unbuffered)
                }
            }
            Down::Receive {
                session_id,
                flow,
                video,
                enabled,
            } => {
                for state in self.streams.values_mut() {
                    for sub in state.subscribers.iter_mut() {
                        if sub.session_id == session_id && sub.flow == FlowId(flow) {
                            if video {
                                sub.video = enabled;
                            } else {
                                sub.audio = enabled;
                            }
                        }
                    }
                }
            }
            Down::StopPlay { session_id, flow } => self.stop_flow(session_id, FlowId(flow)),
            Down::Blacklist { add, prefix } => match prefix.parse::<Prefix>() {
                Ok(p) => {
                    if let Ok(mut requests) = self.shared.blacklist_requests.lock() {
                        if requests.len() < MAX_BLACKLIST_REQUESTS {
                            requests.push((add, p));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(entry = %prefix, error = %e, "blacklist: not an address or prefix")
                }
            },
            Down::Stats { values } => {
                let n = values.len().min(MAX_STATS);
                for (slot, v) in self.shared.control_stats.iter().zip(&values[..n]) {
                    slot.store(*v, Ordering::Relaxed);
                }
                self.shared.control_stats_len.store(n, Ordering::Relaxed);
            }
            Down::Transmit { to, datagram } => {
                if self.tx.is_full() {
                    self.flush();
                }
                if !self.tx.push(to, &datagram) {
                    self.counters.tx_dropped += 1;
                }
            }
            Down::Install {
                session_id,
                far_session_id,
                address,
                peer_id,
                secrets,
            } => self.install(now, session_id, far_session_id, address, peer_id, &secrets),
            Down::Reply {
                session_id,
                flow,
                messages,
            } => self.reply(now, session_id, Some(FlowId(flow)), &messages),
            Down::Call {
                session_id,
                messages,
            } => self.reply(now, session_id, None, &messages),
            Down::Writer {
                session_id,
                writer,
                messages,
            } => {
                let Some(slot) = self.slot_of(session_id) else {
                    return;
                };
                if let Some(e) = self.entry_mut(slot) {
                    let Some(flow) = e.writer_flow(writer) else {
                        self.counters.drop_writer += 1;
                        return;
                    };
                    for m in &messages {
                        let _ = e.session.send(now, flow, m, SendOptions::default());
                    }
                    self.mark_dirty(slot);
                }
            }
            Down::CloseWriter { session_id, writer } => {
                let Some(slot) = self.slot_of(session_id) else {
                    return;
                };
                if let Some(e) = self.entry_mut(slot) {
                    if let Some(i) = e.writers.iter().position(|w| w.0 == writer) {
                        let (_, flow) = e.writers.swap_remove(i);
                        let _ = e.session.close_flow(flow);
                        self.mark_dirty(slot);
                    }
                }
            }
            Down::Close { session_id } => {
                // Closing aborts the flows (RFC 7016 §3.5.5): first let the last replies (an
                // `_error` for a refused connect) be delivered.
                if let Some(slot) = self.slot_of(session_id) {
                    if let Some(e) = self.entry_mut(slot) {
                        e.close_when_flushed = Some(now + CLOSE_FLUSH_LIMIT);
                    }
                    self.mark_dirty(slot);
                }
            }
            Down::Kill { session_id } => {
                if let Some(slot) = self.slot_of(session_id) {
                    if let Some(e) = self.entry_mut(slot) {
                        e.session.abort();
                    }
                    self.mark_dirty(slot);
                }
            }
            Down::GroupMembers {
                session_id,
                flow,
                peers,
            } => {
                // Only on a NetGroup flow that is still open: one that ended gets nothing (a
                // reply flow for it would never be closed).
                let live = self
                    .slot_of(session_id)
                    .and_then(|slot| self.entry_mut(slot))
                    .is_some_and(|e| e.groups.iter().any(|g| g.0 == FlowId(flow)));
                if !live {
                    return;
                }
                let messages: Vec<Vec<u8>> = peers
                    .iter()
                    .map(|p| {
                        let mut m = Vec::with_capacity(1 + p.len());
                        emit_member(&PeerId(*p), &mut m);
                        m
                    })
                    .collect();
                self.reply(now, session_id, Some(FlowId(flow)), &messages);
            }
            Down::ForwardIHello {
                session_id,
                epd,
                reply_to,
                reply_public,
                tag,
            } => {
                // P2P rendezvous (RFC 7016 §3.5.1.5): the client answers the initiator there.
                let origin = if reply_public {
                    AddressOrigin::Observed
                } else {
                    AddressOrigin::Local
                };
                if let Some(slot) = self.slot_of(session_id) {
                    if let Some(e) = self.entry_mut(slot) {
                        e.session
                            .forward_ihello(&epd, Address::new(reply_to, origin), &tag);
                    }
                    self.mark_dirty(slot);
                }
            }
        }
    }

    fn install(
        &mut self,
        now: Instant,
        id: u32,
        far_session_id: u32,
        address: SocketAddr,
        peer_id: [u8; 32],
        secrets: &updraft_control::ipc::SessionSecrets,
    ) {
        let parts = SessionIdParts::of(id);
        if parts.worker != self.index {
            tracing::warn!(
                worker = self.index,
                session = id,
                "install for another worker"
            );
            return;
        }
        let slot = usize::from(parts.slot);
        if self.table.get(slot).is_some_and(Option::is_some) {
            tracing::warn!(
                worker = self.index,
                session = id,
                "install over a live slot refused"
            );
            return;
        }
        let (Ok(encoder), Ok(decoder)) = (
            secrets.keys.encoder(secrets.send),
            secrets.keys.decoder(secrets.receive),
        ) else {
            tracing::warn!(
                worker = self.index,
                session = id,
                "install with unusable keys"
            );
            return;
        };
        let mut mobility_secret = [0u8; 32];
        self.rng.fill_bytes(&mut mobility_secret);
        let mut session = Session::new(
            now,
            SessionParams {
                role: Role::Responder,
                near_session_id: id,
                far_session_id,
                far_address: address,
                encoder,
                decoder,
                mobility_secret,
            },
            self.session_config.clone(),
        );
        session.set_dump(self.dump.is_some());
        if self.table.len() <= slot {
            self.table.resize_with(slot + 1, || None);
        }
        self.table[slot] = Some(Box::new(Entry {
            id,
            session,
            peer_id,
            replies: Vec::new(),
            streams: Vec::new(),
            groups: Vec::new(),
            writers: Vec::new(),
            control: None,
            armed: None,
            dirty: false,
            close_when_flushed: None,
            net_state: None,
        }));
        self.counters.sessions_installed += 1;
        self.counters.sessions_open += 1;
        self.mark_dirty(parts.slot);
    }

    fn slot_of(&self, id: u32) -> Option<u16> {
        let p = SessionIdParts::of(id);
        let e = self.table.get(usize::from(p.slot))?.as_ref()?;
        (p.worker == self.index && e.id == id).then_some(p.slot)
    }

    fn entry_mut(&mut self, slot: u16) -> Option<&mut Entry> {
        self.table.get_mut(usize::from(slot))?.as_deref_mut()
    }

    fn mark_dirty(&mut self, slot: u16) {
        if let Some(e) = self.entry_mut(slot) {
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    /// Sends `messages` on our reply flow for the client's `flow` (or its NetConnection flow).
    fn reply(&mut self, now: Instant, id: u32, flow: Option<FlowId>, messages: &[Vec<u8>]) {
        let Some(slot) = self.slot_of(id) else { return };
        let Some(e) = self.entry_mut(slot) else {
            return;
        };
        let Some(flow) = flow.or(e.control) else {
            return;
        };
        let Some(reply_flow) = e.reply_flow(flow) else {
            return;
        };
        for m in messages {
            let _ = e.session.send(now, reply_flow, m, SendOptions::default());
        }
        self.mark_dirty(slot);
    }

    /// A message of stream `stream`, published here or received from the publisher's worker:
    /// cached for late joiners, sent to this worker's subscribers, and (when published here)
    /// handed to the workers on the stream's routes.
    fn on_media(
        &mut self,
        now: Instant,
        stream: u32,
        message: Arc<[u8]>,
        published_here: bool,
        flush: Flush,
    ) {
        // Items from the publisher's worker may arrive before this worker's Play: keep them.
        let state = self.streams.entry(stream).or_default();
        if message[..] == GAP_MARK[..] {
            // The publisher's worker lost messages for us: resume at the next key frame.
            for sub in state.subscribers.iter_mut() {
                sub.waiting_keyframe = true;
            }
            return;
        }
        if message.is_empty() {
            // The publisher left (see MediaItem): the next one starts a new clock.
            state.cache.clear();
            state.restart_clock();
            return;
        }
        state.cache.observe(&message);
        state.messages += 1;
        state.bytes += message.len() as u64;
        if published_here {
            for &w in &state.routes {
                if self.media_out.get(usize::from(w)).is_none() {
                    continue;
                }
                // After a loss, the other worker first learns of the gap, so that its viewers
                // wait for the next key frame instead of decoding a broken picture.
                if state.gapped.contains(&w) {
                    let gap = MediaItem {
                        stream,
                        message: Arc::from(&GAP_MARK[..]),
                    };
                    if !forward(&self.media_out, &mut self.wake_pending, w, gap) {
                        self.counters.drop_media_queue_full += 1;
                        state.forwards += 1;
                        state.forward_drops += 1;
                        continue;
                    }
                    state.gapped.retain(|&g| g != w);
                }
                let item = MediaItem {
                    stream,
                    message: Arc::clone(&message),
                };
                state.forwards += 1;
                if forward(&self.media_out, &mut self.wake_pending, w, item) {
                    self.counters.media_out += 1;
                } else {
                    self.counters.drop_media_queue_full += 1;
                    state.forward_drops += 1;
                    state.gapped.push(w);
                }
            }
        }
        let kind = classify(&message);
        let mut subscribers = std::mem::take(&mut state.subscribers);
        for i in 0..subscribers.len() {
            self.look_ahead(i, Visit::Send, |j| {
                let s = subscribers.get(j)?;
                Some((SessionIdParts::of(s.session_id).slot, Some(s.flow)))
            });
            if let Some(sub) = subscribers.get_mut(i) {
                self.deliver(now, sub, &message, kind, flush);
            }
        }
        if let Some(state) = self.streams.get_mut(&stream) {
            state.subscribers = subscribers;
        }
    }

    /// Asks for the memory of the sessions visited after the `i`th of a sequence, one
    /// [`LOOKAHEAD`] stage each: `target(j)` is the `j`th visit's session slot and, for a
    /// subscriber, the client's flow that it plays on (our reply flow then carries the media).
    /// The visits all send or all receive (`visit`).
    fn look_ahead(
        &self,
        i: usize,
        visit: Visit,
        target: impl Fn(usize) -> Option<(u16, Option<FlowId>)>,
    ) {
        for (ahead, stage) in LOOKAHEAD {
            if let Some((slot, flow)) = target(i + ahead) {
                self.prefetch_session(slot, stage, visit, flow);
            }
        }
    }

    /// Asks for what lookahead stage `stage` of the session in `slot` names, and the worker's
    /// own fields of it. Reads only the table and what earlier stages asked for.
    fn prefetch_session(&self, slot: u16, stage: Stage, visit: Visit, client_flow: Option<FlowId>) {
        let Some(Some(e)) = self.table.get(usize::from(slot)) else {
            return;
        };
        let span = &mut |start, len| prefetch(start, len);
        match stage {
            Stage::Fields => {
                span((&**e as *const Entry).cast(), offset_of!(Entry, session));
                e.session.lookahead(Lookahead::Fields(visit), span);
            }
            Stage::Heap => {
                span(e.replies.as_ptr().cast(), size_of_val(&e.replies[..]));
                e.session.lookahead(Lookahead::Heap(visit), span);
            }
            Stage::Flows => {
                let ours = client_flow.and_then(|f| e.reply_of(f));
                e.session.lookahead(Lookahead::Flows(ours), span);
            }
        }
    }

    /// Sends one media message to one subscriber, its timestamp rebased so that its play
    /// starts at 0, with the lifetime of its kind (partial reliability, RFC 7016 §3.6.2.3).
    fn deliver(
        &mut self,
        now: Instant,
        sub: &mut Subscriber,
        message: &Arc<[u8]>,
        kind: Option<MediaKind>,
        flush: Flush,
    ) {
        let Some(kind) = kind else { return };
        let Some(slot) = self.slot_of(sub.session_id) else {
            return;
        };
        let behind = self.entry_mut(slot).is_some_and(|e| {
            e.reply_of(sub.flow)
                .and_then(|r| e.session.flow_backlog(r))
                .is_some_and(|b| b > MAX_SUBSCRIBER_BACKLOG)
        });
        match kind {
            MediaKind::Audio { header: false } if behind || !sub.audio => {
                self.counters.media_dropped += 1;
                sub.dropped += 1;
                sub.behind += u64::from(behind);
                return;
            }
            MediaKind::Video { header: false, .. } if behind || !sub.video => {
                sub.waiting_keyframe = true;
                self.counters.media_dropped += 1;
                sub.dropped += 1;
                sub.behind += u64::from(behind);
                return;
            }
            _ => {}
        }
        if sub.waiting_keyframe {
            match kind {
                MediaKind::Video {
                    keyframe: true,
                    header: false,
                } => sub.waiting_keyframe = false,
                MediaKind::Video { header: false, .. } => {
                    self.counters.media_dropped += 1;
                    sub.dropped += 1;
                    return;
                }
                _ => {}
            }
        }
        let ts = timestamp(message);
        let header = matches!(
            kind,
            MediaKind::Metadata
                | MediaKind::Audio { header: true }
                | MediaKind::Video { header: true, .. }
        );
        let rebased = if header {
            0
        } else {
            // A message a little older than the base (audio interleaved before the key frame)
            // goes out at 0 rather than wrapping to 2^32 ms.
            let d = ts.wrapping_sub(*sub.base.get_or_insert(ts));
            if d > i32::MAX as u32 {
                0
            } else {
                d
            }
        };
        let expiry = match kind {
            MediaKind::Audio { header: false } => Some(now + self.lifetimes.audio),
            MediaKind::Video { header: false, .. } => Some(now + self.lifetimes.video),
            _ => None,
        };
        // The subscriber's own header (type and rebased timestamp) in front of the shared
        // message body: queued without copying the body.
        let mut head = [0u8; TC_HEADER_LEN];
        head[0] = message[0];
        head[1..].copy_from_slice(&rebased.to_be_bytes());
        let Some(payload) = Payload::new(
            &head,
            Arc::clone(message),
            TC_HEADER_LEN.min(message.len())..message.len(),
        ) else {
            return;
        };
        if let Some(e) = self.entry_mut(slot) {
            if let Some(f) = e.reply_flow(sub.flow) {
                if e.session
                    .send_payload(now, f, payload, SendOptions { expiry })
                    .is_ok()
                {
                    self.counters.media_delivered += 1;
                    sub.delivered += 1;
                    sub.bytes += message.len() as u64;
                } else {
                    self.counters.media_refused += 1;
                }
            }
        }
        match flush {
            Flush::Now => self.transmit_now(now, slot),
            Flush::Later => self.mark_dirty(slot),
        }
    }

    /// Whatever the client's NetStream `flow` of `session_id` played stops.
    fn stop_flow(&mut self, session_id: u32, flow: FlowId) {
        for state in self.streams.values_mut() {
            state
                .subscribers
                .retain(|s| !(s.session_id == session_id && s.flow == flow));
        }
    }

    fn play(&mut self, now: Instant, session_id: u32, flow: FlowId, stream: u32, unbuffered: bool) {
        let state = self.streams.entry(stream).or_default();
        state
            .subscribers
            .retain(|s| !(s.session_id == session_id && s.flow == flow));
        let replay: Vec<Arc<[u8]>> = if unbuffered {
            state.cache.headers().cloned().collect()
        } else {
            state.cache.replay().cloned().collect()
        };
        let buffered = !unbuffered && state.cache.has_keyframe();
        let mut sub = Subscriber {
            session_id,
            flow,
            base: if buffered {
                state.cache.start_timestamp()
            } else {
                None
            },
            waiting_keyframe: !buffered,
            delivered: 0,
            dropped: 0,
            behind: 0,
            bytes: 0,
            reported: SubscriberMarks::default(),
            audio: true,
            video: true,
        };
        // Flow synchronisation at the start of a subscription (RFC 7425 §5.2, event 34): one
        // flow carries the stream here.
        self.sync_id = self.sync_id.wrapping_add(1);
        let sync = UserControl::FlowSync {
            sync_id: self.sync_id,
            count: 1,
        }
        .to_message(0);
        if let Some(slot) = self.slot_of(session_id) {
            if let Some(e) = self.entry_mut(slot) {
                if let Some(f) = e.reply_flow(flow) {
                    let _ = e.session.send(now, f, &sync, SendOptions::default());
                }
            }
        }
        for m in &replay {
            let kind = classify(m);
            self.deliver(now, &mut sub, m, kind, Flush::Later);
        }
        if let Some(state) = self.streams.get_mut(&stream) {
            state.subscribers.push(sub);
        }
    }

    /// Publishes this worker's stream reports (once per [`REPORT_PERIOD`]).
    fn report_streams(&mut self) {
        let secs = self.last_report.elapsed().as_secs_f64().max(f64::EPSILON);
        self.last_report = std::time::Instant::now();
        let mut reports = Vec::with_capacity(self.streams.len());
        // The same for the applications (their QOS objects), in the control plane; not while
        // the link is down or backed up (a late report is a stale one).
        let send_qos = self.link.is_some() && self.outbox.is_empty();
        let mut qos_up = Vec::new();
        // The publisher of each stream published here: its session and flow.
        let publishers: HashMap<u32, (u32, u64)> = self
            .publishing
            .iter()
            .map(|(&(session, flow), &stream)| (stream, (session, flow)))
            .collect();
        for (stream, state) in self.streams.iter_mut() {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let byte_rate = ((state.bytes - state.reported.bytes) as f64 / secs) as u64;
            let publisher = publishers.get(stream).and_then(|&(session, flow)| {
                let p = SessionIdParts::of(session);
                let e = self
                    .table
                    .get(usize::from(p.slot))
                    .and_then(|e| e.as_deref())
                    .filter(|e| e.id == session)?;
                Some((
                    e.session.recv_flow_stats(FlowId(flow)).unwrap_or_default(),
                    e.session.srtt(),
                ))
            });
            let (recv, srtt) = publisher.unwrap_or((state.reported.recv, None));
            let qos = Qos {
                lost_rate: Qos::rate(
                    recv.lost.saturating_sub(state.reported.recv.lost),
                    recv.received
                        .saturating_sub(state.reported.recv.received)
                        .saturating_add(recv.lost.saturating_sub(state.reported.recv.lost)),
                ),
                byte_rate,
                congestion_rate: Qos::rate(
                    state.forward_drops - state.reported.forward_drops,
                    state.forwards - state.reported.forwards,
                ),
                latency_ms: srtt.map(half_ms),
                dropped_frames: state.forward_drops,
            };
            state.reported = PublicationMarks {
                bytes: state.bytes,
                forwards: state.forwards,
                forward_drops: state.forward_drops,
                recv,
            };
            if let Some(&(session, _)) = publishers.get(stream).filter(|_| send_qos) {
                qos_up.push(qos.entry(session, *stream, true));
            }
            let subscribers: Vec<SubscriberReport> = state
                .subscribers
                .iter_mut()
                .map(|sub| {
                    let p = SessionIdParts::of(sub.session_id);
                    let e = self
                        .table
                        .get(usize::from(p.slot))
                        .and_then(|e| e.as_deref())
                        .filter(|e| e.id == sub.session_id);
                    let reply = e.and_then(|e| e.reply_of(sub.flow));
                    let backlog = e
                        .zip(reply)
                        .and_then(|(e, r)| e.session.flow_backlog(r))
                        .unwrap_or(0);
                    let send = e
                        .zip(reply)
                        .and_then(|(e, r)| e.session.send_flow_stats(r))
                        .unwrap_or(sub.reported.send);
                    let srtt = e.and_then(|e| e.session.srtt());
                    let last = sub.reported;
                    let offered = (sub.delivered - last.delivered) + (sub.dropped - last.dropped);
                    #[allow(
                        clippy::cast_possible_truncation,
                        clippy::cast_sign_loss,
                        clippy::cast_precision_loss
                    )]
                    let qos = Qos {
                        lost_rate: Qos::rate(
                            send.lost.saturating_sub(last.send.lost),
                            send.sent.saturating_sub(last.send.sent),
                        ),
                        byte_rate: ((sub.bytes - last.bytes) as f64 / secs) as u64,
                        congestion_rate: Qos::rate(sub.behind - last.behind, offered),
                        latency_ms: srtt.map(half_ms),
                        dropped_frames: sub.dropped,
                    };
                    sub.reported = SubscriberMarks {
                        delivered: sub.delivered,
                        dropped: sub.dropped,
                        behind: sub.behind,
                        bytes: sub.bytes,
                        send,
                    };
                    SubscriberReport {
                        session_id: sub.session_id,
                        delivered: sub.delivered,
                        dropped: sub.dropped,
                        backlog: backlog as u64,
                        rtt_ms: srtt.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                        qos,
                        fragments: send,
                    }
                })
                .collect();
            if send_qos {
                qos_up.extend(
                    subscribers
                        .iter()
                        .map(|s| s.qos.entry(s.session_id, *stream, false)),
                );
            }
            reports.push(StreamReport {
                key: state.key.clone(),
                worker: self.index,
                published: state.published,
                messages: state.messages,
                bytes: state.bytes,
                qos,
                fragments: recv,
                subscribers,
            });
        }
        if let Ok(mut slot) = self.shared.streams[usize::from(self.index)].lock() {
            *slot = reports;
        }
        for chunk in qos_up.chunks(MAX_QOS_ENTRIES) {
            self.send_up(&Up::Qos {
                entries: chunk.to_vec(),
            });
        }
    }

    /// Tells the applications how every session's link is doing (with the stream reports;
    /// not while the link to them is down or backed up, as for QoS).
    ///
    /// A pass visits [`TIMINGS_PER_TURN`] sessions a turn, so that no turn waits for the memory
    /// of every session at once; its entries go up [`MAX_TIMING_ENTRIES`] at a time.
    fn report_timings(&mut self, now: Instant) {
        let Some(start) = self.timings_cursor else {
            return;
        };
        let end = start.saturating_add(TIMINGS_PER_TURN).min(self.table.len());
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let visited = self.table.get(start..end).unwrap_or_default();
        self.timings
            .extend(visited.iter().flatten().map(|e| SessionTiming {
                session_id: e.id,
                rtt_ms: e.session.srtt().map_or(0, ms),
                idle_ms: ms(now.saturating_duration_since(e.session.last_received())),
            }));
        let done = end >= self.table.len();
        self.timings_cursor = (!done).then_some(end);
        if done || self.timings.len() >= MAX_TIMING_ENTRIES {
            let entries = std::mem::take(&mut self.timings);
            if self.link.is_some() && self.outbox.is_empty() {
                for chunk in entries.chunks(MAX_TIMING_ENTRIES) {
                    self.send_up(&Up::Timings {
                        entries: chunk.to_vec(),
                    });
                }
            }
        }
    }

    /// Forgets the publications and subscriptions of a session that closed.
    fn forget_session(&mut self, session_id: u32) {
        let gone: Vec<u32> = self
            .publishing
            .iter()
            .filter(|(k, _)| k.0 == session_id)
            .map(|(_, &s)| s)
            .collect();
        self.publishing.retain(|k, _| k.0 != session_id);
        self.publishing_ns.retain(|k, _| k.0 != session_id);
        for stream in gone {
            self.unpublish(stream);
        }
        for state in self.streams.values_mut() {
            state.subscribers.retain(|s| s.session_id != session_id);
        }
        self.streams
            .retain(|_, s| !s.subscribers.is_empty() || !s.routes.is_empty() || s.published);
    }

    /// Unpublishes the server's own publications: they ended with the applications that made
    /// them (a new control process, met at a new link, starts its scripts afresh).
    fn end_server_streams(&mut self) {
        let ended: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| s.by_server)
            .map(|(&id, _)| id)
            .collect();
        for stream in ended {
            self.unpublish(stream);
        }
    }

    fn unpublish(&mut self, stream: u32) {
        self.publishing.retain(|_, s| *s != stream);
        self.publishing_ns.retain(|_, s| *s != stream);
        if let Some(state) = self.streams.get_mut(&stream) {
            state.published = false;
            state.by_server = false;
            state.events = MediaEvents::NONE;
            state.cache.clear();
            state.restart_clock();
            for &w in &state.routes {
                let reset = MediaItem {
                    stream,
                    message: Arc::from(Vec::new()),
                };
                forward(&self.media_out, &mut self.wake_pending, w, reset);
            }
        }
    }

    fn on_datagram(&mut self, now: Instant, from: SocketAddr, truncated: bool, bytes: &mut [u8]) {
        if truncated {
            self.counters.drop_truncated += 1;
            return;
        }
        let Ok(id) = read_session_id(bytes) else {
            self.counters.drop_malformed += 1;
            return;
        };
        if id == 0 {
            // Startup (RFC 7016 §2.2.2): the control plane owns handshakes.
            let ok = self.link.is_some()
                && self.send_up(&Up::Startup {
                    from,
                    datagram: bytes.to_vec(),
                });
            if !ok {
                self.counters.drop_control_unavailable += 1;
            }
            return;
        }
        let parts = SessionIdParts::of(id);
        if parts.worker != self.index {
            return self.hand_off(parts.worker, from, bytes);
        }
        let Some(slot) = self.slot_of(id) else {
            self.counters.drop_unknown_session += 1;
            return;
        };
        let Some(e) = self.entry_mut(slot) else {
            return;
        };
        match e.session.handle_datagram(now, from, bytes) {
            Ok(()) => self.mark_dirty(slot),
            Err(err) => {
                self.counters.drop_malformed += 1;
                tracing::debug!(session = id, %from, error = %err, "datagram refused");
            }
        }
    }

    fn hand_off(&mut self, owner: u8, from: SocketAddr, bytes: &[u8]) {
        let Some(queue) = self.handoff_out.get(usize::from(owner)) else {
            self.counters.drop_unknown_session += 1;
            return;
        };
        let mut h = Handoff {
            from,
            len: bytes.len(),
            data: [0; SLOT_SIZE],
        };
        h.data[..bytes.len()].copy_from_slice(bytes);
        match queue.try_send(h) {
            Ok(()) => {
                self.counters.handoff_out += 1;
                self.shared.wakers[usize::from(owner)].wake();
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.drop_handoff_full += 1;
            }
        }
    }

    fn expire_timers(&mut self, now: Instant) {
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        self.wheel.expire(now, |d, id| fired.push((d, id)));
        for &(deadline, id) in &fired {
            let Some(slot) = self.slot_of(id) else {
                continue;
            };
            let Some(e) = self.entry_mut(slot) else {
                continue;
            };
            if e.armed != Some(deadline) {
                continue;
            }
            e.armed = None;
            e.session.handle_timeout(now);
            self.mark_dirty(slot);
        }
        self.fired = fired;
    }

    /// Drains events and transmissions of every session touched this turn, and re-arms its
    /// timer.
    fn service_dirty(&mut self, now: Instant) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for (i, &slot) in dirty.iter().enumerate() {
            self.look_ahead(i, Visit::Send, |j| dirty.get(j).map(|&s| (s, None)));
            self.service(now, slot);
        }
        dirty.clear();
        // Servicing can dirty sessions again (a reply sent from an event); keep them.
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn service(&mut self, now: Instant, slot: u16) {
        let mut events = std::mem::take(&mut self.events);
        let Some(e) = self.entry_mut(slot) else {
            self.events = events;
            return;
        };
        e.dirty = false;
        let id = e.id;
        while let Some(ev) = e.session.poll_event() {
            events.push(ev);
        }
        let mut closed = None;
        let mut pending = events.drain(..).peekable();
        while let Some(ev) = pending.next() {
            match ev {
                Event::FlowOpened { flow, metadata, .. } => {
                    self.on_flow_opened(slot, flow, &metadata)
                }
                Event::Message { flow, data } => {
                    // A message followed by more waits for them: they may share datagrams.
                    let flush = if matches!(pending.peek(), Some(Event::Message { .. })) {
                        Flush::Later
                    } else {
                        Flush::Now
                    };
                    self.on_message(slot, flow, data, flush)
                }
                Event::Packet { outgoing, plain } => {
                    if let (Some(dump), Some(e)) = (self.dump, self.entry_mut(slot)) {
                        dump(id, e.session.far_address(), outgoing, &plain);
                    }
                }
                Event::FlowFinished { flow } => self.on_flow_finished(slot, flow),
                Event::Closed { reason } => {
                    tracing::info!(worker = self.index, session = id, ?reason, "session closed");
                    closed = Some(reason);
                }
                _ => {}
            }
        }
        drop(pending);
        self.events = events;
        // Transmit what the session has, even when closing (its Close Acknowledgement).
        self.transmit(now, slot);
        if let Some(reason) = closed {
            self.table[usize::from(slot)] = None;
            self.counters.sessions_closed += 1;
            self.counters.sessions_open = self.counters.sessions_open.saturating_sub(1);
            self.send_up(&Up::Closed {
                session_id: id,
                failure: failure_of(reason),
            });
            self.forget_session(id);
            return;
        }
        let Some(e) = self.entry_mut(slot) else {
            return;
        };
        if let Some(deadline) = e.close_when_flushed {
            let flushed = e
                .replies
                .iter()
                .all(|r| e.session.flow_backlog(r.1).unwrap_or(0) == 0);
            if flushed || now >= deadline {
                e.close_when_flushed = None;
                e.session.close(now);
                self.mark_dirty(slot);
                return;
            }
        }
        self.arm(slot);
    }

    /// Writes a session's datagrams at once, while its state is still in cache from the message
    /// just queued on it, instead of marking it for [`Self::service`] to visit again. A session
    /// already marked, or closing once flushed, is left to that visit.
    fn transmit_now(&mut self, now: Instant, slot: u16) {
        match self.entry_mut(slot) {
            Some(e) if !e.dirty && e.close_when_flushed.is_none() => {
                self.transmit(now, slot);
                self.arm(slot);
            }
            _ => self.mark_dirty(slot),
        }
    }

    /// Writes every datagram the session has into the transmit batch, flushing the batch
    /// whenever it fills.
    fn transmit(&mut self, now: Instant, slot: u16) {
        loop {
            if self.tx.is_full() {
                self.flush();
            }
            let Some(e) = self
                .table
                .get_mut(usize::from(slot))
                .and_then(|e| e.as_deref_mut())
            else {
                break;
            };
            let mut sent = None;
            let index = self.tx.len();
            self.tx.push_with(|buf| {
                let (t, key) = e.session.poll_transmit_deferred(now, buf)?;
                sent = Some(key);
                Some((t.destination, t.len))
            });
            match sent {
                None => break,
                Some(Some(key)) => self.unsealed.push((index, key)),
                Some(None) => {}
            }
        }
    }

    /// Puts the session's next deadline on the timer wheel, when it changed.
    fn arm(&mut self, slot: u16) {
        let Some(e) = self.entry_mut(slot) else {
            return;
        };
        let id = e.id;
        let next = e.session.poll_timeout();
        if next != e.armed {
            e.armed = next;
            if let Some(t) = next {
                self.wheel.insert(t, id);
            }
        }
    }

    /// The client finished one of its flows: its NetStream is gone, so is our reply flow and
    /// whatever the flow played or published here.
    fn on_flow_finished(&mut self, slot: u16, flow: FlowId) {
        let Some(e) = self.entry_mut(slot) else {
            return;
        };
        let id = e.id;
        e.streams.retain(|s| s.0 != flow);
        let was_group = e.groups.iter().any(|g| g.0 == flow);
        e.groups.retain(|g| g.0 != flow);
        if let Some(i) = e.replies.iter().position(|r| r.0 == flow) {
            let (_, reply) = e.replies.swap_remove(i);
            let _ = e.session.close_flow(reply);
        }
        self.stop_flow(id, flow);
        if let Some(stream) = self.publishing.remove(&(id, flow.0)) {
            self.unpublish(stream);
        }
        if was_group {
            self.send_up(&Up::GroupLeave {
                session_id: id,
                flow: flow.0,
            });
        }
        self.mark_dirty(slot);
    }

    fn on_flow_opened(&mut self, slot: u16, flow: FlowId, metadata: &[u8]) {
        let Some(e) = self.entry_mut(slot) else {
            return;
        };
        match FlowMetadata::parse(metadata) {
            Ok(FlowMetadata::Tc { stream_id, .. }) => {
                e.streams.push((flow, stream_id));
                if stream_id == 0 && e.control.is_none() {
                    e.control = Some(flow);
                }
            }
            Ok(FlowMetadata::Gc) if e.groups.len() < MAX_GROUP_FLOWS => e.groups.push((flow, None)),
            _ => {
                // Unknown flows, and NetGroup flows beyond the limit, are rejected (RFC 7016
                // §3.6.3.7).
                let _ = e.session.reject_flow(flow, AUTOMATIC_REJECTION);
            }
        }
    }

    fn on_message(&mut self, slot: u16, flow: FlowId, data: Vec<u8>, flush: Flush) {
        let n = self.group_joins;
        let Some(e) = self.entry_mut(slot) else {
            return;
        };
        let id = e.id;
        if let Some(g) = e.groups.iter_mut().find(|g| g.0 == flow) {
            // A NetGroup join (digest §1.14); other raw group messages are not for a server.
            if let Ok(join) = GroupJoin::parse(&data) {
                g.1 = Some((join.group_id.0, n));
                self.group_joins += 1;
                self.send_up(&Up::GroupJoin {
                    session_id: id,
                    flow: flow.0,
                    group_id: join.group_id.0,
                    restored: false,
                });
            }
            return;
        }
        let stream_id = e.streams.iter().find(|s| s.0 == flow).map_or(0, |s| s.1);
        let kind = TcMessage::parse(&data).ok().map(|tc| tc.kind);
        if kind.is_some_and(MessageType::is_command) {
            self.send_up(&Up::Message {
                session_id: id,
                flow: flow.0,
                stream_id,
                data,
            });
        } else if let Some(&stream) = self
            .publishing_ns
            .get(&(id, stream_id))
            .filter(|_| stream_id != 0)
        {
            let watched = kind.map(MediaEvents::of).is_some_and(|k| {
                self.streams
                    .get(&stream)
                    .is_some_and(|s| s.events.intersects(k))
            });
            if watched {
                self.counters.media_events += 1;
                self.send_up(&Up::Media {
                    session_id: id,
                    stream,
                    message: data.clone(),
                });
            }
            if let Some(message) = prepare(data) {
                self.counters.media_published += 1;
                let now = self.now();
                self.on_media(now, stream, message, true, flush);
            }
        }
    }

    fn flush(&mut self) {
        if self.tx.is_empty() {
            return;
        }
        self.seal();
        for (_, bytes) in self.tx.iter() {
            self.counters.tx_packets += 1;
            self.counters.tx_bytes += bytes.len() as u64;
        }
        let dropped = self.io.send(&mut self.tx);
        self.counters.tx_dropped += dropped as u64;
    }

    /// Encrypts the batch's session packets together, 8 or 16 sessions at a time
    /// (multi-buffer AES-CBC, `rtmfp::crypto::encrypt_cbc_zero_iv_many`), and scrambles their
    /// session IDs (RFC 7016 §2.2.2). No allocation: the jobs live on the stack.
    fn seal(&mut self) {
        let Some((_, first)) = self.unsealed.first() else {
            return;
        };
        let mut jobs: [CbcJob<'_>; BATCH] = std::array::from_fn(|_| CbcJob {
            key: first,
            data: &mut [],
        });
        let mut pending = self.unsealed.iter().peekable();
        let mut n = 0;
        for (i, datagram) in self.tx.datagrams_mut().enumerate() {
            let Some((_, key)) = pending.next_if(|(at, _)| *at == i) else {
                continue;
            };
            if let (Some(job), Some(data)) = (jobs.get_mut(n), datagram.get_mut(SSID_LEN..)) {
                *job = CbcJob { key, data };
                n += 1;
            }
        }
        // Lengths come from the packet encoder, whole blocks: this cannot fail.
        let sealed = encrypt_cbc_zero_iv_many(&mut jobs[..n]).is_ok();
        let mut pending = self.unsealed.iter().peekable();
        for (i, datagram) in self.tx.datagrams_mut().enumerate() {
            // Never send plaintext: a datagram that could not be sealed is spoilt, and the
            // peer drops it.
            if pending.next_if(|(at, _)| *at == i).is_some()
                && (!sealed || finish_sealing(datagram).is_err())
            {
                datagram.fill(0);
            }
        }
        self.unsealed.clear();
    }

    fn close_all(&mut self) {
        let now = self.now();
        let slots: Vec<u16> = (0..self.table.len())
            .filter(|&i| self.table[i].is_some())
            .map(|i| i as u16)
            .collect();
        tracing::info!(
            worker = self.index,
            sessions = slots.len(),
            "closing every session"
        );
        for slot in slots {
            if let Some(e) = self.entry_mut(slot) {
                e.session.close(now);
            }
            self.mark_dirty(slot);
        }
    }
}

/// Keys for a session a test installs by hand: any values, each key its own.
#[cfg(test)]
pub(crate) fn test_secrets() -> updraft_control::ipc::SessionSecrets {
    use rtmfp::crypto::{DirectionOptions, SessionKeys, DERIVED_LEN};
    updraft_control::ipc::SessionSecrets {
        keys: SessionKeys {
            encrypt: [1; DERIVED_LEN],
            decrypt: [2; DERIVED_LEN],
            tx_hmac_key: [3; DERIVED_LEN],
            rx_hmac_key: [4; DERIVED_LEN],
            near_nonce: [5; DERIVED_LEN],
            far_nonce: [6; DERIVED_LEN],
        },
        send: DirectionOptions::default(),
        receive: DirectionOptions::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemIo;

    /// A worker on the memory backend whose media queues are the given senders.
    fn worker(index: u8, media_out: Vec<Sender<MediaItem>>, workers: usize) -> Worker<MemIo> {
        let (io, _peer) = MemIo::pair().unwrap();
        let (mut handoff_in, handoff_out) = handoff_queues(workers);
        Worker::new(WorkerSetup {
            index,
            io,
            handoff_in: handoff_in.remove(usize::from(index)),
            handoff_out,
            links: crossbeam_channel::bounded(1).1,
            shared: Arc::new(Shared::new(workers).unwrap()),
            session_config: SessionConfig::default(),
            seed: [index; 32],
            epoch: std::time::Instant::now(),
            dump: None,
            media_in: crossbeam_channel::bounded(1).1,
            media_out,
            lifetimes: MediaLifetimes::default(),
        })
    }

    fn video(ts: u32, key: bool) -> Arc<[u8]> {
        let mut m = vec![0x09];
        m.extend_from_slice(&ts.to_be_bytes());
        m.extend_from_slice(&[if key { 0x17 } else { 0x27 }, 1, 0, 0, 0]);
        Arc::from(m)
    }

    #[test]
    fn a_timing_pass_visits_a_bounded_number_of_sessions_a_turn() {
        use updraft_control::ids::IdAllocator;
        let mut w = worker(0, Vec::new(), 1);
        let mut ids = IdAllocator::new(0);
        let n = TIMINGS_PER_TURN * 2 + 100;
        for i in 0..n {
            let session_id = ids.allocate().unwrap();
            let peer_id = [u8::try_from(i % 251).unwrap(); 32];
            w.on_down(Down::Install {
                session_id,
                far_session_id: 9,
                address: "192.0.2.7:4000".parse().unwrap(),
                peer_id,
                secrets: test_secrets(),
            });
        }
        assert_eq!(w.table.iter().flatten().count(), n);
        let now = w.now();
        // No pass under way: nothing.
        w.report_timings(now);
        assert!(w.timings.is_empty());
        w.timings_cursor = Some(0);
        w.report_timings(now);
        assert_eq!(w.timings.len(), TIMINGS_PER_TURN);
        w.report_timings(now);
        assert_eq!(w.timings.len(), 2 * TIMINGS_PER_TURN);
        assert!(w.timings_cursor.is_some());
        // The last slice ends the pass and sends what it gathered (dropped: no control link).
        w.report_timings(now);
        assert_eq!(w.timings_cursor, None);
        assert!(w.timings.is_empty());
    }

    #[test]
    fn pushed_media_feeds_a_stream_published_here_until_the_server_publication_ends() {
        const STREAM: u32 = 5;
        let (own_tx, _own_rx) = crossbeam_channel::bounded(8);
        let (to_1, from_0) = crossbeam_channel::bounded(8);
        let mut w = worker(0, vec![own_tx, to_1], 2);
        let media = |stream| Down::Media {
            stream,
            message: video(40, true).to_vec(),
        };
        // Not published here yet: dropped.
        w.on_down(media(STREAM));
        assert_eq!(w.counters.drop_media_pushed, 1);
        w.on_down(Down::ServerPublish {
            stream: STREAM,
            key: "live/tv".into(),
        });
        w.on_down(Down::Route {
            stream: STREAM,
            worker: 1,
            add: true,
        });
        w.on_down(media(STREAM));
        assert_eq!(w.counters.media_pushed, 1);
        let items: Vec<MediaItem> = from_0.try_iter().collect();
        assert_eq!(items.len(), 1);
        assert_eq!(&items[0].message[..], &video(40, true)[..]);
        // What is not media is not pushed.
        w.on_down(Down::Media {
            stream: STREAM,
            message: vec![0x14, 0, 0, 0, 0, 0x05],
        });
        assert_eq!(w.counters.drop_media_pushed, 2);
        // A new control process: the server's publications are over, and the other worker hears
        // that the publisher left.
        w.end_server_streams();
        assert!(!w.streams[&STREAM].published);
        let items: Vec<MediaItem> = from_0.try_iter().collect();
        assert_eq!(items.len(), 1);
        assert!(items[0].message.is_empty());
        w.on_down(media(STREAM));
        assert_eq!(w.counters.drop_media_pushed, 3);
    }

    #[test]
    fn timeouts_are_failures_and_closes_are_not() {
        assert_eq!(failure_of(CloseReason::Idle), Some(Failure::Idle));
        assert_eq!(
            failure_of(CloseReason::RetransmitLimit),
            Some(Failure::Unacknowledged)
        );
        for closed in [
            CloseReason::Local,
            CloseReason::Remote,
            CloseReason::Aborted,
            CloseReason::LocalAbort,
        ] {
            assert_eq!(failure_of(closed), None, "{closed:?}");
        }
    }

    #[test]
    fn a_loss_between_workers_is_signalled_and_viewers_wait_for_a_key_frame() {
        const STREAM: u32 = 5;
        // Worker 0 publishes; worker 1's queue holds two items.
        let (own_tx, _own_rx) = crossbeam_channel::bounded(2);
        let (to_1, from_0) = crossbeam_channel::bounded(2);
        let mut publisher = worker(0, vec![own_tx, to_1], 2);
        let state = publisher.streams.entry(STREAM).or_default();
        state.published = true;
        state.routes.push(1);
        let now = Instant::ZERO;
        for ts in [0, 33, 66] {
            publisher.on_media(now, STREAM, video(ts, ts == 0), true, Flush::Now);
        }
        // The third did not fit: it is counted, and a gap is owed.
        assert_eq!(publisher.counters.drop_media_queue_full, 1);
        let first: Vec<MediaItem> = from_0.try_iter().collect();
        assert_eq!(first.len(), 2);
        publisher.on_media(now, STREAM, video(99, false), true, Flush::Now);
        let next: Vec<MediaItem> = from_0.try_iter().collect();
        assert_eq!(next.len(), 2);
        assert_eq!(&next[0].message[..], &GAP_MARK[..], "the gap comes first");
        assert_eq!(timestamp(&next[1].message), 99);

        // The viewers' worker: a subscriber in sync waits for a key frame after the gap.
        let mut viewers = worker(1, Vec::new(), 2);
        viewers
            .streams
            .entry(STREAM)
            .or_default()
            .subscribers
            .push(Subscriber {
                session_id: 0x0101_0001,
                flow: FlowId(3),
                base: Some(0),
                waiting_keyframe: false,
                delivered: 0,
                dropped: 0,
                behind: 0,
                bytes: 0,
                reported: SubscriberMarks::default(),
                audio: true,
                video: true,
            });
        viewers.on_media(now, STREAM, Arc::clone(&next[0].message), false, Flush::Now);
        let sub = &viewers.streams[&STREAM].subscribers[0];
        assert!(sub.waiting_keyframe);
        assert_eq!(
            viewers.streams[&STREAM].messages, 0,
            "a gap mark is not media"
        );
    }
}
