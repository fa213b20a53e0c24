//! Live streaming over real UDP on loopback: a publisher and many subscribers spread over two
//! workers, a late joiner, and a publisher that leaves and comes back. Bounded in count and
//! time.

mod support;

use support::*;

use rtmfp::flash::command::DataMessage;

const GROUP2: DhGroup = DhGroup::Modp1024;
const STREAM: u64 = 1;
/// Frames per second of the synthetic video, and a key frame every this many frames.
const FPS: u32 = 30;
const GOP: u32 = 30;
/// Milliseconds between audio frames (AAC at 44.1 kHz: 1024 samples).
const AUDIO_MS: u32 = 23;

fn tc(kind: u8, ts: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&ts.to_be_bytes());
    m.extend_from_slice(payload);
    m
}

fn command(name: &str, txn: f64, args: Vec<Value<'_>>) -> Vec<u8> {
    Command::new(name, txn, Value::Null, args)
        .to_message(ObjectEncoding::Amf0, 0)
        .unwrap()
}

fn metadata() -> Vec<u8> {
    DataMessage {
        handler: "@setDataFrame".into(),
        values: vec![
            Value::str("onMetaData"),
            Value::Object(Object::anonymous(vec![
                ("width".into(), Value::Number(640.0)),
                ("framerate".into(), Value::Number(f64::from(FPS))),
            ])),
        ],
    }
    .to_message(ObjectEncoding::Amf0, 0)
    .unwrap()
}

const AUDIO_HEADER: [u8; 4] = [0xAF, 0x00, 0x12, 0x10];
const VIDEO_HEADER: [u8; 6] = [0x17, 0x00, 0, 0, 0, 0x01];

/// The synthetic stream from `from_ms` for `duration_ms`: (timestamp, message) in send order.
/// Each frame's payload carries its timestamp, so receivers can check what they got.
fn media(from_ms: u32, duration_ms: u32) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    let frame_ms = 1000 / FPS;
    let mut v = from_ms / frame_ms;
    let mut a = from_ms.div_ceil(AUDIO_MS);
    loop {
        let (tv, ta) = (v * frame_ms, a * AUDIO_MS);
        if tv.min(ta) >= from_ms + duration_ms {
            break;
        }
        if tv <= ta {
            let kind = if v.is_multiple_of(GOP) { 0x17 } else { 0x27 };
            let mut p = vec![kind, 0x01, 0, 0, 0];
            p.extend_from_slice(&tv.to_be_bytes());
            p.extend_from_slice(&[0xEE; 300]);
            out.push((tv, tc(0x09, tv, &p)));
            v += 1;
        } else {
            let mut p = vec![0xAF, 0x01];
            p.extend_from_slice(&ta.to_be_bytes());
            p.extend_from_slice(&[0xAA; 60]);
            out.push((ta, tc(0x08, ta, &p)));
            a += 1;
        }
    }
    out
}

/// A connected client with a NetStream flow; answers (client, session, NetConnection flow,
/// stream flow).
fn netstream_client(addr: SocketAddr, seed: u64) -> (Client, u32, FlowId, FlowId) {
    let mut c = Client::with_groups(seed, vec![GROUP2]);
    let h = c.open(addr, "rtmfp://127.0.0.1/live").expect("open");
    let nc = c.connect_app(h, "live");
    assert!(c.wait_messages(h, 1), "connected");
    let meta = FlowMetadata::Tc {
        stream_id: STREAM,
        receive_intent: ReceiveIntent::Sequence,
    }
    .to_vec();
    let flow = c
        .endpoint
        .session_mut(h)
        .unwrap()
        .open_flow(&meta, None)
        .unwrap();
    (c, h, nc, flow)
}

/// The status codes `c` received so far.
fn codes(c: &Client) -> Vec<String> {
    c.messages()
        .iter()
        .filter_map(|m| command_reply(m))
        .filter_map(|(_, _, v)| status_code(&v))
        .collect()
}

/// The media (audio, video, metadata) `c` received so far: (type, timestamp, payload).
fn received_media(c: &Client) -> Vec<(u8, u32, Vec<u8>)> {
    c.messages()
        .iter()
        .filter_map(|m| {
            let t = TcMessage::parse(m).ok()?;
            let is_meta = matches!(t.kind.0, 0x12 | 0x0F)
                && DataMessage::parse(&t).is_ok_and(|d| d.handler == "onMetaData");
            (matches!(t.kind.0, 0x08 | 0x09) || is_meta)
                .then(|| (t.kind.0, t.timestamp, t.payload.to_vec()))
        })
        .collect()
}

