//! Lua applications with the Cumulus API in the running server: `onConnection` (arguments,
//! added answer members, rejection), client methods, server-to-client calls, `onPublish` and
//! `onSubscribe` refusing, `addToBlacklist` dropping a source, and hot reload.

mod support;

use support::live::{codes, command, run_until, GROUP2, STREAM};
use support::*;

/// A `www/` whose root application is `code`, readable by the unprivileged control process.
fn www_with(code: &str) -> TempDir {
    let www = sample_www("lua");
    std::fs::write(www.0.join("main.lua"), code).unwrap();
    www
}

/// `connect` to the root application with extra arguments.
fn connect_with(args: Vec<Value<'_>>) -> Vec<u8> {
    Command::new(
        "connect",
        1.0,
        Value::Object(Object::anonymous(vec![
            ("app".into(), Value::str("")),
            ("tcUrl".into(), Value::str("rtmfp://127.0.0.1/?room=lobby")),
            ("objectEncoding".into(), Value::Number(3.0)),
        ])),
        args,
    )
    .to_message(ObjectEncoding::Amf0, 0)
    .unwrap()
}

/// A client of `addr` that sent `connect(args…)`; answers it, its session and its
/// NetConnection flow once the first answer (the connect's) arrived.
fn connected(addr: SocketAddr, seed: u64, args: Vec<Value<'_>>) -> (Client, u32, FlowId) {
    let mut c = Client::with_groups(seed, vec![GROUP2]);
    let h = c.open(addr, "rtmfp://127.0.0.1/").expect("open");
    let now = c.now();
    let s = c.endpoint.session_mut(h).unwrap();
    let flow = s.open_flow(&tc_metadata(0), None).unwrap();
    s.send(now, flow, &connect_with(args), SendOptions::default())
        .unwrap();
    assert!(c.wait_messages(h, 1), "an answer to connect");
    (c, h, flow)
}

/// Waits (bounded) until session `h` of `c` received a command for which `wanted` holds, and
/// answers its name and arguments.
fn wait_command(
    c: &mut Client,
    h: u32,
    wanted: impl Fn(&str, f64) -> bool,
) -> (String, Vec<Value<'static>>) {
    let parse = |data: &[u8]| {
        let tc = TcMessage::parse(data).ok()?;
        let cmd = Command::parse(&tc).ok()?;
        wanted(&cmd.name, cmd.transaction_id).then(|| {
            let args = cmd.args.iter().map(|a| a.clone().into_owned()).collect();
            (cmd.name.to_string(), args)
        })
    };
    let found = c.pump(|ev| {
        ev.iter().any(|(hh, e)| {
            *hh == h
                && matches!(e, EndpointEvent::Session(Event::Message { data, .. }) if parse(data).is_some())
        })
    });
    assert!(found, "no such command arrived");
    c.messages_of(Some(h))
        .iter()
        .find_map(|m| parse(m))
        .unwrap()
}

/// Waits (bounded) for the answer to transaction `txn`: its name and first argument.
fn answer(c: &mut Client, h: u32, txn: f64) -> (String, Value<'static>) {
    let (name, args) = wait_command(c, h, |name, t| {
        t == txn && (name == "_result" || name == "_error")
    });
    (name, args.into_iter().next().unwrap_or(Value::Null))
}

/// Calls `method(args…)` as transaction `txn` and waits for its answer.
fn call(
    c: &mut Client,
    h: u32,
    flow: FlowId,
    txn: f64,
    method: &str,
    args: Vec<Value<'_>>,
) -> (String, Value<'static>) {
    let message = Command::new(method, txn, Value::Null, args)
        .to_message(ObjectEncoding::Amf0, 0)
        .unwrap();
    c.send(h, flow, &message);
    answer(c, h, txn)
}

