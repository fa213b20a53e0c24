//! The server's blacklist as the workers apply it: sources whose datagrams are dropped before
//! anything else is looked at. The XDP program applies the same list in the kernel (its LPM
//! tries); the workers apply it to what reaches them through their sockets, so that the list
//! holds in socket mode too.
//!
//! Changes are rare and the packet path must not lock: the list is replaced whole, behind a
//! generation counter that each worker reads once per loop turn, taking a new copy (an `Arc`)
//! only when it moved.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use updraft_bpf::Prefix;

/// Most prefixes in the list: the size of the XDP program's deny maps (`MAX_DENY` in
/// `bpf/src/xdp_rtmfp.bpf.c`).
pub const MAX_DENY: usize = 65_536;

/// Why the list refused a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the deny list is full ({MAX_DENY} prefixes)")]
pub struct DenyListFull;

/// The shared list.
#[derive(Debug)]
pub struct DenyList {
    list: RwLock<Arc<[Prefix]>>,
    generation: AtomicU64,
}

impl DenyList {
    /// A list holding `initial` (duplicates once, at most [`MAX_DENY`]).
    pub fn new(initial: &[Prefix]) -> DenyList {
        let mut seen = std::collections::HashSet::new();
        let list: Vec<Prefix> = initial
            .iter()
            .filter(|p| seen.insert(**p))
            .take(MAX_DENY)
            .copied()
            .collect();
        DenyList {
            list: RwLock::new(list.into()),
            generation: AtomicU64::new(0),
        }
    }

    /// Adds `prefix` (nothing changes if it is there already).
    pub fn deny(&self, prefix: Prefix) -> Result<(), DenyListFull> {
        self.edit(|list| {
            if list.contains(&prefix) {
                return Ok(());
            }
            if list.len() >= MAX_DENY {
                return Err(DenyListFull);
            }
            list.push(prefix);
            Ok(())
        })
    }

    /// Removes `prefix`, the exact entry (a wider or narrower one stays).
    pub fn allow(&self, prefix: Prefix) {
        let _ = self.edit(|list| {
            list.retain(|p| *p != prefix);
            Ok(())
        });
    }

    /// The prefixes now in the list.
    pub fn prefixes(&self) -> Arc<[Prefix]> {
        Arc::clone(&self.list.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn edit(
        &self,
        f: impl FnOnce(&mut Vec<Prefix>) -> Result<(), DenyListFull>,
    ) -> Result<(), DenyListFull> {
        let mut guard = self.list.write().unwrap_or_else(|e| e.into_inner());
        let mut list = guard.to_vec();
        f(&mut list)?;
        *guard = list.into();
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }
}

/// A worker's copy of the list.
#[derive(Debug)]
pub struct DenyView {
    generation: u64,
    list: Arc<[Prefix]>,
}

impl DenyView {
    /// The list as it is now.
    pub fn of(shared: &DenyList) -> DenyView {
        DenyView {
            generation: shared.generation.load(Ordering::Acquire),
            list: shared.prefixes(),
        }
    }

    /// Takes a new copy if the list changed since the last (one atomic load otherwise).
    pub fn refresh(&mut self, shared: &DenyList) {
        if shared.generation.load(Ordering::Acquire) != self.generation {
            *self = DenyView::of(shared);
        }
    }

    /// Whether datagrams from `ip` are dropped (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn denies(&self, ip: IpAddr) -> bool {
        if self.list.is_empty() {
            return false;
        }
        let ip = ip.to_canonical();
        self.list.iter().any(|p| p.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn a_view_follows_the_list_and_matches_by_prefix() {
        let list = DenyList::new(&[p("192.0.2.0/24"), p("192.0.2.0/24")]);
        assert_eq!(list.prefixes().len(), 1, "duplicates once");
        let mut view = DenyView::of(&list);
        assert!(view.denies("192.0.2.9".parse().unwrap()));
        assert!(
            view.denies("::ffff:192.0.2.9".parse().unwrap()),
            "mapped is IPv4"
        );
        assert!(!view.denies("198.51.100.1".parse().unwrap()));

        list.deny(p("2001:db8::/32")).unwrap();
        assert!(
            !view.denies("2001:db8::1".parse().unwrap()),
            "not before a refresh"
        );
        view.refresh(&list);
        assert!(view.denies("2001:db8::1".parse().unwrap()));

        list.allow(p("192.0.2.0/24"));
        list.allow(p("10.0.0.0/8"));
        view.refresh(&list);
        assert!(!view.denies("192.0.2.9".parse().unwrap()));
        assert_eq!(list.prefixes().len(), 1);
    }

    #[test]
    fn the_list_is_bounded() {
        let all: Vec<Prefix> = (0..=MAX_DENY)
            .map(|i| Prefix {
                addr: IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
                len: 32,
            })
            .collect();
        let list = DenyList::new(&all);
        assert_eq!(
            list.prefixes().len(),
            MAX_DENY,
            "the start-up list is cut at the bound"
        );
        assert_eq!(list.deny(p("203.0.113.1")), Err(DenyListFull));
        assert_eq!(list.deny(p("10.0.0.0/32")), Ok(()), "already there");
    }
}
