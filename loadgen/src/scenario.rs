//! The scenarios. Every loop is bounded in time.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant as WallInstant};

use rtmfp::amf::Value;
use rtmfp::crypto::DhGroup;
use rtmfp::ids::{FlowId, PeerId};
use updraft_dataplane::sys::Epoll;

use crate::driver::{command, connect_message, result_number, set_data_frame, status_code, Driver};
use crate::report::{Report, Totals};

/// Why a scenario could not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// No session opened, and nothing answered the IHellos: no RHello (no server there, a
    /// firewall, or a server that refuses the endpoint discriminator).
    NoRHello,
    /// No session opened although the server answered the IHellos: no usable RIKeying (keying
    /// refused, a DH group it does not take, or a rate limit).
    NoRIKeying,
    /// The server refused `connect` (its status code).
    ConnectRejected(String),
    /// A stage did not complete in time.
    Stalled(&'static str),
    /// A socket error.
    Io(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::NoRHello => write!(f, "no session opened: no RHello from the server"),
            LoadError::NoRIKeying => write!(
                f,
                "no session opened: the server sent RHello but no usable RIKeying"
            ),
            LoadError::ConnectRejected(code) => write!(f, "connect rejected: {code}"),
            LoadError::Stalled(stage) => write!(f, "stalled: {stage}"),
            LoadError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<std::io::Error> for LoadError {
    fn from(e: std::io::Error) -> Self {
        LoadError::Io(e.to_string())
    }
}

/// How long a stage (connects, `connect` answers, plays) may take.
const STAGE_LIMIT: Duration = Duration::from_secs(30);
/// How long a scenario keeps answering after closing its sessions.
const CLOSE_LINGER: Duration = Duration::from_millis(300);
/// How long a fanout waits after the last message for stragglers.
const DRAIN: Duration = Duration::from_secs(2);

/// `connect`: a handshake storm.
#[derive(Debug, Clone)]
pub struct ConnectArgs {
    /// The server.
    pub server: SocketAddr,
    /// Sessions to open.
    pub sessions: usize,
    /// Handshakes started per second (`None`: all at once).
    pub rate: Option<f64>,
    /// The application path.
    pub app: String,
    /// How long the sessions may take to open.
    pub timeout: Duration,
    /// The DH groups offered (the server picks the strongest it shares).
    pub groups: Vec<DhGroup>,
    /// Send and receive through an AF_XDP socket on this interface (`--xdp IF`; the first
    /// socket only, for `fanout` and `publish`) instead of a kernel socket.
    pub xdp: Option<String>,
}

/// What Flash Player offers: DH group 2 alone (RFC 7425 §4.2).
pub const FLASH_GROUPS: [DhGroup; 1] = [DhGroup::Modp1024];

/// A driver for `server`: on a kernel socket, or on AF_XDP when `xdp` names an interface.
fn driver(
    xdp: Option<&str>,
    server: SocketAddr,
    seed: u64,
    groups: &[DhGroup],
) -> Result<Driver, LoadError> {
    let bind = local_for(server);
    match xdp {
        None => Ok(Driver::new(bind, seed, groups)?),
        Some(interface) => Driver::with_xdp(interface, bind, seed, groups)
            .map_err(|e| LoadError::Io(format!("--xdp {interface}: {e}"))),
    }
}

fn local_for(server: SocketAddr) -> SocketAddr {
    if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    }
}

/// Opens `sessions` sessions at `rate`; the latency is the handshake time.
pub fn connect(args: &ConnectArgs) -> Result<Report, LoadError> {
    let mut d = driver(args.xdp.as_deref(), args.server, 1, &args.groups)?;
    d.keep_messages = false;
    let url = format!("rtmfp://{}/{}", args.server, args.app);
    let mut report = Report::new("connect");
    report.show_progress();
    let start = WallInstant::now();
    let deadline = start + args.timeout;
    let mut started = 0usize;
    while WallInstant::now() < deadline {
        let due = match args.rate {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some(r) => ((start.elapsed().as_secs_f64() * r) as usize + 1).min(args.sessions),
            None => args.sessions,
        };
        while started < due {
            d.open(args.server, &url);
            started += 1;
        }
        d.step(|_, _, _, _| {});
        report.sample(start.elapsed(), totals(&d, d.opened() as u64));
        if started == args.sessions && d.opened() + d.failed() >= args.sessions {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    report.finish_progress();
    report.elapsed = start.elapsed();
    for s in d.sessions.values() {
        if let (Some(a), Some(b)) = (s.started, s.opened) {
            report.record(b.saturating_duration_since(a));
        }
    }
    report.sessions_ok = d.opened() as u64;
    report.sessions_failed = (args.sessions - d.opened()) as u64;
    report.packets_out = d.packets_out;
    report.packets_in = d.packets_in;
    (report.ring_in, report.ring_out) = d.ring_totals();
    report.bytes_out = d.bytes_out;
    report.bytes_in = d.bytes_in;
    d.close_all(CLOSE_LINGER);
    if report.sessions_ok == 0 {
        return Err(handshake_error(&d));
    }
    Ok(report)
}

/// `fanout`: one publisher, many subscribers.
#[derive(Debug, Clone)]
pub struct FanoutArgs {
    /// The server.
    pub server: SocketAddr,
    /// Streams, each with its own publisher (1 for `fanout`).
    pub streams: usize,
    /// Subscribers of each stream.
    pub subscribers: usize,
    /// Threads that drive the sessions (their sockets dealt round-robin).
    pub threads: usize,
    /// Cores the threads are pinned to, in turn (empty: not pinned).
    pub cores: Vec<usize>,
    /// The publisher's bitrate, in kbit/s.
    pub bitrate_kbps: u64,
    /// Bytes per media message.
    pub size: usize,
    /// How long the publisher sends.
    pub duration: Duration,
    /// Time between key frames (a group of pictures); zero for the first message only. A
    /// subscriber whose video the server drops (it fell behind) resumes at the next one.
    pub keyframe_interval: Duration,
    /// The application path.
    pub app: String,
    /// The stream name.
    pub stream: String,
    /// UDP sockets (local ports) the sessions are spread over.
    pub sockets: usize,
    /// The DH groups offered (the server picks the strongest it shares).
    pub groups: Vec<DhGroup>,
    /// Send and receive through an AF_XDP socket on this interface (`--xdp IF`; the first
    /// socket only, for `fanout` and `publish`) instead of a kernel socket.
    pub xdp: Option<String>,
}

/// The header of a fanout media payload: FLV video byte, AVC packet type, composition time.
const VIDEO_INTER: [u8; 5] = [0x27, 0x01, 0, 0, 0];
/// The same for a key frame (the first message, so subscribers start at once, then one every
/// [`FanoutArgs::keyframe_interval`]).
const VIDEO_KEY: [u8; 5] = [0x17, 0x01, 0, 0, 0];
/// Payload bytes before the padding: the header, a sequence number, a send time and the
/// stream's index.
const PAYLOAD_HEAD: usize = 5 + 8 + 8 + 4;
/// Lifetime of fanout messages (video).
const LIFETIME: Duration = Duration::from_secs(3);

/// Messages per group of pictures (a key frame, then inter frames) when one is sent every
/// `interval` and a key frame every `keyframe_interval` (zero: never again after the first).
fn gop_length(keyframe_interval: Duration, interval: Duration) -> u64 {
    if keyframe_interval.is_zero() || interval.is_zero() {
        return u64::MAX;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = (keyframe_interval.as_secs_f64() / interval.as_secs_f64())
        .round()
        .max(1.0) as u64;
    n
}

/// The video header of message `seq` in groups of `gop` messages.
fn video_header(seq: u64, gop: u64) -> &'static [u8; 5] {
    if seq.is_multiple_of(gop) {
        &VIDEO_KEY
    } else {
        &VIDEO_INTER
    }
}

fn wait(
    d: &mut Driver,
    what: &'static str,
    mut done: impl FnMut(&Driver) -> bool,
) -> Result<(), LoadError> {
    let deadline = WallInstant::now() + STAGE_LIMIT;
    while !done(d) {
        if WallInstant::now() > deadline {
            return Err(LoadError::Stalled(what));
        }
        d.step(|_, _, _, _| {});
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// The transaction ID of the fanout's `createStream` calls (after `connect`'s 1).
const CREATE_STREAM_TXN: f64 = 2.0;

/// The stream ID the server answered session `h`'s `createStream` with.
fn stream_id(d: &Driver, h: u32) -> Option<f64> {
    d.sessions.get(&h).and_then(|s| {
        s.messages
            .iter()
            .find_map(|(_, m)| result_number(m, CREATE_STREAM_TXN))
    })
}

/// Why no session of `d` opened: the stage its handshakes reached.
fn handshake_error(d: &Driver) -> LoadError {
    if d.any_answered() {
        LoadError::NoRIKeying
    } else {
        LoadError::NoRHello
    }
}

fn has_code(d: &Driver, h: u32, code: &str) -> bool {
    d.sessions.get(&h).is_some_and(|s| {
        s.messages
            .iter()
            .any(|(_, m)| status_code(m).as_deref() == Some(code))
    })
}

fn rejected(d: &Driver, h: u32) -> Option<String> {
    d.sessions.get(&h).and_then(|s| {
        s.messages
            .iter()
            .filter_map(|(_, m)| status_code(m))
            .find(|c| c.contains("Rejected") || c.contains("InvalidApp") || c.contains("Failed"))
    })
}

/// Opens `n` sessions to `app` and connects each NetConnection; answers the sessions (in the
/// order opened) and their NetConnection flows. Errors name the stage that failed.
fn connect_sessions(
    d: &mut Driver,
    server: SocketAddr,
    app: &str,
    n: usize,
) -> Result<(Vec<u32>, HashMap<u32, FlowId>), LoadError> {
    let url = format!("rtmfp://{server}/{app}");
    let sessions: Vec<u32> = (0..n).map(|_| d.open(server, &url)).collect();
    wait(d, "handshakes", |d| {
        d.opened() + d.failed() >= sessions.len()
    })?;
    if d.opened() == 0 {
        return Err(handshake_error(d));
    }
    let mut flows = HashMap::new();
    for &h in &sessions {
        if let Some(nc) = d.open_flow(h, 0) {
            d.send(h, nc, &connect_message(app), None);
            flows.insert(h, nc);
        }
    }
    wait(d, "connect answers", |d| {
        sessions
            .iter()
            .all(|&h| has_code(d, h, "NetConnection.Connect.Success") || rejected(d, h).is_some())
    })?;
    if let Some(code) = sessions.iter().find_map(|&h| rejected(d, h)) {
        return Err(LoadError::ConnectRejected(code));
    }
    Ok((sessions, flows))
}

/// Runs a fanout and reports delivery and end-to-end latency: `args.streams` publishers, each
/// with `args.subscribers` subscribers of its own stream (`fanout` is one stream, `publish`
/// many).
///
/// The sessions are spread over `args.sockets` drivers, each with its own UDP socket (port):
/// session `j` (stream `j / (1 + subscribers)`, its publisher first) goes to socket
/// `j % sockets`. With one socket per session each has its own address, as real viewers do
/// (and as servers such as rtmfp-cpp's require: one session per far address, RFC 7016
/// §3.5.1.1.2); with fewer, subscribers that share a socket and follow each other in the
/// server's list can have their datagrams coalesced into one GSO send.
pub fn fanout(args: &FanoutArgs) -> Result<Report, LoadError> {
    let per_stream = 1 + args.subscribers;
    let total = args.streams.max(1) * per_stream;
    let sockets = args.sockets.clamp(1, total);
    let mut counts = vec![0usize; sockets];
    for j in 0..total {
        counts[j % sockets] += 1;
    }
    // Session `j`, once connected: its driver and handle.
    let mut sessions: Vec<Option<(usize, u32)>> = vec![None; total];
    let mut flows: HashMap<(usize, u32), FlowId> = HashMap::new();
    let mut drivers = Vec::with_capacity(sockets);
    for (k, &n) in counts.iter().enumerate() {
        let xdp = if k == 0 { args.xdp.as_deref() } else { None };
        let mut d = driver(xdp, args.server, 2 + k as u64, &args.groups)?;
        let (all, nc_flows) = connect_sessions(&mut d, args.server, &args.app, n)?;
        // Each session asks for a NetStream (`createStream`, as Flash Player does before
        // `publish` or `play`) and opens its flow with the stream ID the server gave.
        for &h in &all {
            if let Some(&nc) = nc_flows.get(&h) {
                d.send(
                    h,
                    nc,
                    &command("createStream", CREATE_STREAM_TXN, vec![]),
                    None,
                );
            }
        }
        wait(&mut d, "createStream answers", |d| {
            all.iter().all(|&h| stream_id(d, h).is_some())
        })?;
        for (i, &h) in all.iter().enumerate() {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let id = stream_id(&d, h).unwrap_or(1.0) as u64;
            if let Some(f) = d.open_flow(h, id) {
                flows.insert((k, h), f);
            }
            if let Some(slot) = sessions.get_mut(k + i * sockets) {
                *slot = Some((k, h));
            }
        }
        drivers.push(d);
    }
    let name = |stream: usize| {
        if args.streams > 1 {
            format!("{}{stream}", args.stream)
        } else {
            args.stream.clone()
        }
    };
    // Publishers: (driver, handle, flow) per stream; subscribers: (driver, handle) → stream.
    let mut publishers = Vec::with_capacity(args.streams);
    let mut players = Vec::with_capacity(total);
    let mut subs: HashMap<(usize, u32), usize> = HashMap::new();
    for (j, session) in sessions.iter().enumerate() {
        let (k, h) = session.ok_or(LoadError::Stalled("handshakes"))?;
        let f = *flows
            .get(&(k, h))
            .ok_or(LoadError::Stalled("stream flows"))?;
        let (stream, role) = (j / per_stream, j % per_stream);
        if role == 0 {
            publishers.push((k, h, f));
            let publish = command("publish", 0.0, vec![Value::str(&name(stream))]);
            drivers[k].send(h, f, &publish, None);
        } else {
            players.push((k, h, f, stream));
            subs.insert((k, h), stream);
        }
    }
    // Every publish is accepted, then every play starts.
    for (k, d) in drivers.iter_mut().enumerate() {
        wait(d, "publish", |d| {
            publishers
                .iter()
                .filter(|p| p.0 == k)
                .all(|p| has_code(d, p.1, "NetStream.Publish.Start"))
        })?;
    }
    // Each publisher describes its stream first (`@setDataFrame onMetaData`), as Flash Player
    // and encoders do; Cumulus takes a publisher's media only after a data message.
    let metadata = set_data_frame(args.size, args.bitrate_kbps);
    for &(k, h, f) in &publishers {
        drivers[k].send(h, f, &metadata, None);
    }
    for &(k, h, f, stream) in &players {
        drivers[k].send(
            h,
            f,
            &command("play", 0.0, vec![Value::str(&name(stream))]),
            None,
        );
    }
    for (k, d) in drivers.iter_mut().enumerate() {
        wait(d, "plays", |d| {
            subs.keys()
                .filter(|s| s.0 == k)
                .all(|&(_, h)| has_code(d, h, "NetStream.Play.Start"))
        })?;
        d.keep_messages = false;
    }

    // The streams: `size`-byte video messages at `bitrate` each, carrying a sequence number,
    // the send time and the stream's index; every publisher sends `ticks` of them.
    let size = args.size.max(PAYLOAD_HEAD);
    #[allow(clippy::cast_precision_loss)]
    let interval =
        Duration::from_secs_f64((size * 8) as f64 / (args.bitrate_kbps.max(1) * 1000) as f64);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ticks = (args.duration.as_secs_f64() / interval.as_secs_f64())
        .ceil()
        .max(1.0) as u64;
    let gop = gop_length(args.keyframe_interval, interval);
    let name = if args.streams > 1 {
        "publish"
    } else {
        "fanout"
    };
    // Every driver measures time from its own epoch; send times use the first driver's, and
    // each receive time is moved onto it.
    let offsets = clock_offsets(&drivers);
    // The drivers, dealt round-robin to the threads (the first, with the first publisher, to
    // thread 0), each thread pinned to its core.
    let threads = args.threads.clamp(1, drivers.len());
    let mut parts: Vec<Part> = (0..threads).map(|_| Part::default()).collect();
    let mut local = vec![(0usize, 0usize); drivers.len()];
    for (k, d) in drivers.into_iter().enumerate() {
        let t = k % threads;
        local[k] = (t, parts[t].drivers.len());
        parts[t].drivers.push(d);
        parts[t].offsets.push(offsets[k]);
    }
    for (stream, &(k, h, f)) in publishers.iter().enumerate() {
        let (t, i) = local[k];
        parts[t]
            .publishers
            .push((i, h, f, u32::try_from(stream).unwrap_or(u32::MAX)));
    }
    for (&(k, h), &stream) in &subs {
        let (t, i) = local[k];
        parts[t].subs.insert((i, h), stream);
    }
    // Scripts that measure the server while the stream runs (benches/e2e) wait for this line.
    eprintln!(
        "{name}: {} subscribers playing; streaming for {:.1} s",
        subs.len(),
        args.duration.as_secs_f64()
    );
    let cores = args.cores.clone();
    let counters: Vec<PartCounters> = (0..threads).map(|_| PartCounters::default()).collect();
    let plan = Plan {
        start: WallInstant::now(),
        interval,
        ticks,
        gop,
        size,
        name,
        counters: &counters,
    };
    let results: Vec<Result<Report, LoadError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .enumerate()
            .map(|(t, part)| {
                let plan = &plan;
                let core = cores.get(t % cores.len().max(1)).copied();
                scope.spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core_affinity::CoreId { id: core });
                    }
                    part.run(t, plan)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or(Err(LoadError::Stalled("a loadgen thread")))
            })
            .collect()
    });
    let mut report = Report::new(name);
    for r in results {
        let r = r?;
        if report.series.is_empty() {
            report.series = r.series.clone();
        }
        let _ = report.latency.add(&r.latency);
        report.elapsed = report.elapsed.max(r.elapsed);
        report.expected += r.expected;
        report.delivered += r.delivered;
        report.misdelivered += r.misdelivered;
        report.sessions_ok += r.sessions_ok;
        report.sessions_failed += r.sessions_failed;
        report.packets_out += r.packets_out;
        report.packets_in += r.packets_in;
        report.ring_in += r.ring_in;
        report.ring_out += r.ring_out;
        report.bytes_out += r.bytes_out;
        report.bytes_in += r.bytes_in;
    }
    report.lost = report.expected - report.delivered.min(report.expected);
    Ok(report)
}

/// Each driver's clock offset onto the first driver's, in microseconds.
fn clock_offsets(drivers: &[Driver]) -> Vec<i128> {
    let base = drivers
        .first()
        .map_or(0, |d| i128::from(d.now().as_micros()));
    drivers
        .iter()
        .map(|d| base - i128::from(d.now().as_micros()))
        .collect()
}

/// What all the threads of a fanout share: the schedule, and each thread's running totals for
/// the progress line.
struct Plan<'a> {
    start: WallInstant,
    interval: Duration,
    /// Messages each publisher sends.
    ticks: u64,
    /// Messages per group of pictures: every `gop`-th is a key frame.
    gop: u64,
    size: usize,
    name: &'static str,
    counters: &'a [PartCounters],
}

