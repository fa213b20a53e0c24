//! NetConnection commands (RFC 7425 §5; digest §1.11): `connect`, `setPeerInfo`,
//! `createStream`, `deleteStream`, and every other client call, dispatched to the
//! [`Applications`] seam. Answers are `Down` messages for the worker that owns the session.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;

use rtmfp::amf::amf0;
use rtmfp::amf::Value;
use rtmfp::flash::command::{
    amf_body, status, status_object, Command, NetCommand, ObjectEncoding, PLAY_START_UNBUFFERED,
};
use rtmfp::flash::message::{MessageType, TcMessage, UserControl};
use rtmfp::flash::FlashError;

use crate::apps::{
    url_parts, AppAction, Applications, CallOutcome, ClientInfo, ConnectDetails, ConnectVerdict,
    MediaPacket,
};
use crate::ids::SessionIdParts;
use crate::ipc::{Down, Failure, NetState, QosEntry, SessionTiming, StreamEntry};
use crate::streams::{sample_access, stream_key, Ended, Routed, Streams};

/// A data message's handler name and the bytes of the values after it.
fn data_handler(kind: MessageType, payload: &[u8]) -> Option<(Cow<'_, str>, &[u8])> {
    let body = amf_body(kind, payload).ok()?;
    let mut r = amf0::Reader::new(body);
    let Value::String(handler) = r.read_value().ok()? else {
        return None;
    };
    Some((handler, body.get(body.len() - r.remaining()..)?))
}

/// A client's NetConnection state.
#[derive(Debug, Clone)]
struct Client {
    peer_id: [u8; 32],
    address: SocketAddr,
    /// The application path, once connected.
    app: Option<String>,
    /// Addresses from `setPeerInfo`.
    addresses: Vec<String>,
    next_stream_id: f64,
    /// The client's flow for each of its NetStreams (by stream ID), once it used one.
    stream_flows: HashMap<u64, u64>,
    /// What each of its NetStream flows plays (a name the applications were told about once,
    /// however many of its NetStreams play it).
    plays: HashMap<u64, String>,
}

impl Client {
    /// Who `session` is, for the applications, connected to `app`.
    fn info<'a>(&'a self, session: u32, app: &'a str) -> ClientInfo<'a> {
        ClientInfo {
            session,
            peer_id: &self.peer_id,
            address: self.address,
            app,
        }
    }
}

/// Where a peer can be reached: see [`NetConnections::find_peer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLocation {
    /// Its session with this server.
    pub session: u32,
    /// The address its session's handshake came from.
    pub observed: SocketAddr,
    /// The addresses it reported with `setPeerInfo`.
    pub reported: Vec<SocketAddr>,
}

/// Most NetStreams one client may use at once.
pub const MAX_NETSTREAMS: usize = 256;
/// Most addresses kept from one `setPeerInfo`.
const MAX_PEER_ADDRESSES: usize = 16;

/// The NetConnection layer of every session.
pub struct NetConnections {
    clients: HashMap<u32, Client>,
    /// The sessions of each peer ID, oldest first (a peer reconnecting with the same identity
    /// may briefly have two): the P2P rendezvous directory.
    by_peer: HashMap<[u8; 32], Vec<u32>>,
    /// The session whose handshake came from each address.
    by_address: HashMap<SocketAddr, u32>,
    streams: Streams,
    apps: Box<dyn Applications>,
    /// The applications' NetGroup memberships to make or end, for the group directory (see
    /// [`NetConnections::take_group_actions`]).
    group_actions: Vec<AppAction>,
    /// Keepalive periods sent after `setPeerInfo`, in milliseconds (server, peer)
    /// (RFC 7425 §5.3.4; `keepAliveServer`, `keepAlivePeer`).
    keepalive_ms: (u32, u32),
}

impl std::fmt::Debug for NetConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetConnections")
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

impl NetConnections {
    /// A layer dispatching to `apps`.
    pub fn new(apps: Box<dyn Applications>, keepalive_ms: (u32, u32)) -> NetConnections {
        NetConnections {
            clients: HashMap::new(),
            by_peer: HashMap::new(),
            by_address: HashMap::new(),
            streams: Streams::new(),
            group_actions: Vec::new(),
            apps,
            keepalive_ms,
        }
    }

    /// A session opened (or was reported live after a control restart).
    pub fn open(&mut self, session: u32, peer_id: [u8; 32], address: SocketAddr) {
        if let Some(old) = self.clients.get(&session) {
            let (old_peer, old_address) = (old.peer_id, old.address);
            self.unindex(session, old_peer, old_address);
        }
        self.by_peer.entry(peer_id).or_default().push(session);
        self.by_address.insert(address, session);
        self.clients.insert(
            session,
            Client {
                peer_id,
                address,
                app: None,
                addresses: Vec::new(),
                next_stream_id: 1.0,
                stream_flows: HashMap::new(),
                plays: HashMap::new(),
            },
        );
    }

    /// The NetConnection state a worker kept for one of its sessions (after a control
    /// restart): the session is connected to that application again, and `createStream`
    /// goes on from where it was. A session without one never connected.
    pub fn restore_net(&mut self, state: &NetState) {
        if let Some(c) = self.clients.get_mut(&state.session_id) {
            c.app = Some(state.app.clone());
            c.next_stream_id = f64::from(state.next_stream.max(1));
            self.apps.restore(&c.info(state.session_id, &state.app));
        }
    }

    /// Numbers new streams from `first` on. A restarted control plane starts from a random
    /// number, so that a stream it creates cannot take the number of one a worker is about to
    /// report (see [`NetConnections::restore_stream`]).
    pub fn number_streams_from(&mut self, first: u32) {
        self.streams.number_from(first);
    }

    /// A stream a worker reported after a control restart.
    pub fn restore_stream(&mut self, entry: &StreamEntry) {
        self.streams.restore(entry);
    }

    /// Sessions known.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no session is known.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The peer ID of `session`.
    pub fn peer_id(&self, session: u32) -> Option<[u8; 32]> {
        self.clients.get(&session).map(|c| c.peer_id)
    }

    /// The addresses a client reported with `setPeerInfo`.
    pub fn peer_addresses(&self, session: u32) -> Option<&[String]> {
        self.clients.get(&session).map(|c| &c.addresses[..])
    }

    /// Where a session of `peer_id` can be reached, for a P2P introduction (RFC 7016
    /// §3.5.1.4, digest §1.13): its session, the address its handshake came from, then the
    /// addresses it reported with `setPeerInfo` (those that parse). The oldest session is the
    /// one, as in Cumulus, unless the newest comes from the same IP address (the peer
    /// reconnected and the old session has not timed out yet): a certificate proves no key,
    /// so another host showing it does not take the peer's introductions over.
    pub fn find_peer(&self, peer_id: &[u8; 32]) -> Option<PeerLocation> {
        let sessions = self.by_peer.get(peer_id)?;
        let oldest = self.location(*sessions.first()?)?;
        match sessions.last().and_then(|&s| self.location(s)) {
            Some(newest) if newest.observed.ip() == oldest.observed.ip() => Some(newest),
            _ => Some(oldest),
        }
    }

    /// The session whose handshake came from `address`, as [`NetConnections::find_peer`]
    /// answers it.
    pub fn find_by_address(&self, address: SocketAddr) -> Option<PeerLocation> {
        self.location(*self.by_address.get(&address)?)
    }

