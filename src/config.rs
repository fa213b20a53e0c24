//! `CumulusServer.ini` / `updraft.ini`: the configuration file Cumulus users already have.
//!
//! INI syntax as Cumulus reads it: `key = value` lines, `[section]` headers (a key in a section
//! is `section.key`; the same key may be written as `section.key` at the top), comments from
//! `;` or `#`. Known keys are checked; an unknown key in a known section, a value out of range
//! or an unreadable file is an error that names the file, the line and the fix. Custom sections
//! are kept whole for Lua's `cumulus.configs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rtmfp::params::{DEFAULT_PORT, MIN_KEEPALIVE};
use updraft_bpf::Prefix;
use updraft_dataplane::worker::MediaLifetimes;

/// Default server keepalive sent in event 41 (Cumulus: 15 s).
pub const DEFAULT_KEEPALIVE_SERVER: Duration = Duration::from_secs(15);
/// Default peer keepalive sent in event 41 (Cumulus: 10 s).
pub const DEFAULT_KEEPALIVE_PEER: Duration = Duration::from_secs(10);
/// Default `handshakeRate`: handshakes per second from one address.
pub const DEFAULT_HANDSHAKE_RATE: u32 = 200;
/// Default `maxSessions`.
pub const DEFAULT_MAX_SESSIONS: usize = 200_000;
/// Shortest and longest media lifetime accepted (`audioLifetime`, `videoLifetime`).
pub const LIFETIME_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(50)..=Duration::from_secs(60);
/// Longest `xdpBusyPoll` accepted, in microseconds.
pub const MAX_BUSY_POLL_US: u32 = 10_000;
/// File names looked for in the working directory when `--config` is not given.
pub const DEFAULT_FILES: [&str; 2] = ["updraft.ini", "CumulusServer.ini"];

/// Sections whose keys we know; a key outside these lists is an error there.
const KNOWN: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "port",
            "udpBufferSize",
            "keepAliveServer",
            "keepAlivePeer",
            "threads",
            "publicAddress",
            "maxSessions",
            "handshakeRate",
            "blacklist",
            "audioLifetime",
            "videoLifetime",
            "xdpBusyPoll",
        ],
    ),
    ("logs", &["directory", "name"]),
    ("smtp", &["host", "port", "timeout"]),
    ("servers", &["port", "targets"]),
];

