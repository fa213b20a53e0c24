//! One hashed timer wheel per worker: sessions register their next deadline, and the worker
//! expires only the slots time has passed, never polling every session.
//!
//! Entries are not removed when a session re-arms: the owner keeps the deadline it armed last
//! and ignores an expiry that does not match it.

use rtmfp::time::Instant;

/// Width of one slot: the RTMFP timestamp tick (RFC 7016 §3.5.3).
const TICK_MICROS: u64 = 4_000;
/// Slots in the wheel: 4 ms × 1024 ≈ 4.1 s per turn. Later deadlines stay in their slot until
/// their turn comes round.
const SLOTS: usize = 1024;

/// A timer wheel of `(deadline, key)` entries.
#[derive(Debug)]
pub struct TimerWheel {
    slots: Vec<Vec<(Instant, u32)>>,
    /// The first tick not yet expired.
    cursor: u64,
    len: usize,
}

impl Default for TimerWheel {
    fn default() -> Self {
        TimerWheel::new()
    }
}

fn tick_of(t: Instant) -> u64 {
    t.as_micros() / TICK_MICROS
}

impl TimerWheel {
    /// An empty wheel.
    pub fn new() -> TimerWheel {
        TimerWheel {
            slots: vec![Vec::new(); SLOTS],
            cursor: 0,
            len: 0,
        }
    }

    /// Entries held (including stale ones not yet expired).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the wheel holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Registers `key` to expire at `deadline`.
    pub fn insert(&mut self, deadline: Instant, key: u32) {
        let tick = tick_of(deadline).max(self.cursor);
        self.slots[(tick % SLOTS as u64) as usize].push((deadline, key));
        self.len += 1;
    }

    /// Calls `fire(deadline, key)` for every entry due at or before `now`.
    pub fn expire(&mut self, now: Instant, mut fire: impl FnMut(Instant, u32)) {
        let end = tick_of(now);
        if end < self.cursor {
            return;
        }
        // Walk at most one turn: after that every slot has been visited once.
        let last = end.min(self.cursor + SLOTS as u64 - 1);
        for tick in self.cursor..=last {
            let slot = &mut self.slots[(tick % SLOTS as u64) as usize];
            let mut i = 0;
            while i < slot.len() {
                if slot[i].0 <= now {
                    let (d, k) = slot.swap_remove(i);
                    self.len -= 1;
                    fire(d, k);
                } else {
                    i += 1;
                }
            }
        }
        // The slot holding `now` may keep entries due later in the same tick.
        self.cursor = end;
    }

    /// An upper bound on how long the worker may sleep: the earliest deadline in the next few
    /// slots, or the end of the scan horizon.
    pub fn next_deadline(&self, now: Instant, horizon_ticks: u64) -> Option<Instant> {
        let start = tick_of(now).max(self.cursor);
        for tick in start..start + horizon_ticks.min(SLOTS as u64) {
            let slot = &self.slots[(tick % SLOTS as u64) as usize];
            if let Some(d) = slot.iter().map(|e| e.0).min() {
                return Some(d);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Instant {
        Instant::from_millis(v)
    }

    #[test]
    fn fires_in_time_and_only_once() {
        let mut w = TimerWheel::new();
        w.insert(ms(10), 1);
        w.insert(ms(3), 2);
        w.insert(ms(10_000), 3);
        let mut fired = Vec::new();
        w.expire(ms(5), |_, k| fired.push(k));
        assert_eq!(fired, vec![2]);
        w.expire(ms(11), |_, k| fired.push(k));
        assert_eq!(fired, vec![2, 1]);
        w.expire(ms(12), |_, k| fired.push(k));
        assert_eq!(fired, vec![2, 1]);
        // A deadline beyond one turn survives earlier passes over its slot.
        for t in (20..10_000).step_by(500) {
            w.expire(ms(t), |_, k| fired.push(k));
        }
        assert_eq!(fired, vec![2, 1]);
        w.expire(ms(10_001), |_, k| fired.push(k));
        assert_eq!(fired, vec![2, 1, 3]);
        assert!(w.is_empty());
    }

    #[test]
    fn a_long_sleep_still_fires_everything_due() {
        let mut w = TimerWheel::new();
        for k in 0..100u32 {
            w.insert(ms(u64::from(k) * 37), k);
        }
        let mut fired = Vec::new();
        w.expire(ms(60_000), |_, k| fired.push(k));
        fired.sort_unstable();
        assert_eq!(fired, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn past_deadlines_fire_on_the_next_expiry() {
        let mut w = TimerWheel::new();
        w.expire(ms(100), |_, _| {});
        w.insert(ms(50), 9);
        let mut fired = Vec::new();
        w.expire(ms(100), |_, k| fired.push(k));
        assert_eq!(fired, vec![9]);
    }

    #[test]
    fn next_deadline_sees_the_nearest_slot() {
        let mut w = TimerWheel::new();
        assert_eq!(w.next_deadline(ms(0), 64), None);
        w.insert(ms(40), 1);
        w.insert(ms(20), 2);
        assert_eq!(w.next_deadline(ms(0), 64), Some(ms(20)));
        assert_eq!(w.next_deadline(ms(0), 2), None);
    }
}
