//! Fuzz the Flash-profile parsers (flow metadata, TC messages, commands, data and user-control
//! messages, NetGroup join and member messages; see `rtmfp::flash::fuzz_flash`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtmfp::flash::fuzz_flash(data);
});
