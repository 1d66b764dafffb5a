//! The floor the bench compares the datapath against: parse Ethernet/IPv4/L4 exactly as the
//! real programs do (`parse::parse`) and do one hash lookup of the frontend key, then let the
//! packet go. Any service datapath must do at least this much per packet, so the cost of
//! `lb_from_pod` & co. is reported as a multiple of it.
//!
//! Never attached by the agent (it loads and attaches its programs by name only); its map
//! is unpinned and declared with one entry (see `lb_common::maps::FLOOR`).

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, map, xdp},
    maps::HashMap,
    programs::{TcContext, XdpContext},
};
use lb_common::{frontend::scope, maps::FLOOR_MAX, Frontend, FrontendKey};

use crate::{frame::Frame, parse::parse, TC_ACT_UNSPEC};

#[map]
static LB_FLOOR: HashMap<FrontendKey, Frontend> = HashMap::with_max_entries(FLOOR_MAX, 0);

/// Parses and looks the destination up; whether it was found does not change the verdict.
#[inline(always)]
fn parse_and_lookup<F: Frame>(ctx: &F) {
    if let Ok(Some(pkt)) = parse(ctx) {
        let key = FrontendKey {
            addr: pkt.daddr,
            port: pkt.dport,
            proto: pkt.proto,
            scope: scope::EXTERNAL,
        };
        // SAFETY: the value is read (copied) at once, as the real frontend lookup does.
        let found = unsafe { LB_FLOOR.get(&key).copied() };
        // Keep the copy alive so the compiler cannot drop the read the real lookup does.
        core::hint::black_box(found);
    }
}

#[classifier]
pub fn lb_floor_tc(ctx: TcContext) -> i32 {
    parse_and_lookup(&ctx);
    TC_ACT_UNSPEC
}

#[xdp]
pub fn lb_floor_xdp(ctx: XdpContext) -> u32 {
    parse_and_lookup(&ctx);
    xdp_action::XDP_PASS
}
