//! `updraft-loadgen`: drives an RTMFP server with real sessions and reports rates and latency.

use std::process::ExitCode;
use std::time::Duration;

use rtmfp::crypto::DhGroup;
use updraft_loadgen::scenario::{
    self, ChurnArgs, ConnectArgs, FanoutArgs, GarbageArgs, RendezvousArgs, RpcArgs,
};
use updraft_loadgen::selftest::{self, SelftestArgs};
use updraft_loadgen::Report;

const USAGE: &str = "usage:
  updraft-loadgen connect --server ADDR:PORT [--sessions N] [--rate PER_S] [--app APP]
                          [--timeout SECONDS] [--groups G]
  updraft-loadgen rpc     --server ADDR:PORT [--sessions N] [--duration SECONDS] [--method NAME]
                          [--app APP] [--groups G]
  updraft-loadgen fanout  --server ADDR:PORT [--subscribers N] [--bitrate KBPS] [--size BYTES]
                          [--duration SECONDS] [--app APP] [--stream NAME] [--sockets N]
                          [--groups G] [--threads N] [--cores LIST] [--keyframe SECONDS]
  updraft-loadgen publish --server ADDR:PORT [--publishers N] [--viewers N] [--bitrate KBPS]
                          [--size BYTES] [--duration SECONDS] [--app APP] [--stream PREFIX]
                          [--sockets N] [--groups G] [--threads N] [--cores LIST]
                          [--keyframe SECONDS]
  updraft-loadgen churn   --server ADDR:PORT [--rate SESSIONS_PER_S] [--lifetime SECONDS]
                          [--duration SECONDS] [--app APP] [--groups G]
  updraft-loadgen rendezvous --server ADDR:PORT [--peers N] [--timeout SECONDS]
                          (P2P introductions through the server: peers connect, then one
                          initiator opens a session to each by peer ID)
  updraft-loadgen garbage --server ADDR:PORT [--rate DATAGRAMS_PER_S] [--duration SECONDS]
                          [--app APP] [--groups G]
  updraft-loadgen selftest [--duration SECONDS] [--size BYTES]
                          (this machine's send and receive ceiling for the loadgen itself)
--keyframe SECONDS: time between key frames (default 2; 0: the first message only)
--threads N: drive the sockets from N threads, pinned in turn to --cores (default: the cores
  this process may use)
every scenario: [--json FILE] (summary) [--plot FILE.svg] (throughput and latency over time)
connect, rpc, fanout, publish, churn: [--xdp IF] send and receive through an AF_XDP socket on
  queue 0 of IF (root; the XDP program is attached while the run lasts; for fanout and
  publish, the first socket only: use --sockets 1)
--groups G: the Diffie-Hellman groups offered, 2, 14, 16 or all; Flash Player offers 2 only,
rtmfp-cpp servers want 14 or more";

struct Flags {
    values: Vec<(String, String)>,
}

impl Flags {
    fn parse(args: &[String]) -> Result<Flags, String> {
        let mut values = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                return Err(format!("unexpected argument {a}"));
            };
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => (
                    name.to_string(),
                    it.next()
                        .cloned()
                        .ok_or(format!("--{name} needs a value"))?,
                ),
            };
            values.push((name, value));
        }
        Ok(Flags { values })
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: Option<T>) -> Result<T, String> {
        match self.values.iter().rev().find(|(n, _)| n == name) {
            Some((_, v)) => v
                .parse()
                .map_err(|_| format!("--{name} {v}: not a valid value")),
            None => default.ok_or(format!("--{name} is required")),
        }
    }

    fn check(&self, known: &[&str]) -> Result<(), String> {
        match self
            .values
            .iter()
            .find(|(n, _)| !known.contains(&n.as_str()) && !COMMON_OPTIONS.contains(&n.as_str()))
        {
            Some((n, _)) => Err(format!("unknown option --{n}")),
            None => Ok(()),
        }
    }
}

/// Options every scenario takes: where to write the JSON summary and the SVG plot.
const COMMON_OPTIONS: [&str; 2] = ["json", "plot"];

/// Where to write a run's summaries.
struct Outputs {
    json: Option<String>,
    plot: Option<String>,
}

