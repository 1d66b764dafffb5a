//! The ordered writes that turn what the maps hold into the desired state.
//!
//! Order is what keeps packets safe while a service changes (DEVELOPERS.md, "How the agent
//! programs a service"): every backend a slot will name exists before the slot is written,
//! every slot below a frontend's new count exists before the count is written, and nothing
//! a frontend may still reach is removed until the frontend no longer reaches it. So the
//! writes go: backends, slots, source ranges, frontends, then removal of stale frontends,
//! slots, source ranges and backends, in that order. Only differences are written. Source
//! ranges are in place before the frontend that asks for them (a frontend with
//! `SOURCE_RANGES` and no entry admits nobody), and removed only after it.
//!
//! Ids come from the maps: a frontend keeps the service id it already has, and a backend
//! (address, port, protocol) keeps its backend id, so a restarted agent changes nothing.
//!
//! Service ids are per frontend key: no two frontends share one, not even the ClusterIP and
//! NodePort frontends of one service port whose backends are the same. So two frontends
//! with different backend sets (an externalTrafficPolicy=Local entry and its internal twin,
//! an internalTrafficPolicy=Local ClusterIP and the NodePort with all endpoints) can never
//! share slots, conntrack entries, affinity entries or source ranges.

use std::collections::{btree_map::Entry, BTreeMap, BTreeSet};

use lb_common::{proto, Backend, BackendId, BackendSlotKey, Frontend, FrontendKey, SourceRange};

use super::{
    conntrack::StaleFlows,
    ids::{Exhausted, IdAllocator},
};
use crate::{
    datapath::maps::{MapState, RangeKey, Write},
    model::{DesiredFrontend, DesiredView},
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// To be applied in this order.
    pub writes: Vec<Write>,
    /// UDP flows the writes leave without a valid target.
    pub stale_flows: StaleFlows,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no service id left: {0}")]
    ServiceIds(Exhausted),
    #[error("no backend id left: {0}")]
    BackendIds(Exhausted),
    #[error("frontend {name} has {count} backends, more than a frontend can hold")]
    TooManyBackends { name: String, count: usize },
}

/// What identifies a backend, independent of its flags.
pub(crate) type Tuple = (u32, u16, u8);

pub(crate) fn tuple(b: &Backend) -> Tuple {
    (b.addr, b.port, b.proto)
}

/// The writes that take the maps from `actual` to `desired`.
pub fn plan(actual: &MapState, desired: &DesiredView<'_>) -> Result<Plan, PlanError> {
    let service_ids = assign_service_ids(actual, desired)?;
    let backend_ids = assign_backend_ids(actual, desired)?;

    let mut want_backends: BTreeMap<BackendId, Backend> = BTreeMap::new();
    let mut want_slots: BTreeMap<BackendSlotKey, BackendId> = BTreeMap::new();
    let mut want_frontends: BTreeMap<FrontendKey, Frontend> = BTreeMap::new();
    let mut want_ranges: BTreeSet<RangeKey> = BTreeSet::new();
    for (key, f) in desired {
        let service_id = service_ids[key];
        want_ranges.extend(range_keys(service_id, f));
        let backend_count =
            u16::try_from(f.backends.len()).map_err(|_| PlanError::TooManyBackends {
                name: f.name.clone(),
                count: f.backends.len(),
            })?;
        for (slot, b) in (1..).zip(&f.backends) {
            let id = backend_ids[&tuple(b)];
            // A backend shared by services carries every flag any of them gives it.
            want_backends.entry(id).or_insert(*b).flags |= b.flags;
            want_slots.insert(BackendSlotKey { service_id, slot }, id);
        }
        want_frontends.insert(
            *key,
            Frontend {
                service_id,
                backend_count,
                flags: f.flags,
                affinity_timeout_s: f.affinity_timeout_s,
                _reserved: 0,
            },
        );
    }

    let mut writes = Vec::new();
    for (&id, b) in &want_backends {
        if actual.backends.get(&id) != Some(b) {
            writes.push(Write::PutBackend(id, *b));
        }
    }
    for (k, id) in &want_slots {
        if actual.slots.get(k) != Some(id) {
            writes.push(Write::PutSlot(*k, *id));
        }
    }
    writes.extend(
        want_ranges
            .difference(&actual.source_ranges)
            .map(|k| Write::PutSourceRange(*k)),
    );
    for (k, f) in &want_frontends {
        if actual.frontends.get(k) != Some(f) {
            writes.push(Write::PutFrontend(*k, *f));
        }
    }
    writes.extend(
        actual
            .frontends
            .keys()
            .filter(|k| !want_frontends.contains_key(k))
            .map(|k| Write::DeleteFrontend(*k)),
    );
    writes.extend(
        actual
            .slots
            .keys()
            .filter(|k| !want_slots.contains_key(k))
            .map(|k| Write::DeleteSlot(*k)),
    );
    writes.extend(
        actual
            .source_ranges
            .difference(&want_ranges)
            .map(|k| Write::DeleteSourceRange(*k)),
    );
    writes.extend(
        actual
            .backends
            .keys()
            .filter(|id| !want_backends.contains_key(id))
            .map(|id| Write::DeleteBackend(*id)),
    );

    let stale_flows = stale_udp_flows(actual, &want_frontends, &want_slots);
    Ok(Plan {
        writes,
        stale_flows,
    })
}

