//! P2P rendezvous through the server over real UDP on loopback (RFC 7016 §3.5.1.4–§3.5.1.5,
//! digest §1.13): a client looks for a connected peer by its peer ID, the server answers with a
//! Redirect to the peer's addresses and forwards the IHello into the peer's session, and the two
//! open a session of their own. Every traffic loop is bounded in time.

mod support;

use rtmfp::flash::command::names;
use rtmfp::ids::PeerId;
use rtmfp::startup::components::build_fingerprint_epd;
use support::live::{command, run_until, user_controls};
use support::*;

fn stats(metrics: SocketAddr) -> serde_json::Value {
    serde_json::from_str(&http_get(metrics, "/stats")).expect("JSON stats")
}

fn control(metrics: SocketAddr, name: &str) -> u64 {
    stats(metrics)["control"][name].as_u64().unwrap_or(0)
}

/// Waits (bounded) until the control counter `name` reaches `n`; answers its last value.
fn wait_control(metrics: SocketAddr, name: &str, n: u64) -> u64 {
    let deadline = WallInstant::now() + Duration::from_secs(5);
    loop {
        let v = control(metrics, name);
        if v >= n || WallInstant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A peer connected to the server's root application that reported `addresses` with
/// `setPeerInfo`, as Flash Player does after `connect`; answers it and its peer ID.
fn connected_peer(server: SocketAddr, seed: u64, addresses: &[&str]) -> (Client, PeerId) {
    let mut b = Client::peer(seed);
    let id = report_to(&mut b, server, addresses);
    (b, id)
}

/// Connects `b` to the server's root application and sends `setPeerInfo(addresses)`; answers
/// its peer ID once the server acknowledged them with the keepalive event (41).
fn report_to(b: &mut Client, server: SocketAddr, addresses: &[&str]) -> PeerId {
    let h = b.open(server, "rtmfp://127.0.0.1/").expect("open");
    let nc = b.connect_app(h, "");
    assert!(b.wait_messages(h, 1), "connected");
    let addresses: Vec<Value<'_>> = addresses.iter().map(|a| Value::str(a)).collect();
    b.send(h, nc, &command(names::SET_PEER_INFO, 0.0, addresses));
    assert!(
        run_until(&mut [&mut *b], Duration::from_secs(5), |c| user_controls(
            c[0]
        )
        .iter()
        .any(|&(event, _)| event == 41)),
        "setPeerInfo answered"
    );
    b.endpoint.responder().unwrap().fingerprint()
}

/// A Forwarded IHello a peer got: EPD, reply address, tag.
type Forwarded = (Vec<u8>, SocketAddr, Vec<u8>);

/// Steps `a` and `b`, `b` answering every Forwarded IHello as it arrives (as Flash Player
/// does, with an RHello to the reply address), until `a`'s session `p2p` opened and `b`
/// accepted it (10 s at most). Answers whether it did, and the Forwarded IHellos `b` got.
fn introduce(a: &mut Client, b: &mut Client, p2p: u32) -> (bool, Vec<Forwarded>) {
    let a_port = a.socket.local_addr().unwrap().port();
    let mut forwarded = Vec::new();
    let mut seen = b.events.len();
    let deadline = WallInstant::now() + Duration::from_secs(10);
    loop {
        a.step();
        b.step();
        let new: Vec<Forwarded> = b.events[seen..]
            .iter()
            .filter_map(|(_, e)| match e {
                EndpointEvent::Session(Event::ForwardedIHello { epd, reply_to, tag }) => {
                    Some((epd.clone(), *reply_to, tag.clone()))
                }
                _ => None,
            })
            .collect();
        seen = b.events.len();
        for (epd, reply_to, tag) in new {
            let now = b.now();
            b.endpoint
                .answer_forwarded_ihello(now, reply_to, &epd, &tag);
            forwarded.push((epd, reply_to, tag));
        }
        let accepted = b.events.iter().any(
            |(_, e)| matches!(e, EndpointEvent::Accepted { from, .. } if from.port() == a_port),
        );
        if a.connected(p2p) && accepted {
            return (true, forwarded);
        }
        if WallInstant::now() >= deadline {
            return (false, forwarded);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn the_server_introduces_a_client_to_a_connected_peer() {
    let metrics = free_tcp_addr();
    let server = start_server_with(&["--metrics", &metrics.to_string()]);
    // B also reports a loopback address nothing listens on: the Redirect lists it after the
    // address B's session comes from.
    let (mut b, b_id) = connected_peer(server.addr, 31, &["127.0.0.9:9"]);

    // A looks for B by peer ID at the server (NetStream(nc, peerID) in Flash).
    let mut a = Client::with_groups(32, vec![DhGroup::Modp1024]);
    let p2p = a.open_peer(server.addr, b_id);
    let a_port = a.socket.local_addr().unwrap().port();
    // B hears of A through its server session and answers A directly (RHello), which opens
    // B's NAT to A; A then keys a session with B.
    let (opened, forwarded) = introduce(&mut a, &mut b, p2p);
    let (epd, reply_to, tag) = forwarded.first().expect("B got the Forwarded IHello");
    assert_eq!(epd, &build_fingerprint_epd(&b_id.0));
    assert_eq!(
        reply_to.port(),
        a_port,
        "the reply address is where A's IHello came from"
    );
    assert!(!tag.is_empty());
    assert!(opened, "A and B opened a P2P session");
    assert_eq!(
        a.endpoint.session_mut(p2p).unwrap().far_address().port(),
        b.socket.local_addr().unwrap().port(),
        "A's session goes to B, not to the server"
    );

    // The P2P session carries data, without the server.
    let flow = a.open_stream_flow(p2p, 1);
    a.send(p2p, flow, b"hello peer");
    assert!(run_until(
        &mut [&mut a, &mut b],
        Duration::from_secs(5),
        |c| c[1].messages().iter().any(|m| m == b"hello peer")
    ));
    assert_eq!(wait_control(metrics, "handshake_introduced", 1), 1);
    assert_eq!(control(metrics, "handshake_rendezvous_unknown"), 0);
}

#[test]
fn a_peer_not_connected_here_gets_no_answer() {
    let metrics = free_tcp_addr();
    let server = start_server_with(&["--metrics", &metrics.to_string()]);
    let mut a = Client::with_groups(33, vec![DhGroup::Modp1024]);
    let nobody = PeerId([0x42; 32]);
    let h = a.open_peer(server.addr, nobody);
    // IHellos go out (and are retransmitted after 1 s), nothing comes back.
    assert!(!a.pump_for(Duration::from_millis(1500), |ev| ev
        .iter()
        .any(|(hh, e)| *hh == h && matches!(e, EndpointEvent::Connected { .. }))));
    assert!(wait_control(metrics, "handshake_rendezvous_unknown", 1) >= 1);
    assert_eq!(control(metrics, "handshake_introduced"), 0);
    assert!(a.events.is_empty(), "{:?}", a.events);
    // Not a datagram went out: no Redirect, no RHello.
    let s = stats(metrics);
    assert!(worker_sum(&s, "rx_packets") >= 2, "{s}");
    assert_eq!(worker_sum(&s, "tx_packets"), 0, "{s}");
}

#[test]
fn an_application_may_send_a_rendezvous_for_an_unknown_peer_elsewhere() {
    // A UDP socket stands in for another server the application knows.
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    let www = sample_www("p2p-elsewhere");
    std::fs::write(
        www.0.join("main.lua"),
        format!(
            "function onRendezVousUnknown(id) if #id == 32 then return '{}' end end",
            other.local_addr().unwrap()
        ),
    )
    .unwrap();
    let server = start_server_on(www, &[]);
    let mut a = Client::with_groups(34, vec![DhGroup::Modp1024]);
    let nobody = PeerId([0x43; 32]);
    a.open_peer(server.addr, nobody);
    // A follows the Redirect: its IHello for that peer reaches the other server.
    assert!(
        a.reaches(&other),
        "the initiator was redirected to the other server"
    );
}

#[test]
fn a_peer_behind_the_same_address_is_answered_on_the_initiator_s_reported_address() {
    let server = start_server();
    let (mut b, b_id) = connected_peer(server.addr, 41, &[]);
    // A has a session with the server too, from the same public IP address as B (both
    // 127.0.0.1 here), and reported another address it can be reached on (127.0.0.2, which
    // its wildcard socket also receives on): as Cumulus does for peers behind one NAT, B is
    // told to answer A there rather than at A's public address.
    let mut a = Client::peer(42);
    let a_port = a.socket.local_addr().unwrap().port();
    let lan = format!("127.0.0.2:{a_port}");
    report_to(&mut a, server.addr, &[&lan]);
    let p2p = a.open_peer(server.addr, b_id);
    let (opened, forwarded) = introduce(&mut a, &mut b, p2p);
    assert!(opened, "A and B opened a P2P session");
    assert_eq!(forwarded.first().map(|f| f.1), Some(lan.parse().unwrap()));
}
