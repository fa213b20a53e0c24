//! Lua server applications with the Cumulus API (`cumulus-compat.md` §2.3), run by the
//! control plane through the [`Applications`] seam.
//!
//! **Application model.** `www/main.lua` is the root application (path `""`);
//! `www/a/main.lua` serves `rtmfp://host/a`, `www/a/b/main.lua` serves `/a/b`. Each
//! application runs in its own environment table whose metatable falls back to its parent's
//! (the root's falls back to the globals), so a child inherits its parent's variables and
//! functions; `super` is the parent's environment and a parent reaches a loaded child by name.
//! The root loads at start, the others at their first connection.
//!
//! **Hot reload.** `main.lua`'s modification time is checked whenever an application is
//! resolved (each `connect`) and, for every loaded application, every manage tick. When it
//! changed: `onStop(path)`, a fresh environment, the file runs again, `onStart(path)`. A
//! deleted `main.lua` unloads its application. A file that fails to load keeps its error, and
//! connections to it are rejected with that error until the file is fixed.
//!
//! **Events.** `onConnection(client, ...)` (return a table of members for the
//! `Connect.Success` info object; `error(...)` rejects), `onFailed(client, error)` (the
//! session timed out; `onDisconnection` follows), `onDisconnection(client)`,
//! `onPublish(client, publication)` and `onSubscribe(client, listener)` (`false` or
//! `error(...)` refuses: `NetStream.Publish.BadName`, `NetStream.Play.Failed`),
//! `onUnpublish`, `onUnsubscribe`, `onManage()` (every two seconds, in the applications that
//! define it), `client:onManage()`, and the media events `onAudioPacket`, `onVideoPacket` and
//! `onDataPacket` (only the kinds an application defines leave the data plane). A client's
//! `NetConnection.call("name", ...)` calls `client:name(...)`; its first result is the
//! `_result` (unless `writer:writeAMFResult` answered first), an error the `_error`.
//!
//! **Objects.** See [`api`]: the `cumulus` object (`clients`, `publications`, `configs`,
//! `epochTime`, `toAMF`, `toAMF0`, `fromAMF`, `absolutePath`, `split`, `sha256`,
//! `addToBlacklist`, `removeFromBlacklist`, `publish(name)` for a publication of the
//! application's own, the socket factories and `sendMail` of [`sockets`]), the client (`id`,
//! `rawId`, `path`, `address`, `pageUrl`, `swfUrl`, `flashVersion`, `ping`,
//! `elapsedFromReception`, the connect URL's query parameters, `writer`), the writer
//! (`writeAMFMessage`, `writeAMFResult`, `writeStatusResponse`, `newFlowWriter`, `close`),
//! publications (with the push API: `pushAudioPacket`, `pushVideoPacket`, `pushDataPacket`,
//! `flush`) and listeners (with their QOS objects and the listener's
//! `receiveAudio`, `receiveVideo` and sample access switches), and the logging functions
//! `ERROR`, `WARN`, `NOTE`, `INFO`, `DEBUG`, `TRACE`.
//!
//! **Bounds.** A script that runs longer than [`SCRIPT_TIME_LIMIT`] in one event is stopped
//! with an error, and the Lua heap is capped at [`MEMORY_LIMIT`]: a faulty script cannot stall
//! the handshakes the control plane also serves, nor exhaust the host.

pub mod api;
pub mod convert;
pub mod sockets;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mlua::{Function, HookTriggers, IntoLuaMulti, Lua, MultiValue, Table, Value as LuaValue};
use rtmfp::amf::{Member, Value};
use updraft_control::apps::{
    url_parts, AppAction, Applications, CallOutcome, ClientInfo, ConnectDetails, ConnectVerdict,
    MediaPacket, Waker, APP_SCRIPT,
};
use updraft_control::ids::SERVER_SESSION;
use updraft_control::ipc::{MediaEvents, QosEntry, SessionTiming};
use updraft_control::streams::stream_key;

use crate::api::{Api, Outbox};
use crate::convert::{from_lua, to_lua};
use crate::sockets::{Event, Sockets};

/// Longest one event may run a script before it is stopped with an error.
pub const SCRIPT_TIME_LIMIT: Duration = Duration::from_secs(5);
/// Most memory the Lua heap may hold.
pub const MEMORY_LIMIT: usize = 1 << 30;
/// Lua instructions between two checks of [`SCRIPT_TIME_LIMIT`].
const INSTRUCTIONS_PER_CHECK: u32 = 100_000;

/// Why an application cannot serve a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// No such application (`NetConnection.Connect.InvalidApp`).
    Missing,
    /// Its script failed to load, with the error (`NetConnection.Connect.Rejected`).
    Failed(String),
}

/// A loaded application.
struct App {
    env: Table,
    /// `main.lua`'s modification time when loaded (`None`: the root without a file).
    modified: Option<SystemTime>,
    /// The load error, when the script failed.
    error: Option<String>,
}

/// A publication the applications accepted, or made.
struct Publication {
    /// Its application's path.
    app: String,
    /// The stream name.
    name: String,
    table: Table,
    /// The editor of its `listeners` collection.
    listeners: Table,
    /// The publisher's session; [`SERVER_SESSION`] for the applications' own
    /// (`cumulus:publish`).
    session: u32,
}

/// A connected client.
struct Client {
    table: Table,
    app: String,
    /// What it plays, by stream name.
    listeners: HashMap<String, Table>,
}