    fn location(&self, session: u32) -> Option<PeerLocation> {
        let c = self.clients.get(&session)?;
        Some(PeerLocation {
            session,
            observed: c.address,
            reported: c
                .addresses
                .iter()
                .filter_map(|a| a.parse::<SocketAddr>().ok())
                .collect(),
        })
    }

    /// Tells the applications that `session` failed (see [`Applications::fail`]), if it is
    /// connected to one; answers what they asked for meanwhile. [`Self::closed`] follows.
    pub fn failed(&mut self, session: u32, failure: Failure) -> Vec<Routed> {
        let Some(c) = self.clients.get(&session) else {
            return Vec::new();
        };
        let Some(app) = &c.app else {
            return Vec::new();
        };
        self.apps.fail(&c.info(session, app), failure.describe());
        self.take_actions()
    }

    /// Tells the applications that `session` joined (or left) the NetGroup `group`, if it is
    /// connected to one (`restored`: a membership from before a control-process restart);
    /// answers what they asked for meanwhile.
    pub fn group_event(
        &mut self,
        session: u32,
        group: &[u8; 32],
        joined: bool,
        restored: bool,
    ) -> Vec<Routed> {
        let Some(c) = self.clients.get(&session) else {
            return Vec::new();
        };
        let Some(app) = &c.app else {
            return Vec::new();
        };
        let info = c.info(session, app);
        if joined {
            self.apps.join_group(&info, group, restored);
        } else {
            self.apps.unjoin_group(&info, group);
        }
        self.take_actions()
    }

    /// Whether the applications want to see IHellos (see [`Applications::wants_handshakes`]).
    pub fn wants_handshakes(&self) -> bool {
        self.apps.wants_handshakes()
    }

    /// Where the applications send a client whose IHello asks for `url` (see
    /// [`Applications::handshake`]).
    pub fn handshake(&mut self, from: SocketAddr, url: &str, attempts: u32) -> Vec<SocketAddr> {
        self.apps.handshake(from, url, attempts)
    }

    /// Where the applications send an initiator looking for `peer_id`, a peer not connected
    /// here (see [`Applications::rendezvous_unknown`]).
    pub fn rendezvous_unknown(&mut self, peer_id: &[u8; 32]) -> Vec<SocketAddr> {
        self.apps.rendezvous_unknown(peer_id)
    }

    fn unindex(&mut self, session: u32, peer_id: [u8; 32], address: SocketAddr) {
        if self.by_address.get(&address) == Some(&session) {
            self.by_address.remove(&address);
        }
        if let Some(list) = self.by_peer.get_mut(&peer_id) {
            list.retain(|&s| s != session);
            if list.is_empty() {
                self.by_peer.remove(&peer_id);
            }
        }
    }

    /// A session closed.
    pub fn closed(&mut self, session: u32) -> Vec<Routed> {
        let mut out = self.streams.session_closed(session);
        self.notify_ended();
        if let Some(c) = self.clients.remove(&session) {
            self.unindex(session, c.peer_id, c.address);
            if let Some(app) = &c.app {
                self.apps.disconnect(&c.info(session, app));
            }
        }
        out.extend(self.take_actions());
        out
    }

    /// Whether `command` asks NetStream `flow` of a connected `session` to publish or play
    /// something other than what it publishes or plays.
    fn switches_name(&self, session: u32, flow: u64, command: &NetCommand<'_, '_>) -> bool {
        let Some(c) = self.clients.get(&session).filter(|c| c.app.is_some()) else {
            return false;
        };
        match command {
            // Publishing ends a play of the NetStream, or a publication of another name.
            NetCommand::Publish {
                name: Some(name), ..
            } => {
                c.plays.contains_key(&flow)
                    || self
                        .streams
                        .published_by((session, flow))
                        .is_some_and(|current| current != *name)
            }
            // Playing ends a publication of the NetStream, or a play of another name.
            NetCommand::Play(p) => {
                self.streams.published_by((session, flow)).is_some()
                    || c.plays.get(&flow).is_some_and(|current| current != p.name)
            }
            _ => false,
        }
    }

    /// Tells the applications which publications and plays ended.
    fn notify_ended(&mut self) {
        for Ended {
            session,
            flow,
            name,
            publisher,
        } in self.streams.take_ended()
        {
            let Some(c) = self.clients.get_mut(&session) else {
                continue;
            };
            if !publisher {
                if c.plays.get(&flow) == Some(&name) {
                    c.plays.remove(&flow);
                }
                if c.plays.values().any(|n| *n == name) {
                    // Another of its NetStreams still plays it.
                    continue;
                }
            }
            let Some(app) = &c.app else {
                continue;
            };
            let info = c.info(session, app);
            if publisher {
                self.apps.unpublish(&info, &name);
            } else {
                self.apps.unsubscribe(&info, &name);
            }
        }
    }

    /// A message `session` published on stream `stream`, of a kind its application watches
    /// (see [`Applications::media_events`]); answers what the applications asked for meanwhile.
    pub fn media_event(&mut self, session: u32, stream: u32, message: &[u8]) -> Vec<Routed> {
        let Some(name) = self.streams.published_by_session(stream, session) else {
            return Vec::new();
        };
        let Some(c) = self.clients.get(&session) else {
            return Vec::new();
        };
        let (Some(app), Ok(tc)) = (&c.app, TcMessage::parse(message)) else {
            return Vec::new();
        };
        let handler;
        let packet = match tc.kind {
            MessageType::AUDIO => MediaPacket::Audio {
                time: tc.timestamp,
                data: tc.payload,
            },
            MessageType::VIDEO => MediaPacket::Video {
                time: tc.timestamp,
                data: tc.payload,
            },
            MessageType::AMF0_DATA | MessageType::AMF3_DATA => {
                let Some((name, data)) = data_handler(tc.kind, tc.payload) else {
                    return Vec::new();
                };
                handler = name;
                MediaPacket::Data {
                    handler: &handler,
                    data,
                }
            }
            _ => return Vec::new(),
        };
        self.apps.media_packet(&c.info(session, app), name, packet);
        self.take_actions()
    }

    /// The workers' report of their sessions' links, for the applications.
    pub fn timings(&mut self, entries: &[SessionTiming]) {
        self.apps.timings(entries);
    }

    /// The workers' QoS report of the last second, for the applications.
    pub fn qos(&mut self, entries: &[QosEntry]) {
        let names = self.streams.names();
        for e in entries {
            let Some(name) = names.get(&e.stream) else {
                continue;
            };
            let Some(c) = self.clients.get(&e.session_id) else {
                continue;
            };
            if let Some(app) = &c.app {
                self.apps.qos(&c.info(e.session_id, app), name, e);
            }
        }
    }

    /// Runs what the applications have ready (see [`Applications::poll`]); answers what they
    /// asked for meanwhile.
    pub fn poll_apps(&mut self) -> Vec<Routed> {
        self.apps.poll();
        self.take_actions()
    }

    /// The applications' manage tick (every [`crate::apps::MANAGE_PERIOD`]); answers what
    /// they asked for.
    pub fn manage(&mut self) -> Vec<Routed> {
        self.apps.manage();
        self.take_actions()
    }

