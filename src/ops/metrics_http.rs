//! `--metrics ADDR`: a small HTTP/1.1 server for monitoring, on its own thread.
//!
//! `GET /metrics` answers Prometheus text exposition (format 0.0.4), `GET /stats` JSON. One
//! connection is served at a time, each answered once and closed; a request head is at most
//! [`MAX_HEAD`] bytes and must arrive within [`READ_TIMEOUT`]. It is meant for a loopback or
//! management address, not for the Internet.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8 * 1024;
/// Longest wait for a whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a response to be taken by the client.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the idle server looks at its stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(100);
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 1024;
/// Content type of `/metrics` (Prometheus text format 0.0.4).
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";
/// Content type of `/stats`.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// Content type of error bodies.
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// What the server reports; called on the metrics thread for each request.
pub trait MetricsSource: Send + Sync + 'static {
    /// Prometheus text exposition, for `GET /metrics`.
    fn prometheus(&self) -> String;
    /// A JSON document, for `GET /stats`.
    fn json(&self) -> String;
}

/// The running metrics server; stopped by [`MetricsServer::shutdown`] or on drop.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address it listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the server and waits for its thread: at most one poll period when idle, or until
    /// the connection being served ends (bounded by the read and write timeouts).
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Binds `addr` (the error is returned when that fails) and serves metrics from `source` on a
/// thread of its own.
pub fn spawn(addr: SocketAddr, source: Arc<dyn MetricsSource>) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || accept_loop(&listener, &*source, &thread_stop))?;
    Ok(MetricsServer {
        local_addr,
        stop,
        thread: Some(thread),
    })
}

fn accept_loop(listener: &TcpListener, source: &dyn MetricsSource, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = serve(stream, source) {
                    tracing::debug!(%peer, error = %e, "metrics client");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "metrics: accept failed");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

/// Why a request head was not read.
#[derive(Debug)]
enum HeadError {
    /// Longer than [`MAX_HEAD`]: answered 400.
    TooLarge,
    /// Closed, timed out or failed before the head ended: nobody to answer.
    Io(io::Error),
}

/// Reads up to the blank line ending the head, within [`MAX_HEAD`] bytes and [`READ_TIMEOUT`].
fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut head = Vec::new();
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Io(io::ErrorKind::TimedOut.into()));
        }
        stream.set_read_timeout(Some(left)).map_err(HeadError::Io)?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HeadError::Io(e)),
        };
        // Look for the end from a little before the new bytes: it may straddle reads.
        let from = head.len().saturating_sub(2);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&head[from..]) {
            head.truncate(from + end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Where the head ends in `bytes` (just after the first line break before the blank line),
/// accepting bare `\n` line ends.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).enumerate().find_map(|(i, w)| match w {
        b"\n\n" => Some(i + 1),
        b"\n\r" if bytes.get(i + 2) == Some(&b'\n') => Some(i + 1),
        _ => None,
    })
}

/// A response: status and body.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
    /// Sent as `Allow` with 405.
    allow: Option<&'static str>,
}

