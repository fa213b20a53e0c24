//! Live media on a worker: what a publisher's messages are (audio, video, data, sequence
//! headers, keyframes), the per-stream cache a late joiner starts from (metadata, sequence
//! headers, the current group of pictures), and the reference-counted items that carry a
//! publication to the other workers.
//!
//! Message layout: the Flash TC message of RFC 7425 §5.1 (`type`, 32-bit timestamp, payload);
//! audio and video payloads are FLV tag bodies, with the Enhanced RTMP extended headers.

use rtmfp::flow::recv::RecvStats;
use rtmfp::flow::send::SendStats;
use std::sync::Arc;
use updraft_control::ipc::QosEntry;

use rtmfp::flash::command::{names, DataMessage, ObjectEncoding};
use rtmfp::flash::message::{MessageType, TcMessage};

/// A publication's message on its way to another worker. An empty `message` resets the
/// stream (its publisher left), so that no stale headers reach a later publisher's audience.
#[derive(Debug, Clone)]
pub struct MediaItem {
    /// The stream.
    pub stream: u32,
    /// The whole TC message, shared by every worker and subscriber.
    pub message: Arc<[u8]>,
}

/// What a media message is, for caching and for partial reliability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// Audio; `header` for a codec configuration (AAC AudioSpecificConfig, Enhanced RTMP
    /// sequence start).
    Audio {
        /// A sequence header.
        header: bool,
    },
    /// Video; `header` for a codec configuration (AVC/HEVC decoder record, Enhanced RTMP
    /// sequence start), `keyframe` for a key frame.
    Video {
        /// A sequence header.
        header: bool,
        /// A key frame (or a sequence header).
        keyframe: bool,
    },
    /// Metadata (`onMetaData`, kept as the stream's data keyframe).
    Metadata,
    /// Any other data message.
    Data,
}

/// FLV `SoundFormat` of AAC (its sequence header has `AACPacketType` 0).
const SOUND_FORMAT_AAC: u8 = 10;
/// FLV `SoundFormat` that announces an Enhanced RTMP extended audio header.
const SOUND_FORMAT_EX_HEADER: u8 = 9;
/// Enhanced RTMP `IsExHeader` bit of the first video byte.
const VIDEO_EX_HEADER: u8 = 0x80;
/// Enhanced RTMP `PacketType` (audio and video) of a sequence start.
const EX_SEQUENCE_START: u8 = 0;
/// FLV `FrameType` of a key frame.
const FRAME_KEY: u8 = 1;
/// FLV `CodecID`s whose second byte is a packet type with 0 for the sequence header (AVC, HEVC
/// as Flash-era servers carry it).
const CODECS_WITH_HEADERS: [u8; 2] = [7, 12];

/// Classifies a TC message; `None` for what is not media (commands, user control).
pub fn classify(message: &[u8]) -> Option<MediaKind> {
    let tc = TcMessage::parse(message).ok()?;
    let p = tc.payload;
    match tc.kind {
        MessageType::AUDIO => {
            let first = *p.first()?;
            let format = first >> 4;
            let header = (format == SOUND_FORMAT_AAC && p.get(1) == Some(&0))
                || (format == SOUND_FORMAT_EX_HEADER && first & 0x0F == EX_SEQUENCE_START);
            Some(MediaKind::Audio { header })
        }
        MessageType::VIDEO => {
            let first = *p.first()?;
            let frame = (first >> 4) & 0x07;
            let header = if first & VIDEO_EX_HEADER != 0 {
                first & 0x0F == EX_SEQUENCE_START
            } else {
                CODECS_WITH_HEADERS.contains(&(first & 0x0F)) && p.get(1) == Some(&0)
            };
            Some(MediaKind::Video {
                header,
                keyframe: header || frame == FRAME_KEY,
            })
        }
        MessageType::AMF0_DATA | MessageType::AMF3_DATA => {
            let is_meta = DataMessage::parse(&tc).is_ok_and(|d| d.handler == names::ON_META_DATA);
            Some(if is_meta {
                MediaKind::Metadata
            } else {
                MediaKind::Data
            })
        }
        _ => None,
    }
}

/// What a publisher's message becomes for its audience: `@setDataFrame onMetaData {…}` is
/// stored and sent as `onMetaData {…}` (the data keyframe); other messages are unchanged.
/// `None` for `@clearDataFrame` and what is not media.
pub fn prepare(message: Vec<u8>) -> Option<Arc<[u8]>> {
    let tc = TcMessage::parse(&message).ok()?;
    if matches!(tc.kind, MessageType::AMF0_DATA | MessageType::AMF3_DATA) {
        let d = DataMessage::parse(&tc).ok()?;
        if d.handler == names::CLEAR_DATA_FRAME {
            return None;
        }
        if let Some((handler, value)) = d.set_data_frame() {
            let meta = DataMessage {
                handler: handler.to_string().into(),
                values: vec![value.clone()],
            };
            return meta
                .to_message(ObjectEncoding::Amf0, tc.timestamp)
                .ok()
                .map(Arc::from);
        }
    }
    classify(&message)?;
    Some(Arc::from(message))
}