fn run(args: &[String]) -> Result<(Report, Outputs), (u8, String)> {
    let bad = |e: String| (2, format!("{e}\n{USAGE}"));
    let (scenario, rest) = args
        .split_first()
        .ok_or_else(|| bad("no scenario".into()))?;
    let flags = Flags::parse(rest).map_err(bad)?;
    let path = |name: &str| {
        flags
            .get(name, Some(String::new()))
            .ok()
            .filter(|s| !s.is_empty())
    };
    let outputs = Outputs {
        json: path("json"),
        plot: path("plot"),
    };
    let xdp = path("xdp");
    let result = match scenario.as_str() {
        "connect" => {
            flags
                .check(&[
                    "server", "sessions", "rate", "app", "timeout", "groups", "xdp",
                ])
                .map_err(bad)?;
            let args = ConnectArgs {
                server: flags.get("server", None).map_err(bad)?,
                sessions: flags.get("sessions", Some(100)).map_err(bad)?,
                rate: flags
                    .get::<f64>("rate", Some(0.0))
                    .map_err(bad)
                    .map(|r| (r > 0.0).then_some(r))?,
                app: flags.get("app", Some(String::new())).map_err(bad)?,
                timeout: Duration::from_secs_f64(flags.get("timeout", Some(30.0)).map_err(bad)?),
                groups: groups(&flags, "all").map_err(bad)?,
                xdp: xdp.clone(),
            };
            scenario::connect(&args)
        }
        "rpc" => {
            flags
                .check(&[
                    "server", "sessions", "duration", "method", "app", "groups", "xdp",
                ])
                .map_err(bad)?;
            let args = RpcArgs {
                server: flags.get("server", None).map_err(bad)?,
                sessions: flags.get("sessions", Some(10)).map_err(bad)?,
                duration: Duration::from_secs_f64(flags.get("duration", Some(10.0)).map_err(bad)?),
                method: flags
                    .get("method", Some("updraftLoadgen".to_string()))
                    .map_err(bad)?,
                app: flags.get("app", Some(String::new())).map_err(bad)?,
                groups: groups(&flags, "2").map_err(bad)?,
                xdp: xdp.clone(),
            };
            scenario::rpc(&args)
        }
        "fanout" | "publish" => {
            // `fanout`: one stream, many subscribers; `publish`: many streams, each with its
            // own publisher and `--viewers` subscribers.
            let publish = scenario == "publish";
            let mut known = vec![
                "server", "bitrate", "size", "duration", "app", "stream", "sockets", "groups",
                "threads", "cores", "xdp", "keyframe",
            ];
            known.extend(if publish {
                ["publishers", "viewers"].as_slice()
            } else {
                ["subscribers"].as_slice()
            });
            flags.check(&known).map_err(bad)?;
            let (streams, subscribers) = if publish {
                (
                    flags.get("publishers", Some(10)).map_err(bad)?,
                    flags.get("viewers", Some(1)).map_err(bad)?,
                )
            } else {
                (1, flags.get("subscribers", Some(10)).map_err(bad)?)
            };
            // `publish --viewers 0` is pure ingest: streams in, nothing out but acks.
            if streams == 0 {
                return Err(bad("--publishers must be at least 1".to_string()));
            }
            let threads: usize = flags.get("threads", Some(1)).map_err(bad)?;
            let args = FanoutArgs {
                server: flags.get("server", None).map_err(bad)?,
                streams,
                subscribers,
                threads,
                cores: cores(&flags, threads).map_err(bad)?,
                bitrate_kbps: flags.get("bitrate", Some(2000)).map_err(bad)?,
                size: flags.get("size", Some(1200)).map_err(bad)?,
                duration: seconds(&flags, "duration", 10.0).map_err(bad)?,
                keyframe_interval: seconds(&flags, "keyframe", 2.0).map_err(bad)?,
                app: flags.get("app", Some("live".to_string())).map_err(bad)?,
                stream: flags
                    .get("stream", Some("loadgen".to_string()))
                    .map_err(bad)?,
                sockets: flags.get("sockets", Some(8)).map_err(bad)?,
                groups: groups(&flags, "2").map_err(bad)?,
                xdp: xdp.clone(),
            };
            scenario::fanout(&args)
        }
        "rendezvous" => {
            flags.check(&["server", "peers", "timeout"]).map_err(bad)?;
            let args = RendezvousArgs {
                server: flags.get("server", None).map_err(bad)?,
                peers: flags.get("peers", Some(50)).map_err(bad)?,
                timeout: seconds(&flags, "timeout", 30.0).map_err(bad)?,
            };
            if args.peers == 0 {
                return Err(bad("--peers must be at least 1".to_string()));
            }
            scenario::rendezvous(&args)
        }
        "churn" => {
            flags
                .check(&[
                    "server", "rate", "lifetime", "duration", "app", "groups", "xdp",
                ])
                .map_err(bad)?;
            let args = ChurnArgs {
                server: flags.get("server", None).map_err(bad)?,
                rate: flags.get("rate", Some(100.0)).map_err(bad)?,
                lifetime: seconds(&flags, "lifetime", 1.0).map_err(bad)?,
                duration: seconds(&flags, "duration", 10.0).map_err(bad)?,
                app: flags.get("app", Some(String::new())).map_err(bad)?,
                groups: groups(&flags, "2").map_err(bad)?,
                xdp: xdp.clone(),
            };
            if args.rate.is_nan() || args.rate <= 0.0 {
                return Err(bad("--rate must be above 0".to_string()));
            }
            scenario::churn(&args)
        }
        "garbage" => {
            flags
                .check(&["server", "rate", "duration", "app", "groups"])
                .map_err(bad)?;
            let args = GarbageArgs {
                server: flags.get("server", None).map_err(bad)?,
                rate: flags.get("rate", Some(10_000.0)).map_err(bad)?,
                duration: seconds(&flags, "duration", 10.0).map_err(bad)?,
                app: flags.get("app", Some(String::new())).map_err(bad)?,
                groups: groups(&flags, "2").map_err(bad)?,
            };
            scenario::garbage(&args)
        }
        "selftest" => {
            flags.check(&["duration", "size"]).map_err(bad)?;
            let args = SelftestArgs {
                duration: seconds(&flags, "duration", 3.0).map_err(bad)?,
                size: flags.get("size", Some(1100)).map_err(bad)?,
            };
            selftest::selftest(&args)
        }
        "--help" | "-h" | "help" => return Err((0, USAGE.to_string())),
        other => return Err(bad(format!("unknown scenario {other}"))),
    };
    // A server that does not answer, or refuses, is exit code 2 with the stage reached.
    result.map(|r| (r, outputs)).map_err(|e| (2, e.to_string()))
}