    /// What the applications asked for on their own (server-to-client calls, closes,
    /// blacklist edits), as messages for the workers. Blacklist edits go to worker 0, which
    /// hands them to the data plane.
    pub fn take_actions(&mut self) -> Vec<Routed> {
        let mut out = Vec::new();
        for action in self.apps.take_actions() {
            let owner = |session: u32| usize::from(SessionIdParts::of(session).worker);
            match action {
                AppAction::Call {
                    session,
                    method,
                    args,
                } => out.extend(
                    self.call(session, &method, args)
                        .map(|d| (owner(session), d)),
                ),
                AppAction::WriterCall {
                    session,
                    writer,
                    method,
                    args,
                } => {
                    if let Some(message) = self.call_message(session, &method, args) {
                        let d = Down::Writer {
                            session_id: session,
                            writer,
                            messages: vec![message],
                        };
                        out.push((owner(session), d));
                    }
                }
                AppAction::WriterClose { session, writer } => {
                    if self.clients.contains_key(&session) {
                        let d = Down::CloseWriter {
                            session_id: session,
                            writer,
                        };
                        out.push((owner(session), d));
                    }
                }
                AppAction::Close { session } => {
                    if self.clients.contains_key(&session) {
                        out.extend(self.close(session).into_iter().map(|d| (owner(session), d)));
                    }
                }
                AppAction::Deny(prefix) => out.push((0, Down::Blacklist { add: true, prefix })),
                AppAction::Allow(prefix) => out.push((0, Down::Blacklist { add: false, prefix })),
                AppAction::Receive {
                    session,
                    name,
                    video,
                    enabled,
                } => {
                    for flow in self.flows_playing(session, &name) {
                        let d = Down::Receive {
                            session_id: session,
                            flow,
                            video,
                            enabled,
                        };
                        out.push((owner(session), d));
                    }
                }
                AppAction::GroupJoin { .. } | AppAction::GroupRelease { .. } => {
                    self.group_actions.push(action);
                }
                AppAction::Publish { app, name } => {
                    match self.streams.publish_server(&stream_key(&app, &name), &name) {
                        Ok(routed) => out.extend(routed),
                        // The applications check names first; a publication from before a
                        // control-process restart, which they do not know, can still hold it.
                        Err(e) => tracing::warn!(app, name, error = %e, "server publication"),
                    }
                }
                AppAction::Unpublish { app, name } => {
                    out.extend(self.streams.unpublish_server(&stream_key(&app, &name)));
                }
                AppAction::ClosePublisher {
                    app,
                    name,
                    code,
                    description,
                } => {
                    let key = stream_key(&app, &name);
                    out.extend(self.streams.close_publisher(&key, &code, &description));
                    self.notify_ended();
                }
                AppAction::Push { app, name, message } => {
                    out.extend(self.streams.push(&stream_key(&app, &name), message));
                }
                AppAction::SampleAccess {
                    session,
                    name,
                    audio,
                    video,
                } => {
                    for flow in self.flows_playing(session, &name) {
                        let d = Down::Reply {
                            session_id: session,
                            flow,
                            messages: vec![sample_access(audio, video)],
                        };
                        out.push((owner(session), d));
                    }
                }
            }
        }
        out
    }

    /// The applications' NetGroup actions ([`AppAction::GroupJoin`], [`AppAction::GroupRelease`])
    /// that [`NetConnections::take_actions`] set aside: the group directory is not this
    /// layer's.
    pub fn take_group_actions(&mut self) -> Vec<AppAction> {
        std::mem::take(&mut self.group_actions)
    }

    /// The NetStream flows of `session` that play `name`.
    fn flows_playing(&self, session: u32, name: &str) -> Vec<u64> {
        self.clients.get(&session).map_or_else(Vec::new, |c| {
            c.plays
                .iter()
                .filter(|(_, n)| *n == name)
                .map(|(&f, _)| f)
                .collect()
        })
    }

    /// A server-to-client call: `method(args…)` on the client's NetConnection.
    pub fn call(&self, session: u32, method: &str, args: Vec<Value<'_>>) -> Option<Down> {
        Some(Down::Call {
            session_id: session,
            messages: vec![self.call_message(session, method, args)?],
        })
    }

    /// The message of a server-to-client call `method(args…)` for a known client.
    fn call_message(&self, session: u32, method: &str, args: Vec<Value<'_>>) -> Option<Vec<u8>> {
        self.clients.get(&session)?;
        Command::call(method, args)
            .to_message(ObjectEncoding::Amf0, 0)
            .ok()
    }

    /// Closes a client's NetConnection: `close()`, then the session.
    pub fn close(&self, session: u32) -> Vec<Down> {
        let mut out = Vec::new();
        if let Ok(m) = Command::close().to_message(ObjectEncoding::Amf0, 0) {
            out.push(Down::Call {
                session_id: session,
                messages: vec![m],
            });
        }
        out.push(Down::Close {
            session_id: session,
        });
        out
    }

    /// A command message from `session` on its `flow` (NetStream `stream_id`, 0 for the
    /// NetConnection). Answers what to send back, and to which worker.
    pub fn on_message(
        &mut self,
        session: u32,
        flow: u64,
        stream_id: u64,
        data: &[u8],
    ) -> Vec<Routed> {
        let owner = usize::from(SessionIdParts::of(session).worker);
        let Ok(tc) = TcMessage::parse(data) else {
            return Vec::new();
        };
        let Ok(cmd) = Command::parse(&tc) else {
            return Vec::new();
        };
        let command = cmd.net_command();
        let mut out = Vec::new();
        // A NetStream that publishes or plays one name and is asked for another ends the first
        // before the applications hear of the second (and whatever they answer), as Cumulus.
        if stream_id != 0
            && command
                .as_ref()
                .is_ok_and(|c| self.switches_name(session, flow, c))
        {
            out.extend(self.streams.stop((session, flow)));
            self.notify_ended();
        }
        out.extend(
            self.dispatch(session, flow, stream_id, &cmd, command)
                .into_iter()
                .map(|d| match d {
                    Dispatched::Owner(d) => (owner, d),
                    Dispatched::Routed(r) => r,
                }),
        );
        self.notify_ended();
        out.extend(self.take_actions());
        out
    }