/// The Lua applications of a www root.
pub struct LuaApps {
    lua: Lua,
    root: PathBuf,
    apps: BTreeMap<String, App>,
    clients: HashMap<u32, Client>,
    /// Accepted publications, by [`stream_key`].
    publications: HashMap<String, Publication>,
    api: Api,
    outbox: Arc<Mutex<Outbox>>,
    /// The scripts' sockets.
    sockets: Arc<Mutex<Sockets>>,
    /// When the running event must end, read by the Lua hook.
    deadline: Arc<Mutex<Option<std::time::Instant>>>,
    /// How long one event may run ([`SCRIPT_TIME_LIMIT`] unless changed).
    time_limit: Duration,
    /// A loaded application defines `onHandshake` (checked when applications load or unload,
    /// and every manage tick).
    handshake_hook: bool,
}

impl std::fmt::Debug for LuaApps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuaApps")
            .field("root", &self.root)
            .field("apps", &self.apps.keys().collect::<Vec<_>>())
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

/// A Lua error as a client may read it: the message without the script position (Cumulus
/// sends the position too, which shows clients the server's paths).
pub fn describe(e: &mlua::Error) -> String {
    let full = match e {
        mlua::Error::RuntimeError(s) => s.clone(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::CallbackError { cause, .. } => return describe(cause),
        other => other.to_string(),
    };
    let message = full.split("\nstack traceback:").next().unwrap_or_default();
    strip_position(message).to_string()
}

/// `file:12: message` → `message`.
fn strip_position(s: &str) -> &str {
    let mut rest = s;
    while let Some(i) = rest.find(':') {
        let after = &rest[i + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(": ") {
            return &after[digits + 2..];
        }
        rest = after;
    }
    s
}

/// The parent path of an application path (`"a/b"` → `"a"`, `"a"` → `""`), `None` for the
/// root.
fn parent_of(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    Some(path.rsplit_once('/').map_or("", |(p, _)| p))
}

/// Most components of an application path (`a/b/c` has 3): a client cannot make the
/// resolution of its `connect` deep or long.
pub const MAX_APP_DEPTH: usize = 16;
/// Longest application path, in bytes.
pub const MAX_APP_PATH: usize = 512;

/// Whether `path` is the root or at most [`MAX_APP_DEPTH`] plain components (no `.`, `..`,
/// empty parts, backslashes, nor the names Lua metatables reserve).
fn valid_path(path: &str) -> bool {
    path.is_empty()
        || path.len() <= MAX_APP_PATH
            && path.split('/').count() <= MAX_APP_DEPTH
            && path.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && !part.contains('\\')
                    && part != "__index"
                    && part != "__metatable"
            })
}

impl LuaApps {
    /// The applications of the www root `root`, with the configuration `sections` (every key
    /// of the configuration file, by section, for `cumulus.configs`). Loads the root
    /// application; a root script that fails to load is logged and kept as its error.
    pub fn new(
        root: impl Into<PathBuf>,
        sections: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> mlua::Result<LuaApps> {
        let root: PathBuf = root.into();
        let lua = Lua::new();
        // The scripts share the control process with the handshakes: `os.exit` would end it.
        lua.load("os.exit = function() error('os.exit is not available to applications', 2) end")
            .set_name("=sandbox")
            .exec()?;
        lua.set_memory_limit(MEMORY_LIMIT)?;
        let outbox = Arc::new(Mutex::new(Outbox::default()));
        let sockets = Arc::new(Mutex::new(Sockets::default()));
        let api = Api::install(&lua, &root, sections, Arc::clone(&outbox), &sockets)?;
        let deadline: Arc<Mutex<Option<std::time::Instant>>> = Arc::new(Mutex::new(None));
        let hook_deadline = Arc::clone(&deadline);
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(INSTRUCTIONS_PER_CHECK),
            move |_, _| {
                let late = hook_deadline
                    .lock()
                    .ok()
                    .and_then(|d| *d)
                    .is_some_and(|d| std::time::Instant::now() > d);
                if late {
                    return Err(mlua::Error::RuntimeError(
                        "script stopped: it ran past its time limit".into(),
                    ));
                }
                Ok(mlua::VmState::Continue)
            },
        );
        let mut apps = LuaApps {
            lua,
            root,
            apps: BTreeMap::new(),
            clients: HashMap::new(),
            publications: HashMap::new(),
            api,
            outbox,
            sockets,
            deadline,
            time_limit: SCRIPT_TIME_LIMIT,
            handshake_hook: false,
        };
        if let Err(Unavailable::Failed(e)) = apps.resolve("") {
            tracing::error!(error = %e, "the root application failed to load");
        }
        Ok(apps)
    }

    /// Changes how long one event may run a script (default [`SCRIPT_TIME_LIMIT`]).
    pub fn set_time_limit(&mut self, limit: Duration) {
        self.time_limit = limit;
    }

    /// Runs `f`, a script of application `app`, under the time limit.
    fn timed<R>(&self, app: &str, f: impl FnOnce() -> mlua::Result<R>) -> mlua::Result<R> {
        if let Ok(mut d) = self.deadline.lock() {
            *d = Some(std::time::Instant::now() + self.time_limit);
        }
        if let Ok(mut o) = self.outbox.lock() {
            if o.app != app {
                o.app = app.to_string();
            }
        }
        let r = f();
        if let Ok(mut d) = self.deadline.lock() {
            *d = None;
        }
        r
    }

