//! The stream directory: which session publishes each live stream name, who plays it, and the
//! messages that make the workers route media (RFC 7425 §5.2; digest §1.11–1.12).
//!
//! A stream keeps its number for as long as anyone publishes or plays it, so subscribers that
//! wait for a publisher, or outlive one, are served again when a publisher (re)appears.

use std::collections::HashMap;

use rtmfp::amf::Value;
use rtmfp::flash::command::{status, status_object, Command, DataMessage, ObjectEncoding};

use crate::ids::{SessionIdParts, SERVER_SESSION};
use crate::ipc::{Down, StreamEntry};

/// A message for a worker: the worker's index and the message.
pub type Routed = (usize, Down);

/// The `|RtmpSampleAccess` handler Flash players expect at the start of a play (audio and
/// video sample access granted).
const SAMPLE_ACCESS: &str = "|RtmpSampleAccess";

/// The `|RtmpSampleAccess` data message granting (or not) audio and video sample access.
pub fn sample_access(audio: bool, video: bool) -> Vec<u8> {
    DataMessage {
        handler: SAMPLE_ACCESS.into(),
        values: vec![Value::Boolean(audio), Value::Boolean(video)],
    }
    .to_message(ObjectEncoding::Amf0, 0)
    .unwrap_or_default()
}

/// A NetStream of a client: its session and the client's flow for it.
type StreamFlow = (u32, u64);

/// The command a publisher's NetStream gets when an application closes its publication.
const CLOSE_COMMAND: &str = "close";

/// A stream's key: its application path and name (names are per application).
pub fn stream_key(app: &str, name: &str) -> String {
    format!("{app}/{name}")
}

#[derive(Debug)]
struct Stream {
    id: u32,
    name: String,
    /// Who publishes it: a client's NetStream, or the server itself (`cumulus:publish`:
    /// [`SERVER_SESSION`], so on worker 0, with the stream's number as its flow).
    publisher: Option<StreamFlow>,
    subscribers: Vec<StreamFlow>,
}

/// Why a `publish` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Someone already publishes this name (`NetStream.Publish.BadName`).
    #[error("the name is already published")]
    NameTaken,
}

/// A NetStream that stopped publishing or playing a stream, for the applications'
/// `onUnpublish` and `onUnsubscribe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The client's session.
    pub session: u32,
    /// The client's NetStream flow.
    pub flow: u64,
    /// The stream name (without the application).
    pub name: String,
    /// Whether it published the stream (else it played it).
    pub publisher: bool,
}

/// The live streams of the server.
#[derive(Debug, Default)]
pub struct Streams {
    by_key: HashMap<String, Stream>,
    next_id: u32,
    /// Ends not yet taken by [`Streams::take_ended`].
    ended: Vec<Ended>,
}

fn worker_of(session: u32) -> usize {
    usize::from(SessionIdParts::of(session).worker)
}

fn status_message(level: &str, code: &str, description: &str) -> Vec<u8> {
    Command::on_status(status_object(level, code, description, Vec::new()))
        .to_message(ObjectEncoding::Amf0, 0)
        .unwrap_or_default()
}

fn reply(to: StreamFlow, messages: Vec<Vec<u8>>) -> Routed {
    (
        worker_of(to.0),
        Down::Reply {
            session_id: to.0,
            flow: to.1,
            messages,
        },
    )
}

impl Streams {
    /// An empty directory.
    pub fn new() -> Streams {
        Streams::default()
    }

    /// Numbers new streams after `first`.
    pub fn number_from(&mut self, first: u32) {
        self.next_id = first;
    }

    /// The publications and plays that ended since the last call, in order.
    pub fn take_ended(&mut self) -> Vec<Ended> {
        std::mem::take(&mut self.ended)
    }

    /// The name of each stream known, by number.
    pub fn names(&self) -> HashMap<u32, &str> {
        self.by_key
            .values()
            .map(|s| (s.id, s.name.as_str()))
            .collect()
    }

    /// The number of the stream `key`, if known.
    pub fn id_of(&self, key: &str) -> Option<u32> {
        self.by_key.get(key).map(|s| s.id)
    }

    /// The name of stream number `stream` when a NetStream of `session` publishes it (a scan of
    /// the streams: for the applications' media events, which are far costlier).
    pub fn published_by_session(&self, stream: u32, session: u32) -> Option<&str> {
        self.by_key
            .values()
            .find(|s| s.id == stream && s.publisher.is_some_and(|p| p.0 == session))
            .map(|s| s.name.as_str())
    }

