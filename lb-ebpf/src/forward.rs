//! What pods send (tc ingress on a pod's veth): tracked flows follow conntrack, replies of
//! flows translated on this node get the service back, and new connections to a service
//! get a backend, a conntrack entry and DNAT (masqueraded for hairpin and for
//! externalTrafficPolicy=Cluster addresses).

use aya_ebpf::programs::TcContext;
use lb_common::{proto, Reason};

use crate::{
    clock,
    counters::{count, count_backend},
    fib::{self, Fib},
    flow::{self, Step},
    frag,
    frontend::Origin,
    icmp,
    nat::{self, Tuple},
    parse::{self, Packet},
    reject, TC_ACT_SHOT, TC_ACT_UNSPEC,
};

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    match try_handle(ctx) {
        Ok(verdict) => verdict,
        Err(reason) => verdict(ctx, reason),
    }
}

/// Counts `reason` and turns it into a verdict.
#[inline(always)]
pub fn verdict(_ctx: &TcContext, reason: Reason) -> i32 {
    count(reason);
    match reason.kind() {
        lb_common::reason::Kind::Dropped | lb_common::reason::Kind::Rejected => TC_ACT_SHOT,
        _ => TC_ACT_UNSPEC,
    }
}

/// Answers a reject with ICMP, or drops when the packet cannot be turned around.
#[inline(always)]
pub fn reject_or_drop(ctx: &TcContext, pkt: &parse::Packet) -> i32 {
    match reject::port_unreachable(ctx, pkt) {
        Ok(verdict) => {
            count(Reason::RejectNoBackend);
            verdict
        }
        Err(reason) => verdict(ctx, reason),
    }
}

#[inline(always)]
fn try_handle(ctx: &TcContext) -> Result<i32, Reason> {
    translate(ctx, Origin::Pod)
}

/// The tc side of every program that sees a flow's first packets (`lb_from_pod`,
/// `lb_from_net`): decide, track, rewrite, and forward where the stack would not.
#[inline(always)]
pub fn translate(ctx: &TcContext, origin: Origin) -> Result<i32, Reason> {
    let Some(mut pkt) = parse::parse(ctx)? else {
        return Ok(TC_ACT_UNSPEC);
    };
    if pkt.proto == proto::ICMP {
        return Ok(match icmp::translate_error(ctx, &pkt)? {
            Some(to) => forward_error(ctx, &pkt, &to),
            None => TC_ACT_UNSPEC,
        });
    }
    frag::track(&mut pkt)?;
    let now = clock::now();
    let (to, backend_id, reason) = match flow::decide(&pkt, origin, now) {
        Ok(Step::Untouched) => return Ok(TC_ACT_UNSPEC),
        Ok(Step::Tracked {
            to,
            backend_id,
            reason,
        }) => (to, backend_id, reason),
        Ok(Step::New(new)) => (
            flow::commit(&pkt, &new, now)?,
            new.backend_id,
            Reason::NewFlow,
        ),
        Err(Reason::RejectNoBackend) => return Ok(reject_or_drop(ctx, &pkt)),
        Err(reason) => return Err(reason),
    };
    // From the uplink everything translated is forwarded here (as XDP would). From a pod,
    // only when the source became the node's or the service's address: the stack would
    // drop a packet from its own address arriving on a pod's veth.
    let route = if origin == Origin::Net || to.saddr != pkt.saddr {
        fib::lookup(ctx, &to, pkt.proto)
    } else {
        Fib::None
    };
    let verdict = match route {
        Fib::Route(route) => {
            if pkt.ttl <= 1 {
                return Err(Reason::DropTtlExceeded);
            }
            nat::rewrite(ctx, &pkt, &to, true)?;
            fib::redirect(ctx, &route)
        }
        Fib::TooBig { mtu } if pkt.df => {
            // As a router would: the client learns the path's MTU.
            let verdict = reject::frag_needed(ctx, &pkt, mtu, router_addr(&pkt))?;
            count(Reason::RejectFragNeeded);
            return Ok(verdict);
        }
        Fib::TooBig { .. } => {
            // The stack fragments what it forwards; the datapath cannot.
            nat::rewrite(ctx, &pkt, &to, false)?;
            count(Reason::PassMtu);
            TC_ACT_UNSPEC
        }
        Fib::Local => {
            // For this node itself (a hostNetwork backend): the stack delivers it.
            nat::rewrite(ctx, &pkt, &to, false)?;
            TC_ACT_UNSPEC
        }
        Fib::None => {
            nat::rewrite(ctx, &pkt, &to, false)?;
            if origin == Origin::Net || to.saddr != pkt.saddr {
                count(Reason::PassNoRoute);
            }
            TC_ACT_UNSPEC
        }
    };
    count(reason);
    count_backend(backend_id, ctx.len());
    Ok(verdict)
}

/// The address a router's own ICMP errors come from: this node's, once the agent has set
/// it, else the address the client sent to.
#[inline(always)]
fn router_addr(pkt: &Packet) -> u32 {
    match flow::config().node_addr {
        0 => pkt.daddr,
        node => node,
    }
}

/// Sends on an ICMP error that was translated for a flow's client (or backend), with its
/// TTL taken down as a router's would be.
#[inline(always)]
fn forward_error(ctx: &TcContext, pkt: &Packet, to: &Tuple) -> i32 {
    let Fib::Route(route) = fib::lookup(ctx, to, pkt.proto) else {
        return TC_ACT_UNSPEC;
    };
    if pkt.ttl <= 1 {
        count(Reason::DropTtlExceeded);
        return TC_ACT_SHOT;
    }
    // The error's addresses are `to` already: only its TTL changes.
    let now_at = Packet {
        saddr: to.saddr,
        daddr: to.daddr,
        ..*pkt
    };
    if nat::rewrite(ctx, &now_at, to, true).is_err() {
        count(Reason::DropRewrite);
        return TC_ACT_SHOT;
    }
    fib::redirect(ctx, &route)
}
