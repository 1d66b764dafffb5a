//! Giving freed heap back to the system after a full sync.
//!
//! A full sync builds the whole desired model next to the one it replaces and frees it
//! afterwards; glibc keeps such freed memory in its arenas, so the agent's RSS would stay at
//! the peak of its largest sync rather than at what it holds. Operators read RSS as the
//! agent's footprint, so it is trimmed after every full sync (a few ms at 10k services,
//! and full syncs are rare: start, relist, periodic resync).

/// Returns free heap memory to the system where the C library allows it.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
