//! Packet timestamps, timestamp echoes and RTT samples (RFC 7016 §2.2.4, §3.5.2.2).

use core::time::Duration;

use crate::params::{MAX_TS_ECHO_ELAPSED, TIMESTAMP_TICK};
use crate::time::Instant;

/// Tick differences above this are invalid RTT samples (RFC 7016 §3.5.2.2).
const MAX_RTT_TICKS: u16 = 32767;

/// The 16-bit, 4 ms timestamp of `now` (RFC 7016 §2.2.4).
pub fn timestamp(now: Instant) -> u16 {
    let ticks = now.as_micros() / TIMESTAMP_TICK.as_micros() as u64;
    // The timestamp wraps at 16 bits by definition.
    (ticks & u64::from(u16::MAX)) as u16
}

/// Timestamp state of one session: what to echo, and RTT samples from echoes.
#[derive(Debug, Clone, Default)]
pub struct TimestampState {
    /// The far end's last timestamp and when it arrived.
    last_far: Option<(u16, Instant)>,
    /// The last echo value we sent.
    last_echo_sent: Option<u16>,
}

impl TimestampState {
    /// Records the timestamp of a packet that arrived at `now`.
    pub fn on_far_timestamp(&mut self, now: Instant, ts: u16) {
        self.last_far = Some((ts, now));
    }

    /// The echo to put in a packet sent at `now`: the last received timestamp plus the ticks
    /// elapsed since it arrived, omitted after 128 s or when unchanged since the last echo sent
    /// (RFC 7016 §3.5.2.2).
    pub fn echo_for_send(&mut self, now: Instant) -> Option<u16> {
        let (ts, at) = self.last_far?;
        let elapsed = now.saturating_duration_since(at);
        if elapsed > MAX_TS_ECHO_ELAPSED {
            return None;
        }
        let ticks = (elapsed.as_micros() / TIMESTAMP_TICK.as_micros()) as u64;
        let echo = ts.wrapping_add((ticks & u64::from(u16::MAX)) as u16);
        if self.last_echo_sent == Some(echo) {
            return None;
        }
        self.last_echo_sent = Some(echo);
        Some(echo)
    }

    /// An RTT sample from an echo received at `now`, or `None` if the sample is invalid.
    pub fn rtt_sample(now: Instant, echo: u16) -> Option<Duration> {
        let ticks = timestamp(now).wrapping_sub(echo);
        (ticks <= MAX_RTT_TICKS).then(|| TIMESTAMP_TICK * u32::from(ticks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_4ms_ticks_wrapping() {
        assert_eq!(timestamp(Instant::from_millis(0)), 0);
        assert_eq!(timestamp(Instant::from_millis(7)), 1);
        assert_eq!(timestamp(Instant::from_millis(4 * 65536 + 8)), 2);
    }

    #[test]
    fn echo_adds_elapsed_ticks_and_is_not_repeated() {
        let mut s = TimestampState::default();
        assert_eq!(s.echo_for_send(Instant::ZERO), None);
        s.on_far_timestamp(Instant::from_millis(1000), 500);
        assert_eq!(s.echo_for_send(Instant::from_millis(1040)), Some(510));
        assert_eq!(
            s.echo_for_send(Instant::from_millis(1041)),
            None,
            "unchanged echo omitted"
        );
        assert_eq!(s.echo_for_send(Instant::from_millis(1044)), Some(511));
        assert_eq!(
            s.echo_for_send(Instant::from_millis(1000 + 129_000)),
            None,
            "stale after 128 s"
        );
    }

    #[test]
    fn rtt_samples() {
        let now = Instant::from_millis(4000); // timestamp 1000
        assert_eq!(
            TimestampState::rtt_sample(now, 990),
            Some(Duration::from_millis(40))
        );
        assert_eq!(TimestampState::rtt_sample(now, 1000), Some(Duration::ZERO));
        // An echo from the future wraps above 32767 ticks: invalid.
        assert_eq!(TimestampState::rtt_sample(now, 1001), None);
    }
}
