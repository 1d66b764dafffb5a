//! BPF atomics, written out: the BPF target has no compare-and-swap in Rust's sense
//! (`AtomicU64` methods do not exist there) and is declared single-threaded, so LLVM may
//! lower atomic intrinsics to plain read-modify-write, while maps are shared by every CPU.

/// `lock *(u64 *)(ptr) += val`: the BPF atomic add.
///
/// # Safety
/// `ptr` must point to a live, 8-byte aligned u64 in a map value.
#[inline(always)]
pub unsafe fn add(ptr: *mut u64, val: u64) {
    core::arch::asm!(
        "lock *(u64 *)({ptr} + 0) += {val}",
        ptr = in(reg) ptr,
        val = in(reg) val,
        options(nostack),
    );
}

/// Stores `new` at `ptr` if it holds `old`, atomically; returns what it held (`old` when
/// the exchange happened). BPF_ATOMIC | BPF_CMPXCHG, kernel 5.12+.
///
/// # Safety
/// `ptr` must point to a live, 8-byte aligned u64 in a map value.
#[inline(always)]
pub unsafe fn compare_exchange(ptr: *mut u64, old: u64, new: u64) -> u64 {
    let mut r0 = old;
    core::arch::asm!(
        "r0 = cmpxchg_64({ptr} + 0, r0, {new})",
        ptr = in(reg) ptr,
        new = in(reg) new,
        inout("r0") r0,
        options(nostack),
    );
    r0
}
