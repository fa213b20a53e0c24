//! Whole sessions between two endpoints on a virtual clock, over a seeded lossy network.

mod common;

use std::time::Duration;

use common::{Impairments, Pair};
use rtmfp::amf::Value;
use rtmfp::crypto::NegotiationPolicy;
use rtmfp::endpoint::EndpointEvent;
use rtmfp::flash::command::{Command, NetCommand, ObjectEncoding};
use rtmfp::flash::message::TcMessage;
use rtmfp::flash::metadata::{FlowMetadata, ReceiveIntent};
use rtmfp::ids::FlowId;
use rtmfp::session::flows::SendOptions;
use rtmfp::session::{CloseReason, Event, State};

fn nc_metadata() -> Vec<u8> {
    FlowMetadata::Tc {
        stream_id: 0,
        receive_intent: ReceiveIntent::Sequence,
    }
    .to_vec()
}

/// A connected pair (default network, Flash-compatible policy) whose client has opened a
/// NetConnection flow: (pair, client handle, server handle, flow).
fn connected_with_nc_flow(seed: u64) -> (Pair, u32, u32, FlowId) {
    let mut p = Pair::new(
        seed,
        Impairments::default(),
        NegotiationPolicy::FLASH_COMPATIBLE,
    );
    let (ch, sh) = p.connect();
    let flow = p
        .client
        .session_mut(ch)
        .unwrap()
        .open_flow(&nc_metadata(), None)
        .unwrap();
    (p, ch, sh, flow)
}

/// Queues a reliable message on one of the client's flows.
fn client_send(p: &mut Pair, ch: u32, flow: FlowId, data: &[u8]) {
    let now = p.now;
    p.client
        .session_mut(ch)
        .unwrap()
        .send(now, flow, data, SendOptions::default())
        .unwrap();
}

/// Messages the server's sessions delivered, by flow, in order.
fn server_messages(p: &mut Pair) -> Vec<(FlowId, Vec<u8>)> {
    let mut out = Vec::new();
    p.server_events.retain(|(_, e)| match e {
        EndpointEvent::Session(Event::Message { flow, data }) => {
            out.push((*flow, data.clone()));
            false
        }
        _ => true,
    });
    out
}

#[test]
fn handshake_then_netconnection_connect_and_result() {
    for (encoding, flash_ver) in [(0.0, "WIN 11,7,700,202"), (3.0, "WIN 11,7,700,202")] {
        let mut p = Pair::new(
            11,
            Impairments::default(),
            NegotiationPolicy::FLASH_COMPATIBLE,
        );
        let (ch, sh) = p.connect();
        let now = p.now;
        let client = p.client.session_mut(ch).unwrap();
        let flow = client.open_flow(&nc_metadata(), None).unwrap();
        let connect = Command::new(
            "connect",
            1.0,
            Value::Object(rtmfp::amf::Object::anonymous(vec![
                ("app".into(), Value::str("live")),
                ("flashVer".into(), Value::str(flash_ver)),
                ("tcUrl".into(), Value::str("rtmfp://127.0.0.1/live")),
                ("objectEncoding".into(), Value::Number(encoding)),
            ])),
            vec![],
        );
        let msg = connect.to_message(ObjectEncoding::Amf0, 0).unwrap();
        client
            .send(now, flow, &msg, SendOptions::default())
            .unwrap();

        // The server sees the flow, its metadata, and the command.
        assert!(p
            .run_until(Duration::from_secs(5), |p| p.server_events.iter().any(
                |(_, e)| matches!(e, EndpointEvent::Session(Event::Message { .. }))
            )));
        let opened = p.server_events.iter().find_map(|(h, e)| match e {
            EndpointEvent::Session(Event::FlowOpened {
                flow,
                metadata,
                associated,
            }) => Some((*h, *flow, metadata.clone(), *associated)),
            _ => None,
        });
        let (h, far_flow, metadata, associated) = opened.expect("flow opened");
        assert_eq!(h, sh);
        assert_eq!(metadata, nc_metadata());
        assert_eq!(associated, None);
        let msgs = server_messages(&mut p);
        assert_eq!(msgs.len(), 1);
        let tc = TcMessage::parse(&msgs[0].1).unwrap();
        let cmd = Command::parse(&tc).unwrap();
        let NetCommand::Connect(c) = cmd.net_command().unwrap() else {
            panic!("not connect")
        };
        assert_eq!(c.app(), Some("live"));
        let enc = c.object_encoding();

        // The server answers on a flow associated with the client's (RFC 7016 §2.3.11.1.2).
        let now = p.now;
        let server = p.server.session_mut(sh).unwrap();
        let back = server.open_flow(&nc_metadata(), Some(far_flow)).unwrap();
        let result =
            Command::connect_success(cmd.transaction_id, enc, "Connection succeeded.", vec![]);
        server
            .send(
                now,
                back,
                &result.to_message(ObjectEncoding::Amf0, 0).unwrap(),
                SendOptions::default(),
            )
            .unwrap();
        assert!(p
            .run_until(Duration::from_secs(5), |p| p.client_events.iter().any(
                |(_, e)| matches!(e, EndpointEvent::Session(Event::Message { .. }))
            )));
        let (assoc, reply) = {
            let assoc = p.client_events.iter().find_map(|(_, e)| match e {
                EndpointEvent::Session(Event::FlowOpened { associated, .. }) => Some(*associated),
                _ => None,
            });
            let reply = p.client_events.iter().find_map(|(_, e)| match e {
                EndpointEvent::Session(Event::Message { data, .. }) => Some(data.clone()),
                _ => None,
            });
            (assoc.unwrap(), reply.unwrap())
        };
        assert_eq!(assoc, Some(flow));
        let tc = TcMessage::parse(&reply).unwrap();
        let r = Command::parse(&tc).unwrap();
        assert_eq!(r.name, "_result");
        assert_eq!(r.transaction_id, 1.0);
        let info = &r.args[0];
        assert_eq!(
            info.get("code").and_then(Value::as_str),
            Some("NetConnection.Connect.Success")
        );
        assert_eq!(
            info.get("objectEncoding").and_then(Value::as_f64),
            Some(encoding)
        );
    }
}

