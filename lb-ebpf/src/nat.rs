//! NAT: rewrite a packet's addresses and ports in place, checksums included (the frame
//! knows how: see [`crate::frame`]).

use lb_common::Reason;

use crate::{frame::Frame, parse::Packet};

/// The flow tuple a packet must leave with. Network byte order.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub saddr: u32,
    pub sport: u16,
    pub daddr: u32,
    pub dport: u16,
}

/// Rewrites `pkt` to carry `to`; only fields that differ are touched. `routed`: the
/// datapath forwards the packet itself, so it also takes one off the TTL.
#[inline(always)]
pub fn rewrite<F: Frame>(ctx: &F, pkt: &Packet, to: &Tuple, routed: bool) -> Result<(), Reason> {
    ctx.rewrite(pkt, to, routed)
}