/// The timestamp of a TC message.
pub fn timestamp(message: &[u8]) -> u32 {
    message
        .get(1..5)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// One stream as one worker serves it, for `/stats` (and for Lua later): what its publisher
/// sent (when published on this worker) and how each subscriber here is doing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamReport {
    /// The stream's key (application path and name).
    pub key: String,
    /// The worker.
    pub worker: u8,
    /// Whether its publisher is on this worker.
    pub published: bool,
    /// Media messages received from the publisher or from its worker.
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The publication's QoS over the last report period (Cumulus `publication.videoQOS`):
    /// the publisher's losses and latency when it publishes on this worker, and the stream's
    /// byte rate either way.
    pub qos: Qos,
    /// Fragments of the publisher's flow received and lost (zero when it publishes elsewhere).
    pub fragments: RecvStats,
    /// The subscribers on this worker.
    pub subscribers: Vec<SubscriberReport>,
}

/// Quality of service over the last report period, as Cumulus's Lua `QOS` objects give it
/// (`lostRate`, `byteRate`, `congestionRate`, `latency`, `droppedFrames`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Qos {
    /// Share of fragments lost, 0 to 1: for a publication, sequence numbers its publisher gave
    /// up on before they arrived; for a subscriber, fragments sent to it and declared lost
    /// (retransmitted or abandoned).
    pub lost_rate: f64,
    /// Bytes per second of media.
    pub byte_rate: u64,
    /// Share of media messages dropped for lack of capacity, 0 to 1: for a subscriber, because
    /// it fell behind (more unacknowledged data than the backlog limit); for a publication,
    /// because another worker's media queue was full.
    pub congestion_rate: f64,
    /// Half the smoothed round-trip time, in milliseconds (`None` before a measurement).
    pub latency_ms: Option<u64>,
    /// Media messages dropped in all since the start (behind, muted, waiting for a key frame,
    /// or not forwarded).
    pub dropped_frames: u64,
}

impl Qos {
    /// This QoS as the control plane gets it, for `session`'s side of stream `stream`.
    pub fn entry(&self, session_id: u32, stream: u32, publisher: bool) -> QosEntry {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "rates are within 0 to 1"
        )]
        let ppm = |rate: f64| (rate.clamp(0.0, 1.0) * 1e6).round() as u32;
        QosEntry {
            session_id,
            stream,
            publisher,
            lost_ppm: ppm(self.lost_rate),
            byte_rate: self.byte_rate,
            congestion_ppm: ppm(self.congestion_rate),
            latency_ms: self
                .latency_ms
                .map(|l| u32::try_from(l).unwrap_or(u32::MAX - 1)),
            dropped_frames: self.dropped_frames,
        }
    }

    /// `part / whole` over a period, 0 when nothing happened.
    pub fn rate(part: u64, whole: u64) -> f64 {
        if whole == 0 {
            0.0
        } else {
            #[allow(clippy::cast_precision_loss)]
            let r = part as f64 / whole as f64;
            r.min(1.0)
        }
    }
}

/// One subscriber's QoS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriberReport {
    /// The subscriber's session.
    pub session_id: u32,
    /// Media messages queued to it.
    pub delivered: u64,
    /// Media messages not sent to it (behind, muted, waiting for a key frame): Cumulus's
    /// `droppedFrames`.
    pub dropped: u64,
    /// Bytes sent to it and not yet acknowledged.
    pub backlog: u64,
    /// Its smoothed round-trip time, in milliseconds: Cumulus's `latency` is half of it.
    pub rtt_ms: Option<u64>,
    /// Its QoS over the last report period (Cumulus `listener.videoQOS`).
    pub qos: Qos,
    /// Fragments of its media flow sent and declared lost since it started playing.
    pub fragments: SendStats,
}

/// Most messages kept for the current group of pictures.
const MAX_GOP_MESSAGES: usize = 2048;
/// Most bytes kept for the current group of pictures.
const MAX_GOP_BYTES: usize = 16 << 20;

/// What a late joiner needs: metadata, sequence headers, and everything since the last key
/// frame (audio included, so it starts in sync).
#[derive(Debug, Default)]
pub struct StreamCache {
    metadata: Option<Arc<[u8]>>,
    audio_header: Option<Arc<[u8]>>,
    video_header: Option<Arc<[u8]>>,
    gop: Vec<Arc<[u8]>>,
    gop_bytes: usize,
}

impl StreamCache {
    /// Takes note of a message of the stream.
    pub fn observe(&mut self, message: &Arc<[u8]>) {
        let Some(kind) = classify(message) else {
            return;
        };
        match kind {
            MediaKind::Metadata => self.metadata = Some(Arc::clone(message)),
            MediaKind::Audio { header: true } => self.audio_header = Some(Arc::clone(message)),
            MediaKind::Video { header: true, .. } => self.video_header = Some(Arc::clone(message)),
            MediaKind::Video { keyframe: true, .. } => {
                self.gop.clear();
                self.gop_bytes = 0;
                self.push(message);
            }
            MediaKind::Audio { .. } | MediaKind::Video { .. } | MediaKind::Data => {
                // Nothing before the first key frame is worth replaying.
                if !self.gop.is_empty() {
                    self.push(message);
                }
            }
        }
    }

