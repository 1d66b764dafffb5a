//! What arrives from the network (tc ingress on the node's uplink): north-south traffic to
//! NodePorts, LoadBalancer and external IPs (and ClusterIPs routed to the node), replies of
//! flows this node masqueraded, and everything XDP left to tc. Translated packets are
//! forwarded here with a FIB lookup.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use lb_common::{proto, Reason};

use crate::{
    counters::{count, count_backend},
    fib,
    flow::{self, Step},
    forward::{reject_or_drop, verdict},
    frontend::Origin,
    icmp, nat, parse, TC_ACT_UNSPEC,
};

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    match try_handle(ctx) {
        Ok(verdict) => verdict,
        Err(reason) => verdict(ctx, reason),
    }
}

#[inline(always)]
fn try_handle(ctx: &TcContext) -> Result<i32, Reason> {
    let Some(pkt) = parse::parse(ctx)? else {
        return Ok(TC_ACT_UNSPEC);
    };
    if pkt.proto == proto::ICMP {
        return Ok(match icmp::translate_error(ctx, &pkt)? {
            Some(to) => fib::redirect(ctx, &to, pkt.proto),
            None => TC_ACT_UNSPEC,
        });
    }
    let cfg = flow::config();
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let (to, backend_id, reason) = match flow::decide(&pkt, Origin::Net, &cfg, now) {
        Ok(Step::Untouched) => return Ok(TC_ACT_UNSPEC),
        Ok(Step::Tracked {
            to,
            backend_id,
            reason,
        }) => (to, backend_id, reason),
        Ok(Step::New(new)) => (
            flow::commit(&pkt, &new, &cfg, now)?,
            new.backend_id,
            Reason::NewFlow,
        ),
        Err(Reason::RejectNoBackend) => return Ok(reject_or_drop(ctx, &pkt)),
        Err(reason) => return Err(reason),
    };
    nat::rewrite(ctx, &pkt, &to)?;
    count(reason);
    count_backend(backend_id, ctx.len());
    Ok(fib::redirect(ctx, &to, pkt.proto))
}