/// One thread's running totals, published with relaxed stores (one writer each).
#[derive(Default)]
struct PartCounters {
    packets_out: AtomicU64,
    packets_in: AtomicU64,
    received: AtomicU64,
}

/// One thread's share of a fanout: its drivers, the publishers among their sessions (driver,
/// handle, flow, stream index) and the subscribers (driver, handle → stream index).
#[derive(Default)]
struct Part {
    drivers: Vec<Driver>,
    offsets: Vec<i128>,
    publishers: Vec<(usize, u32, FlowId, u32)>,
    subs: HashMap<(usize, u32), usize>,
}

impl Part {
    /// Streams on this thread's drivers until every publisher has sent `plan.ticks` messages
    /// and its subscribers have them (or the drain time is over); thread 0 also keeps the
    /// progress line and the per-second samples (all threads' packets, its own latencies).
    fn run(self, t: usize, plan: &Plan<'_>) -> Result<Report, LoadError> {
        let Part {
            drivers,
            offsets,
            publishers,
            subs,
        } = self;
        let mut report = Report::new(plan.name);
        // Per subscriber: its stream and which sequence numbers arrived (one bit each: no
        // hashing or allocation per message, so that counting does not slow the receive loop).
        let words = usize::try_from(plan.ticks.div_ceil(64)).unwrap_or(0);
        let mut seen: HashMap<(usize, u32), Seen> = subs
            .iter()
            .map(|(&s, &stream)| (s, Seen::new(stream, words)))
            .collect();
        let latencies: std::cell::RefCell<Vec<Duration>> = std::cell::RefCell::default();
        let received = std::cell::Cell::new(0u64);
        let misdelivered = std::cell::Cell::new(0u64);
        let mut on_message = |k: usize, h: u32, m: &[u8], now: rtmfp::time::Instant| {
            // TC message: type, timestamp, then our payload.
            if m.first() != Some(&0x09) || m.len() < 5 + PAYLOAD_HEAD {
                return;
            }
            let p = &m[5..];
            let seq = u64::from_be_bytes(p[5..13].try_into().unwrap_or_default());
            let sent = u64::from_be_bytes(p[13..21].try_into().unwrap_or_default());
            let stream = u32::from_be_bytes(p[21..25].try_into().unwrap_or_default());
            let Some(sub) = seen.get_mut(&(k, h)) else {
                return;
            };
            if sub.stream as u64 != u64::from(stream) {
                misdelivered.set(misdelivered.get() + 1);
                return;
            }
            if sub.insert(seq) {
                received.set(received.get() + 1);
                latencies
                    .borrow_mut()
                    .push(Duration::from_micros(now.as_micros().saturating_sub(sent)));
            }
        };
        let mut fleet = Fleet::new(drivers, offsets)?;
        if t == 0 {
            report.show_progress();
        }
        let publish = |fleet: &Fleet| {
            let mine = &plan.counters[t];
            mine.packets_out.store(
                fleet.drivers.iter().map(|d| d.packets_out).sum(),
                Ordering::Relaxed,
            );
            mine.packets_in.store(
                fleet.drivers.iter().map(|d| d.packets_in).sum(),
                Ordering::Relaxed,
            );
            mine.received.store(received.get(), Ordering::Relaxed);
        };
        let sample = |report: &mut Report, fleet: &Fleet| {
            // Latencies go into the histograms in small batches: draining a whole second's at
            // once (400,000 at 2,000 subscribers) would stall the receive loop for
            // milliseconds and show up as latency itself.
            let elapsed = plan.start.elapsed();
            let due = report.sample_due(elapsed);
            if due || latencies.borrow().len() >= LATENCY_BATCH {
                for l in latencies.borrow_mut().drain(..) {
                    report.record(l);
                }
            }
            if !due {
                return;
            }
            publish(fleet);
            if t == 0 {
                let sum = |f: fn(&PartCounters) -> &AtomicU64| {
                    plan.counters
                        .iter()
                        .map(|c| f(c).load(Ordering::Relaxed))
                        .sum()
                };
                let totals = Totals {
                    packets_out: sum(|c| &c.packets_out),
                    packets_in: sum(|c| &c.packets_in),
                    done: sum(|c| &c.received),
                };
                report.sample(elapsed, totals);
            }
        };
        let mut payload = vec![0u8; plan.size + 5];
        let mut next = plan.start;
        let mut seq = 0u64;
        while seq < plan.ticks {
            while WallInstant::now() >= next && seq < plan.ticks {
                let now = fleet
                    .drivers
                    .first()
                    .map_or(rtmfp::time::Instant::from_micros(0), |d| {
                        rtmfp::time::Instant::from_micros(
                            u64::try_from(i128::from(d.now().as_micros()) + fleet.offsets[0])
                                .unwrap_or(0),
                        )
                    });
                payload[0] = 0x09;
                let ts = u32::try_from(plan.start.elapsed().as_millis()).unwrap_or(u32::MAX);
                payload[1..5].copy_from_slice(&ts.to_be_bytes());
                payload[5..10].copy_from_slice(video_header(seq, plan.gop));
                payload[10..18].copy_from_slice(&seq.to_be_bytes());
                payload[18..26].copy_from_slice(&now.as_micros().to_be_bytes());
                for &(k, h, f, stream) in &publishers {
                    payload[26..30].copy_from_slice(&stream.to_be_bytes());
                    fleet.drivers[k].send(h, f, &payload, Some(LIFETIME));
                    // Out now, as stamped: the fleet's step may first wait for datagrams (up
                    // to the next tick), which would count as the server's latency.
                    fleet.drivers[k].flush();
                }
                seq += 1;
                next += plan.interval;
            }
            fleet.step(&mut on_message, next);
            sample(&mut report, &fleet);
        }
        let expected = plan.ticks * subs.len() as u64;
        let drain = WallInstant::now() + DRAIN;
        while WallInstant::now() < drain {
            fleet.step(&mut on_message, WallInstant::now() + SWEEP);
            sample(&mut report, &fleet);
            if received.get() >= expected {
                break;
            }
        }
        report.finish_progress();
        report.elapsed = plan.start.elapsed();
        for l in latencies.borrow_mut().drain(..) {
            report.record(l);
        }
        report.expected = expected;
        report.delivered = seen.values().map(Seen::count).sum();
        report.misdelivered = misdelivered.get();
        let linger = CLOSE_LINGER / u32::try_from(fleet.drivers.len().max(1)).unwrap_or(1);
        for d in fleet.drivers.iter_mut() {
            report.sessions_ok += d.opened() as u64;
            report.sessions_failed += d.failed() as u64;
            report.packets_out += d.packets_out;
            report.packets_in += d.packets_in;
            let (ring_in, ring_out) = d.ring_totals();
            report.ring_in += ring_in;
            report.ring_out += ring_out;
            report.bytes_out += d.bytes_out;
            report.bytes_in += d.bytes_in;
            d.close_all(linger);
        }
        Ok(report)
    }
}