/// A message whose content says its index, so order and integrity can be checked.
fn message(i: u64, len: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(len.max(8));
    m.extend_from_slice(&i.to_be_bytes());
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while m.len() < len.max(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        m.push(x as u8);
    }
    m
}

/// Mixed sizes up to 64 KiB: mostly small, some medium, a few large.
fn size_for(i: u64) -> usize {
    let r = i.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
    match r % 100 {
        0 => 8 + (r as usize * 7919) % (64 * 1024 - 8),
        1..=9 => 1200 + (r as usize * 31) % 7000,
        _ => 8 + (r as usize * 13) % 1200,
    }
}

fn bulk_transfer(
    seed: u64,
    net: Impairments,
    policy: NegotiationPolicy,
    count: u64,
) -> common::NetStats {
    let mut p = Pair::new(seed, net, policy);
    let (ch, _sh) = p.connect();
    let flow = p
        .client
        .session_mut(ch)
        .unwrap()
        .open_flow(&nc_metadata(), None)
        .unwrap();
    let mut next_to_send = 0u64;
    let mut received = 0u64;
    let limit = Duration::from_secs(3600);
    let ok = p.run_until(limit, |p| {
        // Keep about 256 KiB queued: the application respects back-pressure.
        let now = p.now;
        let s = p.client.session_mut(ch).unwrap();
        assert_eq!(
            s.state(),
            State::Open,
            "session closed after {received} messages"
        );
        while next_to_send < count && s.flow_backlog(flow).unwrap_or(0) < 256 * 1024 {
            let m = message(next_to_send, size_for(next_to_send));
            s.send(now, flow, &m, SendOptions::default()).unwrap();
            next_to_send += 1;
        }
        for (_, data) in server_messages(p) {
            let idx = u64::from_be_bytes(data[..8].try_into().unwrap());
            assert_eq!(idx, received, "out of order or duplicated");
            assert_eq!(data, message(idx, size_for(idx)), "corrupted message {idx}");
            received += 1;
        }
        received == count
    });
    assert!(
        ok,
        "only {received} of {count} messages arrived (sent {next_to_send})"
    );
    // Nothing arrives twice, even later.
    p.run_until(Duration::from_secs(5), |_| false);
    assert!(server_messages(&mut p).is_empty());
    let s = p.client.session(ch).unwrap();
    assert_eq!(s.state(), State::Open);
    p.stats
}