    fn dispatch(
        &mut self,
        session: u32,
        flow: u64,
        stream_id: u64,
        cmd: &Command<'_>,
        command: Result<NetCommand<'_, '_>, FlashError>,
    ) -> Vec<Dispatched> {
        let Some(client) = self.clients.get_mut(&session) else {
            return Vec::new();
        };
        let reply = |messages: Vec<Vec<u8>>| {
            Dispatched::Owner(Down::Reply {
                session_id: session,
                flow,
                messages,
            })
        };
        let routed = |out: Vec<Routed>| out.into_iter().map(Dispatched::Routed).collect();
        // At most MAX_NETSTREAMS NetStreams per client: the stream directory and the workers'
        // per-stream state stay bounded whatever a client sends.
        let stream_room = stream_id == 0
            || client.stream_flows.contains_key(&stream_id)
            || client.stream_flows.len() < MAX_NETSTREAMS;
        if stream_id != 0 && stream_room {
            client.stream_flows.insert(stream_id, flow);
        }
        let key = |name: &str| stream_key(client.app.as_deref().unwrap_or(""), name);
        let encode = |c: Command<'_>| c.to_message(ObjectEncoding::Amf0, 0).into_iter().collect();
        match command {
            // One NetConnection per session: a second `connect` is refused, the first stands.
            Ok(NetCommand::Connect(_)) if client.app.is_some() => {
                let refusal = Command::error_status(
                    cmd.transaction_id,
                    status::CONNECT_REJECTED,
                    "Already connected",
                );
                vec![reply(encode(refusal))]
            }
            Ok(NetCommand::Connect(c)) => {
                let app = app_path(c.app(), c.tc_url());
                let info = client.info(session, &app);
                let details = ConnectDetails {
                    tc_url: c.tc_url(),
                    page_url: c.page_url(),
                    swf_url: c.swf_url(),
                    flash_ver: c.flash_ver(),
                };
                let verdict = self.apps.connect(&info, &details, c.args());
                // A refused connect: `_error` with the status, then the session closes.
                let refuse = |code: &str, description: &str| {
                    let refusal = Command::error_status(cmd.transaction_id, code, description);
                    vec![
                        reply(encode(refusal)),
                        Dispatched::Owner(Down::Close {
                            session_id: session,
                        }),
                    ]
                };
                tracing::info!(session, app = %app, encoding = ?c.object_encoding(), ?verdict, "connect");
                match verdict {
                    ConnectVerdict::Accept(extra) => {
                        let kept = Down::NetState(NetState {
                            session_id: session,
                            app: app.clone(),
                            next_stream: stream_number(client.next_stream_id),
                        });
                        client.app = Some(app);
                        vec![
                            reply(encode(Command::connect_success(
                                cmd.transaction_id,
                                c.object_encoding(),
                                "Connection succeeded.",
                                extra,
                            ))),
                            // The worker keeps it for a control restart.
                            Dispatched::Owner(kept),
                        ]
                    }
                    ConnectVerdict::InvalidApp => refuse(
                        status::CONNECT_INVALID_APP,
                        &format!("Application '{app}' doesn't exist"),
                    ),
                    ConnectVerdict::Reject(description) => {
                        refuse(status::CONNECT_REJECTED, &description)
                    }
                }
            }
            // Nothing else is served before a successful connect.
            _ if client.app.is_none() => Vec::new(),
            Ok(NetCommand::SetPeerInfo(addrs)) => {
                client.addresses = addrs
                    .iter()
                    .take(MAX_PEER_ADDRESSES)
                    .map(|a| (*a).to_string())
                    .collect();
                let ka = UserControl::SetKeepalive {
                    server_ms: self.keepalive_ms.0,
                    peer_ms: self.keepalive_ms.1,
                };
                vec![reply(vec![ka.to_message(0)])]
            }
            Ok(NetCommand::CreateStream) => {
                let id = client.next_stream_id;
                client.next_stream_id = id + 1.0;
                let kept = Down::NetState(NetState {
                    session_id: session,
                    app: client.app.clone().unwrap_or_default(),
                    next_stream: stream_number(client.next_stream_id),
                });
                vec![
                    reply(encode(Command::create_stream_result(
                        cmd.transaction_id,
                        id,
                    ))),
                    Dispatched::Owner(kept),
                ]
            }
            Ok(NetCommand::DeleteStream(id)) => {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let id = id as u64;
                match client.stream_flows.remove(&id) {
                    Some(f) => routed(self.streams.stop((session, f))),
                    None => Vec::new(),
                }
            }
            Ok(NetCommand::CloseStream) => routed(self.streams.stop((session, flow))),
            Ok(NetCommand::ReceiveAudio(enabled)) if stream_id != 0 => {
                vec![Dispatched::Owner(Down::Receive {
                    session_id: session,
                    flow,
                    video: false,
                    enabled,
                })]
            }
            Ok(NetCommand::ReceiveVideo(enabled)) if stream_id != 0 => {
                vec![Dispatched::Owner(Down::Receive {
                    session_id: session,
                    flow,
                    video: true,
                    enabled,
                })]
            }
            Ok(NetCommand::Publish { name: Some(_), .. }) | Ok(NetCommand::Play(_))
                if !stream_room =>
            {
                vec![reply(refuse_stream(
                    status::PLAY_FAILED,
                    "Too many NetStreams on this connection",
                ))]
            }
            Ok(NetCommand::Publish {
                name: Some(name), ..
            }) if stream_id != 0 => {
                let key = key(name);
                let app = client.app.clone().unwrap_or_default();
                let info = client.info(session, &app);
                // The application sees only publications that could start.
                let refused = if self.streams.taken(&key, (session, flow)) {
                    None
                } else {
                    self.apps.publish(&info, name).err()
                };
                if let Some(description) = refused {
                    tracing::info!(session, app = %app, name, %description, "publish refused");
                    return vec![reply(refuse_stream(status::PUBLISH_BAD_NAME, &description))];
                }
                match self.streams.publish(&key, name, (session, flow)) {
                    Ok(mut out) => {
                        // The kinds of message the application watches come up as they come.
                        let events = self.apps.media_events(&app);
                        if let Some(stream) =
                            self.streams.id_of(&key).filter(|_| !events.is_empty())
                        {
                            let owner = usize::from(SessionIdParts::of(session).worker);
                            out.push((owner, Down::Watch { stream, events }));
                        }
                        routed(out)
                    }
                    Err(_) => vec![reply(refuse_stream(
                        status::PUBLISH_BAD_NAME,
                        &format!("{name} is already published"),
                    ))],
                }
            }
            Ok(NetCommand::Publish { name: None, .. }) if stream_id != 0 => {
                routed(self.streams.stop((session, flow)))
            }
            Ok(NetCommand::Play(p)) if stream_id != 0 => {
                let key = key(p.name);
                let app = client.app.clone().unwrap_or_default();
                // The applications hear of a name once per client, not once per NetStream.
                if !client.plays.values().any(|n| n == p.name) {
                    let info = client.info(session, &app);
                    if let Err(description) = self.apps.subscribe(&info, p.name) {
                        tracing::info!(session, app = %app, name = p.name, %description, "play refused");
                        return vec![reply(refuse_stream(status::PLAY_FAILED, &description))];
                    }
                }
                client.plays.insert(flow, p.name.to_string());
                // Cumulus's unbuffered mode (digest §1.11).
                let unbuffered = p.start == PLAY_START_UNBUFFERED;
                routed(self.streams.play(&key, p.name, (session, flow), unbuffered))
            }
            _ => {
                let app = client.app.clone().unwrap_or_default();
                let info = client.info(session, &app);
                let outcome = self.apps.call(&info, &cmd.name, &cmd.args);
                if cmd.transaction_id == 0.0 {
                    // No answer expected (RTMP §7.1.1).
                    return Vec::new();
                }
                let failed = |description: &str| {
                    Command::error(
                        cmd.transaction_id,
                        status_object(
                            status::LEVEL_ERROR,
                            status::CALL_FAILED,
                            description,
                            vec![],
                        )
                        .into_owned(),
                    )
                };
                let answer = match outcome {
                    CallOutcome::Result(v) => Command::result(cmd.transaction_id, v),
                    CallOutcome::Error(description) => failed(&description),
                    CallOutcome::NotFound => failed(&format!("Method '{}' not found", cmd.name)),
                };
                vec![reply(encode(answer))]
            }
        }
    }
}

/// The application path of a `connect`: its `app` property, else the path of its `tcUrl`
/// (`rtmfp://host:port/app/sub` → `app/sub`), without surrounding slashes.
fn app_path(app: Option<&str>, tc_url: Option<&str>) -> String {
    // Only a URL with a scheme is a tcUrl.
    let from_url = || {
        Some(
            url_parts(tc_url.filter(|u| u.contains("://"))?)
                .1
                .to_string(),
        )
    };
    app.map(str::to_string)
        .or_else(from_url)
        .unwrap_or_default()
        .trim_matches('/')
        .to_string()
}

