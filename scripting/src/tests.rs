//! The Cumulus application model and events, on temporary www trees.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use rtmfp::amf::Value;
use updraft_control::apps::{
    AppAction, Applications, CallOutcome, ClientInfo, ConnectDetails, ConnectVerdict, MediaPacket,
};
use updraft_control::ipc::{MediaEvents, QosEntry};

use super::*;

/// A www tree removed when dropped.
struct Www(PathBuf);

impl Www {
    fn new() -> Www {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "updraft-lua-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Www(dir)
    }

    /// Writes `app`'s main.lua, with a modification time that differs from any earlier one
    /// (file systems with coarse timestamps would hide a quick rewrite).
    fn write(&self, app: &str, code: &str) {
        static TICK: AtomicU32 = AtomicU32::new(0);
        let dir = self.0.join(app);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(APP_SCRIPT);
        std::fs::write(&file, code).unwrap();
        let t = SystemTime::UNIX_EPOCH
            + Duration::from_secs(1_700_000_000 + u64::from(TICK.fetch_add(1, Ordering::Relaxed)));
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    fn apps(&self) -> LuaApps {
        let mut sections = BTreeMap::new();
        sections.insert(
            String::new(),
            BTreeMap::from([("publicAddress".to_string(), "203.0.113.5:1935".to_string())]),
        );
        sections.insert(
            "myApp".to_string(),
            BTreeMap::from([("secret".to_string(), "42".to_string())]),
        );
        LuaApps::new(&self.0, &sections).unwrap()
    }
}

impl Drop for Www {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The peer ID of session `session`: 0xAB bytes ending with the low byte of the session number.
fn peer(session: u32) -> &'static [u8; 32] {
    let mut id = [0xAB; 32];
    id[31] = session.to_le_bytes()[0];
    Box::leak(Box::new(id))
}

/// [`peer`] in hex.
fn peer_hex(session: u32) -> String {
    format!("{}{session:02x}", "ab".repeat(31))
}

fn client(session: u32, app: &str) -> ClientInfo<'_> {
    ClientInfo {
        session,
        peer_id: peer(session),
        address: SocketAddr::from(([127, 0, 0, 1], 5000)),
        app,
    }
}

fn details() -> ConnectDetails<'static> {
    ConnectDetails {
        tc_url: Some("rtmfp://localhost/live?user=ann&token=t1"),
        page_url: Some("http://example.invalid/page.html"),
        swf_url: Some("http://example.invalid/app.swf"),
        flash_ver: Some("LNX 11,2,202,235"),
    }
}

