//! Builds the XDP program (`src/xdp_rtmfp.bpf.c`) with clang when it is there. Without clang
//! the crate still builds, without the program ([`OBJECT`] is `None`), and the server runs on
//! sockets only.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(updraft_bpf_object)");
    println!("cargo:rerun-if-changed=src/xdp_rtmfp.bpf.c");
    println!("cargo:rerun-if-env-changed=CLANG");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let Some(out_dir) = env::var_os("OUT_DIR") else {
        return;
    };
    let out = PathBuf::from(out_dir).join("xdp_rtmfp.o");
    // The kernel UAPI headers of the target (asm/types.h) live in the multiarch directory.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_string());
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-target", "bpf", &multiarch, "-c"])
        .arg("src/xdp_rtmfp.bpf.c")
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {
            println!("cargo:rustc-cfg=updraft_bpf_object");
            println!("cargo:rustc-env=UPDRAFT_BPF_OBJECT={}", out.display());
        }
        Ok(s) => println!(
            "cargo:warning=clang could not build the XDP program ({s}; are libbpf-dev and the \
             kernel headers installed?): the server will run on sockets only"
        ),
        Err(e) => println!(
            "cargo:warning=clang not found ({e}): the XDP program is not built and the server \
             will run on sockets only; `apt-get install clang libbpf-dev` builds it"
        ),
    }
}