impl Response {
    fn text(status: &'static str, body: &str) -> Response {
        Response {
            status,
            content_type: TEXT_CONTENT_TYPE,
            body: format!("{body}\n"),
            allow: None,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = self.allow {
            let _ = write!(out, "Allow: {allow}\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&self.body);
        out.into_bytes()
    }
}

/// The response to a request head.
fn respond(head: &[u8], source: &dyn MetricsSource) -> Response {
    let bad = || Response::text("400 Bad Request", "bad request");
    let Ok(head) = std::str::from_utf8(head) else {
        return bad();
    };
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad();
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return bad();
    }
    if method != "GET" {
        return Response {
            allow: Some("GET"),
            ..Response::text("405 Method Not Allowed", "only GET is served")
        };
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let (render, content_type): (fn(&dyn MetricsSource) -> String, _) = match path {
        "/metrics" => (|s| s.prometheus(), PROMETHEUS_CONTENT_TYPE),
        "/stats" => (|s| s.json(), JSON_CONTENT_TYPE),
        _ => return Response::text("404 Not Found", "not found: try /metrics or /stats"),
    };
    // A panicking source costs one 500, not the metrics thread.
    match catch_unwind(AssertUnwindSafe(|| render(source))) {
        Ok(body) => Response {
            status: "200 OK",
            content_type,
            body,
            allow: None,
        },
        Err(_) => Response::text("500 Internal Server Error", "metrics source failed"),
    }
}

/// Answers one connection and closes it.
fn serve(mut stream: TcpStream, source: &dyn MetricsSource) -> io::Result<()> {
    // Accepted sockets do not inherit the listener's non-blocking mode on Linux; make sure.
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let response = match read_head(&mut stream) {
        Ok(head) => respond(&head, source),
        Err(HeadError::TooLarge) => Response::text("400 Bad Request", "request head too large"),
        Err(HeadError::Io(e)) => return Err(e),
    };
    stream.write_all(&response.to_bytes())?;
    stream.shutdown(Shutdown::Write)
}

/// Builds Prometheus text exposition (format 0.0.4): `# HELP` and `# TYPE` once per metric
/// name, then one sample line per call. Samples of one metric must be written together.
#[derive(Debug, Default)]
pub struct PromWriter {
    out: String,
    described: HashSet<String>,
}

impl PromWriter {
    /// An empty exposition.
    pub fn new() -> PromWriter {
        PromWriter::default()
    }

    /// A counter sample (by convention `name` ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.sample(name, help, "counter", labels, &value.to_string());
    }

    /// A gauge sample; NaN and infinities are written as `NaN`, `+Inf` and `-Inf`.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let value = if value.is_nan() {
            "NaN".to_string()
        } else if value == f64::INFINITY {
            "+Inf".to_string()
        } else if value == f64::NEG_INFINITY {
            "-Inf".to_string()
        } else {
            value.to_string()
        };
        self.sample(name, help, "gauge", labels, &value);
    }

    /// The exposition text.
    pub fn finish(self) -> String {
        self.out
    }

