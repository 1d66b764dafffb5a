//! What pods send: tracked flows follow conntrack; new connections to a service get a
//! backend, a conntrack entry and DNAT.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use aya_log_ebpf::debug;
use lb_common::{conntrack::dir, CtKey, Reason};

use crate::{
    backend, conntrack,
    counters::{count, count_backend},
    frontend, nat, parse, TC_ACT_SHOT, TC_ACT_UNSPEC,
};

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    match try_handle(ctx) {
        Ok(()) => TC_ACT_UNSPEC,
        Err(reason) => verdict(ctx, reason),
    }
}

/// Counts `reason` and turns it into a verdict.
#[inline(always)]
pub fn verdict(ctx: &TcContext, reason: Reason) -> i32 {
    count(reason);
    match reason.kind() {
        lb_common::reason::Kind::Dropped => {
            debug!(ctx, "drop: reason {}", reason as u32);
            TC_ACT_SHOT
        }
        _ => TC_ACT_UNSPEC,
    }
}

#[inline(always)]
fn try_handle(ctx: &TcContext) -> Result<(), Reason> {
    let Some(pkt) = parse::parse(ctx)? else {
        return Ok(());
    };
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = CtKey::new(
        pkt.saddr,
        pkt.daddr,
        pkt.sport,
        pkt.dport,
        pkt.proto,
        dir::FORWARD,
    );

    if let Some((addr, port, backend_id)) = conntrack::forward_hit(&key, &pkt, now) {
        nat::dnat(ctx, &pkt, addr, port)?;
        count(Reason::EstablishedFlow);
        count_backend(backend_id, ctx.len());
        return Ok(());
    }

    let Some(fe) = frontend::lookup(&pkt) else {
        return Ok(());
    };
    let (backend_id, backend) = backend::select(&fe, &pkt, now)?;
    conntrack::create(&key, &pkt, &fe, backend_id, &backend, now)?;
    nat::dnat(ctx, &pkt, backend.addr, backend.port)?;
    count(Reason::NewFlow);
    count_backend(backend_id, ctx.len());
    debug!(
        ctx,
        "new flow {:i}:{} -> {:i}:{} via backend {}",
        u32::from_be(pkt.saddr),
        u16::from_be(pkt.sport),
        u32::from_be(pkt.daddr),
        u16::from_be(pkt.dport),
        backend_id
    );
    Ok(())
}
