//! Live-streaming helpers shared by the streaming tests: a synthetic stream, NetStream
//! clients, publishers, and what subscribers received.

use super::*;
use rtmfp::flash::command::DataMessage;

pub const GROUP2: DhGroup = DhGroup::Modp1024;
pub const STREAM: u64 = 1;
/// Frames per second of the synthetic video, and a key frame every this many frames.
pub const FPS: u32 = 30;
pub const GOP: u32 = 30;
/// Milliseconds between audio frames (AAC at 44.1 kHz: 1024 samples).
pub const AUDIO_MS: u32 = 23;

pub fn tc(kind: u8, ts: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&ts.to_be_bytes());
    m.extend_from_slice(payload);
    m
}

pub fn command(name: &str, txn: f64, args: Vec<Value<'_>>) -> Vec<u8> {
    Command::new(name, txn, Value::Null, args)
        .to_message(ObjectEncoding::Amf0, 0)
        .unwrap()
}

pub fn metadata() -> Vec<u8> {
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

pub const AUDIO_HEADER: [u8; 4] = [0xAF, 0x00, 0x12, 0x10];
pub const VIDEO_HEADER: [u8; 6] = [0x17, 0x00, 0, 0, 0, 0x01];

/// The synthetic stream from `from_ms` for `duration_ms`: (timestamp, message) in send order.
/// Each frame's payload carries its timestamp, so receivers can check what they got.
pub fn media(from_ms: u32, duration_ms: u32) -> Vec<(u32, Vec<u8>)> {
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
pub fn netstream_client(addr: SocketAddr, seed: u64) -> (Client, u32, FlowId, FlowId) {
    let mut c = Client::with_groups(seed, vec![GROUP2]);
    let h = c.open(addr, "rtmfp://127.0.0.1/live").expect("open");
    let nc = c.connect_app(h, "live");
    assert!(c.wait_messages(h, 1), "connected");
    let flow = c.open_stream_flow(h, STREAM);
    (c, h, nc, flow)
}

/// The status codes `c` received so far.
pub fn codes(c: &Client) -> Vec<String> {
    c.messages()
        .iter()
        .filter_map(|m| command_reply(m))
        .filter_map(|(_, _, v)| status_code(&v))
        .collect()
}

/// The media (audio, video, metadata) `c` received so far: (type, timestamp, payload).
pub fn received_media(c: &Client) -> Vec<(u8, u32, Vec<u8>)> {
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

pub fn step_all(clients: &mut [&mut Client]) {
    for c in clients.iter_mut() {
        c.step();
    }
}

/// Steps every client until `done` or `limit`.
pub fn run_until(
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

pub fn user_controls(c: &Client) -> Vec<(u16, u32)> {
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
pub fn publishing(addr: SocketAddr, seed: u64) -> (Client, u32, FlowId) {
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

/// A publisher that has published `cam` and two subscribers playing it (seeds `seed`,
/// `seed + 1`, `seed + 2`): (publisher, its session, its flow, [(subscriber, its session)]).
pub fn publisher_and_two_players(
    addr: SocketAddr,
    seed: u64,
) -> (Client, u32, FlowId, [(Client, u32); 2]) {
    let (mut publisher, ph, pflow) = publishing(addr, seed);
    let [(mut a, ah, _, aflow), (mut b, bh, _, bflow)] =
        [1, 2].map(|i| netstream_client(addr, seed + i));
    a.send(ah, aflow, &command("play", 0.0, vec![Value::str("cam")]));
    b.send(bh, bflow, &command("play", 0.0, vec![Value::str("cam")]));
    let playing = |c: &Client| codes(c).contains(&"NetStream.Play.Start".to_string());
    assert!(run_until(
        &mut [&mut publisher, &mut a, &mut b],
        Duration::from_secs(10),
        |c| playing(c[1]) && playing(c[2])
    ));
    (publisher, ph, pflow, [(a, ah), (b, bh)])
}

/// The report of the stream published on this server, from its `/stats`.
pub fn published_stream(stats: &serde_json::Value) -> &serde_json::Value {
    stats["streams"]
        .as_array()
        .and_then(|streams| streams.iter().find(|s| s["published"] == true))
        .unwrap_or_else(|| panic!("no published stream: {stats}"))
}
