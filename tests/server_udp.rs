//! The `updraft` server over real UDP on loopback, driven by the protocol core's own initiator:
//! handshake, NetConnection connect, setPeerInfo, createStream, an unknown call, and close.

mod support;

use support::*;

#[test]
fn flash_client_session_against_the_server_over_udp() {
    let server = start_server();
    let addr = server.addr;
    let mut c = Client::new();
    let now = c.now();
    let h = c
        .endpoint
        .connect(now, build_url_epd(b"rtmfp://127.0.0.1/live"), None, &[addr]);
    assert!(c.pump(|ev| ev
        .iter()
        .any(|(hh, e)| *hh == h && matches!(e, EndpointEvent::Connected { .. }))));

    let nc = tc_metadata(0);
    let now = c.now();
    let s = c.endpoint.session_mut(h).unwrap();
    let flow = s.open_flow(&nc, None).unwrap();
    let connect = Command::new(
        "connect",
        1.0,
        Value::Object(Object::anonymous(vec![
            ("app".into(), Value::str("live")),
            ("tcUrl".into(), Value::str("rtmfp://127.0.0.1/live")),
            ("objectEncoding".into(), Value::Number(0.0)),
        ])),
        vec![],
    );
    for msg in [
        connect.to_message(ObjectEncoding::Amf0, 0).unwrap(),
        Command::new(
            "setPeerInfo",
            0.0,
            Value::Null,
            vec![Value::str("127.0.0.1:5000")],
        )
        .to_message(ObjectEncoding::Amf0, 0)
        .unwrap(),
        Command::new("createStream", 2.0, Value::Null, vec![])
            .to_message(ObjectEncoding::Amf0, 0)
            .unwrap(),
        Command::new("noSuchMethod", 3.0, Value::Null, vec![])
            .to_message(ObjectEncoding::Amf0, 0)
            .unwrap(),
    ] {
        s.send(now, flow, &msg, SendOptions::default()).unwrap();
    }
    assert!(c.pump(|ev| ev
        .iter()
        .filter(|(_, e)| matches!(e, EndpointEvent::Session(Event::Message { .. })))
        .count()
        >= 4));
    let msgs = c.messages();
    let (name, txn, info) = command_reply(&msgs[0]).unwrap();
    assert_eq!((name.as_str(), txn), ("_result", 1.0));
    assert_eq!(
        info.get("code").and_then(Value::as_str),
        Some("NetConnection.Connect.Success")
    );
    assert_eq!(
        info.get("objectEncoding").and_then(Value::as_f64),
        Some(0.0)
    );
    // setPeerInfo is answered with the keepalive event 41, in milliseconds.
    let tc = TcMessage::parse(&msgs[1]).unwrap();
    assert_eq!(
        UserControl::parse(tc.payload).unwrap(),
        UserControl::SetKeepalive {
            server_ms: 15_000,
            peer_ms: 10_000
        }
    );
    let (name, txn, id) = command_reply(&msgs[2]).unwrap();
    assert_eq!((name.as_str(), txn), ("_result", 2.0));
    assert_eq!(id.as_f64(), Some(1.0));
    let (name, txn, info) = command_reply(&msgs[3]).unwrap();
    assert_eq!((name.as_str(), txn), ("_error", 3.0));
    assert_eq!(
        info.get("code").and_then(Value::as_str),
        Some("NetConnection.Call.Failed")
    );

    // An orderly close from the client is acknowledged.
    let now = c.now();
    c.endpoint.session_mut(h).unwrap().close(now);
    assert!(c.pump(|ev| ev
        .iter()
        .any(|(hh, e)| *hh == h && matches!(e, EndpointEvent::Session(Event::Closed { .. })))));
    assert_eq!(c.endpoint.session(h).unwrap().state(), State::Closed);
}