#[test]
fn ten_thousand_messages_without_loss() {
    let stats = bulk_transfer(
        21,
        Impairments::default(),
        NegotiationPolicy::FLASH_COMPATIBLE,
        10_000,
    );
    assert_eq!(stats.lost, 0);
}

#[test]
fn ten_thousand_messages_with_ten_percent_loss_duplication_and_reordering() {
    let net = Impairments {
        loss: 0.10,
        duplication: 0.02,
        reorder: 0.05,
        ..Impairments::default()
    };
    let stats = bulk_transfer(22, net, NegotiationPolicy::FLASH_COMPATIBLE, 10_000);
    assert!(
        stats.lost > 100,
        "the network really lost packets: {stats:?}"
    );
    assert!(stats.duplicated > 10, "{stats:?}");
}

#[test]
fn hmac_and_session_sequence_numbers_carry_data_under_loss() {
    let net = Impairments {
        loss: 0.05,
        duplication: 0.05,
        reorder: 0.05,
        ..Impairments::default()
    };
    bulk_transfer(23, net, NegotiationPolicy::RTMFP_CPP_DEFAULT, 1_000);
}

#[test]
fn expired_messages_are_abandoned_not_retransmitted() {
    let (mut p, ch, _, flow) = connected_with_nc_flow(31);
    // Open the flow first, so the server knows it.
    client_send(&mut p, ch, flow, &message(0, 10));
    assert!(p.run_until(Duration::from_secs(5), |p| !server_messages(p).is_empty()));
    // Black-hole the network, send media that expires in 100 ms, then heal it.
    p.net.loss = 1.0;
    let now = p.now;
    let expiry = Some(now + Duration::from_millis(100));
    for i in 1..=20 {
        p.client
            .session_mut(ch)
            .unwrap()
            .send(now, flow, &message(i, 900), SendOptions { expiry })
            .unwrap();
    }
    p.run_until(Duration::from_millis(400), |_| false);
    p.net.loss = 0.0;
    let sent_before = p.stats.sent;
    client_send(&mut p, ch, flow, &message(99, 50));
    let mut got = Vec::new();
    assert!(p.run_until(Duration::from_secs(30), |p| {
        got.extend(server_messages(p));
        !got.is_empty()
    }));
    p.run_until(Duration::from_secs(2), |_| false);
    got.extend(server_messages(&mut p));
    let idx: Vec<u64> = got
        .iter()
        .map(|(_, d)| u64::from_be_bytes(d[..8].try_into().unwrap()))
        .collect();
    assert_eq!(idx, vec![99], "expired messages must not be delivered");
    // After healing, only a few packets went out: abandonment notices, the new message and
    // acks, not 20 retransmitted messages.
    let sent_after = p.stats.sent - sent_before;
    assert!(
        sent_after < 12,
        "{sent_after} datagrams after the network healed"
    );
    assert_eq!(p.client.session(ch).unwrap().flow_backlog(flow), Some(0));
}

fn closed_reason(events: &[(u32, EndpointEvent)], handle: u32) -> Option<CloseReason> {
    events.iter().find_map(|(h, e)| match e {
        EndpointEvent::Session(Event::Closed { reason }) if *h == handle => Some(*reason),
        _ => None,
    })
}

#[test]
fn close_from_the_client_reaches_closed_on_both_sides() {
    let mut p = Pair::new(
        41,
        Impairments::default(),
        NegotiationPolicy::FLASH_COMPATIBLE,
    );
    let (ch, sh) = p.connect();
    let now = p.now;
    p.client.session_mut(ch).unwrap().close(now);
    assert!(p.run_until(Duration::from_secs(30), |p| {
        closed_reason(&p.client_events, ch).is_some()
            && closed_reason(&p.server_events, sh).is_some()
    }));
    assert_eq!(
        closed_reason(&p.client_events, ch),
        Some(CloseReason::Local)
    );
    // The server answered with a Close Ack and lingers in S_FARCLOSE_LINGER for 19 s.
    assert_eq!(
        closed_reason(&p.server_events, sh),
        Some(CloseReason::Remote)
    );
    assert_eq!(p.client.session(ch).unwrap().state(), State::Closed);
    assert_eq!(p.server.session(sh).unwrap().state(), State::Closed);
}

