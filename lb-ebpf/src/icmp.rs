//! ICMP errors about translated flows (fragmentation-needed, port-unreachable, TTL
//! exceeded...) are translated, in both directions, so that path-MTU discovery and
//! "unreachable" work through the datapath:
//!
//! - About the forward direction: the error quotes the packet as the backend side saw it
//!   (client or node -> backend), and goes to the client. Its reverse is the flow's reply
//!   tuple, whose entry says what to restore: the service as the quoted destination, and
//!   for a masqueraded flow the client as the quoted source and as the error's destination.
//!   An error sent by the backend itself also gets the service as its source.
//! - About the reply direction: the error quotes a reply as the client saw it (service ->
//!   client), and goes to the service address (a router on the way back to the client needs
//!   fragmentation, or the client's host has no such port). Its reverse is the flow's
//!   forward tuple, whose entry says what the backend sent: the backend as the quoted
//!   source, the masquerade address as the quoted destination; the error goes to the
//!   backend.

use aya_ebpf::programs::TcContext;
use lb_common::{
    checksum,
    conntrack::{ct_flags, dir},
    proto, CtEntry, CtKey, Reason,
};

use crate::{conntrack::table, counters::count, nat::Tuple, parse::Packet};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROB: u8 = 12;
const ICMP_HDR: usize = 8;
const IP_HDR: usize = 20;
/// The quoted IP header (without options) and the quoted ports.
const QUOTE: usize = IP_HDR + 4;
const IP_CSUM_OFF: usize = 10;
const IP_SADDR_OFF: usize = 12;
const IP_DADDR_OFF: usize = 16;
const BPF_F_RECOMPUTE_CSUM: u64 = 1;

