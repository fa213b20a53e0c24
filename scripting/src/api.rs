//! The Cumulus objects scripts see (`cumulus-compat.md` §2.3): the logging functions, the
//! `cumulus` object, clients with their writer, publications and listeners. The collections
//! and constructors are Lua (`prelude.lua`); the functions that reach the server, the
//! serialisers and the hashes are native.
//!
//! Not provided (Updraft has no such subsystem yet): `cumulus.servers`. The sockets and
//! `sendMail` are in [`crate::sockets`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use md5::Md5;
use mlua::{FromLuaMulti, Function, Lua, MultiValue, Table, Value as LuaValue, Variadic};
use rtmfp::amf::{amf0, EncodeError, Value};
use rtmfp::flash::message::{MessageType, TcMessage};
use sha2::{Digest, Sha256};
use updraft_control::apps::{AppAction, ClientInfo, ConnectDetails};
use updraft_control::groups::MAX_SERVER_MEMBERS;
use updraft_control::ipc::{QosEntry, SessionTiming, MAX_FLASH_MESSAGE};
use updraft_control::streams::stream_key;

use crate::convert::{to_lua, FromLua};
use crate::sockets::{SmtpSettings, Sockets};

/// The prelude: the Lua half of the API.
const PRELUDE: &str = include_str!("prelude.lua");

/// Most actions (calls, closes, blacklist edits) scripts may queue between two drains by the
/// control plane (one event); more are dropped with a warning, so a script in a loop cannot
/// exhaust memory.
pub const MAX_PENDING_ACTIONS: usize = 65_536;
/// The writer number of a client's NetConnection writer (its flow writers count from 1).
const NETCONNECTION_WRITER: u32 = 0;
/// Most bytes of strings the queued calls may carry between two drains.
pub const MAX_PENDING_BYTES: usize = 64 << 20;

/// What scripts asked for since the control plane last took it, and what the native
/// functions need to know of the host.
#[derive(Debug, Default)]
pub struct Outbox {
    /// The actions, in order.
    pub actions: Vec<AppAction>,
    /// Bytes of strings they carry.
    pub bytes: usize,
    /// The application whose script runs (set by the host before each call into Lua).
    pub app: String,
    /// The keys ([`stream_key`]) of the streams published through the applications: by the
    /// clients they accepted, and by the applications themselves (`cumulus:publish`).
    pub published: HashSet<String>,
    /// The session whose call a script is answering, and what it wrote with
    /// `writer:writeAMFResult` (the first write; `None` until one).
    pub answering: Option<(u32, Option<Value<'static>>)>,
    /// The last report of each connected client's link, and when it came.
    pub timings: HashMap<u32, (SessionTiming, std::time::Instant)>,
    /// The NetGroup memberships the applications made (`cumulus.groups:join`), by number:
    /// the application that made each.
    pub members: HashMap<u64, String>,
    /// The number of the last membership made.
    pub last_member: u64,
}

impl Outbox {
    /// Takes the queued actions.
    pub fn take_actions(&mut self) -> Vec<AppAction> {
        self.bytes = 0;
        std::mem::take(&mut self.actions)
    }
}

/// The host's handles on the API's Lua objects.
pub struct Api {
    /// The prelude's constructors and collection editors.
    host: Table,
}

/// The query parameters of a connect URL (`rtmfp://host/app?a=1&b=2`), percent-decoded.
pub(crate) fn query_pairs(url: &str) -> impl Iterator<Item = (String, String)> + '_ {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or("");
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
}

/// `%XX` escapes decoded (RFC 3986 §2.1); a malformed escape is kept as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                #[allow(clippy::cast_possible_truncation, reason = "two hex digits")]
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The arguments after a leading `cumulus` table that a colon call adds.
fn strings(args: &Variadic<LuaValue>) -> Vec<String> {
    args.iter()
        .filter_map(|v| match v {
            LuaValue::String(s) => Some(s.to_string_lossy()),
            LuaValue::Number(n) => Some(n.to_string()),
            LuaValue::Integer(i) => Some(i.to_string()),
            _ => None,
        })
        .collect()
}

/// Splits `s` at `sep` with Poco's `StringTokenizer` flags (1: ignore empty parts, 2: trim).
fn split(s: &str, sep: &str, flags: u32) -> Vec<String> {
    const IGNORE_EMPTY: u32 = 1;
    const TRIM: u32 = 2;
    let parts: Box<dyn Iterator<Item = &str>> = if sep.is_empty() {
        Box::new(std::iter::once(s))
    } else {
        Box::new(s.split(|c| sep.contains(c)))
    };
    parts
        .map(|p| if flags & TRIM != 0 { p.trim() } else { p })
        .filter(|p| flags & IGNORE_EMPTY == 0 || !p.is_empty())
        .map(str::to_string)
        .collect()
}

