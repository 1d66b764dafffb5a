//! What pods send (tc ingress on a pod's veth): tracked flows follow conntrack, replies of
//! flows translated on this node get the service back, and new connections to a service
//! get a backend, a conntrack entry and DNAT (masqueraded for hairpin and for
//! externalTrafficPolicy=Cluster addresses).

use aya_ebpf::programs::TcContext;
use lb_common::{proto, Reason};

use crate::{
    clock,
    counters::{count, count_backend},
    fib,
    flow::{self, Step},
    frontend::Origin,
    icmp, nat, parse, reject, TC_ACT_SHOT, TC_ACT_UNSPEC,
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
    let Some(pkt) = parse::parse(ctx)? else {
        return Ok(TC_ACT_UNSPEC);
    };
    if pkt.proto == proto::ICMP {
        return Ok(match icmp::translate_error(ctx, &pkt)? {
            Some(to) => fib::redirect(ctx, &to, pkt.proto),
            None => TC_ACT_UNSPEC,
        });
    }
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
    nat::rewrite(ctx, &pkt, &to)?;
    count(reason);
    count_backend(backend_id, ctx.len());
    // From the uplink everything translated is forwarded here (as XDP would). From a pod,
    // only when the source became the node's or the service's address: the stack would
    // drop a packet from its own address arriving on a pod's veth.
    if origin == Origin::Net || to.saddr != pkt.saddr {
        return Ok(fib::redirect(ctx, &to, pkt.proto));
    }
    Ok(TC_ACT_UNSPEC)
}
