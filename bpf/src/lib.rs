//! Updraft XDP program (C, built with clang) and its typed loader.
//!
//! Not implemented yet: this crate is filled by the kernel-bypass issue. It exports nothing until then.
