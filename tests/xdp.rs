//! The AF_XDP data plane end to end, in network namespaces: each test makes two namespaces of
//! its own (unique names) joined by a veth pair, runs the server in one (`ip netns exec`) and
//! drives clients from a thread that entered the other (`setns`), and removes both at the end
//! however it ends. Every wait is bounded. Nothing leaves the two namespaces.
//!
//! They need root (namespaces, XDP, AF_XDP) and an XDP program in this build (clang at build
//! time). Without them each test says why and skips; `UPDRAFT_REQUIRE_PRIVILEGED_TESTS` (set by
//! `scripts/test.sh` when run as root, as CI does) turns a skip into a failure.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};

use support::live::*;
use support::*;

/// The server's side of the veth pair.
const SERVER_IP: &str = "10.201.0.1";
/// The client's side.
const CLIENT_IP: &str = "10.201.0.2";
/// The server's IPv6 address (a unique local address, RFC 4193).
const SERVER_IP6: &str = "fd00:201::1";
/// The client's IPv6 address.
const CLIENT_IP6: &str = "fd00:201::2";
const PORT: u16 = 1935;
const METRICS_PORT: u16 = 9935;

fn skip_reason() -> Option<String> {
    // The effective user ID, from /proc (no libc call needed).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root {
        return Some("not root: namespaces, XDP and AF_XDP need privileges".into());
    }
    if updraft_bpf::OBJECT.is_none() {
        return Some(updraft_bpf::NO_OBJECT_REASON.into());
    }
    if !Process::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some("no `ip` command (iproute2)".into());
    }
    None
}

/// Whether the test can run; prints why not, or fails when privileged tests are required.
fn can_run(test: &str) -> bool {
    match skip_reason() {
        None => true,
        Some(why) => {
            assert!(
                std::env::var_os("UPDRAFT_REQUIRE_PRIVILEGED_TESTS").is_none(),
                "{test} cannot run, and privileged tests are required: {why}"
            );
            eprintln!("skipped {test}: {why}");
            false
        }
    }
}

