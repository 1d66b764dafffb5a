//! Frontend lookup: is the packet addressed to a service?

use lb_common::{frontend::scope, Frontend, FrontendKey};

use crate::{maps::LB_FRONTENDS, parse::Packet};

#[inline(always)]
pub fn lookup(pkt: &Packet) -> Option<Frontend> {
    let key = FrontendKey {
        addr: pkt.daddr,
        port: pkt.dport,
        proto: pkt.proto,
        scope: scope::EXTERNAL,
    };
    // SAFETY: the value is copied out at once; the agent may replace it concurrently, and a
    // copy is either the old or the new value (hash map updates swap whole elements).
    unsafe { LB_FRONTENDS.get(&key).copied() }
}
