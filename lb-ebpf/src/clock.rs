//! The datapath's clock: CLOCK_MONOTONIC at tick resolution (bpf_ktime_get_coarse_ns), the
//! clock `lbctl` compares conntrack and affinity stamps with.
//!
//! Every timeout it serves is seconds long, so a tick (a few ms) of resolution is plenty,
//! and the coarse clock is a plain read of the last tick's time where the fine one reads
//! the clock source on every packet. Every program must use this one clock: an entry
//! stamped by a finer clock could lie a tick in the coarse clock's future.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a plain helper call without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}
