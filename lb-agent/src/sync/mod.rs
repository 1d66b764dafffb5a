//! From the desired state to the maps: [`plan`](mod@plan) turns what the maps hold into
//! the ordered writes that reach the desired state (with service and backend [`ids`]),
//! [`programmed`] records what the maps hold after each sync, and [`conntrack`] names the
//! UDP flows a change leaves without a target. [`Syncer`] applies them through
//! [`maps`](crate::datapath::maps). [`conntrack_gc`] keeps the conntrack tables clean
//! meanwhile, on a thread of its own.
//!
//! The syncer brings the maps to the desired state by one of two paths:
//!
//! - a full sync reads the maps, plans the whole difference ([`plan`](mod@plan)), writes
//!   it in order, and records what the maps now hold ([`Programmed`]);
//! - an incremental sync plans only the frontends that changed against that record and
//!   writes them with point writes, so one endpoint change costs a handful of syscalls
//!   whatever the number of services.
//!
//! Both clear the UDP conntrack entries the change orphaned, after the map writes (the
//! programming latency is taken before that scan, which is proportional to the conntrack
//! table and not to the change).
//!
//! A full sync is one syscall per write: the service maps are small next to conntrack, and
//! only the conntrack walks use [`batch`](crate::datapath::maps::batch)ed operations. The
//! caller runs it where blocking is allowed.

pub mod conntrack;
pub mod conntrack_gc;
pub mod ids;
pub mod plan;
pub mod programmed;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use lb_common::{FrontendKey, ServiceName};

use self::{
    conntrack::StaleFlows,
    plan::{plan, PlanError},
    programmed::{MapCounts, Programmed},
};
use crate::{
    datapath::{
        config::DatapathSettings,
        maps::{DatapathMaps, MapState, MapsError, Write},
    },
    model::{DesiredFrontend, DesiredState, DesiredView},
};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("cannot draw a random hash seed: {0}")]
    Random(getrandom::Error),
    #[error("an incremental sync needs a full sync first")]
    NeedsFull,
}

/// Which path a sync took.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncMode {
    Full,
    Incremental,
}

impl SyncMode {
    pub fn name(self) -> &'static str {
        match self {
            SyncMode::Full => "full",
            SyncMode::Incremental => "incremental",
        }
    }
}

/// What one sync did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncReport {
    pub mode: SyncMode,
    /// Programmed frontends and distinct backends after the sync.
    pub frontends: usize,
    pub backends: usize,
    /// Map updates and deletions made (conntrack deletions not included).
    pub writes: usize,
    pub conntrack_deleted: usize,
    /// When the last map write was made (before the conntrack cleanup).
    pub written_at: Instant,
    pub duration: Duration,
}

/// Owns the maps and keeps them in step with desired states.
pub struct Syncer<M> {
    maps: M,
    /// What LB_CONFIG must hold besides the seed.
    settings: DatapathSettings,
    /// LB_CONFIG has the seed and `settings`; cleared when the settings change.
    config_checked: bool,
    /// What the maps hold; `None` until a full sync succeeds, and after any failed write.
    programmed: Option<Programmed>,
    /// What LB_SVC_NAMES holds, once a full sync has read it.
    names: HashMap<u32, String>,
}

impl<M: DatapathMaps> Syncer<M> {
    pub fn new(maps: M) -> Self {
        Self {
            maps,
            settings: DatapathSettings::default(),
            config_checked: false,
            programmed: None,
            names: HashMap::new(),
        }
    }

    /// The LB_CONFIG settings to write at the next sync (only if they changed).
    pub fn set_settings(&mut self, settings: DatapathSettings) {
        if settings != self.settings {
            self.settings = settings;
            self.config_checked = false;
        }
    }

