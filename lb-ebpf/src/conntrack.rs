//! Conntrack: find a live flow, create one for a new connection, and fold each packet's TCP
//! flags into the flow's state (the state machine itself is in lb_common::conntrack).

use lb_common::{
    conntrack::{awaits_syn_ack, ct_flags, dir, is_reopen, is_syn_ack, seen_bits, snat_ports},
    hash::flow_hash,
    Backend, BackendId, Config, CtEntry, CtKey, Frontend, Reason,
};

use crate::{maps::LB_CT, nat::Tuple, parse::Packet};

/// BPF_NOEXIST: insert only if the key is free (a masquerade port must not be shared).
const BPF_NOEXIST: u64 = 1;

/// A tracked flow's translation for this packet.
pub struct Hit {
    pub to: Tuple,
    pub backend_id: BackendId,
}

/// The forward entry of a live flow, with this packet folded in. `None` if there is none,
/// it has expired, or the packet opens a new connection on a finished flow's tuple. A SYN
/// on a live entry (one picked up mid-stream) marks it opened, so its SYN-ACK translates.
#[inline(always)]
pub fn forward_hit(key: &CtKey, pkt: &Packet, now: u64) -> Option<Hit> {
    let entry = LB_CT.get_ptr_mut(key)?;
    // SAFETY: the pointer is valid for this program run; concurrent updates of `seen` and
    // `last_seen_ns` from other CPUs can race, and either value is acceptable.
    unsafe {
        if (*entry).is_expired(pkt.proto, now) || is_reopen(pkt.proto, (*entry).seen, pkt.tcp_flags)
        {
            return None;
        }
        touch(entry, seen_bits(pkt.tcp_flags, dir::FORWARD), now);
        let mut to = Tuple {
            saddr: pkt.saddr,
            sport: pkt.sport,
            daddr: (*entry).nat_addr,
            dport: (*entry).nat_port,
        };
        if (*entry).flags & ct_flags::SNAT != 0 {
            to.saddr = (*entry).snat_addr;
            to.sport = (*entry).snat_port;
        }
        Some(Hit {
            to,
            backend_id: (*entry).backend_id,
        })
    }
}

/// The addresses a reply must carry, if it belongs to a live tracked flow: the service as
/// its source, and for a masqueraded flow the client as its destination. The flow's forward
/// entry learns what the reply showed (SYN-ACK, FIN, RST).
///
/// A reply entry outlives its flow (until LRU eviction), and a later connection can carry
/// its tuple: the same client reaching the backend directly from a reused source port. Its
/// SYN-ACK must not be rewritten to come from the service (the client would refuse it), so
/// the forward entry, which both directions keep stamped, decides whether the flow lives.
/// It is looked up when the reply entry has news to pass on anyway or is a second stale,
/// and for every SYN-ACK (which must answer a SYN the client sent through the service on a
/// flow neither side has finished); a steady stream of replies needs no extra lookup.
#[inline(always)]
pub fn reply_hit(key: &CtKey, pkt: &Packet, now: u64) -> Option<Hit> {
    let entry = LB_CT.get_ptr_mut(key)?;
    let bits = seen_bits(pkt.tcp_flags, dir::REPLY);
    // SAFETY: as in forward_hit; the entry is copied out at once.
    let reply = unsafe { *entry };
    let opening = is_syn_ack(pkt.proto, pkt.tcp_flags);
    // The reply entry remembers what it last passed on to the forward entry (its `seen`
    // and `last_seen_ns`), so that a steady stream of replies looks the forward entry up
    // only when there is news: a new flag, or a stamp gone stale.
    if opening || bits & !reply.seen != 0 || now.saturating_sub(reply.last_seen_ns) >= TOUCH_NS {
        let forward_key = key.forward_of_reply(&reply);
        let forward = LB_CT.get_ptr_mut(&forward_key);
        // SAFETY: as in forward_hit.
        let alive = forward.is_some_and(|f| unsafe {
            !(*f).is_expired(pkt.proto, now) && (!opening || awaits_syn_ack((*f).seen))
        });
        let Some(forward) = forward.filter(|_| alive) else {
            // The flow is over, so the tuple is not its any more: the packet passes as
            // an unknown flow's would, and the entry goes so that the rest of the other
            // connection is left alone as well (a closed flow's forward entry, still
            // inside its close timeout, would otherwise vouch for the next packets).
            let _ = LB_CT.remove(key);
            return None;
        };
        touch(forward, bits, now);
        // SAFETY: as in forward_hit.
        unsafe {
            (*entry).seen = reply.seen | bits;
            (*entry).last_seen_ns = now;
        }
    }
    let mut to = Tuple {
        saddr: reply.nat_addr,
        sport: reply.nat_port,
        daddr: pkt.daddr,
        dport: pkt.dport,
    };
    if reply.flags & ct_flags::SNAT != 0 {
        to.daddr = reply.snat_addr;
        to.dport = reply.snat_port;
    }
    Some(Hit {
        to,
        backend_id: reply.backend_id,
    })
}

/// How stale a flow's `last_seen_ns` may get before a packet restamps it. Writing it on
/// every packet would dirty the entry's cache line for every packet on every CPU the flow
/// touches; a second is far below the shortest timeout (10 s), which it can only lengthen
/// by as much.
const TOUCH_NS: u64 = 1_000_000_000;

