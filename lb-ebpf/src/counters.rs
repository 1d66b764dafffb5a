//! Per-CPU packet counters by [`Reason`]: lock-free, summed by `lbctl stats`.

use lb_common::Reason;

use crate::maps::LB_COUNTERS;

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(slot) = LB_COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it, and softirq context does not nest
        // on one CPU for the same hook.
        unsafe { *slot += 1 };
    }
}
