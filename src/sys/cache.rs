//! A hint to the CPU's caches: [`prefetch`] starts loading a cache line that a later step
//! will read, so that its miss overlaps the work before it.

/// Starts loading the cache line of `bytes`' first byte into the caches (nothing for an empty
/// slice, and nothing on targets other than x86-64). Only a hint: it never faults and
/// changes no value, so it is safe whatever happens to the memory afterwards.
#[inline(always)]
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if !bytes.is_empty() {
        // SAFETY: `prefetcht0` reads nothing into a register and cannot fault, whatever the
        // address; SSE, which it needs, is part of the x86-64 baseline. The pointer comes
        // from a live slice anyway.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                bytes.as_ptr().cast(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}
