//! The control-plane service: one `SOCK_SEQPACKET` link per data-plane worker, the handshake
//! state machine, the Diffie-Hellman pool, session-ID allocation, and the NetConnection layer
//! (which is also the directory of live sessions and their peer IDs). It runs the same whether it is its own process (the default) or
//! threads inside the data-plane process (`--single-process`).
//!
//! One reader thread per link decodes messages into a single queue; this thread is the only
//! one that changes state, so nothing here takes a lock.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rtmfp::crypto::{DhGroup, NegotiationPolicy};
use rtmfp::startup::components::build_fingerprint_epd;
use rtmfp::startup::responder::{Responder, ResponderConfig};
use rtmfp::time::Instant;
use rtmfp::wire::{Address, AddressOrigin};
use socket2::Socket;

use crate::apps::{AppAction, Applications, MANAGE_PERIOD};
use crate::dh::{DhPool, Done, Job};
use crate::groups::{Groups, Introduction, Member};
use crate::handshake::{Action, HandshakeLimits, HandshakeStats, Handshakes, Rendezvous};
use crate::ids::{IdAllocator, SessionIdParts, SERVER_SESSION};
use crate::ipc::{Down, Up, IPC_VERSION, MAX_GROUP_MEMBERS, MAX_MESSAGE};
use crate::netconn::{NetConnections, PeerLocation};
use crate::streams::Routed;

/// How often the service logs its counters when they changed.
const STATS_PERIOD: Duration = Duration::from_secs(10);
/// How often the service reports its counters to worker 0 (for the metrics endpoint).
const REPORT_PERIOD: Duration = Duration::from_secs(1);

/// Names of the values in a [`Down::Stats`] report, in order: the handshake counters (see
/// [`HandshakeStats`]), then levels: sessions, the service's input queue, the
/// Diffie-Hellman queue, and counters of messages dropped towards workers and of malformed
/// messages from them.
pub const CONTROL_STATS: [&str; 21] = [
    "handshake_ihello",
    "handshake_rhello",
    "handshake_rendezvous",
    "handshake_introduced",
    "handshake_rendezvous_unknown",
    "handshake_amplification_refused",
    "handshake_iikeying",
    "handshake_cookie_change",
    "handshake_failed_cookie",
    "handshake_failed_keying",
    "handshake_failed_rate_limited",
    "handshake_failed_max_sessions",
    "handshake_failed_busy",
    "handshake_completed",
    "handshake_repeated",
    "handshake_malformed",
    "sessions",
    "input_queue",
    "dh_queue",
    "link_dropped",
    "link_malformed",
];
/// How many of [`CONTROL_STATS`] are levels rather than totals (they follow the totals).
pub const CONTROL_STATS_LEVELS: std::ops::Range<usize> = 16..19;
/// Most messages waiting for room on one worker's link; more are dropped and counted.
const MAX_OUTBOX: usize = 262_144;
/// Most bytes waiting for room on one worker's link.
const MAX_OUTBOX_BYTES: usize = 256 << 20;
/// How soon the service retries a full link.
const OUTBOX_RETRY: Duration = Duration::from_millis(1);
/// Capacity of the queue from link readers and DH threads to the service thread.
const INPUT_QUEUE: usize = 65_536;

/// Control-plane settings.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The server identity: the certificate and cookie secret are derived from it, so a
    /// restarted control plane keeps the same peer ID and honours cookies already given.
    pub identity_seed: [u8; 32],
    /// Seed for Diffie-Hellman key pairs.
    pub dh_seed: [u8; 32],
    /// Threads doing Diffie-Hellman.
    pub dh_threads: usize,
    /// Handshake limits.
    pub limits: HandshakeLimits,
    /// Keepalive periods sent after `setPeerInfo`, in milliseconds (server, peer).
    pub keepalive_ms: (u32, u32),
    /// Where stream numbering starts (random per start, so that a restarted control plane does
    /// not reuse the numbers of streams the workers still serve).
    pub first_stream: u32,
}

