//! Source translation: the source port of a masqueraded flow (or of a flow whose port had to
//! be remapped). A port is taken by claiming the reply tuple it gives (backend -> source
//! address:port) in conntrack, so two live flows never share one, and a port is free again
//! as soon as its flow has ended: expired, or closed and quiet (lb_common's `frees_tuple`).
//!
//! Candidates: the preferred port if it lies in the range (the client's own, or the port the
//! flow had before it was reopened), then [`snat_ports::TRIES`] tries in all:
//! - a range no larger than that is swept, each port once from the first candidate on, so a
//!   flow is refused only when every port is taken (as nf_nat does for small ranges);
//! - a larger range gets random candidates. Random rather than Cilium's
//!   random-then-consecutive: a closed flow's port is free to a newcomer only if the
//!   newcomer's TCP timestamp is newer (half the time), so held and free ports are
//!   scattered, and consecutive tries would keep landing in the same crowd.
//!
//! The tries run under `bpf_loop`, so the verifier checks one try rather than every unrolled
//! copy. The search's state lives in a
//! per-CPU scratch slot rather than on the stack: a program and its callback share 512
//! bytes of stack, and the packet programs need most of them.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_prandom_u32, bpf_loop},
    macros::map,
    maps::PerCpuArray,
};
use lb_common::{conntrack::snat_ports, CtEntry, CtKey, CtTimeouts, Reason};

use crate::conntrack::{claim, Claim};

/// The search `bpf_loop` runs. Not pinned: it holds nothing between packets.
#[map]
static LB_SNAT_SEARCH: PerCpuArray<Search> = PerCpuArray::with_max_entries(1, 0);

/// The state of one search.
#[repr(C)]
pub struct Search {
    /// The reply tuple being claimed; its destination port is the candidate.
    key: CtKey,
    /// The reply entry the claim inserts (the same for every candidate).
    entry: CtEntry,
    timeouts: CtTimeouts,
    now: u64,
    min: u32,
    max: u32,
    /// The candidate of the current try, host order.
    port: u32,
    /// 1 when the range has no more ports than tries: step through it instead of guessing.
    sweep: u32,
    /// 0 still searching, 1 claimed, 2 the table is full.
    outcome: u32,
    /// The new flow's TCP timestamp (see `conntrack::released`).
    tsval: u32,
}

const SEARCHING: u32 = 0;
const CLAIMED: u32 = 1;
const TABLE_FULL: u32 = 2;

/// Claims a source port for the flow `key` -> `forward` (whose `snat_addr` is set) and
/// returns it in network order.
#[inline(always)]
pub fn allocate(
    key: &CtKey,
    forward: &CtEntry,
    preferred: u16,
    (range_min, range_max): (u16, u16),
    timeouts: &CtTimeouts,
    now: u64,
    tsval: u32,
) -> Result<u16, Reason> {
    let (min, max) = if range_min != 0 && range_max >= range_min {
        (range_min as u32, range_max as u32)
    } else {
        (snat_ports::MIN as u32, snat_ports::MAX as u32)
    };
    let preferred = preferred as u32;
    let search = LB_SNAT_SEARCH
        .get_ptr_mut(0)
        .ok_or(Reason::DropSnatExhausted)?;
    // SAFETY: this CPU's slot; nothing else runs the search on this CPU meanwhile (packet
    // programs do not nest).
    unsafe {
        (*search).key = key.reply_of_forward(forward);
        (*search).entry = key.reply_entry(forward);
        (*search).timeouts = *timeouts;
        (*search).now = now;
        (*search).min = min;
        (*search).max = max;
        (*search).port = if (min..=max).contains(&preferred) {
            preferred
        } else {
            random_in(min, max)
        };
        (*search).sweep = (max - min < snat_ports::TRIES) as u32;
        (*search).outcome = SEARCHING;
        (*search).tsval = tsval;
        bpf_loop(
            snat_ports::TRIES,
            try_port as *const () as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        match (*search).outcome {
            CLAIMED => Ok(((*search).port as u16).to_be()),
            TABLE_FULL => Err(Reason::DropCtFull),
            _ => Err(Reason::DropSnatExhausted),
        }
    }
}

/// A uniformly random port in `min..=max` (a multiply-shift, no division).
#[inline(always)]
fn random_in(min: u32, max: u32) -> u32 {
    // SAFETY: a plain helper call.
    let r = unsafe { bpf_get_prandom_u32() } as u64;
    min + ((r * (max - min + 1) as u64) >> 32) as u32
}

/// One try: try `i` claims the current candidate, after moving on (every try but the first)
/// to the next port of a swept range or a random one. Returns 1 to stop the loop.
extern "C" fn try_port(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = LB_SNAT_SEARCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot, filled by `allocate` for this loop.
    let s = unsafe { &mut *s };
    if s.max < s.min {
        return 1;
    }
    if i > 0 {
        s.port = if s.sweep == 0 {
            random_in(s.min, s.max)
        } else if s.port >= s.max {
            s.min
        } else {
            s.port + 1
        };
    }
    s.key.dport = (s.port as u16).to_be();
    match claim(&s.key, &s.entry, s.now, &s.timeouts, s.tsval) {
        Ok(Claim::Claimed) => {
            s.outcome = CLAIMED;
            1
        }
        Ok(Claim::Taken) => 0,
        Err(_) => {
            s.outcome = TABLE_FULL;
            1
        }
    }
}