fn push(outbox: &Mutex<Outbox>, action: AppAction, bytes: usize) {
    if let Ok(mut o) = outbox.lock() {
        if o.actions.len() < MAX_PENDING_ACTIONS && o.bytes + bytes <= MAX_PENDING_BYTES {
            o.bytes += bytes;
            o.actions.push(action);
        } else {
            tracing::warn!("scripts queued too many actions at once; dropped one");
        }
    }
}

/// A native function queueing the actions `make` builds from its arguments (actions that
/// carry no script values: their weight in the outbox is their count).
fn queue<A: FromLuaMulti>(
    lua: &Lua,
    outbox: &Arc<Mutex<Outbox>>,
    make: impl Fn(A) -> Vec<AppAction> + Send + 'static,
) -> mlua::Result<Function> {
    let o = Arc::clone(outbox);
    lua.create_function(move |_, args: A| {
        for action in make(args) {
            push(&o, action, 0);
        }
        Ok(())
    })
}

/// The bytes of `data` from `offset` on (Cumulus's optional start of a pushed packet).
fn from_offset(data: &[u8], offset: Option<usize>) -> mlua::Result<&[u8]> {
    data.get(offset.unwrap_or(0)..)
        .ok_or_else(|| mlua::Error::RuntimeError("offset past the end of the packet".into()))
}

/// Queues `message` (a whole TC message) for the stream `name` of `app`; an error if it is
/// larger than a media message may be.
fn push_media(
    outbox: &Mutex<Outbox>,
    app: String,
    name: String,
    message: Vec<u8>,
) -> mlua::Result<()> {
    if message.len() > MAX_FLASH_MESSAGE {
        return Err(mlua::Error::RuntimeError(format!(
            "a pushed packet is at most {MAX_FLASH_MESSAGE} bytes"
        )));
    }
    let bytes = message.len();
    push(outbox, AppAction::Push { app, name, message }, bytes);
    Ok(())
}

/// A Lua function answering the digest `D` of its arguments, one after the other (binary).
fn hasher<D: Digest>(lua: &Lua) -> mlua::Result<Function> {
    lua.create_function(|lua, args: Variadic<mlua::String>| {
        let mut h = D::new();
        for a in args.iter() {
            h.update(&a.as_bytes()[..]);
        }
        lua.create_string(h.finalize().as_slice())
    })
}

/// A Lua function writing its arguments with `write`, one after the other, into a string.
fn serializer(
    lua: &Lua,
    write: fn(&mut amf0::Writer<'_>, &Value<'_>) -> Result<(), EncodeError>,
) -> mlua::Result<Function> {
    lua.create_function(move |lua, args: MultiValue| {
        let mut out = Vec::new();
        let mut w = amf0::Writer::new(&mut out);
        let mut c = FromLua::new();
        for a in args.iter() {
            write(&mut w, &c.value(a)).map_err(|e| mlua::Error::RuntimeError(e.to_string()))?;
        }
        lua.create_string(&out)
    })
}

