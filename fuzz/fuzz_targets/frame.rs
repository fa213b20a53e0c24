//! Fuzz target: parse arbitrary bytes as an Ethernet frame and check that a datagram that
//! parses writes back to itself and is judged by the XDP classifier (see
//! `updraft_bpf::frame::fuzz_frame`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    updraft_bpf::frame::fuzz_frame(data);
});
