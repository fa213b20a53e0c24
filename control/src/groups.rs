//! NetGroup bootstrapping, the "server channel" (digest §1.14): a client joins a group on a
//! flow with `GC` metadata, and the server tells it about members already there; the client
//! then reaches them by P2P rendezvous (digest §1.13). Cumulus's rules, which its users' groups
//! are tuned for:
//!
//! - a newcomer hears of the [`NEWEST`] most recent members and of one older member picked at
//!   random;
//! - when a member leaves, the member that followed it in join order hears of the member
//!   [`STITCH_DISTANCE`] places before that one, which keeps the group stitched together.
//!
//! Members are kept in join order. Memory is bounded by the sessions: each may hold at most
//! [`MAX_GROUPS_PER_SESSION`] memberships.

use std::collections::{BTreeMap, HashMap};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ids::SERVER_SESSION;
/// Length of a group ID and of a peer ID (SHA-256).
pub use rtmfp::flash::netgroup::GROUP_ID_LEN as ID_LEN;
/// How many of the most recent members a newcomer hears of (Cumulus: 5).
pub const NEWEST: usize = 5;
/// When a member leaves, its follower hears of the member this many places before the follower
/// (Cumulus: the "6th preceding", counting the follower).
pub const STITCH_DISTANCE: usize = 5;
/// Most groups one session may be in at once (one per `GC` flow); more joins are ignored.
pub const MAX_GROUPS_PER_SESSION: usize = 16;

/// Most members the applications may add at once, over all groups; more joins are ignored.
pub const MAX_SERVER_MEMBERS: usize = 65_536;

/// A member of a group: a session's `GC` flow, and the session's peer ID. The applications' own
/// members (`cumulus.groups:join`, a peer the server knows of, on another server say) have
/// [`SERVER_SESSION`] and a flow number of their own; they are told nothing (there is no one
/// to tell), and count against [`MAX_SERVER_MEMBERS`] rather than [`MAX_GROUPS_PER_SESSION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// The session.
    pub session: u32,
    /// Its `GC` flow.
    pub flow: u64,
    /// Its peer ID.
    pub peer_id: [u8; ID_LEN],
}

/// Tell a member (its session and `GC` flow) about other members (their peer IDs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introduction {
    /// The session told.
    pub session: u32,
    /// Its `GC` flow.
    pub flow: u64,
    /// The members it hears of, in order.
    pub peers: Vec<[u8; ID_LEN]>,
}

#[derive(Debug, Default)]
struct Group {
    /// Members by join number: the order they joined in.
    members: BTreeMap<u64, Member>,
    next: u64,
}

/// Every group with members.
#[derive(Debug)]
pub struct Groups {
    groups: HashMap<[u8; ID_LEN], Group>,
    /// Where each `GC` flow is a member: its group and join number.
    memberships: HashMap<(u32, u64), ([u8; ID_LEN], u64)>,
    /// The `GC` flows of each session that is in a group.
    flows: HashMap<u32, Vec<u64>>,
    /// Picks the random older member.
    rng: ChaCha8Rng,
}

