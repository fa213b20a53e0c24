//! Fuzz target: parse arbitrary bytes as a packet body (chunks) and check the
//! wire round-trip invariants (see `rtmfp::wire::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rtmfp::wire::fuzzing::fuzz_chunks(data);
});