/// The `native` table handed to the prelude.
fn natives(
    lua: &Lua,
    root: &Path,
    sections: &BTreeMap<String, BTreeMap<String, String>>,
    outbox: &Arc<Mutex<Outbox>>,
    sockets: &Arc<Mutex<Sockets>>,
) -> mlua::Result<Table> {
    let n = lua.create_table()?;
    let smtp = SmtpSettings::from_section(sections.get("smtp"));
    crate::sockets::natives(lua, &n, sockets, outbox, smtp)?;
    n.set(
        "log",
        lua.create_function(|_, (level, message): (u8, mlua::String)| {
            let message = message.to_string_lossy();
            match level {
                1 => tracing::error!(target: "lua", "{message}"),
                2 => tracing::warn!(target: "lua", "{message}"),
                3 | 4 => tracing::info!(target: "lua", "{message}"),
                5 => tracing::debug!(target: "lua", "{message}"),
                _ => tracing::trace!(target: "lua", "{message}"),
            }
            Ok(())
        })?,
    )?;
    let configs = lua.create_table()?;
    for (section, keys) in sections {
        let target = if section.is_empty() {
            configs.clone()
        } else {
            let t = lua.create_table()?;
            configs.set(section.as_str(), t.clone())?;
            t
        };
        for (k, v) in keys {
            target.set(k.as_str(), v.as_str())?;
        }
    }
    n.set("configs", configs)?;
    // A server-to-client call on the NetConnection (`writer` 0) or on a flow writer.
    let o = Arc::clone(outbox);
    n.set(
        "call",
        lua.create_function(
            move |_, (session, writer, method, args): (u32, u32, String, MultiValue)| {
                let mut c = FromLua::new();
                let args = args.iter().map(|a| c.value(a)).collect();
                let action = if writer == NETCONNECTION_WRITER {
                    AppAction::Call {
                        session,
                        method,
                        args,
                    }
                } else {
                    AppAction::WriterCall {
                        session,
                        writer,
                        method,
                        args,
                    }
                };
                push(&o, action, c.bytes_read());
                Ok(())
            },
        )?,
    )?;
    // `writer:writeAMFResult(...)`: the answer to the call being handled, when it is this
    // client's (its first value; Cumulus's explicit `_result`).
    let o = Arc::clone(outbox);
    n.set(
        "result",
        lua.create_function(move |_, (session, args): (u32, MultiValue)| {
            let Ok(mut ob) = o.lock() else {
                return Ok(());
            };
            match &mut ob.answering {
                Some((s, answer @ None)) if *s == session => {
                    let first = args
                        .iter()
                        .next()
                        .map_or(Value::Null, |v| FromLua::new().value(v));
                    *answer = Some(first);
                }
                Some((s, Some(_))) if *s == session => {
                    tracing::debug!(session, "writeAMFResult: the call is answered already");
                }
                _ => tracing::debug!(session, "writeAMFResult outside this client's call"),
            }
            Ok(())
        })?,
    )?;
    // `client.ping`: the smoothed round-trip time in milliseconds (0 until measured).
    let o = Arc::clone(outbox);
    n.set(
        "ping",
        lua.create_function(move |_, session: u32| {
            Ok(o.lock()
                .ok()
                .and_then(|ob| ob.timings.get(&session).map(|(t, _)| t.rtt_ms))
                .unwrap_or(0))
        })?,
    )?;
    // `client.elapsedFromReception`: seconds since the client's last packet (the report's
    // figure, aged by the time since the report).
    let o = Arc::clone(outbox);
    n.set(
        "elapsedFromReception",
        lua.create_function(move |_, session: u32| {
            Ok(o.lock()
                .ok()
                .and_then(|ob| {
                    ob.timings
                        .get(&session)
                        .map(|(t, at)| f64::from(t.idle_ms) / 1000.0 + at.elapsed().as_secs_f64())
                })
                .unwrap_or(0.0))
        })?,
    )?;
    n.set(
        "writerClose",
        queue(lua, outbox, |(session, writer): (u32, u32)| {
            vec![AppAction::WriterClose { session, writer }]
        })?,
    )?;
    n.set(
        "close",
        queue(lua, outbox, |session: u32| {
            vec![AppAction::Close { session }]
        })?,
    )?;
    n.set(
        "receive",
        queue(
            lua,
            outbox,
            |(session, name, video, enabled): (u32, String, bool, bool)| {
                vec![AppAction::Receive {
                    session,
                    name,
                    video,
                    enabled,
                }]
            },
        )?,
    )?;
    n.set(
        "sampleAccess",
        queue(
            lua,
            outbox,
            |(session, name, audio, video): (u32, String, bool, bool)| {
                vec![AppAction::SampleAccess {
                    session,
                    name,
                    audio,
                    video,
                }]
            },
        )?,
    )?;
    // `cumulus:publish(name)`: answers the running application's path, or nil when the name
    // is published already (by a client, or by an application).
    let o = Arc::clone(outbox);
    n.set(
        "publish",
        lua.create_function(move |_, name: String| {
            let Ok(mut ob) = o.lock() else {
                return Ok(None);
            };
            let app = ob.app.clone();
            if !ob.published.insert(stream_key(&app, &name)) {
                tracing::debug!(app, name, "cumulus:publish: the name is published already");
                return Ok(None);
            }
            drop(ob);
            push(
                &o,
                AppAction::Publish {
                    app: app.clone(),
                    name,
                },
                0,
            );
            Ok(Some(app))
        })?,
    )?;
    // `cumulus.groups:join(peerId, groupId)` (both raw, 32 bytes): answers the membership's
    // number, or nil when the applications have MAX_SERVER_MEMBERS already.
    let o = Arc::clone(outbox);
    n.set(
        "groupJoin",
        lua.create_function(move |_, (peer, group): (mlua::String, mlua::String)| {
            let id = |s: &mlua::String| <[u8; 32]>::try_from(&s.as_bytes()[..]).ok();
            let (Some(peer_id), Some(group)) = (id(&peer), id(&group)) else {
                return Err(mlua::Error::RuntimeError(
                    "groups:join takes a peer ID and a group ID (32 bytes or 64 hex digits)".into(),
                ));
            };
            let Ok(mut ob) = o.lock() else {
                return Ok(None);
            };
            if ob.members.len() >= MAX_SERVER_MEMBERS {
                tracing::warn!("groups:join: {MAX_SERVER_MEMBERS} memberships made already");
                return Ok(None);
            }
            ob.last_member += 1;
            let member = ob.last_member;
            let app = ob.app.clone();
            ob.members.insert(member, app);
            drop(ob);
            push(
                &o,
                AppAction::GroupJoin {
                    member,
                    peer_id,
                    group,
                },
                0,
            );
            Ok(Some(member))
        })?,
    )?;
    let o = Arc::clone(outbox);
    n.set(
        "groupRelease",
        lua.create_function(move |_, member: u64| {
            let made = o
                .lock()
                .is_ok_and(|mut ob| ob.members.remove(&member).is_some());
            if made {
                push(&o, AppAction::GroupRelease { member }, 0);
            }
            Ok(())
        })?,
    )?;
    n.set(
        "closePublisher",
        queue(
            lua,
            outbox,
            |(app, name, code, description): (String, String, String, String)| {
                vec![AppAction::ClosePublisher {
                    app,
                    name,
                    code,
                    description,
                }]
            },
        )?,
    )?;
    n.set(
        "unpublish",
        queue(lua, outbox, |(app, name): (String, String)| {
            vec![AppAction::Unpublish { app, name }]
        })?,
    )?;
    // Audio and video: `pushAudioPacket(time, data[, offset])`, as the message type `kind`.
    let o = Arc::clone(outbox);
    n.set(
        "push",
        lua.create_function(
            move |_,
                  (app, name, kind, time, data, offset): (
                String,
                String,
                u8,
                u32,
                mlua::String,
                Option<usize>,
            )| {
                let data = data.as_bytes();
                let message = TcMessage {
                    kind: MessageType(kind),
                    timestamp: time,
                    payload: from_offset(&data, offset)?,
                }
                .to_vec();
                push_media(&o, app, name, message)
            },
        )?,
    )?;
    // `pushDataPacket(handler, data[, offset])`: an AMF0 data message, the handler's name then
    // the packet's AMF values as they are.
    let o = Arc::clone(outbox);
    n.set(
        "pushData",
        lua.create_function(
            move |_,
                  (app, name, handler, data, offset): (
                String,
                String,
                String,
                mlua::String,
                Option<usize>,
            )| {
                let data = data.as_bytes();
                let mut payload = Vec::new();
                amf0::Writer::new(&mut payload)
                    .write_value(&Value::str(&handler))
                    .map_err(|e| mlua::Error::RuntimeError(e.to_string()))?;
                payload.extend_from_slice(from_offset(&data, offset)?);
                let message = TcMessage {
                    kind: MessageType::AMF0_DATA,
                    timestamp: 0,
                    payload: &payload,
                }
                .to_vec();
                push_media(&o, app, name, message)
            },
        )?,
    )?;
    n.set(
        "addToBlacklist",
        queue(lua, outbox, |args: Variadic<LuaValue>| {
            strings(&args).into_iter().map(AppAction::Deny).collect()
        })?,
    )?;
    n.set(
        "removeFromBlacklist",
        queue(lua, outbox, |args: Variadic<LuaValue>| {
            strings(&args).into_iter().map(AppAction::Allow).collect()
        })?,
    )?;
    // `toAMF`: each value as AMF3 behind the AMF0 switch marker; `toAMF0`: plain AMF0.
    n.set("toAMF", serializer(lua, |w, v| w.write_avmplus(v))?)?;
    n.set("toAMF0", serializer(lua, |w, v| w.write_value(v))?)?;
    n.set(
        "fromAMF",
        lua.create_function(|lua, data: mlua::String| {
            let bytes = data.as_bytes();
            let mut r = amf0::Reader::new(&bytes);
            let mut values = Vec::new();
            while r.remaining() > 0 {
                let v = r
                    .read_value()
                    .map_err(|e| mlua::Error::RuntimeError(format!("fromAMF: {e}")))?;
                values.push(to_lua(lua, &v)?);
            }
            Ok(MultiValue::from_vec(values))
        })?,
    )?;
    let www = root.to_path_buf();
    n.set(
        "absolutePath",
        lua.create_function(move |_, path: Option<String>| {
            let base = www.canonicalize().unwrap_or_else(|_| www.clone());
            let p = path.unwrap_or_default();
            let mut s = base.join(p.trim_matches('/')).display().to_string();
            if !s.ends_with('/') {
                s.push('/');
            }
            Ok(s)
        })?,
    )?;
    n.set(
        "split",
        lua.create_function(|_, (s, sep, flags): (String, String, Option<u32>)| {
            Ok(Variadic::from_iter(split(&s, &sep, flags.unwrap_or(0))))
        })?,
    )?;
    n.set("sha256", hasher::<Sha256>(lua)?)?;
    n.set("md5", hasher::<Md5>(lua)?)?;
    n.set(
        "epochTime",
        lua.create_function(|_, ()| {
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            #[allow(clippy::cast_precision_loss, reason = "milliseconds fit a double")]
            Ok(since.as_millis() as f64)
        })?,
    )?;
    Ok(n)
}

