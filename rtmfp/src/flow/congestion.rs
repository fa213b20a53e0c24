//! Session congestion control (RFC 7016 §3.5.2, Appendix A.2): slow start and congestion
//! avoidance on acknowledged bytes (RFC 5681 style), halving on loss, one segment after a
//! timeout, burst avoidance, and no slow start while the far end reports time-critical data.

use core::time::Duration;

use crate::params::{MAX_BURST_PACKETS, MAX_SESSION_PACKET, TIME_CRITICAL_TIMEOUT};
use crate::time::Instant;

/// Segment size the window counts in.
pub const MSS: usize = MAX_SESSION_PACKET;
/// Initial window: min(4·MSS, max(2·MSS, 4380)) (RFC 5681 §3.1, as RFC 7016 App. A.2 suggests).
pub const INITIAL_WINDOW: usize = {
    let a = 4 * MSS;
    let b = if 2 * MSS > 4380 { 2 * MSS } else { 4380 };
    if a < b {
        a
    } else {
        b
    }
};
/// Window after a timeout with loss: two segments, as rtmfp-cpp. RFC 7016 App. A.2 (after
/// RFC 5681 §3.1) says one, but receivers acknowledge every second packet (RFC 7016 §3.6.3.4.4),
/// so a one-packet window waits out the 200 ms delayed ack after every timeout.
pub const LOSS_WINDOW: usize = 2 * MSS;
/// Smallest ssthresh (RFC 5681 §3.1: 2·SMSS).
const MIN_SSTHRESH: usize = 2 * MSS;
/// Largest window we grow to.
pub const MAX_WINDOW: usize = 16 * 1024 * 1024;

/// The congestion state of one session.
#[derive(Debug, Clone)]
pub struct Congestion {
    cwnd: usize,
    ssthresh: usize,
    /// Bytes acknowledged towards the next congestion-avoidance increase.
    avoidance_credit: usize,
    /// Data packets sent since the last ack or timeout (RFC 7016 §3.5.2.3).
    burst: usize,
    /// Slow start is off until then (RFC 7016 §3.5.2.1).
    no_slow_start_until: Option<Instant>,
    /// Losses of data sent before this instant were already answered.
    recovery_start: Option<Instant>,
}

impl Default for Congestion {
    fn default() -> Self {
        Congestion {
            cwnd: INITIAL_WINDOW,
            ssthresh: usize::MAX,
            avoidance_credit: 0,
            burst: 0,
            no_slow_start_until: None,
            recovery_start: None,
        }
    }
}

impl Congestion {
    /// The congestion window in bytes.
    pub fn cwnd(&self) -> usize {
        self.cwnd
    }

    /// The slow-start threshold.
    pub fn ssthresh(&self) -> usize {
        self.ssthresh
    }

    /// Bytes of new data the session may put in flight now, given `in_flight` bytes. The burst
    /// limit applies while data is in flight: with nothing in flight no ack can come to lift it.
    pub fn allowance(&self, in_flight: usize) -> usize {
        if self.burst >= MAX_BURST_PACKETS && in_flight > 0 {
            return 0;
        }
        self.cwnd.saturating_sub(in_flight)
    }

    /// Bytes were acknowledged.
    pub fn on_ack(&mut self, acked: usize, now: Instant) {
        let slow_start_allowed = self.no_slow_start_until.is_none_or(|t| now >= t);
        if self.cwnd < self.ssthresh && slow_start_allowed {
            self.cwnd += acked.min(MSS);
        } else {
            self.avoidance_credit += acked;
            if self.avoidance_credit >= self.cwnd {
                self.avoidance_credit -= self.cwnd;
                self.cwnd += MSS;
            }
        }
        self.cwnd = self.cwnd.min(MAX_WINDOW);
    }

    /// Data sent at `sent_at` was lost (3 NAKs, RFC 7016 §3.6.2.5): halve once per round; losses
    /// of data sent before the last reduction belong to it.
    pub fn on_loss(&mut self, sent_at: Instant, now: Instant) {
        if self.recovery_start.is_some_and(|r| sent_at <= r) {
            return;
        }
        self.ssthresh = (self.cwnd / 2).max(MIN_SSTHRESH);
        self.cwnd = self.ssthresh;
        self.avoidance_credit = 0;
        self.recovery_start = Some(now);
    }

    /// A retransmission timeout with loss.
    pub fn on_timeout(&mut self, now: Instant) {
        self.ssthresh = (self.cwnd / 2).max(MIN_SSTHRESH);
        self.cwnd = LOSS_WINDOW;
        self.avoidance_credit = 0;
        self.burst = 0;
        self.recovery_start = Some(now);
    }

    /// A packet carrying user data was sent.
    pub fn on_data_packet_sent(&mut self) {
        self.burst += 1;
    }

    /// An acknowledgement arrived: the burst count restarts.
    pub fn on_ack_received(&mut self) {
        self.burst = 0;
    }

    /// A time-critical reverse notification arrived.
    pub fn on_time_critical_reverse(&mut self, now: Instant) {
        self.no_slow_start_until = Some(now + TIME_CRITICAL_TIMEOUT);
    }

    /// How long slow start stays off, if it is.
    pub fn slow_start_suppressed_for(&self, now: Instant) -> Duration {
        self.no_slow_start_until
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_then_avoidance_then_loss_and_timeout() {
        let mut c = Congestion::default();
        let t = Instant::from_millis(1);
        assert_eq!(c.cwnd(), 4380);
        c.on_ack(MSS, t);
        assert_eq!(c.cwnd(), INITIAL_WINDOW + MSS);
        let before = c.cwnd();
        c.on_loss(t, t);
        assert_eq!(c.cwnd(), (before / 2).max(2 * MSS));
        assert_eq!(c.ssthresh(), c.cwnd());
        // A second loss of data sent before the reduction is the same event.
        c.on_loss(t, t + Duration::from_millis(5));
        assert_eq!(c.cwnd(), (before / 2).max(2 * MSS));
        // Congestion avoidance: one MSS per window's worth of acked bytes.
        let w = c.cwnd();
        c.on_ack(w - 1, t);
        assert_eq!(c.cwnd(), w);
        c.on_ack(1, t);
        assert_eq!(c.cwnd(), w + MSS);
        c.on_timeout(t);
        assert_eq!(c.cwnd(), LOSS_WINDOW);
    }

    #[test]
    fn burst_limit_and_time_critical_reverse() {
        let mut c = Congestion::default();
        for _ in 0..MAX_BURST_PACKETS {
            assert!(c.allowance(0) > 0);
            c.on_data_packet_sent();
        }
        assert_eq!(c.allowance(1), 0);
        assert!(
            c.allowance(0) > 0,
            "nothing in flight: no ack will come to lift the limit"
        );
        c.on_ack_received();
        assert!(c.allowance(1) > 0);
        let t = Instant::from_millis(10);
        c.on_time_critical_reverse(t);
        let w = c.cwnd();
        c.on_ack(MSS, t);
        assert_eq!(c.cwnd(), w, "no slow start within 800 ms of a TCR");
        c.on_ack(MSS, t + TIME_CRITICAL_TIMEOUT);
        assert_eq!(c.cwnd(), w + MSS);
        assert_eq!(c.allowance(c.cwnd()), 0);
    }
}
