//! The uplink's fast path (XDP): north-south flows whose next hop is back out of the
//! uplink (a backend on another node, or a reply to an external client) are translated and
//! sent with XDP_TX without ever becoming an skb. Everything else — a backend on this node,
//! a reject, an unresolved neighbour, ICMP, fragments, a checksum XDP cannot complete — is
//! passed untouched to `lb_from_net` (tc), which does the same work on an skb.
//!
//! Checksums: a frame from a physical NIC always carries a complete L4 checksum, which the
//! incremental update keeps right. A frame from a sender on this machine (a veth, as Kind's
//! node interfaces are) may be CHECKSUM_PARTIAL: its checksum field holds only the
//! pseudo-header sum, for the NIC or the stack to complete. XDP cannot read the skb's
//! checksum state (no kfunc offers it), and after XDP_TX on a native veth nobody completes
//! it any more. Such a field is recognised by its value, the folded pseudo-header sum, and
//! the packet goes to tc, whose checksum helpers know the skb's state. A complete checksum
//! that happens to equal that sum (one in 65536) only costs the tc path.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    programs::XdpContext,
};
use lb_common::{checksum, proto, reason::Kind, Reason};

use crate::{
    clock,
    counters::{count, count_backend},
    fib::{self, Fib},
    flow::{self, Step},
    frame::Frame,
    frontend::Origin,
    nat::{self, Tuple},
    parse::{self, frag, Packet, ETH_HDR_LEN},
};

/// Where L4 starts after Ethernet and an IPv4 header without options.
const IPV4_L4: usize = ETH_HDR_LEN + 20;

#[inline(always)]
pub fn handle(ctx: &XdpContext) -> u32 {
    match try_handle(ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(reason);
            if reason.kind() == Kind::Dropped {
                XDP_DROP
            } else {
                XDP_PASS
            }
        }
    }
}

#[inline(always)]
fn try_handle(ctx: &XdpContext) -> Result<u32, Reason> {
    let Some(pkt) = parse::parse(ctx)? else {
        return Ok(XDP_PASS);
    };
    if pkt.proto == proto::ICMP {
        return Ok(XDP_PASS);
    }
    if pkt.frag != frag::NONE {
        // tc keeps the fragments' ports (crate::frag) and translates them alike.
        return Err(Reason::PassToTc);
    }
    // Only option-less IPv4 headers: with constant header offsets every direct write is
    // provably inside the frame (the verifier could not follow variable ones here); the
    // rare packet with IP options is left to tc.
    if pkt.l4 != IPV4_L4 {
        return Err(Reason::PassToTc);
    }
    let pkt = Packet {
        l3: ETH_HDR_LEN,
        l4: IPV4_L4,
        ..pkt
    };
    if checksum_is_partial(ctx, &pkt)? {
        return Err(Reason::PassCsumPartial);
    }
    let now = clock::now();
    match flow::decide(&pkt, Origin::Net, now) {
        Ok(Step::Untouched) => Ok(XDP_PASS),
        Ok(Step::Tracked {
            to,
            backend_id,
            reason,
        }) => {
            let Some(route) = tx_route(ctx, &to, pkt.proto) else {
                return Err(Reason::PassToTc);
            };
            transmit(ctx, &pkt, &to, &route, backend_id, reason)
        }
        Ok(Step::New(new)) => {
            // Check the way out before tracking the flow: if XDP cannot send it, tc starts
            // from scratch and makes the same choice (the backend hash is deterministic).
            let Some(route) = tx_route(ctx, &flow::predicted(&pkt, &new), pkt.proto) else {
                return Err(Reason::PassToTc);
            };
            let to = flow::commit(&pkt, &new, now)?;
            transmit(ctx, &pkt, &to, &route, new.backend_id, Reason::NewFlow)
        }
        // tc builds the ICMP reply.
        Err(Reason::RejectNoBackend) => Err(Reason::PassToTc),
        Err(reason) => Err(reason),
    }
}

/// Whether the L4 checksum field holds the folded pseudo-header sum, as a CHECKSUM_PARTIAL
/// packet's does (see the module's notes).
#[inline(always)]
fn checksum_is_partial(ctx: &XdpContext, pkt: &Packet) -> Result<bool, Reason> {
    let field: *const u16 = ctx.ptr_at(pkt.l4_csum_off()).ok_or(Reason::PassMalformed)?;
    // SAFETY: bounds checked by ptr_at.
    let field = unsafe { field.read_unaligned() };
    // The pseudo-header as native words of its network-order bytes, like every field here.
    let sum = (pkt.saddr & 0xffff)
        + (pkt.saddr >> 16)
        + (pkt.daddr & 0xffff)
        + (pkt.daddr >> 16)
        + u16::from_ne_bytes([0, pkt.proto]) as u32
        + pkt.l4_len.to_be() as u32;
    let seed = checksum::fold(sum);
    // One's complement has two zeroes.
    Ok(field == seed || (field == 0 && seed == 0xffff) || (field == 0xffff && seed == 0))
}

/// The route for `to`, if it leads back out of the uplink with a known neighbour.
#[inline(always)]
fn tx_route(ctx: &XdpContext, to: &Tuple, proto: u8) -> Option<fib::Route> {
    let Fib::Route(route) = fib::lookup(ctx, to, proto) else {
        return None;
    };
    (route.resolved && route.ifindex == ctx.ifindex()).then_some(route)
}

#[inline(always)]
fn transmit(
    ctx: &XdpContext,
    pkt: &Packet,
    to: &Tuple,
    route: &fib::Route,
    backend_id: u32,
    reason: Reason,
) -> Result<u32, Reason> {
    if pkt.ttl <= 1 {
        return Err(Reason::DropTtlExceeded);
    }
    nat::rewrite(ctx, pkt, to, true)?;
    fib::set_macs(ctx, route)?;
    count(reason);
    count(Reason::XdpTx);
    count_backend(backend_id, ctx.len());
    Ok(XDP_TX)
}
