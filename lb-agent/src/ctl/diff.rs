//! `lbctl diff`: what the agent wants the datapath to hold against what the maps hold.
//!
//! Right after a sync the two agree. A difference that stays means a write failed, someone
//! edited the maps, or the agent's view is wrong: the cases where operators otherwise
//! have nothing to go on. What the maps must hold for each frontend is specified in
//! [`crate::serve::report`].

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
};

use lb_common::{BackendId, BackendSlotKey, FrontendKey};
use serde::Serialize;

use super::{
    format::{backend_flags, frontend_flags, joined, protocol_name, scope_name},
    map_id::MapId,
    snapshot::{Snapshot, UnavailableRecord},
};
use crate::serve::report::{State, STATE_VERSION};

/// The maps compared; names are optional (compared only when present).
pub const MAPS: [MapId; 4] = [
    MapId::Frontends,
    MapId::Slots,
    MapId::Backends,
    MapId::ServiceNames,
];
/// Without these there is nothing to compare against.
pub const REQUIRED: [MapId; 3] = [MapId::Frontends, MapId::Slots, MapId::Backends];

/// One way in which the maps differ from the agent's desired state. Flags are the raw
/// [`lb_common::frontend::flags`] and [`lb_common::backend::flags`] bits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    /// The agent programs the frontend; the maps do not have it.
    MissingFrontend {
        frontend: String,
        service: String,
    },
    /// The maps have a frontend the agent does not program.
    ExtraFrontend {
        frontend: String,
        service_id: u32,
        service: Option<String>,
    },
    /// The frontend points at another service id than the agent recorded.
    ServiceId {
        frontend: String,
        want: u32,
        have: u32,
    },
    /// Service type flags.
    Flags {
        frontend: String,
        want: u16,
        have: u16,
    },
    AffinityTimeout {
        frontend: String,
        want: u32,
        have: u32,
    },
    /// LB_SVC_NAMES names the frontend's service differently (or not at all).
    ServiceName {
        frontend: String,
        service_id: u32,
        want: String,
        have: Option<String>,
    },
    /// The frontend's backend count is not the number of backends the agent wants.
    BackendCount {
        frontend: String,
        want: usize,
        have: u16,
    },
    MissingBackend {
        frontend: String,
        backend: String,
    },
    ExtraBackend {
        frontend: String,
        backend: String,
        backend_id: BackendId,
    },
    /// The right backends, in other slots than the agent's order.
    SlotOrder {
        frontend: String,
    },
    /// A slot within the frontend's backend count is not in LB_SLOTS.
    MissingSlot {
        frontend: String,
        service_id: u32,
        slot: u32,
    },
    /// A slot points at a backend id LB_BACKENDS does not hold.
    DanglingSlot {
        service_id: u32,
        slot: u32,
        backend_id: BackendId,
    },
    /// A slot above every frontend's backend count (left behind by a shrink).
    StaleSlot {
        service_id: u32,
        slot: u32,
        backend_count: u16,
    },
    /// A slot of a service no frontend points at.
    OrphanSlot {
        service_id: u32,
        slot: u32,
    },
    /// A backend's flags are not what the agent wants (a backend shared by frontends
    /// carries the union of their flags).
    BackendFlags {
        backend: String,
        backend_id: BackendId,
        want: u8,
        have: u8,
    },
    /// A backend no slot points at.
    UnusedBackend {
        backend: String,
        backend_id: BackendId,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fe_flags = |bits: &u16| joined(&frontend_flags(*bits));
        let be_flags = |bits: &u8| joined(&backend_flags(*bits));
        match self {
            Difference::MissingFrontend { frontend, service } => write!(
                f,
                "missing frontend {frontend} ({service}): the agent wants it, the maps lack it"
            ),
            Difference::ExtraFrontend {
                frontend,
                service_id,
                service,
            } => write!(
                f,
                "extra frontend {frontend} (service {service_id}{}): in the maps, not wanted by the agent",
                service.as_ref().map(|s| format!(" {s}")).unwrap_or_default()
            ),
            Difference::ServiceId {
                frontend,
                want,
                have,
            } => write!(
                f,
                "{frontend}: service id {have}, the agent recorded {want}"
            ),
            Difference::Flags {
                frontend,
                want,
                have,
            } => write!(
                f,
                "{frontend}: type {}, the agent wants {}",
                fe_flags(have),
                fe_flags(want)
            ),
            Difference::AffinityTimeout {
                frontend,
                want,
                have,
            } => write!(
                f,
                "{frontend}: affinity timeout {have}s, the agent wants {want}s"
            ),
            Difference::ServiceName {
                frontend,
                service_id,
                want,
                have,
            } => match have {
                Some(have) => write!(
                    f,
                    "{frontend}: service {service_id} is named {have:?} in LB_SVC_NAMES, the agent says {want:?}"
                ),
                None => write!(
                    f,
                    "{frontend}: service {service_id} has no name in LB_SVC_NAMES, the agent says {want:?}"
                ),
            },
            Difference::BackendCount {
                frontend,
                want,
                have,
            } => write!(
                f,
                "{frontend}: backend count {have}, the agent wants {want} backends"
            ),
            Difference::MissingBackend { frontend, backend } => {
                write!(f, "{frontend}: backend {backend} missing")
            }
            Difference::ExtraBackend {
                frontend,
                backend,
                backend_id,
            } => write!(
                f,
                "{frontend}: extra backend {backend} (id {backend_id}), not wanted by the agent"
            ),
            Difference::SlotOrder { frontend } => write!(
                f,
                "{frontend}: the backends are right but their slots are not in the agent's order"
            ),
            Difference::MissingSlot {
                frontend,
                service_id,
                slot,
            } => write!(
                f,
                "{frontend}: slot {slot} of service {service_id} is missing from LB_SLOTS"
            ),
            Difference::DanglingSlot {
                service_id,
                slot,
                backend_id,
            } => write!(
                f,
                "service {service_id}: slot {slot} points at backend {backend_id}, which LB_BACKENDS does not hold"
            ),
            Difference::StaleSlot {
                service_id,
                slot,
                backend_count,
            } => write!(
                f,
                "service {service_id}: slot {slot} is beyond the backend count ({backend_count})"
            ),
            Difference::OrphanSlot { service_id, slot } => write!(
                f,
                "service {service_id}: slot {slot} belongs to no frontend"
            ),
            Difference::BackendFlags {
                backend,
                backend_id,
                want,
                have,
            } => write!(
                f,
                "backend {backend} (id {backend_id}): flags {}, the agent wants {}",
                be_flags(have),
                be_flags(want)
            ),
            Difference::UnusedBackend {
                backend,
                backend_id,
            } => write!(
                f,
                "backend {backend} (id {backend_id}) is in LB_BACKENDS but no slot uses it"
            ),
        }
    }
}

