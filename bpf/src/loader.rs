//! Loading the XDP program into the kernel (libbpf-rs) and filling its maps from a [`Filter`].
//! Attaching it to an interface and binding AF_XDP sockets come with the AF_XDP data plane.

use std::net::IpAddr;

use libbpf_rs::{MapCore, MapFlags, Object, ObjectBuilder, ProgramInput};

use crate::classify::{Filter, MAX_PORTS};
use crate::{NO_OBJECT_REASON, OBJECT, PROGRAM};

/// XDP actions (`enum xdp_action`, include/uapi/linux/bpf.h).
pub const XDP_DROP: u32 = 1;
/// See [`XDP_DROP`].
pub const XDP_PASS: u32 = 2;
/// See [`XDP_DROP`].
pub const XDP_REDIRECT: u32 = 4;

/// The program's per-CPU verdict counters, in the order of its `enum verdict`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerdictCounts {
    /// Passed to the kernel, not ours.
    pub pass: u64,
    /// Dropped: denied source.
    pub drop_denied: u64,
    /// Dropped: not RTMFP.
    pub drop_malformed: u64,
    /// Redirected to an AF_XDP socket.
    pub redirect: u64,
    /// Meant for an AF_XDP socket, but the queue had none: passed.
    pub redirect_empty: u64,
}

/// Why the program could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// This build has no program (no clang at build time).
    #[error("{0}")]
    NoObject(&'static str),
    /// The kernel or libbpf refused (no privileges: EPERM; an old kernel; a verifier error).
    #[error("loading the XDP program failed: {0}")]
    Kernel(#[from] libbpf_rs::Error),
    /// The object lacks a map or program this loader expects.
    #[error("the XDP object has no {0}")]
    Missing(&'static str),
}

/// The program, loaded and configured, not attached to any interface.
pub struct Loaded {
    object: Object,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").finish_non_exhaustive()
    }
}

/// Map value meaning "present" in the deny tries.
const DENIED: [u8; 1] = [1];

impl Loaded {
    /// Loads the built program and fills its configuration and deny lists from `filter`.
    pub fn load(filter: &Filter) -> Result<Loaded, LoadError> {
        let object = OBJECT.ok_or(LoadError::NoObject(NO_OBJECT_REASON))?;
        let open = ObjectBuilder::default().open_memory(object)?;
        let loaded = Loaded {
            object: open.load()?,
        };
        loaded.configure(filter)?;
        Ok(loaded)
    }

    fn map(&self, name: &'static str) -> Result<libbpf_rs::Map<'_>, LoadError> {
        self.object
            .maps()
            .find(|m| m.name() == name)
            .ok_or(LoadError::Missing(name))
    }

    fn configure(&self, filter: &Filter) -> Result<(), LoadError> {
        // struct config { __u16 ports[MAX_PORTS]; __u32 nports; }, native byte order.
        let mut config = [0u8; MAX_PORTS * 2 + 4];
        let ports: Vec<u16> = filter.ports.iter().take(MAX_PORTS).copied().collect();
        for (slot, port) in config.chunks_exact_mut(2).zip(&ports) {
            slot.copy_from_slice(&port.to_ne_bytes());
        }
        let n = u32::try_from(ports.len()).unwrap_or(0);
        config[MAX_PORTS * 2..].copy_from_slice(&n.to_ne_bytes());
        self.map("config")?
            .update(&0u32.to_ne_bytes(), &config, MapFlags::ANY)?;
        for prefix in &filter.deny {
            // struct { __u32 prefixlen; address in network order } (BPF_MAP_TYPE_LPM_TRIE).
            let (map, key) = match prefix.addr {
                IpAddr::V4(a) => {
                    let mut key = u32::from(prefix.len.min(32)).to_ne_bytes().to_vec();
                    key.extend_from_slice(&a.octets());
                    ("deny_v4", key)
                }
                IpAddr::V6(a) => {
                    let mut key = u32::from(prefix.len.min(128)).to_ne_bytes().to_vec();
                    key.extend_from_slice(&a.octets());
                    ("deny_v6", key)
                }
            };
            self.map(map)?.update(&key, &DENIED, MapFlags::ANY)?;
        }
        Ok(())
    }

    /// Runs the program once on `frame` in the kernel (`BPF_PROG_TEST_RUN`) and answers its
    /// XDP action. The kernel needs at least an Ethernet header.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, LoadError> {
        let program = self
            .object
            .progs_mut()
            .find(|p| p.name() == PROGRAM)
            .ok_or(LoadError::Missing("program"))?;
        let input = ProgramInput {
            data_in: Some(frame),
            ..ProgramInput::default()
        };
        Ok(program.test_run(input)?.return_value)
    }

    /// The verdict counters, summed over CPUs.
    pub fn counts(&self) -> Result<VerdictCounts, LoadError> {
        let map = self.map("verdicts")?;
        let mut totals = [0u64; 5];
        for (i, total) in totals.iter_mut().enumerate() {
            let key = u32::try_from(i).unwrap_or(0).to_ne_bytes();
            if let Some(per_cpu) = map.lookup_percpu(&key, MapFlags::ANY)? {
                *total = per_cpu
                    .iter()
                    .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()))
                    .map(u64::from_ne_bytes)
                    .sum();
            }
        }
        Ok(VerdictCounts {
            pass: totals[0],
            drop_denied: totals[1],
            drop_malformed: totals[2],
            redirect: totals[3],
            redirect_empty: totals[4],
        })
    }
}
