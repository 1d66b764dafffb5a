//! Replies on their way back to the client: tracked flows' replies get the service address
//! back as their source, and ICMP errors about them are translated too.
//!
//! - `lb_to_pod` (tc egress on a pod's veth): what reaches pods, wherever the backend ran.
//! - `lb_to_net` (tc egress on the node's uplink): what this node's own stack sends out,
//!   i.e. the replies of a backend that is the node itself (a hostNetwork pod). Only packets
//!   from the node's address can be such replies, so nothing else is looked up.

use aya_ebpf::programs::TcContext;
use aya_log_ebpf::debug;
use lb_common::{conntrack::dir, proto, CtKey, Reason};

use crate::{
    clock, conntrack,
    counters::{count, count_backend},
    flow,
    forward::verdict,
    frag, icmp, nat, parse, TC_ACT_UNSPEC,
};

/// Which packets may be replies here.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// Anyone: backends anywhere answer pods.
    Anywhere,
    /// This node's own address only.
    Node,
}

#[inline(always)]
pub fn handle(ctx: &TcContext, from: From) -> i32 {
    match try_handle(ctx, from) {
        Ok(()) => TC_ACT_UNSPEC,
        Err(reason) => verdict(ctx, reason),
    }
}

#[inline(always)]
fn try_handle(ctx: &TcContext, from: From) -> Result<(), Reason> {
    let Some(mut pkt) = parse::parse(ctx)? else {
        return Ok(());
    };
    if from == From::Node && pkt.saddr != flow::config().node_addr {
        return Ok(());
    }
    if pkt.proto == proto::ICMP {
        return icmp::translate_error(ctx, &pkt).map(|_| ());
    }
    frag::track(&mut pkt)?;
    let key = CtKey::new(
        pkt.saddr,
        pkt.daddr,
        pkt.sport,
        pkt.dport,
        pkt.proto,
        dir::REPLY,
    );
    let now = clock::now();
    let Some(hit) = conntrack::reply(&key, &pkt, now, &conntrack::timeouts()) else {
        return Ok(());
    };
    // On its way out of an interface already: the stack or the datapath routed it.
    nat::rewrite(ctx, &pkt, &hit.to, false)?;
    // The datapath's one log line (enabled with the agent's --bpf-log): in the larger
    // programs, aya-log's calls push LLVM's BPF backend into register reuse across calls
    // that the verifier refuses; this small program keeps logging demonstrably working.
    debug!(ctx, "reply from backend {} translated", hit.backend_id);
    count(Reason::ReplyTranslated);
    count_backend(hit.backend_id, ctx.len());
    Ok(())
}