/// Translates `pkt` if it is an ICMP error about a tracked flow. Returns the error's new
/// outer addresses (ports 0) when it was translated.
#[inline(always)]
pub fn translate_error(ctx: &TcContext, pkt: &Packet) -> Result<Option<Tuple>, Reason> {
    let Ok(kind) = ctx.load::<u8>(pkt.l4) else {
        return Ok(None);
    };
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED && kind != ICMP_PARAMETER_PROB {
        return Ok(None);
    }
    let quote_off = pkt.l4 + ICMP_HDR;
    // A fixed-size load: the verifier refuses a read whose length could be zero.
    let Ok(old) = ctx.load::<[u8; QUOTE]>(quote_off) else {
        // Too short to quote a header and ports: nothing we could match.
        return Ok(None);
    };
    let inner_proto = old[9];
    if old[0] != 0x45 || (inner_proto != proto::TCP && inner_proto != proto::UDP) {
        return Ok(None);
    }
    let word = |o: usize| u32::from_ne_bytes([old[o], old[o + 1], old[o + 2], old[o + 3]]);
    let half = |o: usize| u16::from_ne_bytes([old[o], old[o + 1]]);
    let (q_saddr, q_daddr) = (word(IP_SADDR_OFF), word(IP_DADDR_OFF));
    let (q_sport, q_dport) = (half(IP_HDR), half(IP_HDR + 2));
    let table = table(inner_proto);
    // The quoted packet's reverse: a reply tuple if it went client -> backend, a forward
    // tuple if it went service -> client.
    let mut key = CtKey::new(q_daddr, q_saddr, q_dport, q_sport, inner_proto, dir::REPLY);
    // What the quote and the error's addresses become.
    // SAFETY (here and below): copied out at once.
    let (quote, to) = if let Some(entry) = unsafe { table.get(&key).copied() } {
        let (client, client_port) = client_of(&entry, q_saddr, q_sport);
        let quote = Quote {
            saddr: client,
            sport: client_port,
            daddr: entry.nat_addr,
            dport: entry.nat_port,
        };
        // To the real client, and from the service when the backend itself reported the
        // error (a router's own address stays).
        let mut to = outer(pkt);
        if pkt.saddr == q_daddr {
            to.saddr = entry.nat_addr;
        }
        if pkt.daddr == q_saddr {
            to.daddr = client;
        }
        (quote, to)
    } else {
        key.dir = dir::FORWARD;
        let Some(entry) = (unsafe { table.get(&key).copied() }) else {
            return Ok(None);
        };
        let mut quote = Quote {
            saddr: entry.nat_addr,
            sport: entry.nat_port,
            daddr: q_daddr,
            dport: q_dport,
        };
        // To the backend; an error the client itself sent comes from the address the
        // backend knows it by.
        let mut to = outer(pkt);
        if entry.flags & ct_flags::SNAT != 0 {
            quote.daddr = entry.snat_addr;
            quote.dport = entry.snat_port;
            if pkt.saddr == q_daddr {
                to.saddr = entry.snat_addr;
            }
        }
        if pkt.daddr == q_saddr {
            to.daddr = entry.nat_addr;
        }
        (quote, to)
    };

    let mut new = old;
    new[IP_SADDR_OFF..IP_SADDR_OFF + 4].copy_from_slice(&quote.saddr.to_ne_bytes());
    new[IP_DADDR_OFF..IP_DADDR_OFF + 4].copy_from_slice(&quote.daddr.to_ne_bytes());
    new[IP_HDR..IP_HDR + 2].copy_from_slice(&quote.sport.to_ne_bytes());
    new[IP_HDR + 2..IP_HDR + 4].copy_from_slice(&quote.dport.to_ne_bytes());
    // The quoted header's own checksum, so the client's stack sees a consistent quote.
    let q_csum = u16::from_ne_bytes([old[IP_CSUM_OFF], old[IP_CSUM_OFF + 1]]);
    let q_csum = checksum::replace4(
        checksum::replace4(q_csum, q_saddr, quote.saddr),
        q_daddr,
        quote.daddr,
    );
    new[IP_CSUM_OFF..IP_CSUM_OFF + 2].copy_from_slice(&q_csum.to_ne_bytes());

    // The ICMP checksum covers the quote: fold in every changed word.
    let mut icmp_csum: u16 = ctx.load(pkt.l4 + 2).map_err(|_| Reason::DropRewrite)?;
    let mut i = 0;
    while i + 1 < QUOTE {
        let o = u16::from_ne_bytes([old[i], old[i + 1]]);
        let n = u16::from_ne_bytes([new[i], new[i + 1]]);
        if o != n {
            icmp_csum = checksum::replace2(icmp_csum, o, n);
        }
        i += 2;
    }
    ctx.store(quote_off, &new, BPF_F_RECOMPUTE_CSUM)
        .map_err(|_| Reason::DropRewrite)?;
    ctx.store(pkt.l4 + 2, &icmp_csum, BPF_F_RECOMPUTE_CSUM)
        .map_err(|_| Reason::DropRewrite)?;

    set_outer(ctx, pkt.l3 + IP_SADDR_OFF, pkt.saddr, to.saddr)?;
    set_outer(ctx, pkt.l3 + IP_DADDR_OFF, pkt.daddr, to.daddr)?;
    count(Reason::IcmpErrorTranslated);
    Ok(Some(to))
}

/// The quoted packet's addresses and ports, as they must read.
struct Quote {
    saddr: u32,
    sport: u16,
    daddr: u32,
    dport: u16,
}

/// The error's own addresses, unchanged.
#[inline(always)]
fn outer(pkt: &Packet) -> Tuple {
    Tuple {
        saddr: pkt.saddr,
        sport: 0,
        daddr: pkt.daddr,
        dport: 0,
    }
}

/// Who the client really is: for a masqueraded flow the entry keeps it, otherwise the
/// quoted source already is the client.
#[inline(always)]
fn client_of(entry: &CtEntry, q_saddr: u32, q_sport: u16) -> (u32, u16) {
    if entry.flags & ct_flags::SNAT != 0 {
        (entry.snat_addr, entry.snat_port)
    } else {
        (q_saddr, q_sport)
    }
}

/// An outer IPv4 address; ICMP has no pseudo-header, so only the IP checksum changes.
#[inline(always)]
fn set_outer(ctx: &TcContext, off: usize, old: u32, new: u32) -> Result<(), Reason> {
    if old == new {
        return Ok(());
    }
    ctx.l3_csum_replace(
        crate::parse::ETH_HDR_LEN + IP_CSUM_OFF,
        old as u64,
        new as u64,
        4,
    )
    .map_err(|_| Reason::DropRewrite)?;
    ctx.store(off, &new, 0).map_err(|_| Reason::DropRewrite)
}