/// The responder an identity seed makes: every DH group, Flash-compatible crypto options.
pub fn responder_for(identity_seed: [u8; 32]) -> Responder {
    let mut rng = ChaCha20Rng::from_seed(identity_seed);
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let mut randomness = [0u8; rtmfp::startup::components::CERT_RANDOMNESS_LEN];
    rng.fill_bytes(&mut randomness);
    Responder::new(
        ResponderConfig {
            groups: DhGroup::ALL.to_vec(),
            policy: NegotiationPolicy::FLASH_COMPATIBLE,
        },
        secret,
        &randomness,
        Instant::ZERO,
    )
}

enum Input {
    Up(usize, Up),
    Malformed,
    LinkDown(usize),
    Keyed(Done),
    /// A Diffie-Hellman result waits in the pool's queue.
    Wake,
}

struct Link {
    socket: Socket,
    up: bool,
    ids: IdAllocator,
    dropped: u64,
    /// Messages waiting for room on the link.
    outbox: VecDeque<Vec<u8>>,
    /// Bytes in `outbox`.
    outbox_bytes: usize,
}

impl Link {
    /// Sends what waits; answers whether the outbox is empty now.
    fn flush(&mut self) -> bool {
        while let Some(front) = self.outbox.front() {
            match self.socket.send_with_flags(front, libc_flags()) {
                Ok(_) => {
                    self.outbox_bytes -= front.len();
                    self.outbox.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => {
                    // The worker's end is gone; its reader reports the link down.
                    self.dropped += self.outbox.len() as u64;
                    self.outbox.clear();
                    self.outbox_bytes = 0;
                }
            }
        }
        true
    }
}

/// Serves `links` (link `i` belongs to worker `i`) until every link has closed.
pub fn run(
    links: Vec<Socket>,
    config: ServiceConfig,
    apps: Box<dyn Applications>,
) -> io::Result<()> {
    // The handshake clock is Unix time, so that cookies given by a control process before a
    // restart stay valid in the next one (both derive the same secret from the identity).
    let now = || {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Instant::from_micros(u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX))
    };
    let responder = Arc::new(responder_for(config.identity_seed));
    let (tx, rx) = crossbeam_channel::bounded::<Input>(INPUT_QUEUE);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
    let forward = {
        let tx = tx.clone();
        // Only a wake-up, never blocking: the results wait in `done_rx`, which the service
        // loop drains, so a full input queue (or a shutdown) cannot stall a DH thread.
        Arc::new(move || {
            let _ = tx.try_send(Input::Wake);
        }) as Arc<dyn Fn() + Send + Sync>
    };
    let pool = DhPool::start(
        config.dh_threads,
        Arc::clone(&responder),
        &DhGroup::ALL,
        config.dh_seed,
        done_tx,
        Arc::clone(&forward),
    )?;
    let mut state = Vec::new();
    for (i, socket) in links.into_iter().enumerate() {
        let reader = socket.try_clone()?;
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("link-{i}"))
            .spawn(move || read_link(i, reader, tx))?;
        state.push(Link {
            socket,
            up: true,
            ids: IdAllocator::new(u8::try_from(i).unwrap_or(u8::MAX)),
            dropped: 0,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
        });
    }
    drop(tx);
    let mut apps = apps;
    // The scripts' sockets wake the loop the same way.
    apps.set_waker(forward);
    let mut netconn = NetConnections::new(apps, config.keepalive_ms);
    netconn.number_streams_from(config.first_stream);
    let mut service = Service {
        handshakes: Handshakes::new(responder, config.limits),
        netconn,
        groups: Groups::new(u64::from_le_bytes(
            config.dh_seed[..8].try_into().unwrap_or_default(),
        )),
        links: state,
        pool,
        out_buf: Vec::with_capacity(MAX_MESSAGE),
        actions: Vec::new(),
        malformed: 0,
    };
    tracing::info!(
        links = service.links.len(),
        peer_id = %hex(&service.handshakes.responder().fingerprint().0),
        "control plane serving"
    );
    let mut last_stats = (std::time::Instant::now(), HandshakeStats::default());
    let mut last_report = std::time::Instant::now();
    let mut last_manage = std::time::Instant::now();
    loop {
        if last_manage.elapsed() >= MANAGE_PERIOD {
            last_manage = std::time::Instant::now();
            let routed = service.netconn.manage();
            service.send_routed(routed);
        }
        if last_report.elapsed() >= REPORT_PERIOD {
            last_report = std::time::Instant::now();
            let values = service.report(rx.len());
            service.send(0, &Down::Stats { values });
        }
        let wait = if service.flush() {
            REPORT_PERIOD
        } else {
            OUTBOX_RETRY
        };
        match rx.recv_timeout(wait) {
            Ok(input) => service.handle(now(), input),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
        let routed = service.netconn.poll_apps();
        service.send_routed(routed);
        if service.links.iter().all(|l| !l.up) {
            break;
        }
        if last_stats.0.elapsed() >= STATS_PERIOD && service.handshakes.stats() != last_stats.1 {
            let s = service.handshakes.stats();
            tracing::info!(
                sessions = service.netconn.len(),
                completed = s.completed,
                ihello = s.ihello,
                failed_cookie = s.failed_cookie,
                failed_keying = s.failed_keying,
                rate_limited = s.failed_rate_limited,
                busy = s.failed_busy,
                dh_queue = service.pool.queued(),
                "handshakes"
            );
            last_stats = (std::time::Instant::now(), s);
        }
        // Drain DH results that arrived without a wake-up.
        while let Ok(d) = done_rx.try_recv() {
            service.handle(now(), Input::Keyed(d));
        }
    }
    tracing::info!("every data-plane link closed: control plane exits");
    Ok(())
}

