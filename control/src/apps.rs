//! The seam where server applications plug in: one trait the NetConnection layer calls for
//! `connect`, for every client-to-server call it does not handle itself, and on disconnect.
//! Lua applications (the `scripting` crate) implement it later; [`WwwApps`] is the built-in
//! registry that only knows which applications exist.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rtmfp::amf::Value;

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

/// The answer to `connect`.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectVerdict {
    /// Accept, with extra members for the `_result` info object.
    Accept,
    /// No such application (`NetConnection.Connect.InvalidApp`).
    InvalidApp,
    /// Refused, with a description (`NetConnection.Connect.Rejected`).
    Reject(String),
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

/// Server applications, as the NetConnection layer sees them.
pub trait Applications: Send {
    /// A client connects to `client.app` with the `connect` arguments after the properties.
    fn connect(&mut self, client: &ClientInfo<'_>, args: &[Value<'_>]) -> ConnectVerdict;
    /// A client calls `method`.
    fn call(&mut self, client: &ClientInfo<'_>, method: &str, args: &[Value<'_>]) -> CallOutcome;
    /// A connected client went away.
    fn disconnect(&mut self, client: &ClientInfo<'_>);
}

/// The file that makes a directory of the www root an application (Cumulus layout).
pub const APP_SCRIPT: &str = "main.lua";

/// The built-in registry: an application exists when `www/<path>/main.lua` does; the root
/// application (`""`) always exists. Calls have no handler until Lua applications come.
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
    fn connect(&mut self, client: &ClientInfo<'_>, _args: &[Value<'_>]) -> ConnectVerdict {
        if self.exists(client.app) {
            ConnectVerdict::Accept
        } else {
            ConnectVerdict::InvalidApp
        }
    }

    fn call(&mut self, _: &ClientInfo<'_>, _: &str, _: &[Value<'_>]) -> CallOutcome {
        CallOutcome::NotFound
    }

    fn disconnect(&mut self, _: &ClientInfo<'_>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

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