/// A duration in seconds from `--name` (`default` when absent); negative or not finite is
/// refused.
fn seconds(flags: &Flags, name: &str, default: f64) -> Result<Duration, String> {
    let s: f64 = flags.get(name, Some(default))?;
    Duration::try_from_secs_f64(s).map_err(|_| format!("--{name} {s}: not a duration in seconds"))
}

/// The cores `--cores 1,2,3` names, or with several `threads` the cores this process may run
/// on; none (no pinning) for one thread without `--cores`.
fn cores(flags: &Flags, threads: usize) -> Result<Vec<usize>, String> {
    let list: String = flags.get("cores", Some(String::new()))?;
    if list.is_empty() {
        if threads <= 1 {
            return Ok(Vec::new());
        }
        return Ok(core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect());
    }
    list.split(',')
        .map(|c| {
            c.trim()
                .parse()
                .map_err(|_| format!("--cores {list}: a comma-separated list of core numbers"))
        })
        .collect()
}

/// The DH groups `--groups` names (`default` when absent): what the loadgen offers.
fn groups(flags: &Flags, default: &str) -> Result<Vec<DhGroup>, String> {
    match flags.get("groups", Some(default.to_string()))?.as_str() {
        "all" => Ok(DhGroup::ALL.to_vec()),
        "2" => Ok(vec![DhGroup::Modp1024]),
        "14" => Ok(vec![DhGroup::Modp2048]),
        "16" => Ok(vec![DhGroup::Modp4096]),
        other => Err(format!("--groups {other}: use 2, 14, 16 or all")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok((report, outputs)) => {
            print!("{}", report.table());
            let files = [
                (outputs.json, report.json().to_string()),
                (outputs.plot, report.svg()),
            ];
            for (path, text) in files {
                if let Some(path) = path {
                    if let Err(e) = std::fs::write(&path, text) {
                        eprintln!("updraft-loadgen: cannot write {path}: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("updraft-loadgen: {message}");
            ExitCode::from(code)
        }
    }
}
