//! Access to the datapath's maps, behind a trait so the syncer can be tested without a
//! kernel.
//!
//! Reads return whole maps: a full sync diffs against what the maps actually hold, never
//! against a cache of what it believes it wrote, so a restarted agent, a failed write or a
//! hand edit are all repaired by the next full sync. Incremental syncs plan against the
//! record the last full sync made ([`crate::sync::programmed`]) and use point writes only.

pub mod aya;
pub mod batch;
#[cfg(test)]
pub mod memory;

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{
    Backend, BackendId, BackendSlotKey, Config, CtEntry, CtKey, Frontend, FrontendKey, ServiceName,
    SourceRange,
};

/// One map write: what a sync plan is made of ([`crate::sync::plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    PutBackend(BackendId, Backend),
    PutSlot(BackendSlotKey, BackendId),
    PutFrontend(FrontendKey, Frontend),
    DeleteFrontend(FrontendKey),
    DeleteSlot(BackendSlotKey),
    DeleteBackend(BackendId),
    PutSourceRange(RangeKey),
    DeleteSourceRange(RangeKey),
}

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {0} is missing from the eBPF object")]
    Missing(&'static str),
    #[error("map {map} does not have the layout this agent expects; maps pinned by an incompatible build must be removed")]
    Layout {
        map: &'static str,
        source: ::aya::maps::MapError,
    },
    #[error("cannot open pinned map {path}")]
    Open {
        path: std::path::PathBuf,
        source: ::aya::maps::MapError,
    },
    #[error("{op} on map {map} failed")]
    Access {
        map: &'static str,
        op: &'static str,
        source: ::aya::maps::MapError,
    },
}

/// A source-range trie key: the prefix length (service id bits included) and the data, as
/// [`SourceRange::range`] makes them. The value is always 1.
pub type RangeKey = (u32, SourceRange);

/// The maps the agent programs. Deleting an absent key is not an error: the goal is that
/// the key is gone, and the datapath (LRU eviction) may have got there first.
pub trait DatapathMaps {
    fn frontends(&self) -> Result<Vec<(FrontendKey, Frontend)>, MapsError>;
    fn put_frontend(&mut self, key: &FrontendKey, value: &Frontend) -> Result<(), MapsError>;
    fn delete_frontend(&mut self, key: &FrontendKey) -> Result<(), MapsError>;

    fn slots(&self) -> Result<Vec<(BackendSlotKey, BackendId)>, MapsError>;
    fn put_slot(&mut self, key: &BackendSlotKey, value: BackendId) -> Result<(), MapsError>;
    fn delete_slot(&mut self, key: &BackendSlotKey) -> Result<(), MapsError>;

    fn backends(&self) -> Result<Vec<(BackendId, Backend)>, MapsError>;
    fn put_backend(&mut self, id: BackendId, value: &Backend) -> Result<(), MapsError>;
    fn delete_backend(&mut self, id: BackendId) -> Result<(), MapsError>;

    fn conntrack(&self) -> Result<Vec<(CtKey, CtEntry)>, MapsError>;
    fn delete_conntrack(&mut self, key: &CtKey) -> Result<(), MapsError>;

    fn config(&self) -> Result<Config, MapsError>;
    fn set_config(&mut self, config: &Config) -> Result<(), MapsError>;

    /// Service id -> `namespace/name:port`, for `lbctl` (the datapath never reads it).
    fn service_names(&self) -> Result<Vec<(u32, ServiceName)>, MapsError>;
    fn put_service_name(&mut self, service_id: u32, name: &ServiceName) -> Result<(), MapsError>;
    fn delete_service_name(&mut self, service_id: u32) -> Result<(), MapsError>;

    /// LB_SRC_RANGES: the client prefixes of frontends with source ranges.
    fn source_ranges(&self) -> Result<Vec<RangeKey>, MapsError>;
    fn put_source_range(&mut self, key: &RangeKey) -> Result<(), MapsError>;
    fn delete_source_range(&mut self, key: &RangeKey) -> Result<(), MapsError>;
}

/// The service maps' content at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    pub slots: BTreeMap<BackendSlotKey, BackendId>,
    pub backends: BTreeMap<BackendId, Backend>,
    pub source_ranges: BTreeSet<RangeKey>,
}

impl MapState {
    pub fn read(maps: &impl DatapathMaps) -> Result<Self, MapsError> {
        Ok(Self {
            frontends: maps.frontends()?.into_iter().collect(),
            slots: maps.slots()?.into_iter().collect(),
            backends: maps.backends()?.into_iter().collect(),
            source_ranges: maps.source_ranges()?.into_iter().collect(),
        })
    }

    /// Makes the same change `write` makes to the maps.
    pub fn apply(&mut self, write: &Write) {
        match *write {
            Write::PutBackend(id, b) => drop(self.backends.insert(id, b)),
            Write::PutSlot(k, id) => drop(self.slots.insert(k, id)),
            Write::PutFrontend(k, f) => drop(self.frontends.insert(k, f)),
            Write::DeleteFrontend(k) => drop(self.frontends.remove(&k)),
            Write::DeleteSlot(k) => drop(self.slots.remove(&k)),
            Write::DeleteBackend(id) => drop(self.backends.remove(&id)),
            Write::PutSourceRange(k) => drop(self.source_ranges.insert(k)),
            Write::DeleteSourceRange(k) => drop(self.source_ranges.remove(&k)),
        }
    }
}