    /// Calls `f(args…)` under the time limit.
    /// Whether a loaded application defines `onHandshake`, kept in `handshake_hook`.
    fn refresh_handshake_hook(&mut self) {
        self.handshake_hook = self.apps.values().any(|a| {
            a.error.is_none()
                && matches!(
                    a.env.raw_get::<LuaValue>("onHandshake"),
                    Ok(LuaValue::Function(_))
                )
        });
    }

    /// The loaded applications whose script runs (path, environment).
    fn working_apps(&self) -> Vec<(String, Table)> {
        self.apps
            .iter()
            .filter(|(_, a)| a.error.is_none())
            .map(|(p, a)| (p.clone(), a.env.clone()))
            .collect()
    }

    fn invoke(&self, app: &str, f: &Function, args: impl IntoLuaMulti) -> mlua::Result<MultiValue> {
        self.timed(app, || f.call::<MultiValue>(args))
    }

    /// The application `path`, loaded or reloaded as its `main.lua` requires.
    pub fn resolve(&mut self, path: &str) -> Result<Table, Unavailable> {
        if !valid_path(path) {
            return Err(Unavailable::Missing);
        }
        let parent = match parent_of(path) {
            Some(p) => match self.resolve(p) {
                Ok(env) => Some(env),
                Err(e) => {
                    // A child cannot outlive its parent's main.lua.
                    if e == Unavailable::Missing {
                        self.unload(path);
                    }
                    return Err(e);
                }
            },
            None => None,
        };
        let file = self.root.join(path).join(APP_SCRIPT);
        let modified = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
        if modified.is_none() && !path.is_empty() {
            self.unload(path);
            return Err(Unavailable::Missing);
        }
        if let Some(app) = self.apps.get(path) {
            if app.modified == modified {
                return match &app.error {
                    Some(e) => Err(Unavailable::Failed(e.clone())),
                    None => Ok(app.env.clone()),
                };
            }
        }
        self.load(path, parent, &file, modified)
    }

    /// (Re)loads the application `path` from `file`.
    fn load(
        &mut self,
        path: &str,
        parent: Option<Table>,
        file: &Path,
        modified: Option<SystemTime>,
    ) -> Result<Table, Unavailable> {
        let reload = self.apps.contains_key(path);
        if reload {
            self.stop(path);
        }
        let failed = |e: mlua::Error| Unavailable::Failed(describe(&e));
        let env = self.environment(path, parent.as_ref()).map_err(failed)?;
        let mut error = None;
        if modified.is_some() {
            let loaded = std::fs::read(file)
                .map_err(|e| mlua::Error::RuntimeError(format!("cannot read {APP_SCRIPT}: {e}")))
                .and_then(|code| {
                    self.timed(path, || {
                        self.lua
                            .load(code)
                            .set_name(format!("@{}", file.display()))
                            .set_environment(env.clone())
                            .exec()
                    })
                });
            if let Err(e) = loaded {
                tracing::error!(app = %path, error = %e, "application failed to load");
                error = Some(describe(&e));
            }
        }
        // Children loaded before see the new environment.
        for (child_path, child) in &self.apps {
            if parent_of(child_path) == Some(path) {
                let _ = set_parent(&self.lua, &child.env, Some(&env));
                if let Some(name) = child_path.rsplit('/').next() {
                    let _ = env.raw_set(name, child.env.clone());
                }
            }
        }
        self.apps.insert(
            path.to_string(),
            App {
                env: env.clone(),
                modified,
                error: error.clone(),
            },
        );
        if let Some(e) = error {
            return Err(Unavailable::Failed(e));
        }
        tracing::info!(app = %path, reload, "application started");
        self.event(&env, "onStart", path, (path,));
        self.refresh_handshake_hook();
        Ok(env)
    }

    /// A fresh environment for `path` under `parent` (the globals for the root).
    fn environment(&self, path: &str, parent: Option<&Table>) -> mlua::Result<Table> {
        let env = self.lua.create_table()?;
        set_parent(&self.lua, &env, parent)?;
        if let (Some(parent), Some(name)) = (parent, path.rsplit('/').next()) {
            parent.raw_set(name, env.clone())?;
        }
        Ok(env)
    }

    /// `onStop(path)` for a loaded application.
    fn stop(&mut self, path: &str) {
        if let Some(app) = self.apps.get(path) {
            if app.error.is_none() {
                let env = app.env.clone();
                self.event(&env, "onStop", path, (path,));
            }
        }
        // Its sockets close with it.
        let closed = self
            .sockets
            .lock()
            .map(|mut s| s.close_app(path))
            .unwrap_or_default();
        for id in closed {
            let _ = self.api.forget_socket(id);
        }
        // Its group memberships end with it.
        if let Ok(mut o) = self.outbox.lock() {
            let mut own: Vec<u64> = o
                .members
                .iter()
                .filter(|(_, app)| app.as_str() == path)
                .map(|(&m, _)| m)
                .collect();
            own.sort_unstable();
            for member in own {
                o.members.remove(&member);
                o.actions.push(AppAction::GroupRelease { member });
            }
        }
        // Its own publications end with it: at once in its books (so that a reloaded script
        // may publish the names again), and in the stream directory with the next actions.
        let own: Vec<String> = self
            .publications
            .values()
            .filter(|p| p.session == SERVER_SESSION && p.app == path)
            .map(|p| p.name.clone())
            .collect();
        for name in own {
            self.end_server_publication(&stream_key(path, &name));
            if let Ok(mut o) = self.outbox.lock() {
                o.actions.push(AppAction::Unpublish {
                    app: path.to_string(),
                    name,
                });
            }
        }
    }