fn read_link(i: usize, socket: Socket, tx: Sender<Input>) {
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let mut reader = &socket;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let input = match Up::decode(&buf[..n]) {
                    Ok(m) => Input::Up(i, m),
                    Err(e) => {
                        tracing::debug!(link = i, error = %e, "bad message from a worker");
                        Input::Malformed
                    }
                };
                if tx.send(input).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = tx.send(Input::LinkDown(i));
}

struct Service {
    handshakes: Handshakes,
    netconn: NetConnections,
    groups: Groups,
    links: Vec<Link>,
    pool: DhPool,
    out_buf: Vec<u8>,
    actions: Vec<Action>,
    malformed: u64,
}

impl Service {
    /// The values of [`CONTROL_STATS`].
    fn report(&self, input_queue: usize) -> Vec<u64> {
        let h = self.handshakes.stats();
        let mut v: Vec<u64> = h.fields().iter().map(|f| f.1).collect();
        v.push(self.live() as u64);
        v.push(input_queue as u64);
        v.push(self.pool.queued() as u64);
        v.push(self.links.iter().map(|l| l.dropped).sum());
        v.push(self.malformed);
        v
    }

    fn live(&self) -> usize {
        self.links.iter().map(|l| l.ids.live()).sum()
    }

    /// Sends a message to a worker, in order. When the link is full, the message waits in the
    /// link's bounded outbox (flushed by the service loop): a busy worker delays its answers,
    /// it does not lose them, and the control plane never blocks on it.
    fn send(&mut self, link: usize, msg: &Down) {
        let Some(l) = self.links.get_mut(link) else {
            return;
        };
        if !l.up {
            return;
        }
        self.out_buf.clear();
        if let Err(e) = msg.encode(&mut self.out_buf) {
            // A message over the limits (an application's call with a huge argument).
            tracing::warn!(link, error = %e, "message to a worker not sent");
            l.dropped += 1;
            return;
        }
        if l.flush()
            && l.socket
                .send_with_flags(&self.out_buf, libc_flags())
                .is_ok()
        {
            return;
        }
        if l.outbox.len() >= MAX_OUTBOX || l.outbox_bytes + self.out_buf.len() > MAX_OUTBOX_BYTES {
            l.dropped += 1;
            return;
        }
        l.outbox_bytes += self.out_buf.len();
        l.outbox.push_back(self.out_buf.clone());
    }

