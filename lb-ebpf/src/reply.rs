//! What reaches pods (tc egress on a pod's veth): replies of tracked flows get the service
//! address back as their source, wherever the backend ran, and ICMP errors about them are
//! translated too.

use aya_ebpf::programs::TcContext;
use aya_log_ebpf::debug;
use lb_common::{conntrack::dir, proto, CtKey, Reason};

use crate::{
    clock, conntrack,
    counters::{count, count_backend},
    forward::verdict,
    icmp, nat, parse, TC_ACT_UNSPEC,
};

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    match try_handle(ctx) {
        Ok(()) => TC_ACT_UNSPEC,
        Err(reason) => verdict(ctx, reason),
    }
}

#[inline(always)]
fn try_handle(ctx: &TcContext) -> Result<(), Reason> {
    let Some(pkt) = parse::parse(ctx)? else {
        return Ok(());
    };
    if pkt.proto == proto::ICMP {
        return icmp::translate_error(ctx, &pkt).map(|_| ());
    }
    let key = CtKey::new(
        pkt.saddr,
        pkt.daddr,
        pkt.sport,
        pkt.dport,
        pkt.proto,
        dir::REPLY,
    );
    let now = clock::now();
    let Some(hit) = conntrack::reply_hit(&key, &pkt, now) else {
        return Ok(());
    };
    nat::rewrite(ctx, &pkt, &hit.to)?;
    // The datapath's one log line (enabled with the agent's --bpf-log): in the larger
    // programs, aya-log's calls push LLVM's BPF backend into register reuse across calls
    // that the verifier refuses; this small program keeps logging demonstrably working.
    debug!(ctx, "reply from backend {} translated", hit.backend_id);
    count(Reason::ReplyTranslated);
    count_backend(hit.backend_id, ctx.len());
    Ok(())
}
