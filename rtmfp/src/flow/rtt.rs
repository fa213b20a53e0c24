//! Round-trip time estimation and the retransmission timeout (RFC 7016 §3.5.2.2).

use core::time::Duration;

use crate::params::{INITIAL_ERTO, INITIAL_MRTO, MAX_ERTO, MIN_ERTO, MRTO_MARGIN};

/// Multiplier applied to ERTO on each retransmission timeout (RFC 7016 §3.5.2.2: √2).
const ERTO_BACKOFF: f64 = core::f64::consts::SQRT_2;

/// SRTT, RTTVAR, MRTO and ERTO of one session.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    mrto: Duration,
    erto: Duration,
}

impl Default for RttEstimator {
    fn default() -> Self {
        RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            mrto: INITIAL_MRTO,
            erto: INITIAL_ERTO,
        }
    }
}

impl RttEstimator {
    /// Takes a sample: first SRTT = RTT and RTTVAR = RTT/2, then RTTVAR = (3·RTTVAR + |SRTT − RTT|)/4
    /// and SRTT = (7·SRTT + RTT)/8; MRTO = SRTT + 4·RTTVAR + 200 ms; ERTO = max(MRTO, 250 ms).
    pub fn on_sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(rtt);
        self.mrto = srtt + self.rttvar * 4 + MRTO_MARGIN;
        self.erto = self.mrto.max(MIN_ERTO);
    }

    /// On a retransmission timeout: ERTO = max(min(ERTO·√2, 10 s), MRTO).
    pub fn on_timeout(&mut self) {
        self.erto = self.erto.mul_f64(ERTO_BACKOFF).min(MAX_ERTO).max(self.mrto);
    }

    /// The smoothed RTT, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The effective retransmission timeout.
    pub fn erto(&self) -> Duration {
        self.erto
    }

    /// The measured retransmission timeout.
    pub fn mrto(&self) -> Duration {
        self.mrto
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn initial_values() {
        let r = RttEstimator::default();
        assert_eq!(r.erto(), ms(3000));
        assert_eq!(r.mrto(), ms(250));
        assert_eq!(r.srtt(), None);
    }

    #[test]
    fn samples_follow_the_rfc_formulas() {
        let mut r = RttEstimator::default();
        r.on_sample(ms(100));
        assert_eq!(r.srtt(), Some(ms(100)));
        // MRTO = 100 + 4·50 + 200.
        assert_eq!(r.mrto(), ms(500));
        assert_eq!(r.erto(), ms(500));
        r.on_sample(ms(200));
        // RTTVAR = (3·50 + 100)/4 = 62.5; SRTT = (700 + 200)/8 = 112.5.
        assert_eq!(r.srtt(), Some(Duration::from_micros(112_500)));
        assert_eq!(r.mrto(), Duration::from_micros(112_500 + 250_000 + 200_000));
    }

    #[test]
    fn small_rtt_is_floored_and_timeouts_back_off_to_ten_seconds() {
        let mut r = RttEstimator::default();
        r.on_sample(ms(1));
        assert_eq!(
            r.erto(),
            Duration::from_micros(1000 + 2000 + 200_000).max(ms(250))
        );
        let mut last = r.erto();
        for _ in 0..20 {
            r.on_timeout();
            assert!(r.erto() >= last);
            last = r.erto();
        }
        assert_eq!(r.erto(), ms(10_000));
    }
}