const APP: &str = r#"
function onConnection(client, name)
    if name == "mallory" then error("go away " .. name) end
    function client:add(a, b) return a + b end
    function client:sum(a, b) client.writer:writeAMFResult(a + b) return "not sent" end
    function client:whoami() return { room = client.room, path = client.path, name = name } end
    function client:broadcast(text)
        for _, c in cumulus.clients:pairs() do
            c.writer:writeAMFMessage("onMessage", text, name)
        end
    end
    return { motd = "hello " .. tostring(name) }
end
function onPublish(client, publication)
    if publication.name == "forbidden" then error("forbidden is reserved") end
end
function onSubscribe(client, listener)
    if listener.publication.name == "private" then return false end
end
"#;

#[test]
fn lua_applications_answer_connect_and_calls_and_call_clients() {
    let server = start_server_on(www_with(APP), &[]);
    let addr = server.addr;
    let (mut ann, ah, aflow) = connected(addr, 1, vec![Value::str("ann")]);
    let (name, info) = answer(&mut ann, ah, 1.0);
    assert_eq!(name, "_result");
    assert_eq!(
        status_code(&info).as_deref(),
        Some("NetConnection.Connect.Success")
    );
    assert_eq!(info.get("motd").and_then(Value::as_str), Some("hello ann"));
    assert_eq!(
        call(
            &mut ann,
            ah,
            aflow,
            2.0,
            "add",
            vec![Value::Number(2.0), Value::Number(3.0)]
        ),
        ("_result".to_string(), Value::Number(5.0))
    );
    // writeAMFResult answers the call, whatever the method returns afterwards.
    assert_eq!(
        call(
            &mut ann,
            ah,
            aflow,
            2.5,
            "sum",
            vec![Value::Number(4.0), Value::Number(3.0)]
        ),
        ("_result".to_string(), Value::Number(7.0))
    );
    let (_, me) = call(&mut ann, ah, aflow, 3.0, "whoami", vec![]);
    assert_eq!(me.get("room").and_then(Value::as_str), Some("lobby"));
    assert_eq!(me.get("path").and_then(Value::as_str), Some(""));
    assert_eq!(me.get("name").and_then(Value::as_str), Some("ann"));

    // A refusal from onConnection: _error Connect.Rejected with the script's message.
    let (mut mallory, mh, _) = connected(addr, 2, vec![Value::str("mallory")]);
    let (name, info) = answer(&mut mallory, mh, 1.0);
    assert_eq!(name, "_error");
    assert_eq!(
        status_code(&info).as_deref(),
        Some("NetConnection.Connect.Rejected")
    );
    assert_eq!(
        info.get("description").and_then(Value::as_str),
        Some("go away mallory")
    );

    // A server-to-client call from a script reaches every connected client.
    let (mut bob, bh, _) = connected(addr, 3, vec![Value::str("bob")]);
    call(
        &mut ann,
        ah,
        aflow,
        4.0,
        "broadcast",
        vec![Value::str("hi all")],
    );
    let on_message = |name: &str, _| name == "onMessage";
    let expected = vec![Value::str("hi all"), Value::str("ann")];
    assert_eq!(wait_command(&mut bob, bh, on_message).1, expected);
    assert_eq!(wait_command(&mut ann, ah, on_message).1, expected);
}

#[test]
fn on_publish_and_on_subscribe_refusals_reach_the_client() {
    let server = start_server_on(www_with(APP), &[]);
    let (mut c, h, _) = connected(server.addr, 4, vec![Value::str("pat")]);
    let flow = c.open_stream_flow(h, STREAM);
    let status_with = |c: &Client, code: &str| {
        c.messages()
            .iter()
            .filter_map(|m| command_reply(m))
            .find_map(|(_, _, v)| {
                (status_code(&v).as_deref() == Some(code)).then(|| {
                    v.get("description")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                })
            })
    };
    c.send(
        h,
        flow,
        &command("publish", 0.0, vec![Value::str("forbidden")]),
    );
    assert!(run_until(&mut [&mut c], Duration::from_secs(5), |c| {
        status_with(c[0], "NetStream.Publish.BadName").is_some()
    }));
    assert_eq!(
        status_with(&c, "NetStream.Publish.BadName").as_deref(),
        Some("forbidden is reserved")
    );
    c.send(h, flow, &command("publish", 0.0, vec![Value::str("cam")]));
    assert!(run_until(&mut [&mut c], Duration::from_secs(5), |c| {
        codes(c[0]).contains(&"NetStream.Publish.Start".to_string())
    }));
    let play = c.open_stream_flow(h, STREAM + 1);
    c.send(h, play, &command("play", 0.0, vec![Value::str("private")]));
    assert!(run_until(&mut [&mut c], Duration::from_secs(5), |c| {
        status_with(c[0], "NetStream.Play.Failed").is_some()
    }));
    assert!(!codes(&c).contains(&"NetStream.Play.Start".to_string()));
}

