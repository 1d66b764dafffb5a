//! Reads back the maps an agent pinned (it may be running or stopped; the maps outlive it).

use std::path::{Path, PathBuf};

use aya::maps::{MapData, PerCpuArray};
use lb_common::{
    maps as names, Backend, BackendId, BackendSlotKey, CtEntry, CtKey, Frontend, FrontendKey,
};

use crate::maps::{
    aya::{open_pinned, typed, AyaMaps},
    DatapathMaps, MapsError,
};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no lb maps are pinned at {dir} (looked for {probe}); is lb-agent running with --pin-dir {dir}?", dir = .dir.display(), probe = .probe.display())]
    NoMaps { dir: PathBuf, probe: PathBuf },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("reading {map} failed")]
    Read {
        map: &'static str,
        source: aya::maps::MapError,
    },
}

/// The service and conntrack maps' content.
#[derive(Debug, Default, Clone)]
pub struct Contents {
    pub frontends: Vec<(FrontendKey, Frontend)>,
    pub slots: Vec<(BackendSlotKey, BackendId)>,
    pub backends: Vec<(BackendId, Backend)>,
    pub conntrack: Vec<(CtKey, CtEntry)>,
}

/// Reads the service and conntrack maps pinned under `dir`.
pub fn read_maps(dir: &Path) -> Result<Contents, ReadError> {
    ensure_pinned(dir, names::FRONTENDS)?;
    let maps = AyaMaps::open_pinned(dir)?;
    Ok(Contents {
        frontends: maps.frontends()?,
        slots: maps.slots()?,
        backends: maps.backends()?,
        conntrack: maps.conntrack()?,
    })
}

/// Every counter pinned under `dir`, summed over CPUs, by index.
pub fn read_counters(dir: &Path) -> Result<Vec<u64>, ReadError> {
    ensure_pinned(dir, names::COUNTERS)?;
    let counters: PerCpuArray<MapData, u64> =
        typed(names::COUNTERS, open_pinned(dir, names::COUNTERS)?)?;
    counters
        .iter()
        .map(|per_cpu| per_cpu.map(|values| values.iter().copied().fold(0u64, u64::wrapping_add)))
        .collect::<Result<_, _>>()
        .map_err(|source| ReadError::Read {
            map: names::COUNTERS,
            source,
        })
}

/// A missing pin means no agent ever ran with this pin directory, which deserves a better
/// message than "No such file or directory".
fn ensure_pinned(dir: &Path, name: &str) -> Result<(), ReadError> {
    let probe = dir.join(name);
    if probe.exists() {
        Ok(())
    } else {
        Err(ReadError::NoMaps {
            dir: dir.to_owned(),
            probe,
        })
    }
}