/// The source-range trie keys of frontend `f` under `service_id`: none without the
/// `SOURCE_RANGES` flag.
pub(crate) fn range_keys(
    service_id: u32,
    f: &DesiredFrontend,
) -> impl Iterator<Item = RangeKey> + '_ {
    let restricted = f.flags & lb_common::frontend::flags::SOURCE_RANGES != 0;
    f.source_ranges
        .iter()
        .filter(move |_| restricted)
        .map(move |c| SourceRange::range(service_id, c.addr, c.prefix_len))
}

/// Each desired frontend's service id: the one the maps already hold for it, else the
/// lowest id that no frontend, slot or source range uses (so a new service never inherits
/// a stale one's slots, ranges or conntrack entries while they still exist).
fn assign_service_ids(
    actual: &MapState,
    desired: &DesiredView<'_>,
) -> Result<BTreeMap<FrontendKey, u32>, PlanError> {
    let mut free = IdAllocator::new(
        actual
            .frontends
            .values()
            .map(|f| f.service_id)
            .chain(actual.slots.keys().map(|k| k.service_id))
            .chain(actual.source_ranges.iter().map(|(_, r)| r.service_id())),
    );
    let mut claimed = BTreeSet::new();
    let mut ids = BTreeMap::new();
    for key in desired.keys() {
        // An id held by two frontends (a corrupt map) stays with the first one only.
        let id = match actual.frontends.get(key) {
            Some(f) if f.service_id != 0 && !claimed.contains(&f.service_id) => f.service_id,
            _ => free.allocate().map_err(PlanError::ServiceIds)?,
        };
        claimed.insert(id);
        ids.insert(*key, id);
    }
    Ok(ids)
}

/// Every desired backend's id: the lowest id the maps hold for its tuple, else the lowest id
/// that no backend or slot uses.
fn assign_backend_ids(
    actual: &MapState,
    desired: &DesiredView<'_>,
) -> Result<BTreeMap<Tuple, BackendId>, PlanError> {
    let mut ids: BTreeMap<Tuple, BackendId> = BTreeMap::new();
    for (&id, b) in &actual.backends {
        ids.entry(tuple(b)).or_insert(id);
    }
    let mut free = IdAllocator::new(actual.backends.keys().chain(actual.slots.values()).copied());
    for b in desired.values().flat_map(|f| &f.backends) {
        if let Entry::Vacant(slot) = ids.entry(tuple(b)) {
            slot.insert(free.allocate().map_err(PlanError::BackendIds)?);
        }
    }
    Ok(ids)
}

