//! Conntrack: find a live flow, create one for a new connection, and fold each packet's TCP
//! flags into the flow's state (the state machine itself is in lb_common::conntrack).

use lb_common::{
    conntrack::{dir, is_reopen, seen, seen_bits, tcp_flags},
    proto, Backend, BackendId, CtEntry, CtKey, Frontend, Reason,
};

use crate::{maps::LB_CT, parse::Packet};

/// The forward entry of a live flow, with this packet folded in. `None` if there is none,
/// it has expired, or the packet opens a new connection on a finished flow's tuple.
#[inline(always)]
pub fn forward_hit(key: &CtKey, pkt: &Packet, now: u64) -> Option<(u32, u16, BackendId)> {
    let entry = LB_CT.get_ptr_mut(key)?;
    // SAFETY: the pointer is valid for this program run; concurrent updates of `seen` and
    // `last_seen_ns` from other CPUs can race, and either value is acceptable.
    unsafe {
        if (*entry).is_expired(pkt.proto, now) || is_reopen(pkt.proto, (*entry).seen, pkt.tcp_flags)
        {
            return None;
        }
        (*entry).seen |= seen_bits(pkt.tcp_flags, dir::FORWARD);
        (*entry).last_seen_ns = now;
        Some(((*entry).nat_addr, (*entry).nat_port, (*entry).backend_id))
    }
}

/// Records a new flow: the forward entry (client -> service, steering it to `backend`) and
/// the reply entry (backend -> client, restoring the service address).
#[inline(always)]
pub fn create(
    key: &CtKey,
    pkt: &Packet,
    fe: &Frontend,
    backend_id: BackendId,
    backend: &Backend,
    now: u64,
) -> Result<(), Reason> {
    let opened_by_syn = pkt.proto == proto::TCP
        && pkt.tcp_flags & tcp_flags::SYN != 0
        && pkt.tcp_flags & tcp_flags::ACK == 0;
    let forward = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        nat_addr: backend.addr,
        nat_port: backend.port,
        seen: seen_bits(pkt.tcp_flags, dir::FORWARD) | if opened_by_syn { seen::SYN } else { 0 },
        flags: 0,
        snat_addr: 0,
        snat_port: 0,
        _pad: [0; 2],
        service_id: fe.service_id,
        backend_id,
    };
    let reply_key = CtKey::new(
        backend.addr,
        pkt.saddr,
        backend.port,
        pkt.sport,
        pkt.proto,
        dir::REPLY,
    );
    let reply = CtEntry {
        nat_addr: pkt.daddr,
        nat_port: pkt.dport,
        seen: 0,
        ..forward
    };
    // Reply entry first: once the forward entry exists, packets are steered to the backend
    // and its answers must already be translatable.
    LB_CT
        .insert(&reply_key, &reply, 0)
        .map_err(|_| Reason::DropCtInsert)?;
    if LB_CT.insert(key, &forward, 0).is_err() {
        let _ = LB_CT.remove(&reply_key);
        return Err(Reason::DropCtInsert);
    }
    Ok(())
}

/// The service address a reply must carry as its source, if the reply belongs to a tracked
/// flow; the flow's forward entry learns what the reply showed (SYN-ACK, FIN, RST).
#[inline(always)]
pub fn reply_hit(key: &CtKey, pkt: &Packet, now: u64) -> Option<(u32, u16, BackendId)> {
    // SAFETY: copied out at once.
    let reply = unsafe { LB_CT.get(key).copied() }?;
    let forward_key = key.forward_of_reply(&reply);
    if let Some(forward) = LB_CT.get_ptr_mut(&forward_key) {
        // SAFETY: as in forward_hit.
        unsafe {
            (*forward).seen |= seen_bits(pkt.tcp_flags, dir::REPLY);
            (*forward).last_seen_ns = now;
        }
    }
    Some((reply.nat_addr, reply.nat_port, reply.backend_id))
}
