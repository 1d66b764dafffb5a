//! Counters: per-CPU packet counts by [`Reason`] (summed by `lbctl stats`), and packets and
//! bytes per backend (`lbctl services`).

use lb_common::{BackendId, Reason};

use crate::{
    atomic,
    maps::{LB_BE_STATS, LB_COUNTERS},
};

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
            atomic::add(&raw mut (*stats).packets, 1);
            atomic::add(&raw mut (*stats).bytes, bytes as u64);
        }
    }
}