#[test]
fn close_from_the_server_reaches_closed_on_both_sides_even_with_loss() {
    let net = Impairments {
        loss: 0.3,
        ..Impairments::default()
    };
    let mut p = Pair::new(42, net, NegotiationPolicy::FLASH_COMPATIBLE);
    let (ch, sh) = p.connect();
    let now = p.now;
    p.server.session_mut(sh).unwrap().close(now);
    assert!(p.run_until(Duration::from_secs(120), |p| {
        closed_reason(&p.client_events, ch).is_some()
            && closed_reason(&p.server_events, sh).is_some()
    }));
    assert_eq!(p.client.session(ch).unwrap().state(), State::Closed);
    assert_eq!(p.server.session(sh).unwrap().state(), State::Closed);
}

#[test]
fn abrupt_close_and_silent_peer_timeout() {
    let mut p = Pair::new(
        43,
        Impairments::default(),
        NegotiationPolicy::FLASH_COMPATIBLE,
    );
    let (ch, sh) = p.connect();
    p.client.session_mut(ch).unwrap().abort();
    assert!(p.run_until(Duration::from_secs(5), |p| closed_reason(
        &p.server_events,
        sh
    )
    .is_some()));
    assert_eq!(
        closed_reason(&p.server_events, sh),
        Some(CloseReason::Aborted)
    );

    // A peer that goes silent is pinged, then closed.
    let mut p = Pair::new(
        44,
        Impairments::default(),
        NegotiationPolicy::FLASH_COMPATIBLE,
    );
    let (_ch, sh) = p.connect();
    p.server
        .session_mut(sh)
        .unwrap()
        .set_keepalive(Some(Duration::from_secs(5)));
    p.net.loss = 1.0;
    assert!(p.run_until(Duration::from_secs(400), |p| closed_reason(
        &p.server_events,
        sh
    )
    .is_some()));
    assert_eq!(closed_reason(&p.server_events, sh), Some(CloseReason::Idle));
}

#[test]
fn keepalive_pings_keep_an_idle_session_open() {
    let mut p = Pair::new(
        45,
        Impairments::default(),
        NegotiationPolicy::FLASH_COMPATIBLE,
    );
    let (ch, sh) = p.connect();
    p.client
        .session_mut(ch)
        .unwrap()
        .set_keepalive(Some(Duration::from_secs(15)));
    // Ten minutes of silence from the application: the idle limit is 5 minutes.
    p.run_until(Duration::from_secs(600), |_| false);
    assert_eq!(p.server.session(sh).unwrap().state(), State::Open);
    assert_eq!(p.client.session(ch).unwrap().state(), State::Open);
    assert!(
        p.server.session(sh).unwrap().srtt().is_some(),
        "RTT measured from timestamp echoes"
    );
}

#[test]
fn address_change_is_validated_before_the_server_follows_it() {
    let (mut p, ch, sh, flow) = connected_with_nc_flow(51);
    // The client's NAT mapping changes: its packets now come from another port.
    let old = p.client_addr;
    p.client_addr = "127.0.0.1:50001".parse().unwrap();
    client_send(&mut p, ch, flow, &message(1, 100));
    assert!(
        p.run_until(Duration::from_secs(10), |p| p.server_events.iter().any(
            |(_, e)| matches!(e, EndpointEvent::Session(Event::AddressChanged { .. }))
        ))
    );
    let changed = p.server_events.iter().find_map(|(_, e)| match e {
        EndpointEvent::Session(Event::AddressChanged { from, to }) => Some((*from, *to)),
        _ => None,
    });
    assert_eq!(changed, Some((old, p.client_addr)));
    assert_eq!(p.server.session(sh).unwrap().far_address(), p.client_addr);
    // Data still flows both ways.
    assert!(p.run_until(Duration::from_secs(5), |p| !server_messages(p).is_empty()));
}

#[test]
fn retransmitted_iikeying_gets_the_same_rikeying_and_one_session() {
    let net = Impairments {
        duplication: 1.0,
        ..Impairments::default()
    };
    let mut p = Pair::new(52, net, NegotiationPolicy::FLASH_COMPATIBLE);
    p.connect();
    assert!(
        p.server.stats().rikeying_repeated >= 1,
        "{:?}",
        p.server.stats()
    );
    assert_eq!(p.server.session_handles().count(), 1);
    assert_eq!(p.client.session_handles().count(), 1);
}

