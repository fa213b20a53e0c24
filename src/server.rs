//! `updraft` the server: command line, configuration, logging, the data plane (one pinned
//! worker per core on `SO_REUSEPORT` sockets), the control plane (a separate process by
//! default, restarted if it dies; threads with `--single-process`), the metrics endpoint and
//! signals.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtmfp::session::SessionConfig;
use socket2::Socket;
use updraft_control::handshake::HandshakeLimits;
use updraft_control::service::{self, ServiceConfig};
use updraft_dataplane::plane::{DataPlane, PlaneConfig, MAX_WORKERS};
use updraft_dataplane::xdp::IoMode;
use updraft_scripting::LuaApps;

use crate::config::Config;
use crate::metrics::PlaneMetrics;
use crate::ops::{daemon, logging, metrics_http};

/// The hidden subcommand that runs the control plane in its own process.
pub const CONTROL_SUBCOMMAND: &str = "control-plane";
/// Longest a shutdown waits for the workers to close their sessions, beyond their own grace.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// How often the supervisor looks at signals and the control process.
const SUPERVISE_PERIOD: Duration = Duration::from_millis(50);
/// Supervisor turns between two reads of the XDP program's counters (one second).
const VERDICTS_EVERY: u32 = 20;
/// Pause before restarting a control process that died, so a crash loop cannot spin.
const RESTART_DELAY: Duration = Duration::from_millis(100);
/// This process's own executable, on Linux.
const SELF_EXE: &str = "/proc/self/exe";
/// The user the control process runs as when the server starts as root.
const UNPRIVILEGED_ID: u32 = 65_534;
/// Default kernel socket buffer per worker: room for a burst of simultaneous connects.
const DEFAULT_UDP_BUFFER: usize = 4 << 20;

/// Server options from the command line.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Configuration file (`--config`); otherwise `updraft.ini` or `CumulusServer.ini` in the
    /// working directory, when present.
    pub config: Option<PathBuf>,
    /// UDP port, overriding the configuration file.
    pub port: Option<u16>,
    /// Address to bind (default `::`, which also takes IPv4 on Linux).
    pub bind: IpAddr,
    /// Application root.
    pub www: PathBuf,
    /// Worker count, overriding `threads`.
    pub workers: Option<usize>,
    /// Data-plane mode.
    pub mode: IoMode,
    /// The interface for XDP (default: the one holding the bound address).
    pub interface: Option<String>,
    /// Cumulus log level 0..=8.
    pub log: Option<u8>,
    /// Log every datagram the workers receive and send.
    pub dump: bool,
    /// Detach and run in the background.
    pub daemon: bool,
    /// Set in the re-executed background child.
    pub daemonized: bool,
    /// Write the server's pid here.
    pub pidfile: Option<PathBuf>,
    /// Run the control plane as threads of this process.
    pub single_process: bool,
    /// Serve `/metrics` and `/stats` here.
    pub metrics: Option<SocketAddr>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            config: None,
            port: None,
            bind: IpAddr::from([0u16; 8]),
            www: PathBuf::from("www"),
            workers: None,
            mode: IoMode::Auto,
            interface: None,
            log: None,
            dump: false,
            daemon: false,
            daemonized: false,
            pidfile: None,
            single_process: false,
            metrics: None,
        }
    }
}

