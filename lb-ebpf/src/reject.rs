//! Answering a packet with ICMP destination-unreachable, sent back out of the interface it
//! came from:
//! - port-unreachable from the service, for a service without endpoints, as kube-proxy's
//!   REJECT rule does: TCP clients see "connection refused" at once (an ICMP
//!   port-unreachable in SYN_SENT is a hard error), UDP clients get ECONNREFUSED;
//! - fragmentation-needed from the node, for a packet with Don't Fragment set that is larger
//!   than the interface the datapath would forward it to, as a router answers, so that the
//!   client's path-MTU discovery works through the datapath too.
//!
//! The whole reply is built in a stack buffer and stored over the packet after resizing it,
//! as Cilium does for its no-service ICMP reply.

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use lb_common::{checksum, proto, Reason};

use crate::{parse::Packet, TC_ACT_UNSPEC};

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const ICMP_LEN: usize = 8;
/// RFC 792: the original IP header and the first 8 bytes of its payload.
const QUOTED: usize = IP_LEN + 8;
const REPLY_LEN: usize = IP_LEN + ICMP_LEN + QUOTED;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const BPF_F_RECOMPUTE_CSUM: u64 = 1;

/// Replaces `pkt` with an ICMP port-unreachable from the service to its sender, sent back
/// out of the ingress interface. `Err` when the packet cannot be turned around (the caller
/// drops).
#[inline(always)]
pub fn port_unreachable(ctx: &TcContext, pkt: &Packet) -> Result<i32, Reason> {
    dest_unreachable(ctx, pkt, ICMP_PORT_UNREACH, 0, pkt.daddr).map_err(|_| Reason::DropNoBackend)
}

/// Replaces `pkt` with an ICMP fragmentation-needed (next-hop MTU `mtu`) from `router` to
/// its sender, sent back out of the ingress interface.
#[inline(always)]
pub fn frag_needed(ctx: &TcContext, pkt: &Packet, mtu: u32, router: u32) -> Result<i32, Reason> {
    dest_unreachable(ctx, pkt, ICMP_FRAG_NEEDED, mtu as u16, router)
}

/// The ICMP destination-unreachable `code` about `pkt`, from `from` to its sender.
#[inline(always)]
fn dest_unreachable(
    ctx: &TcContext,
    pkt: &Packet,
    code: u8,
    mtu: u16,
    from: u32,
) -> Result<i32, Reason> {
    if pkt.l4 != pkt.l3 + IP_LEN || pkt.proto == proto::ICMP {
        // IP options would have to be quoted too; never answer an ICMP with an ICMP.
        return Err(Reason::DropRewrite);
    }
    // Fixed-size loads: the verifier refuses a read whose length could be zero.
    let macs: [u8; 12] = ctx.load(0).map_err(|_| Reason::DropRewrite)?;
    let quoted: [u8; QUOTED] = ctx.load(pkt.l3).map_err(|_| Reason::DropRewrite)?;
    let mut buf = [0u8; REPLY_LEN];
    buf[IP_LEN + ICMP_LEN..].copy_from_slice(&quoted);

    // IPv4 header: back to the client.
    buf[0] = 0x45;
    buf[2..4].copy_from_slice(&(REPLY_LEN as u16).to_be_bytes());
    buf[8] = 64;
    buf[9] = proto::ICMP;
    buf[12..16].copy_from_slice(&from.to_ne_bytes());
    buf[16..20].copy_from_slice(&pkt.saddr.to_ne_bytes());
    let ip_sum = !sum_words::<IP_LEN>(&buf, 0);
    buf[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    // ICMP header: destination unreachable / port unreachable, checksum over the message.
    buf[IP_LEN] = ICMP_DEST_UNREACH;
    buf[IP_LEN + 1] = code;
    // RFC 1191: the next-hop MTU in the header's last two bytes (0 for other codes).
    buf[IP_LEN + 6..IP_LEN + 8].copy_from_slice(&mtu.to_be_bytes());
    let icmp_sum = !sum_words::<{ ICMP_LEN + QUOTED }>(&buf, IP_LEN);
    buf[IP_LEN + 2..IP_LEN + 4].copy_from_slice(&icmp_sum.to_be_bytes());

    // SAFETY: plain helper calls on the context.
    unsafe {
        if aya_ebpf::helpers::bpf_skb_change_tail(
            ctx.skb.skb as *mut _,
            (ETH_LEN + REPLY_LEN) as u32,
            0,
        ) != 0
        {
            return Err(Reason::DropRewrite);
        }
    }
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&macs[6..]);
    eth[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &eth, 0).map_err(|_| Reason::DropRewrite)?;
    ctx.store(ETH_LEN, &buf, BPF_F_RECOMPUTE_CSUM)
        .map_err(|_| Reason::DropRewrite)?;
    // SAFETY: plain helper call.
    let rc = unsafe { bpf_redirect(crate::frame::Frame::ifindex(ctx), 0) };
    Ok(if rc == 7 { 7 } else { TC_ACT_UNSPEC })
}

/// One's-complement sum of the `N` bytes of `buf` from `start`, as big-endian words.
#[inline(always)]
fn sum_words<const N: usize>(buf: &[u8; REPLY_LEN], start: usize) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        let at = start + i;
        if at + 1 < REPLY_LEN {
            sum += u16::from_be_bytes([buf[at], buf[at + 1]]) as u32;
        }
        i += 2;
    }
    checksum::fold(sum)
}