/// A configuration error, ready to print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// The line, when the error is on one.
    pub line: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// The server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
    /// UDP port (`port`).
    pub port: u16,
    /// Socket buffer size in bytes (`udpBufferSize`), when set.
    pub udp_buffer_size: Option<usize>,
    /// Keepalive asked of clients towards the server (`keepAliveServer`, seconds).
    pub keepalive_server: Duration,
    /// Keepalive asked of clients towards peers (`keepAlivePeer`, seconds).
    pub keepalive_peer: Duration,
    /// Worker threads (`threads`; 0 means one per core).
    pub threads: usize,
    /// Public address advertised to other servers (`publicAddress`).
    pub public_address: Option<String>,
    /// Most sessions served at once (`maxSessions`, an Updraft extension).
    pub max_sessions: usize,
    /// Handshakes (IIKeyings) accepted per second from one source address
    /// (`handshakeRate`, an Updraft extension).
    pub handshake_rate: u32,
    /// Sources whose datagrams are dropped (`blacklist`, an Updraft extension: addresses or
    /// prefixes separated by commas or spaces): the XDP program drops them in the kernel, the
    /// workers any that reach their sockets.
    pub blacklist: Vec<Prefix>,
    /// How long a subscriber's audio and video frames may wait before they are abandoned
    /// (`audioLifetime` and `videoLifetime`, milliseconds, Updraft extensions; RFC 7016
    /// §3.6.2.3).
    pub lifetimes: MediaLifetimes,
    /// Preferred busy polling of the AF_XDP sockets, in microseconds (`xdpBusyPoll`, an
    /// Updraft extension; 0 or absent: off).
    pub xdp_busy_poll: Option<u32>,
    /// Every key, by section ("" for the top), for the Lua API.
    pub sections: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: None,
            port: DEFAULT_PORT,
            udp_buffer_size: None,
            keepalive_server: DEFAULT_KEEPALIVE_SERVER,
            keepalive_peer: DEFAULT_KEEPALIVE_PEER,
            threads: 0,
            public_address: None,
            max_sessions: DEFAULT_MAX_SESSIONS,
            handshake_rate: DEFAULT_HANDSHAKE_RATE,
            blacklist: Vec::new(),
            lifetimes: MediaLifetimes::default(),
            xdp_busy_poll: None,
            sections: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Loads `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            message: format!(
                "cannot read the configuration file: {e}; check the path given to --config"
            ),
        })?;
        let mut c = Config::parse(&path.display().to_string(), &text)?;
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    /// Loads `--config FILE`, or the first of [`DEFAULT_FILES`] in the working directory, or
    /// the defaults.
    pub fn discover(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(p) = explicit {
            return Config::load(p);
        }
        for name in DEFAULT_FILES {
            let p = Path::new(name);
            if p.is_file() {
                return Config::load(p);
            }
        }
        Ok(Config::default())
    }

    /// Parses INI text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let err = |line: usize, message: String| ConfigError {
            file: file.to_string(),
            line: Some(line),
            message,
        };
        let mut c = Config::default();
        let mut section = String::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.split([';', '#']).next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let name = rest.strip_suffix(']').ok_or_else(|| {
                    err(
                        n,
                        format!("section header `{line}` has no closing `]`; write `[name]`"),
                    )
                })?;
                section = name.trim().to_string();
                continue;
            }
            let (key, value) = line.split_once('=').ok_or_else(|| {
                err(
                    n,
                    format!("`{line}` is not `key = value`; add `=` or comment it out with `;`"),
                )
            })?;
            let (key, value) = (key.trim(), value.trim().to_string());
            // `logs.name` at the top is the same as `name` in `[logs]`.
            let (sec, key) = match (section.as_str(), key.split_once('.')) {
                ("", Some((s, k))) if KNOWN.iter().any(|(known, _)| *known == s) => {
                    (s.to_string(), k.to_string())
                }
                _ => (section.clone(), key.to_string()),
            };
            if let Some((_, keys)) = KNOWN.iter().find(|(s, _)| *s == sec) {
                if !keys.contains(&key.as_str()) {
                    let place = if sec.is_empty() {
                        "at the top of the file".to_string()
                    } else {
                        format!("in [{sec}]")
                    };
                    return Err(err(
                        n,
                        format!(
                            "unknown key `{key}` {place}; known keys there: {}",
                            keys.join(", ")
                        ),
                    ));
                }
            }
            c.apply(&sec, &key, &value).map_err(|m| err(n, m))?;
            c.sections.entry(sec).or_default().insert(key, value);
        }
        Ok(c)
    }

    fn apply(&mut self, section: &str, key: &str, value: &str) -> Result<(), String> {
        match (section, key) {
            ("", "port") => {
                self.port = value.parse().ok().filter(|p| *p != 0).ok_or(format!(
                    "port = {value} is not a UDP port; use 1 to 65535 (default {DEFAULT_PORT})"
                ))?;
            }
            ("", "udpBufferSize") => {
                let v: usize = value
                    .parse()
                    .map_err(|_| format!("udpBufferSize = {value} is not a size in bytes"))?;
                self.udp_buffer_size = (v > 0).then_some(v);
            }
            ("", "keepAliveServer") => self.keepalive_server = keepalive("keepAliveServer", value)?,
            ("", "keepAlivePeer") => self.keepalive_peer = keepalive("keepAlivePeer", value)?,
            ("", "threads") => {
                self.threads = value.parse().map_err(|_| {
                    format!("threads = {value} is not a number; 0 means one per core")
                })?;
            }
            ("", "handshakeRate") => {
                self.handshake_rate = value.parse().ok().filter(|n| *n > 0).ok_or(format!(
                    "handshakeRate = {value} is not a positive number of handshakes per second"
                ))?;
            }
            ("", "maxSessions") => {
                self.max_sessions = value.parse().ok().filter(|n| *n > 0).ok_or(format!(
                    "maxSessions = {value} is not a positive number of sessions"
                ))?;
            }
            ("", "blacklist") => {
                self.blacklist = value
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|p| !p.is_empty())
                    .map(|p| p.parse().map_err(|e| format!("blacklist: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            ("", "audioLifetime") => self.lifetimes.audio = lifetime("audioLifetime", value)?,
            ("", "videoLifetime") => self.lifetimes.video = lifetime("videoLifetime", value)?,
            ("", "xdpBusyPoll") => {
                let us: u32 = value
                    .parse()
                    .ok()
                    .filter(|us| *us <= MAX_BUSY_POLL_US)
                    .ok_or(format!(
                        "xdpBusyPoll = {value} is not a number of microseconds from 0 (off) \
                         to {MAX_BUSY_POLL_US}"
                    ))?;
                self.xdp_busy_poll = (us > 0).then_some(us);
            }
            ("", "publicAddress") => {
                self.public_address = (!value.is_empty()).then(|| value.to_string())
            }
            _ => {}
        }
        Ok(())
    }
}

/// A media lifetime in milliseconds, within [`LIFETIME_RANGE`].
fn lifetime(key: &str, value: &str) -> Result<Duration, String> {
    let (low, high) = (LIFETIME_RANGE.start(), LIFETIME_RANGE.end());
    value
        .parse()
        .ok()
        .map(Duration::from_millis)
        .filter(|d| LIFETIME_RANGE.contains(d))
        .ok_or(format!(
            "{key} = {value} is not a lifetime in milliseconds from {} to {}",
            low.as_millis(),
            high.as_millis()
        ))
}

/// A keepalive in seconds, at least 5 (RFC 7425 §5.3.4; Cumulus refuses less).
fn keepalive(key: &str, value: &str) -> Result<Duration, String> {
    let secs: u64 = value
        .parse()
        .map_err(|_| format!("{key} = {value} is not a number of seconds"))?;
    let d = Duration::from_secs(secs);
    if d < MIN_KEEPALIVE {
        return Err(format!(
            "{key} = {value} is under the 5 s minimum (RFC 7425 §5.3.4); use 5 or more"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulus_file_with_sections_dotted_keys_and_custom_sections() {
        let text = "; Cumulus config\nport = 19350\nkeepAliveServer=20\nkeepAlivePeer = 7 ; comment\nthreads=2\n\
                    logs.name = cumulus\n[smtp]\nhost = mail.example\n[myApp]\nsecret = 42\n";
        let c = Config::parse("CumulusServer.ini", text).unwrap();
        assert_eq!(c.port, 19350);
        assert_eq!(c.keepalive_server, Duration::from_secs(20));
        assert_eq!(c.keepalive_peer, Duration::from_secs(7));
        assert_eq!(c.threads, 2);
        assert_eq!(c.sections["logs"]["name"], "cumulus");
        assert_eq!(c.sections["smtp"]["host"], "mail.example");
        assert_eq!(c.sections["myApp"]["secret"], "42");
    }

    #[test]
    fn the_blacklist_takes_addresses_and_prefixes() {
        let c = Config::parse(
            "u.ini",
            "blacklist = 192.0.2.0/24, 2001:db8::/32 198.51.100.7\n",
        )
        .unwrap();
        let got: Vec<String> = c.blacklist.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32"]);
        let e = Config::parse("u.ini", "port = 1\nblacklist = 10.0.0.0/40\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(
            e.to_string()
                .contains("\"10.0.0.0/40\" is not an IPv4 or IPv6 address"),
            "{e}"
        );
    }

    #[test]
    fn media_lifetimes_in_milliseconds_within_bounds() {
        let c = Config::parse("u.ini", "xdpBusyPoll = 50\n").unwrap();
        assert_eq!(c.xdp_busy_poll, Some(50));
        let c = Config::parse("u.ini", "xdpBusyPoll = 0\n").unwrap();
        assert_eq!(c.xdp_busy_poll, None);
        let e = Config::parse("u.ini", "xdpBusyPoll = 20000\n").unwrap_err();
        assert!(e.message.contains("from 0 (off) to 10000"), "{}", e.message);
        let c = Config::parse("u.ini", "audioLifetime = 500\nvideoLifetime=1500\n").unwrap();
        assert_eq!(c.lifetimes.audio, Duration::from_millis(500));
        assert_eq!(c.lifetimes.video, Duration::from_millis(1500));
        let d = Config::default();
        assert_eq!(
            (d.lifetimes.audio, d.lifetimes.video),
            (Duration::from_secs(2), Duration::from_secs(3))
        );
        for bad in ["0", "49", "60001", "2s", "-5"] {
            let e =
                Config::parse("u.ini", &format!("port = 1\nvideoLifetime = {bad}\n")).unwrap_err();
            assert_eq!(e.line, Some(2), "{bad}");
            assert!(
                e.to_string().contains(&format!(
                    "videoLifetime = {bad} is not a lifetime in milliseconds from 50 to 60000"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn defaults_without_a_file() {
        let c = Config::parse("x.ini", "").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.port, 1935);
        assert_eq!(c.keepalive_server, Duration::from_secs(15));
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_fix() {
        let e =
            Config::parse("CumulusServer.ini", "port = 1935\nkeepAliveServer = 3\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        let text = e.to_string();
        assert!(
            text.starts_with("CumulusServer.ini:2: keepAliveServer = 3 is under the 5 s minimum"),
            "{text}"
        );
        assert!(text.contains("use 5 or more"));
        let e = Config::parse("a.ini", "[logs]\nsize = 3\n").unwrap_err();
        assert!(
            e.to_string().contains(
                "a.ini:2: unknown key `size` in [logs]; known keys there: directory, name"
            ),
            "{e}"
        );
        let e = Config::parse("a.ini", "prot = 1\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown key `prot` at the top of the file"),
            "{e}"
        );
        assert_eq!(
            Config::parse("a.ini", "port = 70000\n").unwrap_err().line,
            Some(1)
        );
        assert_eq!(Config::parse("a.ini", "[logs\n").unwrap_err().line, Some(1));
        assert_eq!(
            Config::parse("a.ini", "just words\n").unwrap_err().line,
            Some(1)
        );
        let e = Config::load(Path::new("/nonexistent/updraft.ini")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/updraft.ini: cannot read"),
            "{e}"
        );
    }
}