/// `lbctl diff -o json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiffReport {
    pub differences: Vec<Difference>,
    /// Frontends the agent programs (compared).
    pub frontends: usize,
    /// Frontends the agent knows but does not program yet (not expected in the maps).
    pub not_programmed: usize,
    /// Distinct backends of the programmed frontends.
    pub backends: usize,
    /// Whether the agent had completed its first full sync; before that its desired state
    /// may be partial.
    pub synced: bool,
    /// Caveats about the comparison, one sentence each.
    pub notes: Vec<String>,
    /// Maps that could not be read (only LB_SVC_NAMES may be missing: names are then not
    /// compared).
    pub unavailable: Vec<UnavailableRecord>,
}

/// An address, port and protocol: how backends are identified across services.
type Tuple = (Ipv4Addr, u16, u8);

fn frontend_label(k: &FrontendKey) -> String {
    let base = format!("{}:{}/{}", k.ip(), k.port_host(), protocol_name(k.proto));
    match k.scope {
        lb_common::frontend::scope::EXTERNAL => base,
        s => format!("{base} ({})", scope_name(s)),
    }
}

fn tuple_label((addr, port, p): Tuple) -> String {
    format!("{addr}:{port}/{}", protocol_name(p))
}

/// Compares the agent's desired state with the maps' content.
pub fn diff(want: &State, have: &Snapshot) -> DiffReport {
    let programmed: BTreeMap<FrontendKey, _> = want
        .frontends
        .iter()
        .filter(|f| f.programmed)
        .map(|f| (f.key(), f))
        .collect();
    // Per backend, the union of the flags every frontend gives it (as the agent writes it).
    let mut wanted_flags: BTreeMap<Tuple, u8> = BTreeMap::new();
    for f in programmed.values() {
        for b in &f.backends {
            *wanted_flags
                .entry((b.address, b.port, b.protocol.number()))
                .or_default() |= b.flags;
        }
    }

    let mut diffs = Vec::new();
    for (key, w) in &programmed {
        let frontend = frontend_label(key);
        let Some(f) = have.frontends.get(key) else {
            diffs.push(Difference::MissingFrontend {
                frontend,
                service: w.name.clone(),
            });
            continue;
        };
        if let Some(id) = w.service_id.filter(|id| *id != f.service_id) {
            diffs.push(Difference::ServiceId {
                frontend: frontend.clone(),
                want: id,
                have: f.service_id,
            });
        }
        if f.flags != w.flags {
            diffs.push(Difference::Flags {
                frontend: frontend.clone(),
                want: w.flags,
                have: f.flags,
            });
        }
        if f.affinity_timeout_s != w.affinity_timeout_seconds {
            diffs.push(Difference::AffinityTimeout {
                frontend: frontend.clone(),
                want: w.affinity_timeout_seconds,
                have: f.affinity_timeout_s,
            });
        }
        if have.has(MapId::ServiceNames) && have.service_name(f.service_id) != Some(&w.name) {
            diffs.push(Difference::ServiceName {
                frontend: frontend.clone(),
                service_id: f.service_id,
                want: w.name.clone(),
                have: have.service_name(f.service_id).map(str::to_owned),
            });
        }
        if usize::from(f.backend_count) != w.backends.len() {
            diffs.push(Difference::BackendCount {
                frontend: frontend.clone(),
                want: w.backends.len(),
                have: f.backend_count,
            });
        }
        // What the slots hold, in slot order.
        let mut in_slots: Vec<(Tuple, BackendId)> = Vec::new();
        for slot in 1..=u32::from(f.backend_count) {
            let key = BackendSlotKey {
                service_id: f.service_id,
                slot,
            };
            match have.slots.get(&key) {
                None => diffs.push(Difference::MissingSlot {
                    frontend: frontend.clone(),
                    service_id: f.service_id,
                    slot,
                }),
                // A dangling slot is reported once, with the other slot checks below.
                Some(id) => {
                    if let Some(b) = have.backends.get(id) {
                        in_slots.push(((b.ip(), b.port_host(), b.proto), *id));
                    }
                }
            }
        }
        let wanted: Vec<Tuple> = w
            .backends
            .iter()
            .map(|b| (b.address, b.port, b.protocol.number()))
            .collect();
        let wanted_set: BTreeSet<Tuple> = wanted.iter().copied().collect();
        let have_set: BTreeSet<Tuple> = in_slots.iter().map(|(t, _)| *t).collect();
        for t in wanted_set.difference(&have_set) {
            diffs.push(Difference::MissingBackend {
                frontend: frontend.clone(),
                backend: tuple_label(*t),
            });
        }
        for (t, id) in in_slots.iter().filter(|(t, _)| !wanted_set.contains(t)) {
            diffs.push(Difference::ExtraBackend {
                frontend: frontend.clone(),
                backend: tuple_label(*t),
                backend_id: *id,
            });
        }
        let slot_order: Vec<Tuple> = in_slots.iter().map(|(t, _)| *t).collect();
        if wanted_set == have_set && wanted.len() == slot_order.len() && wanted != slot_order {
            diffs.push(Difference::SlotOrder { frontend });
        }
    }
    for (key, f) in have
        .frontends
        .iter()
        .filter(|(k, _)| !programmed.contains_key(k))
    {
        diffs.push(Difference::ExtraFrontend {
            frontend: frontend_label(key),
            service_id: f.service_id,
            service: have.service_name(f.service_id).map(str::to_owned),
        });
    }

    let mut counts: BTreeMap<u32, u16> = BTreeMap::new();
    for f in have.frontends.values() {
        let c = counts.entry(f.service_id).or_default();
        *c = (*c).max(f.backend_count);
    }
    for (k, id) in &have.slots {
        if !have.backends.contains_key(id) {
            diffs.push(Difference::DanglingSlot {
                service_id: k.service_id,
                slot: k.slot,
                backend_id: *id,
            });
        }
        match counts.get(&k.service_id) {
            None => diffs.push(Difference::OrphanSlot {
                service_id: k.service_id,
                slot: k.slot,
            }),
            Some(&count) if k.slot > u32::from(count) || k.slot == 0 => {
                diffs.push(Difference::StaleSlot {
                    service_id: k.service_id,
                    slot: k.slot,
                    backend_count: count,
                })
            }
            Some(_) => {}
        }
    }

    let used: BTreeSet<BackendId> = have.slots.values().copied().collect();
    for (id, b) in &have.backends {
        let tuple = (b.ip(), b.port_host(), b.proto);
        if !used.contains(id) {
            diffs.push(Difference::UnusedBackend {
                backend: tuple_label(tuple),
                backend_id: *id,
            });
        } else if let Some(&want) = wanted_flags.get(&tuple) {
            if want != b.flags {
                diffs.push(Difference::BackendFlags {
                    backend: tuple_label(tuple),
                    backend_id: *id,
                    want,
                    have: b.flags,
                });
            }
        }
    }

    let mut notes = Vec::new();
    if !want.synced {
        notes.push(
            "the agent has not completed its first sync: its desired state may be partial".into(),
        );
    }
    if want.version > STATE_VERSION {
        notes.push(format!(
            "the agent serves state version {}, this lbctl knows version {STATE_VERSION}: fields it adds are not compared",
            want.version
        ));
    }
    DiffReport {
        differences: diffs,
        frontends: programmed.len(),
        not_programmed: want.frontends.len() - programmed.len(),
        backends: wanted_flags.len(),
        synced: want.synced,
        notes,
        unavailable: have.unavailable_records(&MAPS),
    }
}

