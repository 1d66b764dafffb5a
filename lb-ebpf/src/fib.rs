//! Forwarding a translated packet ourselves: a FIB lookup for the new addresses, then a
//! redirect (tc) or XDP_TX. Needed where the stack would refuse the packet (a masqueraded
//! packet's source is the node's own address, which the stack drops as a martian when it
//! arrives on an interface), and faster everywhere else.

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use lb_common::Reason;

use crate::{counters::count, frame::Frame, nat::Tuple, TC_ACT_UNSPEC};

const AF_INET: u8 = 2;
/// What bpf_redirect returns (and a tc program must return) for a successful redirect.
const TC_ACT_REDIRECT: i32 = 7;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
/// The destination is this host: the stack delivers it.
const BPF_FIB_LKUP_RET_NOT_FWDED: i64 = 4;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;
/// The packet is larger than the route's interface takes.
const BPF_FIB_LKUP_RET_FRAG_NEEDED: i64 = 8;

/// What the FIB says about a translated packet's new destination.
pub enum Fib {
    /// Forward it out of this interface.
    Route(Route),
    /// It is larger than the MTU of the interface it would leave by. Only tc checks: the
    /// skb lookup compares the packet with the interface (GSO packets by their segments),
    /// while XDP, which only sends a frame back out of the interface it came in by, asks
    /// for no check.
    TooBig { mtu: u32 },
    /// It is for this node itself: the stack delivers it.
    Local,
    /// No route the datapath can use: the stack decides.
    None,
}

/// Where the FIB sends a packet: the interface and, if the neighbour is known, the MACs.
pub struct Route {
    pub ifindex: u32,
    /// False when the neighbour entry is missing (only tc can resolve it, via
    /// bpf_redirect_neigh).
    pub resolved: bool,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// Looks up the route for `to` as if the packet arrived on `ctx`'s interface.
#[inline(always)]
pub fn lookup<F: Frame>(ctx: &F, to: &Tuple, proto: u8) -> Fib {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = proto;
    params.sport = to.sport;
    params.dport = to.dport;
    params.ifindex = ctx.ifindex();
    // tot_len stays 0: the skb lookup then checks the skb itself against the interface.
    params.__bindgen_anon_3.ipv4_src = to.saddr;
    params.__bindgen_anon_4.ipv4_dst = to.daddr;
    // SAFETY: the helper reads and writes only `params`, whose size it is given.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => Fib::Route(Route {
            ifindex: params.ifindex,
            resolved: true,
            smac: params.smac,
            dmac: params.dmac,
        }),
        BPF_FIB_LKUP_RET_NO_NEIGH => Fib::Route(Route {
            ifindex: params.ifindex,
            resolved: false,
            smac: [0; 6],
            dmac: [0; 6],
        }),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Fib::TooBig {
            // SAFETY: the helper fills mtu_result with this answer.
            mtu: unsafe { params.__bindgen_anon_1.mtu_result } as u32,
        },
        BPF_FIB_LKUP_RET_NOT_FWDED => Fib::Local,
        _ => Fib::None,
    }
}

/// Writes the route's MACs into the Ethernet header.
#[inline(always)]
pub fn set_macs<F: Frame>(ctx: &F, route: &Route) -> Result<(), Reason> {
    let eth: *mut [[u8; 6]; 2] = ctx.ptr_at(0).ok_or(Reason::DropRewrite)?;
    // SAFETY: bounds checked by ptr_at; byte arrays have no alignment needs.
    unsafe { eth.write([route.dmac, route.smac]) };
    Ok(())
}

/// Sends a translated skb out of `route`'s interface; left to the stack if that fails
/// (counted).
#[inline(always)]
pub fn redirect(ctx: &TcContext, route: &Route) -> i32 {
    if !route.resolved {
        // SAFETY: no parameters: the helper resolves the neighbour itself.
        return unsafe { bpf_redirect_neigh(route.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    }
    // Headers may have moved with the checksum helpers: write through fresh pointers.
    if ctx.pull(14) && set_macs(ctx, route).is_ok() {
        // SAFETY: plain helper call.
        let rc = unsafe { bpf_redirect(route.ifindex, 0) };
        if rc == TC_ACT_REDIRECT as i64 {
            return TC_ACT_REDIRECT;
        }
    }
    count(Reason::PassNoRoute);
    TC_ACT_UNSPEC
}
