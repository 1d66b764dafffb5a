//! The two packet contexts the programs run on, tc (an skb) and XDP (a raw frame), behind
//! one interface, so that parsing and NAT are written once.
//!
//! They differ in how a header field is rewritten: on an skb the kernel's checksum helpers
//! must be used (they keep CHECKSUM_PARTIAL and CHECKSUM_COMPLETE skbs consistent), while an
//! XDP frame is plain memory whose checksums are updated incrementally (RFC 1624).

use aya_ebpf::{
    helpers::bpf_set_hash_invalid,
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use lb_common::{checksum, proto, Reason};

use crate::{
    nat::Tuple,
    parse::{frag, Packet},
};

const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
/// The IPv4 header from the TTL on: TTL and protocol, checksum, source, destination, as
/// six 16-bit words.
const IP_TTL_OFF: usize = 8;
type IpTail = [u16; 6];

pub trait Frame: EbpfContext {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Total length of the packet, including any part outside the linear data.
    fn len(&self) -> u32;
    /// Makes the first `len` bytes directly readable if the packet has them.
    fn pull(&self, len: usize) -> bool;
    /// Interface the packet arrived on (or, on tc egress, leaves by).
    fn ifindex(&self) -> u32;
    /// Rewrites the packet's addresses and ports to `to`, fixing the IP and L4 checksums,
    /// and takes one off its TTL when `routed` (the datapath forwards it itself, so the
    /// stack's forwarding, which would, is bypassed). Only fields that differ are touched;
    /// a later fragment has only its IP header.
    fn rewrite(&self, pkt: &Packet, to: &Tuple, routed: bool) -> Result<(), Reason>;

    /// A pointer to a `T` at `off`, if the linear packet data holds all of it.
    #[inline(always)]
    fn ptr_at<T>(&self, off: usize) -> Option<*mut T> {
        let start = self.data();
        if start + off + core::mem::size_of::<T>() > self.data_end() {
            return None;
        }
        Some((start + off) as *mut T)
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }

    /// GSO and paged skbs may keep headers outside the linear area.
    #[inline(always)]
    fn pull(&self, len: usize) -> bool {
        if TcContext::data(self) + len <= TcContext::data_end(self) {
            return true;
        }
        len as u32 <= TcContext::len(self) && self.pull_data(len as u32).is_ok()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is valid for the program run.
        unsafe { (*self.skb.skb).ifindex }
    }

    /// The fields and the IP checksum are written directly (an IPv4 header checksum is
    /// always complete, whatever the skb's checksum state); the L4 checksum goes through
    /// the helper, which alone knows the skb's state: on a CHECKSUM_PARTIAL skb the field
    /// holds only the pseudo-header sum, so it must follow the addresses (BPF_F_PSEUDO_HDR)
    /// but not the ports, and a CHECKSUM_COMPLETE skb's sum must follow the pseudo-header.
    /// Hence two helper calls at most (addresses, ports), each with the summed difference
    /// computed here, instead of one per field and checksum.
    #[inline(always)]
    fn rewrite(&self, pkt: &Packet, to: &Tuple, routed: bool) -> Result<(), Reason> {
        let addr_diff = checksum::diff4(pkt.saddr, to.saddr) + checksum::diff4(pkt.daddr, to.daddr);
        let has_l4 = pkt.frag != frag::LATER;
        let port_diff = if has_l4 {
            checksum::diff2(pkt.sport, to.sport) + checksum::diff2(pkt.dport, to.dport)
        } else {
            0
        };
        let (ttl_word, ttl_diff) = ttl_step(pkt, routed);
        if addr_diff + ttl_diff != 0 {
            let ip: *mut IpTail = self
                .ptr_at(pkt.l3 + IP_TTL_OFF)
                .ok_or(Reason::DropRewrite)?;
            // SAFETY: bounds checked by ptr_at (TTL to destination: 12 bytes); 16-bit fields
            // at even offsets from an Ethernet header the stack keeps 2-byte aligned,
            // written unaligned anyway.
            unsafe { write_ip(ip as *mut u16, addr_diff + ttl_diff, ttl_word, to) };
        }
        if port_diff != 0 {
            let ports: *mut [u16; 2] = self.ptr_at(pkt.l4).ok_or(Reason::DropRewrite)?;
            // SAFETY: bounds checked by ptr_at.
            unsafe { ports.write_unaligned([to.sport, to.dport]) };
        }
        // The helpers may move the packet: no packet pointer is used after them.
        if addr_diff != 0 {
            if has_l4 {
                self.l4_csum_replace(
                    pkt.l4_csum_off(),
                    0,
                    addr_diff as u64,
                    udp_flags(pkt) | BPF_F_PSEUDO_HDR,
                )
                .map_err(|_| Reason::DropRewrite)?;
            }
            // The flow hash the stack computed belongs to the old addresses.
            // SAFETY: the context pointer is valid for the program run.
            unsafe { bpf_set_hash_invalid(self.skb.skb) };
        }
        if port_diff != 0 {
            self.l4_csum_replace(pkt.l4_csum_off(), 0, port_diff as u64, udp_flags(pkt))
                .map_err(|_| Reason::DropRewrite)?;
        }
        Ok(())
    }
}

/// The TTL/protocol word a routed packet leaves with, and its checksum difference (0 when
/// the packet is not routed here).
#[inline(always)]
fn ttl_step(pkt: &Packet, routed: bool) -> (u16, u32) {
    let word = u16::from_ne_bytes([pkt.ttl, pkt.proto]);
    if !routed {
        return (word, 0);
    }
    let next = u16::from_ne_bytes([pkt.ttl.wrapping_sub(1), pkt.proto]);
    (next, checksum::diff2(word, next))
}

/// Writes the IP header's TTL word, checksum (with `diff` folded in) and addresses.
///
/// # Safety
/// `ip` must point at the TTL of an IPv4 header with 12 bytes inside the packet.
#[inline(always)]
unsafe fn write_ip(ip: *mut u16, diff: u32, ttl_word: u16, to: &Tuple) {
    ip.write_unaligned(ttl_word);
    let csum = ip.add(1);
    csum.write_unaligned(checksum::apply(csum.read_unaligned(), diff));
    (ip.add(2) as *mut u32).write_unaligned(to.saddr);
    (ip.add(4) as *mut u32).write_unaligned(to.daddr);
}

/// UDP checksum 0 means "none" and must stay 0; a computed 0 must become 0xffff.
#[inline(always)]
fn udp_flags(pkt: &Packet) -> u64 {
    if pkt.proto == proto::UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }

    /// A frame is all linear (the program is not loaded with multi-buffer support), and
    /// every read is bounds-checked by `ptr_at`. A second, equal check here would let LLVM
    /// fold the two into one the verifier cannot tie to the pointer it guards.
    #[inline(always)]
    fn pull(&self, _len: usize) -> bool {
        true
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }

    /// Plain memory: every field and both checksums are written directly, each checksum
    /// once with the summed difference of the fields it covers. The L4 checksum must be
    /// complete (see `xdp::checksum_is_partial`, which hands the other packets to tc).
    #[inline(always)]
    fn rewrite(&self, pkt: &Packet, to: &Tuple, routed: bool) -> Result<(), Reason> {
        let addr_diff = checksum::diff4(pkt.saddr, to.saddr) + checksum::diff4(pkt.daddr, to.daddr);
        let l4_diff =
            addr_diff + checksum::diff2(pkt.sport, to.sport) + checksum::diff2(pkt.dport, to.dport);
        let (ttl_word, ttl_diff) = ttl_step(pkt, routed);
        if l4_diff + ttl_diff == 0 {
            return Ok(());
        }
        let ip: *mut IpTail = self
            .ptr_at(pkt.l3 + IP_TTL_OFF)
            .ok_or(Reason::DropRewrite)?;
        let ports: *mut [u16; 2] = self.ptr_at(pkt.l4).ok_or(Reason::DropRewrite)?;
        let l4_csum: *mut u16 = self.ptr_at(pkt.l4_csum_off()).ok_or(Reason::DropRewrite)?;
        // SAFETY: every pointer was bounds-checked against the frame by ptr_at; the fields
        // may be unaligned, hence the unaligned accesses.
        unsafe {
            write_ip(ip as *mut u16, addr_diff + ttl_diff, ttl_word, to);
            if l4_diff != 0 {
                ports.write_unaligned([to.sport, to.dport]);
                let l4 = l4_csum.read_unaligned();
                l4_csum.write_unaligned(if pkt.proto == proto::UDP {
                    checksum::udp_apply(l4, l4_diff)
                } else {
                    checksum::apply(l4, l4_diff)
                });
            }
        }
        Ok(())
    }
}