/// Latencies kept before they are recorded into the histograms.
const LATENCY_BATCH: usize = 1024;

/// The sequence numbers one subscriber received, as a bitmap.
struct Seen {
    stream: usize,
    bits: Vec<u64>,
}

impl Seen {
    fn new(stream: usize, words: usize) -> Seen {
        Seen {
            stream,
            bits: vec![0; words],
        }
    }

    /// How many sequence numbers arrived.
    fn count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Marks `seq`; answers whether it is new (and within the stream's length).
    fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = (usize::try_from(seq / 64).unwrap_or(usize::MAX), seq % 64);
        let Some(w) = self.bits.get_mut(word) else {
            return false;
        };
        let new = *w & (1 << bit) == 0;
        *w |= 1 << bit;
        new
    }
}

/// What a fanout does with a received message: (driver, session, message, receive time).
type OnMessage<'a> = dyn FnMut(usize, u32, &[u8], rtmfp::time::Instant) + 'a;

/// How often every driver is stepped, for its timers (delayed acknowledgements, keepalives);
/// between sweeps only the drivers with datagrams waiting (and the publisher's) are.
const SWEEP: Duration = Duration::from_millis(5);

/// The drivers of a fanout and what it takes to step only the busy ones.
struct Fleet {
    drivers: Vec<Driver>,
    /// Microseconds that move each driver's clock onto the first driver's.
    offsets: Vec<i128>,
    epoll: Epoll,
    ready: Vec<u64>,
    last_sweep: WallInstant,
}