/// An `onStatus` error for a NetStream command.
fn refuse_stream(code: &str, description: &str) -> Vec<Vec<u8>> {
    Command::on_status(status_object(
        status::LEVEL_ERROR,
        code,
        description,
        Vec::new(),
    ))
    .to_message(ObjectEncoding::Amf0, 0)
    .into_iter()
    .collect()
}

/// A NetStream ID as the workers keep it.
fn stream_number(id: f64) -> u32 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = id.clamp(1.0, f64::from(u32::MAX)) as u32;
    n
}

/// Where a dispatched message goes: the session's own worker, or a worker named with it.
enum Dispatched {
    Owner(Down),
    Routed(Routed),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::MediaEvents;
    use rtmfp::flash::command::{names, AMF3_FORMAT_SELECTOR};

    /// `on_message` without the worker of each message (one worker in these tests).
    trait Plain {
        fn on(&mut self, session: u32, flow: u64, stream_id: u64, data: &[u8]) -> Vec<Down>;
    }

    impl Plain for NetConnections {
        fn on(&mut self, session: u32, flow: u64, stream_id: u64, data: &[u8]) -> Vec<Down> {
            self.on_message(session, flow, stream_id, data)
                .into_iter()
                .map(|(_, d)| d)
                .collect()
        }
    }

    /// Applications with fixed answers, recording the stream events they see in `log` and
    /// asking for `actions` at the next chance.
    #[derive(Default)]
    struct Fixed {
        log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        actions: std::sync::Arc<std::sync::Mutex<Vec<AppAction>>>,
    }
    impl Fixed {
        fn note(&self, s: String) {
            self.log.lock().unwrap().push(s);
        }
    }
    impl Applications for Fixed {
        fn connect(
            &mut self,
            c: &ClientInfo<'_>,
            _: &ConnectDetails<'_>,
            _: &[Value<'_>],
        ) -> ConnectVerdict {
            match c.app {
                "" => ConnectVerdict::Accept(vec![]),
                "live" => {
                    ConnectVerdict::Accept(vec![("motd".into(), Value::str("hi").into_owned())])
                }
                "banned" => ConnectVerdict::Reject("go away".into()),
                "watch" => ConnectVerdict::Accept(vec![]),
                _ => ConnectVerdict::InvalidApp,
            }
        }
        fn call(&mut self, _: &ClientInfo<'_>, m: &str, args: &[Value<'_>]) -> CallOutcome {
            match m {
                "echo" => {
                    CallOutcome::Result(args.first().cloned().unwrap_or(Value::Null).into_owned())
                }
                "fail" => CallOutcome::Error("nope".into()),
                _ => CallOutcome::NotFound,
            }
        }
        fn disconnect(&mut self, c: &ClientInfo<'_>) {
            self.note(format!("disconnect {}", c.session));
        }
        fn fail(&mut self, c: &ClientInfo<'_>, error: &str) {
            self.note(format!("fail {} {error}", c.session));
        }
        fn restore(&mut self, c: &ClientInfo<'_>) {
            self.note(format!("restore {} {}", c.session, c.app));
        }
        fn publish(&mut self, c: &ClientInfo<'_>, name: &str) -> Result<(), String> {
            self.note(format!("publish {} {name}", c.session));
            match name {
                "forbidden" => Err("not here".into()),
                _ => Ok(()),
            }
        }
        fn unpublish(&mut self, c: &ClientInfo<'_>, name: &str) {
            self.note(format!("unpublish {} {name}", c.session));
        }
        fn subscribe(&mut self, c: &ClientInfo<'_>, name: &str) -> Result<(), String> {
            self.note(format!("subscribe {} {name}", c.session));
            match name {
                "private" => Err("members only".into()),
                _ => Ok(()),
            }
        }
        fn unsubscribe(&mut self, c: &ClientInfo<'_>, name: &str) {
            self.note(format!("unsubscribe {} {name}", c.session));
        }
        fn media_events(&self, app: &str) -> MediaEvents {
            match app {
                "watch" => MediaEvents::AUDIO.with(MediaEvents::DATA),
                _ => MediaEvents::NONE,
            }
        }
        fn media_packet(&mut self, c: &ClientInfo<'_>, name: &str, packet: MediaPacket<'_>) {
            self.note(format!("media {} {name} {packet:?}", c.session));
        }
        fn take_actions(&mut self) -> Vec<AppAction> {
            std::mem::take(&mut *self.actions.lock().unwrap())
        }
    }

    fn layer() -> NetConnections {
        let mut n = NetConnections::new(Box::new(Fixed::default()), (15_000, 10_000));
        n.open(7, [1; 32], "127.0.0.1:5000".parse().unwrap());
        n
    }

    fn command(name: &str, txn: f64, obj: Value<'_>, args: Vec<Value<'_>>) -> Vec<u8> {
        Command::new(name, txn, obj, args)
            .to_message(ObjectEncoding::Amf0, 0)
            .unwrap()
    }

    fn connect(app: &str) -> Vec<u8> {
        let props = Value::Object(rtmfp::amf::Object::anonymous(vec![
            ("app".into(), Value::str(app)),
            ("objectEncoding".into(), Value::Number(3.0)),
        ]));
        command(names::CONNECT, 1.0, props, vec![])
    }

