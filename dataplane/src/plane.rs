//! Starting a data plane: one `SO_REUSEPORT` socket and one pinned thread per worker, an
//! AF_XDP socket per worker when XDP is chosen, the handoff queues between workers, and the
//! links to a control plane.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use rtmfp::session::SessionConfig;
use socket2::{Domain, Socket, Type};

use crate::counters::WorkerCounters;
use crate::io::{bind_reuseport, canonical, MmsgSocket};
use crate::worker::{
    handoff_queues, media_queues, DumpHook, MediaLifetimes, Shared, Worker, WorkerSetup,
};
use crate::xdp::{self, IoMode, PacketIo, XdpError, XdpSetup, XskIo};
use updraft_bpf::Prefix;

/// How to start the data plane.
#[derive(Debug, Clone)]
pub struct PlaneConfig {
    /// Address to serve (port 0 picks one port for every worker).
    pub bind: SocketAddr,
    /// Worker threads (at least 1, at most 255).
    pub workers: usize,
    /// Kernel socket buffer per worker socket, in bytes.
    pub udp_buffer: Option<usize>,
    /// Session settings.
    pub session: SessionConfig,
    /// Pin worker `i` to core `i` (modulo the cores there are).
    pub pin: bool,
    /// Seed for per-worker randomness.
    pub seed: [u8; 32],
    /// Where workers dump packets (`--dump`), if anywhere.
    pub dump: Option<DumpHook>,
    /// Sockets, AF_XDP, or the best that works.
    pub mode: IoMode,
    /// The interface for AF_XDP (default: the one holding the bound address).
    pub interface: Option<String>,
    /// The blacklist at start: sources whose datagrams the XDP program and the workers drop.
    pub deny: Vec<Prefix>,
    /// Lifetimes of the audio and video sent to subscribers.
    pub lifetimes: MediaLifetimes,
    /// Preferred busy polling of the AF_XDP sockets, in microseconds (`xdpBusyPoll`): the
    /// workers run their queue's NAPI poll in their own syscalls.
    pub busy_poll: Option<u32>,
}