impl Fleet {
    fn new(drivers: Vec<Driver>, offsets: Vec<i128>) -> Result<Fleet, LoadError> {
        let epoll = Epoll::new()?;
        for (k, d) in drivers.iter().enumerate() {
            epoll.add(d.fd(), k as u64)?;
        }
        Ok(Fleet {
            drivers,
            offsets,
            epoll,
            ready: Vec::new(),
            last_sweep: WallInstant::now(),
        })
    }

    /// One turn: the publisher's driver, those with datagrams waiting, and every driver once
    /// per [`SWEEP`]; receive times are moved onto the first driver's clock. When no datagram
    /// waits, it sleeps until one arrives, `until` (the next message to publish) or the next
    /// sweep, so that the loadgen's CPU time says how loaded it is.
    fn step(&mut self, on_message: &mut OnMessage<'_>, until: WallInstant) {
        let since_sweep = self.last_sweep.elapsed();
        if since_sweep >= SWEEP {
            self.last_sweep = WallInstant::now();
            for k in 0..self.drivers.len() {
                self.step_one(k, on_message);
            }
            return;
        }
        let wait = until
            .saturating_duration_since(WallInstant::now())
            .min(SWEEP - since_sweep);
        if self.epoll.wait(&mut self.ready, wait).is_err() {
            self.ready.clear();
        }
        self.step_one(0, on_message);
        let ready = std::mem::take(&mut self.ready);
        for &k in &ready {
            let k = usize::try_from(k).unwrap_or(usize::MAX);
            if k != 0 {
                self.step_one(k, on_message);
            }
        }
        self.ready = ready;
    }

