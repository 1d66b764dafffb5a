//! What the pinned maps held when `lbctl` read them, and which maps it could not read.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use lb_common::{
    AffinityEntry, AffinityKey, Backend, BackendId, BackendSlotKey, BackendStats, Config, CtEntry,
    CtKey, Frontend, FrontendKey, SockRevEntry, SockRevKey,
};
use serde::Serialize;

use super::map_id::MapId;
use crate::datapath::maps::RangeKey;

/// The maps' content. A map that was not asked for, or could not be read, is empty; the
/// second kind is also listed in `unavailable`, so views can say so instead of showing an
/// empty table as if it were the truth.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Service id -> `namespace/name:port`.
    pub service_names: BTreeMap<u32, String>,
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    pub slots: BTreeMap<BackendSlotKey, BackendId>,
    pub backends: BTreeMap<BackendId, Backend>,
    /// Only for the ids in `backends`.
    pub backend_stats: BTreeMap<BackendId, BackendStats>,
    pub conntrack: BTreeMap<CtKey, CtEntry>,
    pub affinity: BTreeMap<AffinityKey, AffinityEntry>,
    /// Per reason index, summed over CPUs.
    pub counters: Vec<u64>,
    pub config: Option<Config>,
    /// LB_SRC_RANGES keys (prefix length, data).
    pub source_ranges: BTreeSet<RangeKey>,
    pub sock_rev: BTreeMap<SockRevKey, SockRevEntry>,
    pub unavailable: Vec<Unavailable>,
}

/// A map that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub map: MapId,
    pub reason: String,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.map, self.reason)
    }
}

/// [`Unavailable`] as JSON output carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnavailableRecord {
    /// The pinned name, e.g. `LB_BE_STATS`.
    pub map: &'static str,
    pub reason: String,
}

impl From<&Unavailable> for UnavailableRecord {
    fn from(u: &Unavailable) -> Self {
        Self {
            map: u.map.pinned_name(),
            reason: u.reason.clone(),
        }
    }
}

impl Snapshot {
    /// Why `map` could not be read, if it could not.
    pub fn unavailable(&self, map: MapId) -> Option<&Unavailable> {
        self.unavailable.iter().find(|u| u.map == map)
    }

    pub fn has(&self, map: MapId) -> bool {
        self.unavailable(map).is_none()
    }

    /// The conntrack timeouts the datapath works with (the defaults if the config was not
    /// read or not written yet).
    pub fn ct_timeouts(&self) -> lb_common::CtTimeouts {
        self.config.map(|c| c.ct_timeouts).unwrap_or_default()
    }

    pub fn service_name(&self, service_id: u32) -> Option<&str> {
        self.service_names.get(&service_id).map(String::as_str)
    }

    /// The service's name, or `svc#<id>` when the agent did not record one.
    pub fn service_label(&self, service_id: u32) -> String {
        match self.service_name(service_id) {
            Some(name) => name.to_owned(),
            None => format!("svc#{service_id}"),
        }
    }

    /// Stats of a backend; `None` when the stats map could not be read.
    pub fn stats(&self, id: BackendId) -> Option<BackendStats> {
        self.has(MapId::BackendStats)
            .then(|| self.backend_stats.get(&id).copied().unwrap_or_default())
    }

    /// Records of the maps in `maps` that could not be read, for JSON output.
    pub fn unavailable_records(&self, maps: &[MapId]) -> Vec<UnavailableRecord> {
        self.unavailable
            .iter()
            .filter(|u| maps.contains(&u.map))
            .map(UnavailableRecord::from)
            .collect()
    }

    /// The source ranges under `service_id`, as `address/prefix`, sorted.
    pub fn source_ranges_of(&self, service_id: u32) -> Vec<String> {
        self.source_ranges
            .iter()
            .filter(|(_, r)| r.service_id() == service_id)
            .map(|(len, r)| {
                let (addr, prefix) = r.cidr(*len);
                format!("{addr}/{prefix}")
            })
            .collect()
    }

    /// The affinity timeout of the service's frontends (one service port has one timeout;
    /// the largest wins if frontends disagree mid-update). `None` if it has no frontend.
    pub fn affinity_timeout_s(&self, service_id: u32) -> Option<u32> {
        self.frontends
            .values()
            .filter(|f| f.service_id == service_id)
            .map(|f| f.affinity_timeout_s)
            .max()
    }
}
