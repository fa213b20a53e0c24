//! The seam where server applications plug in: one trait the NetConnection layer calls for
//! `connect`, for every client-to-server call it does not handle itself, for the NetStream
//! events an application may refuse or watch (publish, play and their ends), every manage
//! tick, and on disconnect. The Lua applications of the `scripting` crate implement it;
//! [`WwwApps`] is the built-in registry that only knows which applications exist.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rtmfp::amf::{Member, Value};

use crate::ipc::{MediaEvents, QosEntry, SessionTiming};

/// Wakes the control loop (from any thread; never blocks).
pub type Waker = std::sync::Arc<dyn Fn() + Send + Sync>;

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo<'a> {
    /// Session ID.
    pub session: u32,
    /// The client's peer ID.
    pub peer_id: &'a [u8; 32],
    /// The client's address.
    pub address: SocketAddr,
    /// The application path the client connected to (`""` is the root application).
    pub app: &'a str,
}

/// The properties of a `connect` command an application may read (RFC 7425 §5.1.1; the
/// Cumulus client fields `pageUrl`, `swfUrl`, `flashVersion` and the `tcUrl` query).
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectDetails<'a> {
    /// `tcUrl`.
    pub tc_url: Option<&'a str>,
    /// `pageUrl`.
    pub page_url: Option<&'a str>,
    /// `swfUrl`.
    pub swf_url: Option<&'a str>,
    /// `flashVer`.
    pub flash_ver: Option<&'a str>,
}

/// The answer to `connect`.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectVerdict {
    /// Accept, with extra members for the `NetConnection.Connect.Success` info object.
    Accept(Vec<Member<'static>>),
    /// No such application (`NetConnection.Connect.InvalidApp`).
    InvalidApp,
    /// Refused, with a description (`NetConnection.Connect.Rejected`).
    Reject(String),
}

/// A message a client published, for the applications that watch its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaPacket<'a> {
    /// An audio message: its timestamp (ms) and body.
    Audio {
        /// Timestamp in milliseconds.
        time: u32,
        /// The body (an FLV audio tag's data).
        data: &'a [u8],
    },
    /// A video message: its timestamp (ms) and body.
    Video {
        /// Timestamp in milliseconds.
        time: u32,
        /// The body (an FLV video tag's data).
        data: &'a [u8],
    },
    /// A data message: its handler's name and the AMF values after it, as they came.
    Data {
        /// The handler (`onCuePoint`, `@setDataFrame`…).
        handler: &'a str,
        /// The AMF0 values after it.
        data: &'a [u8],
    },
}

/// The answer to a client-to-server call.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome {
    /// `_result` with this value.
    Result(Value<'static>),
    /// `_error` with this description.
    Error(String),
    /// No handler: `_error` `NetConnection.Call.Failed`.
    NotFound,
}

/// Something an application asks of the server on its own initiative (from an event or a
/// manage tick), collected by [`Applications::take_actions`].
#[derive(Debug, Clone, PartialEq)]
pub enum AppAction {
    /// A server-to-client call on the client's NetConnection (`writer:writeAMFMessage`).
    Call {
        /// The client's session.
        session: u32,
        /// The method called on the client.
        method: String,
        /// Its arguments.
        args: Vec<Value<'static>>,
    },
    /// A server-to-client call on the application's flow writer `writer` of the client
    /// (`writer:newFlowWriter()`, then `writeAMFMessage` on it).
    WriterCall {
        /// The client's session.
        session: u32,
        /// The applications' number for the writer.
        writer: u32,
        /// The method called on the client.
        method: String,
        /// Its arguments.
        args: Vec<Value<'static>>,
    },
    /// Close the application's flow writer `writer` of the client (`close()` on it).
    WriterClose {
        /// The client's session.
        session: u32,
        /// The applications' number for the writer.
        writer: u32,
    },
    /// Close the client's session (`writer:close()` on its NetConnection writer).
    Close {
        /// The client's session.
        session: u32,
    },
    /// Add an address or prefix to the blacklist (`cumulus:addToBlacklist`).
    Deny(String),
    /// Remove an address or prefix from the blacklist (`cumulus:removeFromBlacklist`).
    Allow(String),
    /// Start or stop sending a stream's audio or video to a client that plays it
    /// (`listener.receiveAudio`, `listener.receiveVideo`).
    Receive {
        /// The client's session.
        session: u32,
        /// The stream name.
        name: String,
        /// Video (else audio).
        video: bool,
        /// Whether to send it.
        enabled: bool,
    },
    /// The server publishes the stream `name` of application `app` itself
    /// (`cumulus:publish`); the applications checked that nobody publishes it.
    Publish {
        /// The application path.
        app: String,
        /// The stream name.
        name: String,
    },
    /// End the server's own publication of `name` in `app` (`publication:close()`).
    Unpublish {
        /// The application path.
        app: String,
        /// The stream name.
        name: String,
    },
    /// Close a client's publication of `name` in `app` (`publication:close(code,
    /// description)`, Cumulus's `closePublisher`).
    ClosePublisher {
        /// The application path.
        app: String,
        /// The stream name.
        name: String,
        /// The status code after `NetStream.` (none when empty).
        code: String,
        /// The status description.
        description: String,
    },
    /// Feed a media message to the subscribers of stream `name` in `app`, published by the
    /// server or by a client (`publication:pushAudioPacket`, `pushVideoPacket`,
    /// `pushDataPacket`).
    Push {
        /// The application path.
        app: String,
        /// The stream name.
        name: String,
        /// A whole TC message (type, timestamp, body; RFC 7425 §5.1.1), at most
        /// [`crate::ipc::MAX_FLASH_MESSAGE`] bytes.
        message: Vec<u8>,
    },
    /// Add a member the applications know of, with no session here, to the NetGroup `group`
    /// (`cumulus.groups:join(peerId, groupId)`): newcomers hear of it as of any member.
    GroupJoin {
        /// The applications' number for this membership (for [`AppAction::GroupRelease`]).
        member: u64,
        /// The member's peer ID.
        peer_id: [u8; 32],
        /// The group.
        group: [u8; 32],
    },
    /// End the membership `member` (`member:release()`).
    GroupRelease {
        /// The applications' number for the membership.
        member: u64,
    },
    /// Tell a client that plays a stream whether it may read the stream's samples
    /// (`listener.audioSampleAccess`, `listener.videoSampleAccess`: a `|RtmpSampleAccess` data
    /// message).
    SampleAccess {
        /// The client's session.
        session: u32,
        /// The stream name.
        name: String,
        /// Audio sample access.
        audio: bool,
        /// Video sample access.
        video: bool,
    },
}

