//! Parsing: Ethernet -> IPv4 -> TCP/UDP, every read bounds-checked against the packet end.

use aya_ebpf::programs::TcContext;
use lb_common::{proto, Reason};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
/// Fragment offset bits of the IPv4 flags/offset field (network order when read natively).
const IP_OFFSET_MASK_BE: u16 = 0x1fffu16.to_be();

/// Offsets and the flow tuple of an IPv4 TCP/UDP packet. Addresses and ports are as they sit
/// in the packet (network byte order read natively).
pub struct Packet {
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
}

impl Packet {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        if self.proto == proto::TCP {
            self.l4 + 16
        } else {
            self.l4 + 6
        }
    }
}

/// A pointer to a `T` at `off`, if the linear packet data holds all of it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Makes the first `len` bytes linear if the packet has them (GSO and paged skbs may keep
/// headers outside the linear area). False when the packet is really shorter.
#[inline(always)]
fn pull(ctx: &TcContext, len: usize) -> bool {
    if ctx.data() + len <= ctx.data_end() {
        return true;
    }
    len as u32 <= ctx.len() && ctx.pull_data(len as u32).is_ok()
}

/// `Ok(None)`: not IPv4 TCP/UDP, nothing for us. `Err`: the reason to pass it untouched.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Option<Packet>, Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::PassMalformed)?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    if unsafe { (*eth).ether_type } != ETH_P_IP_BE {
        return Ok(None);
    }
    let l3 = EthHdr::LEN;
    if !pull(ctx, l3 + Ipv4Hdr::LEN) {
        return Err(Reason::PassMalformed);
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3).ok_or(Reason::PassMalformed)?;
    // SAFETY: as above; the pointer was derived after the pull.
    let (vihl, frags, ip_proto, saddr, daddr) = unsafe {
        (
            (*ip).vihl,
            u16::from_ne_bytes((*ip).frags),
            (*ip).proto,
            u32::from_ne_bytes((*ip).src_addr),
            u32::from_ne_bytes((*ip).dst_addr),
        )
    };
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(Reason::PassMalformed);
    }
    if ip_proto != proto::TCP && ip_proto != proto::UDP {
        return Ok(None);
    }
    if frags & IP_OFFSET_MASK_BE != 0 {
        // Later fragments carry no ports.
        return Err(Reason::PassFragment);
    }
    let l4 = l3 + ihl;
    let l4_len = if ip_proto == proto::TCP {
        TcpHdr::LEN
    } else {
        UdpHdr::LEN
    };
    if !pull(ctx, l4 + l4_len) {
        return Err(Reason::PassMalformed);
    }
    let (sport, dport, tcp_flags) = if ip_proto == proto::TCP {
        let tcp: *const TcpHdr = ptr_at(ctx, l4).ok_or(Reason::PassMalformed)?;
        // SAFETY: bounds checked by ptr_at. Byte 13 of the TCP header holds the flags.
        unsafe {
            (
                u16::from_ne_bytes((*tcp).source),
                u16::from_ne_bytes((*tcp).dest),
                *(tcp as *const u8).add(13),
            )
        }
    } else {
        let udp: *const UdpHdr = ptr_at(ctx, l4).ok_or(Reason::PassMalformed)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            (
                u16::from_ne_bytes((*udp).src),
                u16::from_ne_bytes((*udp).dst),
                0,
            )
        }
    };
    Ok(Some(Packet {
        l3,
        l4,
        proto: ip_proto,
        saddr,
        daddr,
        sport,
        dport,
        tcp_flags,
    }))
}
