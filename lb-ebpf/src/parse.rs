//! Parsing: Ethernet -> IPv4 -> TCP/UDP (or an ICMP message), every read bounds-checked
//! against the packet end. A later fragment carries no L4 header: it is parsed as far as the
//! IP header, and [`crate::frag`] supplies its ports.

use lb_common::{proto, Reason};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::frame::Frame;

const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
/// Fragment offset bits of the IPv4 flags/offset field (network order when read natively).
const IP_OFFSET_MASK_BE: u16 = 0x1fffu16.to_be();
/// More-fragments bit, likewise.
const IP_MF_BE: u16 = 0x2000u16.to_be();
/// Don't-fragment bit, likewise.
const IP_DF_BE: u16 = 0x4000u16.to_be();

/// Where a packet stands in its datagram.
pub mod frag {
    /// Not fragmented.
    pub const NONE: u8 = 0;
    /// The first fragment: it carries the L4 header, and more fragments follow.
    pub const FIRST: u8 = 1;
    /// A later fragment: no L4 header; its ports come from the first one.
    pub const LATER: u8 = 2;
}
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
    /// TCP flags byte (0 for UDP, ICMP and later fragments).
    pub tcp_flags: u8,
    /// [`frag`] kind.
    pub frag: u8,
    /// The IP identification, as the packet carries it.
    pub ip_id: u16,
    pub ttl: u8,
    /// Don't Fragment is set.
    pub df: bool,
    /// The L4 length the IP header gives (total length minus header), host order.
    pub l4_len: u16,
    /// TCP SYN, FIN and RST: the timestamp option's TSval, host order; 0 if there is none
    /// (or it is not where the common stacks put it) and for other packets.
    pub tsval: u32,
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
    let (vihl, frags, ip_proto, saddr, daddr, tot_len, ip_id, ttl) = unsafe {
        (
            (*ip).vihl,
            u16::from_ne_bytes((*ip).frags),
            (*ip).proto,
            u32::from_ne_bytes((*ip).src_addr),
            u32::from_ne_bytes((*ip).dst_addr),
            u16::from_be_bytes((*ip).tot_len),
            u16::from_ne_bytes((*ip).id),
            (*ip).ttl,
        )
    };
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(Reason::PassMalformed);
    }
    if ip_proto != proto::TCP && ip_proto != proto::UDP && ip_proto != proto::ICMP {
        return Ok(None);
    }
    // A total length of 0 is a BIG TCP GSO packet's (its length is the skb's).
    if tot_len != 0 && (tot_len as usize) < ihl {
        return Err(Reason::PassMalformed);
    }
    let l4 = l3 + ihl;
    let mut pkt = Packet {
        l3,
        l4,
        proto: ip_proto,
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        frag: frag::NONE,
        ip_id,
        ttl,
        df: frags & IP_DF_BE != 0,
        l4_len: tot_len.saturating_sub(ihl as u16),
        tsval: 0,
    };
    if frags & IP_OFFSET_MASK_BE != 0 {
        // No L4 header here: the ports are the first fragment's (crate::frag).
        if ip_proto == proto::ICMP {
            return Err(Reason::PassFragment);
        }
        pkt.frag = frag::LATER;
        return Ok(Some(pkt));
    }
    if frags & IP_MF_BE != 0 {
        pkt.frag = frag::FIRST;
    }
    let l4_len = match ip_proto {
        proto::TCP => TcpHdr::LEN,
        proto::UDP => UdpHdr::LEN,
        _ => ICMP_HDR_LEN,
    };
    if !ctx.pull(l4 + l4_len) {
        return Err(Reason::PassMalformed);
    }
    let mut data_offset = 0;
    let (sport, dport, tcp_flags) = match ip_proto {
        proto::TCP => {
            let tcp: *const TcpHdr = ctx.ptr_at(l4).ok_or(Reason::PassMalformed)?;
            // SAFETY: bounds checked by ptr_at. Byte 13 of the TCP header holds the flags,
            // the high nibble of byte 12 the header's length in words.
            unsafe {
                data_offset = *(tcp as *const u8).add(12);
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
    pkt.sport = sport;
    pkt.dport = dport;
    pkt.tcp_flags = tcp_flags;
    if ip_proto == proto::TCP && tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
        pkt.tsval = tsval(ctx, l4, data_offset);
    }
    Ok(Some(pkt))
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
/// TCP option kinds: no-op, maximum segment size, SACK permitted, timestamps.
const NOP: u8 = 1;
const MSS: u8 = 2;
const SACK_OK: u8 = 4;
const TIMESTAMPS: u8 = 8;

/// The TSval of a TCP header's timestamp option, or 0. Only the layouts the common stacks
/// send are recognised (`NOP NOP TS` and `TS` first on established segments, `MSS SACK_OK
/// TS` on Linux's SYN), so there is no option loop for the verifier to follow; a packet
/// with another layout is treated as one without timestamps, which only means a closed
/// flow's tuple waits its quiet second (see lb_common's `frees_tuple`).
#[inline(always)]
fn tsval<F: Frame>(ctx: &F, l4: usize, data_offset: u8) -> u32 {
    let options = ((data_offset >> 4) as usize * 4).saturating_sub(TcpHdr::LEN);
    let at = l4 + TcpHdr::LEN;
    let be = |b: [u8; 4]| u32::from_be_bytes(b);
    if options >= 16 && ctx.pull(at + 16) {
        if let Some(o) = ctx.ptr_at::<[u8; 16]>(at) {
            // SAFETY: bounds checked by ptr_at.
            let o = unsafe { *o };
            if o[0] == MSS && o[1] == 4 && o[4] == SACK_OK && o[5] == 2 {
                if o[6] == TIMESTAMPS && o[7] == 10 {
                    return be([o[8], o[9], o[10], o[11]]);
                }
                return 0;
            }
        }
    }
    if options >= 12 && ctx.pull(at + 12) {
        if let Some(o) = ctx.ptr_at::<[u8; 12]>(at) {
            // SAFETY: bounds checked by ptr_at.
            let o = unsafe { *o };
            if o[0] == NOP && o[1] == NOP && o[2] == TIMESTAMPS && o[3] == 10 {
                return be([o[4], o[5], o[6], o[7]]);
            }
            if o[0] == TIMESTAMPS && o[1] == 10 {
                return be([o[2], o[3], o[4], o[5]]);
            }
        }
    }
    0
}
