//! Fuzz the AMF3 reader and writer: parse, re-encode, re-parse (see `rtmfp::amf::fuzz_amf3`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtmfp::amf::fuzz_amf3(data);
});
