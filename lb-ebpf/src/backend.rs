//! Backend selection: a seeded hash of the flow picks one of the service's slots.

use lb_common::{
    hash::{flow_hash, pick_slot},
    Backend, BackendId, BackendSlotKey, Frontend, Reason,
};

use crate::{
    maps::{LB_BACKENDS, LB_CONFIG, LB_SLOTS},
    parse::Packet,
};

#[inline(always)]
pub fn select(fe: &Frontend, pkt: &Packet) -> Result<(BackendId, Backend), Reason> {
    if fe.backend_count == 0 {
        return Err(Reason::DropNoBackend);
    }
    let seed = LB_CONFIG.get(0).map(|c| c.hash_seed).unwrap_or(0);
    let hash = flow_hash(pkt.saddr, pkt.daddr, pkt.sport, pkt.dport, pkt.proto, seed);
    let slot = BackendSlotKey {
        service_id: fe.service_id,
        slot: pick_slot(hash, fe.backend_count),
    };
    // SAFETY (both gets): values are copied out immediately.
    let id = unsafe { LB_SLOTS.get(&slot).copied() }.ok_or(Reason::DropNoBackendSlot)?;
    let backend = unsafe { LB_BACKENDS.get(&id).copied() }.ok_or(Reason::DropBackendMissing)?;
    Ok((id, backend))
}
