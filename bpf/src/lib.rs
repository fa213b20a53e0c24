//! Updraft's XDP program and what goes with it.
//!
//! - `src/xdp_rtmfp.bpf.c`: the XDP program, built by `build.rs` with clang when clang is
//!   there ([`OBJECT`]).
//! - [`classify`]: the program's decision in Rust, the reference the C program is checked
//!   against.
//!
//! - [`loader`]: loads the program with libbpf-rs and fills its maps; `tests/differential.rs`
//!   runs it in the kernel (`BPF_PROG_TEST_RUN`) against [`classify`].
//!

pub mod classify;
#[cfg(test)]
mod elf;
pub mod frame;
mod link;
pub mod loader;

pub use classify::{Filter, Prefix, Verdict};

/// The compiled XDP program, an eBPF ELF object, when clang was there at build time.
#[cfg(updraft_bpf_object)]
pub const OBJECT: Option<&[u8]> = Some(include_bytes!(env!("UPDRAFT_BPF_OBJECT")));
/// The compiled XDP program: not built (clang was missing at build time).
#[cfg(not(updraft_bpf_object))]
pub const OBJECT: Option<&[u8]> = None;

/// Why [`OBJECT`] is missing, for the start-up log line.
pub const NO_OBJECT_REASON: &str =
    "this build has no XDP program (clang was missing when it was built)";

/// The name of the program's section and function.
pub const PROGRAM: &str = "xdp_rtmfp";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_object_holds_the_program_its_maps_and_a_licence() {
        let Some(object) = OBJECT else {
            eprintln!("skipped: {NO_OBJECT_REASON}");
            return;
        };
        let sections = elf::bpf_sections(object).expect("an eBPF ELF object");
        for name in ["xdp", ".maps", "license"] {
            assert!(sections.iter().any(|s| s == name), "{name} in {sections:?}");
        }
        assert!(elf::bpf_sections(b"not an ELF file").is_none());
    }
}