impl Api {
    /// Installs the API's globals in `lua`.
    pub fn install(
        lua: &Lua,
        root: &Path,
        sections: &BTreeMap<String, BTreeMap<String, String>>,
        outbox: Arc<Mutex<Outbox>>,
        sockets: &Arc<Mutex<Sockets>>,
    ) -> mlua::Result<Api> {
        let native = natives(lua, root, sections, &outbox, sockets)?;
        let host: Table = lua.load(PRELUDE).set_name("=prelude").call(native)?;
        Ok(Api { host })
    }

    fn host_fn(&self, name: &str) -> mlua::Result<Function> {
        self.host.get(name)
    }

    /// A client object for a connecting client (not yet in `cumulus.clients`).
    pub fn new_client(
        &self,
        lua: &Lua,
        client: &ClientInfo<'_>,
        details: &ConnectDetails<'_>,
    ) -> mlua::Result<Table> {
        let fields = lua.create_table()?;
        if let Some(url) = details.tc_url {
            for (k, v) in query_pairs(url) {
                fields.set(k, v)?;
            }
        }
        fields.set("id", hex::encode(client.peer_id))?;
        fields.set("rawId", lua.create_string(client.peer_id)?)?;
        fields.set("path", client.app)?;
        fields.set("address", client.address.to_string())?;
        fields.set("pageUrl", details.page_url)?;
        fields.set("swfUrl", details.swf_url)?;
        fields.set("flashVersion", details.flash_ver)?;
        self.host_fn("client")?.call((client.session, fields))
    }

