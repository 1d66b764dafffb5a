//! Parsing: Ethernet -> IPv4 -> TCP/UDP (or an ICMP message), every read bounds-checked
//! against the packet end.

use lb_common::{proto, Reason};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::frame::Frame;

const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
/// Fragment offset bits of the IPv4 flags/offset field (network order when read natively).
const IP_OFFSET_MASK_BE: u16 = 0x1fffu16.to_be();
/// ICMP header: type, code, checksum, 4 bytes that depend on the type.
pub const ICMP_HDR_LEN: usize = 8;
pub const ETH_HDR_LEN: usize = EthHdr::LEN;

/// Offsets and the flow tuple of an IPv4 packet. Addresses and ports are as they sit in the
/// packet (network byte order read natively). For ICMP, ports and flags are 0.
pub struct Packet {
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (0 for UDP and ICMP).
    pub tcp_flags: u8,
}

impl Packet {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        match self.proto {
            proto::TCP => self.l4 + 16,
            proto::UDP => self.l4 + 6,
            _ => self.l4 + 2,
        }
    }
}

/// `Ok(None)`: not IPv4 TCP/UDP/ICMP, nothing for us. `Err`: the reason to pass it untouched.
#[inline(always)]
pub fn parse<F: Frame>(ctx: &F) -> Result<Option<Packet>, Reason> {
    let eth: *const EthHdr = ctx.ptr_at(0).ok_or(Reason::PassMalformed)?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    if unsafe { (*eth).ether_type } != ETH_P_IP_BE {
        return Ok(None);
    }
    let l3 = EthHdr::LEN;
    if !ctx.pull(l3 + Ipv4Hdr::LEN) {
        return Err(Reason::PassMalformed);
    }
    let ip: *const Ipv4Hdr = ctx.ptr_at(l3).ok_or(Reason::PassMalformed)?;
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
    if ip_proto != proto::TCP && ip_proto != proto::UDP && ip_proto != proto::ICMP {
        return Ok(None);
    }
    if frags & IP_OFFSET_MASK_BE != 0 {
        // Later fragments carry no ports.
        return Err(Reason::PassFragment);
    }
    let l4 = l3 + ihl;
    let l4_len = match ip_proto {
        proto::TCP => TcpHdr::LEN,
        proto::UDP => UdpHdr::LEN,
        _ => ICMP_HDR_LEN,
    };
    if !ctx.pull(l4 + l4_len) {
        return Err(Reason::PassMalformed);
    }
    let (sport, dport, tcp_flags) = match ip_proto {
        proto::TCP => {
            let tcp: *const TcpHdr = ctx.ptr_at(l4).ok_or(Reason::PassMalformed)?;
            // SAFETY: bounds checked by ptr_at. Byte 13 of the TCP header holds the flags.
            unsafe {
                (
                    u16::from_ne_bytes((*tcp).source),
                    u16::from_ne_bytes((*tcp).dest),
                    *(tcp as *const u8).add(13),
                )
            }
        }
        proto::UDP => {
            let udp: *const UdpHdr = ctx.ptr_at(l4).ok_or(Reason::PassMalformed)?;
            // SAFETY: bounds checked by ptr_at.
            unsafe {
                (
                    u16::from_ne_bytes((*udp).src),
                    u16::from_ne_bytes((*udp).dst),
                    0,
                )
            }
        }
        // ICMP: the message type is read by the ICMP code itself (tc only), with a helper.
        _ => (0, 0, 0),
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
