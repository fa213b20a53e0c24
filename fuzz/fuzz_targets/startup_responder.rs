//! Fuzzes the stateless startup responder with arbitrary datagrams and keying payloads.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtmfp::startup::fuzzing::fuzz_responder(data);
});
