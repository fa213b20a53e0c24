//! A session's flows by ID: a vector kept sorted by flow ID.
//!
//! A session has a handful of flows (a NetConnection's control flow, one per NetStream), and
//! every packet it sends or receives walks them: for acks, probes, data, events and timers.
//! Kept inline in one sorted vector, the walk reads one contiguous block. A `BTreeMap` allocated
//! a node for eleven flows per map, whatever their number (some 3.5 KB for send flows), and
//! paid a tree descent for every lookup and range.
//!
//! Our send flow IDs only grow, so they are appended. Receive flow IDs are the far end's
//! choice; an insert out of order moves at most [`super::flows::MAX_RECEIVE_FLOWS`] entries.

use crate::ids::FlowId;

/// Room for flows a map keeps however few it holds: a session's usual handful.
const KEPT_ROOM: usize = 8;

/// Flows by ID, in ascending ID order.
#[derive(Debug, Clone)]
pub(crate) struct FlowMap<V> {
    entries: Vec<(FlowId, V)>,
}

impl<V> Default for FlowMap<V> {
    fn default() -> Self {
        FlowMap {
            entries: Vec::new(),
        }
    }
}

impl<V> FlowMap<V> {
    fn search(&self, id: FlowId) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&id, |e| e.0)
    }

    /// Flows held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forgets every flow.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Whether flow `id` is held.
    pub(crate) fn contains_key(&self, id: FlowId) -> bool {
        self.search(id).is_ok()
    }

    /// Every flow, in ID order.
    pub(crate) fn as_slice(&self) -> &[(FlowId, V)] {
        &self.entries
    }

    /// Flow `id`.
    pub(crate) fn get(&self, id: FlowId) -> Option<&V> {
        self.search(id).ok().map(|i| &self.entries[i].1)
    }

    /// Flow `id`, mutably.
    pub(crate) fn get_mut(&mut self, id: FlowId) -> Option<&mut V> {
        self.search(id).ok().map(|i| &mut self.entries[i].1)
    }

    /// Adds flow `id`, or replaces it and answers the old one.
    pub(crate) fn insert(&mut self, id: FlowId, value: V) -> Option<V> {
        match self.search(id) {
            Ok(i) => Some(core::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (id, value));
                None
            }
        }
    }

    /// Keeps the flows for which `keep` answers true, in order. When most are gone, their room
    /// is given back, so that a session that once had many flows does not hold it for life.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(FlowId, &mut V) -> bool) {
        self.entries.retain_mut(|(id, v)| keep(*id, v));
        let (len, room) = (self.entries.len(), self.entries.capacity());
        if room > KEPT_ROOM && len < room / 4 {
            self.entries.shrink_to((len * 2).max(KEPT_ROOM));
        }
    }

    /// The flows, in ID order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|e| &e.1)
    }

    /// The flows, mutably, in ID order.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|e| &mut e.1)
    }

    /// IDs and flows, mutably, in ID order.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (FlowId, &mut V)> {
        self.entries.iter_mut().map(|e| (e.0, &mut e.1))
    }

    /// The position (in ID order) of the first flow whose ID is `id` or above; [`Self::len`]
    /// when there is none.
    pub(crate) fn position_from(&self, id: FlowId) -> usize {
        self.entries.partition_point(|e| e.0 < id)
    }

    /// The flow at position `i` (in ID order) and its ID.
    pub(crate) fn at_mut(&mut self, i: usize) -> Option<(FlowId, &mut V)> {
        self.entries.get_mut(i).map(|e| (e.0, &mut e.1))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Retain(u8),
        Get(u8),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            1 => (2u8..8).prop_map(Op::Retain),
            4 => any::<u8>().prop_map(Op::Get),
            1 => Just(Op::Clear),
        ]
    }

    #[test]
    fn gives_back_the_room_of_flows_gone() {
        let mut m = FlowMap::default();
        for k in 0..200u64 {
            m.insert(FlowId(k), [0u8; 64]);
        }
        m.retain(|id, _| id.0 % 100 == 0);
        assert_eq!(m.len(), 2);
        assert!(
            m.entries.capacity() <= KEPT_ROOM,
            "{}",
            m.entries.capacity()
        );
        assert!(m.get(FlowId(100)).is_some());
    }

    proptest! {
        /// Any sequence of operations leaves the same contents, in the same order, as a
        /// `BTreeMap` given the same operations, and every answer on the way is the same.
        #[test]
        fn behaves_as_an_ordered_map(ops in proptest::collection::vec(op(), 0..200)) {
            let mut m = FlowMap::default();
            let mut model = BTreeMap::new();
            for o in ops {
                match o {
                    Op::Insert(k, v) => {
                        let id = FlowId(u64::from(k));
                        prop_assert_eq!(m.insert(id, v), model.insert(id, v));
                    }
                    Op::Retain(d) => {
                        m.retain(|id, v| (id.0 + u64::from(*v)) % u64::from(d) != 0);
                        model.retain(|id, v| (id.0 + u64::from(*v)) % u64::from(d) != 0);
                    }
                    Op::Get(k) => {
                        let id = FlowId(u64::from(k));
                        prop_assert_eq!(m.get(id), model.get(&id));
                        prop_assert_eq!(m.contains_key(id), model.contains_key(&id));
                        let at = m.position_from(id);
                        let expected = model.range(id..).next().map(|(k, v)| (*k, *v));
                        prop_assert_eq!(m.at_mut(at).map(|(k, v)| (k, *v)), expected);
                        if let (Some(a), Some(b)) = (m.get_mut(id), model.get_mut(&id)) {
                            *a = a.wrapping_add(1);
                            *b = b.wrapping_add(1);
                        }
                    }
                    Op::Clear => {
                        m.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(m.len(), model.len());
                let got = m.entries.clone();
                let want: Vec<(FlowId, u32)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