    fn push(&mut self, message: &Arc<[u8]>) {
        if self.gop.len() < MAX_GOP_MESSAGES && self.gop_bytes + message.len() <= MAX_GOP_BYTES {
            self.gop_bytes += message.len();
            self.gop.push(Arc::clone(message));
        }
    }

    /// Metadata and sequence headers alone, in order (what an unbuffered play starts with).
    pub fn headers(&self) -> impl Iterator<Item = &Arc<[u8]>> {
        self.metadata
            .iter()
            .chain(&self.audio_header)
            .chain(&self.video_header)
    }

    /// Whether a key frame is cached.
    pub fn has_keyframe(&self) -> bool {
        !self.gop.is_empty()
    }

    /// The timestamp a late joiner's clock starts from: the cached key frame's.
    pub fn start_timestamp(&self) -> Option<u32> {
        self.gop.first().map(|m| timestamp(m))
    }

    /// What a late joiner gets first, in order: metadata, sequence headers, the group of
    /// pictures.
    pub fn replay(&self) -> impl Iterator<Item = &Arc<[u8]>> {
        self.headers().chain(&self.gop)
    }

    /// Forgets everything (the publisher left).
    pub fn clear(&mut self) {
        *self = StreamCache::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtmfp::amf::{Object, Value};

    fn tc(kind: u8, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&ts.to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn kinds_of_flv_bodies() {
        assert_eq!(
            classify(&tc(8, 0, &[0xAF, 0])),
            Some(MediaKind::Audio { header: true })
        );
        assert_eq!(
            classify(&tc(8, 0, &[0xAF, 1, 9])),
            Some(MediaKind::Audio { header: false })
        );
        assert_eq!(
            classify(&tc(9, 0, &[0x17, 0, 0, 0, 0])),
            Some(MediaKind::Video {
                header: true,
                keyframe: true
            })
        );
        assert_eq!(
            classify(&tc(9, 0, &[0x17, 1, 0, 0, 0])),
            Some(MediaKind::Video {
                header: false,
                keyframe: true
            })
        );
        assert_eq!(
            classify(&tc(9, 0, &[0x27, 1, 0, 0, 0])),
            Some(MediaKind::Video {
                header: false,
                keyframe: false
            })
        );
        // Enhanced RTMP: IsExHeader, key frame, SequenceStart, FourCC "hvc1".
        assert_eq!(
            classify(&tc(9, 0, &[0x90, b'h', b'v', b'c', b'1'])),
            Some(MediaKind::Video {
                header: true,
                keyframe: true
            })
        );
        assert_eq!(classify(&tc(0x14, 0, &[])), None);
        assert_eq!(classify(&[]), None);
    }

    #[test]
    fn set_data_frame_becomes_on_meta_data() {
        let meta = DataMessage {
            handler: names::SET_DATA_FRAME.into(),
            values: vec![
                Value::str(names::ON_META_DATA),
                Value::Object(Object::anonymous(vec![(
                    "width".into(),
                    Value::Number(640.0),
                )])),
            ],
        }
        .to_message(ObjectEncoding::Amf0, 0)
        .unwrap();
        let out = prepare(meta).unwrap();
        assert_eq!(classify(&out), Some(MediaKind::Metadata));
        let tcm = TcMessage::parse(&out).unwrap();
        let d = DataMessage::parse(&tcm).unwrap();
        assert_eq!(d.handler, names::ON_META_DATA);
        assert_eq!(d.values[0].get("width"), Some(&Value::Number(640.0)));
        assert!(
            prepare(tc(0x14, 0, &[2, 0, 1, b'x'])).is_none(),
            "commands are not media"
        );
    }

    #[test]
    fn the_cache_holds_headers_and_the_last_group_of_pictures() {
        let mut c = StreamCache::default();
        let msgs: Vec<Arc<[u8]>> = [
            tc(8, 0, &[0xAF, 0]),           // audio header
            tc(9, 0, &[0x17, 0, 0, 0, 0]),  // video header
            tc(8, 10, &[0xAF, 1]),          // audio before any key frame: not kept
            tc(9, 20, &[0x17, 1, 0, 0, 0]), // key frame
            tc(9, 53, &[0x27, 1, 0, 0, 0]), // inter frame
            tc(9, 86, &[0x17, 1, 0, 0, 0]), // next key frame: a new group
            tc(8, 90, &[0xAF, 1]),          // audio in the group
        ]
        .into_iter()
        .map(Arc::from)
        .collect();
        for m in &msgs {
            c.observe(m);
        }
        let replay: Vec<&Arc<[u8]>> = c.replay().collect();
        assert_eq!(replay, vec![&msgs[0], &msgs[1], &msgs[5], &msgs[6]]);
        assert_eq!(c.start_timestamp(), Some(86));
        c.clear();
        assert_eq!(c.replay().count(), 0);
        assert!(!c.has_keyframe());
    }
}