/// Server applications, as the NetConnection layer sees them. The stream events have
/// defaults that allow everything and watch nothing.
pub trait Applications: Send {
    /// A client connects to `client.app` with the `connect` arguments after the properties.
    fn connect(
        &mut self,
        client: &ClientInfo<'_>,
        details: &ConnectDetails<'_>,
        args: &[Value<'_>],
    ) -> ConnectVerdict;
    /// A client calls `method`.
    fn call(&mut self, client: &ClientInfo<'_>, method: &str, args: &[Value<'_>]) -> CallOutcome;
    /// A connected client went away.
    fn disconnect(&mut self, client: &ClientInfo<'_>);
    /// A connected client's session failed (timed out) instead of closing, with the error
    /// text (Cumulus's `onFailed`); [`Self::disconnect`] follows.
    fn fail(&mut self, _client: &ClientInfo<'_>, _error: &str) {}
    /// A client that connected before the control plane restarted, known again (its
    /// `connect` is not replayed).
    fn restore(&mut self, _client: &ClientInfo<'_>) {}
    /// A client publishes `name`; `Err` refuses it (`NetStream.Publish.BadName` with the
    /// description).
    fn publish(&mut self, _client: &ClientInfo<'_>, _name: &str) -> Result<(), String> {
        Ok(())
    }
    /// A client stopped publishing `name`.
    fn unpublish(&mut self, _client: &ClientInfo<'_>, _name: &str) {}
    /// A client plays `name`; `Err` refuses it (`NetStream.Play.Failed` with the description).
    fn subscribe(&mut self, _client: &ClientInfo<'_>, _name: &str) -> Result<(), String> {
        Ok(())
    }
    /// A client stopped playing `name`.
    fn unsubscribe(&mut self, _client: &ClientInfo<'_>, _name: &str) {}
    /// Which of its publications' messages the application `app` watches (Cumulus's
    /// `onAudioPacket`, `onVideoPacket`, `onDataPacket`), asked when a publication starts.
    fn media_events(&self, _app: &str) -> MediaEvents {
        MediaEvents::NONE
    }
    /// A message `client` published on `name`, of a kind its application watches.
    fn media_packet(&mut self, _client: &ClientInfo<'_>, _name: &str, _packet: MediaPacket<'_>) {}
    /// How a client's publication or play of `name` did over the last second (its
    /// `publisher` field says which).
    fn qos(&mut self, _client: &ClientInfo<'_>, _name: &str, _qos: &QosEntry) {}
    /// How the sessions' links are doing (the workers' report, once a second): Cumulus's
    /// `client.ping` and `client.elapsedFromReception`.
    fn timings(&mut self, _entries: &[SessionTiming]) {}
    /// The periodic manage tick (every [`MANAGE_PERIOD`]).
    fn manage(&mut self) {}
    /// How the applications wake the control loop when something of theirs is ready (a
    /// socket's reception): the loop then calls [`Applications::poll`]. Given once, before
    /// any event.
    fn set_waker(&mut self, _waker: Waker) {}
    /// Runs what became ready since the last call (the scripts' socket events); the control
    /// loop calls it at every turn, so it must be cheap when nothing is.
    fn poll(&mut self) {}
    /// A connected client joined the NetGroup `group` (Cumulus's `onJoinGroup`), or was in it
    /// before a control-process restart (`restored`: the membership is known again, without
    /// the event).
    fn join_group(&mut self, _client: &ClientInfo<'_>, _group: &[u8; 32], _restored: bool) {}
    /// A connected client left the NetGroup `group`, or ended (Cumulus's `onUnjoinGroup`).
    fn unjoin_group(&mut self, _client: &ClientInfo<'_>, _group: &[u8; 32]) {}
    /// Whether the applications want to see IHellos ([`Applications::handshake`]): an
    /// application defines Cumulus's `onHandshake`.
    fn wants_handshakes(&self) -> bool {
        false
    }
    /// Where to send a client whose IHello from `from` asks for `url` (its `rtmfp://` EPD),
    /// its `attempts`-th with that tag (Cumulus's `onHandshake`): addresses for a Redirect,
    /// or none for the ordinary answer.
    fn handshake(&mut self, _from: SocketAddr, _url: &str, _attempts: u32) -> Vec<SocketAddr> {
        Vec::new()
    }
    /// A P2P rendezvous looks for `peer_id`, which is not connected here (Cumulus's
    /// `onRendezVousUnknown`): addresses to redirect the initiator to (other servers, say), or
    /// none to leave it unanswered.
    fn rendezvous_unknown(&mut self, _peer_id: &[u8; 32]) -> Vec<SocketAddr> {
        Vec::new()
    }
    /// What the applications asked for since the last call.
    fn take_actions(&mut self) -> Vec<AppAction> {
        Vec::new()
    }
}

/// How often [`Applications::manage`] runs (Cumulus's `onManage` period).
pub const MANAGE_PERIOD: std::time::Duration = std::time::Duration::from_secs(2);

/// The file that makes a directory of the www root an application (Cumulus layout).
pub const APP_SCRIPT: &str = "main.lua";

/// The built-in registry: an application exists when `www/<path>/main.lua` does; the root
/// application (`""`) always exists. No script runs: calls have no handler (for benchmarks
/// and tests that need no Lua).
#[derive(Debug, Clone)]
pub struct WwwApps {
    root: PathBuf,
}

impl WwwApps {
    /// A registry over the www root `root`.
    pub fn new(root: impl Into<PathBuf>) -> WwwApps {
        WwwApps { root: root.into() }
    }

    /// The www root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `app` names an application: the root, or a relative path of plain components
    /// whose directory holds [`APP_SCRIPT`].
    pub fn exists(&self, app: &str) -> bool {
        let app = app.trim_matches('/');
        if app.is_empty() {
            return true;
        }
        let mut dir = self.root.clone();
        for part in app.split('/') {
            if part.is_empty() || part == "." || part == ".." || part.contains('\\') {
                return false;
            }
            dir.push(part);
        }
        dir.join(APP_SCRIPT).is_file()
    }
}

impl Applications for WwwApps {
    fn connect(
        &mut self,
        client: &ClientInfo<'_>,
        _: &ConnectDetails<'_>,
        _: &[Value<'_>],
    ) -> ConnectVerdict {
        if self.exists(client.app) {
            ConnectVerdict::Accept(Vec::new())
        } else {
            ConnectVerdict::InvalidApp
        }
    }

    fn call(&mut self, _: &ClientInfo<'_>, _: &str, _: &[Value<'_>]) -> CallOutcome {
        CallOutcome::NotFound
    }

    fn disconnect(&mut self, _: &ClientInfo<'_>) {}
}

/// The authority and the application path of a URL: `rtmfp://host:port/app/sub?x=1` gives
/// `("host:port", "app/sub")`, the path without its query, fragment and surrounding slashes. A
/// URL without a scheme is read from its authority on.
pub fn url_parts(url: &str) -> (&str, &str) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.split(['?', '#']).next().unwrap_or("");
    (authority, path.trim_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts_are_the_authority_and_the_application_path() {
        assert_eq!(
            url_parts("rtmfp://host:1935/app/sub/?x=1#f"),
            ("host:1935", "app/sub")
        );
        assert_eq!(url_parts("rtmfp://host"), ("host", ""));
        assert_eq!(url_parts("host/app"), ("host", "app"));
    }

    #[test]
    fn applications_are_directories_with_main_lua() {
        let root = std::env::temp_dir().join(format!("updraft-apps-{}", std::process::id()));
        std::fs::create_dir_all(root.join("live/sub")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("live/main.lua"), "").unwrap();
        std::fs::write(root.join("live/sub/main.lua"), "").unwrap();
        let apps = WwwApps::new(&root);
        assert!(apps.exists(""));
        assert!(apps.exists("/"));
        assert!(apps.exists("live"));
        assert!(apps.exists("live/sub/"));
        assert!(!apps.exists("empty"));
        assert!(!apps.exists("missing"));
        assert!(!apps.exists("live/../live"));
        assert!(!apps.exists("live//sub"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