    /// Sends each message to its worker, in order, then applies the NetGroup memberships the
    /// applications asked for meanwhile (`cumulus.groups:join`, `member:release()`).
    fn send_routed(&mut self, routed: Vec<Routed>) {
        for (worker, d) in &routed {
            self.send(*worker, d);
        }
        for action in self.netconn.take_group_actions() {
            let told = match action {
                AppAction::GroupJoin {
                    member,
                    peer_id,
                    group,
                } => self.groups.join(
                    Member {
                        session: SERVER_SESSION,
                        flow: member,
                        peer_id,
                    },
                    group,
                ),
                AppAction::GroupRelease { member } => self.groups.leave(SERVER_SESSION, member),
                _ => Vec::new(),
            };
            self.introduce_members(told);
        }
    }

    /// Flushes every link's outbox; answers whether all are empty.
    fn flush(&mut self) -> bool {
        let mut empty = true;
        for l in &mut self.links {
            // Every link is flushed, whether or not an earlier one is still full.
            empty &= l.flush();
        }
        empty
    }

    fn link_of(session: u32) -> usize {
        usize::from(SessionIdParts::of(session).worker)
    }

    fn handle(&mut self, now: Instant, input: Input) {
        // Whether IHellos go to the applications first follows what they define.
        self.handshakes
            .ask_applications(self.netconn.wants_handshakes());
        match input {
            Input::Up(link, msg) => self.on_up(now, link, msg),
            Input::Malformed => self.malformed += 1,
            Input::Wake => {}
            Input::LinkDown(link) => {
                if let Some(l) = self.links.get_mut(link) {
                    l.up = false;
                }
            }
            Input::Keyed(done) => {
                // No ID for a worker whose link is down: its Install could not be delivered.
                let session_id = self
                    .links
                    .get_mut(done.link)
                    .filter(|l| l.up)
                    .and_then(|l| l.ids.allocate());
                let keyed = self
                    .handshakes
                    .complete(now, &done.request, done.result, session_id);
                match (keyed, session_id) {
                    (Some(k), Some(id)) => {
                        self.netconn.open(id, k.peer_id, k.address);
                        let rikeying = k.rikeying;
                        let to = k.address;
                        self.send(
                            done.link,
                            &Down::Install {
                                session_id: id,
                                far_session_id: k.far_session_id,
                                address: k.address,
                                peer_id: k.peer_id,
                                secrets: k.secrets,
                            },
                        );
                        self.transmit(done.link, to, rikeying);
                    }
                    (None, Some(id)) => {
                        if let Some(l) = self.links.get_mut(done.link) {
                            l.ids.free(id);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn on_up(&mut self, now: Instant, link: usize, msg: Up) {
        match msg {
            Up::Hello {
                version, worker, ..
            } => {
                tracing::debug!(link, worker, version, "worker linked");
                self.send(
                    link,
                    &Down::Welcome {
                        version: u16::from(IPC_VERSION),
                    },
                );
            }
            Up::Resync { sessions } => {
                for s in sessions {
                    let Some(l) = self.links.get_mut(link) else {
                        return;
                    };
                    if l.ids.claim(s.session_id) {
                        self.netconn.open(s.session_id, s.peer_id, s.address);
                    }
                }
            }
            Up::NetStates { entries } => {
                for e in &entries {
                    self.netconn.restore_net(e);
                }
            }
            Up::Streams { entries } => {
                for e in &entries {
                    self.netconn.restore_stream(e);
                }
            }
            Up::Startup { from, mut datagram } => {
                let live = self.live();
                let mut actions = std::mem::take(&mut self.actions);
                self.handshakes
                    .on_startup(now, live, from, &mut datagram, &mut actions);
                for a in actions.drain(..) {
                    match a {
                        Action::Transmit { to, datagram } => self.transmit(link, to, datagram),
                        Action::Compute(request) => {
                            if let Err(job) = self.pool.submit(Job { link, request }) {
                                self.handshakes.busy(&job.request);
                            }
                        }
                        Action::Rendezvous(request) => self.introduce(now, link, request),
                        Action::Hello {
                            from,
                            url,
                            tag,
                            cookie,
                            budget,
                            attempts,
                        } => {
                            // The applications may send the client elsewhere (Cumulus's
                            // `onHandshake`; the first address is marked public).
                            let elsewhere = self.netconn.handshake(from, &url, attempts);
                            if elsewhere.is_empty() {
                                if let Some(rhello) =
                                    self.handshakes.rhello(now, from, &tag, &cookie, budget)
                                {
                                    self.transmit(link, from, rhello);
                                }
                            } else {
                                tracing::debug!(%from, url, attempts, redirected = elsewhere.len(), "IHello redirected by the applications");
                                self.redirect(now, link, from, &tag, &elsewhere, budget);
                            }
                        }
                    }
                }
                self.actions = actions;
            }
            Up::Message {
                session_id,
                flow,
                stream_id,
                data,
            } => {
                let out = self.netconn.on_message(session_id, flow, stream_id, &data);
                self.send_routed(out);
            }
            Up::Qos { entries } => self.netconn.qos(&entries),
            Up::Timings { entries } => self.netconn.timings(&entries),
            Up::Media {
                session_id,
                stream,
                message,
            } => {
                let out = self.netconn.media_event(session_id, stream, &message);
                self.send_routed(out);
            }
            Up::GroupJoin {
                session_id,
                flow,
                group_id,
                restored,
            } => {
                // Only a session the control plane knows (it has a peer ID) joins.
                let Some(peer_id) = self.netconn.peer_id(session_id) else {
                    return;
                };
                // A flow joining again leaves its group first.
                if let Some(old) = self.groups.group_of(session_id, flow) {
                    self.group_event(session_id, &old, false, false);
                }
                let told = self.groups.join(
                    Member {
                        session: session_id,
                        flow,
                        peer_id,
                    },
                    group_id,
                );
                tracing::debug!(session = session_id, group = %hex(&group_id), told = told.len(), restored, "NetGroup join");
                // A restored membership was answered before the restart.
                if !restored {
                    self.introduce_members(told);
                }
                if self.groups.group_of(session_id, flow) == Some(group_id) {
                    self.group_event(session_id, &group_id, true, restored);
                }
            }
            Up::GroupLeave { session_id, flow } => {
                if let Some(group) = self.groups.group_of(session_id, flow) {
                    self.group_event(session_id, &group, false, false);
                }
                let told = self.groups.leave(session_id, flow);
                self.introduce_members(told);
            }
            Up::Closed {
                session_id,
                failure,
            } => {
                // Why it failed first (`onFailed`, as Cumulus tells it when the session fails,
                // before it ends), then its groups (`onUnjoinGroup` while the client is still
                // known), then the NetConnection (`onDisconnection`).
                if let Some(failure) = failure {
                    let out = self.netconn.failed(session_id, failure);
                    self.send_routed(out);
                }
                for group in self.groups.groups_of(session_id) {
                    self.group_event(session_id, &group, false, false);
                }
                let told = self.groups.session_closed(session_id);
                self.introduce_members(told);
                let out = self.netconn.closed(session_id);
                self.send_routed(out);
                if let Some(l) = self.links.get_mut(Self::link_of(session_id)) {
                    l.ids.free(session_id);
                }
            }
        }
    }
}

impl Service {
    /// Tells the applications of a NetGroup join or leave, and sends what they asked for.
    fn group_event(&mut self, session: u32, group: &[u8; 32], joined: bool, restored: bool) {
        let out = self.netconn.group_event(session, group, joined, restored);
        self.send_routed(out);
    }

    /// Sends `datagram` to `to` from worker `link`'s socket.
    fn transmit(&mut self, link: usize, to: SocketAddr, datagram: Vec<u8>) {
        self.send(link, &Down::Transmit { to, datagram });
    }

    /// Sends the initiator at `from` a Redirect to `addresses` (the first marked public, as
    /// Cumulus writes them) within `budget`; answers whether it went.
    fn redirect(
        &mut self,
        now: Instant,
        link: usize,
        from: SocketAddr,
        tag: &[u8],
        addresses: &[SocketAddr],
        budget: usize,
    ) -> bool {
        let list = redirect_list(addresses);
        match self.handshakes.redirect(now, from, tag, &list, budget) {
            Some(datagram) => {
                self.transmit(link, from, datagram);
                true
            }
            None => false,
        }
    }

    /// Tells group members about others (digest §1.14), on their `GC` flows.
    fn introduce_members(&mut self, told: Vec<Introduction>) {
        for t in told {
            for peers in t.peers.chunks(MAX_GROUP_MEMBERS) {
                self.send(
                    Self::link_of(t.session),
                    &Down::GroupMembers {
                        session_id: t.session,
                        flow: t.flow,
                        peers: peers.to_vec(),
                    },
                );
            }
        }
    }

    /// P2P rendezvous (RFC 7016 §3.5.1.4–§3.5.1.5, digest §1.13): the initiator at `from`
    /// looks for `peer_id`. If that peer is connected, the initiator gets a Redirect to the
    /// peer's addresses (the one its session comes from first, then those of its
    /// `setPeerInfo`), and the peer gets the IHello forwarded inside its session, so that it
    /// answers the initiator directly and opens its NAT to it. An unknown peer gets no answer,
    /// as in Cumulus; neither does a client looking for itself.
    fn introduce(&mut self, now: Instant, link: usize, request: Rendezvous) {
        let Rendezvous {
            from,
            peer_id,
            tag,
            budget,
            attempts,
        } = request;
        let Some(peer) = self.netconn.find_peer(&peer_id) else {
            self.handshakes.unknown_peer();
            // The applications may send the initiator elsewhere.
            let elsewhere = self.netconn.rendezvous_unknown(&peer_id);
            tracing::debug!(%from, peer = %hex(&peer_id), redirected = elsewhere.len(), "rendezvous for a peer not connected here");
            if !elsewhere.is_empty() {
                self.redirect(now, link, from, &tag, &elsewhere, budget);
            }
            return;
        };
        if peer.observed == from {
            tracing::debug!(%from, "a client looks for itself");
            return;
        }
        let addresses: Vec<SocketAddr> = std::iter::once(peer.observed)
            .chain(
                peer.reported
                    .iter()
                    .copied()
                    .filter(|a| *a != peer.observed && !a.ip().is_unspecified()),
            )
            .collect();
        if !self.redirect(now, link, from, &tag, &addresses, budget) {
            return;
        }
        self.handshakes.introduced();
        let (reply_to, reply_public) = reply_address(
            from,
            self.netconn.find_by_address(from).as_ref(),
            &peer,
            attempts,
        );
        tracing::debug!(%from, %reply_to, attempts, session = peer.session, peer = %peer.observed, "P2P introduction");
        self.send(
            Self::link_of(peer.session),
            &Down::ForwardIHello {
                session_id: peer.session,
                epd: build_fingerprint_epd(&peer_id),
                reply_to,
                reply_public,
                tag,
            },
        );
    }
}

/// Where the introduced peer answers an initiator at `from` (whose own session with this
/// server, if it has one, is `initiator`) on its `attempts`-th request: the address the
/// request came from, unless the initiator has a session here from the peer's public IP
/// address (one NAT, perhaps without hairpinning). Then, as Cumulus does, its addresses in
/// turn, starting at its first reported one: only addresses of a local network
/// ([`local_network`]), so that a client cannot have peers send to any address it reports.
/// Answers the address and whether it is the public one.
fn reply_address(
    from: SocketAddr,
    initiator: Option<&PeerLocation>,
    peer: &PeerLocation,
    attempts: u32,
) -> (SocketAddr, bool) {
    let Some(a) = initiator else {
        return (from, true);
    };
    if a.observed.ip() != peer.observed.ip() {
        return (from, true);
    }
    let candidates: Vec<SocketAddr> = std::iter::once(a.observed)
        .chain(
            a.reported
                .iter()
                .copied()
                .filter(|r| *r != a.observed && local_network(r.ip(), a.observed.ip())),
        )
        .collect();
    let index = attempts.max(1) as usize % candidates.len();
    (candidates[index], index == 0)
}

/// Whether `reported` is an address of a local network a client behind `public` may have:
/// private IPv4 (RFC 1918), shared (RFC 6598) or link-local ones, unique-local or link-local
/// IPv6 ones, and loopback ones for a client whose public address is itself loopback.
fn local_network(reported: IpAddr, public: IpAddr) -> bool {
    if reported.is_loopback() {
        return public.is_loopback();
    }
    match reported {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_link_local()
                || u32::from(v4) & SHARED_ADDRESS_MASK == u32::from(SHARED_ADDRESS_SPACE)
        }
        IpAddr::V6(v6) => v6.is_unique_local() || v6.is_unicast_link_local(),
    }
}

/// The shared address space of carrier-grade NATs, 100.64.0.0/10 (RFC 6598 §7).
const SHARED_ADDRESS_SPACE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// The netmask of [`SHARED_ADDRESS_SPACE`] (/10).
const SHARED_ADDRESS_MASK: u32 = !(u32::MAX >> 10);

/// Addresses the applications gave for a Redirect, the first marked public as Cumulus writes
/// them.
fn redirect_list(addresses: &[SocketAddr]) -> Vec<Address> {
    addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let origin = if i == 0 {
                AddressOrigin::Observed
            } else {
                AddressOrigin::Local
            };
            Address::new(*a, origin)
        })
        .collect()
}

/// `MSG_DONTWAIT | MSG_NOSIGNAL`: never block on a worker, never die of SIGPIPE.
fn libc_flags() -> i32 {
    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::MAX_STATS;

    #[test]
    fn the_reply_address_follows_cumulus() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let location = |observed: &str, reported: &[&str]| PeerLocation {
            session: 1,
            observed: at(observed),
            reported: reported.iter().map(|r| at(r)).collect(),
        };
        let peer = location("203.0.113.5:1000", &["10.0.0.5:1000"]);
        let from = at("198.51.100.7:2000");
        // No session of its own here: where the request came from.
        assert_eq!(reply_address(from, None, &peer, 3), (from, true));
        let other_host = location("198.51.100.7:2000", &["192.168.1.7:2000"]);
        // Another public address: where it came from, however often it asks (what it
        // reports is not trusted as a destination).
        for attempts in 1..4 {
            assert_eq!(
                reply_address(from, Some(&other_host), &peer, attempts),
                (from, true)
            );
        }
        // Behind the same public address: its first reported local address first, then in
        // turn; unspecified and public reported addresses are skipped.
        let from = at("203.0.113.5:3000");
        let same_host = location(
            "203.0.113.5:3000",
            &[
                "0.0.0.0:3000",
                "192.0.2.80:80",
                "10.0.0.9:3000",
                "10.0.0.10:3000",
            ],
        );
        assert_eq!(
            reply_address(from, Some(&same_host), &peer, 1),
            (at("10.0.0.9:3000"), false)
        );
        assert_eq!(
            reply_address(from, Some(&same_host), &peer, 2),
            (at("10.0.0.10:3000"), false)
        );
        assert_eq!(
            reply_address(from, Some(&same_host), &peer, 3),
            (from, true)
        );
        // With nothing reported, always its public address.
        let bare = location("203.0.113.5:3000", &[]);
        assert_eq!(reply_address(from, Some(&bare), &peer, 1), (from, true));
        // (reported, public, whether the reported address counts as the client's local network)
        let cases = [
            // Loopback reported addresses only for a loopback client (local tests).
            ("127.0.0.2", "127.0.0.1", true),
            ("127.0.0.2", "203.0.113.5", false),
            ("100.64.1.1", "203.0.113.5", true),
            // The ends of the shared space (100.64.0.0/10) and IPv6 link-local.
            ("100.127.255.254", "203.0.113.5", true),
            ("100.128.0.1", "203.0.113.5", false),
            ("fe80::1", "203.0.113.5", true),
            ("fd00::1", "203.0.113.5", true),
            ("2001:db8::1", "203.0.113.5", false),
        ];
        for (reported, public, local) in cases {
            assert_eq!(
                local_network(reported.parse().unwrap(), public.parse().unwrap()),
                local,
                "{reported} reported by {public}"
            );
        }
    }

    #[test]
    fn the_report_names_match_its_values() {
        let names = HandshakeStats::default().fields().map(|f| f.0);
        for (i, n) in names.iter().enumerate() {
            assert_eq!(CONTROL_STATS[i], format!("handshake_{n}"));
        }
        assert!(CONTROL_STATS.len() <= MAX_STATS);
        assert_eq!(CONTROL_STATS_LEVELS.start, names.len());
    }
}
