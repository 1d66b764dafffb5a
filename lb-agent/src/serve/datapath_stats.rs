//! The datapath's packet counters and map capacities, read from the pinned maps when
//! metrics are scraped.
//!
//! The conntrack tables fill on their own, and a hash map's fill level can only be had by
//! walking it; the conntrack GC walks them anyway, so their entry counts are the GC's
//! ([`EntryCounts`]), as of its last complete walk of each table.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, MapInfo, PerCpuArray};
use lb_common::maps as names;

use super::metrics::DatapathStats;
use crate::{
    datapath::maps::{
        aya::{open_pinned, typed},
        MapsError,
    },
    sync::conntrack_gc::EntryCounts,
};

/// Reads the maps pinned under one directory.
pub struct PinnedStats {
    pin_dir: PathBuf,
    counters: Mutex<PerCpuArray<MapData, u64>>,
    conntrack: Arc<EntryCounts>,
}

impl PinnedStats {
    /// Opens the counters map pinned under `pin_dir` (own file descriptor, independent of
    /// the syncer's).
    pub fn open(pin_dir: &Path) -> Result<Self, MapsError> {
        Ok(Self {
            pin_dir: pin_dir.to_owned(),
            counters: Mutex::new(typed(
                names::COUNTERS,
                open_pinned(pin_dir, names::COUNTERS)?,
            )?),
            conntrack: Arc::default(),
        })
    }

    /// Where the conntrack GC publishes the tables' entry counts for these stats.
    pub fn conntrack_counts(&self) -> Arc<EntryCounts> {
        self.conntrack.clone()
    }
}

impl std::fmt::Debug for PinnedStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedStats")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DatapathStats for PinnedStats {
    fn counters(&self) -> Result<Vec<u64>, String> {
        lock(&self.counters)
            .iter()
            .map(|per_cpu| {
                per_cpu.map(|values| values.iter().copied().fold(0u64, u64::wrapping_add))
            })
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())
    }

    fn conntrack_entries(&self) -> Vec<(&'static str, u64)> {
        // Empty until the GC has walked a table once (its first pass runs at start).
        self.conntrack.get()
    }

    fn max_entries(&self) -> Vec<(&'static str, u64)> {
        names::ALL
            .iter()
            .filter_map(|name| {
                let info = MapInfo::from_pin(self.pin_dir.join(name)).ok()?;
                Some((*name, u64::from(info.max_entries())))
            })
            .collect()
    }
}
