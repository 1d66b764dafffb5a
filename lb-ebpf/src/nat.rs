//! NAT: rewrite an address and port in place, with incremental IP and L4 checksum updates.
//!
//! The kernel's checksum helpers are used rather than arithmetic on the bytes because they
//! also handle CHECKSUM_PARTIAL skbs (a pod's veth offloads TX checksums: the L4 field then
//! holds only the pseudo-header sum, which must change with the address but not the port).

use aya_ebpf::programs::TcContext;
use lb_common::{proto, Reason};

use crate::parse::Packet;

const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
const BPF_F_INVALIDATE_HASH: u64 = 1 << 1;

const IP_CSUM_OFF: usize = 10;
const IP_SADDR_OFF: usize = 12;
const IP_DADDR_OFF: usize = 16;

/// Rewrites the destination to `addr:port` (the backend).
#[inline(always)]
pub fn dnat(ctx: &TcContext, pkt: &Packet, addr: u32, port: u16) -> Result<(), Reason> {
    rewrite(
        ctx,
        pkt,
        pkt.l3 + IP_DADDR_OFF,
        pkt.daddr,
        addr,
        pkt.l4 + 2,
        pkt.dport,
        port,
    )
}

/// Rewrites the source to `addr:port` (the service, on a reply).
#[inline(always)]
pub fn snat(ctx: &TcContext, pkt: &Packet, addr: u32, port: u16) -> Result<(), Reason> {
    rewrite(
        ctx,
        pkt,
        pkt.l3 + IP_SADDR_OFF,
        pkt.saddr,
        addr,
        pkt.l4,
        pkt.sport,
        port,
    )
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rewrite(
    ctx: &TcContext,
    pkt: &Packet,
    addr_off: usize,
    old_addr: u32,
    new_addr: u32,
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), Reason> {
    // UDP checksum 0 means "none" and must stay 0; a computed 0 must become 0xffff.
    let l4_flags = if pkt.proto == proto::UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };
    let csum_off = pkt.l4_csum_off();
    if old_addr != new_addr {
        ctx.l4_csum_replace(
            csum_off,
            old_addr as u64,
            new_addr as u64,
            l4_flags | BPF_F_PSEUDO_HDR | 4,
        )
        .map_err(|_| Reason::DropRewrite)?;
        ctx.l3_csum_replace(pkt.l3 + IP_CSUM_OFF, old_addr as u64, new_addr as u64, 4)
            .map_err(|_| Reason::DropRewrite)?;
        ctx.store(addr_off, &new_addr, BPF_F_INVALIDATE_HASH)
            .map_err(|_| Reason::DropRewrite)?;
    }
    if old_port != new_port {
        ctx.l4_csum_replace(csum_off, old_port as u64, new_port as u64, l4_flags | 2)
            .map_err(|_| Reason::DropRewrite)?;
        ctx.store(port_off, &new_port, 0)
            .map_err(|_| Reason::DropRewrite)?;
    }
    Ok(())
}