/// Parses the server's flags.
pub fn parse_args(args: &[String]) -> Result<ServerOptions, String> {
    let mut o = ServerOptions::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or(format!("{flag} needs a value"))
        };
        match flag {
            "--port" => o.port = Some(value()?.parse().map_err(|e| format!("--port: {e}"))?),
            "--config" => o.config = Some(value()?.into()),
            "--bind" => o.bind = value()?.parse().map_err(|e| format!("--bind: {e}"))?,
            "--www" => o.www = value()?.into(),
            "--workers" => {
                let n: usize = value()?.parse().map_err(|e| format!("--workers: {e}"))?;
                if n == 0 || n > MAX_WORKERS {
                    return Err(format!("--workers {n}: use 1 to {MAX_WORKERS}"));
                }
                o.workers = Some(n);
            }
            "--mode" => {
                o.mode = match value()?.as_str() {
                    "auto" => IoMode::Auto,
                    "socket" => IoMode::Socket,
                    "xdp" => IoMode::Xdp,
                    other => return Err(format!("--mode {other}: use auto, socket or xdp")),
                }
            }
            "--interface" => o.interface = Some(value()?),
            "--log" | "-l" => {
                let level: u8 = value()?.parse().map_err(|e| format!("--log: {e}"))?;
                logging::level_filter(level)?;
                o.log = Some(level);
            }
            "--dump" | "-d" => o.dump = true,
            daemon::DAEMON_FLAG => o.daemon = true,
            daemon::DAEMONIZED_FLAG => o.daemonized = true,
            "--pidfile" => o.pidfile = Some(value()?.into()),
            "--single-process" => o.single_process = true,
            "--metrics" => {
                o.metrics = Some(value()?.parse().map_err(|e| format!("--metrics: {e}"))?)
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn random32() -> Result<[u8; 32], String> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| format!("no system randomness: {e}"))?;
    Ok(seed)
}

/// What the control plane needs, however it runs.
#[derive(Debug, Clone)]
struct ControlSettings {
    identity_seed: [u8; 32],
    www: PathBuf,
    keepalive_ms: (u32, u32),
    max_sessions: usize,
    /// IIKeyings per second per source address.
    handshake_rate: u32,
    dh_threads: usize,
    log: u8,
    /// Every key of the configuration file, by section, for the Lua applications
    /// (`cumulus.configs`).
    sections: Sections,
}

/// Configuration keys by section ("" for the top).
type Sections = BTreeMap<String, BTreeMap<String, String>>;

/// The Lua applications of `settings.www`.
fn applications(settings: &ControlSettings) -> Result<Box<LuaApps>, String> {
    LuaApps::new(&settings.www, &settings.sections)
        .map(Box::new)
        .map_err(|e| format!("cannot start the Lua applications: {e}"))
}

/// Writes `sections` for the control process's standard input: one `section TAB key TAB value`
/// line per key (INI keys and values hold no line breaks; a tab in a section or key name is
/// not kept).
fn write_sections(out: &mut impl Write, sections: &Sections) -> std::io::Result<()> {
    for (section, keys) in sections {
        for (k, v) in keys {
            let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
            writeln!(
                out,
                "{}\t{}\t{}",
                clean(section),
                clean(k),
                v.replace(['\n', '\r'], " ")
            )?;
        }
    }
    Ok(())
}

/// Reads what [`write_sections`] wrote.
fn read_sections(input: impl BufRead) -> Sections {
    let mut sections = Sections::new();
    for line in input.lines().map_while(Result::ok) {
        let mut parts = line.splitn(3, '\t');
        if let (Some(section), Some(k), Some(v)) = (parts.next(), parts.next(), parts.next()) {
            sections
                .entry(section.to_string())
                .or_default()
                .insert(k.to_string(), v.to_string());
        }
    }
    sections
}

impl ControlSettings {
    fn service_config(&self) -> Result<ServiceConfig, String> {
        Ok(ServiceConfig {
            identity_seed: self.identity_seed,
            dh_seed: random32()?,
            dh_threads: self.dh_threads,
            limits: HandshakeLimits {
                max_sessions: self.max_sessions,
                rate: f64::from(self.handshake_rate),
                // Twice the rate at once: a page of players behind one NAT connects together.
                burst: 2.0 * f64::from(self.handshake_rate),
            },
            keepalive_ms: self.keepalive_ms,
            first_stream: {
                let r = random32()?;
                u32::from_be_bytes([r[0], r[1], r[2], r[3]])
            },
        })
    }
}

