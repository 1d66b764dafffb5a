//! Backend selection: a client with session affinity returns to its backend; otherwise a
//! seeded hash of the flow picks one of the service's slots.

use lb_common::{
    backend::flags as backend_flags,
    hash::{flow_hash, pick_slot},
    AffinityEntry, AffinityKey, Backend, BackendId, BackendSlotKey, Frontend, Reason,
};

use crate::{
    maps::{LB_AFFINITY, LB_BACKENDS, LB_CONFIG, LB_SLOTS},
    parse::Packet,
};

#[inline(always)]
pub fn select(fe: &Frontend, pkt: &Packet, now: u64) -> Result<(BackendId, Backend), Reason> {
    if fe.backend_count == 0 {
        return Err(Reason::DropNoBackend);
    }
    let affinity = AffinityKey {
        service_id: fe.service_id,
        client_addr: pkt.saddr,
    };
    if fe.affinity_timeout_s != 0 {
        if let Some(sticky) = sticky_backend(fe, &affinity, now) {
            return Ok(sticky);
        }
    }
    let seed = LB_CONFIG.get(0).map(|c| c.hash_seed).unwrap_or(0);
    let hash = flow_hash(pkt.saddr, pkt.daddr, pkt.sport, pkt.dport, pkt.proto, seed);
    let slot = pick_slot(hash, fe.backend_count);
    let id = slot_backend(fe.service_id, slot).ok_or(Reason::DropNoBackendSlot)?;
    // SAFETY: copied out at once.
    let backend = unsafe { LB_BACKENDS.get(&id).copied() }.ok_or(Reason::DropBackendMissing)?;
    if fe.affinity_timeout_s != 0 {
        let entry = AffinityEntry {
            last_used_ns: now,
            backend_id: id,
            slot,
        };
        // Best effort: without the entry the client is merely not pinned.
        let _ = LB_AFFINITY.insert(&affinity, &entry, 0);
    }
    Ok((id, backend))
}

#[inline(always)]
fn slot_backend(service_id: u32, slot: u32) -> Option<BackendId> {
    // SAFETY: copied out at once.
    unsafe { LB_SLOTS.get(&BackendSlotKey { service_id, slot }).copied() }
}

/// The client's previous backend, if its stickiness has not run out and the backend still
/// serves the service in the same slot and is not terminating.
#[inline(always)]
fn sticky_backend(fe: &Frontend, key: &AffinityKey, now: u64) -> Option<(BackendId, Backend)> {
    let entry = LB_AFFINITY.get_ptr_mut(key)?;
    // SAFETY: valid for this run; a racing update from another CPU is harmless.
    let (backend_id, slot) = unsafe {
        if (*entry).is_expired(fe.affinity_timeout_s, now) {
            return None;
        }
        ((*entry).backend_id, (*entry).slot)
    };
    if slot > fe.backend_count as u32 || slot_backend(fe.service_id, slot)? != backend_id {
        return None;
    }
    // SAFETY: copied out at once.
    let backend = unsafe { LB_BACKENDS.get(&backend_id).copied() }?;
    if backend.flags & backend_flags::TERMINATING != 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*entry).last_used_ns = now };
    Some((backend_id, backend))
}
