//! Per-worker counters. A worker counts in plain integers and publishes them once per loop
//! turn with relaxed stores (it is the only writer), so counting costs no atomic
//! read-modify-write per packet; readers (the metrics endpoint) load them at any time.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($(#[$m:meta])* $name:ident / $shared:ident { $($(#[$fm:meta])* $field:ident,)* }) => {
        $(#[$m])*
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fm])* pub $field: u64,)*
        }

        /// The published copy of
        #[doc = concat!("[`", stringify!($name), "`]")]
        /// , readable from other threads.
        #[derive(Debug, Default)]
        pub struct $shared {
            $($field: AtomicU64,)*
        }

        impl $shared {
            /// Publishes `c` (only the owning worker calls this).
            pub fn publish(&self, c: &$name) {
                $(self.$field.store(c.$field, Ordering::Relaxed);)*
            }

            /// A snapshot.
            pub fn load(&self) -> $name {
                $name { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }

        impl $name {
            /// `(name, value)` of every counter, for exposition.
            pub fn fields(&self) -> [(&'static str, u64); [$(stringify!($field)),*].len()] {
                [$((stringify!($field), self.$field)),*]
            }
        }
    };
}

counters! {
    /// What one worker has seen and done.
    WorkerCounters / SharedCounters {
        /// Datagrams received.
        rx_packets,
        /// Bytes received.
        rx_bytes,
        /// Datagrams sent.
        tx_packets,
        /// Bytes sent.
        tx_bytes,
        /// Datagrams the socket could not send.
        tx_dropped,
        /// Sends that carried several datagrams to one destination at once (UDP GSO): a
        /// subscriber's datagrams for one frame, for instance.
        tx_gso_sends,
        /// Datagrams carried by those sends.
        tx_gso_datagrams,
        /// Dropped: longer than a receive buffer.
        drop_truncated,
        /// Dropped: from a source in the deny list (the blacklist) that reached the socket.
        drop_denied,
        /// Dropped: too short to carry a session ID, or failed decryption or authentication.
        drop_malformed,
        /// Dropped: for a session ID no worker has.
        drop_unknown_session,
        /// Startup datagrams dropped because the control plane was unreachable or busy.
        drop_control_unavailable,
        /// Datagrams handed to the worker that owns their session.
        handoff_out,
        /// Datagrams received from other workers.
        handoff_in,
        /// Handoffs dropped because the owner's queue was full.
        drop_handoff_full,
        /// Messages to the control plane dropped because its link was down or full.
        control_up_dropped,
        /// Messages from the control plane that did not decode.
        control_down_malformed,
        /// Sessions installed.
        sessions_installed,
        /// Sessions closed.
        sessions_closed,
        /// Sessions open now.
        sessions_open,
        /// Streams published on this worker now.
        publications,
        /// Subscriptions served by this worker now.
        subscribers,
        /// Control-plane links (re)established.
        control_links,
        /// Media messages received from publishers on this worker.
        media_published,
        /// Publishers' messages sent to the control plane for the applications' media events.
        media_events,
        /// Messages for an application's flow writer dropped: the session has no NetConnection
        /// yet, or already the most writers.
        drop_writer,
        /// Media messages applications pushed into streams published on this worker.
        media_pushed,
        /// Pushed media messages dropped: the stream is not published here (any more), or the
        /// message is not media.
        drop_media_pushed,
        /// Media messages handed to other workers.
        media_out,
        /// Media messages received from other workers.
        media_in,
        /// Media messages queued to subscribers on this worker.
        media_delivered,
        /// Media messages a subscriber's session refused (its flow was closed or full).
        media_refused,
        /// Media messages dropped because another worker's media queue was full.
        drop_media_queue_full,
        /// Media messages not sent to a subscriber: it was behind (whole frames, up to the next
        /// key frame), had muted them, or was waiting for a key frame.
        media_dropped,
        /// The AF_XDP queue this worker serves, plus one (0: sockets only).
        xdp_queue,
        /// Datagrams received through the AF_XDP RX ring.
        xdp_rx,
        /// Datagrams sent through the AF_XDP TX ring.
        xdp_tx,
        /// Datagrams an AF_XDP worker sent by its socket: no next hop learned yet for the
        /// destination, no free frame, or too long for a frame.
        xdp_tx_via_socket,
        /// Frames on the RX ring that were not UDP to our port (dropped).
        xdp_rx_other,
        /// Times the kernel found the fill ring empty (nothing to receive into).
        xdp_fill_ring_empty,
        /// Frames the kernel dropped on the way to the RX ring (ring full, or other).
        xdp_rx_dropped,
        /// Invalid descriptors the kernel saw on the rings (a bug if ever non-zero).
        xdp_invalid_descs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_and_load_agree() {
        let shared = SharedCounters::default();
        let c = WorkerCounters {
            rx_packets: 5,
            sessions_open: 2,
            ..WorkerCounters::default()
        };
        shared.publish(&c);
        assert_eq!(shared.load(), c);
        let fields = c.fields();
        assert!(fields.contains(&("rx_packets", 5)));
        assert!(fields.contains(&("sessions_open", 2)));
    }
}