/// A control plane the supervisor keeps alive.
enum ControlPlane {
    Process(Child),
    Threads,
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Starts the control plane on `links`: a child process (the same binary, hidden
/// subcommand), unprivileged when we are root, or threads of this process.
fn start_control(
    links: Vec<Socket>,
    settings: &ControlSettings,
    single: bool,
) -> Result<ControlPlane, String> {
    if single {
        let config = settings.service_config()?;
        let apps = applications(settings)?;
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                if let Err(e) = service::run(links, config, apps) {
                    tracing::error!(error = %e, "control plane failed");
                }
            })
            .map_err(|e| format!("cannot start the control thread: {e}"))?;
        return Ok(ControlPlane::Threads);
    }
    // The very binary this process runs, even if a package upgrade has replaced or deleted the
    // file since (Linux keeps it reachable through /proc/self/exe): the control plane must
    // speak this data plane's IPC version.
    let exe = std::path::PathBuf::from(SELF_EXE);
    if !exe.exists() {
        return Err(format!("cannot find this executable at {SELF_EXE}"));
    }
    let mut fds = Vec::new();
    for l in &links {
        l.set_cloexec(false)
            .map_err(|e| format!("cannot pass a link to the control process: {e}"))?;
        fds.push(l.as_raw_fd().to_string());
    }
    let mut cmd = Command::new(exe);
    cmd.arg0("updraft")
        .arg(CONTROL_SUBCOMMAND)
        .arg("--links")
        .arg(fds.join(","))
        .arg("--www")
        .arg(&settings.www)
        .arg("--keepalive")
        .arg(format!(
            "{},{}",
            settings.keepalive_ms.0, settings.keepalive_ms.1
        ))
        .arg("--max-sessions")
        .arg(settings.max_sessions.to_string())
        .arg("--handshake-rate")
        .arg(settings.handshake_rate.to_string())
        .arg("--dh-threads")
        .arg(settings.dh_threads.to_string())
        .arg("--log")
        .arg(settings.log.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if running_as_root() {
        // The control plane parses hostile input and will run user scripts: never as root.
        cmd.uid(UNPRIVILEGED_ID).gid(UNPRIVILEGED_ID);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the control process: {e}"))?;
    // The child has its copies; ours must not keep the links open.
    drop(links);
    if let Some(mut stdin) = child.stdin.take() {
        // The identity goes through a pipe, never the command line (visible in `ps`).
        let _ = writeln!(stdin, "{}", hex_string(&settings.identity_seed));
        let _ = write_sections(&mut stdin, &settings.sections);
    }
    if let Some(stderr) = child.stderr.take() {
        let pid = child.id();
        let _ = std::thread::Builder::new()
            .name("control-log".into())
            .spawn(move || relay_log(pid, stderr));
    }
    Ok(ControlPlane::Process(child))
}

/// Copies the control process's log lines into ours.
fn relay_log(pid: u32, stderr: std::process::ChildStderr) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        let (level, text) = line.split_once(' ').unwrap_or(("INFO", line));
        let text = text.trim_start();
        match level {
            "ERROR" => tracing::error!(control = pid, "{text}"),
            "WARN" => tracing::warn!(control = pid, "{text}"),
            "DEBUG" => tracing::debug!(control = pid, "{text}"),
            "TRACE" => tracing::trace!(control = pid, "{text}"),
            _ => tracing::info!(control = pid, "{text}"),
        }
    }
}

