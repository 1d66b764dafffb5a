//! What arrives from the network (tc ingress on the node's uplink): north-south traffic to
//! NodePorts, LoadBalancer and external IPs (and ClusterIPs routed to the node), replies of
//! flows this node masqueraded, and everything XDP left to tc. Translated packets are
//! forwarded here with a FIB lookup.

use aya_ebpf::programs::TcContext;

use crate::{
    forward::{translate, verdict},
    frontend::Origin,
};

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    match translate(ctx, Origin::Net) {
        Ok(verdict) => verdict,
        Err(reason) => verdict(ctx, reason),
    }
}