    /// Streams known (published or played).
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no stream is known.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn stream(&mut self, key: &str, name: &str) -> &mut Stream {
        if !self.by_key.contains_key(key) {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            let id = self.next_id;
            self.by_key.insert(
                key.to_string(),
                Stream {
                    id,
                    name: name.to_string(),
                    publisher: None,
                    subscribers: Vec::new(),
                },
            );
        }
        self.by_key
            .get_mut(key)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// The name `flow` publishes, if any.
    pub fn published_by(&self, flow: StreamFlow) -> Option<&str> {
        self.by_key
            .values()
            .find(|s| s.publisher == Some(flow))
            .map(|s| s.name.as_str())
    }

    /// Whether someone other than `from` publishes the stream `key`.
    pub fn taken(&self, key: &str, from: StreamFlow) -> bool {
        self.by_key
            .get(key)
            .is_some_and(|s| s.publisher.is_some_and(|p| p != from))
    }

    /// `publish(name)` from `from` for the stream `key` (application and name). `Err` when the
    /// name is already published (`NetStream.Publish.BadName`).
    pub fn publish(
        &mut self,
        key: &str,
        name: &str,
        from: StreamFlow,
    ) -> Result<Vec<Routed>, PublishError> {
        if self.taken(key, from) {
            return Err(PublishError::NameTaken);
        }
        // A NetStream that published another name stops doing so.
        let mut previous = Vec::new();
        for s in self.by_key.values_mut() {
            if s.publisher == Some(from) && s.name != name {
                s.publisher = None;
                self.ended.push(Ended {
                    session: from.0,

                    flow: from.1,
                    name: s.name.clone(),
                    publisher: true,
                });
                previous.push((worker_of(from.0), Down::Unpublish { stream: s.id }));
            }
        }
        let id = self.stream(key, name).id;
        let mut out = previous;
        out.extend([
            reply(
                from,
                vec![status_message(
                    status::LEVEL_STATUS,
                    status::PUBLISH_START,
                    &format!("{name} is now published"),
                )],
            ),
            (
                worker_of(from.0),
                Down::Publish {
                    session_id: from.0,
                    flow: from.1,
                    stream: id,
                    key: key.to_string(),
                },
            ),
        ]);
        out.extend(self.announce(key, from));
        Ok(out)
    }

    /// `cumulus:publish(name)`: the server publishes the stream `key` (application and name)
    /// itself, on worker 0, fed by [`Streams::push`]. `Err` when the name is already
    /// published.
    pub fn publish_server(&mut self, key: &str, name: &str) -> Result<Vec<Routed>, PublishError> {
        if self.by_key.get(key).is_some_and(|s| s.publisher.is_some()) {
            return Err(PublishError::NameTaken);
        }
        let id = self.stream(key, name).id;
        let mut out = vec![(
            worker_of(SERVER_SESSION),
            Down::ServerPublish {
                stream: id,
                key: key.to_string(),
            },
        )];
        out.extend(self.announce(key, (SERVER_SESSION, u64::from(id))));
        Ok(out)
    }

    /// Ends the server's own publication of the stream `key`, if it has one.
    pub fn unpublish_server(&mut self, key: &str) -> Vec<Routed> {
        match self.by_key.get(key).and_then(|s| s.publisher) {
            Some(p) if p.0 == SERVER_SESSION => self.stop(p),
            _ => Vec::new(),
        }
    }

    /// `publication:close(code, description)` on a client's publication of the stream `key`
    /// (Cumulus's `closePublisher`): the publisher hears `onStatus` with `NetStream.<code>` (when
    /// a code is given) and a `close` on its NetStream, and the publication ends. Nothing for
    /// the server's own publications (`close()` ends those) or a stream nobody publishes.
    pub fn close_publisher(&mut self, key: &str, code: &str, description: &str) -> Vec<Routed> {
        let Some(p) = self
            .by_key
            .get(key)
            .and_then(|s| s.publisher)
            .filter(|p| p.0 != SERVER_SESSION)
        else {
            return Vec::new();
        };
        let mut messages = Vec::new();
        if !code.is_empty() {
            messages.push(status_message(
                status::LEVEL_STATUS,
                &format!("NetStream.{code}"),
                description,
            ));
        }
        messages.extend(Command::call(CLOSE_COMMAND, vec![]).to_message(ObjectEncoding::Amf0, 0));
        let mut out = vec![reply(p, messages)];
        out.extend(self.stop(p));
        out
    }

    /// A media message an application pushes into the stream `key`, for the worker where it
    /// is published; `None` when nobody publishes it.
    pub fn push(&self, key: &str, message: Vec<u8>) -> Option<Routed> {
        let s = self.by_key.get(key)?;
        let p = s.publisher?;
        Some((
            worker_of(p.0),
            Down::Media {
                stream: s.id,
                message,
            },
        ))
    }

    /// Makes `from` the publisher of the (existing) stream `key`: routes to the workers of its
    /// subscribers and tells those it is published.
    fn announce(&mut self, key: &str, from: StreamFlow) -> Vec<Routed> {
        let Some(s) = self.by_key.get_mut(key) else {
            return Vec::new();
        };
        s.publisher = Some(from);
        let (id, name) = (s.id, &s.name);
        let publisher_worker = worker_of(from.0);
        let mut out = Vec::new();
        let mut workers: Vec<usize> = s.subscribers.iter().map(|f| worker_of(f.0)).collect();
        workers.sort_unstable();
        workers.dedup();
        for w in workers.into_iter().filter(|&w| w != publisher_worker) {
            out.push((
                publisher_worker,
                Down::Route {
                    stream: id,
                    worker: u8::try_from(w).unwrap_or(u8::MAX),
                    add: true,
                },
            ));
        }
        let notify = status_message(
            status::LEVEL_STATUS,
            status::PLAY_PUBLISH_NOTIFY,
            &format!("{name} is now published"),
        );
        for &sub in &s.subscribers {
            out.push(reply(sub, vec![notify.clone()]));
        }
        out
    }

    /// `play(name)` from `to` for the stream `key`; `unbuffered` starts at the next key frame.
    pub fn play(&mut self, key: &str, name: &str, to: StreamFlow, unbuffered: bool) -> Vec<Routed> {
        // A new play on a NetStream replaces what it played before (the worker replaces it
        // too when it gets the Play).
        let mut out = self.leave(to, Some(key));
        let s = self.stream(key, name);
        let worker = worker_of(to.0);
        let first_on_worker = !s.subscribers.iter().any(|f| worker_of(f.0) == worker);
        if !s.subscribers.contains(&to) {
            s.subscribers.push(to);
        }
        let start = [
            status_message(
                status::LEVEL_STATUS,
                status::PLAY_RESET,
                &format!("Playing and resetting {name}"),
            ),
            status_message(
                status::LEVEL_STATUS,
                status::PLAY_START,
                &format!("Started playing {name}"),
            ),
            sample_access(true, true),
        ];
        out.extend([
            reply(to, start.to_vec()),
            (
                worker,
                Down::Play {
                    session_id: to.0,
                    flow: to.1,
                    stream: s.id,
                    unbuffered,
                    key: key.to_string(),
                },
            ),
        ]);
        if let Some(p) = s.publisher {
            let pw = worker_of(p.0);
            if first_on_worker && pw != worker {
                out.push((
                    pw,
                    Down::Route {
                        stream: s.id,
                        worker: u8::try_from(worker).unwrap_or(u8::MAX),
                        add: true,
                    },
                ));
            }
        }
        out
    }

    /// The NetStream `flow` of `session` stops (`closeStream`, `deleteStream`, `publish(false)`):
    /// it stops publishing or playing whatever it did.
    pub fn stop(&mut self, flow: StreamFlow) -> Vec<Routed> {
        let mut out = Vec::new();
        for s in self.by_key.values_mut() {
            if s.publisher == Some(flow) {
                s.publisher = None;
                self.ended.push(Ended {
                    session: flow.0,

                    flow: flow.1,
                    name: s.name.clone(),
                    publisher: true,
                });
                out.push((worker_of(flow.0), Down::Unpublish { stream: s.id }));
                if flow.0 != SERVER_SESSION {
                    out.push(reply(
                        flow,
                        vec![status_message(
                            status::LEVEL_STATUS,
                            status::UNPUBLISH_SUCCESS,
                            &format!("{} is now unpublished", s.name),
                        )],
                    ));
                }
                let notify = status_message(
                    status::LEVEL_STATUS,
                    status::PLAY_UNPUBLISH_NOTIFY,
                    &format!("{} is now unpublished", s.name),
                );
                for &sub in &s.subscribers {
                    out.push(reply(sub, vec![notify.clone()]));
                }
            }
            if let Some(i) = s.subscribers.iter().position(|&f| f == flow) {
                s.subscribers.swap_remove(i);
                self.ended.push(Ended {
                    session: flow.0,

                    flow: flow.1,
                    name: s.name.clone(),
                    publisher: false,
                });
                out.push((
                    worker_of(flow.0),
                    Down::StopPlay {
                        session_id: flow.0,
                        flow: flow.1,
                    },
                ));
                out.extend(Self::unroute_if_last(s, worker_of(flow.0)));
            }
        }
        self.by_key
            .retain(|_, s| s.publisher.is_some() || !s.subscribers.is_empty());
        out
    }

    /// A stream a worker reported after a control restart: the stream keeps its number, and its
    /// publisher or player is known again. The name is the key's last component.
    pub fn restore(&mut self, entry: &StreamEntry) {
        let name = entry.key.rsplit('/').next().unwrap_or_default().to_string();
        let s = self.by_key.entry(entry.key.clone()).or_insert(Stream {
            id: entry.stream,
            name,
            publisher: None,
            subscribers: Vec::new(),
        });
        let flow = (entry.session_id, entry.flow);
        if entry.publisher {
            s.publisher = Some(flow);
        } else if !s.subscribers.contains(&flow) {
            s.subscribers.push(flow);
        }
        self.next_id = self.next_id.max(entry.stream);
    }

    /// The route from the publisher's worker to `worker`, when `worker` has no player left.
    fn unroute_if_last(s: &Stream, worker: usize) -> Option<Routed> {
        let p = s.publisher?;
        let pw = worker_of(p.0);
        (pw != worker && !s.subscribers.iter().any(|f| worker_of(f.0) == worker)).then(|| {
            (
                pw,
                Down::Route {
                    stream: s.id,
                    worker: u8::try_from(worker).unwrap_or(u8::MAX),
                    add: false,
                },
            )
        })
    }

    /// `flow` stops playing any stream other than `except`.
    fn leave(&mut self, flow: StreamFlow, except: Option<&str>) -> Vec<Routed> {
        let mut out = Vec::new();
        for (k, s) in self.by_key.iter_mut() {
            if except == Some(k.as_str()) {
                continue;
            }
            if let Some(i) = s.subscribers.iter().position(|&f| f == flow) {
                s.subscribers.swap_remove(i);
                self.ended.push(Ended {
                    session: flow.0,

                    flow: flow.1,
                    name: s.name.clone(),
                    publisher: false,
                });
                out.extend(Self::unroute_if_last(s, worker_of(flow.0)));
            }
        }
        self.by_key
            .retain(|_, s| s.publisher.is_some() || !s.subscribers.is_empty());
        out
    }

    /// `session` closed: everything it published is unpublished, everything it played stops.
    pub fn session_closed(&mut self, session: u32) -> Vec<Routed> {
        let mut flows: Vec<StreamFlow> = Vec::new();
        for s in self.by_key.values() {
            flows.extend(s.publisher.filter(|p| p.0 == session));
            flows.extend(s.subscribers.iter().filter(|f| f.0 == session));
        }
        flows.sort_unstable();
        flows.dedup();
        let mut out = Vec::new();
        for f in flows {
            // The closed session gets nothing: only the others' messages are kept.
            out.extend(self.stop(f).into_iter().filter(
                |(_, d)| !matches!(d, Down::Reply { session_id, .. } if *session_id == session),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtmfp::flash::message::TcMessage;

    const PUB: StreamFlow = (0x0001_0001, 5); // worker 0
    const SUB0: StreamFlow = (0x0001_0002, 6); // worker 0
    const SUB1: StreamFlow = (0x0101_0001, 7); // worker 1

    fn codes(out: &[Routed], to: StreamFlow) -> Vec<String> {
        out.iter()
            .filter_map(|(_, d)| match d {
                Down::Reply {
                    session_id,
                    flow,
                    messages,
                } if (*session_id, *flow) == to => Some(messages),
                _ => None,
            })
            .flatten()
            .filter_map(|m| {
                let tc = TcMessage::parse(m).ok()?;
                let c = Command::parse(&tc).ok()?;
                let code = c.args.first()?.get("code")?.as_str()?.to_string();
                Some(code)
            })
            .collect()
    }

    #[test]
    fn publish_then_play_on_another_worker_routes_media() {
        let mut s = Streams::new();
        let out = s.publish("live/cam", "cam", PUB).unwrap();
        assert_eq!(codes(&out, PUB), [status::PUBLISH_START]);
        assert!(out
            .iter()
            .any(|(w, d)| *w == 0 && matches!(d, Down::Publish { stream: 1, .. })));
        assert!(
            s.publish("live/cam", "cam", SUB0).is_err(),
            "the name is taken"
        );
        let out = s.play("live/cam", "cam", SUB1, false);
        assert_eq!(codes(&out, SUB1), [status::PLAY_RESET, status::PLAY_START]);
        assert!(out
            .iter()
            .any(|(w, d)| *w == 1 && matches!(d, Down::Play { stream: 1, .. })));
        assert!(out.iter().any(|(w, d)| *w == 0
            && matches!(
                d,
                Down::Route {
                    stream: 1,
                    worker: 1,
                    add: true
                }
            )));
        // A second subscriber on the publisher's own worker needs no route.
        let out = s.play("live/cam", "cam", SUB0, false);
        assert!(!out.iter().any(|(_, d)| matches!(d, Down::Route { .. })));
    }

    #[test]
    fn the_server_publishes_on_worker_0_and_its_pushes_reach_it() {
        let mut s = Streams::new();
        s.play("live/tv", "tv", SUB1, false);
        assert_eq!(s.push("live/tv", vec![1]), None, "nobody publishes it yet");
        let out = s.publish_server("live/tv", "tv").unwrap();
        assert!(matches!(
            &out[0],
            (0, Down::ServerPublish { stream: 1, key }) if key == "live/tv"
        ));
        assert_eq!(codes(&out, SUB1), [status::PLAY_PUBLISH_NOTIFY]);
        assert!(out.iter().any(|(w, d)| *w == 0
            && matches!(
                d,
                Down::Route {
                    stream: 1,
                    worker: 1,
                    add: true
                }
            )));
        // Neither the server nor a client may take the name again.
        assert_eq!(
            s.publish_server("live/tv", "tv"),
            Err(PublishError::NameTaken)
        );
        assert!(s.publish("live/tv", "tv", PUB).is_err());
        assert_eq!(
            s.push("live/tv", vec![8, 0, 0, 0, 0]),
            Some((
                0,
                Down::Media {
                    stream: 1,
                    message: vec![8, 0, 0, 0, 0]
                }
            ))
        );
        // A player arriving later is routed from worker 0 too.
        let out = s.play("live/tv", "tv", (0x0101_0002, 3), false);
        assert!(!out.iter().any(|(_, d)| matches!(d, Down::Route { .. })));
        // The end: the players are told, nothing is sent to the server's "session", and the
        // name is free again.
        assert!(s.unpublish_server("live/cam").is_empty());
        let out = s.unpublish_server("live/tv");
        assert_eq!(codes(&out, SUB1), [status::PLAY_UNPUBLISH_NOTIFY]);
        assert!(out
            .iter()
            .any(|(w, d)| *w == 0 && matches!(d, Down::Unpublish { stream: 1 })));
        assert!(!out
            .iter()
            .any(|(_, d)| matches!(d, Down::Reply { session_id: 0, .. })));
        assert_eq!(s.push("live/tv", vec![1]), None);
        assert!(s.publish("live/tv", "tv", PUB).is_ok());
        // A client's publication is not the server's to end, but takes pushes.
        assert!(s.unpublish_server("live/tv").is_empty());
        assert!(matches!(
            s.push("live/tv", vec![9]),
            Some((0, Down::Media { stream: 1, .. }))
        ));
    }

    #[test]
    fn closing_a_clients_publication_tells_its_publisher_and_ends_it() {
        let mut s = Streams::new();
        s.publish("live/cam", "cam", PUB).unwrap();
        s.play("live/cam", "cam", SUB1, false);
        let out = s.close_publisher("live/cam", "Publish.Kicked", "enough");
        assert_eq!(
            codes(&out, PUB),
            ["NetStream.Publish.Kicked", status::UNPUBLISH_SUCCESS]
        );
        assert_eq!(codes(&out, SUB1), [status::PLAY_UNPUBLISH_NOTIFY]);
        assert!(out
            .iter()
            .any(|(_, d)| matches!(d, Down::Unpublish { stream: 1 })));
        assert_eq!(s.published_by(PUB), None);
        // Nobody publishes it now; the server's own publications are closed otherwise.
        assert!(s.close_publisher("live/cam", "", "").is_empty());
        s.publish_server("live/tv", "tv").unwrap();
        assert!(s.close_publisher("live/tv", "", "").is_empty());
    }

    #[test]
    fn waiting_players_are_notified_and_routed_when_the_publisher_comes_and_goes() {
        let mut s = Streams::new();
        s.play("live/cam", "cam", SUB1, false);
        let out = s.publish("live/cam", "cam", PUB).unwrap();
        assert_eq!(codes(&out, SUB1), [status::PLAY_PUBLISH_NOTIFY]);
        assert!(out
            .iter()
            .any(|(w, d)| *w == 0 && matches!(d, Down::Route { worker: 1, .. })));
        let out = s.session_closed(PUB.0);
        assert_eq!(codes(&out, SUB1), [status::PLAY_UNPUBLISH_NOTIFY]);
        assert!(out
            .iter()
            .any(|(w, d)| *w == 0 && matches!(d, Down::Unpublish { stream: 1 })));
        assert!(
            codes(&out, PUB).is_empty(),
            "nothing is sent to a closed session"
        );
        // The publisher comes back: the same stream, the waiting player notified again.
        let out = s.publish("live/cam", "cam", (0x0001_0009, 5)).unwrap();
        assert_eq!(codes(&out, SUB1), [status::PLAY_PUBLISH_NOTIFY]);
        assert!(out
            .iter()
            .any(|(_, d)| matches!(d, Down::Publish { stream: 1, .. })));
    }

    #[test]
    fn restored_streams_keep_their_numbers_and_people() {
        let mut s = Streams::new();
        s.number_from(1000);
        for (flow, publisher) in [(PUB, true), (SUB1, false)] {
            s.restore(&StreamEntry {
                session_id: flow.0,
                flow: flow.1,
                stream: 7,
                key: "live/cam".into(),
                publisher,
            });
        }
        assert!(
            s.publish("live/cam", "cam", SUB0).is_err(),
            "still published"
        );
        let out = s.play("live/cam", "cam", SUB0, false);
        assert!(out
            .iter()
            .any(|(_, d)| matches!(d, Down::Play { stream: 7, .. })));
        let out = s.session_closed(PUB.0);
        assert_eq!(codes(&out, SUB1), [status::PLAY_UNPUBLISH_NOTIFY]);
        let out = s.publish("live/other", "other", PUB).unwrap();
        assert!(out
            .iter()
            .any(|(_, d)| matches!(d, Down::Publish { stream: 1001, .. })));
    }

    #[test]
    fn leaving_players_are_unrouted_and_told_to_stop_even_when_closed() {
        let mut s = Streams::new();
        s.publish("live/cam", "cam", PUB).unwrap();
        s.play("live/cam", "cam", SUB1, false);
        // The last player on worker 1 leaves by closing: the worker still gets StopPlay (a
        // Play may have crossed the close), and the publisher's worker drops the route.
        let out = s.session_closed(SUB1.0);
        assert!(out
            .iter()
            .any(|(w, d)| *w == 1 && matches!(d, Down::StopPlay { .. })));
        assert!(out.iter().any(|(w, d)| *w == 0
            && matches!(
                d,
                Down::Route {
                    worker: 1,
                    add: false,
                    ..
                }
            )));
        // A new play on the same NetStream replaces the old one.
        s.play("live/cam", "cam", SUB0, false);
        s.publish("live/other", "other", (0x0001_0005, 9)).unwrap();
        let out = s.play("live/other", "other", SUB0, false);
        assert!(out.iter().any(|(_, d)| matches!(d, Down::Play { .. })));
        let cam = s.by_key.get("live/cam").unwrap();
        assert!(!cam.subscribers.contains(&SUB0), "replaced");
    }

    #[test]
    fn stopping_forgets_unused_streams() {
        let mut s = Streams::new();
        s.play("a", "a", SUB0, false);
        let out = s.stop(SUB0);
        assert!(out.iter().any(|(_, d)| matches!(d, Down::StopPlay { .. })));
        assert!(s.is_empty());
    }
}