/// Runs the server; answers the exit code.
pub fn run(args: &[String]) -> u8 {
    let opts = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("updraft: {e}");
            return 2;
        }
    };
    let config = match Config::discover(opts.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("updraft: {e}");
            return 2;
        }
    };
    if opts.daemon {
        return match daemon::daemonize_by_reexec(args) {
            Ok(pid) => {
                println!("updraft: running in the background, pid {pid}");
                0
            }
            Err(e) => {
                eprintln!("updraft: cannot start in the background: {e}");
                1
            }
        };
    }
    if opts.daemonized {
        if let Err(e) = daemon::become_session_leader() {
            eprintln!("updraft: {e}");
        }
    }
    let level = opts.log.unwrap_or(logging::DEFAULT_LEVEL);
    let logs = config.sections.get("logs");
    let target = logging::LogTarget {
        // A background server has no terminal: it logs to files, as Cumulus does.
        directory: logs
            .and_then(|l| l.get("directory").cloned())
            .or_else(|| opts.daemonized.then(|| "logs".to_string()))
            .map(PathBuf::from),
        name: logs
            .and_then(|l| l.get("name").cloned())
            .unwrap_or_else(|| "log".to_string()),
    };
    let log_handle = match logging::init(level, &target, std::env::var("UPDRAFT_LOG").ok()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("updraft: {e}");
            return 2;
        }
    };
    let _pidfile = match &opts.pidfile {
        Some(p) => match daemon::PidFile::create(p) {
            Ok(f) => {
                tracing::info!(file = %f.path().display(), pid = std::process::id(), "pid file written");
                Some(f)
            }
            Err(e) => {
                eprintln!("updraft: {e}");
                return 2;
            }
        },
        None => None,
    };
    match serve(&opts, &config, level, &log_handle) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("updraft: {e}");
            tracing::error!("{e}");
            1
        }
    }
}

