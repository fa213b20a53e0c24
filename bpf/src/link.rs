//! Attaching an XDP program by a bpf_link with an explicit mode (native or generic), which
//! libbpf-rs does not offer: the one place in this crate with `unsafe`, for the libbpf call.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Creates a bpf_link attaching the XDP program `program` to interface `ifindex` with the
/// XDP attach `flags` (`XDP_FLAGS_DRV_MODE` or `XDP_FLAGS_SKB_MODE`). Closing the returned
/// descriptor detaches the program; so does the death of the process.
pub(crate) fn xdp_link_create(
    program: BorrowedFd<'_>,
    ifindex: u32,
    flags: u32,
) -> io::Result<OwnedFd> {
    let target = libc::c_int::try_from(ifindex).map_err(|_| io::Error::other("ifindex"))?;
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as libbpf_sys::size_t,
        flags,
        ..Default::default()
    };
    // SAFETY: `program` is a live program descriptor; `opts` is an initialised options struct
    // whose `sz` is its size, and libbpf only reads it during the call.
    let fd = unsafe {
        libbpf_sys::bpf_link_create(program.as_raw_fd(), target, libbpf_sys::BPF_XDP, &opts)
    };
    if fd < 0 {
        // libbpf returns -errno.
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: a non-negative result is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
