//! Every scenario, briefly, against the project's server on loopback (data plane and control
//! plane in this process, one worker each way). Bounded in count and time.

use std::net::SocketAddr;
use std::time::Duration;

use rtmfp::session::SessionConfig;
use updraft_control::apps::WwwApps;
use updraft_control::handshake::HandshakeLimits;
use updraft_control::service::{self, ServiceConfig};
use updraft_dataplane::plane::{DataPlane, PlaneConfig};
use updraft_loadgen::scenario::{self, ConnectArgs, FanoutArgs, LoadError, RpcArgs};

fn server(workers: usize) -> (DataPlane, SocketAddr) {
    let plane = DataPlane::start(PlaneConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        workers,
        udp_buffer: Some(4 << 20),
        session: SessionConfig::default(),
        pin: false,
        seed: [1; 32],
        dump: None,
    })
    .unwrap();
    let addr = plane.local_addr();
    let links = plane.connect_control().unwrap();
    std::thread::spawn(move || {
        service::run(
            links,
            ServiceConfig {
                identity_seed: [2; 32],
                dh_seed: [3; 32],
                dh_threads: 1,
                limits: HandshakeLimits::default(),
                keepalive_ms: (15_000, 10_000),
                first_stream: 1,
            },
            // The root application always exists.
            Box::new(WwwApps::new("/nonexistent")),
        )
    });
    (plane, addr)
}

#[test]
fn connect_opens_every_session_and_measures_handshakes() {
    let (plane, addr) = server(2);
    let r = scenario::connect(&ConnectArgs {
        server: addr,
        sessions: 50,
        rate: Some(500.0),
        app: String::new(),
        timeout: Duration::from_secs(30),
        groups: rtmfp::crypto::DhGroup::ALL.to_vec(),
    })
    .unwrap();
    assert_eq!((r.sessions_ok, r.sessions_failed), (50, 0));
    assert_eq!(r.latency.len(), 50);
    assert!(r.packets_out >= 100 && r.packets_in >= 100);
    let j = r.json();
    assert_eq!(j["scenario"], "connect");
    assert!(j["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(r.table().contains("50 ok, 0 failed"));
    plane.shutdown();
}

#[test]
fn fanout_delivers_everything_on_a_clean_path() {
    let (plane, addr) = server(2);
    let r = scenario::fanout(&FanoutArgs {
        server: addr,
        subscribers: 20,
        bitrate_kbps: 1000,
        size: 1000,
        duration: Duration::from_millis(1500),
        app: String::new(),
        stream: "bench".into(),
        sockets: 3,
        groups: scenario::FLASH_GROUPS.to_vec(),
    })
    .unwrap();
    // 1 Mbit/s of 1000-byte messages for 1.5 s: about 187 messages to each of 20 subscribers.
    assert!(r.expected >= 20 * 150, "{}", r.table());
    assert_eq!(r.lost, 0, "{}", r.table());
    assert_eq!(r.delivered, r.expected);
    assert_eq!(r.latency.len(), r.delivered);
    plane.shutdown();
}

#[test]
fn a_server_that_does_not_answer_is_reported_with_its_stage() {
    // A bound socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let r = scenario::connect(&ConnectArgs {
        server: silent.local_addr().unwrap(),
        sessions: 1,
        rate: None,
        app: String::new(),
        timeout: Duration::from_secs(2),
        groups: scenario::FLASH_GROUPS.to_vec(),
    });
    assert_eq!(r.unwrap_err(), LoadError::NoHandshake);
}

#[test]
fn rpc_gets_every_call_answered() {
    let (plane, addr) = server(2);
    let r = scenario::rpc(&RpcArgs {
        server: addr,
        sessions: 10,
        duration: Duration::from_millis(1000),
        method: "noSuchMethod".into(),
        app: String::new(),
        groups: scenario::FLASH_GROUPS.to_vec(),
    })
    .unwrap();
    // Every call is answered (`_error` Call.Failed, since no application defines it); at
    // most one per session is still in flight when the time is up.
    assert!(r.delivered >= 100, "{}", r.table());
    assert!(r.expected - r.delivered <= 10, "{}", r.table());
    assert_eq!(r.latency.len(), r.delivered);
    plane.shutdown();
}
