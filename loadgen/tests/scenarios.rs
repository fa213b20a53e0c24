//! Every scenario, briefly, against the project's server on loopback (data plane and control
//! plane in this process, one worker each way). Bounded in count and time.

use std::net::SocketAddr;
use std::time::Duration;

use rtmfp::session::SessionConfig;
use updraft_control::apps::WwwApps;
use updraft_control::handshake::HandshakeLimits;
use updraft_control::service::{self, ServiceConfig};
use updraft_dataplane::plane::{DataPlane, PlaneConfig};
use updraft_loadgen::scenario::{
    self, ChurnArgs, ConnectArgs, FanoutArgs, GarbageArgs, LoadError, RendezvousArgs, RpcArgs,
};

fn server(workers: usize) -> (DataPlane, SocketAddr) {
    server_with(workers, HandshakeLimits::default())
}

fn server_with(workers: usize, limits: HandshakeLimits) -> (DataPlane, SocketAddr) {
    let plane = DataPlane::start(PlaneConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        workers,
        udp_buffer: Some(4 << 20),
        session: SessionConfig::default(),
        pin: false,
        seed: [1; 32],
        dump: None,
        mode: updraft_dataplane::xdp::IoMode::Socket,
        interface: None,
        deny: Vec::new(),
        lifetimes: Default::default(),
        busy_poll: None,
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
                limits,
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
        xdp: None,
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
        streams: 1,
        subscribers: 20,
        threads: 1,
        cores: Vec::new(),
        bitrate_kbps: 1000,
        size: 1000,
        duration: Duration::from_millis(1500),
        keyframe_interval: Duration::from_millis(500),
        app: String::new(),
        stream: "bench".into(),
        sockets: 3,
        groups: scenario::FLASH_GROUPS.to_vec(),
        xdp: None,
    })
    .unwrap();
    // One sample per second while it ran, for --plot.
    assert!(
        !r.series.is_empty() && r.series[0].in_per_s > 0.0,
        "{:?}",
        r.series
    );
    assert!(r.svg().contains("<polyline"));
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
        xdp: None,
    });
    assert_eq!(r.unwrap_err(), LoadError::NoRHello);
}

#[test]
fn a_server_that_answers_but_does_not_key_is_reported_at_the_keying_stage() {
    // A server that takes no session: it answers IHello with RHello, refuses every IIKeying.
    let (plane, addr) = server_with(
        1,
        HandshakeLimits {
            max_sessions: 0,
            ..HandshakeLimits::default()
        },
    );
    let r = scenario::connect(&ConnectArgs {
        server: addr,
        sessions: 1,
        rate: None,
        app: String::new(),
        timeout: Duration::from_secs(2),
        groups: scenario::FLASH_GROUPS.to_vec(),
        xdp: None,
    });
    assert_eq!(r.unwrap_err(), LoadError::NoRIKeying);
    plane.shutdown();
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
        xdp: None,
    })
    .unwrap();
    // Every call is answered (`_error` Call.Failed, since no application defines it); at
    // most one per session is still in flight when the time is up.
    assert!(r.delivered >= 100, "{}", r.table());
    assert!(r.expected - r.delivered <= 10, "{}", r.table());
    assert_eq!(r.latency.len(), r.delivered);
    plane.shutdown();
}

#[test]
fn churn_connects_and_closes_sessions_and_the_server_frees_them() {
    let (plane, addr) = server(2);
    let r = scenario::churn(&ChurnArgs {
        server: addr,
        rate: 100.0,
        lifetime: Duration::from_millis(300),
        duration: Duration::from_millis(1000),
        app: String::new(),
        groups: scenario::FLASH_GROUPS.to_vec(),
        xdp: None,
    })
    .unwrap();
    // About 100 sessions arrive over the second; every one connects, and is timed.
    assert!(r.expected >= 90, "{}", r.table());
    assert_eq!(
        (r.delivered, r.lost, r.sessions_failed),
        (r.expected, 0, 0),
        "{}",
        r.table()
    );
    assert_eq!(r.latency.len(), r.delivered);
    // Each closed in order: the server frees every one once its far-close linger (19 s,
    // RFC 7016 §3.5.5) is over.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let open = || {
        plane
            .counters()
            .iter()
            .map(|c| c.sessions_open)
            .sum::<u64>()
    };
    while open() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(open(), 0);
    let closed: u64 = plane.counters().iter().map(|c| c.sessions_closed).sum();
    assert_eq!(closed, r.expected);
    plane.shutdown();
}