    pub fn settings(&self) -> &DatapathSettings {
        &self.settings
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// The record of what the maps hold, when there is one.
    pub fn programmed(&self) -> Option<&Programmed> {
        self.programmed.as_ref()
    }

    /// True when an incremental sync is possible.
    pub fn has_record(&self) -> bool {
        self.programmed.is_some()
    }

    /// Entries in the service maps, when known.
    pub fn counts(&self) -> Option<MapCounts> {
        self.programmed.as_ref().map(Programmed::counts)
    }

    /// A full sync to the programmed frontends of `desired`.
    pub fn sync(&mut self, desired: &DesiredState) -> Result<SyncReport, SyncError> {
        self.full_sync(&desired.programmed())
    }

    /// Makes the maps hold `desired`, reading them first. On error the maps are left in a
    /// state packets can use (the write order guarantees it) and the next sync picks up
    /// from what they hold.
    pub fn full_sync(&mut self, desired: &DesiredView<'_>) -> Result<SyncReport, SyncError> {
        let started = Instant::now();
        self.programmed = None;
        let mut writes = self.check_config()?;
        let mut state = MapState::read(&self.maps)?;
        let plan = plan(&state, desired)?;
        for write in &plan.writes {
            self.apply(write)?;
            state.apply(write);
            writes += 1;
        }
        let written_at = Instant::now();
        self.programmed = Programmed::from_synced(&state, desired);
        drop(state);
        writes += self.sync_all_names(desired)?;
        let conntrack_deleted = self.clear_stale_flows(&plan.stale_flows)?;
        let counts = self.counts().unwrap_or_default();
        Ok(SyncReport {
            mode: SyncMode::Full,
            frontends: desired.len(),
            backends: counts.backends,
            writes,
            conntrack_deleted,
            written_at,
            duration: started.elapsed(),
        })
    }

    /// Writes only `changes` (each key at most once: its new frontend, or `None` to remove
    /// it), planned against the record of the last writes. Fails with
    /// [`SyncError::NeedsFull`] when there is no record.
    pub fn sync_changes(
        &mut self,
        changes: &[(FrontendKey, Option<&DesiredFrontend>)],
    ) -> Result<SyncReport, SyncError> {
        let started = Instant::now();
        let mut programmed = self.programmed.take().ok_or(SyncError::NeedsFull)?;
        let old_ids: Vec<Option<u32>> = changes
            .iter()
            .map(|(k, _)| programmed.frontend(k).map(|f| f.service_id))
            .collect();
        let plan = programmed.plan_changes(changes)?;
        let mut writes = match self.check_config() {
            Ok(n) => n,
            Err(e) => {
                self.programmed = Some(programmed);
                return Err(e);
            }
        };
        for write in &plan.writes {
            // On error the record is dropped: the maps are between two states.
            self.apply(write)?;
            writes += 1;
        }
        let written_at = Instant::now();
        let counts = programmed.counts();
        let new_ids: Vec<Option<u32>> = changes
            .iter()
            .map(|(k, want)| want.and(programmed.frontend(k).map(|f| f.service_id)))
            .collect();
        for ((old, new), (_, want)) in old_ids.into_iter().zip(new_ids).zip(changes) {
            writes += self.sync_name(old, new.zip(*want))?;
        }
        self.programmed = Some(programmed);
        let conntrack_deleted = self.clear_stale_flows(&plan.stale_flows)?;
        Ok(SyncReport {
            mode: SyncMode::Incremental,
            frontends: counts.frontends,
            backends: counts.backends,
            writes,
            conntrack_deleted,
            written_at,
            duration: started.elapsed(),
        })
    }

    /// Makes LB_SVC_NAMES name every programmed service id and nothing else; returns the
    /// writes made. Skipped when the record is missing (the next full sync does it).
    fn sync_all_names(&mut self, desired: &DesiredView<'_>) -> Result<usize, MapsError> {
        let Some(record) = &self.programmed else {
            return Ok(0);
        };
        let want: HashMap<u32, &str> = desired
            .iter()
            .filter_map(|(k, f)| record.frontend(k).map(|v| (v.service_id, f.name.as_str())))
            .collect();
        let have: HashMap<u32, ServiceName> = self.maps.service_names()?.into_iter().collect();
        let mut writes = 0;
        for (&id, name) in &want {
            let name = ServiceName::new(name);
            if have.get(&id) != Some(&name) {
                self.maps.put_service_name(id, &name)?;
                writes += 1;
            }
        }
        for &id in have.keys().filter(|id| !want.contains_key(id)) {
            self.maps.delete_service_name(id)?;
            writes += 1;
        }
        self.names = want.into_iter().map(|(id, n)| (id, n.to_owned())).collect();
        Ok(writes)
    }

    /// Moves one frontend's name from service id `old` to `new` (with its frontend).
    fn sync_name(
        &mut self,
        old: Option<u32>,
        new: Option<(u32, &DesiredFrontend)>,
    ) -> Result<usize, MapsError> {
        let mut writes = 0;
        if let Some(old) = old.filter(|old| new.map(|(id, _)| id) != Some(*old)) {
            self.maps.delete_service_name(old)?;
            self.names.remove(&old);
            writes += 1;
        }
        if let Some((id, f)) = new {
            if self.names.get(&id) != Some(&f.name) {
                self.maps.put_service_name(id, &ServiceName::new(&f.name))?;
                self.names.insert(id, f.name.clone());
                writes += 1;
            }
        }
        Ok(writes)
    }

    fn check_config(&mut self) -> Result<usize, SyncError> {
        if self.config_checked {
            return Ok(0);
        }
        let writes = self.write_config()?;
        self.config_checked = true;
        Ok(writes)
    }

    fn apply(&mut self, write: &Write) -> Result<(), MapsError> {
        let m = &mut self.maps;
        match write {
            Write::PutBackend(id, b) => m.put_backend(*id, b),
            Write::PutSlot(k, id) => m.put_slot(k, *id),
            Write::PutFrontend(k, f) => m.put_frontend(k, f),
            Write::DeleteFrontend(k) => m.delete_frontend(k),
            Write::DeleteSlot(k) => m.delete_slot(k),
            Write::DeleteBackend(id) => m.delete_backend(*id),
            Write::PutSourceRange(k) => m.put_source_range(k),
            Write::DeleteSourceRange(k) => m.delete_source_range(k),
        }
    }

    /// Writes the settings into LB_CONFIG if it holds others, and gives the datapath a
    /// random flow-hash seed the first time the maps are used; a seed already there is
    /// kept, so flows hash the same across agent restarts.
    fn write_config(&mut self) -> Result<usize, SyncError> {
        let config = self.maps.config()?;
        let mut want = self.settings.apply(config);
        while want.hash_seed == 0 {
            want.hash_seed = getrandom::u32().map_err(SyncError::Random)?;
        }
        if want == config {
            return Ok(0);
        }
        self.maps.set_config(&want)?;
        Ok(1)
    }

    /// Deletes the conntrack entries of `stale` flows; the table is only scanned when there
    /// are any.
    fn clear_stale_flows(&mut self, stale: &StaleFlows) -> Result<usize, MapsError> {
        if stale.is_empty() {
            return Ok(0);
        }
        let doomed = stale.keys_to_delete(&self.maps.conntrack()?);
        for key in &doomed {
            self.maps.delete_conntrack(key)?;
        }
        Ok(doomed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        datapath::maps::memory::{MemoryMaps, Op},
        fixtures::{service, slice},
        model::{desired_state, node::ThisNode},
    };
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
    use lb_common::{
        conntrack::dir, proto, Backend, BackendSlotKey, CtEntry, CtKey, Frontend, FrontendKey,
    };

    fn web(protocol: &str) -> Service {
        service("shop", "web", "10.96.0.10")
            .port("p", 80, protocol)
            .build()
    }

    fn endpoints(protocol: &str, addrs: &[&str]) -> EndpointSlice {
        addrs
            .iter()
            .fold(
                slice("shop", "web-1", "web").port("p", 8080, protocol),
                |s, a| s.ready(a),
            )
            .build()
    }

    fn desired(services: &[Service], slices: &[EndpointSlice]) -> DesiredState {
        desired_state(services, slices, &ThisNode::named("node-a")).0
    }

    fn fe(protocol: u8) -> FrontendKey {
        FrontendKey::new([10, 96, 0, 10].into(), 80, protocol)
    }

    fn slot(service_id: u32, slot: u32) -> BackendSlotKey {
        BackendSlotKey { service_id, slot }
    }

    /// The log reduced to the kind of each write, in order.
    fn kinds(log: &[Op]) -> Vec<&'static str> {
        log.iter()
            .map(|op| match op {
                Op::Service(Write::PutBackend(..)) => "put backend",
                Op::Service(Write::PutSlot(..)) => "put slot",
                Op::Service(Write::PutFrontend(..)) => "put frontend",
                Op::Service(Write::DeleteFrontend(..)) => "delete frontend",
                Op::Service(Write::DeleteSlot(..)) => "delete slot",
                Op::Service(Write::DeleteBackend(..)) => "delete backend",
                Op::Service(Write::PutSourceRange(..)) => "put source range",
                Op::Service(Write::DeleteSourceRange(..)) => "delete source range",
                Op::DeleteConntrack(..) => "delete conntrack",
                Op::SetConfig(..) => "set config",
                Op::PutName(..) => "put name",
                Op::DeleteName(..) => "delete name",
            })
            .collect()
    }

    fn synced(state: &DesiredState) -> Syncer<MemoryMaps> {
        let mut syncer = Syncer::new(MemoryMaps::default());
        syncer.sync(state).expect("sync");
        syncer.maps.take_log();
        syncer
    }

    #[test]
    fn a_fresh_sync_writes_backends_then_slots_then_the_frontend() {
        let mut syncer = Syncer::new(MemoryMaps::default());
        let state = desired(
            &[web("TCP")],
            &[endpoints("TCP", &["10.244.1.2", "10.244.1.3"])],
        );
        let report = syncer.sync(&state).expect("sync");
        assert_eq!(
            kinds(&syncer.maps.log),
            [
                "set config",
                "put backend",
                "put backend",
                "put slot",
                "put slot",
                "put frontend",
                "put name"
            ]
        );
        assert_eq!(
            (report.frontends, report.backends, report.writes),
            (1, 2, 7)
        );
        assert_eq!(
            syncer.maps().names[&1].as_str(),
            Some("shop/web:p"),
            "lbctl's name for service 1"
        );
        let m = syncer.maps();
        assert_eq!(
            m.frontends[&fe(proto::TCP)],
            Frontend {
                service_id: 1,
                backend_count: 2,
                flags: lb_common::frontend::flags::CLUSTER_IP,
                affinity_timeout_s: 0,
                _reserved: 0
            }
        );
        assert_eq!(m.slots, [(slot(1, 1), 1), (slot(1, 2), 2)].into());
        assert_eq!(
            m.backends[&1],
            Backend::new([10, 244, 1, 2].into(), 8080, proto::TCP)
        );
        assert_ne!(m.config.hash_seed, 0);
    }

    #[test]
    fn a_second_sync_of_the_same_state_writes_nothing() {
        let state = desired(&[web("TCP")], &[endpoints("TCP", &["10.244.1.2"])]);
        let mut syncer = synced(&state);
        let report = syncer.sync(&state).expect("sync");
        assert_eq!(report.writes, 0);
        assert!(syncer.maps.log.is_empty(), "{:?}", syncer.maps.log);
    }

    #[test]
    fn adding_a_backend_writes_it_and_its_slot_before_the_count() {
        let mut syncer = synced(&desired(
            &[web("TCP")],
            &[endpoints("TCP", &["10.244.1.2"])],
        ));
        let grown = desired(
            &[web("TCP")],
            &[endpoints("TCP", &["10.244.1.2", "10.244.1.3"])],
        );
        syncer.sync(&grown).expect("sync");
        let log = syncer.maps.take_log();
        assert_eq!(
            log,
            [
                Op::Service(Write::PutBackend(
                    2,
                    Backend::new([10, 244, 1, 3].into(), 8080, proto::TCP)
                )),
                Op::Service(Write::PutSlot(slot(1, 2), 2)),
                Op::Service(Write::PutFrontend(
                    fe(proto::TCP),
                    Frontend {
                        backend_count: 2,
                        ..syncer.maps.frontends[&fe(proto::TCP)]
                    }
                )),
            ]
        );
    }

    #[test]
    fn shrinking_a_service_removes_slots_and_backends_only_after_the_count_changes() {
        let three = desired(
            &[web("TCP")],
            &[endpoints(
                "TCP",
                &["10.244.1.2", "10.244.1.3", "10.244.1.4"],
            )],
        );
        let mut syncer = synced(&three);
        let one = desired(&[web("TCP")], &[endpoints("TCP", &["10.244.1.4"])]);
        syncer.sync(&one).expect("sync");
        let log = syncer.maps.take_log();
        assert_eq!(
            kinds(&log),
            [
                "put slot",
                "put frontend",
                "delete slot",
                "delete slot",
                "delete backend",
                "delete backend"
            ]
        );
        assert_eq!(log[0], Op::Service(Write::PutSlot(slot(1, 1), 3)));
        let m = syncer.maps();
        assert_eq!(m.frontends[&fe(proto::TCP)].backend_count, 1);
        assert_eq!(m.slots, [(slot(1, 1), 3)].into());
        assert_eq!(m.backends.keys().copied().collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn deleting_a_service_removes_frontend_then_slots_then_backends() {
        let mut syncer = synced(&desired(
            &[web("TCP")],
            &[endpoints("TCP", &["10.244.1.2"])],
        ));
        syncer.sync(&DesiredState::default()).expect("sync");
        assert_eq!(
            kinds(&syncer.maps.take_log()),
            [
                "delete frontend",
                "delete slot",
                "delete backend",
                "delete name"
            ]
        );
        let m = syncer.maps();
        assert!(m.frontends.is_empty() && m.slots.is_empty() && m.backends.is_empty());
    }

    #[test]
    fn a_restarted_agent_keeps_the_ids_in_the_maps() {
        let api = service("shop", "api", "10.96.0.11")
            .port("p", 80, "TCP")
            .build();
        let api_slice = slice("shop", "api-1", "api")
            .port("p", 8080, "TCP")
            .ready("10.244.1.9")
            .build();
        let both = desired(
            &[web("TCP"), api.clone()],
            &[endpoints("TCP", &["10.244.1.2"]), api_slice.clone()],
        );
        let before = synced(&both).maps;

        // A new syncer over the same maps: nothing to write, not even the seed.
        let mut restarted = Syncer::new(before.clone());
        assert_eq!(restarted.sync(&both).expect("sync").writes, 0);

        // Dropping web frees its ids; api keeps its own.
        let api_only = desired(&[api], &[api_slice]);
        restarted.sync(&api_only).expect("sync");
        let after = restarted.maps();
        let api_key = FrontendKey::new([10, 96, 0, 11].into(), 80, proto::TCP);
        assert_eq!(after.frontends[&api_key], before.frontends[&api_key]);
        assert_eq!(after.backends, [(2, before.backends[&2])].into());

        // A new service then takes the lowest free ids.
        restarted.sync(&both).expect("sync");
        assert_eq!(restarted.maps().frontends[&fe(proto::TCP)].service_id, 1);
        assert_eq!(restarted.maps().slots[&slot(1, 1)], 1);
    }

    #[test]
    fn an_existing_hash_seed_is_kept() {
        let maps = MemoryMaps {
            config: DatapathSettings::default().apply(lb_common::Config {
                hash_seed: 42,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut syncer = Syncer::new(maps);
        syncer.sync(&DesiredState::default()).expect("sync");
        assert_eq!(syncer.maps().config.hash_seed, 42);
        assert!(syncer.maps().log.is_empty());
    }

    #[test]
    fn changed_settings_are_written_once_with_the_seed_kept() {
        use crate::datapath::config::SnatPortRange;
        let state = desired(&[web("TCP")], &[endpoints("TCP", &["10.244.1.2"])]);
        let mut syncer = synced(&state);
        let seed = syncer.maps.config.hash_seed;
        let settings = DatapathSettings {
            node_addr: Some([172, 18, 0, 3].into()),
            cluster_cidr: Some("10.244.0.0/16".parse().expect("cidr")),
            snat_ports: SnatPortRange {
                min: 62_000,
                max: 62_999,
            },
            ..Default::default()
        };
        syncer.set_settings(settings);
        // An incremental sync with nothing else to do writes the config alone.
        let report = syncer.sync_changes(&[]).expect("sync");
        assert_eq!(kinds(&syncer.maps.take_log()), ["set config"]);
        assert_eq!(report.writes, 1);
        let c = syncer.maps.config;
        assert_eq!(c.hash_seed, seed);
        assert_eq!(
            lb_common::addr_from_be(c.node_addr),
            std::net::Ipv4Addr::new(172, 18, 0, 3)
        );
        assert_eq!((c.snat_port_min, c.snat_port_max), (62_000, 62_999));
        assert!(c.in_cluster(lb_common::addr_be([10, 244, 7, 1].into())));
        // The same settings again: nothing to write.
        syncer.set_settings(settings);
        syncer.sync(&state).expect("sync");
        assert!(syncer.maps.take_log().is_empty());
    }

    /// A flow's forward and reply entries as the datapath writes them.
    fn flow(
        client_port: u16,
        backend: &Backend,
        service_id: u32,
        backend_id: u32,
    ) -> [(CtKey, CtEntry); 2] {
        let client = lb_common::addr_be([10, 244, 3, 3].into());
        let key = fe(backend.proto);
        let fwd_key = CtKey::new(
            client,
            key.addr,
            client_port.to_be(),
            key.port,
            backend.proto,
            dir::FORWARD,
        );
        let fwd = CtEntry {
            nat_addr: backend.addr,
            nat_port: backend.port,
            service_id,
            backend_id,
            ..Default::default()
        };
        let reply_key = CtKey::new(
            backend.addr,
            client,
            backend.port,
            client_port.to_be(),
            backend.proto,
            dir::REPLY,
        );
        let reply = CtEntry {
            nat_addr: key.addr,
            nat_port: key.port,
            ..fwd
        };
        [(fwd_key, fwd), (reply_key, reply)]
    }

    fn add_flows(maps: &mut MemoryMaps, flows: &[[(CtKey, CtEntry); 2]]) {
        maps.conntrack.extend(flows.iter().flatten().copied());
    }

    #[test]
    fn deleting_a_udp_service_clears_its_conntrack_entries() {
        // One Service, the same port over UDP and TCP.
        let both = service("shop", "web", "10.96.0.10")
            .port("p", 80, "UDP")
            .port("q", 80, "TCP")
            .build();
        let mut syncer = synced(&desired(&[both], &[endpoints("UDP", &["10.244.1.2"])]));
        let udp_backend = syncer.maps.backends[&1];
        let sid = syncer.maps.frontends[&fe(proto::UDP)].service_id;
        let flows = [
            flow(40000, &udp_backend, sid, 1),
            flow(40001, &udp_backend, sid, 1),
        ];
        add_flows(&mut syncer.maps, &flows);
        let report = syncer.sync(&DesiredState::default()).expect("sync");
        assert_eq!(report.conntrack_deleted, 4);
        assert!(syncer.maps.conntrack.is_empty());
        // Only after the service is gone from the frontends.
        let log = kinds(&syncer.maps.take_log());
        let (service_writes, conntrack) = log.split_at(log.len() - 4);
        assert_eq!(conntrack, ["delete conntrack"; 4]);
        assert!(!service_writes.contains(&"delete conntrack"));
    }

    #[test]
    fn deleting_a_tcp_service_leaves_its_flows_to_finish() {
        let mut syncer = synced(&desired(
            &[web("TCP")],
            &[endpoints("TCP", &["10.244.1.2"])],
        ));
        let backend = syncer.maps.backends[&1];
        add_flows(&mut syncer.maps, &[flow(40000, &backend, 1, 1)]);
        let report = syncer.sync(&DesiredState::default()).expect("sync");
        assert_eq!(report.conntrack_deleted, 0);
        assert_eq!(syncer.maps.conntrack.len(), 2);
    }

    #[test]
    fn removing_a_udp_backend_clears_only_its_flows() {
        let mut syncer = synced(&desired(
            &[web("UDP")],
            &[endpoints("UDP", &["10.244.1.2", "10.244.1.3"])],
        ));
        let (gone, kept) = (syncer.maps.backends[&1], syncer.maps.backends[&2]);
        let kept_flow = flow(40001, &kept, 1, 2);
        add_flows(&mut syncer.maps, &[flow(40000, &gone, 1, 1), kept_flow]);
        let report = syncer
            .sync(&desired(
                &[web("UDP")],
                &[endpoints("UDP", &["10.244.1.3"])],
            ))
            .expect("sync");
        assert_eq!(report.conntrack_deleted, 2);
        assert_eq!(syncer.maps.conntrack, kept_flow.into_iter().collect());
    }

    fn lb(ranges: &[&str]) -> DesiredState {
        let svc = service("shop", "web", "10.96.0.10")
            .port("p", 80, "TCP")
            .type_("LoadBalancer")
            .load_balancer_ingress(&["198.51.100.7"], None)
            .source_ranges(ranges)
            .build();
        desired(&[svc], &[endpoints("TCP", &["10.244.1.2"])])
    }

    fn lb_key() -> FrontendKey {
        FrontendKey::new([198, 51, 100, 7].into(), 80, proto::TCP)
    }

    /// The ranges the maps hold, as (service id, cidr).
    fn ranges(m: &MemoryMaps) -> Vec<(u32, String)> {
        m.source_ranges
            .iter()
            .map(|(len, r)| {
                let (a, p) = r.cidr(*len);
                (r.service_id(), format!("{a}/{p}"))
            })
            .collect()
    }

    #[test]
    fn source_ranges_go_in_before_their_frontend_and_out_after_it() {
        let mut syncer = Syncer::new(MemoryMaps::default());
        syncer
            .sync(&lb(&["10.0.0.0/8", "192.0.2.0/24"]))
            .expect("sync");
        let log = kinds(&syncer.maps.take_log());
        let first_frontend = log
            .iter()
            .position(|k| *k == "put frontend")
            .expect("frontend");
        let ranges_at: Vec<usize> = (0..log.len())
            .filter(|i| log[*i] == "put source range")
            .collect();
        assert_eq!(ranges_at.len(), 2);
        assert!(ranges_at.iter().all(|i| *i < first_frontend), "{log:?}");
        let sid = syncer.maps.frontends[&lb_key()].service_id;
        assert_eq!(
            ranges(&syncer.maps),
            [(sid, "10.0.0.0/8".into()), (sid, "192.0.2.0/24".into())]
        );
        // The ClusterIP frontend has none.
        assert_eq!(syncer.maps.source_ranges.len(), 2);

        // One range replaced: one put, one delete, the frontend untouched.
        syncer
            .sync(&lb(&["10.0.0.0/8", "203.0.113.0/24"]))
            .expect("sync");
        assert_eq!(
            kinds(&syncer.maps.take_log()),
            ["put source range", "delete source range"]
        );
        // The service goes: its ranges are deleted after its frontends.
        syncer.sync(&DesiredState::default()).expect("sync");
        let log = kinds(&syncer.maps.take_log());
        let last_frontend = log
            .iter()
            .rposition(|k| *k == "delete frontend")
            .expect("frontend");
        let first_range = log
            .iter()
            .position(|k| *k == "delete source range")
            .expect("range");
        assert!(last_frontend < first_range, "{log:?}");
        assert!(syncer.maps.source_ranges.is_empty());
    }

    #[test]
    fn incremental_source_range_changes_end_where_a_full_sync_would() {
        let before = lb(&["10.0.0.0/8"]);
        let mut syncer = synced(&before);
        for after in [
            lb(&["10.0.0.0/8", "192.0.2.0/24"]),
            lb(&["192.0.2.0/24"]),
            lb(&[]),
            lb(&["bogus"]),
            lb(&["10.0.0.0/8"]),
        ] {
            let view = after.programmed();
            let keys: std::collections::BTreeSet<FrontendKey> = view
                .keys()
                .chain(syncer.maps.frontends.keys())
                .copied()
                .collect();
            let changes: Vec<_> = keys.iter().map(|k| (*k, view.get(k).copied())).collect();
            syncer.sync_changes(&changes).expect("incremental");
            let mut full = Syncer::new(syncer.maps.clone());
            assert_eq!(full.sync(&after).expect("full").writes, 0, "{after:?}");
        }
        // Fail closed: the frontend keeps its flag with no range at all.
        let lb_frontend = syncer.maps.frontends[&lb_key()];
        assert_ne!(
            lb_frontend.flags & lb_common::frontend::flags::SOURCE_RANGES,
            0
        );
        assert_eq!(ranges(&syncer.maps).len(), 1);
    }

    #[test]
    fn a_stale_source_range_keeps_its_service_id_from_being_reused() {
        let mut maps = MemoryMaps::default();
        maps.source_ranges
            .insert(lb_common::SourceRange::range(1, [10, 0, 0, 0].into(), 8));
        let mut syncer = Syncer::new(maps);
        syncer.sync(&desired(&[web("TCP")], &[])).expect("sync");
        assert_eq!(syncer.maps.frontends[&fe(proto::TCP)].service_id, 2);
        assert!(
            syncer.maps.source_ranges.is_empty(),
            "the stale range is removed"
        );
    }
}
