//! NetGroup bootstrapping through the server over real UDP on loopback (digest §1.14): clients
//! join a group on `GC` flows and hear of members already there, with Cumulus's rules (the five
//! newest and one older member; a leaver's follower hears of the member five places before
//! it). Every traffic loop is bounded in time.

mod support;

use rtmfp::flash::metadata::FlowMetadata;
use rtmfp::flash::netgroup::{parse_member, GroupId};
use rtmfp::ids::PeerId;
use support::live::run_until;
use support::*;

/// A connected client with a static identity; answers it, its session and its peer ID.
fn member(server: SocketAddr, seed: u64) -> (Client, u32, PeerId) {
    let mut c = Client::peer(seed);
    let h = c.open(server, "rtmfp://127.0.0.1/").expect("open");
    let nc = c.connect_app(h, "");
    assert!(c.wait_messages(h, 1), "connected");
    let _ = nc;
    let id = c.endpoint.responder().unwrap().fingerprint();
    (c, h, id)
}

/// Opens a `GC` flow on session `h`, sends the join, and waits until the server has it.
fn join(c: &mut Client, h: u32, group: GroupId) -> FlowId {
    let flow = c.join_group(h, group);
    assert!(
        run_until(&mut [&mut *c], Duration::from_secs(5), |c| c[0]
            .endpoint
            .session(h)
            .and_then(|s| s.flow_backlog(flow))
            == Some(0)),
        "join acknowledged"
    );
    // The worker passed it to the control plane as it took it; let that run.
    std::thread::sleep(Duration::from_millis(50));
    flow
}

/// The members `c` heard of, in order.
fn heard(c: &Client, h: u32) -> Vec<PeerId> {
    c.messages_of(Some(h))
        .iter()
        .filter_map(|m| parse_member(m).ok())
        .collect()
}

#[test]
fn members_hear_of_each_other_and_a_leaver_s_follower_is_stitched_in() {
    let server = start_server();
    let group = GroupId([0x5A; 32]);
    let mut clients: Vec<(Client, u32, PeerId, FlowId)> = Vec::new();
    for seed in 0..8u64 {
        let (mut c, h, id) = member(server.addr, 100 + seed);
        let flow = join(&mut c, h, group);
        clients.push((c, h, id, flow));
    }
    let ids: Vec<PeerId> = clients.iter().map(|c| c.2).collect();
    // Each newcomer hears of the members before it, newest first, at most five of them, and
    // then of one older one.
    for k in 0..clients.len() {
        let expected = k.min(5) + usize::from(k > 5);
        let (c, h, _, _) = &mut clients[k];
        let h = *h;
        assert!(
            run_until(&mut [c], Duration::from_secs(5), |c| heard(c[0], h).len()
                >= expected),
            "member {k} heard of {:?}",
            heard(c, h).len()
        );
        let got = heard(c, h);
        assert_eq!(got.len(), expected, "member {k}");
        let newest: Vec<PeerId> = ids[..k].iter().rev().take(5).copied().collect();
        assert_eq!(got[..k.min(5)], newest[..], "member {k}");
        if k > 5 {
            assert!(ids[..k - 5].contains(&got[5]), "an older member for {k}");
        }
    }
    // The members come on a `GC` flow of the server's that answers the client's `GC` flow.
    let (c1, h1, _, gc1) = &clients[1];
    let member_flows: Vec<FlowId> = c1
        .events
        .iter()
        .filter_map(|(hh, e)| match e {
            EndpointEvent::Session(Event::Message { flow, data })
                if hh == h1 && parse_member(data).is_ok() =>
            {
                Some(*flow)
            }
            _ => None,
        })
        .collect();
    assert!(!member_flows.is_empty());
    assert!(c1.events.iter().any(|(hh, e)| hh == h1
        && matches!(e, EndpointEvent::Session(Event::FlowOpened { flow, metadata, associated })
            if *flow == member_flows[0]
                && metadata[..] == FlowMetadata::Gc.to_vec()[..]
                && *associated == Some(*gc1))));
    // Member 6 (the seventh) ends its NetGroup flow: the next one, 7, hears of the member five
    // places before it among those left (0 1 2 3 4 5 7): 1.
    let (c6, h6, _, flow6) = &mut clients[6];
    c6.endpoint
        .session_mut(*h6)
        .unwrap()
        .close_flow(*flow6)
        .unwrap();
    let h6 = *h6;
    assert!(run_until(&mut [c6], Duration::from_secs(5), |c| c[0]
        .endpoint
        .session(h6)
        .and_then(|s| s.flow_backlog(*flow6))
        .is_none_or(|b| b == 0)));
    let (c7, h7, _, _) = &mut clients[7];
    let h7 = *h7;
    assert!(
        run_until(&mut [c7], Duration::from_secs(5), |c| heard(c[0], h7).len()
            == 7),
        "the follower heard of {:?}",
        heard(c7, h7).len()
    );
    assert_eq!(heard(c7, h7)[6], ids[1]);
}

