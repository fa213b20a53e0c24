//! Session IDs that name their owner: `[worker:8 | generation:8 | slot:16]`.
//!
//! The server chooses the session ID that clients put on every packet (RFC 7016 §2.2.2,
//! RHello/RIKeying "responder session ID"), so it can encode which worker owns the session.
//! A worker finds a session by array index and a generation check: no hashing, nothing to
//! flood. The control plane allocates; a worker frees a slot by reporting the session closed.

/// The "session" of what the server itself does where sessions otherwise stand: its own
/// publications (`cumulus:publish`) and the group members its applications add
/// (`cumulus.groups:join`). 0 is no session's ID (it marks startup packets, RFC 7016 §2.2.2),
/// and names worker 0.
pub const SERVER_SESSION: u32 = 0;

/// Bits of the slot field.
const SLOT_BITS: u32 = 16;
/// Bits of the generation field.
const GENERATION_BITS: u32 = 8;
/// Sessions one worker can hold at once.
pub const SLOTS_PER_WORKER: usize = 1 << SLOT_BITS;
/// Most workers the layout can name.
pub const MAX_WORKERS: usize = 1 << 8;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

/// The parts of a session ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionIdParts {
    /// The owning worker.
    pub worker: u8,
    /// Bumped each time the slot is reused, so a stale ID misses.
    pub generation: u8,
    /// Index in the worker's session table.
    pub slot: u16,
}

impl SessionIdParts {
    /// Splits an ID.
    pub fn of(id: u32) -> SessionIdParts {
        SessionIdParts {
            worker: (id >> (SLOT_BITS + GENERATION_BITS)) as u8,
            generation: ((id >> SLOT_BITS) & GENERATION_MASK) as u8,
            slot: (id & SLOT_MASK) as u16,
        }
    }

    /// Joins the parts.
    pub fn id(self) -> u32 {
        (u32::from(self.worker) << (SLOT_BITS + GENERATION_BITS))
            | (u32::from(self.generation) << SLOT_BITS)
            | u32::from(self.slot)
    }
}

/// Allocates the session IDs of one worker. Generations start at 1, so no ID is ever 0 (the
/// startup pseudo-session, RFC 7016 §2.2.2).
#[derive(Debug, Clone)]
pub struct IdAllocator {
    worker: u8,
    /// Generation of each slot used so far (0: never used).
    generations: Vec<u8>,
    /// Free slots below `generations.len()`.
    free: Vec<u16>,
    in_use: Vec<bool>,
    live: usize,
}

impl IdAllocator {
    /// An allocator for `worker`.
    pub fn new(worker: u8) -> IdAllocator {
        IdAllocator {
            worker,
            generations: Vec::new(),
            free: Vec::new(),
            in_use: Vec::new(),
            live: 0,
        }
    }

    /// Sessions allocated and not freed.
    pub fn live(&self) -> usize {
        self.live
    }

    /// A fresh ID, or `None` when the worker is full.
    pub fn allocate(&mut self) -> Option<u32> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None if self.generations.len() < SLOTS_PER_WORKER => {
                self.generations.push(0);
                self.in_use.push(false);
                (self.generations.len() - 1) as u16
            }
            None => return None,
        };
        let i = usize::from(slot);
        let mut g = self.generations[i].wrapping_add(1);
        if g == 0 {
            g = 1;
        }
        self.generations[i] = g;
        self.in_use[i] = true;
        self.live += 1;
        Some(
            SessionIdParts {
                worker: self.worker,
                generation: g,
                slot,
            }
            .id(),
        )
    }

    /// Marks `id` as in use (a worker reporting its live sessions after a control restart).
    /// Answers false when the ID is not this worker's or is already in use.
    pub fn claim(&mut self, id: u32) -> bool {
        let p = SessionIdParts::of(id);
        if p.worker != self.worker || p.generation == 0 {
            return false;
        }
        let i = usize::from(p.slot);
        while self.generations.len() <= i {
            self.free.push(self.generations.len() as u16);
            self.generations.push(0);
            self.in_use.push(false);
        }
        if self.in_use[i] {
            return false;
        }
        self.free.retain(|&s| s != p.slot);
        self.generations[i] = p.generation;
        self.in_use[i] = true;
        self.live += 1;
        true
    }

    /// Frees `id`; a stale or foreign ID is ignored. Answers whether it was live.
    pub fn free(&mut self, id: u32) -> bool {
        let p = SessionIdParts::of(id);
        let i = usize::from(p.slot);
        if p.worker != self.worker
            || i >= self.generations.len()
            || !self.in_use[i]
            || self.generations[i] != p.generation
        {
            return false;
        }
        self.in_use[i] = false;
        self.free.push(p.slot);
        self.live -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn parts_round_trip_and_never_zero() {
        let p = SessionIdParts {
            worker: 3,
            generation: 7,
            slot: 0xBEEF,
        };
        assert_eq!(p.id(), 0x0307_BEEF);
        assert_eq!(SessionIdParts::of(p.id()), p);
        let mut a = IdAllocator::new(0);
        for _ in 0..1000 {
            let id = a.allocate().unwrap();
            assert_ne!(id, 0);
            assert!(a.free(id));
        }
    }

    #[test]
    fn reuse_changes_generation_and_stale_frees_are_ignored() {
        let mut a = IdAllocator::new(1);
        let first = a.allocate().unwrap();
        assert!(a.free(first));
        let second = a.allocate().unwrap();
        assert_eq!(
            SessionIdParts::of(first).slot,
            SessionIdParts::of(second).slot
        );
        assert_ne!(first, second);
        assert!(!a.free(first), "a stale ID must not free the new session");
        assert!(!a.free(SessionIdParts::of(second).id() ^ (1 << 24)));
        assert_eq!(a.live(), 1);
    }

    #[test]
    fn fills_exactly_one_worker_and_ids_are_unique() {
        let mut a = IdAllocator::new(2);
        let mut seen = HashSet::new();
        while let Some(id) = a.allocate() {
            assert_eq!(SessionIdParts::of(id).worker, 2);
            assert!(seen.insert(id));
        }
        assert_eq!(seen.len(), SLOTS_PER_WORKER);
        assert_eq!(a.live(), SLOTS_PER_WORKER);
    }

    #[test]
    fn claims_rebuild_state_after_a_restart() {
        let mut old = IdAllocator::new(4);
        let ids: Vec<u32> = (0..10).map(|_| old.allocate().unwrap()).collect();
        let mut new = IdAllocator::new(4);
        for &id in &ids[5..] {
            assert!(new.claim(id));
            assert!(!new.claim(id));
        }
        assert!(!new.claim(SessionIdParts::of(ids[0]).id() ^ (1 << 24)));
        for _ in 0..100 {
            let id = new.allocate().unwrap();
            assert!(!ids[5..].contains(&id));
        }
        assert_eq!(new.live(), 105);
    }
}