#[test]
fn add_to_blacklist_from_lua_drops_a_source_until_removed() {
    let app = r#"
    function onConnection(client)
        function client:ban(ip) cumulus:addToBlacklist(ip) end
        function client:unban(ip) cumulus:removeFromBlacklist(ip) end
    end
    "#;
    let server = start_server_on(www_with(app), &[]);
    let addr = server.addr;
    let (mut admin, h, flow) = connected(addr, 5, vec![]);
    call(
        &mut admin,
        h,
        flow,
        2.0,
        "ban",
        vec![Value::str("127.0.0.2")],
    );
    assert!(server.wait_logged("blacklist: added by an application"));
    let mut banned = Client::bound(6, vec![GROUP2], "127.0.0.2:0");
    let h2 = banned.start_open(addr, "rtmfp://127.0.0.1/");
    assert!(
        !banned.pump_for(Duration::from_secs(2), |ev| ev
            .iter()
            .any(|(hh, e)| *hh == h2 && matches!(e, EndpointEvent::Connected { .. }))),
        "a blacklisted source gets no session"
    );
    call(
        &mut admin,
        h,
        flow,
        3.0,
        "unban",
        vec![Value::str("127.0.0.2")],
    );
    assert!(server.wait_logged("blacklist: removed by an application"));
    let mut welcome = Client::bound(7, vec![GROUP2], "127.0.0.2:0");
    assert!(welcome.open(addr, "rtmfp://127.0.0.1/").is_some());
}

#[test]
fn a_changed_main_lua_serves_the_next_connection() {
    let www = www_with("function onConnection(client) return { version = 1 } end");
    let script = www.0.join("main.lua");
    let server = start_server_on(www, &[]);
    let (mut first, h, _) = connected(server.addr, 8, vec![]);
    assert_eq!(
        answer(&mut first, h, 1.0)
            .1
            .get("version")
            .and_then(Value::as_f64),
        Some(1.0)
    );
    std::fs::write(
        &script,
        "function onConnection(client) return { version = 2 } end",
    )
    .unwrap();
    // A modification time unlike the first file's, however coarse the file system's clock.
    let later = std::time::SystemTime::now() + Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(&script)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let (mut second, h, _) = connected(server.addr, 9, vec![]);
    assert_eq!(
        answer(&mut second, h, 1.0)
            .1
            .get("version")
            .and_then(Value::as_f64),
        Some(2.0)
    );
    assert!(server.wait_logged("reload=true"));
}

