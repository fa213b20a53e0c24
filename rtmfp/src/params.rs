//! Protocol timing and size parameters, each with its source. Timeouts live here and nowhere else.

use core::time::Duration;

/// Default RTMFP UDP port (Flash profile convention; Cumulus, MonaServer, rtmfp-cpp).
pub const DEFAULT_PORT: u16 = 1935;

/// Timestamp clock: 4 ms per tick (250 Hz) (RFC 7016 §2.2.4).
pub const TIMESTAMP_TICK: Duration = Duration::from_millis(4);
/// Omit the timestamp echo once this long has passed since the timestamp arrived
/// (RFC 7016 §3.5.2.2; rtmfp-cpp `MAX_TS_ECHO_ELAPSED`).
pub const MAX_TS_ECHO_ELAPSED: Duration = Duration::from_secs(128);

/// Largest plain session packet we send (rtmfp-cpp: margin below 1280 for IPv6).
pub const MAX_SESSION_PACKET: usize = 1200;
/// Largest plain startup packet we accept or send (rtmfp-cpp).
pub const MAX_STARTUP_PACKET: usize = 4256;
/// Largest ping body we answer or send (rtmfp-cpp).
pub const MAX_PING_BODY: usize = 1000;
/// Largest per-flow metadata (RFC 7016 §2.3.11.1.1: SHOULD NOT exceed 512 bytes).
pub const MAX_FLOW_METADATA: usize = 512;

/// Initial IHello/IIKeying retransmission interval (rtmfp-cpp).
pub const STARTUP_INITIAL_RTX: Duration = Duration::from_secs(1);
/// Added to the startup retransmission interval on each attempt (RFC 7016 §3.5.1.1.1: at least 1.5 s).
pub const STARTUP_RTX_BACKOFF_STEP: Duration = Duration::from_millis(1500);
/// An opening session that is not open by now fails (RFC 7016 §3.5.1.1.1, RECOMMENDED 95 s).
pub const ULTIMATE_OPEN_TIMEOUT: Duration = Duration::from_secs(95);
/// Cookie lifetime: not sooner than the ultimate open timeout (RFC 7016 §3.5.1.1.2).
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(95);
/// Redirect addresses are added only while the candidate set is smaller than this
/// (RFC 7016 §3.5.1.1.1: SHOULD NOT be more than 24).
pub const REDIRECT_THRESHOLD: usize = 24;
/// Session packets buffered while keying completes (rtmfp-cpp `MAX_EARLY_PACKETS`).
pub const MAX_EARLY_PACKETS: usize = 18;

/// Initial ERTO (RFC 7016 §3.5.2.2).
pub const INITIAL_ERTO: Duration = Duration::from_secs(3);
/// Minimum ERTO (RFC 7016 §3.5.2.2).
pub const MIN_ERTO: Duration = Duration::from_millis(250);
/// Maximum ERTO after backoff (RFC 7016 §3.5.2.2).
pub const MAX_ERTO: Duration = Duration::from_secs(10);
/// Added to SRTT + 4·RTTVAR for the measured RTO (RFC 7016 §3.5.2.2).
pub const MRTO_MARGIN: Duration = Duration::from_millis(200);
/// Initial MRTO before any RTT sample (RFC 7016 §3.5.2.2).
pub const INITIAL_MRTO: Duration = Duration::from_millis(250);
/// Time-critical reverse notification window (RFC 7016 §3.5.2.1).
pub const TIME_CRITICAL_TIMEOUT: Duration = Duration::from_millis(800);
/// Packets with user data between acks or timeouts (RFC 7016 §3.5.2.3 burst avoidance).
pub const MAX_BURST_PACKETS: usize = 6;
/// Negative acknowledgements that count as a loss (RFC 7016 §3.6.2.5).
pub const NAKS_FOR_LOSS: u32 = 3;

/// Acknowledge after this many packets containing user data (RFC 7016 §3.6.3.4.4).
pub const OBLIGATORY_ACK_AFTER: u32 = 2;
/// Delayed-ack timer (RFC 7016 §3.6.3.4.5).
pub const DELAYED_ACK: Duration = Duration::from_millis(200);
/// Buffer advertisement unit (RFC 7016 §2.3.13, §2.3.14).
pub const BUFFER_BLOCK: usize = 1024;
/// Initial assumed receive window of the far end until the first ack (RFC 7016 §3.6.2).
pub const INITIAL_FAR_WINDOW: usize = 65536;
/// Buffer Probe / persist timer start (RFC 7016 §3.6.2.9.1).
pub const PERSIST_MIN: Duration = Duration::from_secs(1);
/// Buffer Probe / persist timer ceiling (RFC 7016 §3.6.2.9.1).
pub const PERSIST_MAX: Duration = Duration::from_secs(60);
/// Receive-flow linger after completion (RFC 7016 §3.6.3.8).
pub const RECV_FLOW_LINGER: Duration = Duration::from_secs(120);
/// Send-flow linger after completion (RFC 7016 §3.6.2.11).
pub const SEND_FLOW_LINGER: Duration = Duration::from_secs(130);
/// Unknown User Data option types below this are mandatory and reject the flow (RFC 7016 §2.3.11.1).
pub const MANDATORY_OPTION_CUTOFF: u64 = 0x2000;

/// Nearclose: Close Request retransmission period (RFC 7016 §3.5.5).
pub const CLOSE_RTX: Duration = Duration::from_secs(5);
/// Nearclose: give up after this long (RFC 7016 §3.5.5).
pub const NEARCLOSE_TIMEOUT: Duration = Duration::from_secs(90);
/// Farclose linger (RFC 7016 §3.5.5).
pub const FARCLOSE_LINGER: Duration = Duration::from_secs(19);
/// Session retransmission limit: fail the session when data goes unacknowledged this long
/// (rtmfp-cpp default).
pub const SESSION_RETRANSMIT_LIMIT: Duration = Duration::from_secs(120);
/// Idle limit: close a session that received nothing for this long (rtmfp-cpp default).
pub const SESSION_IDLE_LIMIT: Duration = Duration::from_secs(300);
/// Address mobility: at most one validation ping per second (RFC 7016 §3.5.4.2).
pub const MOBILITY_PING_INTERVAL: Duration = Duration::from_secs(1);
/// Address mobility: a validation reply older than this is ignored (RFC 7016 §3.5.4.2).
pub const MOBILITY_MAX_AGE: Duration = Duration::from_secs(120);
/// Minimum Flash keepalive period (RFC 7425 §5.3.4; Cumulus and rtmfp-cpp clamp to 5 s).
pub const MIN_KEEPALIVE: Duration = Duration::from_secs(5);