    /// Adds an accepted client to `cumulus.clients`.
    pub fn add_client(&self, client: &Table) -> mlua::Result<()> {
        self.host_fn("add_client")?.call(client.clone())
    }

    /// Removes a client from `cumulus.clients`.
    pub fn remove_client(&self, client: &Table) -> mlua::Result<()> {
        self.host_fn("remove_client")?.call(client.clone())
    }

    /// A publication object for the stream `name` of application `app`, published by
    /// `client` (not yet in `cumulus.publications`), and the editor of its `listeners`.
    pub fn new_publication(
        &self,
        name: &str,
        client: Option<&Table>,
        app: &str,
    ) -> mlua::Result<(Table, Table)> {
        self.host_fn("publication")?
            .call((name, client.cloned(), app))
    }

    /// The publication `cumulus:publish` made for the stream `key` (and the editor of its
    /// `listeners`), taken from the prelude; `None` if it made none.
    pub fn take_made(&self, key: &str) -> mlua::Result<Option<(Table, Table)>> {
        let (table, admin): (Option<Table>, Option<Table>) =
            self.host_fn("take_made")?.call(key)?;
        Ok(table.zip(admin))
    }

    /// Adds an accepted publication to `cumulus.publications`.
    pub fn add_publication(&self, name: &str, publication: &Table) -> mlua::Result<()> {
        self.host_fn("add_publication")?
            .call((name, publication.clone()))
    }

    /// Removes the publication `name` from `cumulus.publications`, if it is `publication`.
    pub fn remove_publication(&self, name: &str, publication: &Table) -> mlua::Result<()> {
        self.host_fn("remove_publication")?
            .call((name, publication.clone()))
    }

