//! A message queued as a shared [`Payload`] (inline head, range of a shared body) goes on the
//! wire exactly as the same bytes sent with [`Session::send`]: two sessions with the same keys
//! and settings, one given every message as a copy and the other given most of them as
//! payloads, are driven through the same random history of sends, transmissions, acks (with
//! NAK losses and zero windows), timeouts, expiries and a FIN, and must write the same datagrams
//! byte for byte and report the same backlog after every step.

mod common;

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rtmfp::crypto::{PacketEncoder, PacketMode};
use rtmfp::flow::payload::{Payload, MAX_PAYLOAD_HEAD};
use rtmfp::ids::FlowId;
use rtmfp::session::flows::SendOptions;
use rtmfp::session::{Role, Session, SessionConfig};
use rtmfp::time::Instant;
use rtmfp::wire::{Mode, PacketHeader, RangeAck, Writer};

/// Both directions' key.
const KEY: [u8; 16] = *b"shared-payload-k";
/// The sessions' receive session ID.
const NEAR_SESSION_ID: u32 = 9;
/// The far end's receive session ID.
const FAR_SESSION_ID: u32 = 4;
/// Room for any datagram.
const DATAGRAM: usize = 2048;
/// Per-flow metadata of the flow under test.
const METADATA: &[u8] = b"TC\x04\x00";

fn session(max_packet: usize) -> Session {
    common::keyed_session(
        &KEY,
        Role::Responder,
        NEAR_SESSION_ID,
        FAR_SESSION_ID,
        SessionConfig {
            max_packet,
            ..SessionConfig::default()
        },
    )
}

/// One step of the history.
#[derive(Debug, Clone)]
enum Op {
    /// Queue `head ++ body[skip..len - trim]`; on the second session as a payload when `shared`.
    Send {
        head: Vec<u8>,
        body: Vec<u8>,
        skip: usize,
        trim: usize,
        shared: bool,
        expiry_ms: Option<u64>,
    },
    /// Write every datagram due.
    Transmit,
    /// A Range Ack from the far end: window in blocks, cumulative ack, (gap, length) ranges.
    Ack {
        blocks: u64,
        cum: u64,
        ranges: Vec<(u64, u64)>,
    },
    /// Let time pass and run the timers that are due.
    Wait(u64),
    /// Close the flow: FIN after its queued data.
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (
            proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD_HEAD),
            proptest::collection::vec(any::<u8>(), 0..2500),
            0usize..40,
            0usize..40,
            prop::bool::weighted(0.8),
            proptest::option::of(20u64..2000),
        )
            .prop_map(|(head, body, skip, trim, shared, expiry_ms)| Op::Send {
                head,
                body,
                skip,
                trim,
                shared,
                expiry_ms,
            }),
        4 => Just(Op::Transmit),
        3 => (
            prop::sample::select(vec![0u64, 1, 4, 64, 128]),
            0u64..30,
            proptest::collection::vec((0u64..4, 0u64..4), 0..3),
        )
            .prop_map(|(blocks, cum, ranges)| Op::Ack { blocks, cum, ranges }),
        2 => (1u64..1500).prop_map(Op::Wait),
        1 => Just(Op::Close),
    ]
}

/// An encrypted Range Ack for flow `flow`, as the far end (the initiator) sends it.
fn ack_datagram(
    now: Instant,
    flow: FlowId,
    blocks: u64,
    cum: u64,
    steps: &[(u64, u64)],
) -> Vec<u8> {
    let mut ranges = Vec::new();
    let mut cursor = cum;
    for &(gap, len) in steps {
        let from = cursor + gap + 2;
        ranges.push((from, from + len));
        cursor = from + len;
    }
    let mut plain = vec![0u8; DATAGRAM];
    let mut w = Writer::new(&mut plain);
    let mut header = PacketHeader::new(Mode::Initiator);
    header.timestamp = Some(rtmfp::session::clock::timestamp(now));
    header.emit(&mut w).expect("header fits");
    RangeAck::emit_from_ranges(&mut w, flow, blocks, cum, &ranges, false).expect("ack fits");
    let len = w.position();
    let mut out = vec![0u8; DATAGRAM];
    let n = PacketEncoder::new(&KEY, PacketMode::STARTUP)
        .encode(NEAR_SESSION_ID, &plain[..len], &mut out)
        .expect("encodes");
    out.truncate(n);
    out
}

/// Every datagram `s` has to send at `now`.
fn transmit(s: &mut Session, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; DATAGRAM];
    while let Some(t) = s.poll_transmit(now, &mut buf) {
        out.push(buf[..t.len].to_vec());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn shared_payloads_write_the_same_datagrams_as_copies(
        ops in proptest::collection::vec(op(), 1..50),
        max_packet in 120usize..1200,
    ) {
        let mut copied = session(max_packet);
        let mut shared = session(max_packet);
        let flow = copied.open_flow(METADATA, None).unwrap();
        prop_assert_eq!(shared.open_flow(METADATA, None).unwrap(), flow);
        let mut now = Instant::from_millis(1);
        for op in ops {
            match op {
                Op::Send { head, body, skip, trim, shared: as_payload, expiry_ms } => {
                    let start = skip.min(body.len());
                    let end = body.len().saturating_sub(trim).max(start);
                    let whole: Vec<u8> = head.iter().chain(&body[start..end]).copied().collect();
                    let options = SendOptions {
                        expiry: expiry_ms.map(|ms| now + Duration::from_millis(ms)),
                    };
                    let a = copied.send(now, flow, &whole, options);
                    let b = if as_payload {
                        let payload = Payload::new(&head, Arc::from(&body[..]), start..end)
                            .expect("valid payload");
                        prop_assert_eq!(payload.len(), whole.len());
                        shared.send_payload(now, flow, payload, options)
                    } else {
                        shared.send(now, flow, &whole, options)
                    };
                    prop_assert_eq!(a, b);
                }
                Op::Transmit => {
                    let a = transmit(&mut copied, now);
                    let b = transmit(&mut shared, now);
                    prop_assert_eq!(a, b);
                }
                Op::Ack { blocks, cum, ranges } => {
                    let d = ack_datagram(now, flow, blocks, cum, &ranges);
                    let a = copied.handle_datagram(now, common::keyed_far(), &mut d.clone());
                    let b = shared.handle_datagram(now, common::keyed_far(), &mut d.clone());
                    prop_assert_eq!(a, b);
                }
                Op::Wait(ms) => {
                    now = now + Duration::from_millis(ms);
                    let due = copied.poll_timeout();
                    prop_assert_eq!(due, shared.poll_timeout());
                    if due.is_some_and(|t| t <= now) {
                        copied.handle_timeout(now);
                        shared.handle_timeout(now);
                    }
                }
                Op::Close => {
                    prop_assert_eq!(copied.close_flow(flow), shared.close_flow(flow));
                }
            }
            prop_assert_eq!(copied.flow_backlog(flow), shared.flow_backlog(flow));
            prop_assert_eq!(copied.send_flow_stats(flow), shared.send_flow_stats(flow));
        }
        prop_assert_eq!(transmit(&mut copied, now), transmit(&mut shared, now));
    }
}