fn serve(
    opts: &ServerOptions,
    config: &Config,
    level: u8,
    log: &logging::LogHandle,
) -> Result<(), String> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = opts
        .workers
        .or((config.threads > 0).then_some(config.threads))
        .unwrap_or(cores)
        .clamp(1, MAX_WORKERS);
    let port = opts.port.unwrap_or(config.port);
    let mut bind = SocketAddr::new(opts.bind, port);
    let session = SessionConfig {
        keepalive: Some(config.keepalive_server),
        ..SessionConfig::default()
    };
    let plane_config = |bind| PlaneConfig {
        bind,
        workers,
        udp_buffer: Some(config.udp_buffer_size.unwrap_or(DEFAULT_UDP_BUFFER)),
        session: session.clone(),
        pin: true,
        seed: [0; 32],
        dump: opts
            .dump
            .then_some(crate::dump::log_packet as updraft_dataplane::worker::DumpHook),
        mode: opts.mode,
        interface: opts.interface.clone(),
        deny: config.blacklist.clone(),
        lifetimes: config.lifetimes,
        busy_poll: config.xdp_busy_poll,
    };
    let mut pc = plane_config(bind);
    pc.seed = random32()?;
    let plane = match DataPlane::start(pc) {
        Ok(p) => p,
        Err(e) if opts.bind.is_unspecified() && opts.bind.is_ipv6() && opts.mode != IoMode::Xdp => {
            tracing::warn!(error = %e, "IPv6 unavailable; serving IPv4 only");
            bind = SocketAddr::new(IpAddr::from([0u8; 4]), port);
            let mut pc = plane_config(bind);
            pc.seed = random32()?;
            DataPlane::start(pc).map_err(|e| format!("cannot bind UDP {bind}: {e}"))?
        }
        Err(e) if opts.mode == IoMode::Xdp => return Err(format!("cannot serve UDP {bind}: {e}")),
        Err(e) => return Err(format!("cannot bind UDP {bind}: {e}")),
    };
    let mode_note = if plane.is_xdp() { "xdp" } else { "socket" };
    tracing::info!("packet I/O: {}", plane.io_description());
    let settings = ControlSettings {
        identity_seed: random32()?,
        www: opts.www.clone(),
        keepalive_ms: (
            millis(config.keepalive_server),
            millis(config.keepalive_peer),
        ),
        max_sessions: config.max_sessions,
        handshake_rate: config.handshake_rate,
        dh_threads: cores.div_ceil(2).max(1),
        log: level,
        sections: config.sections.clone(),
    };
    let peer_id = service::responder_for(settings.identity_seed).fingerprint();
    let links = plane
        .connect_control()
        .map_err(|e| format!("cannot link the control plane: {e}"))?;
    let mut control = start_control(links, &settings, opts.single_process)?;
    let control_note = match &control {
        ControlPlane::Process(c) => format!("control process {}", c.id()),
        ControlPlane::Threads => "single-process".to_string(),
    };
    let metrics_server = match opts.metrics {
        Some(addr) => {
            let source = Arc::new(PlaneMetrics::new(plane.shared()));
            Some(
                metrics_http::spawn(addr, source)
                    .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?,
            )
        }
        None => None,
    };
    eprintln!(
        "updraft {}: mode {mode_note}, {} workers, UDP {}, www {}, {control_note}, server peer ID {}",
        env!("CARGO_PKG_VERSION"),
        plane.workers(),
        plane.local_addr(),
        opts.www.display(),
        hex_string(&peer_id.0)
    );
    tracing::info!(
        mode = mode_note,
        workers = plane.workers(),
        udp = %plane.local_addr(),
        www = %opts.www.display(),
        control = %control_note,
        metrics = ?metrics_server.as_ref().map(|m| m.local_addr()),
        "serving"
    );
    if let Some(path) = &config.source {
        tracing::info!(file = %path.display(), "configuration read");
    }
    if opts.dump {
        tracing::info!("--dump: every session packet is logged, decrypted and decoded");
    }
    // SIGTERM and SIGINT ask for an orderly shutdown; SIGHUP reopens the log files.
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| format!("cannot handle signal {signal}: {e}"))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
        .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    let mut turns: u32 = 0;
    loop {
        std::thread::sleep(SUPERVISE_PERIOD);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        turns = turns.wrapping_add(1);
        plane.apply_blacklist_requests();
        if turns.is_multiple_of(VERDICTS_EVERY) {
            plane.refresh_verdicts();
        }
        if hup.swap(false, Ordering::Relaxed) {
            match log.reopen() {
                Ok(()) => tracing::info!("SIGHUP: log files reopened"),
                Err(e) => tracing::error!("SIGHUP: {e}"),
            }
        }
        if plane.finished() {
            return plane
                .join()
                .map_err(|e| format!("the data plane stopped: {e}"));
        }
        if let ControlPlane::Process(child) = &mut control {
            if let Ok(Some(status)) = child.try_wait() {
                tracing::error!(%status, "control process died; restarting it");
                std::thread::sleep(RESTART_DELAY);
                // A failed restart is retried on the next turn; the data plane keeps serving.
                match plane
                    .connect_control()
                    .map_err(|e| format!("cannot link the control plane: {e}"))
                    .and_then(|links| start_control(links, &settings, false))
                {
                    Ok(c) => {
                        if let ControlPlane::Process(p) = &c {
                            tracing::info!(pid = p.id(), "control process restarted");
                        }
                        control = c;
                    }
                    Err(e) => tracing::error!("control restart failed, retrying: {e}"),
                }
            }
        }
    }
    tracing::info!("shutting down: closing every session");
    plane.shutdown();
    let since = std::time::Instant::now();
    while !plane.finished() && since.elapsed() < SHUTDOWN_WAIT {
        std::thread::sleep(SUPERVISE_PERIOD);
    }
    let counters = plane.counters();
    tracing::info!(
        closed = counters.iter().map(|c| c.sessions_closed).sum::<u64>(),
        "data plane stopped"
    );
    if let ControlPlane::Process(mut child) = control {
        // Its links are closed now, so it is exiting; do not leave it behind.
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Some(m) = metrics_server {
        m.shutdown();
    }
    if plane.finished() {
        plane
            .join()
            .map_err(|e| format!("the data plane stopped: {e}"))
    } else {
        Ok(())
    }
}

/// `updraft control-plane …`: the control process. Its links are inherited file descriptors;
/// its identity comes on standard input.
pub fn run_control(args: &[String]) -> u8 {
    match control_main(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ERROR control plane: {e}");
            1
        }
    }
}