fn connect(apps: &mut LuaApps, session: u32, app: &str, args: &[Value<'_>]) -> ConnectVerdict {
    apps.connect(&client(session, app), &details(), args)
}

/// A global of the root application, evaluated as Lua.
fn eval<T: mlua::FromLua>(apps: &mut LuaApps, app: &str, expr: &str) -> T {
    let env = apps.resolve(app).unwrap();
    apps.lua
        .load(format!("return {expr}"))
        .set_environment(env)
        .eval()
        .unwrap()
}

#[test]
fn missing_applications_are_invalid_and_the_root_always_exists() {
    let www = Www::new();
    let mut apps = www.apps();
    assert_eq!(
        connect(&mut apps, 1, "", &[]),
        ConnectVerdict::Accept(vec![])
    );
    assert_eq!(
        connect(&mut apps, 2, "nope", &[]),
        ConnectVerdict::InvalidApp
    );
    assert_eq!(
        connect(&mut apps, 3, "../etc", &[]),
        ConnectVerdict::InvalidApp
    );
    assert_eq!(
        connect(&mut apps, 4, "a/__index", &[]),
        ConnectVerdict::InvalidApp
    );
}

#[test]
fn on_connection_sees_the_client_and_its_arguments_and_may_add_to_the_answer() {
    let www = Www::new();
    www.write(
        "live",
        r#"
        function onConnection(client, name, n)
            seen = { client.id, #client.rawId, client.path, client.address, client.pageUrl,
                     client.swfUrl, client.flashVersion, client.user, client.token, name, n }
            if name == "mallory" then error("go away") end
            if name == "eve" then return false end
            if name == "trent" then error("") end
            return { message = "welcome " .. name, count = cumulus.clients.count + 1 }
        end
        "#,
    );
    let mut apps = www.apps();
    let verdict = connect(
        &mut apps,
        1,
        "live",
        &[Value::String("ann".into()), Value::Number(3.0)],
    );
    assert_eq!(
        verdict,
        ConnectVerdict::Accept(vec![
            ("count".into(), Value::Number(1.0)),
            ("message".into(), Value::String("welcome ann".into())),
        ])
    );
    let seen: Vec<String> = eval(&mut apps, "live", "seen");
    assert_eq!(
        seen,
        [
            peer_hex(1).as_str(),
            "32",
            "live",
            "127.0.0.1:5000",
            "http://example.invalid/page.html",
            "http://example.invalid/app.swf",
            "LNX 11,2,202,235",
            "ann",
            "t1",
            "ann",
            "3"
        ]
    );
    assert_eq!(
        connect(&mut apps, 2, "live", &[Value::String("mallory".into())]),
        ConnectVerdict::Reject("go away".into())
    );
    assert_eq!(
        connect(&mut apps, 4, "live", &[Value::String("trent".into())]),
        ConnectVerdict::Reject("client rejected".into())
    );
    // `false` does not reject (as in Cumulus, only an error does).
    assert_eq!(
        connect(&mut apps, 3, "live", &[Value::String("eve".into())]),
        ConnectVerdict::Accept(vec![])
    );
    // Only the accepted clients count.
    assert_eq!(eval::<u32>(&mut apps, "live", "cumulus.clients.count"), 2);
    assert!(eval::<bool>(
        &mut apps,
        "live",
        &format!(
            "cumulus.clients('{}').path == 'live'",
            peer_hex(1).to_uppercase()
        )
    ));
    assert!(eval::<bool>(
        &mut apps,
        "live",
        &format!(
            "cumulus.clients(cumulus.clients('{}').rawId).path == 'live'",
            peer_hex(1)
        )
    ));
}

#[test]
fn client_methods_answer_calls() {
    let www = Www::new();
    www.write(
        "",
        r#"
        function onConnection(client)
            function client:sum(a, b) return a + b end
            function client:fail() error("nope") end
            function client:echo(t) return t end
        end
        "#,
    );
    let mut apps = www.apps();
    connect(&mut apps, 1, "", &[]);
    let c = client(1, "");
    assert_eq!(
        apps.call(&c, "sum", &[Value::Number(2.0), Value::Number(3.0)]),
        CallOutcome::Result(Value::Number(5.0))
    );
    assert_eq!(
        apps.call(&c, "fail", &[]),
        CallOutcome::Error("nope".into())
    );
    assert_eq!(apps.call(&c, "missing", &[]), CallOutcome::NotFound);
    let obj = Value::Object(rtmfp::amf::Object::anonymous(vec![(
        "k".into(),
        Value::String("v".into()),
    )]));
    assert_eq!(
        apps.call(&c, "echo", std::slice::from_ref(&obj)),
        CallOutcome::Result(obj)
    );
    // A session that never connected has no methods.
    assert_eq!(apps.call(&client(9, ""), "sum", &[]), CallOutcome::NotFound);
}

#[test]
fn children_inherit_from_their_parent_and_reach_it_through_super() {
    let www = Www::new();
    www.write(
        "",
        r#"
        greeting = "hello"
        function greet(who) return greeting .. " " .. who end
        "#,
    );
    www.write(
        "games",
        r#"
        greeting = "hi"
        function onConnection(client)
            function client:who() return greet("games") .. "/" .. super.greeting end
        end
        "#,
    );
    www.write("games/chess", "level = 3");
    let mut apps = www.apps();
    assert_eq!(
        connect(&mut apps, 1, "games", &[]),
        ConnectVerdict::Accept(vec![])
    );
    // `greet` is the root's function, run in the root's environment: its `greeting` is the
    // root's, and the child's own `greeting` shadows it only in the child.
    assert_eq!(
        apps.call(&client(1, "games"), "who", &[]),
        CallOutcome::Result(Value::String("hello games/hello".into()))
    );
    // A grandchild inherits onConnection from its parent, and its parent reaches it by name.
    assert_eq!(
        connect(&mut apps, 2, "games/chess", &[]),
        ConnectVerdict::Accept(vec![])
    );
    assert!(apps.call(&client(2, "games/chess"), "who", &[]) != CallOutcome::NotFound);
    assert_eq!(eval::<u32>(&mut apps, "", "games.chess.level"), 3);
    assert_eq!(eval::<String>(&mut apps, "games/chess", "greeting"), "hi");
}

#[test]
fn a_changed_main_lua_is_reloaded_and_a_deleted_one_unloads_its_application() {
    let www = Www::new();
    www.write("", "stops = 0; starts = 0");
    www.write(
        "live",
        r#"
        function onStart(path) super.starts = super.starts + 1 end
        function onStop(path) super.stops = super.stops + 1 end
        function onConnection(client) function client:v() return 1 end end
        "#,
    );
    let mut apps = www.apps();
    connect(&mut apps, 1, "live", &[]);
    assert_eq!(
        apps.call(&client(1, "live"), "v", &[]),
        CallOutcome::Result(Value::Number(1.0))
    );
    www.write(
        "live",
        r#"
        function onStart(path) super.starts = super.starts + 10 end
        function onConnection(client) function client:v() return 2 end end
        "#,
    );
    connect(&mut apps, 2, "live", &[]);
    assert_eq!(
        apps.call(&client(2, "live"), "v", &[]),
        CallOutcome::Result(Value::Number(2.0))
    );
    assert_eq!(eval::<u32>(&mut apps, "", "starts"), 11);
    assert_eq!(eval::<u32>(&mut apps, "", "stops"), 1);
    std::fs::remove_file(www.0.join("live").join(APP_SCRIPT)).unwrap();
    assert_eq!(
        connect(&mut apps, 3, "live", &[]),
        ConnectVerdict::InvalidApp
    );
}

#[test]
fn the_manage_tick_reloads_and_runs_on_manage() {
    let www = Www::new();
    www.write("", "ticks = 0; function onManage() ticks = ticks + 1 end");
    www.write("sub", "function onConnection(c) function c:onManage() super.clientTicks = (super.clientTicks or 0) + 1 end end");
    let mut apps = www.apps();
    connect(&mut apps, 1, "sub", &[]);
    apps.manage();
    apps.manage();
    // `sub` does not define onManage: only the root's runs, once per tick.
    assert_eq!(eval::<u32>(&mut apps, "", "ticks"), 2);
    assert_eq!(eval::<u32>(&mut apps, "", "clientTicks"), 2);
    www.write("", "ticks = 100; function onManage() ticks = ticks + 1 end");
    apps.manage();
    assert_eq!(eval::<u32>(&mut apps, "", "ticks"), 101);
}

#[test]
fn a_failed_session_is_told_to_its_application_before_its_disconnection() {
    let www = Www::new();
    www.write("", "");
    www.write(
        "app",
        "log = {} \
         function onFailed(client, error) log[#log + 1] = 'failed ' .. client.id:sub(-2) .. ': ' .. error end \
         function onDisconnection(client) log[#log + 1] = 'gone ' .. client.id:sub(-2) end",
    );
    let mut apps = www.apps();
    connect(&mut apps, 1, "app", &[]);
    connect(&mut apps, 2, "app", &[]);
    apps.fail(&client(1, "app"), "Timeout: nothing heard from the client");
    apps.disconnect(&client(1, "app"));
    // A client that closed does not fail; one the applications do not know is nothing.
    apps.disconnect(&client(2, "app"));
    apps.fail(&client(3, "app"), "never connected");
    let log: Vec<String> = eval(&mut apps, "app", "log");
    assert_eq!(
        log,
        [
            "failed 01: Timeout: nothing heard from the client",
            "gone 01",
            "gone 02"
        ]
    );
}

#[test]
fn group_members_are_in_cumulus_groups_and_the_application_hears_joins_and_leaves() {
    let www = Www::new();
    www.write(
        "",
        "log = {} \
         function onJoinGroup(client, group) \
           log[#log + 1] = 'join ' .. client.id:sub(-2) .. ' ' .. group.size end \
         function onUnjoinGroup(client, group) \
           log[#log + 1] = 'leave ' .. client.id:sub(-2) .. ' ' .. group.size end",
    );
    let mut apps = www.apps();
    connect(&mut apps, 1, "", &[]);
    connect(&mut apps, 2, "", &[]);
    let group = [0x5C; 32];
    apps.join_group(&client(1, ""), &group, false);
    apps.join_group(&client(2, ""), &group, false);
    let hex_id = "5c".repeat(32);
    assert_eq!(eval::<u32>(&mut apps, "", "cumulus.groups.count"), 1);
    // Looked up by hex or raw ID; its members are the client objects.
    let size: u32 = eval(&mut apps, "", &format!("cumulus.groups('{hex_id}').size"));
    assert_eq!(size, 2);
    let raw_lookup: bool = eval(
        &mut apps,
        "",
        &format!("cumulus.groups(string.rep('\\92', 32)) == cumulus.groups('{hex_id}')"),
    );
    assert!(raw_lookup);
    let first_member: String = eval(
        &mut apps,
        "",
        &format!(
            "(function() for _, c in cumulus.groups('{hex_id}'):ipairs() do return c.id end end)()"
        ),
    );
    assert!([peer_hex(1), peer_hex(2)].contains(&first_member));
    let raw_len: u32 = eval(&mut apps, "", &format!("#cumulus.groups('{hex_id}').rawId"));
    assert_eq!(raw_len, 32);
    apps.unjoin_group(&client(1, ""), &group);
    // Leaving a group one is not in is nothing.
    apps.unjoin_group(&client(1, ""), &group);
    apps.unjoin_group(&client(2, ""), &group);
    assert_eq!(eval::<u32>(&mut apps, "", "cumulus.groups.count"), 0);
    let log: Vec<String> = eval(&mut apps, "", "log");
    assert_eq!(log, ["join 01 1", "join 02 2", "leave 01 1", "leave 02 0"]);
    // A membership restored after a control-process restart is in the group, without the event.
    apps.join_group(&client(1, ""), &group, true);
    assert_eq!(eval::<u32>(&mut apps, "", "cumulus.groups.count"), 1);
    assert_eq!(eval::<u32>(&mut apps, "", "#log"), 4);
}

#[test]
fn on_handshake_may_redirect_a_client_with_its_address_path_properties_and_attempts() {
    let www = Www::new();
    let mut apps = www.apps();
    assert!(!apps.wants_handshakes());
    www.write(
        "lb",
        "function onHandshake(address, path, properties, attempts) \
           seen = address .. ' ' .. path .. ' ' .. tostring(properties.room) .. ' ' .. attempts \
           if attempts > 1 then return 'again', '192.0.2.9:1935', 'not an address' end \
         end",
    );
    let from = SocketAddr::from(([127, 0, 0, 1], 5000));
    let url = "rtmfp://192.0.2.1:1935/lb?room=blue";
    // Loaded at its first handshake; the first attempt is answered as usual.
    assert!(apps.handshake(from, url, 1).is_empty());
    assert!(apps.wants_handshakes());
    assert_eq!(
        eval::<String>(&mut apps, "lb", "seen"),
        "127.0.0.1:5000 lb blue 1"
    );
    // The second is sent back to where it asked ("again") and to another server.
    assert_eq!(
        apps.handshake(from, url, 2),
        [
            "192.0.2.1:1935".parse::<SocketAddr>().unwrap(),
            "192.0.2.9:1935".parse().unwrap()
        ]
    );
    // An application without the event: the ordinary answer.
    assert!(apps.handshake(from, "rtmfp://192.0.2.1/", 2).is_empty());
    // Gone with the application.
    www.write("lb", "x = 1");
    apps.manage();
    assert!(!apps.wants_handshakes());
}

#[test]
fn on_rendezvous_unknown_may_send_the_initiator_to_other_servers() {
    let www = Www::new();
    // The raw 32-byte peer ID comes in; strings and tables of them come back, bad ones are
    // skipped, duplicates kept once.
    www.write(
        "",
        "function onRendezVousUnknown(id) \
           asked = #id \
           if id:byte(1) == 0x42 then return '192.0.2.10:1935', {'192.0.2.11:1935', 'nowhere'} end \
         end",
    );
    www.write(
        "other",
        "function onRendezVousUnknown(id) return '192.0.2.11:1935', '[2001:db8::1]:1935' end",
    );
    let mut apps = www.apps();
    // Only loaded applications are asked (the root always is; `other` once a client used it).
    assert_eq!(
        apps.rendezvous_unknown(&[0x42; 32]),
        [
            "192.0.2.10:1935".parse::<SocketAddr>().unwrap(),
            "192.0.2.11:1935".parse().unwrap()
        ]
    );
    assert_eq!(eval::<u32>(&mut apps, "", "asked"), 32);
    connect(&mut apps, 1, "other", &[]);
    let got = apps.rendezvous_unknown(&[0x42; 32]);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.contains(&"[2001:db8::1]:1935".parse().unwrap()));
    // No address: no answer.
    www.write("other", "x = 1");
    apps.manage();
    assert!(apps.rendezvous_unknown(&[0x01; 32]).is_empty());
}

