//! The two packet contexts the programs run on, tc (an skb) and XDP (a raw frame), behind
//! one interface, so that parsing and NAT are written once.
//!
//! They differ in how a header field is rewritten: on an skb the kernel's checksum helpers
//! must be used (they keep CHECKSUM_PARTIAL and CHECKSUM_COMPLETE skbs consistent), while an
//! XDP frame is plain memory whose checksums are updated incrementally (RFC 1624).

use aya_ebpf::{
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use lb_common::{checksum, proto, Reason};

use crate::parse::Packet;

const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
const BPF_F_INVALIDATE_HASH: u64 = 1 << 1;
const IP_CSUM_OFF: usize = 10;

pub trait Frame: EbpfContext {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Total length of the packet, including any part outside the linear data.
    fn len(&self) -> u32;
    /// Makes the first `len` bytes directly readable if the packet has them.
    fn pull(&self, len: usize) -> bool;
    /// Interface the packet arrived on (or, on tc egress, leaves by).
    fn ifindex(&self) -> u32;
    /// Replaces the IPv4 address at `off` (`old` -> `new`), fixing the IP and L4 checksums.
    fn set_addr(&self, pkt: &Packet, off: usize, old: u32, new: u32) -> Result<(), Reason>;
    /// Replaces the L4 port at `off`, fixing the L4 checksum.
    fn set_port(&self, pkt: &Packet, off: usize, old: u16, new: u16) -> Result<(), Reason>;

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

    #[inline(always)]
    fn set_addr(&self, pkt: &Packet, off: usize, old: u32, new: u32) -> Result<(), Reason> {
        if old == new {
            return Ok(());
        }
        // The address is part of the L4 pseudo-header: BPF_F_PSEUDO_HDR makes the helper
        // also fix CHECKSUM_PARTIAL skbs, whose L4 field holds only the pseudo-header sum.
        self.l4_csum_replace(
            pkt.l4_csum_off(),
            old as u64,
            new as u64,
            udp_flags(pkt) | BPF_F_PSEUDO_HDR | 4,
        )
        .map_err(|_| Reason::DropRewrite)?;
        self.l3_csum_replace(pkt.l3 + IP_CSUM_OFF, old as u64, new as u64, 4)
            .map_err(|_| Reason::DropRewrite)?;
        self.store(off, &new, BPF_F_INVALIDATE_HASH)
            .map_err(|_| Reason::DropRewrite)
    }

    #[inline(always)]
    fn set_port(&self, pkt: &Packet, off: usize, old: u16, new: u16) -> Result<(), Reason> {
        if old == new {
            return Ok(());
        }
        self.l4_csum_replace(
            pkt.l4_csum_off(),
            old as u64,
            new as u64,
            udp_flags(pkt) | 2,
        )
        .map_err(|_| Reason::DropRewrite)?;
        self.store(off, &new, 0).map_err(|_| Reason::DropRewrite)
    }
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

    #[inline(always)]
    fn set_addr(&self, pkt: &Packet, off: usize, old: u32, new: u32) -> Result<(), Reason> {
        if old == new {
            return Ok(());
        }
        let addr: *mut u32 = self.ptr_at(off).ok_or(Reason::DropRewrite)?;
        let ip_csum: *mut u16 = self
            .ptr_at(pkt.l3 + IP_CSUM_OFF)
            .ok_or(Reason::DropRewrite)?;
        let l4_csum: *mut u16 = self.ptr_at(pkt.l4_csum_off()).ok_or(Reason::DropRewrite)?;
        // SAFETY: every pointer was bounds-checked against the frame by ptr_at; the fields
        // may be unaligned, hence the unaligned accesses.
        unsafe {
            addr.write_unaligned(new);
            ip_csum.write_unaligned(checksum::replace4(ip_csum.read_unaligned(), old, new));
            let l4 = l4_csum.read_unaligned();
            l4_csum.write_unaligned(if pkt.proto == proto::UDP {
                checksum::udp_replace4(l4, old, new)
            } else {
                checksum::replace4(l4, old, new)
            });
        }
        Ok(())
    }

    #[inline(always)]
    fn set_port(&self, pkt: &Packet, off: usize, old: u16, new: u16) -> Result<(), Reason> {
        if old == new {
            return Ok(());
        }
        let port: *mut u16 = self.ptr_at(off).ok_or(Reason::DropRewrite)?;
        let l4_csum: *mut u16 = self.ptr_at(pkt.l4_csum_off()).ok_or(Reason::DropRewrite)?;
        // SAFETY: as in set_addr.
        unsafe {
            port.write_unaligned(new);
            let l4 = l4_csum.read_unaligned();
            l4_csum.write_unaligned(if pkt.proto == proto::UDP {
                checksum::udp_replace2(l4, old, new)
            } else {
                checksum::replace2(l4, old, new)
            });
        }
        Ok(())
    }
}