impl Groups {
    /// No groups; `seed` drives the choice of the random older member.
    pub fn new(seed: u64) -> Groups {
        Groups {
            groups: HashMap::new(),
            memberships: HashMap::new(),
            flows: HashMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Groups with members.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether no group has members.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The group the `GC` flow `flow` of `session` is in.
    pub fn group_of(&self, session: u32, flow: u64) -> Option<[u8; ID_LEN]> {
        self.memberships.get(&(session, flow)).map(|m| m.0)
    }

    /// The groups `session` is in (one per `GC` flow).
    pub fn groups_of(&self, session: u32) -> Vec<[u8; ID_LEN]> {
        self.flows
            .get(&session)
            .map(|flows| {
                flows
                    .iter()
                    .filter_map(|&f| self.group_of(session, f))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Members of `group`, in join order.
    pub fn members(&self, group: &[u8; ID_LEN]) -> Vec<Member> {
        self.groups
            .get(group)
            .map(|g| g.members.values().copied().collect())
            .unwrap_or_default()
    }

    fn random(&mut self, below: usize) -> usize {
        let r = self.rng.next_u64();
        usize::try_from(r % u64::try_from(below.max(1)).unwrap_or(1)).unwrap_or(0)
    }

    /// `member` joins `group` on its `GC` flow (a flow that was in a group leaves it first):
    /// what it (and, for a flow that left another group, others) must be told. A session is
    /// in a group once: a second flow joining it is not a member (as Cumulus has it).
    pub fn join(&mut self, member: Member, group: [u8; ID_LEN]) -> Vec<Introduction> {
        let mut out = self.leave(member.session, member.flow);
        let flows = self.flows.get(&member.session).map_or(0, Vec::len);
        let refused = if member.session == SERVER_SESSION {
            flows >= MAX_SERVER_MEMBERS
        } else {
            flows >= MAX_GROUPS_PER_SESSION || self.groups_of(member.session).contains(&group)
        };
        if refused {
            return out;
        }
        let mut peers: Vec<[u8; ID_LEN]> = Vec::with_capacity(NEWEST + 1);
        let g = self.groups.entry(group).or_default();
        // The newest members, skipping the newcomer's own peer ID (another of its sessions).
        let mut visited = 0;
        let mut oldest_visited = None;
        for (&n, m) in g.members.iter().rev() {
            if peers.len() == NEWEST {
                break;
            }
            visited += 1;
            oldest_visited = Some(n);
            if m.peer_id != member.peer_id && !peers.contains(&m.peer_id) {
                peers.push(m.peer_id);
            }
        }
        // And one older member, at random.
        let older = g.members.len() - visited;
        if let Some(before) = oldest_visited.filter(|_| older > 0) {
            let pick = self.random(older);
            let g = self.groups.entry(group).or_default();
            if let Some(m) = g.members.range(..before).nth(pick).map(|(_, m)| *m) {
                if m.peer_id != member.peer_id && !peers.contains(&m.peer_id) {
                    peers.push(m.peer_id);
                }
            }
        }
        let g = self.groups.entry(group).or_default();
        let n = g.next;
        g.next += 1;
        g.members.insert(n, member);
        self.memberships
            .insert((member.session, member.flow), (group, n));
        self.flows
            .entry(member.session)
            .or_default()
            .push(member.flow);
        if !peers.is_empty() && member.session != SERVER_SESSION {
            out.push(Introduction {
                session: member.session,
                flow: member.flow,
                peers,
            });
        }
        out
    }

    /// The `GC` flow `flow` of `session` ended: it leaves its group, and the member that
    /// followed it hears of the member [`STITCH_DISTANCE`] places before that one.
    pub fn leave(&mut self, session: u32, flow: u64) -> Vec<Introduction> {
        let Some((group, n)) = self.memberships.remove(&(session, flow)) else {
            return Vec::new();
        };
        if let Some(list) = self.flows.get_mut(&session) {
            list.retain(|&f| f != flow);
            if list.is_empty() {
                self.flows.remove(&session);
            }
        }
        let Some(g) = self.groups.get_mut(&group) else {
            return Vec::new();
        };
        g.members.remove(&n);
        if g.members.is_empty() {
            self.groups.remove(&group);
            return Vec::new();
        }
        let Some((&next, follower)) = g.members.range(n..).next() else {
            return Vec::new();
        };
        let earlier = g
            .members
            .range(..next)
            .rev()
            .nth(STITCH_DISTANCE - 1)
            .map(|(_, m)| *m);
        match earlier {
            Some(m) if m.peer_id != follower.peer_id && follower.session != SERVER_SESSION => {
                vec![Introduction {
                    session: follower.session,
                    flow: follower.flow,
                    peers: vec![m.peer_id],
                }]
            }
            _ => Vec::new(),
        }
    }

    /// `session` ended: it leaves every group it was in.
    pub fn session_closed(&mut self, session: u32) -> Vec<Introduction> {
        let flows = self.flows.get(&session).cloned().unwrap_or_default();
        flows
            .into_iter()
            .flat_map(|f| self.leave(session, f))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: u8) -> Member {
        Member {
            session: u32::from(i),
            flow: 3,
            peer_id: [i; ID_LEN],
        }
    }

    const G: [u8; ID_LEN] = [0xEE; ID_LEN];

    #[test]
    fn the_servers_members_are_heard_of_and_told_nothing() {
        let mut g = Groups::new(7);
        let server = |handle: u64, id: u8| Member {
            session: SERVER_SESSION,
            flow: handle,
            peer_id: [id; ID_LEN],
        };
        assert!(g.join(member(1), G).is_empty());
        // Several of the server's members in one group (a session is in a group once), told
        // nothing themselves.
        assert!(g.join(server(1, 0xA1), G).is_empty());
        assert!(g.join(server(2, 0xA2), G).is_empty());
        assert_eq!(g.members(&G).len(), 3);
        // A newcomer hears of them as of any member.
        assert_eq!(
            g.join(member(2), G)[0].peers,
            [[0xA2; ID_LEN], [0xA1; ID_LEN], [1; ID_LEN]]
        );
        // Stitching after a departure never tells one of the server's: with eight members
        // before it, the one the server's member follows leaves.
        for i in 3..=8 {
            g.join(member(i), G);
        }
        assert!(g.join(server(3, 0xA3), G).is_empty());
        assert!(g.leave(8, 3).is_empty(), "the follower is the server's");
        // A client following a departed member of the server's is stitched as usual.
        g.join(member(9), G);
        let out = g.leave(SERVER_SESSION, 3);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].session, 9);
        // The server's members leave like any (release).
        assert!(g
            .leave(SERVER_SESSION, 1)
            .iter()
            .all(|t| t.session != SERVER_SESSION));
        assert!(g.group_of(SERVER_SESSION, 1).is_none());
    }

    #[test]
    fn a_newcomer_hears_of_the_five_newest_and_one_older_member() {
        let mut g = Groups::new(7);
        // The first member hears of nobody; the next ones of everyone before them.
        assert!(g.join(member(1), G).is_empty());
        assert_eq!(
            g.join(member(2), G),
            [Introduction {
                session: 2,
                flow: 3,
                peers: vec![[1; ID_LEN]]
            }]
        );
        for i in 3..=6 {
            let out = g.join(member(i), G);
            let expected: Vec<[u8; ID_LEN]> = (1..i).rev().map(|k| [k; ID_LEN]).collect();
            assert_eq!(out[0].peers, expected);
        }
        // With more than five before it: the five newest, newest first, then one older one.
        for i in 7..=20 {
            let out = g.join(member(i), G);
            let peers = &out[0].peers;
            assert_eq!(peers.len(), NEWEST + 1, "{peers:?}");
            let newest: Vec<[u8; ID_LEN]> = (i - 5..i).rev().map(|k| [k; ID_LEN]).collect();
            assert_eq!(peers[..NEWEST], newest[..]);
            assert!(
                peers[NEWEST][0] < i - 5,
                "an older member: {}",
                peers[NEWEST][0]
            );
        }
        // Over many joins, the random pick covers the older members.
        let mut picked = std::collections::HashSet::new();
        for i in 21..=120 {
            picked.insert(g.join(member(i), G)[0].peers[NEWEST][0]);
        }
        assert!(picked.len() > 20, "{picked:?}");
        assert_eq!(g.members(&G).len(), 120);
    }

    #[test]
    fn a_peer_is_not_told_about_itself_and_groups_are_apart() {
        let mut g = Groups::new(1);
        g.join(member(1), G);
        // Another session of peer 1 joins: nothing to hear of.
        let twin = Member {
            session: 99,
            ..member(1)
        };
        assert!(g.join(twin, G).is_empty());
        // Another group has its own members.
        assert!(g.join(member(2), [0x11; ID_LEN]).is_empty());
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn a_leaver_s_follower_hears_of_the_member_five_places_before_it() {
        let mut g = Groups::new(3);
        for i in 1..=10 {
            g.join(member(i), G);
        }
        // 7 leaves: its follower 8 hears of the member five places before 8 among those left
        // (1 2 3 4 5 6 8 …): 2.
        assert_eq!(
            g.leave(7, 3),
            [Introduction {
                session: 8,
                flow: 3,
                peers: vec![[2; ID_LEN]]
            }]
        );
        // Near the start there is no such member: nobody is told.
        assert!(g.leave(2, 3).is_empty());
        // The newest member leaving has no follower.
        assert!(g.leave(10, 3).is_empty());
        assert_eq!(g.members(&G).len(), 7);
        // A session that ends leaves every group; an emptied group is gone.
        g.join(member(50), [0x22; ID_LEN]);
        g.join(
            Member {
                flow: 4,
                ..member(50)
            },
            [0x33; ID_LEN],
        );
        assert_eq!(g.len(), 3);
        g.session_closed(50);
        assert_eq!(g.len(), 1);
        for i in [1u8, 3, 4, 5, 6, 8, 9] {
            g.session_closed(u32::from(i));
        }
        assert!(g.is_empty());
        assert!(g.memberships.is_empty() && g.flows.is_empty());
    }

    #[test]
    fn joining_again_moves_the_flow_and_memberships_are_bounded() {
        let mut g = Groups::new(5);
        g.join(member(1), G);
        // A second flow of the session into the same group is not a second member.
        g.join(
            Member {
                flow: 9,
                ..member(1)
            },
            G,
        );
        assert_eq!(g.members(&G).len(), 1);
        assert_eq!(g.group_of(1, 9), None);
        g.join(member(1), [0x44; ID_LEN]);
        assert!(g.members(&G).is_empty());
        assert_eq!(g.members(&[0x44; ID_LEN]).len(), 1);
        for f in 0..(MAX_GROUPS_PER_SESSION as u64 + 5) {
            g.join(
                Member {
                    flow: 100 + f,
                    ..member(2)
                },
                [f as u8; ID_LEN],
            );
        }
        assert_eq!(g.flows[&2].len(), MAX_GROUPS_PER_SESSION);
    }
}