    /// Unloads `path` (its `main.lua` is gone) and the applications under it: `onStop` runs
    /// for each, deepest first, and its parent no longer reaches it by name.
    fn unload(&mut self, path: &str) {
        if !self.apps.contains_key(path) {
            return;
        }
        let prefix = format!("{path}/");
        let mut gone: Vec<String> = self
            .apps
            .keys()
            .filter(|p| p.as_str() == path || p.starts_with(&prefix))
            .cloned()
            .collect();
        gone.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in gone {
            self.stop(&p);
            self.apps.remove(&p);
            if let (Some(parent), Some(name)) = (parent_of(&p), p.rsplit('/').next()) {
                if let Some(app) = self.apps.get(parent) {
                    let _ = app.env.raw_set(name, LuaValue::Nil);
                }
            }
            tracing::info!(app = %p, "application unloaded: its main.lua is gone");
        }
        self.refresh_handshake_hook();
        let _ = self.lua.gc_collect();
    }

    /// Calls the event `name` of `env` (inherited ones included) if it is a function; logs
    /// an error. Answers its results, `None` when there is no such event or it failed.
    fn event(
        &self,
        env: &Table,
        name: &str,
        app: &str,
        args: impl IntoLuaMulti,
    ) -> Option<MultiValue> {
        self.event_result(env, app, name, args).unwrap_or_else(|e| {
            tracing::error!(app, event = name, error = %e, "script error");
            None
        })
    }

    /// Like [`LuaApps::event`], but the error is answered (for the events whose error refuses
    /// something; [`describe`] gives what a client may read of it). `Ok(None)`: no such event.
    fn event_result(
        &self,
        env: &Table,
        app: &str,
        name: &str,
        args: impl IntoLuaMulti,
    ) -> mlua::Result<Option<MultiValue>> {
        match env.get::<LuaValue>(name) {
            Ok(LuaValue::Function(f)) => self.invoke(app, &f, args).map(Some),
            _ => Ok(None),
        }
    }