#[test]
fn lua_reads_the_qos_of_a_publication_and_of_a_play() {
    let app = r#"
    function onPublish(client, publication) live = publication end
    function onSubscribe(client, listener) client.listener = listener end
    function onConnection(client)
        function client:qos()
            local mine, theirs = client.listener.videoQOS, live.videoQOS
            return { play = mine.byteRate, lost = mine.lostRate, publish = theirs.byteRate }
        end
    end
    "#;
    let www = sample_www("lua-qos");
    std::fs::write(www.0.join("live/main.lua"), app).unwrap();
    let server = start_server_on(www, &[]);
    let addr = server.addr;
    let (mut publisher, ph, pflow) = support::live::publishing(addr, 40);
    let (mut player, h, nc, flow) = support::live::netstream_client(addr, 41);
    player.send(h, flow, &command("play", 0.0, vec![Value::str("cam")]));
    assert!(run_until(
        &mut [&mut publisher, &mut player],
        Duration::from_secs(5),
        |c| codes(c[1]).contains(&"NetStream.Play.Start".to_string())
    ));
    // Three seconds of the synthetic stream, in real time; the question goes out after two,
    // when the workers have reported at least once (every second) with media flowing.
    let ask = Command::new("qos", 7.0, Value::Null, vec![])
        .to_message(ObjectEncoding::Amf0, 0)
        .unwrap();
    let started = WallInstant::now();
    let mut asked = false;
    for (ts, m) in support::live::media(0, 3000) {
        while started.elapsed() < Duration::from_millis(u64::from(ts)) {
            support::live::step_all(&mut [&mut publisher, &mut player]);
            std::thread::sleep(Duration::from_millis(1));
        }
        if !asked && ts >= 2200 {
            player.send(h, nc, &ask);
            asked = true;
        }
        publisher.send(ph, pflow, &m);
    }
    let answer = |c: &Client| {
        c.messages_of(Some(h))
            .iter()
            .filter_map(|m| command_reply(m))
            .find(|r| r.1 == 7.0)
    };
    assert!(run_until(
        &mut [&mut publisher, &mut player],
        Duration::from_secs(5),
        |c| answer(c[1]).is_some()
    ));
    let (name, _, q) = answer(&player).unwrap();
    assert_eq!(name, "_result", "{q:?}");
    let rate = |k: &str| q.get(k).and_then(Value::as_f64).unwrap_or(-1.0);
    // About 30 video frames of 310 bytes and 43 audio frames of 66 bytes per second.
    assert!(rate("play") > 5_000.0, "{q:?}");
    assert!(rate("publish") > 5_000.0, "{q:?}");
    assert_eq!(rate("lost"), 0.0, "{q:?}");
}

#[test]
fn a_script_can_stop_a_plays_video() {
    let app = r#"
    function onSubscribe(client, listener) listener.receiveVideo = false end
    "#;
    let www = sample_www("lua-mute");
    std::fs::write(www.0.join("live/main.lua"), app).unwrap();
    let server = start_server_on(www, &[]);
    let addr = server.addr;
    let (mut publisher, ph, pflow) = support::live::publishing(addr, 50);
    let (mut player, h, _, flow) = support::live::netstream_client(addr, 51);
    player.send(h, flow, &command("play", 0.0, vec![Value::str("cam")]));
    assert!(run_until(
        &mut [&mut publisher, &mut player],
        Duration::from_secs(5),
        |c| codes(c[1]).contains(&"NetStream.Play.Start".to_string())
    ));
    let stream = support::live::media(0, 1000);
    let audio = stream.iter().filter(|(_, m)| m[0] == 0x08).count();
    for (_, m) in &stream {
        publisher.send(ph, pflow, m);
    }
    let got = |c: &Client, kind: u8| {
        support::live::received_media(c)
            .iter()
            .filter(|(k, ts, _)| *k == kind && *ts > 0)
            .count()
    };
    let done = run_until(
        &mut [&mut publisher, &mut player],
        Duration::from_secs(10),
        |c| got(c[1], 0x08) + 1 >= audio,
    );
    eprintln!(
        "audio sent {audio}, received {}; video received {}; all {:?}",
        got(&player, 0x08),
        got(&player, 0x09),
        support::live::received_media(&player)
            .iter()
            .map(|(k, ts, _)| (*k, *ts))
            .take(12)
            .collect::<Vec<_>>()
    );
    assert!(done);
    assert_eq!(got(&player, 0x09), 0, "no video after the script muted it");
}