/// Why a blacklist change failed.
#[derive(Debug, thiserror::Error)]
pub enum DenyError {
    /// The list holds [`crate::deny::MAX_DENY`] prefixes already.
    #[error(transparent)]
    Full(#[from] crate::deny::DenyListFull),
    /// The XDP program's map refused it.
    #[error("the XDP program's deny map: {0}")]
    Xdp(#[from] updraft_bpf::loader::LoadError),
}

/// A running data plane.
pub struct DataPlane {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    link_tx: Vec<Sender<Socket>>,
    local_addr: SocketAddr,
    /// The XDP program and its attachment, in XDP mode (dropped last: detaches).
    xdp: Option<XdpProgram>,
    io_description: String,
}

/// What stays of an XDP set-up while the workers run on its sockets.
struct XdpProgram {
    program: updraft_bpf::loader::Loaded,
    _attached: updraft_bpf::loader::Attached,
}

/// Kernel buffer of each end of a control link, in bytes.
const LINK_BUFFER: usize = 4 << 20;
/// Most workers: the owner byte of a session ID.
pub const MAX_WORKERS: usize = 255;

impl DataPlane {
    /// Binds the sockets and starts the workers.
    pub fn start(config: PlaneConfig) -> io::Result<DataPlane> {
        let workers = config.workers.clamp(1, MAX_WORKERS);
        let first = bind_reuseport(config.bind, config.udp_buffer)?;
        let local_addr = first.local_addr()?;
        let sock = socket2::SockRef::from(&first);
        tracing::info!(
            receive = sock.recv_buffer_size().unwrap_or(0),
            send = sock.send_buffer_size().unwrap_or(0),
            "worker socket buffers (bytes, as the kernel counts them)"
        );
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(bind_reuseport(local_addr, config.udp_buffer)?);
        }
        let (xdp, io_description) = Self::choose_io(&config, local_addr, workers)?;
        let (mut xsks, xdp) = match xdp {
            Some(setup) => (
                setup.sockets.into_iter(),
                Some(XdpProgram {
                    program: setup.program,
                    _attached: setup.attached,
                }),
            ),
            None => (Vec::new().into_iter(), None),
        };
        let shared = Arc::new(Shared::new(workers)?);
        for prefix in &config.deny {
            shared.deny.deny(*prefix).map_err(io::Error::other)?;
        }
        if let Ok(mut report) = shared.io.lock() {
            report.xdp = xdp.is_some();
            report.description.clone_from(&io_description);
        }
        let (handoff_rx, handoff_tx) = handoff_queues(workers);
        let (media_rx, media_tx) = media_queues(workers);
        let mut media_rx = media_rx.into_iter();
        let cores = if config.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let epoch = std::time::Instant::now();
        let mut threads = Vec::new();
        let mut link_tx = Vec::new();
        for (i, (socket, handoff_in)) in sockets.into_iter().zip(handoff_rx).enumerate() {
            let (tx, rx) = crossbeam_channel::bounded(1);
            link_tx.push(tx);
            let mut seed = config.seed;
            seed[0] ^= i as u8;
            let setup = WorkerSetup {
                index: i as u8,
                io: match xsks.next() {
                    Some(xsk) => PacketIo::Xdp(Box::new(XskIo::new(
                        xsk,
                        MmsgSocket::new(socket)?,
                        local_addr.port(),
                    )?)),
                    None => PacketIo::Socket(MmsgSocket::new(socket)?),
                },
                handoff_in,
                handoff_out: handoff_tx.clone(),
                links: rx,
                shared: Arc::clone(&shared),
                session_config: config.session.clone(),
                seed,
                epoch,
                dump: config.dump,
                media_in: media_rx
                    .next()
                    .ok_or_else(|| io::Error::other("a media queue per worker"))?,
                media_out: media_tx.clone(),
                lifetimes: config.lifetimes,
            };
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            let handle = std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            tracing::debug!(worker = i, "could not pin to a core");
                        }
                    }
                    Worker::new(setup).run()
                })?;
            threads.push(handle);
        }
        Ok(DataPlane {
            shared,
            threads,
            link_tx,
            local_addr,
            xdp,
            io_description,
        })
    }

    /// Sets up AF_XDP when the mode asks for it and it works; answers the set-up (none for
    /// sockets) and the line that says what was chosen and why. Only `--mode xdp` fails.
    fn choose_io(
        config: &PlaneConfig,
        local_addr: SocketAddr,
        workers: usize,
    ) -> io::Result<(Option<XdpSetup>, String)> {
        const SOCKETS: &str = "sockets (recvmmsg/sendmmsg)";
        if config.mode == IoMode::Socket {
            return Ok((None, format!("{SOCKETS}: --mode socket")));
        }
        // A wildcard bind names no interface; `auto` does not take over the default route's
        // interface unasked (`--interface`, `--bind ADDR` or `--mode xdp` do).
        if config.mode == IoMode::Auto
            && config.interface.is_none()
            && canonical(local_addr).ip().is_unspecified()
        {
            return Ok((
                None,
                format!(
                    "{SOCKETS}: bound to a wildcard address (give --interface, --bind an \
                     address or --mode xdp for AF_XDP)"
                ),
            ));
        }
        let attempt = xdp::choose_interface(config.interface.as_deref(), local_addr.ip()).and_then(
            |interface| {
                if interface.loopback && config.mode == IoMode::Auto {
                    return Err(XdpError::NoInterface(format!(
                        "{} is the loopback device, where XDP gains nothing",
                        interface.name
                    )));
                }
                xdp::setup(
                    interface,
                    local_addr.port(),
                    workers,
                    &config.deny,
                    config.busy_poll,
                )
            },
        );
        match attempt {
            Ok(setup) => {
                let line = setup.describe();
                Ok((Some(setup), line))
            }
            Err(e) if config.mode == IoMode::Xdp => {
                Err(io::Error::other(format!("--mode xdp: {e}")))
            }
            Err(e) => Ok((None, format!("{SOCKETS}: XDP unavailable: {e}"))),
        }
    }

    /// What packet I/O the workers use, and why (one line, for the start-up log).
    pub fn io_description(&self) -> &str {
        &self.io_description
    }

    /// Whether the workers run on AF_XDP.
    pub fn is_xdp(&self) -> bool {
        self.xdp.is_some()
    }

    /// Reads the XDP program's verdict counters into the shared report (for the metrics); a
    /// supervisor calls it now and then. Nothing to do in socket mode.
    pub fn refresh_verdicts(&self) {
        let Some(x) = &self.xdp else {
            return;
        };
        match x.program.counts() {
            Ok(counts) => {
                if let Ok(mut report) = self.shared.io.lock() {
                    report.verdicts = Some(counts);
                }
            }
            Err(e) => tracing::debug!(error = %e, "XDP verdict counters unreadable"),
        }
    }

    /// Adds `prefix` to the blacklist: the XDP program drops its datagrams in the kernel, and
    /// the workers drop those that reach their sockets (all of them, in socket mode).
    pub fn deny(&self, prefix: &Prefix) -> Result<(), DenyError> {
        self.shared.deny.deny(*prefix)?;
        if let Some(x) = &self.xdp {
            x.program.deny(prefix)?;
        }
        Ok(())
    }

    /// Applies the blacklist edits the applications asked for since the last call (a
    /// supervisor calls it now and then), logging each.
    pub fn apply_blacklist_requests(&self) {
        let requests = match self.shared.blacklist_requests.lock() {
            Ok(mut r) if !r.is_empty() => std::mem::take(&mut *r),
            _ => return,
        };
        for (add, prefix) in requests {
            let result = if add {
                self.deny(&prefix)
            } else {
                self.allow(&prefix)
            };
            match result {
                Ok(()) if add => tracing::info!(%prefix, "blacklist: added by an application"),
                Ok(()) => tracing::info!(%prefix, "blacklist: removed by an application"),
                Err(e) => tracing::warn!(%prefix, error = %e, "blacklist: edit failed"),
            }
        }
    }

    /// Removes `prefix` (that exact entry) from the blacklist.
    pub fn allow(&self, prefix: &Prefix) -> Result<(), DenyError> {
        self.shared.deny.allow(*prefix);
        if let Some(x) = &self.xdp {
            x.program.allow(prefix)?;
        }
        Ok(())
    }

    /// The address the workers serve.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// Makes one `SOCK_SEQPACKET` pair per worker, gives each worker its end, and returns the
    /// control plane's ends in worker order.
    pub fn connect_control(&self) -> io::Result<Vec<Socket>> {
        let mut control_ends = Vec::new();
        for (i, tx) in self.link_tx.iter().enumerate() {
            let (worker_end, control_end) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None)?;
            // Room for bursts (hundreds of connects or plays at once) in both directions.
            for end in [&worker_end, &control_end] {
                crate::sys::force_buffer_sizes(std::os::fd::AsRawFd::as_raw_fd(end), LINK_BUFFER)?;
            }
            // A worker that has not taken its previous link yet gets the newest one.
            let _ = tx.try_send(worker_end);
            self.shared.wakers[i].wake();
            control_ends.push(control_end);
        }
        Ok(control_ends)
    }

    /// Each worker's counters.
    pub fn counters(&self) -> Vec<WorkerCounters> {
        self.shared.counters.iter().map(|c| c.load()).collect()
    }

    /// The state workers share (for a metrics reader that outlives this handle's borrow).
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Asks every worker to close its sessions and stop.
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }

    /// Whether every worker has returned.
    pub fn finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Waits for the workers; the first error any returned.
    pub fn join(self) -> io::Result<()> {
        let mut result = Ok(());
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = result.and(Err(e)),
                Err(_) => result = result.and(Err(io::Error::other("a worker panicked"))),
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Waits (5 s at most) until `f` holds for the summed counters.
    fn until(plane: &DataPlane, f: impl Fn(&WorkerCounters) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let mut sum = WorkerCounters::default();
            for c in plane.counters() {
                sum.drop_denied += c.drop_denied;
                sum.drop_unknown_session += c.drop_unknown_session;
            }
            if f(&sum) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn the_blacklist_drops_sources_on_sockets_and_changes_at_run_time() {
        let plane = DataPlane::start(PlaneConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            workers: 1,
            udp_buffer: None,
            session: SessionConfig::default(),
            pin: false,
            seed: [7; 32],
            dump: None,
            mode: IoMode::Socket,
            interface: None,
            deny: vec!["192.0.2.0/24".parse().unwrap()],
            lifetimes: Default::default(),
            busy_poll: None,
        })
        .unwrap();
        let to = plane.local_addr();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // RTMFP-shaped, for a session nobody has: counted as unknown when it gets through.
        let datagram = [0x5Au8; 36];
        let send = || client.send_to(&datagram, to).unwrap();

        send();
        assert!(until(&plane, |c| c.drop_unknown_session == 1
            && c.drop_denied == 0));
        let me: Prefix = "127.0.0.1".parse().unwrap();
        plane.deny(&me).unwrap();
        send();
        assert!(until(&plane, |c| c.drop_denied == 1
            && c.drop_unknown_session == 1));
        plane.allow(&me).unwrap();
        send();
        assert!(until(&plane, |c| c.drop_unknown_session == 2
            && c.drop_denied == 1));
        assert_eq!(
            plane.shared().deny.prefixes().len(),
            1,
            "the start-up entry stays"
        );
        plane.shutdown();
        plane.join().unwrap();
    }
}
