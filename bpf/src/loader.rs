//! Loading the XDP program into the kernel (libbpf-rs), filling its maps from a [`Filter`],
//! registering AF_XDP sockets in its XSKMAP, and attaching it to an interface by a bpf_link
//! (which the kernel removes when the process dies, crashed or not).

use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd, RawFd};

use libbpf_rs::{MapCore, MapFlags, Object, ObjectBuilder, ProgramInput};

use crate::classify::{Filter, Prefix, MAX_PORTS};
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

/// Most queues the XSKMAP holds (`MAX_QUEUES` in the program).
pub const MAX_QUEUES: u32 = 64;

/// How the program runs on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver, before any socket buffer exists (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// In the generic hook of the kernel stack, after the socket buffer is built, on any
    /// device (`XDP_FLAGS_SKB_MODE`).
    Generic,
}

impl XdpMode {
    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }

    fn flags(self) -> u32 {
        match self {
            XdpMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
        }
    }
}

/// The program attached to an interface: dropping it detaches the program.
#[derive(Debug)]
pub struct Attached {
    /// The bpf_link; closing it detaches.
    _link: OwnedFd,
    mode: XdpMode,
}

impl Attached {
    /// Native or generic.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }
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
    /// Attaching to the interface failed (no XDP support in this mode, or one attached already).
    #[error("attaching the XDP program in {} mode failed: {}", .0.name(), .1)]
    Attach(XdpMode, std::io::Error),
    /// A queue number past the XSKMAP.
    #[error("queue {0} is past the XSKMAP ({MAX_QUEUES} queues)")]
    Queue(u32),
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
            self.deny(prefix)?;
        }
        Ok(())
    }

    fn deny_key(prefix: &Prefix) -> (&'static str, Vec<u8>) {
        // struct { __u32 prefixlen; address in network order } (BPF_MAP_TYPE_LPM_TRIE).
        match prefix.addr {
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
        }
    }

    /// Adds `prefix` to the deny list: its sources are dropped from now on.
    pub fn deny(&self, prefix: &Prefix) -> Result<(), LoadError> {
        let (map, key) = Self::deny_key(prefix);
        self.map(map)?.update(&key, &DENIED, MapFlags::ANY)?;
        Ok(())
    }

    /// Removes `prefix` from the deny list (no error when it was not there).
    pub fn allow(&self, prefix: &Prefix) -> Result<(), LoadError> {
        let (map, key) = Self::deny_key(prefix);
        let map = self.map(map)?;
        if map.lookup(&key, MapFlags::ANY)?.is_some() {
            map.delete(&key)?;
        }
        Ok(())
    }

    /// Registers the AF_XDP socket `fd` for receive queue `queue`: the program redirects
    /// that queue's RTMFP datagrams to it.
    pub fn set_socket(&self, queue: u32, fd: RawFd) -> Result<(), LoadError> {
        if queue >= MAX_QUEUES {
            return Err(LoadError::Queue(queue));
        }
        let value = u32::try_from(fd).map_err(|_| LoadError::Queue(queue))?;
        self.map("xsks")?
            .update(&queue.to_ne_bytes(), &value.to_ne_bytes(), MapFlags::ANY)?;
        Ok(())
    }

    /// Attaches the program to interface `ifindex` in `mode` with a bpf_link. Call it last,
    /// once the sockets are registered, so that a failure before leaves nothing on the
    /// interface.
    pub fn attach(&self, ifindex: u32, mode: XdpMode) -> Result<Attached, LoadError> {
        let program = self
            .object
            .progs()
            .find(|p| p.name() == PROGRAM)
            .ok_or(LoadError::Missing("program"))?;
        let link = crate::link::xdp_link_create(program.as_fd(), ifindex, mode.flags())
            .map_err(|e| LoadError::Attach(mode, e))?;
        Ok(Attached { _link: link, mode })
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