#[test]
fn lua_hears_a_netgroup_join_and_sees_the_group() {
    use rtmfp::flash::netgroup::GroupId;
    let server = start_server_on(
        www_with(
            "function onJoinGroup(client, group) \
               client.writer:writeAMFMessage('joined', group.id, group.size, cumulus.groups.count) \
             end",
        ),
        &[],
    );
    let (mut c, h, _) = connected(server.addr, 61, vec![]);
    c.join_group(h, GroupId([0x77; 32]));
    let (_, args) = wait_command(&mut c, h, |name, _| name == "joined");
    assert_eq!(
        args,
        [
            Value::str(&"77".repeat(32)),
            Value::Number(1.0),
            Value::Number(1.0)
        ]
    );
}

#[test]
fn on_handshake_sends_a_client_to_another_server() {
    // A UDP socket stands in for the other server.
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = start_server_on(
        www_with(&format!(
            "function onHandshake(address, path, properties, attempts) \
               if properties.lb == '1' then return '{}' end \
             end",
            other.local_addr().unwrap()
        )),
        &[],
    );
    // Asked for `?lb=1`, the server redirects: the client's next IHello goes to the other one.
    let mut a = Client::with_groups(71, vec![GROUP2]);
    a.start_open(server.addr, "rtmfp://127.0.0.1/?lb=1");
    assert!(a.reaches(&other), "the client was redirected");
    // Any other client connects here as usual.
    let (b, hb, _) = connected(server.addr, 72, vec![]);
    assert!(b.connected(hb));
}

#[test]
fn an_application_publishes_a_stream_of_its_own_that_clients_play() {
    let app = r#"
    function onStart() tv = cumulus:publish("tv") end
    function onConnection(client)
        function client:feed()
            tv:pushVideoPacket(0, "\023\000\000\000\000\001")
            tv:pushAudioPacket(0, "\175\000\018\016")
            tv:pushVideoPacket(40, "\023\001\000\000\000key")
            tv:pushAudioPacket(60, "\175\001aac")
            tv:pushDataPacket("onCue", cumulus:toAMF0("go"))
            return tv.listeners.count
        end
        function client:stop() tv:close() end
    end
    "#;
    let www = sample_www("lua-server-publication");
    std::fs::write(www.0.join("live/main.lua"), app).unwrap();
    let server = start_server_on(www, &["--workers", "2"]);
    let addr = server.addr;
    let mut players = Vec::new();
    for seed in [60, 61] {
        let (mut p, h, nc, flow) = support::live::netstream_client(addr, seed);
        p.send(h, flow, &command("play", 0.0, vec![Value::str("tv")]));
        players.push((p, h, nc));
    }
    let started = |c: &Client| codes(c).contains(&"NetStream.Play.Start".to_string());
    {
        let mut clients: Vec<&mut Client> = players.iter_mut().map(|p| &mut p.0).collect();
        assert!(run_until(&mut clients, Duration::from_secs(5), |c| c
            .iter()
            .all(|c| started(c))));
    }
    // A client may not publish the application's name.
    let (mut rival, rh, _, rflow) = support::live::netstream_client(addr, 62);
    rival.send(rh, rflow, &command("publish", 0.0, vec![Value::str("tv")]));
    assert!(run_until(&mut [&mut rival], Duration::from_secs(5), |c| {
        codes(c[0]).contains(&"NetStream.Publish.BadName".to_string())
    }));
    // One call pushes a stream's start: both players get it all, in order.
    let (feeder, fh, fnc) = &mut players[0];
    let feed = Command::new("feed", 5.0, Value::Null, vec![])
        .to_message(ObjectEncoding::Amf0, 0)
        .unwrap();
    feeder.send(*fh, *fnc, &feed);
    let kinds = |c: &Client| {
        c.messages()
            .iter()
            .filter_map(|m| TcMessage::parse(m).ok())
            .filter(|t| matches!(t.kind.0, 0x08 | 0x09 | 0x12))
            .filter(|t| !t.payload.starts_with(b"\x02\x00\x11|RtmpSampleAccess"))
            .map(|t| (t.kind.0, t.timestamp, t.payload.to_vec()))
            .collect::<Vec<_>>()
    };
    let mut cue = vec![0x02, 0, 5];
    cue.extend_from_slice(b"onCue");
    cue.extend_from_slice(&[0x02, 0, 2, b'g', b'o']);
    let expected = vec![
        (0x09, 0, vec![0x17, 0, 0, 0, 0, 1]),
        (0x08, 0, vec![0xAF, 0, 0x12, 0x10]),
        (0x09, 0, b"\x17\x01\x00\x00\x00key".to_vec()),
        (0x08, 20, b"\xAF\x01aac".to_vec()),
        (0x12, 0, cue),
    ];
    {
        let mut clients: Vec<&mut Client> = players.iter_mut().map(|p| &mut p.0).collect();
        assert!(run_until(&mut clients, Duration::from_secs(5), |c| c
            .iter()
            .all(|c| kinds(c).len() >= expected.len())));
    }
    for (p, h, _) in &players {
        assert_eq!(kinds(p), expected, "player {h}");
    }
    let answer = players[0]
        .0
        .messages()
        .iter()
        .filter_map(|m| command_reply(m))
        .find(|r| r.1 == 5.0);
    assert_eq!(
        answer.map(|r| (r.0, r.2)),
        Some(("_result".to_string(), Value::Number(2.0))),
        "feed answers the listeners' count"
    );
    // Closing it tells the players; the name is then free for a client.
    let (closer, ch, cnc) = &mut players[1];
    let stop = Command::new("stop", 6.0, Value::Null, vec![])
        .to_message(ObjectEncoding::Amf0, 0)
        .unwrap();
    closer.send(*ch, *cnc, &stop);
    {
        let mut clients: Vec<&mut Client> = players.iter_mut().map(|p| &mut p.0).collect();
        assert!(run_until(&mut clients, Duration::from_secs(5), |c| c
            .iter()
            .all(
                |c| codes(c).contains(&"NetStream.Play.UnpublishNotify".to_string())
            )));
    }
    rival.send(rh, rflow, &command("publish", 0.0, vec![Value::str("tv")]));
    assert!(run_until(&mut [&mut rival], Duration::from_secs(5), |c| {
        codes(c[0]).contains(&"NetStream.Publish.Start".to_string())
    }));
}