#[test]
fn garbage_is_dropped_and_counted_while_a_session_keeps_being_answered() {
    let (plane, addr) = server(2);
    let r = scenario::garbage(&GarbageArgs {
        server: addr,
        rate: 20_000.0,
        duration: Duration::from_millis(1000),
        app: String::new(),
        groups: scenario::FLASH_GROUPS.to_vec(),
    })
    .unwrap();
    assert!(r.packets_out >= 15_000, "{}", r.table());
    // The session survived and every call it made was answered.
    assert_eq!((r.sessions_ok, r.sessions_failed), (1, 0), "{}", r.table());
    assert!(r.delivered >= 50, "{}", r.table());
    assert_eq!(r.lost, 0, "{}", r.table());
    // The server dropped what it could not use, and counted it.
    std::thread::sleep(Duration::from_millis(100));
    let dropped: u64 = plane
        .counters()
        .iter()
        .map(|c| c.drop_malformed + c.drop_unknown_session + c.drop_truncated)
        .sum();
    assert!(dropped > 0, "{:?}", plane.counters());
    plane.shutdown();
}

#[test]
fn publish_carries_many_streams_each_to_its_own_viewers() {
    let (plane, addr) = server(2);
    let r = scenario::fanout(&FanoutArgs {
        server: addr,
        streams: 10,
        subscribers: 2,
        // Two threads, both pinned to core 0 (every machine has it).
        threads: 2,
        cores: vec![0],
        bitrate_kbps: 500,
        size: 1000,
        duration: Duration::from_millis(1500),
        keyframe_interval: Duration::from_millis(500),
        app: String::new(),
        stream: "many".into(),
        sockets: 4,
        groups: scenario::FLASH_GROUPS.to_vec(),
        xdp: None,
    })
    .unwrap();
    assert_eq!(r.scenario, "publish");
    assert_eq!(r.sessions_ok, 30);
    // 0.5 Mbit/s of 1000-byte messages for 1.5 s: about 93 messages per stream, to each of
    // its 2 viewers; none crosses into another stream (each viewer counts only its own).
    assert!(r.expected >= 10 * 2 * 80, "{}", r.table());
    assert_eq!(
        (r.delivered, r.lost, r.misdelivered),
        (r.expected, 0, 0),
        "{}",
        r.table()
    );
    let publications: u64 = plane.counters().iter().map(|c| c.publications).sum();
    assert_eq!(publications, 10);
    plane.shutdown();
}

#[test]
fn selftest_measures_both_ceilings_without_loss_of_what_arrived() {
    let r = updraft_loadgen::selftest::selftest(&updraft_loadgen::selftest::SelftestArgs {
        duration: Duration::from_millis(300),
        size: 1100,
    })
    .unwrap();
    // Both halves moved datagrams, and every datagram received decrypted and parsed.
    assert!(r.packets_out > 1000 && r.packets_in > 1000, "{}", r.table());
    assert_eq!((r.delivered, r.lost), (r.expected, 0), "{}", r.table());
}

#[test]
fn rendezvous_introduces_an_initiator_to_every_peer() {
    // Two workers: the peers' sessions, and so their introductions, are on both.
    let (plane, addr) = server(2);
    let r = scenario::rendezvous(&RendezvousArgs {
        server: addr,
        peers: 6,
        timeout: Duration::from_secs(20),
    })
    .unwrap();
    assert_eq!((r.sessions_ok, r.sessions_failed), (6, 0), "{}", r.table());
    assert_eq!(r.latency.len(), 6);
    plane.shutdown();
}
