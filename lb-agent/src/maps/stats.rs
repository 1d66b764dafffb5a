//! The datapath's packet counters and map capacities, read from the pinned maps when
//! metrics are scraped.
//!
//! The conntrack map is an LRU hash that the datapath fills on its own, so its fill level
//! can only be had by walking its keys (a syscall per entry). The walk is capped and done at
//! most once per [`CONNTRACK_COUNT_INTERVAL`]; scrapes in between get the last count.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData, MapInfo, PerCpuArray};
use lb_common::{maps as names, CtEntry, CtKey};

use super::{
    aya::{open_pinned, typed},
    MapsError,
};
use crate::metrics::DatapathStats;

/// How often the conntrack map is walked to count its entries.
pub const CONNTRACK_COUNT_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct ConntrackCount {
    map: HashMap<MapData, CtKey, CtEntry>,
    last: Option<(Instant, u64)>,
}

/// Reads the maps pinned under one directory.
pub struct PinnedStats {
    pin_dir: PathBuf,
    counters: Mutex<PerCpuArray<MapData, u64>>,
    conntrack: Mutex<ConntrackCount>,
}

impl PinnedStats {
    /// Opens the counters and conntrack maps pinned under `pin_dir` (own file descriptors,
    /// independent of the syncer's).
    pub fn open(pin_dir: &Path) -> Result<Self, MapsError> {
        Ok(Self {
            pin_dir: pin_dir.to_owned(),
            counters: Mutex::new(typed(
                names::COUNTERS,
                open_pinned(pin_dir, names::COUNTERS)?,
            )?),
            conntrack: Mutex::new(ConntrackCount {
                map: typed(names::CONNTRACK, open_pinned(pin_dir, names::CONNTRACK)?)?,
                last: None,
            }),
        })
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

    fn conntrack_entries(&self) -> Option<u64> {
        let mut ct = lock(&self.conntrack);
        if let Some((at, n)) = ct.last {
            if at.elapsed() < CONNTRACK_COUNT_INTERVAL {
                return Some(n);
            }
        }
        // Keys deleted under the walk can restart it; the cap bounds the cost.
        let cap = 2 * names::CONNTRACK_MAX as usize;
        let n = ct.map.keys().take(cap).filter(Result::is_ok).count() as u64;
        ct.last = Some((Instant::now(), n));
        Some(n)
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