#[test]
fn a_script_hears_what_a_client_publishes() {
    let app = r#"
    audio, cues = 0, {}
    function onAudioPacket(client, publication, time, packet) audio = audio + 1 end
    function onDataPacket(client, publication, name, packet)
        cues[#cues + 1] = publication.name .. ":" .. name .. ":" .. tostring(cumulus:fromAMF(packet))
    end
    function onConnection(client)
        function client:report() return { audio = audio, cues = table.concat(cues, ",") } end
    end
    "#;
    let www = sample_www("lua-media-events");
    std::fs::write(www.0.join("live/main.lua"), app).unwrap();
    let metrics = free_tcp_addr();
    let server = start_server_on(www, &["--metrics", &metrics.to_string()]);
    let addr = server.addr;
    // The publisher sends metadata, two headers (publishing), then a second's stream and a cue.
    let (mut publisher, ph, pflow) = support::live::publishing(addr, 70);
    let stream = support::live::media(0, 1000);
    let audio = 1 + stream.iter().filter(|(_, m)| m[0] == 0x08).count();
    for (_, m) in &stream {
        publisher.send(ph, pflow, m);
    }
    let cue = rtmfp::flash::command::DataMessage {
        handler: "onCue".into(),
        values: vec![Value::str("go")],
    }
    .to_message(ObjectEncoding::Amf0, 1000)
    .unwrap();
    publisher.send(ph, pflow, &cue);
    let (mut asker, h, nc, _) = support::live::netstream_client(addr, 71);
    let ask = |txn: f64| {
        Command::new("report", txn, Value::Null, vec![])
            .to_message(ObjectEncoding::Amf0, 0)
            .unwrap()
    };
    let report = |c: &Client, txn: f64| {
        c.messages_of(Some(h))
            .iter()
            .filter_map(|m| command_reply(m))
            .find(|r| r.1 == txn)
            .map(|r| r.2)
    };
    // Ask until the last audio message and the cue were heard (bounded).
    let mut got = None;
    for txn in 1..=50 {
        let txn = f64::from(txn);
        asker.send(h, nc, &ask(txn));
        assert!(run_until(
            &mut [&mut publisher, &mut asker],
            Duration::from_secs(5),
            |c| report(c[1], txn).is_some()
        ));
        let r = report(&asker, txn).unwrap();
        let done = r.get("audio").and_then(Value::as_f64) == Some(audio as f64)
            && r.get("cues")
                .and_then(Value::as_str)
                .is_some_and(|s| s.contains("onCue"));
        got = Some(r);
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = got.unwrap();
    assert_eq!(
        r.get("audio").and_then(Value::as_f64),
        Some(audio as f64),
        "{r:?}"
    );
    assert_eq!(
        r.get("cues").and_then(Value::as_str),
        Some("cam:@setDataFrame:onMetaData,cam:onCue:go"),
        "{r:?}"
    );
    // Only what the application watches went up: no video (no onVideoPacket).
    let stats: serde_json::Value =
        serde_json::from_str(&http_get(metrics, "/stats")).expect("JSON stats");
    assert_eq!(
        worker_sum(&stats, "media_events"),
        audio as u64 + 2,
        "{stats}"
    );
}

#[test]
fn a_script_reads_a_clients_ping_and_time_since_its_last_packet() {
    let app = r#"
    function onConnection(client)
        function client:link()
            return { ping = client.ping, elapsed = client.elapsedFromReception }
        end
    end
    "#;
    let server = start_server_on(www_with(app), &[]);
    let (mut c, h, flow) = connected(server.addr, 80, vec![]);
    // Keep the session stepping past a report period (once a second; before any, both read 0).
    assert!(!run_until(
        &mut [&mut c],
        Duration::from_millis(1500),
        |_| false
    ));
    let (_, after) = call(&mut c, h, flow, 3.0, "link", vec![]);
    let read = |v: &Value<'_>, k: &str| v.get(k).and_then(Value::as_f64).unwrap();
    // A report came while the client was silent: about 1.5 s since its last packet (the
    // connect's acknowledgement; the call itself came after the last report), and the
    // round-trip time on loopback is a few milliseconds at most.
    let elapsed = read(&after, "elapsed");
    assert!((0.5..3.0).contains(&elapsed), "{after:?}");
    assert!((0.0..100.0).contains(&read(&after, "ping")), "{after:?}");
}

#[test]
fn a_script_talks_to_a_tcp_service_and_passes_its_answer_to_a_client() {
    use std::io::{Read, Write};
    let app = r#"
    function onConnection(client)
        function client:fetch(port)
            local tcp = cumulus:createTCPClient()
            function tcp:onReception(data)
                client.writer:writeAMFMessage("onFetched", data)
                tcp:disconnect()
            end
            local err = tcp:connect("127.0.0.1", port)
            if err then return err end
            tcp:send("GET")
            return "sent"
        end
    end
    "#;
    let server = start_server_on(www_with(app), &[]);
    let (mut c, h, flow) = connected(server.addr, 90, vec![]);
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = backend.local_addr().unwrap().port();
    assert_eq!(
        call(
            &mut c,
            h,
            flow,
            2.0,
            "fetch",
            vec![Value::Number(f64::from(port))]
        ),
        ("_result".to_string(), Value::str("sent"))
    );
    let (mut peer, _) = backend.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = [0; 3];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"GET");
    peer.write_all(b"reply").unwrap();
    let (_, args) = wait_command(&mut c, h, |name, _| name == "onFetched");
    assert_eq!(args, [Value::str("reply")]);
}

#[test]
fn a_flow_writer_reaches_the_client_on_a_netconnection_flow_of_its_own() {
    let app = r#"
    function onConnection(client)
        function client:subscribe()
            news = client.writer:newFlowWriter()
            news:writeAMFMessage("onNews", "first")
            return "ok"
        end
        function client:done() news:close() end
    end
    "#;
    let server = start_server_on(www_with(app), &[]);
    let (mut c, h, flow) = connected(server.addr, 95, vec![]);
    assert_eq!(
        call(&mut c, h, flow, 2.0, "subscribe", vec![]),
        ("_result".to_string(), Value::str("ok"))
    );
    let (_, args) = wait_command(&mut c, h, |name, _| name == "onNews");
    assert_eq!(args, [Value::str("first")]);
    // It came on a flow of its own: TC metadata for the NetConnection (stream 0), answering the
    // client's NetConnection flow, not on the flow the call's answer came on.
    let flow_of = |c: &Client, wanted: &dyn Fn(&str, f64) -> bool| {
        c.events.iter().find_map(|(hh, e)| match e {
            EndpointEvent::Session(Event::Message { flow: f, data }) if *hh == h => {
                let tc = TcMessage::parse(data).ok()?;
                let cmd = Command::parse(&tc).ok()?;
                wanted(&cmd.name, cmd.transaction_id).then_some(*f)
            }
            _ => None,
        })
    };
    let news_flow = flow_of(&c, &|n, _| n == "onNews").unwrap();
    let answer_flow = flow_of(&c, &|n, t| n == "_result" && t == 2.0).unwrap();
    assert_ne!(news_flow, answer_flow);
    let opened = c.events.iter().find_map(|(hh, e)| match e {
        EndpointEvent::Session(Event::FlowOpened {
            flow: f,
            metadata,
            associated,
        }) if *hh == h && *f == news_flow => Some((metadata.clone(), *associated)),
        _ => None,
    });
    let (metadata, associated) = opened.expect("the writer's flow opened");
    assert_eq!(metadata, tc_metadata(0));
    assert_eq!(associated, Some(flow));
    // Closed, its flow finishes.
    call(&mut c, h, flow, 3.0, "done", vec![]);
    assert!(c.pump(|ev| {
        ev.iter().any(|(hh, e)| *hh == h
        && matches!(e, EndpointEvent::Session(Event::FlowFinished { flow: f }) if *f == news_flow))
    }));
}

#[test]
fn a_script_closes_a_clients_publication() {
    let app = r#"
    function onPublish(client, publication) live = publication end
    function onConnection(client)
        function client:kick() live:close("Publish.Kicked", "enough") end
    end
    "#;
    let www = sample_www("lua-close-publisher");
    std::fs::write(www.0.join("live/main.lua"), app).unwrap();
    let server = start_server_on(www, &[]);
    let addr = server.addr;
    let (mut publisher, ph, _) = support::live::publishing(addr, 110);
    let (mut admin, h, nc, _) = support::live::netstream_client(addr, 111);
    let kick = Command::new("kick", 4.0, Value::Null, vec![])
        .to_message(ObjectEncoding::Amf0, 0)
        .unwrap();
    admin.send(h, nc, &kick);
    // The publisher hears the status and a close on its NetStream, and its publication ends.
    let closed = |c: &Client| {
        c.messages_of(Some(ph))
            .iter()
            .filter_map(|m| command_reply(m))
            .any(|(name, _, _)| name == "close")
    };
    assert!(run_until(
        &mut [&mut publisher, &mut admin],
        Duration::from_secs(5),
        |c| closed(c[0])
    ));
    let got = codes(&publisher);
    assert!(
        got.contains(&"NetStream.Publish.Kicked".to_string()),
        "{got:?}"
    );
    assert!(
        got.contains(&"NetStream.Unpublish.Success".to_string()),
        "{got:?}"
    );
    // The name is free again.
    let (mut other, oh, _, oflow) = support::live::netstream_client(addr, 112);
    other.send(oh, oflow, &command("publish", 0.0, vec![Value::str("cam")]));
    assert!(run_until(&mut [&mut other], Duration::from_secs(5), |c| {
        codes(c[0]).contains(&"NetStream.Publish.Start".to_string())
    }));
}
