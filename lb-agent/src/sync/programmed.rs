//! What the maps hold, as the syncer left them: lets a change to a few frontends be planned
//! and written with point writes alone, without reading whole maps.
//!
//! It is only ever built from the maps themselves (after a full sync, which reads them) and
//! then kept in step with every write the syncer makes. Any failed write throws it away, so
//! the next sync is a full one that reads the maps again: it can be stale only if something
//! other than this agent edits the maps, which the periodic full resync repairs.
//!
//! The incremental plan keeps the guarantees of the full one ([`plan`](mod@super::plan)):
//! backends, then slots, then frontends are written, and only then are frontends, slots and
//! backends removed; ids keep their owners, and an id freed by this batch is not handed out
//! again in the same batch (its old slots are still in the map until the batch's removals).

use std::collections::{BTreeSet, HashMap};

use lb_common::{proto, Backend, BackendId, BackendSlotKey, Frontend, FrontendKey};

use super::{
    conntrack::StaleFlows,
    ids::IdAllocator,
    plan::{range_keys, tuple, Plan, PlanError, Tuple},
};
use crate::{
    datapath::maps::{MapState, RangeKey, Write},
    model::{DesiredFrontend, DesiredView},
};

/// Entries per service map, as the syncer knows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapCounts {
    pub frontends: usize,
    pub slots: usize,
    pub backends: usize,
}

#[derive(Clone, Debug)]
struct ProgrammedFrontend {
    value: Frontend,
    /// Slot `i + 1` holds `uses[i].0`; `uses[i].1` is the backend flags this frontend asks
    /// for (a shared backend carries the union of what its users ask).
    uses: Vec<(BackendId, u8)>,
    /// Its LB_SRC_RANGES entries (under its service id), sorted.
    ranges: Vec<RangeKey>,
}

#[derive(Clone, Debug)]
struct ProgrammedBackend {
    value: Backend,
    in_map: bool,
    /// Slots pointing at it.
    refs: u32,
    /// For each flag bit, how many of those slots ask for it.
    flag_refs: [u32; 8],
}

impl ProgrammedBackend {
    fn flags(&self) -> u8 {
        (0..8)
            .filter(|&bit| self.flag_refs[bit] > 0)
            .fold(0, |acc, bit| acc | (1 << bit))
    }