    fn step_one(&mut self, k: usize, on_message: &mut OnMessage<'_>) {
        let offset = self.offsets.get(k).copied().unwrap_or(0);
        if let Some(d) = self.drivers.get_mut(k) {
            d.step(|h, _, m, now| {
                let micros = u64::try_from(i128::from(now.as_micros()) + offset).unwrap_or(0);
                on_message(k, h, m, rtmfp::time::Instant::from_micros(micros));
            });
        }
    }
}

/// `rendezvous`: P2P introductions through the server.
#[derive(Debug, Clone)]
pub struct RendezvousArgs {
    /// The server.
    pub server: SocketAddr,
    /// Peers connected to the server, each with an identity (a socket) of its own; one
    /// initiator asks the server for each of them by peer ID.
    pub peers: usize,
    /// How long the peers and then the introductions may take.
    pub timeout: Duration,
}

/// Connects `peers` peers to the server, then opens a P2P session to each of them from one
/// initiator by rendezvous (RFC 7016 §3.5.1.4–5: the server redirects the initiator to the
/// peer and forwards its IHello to the peer, which answers it directly). The latency is from
/// the initiator's first IHello to the P2P session's opening; the peers' own Diffie-Hellman
/// work and the initiator's happen in this process too, so the rate says what the loadgen's
/// core and the server's do together.
pub fn rendezvous(args: &RendezvousArgs) -> Result<Report, LoadError> {
    let bind = local_for(args.server);
    let url = format!("rtmfp://{}/", args.server);
    let mut peers = Vec::with_capacity(args.peers);
    for i in 0..args.peers {
        let mut p = Driver::peer(bind, 10_000 + i as u64)?;
        p.keep_messages = false;
        p.open(args.server, &url);
        peers.push(p);
    }
    let deadline = WallInstant::now() + args.timeout;
    while peers.iter().any(|p| p.opened() + p.failed() == 0) {
        if WallInstant::now() > deadline {
            return Err(LoadError::Stalled("peers connecting to the server"));
        }
        for p in &mut peers {
            p.step(|_, _, _, _| {});
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let ids: Vec<PeerId> = peers
        .iter()
        .filter(|p| p.opened() > 0)
        .filter_map(Driver::peer_id)
        .collect();
    let mut initiator = Driver::new(bind, 1, &FLASH_GROUPS)?;
    initiator.keep_messages = false;
    let mut report = Report::new("rendezvous");
    report.show_progress();
    let start = WallInstant::now();
    for &id in &ids {
        initiator.open_peer(args.server, id);
    }
    let deadline = start + args.timeout;
    while initiator.opened() + initiator.failed() < ids.len() && WallInstant::now() < deadline {
        initiator.step(|_, _, _, _| {});
        for p in &mut peers {
            p.step(|_, _, _, _| {});
        }
        report.sample(
            start.elapsed(),
            totals(&initiator, initiator.opened() as u64),
        );
        std::thread::sleep(Duration::from_micros(100));
    }
    report.finish_progress();
    report.elapsed = start.elapsed();
    for s in initiator.sessions.values() {
        if let (Some(a), Some(b)) = (s.started, s.opened) {
            report.record(b.saturating_duration_since(a));
        }
    }
    report.sessions_ok = initiator.opened() as u64;
    report.sessions_failed = (args.peers - initiator.opened()) as u64;
    report.packets_out = initiator.packets_out + peers.iter().map(|p| p.packets_out).sum::<u64>();
    report.packets_in = initiator.packets_in + peers.iter().map(|p| p.packets_in).sum::<u64>();
    report.bytes_out = initiator.bytes_out;
    report.bytes_in = initiator.bytes_in;
    let linger = CLOSE_LINGER / u32::try_from(args.peers.max(1)).unwrap_or(1);
    initiator.close_all(linger);
    for p in &mut peers {
        p.close_all(linger);
    }
    Ok(report)
}

/// `rpc`: calls and their round trips.
#[derive(Debug, Clone)]
pub struct RpcArgs {
    /// The server.
    pub server: SocketAddr,
    /// Sessions, each with one call in flight at a time.
    pub sessions: usize,
    /// How long to call.
    pub duration: Duration,
    /// The method (any answer counts: `_result` or `_error`).
    pub method: String,
    /// The application path.
    pub app: String,
    /// The DH groups offered (the server picks the strongest it shares).
    pub groups: Vec<DhGroup>,
    /// Send and receive through an AF_XDP socket on this interface (`--xdp IF`; the first
    /// socket only, for `fanout` and `publish`) instead of a kernel socket.
    pub xdp: Option<String>,
}

/// Each session calls `method` again as soon as the previous call is answered; reports calls
/// per second and the round-trip time of each call.
pub fn rpc(args: &RpcArgs) -> Result<Report, LoadError> {
    let mut d = driver(args.xdp.as_deref(), args.server, 3, &args.groups)?;
    let (sessions, flows) = connect_sessions(&mut d, args.server, &args.app, args.sessions)?;
    d.keep_messages = false;
    let mut report = Report::new("rpc");
    report.show_progress();
    // Per session: the transaction in flight and when it was sent.
    let mut in_flight: HashMap<u32, (f64, rtmfp::time::Instant)> = HashMap::new();
    let mut answers: Vec<(u32, f64, rtmfp::time::Instant)> = Vec::new();
    let start = WallInstant::now();
    let mut next_txn = 2.0;
    while start.elapsed() < args.duration {
        for &h in &sessions {
            if in_flight.contains_key(&h) {
                continue;
            }
            let Some(&nc) = flows.get(&h) else { continue };
            let now = d.now();
            if d.send(h, nc, &command(&args.method, next_txn, vec![]), None) {
                in_flight.insert(h, (next_txn, now));
                next_txn += 1.0;
            }
        }
        d.step(|h, _, m, now| {
            if let Some(txn) = transaction(m) {
                answers.push((h, txn, now));
            }
        });
        for (h, txn, at) in answers.drain(..) {
            if let Some(&(sent_txn, sent_at)) = in_flight.get(&h) {
                if sent_txn == txn {
                    in_flight.remove(&h);
                    report.delivered += 1;
                    report.record(at.saturating_duration_since(sent_at));
                }
            }
        }
        let done = report.delivered;
        report.sample(start.elapsed(), totals(&d, done));
    }
    report.finish_progress();
    report.elapsed = start.elapsed();
    report.expected = report.delivered + in_flight.len() as u64;
    report.sessions_ok = d.opened() as u64;
    report.sessions_failed = d.failed() as u64;
    report.packets_out = d.packets_out;
    report.packets_in = d.packets_in;
    (report.ring_in, report.ring_out) = d.ring_totals();
    report.bytes_out = d.bytes_out;
    report.bytes_in = d.bytes_in;
    d.close_all(CLOSE_LINGER);
    Ok(report)
}

/// The transaction ID of an answer (`_result` or `_error`).
fn transaction(message: &[u8]) -> Option<f64> {
    let tc = rtmfp::flash::message::TcMessage::parse(message).ok()?;
    let c = rtmfp::flash::command::Command::parse(&tc).ok()?;
    matches!(c.name.as_ref(), "_result" | "_error").then_some(c.transaction_id)
}

/// `churn`: sessions arriving and leaving.
#[derive(Debug, Clone)]
pub struct ChurnArgs {
    /// The server.
    pub server: SocketAddr,
    /// New sessions per second.
    pub rate: f64,
    /// How long each session stays once connected, before it closes.
    pub lifetime: Duration,
    /// How long new sessions keep arriving.
    pub duration: Duration,
    /// The application path.
    pub app: String,
    /// The DH groups offered.
    pub groups: Vec<DhGroup>,
    /// Send and receive through an AF_XDP socket on this interface (`--xdp IF`; the first
    /// socket only, for `fanout` and `publish`) instead of a kernel socket.
    pub xdp: Option<String>,
}

/// One churning session's course.
struct Life {
    begun: rtmfp::time::Instant,
    connecting: bool,
    close_at: Option<WallInstant>,
}

/// How long a churn keeps a closed session's state for its last packets.
const FORGET_AFTER: Duration = Duration::from_secs(1);

/// Opens sessions at `rate`, connects each NetConnection, keeps it `lifetime`, closes it;
/// reports the time from the first IHello to `NetConnection.Connect.Success`, and sessions
/// that failed or were refused.
pub fn churn(args: &ChurnArgs) -> Result<Report, LoadError> {
    let mut d = driver(args.xdp.as_deref(), args.server, 4, &args.groups)?;
    let url = format!("rtmfp://{}/{}", args.server, args.app);
    let mut report = Report::new("churn");
    report.show_progress();
    let mut lives: HashMap<u32, Life> = HashMap::new();
    let mut closing: VecDeque<(u32, WallInstant)> = VecDeque::new();
    let (mut started, mut connected, mut failed) = (0u64, 0u64, 0u64);
    let start = WallInstant::now();
    // Sessions still opening when the arrivals stop get the stage limit to finish.
    let end = start + args.duration + args.lifetime + STAGE_LIMIT;
    while WallInstant::now() < end {
        let elapsed = start.elapsed();
        if elapsed < args.duration {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let due = (elapsed.as_secs_f64() * args.rate) as u64 + 1;
            while started < due {
                let h = d.open(args.server, &url);
                let begun = d.now();
                lives.insert(
                    h,
                    Life {
                        begun,
                        connecting: false,
                        close_at: None,
                    },
                );
                started += 1;
            }
        } else if lives.is_empty() {
            break;
        }
        d.step(|_, _, _, _| {});
        let now = d.now();
        let wall = WallInstant::now();
        let handles: Vec<u32> = lives.keys().copied().collect();
        for h in handles {
            let Some(state) = d.sessions.get(&h) else {
                continue;
            };
            let (opened, gone) = (state.opened.is_some(), state.failed);
            let Some(life) = lives.get_mut(&h) else {
                continue;
            };
            if gone || rejected(&d, h).is_some() {
                failed += 1;
                lives.remove(&h);
                d.close(h);
                closing.push_back((h, wall));
                continue;
            }
            if opened && !life.connecting {
                life.connecting = true;
                if let Some(nc) = d.open_flow(h, 0) {
                    d.send(h, nc, &connect_message(&args.app), None);
                }
            }
            if life.close_at.is_none() && has_code(&d, h, "NetConnection.Connect.Success") {
                connected += 1;
                report.record(now.saturating_duration_since(life.begun));
                life.close_at = Some(wall + args.lifetime);
            }
            if life.close_at.is_some_and(|t| t <= wall) {
                lives.remove(&h);
                d.close(h);
                closing.push_back((h, wall));
            }
        }
        while closing.front().is_some_and(|c| c.1 + FORGET_AFTER <= wall) {
            if let Some((h, _)) = closing.pop_front() {
                d.forget(h);
            }
        }
        report.sample(start.elapsed(), totals(&d, connected));
        std::thread::sleep(Duration::from_micros(200));
    }
    report.finish_progress();
    report.elapsed = start.elapsed();
    report.expected = started;
    report.delivered = connected;
    report.lost = started - connected.min(started);
    report.sessions_ok = connected;
    report.sessions_failed = failed;
    report.packets_out = d.packets_out;
    report.packets_in = d.packets_in;
    (report.ring_in, report.ring_out) = d.ring_totals();
    report.bytes_out = d.bytes_out;
    report.bytes_in = d.bytes_in;
    d.close_all(CLOSE_LINGER);
    if connected == 0 {
        return Err(handshake_error(&d));
    }
    Ok(report)
}

/// `garbage`: malformed, replayed and truncated datagrams at a given rate, while one session
/// keeps calling the server.
#[derive(Debug, Clone)]
pub struct GarbageArgs {
    /// The server.
    pub server: SocketAddr,
    /// Garbage datagrams per second.
    pub rate: f64,
    /// How long.
    pub duration: Duration,
    /// The application path.
    pub app: String,
    /// The DH groups offered.
    pub groups: Vec<DhGroup>,
}

/// Longest garbage datagram: what fits an Ethernet MTU.
const MAX_GARBAGE_LEN: usize = 1400;
/// The session's datagrams kept to replay and cut.
const KEPT_FOR_REPLAY: usize = 32;

/// Sends garbage at `rate` from a second socket and from the session's own: random bytes,
/// startup-shaped datagrams (session ID 0, block-aligned) with random contents, replays of the
/// session's own datagrams from another address, and truncated copies from the same address.
/// Meanwhile the session calls the server, one call in flight; the report's latency is the
/// call round trip, `lost` the calls not answered, and `packets_out` the garbage sent.
pub fn garbage(args: &GarbageArgs) -> Result<Report, LoadError> {
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    let mut d = Driver::new(local_for(args.server), 5, &args.groups)?;
    d.keep_sent = KEPT_FOR_REPLAY;
    let (sessions, flows) = connect_sessions(&mut d, args.server, &args.app, 1)?;
    let h = sessions[0];
    let nc = *flows
        .get(&h)
        .ok_or(LoadError::Stalled("NetConnection flow"))?;
    d.keep_messages = false;
    let junk = std::net::UdpSocket::bind(local_for(args.server))?;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(6);
    let mut report = Report::new("garbage");
    report.show_progress();
    let (mut sent, mut calls, mut answered) = (0u64, 0u64, 0u64);
    let mut in_flight: Option<(f64, rtmfp::time::Instant)> = None;
    let mut answers: Vec<(f64, rtmfp::time::Instant)> = Vec::new();
    let mut next_txn = 2.0;
    let mut buf = vec![0u8; MAX_GARBAGE_LEN];
    let start = WallInstant::now();
    while start.elapsed() < args.duration {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let due = (start.elapsed().as_secs_f64() * args.rate) as u64;
        while sent < due {
            let len = 1 + (rng.next_u32() as usize) % MAX_GARBAGE_LEN;
            let kept = (!d.sent.is_empty())
                .then(|| d.sent[(rng.next_u32() as usize) % d.sent.len()].clone());
            match (sent % 4, kept) {
                (2, Some(replay)) => {
                    let _ = junk.send_to(&replay, args.server);
                }
                (3, Some(mut cut)) => {
                    cut.truncate((rng.next_u32() as usize) % cut.len().max(1));
                    d.send_raw(args.server, &cut);
                }
                (1, _) => {
                    // A startup datagram (session ID 0) of whole blocks, contents random.
                    let blocks = 1 + len / rtmfp::crypto::CIPHER_BLOCK_LEN;
                    let n = (rtmfp::crypto::SSID_LEN + blocks * rtmfp::crypto::CIPHER_BLOCK_LEN)
                        .min(MAX_GARBAGE_LEN);
                    rng.fill_bytes(&mut buf[..n]);
                    buf[..rtmfp::crypto::SSID_LEN].fill(0);
                    let _ = junk.send_to(&buf[..n], args.server);
                }
                _ => {
                    rng.fill_bytes(&mut buf[..len]);
                    let _ = junk.send_to(&buf[..len], args.server);
                }
            }
            sent += 1;
        }
        if in_flight.is_none() {
            let now = d.now();
            if d.send(h, nc, &command("updraftLoadgen", next_txn, vec![]), None) {
                in_flight = Some((next_txn, now));
                next_txn += 1.0;
                calls += 1;
            }
        }
        d.step(|_, _, m, now| {
            if let Some(txn) = transaction(m) {
                answers.push((txn, now));
            }
        });
        for (txn, at) in answers.drain(..) {
            if let Some((sent_txn, sent_at)) = in_flight {
                #[allow(clippy::float_cmp)]
                if sent_txn == txn {
                    in_flight = None;
                    answered += 1;
                    report.record(at.saturating_duration_since(sent_at));
                }
            }
        }
        let t = Totals {
            packets_out: sent + d.packets_out,
            packets_in: d.packets_in,
            done: answered,
        };
        report.sample(start.elapsed(), t);
    }
    report.finish_progress();
    report.elapsed = start.elapsed();
    // The call in flight when time is up is not counted.
    let settled = calls - u64::from(in_flight.is_some());
    report.expected = settled;
    report.delivered = answered;
    report.lost = settled - answered.min(settled);
    let alive = d.sessions.get(&h).is_some_and(|s| !s.failed);
    report.sessions_ok = u64::from(alive);
    report.sessions_failed = u64::from(!alive);
    report.packets_out = sent;
    report.packets_in = d.packets_in;
    (report.ring_in, report.ring_out) = d.ring_totals();
    report.bytes_out = d.bytes_out;
    report.bytes_in = d.bytes_in;
    d.close_all(CLOSE_LINGER);
    Ok(report)
}

/// A driver's totals for [`Report::sample`], with `done` things done so far.
fn totals(d: &Driver, done: u64) -> Totals {
    Totals {
        packets_out: d.packets_out,
        packets_in: d.packets_in,
        done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_frame_starts_every_group_of_pictures() {
        // 2 Mbit/s of 1100-byte messages: one every 4.4 ms, so 455 per 2 s.
        let interval = Duration::from_secs_f64(1100.0 * 8.0 / 2_000_000.0);
        let gop = gop_length(Duration::from_secs(2), interval);
        assert_eq!(gop, 455);
        let keys: Vec<u64> = (0..2000)
            .filter(|&seq| video_header(seq, gop) == &VIDEO_KEY)
            .collect();
        assert_eq!(keys, [0, 455, 910, 1365, 1820]);
        // Zero: the first message only.
        let never = gop_length(Duration::ZERO, interval);
        assert_eq!(video_header(0, never), &VIDEO_KEY);
        assert!((1..100_000).all(|seq| video_header(seq, never) == &VIDEO_INTER));
        // A key frame interval shorter than one message: every message is one.
        let all = gop_length(Duration::from_millis(1), interval);
        assert!((0..100).all(|seq| video_header(seq, all) == &VIDEO_KEY));
    }
}