    /// `first` followed by the Lua forms of `args`: a method's or an event's arguments.
    fn arguments(&self, first: &Table, args: &[Value<'_>]) -> MultiValue {
        std::iter::once(LuaValue::Table(first.clone()))
            .chain(
                args.iter()
                    .map(|a| to_lua(&self.lua, a).unwrap_or(LuaValue::Nil)),
            )
            .collect()
    }

    /// Makes `table` the client object of `client`, in `cumulus.clients`.
    fn register(&mut self, client: &ClientInfo<'_>, table: Table) -> mlua::Result<()> {
        self.api.add_client(&table)?;
        self.clients.insert(
            client.session,
            Client {
                table,
                app: client.app.to_string(),
                listeners: HashMap::new(),
            },
        );
        Ok(())
    }

    /// A client's object and its application's environment, for the events that may refuse
    /// something: a client the applications do not know, or whose application is not loaded
    /// (its script failed), is refused rather than let through unchecked.
    fn ready(&self, client: &ClientInfo<'_>) -> Result<(Table, Table), String> {
        let c = self
            .clients
            .get(&client.session)
            .ok_or("the application does not know this client")?;
        let env = self
            .env_of(&c.app)
            .ok_or_else(|| format!("application '{}' is not running", c.app))?;
        Ok((c.table.clone(), env))
    }

    /// Makes `publication` (with `admin`, its listeners' editor) the publication of `name` in
    /// `app`, by `session`: the listeners waiting for the name join it, and it is in
    /// `cumulus.publications`.
    fn accept_publication(
        &mut self,
        app: &str,
        name: &str,
        publication: Table,
        admin: Table,
        session: u32,
    ) -> mlua::Result<()> {
        for (&s, c) in &self.clients {
            if c.app != app {
                continue;
            }
            if let Some(listener) = c.listeners.get(name) {
                let _ = listener.set("publication", publication.clone());
                let _ = api::add_listener(&admin, s, listener);
            }
        }
        self.api.add_publication(name, &publication)?;
        let key = stream_key(app, name);
        if let Ok(mut o) = self.outbox.lock() {
            o.published.insert(key.clone());
        }
        self.publications.insert(
            key,
            Publication {
                app: app.to_string(),
                name: name.to_string(),
                table: publication,
                listeners: admin,
                session,
            },
        );
        Ok(())
    }

    /// Takes the publication of the stream `key` out of the applications' books (not out of
    /// `cumulus.publications`: the caller does that, after any event about it).
    fn forget(&mut self, key: &str) -> Option<Publication> {
        let p = self.publications.remove(key)?;
        if let Ok(mut o) = self.outbox.lock() {
            o.published.remove(key);
        }
        Some(p)
    }

    /// Ends the applications' own publication of the stream `key`, if it is theirs.
    fn end_server_publication(&mut self, key: &str) {
        if self
            .publications
            .get(key)
            .is_some_and(|p| p.session == SERVER_SESSION)
        {
            if let Some(p) = self.forget(key) {
                let _ = self.api.remove_publication(&p.name, &p.table);
            }
        }
    }

    /// Calls the method `name` of the script's object `object` (`object:name(args…)`) as
    /// application `app`; logs an error. Answers its results, `None` when it has no such
    /// method or it failed.
    fn method(
        &self,
        app: &str,
        object: &Table,
        name: &str,
        args: impl IntoLuaMulti,
    ) -> Option<MultiValue> {
        let Ok(LuaValue::Function(f)) = object.get::<LuaValue>(name) else {
            return None;
        };
        let mut all = args.into_lua_multi(&self.lua).ok()?;
        all.push_front(LuaValue::Table(object.clone()));
        self.invoke(app, &f, all)
            .map_err(|e| tracing::error!(app, method = name, error = %e, "script error"))
            .ok()
    }

    /// Hands socket `id` (of application `app`) what its thread got.
    fn socket_event(&mut self, id: u32, app: &str, event: Event) {
        let Ok(Some(object)) = self.api.socket(id) else {
            return;
        };
        let string = |b: &[u8]| self.lua.create_string(b);
        match event {
            Event::Data(bytes) => {
                let data = self
                    .sockets
                    .lock()
                    .map(|mut s| s.with_pending(id, bytes))
                    .unwrap_or_default();
                let Ok(text) = string(&data) else { return };
                // Cumulus's answer: how many bytes (at the end) were not consumed.
                let rest = self
                    .method(app, &object, "onReception", (text,))
                    .and_then(|v| v.into_iter().next())
                    .and_then(|v| match v {
                        LuaValue::Number(n) if n >= 1.0 => Some(n as usize),
                        LuaValue::Integer(n) => usize::try_from(n).ok(),
                        _ => None,
                    })
                    .unwrap_or(0);
                let kept = self.sockets.lock().map(|mut s| s.keep(id, &data, rest));
                if let Ok(Err(e)) = kept {
                    tracing::warn!(app, socket = id, error = %e, "script's TCP client dropped");
                    self.socket_ended(id, &object, Some(e));
                    self.method(app, &object, "onDisconnection", ());
                }
            }
            Event::Datagram(bytes, from) => {
                if let Ok(text) = string(&bytes) {
                    self.method(app, &object, "onReception", (text, from.to_string()));
                }
            }
            Event::Closed(error) => {
                self.socket_ended(id, &object, error);
                self.method(app, &object, "onDisconnection", ());
            }
            Event::MailSent(error) => {
                // Cumulus's scripts read `mail.error` in `onSent()`; it is the argument too.
                self.socket_ended(id, &object, error.clone());
                self.method(app, &object, "onSent", (error,));
            }
            Event::Accepted(stream) => {
                let adopted = self.sockets.lock().map(|mut s| {
                    let client = s.new_id();
                    s.adopt(client, app, stream).map(|()| client)
                });
                match adopted {
                    Ok(Ok(client)) => {
                        if let Ok(c) = self.api.accepted(client) {
                            self.method(app, &object, "clientHandler", (c,));
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(app, socket = id, error = %e, "connection refused");
                    }
                    Err(_) => {}
                }
            }
        }
    }

    /// Socket `id` (the script's `object`) is done: closed, its `error` field set, and no
    /// longer handed receptions. Its event comes next.
    fn socket_ended(&self, id: u32, object: &Table, error: Option<String>) {
        if let Ok(mut s) = self.sockets.lock() {
            s.close(id);
        }
        let _ = object.raw_set("error", error);
        let _ = self.api.forget_socket(id);
    }

    /// The environment of a connected client's application, if it is still loaded.
    fn env_of(&self, app: &str) -> Option<Table> {
        self.apps
            .get(app)
            .filter(|a| a.error.is_none())
            .map(|a| a.env.clone())
    }

    /// Checks every loaded application's `main.lua` and reloads what changed.
    fn reload_changed(&mut self) {
        let paths: Vec<String> = self.apps.keys().cloned().collect();
        for path in paths {
            let _ = self.resolve(&path);
        }
    }
}

/// Makes `env` fall back to `parent` (or the globals) and sets `super`.
fn set_parent(lua: &Lua, env: &Table, parent: Option<&Table>) -> mlua::Result<()> {
    let meta = lua.create_table()?;
    match parent {
        Some(p) => {
            meta.raw_set("__index", p.clone())?;
            env.raw_set("super", p.clone())?;
        }
        None => meta.raw_set("__index", lua.globals())?,
    }
    env.set_metatable(Some(meta));
    Ok(())
}

/// Whether an event's first result refuses (`false`).
fn refused(v: &MultiValue) -> bool {
    matches!(v.iter().next(), Some(LuaValue::Boolean(false)))
}

impl Applications for LuaApps {
    fn connect(
        &mut self,
        client: &ClientInfo<'_>,
        details: &ConnectDetails<'_>,
        args: &[Value<'_>],
    ) -> ConnectVerdict {
        let env = match self.resolve(client.app) {
            Ok(env) => env,
            Err(Unavailable::Missing) => return ConnectVerdict::InvalidApp,
            Err(Unavailable::Failed(e)) => return ConnectVerdict::Reject(e),
        };
        let table = match self.api.new_client(&self.lua, client, details) {
            Ok(t) => t,
            Err(e) => return ConnectVerdict::Reject(describe(&e)),
        };
        let call_args = self.arguments(&table, args);
        let extra = match self.event_result(&env, client.app, "onConnection", call_args) {
            // An error rejects (an empty message: Cumulus's "client rejected"); any result but
            // a table is ignored, `false` included, as Cumulus does.
            Err(e) => {
                let e = describe(&e);
                let why = if e.is_empty() {
                    "client rejected".into()
                } else {
                    e
                };
                return ConnectVerdict::Reject(why);
            }
            Ok(Some(v)) => match v.into_iter().next() {
                Some(LuaValue::Table(t)) => members(&t),
                _ => Vec::new(),
            },
            Ok(None) => Vec::new(),
        };
        match self.register(client, table) {
            Ok(()) => ConnectVerdict::Accept(extra),
            Err(e) => ConnectVerdict::Reject(describe(&e)),
        }
    }

    fn call(&mut self, client: &ClientInfo<'_>, method: &str, args: &[Value<'_>]) -> CallOutcome {
        let Some(c) = self.clients.get(&client.session) else {
            return CallOutcome::NotFound;
        };
        let f = match c.table.get::<LuaValue>(method) {
            Ok(LuaValue::Function(f)) => f,
            _ => return CallOutcome::NotFound,
        };
        let answering = |to| {
            self.outbox
                .lock()
                .ok()
                .and_then(|mut o| std::mem::replace(&mut o.answering, to))
        };
        answering(Some((client.session, None)));
        let outcome = self.invoke(&c.app, &f, self.arguments(&c.table, args));
        let written = answering(None).and_then(|(_, v)| v);
        match outcome {
            // An explicit `writeAMFResult` answers; else the first value returned.
            Ok(v) => CallOutcome::Result(
                written.unwrap_or_else(|| v.iter().next().map_or(Value::Null, from_lua)),
            ),
            Err(e) => {
                tracing::debug!(app = %c.app, method, error = %e, "client call failed");
                CallOutcome::Error(describe(&e))
            }
        }
    }

    fn disconnect(&mut self, client: &ClientInfo<'_>) {
        let Some(c) = self.clients.remove(&client.session) else {
            return;
        };
        if let Some(env) = self.env_of(&c.app) {
            self.event(&env, "onDisconnection", &c.app, (c.table.clone(),));
        }
        let _ = self.api.remove_client(&c.table);
        if let Ok(mut o) = self.outbox.lock() {
            o.timings.remove(&client.session);
        }
    }

    fn fail(&mut self, client: &ClientInfo<'_>, error: &str) {
        let Some(c) = self.clients.get(&client.session) else {
            return;
        };
        let (table, app) = (c.table.clone(), c.app.clone());
        if let Some(env) = self.env_of(&app) {
            self.event(&env, "onFailed", &app, (table, error));
        }
    }

    fn restore(&mut self, client: &ClientInfo<'_>) {
        if self.clients.contains_key(&client.session) || self.resolve(client.app).is_err() {
            return;
        }
        let table = match self
            .api
            .new_client(&self.lua, client, &ConnectDetails::default())
        {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(session = client.session, error = %e, "client object");
                return;
            }
        };
        if let Err(e) = self.register(client, table) {
            tracing::error!(session = client.session, error = %e, "client object");
        }
    }

    fn publish(&mut self, client: &ClientInfo<'_>, name: &str) -> Result<(), String> {
        let (table, env) = self.ready(client)?;
        let key = stream_key(client.app, name);
        // The same client publishing the same name again (a second `publish` on its
        // NetStream) is the publication it has.
        if let Some(p) = self.publications.get(&key) {
            if p.session == client.session {
                return Ok(());
            }
        }
        let (publication, admin) = self
            .api
            .new_publication(name, Some(&table), client.app)
            .map_err(|e| describe(&e))?;
        let answer = self.event_result(&env, client.app, "onPublish", (table, publication.clone()));
        match answer.map_err(|e| describe(&e))? {
            Some(v) if refused(&v) => Err(format!("Not allowed to publish {name}")),
            _ => self
                .accept_publication(client.app, name, publication, admin, client.session)
                .map_err(|e| describe(&e)),
        }
    }

    fn unpublish(&mut self, client: &ClientInfo<'_>, name: &str) {
        let key = stream_key(client.app, name);
        let Some(p) = self.forget(&key) else {
            return;
        };
        if let Some(c) = self.clients.get(&client.session) {
            if let Some(env) = self.env_of(&c.app) {
                let args = (c.table.clone(), p.table.clone());
                self.event(&env, "onUnpublish", &c.app, args);
            }
        }
        let _ = self.api.remove_publication(name, &p.table);
    }

    fn subscribe(&mut self, client: &ClientInfo<'_>, name: &str) -> Result<(), String> {
        let (table, env) = self.ready(client)?;
        let key = stream_key(client.app, name);
        let publication = self.publications.get(&key);
        let listener = self
            .api
            .new_listener(client.session, name, &table, publication.map(|p| &p.table))
            .map_err(|e| describe(&e))?;
        let answer = self.event_result(&env, client.app, "onSubscribe", (table, listener.clone()));
        match answer.map_err(|e| describe(&e))? {
            Some(v) if refused(&v) => Err(format!("Not authorized to play {name}")),
            _ => {
                if let Some(p) = self.publications.get(&key) {
                    let _ = api::add_listener(&p.listeners, client.session, &listener);
                }
                if let Some(c) = self.clients.get_mut(&client.session) {
                    c.listeners.insert(name.to_string(), listener);
                }
                Ok(())
            }
        }
    }

    fn unsubscribe(&mut self, client: &ClientInfo<'_>, name: &str) {
        let Some(c) = self.clients.get_mut(&client.session) else {
            return;
        };
        let Some(listener) = c.listeners.remove(name) else {
            return;
        };
        let (table, app) = (c.table.clone(), c.app.clone());
        if let Some(env) = self.env_of(&app) {
            self.event(&env, "onUnsubscribe", &app, (table, listener.clone()));
        }
        if let Some(p) = self.publications.get(&stream_key(client.app, name)) {
            let _ = api::remove_listener(&p.listeners, client.session, &listener);
        }
        let _ = self.api.end_listener(&listener);
    }

    fn media_events(&self, app: &str) -> MediaEvents {
        let Some(env) = self.env_of(app) else {
            return MediaEvents::NONE;
        };
        // Inherited events count, as for every other event.
        [
            ("onAudioPacket", MediaEvents::AUDIO),
            ("onVideoPacket", MediaEvents::VIDEO),
            ("onDataPacket", MediaEvents::DATA),
        ]
        .into_iter()
        .filter(|(event, _)| matches!(env.get::<LuaValue>(*event), Ok(LuaValue::Function(_))))
        .fold(MediaEvents::NONE, |set, (_, kind)| set.with(kind))
    }

    fn media_packet(&mut self, client: &ClientInfo<'_>, name: &str, packet: MediaPacket<'_>) {
        let Some(publication) = self
            .publications
            .get(&stream_key(client.app, name))
            .filter(|p| p.session == client.session)
            .map(|p| p.table.clone())
        else {
            return;
        };
        let Some(c) = self.clients.get(&client.session) else {
            return;
        };
        let Some(env) = self.env_of(&c.app) else {
            return;
        };
        let (table, app) = (c.table.clone(), c.app.clone());
        let (event, key, data) = match packet {
            MediaPacket::Audio { time, data } => {
                ("onAudioPacket", LuaValue::Number(f64::from(time)), data)
            }
            MediaPacket::Video { time, data } => {
                ("onVideoPacket", LuaValue::Number(f64::from(time)), data)
            }
            MediaPacket::Data { handler, data } => match self.lua.create_string(handler) {
                Ok(h) => ("onDataPacket", LuaValue::String(h), data),
                Err(_) => return,
            },
        };
        let Ok(data) = self.lua.create_string(data) else {
            return;
        };
        self.event(&env, event, &app, (table, publication, key, data));
    }

    fn timings(&mut self, entries: &[SessionTiming]) {
        let at = std::time::Instant::now();
        if let Ok(mut o) = self.outbox.lock() {
            for e in entries
                .iter()
                .filter(|e| self.clients.contains_key(&e.session_id))
            {
                o.timings.insert(e.session_id, (*e, at));
            }
        }
    }

    fn qos(&mut self, client: &ClientInfo<'_>, name: &str, qos: &QosEntry) {
        let target = if qos.publisher {
            self.publications
                .get(&stream_key(client.app, name))
                .filter(|p| p.session == client.session)
                .map(|p| p.table.clone())
        } else {
            self.clients
                .get(&client.session)
                .and_then(|c| c.listeners.get(name).cloned())
        };
        if let Some(t) = target {
            if let Err(e) = api::set_qos(&t, qos) {
                tracing::debug!(error = %e, "QOS object");
            }
        }
    }

    fn manage(&mut self) {
        self.reload_changed();
        self.refresh_handshake_hook();
        for (path, env) in self.working_apps() {
            // Only the applications that define it (not inherited).
            if let Ok(LuaValue::Function(f)) = env.raw_get::<LuaValue>("onManage") {
                if let Err(e) = self.invoke(&path, &f, ()) {
                    tracing::error!(app = %path, event = "onManage", error = %e, "script error");
                }
            }
        }
        let clients: Vec<(Table, String)> = self
            .clients
            .values()
            .map(|c| (c.table.clone(), c.app.clone()))
            .collect();
        for (table, app) in clients {
            if let Ok(LuaValue::Function(f)) = table.raw_get::<LuaValue>("onManage") {
                if let Err(e) = self.invoke(&app, &f, (table.clone(),)) {
                    tracing::error!(app = %app, event = "client:onManage", error = %e, "script error");
                }
            }
        }
        // And the flow writers' (`writer:onManage()`), in their client's application.
        for (writer, session) in self.api.flow_writers().unwrap_or_default() {
            if let Some(app) = self.clients.get(&session).map(|c| c.app.clone()) {
                self.method(&app, &writer, "onManage", ());
            }
        }
    }

    fn join_group(&mut self, client: &ClientInfo<'_>, group: &[u8; 32], restored: bool) {
        let Some(c) = self.clients.get(&client.session) else {
            return;
        };
        let (table, app) = (c.table.clone(), c.app.clone());
        match self.api.group_join(group, &table, &self.lua) {
            Ok(g) if !restored => {
                if let Some(env) = self.env_of(&app) {
                    self.event(&env, "onJoinGroup", &app, (table, g));
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(app = %app, error = %e, "group join"),
        }
    }

    fn unjoin_group(&mut self, client: &ClientInfo<'_>, group: &[u8; 32]) {
        let Some(c) = self.clients.get(&client.session) else {
            return;
        };
        let (table, app) = (c.table.clone(), c.app.clone());
        match self.api.group_leave(group, &table) {
            Ok(Some(g)) => {
                if let Some(env) = self.env_of(&app) {
                    self.event(&env, "onUnjoinGroup", &app, (table, g));
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(app = %app, error = %e, "group leave"),
        }
    }

    fn wants_handshakes(&self) -> bool {
        self.handshake_hook
    }

    fn handshake(&mut self, from: SocketAddr, url: &str, attempts: u32) -> Vec<SocketAddr> {
        // Cumulus asks the application of the URL's path: `onHandshake(address, path,
        // properties, attempts)`; `"again"` is the address the client asked for.
        let (authority, path) = url_parts(url);
        let Ok(env) = self.resolve(path) else {
            return Vec::new();
        };
        let properties = match self.lua.create_table() {
            Ok(t) => t,
            Err(_) => return Vec::new(),
        };
        for (k, v) in api::query_pairs(url) {
            let _ = properties.set(k, v);
        }
        let args = (from.to_string(), path.to_string(), properties, attempts);
        let Some(values) = self.event(&env, "onHandshake", path, args) else {
            return Vec::new();
        };
        let again = authority.parse::<SocketAddr>().ok();
        let mut out = Vec::new();
        for v in &values {
            match v {
                LuaValue::String(s) if s.as_bytes().as_ref() == b"again" => match again {
                    Some(a) if !out.contains(&a) => out.push(a),
                    Some(_) => {}
                    None => {
                        tracing::error!(
                            app = path,
                            url,
                            "\"again\" needs an IP address and port in the URL"
                        );
                    }
                },
                _ => redirect_addresses(v, path, &mut out, 0),
            }
        }
        out
    }

    fn rendezvous_unknown(&mut self, peer_id: &[u8; 32]) -> Vec<SocketAddr> {
        // Cumulus asks every loaded application that defines it, with the raw peer ID, and
        // takes the addresses they return (strings, or tables of them).
        let mut out = Vec::new();
        for (path, env) in self.working_apps() {
            let Ok(LuaValue::Function(f)) = env.raw_get::<LuaValue>("onRendezVousUnknown") else {
                continue;
            };
            let returned = self
                .lua
                .create_string(peer_id)
                .and_then(|id| self.invoke(&path, &f, (id,)));
            match returned {
                Ok(values) => {
                    for v in &values {
                        redirect_addresses(v, &path, &mut out, 0);
                    }
                }
                Err(e) => {
                    tracing::error!(app = %path, event = "onRendezVousUnknown", error = %e, "script error");
                }
            }
        }
        out
    }

    fn set_waker(&mut self, waker: Waker) {
        if let Ok(mut s) = self.sockets.lock() {
            s.set_waker(waker);
        }
    }

    fn poll(&mut self) {
        let events = self
            .sockets
            .lock()
            .map(|mut s| s.take_events())
            .unwrap_or_default();
        for (id, opening, event) in events {
            // Each in turn: an earlier one's script may have closed or reopened the socket.
            let app = self
                .sockets
                .lock()
                .ok()
                .and_then(|s| s.current(id, opening));
            if let Some(app) = app {
                self.socket_event(id, &app, event);
            }
        }
        // More than one poll takes: come back at once.
        if let Ok(s) = self.sockets.lock() {
            s.wake_if_waiting();
        }
    }

    fn take_actions(&mut self) -> Vec<AppAction> {
        let actions = self
            .outbox
            .lock()
            .map(|mut o| o.take_actions())
            .unwrap_or_default();
        // The applications' own publications enter and leave their books in order.
        for action in &actions {
            match action {
                AppAction::Publish { app, name } => {
                    let made = self.api.take_made(&stream_key(app, name));
                    let accepted = made.and_then(|made| match made {
                        Some((table, admin)) => {
                            self.accept_publication(app, name, table, admin, SERVER_SESSION)
                        }
                        None => Ok(()),
                    });
                    if let Err(e) = accepted {
                        tracing::error!(app, name, error = %e, "server publication");
                    }
                }
                AppAction::Unpublish { app, name } => {
                    self.end_server_publication(&stream_key(app, name));
                }
                _ => {}
            }
        }
        actions
    }
}

/// A Lua table's string-keyed members, as AMF members (in name order).
fn members(t: &Table) -> Vec<Member<'static>> {
    match from_lua(&LuaValue::Table(t.clone())) {
        Value::Object(o) => o.members().cloned().collect(),
        Value::Array(a) => a.assoc,
        _ => Vec::new(),
    }
}

/// Addresses an application returned for a redirection: `"ip:port"` strings, or tables of
/// them (nested at most twice), appended to `out` once each. Host names are not resolved (no
/// DNS lookup on the control plane's thread): what does not parse is logged and skipped.
fn redirect_addresses(value: &LuaValue, app: &str, out: &mut Vec<SocketAddr>, depth: usize) {
    match value {
        LuaValue::String(s) => match s.to_str().ok().and_then(|t| t.parse::<SocketAddr>().ok()) {
            Some(a) if !out.contains(&a) => out.push(a),
            Some(_) => {}
            None => {
                tracing::error!(app, address = %s.to_string_lossy(), "bad redirection address (an IP address and port are needed)");
            }
        },
        LuaValue::Table(t) if depth < 2 => {
            for v in t.sequence_values::<LuaValue>().flatten() {
                redirect_addresses(&v, app, out, depth + 1);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
