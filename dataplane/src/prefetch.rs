//! Asks the processor to load memory into its caches ahead of use: the worker names the next
//! sessions' state (rtmfp's `session::lookahead`) while it works on the current one, so that
//! a fanout's or a receive batch's cache misses overlap instead of following one another.
//!
//! `unsafe`: the prefetch instruction is a `core::arch` intrinsic, which Rust makes `unsafe`
//! to call. This module is the third place allowed `unsafe` (docs/decisions/0012-prefetch.md);
//! it holds that one call and nothing else.
#![allow(unsafe_code)]

/// Bytes of a cache line on the processors we run on (x86-64).
const CACHE_LINE: usize = 64;
/// Most bytes one call asks for: a bound on the work a wrong length could cause. A session's
/// hottest span, its send flow table, is under 3 KB.
const MAX_SPAN: usize = 4096;

/// Asks for every cache line overlapping the `len` bytes at `start` (at most [`MAX_SPAN`]) to
/// be loaded into every cache level; nothing for no bytes (an empty vector's dangling
/// pointer). Reads nothing and cannot fail: a prefetch of memory that is not mapped is
/// dropped by the processor. A no-op off x86-64.
#[inline]
pub fn prefetch(start: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        if len == 0 {
            return;
        }
        let end = start.wrapping_add(len.min(MAX_SPAN));
        let mut line = start.wrapping_sub(start as usize % CACHE_LINE);
        while line < end {
            // SAFETY: PREFETCHT0 (SSE, which every x86-64 processor has) is a hint. It never
            // faults, whatever the address, and neither reads nor writes memory the program
            // can observe, so no address can make it unsound.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.cast()) };
            line = line.wrapping_add(CACHE_LINE);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_address_and_length_is_harmless() {
        let data = [7u8; 300];
        prefetch(data.as_ptr(), data.len());
        prefetch(data.as_ptr().wrapping_add(1), 0);
        // Unmapped memory, and a length far past any object: bounded by MAX_SPAN.
        prefetch(core::ptr::null(), usize::MAX);
        prefetch(usize::MAX as *const u8, CACHE_LINE);
        assert_eq!(data, [7u8; 300]);
    }
}