fn ip(args: &[&str]) {
    let out = Process::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair with `queues` queues each way; removed on drop.
struct Topology {
    server_ns: String,
    client_ns: String,
    server_if: String,
    client_if: String,
}

impl Topology {
    fn new(queues: u32) -> Topology {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, AtomicOrdering::Relaxed);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let t = Topology {
            server_ns: format!("updraft-s{tag}"),
            client_ns: format!("updraft-c{tag}"),
            // Interface names have at most 15 bytes.
            server_if: format!("uds{tag}"),
            client_if: format!("udc{tag}"),
        };
        let client_if = t.client_if.clone();
        ip(&["netns", "add", &t.server_ns]);
        ip(&["netns", "add", &t.client_ns]);
        let q = queues.to_string();
        ip(&[
            "link",
            "add",
            &t.server_if,
            "netns",
            &t.server_ns,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            &t.client_ns,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ]);
        for (ns, dev, addr, addr6) in [
            (&t.server_ns, &t.server_if, SERVER_IP, SERVER_IP6),
            (&t.client_ns, &client_if, CLIENT_IP, CLIENT_IP6),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            // No duplicate address detection: the address is usable at once.
            let v6 = format!("{addr6}/64");
            ip(&["-n", ns, "addr", "add", &v6, "dev", dev, "nodad"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        t
    }

    fn netns_path(ns: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(ns)
    }

    /// Runs `f` on a thread inside the client namespace and answers what it returns.
    fn in_client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = Self::netns_path(&self.client_ns);
        std::thread::spawn(move || {
            updraft_dataplane::sys::enter_netns(&path).expect("enter the client namespace");
            f()
        })
        .join()
        .expect("client thread")
    }

    /// Starts the server in the server namespace; `prefix` runs before it (`setpriv ...`).
    fn server(&self, prefix: &[&str], extra: &[&str]) -> ServerProcess {
        let placement = ["--interface", &self.server_if, "--bind", SERVER_IP];
        self.server_placed(prefix, &placement, extra)
    }

    /// [`Topology::server`] with `placement` (`--interface`, `--bind`) chosen by the test.
    fn server_placed(&self, prefix: &[&str], placement: &[&str], extra: &[&str]) -> ServerProcess {
        let www = sample_www("xdp-www");
        let metrics = format!("{SERVER_IP}:{METRICS_PORT}");
        let mut command = Process::new("ip");
        command
            .args(["netns", "exec", &self.server_ns])
            .args(prefix)
            .arg(env!("CARGO_BIN_EXE_updraft"))
            .args(["--www", www.0.to_str().unwrap(), "--metrics", &metrics])
            .args(["--port", &PORT.to_string()])
            .args(placement)
            .args(extra);
        spawn_server(&mut command, www)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth pair with it.
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Process::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn server_addr() -> SocketAddr {
    SocketAddr::new(SERVER_IP.parse().unwrap(), PORT)
}

fn metrics_addr() -> SocketAddr {
    SocketAddr::new(SERVER_IP.parse().unwrap(), METRICS_PORT)
}

/// `/stats` of the server, fetched over TCP from the client namespace.
fn stats(t: &Topology) -> serde_json::Value {
    let body = t.in_client(|| http_get(metrics_addr(), "/stats"));
    serde_json::from_str(&body).expect("/stats is JSON")
}

/// Connects to `live` and makes a call; answers the call's answer (`_result`, or `_error`
/// while no Lua application defines the method) once its transaction came back.
fn connect_and_call(seed: u64) -> String {
    connect_and_call_to(server_addr(), seed)
}

/// [`connect_and_call`] to `server` (IPv4 or IPv6).
fn connect_and_call_to(server: SocketAddr, seed: u64) -> String {
    let local = if server.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let mut c = Client::bound(seed, vec![GROUP2], local);
    let url = format!("rtmfp://{}/live", server);
    let h = c.open(server, &url).expect("a session through the rings");
    let nc = c.connect_app(h, "live");
    assert!(c.wait_messages(h, 1), "connect answered");
    let (name, _, info) = command_reply(&c.messages()[0]).expect("a command");
    assert_eq!(name, "_result", "{info:?}");
    assert_eq!(
        status_code(&info).as_deref(),
        Some("NetConnection.Connect.Success")
    );
    c.send(
        h,
        nc,
        &Command::new("add", CALL_TXN, Value::Null, vec![Value::Number(2.0)])
            .to_message(ObjectEncoding::Amf0, 0)
            .unwrap(),
    );
    assert!(c.wait_messages(h, 2), "the call answered");
    let (name, txn, _) = command_reply(&c.messages()[1]).expect("an answer");
    assert_eq!(txn, CALL_TXN);
    name
}

/// The transaction of the test's call.
const CALL_TXN: f64 = 2.0;

fn answered(name: &str) -> bool {
    matches!(name, "_result" | "_error")
}

/// A publisher and two players through the rings; answers the media messages each player got
/// of the `sent` the publisher sent.
fn publish_and_play() -> (usize, Vec<usize>) {
    let (mut publisher, ph, pflow) = publishing(server_addr(), 21);
    let mut players: Vec<(Client, u32)> = (0..2)
        .map(|i| {
            let (mut p, h, _, flow) = netstream_client(server_addr(), 30 + i);
            p.send(h, flow, &command("play", 0.0, vec![Value::str("cam")]));
            (p, h)
        })
        .collect();
    {
        let mut all: Vec<&mut Client> = players.iter_mut().map(|(c, _)| c).collect();
        assert!(
            run_until(&mut all, Duration::from_secs(5), |cs| cs
                .iter()
                .all(|c| codes(c).contains(&"NetStream.Play.Start".to_string()))),
            "players started"
        );
    }
    let stream = media(0, 1000);
    let sent = stream.len();
    // Audio and video frames, not their sequence headers.
    let frames = |c: &Client| {
        received_media(c)
            .iter()
            .filter(|(kind, _, payload)| {
                matches!(kind, 0x08 | 0x09) && payload.len() > AUDIO_HEADER.len() + 2
            })
            .count()
    };
    for (_, m) in &stream {
        publisher.send(ph, pflow, m);
        publisher.step();
    }
    let mut all: Vec<&mut Client> = players.iter_mut().map(|(c, _)| c).collect();
    all.push(&mut publisher);
    // Waits on the same count it answers: counting the sequence headers too, it once stopped
    // with two frames still on their way.
    run_until(&mut all, Duration::from_secs(5), |cs| {
        cs[..2].iter().all(|c| frames(c) >= sent)
    });
    let got = players.iter().map(|(c, _)| frames(c)).collect();
    (sent, got)
}

#[test]
fn connect_rpc_publish_and_play_go_through_the_af_xdp_rings() {
    if !can_run("connect_rpc_publish_and_play_go_through_the_af_xdp_rings") {
        return;
    }
    let t = Topology::new(1);
    // The players must get every message: media lifetimes far longer than the test, so that
    // a CI machine busy with the other tests never makes the server abandon a frame (partial
    // reliability is tested in tests/streaming.rs). The workers busy-poll their queue, with
    // the interface's NAPI deferral on, as docs/operations.md advises: the NAPI thread then
    // runs only when a worker is away, and the session must work all the same.
    let ini = TempFile::new(
        "xdp-lifetimes.ini",
        "audioLifetime = 60000\nvideoLifetime = 60000\nxdpBusyPoll = 50\n",
    );
    let deferral = format!(
        "echo 2 > /sys/class/net/{0}/napi_defer_hard_irqs && \
         echo 200000 > /sys/class/net/{0}/gro_flush_timeout",
        t.server_if
    );
    ip(&["netns", "exec", &t.server_ns, "sh", "-c", &deferral]);
    let config = ini.0.to_str().unwrap();
    let server = t.server(
        &[],
        &["--mode", "xdp", "--workers", "1", "--config", config],
    );
    assert!(
        server.logged("packet I/O: AF_XDP on"),
        "the start-up says XDP"
    );
    assert!(server.logged("busy polling 50 µs"), "and busy polling");
    assert!(!server.logged("NAPI deferral is off"));

    assert!(answered(&t.in_client(|| connect_and_call(1))));
    let (sent, got) = t.in_client(publish_and_play);
    for g in &got {
        assert!(*g >= sent, "a player got {g} of {sent} media messages");
    }

    let s = stats(&t);
    assert_eq!(s["mode"], "xdp", "{s}");
    let rx = worker_sum(&s, "rx_packets");
    let xdp_rx = worker_sum(&s, "xdp_rx");
    let xdp_tx = worker_sum(&s, "xdp_tx");
    let tx = worker_sum(&s, "tx_packets");
    eprintln!("rx {rx} (rings {xdp_rx}), tx {tx} (rings {xdp_tx})");
    assert!(
        xdp_rx > 20 && xdp_rx == rx,
        "every datagram came through the RX ring: {s}"
    );
    // Only a reply before any frame from its peer taught the next hop may use the socket:
    // in practice none (the client speaks first).
    assert!(
        xdp_tx > 20 && xdp_tx + worker_sum(&s, "xdp_tx_via_socket") >= tx,
        "{s}"
    );
    assert!(
        xdp_tx * 100 >= tx * 99,
        "the TX ring carried the replies: {s}"
    );
    assert_eq!(worker_sum(&s, "xdp_invalid_descs"), 0, "{s}");
    assert_eq!(
        s["workers"][0]["xdp_queue"], 1,
        "worker 0 serves queue 0: {s}"
    );

    // Non-RTMFP traffic is untouched: ping, and the TCP of /stats above.
    let ping = Process::new("ip")
        .args(["netns", "exec", &t.client_ns, "ping", "-c", "2", "-W", "2"])
        .arg(SERVER_IP)
        .output()
        .expect("run ping");
    assert!(
        ping.status.success(),
        "ping through the XDP interface: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // The program's counters, read by the supervisor once a second.
    std::thread::sleep(Duration::from_millis(1200));
    let s = stats(&t);
    let v = &s["xdpVerdicts"];
    assert!(v["redirect"].as_u64().unwrap() >= xdp_rx, "{v}");
    assert!(v["pass"].as_u64().unwrap() >= 4, "ping and TCP passed: {v}");
    drop(server);
}

#[test]
fn an_unprivileged_server_falls_back_to_sockets_and_serves() {
    if !can_run("an_unprivileged_server_falls_back_to_sockets_and_serves") {
        return;
    }
    let t = Topology::new(1);
    let server = t.server(
        &[
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--",
        ],
        &["--mode", "auto", "--workers", "1", "--single-process"],
    );
    assert!(
        server.logged("packet I/O: sockets (recvmmsg/sendmmsg): XDP unavailable"),
        "the start-up says why it fell back"
    );
    assert!(answered(&t.in_client(|| connect_and_call(2))));
    let s = stats(&t);
    assert_eq!(s["mode"], "socket", "{s}");
    assert!(worker_sum(&s, "rx_packets") > 0);
    assert_eq!(worker_sum(&s, "xdp_rx"), 0);
}

#[test]
fn mode_xdp_fails_clearly_instead_of_falling_back() {
    if !can_run("mode_xdp_fails_clearly_instead_of_falling_back") {
        return;
    }
    let t = Topology::new(1);
    let out = Process::new("ip")
        .args(["netns", "exec", &t.server_ns, "setpriv"])
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_updraft"))
        .args(["--mode", "xdp", "--interface", &t.server_if])
        .args(["--port", "1935", "--bind", SERVER_IP, "--single-process"])
        .stdin(Stdio::null())
        .output()
        .expect("run updraft");
    assert!(!out.status.success(), "--mode xdp without privileges fails");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--mode xdp"), "{err}");
    // Nothing was left attached: the interface has no XDP program.
    let link = Process::new("ip")
        .args(["-n", &t.server_ns, "link", "show", &t.server_if])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("xdp"), "{link}");
}

#[test]
fn two_queues_two_workers_spread_sessions_and_keep_each_on_one_worker() {
    if !can_run("two_queues_two_workers_spread_sessions_and_keep_each_on_one_worker") {
        return;
    }
    let t = Topology::new(2);
    // Busy polling on both queues' sockets, without the interface's NAPI deferral: it works,
    // and the start-up says what to set.
    let ini = TempFile::new("xdp-busy.ini", "xdpBusyPoll = 20\n");
    let config = ini.0.to_str().unwrap();
    let server = t.server(
        &[],
        &["--mode", "xdp", "--workers", "2", "--config", config],
    );
    assert!(
        server.logged("2 of 2 receive queues with a socket, busy polling 20 µs"),
        "both queues served"
    );
    assert!(server.logged("NAPI deferral is off"));
    // Sixteen clients, each its own socket (its own flow hash, so its own TX queue on the
    // client's veth, which is the RX queue on the server's).
    let results = t.in_client(|| {
        (0..16)
            .map(|i| connect_and_call(100 + i))
            .collect::<Vec<_>>()
    });
    assert!(results.iter().all(|r| answered(r)), "{results:?}");
    let s = stats(&t);
    let workers = s["workers"].as_array().unwrap();
    for (i, w) in workers.iter().enumerate() {
        assert!(
            w["sessions_installed"].as_u64().unwrap() > 0,
            "worker {i} got sessions: {s}"
        );
        assert_eq!(w["xdp_queue"], i as u64 + 1, "{s}");
        assert!(w["xdp_rx"].as_u64().unwrap() > 0, "{s}");
    }
    // Each session stays on one worker: no datagram had to be handed to another.
    assert_eq!(worker_sum(&s, "handoff_out"), 0, "{s}");
    assert_eq!(worker_sum(&s, "handoff_in"), 0, "{s}");
}

#[test]
fn a_wildcard_bind_stays_on_sockets_in_auto_and_takes_the_default_route_in_xdp_mode() {
    if !can_run("a_wildcard_bind_stays_on_sockets_in_auto_and_takes_the_default_route_in_xdp_mode")
    {
        return;
    }
    let t = Topology::new(1);
    // The server's namespace routes everything through the veth.
    ip(&[
        "-n",
        &t.server_ns,
        "route",
        "add",
        "default",
        "via",
        CLIENT_IP,
    ]);
    let wildcard = ["--bind", "0.0.0.0"];
    let common = ["--workers", "1", "--single-process"];

    // `auto` does not take over an interface nobody named.
    let server = t.server_placed(&[], &wildcard, &[&["--mode", "auto"][..], &common].concat());
    assert!(
        server.logged("packet I/O: sockets (recvmmsg/sendmmsg): bound to a wildcard address"),
        "auto on a wildcard bind says why it stays on sockets"
    );
    assert!(answered(&t.in_client(|| connect_and_call(3))));
    drop(server);

    let server = t.server_placed(&[], &wildcard, &[&["--mode", "xdp"][..], &common].concat());
    assert!(
        server.logged(&format!("packet I/O: AF_XDP on {} ", t.server_if)),
        "--mode xdp chose the default route's interface"
    );
    assert!(answered(&t.in_client(|| connect_and_call(4))));
    let s = stats(&t);
    assert_eq!(s["mode"], "xdp", "{s}");
    assert!(worker_sum(&s, "xdp_rx") > 0, "{s}");
    // Replies leave from the address the datagrams reached, not the wildcard.
    assert!(worker_sum(&s, "xdp_tx") > 0, "{s}");
}

#[test]
fn ipv6_sessions_go_through_the_rings_with_ipv6_headers_and_checksums() {
    if !can_run("ipv6_sessions_go_through_the_rings_with_ipv6_headers_and_checksums") {
        return;
    }
    let t = Topology::new(1);
    let placement = ["--interface", &t.server_if, "--bind", SERVER_IP6];
    let server = t.server_placed(&[], &placement, &["--mode", "xdp", "--workers", "1"]);
    assert!(server.logged("packet I/O: AF_XDP on"));
    let to = SocketAddr::new(SERVER_IP6.parse().unwrap(), PORT);
    // The client's kernel drops a datagram whose UDP checksum is wrong (mandatory in IPv6):
    // answers prove the headers the worker wrote.
    let results = t.in_client(move || {
        (0..3)
            .map(|i| connect_and_call_to(to, 40 + i))
            .collect::<Vec<_>>()
    });
    assert!(results.iter().all(|r| answered(r)), "{results:?}");
    let s = stats(&t);
    assert_eq!(s["mode"], "xdp", "{s}");
    let rx = worker_sum(&s, "rx_packets");
    assert!(rx > 0 && worker_sum(&s, "xdp_rx") == rx, "{s}");
    assert!(worker_sum(&s, "xdp_tx") > 0, "{s}");
    assert_eq!(worker_sum(&s, "xdp_invalid_descs"), 0, "{s}");
}

#[test]
fn the_loadgen_runs_over_af_xdp_too() {
    if !can_run("the_loadgen_runs_over_af_xdp_too") {
        return;
    }
    let t = Topology::new(1);
    let _server = t.server(&[], &["--mode", "xdp", "--workers", "1"]);
    let client_if = t.client_if.clone();
    let report = t.in_client(move || {
        updraft_loadgen::scenario::rpc(&updraft_loadgen::scenario::RpcArgs {
            server: server_addr(),
            sessions: 4,
            duration: Duration::from_secs(2),
            method: "add".to_string(),
            app: "live".to_string(),
            groups: vec![GROUP2],
            xdp: Some(client_if),
        })
        .expect("rpc over AF_XDP")
    });
    eprintln!("{}", report.table());
    assert_eq!(report.sessions_ok, 4);
    assert!(
        report.delivered > 100,
        "calls answered: {}",
        report.delivered
    );
    // Only the handshake's first datagrams leave by the kernel socket, before a frame from
    // the server has taught the loadgen its next hop; everything else uses the rings.
    assert!(
        report.ring_in > 0 && report.ring_in * 100 >= report.packets_in * 99,
        "{}",
        report.table()
    );
    assert!(
        report.ring_out * 100 >= report.packets_out * 95,
        "{}",
        report.table()
    );
    // The server saw the same traffic in its own rings.
    let s = stats(&t);
    assert!(worker_sum(&s, "xdp_rx") >= report.ring_out, "{s}");
}

#[test]
fn the_blacklist_is_dropped_in_the_kernel_by_the_xdp_program() {
    if !can_run("the_blacklist_is_dropped_in_the_kernel_by_the_xdp_program") {
        return;
    }
    let t = Topology::new(1);
    let ini = TempFile::new("blacklist.ini", &format!("blacklist = {CLIENT_IP}/32\n"));
    let config = ini.0.to_str().unwrap();
    let server = t.server(
        &[],
        &["--mode", "xdp", "--workers", "1", "--config", config],
    );
    assert!(server.logged("packet I/O: AF_XDP on"));
    let opened = t.in_client(|| {
        let mut c = Client::with_groups(6, vec![GROUP2]);
        c.open(server_addr(), "rtmfp://10.201.0.1/live").is_some()
    });
    assert!(!opened, "a blacklisted client gets no session");
    // The program's counters, read by the supervisor once a second; /stats is TCP, which
    // the program passes whatever the source.
    std::thread::sleep(Duration::from_millis(1200));
    let s = stats(&t);
    assert!(s["xdpVerdicts"]["drop_denied"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(
        worker_sum(&s, "rx_packets"),
        0,
        "nothing reached the worker: {s}"
    );
}
