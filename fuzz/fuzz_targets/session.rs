//! Fuzzes an open session with arbitrary datagrams and plain packets.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rtmfp::session::fuzzing::fuzz_session(data);
});
