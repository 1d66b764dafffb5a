//! The lb datapath. Each program follows the packet's path:
//! parse -> conntrack -> frontend lookup -> backend selection -> NAT -> counters.
//!
//! - `lb_from_pod` (tc ingress on the host side of a pod's veth) sees what pods send: new
//!   connections to a service are given a backend and DNATed, tracked flows follow conntrack.
//! - `lb_to_pod` (tc egress on the host side of a pod's veth) sees what reaches pods: replies
//!   from backends get the service address back as their source, wherever the backend ran.
#![no_std]
#![no_main]
// BPF inline assembly (the atomic add in counters.rs) is not yet stable.
#![feature(asm_experimental_arch)]

mod backend;
mod conntrack;
mod counters;
mod forward;
mod frontend;
mod maps;
mod nat;
mod parse;
mod reply;

use aya_ebpf::{macros::classifier, programs::TcContext};

/// tc verdicts. With tcx, "unspec" means "carry on to the next program, else pass".
pub(crate) const TC_ACT_UNSPEC: i32 = -1;
pub(crate) const TC_ACT_SHOT: i32 = 2;

#[classifier]
pub fn lb_from_pod(ctx: TcContext) -> i32 {
    forward::handle(&ctx)
}

#[classifier]
pub fn lb_to_pod(ctx: TcContext) -> i32 {
    reply::handle(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; nothing can panic at run time.
    loop {}
}