    fn count(&mut self, flags: u8, delta: i64) {
        let apply = |n: &mut u32| {
            *n = u32::try_from(i64::from(*n) + delta).unwrap_or(0);
        };
        apply(&mut self.refs);
        for bit in 0..8 {
            if flags & (1 << bit) != 0 {
                apply(&mut self.flag_refs[bit]);
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Programmed {
    frontends: HashMap<FrontendKey, ProgrammedFrontend>,
    backends: HashMap<BackendId, ProgrammedBackend>,
    backend_ids: HashMap<Tuple, BackendId>,
    service_id_pool: IdAllocator,
    backend_id_pool: IdAllocator,
    slots: usize,
}

impl Programmed {
    /// The record after a full sync left the maps holding `state`, which realises
    /// `desired`. `None` when they disagree (then the next sync must be full again).
    pub fn from_synced(state: &MapState, desired: &DesiredView<'_>) -> Option<Self> {
        if state.frontends.len() != desired.len() {
            return None;
        }
        let mut frontends = HashMap::with_capacity(desired.len());
        let mut uses_of: HashMap<BackendId, (u32, [u32; 8])> = HashMap::new();
        let mut slots = 0;
        let mut range_count = 0;
        for (key, want) in desired {
            let value = *state.frontends.get(key)?;
            let ranges = sorted_ranges(value.service_id, want);
            if !ranges.iter().all(|r| state.source_ranges.contains(r)) {
                return None;
            }
            range_count += ranges.len();
            if usize::from(value.backend_count) != want.backends.len() {
                return None;
            }
            let mut uses = Vec::with_capacity(want.backends.len());
            for (slot, b) in (1..).zip(&want.backends) {
                let id = *state.slots.get(&BackendSlotKey {
                    service_id: value.service_id,
                    slot,
                })?;
                let counts = uses_of.entry(id).or_default();
                counts.0 += 1;
                for bit in 0..8 {
                    if b.flags & (1 << bit) != 0 {
                        counts.1[bit] += 1;
                    }
                }
                uses.push((id, b.flags));
            }
            slots += uses.len();
            frontends.insert(
                *key,
                ProgrammedFrontend {
                    value,
                    uses,
                    ranges,
                },
            );
        }
        if state.slots.len() != slots || state.source_ranges.len() != range_count {
            return None;
        }
        let mut backends = HashMap::with_capacity(state.backends.len());
        let mut backend_ids = HashMap::with_capacity(state.backends.len());
        for (&id, &value) in &state.backends {
            let (refs, flag_refs) = uses_of.get(&id).copied()?;
            backends.insert(
                id,
                ProgrammedBackend {
                    value,
                    in_map: true,
                    refs,
                    flag_refs,
                },
            );
            if backend_ids.insert(tuple(&value), id).is_some() {
                return None;
            }
        }
        if uses_of.len() != backends.len() {
            return None;
        }
        Some(Self {
            service_id_pool: IdAllocator::new(frontends.values().map(|f| f.value.service_id)),
            backend_id_pool: IdAllocator::new(backends.keys().copied()),
            frontends,
            backends,
            backend_ids,
            slots,
        })
    }

    pub fn counts(&self) -> MapCounts {
        MapCounts {
            frontends: self.frontends.len(),
            slots: self.slots,
            backends: self.backends.len(),
        }
    }

    /// What the maps hold for `key`.
    pub fn frontend(&self, key: &FrontendKey) -> Option<&Frontend> {
        self.frontends.get(key).map(|f| &f.value)
    }

    /// Records `changes` (each key at most once: its new frontend, or `None` to remove it)
    /// as programmed, and returns the ordered writes that make the maps agree.
    pub fn plan_changes(
        &mut self,
        changes: &[(FrontendKey, Option<&DesiredFrontend>)],
    ) -> Result<Plan, PlanError> {
        // Checked before anything is recorded, so an error leaves the record as it was.
        let mut counts = Vec::with_capacity(changes.len());
        for (_, want) in changes {
            let count = match want {
                None => 0,
                Some(f) => {
                    u16::try_from(f.backends.len()).map_err(|_| PlanError::TooManyBackends {
                        name: f.name.clone(),
                        count: f.backends.len(),
                    })?
                }
            };
            counts.push(count);
        }

        let mut put_slots = Vec::new();
        let mut put_ranges = Vec::new();
        let mut put_frontends = Vec::new();
        let mut delete_frontends = Vec::new();
        let mut delete_slots = Vec::new();
        let mut delete_ranges = Vec::new();
        let mut touched: BTreeSet<BackendId> = BTreeSet::new();
        let mut freed_service_ids = Vec::new();
        let mut stale = StaleFlows::default();

        for ((key, want), count) in changes.iter().zip(counts) {
            let old = self.frontends.remove(key);
            let Some(want) = want else {
                let Some(old) = old else { continue };
                let sid = old.value.service_id;
                delete_frontends.push(Write::DeleteFrontend(*key));
                for (slot, (id, flags)) in (1..).zip(&old.uses) {
                    delete_slots.push(Write::DeleteSlot(BackendSlotKey {
                        service_id: sid,
                        slot,
                    }));
                    self.count_use(*id, *flags, -1);
                    touched.insert(*id);
                }
                self.slots -= old.uses.len();
                delete_ranges.extend(old.ranges.iter().map(|r| Write::DeleteSourceRange(*r)));
                freed_service_ids.push(sid);
                if key.proto == proto::UDP {
                    stale.services.insert(sid);
                }
                continue;
            };

            let service_id = match &old {
                Some(o) => o.value.service_id,
                None => self
                    .service_id_pool
                    .allocate()
                    .map_err(PlanError::ServiceIds)?,
            };
            let mut uses = Vec::with_capacity(want.backends.len());
            for b in &want.backends {
                let id = self.backend_id_for(b)?;
                self.count_use(id, b.flags, 1);
                touched.insert(id);
                uses.push((id, b.flags));
            }
            let old_uses = old.as_ref().map(|o| o.uses.as_slice()).unwrap_or_default();
            for (id, flags) in old_uses {
                self.count_use(*id, *flags, -1);
                touched.insert(*id);
            }
            for (slot, (id, _)) in (1..).zip(&uses) {
                if old_uses.get(slot as usize - 1).map(|u| u.0) != Some(*id) {
                    put_slots.push(Write::PutSlot(BackendSlotKey { service_id, slot }, *id));
                }
            }
            for slot in uses.len() + 1..=old_uses.len() {
                delete_slots.push(Write::DeleteSlot(BackendSlotKey {
                    service_id,
                    // Bounded by a u16 count.
                    slot: slot as u32,
                }));
            }
            if key.proto == proto::UDP {
                let kept: BTreeSet<BackendId> = uses.iter().map(|u| u.0).collect();
                for (id, _) in old_uses.iter().filter(|u| !kept.contains(&u.0)) {
                    if let Some(b) = self.backends.get(id) {
                        stale
                            .backends
                            .insert((service_id, b.value.addr, b.value.port));
                    }
                }
            }
            let ranges = sorted_ranges(service_id, want);
            let old_ranges = old
                .as_ref()
                .map(|o| o.ranges.as_slice())
                .unwrap_or_default();
            put_ranges.extend(
                ranges
                    .iter()
                    .filter(|r| old_ranges.binary_search(r).is_err())
                    .map(|r| Write::PutSourceRange(*r)),
            );
            delete_ranges.extend(
                old_ranges
                    .iter()
                    .filter(|r| ranges.binary_search(r).is_err())
                    .map(|r| Write::DeleteSourceRange(*r)),
            );
            let value = Frontend {
                service_id,
                backend_count: count,
                flags: want.flags,
                affinity_timeout_s: want.affinity_timeout_s,
                _reserved: 0,
            };
            if old.as_ref().map(|o| o.value) != Some(value) {
                put_frontends.push(Write::PutFrontend(*key, value));
            }
            self.slots = self.slots - old_uses.len() + uses.len();
            self.frontends.insert(
                *key,
                ProgrammedFrontend {
                    value,
                    uses,
                    ranges,
                },
            );
        }

        let mut put_backends = Vec::new();
        let mut delete_backends = Vec::new();
        let mut freed_backend_ids = Vec::new();
        for id in touched {
            let Some(entry) = self.backends.get_mut(&id) else {
                continue;
            };
            if entry.refs == 0 {
                if entry.in_map {
                    delete_backends.push(Write::DeleteBackend(id));
                }
                let key = tuple(&entry.value);
                self.backends.remove(&id);
                self.backend_ids.remove(&key);
                freed_backend_ids.push(id);
                continue;
            }
            let value = Backend {
                flags: entry.flags(),
                ..entry.value
            };
            if !entry.in_map || value != entry.value {
                put_backends.push(Write::PutBackend(id, value));
                entry.value = value;
                entry.in_map = true;
            }
        }
        // Only now: their old slots and conntrack entries are gone after this batch.
        for id in freed_service_ids {
            self.service_id_pool.release(id);
        }
        for id in freed_backend_ids {
            self.backend_id_pool.release(id);
        }

        let mut writes = put_backends;
        writes.extend(put_slots);
        writes.extend(put_ranges);
        writes.extend(put_frontends);
        writes.extend(delete_frontends);
        writes.extend(delete_slots);
        writes.extend(delete_ranges);
        writes.extend(delete_backends);
        Ok(Plan {
            writes,
            stale_flows: stale,
        })
    }

    /// The id of `b`'s (address, port, protocol), allocating one (not yet in the map) for a
    /// new backend.
    fn backend_id_for(&mut self, b: &Backend) -> Result<BackendId, PlanError> {
        if let Some(&id) = self.backend_ids.get(&tuple(b)) {
            return Ok(id);
        }
        let id = self
            .backend_id_pool
            .allocate()
            .map_err(PlanError::BackendIds)?;
        self.backend_ids.insert(tuple(b), id);
        self.backends.insert(
            id,
            ProgrammedBackend {
                value: Backend { flags: 0, ..*b },
                in_map: false,
                refs: 0,
                flag_refs: [0; 8],
            },
        );
        Ok(id)
    }

    fn count_use(&mut self, id: BackendId, flags: u8, delta: i64) {
        if let Some(b) = self.backends.get_mut(&id) {
            b.count(flags, delta);
        }
    }
}

/// A frontend's source-range entries under `service_id`, sorted (for binary search).
fn sorted_ranges(service_id: u32, f: &DesiredFrontend) -> Vec<RangeKey> {
    let mut ranges: Vec<RangeKey> = range_keys(service_id, f).collect();
    ranges.sort();
    ranges.dedup();
    ranges
}