#[test]
fn group_memberships_survive_a_control_plane_restart() {
    let server = start_server_with(&["--workers", "2"]);
    let control = server.control_pid.expect("a control process");
    let group = GroupId([0x3C; 32]);
    let (mut a, ha, a_id) = member(server.addr, 200);
    join(&mut a, ha, group);
    ServerProcess::signal(control, "KILL");
    let deadline = WallInstant::now() + Duration::from_secs(5);
    while WallInstant::now() < deadline && !server.logged("control process restarted") {
        a.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(server.logged("control process restarted"));
    // The workers report the membership to the new control plane, which does not answer it
    // again; a newcomer hears of the member from before the restart.
    let (mut b, hb, _) = member(server.addr, 201);
    join(&mut b, hb, group);
    assert!(
        run_until(&mut [&mut b, &mut a], Duration::from_secs(5), |c| heard(
            c[0], hb
        ) == [
            a_id
        ]),
        "the newcomer heard of {:?}",
        heard(&b, hb)
    );
    assert!(
        heard(&a, ha).is_empty(),
        "nothing told again to the old member"
    );
}

#[test]
fn a_member_an_application_adds_is_heard_of_until_released() {
    let app = r#"
    function onConnection(client)
        function client:add(peer, group) added = cumulus.groups:join(peer, group) return added.id end
        function client:release() added:release() end
    end
    "#;
    let www = sample_www("netgroup-lua-member");
    std::fs::write(www.0.join("main.lua"), app).unwrap();
    let server = start_server_on(www, &[]);
    let group = GroupId([0x6B; 32]);
    let elsewhere = PeerId([0x77; 32]);
    let mut admin = Client::peer(300);
    let ah = admin.open(server.addr, "rtmfp://127.0.0.1/").expect("open");
    let nc = admin.connect_app(ah, "");
    assert!(admin.wait_messages(ah, 1), "connected");
    let call = |c: &mut Client, txn: f64, method: &str, args: Vec<Value<'_>>| {
        let m = Command::new(method, txn, Value::Null, args)
            .to_message(ObjectEncoding::Amf0, 0)
            .unwrap();
        c.send(ah, nc, &m);
        assert!(
            run_until(&mut [&mut *c], Duration::from_secs(5), |c| c[0]
                .messages_of(Some(ah))
                .iter()
                .filter_map(|m| command_reply(m))
                .any(|r| r.1 == txn)),
            "{method} answered"
        );
    };
    let hex = |b: &[u8; 32]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    call(
        &mut admin,
        5.0,
        "add",
        vec![Value::str(&hex(&elsewhere.0)), Value::str(&hex(&group.0))],
    );
    // A newcomer hears of the application's member as of any.
    let (mut a, h, _) = member(server.addr, 301);
    join(&mut a, h, group);
    assert!(run_until(&mut [&mut a], Duration::from_secs(5), |c| heard(
        c[0], h
    ) == [
        elsewhere
    ]));
    // Released, later newcomers hear of the first client only.
    call(&mut admin, 6.0, "release", vec![]);
    let (mut b, bh, _) = member(server.addr, 302);
    join(&mut b, bh, group);
    let a_id = a.endpoint.responder().unwrap().fingerprint();
    assert!(run_until(&mut [&mut b], Duration::from_secs(5), |c| {
        !heard(c[0], bh).is_empty()
    }));
    std::thread::sleep(Duration::from_millis(100));
    b.step();
    assert_eq!(heard(&b, bh), [a_id]);
}