    /// Adds `client` to the group `id` in `cumulus.groups` (made at its first member);
    /// answers the group object.
    pub fn group_join(&self, id: &[u8; 32], client: &Table, lua: &Lua) -> mlua::Result<Table> {
        self.host_fn("group_join")?
            .call((hex::encode(id), lua.create_string(id)?, client.clone()))
    }

    /// Takes `client` out of the group `id` (gone from `cumulus.groups` with its last member);
    /// answers the group object, `None` if the client was not in it.
    pub fn group_leave(&self, id: &[u8; 32], client: &Table) -> mlua::Result<Option<Table>> {
        self.host_fn("group_leave")?
            .call((hex::encode(id), client.clone()))
    }

    /// The script's object of open socket `id`.
    pub fn socket(&self, id: u32) -> mlua::Result<Option<Table>> {
        self.host_fn("socket")?.call(id)
    }

    /// Forgets socket `id`'s object: it is closed.
    pub fn forget_socket(&self, id: u32) -> mlua::Result<()> {
        self.host_fn("forget_socket")?.call(id)
    }

    /// A connected TCP client object for the accepted connection `id`.
    pub fn accepted(&self, id: u32) -> mlua::Result<Table> {
        self.host_fn("accepted")?.call(id)
    }

    /// The open flow writers (`newFlowWriter`) and their sessions.
    pub fn flow_writers(&self) -> mlua::Result<Vec<(Table, u32)>> {
        let list: Vec<Table> = self.host_fn("flow_writers")?.call(())?;
        list.iter()
            .map(|pair| Ok((pair.raw_get(1)?, pair.raw_get(2)?)))
            .collect()
    }

    /// Marks a listener's play ended: its switches send nothing any more.
    pub fn end_listener(&self, listener: &Table) -> mlua::Result<()> {
        self.host_fn("end_listener")?.call(listener.clone())
    }

    /// A listener object of `client` (session `session`) for the stream `name`, and its
    /// `publication` if started.
    pub fn new_listener(
        &self,
        session: u32,
        name: &str,
        client: &Table,
        publication: Option<&Table>,
    ) -> mlua::Result<Table> {
        self.host_fn("listener")?
            .call((session, name, client.clone(), publication.cloned()))
    }
}

/// Refreshes the QOS object (`videoQOS`, which `audioQOS` is too) of a publication or a
/// listener from the workers' report.
pub fn set_qos(owner: &Table, qos: &QosEntry) -> mlua::Result<()> {
    let q: Table = owner.get("videoQOS")?;
    let rate = |ppm: u32| f64::from(ppm) / 1e6;
    q.raw_set("lostRate", rate(qos.lost_ppm))?;
    #[allow(clippy::cast_precision_loss, reason = "bytes per second fit a double")]
    q.raw_set("byteRate", qos.byte_rate as f64)?;
    q.raw_set("congestionRate", rate(qos.congestion_ppm))?;
    q.raw_set("latency", qos.latency_ms.unwrap_or(0))?;
    #[allow(clippy::cast_precision_loss, reason = "frame counts fit a double")]
    q.raw_set("droppedFrames", qos.dropped_frames as f64)?;
    Ok(())
}

/// Adds `listener` (of session `session`) to a publication's `listeners` through its editor.
pub fn add_listener(admin: &Table, session: u32, listener: &Table) -> mlua::Result<()> {
    admin
        .get::<Function>("add")?
        .call((session, listener.clone()))
}

/// Removes the listener of session `session` from a publication's `listeners`.
pub fn remove_listener(admin: &Table, session: u32, listener: &Table) -> mlua::Result<()> {
    admin
        .get::<Function>("remove")?
        .call((session, listener.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_follows_the_tokenizer_flags() {
        assert_eq!(split("a, b,,c", ",", 0), ["a", " b", "", "c"]);
        assert_eq!(split("a, b,,c", ",", 1), ["a", " b", "c"]);
        assert_eq!(split("a, b,,c", ",", 3), ["a", "b", "c"]);
        assert_eq!(split("a b;c", " ;", 0), ["a", "b", "c"]);
    }

    #[test]
    fn query_parameters_of_a_connect_url() {
        let q: Vec<_> = query_pairs("rtmfp://h/app?user=ann&token=x%20y%zz&flag#frag").collect();
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(q, [("user", "ann"), ("token", "x y%zz"), ("flag", "")]);
        assert_eq!(query_pairs("rtmfp://h/app").count(), 0);
    }
}