fn step_all(clients: &mut [&mut Client]) {
    for c in clients.iter_mut() {
        c.step();
    }
}

/// Steps every client until `done` or `limit`.
fn run_until(
    clients: &mut [&mut Client],
    limit: Duration,
    mut done: impl FnMut(&[&mut Client]) -> bool,
) -> bool {
    let deadline = WallInstant::now() + limit;
    loop {
        step_all(clients);
        if done(clients) {
            return true;
        }
        if WallInstant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_publisher_feeds_fifty_subscribers_on_two_workers_in_order() {
    const SUBSCRIBERS: usize = 50;
    let metrics = free_tcp_addr();
    let server = start_server_with(&["--workers", "2", "--metrics", &metrics.to_string()]);
    let (mut publisher, ph, _, pflow) = netstream_client(server.addr, 1);
    publisher.send(
        ph,
        pflow,
        &command("publish", 0.0, vec![Value::str("cam"), Value::str("live")]),
    );
    assert!(run_until(
        &mut [&mut publisher],
        Duration::from_secs(5),
        |c| codes(c[0]).contains(&"NetStream.Publish.Start".to_string())
    ));
    let mut subs: Vec<(Client, u32, FlowId, FlowId)> = (0..SUBSCRIBERS)
        .map(|i| netstream_client(server.addr, 100 + i as u64))
        .collect();
    for (c, h, _, flow) in subs.iter_mut() {
        c.send(*h, *flow, &command("play", 0.0, vec![Value::str("cam")]));
    }
    let started = |c: &Client| codes(c).contains(&"NetStream.Play.Start".to_string());
    let deadline = WallInstant::now() + Duration::from_secs(20);
    while WallInstant::now() < deadline && !subs.iter().all(|s| started(&s.0)) {
        subs.iter_mut().for_each(|s| s.0.step());
        publisher.step();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(subs.iter().all(|s| started(&s.0)), "every play started");
    let stats: serde_json::Value = serde_json::from_str(&http_get(metrics, "/stats")).unwrap();
    assert_eq!(stats["publications"], 1, "{stats}");
    assert_eq!(stats["subscribers"], SUBSCRIBERS, "{stats}");

    // The stream: metadata, sequence headers, then 2 s of audio and video, sent at about 4×
    // real time.
    let mut sent = vec![
        metadata(),
        tc(0x08, 0, &AUDIO_HEADER),
        tc(0x09, 0, &VIDEO_HEADER),
    ];
    sent.extend(media(0, 2000).into_iter().map(|m| m.1));
    for chunk in sent.chunks(8) {
        for m in chunk {
            publisher.send(ph, pflow, m);
        }
        publisher.step();
        subs.iter_mut().for_each(|s| s.0.step());
        std::thread::sleep(Duration::from_millis(2));
    }
    let expected = sent.len();
    let deadline = WallInstant::now() + Duration::from_secs(30);
    while WallInstant::now() < deadline
        && !subs.iter().all(|s| received_media(&s.0).len() >= expected)
    {
        publisher.step();
        subs.iter_mut().for_each(|s| s.0.step());
        std::thread::sleep(Duration::from_millis(1));
    }
    // Both workers served subscribers; media crossed between them.
    std::thread::sleep(Duration::from_millis(1100)); // a stream report period
    let stats: serde_json::Value = serde_json::from_str(&http_get(metrics, "/stats")).unwrap();
    let streams = stats["streams"].as_array().unwrap();
    let published = streams
        .iter()
        .find(|s| s["published"] == true)
        .expect("{stats}");
    assert_eq!(published["name"], "live/cam");
    assert!(
        published["messages"].as_u64() >= Some(expected as u64),
        "{stats}"
    );
    let reported: usize = streams
        .iter()
        .map(|s| s["subscribers"].as_array().unwrap().len())
        .sum();
    assert_eq!(reported, SUBSCRIBERS, "{stats}");
    assert!(
        streams
            .iter()
            .flat_map(|s| s["subscribers"].as_array().unwrap())
            .all(|s| s["delivered"].as_u64() >= Some(expected as u64) && s["droppedFrames"] == 0),
        "{stats}"
    );
    // Every subscriber has its QoS (Cumulus's lostRate, byteRate, congestionRate, latency,
    // droppedFrames): nothing dropped for congestion on this clean path.
    assert!(
        streams
            .iter()
            .flat_map(|s| s["subscribers"].as_array().unwrap())
            .all(|s| s["qos"]["congestionRate"] == 0.0
                && s["qos"]["droppedFrames"] == 0
                && s["qos"]["latency"].as_u64().is_some()
                && s["qos"]["lostRate"]
                    .as_f64()
                    .is_some_and(|r| (0.0..=1.0).contains(&r))),
        "{stats}"
    );
    assert_eq!(published["qos"]["lostRate"], 0.0, "{stats}");
    let workers = stats["workers"].as_array().unwrap();
    assert!(
        workers.iter().all(|w| w["subscribers"].as_u64() > Some(0)),
        "{stats}"
    );
    assert!(
        workers.iter().any(|w| w["media_in"].as_u64() > Some(0)),
        "{stats}"
    );
    for (i, (c, ..)) in subs.iter().enumerate() {
        let got = received_media(c);
        assert_eq!(got.len(), expected, "subscriber {i} got every message");
        // Metadata (as onMetaData), then the headers at 0, then every frame in order with its
        // own timestamp (the stream starts at 0, so rebasing keeps them).
        assert_eq!(got[0].0, 0x12);
        assert_eq!(
            (got[1].0, got[1].1, &got[1].2[..]),
            (0x08, 0, &AUDIO_HEADER[..])
        );
        assert_eq!(
            (got[2].0, got[2].1, &got[2].2[..]),
            (0x09, 0, &VIDEO_HEADER[..])
        );
        for (k, m) in got[3..].iter().enumerate() {
            let original = TcMessage::parse(&sent[3 + k]).unwrap();
            assert_eq!(
                (m.0, m.1),
                (original.kind.0, original.timestamp),
                "subscriber {i} message {k}"
            );
            assert_eq!(&m.2[..], original.payload);
        }
    }

    // A large key frame (7 datagrams' worth): each subscriber's datagrams for it leave
    // together, by UDP GSO, not one send each.
    let before: u64 = workers
        .iter()
        .map(|w| w["tx_gso_datagrams"].as_u64().unwrap())
        .sum();
    let ts = 2000;
    let mut frame = vec![0x17, 0x01, 0, 0, 0];
    frame.resize(8000, 0xAB);
    publisher.send(ph, pflow, &tc(0x09, ts, &frame));
    let deadline = WallInstant::now() + Duration::from_secs(20);
    while WallInstant::now() < deadline
        && !subs.iter().all(|s| received_media(&s.0).len() > expected)
    {
        publisher.step();
        subs.iter_mut().for_each(|s| s.0.step());
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        subs.iter().all(|s| received_media(&s.0)
            .last()
            .is_some_and(|m| m.2.len() == frame.len())),
        "every subscriber got the large frame"
    );
    std::thread::sleep(Duration::from_millis(1100)); // counters are published every turn
    let stats: serde_json::Value = serde_json::from_str(&http_get(metrics, "/stats")).unwrap();
    let after: u64 = stats["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["tx_gso_datagrams"].as_u64().unwrap())
        .sum();
    // 50 subscribers × 7 datagrams; a congestion window that splits a frame in two still
    // leaves most of it in GSO sends.
    assert!(
        after - before >= (SUBSCRIBERS * 4) as u64,
        "GSO carried {} datagrams: {stats}",
        after - before
    );
}

#[test]
fn a_late_joiner_starts_with_headers_and_a_keyframe_and_the_publisher_can_come_back() {
    let server = start_server_with(&["--workers", "2"]);
    let (mut publisher, ph, _, pflow) = netstream_client(server.addr, 7);
    publisher.send(ph, pflow, &command("publish", 0.0, vec![Value::str("cam")]));
    assert!(run_until(
        &mut [&mut publisher],
        Duration::from_secs(5),
        |c| codes(c[0]).contains(&"NetStream.Publish.Start".to_string())
    ));
    for m in [
        metadata(),
        tc(0x08, 0, &AUDIO_HEADER),
        tc(0x09, 0, &VIDEO_HEADER),
    ] {
        publisher.send(ph, pflow, &m);
    }
    // 1.5 s of stream: the last key frame is frame 30.
    for (_, m) in media(0, 1500) {
        publisher.send(ph, pflow, &m);
        publisher.step();
    }
    assert!(run_until(
        &mut [&mut publisher],
        Duration::from_secs(5),
        |c| {
            c[0].endpoint
                .session(ph)
                .and_then(|s| s.flow_backlog(pflow))
                == Some(0)
        }
    ));
    // Two late joiners (whichever worker each lands on).
    let mut late: Vec<(Client, u32, FlowId, FlowId)> = (0..2)
        .map(|i| netstream_client(server.addr, 20 + i))
        .collect();
    for (c, h, _, flow) in late.iter_mut() {
        c.send(*h, *flow, &command("play", 0.0, vec![Value::str("cam")]));
    }
    let deadline = WallInstant::now() + Duration::from_secs(10);
    while WallInstant::now() < deadline && !late.iter().all(|l| received_media(&l.0).len() >= 4) {
        late.iter_mut().for_each(|l| l.0.step());
        publisher.step();
        std::thread::sleep(Duration::from_millis(1));
    }
    for (c, ..) in &late {
        let got = received_media(c);
        assert!(got.len() >= 4, "{got:?}");
        assert_eq!(got[0].0, 0x12, "metadata first");
        assert_eq!(&got[1].2[..], &AUDIO_HEADER[..]);
        assert_eq!(&got[2].2[..], &VIDEO_HEADER[..]);
        assert_eq!(
            (got[3].0, got[3].2[0], got[3].1),
            (0x09, 0x17, 0),
            "a key frame, at 0"
        );
        // It is the last key frame sent, frame 30 (its payload says when it was taken).
        assert_eq!(&got[3].2[5..9], &(GOP * (1000 / FPS)).to_be_bytes());
    }
    // The publisher leaves: the audience is told; it comes back: told again, and fed again.
    publisher.send(ph, pflow, &command("closeStream", 0.0, vec![]));
    let notified = |c: &Client, code: &str| codes(c).iter().any(|k| k == code);
    let deadline = WallInstant::now() + Duration::from_secs(10);
    while WallInstant::now() < deadline
        && !late
            .iter()
            .all(|l| notified(&l.0, "NetStream.Play.UnpublishNotify"))
    {
        late.iter_mut().for_each(|l| l.0.step());
        publisher.step();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(late
        .iter()
        .all(|l| notified(&l.0, "NetStream.Play.UnpublishNotify")));
    publisher.send(ph, pflow, &command("publish", 0.0, vec![Value::str("cam")]));
    let before: Vec<usize> = late.iter().map(|l| received_media(&l.0).len()).collect();
    let deadline = WallInstant::now() + Duration::from_secs(10);
    while WallInstant::now() < deadline
        && !late
            .iter()
            .all(|l| notified(&l.0, "NetStream.Play.PublishNotify"))
    {
        late.iter_mut().for_each(|l| l.0.step());
        publisher.step();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(late
        .iter()
        .all(|l| notified(&l.0, "NetStream.Play.PublishNotify")));
    for m in [tc(0x09, 0, &VIDEO_HEADER)]
        .into_iter()
        .chain(media(0, 200).into_iter().map(|m| m.1))
    {
        publisher.send(ph, pflow, &m);
        publisher.step();
    }
    let deadline = WallInstant::now() + Duration::from_secs(10);
    while WallInstant::now() < deadline
        && !late
            .iter()
            .zip(&before)
            .all(|(l, b)| received_media(&l.0).len() > b + 5)
    {
        late.iter_mut().for_each(|l| l.0.step());
        publisher.step();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        late.iter()
            .zip(&before)
            .all(|(l, b)| received_media(&l.0).len() > b + 5),
        "fed again"
    );
}

/// The user-control events `c` received: (event, first u32 of its data).
fn user_controls(c: &Client) -> Vec<(u16, u32)> {
    c.messages()
        .iter()
        .filter_map(|m| {
            let t = TcMessage::parse(m).ok()?;
            (t.kind.0 == 0x04 && t.payload.len() >= 6).then(|| {
                let p = t.payload;
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                )
            })
        })
        .collect()
}

/// A publisher that has published `cam` with headers; answers it with its session and flow.
fn publishing(addr: SocketAddr, seed: u64) -> (Client, u32, FlowId) {
    let (mut publisher, ph, _, pflow) = netstream_client(addr, seed);
    publisher.send(ph, pflow, &command("publish", 0.0, vec![Value::str("cam")]));
    assert!(run_until(
        &mut [&mut publisher],
        Duration::from_secs(5),
        |c| { codes(c[0]).contains(&"NetStream.Publish.Start".to_string()) }
    ));
    for m in [
        metadata(),
        tc(0x08, 0, &AUDIO_HEADER),
        tc(0x09, 0, &VIDEO_HEADER),
    ] {
        publisher.send(ph, pflow, &m);
    }
    (publisher, ph, pflow)
}

#[test]
fn a_lossy_subscriber_still_plays_and_the_others_are_unaffected() {
    let metrics = free_tcp_addr();
    let server = start_server_with(&["--workers", "2", "--metrics", &metrics.to_string()]);
    let (mut publisher, ph, pflow) = publishing(server.addr, 61);
    let mut subs: Vec<(Client, u32, FlowId, FlowId)> = (0..3)
        .map(|i| netstream_client(server.addr, 70 + i))
        .collect();
    for (c, h, _, flow) in subs.iter_mut() {
        c.send(*h, *flow, &command("play", 0.0, vec![Value::str("cam")]));
    }
    // Play.Start comes from the control plane and flow synchronisation (user control event
    // 34) from the worker, so either may arrive first: wait for both.
    let started = |c: &Client| {
        codes(c).contains(&"NetStream.Play.Start".to_string())
            && user_controls(c).iter().any(|u| u.0 == 34)
    };
    let deadline = WallInstant::now() + Duration::from_secs(10);
    while WallInstant::now() < deadline && !subs.iter().all(|s| started(&s.0)) {
        subs.iter_mut().for_each(|s| s.0.step());
        publisher.step();
    }
    assert!(
        subs.iter().all(|s| started(&s.0)),
        "each play started, opened by flow synchronisation"
    );
    subs[0].0.set_loss(20, 9);
    let stream = media(0, 3000);
    let pace = Duration::from_micros(2500);
    for (_, m) in &stream {
        publisher.send(ph, pflow, m);
        publisher.step();
        subs.iter_mut().for_each(|s| s.0.step());
        std::thread::sleep(pace);
    }
    // Frames, not headers: AAC raw and AVC NALU packets (second payload byte 1).
    let frames = |c: &Client| {
        received_media(c)
            .iter()
            .filter(|m| m.0 != 0x12 && m.2.get(1) == Some(&1))
            .count()
    };
    let deadline = WallInstant::now() + Duration::from_secs(20);
    while WallInstant::now() < deadline
        && !(subs[1..].iter().all(|s| frames(&s.0) >= stream.len())
            && frames(&subs[0].0) * 10 >= stream.len() * 8)
    {
        publisher.step();
        subs.iter_mut().for_each(|s| s.0.step());
        std::thread::sleep(Duration::from_millis(1));
    }
    // The clean subscribers get everything; the lossy one at least 80%, in order.
    for (c, ..) in &subs[1..] {
        assert_eq!(frames(c), stream.len(), "every frame");
    }
    let lossy = received_media(&subs[0].0);
    assert!(
        frames(&subs[0].0) * 10 >= stream.len() * 8,
        "{} of {}",
        frames(&subs[0].0),
        stream.len()
    );
    for kind in [0x08u8, 0x09] {
        let ts: Vec<u32> = lossy.iter().filter(|m| m.0 == kind).map(|m| m.1).collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "in order: {ts:?}");
    }
    // QoS: the lossy subscriber's losses show in its counters, and only in its own.
    let lossy_id = subs[0]
        .0
        .endpoint
        .session(subs[0].1)
        .map(|s| u64::from(s.far_session_id()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // a stream report period
    let stats: serde_json::Value = serde_json::from_str(&http_get(metrics, "/stats")).unwrap();
    let reports: Vec<&serde_json::Value> = stats["streams"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["subscribers"].as_array().unwrap())
        .collect();
    assert_eq!(reports.len(), 3, "{stats}");
    for r in reports {
        let lost = r["fragmentsLost"].as_u64().unwrap();
        let sent = r["fragmentsSent"].as_u64().unwrap();
        assert!(sent > 0, "{stats}");
        // 20% of datagrams dropped shows as lost transmissions; a clean path may still see a
        // rare retransmission timeout (the harness steps clients one after the other).
        if r["session"].as_u64() == Some(lossy_id) {
            assert!(
                lost * 20 >= sent,
                "the lossy subscriber lost fragments: {stats}"
            );
        } else {
            assert!(lost * 50 < sent, "{stats}");
        }
        let qos = &r["qos"];
        for rate in ["lostRate", "congestionRate"] {
            let v = qos[rate].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{rate} {v}: {stats}");
        }
        assert!(qos["latency"].as_u64().is_some(), "{stats}");
    }
    let publication = stats["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["published"] == true)
        .expect("{stats}");
    assert!(
        publication["fragmentsReceived"].as_u64() > Some(0),
        "{stats}"
    );
    assert_eq!(publication["fragmentsLost"], 0, "{stats}");
    assert_eq!(publication["qos"]["lostRate"], 0.0, "{stats}");
}

#[test]
fn muted_video_and_unbuffered_play_start_at_the_right_frames() {
    let server = start_server_with(&["--workers", "1"]);
    let (mut publisher, ph, pflow) = publishing(server.addr, 81);
    for (_, m) in media(0, 1500) {
        publisher.send(ph, pflow, &m);
        publisher.step();
    }
    assert!(run_until(
        &mut [&mut publisher],
        Duration::from_secs(5),
        |c| {
            c[0].endpoint
                .session(ph)
                .and_then(|s| s.flow_backlog(pflow))
                == Some(0)
        }
    ));
    // An unbuffered player (Cumulus's play(name, -3000)) and one that mutes video.
    let (mut unbuffered, uh, _, uflow) = netstream_client(server.addr, 82);
    unbuffered.send(
        uh,
        uflow,
        &command("play", 0.0, vec![Value::str("cam"), Value::Number(-3000.0)]),
    );
    let (mut audio_only, ah, _, aflow) = netstream_client(server.addr, 83);
    audio_only.send(ah, aflow, &command("play", 0.0, vec![Value::str("cam")]));
    audio_only.send(
        ah,
        aflow,
        &command("receiveVideo", 0.0, vec![Value::Boolean(false)]),
    );
    let started = |c: &Client| codes(c).contains(&"NetStream.Play.Start".to_string());
    assert!(run_until(
        &mut [&mut unbuffered, &mut audio_only, &mut publisher],
        Duration::from_secs(5),
        |c| { started(c[0]) && started(c[1]) }
    ));
    // Let receiveVideo(false) take effect, then 1 more second of stream (key frame at 1980 ms).
    run_until(
        &mut [&mut unbuffered, &mut audio_only, &mut publisher],
        Duration::from_millis(300),
        |_| false,
    );
    for (_, m) in media(1500, 1000) {
        publisher.send(ph, pflow, &m);
        publisher.step();
        unbuffered.step();
        audio_only.step();
    }
    assert!(run_until(
        &mut [&mut unbuffered, &mut audio_only, &mut publisher],
        Duration::from_secs(10),
        |c| {
            received_media(c[0]).iter().filter(|m| m.0 == 0x09).count() >= 5
                && received_media(c[1]).iter().filter(|m| m.0 == 0x08).count() >= 20
        }
    ));
    // Unbuffered: headers, then no cached frame: its first frame is the next key frame.
    let u = received_media(&unbuffered);
    let first_frame = u.iter().find(|m| m.0 == 0x09 && m.2[1] == 1).unwrap();
    assert_eq!(first_frame.2[0], 0x17);
    assert_eq!(
        &first_frame.2[5..9],
        &(2 * GOP * (1000 / FPS)).to_be_bytes()
    );
    // Muted video: after the replay of the cached group of pictures, audio only.
    let a = received_media(&audio_only);
    let last_video = a.iter().rposition(|m| m.0 == 0x09 && m.2[1] == 1);
    let frames_after: Vec<u32> = a[last_video.map_or(0, |i| i + 1)..]
        .iter()
        .filter(|m| m.0 == 0x09)
        .map(|m| m.1)
        .collect();
    assert!(
        frames_after.is_empty(),
        "no video after receiveVideo(false)"
    );
    assert!(a.iter().filter(|m| m.0 == 0x08).count() >= 20);
    assert!(
        a.iter().any(|m| m.0 == 0x09 && m.2[1] == 1),
        "the cached GOP came before the mute"
    );
}

#[test]
fn streams_survive_a_control_plane_restart() {
    let server = start_server_with(&["--workers", "2"]);
    let control = server.control_pid.expect("a control process");
    let (mut publisher, ph, pflow) = publishing(server.addr, 91);
    let (mut first, fh, _, fflow) = netstream_client(server.addr, 92);
    first.send(fh, fflow, &command("play", 0.0, vec![Value::str("cam")]));
    for (_, m) in media(0, 500) {
        publisher.send(ph, pflow, &m);
        publisher.step();
        first.step();
    }
    assert!(run_until(
        &mut [&mut first, &mut publisher],
        Duration::from_secs(5),
        |c| { received_media(c[0]).len() > 10 }
    ));
    ServerProcess::signal(control, "KILL");
    let deadline = WallInstant::now() + Duration::from_secs(5);
    while WallInstant::now() < deadline && !server.logged("control process restarted") {
        publisher.step();
        first.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(server.logged("control process restarted"));
    // Media keeps flowing to the first player across the restart.
    let before = received_media(&first).len();
    for (_, m) in media(500, 500) {
        publisher.send(ph, pflow, &m);
        publisher.step();
        first.step();
    }
    assert!(run_until(
        &mut [&mut first, &mut publisher],
        Duration::from_secs(5),
        |c| { received_media(c[0]).len() > before + 10 }
    ));
    // The new control plane knows the stream: a new player is served at once from the cache,
    let (mut second, sh, _, sflow) = netstream_client(server.addr, 93);
    second.send(sh, sflow, &command("play", 0.0, vec![Value::str("cam")]));
    assert!(run_until(
        &mut [&mut second, &mut first, &mut publisher],
        Duration::from_secs(5),
        |c| {
            received_media(c[0])
                .iter()
                .any(|m| m.0 == 0x09 && m.2[0] == 0x17 && m.2[1] == 1)
        }
    ));
    // a second publisher of the name is refused, and the publisher's leaving is announced.
    let (mut rival, rh, _, rflow) = netstream_client(server.addr, 94);
    rival.send(rh, rflow, &command("publish", 0.0, vec![Value::str("cam")]));
    assert!(run_until(&mut [&mut rival], Duration::from_secs(5), |c| {
        codes(c[0]).contains(&"NetStream.Publish.BadName".to_string())
    }));
    publisher.send(ph, pflow, &command("closeStream", 0.0, vec![]));
    let told = |c: &Client| codes(c).contains(&"NetStream.Play.UnpublishNotify".to_string());
    assert!(run_until(
        &mut [&mut first, &mut second, &mut publisher],
        Duration::from_secs(5),
        |c| { told(c[0]) && told(c[1]) }
    ));
}

#[test]
fn media_on_other_flows_of_the_publishing_netstream_is_published() {
    // rtmfp-cpp's tcpublish sends each track on a flow of its own, all with the NetStream's
    // metadata; the publish command came on yet another.
    let server = start_server_with(&["--workers", "1"]);
    let (mut publisher, ph, pflow) = publishing(server.addr, 101);
    let meta = FlowMetadata::Tc {
        stream_id: STREAM,
        receive_intent: ReceiveIntent::Sequence,
    }
    .to_vec();
    let video_flow = publisher
        .endpoint
        .session_mut(ph)
        .unwrap()
        .open_flow(&meta, None)
        .unwrap();
    assert_ne!(video_flow, pflow);
    let (mut player, h, _, flow) = netstream_client(server.addr, 102);
    player.send(h, flow, &command("play", 0.0, vec![Value::str("cam")]));
    assert!(run_until(
        &mut [&mut player, &mut publisher],
        Duration::from_secs(5),
        |c| { codes(c[0]).contains(&"NetStream.Play.Start".to_string()) }
    ));
    for (_, m) in media(0, 300).into_iter().filter(|m| m.1[0] == 0x09) {
        publisher.send(ph, video_flow, &m);
        publisher.step();
    }
    assert!(run_until(
        &mut [&mut player, &mut publisher],
        Duration::from_secs(5),
        |c| {
            received_media(c[0])
                .iter()
                .filter(|m| m.0 == 0x09 && m.2[1] == 1)
                .count()
                >= 9
        }
    ));
}