/// UDP flows the plan orphans: those of UDP service ids no wanted frontend keeps, and those
/// of kept UDP frontends to backends they no longer have.
fn stale_udp_flows(
    actual: &MapState,
    want_frontends: &BTreeMap<FrontendKey, Frontend>,
    want_slots: &BTreeMap<BackendSlotKey, BackendId>,
) -> StaleFlows {
    let kept_ids: BTreeSet<u32> = want_frontends.values().map(|f| f.service_id).collect();
    let mut stale = StaleFlows::default();
    for (key, old) in &actual.frontends {
        if key.proto != proto::UDP {
            continue;
        }
        if !kept_ids.contains(&old.service_id) {
            stale.services.insert(old.service_id);
            continue;
        }
        let Some(new) = want_frontends
            .get(key)
            .filter(|f| f.service_id == old.service_id)
        else {
            continue;
        };
        let backends_of = |slots: &BTreeMap<BackendSlotKey, BackendId>, count: u16| {
            (1..=u32::from(count))
                .filter_map(|slot| {
                    slots.get(&BackendSlotKey {
                        service_id: old.service_id,
                        slot,
                    })
                })
                .copied()
                .collect::<BTreeSet<_>>()
        };
        let kept = backends_of(want_slots, new.backend_count);
        for id in backends_of(&actual.slots, old.backend_count).difference(&kept) {
            if let Some(b) = actual.backends.get(id) {
                stale.backends.insert((old.service_id, b.addr, b.port));
            }
        }
    }
    stale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DesiredFrontend, DesiredState, FrontendKind, ObjectId};
    use lb_common::frontend::flags::CLUSTER_IP;

    fn key(port: u16, protocol: u8) -> FrontendKey {
        FrontendKey::new([10, 96, 0, 10].into(), port, protocol)
    }

    fn backend(last: u8) -> Backend {
        Backend::new([10, 244, 1, last].into(), 8080, proto::TCP)
    }

    fn desired(frontends: &[(FrontendKey, Vec<Backend>)]) -> DesiredState {
        DesiredState {
            frontends: frontends
                .iter()
                .map(|(k, b)| {
                    let f = DesiredFrontend {
                        name: format!("ns/svc:{}", k.port_host()),
                        service: ObjectId::new("ns", "svc"),
                        kind: FrontendKind::ClusterIp,
                        flags: CLUSTER_IP,
                        affinity_timeout_s: 0,
                        policy: Default::default(),
                        backends: b.clone(),
                        source_ranges: Vec::new(),
                    };
                    (*k, f)
                })
                .collect(),
        }
    }

    /// The state after applying `plan` to `actual`.
    fn apply(mut actual: MapState, plan: &Plan) -> MapState {
        for w in &plan.writes {
            actual.apply(w);
        }
        actual
    }

    fn plan(actual: &MapState, desired: &DesiredState) -> Result<Plan, PlanError> {
        super::plan(actual, &desired.programmed())
    }

    #[test]
    fn a_shared_backend_gets_one_id_and_the_union_of_flags() {
        let mut terminating = backend(2);
        terminating.flags = lb_common::backend::flags::TERMINATING;
        let want = desired(&[
            (key(80, proto::TCP), vec![backend(2)]),
            (key(81, proto::TCP), vec![terminating]),
        ]);
        let state = apply(
            MapState::default(),
            &plan(&MapState::default(), &want).expect("plan"),
        );
        assert_eq!(state.backends.len(), 1);
        assert_eq!(
            state.backends[&1].flags,
            lb_common::backend::flags::TERMINATING
        );
        assert_eq!(state.slots.values().copied().collect::<Vec<_>>(), [1, 1]);
    }

    #[test]
    fn new_ids_avoid_ids_that_stale_slots_still_use() {
        let mut actual = MapState::default();
        // A slot of service 1 points at backend 1, though neither a frontend nor the backend
        // exists (left by a crash between writes).
        actual.slots.insert(
            BackendSlotKey {
                service_id: 1,
                slot: 1,
            },
            1,
        );
        let want = desired(&[(key(80, proto::TCP), vec![backend(2)])]);
        let p = plan(&actual, &want).expect("plan");
        let state = apply(actual, &p);
        let f = state.frontends[&key(80, proto::TCP)];
        assert_eq!(f.service_id, 2);
        assert_eq!(
            state.slots,
            [(
                BackendSlotKey {
                    service_id: 2,
                    slot: 1
                },
                2
            )]
            .into()
        );
        assert_eq!(state.backends.keys().copied().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_service_id_held_twice_stays_with_one_frontend() {
        let f = Frontend {
            service_id: 5,
            ..Default::default()
        };
        let actual = MapState {
            frontends: [(key(80, proto::TCP), f), (key(81, proto::TCP), f)].into(),
            ..Default::default()
        };
        let want = desired(&[(key(80, proto::TCP), vec![]), (key(81, proto::TCP), vec![])]);
        let p = plan(&actual, &want).expect("plan");
        let state = apply(actual, &p);
        let ids: BTreeSet<_> = state.frontends.values().map(|f| f.service_id).collect();
        assert_eq!(ids, [1, 5].into());
        assert_eq!(state.frontends[&key(80, proto::TCP)].service_id, 5);
    }

    #[test]
    fn udp_backends_dropped_from_a_kept_service_are_stale() {
        let udp = |last| Backend::new([10, 244, 1, last].into(), 53, proto::UDP);
        let first = desired(&[(key(53, proto::UDP), vec![udp(2), udp(3)])]);
        let state = apply(
            MapState::default(),
            &plan(&MapState::default(), &first).expect("plan"),
        );
        let shrunk = desired(&[(key(53, proto::UDP), vec![udp(3)])]);
        let p = plan(&state, &shrunk).expect("plan");
        assert_eq!(p.stale_flows.services, BTreeSet::new());
        assert_eq!(
            p.stale_flows.backends,
            [(1, udp(2).addr, udp(2).port)].into()
        );
    }

    #[test]
    fn frontend_count_must_fit_sixteen_bits() {
        let many: Vec<Backend> = (0..=u16::MAX as u32)
            .map(|i| Backend::new(std::net::Ipv4Addr::from(0x0a00_0000 + i), 80, proto::TCP))
            .collect();
        let want = desired(&[(key(80, proto::TCP), many)]);
        assert!(matches!(
            plan(&MapState::default(), &want),
            Err(PlanError::TooManyBackends { count: 65536, .. })
        ));
    }
}
