//! Fuzz the AMF0 reader and writer: parse, re-encode, re-parse (see `rtmfp::amf::fuzz_amf0`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtmfp::amf::fuzz_amf0(data);
});