    fn sample(&mut self, name: &str, help: &str, kind: &str, labels: &[(&str, &str)], value: &str) {
        if self.described.insert(name.to_string()) {
            let help = help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        }
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let value = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{label}=\"{value}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const METRICS_BODY: &str = "# HELP up Up.\n# TYPE up gauge\nup 1\n";
    const STATS_BODY: &str = "{\"sessions\":3}";

    struct Fixed;

    impl MetricsSource for Fixed {
        fn prometheus(&self) -> String {
            METRICS_BODY.to_string()
        }
        fn json(&self) -> String {
            STATS_BODY.to_string()
        }
    }

    fn start() -> MetricsServer {
        spawn((Ipv4Addr::LOCALHOST, 0).into(), Arc::new(Fixed)).expect("spawn")
    }

    /// Sends `raw`, reads until the server closes; a reset counts as the end.
    fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // The server may close before taking everything (oversized heads): ignore that.
        let _ = stream.write_all(raw);
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Status line, headers (lowercased names) and body; checks Content-Length.
    fn parse(response: &str) -> (String, Vec<(String, String)>, String) {
        let (head, body) = response.split_once("\r\n\r\n").expect("head");
        let mut lines = head.split("\r\n");
        let status = lines.next().expect("status").to_string();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(": ").expect("header");
                (k.to_ascii_lowercase(), v.to_string())
            })
            .collect();
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .expect("content-length")
            .1
            .parse::<usize>()
            .expect("number");
        assert_eq!(length, body.len(), "{response}");
        assert!(headers.contains(&("connection".into(), "close".into())));
        (status, headers, body.to_string())
    }

    fn get(addr: SocketAddr, path: &str) -> (String, Vec<(String, String)>, String) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        parse(&exchange(addr, request.as_bytes()))
    }

    fn content_type(headers: &[(String, String)]) -> &str {
        &headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .expect("content-type")
            .1
    }

    #[test]
    fn serves_metrics_and_stats() {
        let server = start();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let (status, headers, body) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(content_type(&headers), PROMETHEUS_CONTENT_TYPE);
        assert_eq!(body, METRICS_BODY);
        let (status, headers, body) = get(addr, "/stats?pretty=1");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(content_type(&headers), JSON_CONTENT_TYPE);
        assert_eq!(body, STATS_BODY);
        // Bare LF line ends are accepted too.
        let response = exchange(addr, b"GET /stats HTTP/1.0\n\n");
        assert_eq!(parse(&response).2, STATS_BODY);
        server.shutdown();
    }

    #[test]
    fn unknown_path_is_404_and_other_methods_405() {
        let server = start();
        let (status, _, body) = get(server.local_addr(), "/");
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        assert!(body.contains("/metrics"));
        let response = exchange(
            server.local_addr(),
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        );
        let (status, headers, _) = parse(&response);
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert!(headers.contains(&("allow".into(), "GET".into())));
    }

    #[test]
    fn bad_clients_do_not_stop_the_server() {
        let server = start();
        let addr = server.local_addr();
        // Oversized head: 400, or closed before the client read it.
        let response = exchange(addr, &vec![b'a'; 4 * MAX_HEAD]);
        assert!(
            response.is_empty() || response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{response}"
        );
        // Garbage request line and non-UTF-8 heads: 400.
        for raw in [
            &b"hello\r\n\r\n"[..],
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"\xff\xfe /\r\n\r\n",
        ] {
            let (status, _, _) = parse(&exchange(addr, raw));
            assert_eq!(status, "HTTP/1.1 400 Bad Request");
        }
        // A client that goes away without a word.
        drop(TcpStream::connect(addr).expect("connect"));
        assert_eq!(get(addr, "/metrics").0, "HTTP/1.1 200 OK");
    }

    #[test]
    fn a_silent_client_is_dropped_after_the_read_timeout() {
        let server = start();
        let addr = server.local_addr();
        let silent = TcpStream::connect(addr).expect("connect");
        let started = Instant::now();
        let (status, _, _) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let waited = started.elapsed();
        assert!(waited < READ_TIMEOUT * 3, "{waited:?}");
        drop(silent);
    }

    #[test]
    fn bind_failure_is_returned() {
        let server = start();
        let e = spawn(server.local_addr(), Arc::new(Fixed)).expect_err("port in use");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn shutdown_frees_the_port() {
        let server = start();
        let addr = server.local_addr();
        drop(server);
        let again = spawn(addr, Arc::new(Fixed)).expect("rebind after shutdown");
        assert_eq!(get(again.local_addr(), "/stats").2, STATS_BODY);
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(15));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    #[test]
    fn prom_writer_exact_output() {
        let mut w = PromWriter::new();
        w.counter(
            "updraft_packets_total",
            "Packets received.",
            &[("worker", "0")],
            10,
        );
        w.counter(
            "updraft_packets_total",
            "Packets received.",
            &[("worker", "1")],
            7,
        );
        w.gauge(
            "updraft_sessions",
            "Open sessions,\nby app \\ path.",
            &[],
            3.0,
        );
        w.gauge(
            "updraft_app_ratio",
            "A ratio.",
            &[("app", "a\"b\\c\nd"), ("kind", "x")],
            0.5,
        );
        w.gauge("updraft_nan", "Not a number.", &[], f64::NAN);
        w.gauge("updraft_inf", "Unbounded.", &[("sign", "+")], f64::INFINITY);
        w.gauge(
            "updraft_inf",
            "Unbounded.",
            &[("sign", "-")],
            f64::NEG_INFINITY,
        );
        assert_eq!(
            w.finish(),
            "# HELP updraft_packets_total Packets received.\n\
             # TYPE updraft_packets_total counter\n\
             updraft_packets_total{worker=\"0\"} 10\n\
             updraft_packets_total{worker=\"1\"} 7\n\
             # HELP updraft_sessions Open sessions,\\nby app \\\\ path.\n\
             # TYPE updraft_sessions gauge\n\
             updraft_sessions 3\n\
             # HELP updraft_app_ratio A ratio.\n\
             # TYPE updraft_app_ratio gauge\n\
             updraft_app_ratio{app=\"a\\\"b\\\\c\\nd\",kind=\"x\"} 0.5\n\
             # HELP updraft_nan Not a number.\n\
             # TYPE updraft_nan gauge\n\
             updraft_nan NaN\n\
             # HELP updraft_inf Unbounded.\n\
             # TYPE updraft_inf gauge\n\
             updraft_inf{sign=\"+\"} +Inf\n\
             updraft_inf{sign=\"-\"} -Inf\n"
        );
    }

    #[test]
    fn a_panicking_source_costs_one_500() {
        struct Panics;
        impl MetricsSource for Panics {
            fn prometheus(&self) -> String {
                std::panic::panic_any("source failure in test")
            }
            fn json(&self) -> String {
                STATS_BODY.to_string()
            }
        }
        let server = spawn((Ipv4Addr::LOCALHOST, 0).into(), Arc::new(Panics)).expect("spawn");
        let addr = server.local_addr();
        assert_eq!(
            get(addr, "/metrics").0,
            "HTTP/1.1 500 Internal Server Error"
        );
        assert_eq!(get(addr, "/stats").2, STATS_BODY);
    }
}