fn control_main(args: &[String]) -> Result<(), String> {
    let mut links = Vec::new();
    let mut www = PathBuf::from("www");
    let mut keepalive_ms = (15_000, 10_000);
    let mut max_sessions = HandshakeLimits::default().max_sessions;
    let mut handshake_rate = crate::config::DEFAULT_HANDSHAKE_RATE;
    let mut dh_threads = 1;
    let mut level = logging::DEFAULT_LEVEL;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--links" => {
                let fds = value
                    .split(',')
                    .map(|fd| fd.parse::<i32>().map_err(|e| format!("--links {fd}: {e}")))
                    .collect::<Result<Vec<_>, _>>()?;
                let owned = updraft_dataplane::sys::claim_inherited_sockets(&fds)
                    .map_err(|e| format!("--links {value}: {e}"))?;
                for fd in owned {
                    let socket = Socket::from(fd);
                    socket.set_cloexec(true).map_err(|e| e.to_string())?;
                    links.push(socket);
                }
            }
            "--www" => www = value.into(),
            "--keepalive" => {
                let (s, p) = value.split_once(',').ok_or("--keepalive S,P")?;
                keepalive_ms = (
                    s.parse().map_err(|_| "--keepalive S,P")?,
                    p.parse().map_err(|_| "--keepalive S,P")?,
                );
            }
            "--max-sessions" => max_sessions = value.parse().map_err(|_| "--max-sessions N")?,
            "--handshake-rate" => {
                handshake_rate = value.parse().map_err(|_| "--handshake-rate N")?
            }
            "--dh-threads" => dh_threads = value.parse().map_err(|_| "--dh-threads N")?,
            "--log" => level = value.parse().map_err(|_| "--log N")?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    // Plain lines ("LEVEL message"); the data-plane process relays them into its log.
    let filter = match std::env::var("UPDRAFT_LOG") {
        Ok(spec) => tracing_subscriber::EnvFilter::try_new(&spec)
            .map_err(|e| format!("UPDRAFT_LOG: {e}"))?,
        Err(_) => tracing_subscriber::EnvFilter::default()
            .add_directive(logging::level_filter(level)?.into()),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .without_time()
        .init();
    let mut line = String::new();
    let mut stdin = std::io::stdin().lock();
    stdin
        .read_line(&mut line)
        .map_err(|e| format!("no identity on standard input: {e}"))?;
    let identity_seed = parse_hex32(&line).ok_or("no identity on standard input")?;
    let sections = read_sections(stdin);
    let settings = ControlSettings {
        identity_seed,
        www: www.clone(),
        keepalive_ms,
        max_sessions,
        handshake_rate,
        dh_threads,
        log: level,
        sections,
    };
    let config = settings.service_config()?;
    let apps = applications(&settings)?;
    service::run(links, config, apps).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_parse_and_bad_ones_are_refused() {
        let o = parse_args(&args(
            "--port 2000 --www /srv/www --workers 3 --mode socket --log=7 --dump --single-process --metrics 127.0.0.1:9935 --pidfile /run/u.pid",
        ))
        .unwrap();
        assert_eq!(o.port, Some(2000));
        assert_eq!(o.www, PathBuf::from("/srv/www"));
        assert_eq!(o.workers, Some(3));
        assert_eq!(o.mode, IoMode::Socket);
        assert_eq!(o.log, Some(7));
        assert!(o.dump && o.single_process);
        assert_eq!(o.metrics, Some("127.0.0.1:9935".parse().unwrap()));
        assert_eq!(o.pidfile, Some(PathBuf::from("/run/u.pid")));
        for bad in [
            "--workers 0",
            "--workers 300",
            "--mode fast",
            "--log 9",
            "--port",
            "--nope",
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn seeds_round_trip_through_hex() {
        let seed = [0xA5u8; 32];
        assert_eq!(parse_hex32(&format!("{}\n", hex_string(&seed))), Some(seed));
        assert_eq!(parse_hex32("zz"), None);
    }
}