/// rtmfp-cpp's TCConnection opens its NetStream flows as return flows of the server's
/// NetConnection return flow and accepts only server flows associated with its own control
/// flow; the server must open NetStream replies that way (found against rtmfp-cpp `tcconn`).
#[test]
fn netstream_replies_are_associated_with_the_client_control_flow() {
    let server = start_server();
    let addr = server.addr;
    let mut c = Client::new();
    let now = c.now();
    let h = c
        .endpoint
        .connect(now, build_url_epd(b"rtmfp://127.0.0.1/live"), None, &[addr]);
    assert!(c.pump(|ev| ev
        .iter()
        .any(|(hh, e)| *hh == h && matches!(e, EndpointEvent::Connected { .. }))));
    let now = c.now();
    let s = c.endpoint.session_mut(h).unwrap();
    let control = s.open_flow(&tc_metadata(0), None).unwrap();
    let connect = Command::new(
        "connect",
        1.0,
        Value::Object(Object::anonymous(vec![("app".into(), Value::str("live"))])),
        vec![],
    );
    for msg in [
        connect.to_message(ObjectEncoding::Amf0, 0).unwrap(),
        Command::new("createStream", 2.0, Value::Null, vec![])
            .to_message(ObjectEncoding::Amf0, 0)
            .unwrap(),
    ] {
        s.send(now, control, &msg, SendOptions::default()).unwrap();
    }
    assert!(c.pump(|ev| ev
        .iter()
        .filter(|(_, e)| matches!(e, EndpointEvent::Session(Event::Message { .. })))
        .count()
        >= 2));
    let server_opened = |events: &[(u32, EndpointEvent)], stream_id| {
        events.iter().find_map(|(_, e)| match e {
            EndpointEvent::Session(Event::FlowOpened {
                flow,
                metadata,
                associated,
            }) if *metadata == tc_metadata(stream_id) => Some((*flow, *associated)),
            _ => None,
        })
    };
    let (nc_return, assoc) = server_opened(&c.events, 0).unwrap();
    assert_eq!(assoc, Some(control));

    // The NetStream flow answers the server's NetConnection return flow, as rtmfp-cpp does.
    let now = c.now();
    let s = c.endpoint.session_mut(h).unwrap();
    let stream = s.open_flow(&tc_metadata(1), Some(nc_return)).unwrap();
    let play = Command::new("play", 0.0, Value::Null, vec![Value::str("live")]);
    s.send(
        now,
        stream,
        &play.to_message(ObjectEncoding::Amf0, 0).unwrap(),
        SendOptions::default(),
    )
    .unwrap();
    assert!(c.pump(|ev| server_opened(ev, 1).is_some()
        && ev
            .iter()
            .filter(|(_, e)| matches!(e, EndpointEvent::Session(Event::Message { .. })))
            .count()
            >= 3));
    let (_, assoc) = server_opened(&c.events, 1).unwrap();
    assert_eq!(assoc, Some(control));
    let msgs = c.messages();
    let (name, _, info) = command_reply(&msgs[2]).unwrap();
    assert_eq!(name, "onStatus");
    assert_eq!(
        info.get("code").and_then(Value::as_str),
        Some("NetStream.Play.Reset")
    );
}

#[test]
fn cumulus_ini_keepalives_reach_the_client() {
    let ini = TempFile::new("CumulusServer.ini", "; as Cumulus users have it\nkeepAliveServer = 20\nkeepAlivePeer = 6\n[myApp]\nkey = value\n");
    let server = start_server_with(&["--config", ini.0.to_str().unwrap()]);
    let addr = server.addr;
    let mut c = Client::new();
    let h = c.open(addr, "rtmfp://127.0.0.1/").expect("connected");
    let flow = c.connect_app(h, "");
    assert!(c.wait_messages(h, 1), "connect answered");
    let peer_info = Command::new(
        "setPeerInfo",
        0.0,
        Value::Null,
        vec![Value::str("127.0.0.1:5000")],
    );
    c.send(
        h,
        flow,
        &peer_info.to_message(ObjectEncoding::Amf0, 0).unwrap(),
    );
    assert!(c.wait_messages(h, 2), "setPeerInfo answered");
    let tc_bytes = c.messages().remove(1);
    let tc = TcMessage::parse(&tc_bytes).unwrap();
    assert_eq!(
        UserControl::parse(tc.payload).unwrap(),
        UserControl::SetKeepalive {
            server_ms: 20_000,
            peer_ms: 6_000
        }
    );
}

#[test]
fn a_bad_configuration_is_a_clear_error_with_exit_code_2() {
    let ini = TempFile::new("bad.ini", "port = 1935\nkeepAlivePeer = 2\n");
    let out = Process::new(env!("CARGO_BIN_EXE_updraft"))
        .args([
            "--config",
            ini.0.to_str().unwrap(),
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2: keepAlivePeer = 2 is under the 5 s minimum",
            ini.0.display()
        )),
        "{err}"
    );
    let out = Process::new(env!("CARGO_BIN_EXE_updraft"))
        .args(["--config", "/nonexistent.ini"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.ini: cannot read"));
}

#[test]
fn sigterm_closes_every_session_in_order_and_exits_0() {
    let mut server = start_server();
    let addr = server.addr;
    let mut c = Client::new();
    let now = c.now();
    let h = c
        .endpoint
        .connect(now, build_url_epd(b"rtmfp://127.0.0.1/"), None, &[addr]);
    assert!(c.pump(|ev| ev
        .iter()
        .any(|(hh, e)| *hh == h && matches!(e, EndpointEvent::Connected { .. }))));
    let pid = server.child.id().to_string();
    // The shell's own `kill` builtin: no dependency on procps.
    let kill = format!("kill -TERM {pid}");
    assert!(Process::new("sh")
        .args(["-c", &kill])
        .status()
        .unwrap()
        .success());
    // The server's Close Request reaches the client, which acknowledges it and lingers
    // (S_FARCLOSE_LINGER, RFC 7016 §3.5.5); the server then exits.
    let deadline = WallInstant::now() + Duration::from_secs(5);
    let status = loop {
        c.pump_for(Duration::from_millis(50), |_| false);
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            WallInstant::now() < deadline,
            "server still running 5 s after SIGTERM"
        );
    };
    assert_eq!(status.code(), Some(0));
    let state = c.endpoint.session(h).unwrap().state();
    assert!(
        matches!(state, State::FarCloseLinger { .. } | State::Closed),
        "{state:?}"
    );
}