    fn replies(out: &[Down]) -> Vec<Command<'static>> {
        out.iter()
            .filter_map(|d| match d {
                Down::Reply { messages, .. } | Down::Call { messages, .. } => Some(messages),
                _ => None,
            })
            .flatten()
            .filter_map(|m| {
                let tc = TcMessage::parse(m).ok()?;
                let c = Command::parse(&tc).ok()?;
                Some(Command::new(
                    c.name.into_owned(),
                    c.transaction_id,
                    c.command_object.into_owned(),
                    c.args.into_iter().map(Value::into_owned).collect(),
                ))
            })
            .collect()
    }

    fn code(c: &Command<'_>) -> String {
        match c.args.first() {
            Some(Value::Object(o)) => o
                .members()
                .find(|m| m.0 == "code")
                .and_then(|m| match &m.1 {
                    Value::String(s) => Some(s.to_string()),
                    _ => None,
                })
                .unwrap_or_default(),
            _ => String::new(),
        }
    }

    #[test]
    fn connect_success_echoes_object_encoding_in_amf0() {
        let mut n = layer();
        let out = n.on(7, 2, 0, &connect("live"));
        // The reply, and the state the worker keeps for a control restart.
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[1],
            Down::NetState(NetState {
                session_id: 7,
                app: "live".into(),
                next_stream: 1
            })
        );
        let Down::Reply {
            session_id,
            flow,
            messages,
        } = &out[0]
        else {
            panic!()
        };
        assert_eq!((*session_id, *flow), (7, 2));
        assert_eq!(messages[0][0], 0x14, "an AMF0 command message");
        let r = replies(&out);
        assert_eq!(r[0].name, names::RESULT);
        assert_eq!(code(&r[0]), status::CONNECT_SUCCESS);
        let Some(Value::Object(o)) = r[0].args.first() else {
            panic!()
        };
        assert!(o
            .members()
            .any(|m| m.0 == "objectEncoding" && m.1 == Value::Number(3.0)));
    }

    #[test]
    fn invalid_and_rejected_apps_get_an_error_and_a_close() {
        let mut n = layer();
        let out = n.on(7, 2, 0, &connect("nothere"));
        assert_eq!(code(&replies(&out)[0]), status::CONNECT_INVALID_APP);
        assert!(matches!(out.last(), Some(Down::Close { session_id: 7 })));
        let mut n = layer();
        let out = n.on(7, 2, 0, &connect("banned"));
        let r = replies(&out);
        assert_eq!(code(&r[0]), status::CONNECT_REJECTED);
        assert!(matches!(out.last(), Some(Down::Close { session_id: 7 })));
    }

    #[test]
    fn app_path_comes_from_app_or_tc_url() {
        assert_eq!(app_path(Some("/live/"), None), "live");
        assert_eq!(
            app_path(None, Some("rtmfp://host:1935/app/sub?x=1")),
            "app/sub"
        );
        assert_eq!(app_path(None, Some("rtmfp://host")), "");
        assert_eq!(app_path(None, None), "");
    }

    #[test]
    fn calls_go_to_the_application_and_unknown_ones_fail() {
        let mut n = layer();
        n.on(7, 2, 0, &connect("live"));
        let r = replies(&n.on(
            7,
            2,
            0,
            &command("echo", 2.0, Value::Null, vec![Value::Number(5.0)]),
        ));
        assert_eq!(r[0].name, names::RESULT);
        assert_eq!(r[0].args, vec![Value::Number(5.0)]);
        let r = replies(&n.on(7, 2, 0, &command("fail", 3.0, Value::Null, vec![])));
        assert_eq!(
            (r[0].name.as_ref(), code(&r[0]).as_str()),
            (names::ERROR, status::CALL_FAILED)
        );
        let r = replies(&n.on(7, 2, 0, &command("nope", 4.0, Value::Null, vec![])));
        assert_eq!(code(&r[0]), status::CALL_FAILED);
        // Transaction 0 expects no answer.
        assert!(n
            .on(7, 2, 0, &command("nope", 0.0, Value::Null, vec![]))
            .is_empty());
    }

    #[test]
    fn set_peer_info_answers_the_keepalive_event_and_create_stream_counts() {
        let mut n = layer();
        n.on(7, 2, 0, &connect(""));
        let out = n.on(
            7,
            2,
            0,
            &command(
                names::SET_PEER_INFO,
                0.0,
                Value::Null,
                vec![Value::str("10.0.0.1:5000")],
            ),
        );
        let Down::Reply { messages, .. } = &out[0] else {
            panic!()
        };
        let expected = UserControl::SetKeepalive {
            server_ms: 15_000,
            peer_ms: 10_000,
        }
        .to_message(0);
        assert_eq!(messages[0], expected);
        assert_eq!(n.peer_addresses(7).unwrap(), ["10.0.0.1:5000"]);
        for id in 1..=3 {
            let r = replies(&n.on(
                7,
                2,
                0,
                &command(names::CREATE_STREAM, 5.0, Value::Null, vec![]),
            ));
            assert_eq!(r[0].args, vec![Value::Number(f64::from(id))]);
        }
    }

    #[test]
    fn peers_are_found_by_peer_id_with_their_reported_addresses() {
        let mut n = layer();
        let observed: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(
            n.find_peer(&[1; 32]),
            Some(PeerLocation {
                session: 7,
                observed,
                reported: vec![],
            })
        );
        assert_eq!(n.find_peer(&[2; 32]), None);
        n.on(7, 2, 0, &connect(""));
        // Addresses that do not parse are left out; IPv6 ones are kept.
        n.on(
            7,
            2,
            0,
            &command(
                names::SET_PEER_INFO,
                0.0,
                Value::Null,
                vec![
                    Value::str("10.0.0.1:5000"),
                    Value::str("not an address"),
                    Value::str("[fe80::1]:6000"),
                ],
            ),
        );
        let found = n.find_peer(&[1; 32]).unwrap();
        assert_eq!(
            found.reported,
            [
                "10.0.0.1:5000".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:6000".parse().unwrap()
            ]
        );
        // A second session of the same peer from the same host (it reconnected) is the one
        // found until it closes; then the first is again. One from another host is not.
        n.open(9, [1; 32], "127.0.0.1:5001".parse().unwrap());
        assert_eq!(n.find_peer(&[1; 32]).unwrap().session, 9);
        n.closed(9);
        assert_eq!(n.find_peer(&[1; 32]).unwrap().session, 7);
        n.open(11, [1; 32], "192.0.2.66:5001".parse().unwrap());
        assert_eq!(n.find_peer(&[1; 32]).unwrap().session, 7);
        n.closed(11);
        // A session reported again with another peer ID moves in the directory.
        n.open(7, [3; 32], observed);
        assert_eq!(n.find_peer(&[1; 32]), None);
        assert_eq!(n.find_peer(&[3; 32]).unwrap().session, 7);
        assert_eq!(n.find_by_address(observed).unwrap().session, 7);
        n.closed(7);
        assert_eq!(n.find_peer(&[3; 32]), None);
        assert_eq!(n.find_by_address(observed), None);
        assert!(n.by_peer.is_empty() && n.by_address.is_empty());
    }

    #[test]
    fn nothing_is_served_before_connect_or_for_unknown_sessions() {
        let mut n = layer();
        assert!(n
            .on(
                7,
                2,
                0,
                &command(names::CREATE_STREAM, 5.0, Value::Null, vec![])
            )
            .is_empty());
        assert!(n.on(99, 2, 0, &connect("")).is_empty());
        assert!(n.on(7, 2, 0, b"\x14garbage").is_empty());
    }

    #[test]
    fn restored_sessions_are_connected_again_and_count_on() {
        let mut n = NetConnections::new(Box::new(Fixed::default()), (15_000, 10_000));
        n.open(9, [2; 32], "127.0.0.1:5001".parse().unwrap());
        n.open(10, [3; 32], "127.0.0.1:5002".parse().unwrap());
        n.restore_net(&NetState {
            session_id: 9,
            app: "live".into(),
            next_stream: 4,
        });
        // Session 10 never connected: still nothing for it.
        assert!(n
            .on(
                10,
                2,
                0,
                &command(names::CREATE_STREAM, 5.0, Value::Null, vec![])
            )
            .is_empty());
        let r = replies(&n.on(
            9,
            2,
            0,
            &command(names::CREATE_STREAM, 5.0, Value::Null, vec![]),
        ));
        assert_eq!(r[0].name, names::RESULT);
        assert_eq!(
            r[0].args,
            vec![Value::Number(4.0)],
            "counting on from the kept state"
        );
    }

    #[test]
    fn server_calls_and_close() {
        let n = layer();
        let d = n.call(7, "hello", vec![Value::str("x")]).unwrap();
        let r = replies(std::slice::from_ref(&d));
        assert_eq!(r[0].name, "hello");
        assert!(n.call(8, "hello", vec![]).is_none());
        let out = n.close(7);
        assert_eq!(replies(&out)[0].name, names::CLOSE);
        assert!(matches!(out.last(), Some(Down::Close { session_id: 7 })));
    }

    /// A layer with applications that log into `log` and ask for `actions`.
    fn logged(
        actions: Vec<AppAction>,
    ) -> (
        NetConnections,
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) {
        let apps = Fixed::default();
        *apps.actions.lock().unwrap() = actions;
        let log = std::sync::Arc::clone(&apps.log);
        let mut n = NetConnections::new(Box::new(apps), (15_000, 10_000));
        n.open(7, [1; 32], "127.0.0.1:5000".parse().unwrap());
        n.open(8, [2; 32], "127.0.0.1:5001".parse().unwrap());
        (n, log)
    }

    fn stream_command(name: &str, args: Vec<Value<'_>>) -> Vec<u8> {
        command(name, 0.0, Value::Null, args)
    }

    #[test]
    fn the_connect_answer_carries_the_members_the_application_adds() {
        let mut n = layer();
        let r = replies(&n.on(7, 2, 0, &connect("live")));
        let Some(Value::Object(o)) = r[0].args.first() else {
            panic!()
        };
        assert_eq!(o.get("motd"), Some(&Value::str("hi")));
        assert_eq!(code(&r[0]), status::CONNECT_SUCCESS);
    }

    #[test]
    fn the_application_may_refuse_a_publication_or_a_play_and_hears_their_ends() {
        let (mut n, log) = logged(vec![]);
        n.on(7, 2, 0, &connect(""));
        n.on(8, 2, 0, &connect(""));
        let out = n.on(
            7,
            3,
            1,
            &stream_command(names::PUBLISH, vec![Value::str("forbidden")]),
        );
        let r = replies(&out);
        assert_eq!(code(&r[0]), status::PUBLISH_BAD_NAME);
        assert!(
            !out.iter().any(|d| matches!(d, Down::Publish { .. })),
            "nothing published"
        );
        let out = n.on(
            7,
            3,
            1,
            &stream_command(names::PUBLISH, vec![Value::str("cam")]),
        );
        assert_eq!(code(&replies(&out)[0]), status::PUBLISH_START);
        // A name someone else publishes is refused before the application is asked.
        let out = n.on(
            8,
            4,
            1,
            &stream_command(names::PUBLISH, vec![Value::str("cam")]),
        );
        assert_eq!(code(&replies(&out)[0]), status::PUBLISH_BAD_NAME);
        let out = n.on(
            8,
            5,
            2,
            &stream_command(names::PLAY, vec![Value::str("private")]),
        );
        assert_eq!(code(&replies(&out)[0]), status::PLAY_FAILED);
        assert!(!out.iter().any(|d| matches!(d, Down::Play { .. })));
        let out = n.on(
            8,
            5,
            2,
            &stream_command(names::PLAY, vec![Value::str("cam")]),
        );
        assert_eq!(code(&replies(&out)[0]), status::PLAY_RESET);
        // The player's session ends, then the publisher's NetStream closes.
        n.closed(8);
        n.on(7, 3, 1, &stream_command(names::CLOSE_STREAM, vec![]));
        assert_eq!(
            *log.lock().unwrap(),
            [
                "publish 7 forbidden",
                "publish 7 cam",
                "subscribe 8 private",
                "subscribe 8 cam",
                "unsubscribe 8 cam",
                "disconnect 8",
                "unpublish 7 cam",
            ]
        );
    }

    #[test]
    fn application_actions_become_messages_for_the_workers() {
        let (mut n, _) = logged(vec![
            AppAction::Call {
                session: 8,
                method: "onNews".into(),
                args: vec![Value::str("x").into_owned()],
            },
            AppAction::Close { session: 8 },
            AppAction::Close { session: 99 },
            AppAction::Deny("192.0.2.1".into()),
            AppAction::Allow("192.0.2.0/24".into()),
        ]);
        // Actions go out after the message that triggered them.
        let out = n.on_message(7, 2, 0, &connect(""));
        let actions: Vec<&Routed> = out
            .iter()
            .filter(|(_, d)| !matches!(d, Down::Reply { session_id: 7, .. } | Down::NetState(_)))
            .collect();
        assert!(matches!(actions[0], (0, Down::Call { session_id: 8, .. })));
        assert_eq!(replies(&[actions[0].1.clone()])[0].name, "onNews");
        // Close: `close()` then the session's close; nothing for an unknown session.
        assert_eq!(replies(&[actions[1].1.clone()])[0].name, names::CLOSE);
        assert_eq!(actions[2], &(0, Down::Close { session_id: 8 }));
        assert_eq!(
            actions[3..],
            [
                &(
                    0,
                    Down::Blacklist {
                        add: true,
                        prefix: "192.0.2.1".into()
                    }
                ),
                &(
                    0,
                    Down::Blacklist {
                        add: false,
                        prefix: "192.0.2.0/24".into()
                    }
                ),
            ]
        );
        assert_eq!(actions.len(), 5);
    }

    #[test]
    fn the_kinds_an_application_watches_are_asked_of_the_worker_and_reach_it() {
        let (mut n, log) = logged(vec![]);
        n.on(7, 2, 0, &connect("watch"));
        n.on(8, 2, 0, &connect(""));
        let publish = |name: &str| stream_command(names::PUBLISH, vec![Value::str(name)]);
        let out = n.on(7, 3, 1, &publish("cam"));
        let watch = out
            .iter()
            .position(|d| matches!(d, Down::Watch { .. }))
            .expect("a watch");
        assert!(
            out.iter().position(|d| matches!(d, Down::Publish { .. })) < Some(watch),
            "after the publish"
        );
        let Down::Watch { stream, events } = out[watch] else {
            unreachable!()
        };
        assert_eq!(events, MediaEvents::AUDIO.with(MediaEvents::DATA));
        // An application that watches nothing asks nothing.
        let out = n.on(8, 3, 1, &publish("other"));
        assert!(!out.iter().any(|d| matches!(d, Down::Watch { .. })));

        let audio = [0x08, 0, 0, 0, 9, 0xAF, 0x01, 7];
        let mut data = vec![0x0F, 0, 0, 0, 0, AMF3_FORMAT_SELECTOR, 0x02, 0, 3];
        data.extend_from_slice(b"cue");
        data.extend_from_slice(&[0x00, 0x3F, 0xF0, 0, 0, 0, 0, 0, 0]);
        n.media_event(7, stream, &audio);
        n.media_event(7, stream, &data);
        // Not its publisher, no such stream, or not a data message a handler names: nothing.
        n.media_event(8, stream, &audio);
        n.media_event(7, stream + 100, &audio);
        n.media_event(
            7,
            stream,
            &[0x12, 0, 0, 0, 0, 0x00, 0x3F, 0xF0, 0, 0, 0, 0, 0, 0],
        );
        n.media_event(7, stream, &[0x12, 0, 0]);
        let media: Vec<String> = log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("media"))
            .cloned()
            .collect();
        assert_eq!(
            media,
            [
                "media 7 cam Audio { time: 9, data: [175, 1, 7] }",
                "media 7 cam Data { handler: \"cue\", data: [0, 63, 240, 0, 0, 0, 0, 0, 0] }",
            ]
        );
    }

    proptest::proptest! {
        /// A data message's handler and the bytes after it come back as encoded, in either
        /// encoding; any body is answered or refused without a panic.
        #[test]
        fn data_handlers_round_trip_and_never_panic(
            handler in "\\PC{0,40}",
            values in proptest::collection::vec(-1e9f64..1e9, 0..4),
            amf3 in proptest::bool::ANY,
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let enc = if amf3 { ObjectEncoding::Amf3 } else { ObjectEncoding::Amf0 };
            let message = rtmfp::flash::command::DataMessage {
                handler: handler.as_str().into(),
                values: values.iter().map(|&v| Value::Number(v)).collect(),
            };
            let (kind, body) = message.encode(enc).unwrap();
            let (_, bare) = rtmfp::flash::command::DataMessage {
                handler: "".into(),
                values: message.values.clone(),
            }
            .encode(enc)
            .unwrap();
            let (got, rest) = data_handler(kind, &body).unwrap();
            proptest::prop_assert_eq!(got.as_ref(), handler.as_str());
            // The values after the handler as they came: what the same message with an empty
            // handler has after its format byte (AMF3) and that empty string (3 bytes).
            let skip = if amf3 { 1 + 3 } else { 3 };
            proptest::prop_assert_eq!(rest, &bare[skip..]);
            let _ = data_handler(MessageType::AMF0_DATA, &noise);
            let _ = data_handler(MessageType::AMF3_DATA, &noise);
        }
    }

    #[test]
    fn an_applications_own_publication_is_published_fed_and_ended() {
        let (app, name) = (String::from("live"), String::from("tv"));
        let (mut n, _) = logged(vec![
            AppAction::Publish {
                app: app.clone(),
                name: name.clone(),
            },
            AppAction::Push {
                app: app.clone(),
                name: name.clone(),
                message: vec![8, 0, 0, 0, 1, 0xAF],
            },
            AppAction::Push {
                app: app.clone(),
                name: "other".into(),
                message: vec![8, 0, 0, 0, 1, 0xAF],
            },
            AppAction::Unpublish {
                app: app.clone(),
                name: name.clone(),
            },
        ]);
        let out = n.take_actions();
        assert!(
            matches!(
                &out[..],
                [
                    (0, Down::ServerPublish { stream, key }),
                    (0, Down::Media { stream: fed, message }),
                    (0, Down::Unpublish { stream: ended }),
                ] if key == "live/tv" && fed == stream && ended == stream && message[0] == 8
            ),
            "{out:?}"
        );
        // Nothing to end (it ended above): nothing sent.
        let (mut n, _) = logged(vec![AppAction::Unpublish { app, name }]);
        assert!(n.take_actions().is_empty());
    }

    #[test]
    fn a_second_connect_is_refused_and_the_first_stands() {
        let (mut n, log) = logged(vec![]);
        n.on(7, 2, 0, &connect(""));
        let out = n.on(7, 2, 0, &connect("live"));
        assert_eq!(code(&replies(&out)[0]), status::CONNECT_REJECTED);
        assert!(!out.iter().any(|d| matches!(d, Down::Close { .. })));
        n.closed(7);
        assert_eq!(*log.lock().unwrap(), ["disconnect 7"]);
    }

    #[test]
    fn a_failed_session_is_told_before_its_disconnection() {
        let (mut n, log) = logged(vec![]);
        n.on(7, 2, 0, &connect(""));
        n.failed(7, Failure::Idle);
        n.closed(7);
        // A session that never connected fails unheard.
        n.open(9, [2; 32], "127.0.0.1:5001".parse().unwrap());
        n.failed(9, Failure::Unacknowledged);
        n.closed(9);
        assert_eq!(
            *log.lock().unwrap(),
            [
                format!("fail 7 {}", Failure::Idle.describe()),
                "disconnect 7".to_string()
            ]
        );
    }

    #[test]
    fn a_name_played_on_two_netstreams_is_one_subscription() {
        let (mut n, log) = logged(vec![]);
        n.on(8, 2, 0, &connect(""));
        let play = |name: &str| stream_command(names::PLAY, vec![Value::str(name)]);
        n.on(8, 5, 1, &play("cam"));
        n.on(8, 6, 2, &play("cam"));
        // The first NetStream switches to another name: `cam` is still played by the second.
        n.on(8, 5, 1, &play("other"));
        n.on(8, 6, 2, &stream_command(names::CLOSE_STREAM, vec![]));
        n.closed(8);
        assert_eq!(
            *log.lock().unwrap(),
            [
                "subscribe 8 cam",
                "subscribe 8 other",
                "unsubscribe 8 cam",
                "unsubscribe 8 other",
                "disconnect 8",
            ]
        );
    }

    #[test]
    fn sessions_restored_after_a_control_restart_are_told_to_the_applications() {
        let (mut n, log) = logged(vec![]);
        n.restore_net(&NetState {
            session_id: 7,
            app: "live".into(),
            next_stream: 3,
        });
        n.restore_net(&NetState {
            session_id: 99,
            app: "live".into(),
            next_stream: 1,
        });
        assert_eq!(*log.lock().unwrap(), ["restore 7 live"]);
    }

    #[test]
    fn a_netstream_switching_names_ends_the_first_before_the_application_hears_the_second() {
        let (mut n, log) = logged(vec![]);
        n.on(7, 2, 0, &connect(""));
        let publish = |name: &str| stream_command(names::PUBLISH, vec![Value::str(name)]);
        let play = |name: &str| stream_command(names::PLAY, vec![Value::str(name)]);
        n.on(7, 3, 1, &publish("cam"));
        let out = n.on(7, 3, 1, &publish("cam2"));
        let codes: Vec<String> = replies(&out).iter().map(code).collect();
        assert_eq!(codes, [status::UNPUBLISH_SUCCESS, status::PUBLISH_START]);
        // Refused by the application: the first has ended all the same (as in Cumulus).
        let out = n.on(7, 3, 1, &publish("forbidden"));
        let codes: Vec<String> = replies(&out).iter().map(code).collect();
        assert_eq!(codes, [status::UNPUBLISH_SUCCESS, status::PUBLISH_BAD_NAME]);
        n.on(7, 4, 2, &play("a"));
        n.on(7, 4, 2, &play("b"));
        // Another kind: a NetStream that plays, then publishes (and back).
        n.on(7, 4, 2, &publish("c"));
        n.on(7, 4, 2, &play("b"));
        assert_eq!(
            *log.lock().unwrap(),
            [
                "publish 7 cam",
                "unpublish 7 cam",
                "publish 7 cam2",
                "unpublish 7 cam2",
                "publish 7 forbidden",
                "subscribe 7 a",
                "unsubscribe 7 a",
                "subscribe 7 b",
                "unsubscribe 7 b",
                "publish 7 c",
                "unpublish 7 c",
                "subscribe 7 b",
            ]
        );
    }

    #[test]
    fn listener_switches_reach_every_netstream_playing_the_name() {
        let apps = Fixed::default();
        let queue = std::sync::Arc::clone(&apps.actions);
        let mut n = NetConnections::new(Box::new(apps), (15_000, 10_000));
        n.open(8, [2; 32], "127.0.0.1:5001".parse().unwrap());
        n.on(8, 2, 0, &connect(""));
        let play = |name: &str| stream_command(names::PLAY, vec![Value::str(name)]);
        n.on(8, 5, 1, &play("cam"));
        n.on(8, 6, 2, &play("cam"));
        n.on(8, 7, 3, &play("other"));
        queue.lock().unwrap().extend([
            AppAction::Receive {
                session: 8,
                name: "cam".into(),
                video: true,
                enabled: false,
            },
            AppAction::SampleAccess {
                session: 8,
                name: "cam".into(),
                audio: true,
                video: false,
            },
        ]);
        let mut flows = Vec::new();
        for (_, d) in n.take_actions() {
            match d {
                Down::Receive {
                    session_id: 8,
                    flow,
                    video: true,
                    enabled: false,
                } => flows.push(("receive", flow)),
                Down::Reply {
                    session_id: 8,
                    flow,
                    messages,
                } => {
                    assert_eq!(messages, [sample_access(true, false)]);
                    flows.push(("samples", flow));
                }
                other => panic!("{other:?}"),
            }
        }
        flows.sort_unstable();
        assert_eq!(
            flows,
            [
                ("receive", 5),
                ("receive", 6),
                ("samples", 5),
                ("samples", 6)
            ]
        );
    }
}
