//! Fragments: only a datagram's first fragment carries its ports. The first fragment's
//! ports are remembered under the datagram's identity (addresses, protocol, IP id), and the
//! later fragments take them, so that conntrack and NAT treat every fragment alike and the
//! datagram arrives whole (Cilium's `ipv4_handle_fragmentation`). Every program learns
//! from what it sees, so each hook finds the header it would match on.

use lb_common::{FragKey, FragPorts, Reason};

use crate::{
    maps::LB_FRAG4,
    parse::{frag, Packet},
};

#[inline(always)]
fn key(pkt: &Packet) -> FragKey {
    FragKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        id: pkt.ip_id as u32,
        proto: pkt.proto,
        _pad: [0; 3],
    }
}

/// Records a first fragment's ports, or gives a later fragment the ports of its first.
/// `Err(PassFragUnknown)` for a later fragment whose first was not seen: it cannot be
/// matched to a flow, so it goes on untranslated.
#[inline(always)]
pub fn track(pkt: &mut Packet) -> Result<(), Reason> {
    if pkt.frag == frag::FIRST {
        let ports = FragPorts {
            sport: pkt.sport,
            dport: pkt.dport,
        };
        // Best effort: without the record the later fragments pass untranslated (counted).
        let _ = LB_FRAG4.insert(&key(pkt), &ports, 0);
    } else if pkt.frag == frag::LATER {
        // SAFETY: copied out at once.
        let ports = unsafe { LB_FRAG4.get(&key(pkt)).copied() }.ok_or(Reason::PassFragUnknown)?;
        pkt.sport = ports.sport;
        pkt.dport = ports.dport;
    }
    Ok(())
}
