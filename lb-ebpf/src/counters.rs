//! Counters: per-CPU packet counts by [`Reason`] (summed by `lbctl stats`), and packets and
//! bytes per backend (`lbctl services`).

use lb_common::{BackendId, Reason};

use crate::maps::{LB_BE_STATS, LB_COUNTERS};

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(slot) = LB_COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it, and softirq context does not nest
        // on one CPU for the same hook.
        unsafe { *slot += 1 };
    }
}

/// Adds one packet of `bytes` to the backend's traffic.
#[inline(always)]
pub fn count_backend(id: BackendId, bytes: u32) {
    if let Some(stats) = LB_BE_STATS.get_ptr_mut(id) {
        // SAFETY: the pointer is valid for this run and the fields are 8-byte aligned u64s.
        unsafe {
            atomic_add(&raw mut (*stats).packets, 1);
            atomic_add(&raw mut (*stats).bytes, bytes as u64);
        }
    }
}

/// `lock *(u64 *)(ptr) += val`: the BPF atomic add. Written out because the BPF target has
/// no compare-and-swap (so `AtomicU64::fetch_add` does not exist) and is declared
/// single-threaded (so LLVM may lower atomic intrinsics to plain read-modify-write), while
/// the array is shared by every CPU.
///
/// # Safety
/// `ptr` must point to a live, 8-byte aligned u64 in a map value.
#[inline(always)]
unsafe fn atomic_add(ptr: *mut u64, val: u64) {
    core::arch::asm!(
        "lock *(u64 *)({ptr} + 0) += {val}",
        ptr = in(reg) ptr,
        val = in(reg) val,
        options(nostack),
    );
}
