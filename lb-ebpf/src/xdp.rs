//! The uplink's fast path (XDP): north-south flows whose next hop is back out of the
//! uplink (a backend on another node, or a reply to an external client) are translated and
//! sent with XDP_TX without ever becoming an skb. Everything else — a backend on this node,
//! a reject, an unresolved neighbour, ICMP — is passed untouched to `lb_from_net` (tc),
//! which does the same work on an skb.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    programs::XdpContext,
};
use lb_common::{proto, reason::Kind, Reason};

use crate::{
    clock,
    counters::{count, count_backend},
    fib,
    flow::{self, Step},
    frame::Frame,
    frontend::Origin,
    nat::{self, Tuple},
    parse::{self, Packet, ETH_HDR_LEN},
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

/// The route for `to`, if it leads back out of the uplink with a known neighbour.
#[inline(always)]
fn tx_route(ctx: &XdpContext, to: &Tuple, proto: u8) -> Option<fib::Route> {
    let route = fib::lookup(ctx, to, proto)?;
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
    nat::rewrite(ctx, pkt, to)?;
    fib::set_macs(ctx, route)?;
    count(reason);
    count(Reason::XdpTx);
    count_backend(backend_id, ctx.len());
    Ok(XDP_TX)
}
