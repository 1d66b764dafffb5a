//! The lb datapath. Each program follows the packet's path:
//! parse -> conntrack -> frontend lookup -> backend selection -> NAT -> counters, with the
//! shared decision in `flow`.
//!
//! - `lb_from_pod` (tc ingress on the host side of a pod's veth) sees what pods send: new
//!   connections to a service are given a backend and DNATed, tracked flows follow conntrack.
//! - `lb_to_pod` (tc egress on the host side of a pod's veth) sees what reaches pods: replies
//!   from backends get the service address back as their source, wherever the backend ran.
//! - `lb_from_net` (tc ingress on the node's uplink) serves north-south traffic: NodePorts,
//!   LoadBalancer and external IPs, masquerading, and the replies of masqueraded flows.
//! - `lb_to_net` (tc egress on the node's uplink) translates what the node's own stack sends:
//!   the replies of backends that are the node itself (hostNetwork pods).
//! - `lb_xdp` (XDP on the uplink) does the same as `lb_from_net` for what it can send
//!   straight back out.
//! - `lb_sock_*` (cgroup hooks) translate node processes' sockets.
#![no_std]
#![no_main]
// BPF inline assembly (the atomics in atomic.rs) is not yet stable.
#![feature(asm_experimental_arch)]

mod atomic;
mod backend;
mod clock;
mod conntrack;
mod counters;
mod fib;
mod floor;
mod flow;
mod forward;
mod frag;
mod frame;
mod from_net;
mod frontend;
mod icmp;
mod maps;
mod nat;
mod parse;
mod reject;
mod reply;
mod snat;
mod sock;
mod source_range;
mod xdp;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};

/// tc verdicts. With tcx, "unspec" means "carry on to the next program, else pass".
pub(crate) const TC_ACT_UNSPEC: i32 = -1;
pub(crate) const TC_ACT_SHOT: i32 = 2;

#[classifier]
pub fn lb_from_pod(ctx: TcContext) -> i32 {
    forward::handle(&ctx)
}

#[classifier]
pub fn lb_to_pod(ctx: TcContext) -> i32 {
    reply::handle(&ctx, reply::From::Anywhere)
}

/// tc ingress on the node's uplink: north-south traffic to NodePorts, LoadBalancer and
/// external IPs, and replies of masqueraded flows.
#[classifier]
pub fn lb_from_net(ctx: TcContext) -> i32 {
    from_net::handle(&ctx)
}

/// tc egress on the node's uplink: replies the node's own stack sends for a backend that is
/// the node itself.
#[classifier]
pub fn lb_to_net(ctx: TcContext) -> i32 {
    reply::handle(&ctx, reply::From::Node)
}

/// XDP on the node's uplink: the fast path for what `lb_from_net` does.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    xdp::handle(&ctx)
}

/// cgroup connect4: node processes connecting to a service get its backend.
#[cgroup_sock_addr(connect4)]
pub fn lb_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::connect::handle(&ctx)
}

/// cgroup sendmsg4: unconnected UDP sends to a service go to its backend.
#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::connect::handle(&ctx)
}

/// cgroup recvmsg4: replies on unconnected UDP sockets show the service as their source.
#[cgroup_sock_addr(recvmsg4)]
pub fn lb_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse::handle(&ctx)
}

/// cgroup getpeername4: a translated socket's peer is the service, not the backend.
#[cgroup_sock_addr(getpeername4)]
pub fn lb_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse::handle(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; nothing can panic at run time.
    loop {}
}