/// One line per difference, then notes and a summary line.
pub fn render(report: &DiffReport) -> String {
    let mut out = String::new();
    for d in &report.differences {
        out.push_str(&format!("{d}\n"));
    }
    for note in &report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    for u in &report.unavailable {
        out.push_str(&format!("note: {}: {} (not compared)\n", u.map, u.reason));
    }
    if report.not_programmed > 0 {
        out.push_str(&format!(
            "note: {} frontends are not programmed by this agent yet, so not compared\n",
            report.not_programmed
        ));
    }
    let n = report.differences.len();
    if n == 0 {
        out.push_str(&format!(
            "no differences: the maps hold the agent's {} frontends and {} backends\n",
            report.frontends, report.backends
        ));
    } else {
        out.push_str(&format!(
            "{n} difference{} between the agent's desired state and the maps\n",
            if n == 1 { "" } else { "s" }
        ));
    }
    out
}

/// The state an agent that programmed `snapshot` would serve (for tests).
#[cfg(test)]
pub fn state_of(snapshot: &Snapshot) -> State {
    use crate::serve::report::{
        BackendReport, FrontendReport, NodeReport, PolicyReport, Protocol, Scope,
    };
    let protocol = |p| Protocol::from_number(p).expect("TCP or UDP");
    let frontends: Vec<FrontendReport> = snapshot
        .frontends
        .iter()
        .map(|(k, f)| {
            let name = snapshot.service_label(f.service_id);
            FrontendReport {
                address: k.ip(),
                port: k.port_host(),
                protocol: protocol(k.proto),
                scope: Scope::from_number(k.scope),
                service: name.rsplit_once(':').map_or(&*name, |(s, _)| s).to_owned(),
                name: name.clone(),
                kind: frontend_flags(f.flags)
                    .first()
                    .copied()
                    .unwrap_or("ClusterIP")
                    .into(),
                programmed: true,
                service_id: Some(f.service_id),
                flags: f.flags,
                flag_names: frontend_flags(f.flags)
                    .into_iter()
                    .map(Into::into)
                    .collect(),
                affinity_timeout_seconds: f.affinity_timeout_s,
                policy: PolicyReport {
                    external_traffic_local: false,
                    internal_traffic_local: false,
                    publish_not_ready_addresses: false,
                    topology_aware: false,
                },
                backends: (1..=u32::from(f.backend_count))
                    .filter_map(|slot| {
                        let id = snapshot.slots.get(&BackendSlotKey {
                            service_id: f.service_id,
                            slot,
                        })?;
                        let b = snapshot.backends.get(id)?;
                        Some(BackendReport {
                            address: b.ip(),
                            port: b.port_host(),
                            protocol: protocol(b.proto),
                            flags: b.flags,
                            terminating: b.flags & lb_common::backend::flags::TERMINATING != 0,
                            local: b.flags & lb_common::backend::flags::LOCAL != 0,
                        })
                    })
                    .collect(),
                source_ranges: Vec::new(),
            }
        })
        .collect();
    State {
        version: STATE_VERSION,
        node: NodeReport {
            name: "worker".into(),
            addresses: vec![Ipv4Addr::new(172, 18, 0, 3)],
            pod_cidrs: vec!["10.244.1.0/24".into()],
            zone: None,
            eligible: true,
        },
        synced: true,
        services: frontends.len(),
        frontends,
        attachments: Default::default(),
        skipped: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ctl::{
            fixtures::{self, sample, DNS, ECHO},
            snapshot::Unavailable,
        },
        serve::report::{BackendReport, Protocol, Scope},
    };
    use lb_common::{backend, frontend, proto, Frontend};

    fn differences(want: &State, have: &Snapshot) -> Vec<String> {
        diff(want, have)
            .differences
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn backend_report(addr: [u8; 4], port: u16) -> BackendReport {
        BackendReport {
            address: addr.into(),
            port,
            protocol: Protocol::Tcp,
            flags: 0,
            terminating: false,
            local: false,
        }
    }

    #[test]
    fn maps_that_hold_the_desired_state_have_no_differences() {
        let s = sample();
        let report = diff(&state_of(&s), &s);
        assert_eq!(report.differences, []);
        assert_eq!((report.frontends, report.backends), (2, 3));
        assert_eq!(
            render(&report),
            "no differences: the maps hold the agent's 2 frontends and 3 backends\n"
        );
    }

    #[test]
    fn missing_and_extra_frontends_are_named_with_their_service() {
        let s = sample();
        let mut want = state_of(&s);
        // The agent no longer wants dns, and wants a new internal-scope frontend.
        let mut web = want.frontends[0].clone();
        want.frontends.retain(|f| f.port != 53);
        web.address = Ipv4Addr::new(10, 96, 0, 20);
        web.scope = Scope::Internal;
        web.name = "default/web:https".into();
        web.service_id = None;
        want.frontends.push(web);
        assert_eq!(
            differences(&want, &s),
            [
                "missing frontend 10.96.0.20:80/TCP (internal) (default/web:https): the agent wants it, the maps lack it",
                "extra frontend 10.96.0.53:53/UDP (service 2 kube-system/dns:dns): in the maps, not wanted by the agent",
            ]
        );
    }

    #[test]
    fn frontends_not_programmed_yet_are_not_expected_in_the_maps() {
        let s = sample();
        let mut want = state_of(&s);
        let mut node_port = want.frontends[0].clone();
        node_port.address = Ipv4Addr::new(172, 18, 0, 3);
        node_port.port = 30080;
        node_port.flags = frontend::flags::NODE_PORT;
        node_port.programmed = false;
        want.frontends.push(node_port);
        let report = diff(&want, &s);
        assert_eq!(report.differences, []);
        assert_eq!(report.not_programmed, 1);
        assert!(render(&report)
            .contains("note: 1 frontends are not programmed by this agent yet, so not compared\n"));
    }

    #[test]
    fn backend_sets_and_their_order_are_compared_per_frontend() {
        let s = sample();
        let mut want = state_of(&s);
        let echo = &mut want.frontends[0];
        echo.backends.remove(1);
        echo.backends.push(backend_report([10, 244, 3, 2], 8080));
        echo.backends.push(backend_report([10, 244, 3, 3], 8080));
        assert_eq!(
            differences(&want, &s),
            [
                "10.96.0.10:80/TCP: backend count 2, the agent wants 3 backends",
                "10.96.0.10:80/TCP: backend 10.244.3.2:8080/TCP missing",
                "10.96.0.10:80/TCP: backend 10.244.3.3:8080/TCP missing",
                "10.96.0.10:80/TCP: extra backend 10.244.2.2:8080/TCP (id 2), not wanted by the agent",
            ]
        );

        let mut want = state_of(&s);
        want.frontends[0].backends.reverse();
        assert_eq!(
            differences(&want, &s),
            ["10.96.0.10:80/TCP: the backends are right but their slots are not in the agent's order"]
        );
    }

    #[test]
    fn type_affinity_id_and_name_differences_are_reported() {
        let s = sample();
        let mut want = state_of(&s);
        want.frontends[0].flags |= frontend::flags::NODE_PORT;
        want.frontends[0].service_id = Some(7);
        want.frontends[1].affinity_timeout_seconds = 60;
        want.frontends[1].name = "kube-system/coredns:dns".into();
        assert_eq!(
            differences(&want, &s),
            [
                "10.96.0.10:80/TCP: service id 1, the agent recorded 7",
                "10.96.0.10:80/TCP: type ClusterIP, the agent wants ClusterIP,NodePort",
                "10.96.0.53:53/UDP: affinity timeout 10800s, the agent wants 60s",
                "10.96.0.53:53/UDP: service 2 is named \"kube-system/dns:dns\" in LB_SVC_NAMES, the agent says \"kube-system/coredns:dns\"",
            ]
        );
    }

    #[test]
    fn broken_slots_are_reported() {
        let mut s = sample();
        let want = state_of(&s);
        // Slot 2 of echo points nowhere, dns has a slot past its count, service 9 has a
        // slot but no frontend, and backend 2 is now used by nobody.
        s.slots.insert(fixtures::slot(ECHO, 2), 42);
        s.slots.insert(fixtures::slot(DNS, 2), 3);
        s.slots.insert(fixtures::slot(9, 1), 1);
        assert_eq!(
            differences(&want, &s),
            [
                "10.96.0.10:80/TCP: backend 10.244.2.2:8080/TCP missing",
                "service 1: slot 2 points at backend 42, which LB_BACKENDS does not hold",
                "service 2: slot 2 is beyond the backend count (1)",
                "service 9: slot 1 belongs to no frontend",
                "backend 10.244.2.2:8080/TCP (id 2) is in LB_BACKENDS but no slot uses it",
            ]
        );
        s.slots.remove(&fixtures::slot(ECHO, 1));
        assert!(differences(&want, &s).contains(
            &"10.96.0.10:80/TCP: slot 1 of service 1 is missing from LB_SLOTS".to_owned()
        ));
    }

    #[test]
    fn backend_flags_are_the_union_over_frontends() {
        let mut s = sample();
        // Backend 1 also serves a second service that does not see it as local.
        s.frontends.insert(
            FrontendKey::new([10, 96, 0, 11].into(), 80, proto::TCP),
            Frontend {
                service_id: 5,
                backend_count: 1,
                flags: frontend::flags::CLUSTER_IP,
                ..Default::default()
            },
        );
        s.slots.insert(fixtures::slot(5, 1), 1);
        s.service_names.insert(5, "default/echo-2:http".into());
        let mut want = state_of(&s);
        let second = want
            .frontends
            .iter_mut()
            .find(|f| f.address == Ipv4Addr::new(10, 96, 0, 11))
            .expect("second frontend");
        second.backends[0].flags = 0;
        assert_eq!(diff(&want, &s).differences, []);
        s.backends.get_mut(&1).expect("backend 1").flags = backend::flags::TERMINATING;
        assert!(differences(&want, &s).contains(
            &"backend 10.244.1.2:8080/TCP (id 1): flags terminating, the agent wants local"
                .to_owned()
        ));
    }

    #[test]
    fn names_are_not_compared_without_the_names_map() {
        let mut s = sample();
        s.service_names.clear();
        s.unavailable.push(Unavailable {
            map: MapId::ServiceNames,
            reason: "not pinned".into(),
        });
        let mut want = state_of(&sample());
        want.frontends[0].name = "other".into();
        let report = diff(&want, &s);
        assert_eq!(report.differences, []);
        assert!(render(&report).contains("note: LB_SVC_NAMES: not pinned (not compared)"));
    }

    #[test]
    fn an_agent_that_has_not_synced_yet_is_pointed_out() {
        let s = sample();
        let mut want = state_of(&s);
        want.synced = false;
        want.version = STATE_VERSION + 1;
        let out = render(&diff(&want, &s));
        assert!(
            out.contains("note: the agent has not completed its first sync"),
            "{out}"
        );
        assert!(out.contains("fields it adds are not compared"), "{out}");
    }

    #[test]
    fn json_differences_are_tagged_by_kind() {
        let s = sample();
        let mut want = state_of(&s);
        want.frontends[1].affinity_timeout_seconds = 0;
        let report = diff(&want, &s);
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "differences": [{"kind": "affinity_timeout", "frontend": "10.96.0.53:53/UDP",
                                 "want": 0, "have": 10800}],
                "frontends": 2,
                "not_programmed": 0,
                "backends": 3,
                "synced": true,
                "notes": [],
                "unavailable": [],
            })
        );
        assert!(render(&report)
            .ends_with("1 difference between the agent's desired state and the maps\n"));
    }
}