#[test]
fn a_script_that_fails_to_load_rejects_connections_with_its_error_until_fixed() {
    let www = Www::new();
    www.write("broken", "this is not lua");
    www.write("throws", "error('database unreachable')");
    let mut apps = www.apps();
    match connect(&mut apps, 1, "broken", &[]) {
        ConnectVerdict::Reject(e) => assert!(e.contains("near"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        connect(&mut apps, 2, "throws", &[]),
        ConnectVerdict::Reject("database unreachable".into())
    );
    www.write("broken", "x = 1");
    assert_eq!(
        connect(&mut apps, 3, "broken", &[]),
        ConnectVerdict::Accept(vec![])
    );
}

#[test]
fn on_publish_and_on_subscribe_may_refuse_and_the_ends_are_reported() {
    let www = Www::new();
    www.write(
        "",
        r#"
        ends = {}
        function onPublish(client, publication)
            if publication.name == "secret" then return false end
            if publication.name == "bad" then error("bad name: " .. publication.name) end
            assert(publication.publisherId == client.id)
        end
        function onUnpublish(client, publication)
            ends[#ends + 1] = "unpublish " .. publication.name
        end
        function onSubscribe(client, listener)
            if listener.publication.name == "private" then error("members only") end
        end
        function onUnsubscribe(client, listener)
            ends[#ends + 1] = "unsubscribe " .. listener.publication.name ..
                " " .. listener.publication.listeners.count
        end
        "#,
    );
    let mut apps = www.apps();
    connect(&mut apps, 1, "", &[]);
    connect(&mut apps, 2, "", &[]);
    let (publisher, player) = (client(1, ""), client(2, ""));
    assert_eq!(
        apps.publish(&publisher, "secret"),
        Err("Not allowed to publish secret".into())
    );
    assert_eq!(apps.publish(&publisher, "bad"), Err("bad name: bad".into()));
    assert_eq!(apps.publish(&publisher, "live"), Ok(()));
    assert_eq!(eval::<u32>(&mut apps, "", "cumulus.publications.count"), 1);
    assert_eq!(
        apps.subscribe(&player, "private"),
        Err("members only".into())
    );
    assert_eq!(apps.subscribe(&player, "live"), Ok(()));
    assert_eq!(
        eval::<u32>(
            &mut apps,
            "",
            "cumulus.publications('live').listeners.count"
        ),
        1
    );
    // Publishing the same name again from the same client is the same publication.
    assert_eq!(apps.publish(&publisher, "live"), Ok(()));
    assert_eq!(
        eval::<u32>(
            &mut apps,
            "",
            "cumulus.publications('live').listeners.count"
        ),
        1
    );
    apps.unsubscribe(&player, "live");
    apps.unpublish(&publisher, "live");
    assert_eq!(eval::<u32>(&mut apps, "", "cumulus.publications.count"), 0);
    let ends: Vec<String> = eval(&mut apps, "", "ends");
    assert_eq!(ends, ["unsubscribe live 1", "unpublish live"]);
}

#[test]
fn writers_calls_closes_and_blacklist_edits_become_actions() {
    let www = Www::new();
    www.write(
        "",
        r#"
        function onConnection(client)
            function client:shout(text)
                for id, c in cumulus.clients:pairs() do
                    c.writer:writeAMFMessage("onShout", text, { from = client.id })
                end
            end
            function client:ban(ip)
                cumulus:addToBlacklist(ip, "2001:db8::/32")
                cumulus.removeFromBlacklist("192.0.2.1")
                client.writer:close()
            end
        end
        "#,
    );
    let mut apps = www.apps();
    connect(&mut apps, 1, "", &[]);
    assert!(apps.take_actions().is_empty());
    apps.call(&client(1, ""), "shout", &[Value::String("hi".into())]);
    let from = Value::Object(rtmfp::amf::Object::anonymous(vec![(
        "from".into(),
        Value::String(peer_hex(1).into()),
    )]));
    assert_eq!(
        apps.take_actions(),
        [AppAction::Call {
            session: 1,
            method: "onShout".into(),
            args: vec![Value::String("hi".into()), from],
        }]
    );
    apps.call(
        &client(1, ""),
        "ban",
        &[Value::String("198.51.100.7".into())],
    );
    assert_eq!(
        apps.take_actions(),
        [
            AppAction::Deny("198.51.100.7".into()),
            AppAction::Deny("2001:db8::/32".into()),
            AppAction::Allow("192.0.2.1".into()),
            AppAction::Close { session: 1 },
        ]
    );
}

#[test]
fn disconnection_runs_on_disconnection_and_leaves_the_clients() {
    let www = Www::new();
    www.write(
        "",
        "gone = {}; function onDisconnection(client) gone[#gone + 1] = client.path end",
    );
    let mut apps = www.apps();
    connect(&mut apps, 1, "", &[]);
    assert_eq!(eval::<u32>(&mut apps, "", "cumulus.clients.count"), 1);
    apps.disconnect(&client(1, ""));
    apps.disconnect(&client(1, ""));
    assert_eq!(eval::<u32>(&mut apps, "", "cumulus.clients.count"), 0);
    assert_eq!(eval::<Vec<String>>(&mut apps, "", "gone"), [""]);
}

#[test]
fn the_cumulus_object_serialises_hashes_and_knows_the_configuration() {
    let www = Www::new();
    let mut apps = www.apps();
    assert_eq!(
        eval::<String>(
            &mut apps,
            "",
            "cumulus.configs.myApp.secret .. cumulus.publicAddress"
        ),
        "42203.0.113.5:1935"
    );
    assert!(eval::<bool>(
        &mut apps,
        "",
        "select(2, cumulus:fromAMF(cumulus:toAMF(1, { a = 'b' }))).a == 'b'"
    ));
    assert!(eval::<bool>(
        &mut apps,
        "",
        "select('#', cumulus:fromAMF(cumulus:toAMF0('x', true, nil))) == 3"
    ));
    // SHA-256("abc") (FIPS 180-2 appendix B.1) and MD5("abc") (RFC 1321 appendix A.5).
    let sha: mlua::String = eval(&mut apps, "", "cumulus:sha256('a', 'bc')");
    assert_eq!(
        hex::encode(sha.as_bytes()),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let md5: mlua::String = eval(&mut apps, "", "cumulus.md5('abc')");
    assert_eq!(
        hex::encode(md5.as_bytes()),
        "900150983cd24fb0d6963f7d28e17f72"
    );
    assert!(eval::<f64>(&mut apps, "", "cumulus.epochTime") > 1.6e12);
    assert_eq!(
        eval::<Vec<String>>(&mut apps, "", "{ cumulus:split('a, b,,c', ',', 3) }"),
        ["a", "b", "c"]
    );
    assert!(eval::<String>(&mut apps, "", "cumulus:absolutePath('live')").ends_with("/live/"));
    // Collections are read-only.
    let env = apps.resolve("").unwrap();
    let r = apps
        .lua
        .load("cumulus.clients.x = 1")
        .set_environment(env)
        .exec();
    assert!(r.is_err());
}

#[test]
fn a_runaway_script_is_stopped_and_the_server_goes_on() {
    let www = Www::new();
    www.write(
        "",
        "function onConnection(client) function client:spin() while true do end end function client:ok() return true end end",
    );
    let mut apps = www.apps();
    apps.set_time_limit(Duration::from_millis(200));
    connect(&mut apps, 1, "", &[]);
    let started = std::time::Instant::now();
    match apps.call(&client(1, ""), "spin", &[]) {
        CallOutcome::Error(e) => assert!(e.contains("time limit"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        apps.call(&client(1, ""), "ok", &[]),
        CallOutcome::Result(Value::Boolean(true))
    );
}

#[test]
fn a_listener_waiting_for_a_publication_joins_it_when_it_starts() {
    let www = Www::new();
    www.write(
        "",
        r#"
        function onSubscribe(client, listener) waiting = listener end
        "#,
    );
    let mut apps = www.apps();
    connect(&mut apps, 1, "", &[]);
    connect(&mut apps, 2, "", &[]);
    assert_eq!(apps.subscribe(&client(2, ""), "later"), Ok(()));
    assert!(eval::<bool>(
        &mut apps,
        "",
        "cumulus.publications('later') == nil"
    ));
    assert_eq!(apps.publish(&client(1, ""), "later"), Ok(()));
    assert!(eval::<bool>(
        &mut apps,
        "",
        "waiting.publication == cumulus.publications('later')"
    ));
    assert_eq!(
        eval::<u32>(
            &mut apps,
            "",
            "cumulus.publications('later').listeners.count"
        ),
        1
    );
}

#[test]
fn deep_paths_are_refused_and_a_deleted_parent_takes_its_children_along() {
    let www = Www::new();
    let deep = vec!["a"; MAX_APP_DEPTH + 1].join("/");
    let mut apps = www.apps();
    assert_eq!(
        connect(&mut apps, 1, &deep, &[]),
        ConnectVerdict::InvalidApp
    );
    www.write("", "stopped = {}");
    www.write(
        "a",
        "function onStop(path) table.insert(super.stopped or stopped, path) end",
    );
    www.write("a/b", "x = 1");
    assert_eq!(
        connect(&mut apps, 2, "a/b", &[]),
        ConnectVerdict::Accept(vec![])
    );
    std::fs::remove_file(www.0.join("a").join(APP_SCRIPT)).unwrap();
    apps.manage();
    assert_eq!(
        connect(&mut apps, 3, "a/b", &[]),
        ConnectVerdict::InvalidApp
    );
    // Deepest first, and the root no longer reaches them.
    assert_eq!(eval::<Vec<String>>(&mut apps, "", "stopped"), ["a/b", "a"]);
    assert!(eval::<bool>(
        &mut apps,
        "",
        "rawget(_G, 'a') == nil and a == nil"
    ));
    assert!(eval::<bool>(&mut apps, "", "not pcall(os.exit)"));
}

#[test]
fn publications_of_two_applications_with_one_name_stay_apart() {
    let www = Www::new();
    www.write("", "ends = 0; function onUnpublish() ends = ends + 1 end");
    www.write("a", "x = 1");
    www.write("b", "x = 2");
    let mut apps = www.apps();
    connect(&mut apps, 1, "a", &[]);
    connect(&mut apps, 2, "b", &[]);
    assert_eq!(apps.publish(&client(1, "a"), "cam"), Ok(()));
    assert_eq!(apps.publish(&client(2, "b"), "cam"), Ok(()));
    apps.unpublish(&client(2, "b"), "cam");
    apps.unpublish(&client(1, "a"), "cam");
    assert_eq!(eval::<u32>(&mut apps, "", "ends"), 2);
    assert_eq!(eval::<u32>(&mut apps, "", "cumulus.publications.count"), 0);
}

#[test]
fn unknown_clients_and_broken_applications_are_refused_not_let_through() {
    let www = Www::new();
    www.write(
        "",
        "function onPublish(client, p) if p.name == 'no' then error('refused') end end",
    );
    let mut apps = www.apps();
    // Never connected (nor restored): refused.
    assert!(apps.publish(&client(1, ""), "cam").is_err());
    assert!(apps.subscribe(&client(1, ""), "cam").is_err());
    // Restored after a control restart: known again, and asked as any client.
    apps.restore(&client(2, ""));
    assert_eq!(apps.publish(&client(2, ""), "cam"), Ok(()));
    assert_eq!(apps.publish(&client(2, ""), "no"), Err("refused".into()));
    // The script breaks on reload: its clients can start nothing until it is fixed.
    www.write("", "this is not lua");
    apps.manage();
    assert!(apps.subscribe(&client(2, ""), "cam").is_err());
}

#[test]
fn a_departed_clients_writer_sends_nothing_and_a_shared_peer_id_keeps_the_newest() {
    let www = Www::new();
    www.write(
        "",
        "function onConnection(client) kept = client end \
         function onManage() if kept then kept.writer:writeAMFMessage('late') end end",
    );
    let mut apps = www.apps();
    // Sessions 1 and 257 share a peer ID (the test's peer IDs end with the session's low byte).
    connect(&mut apps, 1, "", &[]);
    connect(&mut apps, 257, "", &[]);
    apps.disconnect(&client(1, ""));
    assert_eq!(eval::<u32>(&mut apps, "", "cumulus.clients.count"), 1);
    apps.disconnect(&client(257, ""));
    apps.manage();
    assert!(
        apps.take_actions().is_empty(),
        "nothing for departed clients"
    );
}

#[test]
fn qos_reports_refresh_the_qos_objects_of_publications_and_listeners() {
    let www = Www::new();
    www.write(
        "",
        "function onPublish(c, p) pub = p end function onSubscribe(c, l) sub = l end",
    );
    let mut apps = www.apps();
    connect(&mut apps, 1, "", &[]);
    connect(&mut apps, 2, "", &[]);
    apps.publish(&client(1, ""), "cam").unwrap();
    apps.subscribe(&client(2, ""), "cam").unwrap();
    assert_eq!(eval::<f64>(&mut apps, "", "pub.videoQOS.byteRate"), 0.0);
    let report = |session_id, publisher, lost_ppm, latency_ms| QosEntry {
        session_id,
        stream: 9,
        publisher,
        lost_ppm,
        byte_rate: 250_000,
        congestion_ppm: 0,
        latency_ms,
        dropped_frames: 3,
    };
    apps.qos(&client(1, ""), "cam", &report(1, true, 0, Some(12)));
    apps.qos(&client(2, ""), "cam", &report(2, false, 250_000, None));
    // A report naming the wrong side, or a name the client does not play, changes nothing.
    apps.qos(&client(2, ""), "cam", &report(2, true, 999_999, None));
    apps.qos(&client(1, ""), "other", &report(1, false, 999_999, None));
    assert_eq!(
        eval::<Vec<f64>>(
            &mut apps,
            "",
            "{ pub.videoQOS.byteRate, pub.audioQOS.latency, pub.videoQOS.lostRate, \
               sub.videoQOS.lostRate, sub.audioQOS.droppedFrames, sub.videoQOS.latency }"
        ),
        [250_000.0, 12.0, 0.0, 0.25, 3.0, 0.0]
    );
}

#[test]
fn listener_switches_and_status_responses_become_actions() {
    let www = Www::new();
    www.write(
        "",
        r#"
        function onConnection(client)
            function client:mute() client.listener.receiveVideo = false end
            function client:again() client.listener.receiveVideo = false end
            function client:noSamples() client.listener.videoSampleAccess = false end
            function client:status() client.writer:writeStatusResponse("Custom", "hi", "extra", 1) end
        end
        function onSubscribe(client, listener) client.listener = listener end
        "#,
    );
    let mut apps = www.apps();
    connect(&mut apps, 1, "", &[]);
    apps.subscribe(&client(1, ""), "cam").unwrap();
    let c = client(1, "");
    apps.call(&c, "mute", &[]);
    apps.call(&c, "noSamples", &[]);
    apps.call(&c, "status", &[]);
    let status = Value::Object(rtmfp::amf::Object::anonymous(vec![
        ("code".into(), Value::String("NetConnection.Custom".into())),
        ("description".into(), Value::String("hi".into())),
        ("extra".into(), Value::Number(1.0)),
        ("level".into(), Value::String("status".into())),
    ]));
    assert_eq!(
        apps.take_actions(),
        [
            AppAction::Receive {
                session: 1,
                name: "cam".into(),
                video: true,
                enabled: false
            },
            AppAction::SampleAccess {
                session: 1,
                name: "cam".into(),
                audio: true,
                video: false
            },
            AppAction::Call {
                session: 1,
                method: "onStatus".into(),
                args: vec![status],
            },
        ]
    );
    // Once the play ends, the listener's switches reach nothing.
    apps.unsubscribe(&c, "cam");
    apps.call(&c, "mute", &[]);
    assert!(apps.take_actions().is_empty());
}

#[test]
fn applications_publish_push_into_and_close_their_own_streams() {
    let www = Www::new();
    let code = r#"
        function onStart() tv = cumulus:publish("tv") end
        function onSubscribe(client, l) listener = l end
        function onConnection(client)
            function client:again() return cumulus:publish("tv") ~= nil end
            function client:push()
                tv:pushAudioPacket(40, "\175\001ab")
                tv:pushVideoPacket(80, "xx\023\001cd", 2)
                tv:pushDataPacket("onCue", cumulus:toAMF0("go"))
                tv:flush()
            end
            function client:close() tv:close() tv:close() tv:pushAudioPacket(1, "z") end
            function client:big() tv:pushVideoPacket(0, string.rep("x", 200000)) end
            function client:past() tv:pushVideoPacket(0, "ab", 3) end
        end
    "#;
    www.write("live", code);
    let mut apps = www.apps();
    connect(&mut apps, 1, "live", &[]);
    let publish = AppAction::Publish {
        app: "live".into(),
        name: "tv".into(),
    };
    assert_eq!(apps.take_actions(), std::slice::from_ref(&publish));
    assert!(eval::<bool>(
        &mut apps,
        "live",
        "cumulus.publications('tv') == tv and tv.publisherId == nil and tv.name == 'tv'"
    ));
    // The name is taken, by the server itself too.
    let c = client(1, "live");
    assert_eq!(
        apps.call(&c, "again", &[]),
        CallOutcome::Result(Value::Boolean(false))
    );
    // A player of the name finds the publication.
    connect(&mut apps, 2, "live", &[]);
    apps.subscribe(&client(2, "live"), "tv").unwrap();
    assert!(eval::<bool>(
        &mut apps,
        "live",
        "listener.publication == tv and tv.listeners.count == 1"
    ));
    // Pushed packets become whole TC messages: type, timestamp, body (from the offset on).
    apps.call(&c, "push", &[]);
    let push = |message: &[u8]| AppAction::Push {
        app: "live".into(),
        name: "tv".into(),
        message: message.to_vec(),
    };
    let mut data = vec![0x12, 0, 0, 0, 0, 0x02, 0, 5];
    data.extend_from_slice(b"onCue");
    data.extend_from_slice(&[0x02, 0, 2, b'g', b'o']);
    assert_eq!(
        apps.take_actions(),
        [
            push(&[0x08, 0, 0, 0, 40, 0xAF, 0x01, b'a', b'b']),
            push(&[0x09, 0, 0, 0, 80, 0x17, 0x01, b'c', b'd']),
            push(&data),
        ]
    );
    // Too large, or an offset past the end: an error for the script, nothing queued.
    for method in ["big", "past"] {
        assert!(
            matches!(apps.call(&c, method, &[]), CallOutcome::Error(_)),
            "{method}"
        );
    }
    assert!(apps.take_actions().is_empty());
    // Closing (twice) ends it once; a closed publication pushes nothing; the name is free.
    apps.call(&c, "close", &[]);
    let unpublish = AppAction::Unpublish {
        app: "live".into(),
        name: "tv".into(),
    };
    assert_eq!(apps.take_actions(), std::slice::from_ref(&unpublish));
    assert!(eval::<bool>(
        &mut apps,
        "live",
        "cumulus.publications('tv') == nil"
    ));
    assert_eq!(
        apps.call(&c, "again", &[]),
        CallOutcome::Result(Value::Boolean(true))
    );
    assert_eq!(apps.take_actions(), std::slice::from_ref(&publish));
    // A reload ends the application's publications before its new script makes its own.
    www.write("live", code);
    connect(&mut apps, 3, "live", &[]);
    assert_eq!(apps.take_actions(), [unpublish, publish]);
    assert!(eval::<bool>(
        &mut apps,
        "live",
        "cumulus.publications('tv') == tv"
    ));
}

#[test]
fn a_clients_publication_takes_pushes_and_holds_its_name() {
    let www = Www::new();
    www.write(
        "",
        r#"
        function onPublish(client, p) cam = p end
        function onConnection(client)
            function client:push() cam:pushAudioPacket(7, "\175\001") end
            function client:take() return cumulus:publish("cam") == nil end
        end
        "#,
    );
    let mut apps = www.apps();
    connect(&mut apps, 1, "", &[]);
    apps.publish(&client(1, ""), "cam").unwrap();
    let c = client(1, "");
    apps.call(&c, "push", &[]);
    assert_eq!(
        apps.take_actions(),
        [AppAction::Push {
            app: String::new(),
            name: "cam".into(),
            message: vec![0x08, 0, 0, 0, 7, 0xAF, 0x01],
        }]
    );
    assert_eq!(
        apps.call(&c, "take", &[]),
        CallOutcome::Result(Value::Boolean(true))
    );
    // Once the client stops publishing, the name is free for the application.
    apps.unpublish(&c, "cam");
    assert_eq!(
        apps.call(&c, "take", &[]),
        CallOutcome::Result(Value::Boolean(false))
    );
}

#[test]
fn media_events_reach_the_applications_that_define_them() {
    let www = Www::new();
    www.write(
        "",
        r#"
        seen = {}
        function onDataPacket(client, publication, name, packet)
            seen[#seen + 1] = publication.name .. " " .. name .. " " .. cumulus:fromAMF(packet)
        end
        "#,
    );
    www.write(
        "live",
        r#"
        function onAudioPacket(client, publication, time, packet)
            seen[#seen + 1] = client.id:sub(1, 2) .. " audio " .. time .. " " .. #packet
        end
        "#,
    );
    www.write("quiet", "");
    let mut apps = www.apps();
    connect(&mut apps, 1, "live", &[]);
    connect(&mut apps, 2, "quiet", &[]);
    // Inherited events count: a child that defines none watches what its parent does.
    assert_eq!(
        apps.media_events("live"),
        MediaEvents::AUDIO.with(MediaEvents::DATA)
    );
    assert_eq!(apps.media_events("quiet"), MediaEvents::DATA);
    apps.publish(&client(1, "live"), "cam").unwrap();
    let c = client(1, "live");
    apps.media_packet(
        &c,
        "cam",
        MediaPacket::Audio {
            time: 40,
            data: &[0xAF, 1, 2],
        },
    );
    let mut amf = Vec::new();
    rtmfp::amf::amf0::Writer::new(&mut amf)
        .write_value(&Value::str("go"))
        .unwrap();
    apps.media_packet(
        &c,
        "cam",
        MediaPacket::Data {
            handler: "onCue",
            data: &amf,
        },
    );
    // Not this client's publication: nothing.
    apps.media_packet(
        &client(2, "live"),
        "cam",
        MediaPacket::Audio { time: 1, data: &[] },
    );
    apps.media_packet(&c, "other", MediaPacket::Audio { time: 1, data: &[] });
    assert_eq!(
        eval::<Vec<String>>(&mut apps, "", "seen"),
        ["ab audio 40 3", "cam onCue go"]
    );
}

#[test]
fn write_amf_result_answers_the_call_being_handled() {
    let www = Www::new();
    www.write(
        "",
        r#"
        function onConnection(client)
            function client:explicit()
                client.writer:writeAMFResult("early", "ignored")
                client.writer:writeAMFResult("second")
                return "returned"
            end
            function client:quiet() client.writer:writeAMFResult() end
            function client:other(id)
                cumulus.clients(id).writer:writeAMFResult("not theirs")
                return 1
            end
            keep = client
        end
        function onManage() keep.writer:writeAMFResult("outside a call") end
        "#,
    );
    let mut apps = www.apps();
    connect(&mut apps, 1, "", &[]);
    connect(&mut apps, 2, "", &[]);
    let c = client(1, "");
    assert_eq!(
        apps.call(&c, "explicit", &[]),
        CallOutcome::Result(Value::String("early".into()))
    );
    assert_eq!(
        apps.call(&c, "quiet", &[]),
        CallOutcome::Result(Value::Null)
    );
    assert_eq!(
        apps.call(&c, "other", &[Value::String(peer_hex(2).into())]),
        CallOutcome::Result(Value::Number(1.0))
    );
    apps.manage();
    // Nothing was queued, and the next call answers as usual.
    assert!(apps.take_actions().is_empty());
    assert_eq!(
        apps.call(
            &client(2, ""),
            "other",
            &[Value::String(peer_hex(1).into())]
        ),
        CallOutcome::Result(Value::Number(1.0))
    );
}

#[test]
fn ping_and_elapsed_from_reception_follow_the_workers_report() {
    let www = Www::new();
    www.write(
        "",
        r#"
        function onConnection(client)
            function client:link()
                return { ping = client.ping, elapsed = client.elapsedFromReception }
            end
        end
        "#,
    );
    let mut apps = www.apps();
    connect(&mut apps, 1, "", &[]);
    let c = client(1, "");
    let link = |apps: &mut LuaApps| match apps.call(&c, "link", &[]) {
        CallOutcome::Result(v) => {
            ["ping", "elapsed"].map(|k| v.get(k).and_then(Value::as_f64).unwrap())
        }
        other => panic!("{other:?}"),
    };
    // Nothing reported yet: 0 and 0.
    assert_eq!(link(&mut apps), [0.0, 0.0]);
    apps.timings(&[
        SessionTiming {
            session_id: 1,
            rtt_ms: 42,
            idle_ms: 1500,
        },
        // A session the applications do not know is not kept.
        SessionTiming {
            session_id: 9,
            rtt_ms: 1,
            idle_ms: 1,
        },
    ]);
    let [ping, elapsed] = link(&mut apps);
    assert_eq!(ping, 42.0);
    assert!((1.5..2.5).contains(&elapsed), "{elapsed}");
    assert!(!apps.outbox.lock().unwrap().timings.contains_key(&9));
    apps.disconnect(&c);
    assert!(apps.outbox.lock().unwrap().timings.is_empty());
}

#[test]
fn an_application_adds_members_to_groups_until_it_releases_them_or_reloads() {
    let www = Www::new();
    let code = r#"
        local group = string.rep("EE", 32)
        function onConnection(client)
            function client:join(peer)
                local m = cumulus.groups:join(peer, group)
                members[#members + 1] = m
                return m.id
            end
            function client:bad() return cumulus.groups:join("short", group) end
            function client:release() members[1]:release() members[1]:release() end
        end
        members = {}
    "#;
    www.write("live", code);
    let mut apps = www.apps();
    connect(&mut apps, 1, "live", &[]);
    let c = client(1, "live");
    // By 64 hex digits or by the raw 32 bytes; the member's ID is in hex.
    assert_eq!(
        apps.call(&c, "join", &[Value::String(peer_hex(7).into())]),
        CallOutcome::Result(Value::String(peer_hex(7).into()))
    );
    let raw = String::from_utf8_lossy(&[0x41; 32]).into_owned();
    assert_eq!(
        apps.call(&c, "join", &[Value::String(raw.into())]),
        CallOutcome::Result(Value::String("41".repeat(32).into()))
    );
    assert!(matches!(apps.call(&c, "bad", &[]), CallOutcome::Error(_)));
    let join = |member, peer_id| AppAction::GroupJoin {
        member,
        peer_id,
        group: [0xEE; 32],
    };
    assert_eq!(
        apps.take_actions(),
        [join(1, *peer(7)), join(2, [0x41; 32])]
    );
    // Released once, however often asked.
    apps.call(&c, "release", &[]);
    assert_eq!(apps.take_actions(), [AppAction::GroupRelease { member: 1 }]);
    // A reload releases what is left.
    www.write("live", code);
    connect(&mut apps, 2, "live", &[]);
    assert_eq!(apps.take_actions(), [AppAction::GroupRelease { member: 2 }]);
}

/// Polls the applications' sockets until `done` holds (at most five seconds).
fn poll_until(apps: &mut LuaApps, mut done: impl FnMut(&mut LuaApps) -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        apps.poll();
        if done(apps) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn a_tcp_client_connects_sends_and_gets_what_it_left_unconsumed_again() {
    use std::io::{Read, Write};
    let www = Www::new();
    www.write(
        "",
        r#"
        got, closed = "", nil
        function onConnection(client)
            function client:open(port)
                closed = nil
                tcp = cumulus:createTCPClient()
                -- Consumes all but the last byte, which comes again with the next reception.
                function tcp:onReception(data)
                    got = got .. data:sub(1, #data - 1)
                    return 1
                end
                function tcp:onDisconnection() closed = tcp.error or "no error" end
                local err = tcp:connect("127.0.0.1", port)
                if err then return err end
                tcp:send("hello")
                return tcp.connected
            end
            function client:drop() tcp:disconnect() tcp:disconnect() return closed end
            function client:unconnected()
                local t = cumulus:createTCPClient()
                local ok, err = pcall(t.send, t, "x")
                return { ok = ok, err = tostring(err), connected = t.connected }
            end
        end
        "#,
    );
    let mut apps = www.apps();
    connect(&mut apps, 1, "", &[]);
    let c = client(1, "");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert_eq!(
        apps.call(&c, "open", &[Value::Number(f64::from(port))]),
        CallOutcome::Result(Value::Boolean(true))
    );
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = [0; 5];
    peer.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"hello");
    peer.write_all(b"abc").unwrap();
    assert!(poll_until(&mut apps, |a| eval::<String>(a, "", "got") == "ab"));
    peer.write_all(b"def").unwrap();
    drop(peer);
    assert!(poll_until(&mut apps, |a| eval::<Option<String>>(
        a, "", "closed"
    )
    .is_some()));
    assert_eq!(eval::<String>(&mut apps, "", "got"), "abcde");
    assert_eq!(eval::<String>(&mut apps, "", "closed"), "no error");
    assert!(!eval::<bool>(&mut apps, "", "tcp.connected"));
    // The script's own disconnection runs onDisconnection too (once), as in Cumulus.
    assert_eq!(
        apps.call(&c, "open", &[Value::Number(f64::from(port))]),
        CallOutcome::Result(Value::Boolean(true))
    );
    let (_peer, _) = listener.accept().unwrap();
    assert_eq!(
        apps.call(&c, "drop", &[]),
        CallOutcome::Result(Value::String("no error".into()))
    );
    // Nobody listens now: connect answers the error.
    drop(listener);
    assert!(matches!(
        apps.call(&c, "open", &[Value::Number(f64::from(port))]),
        CallOutcome::Result(Value::String(e)) if !e.is_empty()
    ));
    // Sending unconnected is an error, as in Cumulus.
    let CallOutcome::Result(r) = apps.call(&c, "unconnected", &[]) else {
        panic!()
    };
    assert_eq!(r.get("ok"), Some(&Value::Boolean(false)));
    assert!(r
        .get("err")
        .and_then(Value::as_str)
        .unwrap()
        .contains("not connected"));
    assert_eq!(r.get("connected"), Some(&Value::Boolean(false)));
}

#[test]
fn a_tcp_server_hands_each_connection_to_its_client_handler_until_stopped_or_reloaded() {
    use std::io::{Read, Write};
    let www = Www::new();
    let code = r#"
        function onConnection(client)
            function client:start()
                server = cumulus:createTCPServer()
                function server:clientHandler(c)
                    function c:onReception(data) c:send(data:upper()) end
                end
                return server:start(0) and server.port
            end
            function client:stop() server:stop() return server.running end
        end
    "#;
    www.write("", code);
    let mut apps = www.apps();
    connect(&mut apps, 1, "", &[]);
    let c = client(1, "");
    let CallOutcome::Result(Value::Number(port)) = apps.call(&c, "start", &[]) else {
        panic!("no port")
    };
    let port = port as u16;
    assert!(eval::<bool>(&mut apps, "", "server.running"));
    let echo = |apps: &mut LuaApps| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        s.write_all(b"ping").unwrap();
        let mut got = Vec::new();
        poll_until(apps, |_| {
            let mut b = [0; 16];
            if let Ok(n) = s.read(&mut b) {
                got.extend_from_slice(&b[..n]);
            }
            got.len() >= 4
        });
        Some(got)
    };
    assert_eq!(echo(&mut apps), Some(b"PING".to_vec()));
    assert_eq!(
        apps.call(&c, "stop", &[]),
        CallOutcome::Result(Value::Boolean(false))
    );
    // Stopped: its thread closes the listener within a check period.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(echo(&mut apps), None);
    // A reload closes what the application opened.
    apps.call(&c, "start", &[]);
    let port2 = eval::<f64>(&mut apps, "", "server.port") as u16;
    www.write("", code);
    connect(&mut apps, 2, "", &[]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port2)).is_err());
}

#[test]
fn a_udp_socket_receives_and_answers_datagrams() {
    let www = Www::new();
    www.write(
        "",
        r#"
        function onConnection(client)
            function client:bind()
                udp = cumulus:createUDPSocket()
                function udp:onReception(data, address) self:send(data:upper(), address) end
                local err = udp:bind("127.0.0.1:0")
                return err or udp.address
            end
            function client:bad() return cumulus:createUDPSocket():bind("nowhere") end
        end
        "#,
    );
    let mut apps = www.apps();
    connect(&mut apps, 1, "", &[]);
    let c = client(1, "");
    let CallOutcome::Result(Value::String(address)) = apps.call(&c, "bind", &[]) else {
        panic!()
    };
    let address: SocketAddr = address.parse().unwrap();
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    peer.send_to(b"hi", address).unwrap();
    let mut buf = [0; 16];
    let mut answer = None;
    assert!(poll_until(&mut apps, |_| {
        if let Ok((n, from)) = peer.recv_from(&mut buf) {
            answer = Some((buf[..n].to_vec(), from));
        }
        answer.is_some()
    }));
    assert_eq!(answer, Some((b"HI".to_vec(), address)));
    assert!(matches!(
        apps.call(&c, "bad", &[]),
        CallOutcome::Result(Value::String(e)) if e.contains("host:port")
    ));
}

/// A one-mail SMTP server on loopback answering RCPT with `rcpt_code`: its port, and the
/// conversation it saw (the client's lines) once done.
fn smtp_server(rcpt_code: u16) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let done = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = std::io::BufReader::new(s);
        let mut seen = Vec::new();
        w.write_all(b"220 test ESMTP\r\n").unwrap();
        let mut in_data = false;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            seen.push(line.clone());
            let answer: &[u8] = if in_data {
                if line != "." {
                    continue;
                }
                in_data = false;
                b"250 queued\r\n"
            } else if line.starts_with("RCPT") {
                if rcpt_code == 250 {
                    b"250 ok\r\n"
                } else {
                    b"550 no such user\r\n"
                }
            } else if line == "DATA" {
                in_data = true;
                b"354 go on\r\n"
            } else if line == "QUIT" {
                w.write_all(b"221 bye\r\n").unwrap();
                break;
            } else {
                b"250-fine\r\n250 ok\r\n"
            };
            w.write_all(answer).unwrap();
        }
        seen
    });
    (port, done)
}

#[test]
fn send_mail_talks_smtp_and_tells_on_sent() {
    let www = Www::new();
    www.write(
        "",
        r#"
        function onConnection(client)
            function client:mail(to)
                local m = cumulus:sendMail("server@example.org", "Hello", "line 1\n.dot", to, "b@example.org")
                function m:onSent(err)
                    assert(err == self.error)
                    sent = err or "sent"
                end
            end
            function client:nobody() return (pcall(cumulus.sendMail, cumulus, "a@b", "s", "c")) end
            function client:inject() return (pcall(cumulus.sendMail, cumulus, "a@b\r\nRCPT TO:<x>", "s", "c", "d@e")) end
        end
        "#,
    );
    for (code, outcome) in [(250, "sent"), (550, "SMTP server answered 550 to RCPT TO")] {
        let (port, server) = smtp_server(code);
        let mut sections = BTreeMap::new();
        sections.insert(
            "smtp".to_string(),
            BTreeMap::from([
                ("host".to_string(), "127.0.0.1".to_string()),
                ("port".to_string(), port.to_string()),
                ("timeout".to_string(), "5".to_string()),
            ]),
        );
        let mut apps = LuaApps::new(&www.0, &sections).unwrap();
        connect(&mut apps, 1, "", &[]);
        let c = client(1, "");
        apps.call(&c, "mail", &[Value::String("a@example.org".into())]);
        assert!(poll_until(&mut apps, |a| eval::<Option<String>>(
            a, "", "sent"
        )
        .is_some()));
        assert_eq!(eval::<String>(&mut apps, "", "sent"), outcome);
        let seen = server.join().unwrap();
        assert_eq!(seen[1], "MAIL FROM:<server@example.org>", "{seen:?}");
        assert_eq!(seen[2], "RCPT TO:<a@example.org>", "{seen:?}");
        if code == 250 {
            assert_eq!(seen[3], "RCPT TO:<b@example.org>");
            assert!(seen.contains(&"Subject: Hello".to_string()), "{seen:?}");
            assert!(seen.contains(&"To: a@example.org, b@example.org".to_string()));
            // A line starting with a dot is doubled; the data ends with a lone dot.
            let body = seen.iter().position(|l| l == "line 1").unwrap();
            assert_eq!(seen[body + 1..body + 3], ["..dot", "."]);
            assert_eq!(seen.last().unwrap(), "QUIT");
        }
        // No recipient, or a line break in an address: an error for the script.
        for method in ["nobody", "inject"] {
            assert_eq!(
                apps.call(&c, method, &[]),
                CallOutcome::Result(Value::Boolean(false)),
                "{method}"
            );
        }
    }
}

#[test]
fn flow_writers_send_on_their_own_until_closed_and_manage_every_tick() {
    let www = Www::new();
    www.write(
        "",
        r#"
        ticks = 0
        function onConnection(client)
            function client:open()
                w = client.writer:newFlowWriter()
                function w:onManage() ticks = ticks + 1 end
                w:writeAMFMessage("onTick", 1)
                w:writeStatusResponse("Custom", "hi")
                w:writeAMFResult("not a call's")
                local other = client.writer:newFlowWriter()
                other:writeAMFMessage("onOther")
            end
            function client:close() w:close() w:close() w:writeAMFMessage("late") end
        end
        "#,
    );
    let mut apps = www.apps();
    connect(&mut apps, 1, "", &[]);
    let c = client(1, "");
    apps.call(&c, "open", &[]);
    let actions = apps.take_actions();
    let calls: Vec<(u32, &str)> = actions
        .iter()
        .map(|a| match a {
            AppAction::WriterCall { writer, method, .. } => (*writer, method.as_str()),
            other => panic!("{other:?}"),
        })
        .collect();
    // The answer of a call goes on the NetConnection only: none from a flow writer.
    assert_eq!(calls, [(1, "onTick"), (1, "onStatus"), (2, "onOther")]);
    apps.manage();
    apps.manage();
    assert_eq!(eval::<f64>(&mut apps, "", "ticks"), 2.0);
    apps.call(&c, "close", &[]);
    assert_eq!(
        apps.take_actions(),
        [AppAction::WriterClose {
            session: 1,
            writer: 1
        }]
    );
    apps.manage();
    assert_eq!(
        eval::<f64>(&mut apps, "", "ticks"),
        2.0,
        "a closed writer is not managed"
    );
}
