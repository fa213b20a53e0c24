//! Fuzz the control-plane IPC codec: decode as `Up` and as `Down`, re-encode what decodes and
//! decode it again (see `updraft_control::ipc::fuzz_ipc`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    updraft_control::ipc::fuzz_ipc(data);
});