/// Folds a packet's `bits` and time into a flow's entry, writing only what changes.
#[inline(always)]
fn touch(entry: *mut CtEntry, bits: u8, now: u64) {
    // SAFETY: `entry` comes from a map lookup of this run; see forward_hit on races.
    unsafe {
        if bits & !(*entry).seen != 0 {
            (*entry).seen |= bits;
        }
        if now.saturating_sub((*entry).last_seen_ns) >= TOUCH_NS {
            (*entry).last_seen_ns = now;
        }
    }
}

/// How a new flow is to be translated.
pub struct NewFlow {
    pub fe: Frontend,
    pub backend_id: BackendId,
    pub backend: Backend,
    /// Masquerade to this address (the node's), or 0 to keep the client's.
    pub snat_addr: u32,
    /// [`ct_flags`] besides SNAT.
    pub flags: u8,
    /// The settings the decision was made with (masquerade ports and hash seed).
    pub cfg: Config,
}

/// Records a new flow: the forward entry (client -> service, steering it to the backend,
/// and for a masqueraded flow the source to use) and the reply entry (backend -> client or
/// node, restoring the service and the client). Returns the tuple the packet must carry.
#[inline(always)]
pub fn create(key: &CtKey, pkt: &Packet, flow: &NewFlow, now: u64) -> Result<Tuple, Reason> {
    let backend = &flow.backend;
    let mut forward = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        nat_addr: backend.addr,
        nat_port: backend.port,
        // A bare SYN marks the flow as opened (seen::SYN); any other packet picks it up.
        seen: seen_bits(pkt.tcp_flags, dir::FORWARD),
        flags: flow.flags,
        service_id: flow.fe.service_id,
        backend_id: flow.backend_id,
        snat_addr: 0,
        snat_port: 0,
        _pad: [0; 2],
    };
    let mut reply = CtEntry {
        nat_addr: pkt.daddr,
        nat_port: pkt.dport,
        seen: 0,
        ..forward
    };
    let mut to = Tuple {
        saddr: pkt.saddr,
        sport: pkt.sport,
        daddr: backend.addr,
        dport: backend.port,
    };
    // Reply entry first: once the forward entry exists, packets are steered to the backend
    // and its answers must already be translatable.
    if flow.snat_addr == 0 {
        let reply_key = CtKey::new(
            backend.addr,
            pkt.saddr,
            backend.port,
            pkt.sport,
            pkt.proto,
            dir::REPLY,
        );
        LB_CT
            .insert(&reply_key, &reply, 0)
            .map_err(|_| Reason::DropCtInsert)?;
        if LB_CT.insert(key, &forward, 0).is_err() {
            let _ = LB_CT.remove(&reply_key);
            return Err(Reason::DropCtInsert);
        }
        return Ok(to);
    }

    reply.flags |= ct_flags::SNAT;
    reply.snat_addr = pkt.saddr;
    reply.snat_port = pkt.sport;
    let port = snat_port(key, pkt, backend, flow.snat_addr, &reply, &flow.cfg)?;
    forward.flags |= ct_flags::SNAT;
    forward.snat_addr = flow.snat_addr;
    forward.snat_port = port;
    if LB_CT.insert(key, &forward, 0).is_err() {
        let reply_key = CtKey::new(
            backend.addr,
            flow.snat_addr,
            backend.port,
            port,
            pkt.proto,
            dir::REPLY,
        );
        let _ = LB_CT.remove(&reply_key);
        return Err(Reason::DropCtInsert);
    }
    to.saddr = flow.snat_addr;
    to.sport = port;
    Ok(to)
}

/// Finds a free masquerade port towards `backend` and claims it by inserting the flow's
/// reply entry under it. Candidates start at a hash of the client's tuple, so a client
/// keeps its port while its entry lives, and spread over the configured range.
#[inline(always)]
fn snat_port(
    key: &CtKey,
    pkt: &Packet,
    backend: &Backend,
    snat_addr: u32,
    reply: &CtEntry,
    cfg: &Config,
) -> Result<u16, Reason> {
    let (min, max) = if cfg.snat_port_min != 0 && cfg.snat_port_max >= cfg.snat_port_min {
        (cfg.snat_port_min as u32, cfg.snat_port_max as u32)
    } else {
        (snat_ports::MIN as u32, snat_ports::MAX as u32)
    };
    let span = max - min + 1;
    if span == 0 {
        // Unreachable with u16 bounds; written out so no division-by-zero panic path is
        // left for the verifier to refuse.
        return Err(Reason::DropSnatExhausted);
    }
    let start = flow_hash(
        key.saddr,
        key.daddr,
        key.sport,
        key.dport,
        key.proto,
        cfg.hash_seed,
    );
    let claim = |i: u32| {
        // A prime stride visits different ports on each try whatever the span.
        let port = (min + start.wrapping_add(i.wrapping_mul(7919)) % span) as u16;
        let reply_key = CtKey::new(
            backend.addr,
            snat_addr,
            backend.port,
            port.to_be(),
            pkt.proto,
            dir::REPLY,
        );
        LB_CT
            .insert(&reply_key, reply, BPF_NOEXIST)
            .is_ok()
            .then_some(port.to_be())
    };
    // Written out rather than looped: the verifier cannot see a loop's progress once LLVM
    // has rewritten the counter, and rejects it as infinite.
    const { assert!(snat_ports::TRIES == 8) };
    claim(0)
        .or_else(|| claim(1))
        .or_else(|| claim(2))
        .or_else(|| claim(3))
        .or_else(|| claim(4))
        .or_else(|| claim(5))
        .or_else(|| claim(6))
        .or_else(|| claim(7))
        .ok_or(Reason::DropSnatExhausted)
}