#[test]
fn garbage_datagrams_are_counted_and_sessions_stay_healthy() {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let (mut p, ch, sh, flow) = connected_with_nc_flow(53);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    let attacker: std::net::SocketAddr = "127.0.0.9:4444".parse().unwrap();
    let mut buf = vec![0u8; 1500];
    for i in 0..20_000u32 {
        let len = (rng.next_u32() % 1400) as usize;
        rng.fill_bytes(&mut buf[..len]);
        // Some aimed at the real session ID, some at the startup session, some anywhere.
        match i % 3 {
            0 => buf[..4.min(len)].copy_from_slice(&sh.to_be_bytes()[..4.min(len)]),
            1 => buf[..4.min(len)].fill(0),
            _ => {}
        }
        let now = p.now;
        p.server.handle_datagram(now, attacker, &mut buf[..len]);
    }
    let stats = p.server.stats();
    assert!(
        stats.malformed + stats.unknown_session >= 19_000,
        "{stats:?}"
    );
    assert_eq!(
        p.server.session_handles().count(),
        1,
        "no state for garbage"
    );
    client_send(&mut p, ch, flow, &message(1, 5000));
    assert!(p.run_until(Duration::from_secs(5), |p| !server_messages(p).is_empty()));
    assert_eq!(p.server.session(sh).unwrap().state(), State::Open);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Whatever the network does, every message arrives once, in order, intact.
    #[test]
    fn any_loss_duplication_and_reordering_delivers_exactly_once_in_order(
        seed in 0u64..1_000_000,
        loss in 0.0f64..0.3,
        duplication in 0.0f64..0.3,
        reorder in 0.0f64..0.5,
        delay_ms in 1u64..80,
    ) {
        let net = Impairments {
            loss,
            duplication,
            reorder,
            delay: Duration::from_millis(delay_ms),
            ..Impairments::default()
        };
        bulk_transfer(seed, net, NegotiationPolicy::FLASH_COMPATIBLE, 150);
    }
}

#[test]
fn a_rejected_flow_is_reported_to_its_sender_and_stops() {
    let mut p = Pair::new(
        61,
        Impairments::default(),
        NegotiationPolicy::FLASH_COMPATIBLE,
    );
    let (ch, sh) = p.connect();
    let flow = p
        .client
        .session_mut(ch)
        .unwrap()
        .open_flow(b"GC", None)
        .unwrap();
    client_send(&mut p, ch, flow, &message(1, 100));
    assert!(p
        .run_until(Duration::from_secs(5), |p| p.server_events.iter().any(
            |(_, e)| matches!(e, EndpointEvent::Session(Event::FlowOpened { .. }))
        )));
    let far = p
        .server_events
        .iter()
        .find_map(|(_, e)| match e {
            EndpointEvent::Session(Event::FlowOpened { flow, .. }) => Some(*flow),
            _ => None,
        })
        .unwrap();
    p.server
        .session_mut(sh)
        .unwrap()
        .reject_flow(far, 7)
        .unwrap();
    client_send(&mut p, ch, flow, &message(2, 100));
    assert!(
        p.run_until(Duration::from_secs(5), |p| p.client_events.iter().any(
            |(_, e)| matches!(
                e,
                EndpointEvent::Session(Event::FlowRejected { code: 7, .. })
            )
        ))
    );
    let now = p.now;
    let s = p.client.session_mut(ch).unwrap();
    assert!(
        s.send(now, flow, b"more", SendOptions::default()).is_err(),
        "a rejected flow takes no more data"
    );
    assert_eq!(s.flow_backlog(flow).unwrap_or(0), 0, "and keeps none");
}

#[test]
fn a_flow_without_metadata_or_with_an_unknown_mandatory_option_is_rejected_automatically() {
    let mut p = Pair::new(
        62,
        Impairments::default(),
        NegotiationPolicy::FLASH_COMPATIBLE,
    );
    let (ch, _) = p.connect();
    // An unknown return association: the receiver has no such send flow (RFC 7016 §2.3.11.1.2).
    let flow = p
        .client
        .session_mut(ch)
        .unwrap()
        .open_flow(&nc_metadata(), Some(FlowId(99)))
        .unwrap();
    client_send(&mut p, ch, flow, &message(1, 10));
    assert!(
        p.run_until(Duration::from_secs(5), |p| p.client_events.iter().any(
            |(_, e)| matches!(
                e,
                EndpointEvent::Session(Event::FlowRejected { code: 0, .. })
            )
        ))
    );
    assert!(server_messages(&mut p).is_empty());
}
