//! The server's process architecture over real UDP on loopback: several workers, the separate
//! control process (killed and restarted under load), the application registry, hostile
//! traffic, metrics, logs and daemon mode. Every traffic loop is bounded in count and time.

mod support;

use support::*;

use rtmfp::crypto::write_session_id;

const GROUP2: DhGroup = DhGroup::Modp1024;

fn stats(metrics: SocketAddr) -> serde_json::Value {
    serde_json::from_str(&http_get(metrics, "/stats")).expect("JSON stats")
}

fn command(name: &str, txn: f64, args: Vec<Value<'_>>) -> Vec<u8> {
    Command::new(name, txn, Value::Null, args)
        .to_message(ObjectEncoding::Amf0, 0)
        .unwrap()
}

/// Steps `c` until `cond` holds or `limit` passes; answers whether it held.
fn wait(c: &mut Client, limit: Duration, mut cond: impl FnMut(&Client) -> bool) -> bool {
    let deadline = WallInstant::now() + limit;
    loop {
        c.step();
        if cond(c) {
            return true;
        }
        if WallInstant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The replies `h` got to transaction `txn`.
fn reply_to(c: &Client, h: u32, txn: f64) -> Option<(String, Value<'static>)> {
    c.messages_of(Some(h))
        .iter()
        .filter_map(|m| command_reply(m))
        .find(|(_, t, _)| *t == txn)
        .map(|(n, _, v)| (n, v))
}

#[test]
fn a_missing_application_is_invalid_app_and_the_server_closes_the_session() {
    let server = start_server();
    let mut c = Client::with_groups(1, vec![GROUP2]);
    let h = c
        .open(server.addr, "rtmfp://127.0.0.1/nosuchapp")
        .expect("open");
    c.connect_app(h, "nosuchapp");
    assert!(c.wait_messages(h, 1));
    let (name, _, info) = command_reply(&c.messages_of(Some(h))[0]).unwrap();
    assert_eq!(name, "_error");
    assert_eq!(
        status_code(&info).as_deref(),
        Some("NetConnection.Connect.InvalidApp")
    );
    // The server closes the session (RFC 7016 §3.5.5): the client sees it close.
    assert!(wait(&mut c, Duration::from_secs(5), |c| c
        .endpoint
        .session(h)
        .is_none_or(|s| matches!(
            s.state(),
            State::FarCloseLinger { .. } | State::Closed
        ))));
    // The application that exists, and an AMF3 client, are served (objectEncoding echoed).
    let mut c = Client::with_groups(2, vec![GROUP2]);
    let h = c.open(server.addr, "rtmfp://127.0.0.1/live").expect("open");
    let now = c.now();
    let s = c.endpoint.session_mut(h).unwrap();
    let flow = s.open_flow(&tc_metadata(0), None).unwrap();
    s.send(
        now,
        flow,
        &connect_message("live", 3.0),
        SendOptions::default(),
    )
    .unwrap();
    assert!(c.wait_messages(h, 1));
    let (name, _, info) = command_reply(&c.messages_of(Some(h))[0]).unwrap();
    assert_eq!(name, "_result");
    assert_eq!(
        status_code(&info).as_deref(),
        Some("NetConnection.Connect.Success")
    );
    assert_eq!(info.get("objectEncoding"), Some(&Value::Number(3.0)));
}

#[test]
fn two_hundred_concurrent_sessions_spread_over_two_workers() {
    const SESSIONS: usize = 200;
    let metrics = free_tcp_addr();
    let server = start_server_with(&["--workers", "2", "--metrics", &metrics.to_string()]);
    let mut clients: Vec<(Client, u32)> = (0..SESSIONS)
        .map(|i| {
            let mut c = Client::with_groups(100 + i as u64, vec![GROUP2]);
            let h = c.start_open(server.addr, "rtmfp://127.0.0.1/live");
            (c, h)
        })
        .collect();
    let deadline = WallInstant::now() + Duration::from_secs(60);
    while WallInstant::now() < deadline && !clients.iter().all(|(c, h)| c.connected(*h)) {
        clients.iter_mut().for_each(|(c, _)| c.step());
        std::thread::sleep(Duration::from_millis(2));
    }
    let open = clients.iter().filter(|(c, h)| c.connected(*h)).count();
    assert_eq!(open, SESSIONS, "every session opened");
    for (c, h) in clients.iter_mut() {
        c.connect_app(*h, "live");
    }
    let deadline = WallInstant::now() + Duration::from_secs(30);
    let answered = |clients: &[(Client, u32)]| {
        clients
            .iter()
            .filter(|(c, h)| {
                reply_to(c, *h, 1.0).is_some_and(|(n, v)| {
                    n == "_result"
                        && status_code(&v).as_deref() == Some("NetConnection.Connect.Success")
                })
            })
            .count()
    };
    while WallInstant::now() < deadline && answered(&clients) < SESSIONS {
        clients.iter_mut().for_each(|(c, _)| c.step());
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(answered(&clients), SESSIONS, "every connect answered");
    let s = stats(metrics);
    let per_worker: Vec<u64> = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["sessions_open"].as_u64().unwrap())
        .collect();
    eprintln!("sessions per worker: {per_worker:?}");
    assert_eq!(per_worker.len(), 2);
    assert_eq!(per_worker.iter().sum::<u64>(), SESSIONS as u64);
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "both workers serve sessions: {per_worker:?}"
    );
    // The control plane reports its handshake counters to the metrics within a second or two.
    let deadline = WallInstant::now() + Duration::from_secs(5);
    let completed = |s: &serde_json::Value| s["control"]["handshake_completed"].as_u64();
    while WallInstant::now() < deadline && completed(&stats(metrics)) < Some(SESSIONS as u64) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = stats(metrics);
    assert_eq!(completed(&s), Some(SESSIONS as u64), "{s}");
    assert_eq!(
        s["control"]["sessions"].as_u64(),
        Some(SESSIONS as u64),
        "{s}"
    );
    let prom = http_get(metrics, "/metrics");
    assert!(
        prom.contains("updraft_control_handshake_completed_total 200"),
        "{prom}"
    );
    assert!(
        prom.contains("updraft_sessions_open{worker=\"1\"}"),
        "{prom}"
    );
    // Closing from the client side frees every session on the server.
    for (c, h) in clients.iter_mut() {
        let now = c.now();
        c.endpoint.session_mut(*h).unwrap().close(now);
    }
    let deadline = WallInstant::now() + Duration::from_secs(20);
    while WallInstant::now() < deadline && worker_sum(&stats(metrics), "sessions_open") > 0 {
        for _ in 0..20 {
            clients.iter_mut().for_each(|(c, _)| c.step());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(worker_sum(&stats(metrics), "sessions_open"), 0);
}

#[test]
fn killing_the_control_process_keeps_sessions_streaming_and_new_connects_work_within_2_s() {
    let server = start_server_with(&["--workers", "2"]);
    let control = server.control_pid.expect("a control process");
    let mut c = Client::with_groups(7, vec![GROUP2]);
    let h = c.open(server.addr, "rtmfp://127.0.0.1/live").expect("open");
    let nc = c.connect_app(h, "live");
    assert!(c.wait_messages(h, 1));
    // A NetStream flow carrying audio: the worker acknowledges it without the control plane.
    let audio = c.open_stream_flow(h, 1);
    let mut frame = vec![0x08u8, 0, 0, 0, 0];
    frame.extend_from_slice(&[0xAF; 200]);
    ServerProcess::signal(control, "KILL");
    let killed_at = WallInstant::now();
    // Keep streaming for 1.5 s across the restart.
    let mut sent = 0;
    while killed_at.elapsed() < Duration::from_millis(1500) {
        c.send(h, audio, &frame);
        sent += 1;
        c.pump_for(Duration::from_millis(20), |_| false);
    }
    assert!(sent > 20);
    let backlog = |c: &Client| c.endpoint.session(h).and_then(|s| s.flow_backlog(audio));
    assert!(wait(&mut c, Duration::from_secs(5), |c| backlog(c) == Some(0)));
    let s = c.endpoint.session(h).expect("the session survives");
    assert_eq!(s.state(), State::Open);
    assert_eq!(
        s.flow_backlog(audio),
        Some(0),
        "every audio message acknowledged"
    );
    // A new client connects within 2 s of the kill.
    let mut n = Client::with_groups(8, vec![GROUP2]);
    let h2 = n.start_open(server.addr, "rtmfp://127.0.0.1/live");
    let deadline = killed_at + Duration::from_secs(2);
    while WallInstant::now() < deadline && !n.connected(h2) {
        n.step();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(n.connected(h2), "a new session within 2 s of the kill");
    assert!(server.wait_logged("control process restarted"));
    // The surviving session still gets NetConnection answers from the new control plane.
    c.send(h, nc, &command("createStream", 2.0, vec![]));
    wait(&mut c, Duration::from_secs(5), |c| {
        reply_to(c, h, 2.0).is_some()
    });
    let (name, _) = reply_to(&c, h, 2.0).expect("createStream answered after the restart");
    assert_eq!(name, "_result");
}

#[test]
fn a_flood_of_malformed_and_replayed_datagrams_leaves_sessions_healthy() {
    const FLOOD: usize = 100_000;
    let metrics = free_tcp_addr();
    let server = start_server_with(&["--workers", "2", "--metrics", &metrics.to_string()]);
    let mut c = Client::with_groups(11, vec![GROUP2]);
    let h = c.open(server.addr, "rtmfp://127.0.0.1/live").expect("open");
    let nc = c.connect_app(h, "live");
    assert!(c.wait_messages(h, 1));
    // Valid datagrams of this session, recorded to be replayed.
    let far = c.endpoint.session(h).unwrap().far_session_id();
    let mut recorded = Vec::new();
    let mut buf = [0u8; 2048];
    for i in 0..20 {
        c.send(
            h,
            nc,
            &command("noSuchMethod", 100.0 + f64::from(i), vec![]),
        );
        let now = c.now();
        while let Some(t) = c.endpoint.poll_transmit(now, &mut buf) {
            recorded.push(buf[..t.len].to_vec());
            c.socket.send_to(&buf[..t.len], t.destination).unwrap();
        }
    }
    assert!(!recorded.is_empty());
    let rss_before = rss_kib(server.child.id());
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    use rand_chacha::rand_core::RngCore;
    let started = WallInstant::now();
    for i in 0..FLOOD {
        let len = (rng.next_u32() % 1400) as usize + 1;
        let mut d = vec![0u8; len];
        rng.fill_bytes(&mut d);
        match i % 5 {
            // Random bytes: unknown sessions, other workers' IDs, truncated headers.
            0 | 1 => {}
            // Startup packets (session ID 0) that do not decrypt.
            2 => {
                d.resize(len.max(16), 0);
                write_session_id(&mut d, 0).unwrap();
            }
            // The live session's ID with garbage ciphertext.
            3 => {
                d.resize(len.max(32), 0);
                write_session_id(&mut d, far).unwrap();
            }
            // Replays of real datagrams, from another address and from the client's own.
            _ => d = recorded[i % recorded.len()].clone(),
        }
        let from = if i % 10 == 4 { &c.socket } else { &attacker };
        let _ = from.send_to(&d, server.addr);
        if i % 2000 == 0 {
            // Let the client answer pings meanwhile; the flood stays bounded in time.
            c.step();
            assert!(started.elapsed() < Duration::from_secs(60), "flood bounded");
        }
    }
    // The session is healthy: a call is answered, the server is up and its memory bounded.
    c.send(h, nc, &command("createStream", 7.0, vec![]));
    wait(&mut c, Duration::from_secs(5), |c| {
        reply_to(c, h, 7.0).is_some()
    });
    let (name, _) = reply_to(&c, h, 7.0).expect("the session still answers");
    assert_eq!(name, "_result");
    assert_eq!(c.endpoint.session(h).unwrap().state(), State::Open);
    let s = stats(metrics);
    let dropped = worker_sum(&s, "drop_malformed")
        + worker_sum(&s, "drop_unknown_session")
        + worker_sum(&s, "drop_truncated");
    eprintln!(
        "flood: {} received, {dropped} dropped as malformed or unknown",
        worker_sum(&s, "rx_packets")
    );
    assert!(
        dropped > (FLOOD as u64) / 10,
        "malformed datagrams are counted: {s}"
    );
    let rss_after = rss_kib(server.child.id());
    eprintln!("server RSS: {rss_before} KiB before, {rss_after} KiB after");
    assert!(rss_after < rss_before + 64 * 1024, "memory stays bounded");
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn single_process_mode_serves_the_same() {
    let server = start_server_with(&["--single-process", "--workers", "1"]);
    assert!(server.control_pid.is_none());
    let mut c = Client::with_groups(21, vec![GROUP2]);
    let h = c.open(server.addr, "rtmfp://127.0.0.1/").expect("open");
    let nc = c.connect_app(h, "");
    assert!(c.wait_messages(h, 1));
    c.send(h, nc, &command("noSuchMethod", 2.0, vec![]));
    assert!(c.wait_messages(h, 2));
    let (name, info) = reply_to(&c, h, 2.0).unwrap();
    assert_eq!(name, "_error");
    assert_eq!(
        status_code(&info).as_deref(),
        Some("NetConnection.Call.Failed")
    );
}

#[test]
fn logs_go_to_rotated_files_and_sighup_reopens_them() {
    let dir = TempDir::new("logs");
    let (server, _ini) = start_server_configured(
        &format!("[logs]\ndirectory = {}\nname = server\n", dir.0.display()),
        &[],
    );
    let current = dir.0.join("server.0");
    let deadline = WallInstant::now() + Duration::from_secs(5);
    while WallInstant::now() < deadline
        && !std::fs::read_to_string(&current).is_ok_and(|t| t.contains("serving"))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(std::fs::read_to_string(&current)
        .unwrap()
        .contains("serving"));
    // logrotate moves the file away, then signals.
    std::fs::rename(&current, dir.0.join("moved")).unwrap();
    ServerProcess::signal(server.child.id(), "HUP");
    let deadline = WallInstant::now() + Duration::from_secs(5);
    while WallInstant::now() < deadline
        && !std::fs::read_to_string(&current).is_ok_and(|t| t.contains("log files reopened"))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(std::fs::read_to_string(&current)
        .unwrap()
        .contains("log files reopened"));
}

#[test]
fn daemon_mode_detaches_writes_a_pid_file_and_stops_on_sigterm() {
    let dir = TempDir::new("daemon");
    let pidfile = dir.0.join("updraft.pid");
    let ini = TempFile::new(
        "daemon.ini",
        &format!("[logs]\ndirectory = {}\n", dir.0.display()),
    );
    let out = Process::new(env!("CARGO_BIN_EXE_updraft"))
        .args(["--daemon", "--pidfile", pidfile.to_str().unwrap()])
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = WallInstant::now() + Duration::from_secs(5);
    let mut pid = None;
    while WallInstant::now() < deadline && pid.is_none() {
        pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = pid.expect("a pid file");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    ServerProcess::signal(pid, "TERM");
    let deadline = WallInstant::now() + Duration::from_secs(10);
    while WallInstant::now() < deadline && pidfile.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pidfile.exists(), "the pid file is removed at exit");
    let log = std::fs::read_to_string(dir.0.join("log.0")).unwrap();
    assert!(
        log.contains("serving") && log.contains("data plane stopped"),
        "{log}"
    );
}

#[test]
fn dump_logs_every_session_packet_decoded() {
    let server = start_server_with(&["--dump", "--workers", "1"]);
    let mut c = Client::with_groups(31, vec![GROUP2]);
    let h = c.open(server.addr, "rtmfp://127.0.0.1/").expect("open");
    c.connect_app(h, "");
    assert!(c.wait_messages(h, 1));
    let deadline = WallInstant::now() + Duration::from_secs(5);
    let seen = |s: &ServerProcess| {
        s.logged("direction=\"in\"")
            && s.logged("direction=\"out\"")
            && s.logged("\"command\":\"connect\"")
            && s.logged("NetConnection.Connect.Success")
    };
    while WallInstant::now() < deadline && !seen(&server) {
        c.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(seen(&server), "{:?}", server.log.lock().unwrap());
}

#[test]
fn a_silent_client_is_pinged_then_closed_and_freed() {
    let metrics = free_tcp_addr();
    let (server, _ini) = start_server_configured(
        "keepAliveServer = 5\n",
        &["--workers", "1", "--metrics", &metrics.to_string()],
    );
    let mut c = Client::with_groups(41, vec![GROUP2]);
    let h = c.open(server.addr, "rtmfp://127.0.0.1/").expect("open");
    c.connect_app(h, "");
    assert!(c.wait_messages(h, 1));
    assert_eq!(worker_sum(&stats(metrics), "sessions_open"), 1);
    // The client goes silent: it reads what arrives and never answers.
    c.socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let mut arrived = 0;
    let deadline = WallInstant::now() + Duration::from_secs(120);
    while WallInstant::now() < deadline && worker_sum(&stats(metrics), "sessions_open") > 0 {
        while c.socket.recv_from(&mut buf).is_ok() {
            arrived += 1;
        }
    }
    assert_eq!(
        worker_sum(&stats(metrics), "sessions_open"),
        0,
        "the silent session is closed"
    );
    assert!(
        arrived >= 5,
        "the server pinged the silent client ({arrived} datagrams)"
    );
    assert_eq!(worker_sum(&stats(metrics), "sessions_closed"), 1);
}

#[test]
fn max_sessions_refuses_handshakes_beyond_the_limit() {
    let metrics = free_tcp_addr();
    let (server, _ini) =
        start_server_configured("maxSessions = 1\n", &["--metrics", &metrics.to_string()]);
    let mut first = Client::with_groups(51, vec![GROUP2]);
    assert!(first.open(server.addr, "rtmfp://127.0.0.1/").is_some());
    let mut second = Client::with_groups(52, vec![GROUP2]);
    let h = second.start_open(server.addr, "rtmfp://127.0.0.1/");
    assert!(!wait(&mut second, Duration::from_secs(3), |c| c.connected(h)));
    let deadline = WallInstant::now() + Duration::from_secs(5);
    let refused = |s: &serde_json::Value| s["control"]["handshake_failed_max_sessions"].as_u64();
    while WallInstant::now() < deadline && refused(&stats(metrics)).unwrap_or(0) == 0 {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(refused(&stats(metrics)).unwrap_or(0) >= 1);
    assert_eq!(worker_sum(&stats(metrics), "sessions_open"), 1);
}
